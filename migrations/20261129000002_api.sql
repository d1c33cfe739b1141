-- The billing API: idempotent requests, the event outbox, webhook endpoints
-- and their delivery log, closed usage months.

-- The first answer to a POST with an Idempotency-Key, replayed for the same
-- key and body. A NULL status marks a request still being served.
CREATE TABLE idempotency_keys (
    token_id        uuid NOT NULL REFERENCES api_tokens (id) ON DELETE CASCADE,
    key             text NOT NULL CHECK (length(key) BETWEEN 1 AND 255),
    request_hash    bytea NOT NULL CHECK (length(request_hash) = 32),
    status          smallint,
    response_body   bytea,
    content_type    text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (token_id, key)
);
CREATE INDEX idempotency_keys_created_idx ON idempotency_keys (created_at);

-- Where a billing system wants events. A NULL tenant means every tenant.
CREATE TABLE webhook_endpoints (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    url             text NOT NULL CHECK (url ~ '^https?://' AND length(url) <= 2000),
    secret          text NOT NULL CHECK (length(secret) BETWEEN 16 AND 200),
    event_types     text[] NOT NULL CHECK (cardinality(event_types) > 0),
    tenant_id       uuid REFERENCES tenants (id),
    description     text NOT NULL DEFAULT '' CHECK (length(description) <= 200),
    created_by      uuid REFERENCES api_tokens (id) ON DELETE SET NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    disabled_at     timestamptz
);

