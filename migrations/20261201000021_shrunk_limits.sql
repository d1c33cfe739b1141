-- A jail shrunk because its tenant's quota was lowered remembers the limits
-- it had ({"cpu_millicores", "memory_bytes", "pids"}), so its owner can be
-- offered to grow it back once the quota allows; cleared when the jail is
-- grown back or its owner sets its limits.
ALTER TABLE jails ADD COLUMN limits_before_clamp jsonb
    CHECK (limits_before_clamp IS NULL OR jsonb_typeof(limits_before_clamp) = 'object');
