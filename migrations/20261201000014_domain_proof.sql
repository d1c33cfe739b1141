-- Proof that a customer holds a domain before it routes, where the provider
-- asks for it: a TXT record `_stockade.<name>` holding `stockade-proof=<token>`.
-- verified_at NULL: not proven yet (no route, no certificate); staff may
-- waive the proof (proof_waived_by names who did).
ALTER TABLE domains
    ADD COLUMN proof_token text,
    ADD COLUMN verified_at timestamptz,
    ADD COLUMN proof_waived_by text;
-- Domains attached before: proven.
UPDATE domains SET verified_at = created_at;
