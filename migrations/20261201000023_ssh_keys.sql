-- SSH public keys of a tenant: any of them logs in to any of the tenant's
-- running jails through the SSH gateway of the jail's node, as
-- `<jail>+<tenant>`. Kept as `TYPE BASE64`; the gateway finds a key by its
-- SHA-256 fingerprint, which the client proves it holds the private half of.
CREATE TABLE ssh_keys (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id    uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name         text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    public_key   text NOT NULL,
    fingerprint  text NOT NULL CHECK (fingerprint LIKE 'SHA256:%'),
    created_by   uuid REFERENCES users (id) ON DELETE SET NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    UNIQUE (tenant_id, fingerprint),
    UNIQUE (tenant_id, name)
);

-- Where a node's SSH gateway listens (`host:port` customers connect to) and
-- its host key (`TYPE BASE64` and fingerprint), made once per node, which
-- the panel shows so customers can check what their client is told.
ALTER TABLE nodes
    ADD COLUMN ssh_endpoint text,
    ADD COLUMN ssh_host_key text,
    ADD COLUMN ssh_host_fingerprint text;
