//! Server-side sessions. The cookie holds a random token; the table holds its
//! SHA-256, so reading the table does not let anyone sign in.

use chrono::{DateTime, Utc};
use rand::RngCore;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::users::User;
use crate::{PgPool, StoreError};

/// How long a session lives without use, and at most.
#[derive(Debug, Clone, Copy)]
pub struct Expiry {
    /// Idle time after which a session ends.
    pub idle: chrono::Duration,
    /// Time after sign-in after which a session ends regardless of use.
    pub absolute: chrono::Duration,
}

/// A live session and its user.
#[derive(Debug, Clone)]
pub struct Session {
    /// The signed-in account.
    pub user: User,
    /// The token every state-changing form must carry.
    pub csrf_token: String,
    /// When the session ends at the latest.
    pub expires_at: DateTime<Utc>,
}

/// The SHA-256 of a session token: how the session is stored and named.
pub fn token_hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// 32 random bytes as hex: session cookies and CSRF tokens.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// Starts a session for `user_id`, returning the cookie token.
pub async fn create(
    pool: &PgPool,
    user_id: Uuid,
    expiry: Expiry,
    client_addr: Option<&str>,
) -> Result<String, StoreError> {
    let token = random_token();
    sqlx::query!(
        "INSERT INTO sessions (token_hash, user_id, csrf_token, expires_at, client_addr)
         VALUES ($1, $2, $3, now() + $4, $5)",
        token_hash(&token),
        user_id,
        random_token(),
        // An interval, from chrono's duration (which the check does not map).
        expiry.absolute as _,
        client_addr
    )
    .execute(pool)
    .await?;
    Ok(token)
}

/// Looks a cookie token up, refusing expired or idle sessions, and marks it
/// used. Expired rows are deleted on the way.
pub async fn touch(
    pool: &PgPool,
    token: &str,
    expiry: Expiry,
) -> Result<Option<Session>, StoreError> {
    let hash = token_hash(token);
    // Reads the session and marks it used, writing the row at most once a
    // minute (one round trip; no write on every page view).
    let row = sqlx::query!(
        r#"WITH live AS (
             SELECT s.token_hash, s.last_seen_at, u.id, u.email, u.role, u.tenant_id, s.csrf_token, s.expires_at
             FROM sessions s JOIN users u ON u.id = s.user_id
             WHERE s.token_hash = $1 AND s.expires_at > now() AND s.last_seen_at > now() - $2::interval
               AND (u.tenant_id IS NULL
                    OR NOT EXISTS (SELECT 1 FROM tenants t
                                   WHERE t.id = u.tenant_id AND t.status = 'terminated'))
         ), seen AS (
             UPDATE sessions SET last_seen_at = now()
             FROM live WHERE sessions.token_hash = live.token_hash
               AND live.last_seen_at < now() - interval '1 minute'
         )
         SELECT id AS "id!", email AS "email!", role AS "role!", tenant_id,
             csrf_token AS "csrf_token!", expires_at AS "expires_at!" FROM live"#,
        hash.as_slice(),
        // An interval, from chrono's duration (which the check does not map).
        expiry.idle as _
    )
    .fetch_optional(pool)
    .await?;
    let Some(row) = row else {
        sqlx::query!(
            "DELETE FROM sessions WHERE token_hash = $1",
            hash.as_slice()
        )
        .execute(pool)
        .await?;
        return Ok(None);
    };
    let user = User {
        id: row.id,
        email: stockade_domain::Email::parse(&row.email)
            .map_err(|e| anyhow::anyhow!("stored email: {e}"))?,
        role: row
            .role
            .parse()
            .map_err(|e| anyhow::anyhow!("stored role: {e}"))?,
        tenant_id: row.tenant_id,
    };
    Ok(Some(Session {
        user,
        csrf_token: row.csrf_token,
        expires_at: row.expires_at,
    }))
}

/// Ends one session (sign-out).
pub async fn delete(pool: &PgPool, token: &str) -> Result<(), StoreError> {
    sqlx::query!(
        "DELETE FROM sessions WHERE token_hash = $1",
        token_hash(token)
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Removes sessions past their absolute expiry.
pub async fn purge_expired(pool: &PgPool) -> Result<u64, StoreError> {
    Ok(
        sqlx::query!("DELETE FROM sessions WHERE expires_at <= now()")
            .execute(pool)
            .await?
            .rows_affected(),
    )
}
