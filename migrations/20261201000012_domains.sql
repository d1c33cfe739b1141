-- Domains: names a customer attaches to a jail and a port inside it. Each
-- node's reverse proxy routes the names of the jails it runs (Host and SNI
-- to the jail's address and port). A name belongs to one tenant: it is
-- unique, with or without its www. alias, across every tenant.
CREATE TABLE domains (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id   uuid NOT NULL REFERENCES tenants (id),
    jail_id     uuid NOT NULL REFERENCES jails (id) ON DELETE CASCADE,
    name        text NOT NULL UNIQUE
                CHECK (length(name) <= 253
                       AND name ~ '^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$'),
    -- The www. alias of the name routes too.
    www         boolean NOT NULL DEFAULT false,
    jail_port   integer NOT NULL DEFAULT 80 CHECK (jail_port BETWEEN 1 AND 65535),
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX domains_jail_idx ON domains (jail_id);
CREATE INDEX domains_tenant_idx ON domains (tenant_id);

CREATE TRIGGER domains_changed AFTER INSERT OR DELETE ON domains
    FOR EACH ROW EXECUTE FUNCTION notify_tenant_row();
CREATE TRIGGER domains_updated AFTER UPDATE ON domains
    FOR EACH ROW WHEN (OLD.* IS DISTINCT FROM NEW.*) EXECUTE FUNCTION notify_tenant_row();

-- A deleted jail's names are free at once, like its ports.
CREATE OR REPLACE FUNCTION release_jail_ports() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM published_ports WHERE jail_id = NEW.id;
    DELETE FROM domains WHERE jail_id = NEW.id;
    RETURN NULL;
END $$;

-- A scope for attaching and detaching domains.
ALTER TABLE api_tokens DROP CONSTRAINT api_tokens_scopes_check;
ALTER TABLE api_tokens ADD CONSTRAINT api_tokens_scopes_check
    CHECK (scopes <@ ARRAY['tenants:read', 'tenants:write', 'jails:read', 'jails:write',
                           'usage:read', 'webhooks:write', 'metrics:read',
                           'domains:write']::text[]);
