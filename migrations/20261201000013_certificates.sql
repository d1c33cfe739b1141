-- TLS certificates of domains: issued through ACME by the node that runs
-- the domain's jail, or uploaded by the customer. The private key is sealed
-- to the provider's certificate key: anyone may seal with its public half
-- (kept here), only the agents hold the secret half that opens it, so
-- neither the web tier nor a copy of the database can read a key.
CREATE TABLE certificates (
    domain_id   uuid PRIMARY KEY REFERENCES domains (id) ON DELETE CASCADE,
    tenant_id   uuid NOT NULL REFERENCES tenants (id),
    source      text NOT NULL CHECK (source IN ('acme', 'upload')),
    chain_pem   text NOT NULL,
    key_sealed  bytea NOT NULL,
    names       text[] NOT NULL,
    issuer      text NOT NULL,
    not_before  timestamptz NOT NULL,
    not_after   timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX certificates_tenant_idx ON certificates (tenant_id);

CREATE TRIGGER certificates_changed AFTER INSERT OR DELETE ON certificates
    FOR EACH ROW EXECUTE FUNCTION notify_tenant_row();
CREATE TRIGGER certificates_updated AFTER UPDATE ON certificates
    FOR EACH ROW WHEN (OLD.* IS DISTINCT FROM NEW.*) EXECUTE FUNCTION notify_tenant_row();

-- The last ACME attempt of a domain without a certificate, and why it failed.
ALTER TABLE domains
    ADD COLUMN acme_tried_at timestamptz,
    ADD COLUMN acme_error text;

-- The public half of the provider's certificate key (one row), published by
-- the first agent that holds the secret half.
CREATE TABLE sealing_key (
    id          boolean PRIMARY KEY DEFAULT true CHECK (id),
    public_key  bytea NOT NULL CHECK (length(public_key) = 32),
    created_at  timestamptz NOT NULL DEFAULT now()
);
