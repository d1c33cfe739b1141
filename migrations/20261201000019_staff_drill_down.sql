-- Why a tenant is suspended, written by staff and shown to its customers.
ALTER TABLE tenants ADD COLUMN suspension_reason text
    CHECK (length(suspension_reason) BETWEEN 1 AND 500);
-- One-time links that let a user set a new password, made by staff instead
-- of a password chosen for them: only the SHA-256 of the link's token is kept.
CREATE TABLE password_resets (
    token_hash  bytea PRIMARY KEY,
    user_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_by  uuid REFERENCES users (id) ON DELETE SET NULL,
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz
);
CREATE INDEX password_resets_user_idx ON password_resets (user_id);
