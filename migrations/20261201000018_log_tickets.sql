-- A jail's output is read from its node's agent, which the web tier reaches
-- at the node's log endpoint with a ticket it minted here: single use, valid
-- for a minute, bound to one jail on one node. The agent needs no secret
-- shared with the web tier, and the web tier no access to the node.
ALTER TABLE nodes ADD COLUMN log_endpoint text;
CREATE TABLE log_tickets (
    token_hash  bytea PRIMARY KEY,
    jail_id     uuid NOT NULL REFERENCES jails (id) ON DELETE CASCADE,
    node_id     uuid NOT NULL REFERENCES nodes (id) ON DELETE CASCADE,
    expires_at  timestamptz NOT NULL
);
CREATE INDEX log_tickets_expiry_idx ON log_tickets (expires_at);
