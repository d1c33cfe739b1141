-- A ticket can also open a download of one backup, served by a node's
-- agent from the backup target (the web tier never reads the target).
ALTER TABLE log_tickets
    ALTER COLUMN jail_id DROP NOT NULL,
    ADD COLUMN backup_id uuid REFERENCES backups (id) ON DELETE CASCADE,
    DROP CONSTRAINT log_tickets_kind_check,
    ADD CONSTRAINT log_tickets_kind_check CHECK (kind IN ('output', 'console', 'backup')),
    ADD CONSTRAINT log_tickets_names_what CHECK (
        CASE kind WHEN 'backup' THEN backup_id IS NOT NULL AND jail_id IS NULL
                  ELSE jail_id IS NOT NULL AND backup_id IS NULL END);
