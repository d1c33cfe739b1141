-- Environment variables of a jail's command: [{"name", "value", "secret"}].
-- A secret's value is written by its tenant and read by the node only.
ALTER TABLE jails ADD COLUMN env jsonb NOT NULL DEFAULT '[]'
    CHECK (jsonb_typeof(env) = 'array' AND jsonb_array_length(env) <= 64);
