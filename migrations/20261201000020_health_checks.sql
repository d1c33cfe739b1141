-- An optional health check per jail, probed by its node from the host:
-- {"kind": "http" | "tcp", "port", "path" (http), "interval_secs", "failures"}.
ALTER TABLE jails ADD COLUMN health_check jsonb
    CHECK (health_check IS NULL OR jsonb_typeof(health_check) = 'object');
-- What the last probes said: unknown until a first answer (or without a check).
ALTER TABLE jails ADD COLUMN health text NOT NULL DEFAULT 'unknown'
    CHECK (health IN ('unknown', 'healthy', 'unhealthy'));
ALTER TABLE jails ADD COLUMN health_detail text;
ALTER TABLE jails ADD COLUMN health_at timestamptz;