-- The outbox: every event, written in the transaction of the change it reports.
CREATE TABLE events (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    seq             bigserial NOT NULL UNIQUE,
    tenant_id       uuid REFERENCES tenants (id),
    event_type      text NOT NULL CHECK (event_type ~ '^[a-z_]+\.[a-z_]+$'),
    data            jsonb NOT NULL DEFAULT '{}',
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX events_tenant_idx ON events (tenant_id, seq);

-- One event to one endpoint. Workers claim due rows with FOR UPDATE SKIP
-- LOCKED and lease them by pushing next_attempt_at forward, so several web
-- replicas never send the same delivery at once.
CREATE TABLE webhook_deliveries (
    id              bigserial PRIMARY KEY,
    event_id        uuid NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    endpoint_id     uuid NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    status          text NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts        integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_status     smallint,
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz,
    UNIQUE (event_id, endpoint_id)
);
CREATE INDEX webhook_deliveries_due_idx ON webhook_deliveries (next_attempt_at)
    WHERE status = 'pending';

-- Every attempt, for staff to see why an endpoint does not get its events.
CREATE TABLE webhook_attempts (
    id              bigserial PRIMARY KEY,
    delivery_id     bigint NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    attempted_at    timestamptz NOT NULL DEFAULT now(),
    status_code     smallint,
    error           text,
    duration_ms     integer NOT NULL CHECK (duration_ms >= 0)
);
CREATE INDEX webhook_attempts_delivery_idx ON webhook_attempts (delivery_id, attempted_at);

-- Months whose usage.month_closed events were emitted, so each is emitted once
-- however many web replicas run.
CREATE TABLE usage_months_closed (
    month           date PRIMARY KEY CHECK (date_trunc('month', month) = month),
    closed_at       timestamptz NOT NULL DEFAULT now()
);

-- Billing reads days and months, not hours: these per-jail aggregates are kept
-- up to date by a trigger on usage_rollups, in the transaction that writes the
-- rollup, so they always equal the sums of the hourly rows. They are per jail
-- (not per tenant) because one agent writes a jail's rollups: agents on
-- different nodes never wait on each other's aggregate rows.
--
-- Byte-hours (memory, disk) of one jail-hour are the mean of that hour's
-- samples, taken as held for the hour, in whole bytes:
--     byte_hours = sum_of_sampled_bytes / samples   (integer division; 0 without samples)
-- A day's or month's byte-hours are the sums of its hours', so every billed
-- quantity is an exact integer sum of hourly values.
CREATE FUNCTION usage_byte_hours(bytes_sum bigint, samples bigint) RETURNS bigint
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT CASE WHEN samples > 0 THEN bytes_sum / samples ELSE 0 END $$;

CREATE TABLE usage_jail_days (
    jail_id                 uuid NOT NULL REFERENCES jails (id) ON DELETE CASCADE,
    day                     date NOT NULL,
    tenant_id               uuid NOT NULL REFERENCES tenants (id),
    samples                 bigint NOT NULL DEFAULT 0,
    cpu_usec                bigint NOT NULL DEFAULT 0,
    memory_byte_hours       bigint NOT NULL DEFAULT 0,
    memory_peak_bytes       bigint NOT NULL DEFAULT 0,
    io_read_bytes           bigint NOT NULL DEFAULT 0,
    io_write_bytes          bigint NOT NULL DEFAULT 0,
    net_rx_bytes            bigint NOT NULL DEFAULT 0,
    net_tx_bytes            bigint NOT NULL DEFAULT 0,
    disk_byte_hours         bigint NOT NULL DEFAULT 0,
    disk_peak_bytes         bigint NOT NULL DEFAULT 0,
    oom_kills               bigint NOT NULL DEFAULT 0,
    memory_limit_hits       bigint NOT NULL DEFAULT 0,
    pids_limit_hits         bigint NOT NULL DEFAULT 0,
    cpu_throttled_periods   bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (jail_id, day)
);
CREATE INDEX usage_jail_days_tenant_idx ON usage_jail_days (tenant_id, day);

CREATE TABLE usage_jail_months (LIKE usage_jail_days INCLUDING DEFAULTS);
ALTER TABLE usage_jail_months RENAME COLUMN day TO month;
ALTER TABLE usage_jail_months ADD PRIMARY KEY (jail_id, month),
    ADD FOREIGN KEY (jail_id) REFERENCES jails (id) ON DELETE CASCADE,
    ADD FOREIGN KEY (tenant_id) REFERENCES tenants (id),
    ADD CHECK (date_trunc('month', month) = month);
CREATE INDEX usage_jail_months_month_idx ON usage_jail_months (month, tenant_id);
CREATE INDEX usage_jail_months_tenant_idx ON usage_jail_months (tenant_id, month);

-- Adds a rollup's change (the new row minus the old one) to its day and month.
-- Deleting hourly rows (retention) leaves the day and month totals alone.
CREATE FUNCTION usage_rollups_fold() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    o_samples bigint := 0; o_cpu bigint := 0; o_mem bigint := 0; o_io_r bigint := 0;
    o_io_w bigint := 0; o_rx bigint := 0; o_tx bigint := 0; o_disk bigint := 0;
    o_oom bigint := 0; o_memhit bigint := 0; o_pidhit bigint := 0; o_thr bigint := 0;
BEGIN
    IF TG_OP = 'UPDATE' THEN
        IF OLD.jail_id <> NEW.jail_id OR OLD.hour <> NEW.hour OR OLD.tenant_id <> NEW.tenant_id THEN
            RAISE EXCEPTION 'a usage rollup cannot move to another jail, hour or tenant';
        END IF;
        o_samples := OLD.samples; o_cpu := OLD.cpu_usec;
        o_mem := usage_byte_hours(OLD.memory_bytes_sum, OLD.samples);
        o_io_r := OLD.io_read_bytes; o_io_w := OLD.io_write_bytes;
        o_rx := OLD.net_rx_bytes; o_tx := OLD.net_tx_bytes;
        o_disk := usage_byte_hours(OLD.disk_bytes_sum, OLD.samples);
        o_oom := OLD.oom_kills; o_memhit := OLD.memory_limit_hits;
        o_pidhit := OLD.pids_limit_hits; o_thr := OLD.cpu_throttled_periods;
    END IF;
    INSERT INTO usage_jail_days AS a (jail_id, day, tenant_id, samples, cpu_usec, memory_byte_hours,
        memory_peak_bytes, io_read_bytes, io_write_bytes, net_rx_bytes, net_tx_bytes, disk_byte_hours,
        disk_peak_bytes, oom_kills, memory_limit_hits, pids_limit_hits, cpu_throttled_periods)
    VALUES (NEW.jail_id, (NEW.hour AT TIME ZONE 'UTC')::date, NEW.tenant_id,
        NEW.samples - o_samples, NEW.cpu_usec - o_cpu,
        usage_byte_hours(NEW.memory_bytes_sum, NEW.samples) - o_mem, NEW.memory_peak_bytes,
        NEW.io_read_bytes - o_io_r, NEW.io_write_bytes - o_io_w, NEW.net_rx_bytes - o_rx,
        NEW.net_tx_bytes - o_tx, usage_byte_hours(NEW.disk_bytes_sum, NEW.samples) - o_disk,
        NEW.disk_peak_bytes, NEW.oom_kills - o_oom, NEW.memory_limit_hits - o_memhit,
        NEW.pids_limit_hits - o_pidhit, NEW.cpu_throttled_periods - o_thr)
    ON CONFLICT (jail_id, day) DO UPDATE SET
        samples = a.samples + EXCLUDED.samples, cpu_usec = a.cpu_usec + EXCLUDED.cpu_usec,
        memory_byte_hours = a.memory_byte_hours + EXCLUDED.memory_byte_hours,
        memory_peak_bytes = GREATEST(a.memory_peak_bytes, EXCLUDED.memory_peak_bytes),
        io_read_bytes = a.io_read_bytes + EXCLUDED.io_read_bytes,
        io_write_bytes = a.io_write_bytes + EXCLUDED.io_write_bytes,
        net_rx_bytes = a.net_rx_bytes + EXCLUDED.net_rx_bytes,
        net_tx_bytes = a.net_tx_bytes + EXCLUDED.net_tx_bytes,
        disk_byte_hours = a.disk_byte_hours + EXCLUDED.disk_byte_hours,
        disk_peak_bytes = GREATEST(a.disk_peak_bytes, EXCLUDED.disk_peak_bytes),
        oom_kills = a.oom_kills + EXCLUDED.oom_kills,
        memory_limit_hits = a.memory_limit_hits + EXCLUDED.memory_limit_hits,
        pids_limit_hits = a.pids_limit_hits + EXCLUDED.pids_limit_hits,
        cpu_throttled_periods = a.cpu_throttled_periods + EXCLUDED.cpu_throttled_periods;
    INSERT INTO usage_jail_months AS a (jail_id, month, tenant_id, samples, cpu_usec, memory_byte_hours,
        memory_peak_bytes, io_read_bytes, io_write_bytes, net_rx_bytes, net_tx_bytes, disk_byte_hours,
        disk_peak_bytes, oom_kills, memory_limit_hits, pids_limit_hits, cpu_throttled_periods)
    VALUES (NEW.jail_id, date_trunc('month', NEW.hour AT TIME ZONE 'UTC')::date, NEW.tenant_id,
        NEW.samples - o_samples, NEW.cpu_usec - o_cpu,
        usage_byte_hours(NEW.memory_bytes_sum, NEW.samples) - o_mem, NEW.memory_peak_bytes,
        NEW.io_read_bytes - o_io_r, NEW.io_write_bytes - o_io_w, NEW.net_rx_bytes - o_rx,
        NEW.net_tx_bytes - o_tx, usage_byte_hours(NEW.disk_bytes_sum, NEW.samples) - o_disk,
        NEW.disk_peak_bytes, NEW.oom_kills - o_oom, NEW.memory_limit_hits - o_memhit,
        NEW.pids_limit_hits - o_pidhit, NEW.cpu_throttled_periods - o_thr)
    ON CONFLICT (jail_id, month) DO UPDATE SET
        samples = a.samples + EXCLUDED.samples, cpu_usec = a.cpu_usec + EXCLUDED.cpu_usec,
        memory_byte_hours = a.memory_byte_hours + EXCLUDED.memory_byte_hours,
        memory_peak_bytes = GREATEST(a.memory_peak_bytes, EXCLUDED.memory_peak_bytes),
        io_read_bytes = a.io_read_bytes + EXCLUDED.io_read_bytes,
        io_write_bytes = a.io_write_bytes + EXCLUDED.io_write_bytes,
        net_rx_bytes = a.net_rx_bytes + EXCLUDED.net_rx_bytes,
        net_tx_bytes = a.net_tx_bytes + EXCLUDED.net_tx_bytes,
        disk_byte_hours = a.disk_byte_hours + EXCLUDED.disk_byte_hours,
        disk_peak_bytes = GREATEST(a.disk_peak_bytes, EXCLUDED.disk_peak_bytes),
        oom_kills = a.oom_kills + EXCLUDED.oom_kills,
        memory_limit_hits = a.memory_limit_hits + EXCLUDED.memory_limit_hits,
        pids_limit_hits = a.pids_limit_hits + EXCLUDED.pids_limit_hits,
        cpu_throttled_periods = a.cpu_throttled_periods + EXCLUDED.cpu_throttled_periods;
    RETURN NULL;
END $$;

CREATE TRIGGER usage_rollups_fold AFTER INSERT OR UPDATE ON usage_rollups
    FOR EACH ROW EXECUTE FUNCTION usage_rollups_fold();

-- Rollups written before this migration.
INSERT INTO usage_jail_days (jail_id, day, tenant_id, samples, cpu_usec, memory_byte_hours,
    memory_peak_bytes, io_read_bytes, io_write_bytes, net_rx_bytes, net_tx_bytes, disk_byte_hours,
    disk_peak_bytes, oom_kills, memory_limit_hits, pids_limit_hits, cpu_throttled_periods)
SELECT jail_id, (hour AT TIME ZONE 'UTC')::date, min(tenant_id::text)::uuid, sum(samples), sum(cpu_usec),
    sum(usage_byte_hours(memory_bytes_sum, samples)), max(memory_peak_bytes), sum(io_read_bytes),
    sum(io_write_bytes), sum(net_rx_bytes), sum(net_tx_bytes), sum(usage_byte_hours(disk_bytes_sum, samples)),
    max(disk_peak_bytes), sum(oom_kills), sum(memory_limit_hits), sum(pids_limit_hits), sum(cpu_throttled_periods)
FROM usage_rollups GROUP BY 1, 2;
INSERT INTO usage_jail_months (jail_id, month, tenant_id, samples, cpu_usec, memory_byte_hours,
    memory_peak_bytes, io_read_bytes, io_write_bytes, net_rx_bytes, net_tx_bytes, disk_byte_hours,
    disk_peak_bytes, oom_kills, memory_limit_hits, pids_limit_hits, cpu_throttled_periods)
SELECT jail_id, date_trunc('month', day)::date, min(tenant_id::text)::uuid, sum(samples), sum(cpu_usec),
    sum(memory_byte_hours), max(memory_peak_bytes), sum(io_read_bytes), sum(io_write_bytes),
    sum(net_rx_bytes), sum(net_tx_bytes), sum(disk_byte_hours), max(disk_peak_bytes), sum(oom_kills),
    sum(memory_limit_hits), sum(pids_limit_hits), sum(cpu_throttled_periods)
FROM usage_jail_days GROUP BY 1, 2;
