-- An honest status: a jail whose command keeps ending is crash-looping, not
-- running; a jail being started says so; each exit is kept with its code or
-- signal, and the restarts are counted and backed off.
ALTER TABLE jails DROP CONSTRAINT jails_observed_state_check;
ALTER TABLE jails ADD CONSTRAINT jails_observed_state_check
    CHECK (observed_state IN ('pending', 'starting', 'running', 'crash_looping',
                              'stopped', 'failed', 'deleted'));
-- Restarts by the agent after the command ended on its own, since creation.
ALTER TABLE jails ADD COLUMN restart_count integer NOT NULL DEFAULT 0 CHECK (restart_count >= 0);
-- Exits in a row that came soon after a start; drives the back-off.
ALTER TABLE jails ADD COLUMN crash_count integer NOT NULL DEFAULT 0 CHECK (crash_count >= 0);
ALTER TABLE jails ADD COLUMN last_exit_code integer;
ALTER TABLE jails ADD COLUMN last_exit_signal integer;
ALTER TABLE jails ADD COLUMN last_exit_at timestamptz;
-- When its current run began (NULL while nothing runs).
ALTER TABLE jails ADD COLUMN started_at timestamptz;
-- A crash-looping jail is not started again before this.
ALTER TABLE jails ADD COLUMN retry_at timestamptz;
-- Failing jails across tenants, for the staff's page.
CREATE INDEX jails_failing_idx ON jails (observed_at)
    WHERE observed_state IN ('failed', 'crash_looping') AND desired_state <> 'deleted';
