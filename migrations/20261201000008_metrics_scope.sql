-- A scope for the web tier's /metrics, which describe every tenant.
ALTER TABLE api_tokens DROP CONSTRAINT api_tokens_scopes_check;
ALTER TABLE api_tokens ADD CONSTRAINT api_tokens_scopes_check
    CHECK (scopes <@ ARRAY['tenants:read', 'tenants:write', 'jails:read', 'jails:write',
                           'usage:read', 'webhooks:write', 'metrics:read']::text[]);
