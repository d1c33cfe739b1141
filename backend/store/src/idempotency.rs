//! Idempotency keys: the first answer to a POST, replayed for a retry.

use uuid::Uuid;

use crate::{PgPool, StoreError};

/// What to do with a request carrying an idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Begin {
    /// The key is new and now reserved: serve the request, then [`finish`].
    Fresh,
    /// The same key and body were answered before: send this again.
    Replay {
        /// HTTP status of the first answer.
        status: u16,
        /// Its body.
        body: Vec<u8>,
        /// Its content type.
        content_type: String,
    },
    /// The key was used with another request.
    Mismatch,
    /// The first request with this key is still being served.
    InProgress,
}

/// A stored key: request hash, answer status, body and content type.
struct StoredRow {
    request_hash: Vec<u8>,
    status: Option<i16>,
    response_body: Option<Vec<u8>>,
    content_type: Option<String>,
}

/// Reserves `key` for `token_id` or tells how it was used before.
/// Keys older than a day are forgotten.
pub async fn begin(
    pool: &PgPool,
    token_id: Uuid,
    key: &str,
    request_hash: &[u8; 32],
) -> Result<Begin, StoreError> {
    let inserted = sqlx::query!(
        "INSERT INTO idempotency_keys (token_id, key, request_hash) VALUES ($1, $2, $3)
         ON CONFLICT (token_id, key) DO UPDATE
             SET request_hash = EXCLUDED.request_hash, status = NULL, response_body = NULL,
                 content_type = NULL, created_at = now()
             WHERE idempotency_keys.created_at < now() - interval '24 hours'",
        token_id,
        key,
        request_hash.as_slice()
    )
    .execute(pool)
    .await?
    .rows_affected();
    if inserted == 1 {
        return Ok(Begin::Fresh);
    }
    let row = sqlx::query_as!(
        StoredRow,
        "SELECT request_hash, status, response_body, content_type FROM idempotency_keys
         WHERE token_id = $1 AND key = $2",
        token_id,
        key
    )
    .fetch_optional(pool)
    .await?;
    Ok(match row {
        // Released between our insert and select: the caller may simply retry.
        None => Begin::InProgress,
        Some(r) if r.request_hash.as_slice() != request_hash.as_slice() => Begin::Mismatch,
        Some(StoredRow {
            status: Some(status),
            response_body,
            content_type,
            ..
        }) => Begin::Replay {
            status: u16::try_from(status).unwrap_or(500),
            body: response_body.unwrap_or_default(),
            content_type: content_type.unwrap_or_else(|| "application/json".into()),
        },
        Some(StoredRow { status: None, .. }) => Begin::InProgress,
    })
}

/// Stores the answer to a reserved key.
pub async fn finish(
    pool: &PgPool,
    token_id: Uuid,
    key: &str,
    status: u16,
    body: &[u8],
    content_type: &str,
) -> Result<(), StoreError> {
    sqlx::query!(
        "UPDATE idempotency_keys SET status = $3, response_body = $4, content_type = $5
         WHERE token_id = $1 AND key = $2",
        token_id,
        key,
        i16::try_from(status).unwrap_or(500),
        body,
        content_type
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Frees a reserved key whose request failed on our side, so a retry runs again.
pub async fn release(pool: &PgPool, token_id: Uuid, key: &str) -> Result<(), StoreError> {
    sqlx::query!(
        "DELETE FROM idempotency_keys WHERE token_id = $1 AND key = $2 AND status IS NULL",
        token_id,
        key
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Deletes keys older than a day.
pub async fn purge(pool: &PgPool) -> Result<u64, StoreError> {
    Ok(
        sqlx::query!("DELETE FROM idempotency_keys WHERE created_at < now() - interval '24 hours'")
            .execute(pool)
            .await?
            .rows_affected(),
    )
}
