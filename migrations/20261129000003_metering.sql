-- The last cumulative counters the agent saw of each jail. Rollup deltas are
-- taken against these in the same transaction that records a sample, so a
-- sample is counted exactly once even when the agent dies half-way, and a
-- counter that went down (the jail restarted) counts from zero.
CREATE TABLE jail_counters (
    jail_id                 uuid PRIMARY KEY REFERENCES jails (id) ON DELETE CASCADE,
    sampled_at              timestamptz NOT NULL,
    cpu_usec                bigint NOT NULL CHECK (cpu_usec >= 0),
    io_read_bytes           bigint NOT NULL CHECK (io_read_bytes >= 0),
    io_write_bytes          bigint NOT NULL CHECK (io_write_bytes >= 0),
    net_rx_bytes            bigint NOT NULL CHECK (net_rx_bytes >= 0),
    net_tx_bytes            bigint NOT NULL CHECK (net_tx_bytes >= 0),
    oom_kills               bigint NOT NULL CHECK (oom_kills >= 0),
    memory_limit_hits       bigint NOT NULL CHECK (memory_limit_hits >= 0),
    pids_limit_hits         bigint NOT NULL CHECK (pids_limit_hits >= 0),
    cpu_throttled_periods   bigint NOT NULL CHECK (cpu_throttled_periods >= 0)
);



ALTER TABLE usage_rollups DROP COLUMN last_sampled_at;
ALTER TABLE usage_rollups DROP COLUMN last_counters;
CREATE INDEX audit_log_action_target_idx ON audit_log (action, target, at);

-- A restart asked for at this generation: the agent restarts a running jail
-- once when it converges a generation at or past it.
ALTER TABLE jails ADD COLUMN restart_generation bigint NOT NULL DEFAULT 0 CHECK (restart_generation >= 0);

-- The first day of the month in which the tenant passed its plan's soft
-- transfer share; its jails' network rates are capped at the plan's throttle
-- rate for the rest of that month.
ALTER TABLE tenants ADD COLUMN transfer_throttled_month date;

-- Files customers upload into a jail's site folder. The web tier never
-- touches a node: it stores the file here and the jail's agent writes it
-- into the running jail, where the volume's quota applies.
CREATE TABLE jail_uploads (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    jail_id     uuid NOT NULL REFERENCES jails (id) ON DELETE CASCADE,
    tenant_id   uuid NOT NULL REFERENCES tenants (id),
    file_name   text NOT NULL CHECK (file_name ~ '^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$'),
    content     bytea,
    size_bytes  bigint NOT NULL CHECK (size_bytes >= 0),
    state       text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'written', 'failed')),
    error       text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    done_at     timestamptz
);
CREATE INDEX jail_uploads_pending_idx ON jail_uploads (jail_id) WHERE state = 'pending';
