-- Snapshots of a jail's volume, taken and removed by the agent of the
-- jail's node. While `pending`, `size_bytes` is the estimate the request
-- was admitted with (the jail's last sampled disk use); once `ready`, the
-- host bytes the snapshot takes. Counted against the tenant's disk quota
-- together with its jails' volumes.
CREATE TABLE snapshots (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id   uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    jail_id     uuid NOT NULL REFERENCES jails (id) ON DELETE CASCADE,
    name        text NOT NULL CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$'),
    state       text NOT NULL DEFAULT 'pending'
                CHECK (state IN ('pending', 'ready', 'failed', 'deleting')),
    size_bytes  bigint NOT NULL DEFAULT 0 CHECK (size_bytes >= 0),
    error       text,
    created_by  uuid REFERENCES users (id) ON DELETE SET NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    taken_at    timestamptz,
    UNIQUE (jail_id, name)
);
CREATE INDEX snapshots_tenant_idx ON snapshots (tenant_id);

-- How many snapshots each jail of a plan's tenants keeps.
ALTER TABLE plans
    ADD COLUMN snapshots_per_jail integer NOT NULL DEFAULT 3
        CHECK (snapshots_per_jail BETWEEN 0 AND 100);

-- A restore asked for: the agent stops the jail, puts its volume back to
-- the snapshot and converges it again, once, at `restore_generation`.
ALTER TABLE jails
    ADD COLUMN restore_snapshot_id uuid REFERENCES snapshots (id) ON DELETE SET NULL,
    ADD COLUMN restore_generation bigint NOT NULL DEFAULT 0 CHECK (restore_generation >= 0);

-- What the panel shows of a tenant (its disk quota's use) changes with them.
CREATE TRIGGER snapshots_changed AFTER INSERT OR DELETE ON snapshots
    FOR EACH ROW EXECUTE FUNCTION notify_tenant_row();
CREATE TRIGGER snapshots_updated AFTER UPDATE ON snapshots
    FOR EACH ROW WHEN (OLD.* IS DISTINCT FROM NEW.*) EXECUTE FUNCTION notify_tenant_row();
