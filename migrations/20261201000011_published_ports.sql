-- Sites reachable from the world: ports of a jail published on its node's
-- address, and outbound access per plan.
--
-- A plan says whether its tenants' jails reach the world (outbound NAT) and
-- how many ports its tenants may publish; a tenant's override (NULL: as the
-- plan says) may differ.
ALTER TABLE plans
    ADD COLUMN outbound_nat boolean NOT NULL DEFAULT true,
    ADD COLUMN max_published_ports integer NOT NULL DEFAULT 4 CHECK (max_published_ports >= 0);
ALTER TABLE tenant_quota_overrides
    ADD COLUMN outbound_nat boolean,
    ADD COLUMN max_published_ports integer CHECK (max_published_ports >= 0);

-- Each node hands out published ports from its own pool.
ALTER TABLE nodes
    ADD COLUMN port_min integer NOT NULL DEFAULT 20000,
    ADD COLUMN port_max integer NOT NULL DEFAULT 29999,
    ADD CONSTRAINT nodes_port_pool CHECK (1024 <= port_min AND port_min <= port_max AND port_max <= 65535);

-- A port of a jail's node forwarded to a port of the jail. A node's port
-- belongs to one jail at a time; a jail publishes each of its ports once per
-- protocol. The rows of a jail go when it is deleted.
CREATE TABLE published_ports (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    jail_id     uuid NOT NULL REFERENCES jails (id) ON DELETE CASCADE,
    tenant_id   uuid NOT NULL REFERENCES tenants (id),
    node_id     uuid NOT NULL REFERENCES nodes (id),
    protocol    text NOT NULL CHECK (protocol IN ('tcp', 'udp')),
    host_port   integer NOT NULL CHECK (host_port BETWEEN 1 AND 65535),
    jail_port   integer NOT NULL CHECK (jail_port BETWEEN 1 AND 65535),
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (node_id, protocol, host_port),
    UNIQUE (jail_id, protocol, jail_port)
);
CREATE INDEX published_ports_tenant_idx ON published_ports (tenant_id);

CREATE TRIGGER published_ports_changed AFTER INSERT OR DELETE ON published_ports
    FOR EACH ROW EXECUTE FUNCTION notify_tenant_row();

-- A jail asked to be deleted (by its tenant, or with its tenant) frees its
-- node ports at once, for other jails; its node takes them out of the
-- firewall with the jail.
CREATE FUNCTION release_jail_ports() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM published_ports WHERE jail_id = NEW.id;
    RETURN NULL;
END $$;
CREATE TRIGGER jails_release_ports AFTER UPDATE OF desired_state ON jails
    FOR EACH ROW WHEN (NEW.desired_state = 'deleted' AND OLD.desired_state <> 'deleted')
    EXECUTE FUNCTION release_jail_ports();
