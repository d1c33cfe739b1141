-- Each tenant's usage per month, kept by the same chain of triggers as the
-- per-jail month totals: sorting every tenant by this month's CPU time or
-- transfer reads one row per tenant instead of summing all their jails.
CREATE TABLE usage_tenant_months (
    tenant_id       uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    month           date NOT NULL CHECK (date_trunc('month', month) = month),
    cpu_usec        bigint NOT NULL DEFAULT 0,
    net_rx_bytes    bigint NOT NULL DEFAULT 0,
    net_tx_bytes    bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, month)
);
CREATE INDEX usage_tenant_months_cpu_idx ON usage_tenant_months (month, cpu_usec DESC);
CREATE INDEX usage_tenant_months_transfer_idx
    ON usage_tenant_months (month, (net_rx_bytes + net_tx_bytes) DESC);

-- Adds a jail month's change (new row minus old) to its tenant's month.
CREATE FUNCTION usage_jail_months_fold() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    o_cpu bigint := 0; o_rx bigint := 0; o_tx bigint := 0;
BEGIN
    IF TG_OP = 'UPDATE' THEN
        IF OLD.tenant_id <> NEW.tenant_id OR OLD.month <> NEW.month THEN
            RAISE EXCEPTION 'a jail month cannot move to another tenant or month';
        END IF;
        o_cpu := OLD.cpu_usec; o_rx := OLD.net_rx_bytes; o_tx := OLD.net_tx_bytes;
    END IF;
    IF NEW.cpu_usec = o_cpu AND NEW.net_rx_bytes = o_rx AND NEW.net_tx_bytes = o_tx THEN
        RETURN NULL;
    END IF;
    INSERT INTO usage_tenant_months AS a (tenant_id, month, cpu_usec, net_rx_bytes, net_tx_bytes)
    VALUES (NEW.tenant_id, NEW.month, NEW.cpu_usec - o_cpu, NEW.net_rx_bytes - o_rx, NEW.net_tx_bytes - o_tx)
    ON CONFLICT (tenant_id, month) DO UPDATE SET
        cpu_usec = a.cpu_usec + EXCLUDED.cpu_usec,
        net_rx_bytes = a.net_rx_bytes + EXCLUDED.net_rx_bytes,
        net_tx_bytes = a.net_tx_bytes + EXCLUDED.net_tx_bytes;
    RETURN NULL;
END $$;

CREATE TRIGGER usage_jail_months_fold AFTER INSERT OR UPDATE ON usage_jail_months
    FOR EACH ROW EXECUTE FUNCTION usage_jail_months_fold();

-- Months written before this migration.
INSERT INTO usage_tenant_months (tenant_id, month, cpu_usec, net_rx_bytes, net_tx_bytes)
SELECT tenant_id, month, sum(cpu_usec), sum(net_rx_bytes), sum(net_tx_bytes)
FROM usage_jail_months GROUP BY 1, 2;
