-- Backups of jails' volumes, kept off the node in the provider's backup
-- target (a folder or an S3-compatible store) under
-- tenants/<tenant>/backups/<id>/. Taken by the agent of the jail's node
-- (`node_id`, the jail's node when asked); removed by any agent. What a
-- restore into a new jail needs of the jail is kept here, so the web tier
-- never reads the target to make one. `size_bytes` is what the target
-- holds (billed); `volume_bytes` the volume's length.
-- A jail's limits as the API writes them: kept with each of its backups,
-- so a new jail made from one gets them.
CREATE FUNCTION jail_limits(j jails) RETURNS jsonb LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object('cpu_millicores', j.cpu_millicores, 'memory_bytes', j.memory_bytes,
        'pids', j.pids, 'disk_bytes', j.disk_bytes, 'io_read_bps', j.io_read_bps,
        'io_write_bps', j.io_write_bps, 'io_read_iops', j.io_read_iops,
        'io_write_iops', j.io_write_iops, 'net_egress_bps', j.net_egress_bps,
        'net_ingress_bps', j.net_ingress_bps)
$$;

CREATE TABLE backups (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id     uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    jail_id       uuid REFERENCES jails (id) ON DELETE SET NULL,
    node_id       uuid REFERENCES nodes (id) ON DELETE SET NULL,
    jail_name     text NOT NULL,
    image         text NOT NULL,
    kind          text NOT NULL CHECK (kind IN ('app', 'system')),
    command       text[] NOT NULL DEFAULT '{}',
    limits        jsonb NOT NULL,
    scheduled     boolean NOT NULL DEFAULT false,
    state         text NOT NULL DEFAULT 'pending'
                  CHECK (state IN ('pending', 'ready', 'failed', 'deleting')),
    volume_bytes  bigint NOT NULL DEFAULT 0 CHECK (volume_bytes >= 0),
    size_bytes    bigint NOT NULL DEFAULT 0 CHECK (size_bytes >= 0),
    error         text,
    created_by    uuid REFERENCES users (id) ON DELETE SET NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz,
    expires_at    timestamptz
);
CREATE INDEX backups_tenant_idx ON backups (tenant_id, created_at DESC);
CREATE INDEX backups_jail_idx ON backups (jail_id, created_at DESC);

CREATE TRIGGER backups_changed AFTER INSERT OR DELETE ON backups
    FOR EACH ROW EXECUTE FUNCTION notify_tenant_row();
CREATE TRIGGER backups_updated AFTER UPDATE ON backups
    FOR EACH ROW WHEN (OLD.* IS DISTINCT FROM NEW.*) EXECUTE FUNCTION notify_tenant_row();

-- Daily backups of each jail of a plan's tenants, kept this many days
-- (0: none scheduled; customers may still take them).
ALTER TABLE plans
    ADD COLUMN backup_days integer NOT NULL DEFAULT 0 CHECK (backup_days BETWEEN 0 AND 365);

-- A restore from a backup, asked for at `restore_generation` like one from
-- a snapshot (one of the two is set).
ALTER TABLE jails
    ADD COLUMN restore_backup_id uuid REFERENCES backups (id) ON DELETE SET NULL;
