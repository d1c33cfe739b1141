-- What each domain's proxy route carried, per day: requests answered and
-- bytes in and out (the node's proxy counters, summed by its agent).
CREATE TABLE domain_traffic (
    domain_id   uuid NOT NULL REFERENCES domains (id) ON DELETE CASCADE,
    day         date NOT NULL,
    tenant_id   uuid NOT NULL REFERENCES tenants (id),
    jail_id     uuid NOT NULL REFERENCES jails (id),
    requests    bigint NOT NULL DEFAULT 0 CHECK (requests >= 0),
    bytes_in    bigint NOT NULL DEFAULT 0 CHECK (bytes_in >= 0),
    bytes_out   bigint NOT NULL DEFAULT 0 CHECK (bytes_out >= 0),
    PRIMARY KEY (domain_id, day)
);
CREATE INDEX domain_traffic_jail_idx ON domain_traffic (jail_id, day);
