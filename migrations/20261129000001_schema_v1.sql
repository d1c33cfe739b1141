-- Schema v1: tenants, plans and quotas, users and sessions, API tokens, nodes,
-- jails with desired/observed state, usage samples and hourly rollups, audit log.
--
-- Integrity lives here, not only in Rust: every quota is CHECKed non-negative,
-- every state is CHECKed against its allowed values, every reference is a
-- foreign key.

CREATE TABLE plans (
    id                      uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name                    text NOT NULL UNIQUE CHECK (name ~ '^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$'),
    display_name            text NOT NULL CHECK (length(display_name) BETWEEN 1 AND 200),
    -- Tenant-wide totals: the sum over a tenant's jails may not exceed these.
    cpu_millicores          integer NOT NULL CHECK (cpu_millicores >= 0),
    memory_bytes            bigint  NOT NULL CHECK (memory_bytes >= 0),
    pids                    integer NOT NULL CHECK (pids >= 0),
    disk_bytes              bigint  NOT NULL CHECK (disk_bytes >= 0),
    max_jails               integer NOT NULL CHECK (max_jails >= 0),
    -- Per-jail ceilings on rates (0 = unthrottled).
    io_read_bps             bigint  NOT NULL DEFAULT 0 CHECK (io_read_bps >= 0),
    io_write_bps            bigint  NOT NULL DEFAULT 0 CHECK (io_write_bps >= 0),
    io_read_iops            bigint  NOT NULL DEFAULT 0 CHECK (io_read_iops >= 0),
    io_write_iops           bigint  NOT NULL DEFAULT 0 CHECK (io_write_iops >= 0),
    net_egress_bps          bigint  NOT NULL DEFAULT 0 CHECK (net_egress_bps >= 0),
    net_ingress_bps         bigint  NOT NULL DEFAULT 0 CHECK (net_ingress_bps >= 0),
    -- Monthly transfer (rx + tx): throttled past the soft share, suspended at the total.
    monthly_transfer_bytes  bigint  NOT NULL DEFAULT 0 CHECK (monthly_transfer_bytes >= 0),
    transfer_soft_percent   smallint NOT NULL DEFAULT 80 CHECK (transfer_soft_percent BETWEEN 1 AND 100),
    transfer_throttle_bps   bigint  NOT NULL DEFAULT 1000000 CHECK (transfer_throttle_bps >= 0),
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE tenants (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    slug            text NOT NULL UNIQUE CHECK (slug ~ '^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$'),
    display_name    text NOT NULL CHECK (length(display_name) BETWEEN 1 AND 200),
    plan_id         uuid NOT NULL REFERENCES plans (id),
    status          text NOT NULL DEFAULT 'active'
                    CHECK (status IN ('active', 'suspended', 'terminated')),
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    suspended_at    timestamptz,
    terminated_at   timestamptz,
    CHECK ((status = 'terminated') = (terminated_at IS NOT NULL))
);
CREATE INDEX tenants_plan_idx ON tenants (plan_id);

-- A NULL column means "as the plan says".
CREATE TABLE tenant_quota_overrides (
    tenant_id               uuid PRIMARY KEY REFERENCES tenants (id) ON DELETE CASCADE,
    cpu_millicores          integer CHECK (cpu_millicores >= 0),
    memory_bytes            bigint  CHECK (memory_bytes >= 0),
    pids                    integer CHECK (pids >= 0),
    disk_bytes              bigint  CHECK (disk_bytes >= 0),
    max_jails               integer CHECK (max_jails >= 0),
    io_read_bps             bigint  CHECK (io_read_bps >= 0),
    io_write_bps            bigint  CHECK (io_write_bps >= 0),
    io_read_iops            bigint  CHECK (io_read_iops >= 0),
    io_write_iops           bigint  CHECK (io_write_iops >= 0),
    net_egress_bps          bigint  CHECK (net_egress_bps >= 0),
    net_ingress_bps         bigint  CHECK (net_ingress_bps >= 0),
    monthly_transfer_bytes  bigint  CHECK (monthly_transfer_bytes >= 0),
    updated_at              timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE users (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    email               text NOT NULL UNIQUE CHECK (email = lower(email) AND email LIKE '%_@_%'),
    password_hash       text NOT NULL CHECK (password_hash LIKE '$argon2id$%'),
    role                text NOT NULL CHECK (role IN ('customer', 'operator', 'admin')),
    tenant_id           uuid REFERENCES tenants (id),
    created_at          timestamptz NOT NULL DEFAULT now(),
    password_changed_at timestamptz NOT NULL DEFAULT now(),
    -- Customers belong to exactly one tenant; staff to none.
    CHECK ((role = 'customer') = (tenant_id IS NOT NULL))
);
CREATE INDEX users_tenant_idx ON users (tenant_id);

-- Server-side sessions. Only a hash of the cookie's token is stored, so a
-- leaked database dump cannot be replayed as a cookie.
CREATE TABLE sessions (
    token_hash      bytea PRIMARY KEY CHECK (length(token_hash) = 32),
    user_id         uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    csrf_token      text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    last_seen_at    timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz NOT NULL,
    client_addr     text
);
CREATE INDEX sessions_user_idx ON sessions (user_id);
CREATE INDEX sessions_expiry_idx ON sessions (expires_at);

CREATE TABLE api_tokens (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name            text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    -- The first characters of the token, to find its row without scanning hashes.
    prefix          text NOT NULL UNIQUE,
    token_hash      bytea NOT NULL CHECK (length(token_hash) = 32),
    scopes          text[] NOT NULL CHECK (scopes <@ ARRAY['tenants:read', 'tenants:write',
                        'jails:read', 'jails:write', 'usage:read', 'webhooks:write']::text[]),
    tenant_id       uuid REFERENCES tenants (id),
    created_by      uuid REFERENCES users (id) ON DELETE SET NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    last_used_at    timestamptz,
    revoked_at      timestamptz
);

CREATE TABLE nodes (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name            text NOT NULL UNIQUE CHECK (name ~ '^[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?$'),
    cpus            integer NOT NULL CHECK (cpus >= 0),
    memory_bytes    bigint  NOT NULL CHECK (memory_bytes >= 0),
    disk_bytes      bigint  NOT NULL CHECK (disk_bytes >= 0),
    max_jails       integer NOT NULL DEFAULT 1000 CHECK (max_jails >= 0),
    address_pool    cidr,
    agent_version   text NOT NULL DEFAULT '',
    registered_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE jails (
    id                      uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id               uuid NOT NULL REFERENCES tenants (id),
    node_id                 uuid REFERENCES nodes (id),
    name                    text NOT NULL CHECK (name ~ '^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$'),
    image                   text NOT NULL CHECK (image ~ '^[a-z0-9][a-z0-9._-]{0,62}$'),
    kind                    text NOT NULL CHECK (kind IN ('app', 'system')),
    command                 text[] NOT NULL DEFAULT '{}',
    cpu_millicores          integer NOT NULL CHECK (cpu_millicores > 0),
    memory_bytes            bigint  NOT NULL CHECK (memory_bytes > 0),
    pids                    integer NOT NULL CHECK (pids > 0),
    disk_bytes              bigint  NOT NULL CHECK (disk_bytes > 0),
    io_read_bps             bigint  NOT NULL DEFAULT 0 CHECK (io_read_bps >= 0),
    io_write_bps            bigint  NOT NULL DEFAULT 0 CHECK (io_write_bps >= 0),
    io_read_iops            bigint  NOT NULL DEFAULT 0 CHECK (io_read_iops >= 0),
    io_write_iops           bigint  NOT NULL DEFAULT 0 CHECK (io_write_iops >= 0),
    net_egress_bps          bigint  NOT NULL DEFAULT 0 CHECK (net_egress_bps >= 0),
    net_ingress_bps         bigint  NOT NULL DEFAULT 0 CHECK (net_ingress_bps >= 0),
    desired_state           text NOT NULL DEFAULT 'running'
                            CHECK (desired_state IN ('running', 'stopped', 'deleted')),
    -- What desired_state was when the tenant was suspended, restored on unsuspend.
    desired_before_suspend  text CHECK (desired_before_suspend IN ('running', 'stopped')),
    observed_state          text NOT NULL DEFAULT 'pending'
                            CHECK (observed_state IN ('pending', 'running', 'stopped', 'failed', 'deleted')),
    generation              bigint NOT NULL DEFAULT 1 CHECK (generation >= 1),
    observed_generation     bigint NOT NULL DEFAULT 0 CHECK (observed_generation >= 0),
    address                 inet,
    last_error              text,
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now(),
    observed_at             timestamptz
);
-- A name is unique among a tenant's live jails; a deleted jail's row stays for
-- billing history and frees its name.
CREATE UNIQUE INDEX jails_tenant_name_live_idx ON jails (tenant_id, name)
    WHERE desired_state <> 'deleted';
CREATE INDEX jails_tenant_idx ON jails (tenant_id);
CREATE INDEX jails_node_idx ON jails (node_id);
CREATE UNIQUE INDEX jails_node_address_idx ON jails (node_id, address)
    WHERE address IS NOT NULL AND observed_state <> 'deleted';

-- Raw samples of cumulative kernel counters, kept for a short time.
CREATE TABLE usage_samples (
    jail_id                 uuid NOT NULL REFERENCES jails (id) ON DELETE CASCADE,
    sampled_at              timestamptz NOT NULL,
    tenant_id               uuid NOT NULL REFERENCES tenants (id),
    node_id                 uuid NOT NULL REFERENCES nodes (id),
    cpu_usec                bigint NOT NULL CHECK (cpu_usec >= 0),
    memory_bytes            bigint NOT NULL CHECK (memory_bytes >= 0),
    memory_peak_bytes       bigint NOT NULL CHECK (memory_peak_bytes >= 0),
    pids                    bigint NOT NULL CHECK (pids >= 0),
    io_read_bytes           bigint NOT NULL CHECK (io_read_bytes >= 0),
    io_write_bytes          bigint NOT NULL CHECK (io_write_bytes >= 0),
    net_rx_bytes            bigint NOT NULL CHECK (net_rx_bytes >= 0),
    net_tx_bytes            bigint NOT NULL CHECK (net_tx_bytes >= 0),
    net_rx_packets          bigint NOT NULL CHECK (net_rx_packets >= 0),
    net_tx_packets          bigint NOT NULL CHECK (net_tx_packets >= 0),
    disk_used_bytes         bigint NOT NULL CHECK (disk_used_bytes >= 0),
    oom_kills               bigint NOT NULL CHECK (oom_kills >= 0),
    memory_limit_hits       bigint NOT NULL CHECK (memory_limit_hits >= 0),
    pids_limit_hits         bigint NOT NULL CHECK (pids_limit_hits >= 0),
    cpu_throttled_periods   bigint NOT NULL CHECK (cpu_throttled_periods >= 0),
    PRIMARY KEY (jail_id, sampled_at)
);
CREATE INDEX usage_samples_time_idx ON usage_samples (sampled_at);

-- Hourly deltas per jail, kept for billing. The last_* columns hold the last
-- counter values seen, so a re-run sample neither loses nor doubles usage and
-- a counter that went down (jail restarted) counts from zero.
CREATE TABLE usage_rollups (
    jail_id                 uuid NOT NULL REFERENCES jails (id) ON DELETE CASCADE,
    hour                    timestamptz NOT NULL CHECK (date_trunc('hour', hour) = hour),
    tenant_id               uuid NOT NULL REFERENCES tenants (id),
    samples                 bigint NOT NULL DEFAULT 0 CHECK (samples >= 0),
    cpu_usec                bigint NOT NULL DEFAULT 0 CHECK (cpu_usec >= 0),
    memory_bytes_sum        bigint NOT NULL DEFAULT 0 CHECK (memory_bytes_sum >= 0),
    memory_peak_bytes       bigint NOT NULL DEFAULT 0 CHECK (memory_peak_bytes >= 0),
    io_read_bytes           bigint NOT NULL DEFAULT 0 CHECK (io_read_bytes >= 0),
    io_write_bytes          bigint NOT NULL DEFAULT 0 CHECK (io_write_bytes >= 0),
    net_rx_bytes            bigint NOT NULL DEFAULT 0 CHECK (net_rx_bytes >= 0),
    net_tx_bytes            bigint NOT NULL DEFAULT 0 CHECK (net_tx_bytes >= 0),
    disk_bytes_sum          bigint NOT NULL DEFAULT 0 CHECK (disk_bytes_sum >= 0),
    disk_peak_bytes         bigint NOT NULL DEFAULT 0 CHECK (disk_peak_bytes >= 0),
    oom_kills               bigint NOT NULL DEFAULT 0 CHECK (oom_kills >= 0),
    memory_limit_hits       bigint NOT NULL DEFAULT 0 CHECK (memory_limit_hits >= 0),
    pids_limit_hits         bigint NOT NULL DEFAULT 0 CHECK (pids_limit_hits >= 0),
    cpu_throttled_periods   bigint NOT NULL DEFAULT 0 CHECK (cpu_throttled_periods >= 0),
    last_sampled_at         timestamptz,
    last_counters           jsonb,
    PRIMARY KEY (jail_id, hour)
);
CREATE INDEX usage_rollups_tenant_hour_idx ON usage_rollups (tenant_id, hour);

CREATE TABLE audit_log (
    id              bigserial PRIMARY KEY,
    at              timestamptz NOT NULL DEFAULT now(),
    actor_user_id   uuid REFERENCES users (id) ON DELETE SET NULL,
    -- Who acted, readable even when the user is gone: an email, "token:NAME", "agent:NODE".
    actor           text NOT NULL,
    tenant_id       uuid REFERENCES tenants (id),
    action          text NOT NULL CHECK (action ~ '^[a-z_]+\.[a-z_]+$'),
    target          text NOT NULL DEFAULT '',
    client_addr     text,
    details         jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_log_tenant_idx ON audit_log (tenant_id, at DESC);
CREATE INDEX audit_log_at_idx ON audit_log (at DESC);

INSERT INTO plans (name, display_name, cpu_millicores, memory_bytes, pids, disk_bytes, max_jails,
                   io_read_bps, io_write_bps, io_read_iops, io_write_iops,
                   net_egress_bps, net_ingress_bps, monthly_transfer_bytes)
VALUES
    ('starter', 'Starter', 1000, 1073741824, 256, 5368709120, 3,
     52428800, 52428800, 2000, 2000, 100000000, 100000000, 107374182400),
    ('business', 'Business', 4000, 8589934592, 2048, 53687091200, 20,
     209715200, 209715200, 10000, 10000, 1000000000, 1000000000, 1099511627776);
