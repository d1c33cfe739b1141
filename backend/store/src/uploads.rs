//! Files waiting to be written into a jail's site folder by its agent.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::{JAILS_CHANNEL, PgPool, StoreError};

/// An upload as the jail page lists it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Upload {
    /// Stable id.
    pub id: Uuid,
    /// File name inside the site folder.
    pub file_name: String,
    /// Size in bytes.
    pub size_bytes: i64,
    /// `pending`, `written` or `failed`.
    pub state: String,
    /// Why it failed.
    pub error: Option<String>,
    /// When it was uploaded.
    pub created_at: DateTime<Utc>,
}

/// Most bytes of a tenant's uploads waiting to be written (64 MiB).
pub const MAX_PENDING_BYTES: i64 = 64 << 20;

/// Most uploads of a tenant waiting to be written.
pub const MAX_PENDING_UPLOADS: i64 = 100;

/// Stores an upload for a tenant's jail and wakes the agents. The jail must
/// belong to the tenant: the `tenant_id` predicate is the boundary.
///
/// Uploads wait in the database until their jail runs, so a tenant's
/// waiting uploads are bounded ([`MAX_PENDING_BYTES`], [`MAX_PENDING_UPLOADS`]);
/// one past either is refused with [`StoreError::QuotaExceeded`] and nothing
/// already accepted changes.
pub async fn create(
    pool: &PgPool,
    tenant_id: Uuid,
    jail_id: Uuid,
    file_name: &str,
    content: &[u8],
) -> Result<Upload, StoreError> {
    let mut tx = pool.begin().await?;
    // Serialises a tenant's concurrent uploads so the limits hold; only an
    // active tenant uploads.
    let status = sqlx::query_scalar!(
        "SELECT status FROM tenants WHERE id = $1 FOR UPDATE",
        tenant_id
    )
    .fetch_optional(&mut *tx)
    .await?;
    match status.as_deref() {
        Some("active") => {}
        None => return Err(StoreError::NotFound),
        Some(other) => {
            return Err(StoreError::InvalidState(format!(
                "the account is {other}; uploads are refused until it is active again"
            )));
        }
    }
    let node = sqlx::query_scalar!(
        "SELECT node_id FROM jails WHERE id = $1 AND tenant_id = $2 AND desired_state <> 'deleted'",
        jail_id,
        tenant_id
    )
    .fetch_optional(&mut *tx)
    .await?;
    let Some(node) = node else {
        return Err(StoreError::NotFound);
    };
    let size = i64::try_from(content.len()).unwrap_or(i64::MAX);
    let (count, bytes) = pending_totals(&mut tx, tenant_id).await?;
    if count >= MAX_PENDING_UPLOADS {
        return Err(StoreError::QuotaExceeded(format!(
            "{count} uploads are still waiting to be written (at most {MAX_PENDING_UPLOADS}); \
             they are written while their jails run"
        )));
    }
    if bytes.saturating_add(size) > MAX_PENDING_BYTES {
        return Err(StoreError::QuotaExceeded(format!(
            "uploads waiting to be written would come to {} MiB, over the {} MiB allowed \
             ({} MiB are waiting); they are written while their jails run",
            mib(bytes.saturating_add(size)),
            MAX_PENDING_BYTES >> 20,
            mib(bytes),
        )));
    }
    let upload = sqlx::query_as!(
        Upload,
        "INSERT INTO jail_uploads (jail_id, tenant_id, file_name, content, size_bytes)
         VALUES ($1, $2, $3, $4, $5)
         RETURNING id, file_name, size_bytes, state, error, created_at",
        jail_id,
        tenant_id,
        file_name,
        content,
        size
    )
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query!(
        "SELECT pg_notify($1, $2)",
        JAILS_CHANNEL,
        node.map(|n| n.to_string()).unwrap_or_default()
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(upload)
}

/// Whole MiB, rounded up, for messages.
fn mib(bytes: i64) -> i64 {
    bytes.saturating_add((1 << 20) - 1) >> 20
}

/// (count, bytes) of a tenant's uploads waiting to be written into jails
/// that are not being deleted. The `tenant_id` predicate is the boundary.
async fn pending_totals(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    tenant_id: Uuid,
) -> Result<(i64, i64), StoreError> {
    let row = sqlx::query!(
        r#"SELECT count(*) AS "count!", coalesce(sum(u.size_bytes), 0)::bigint AS "bytes!"
         FROM jail_uploads u JOIN jails j ON j.id = u.jail_id
         WHERE u.tenant_id = $1 AND u.state = 'pending' AND j.desired_state <> 'deleted'"#,
        tenant_id
    )
    .fetch_one(&mut **tx)
    .await?;
    Ok((row.count, row.bytes))
}

/// The latest uploads of a tenant's jail.
pub async fn list(
    pool: &PgPool,
    tenant_id: Uuid,
    jail_id: Uuid,
) -> Result<Vec<Upload>, StoreError> {
    Ok(sqlx::query_as!(
        Upload,
        "SELECT id, file_name, size_bytes, state, error, created_at FROM jail_uploads
         WHERE jail_id = $1 AND tenant_id = $2 ORDER BY created_at DESC LIMIT 20",
        jail_id,
        tenant_id
    )
    .fetch_all(pool)
    .await?)
}

/// Pending uploads of a jail, oldest first: (id, file name, content).
pub async fn pending(
    pool: &PgPool,
    jail_id: Uuid,
) -> Result<Vec<(Uuid, String, Vec<u8>)>, StoreError> {
    // A pending upload still has its content (it is dropped when written).
    let rows = sqlx::query!(
        r#"SELECT id, file_name, content AS "content!" FROM jail_uploads WHERE jail_id = $1 AND state = 'pending' ORDER BY created_at"#,
        jail_id
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.id, r.file_name, r.content))
        .collect())
}

/// Jails of a node with pending uploads.
pub async fn jails_with_pending(pool: &PgPool, node_id: Uuid) -> Result<Vec<Uuid>, StoreError> {
    Ok(sqlx::query_scalar!(
        "SELECT DISTINCT u.jail_id FROM jail_uploads u JOIN jails j ON j.id = u.jail_id
         WHERE j.node_id = $1 AND u.state = 'pending'",
        node_id
    )
    .fetch_all(pool)
    .await?)
}

/// Records the outcome of writing an upload; the content is dropped either way.
pub async fn finish(pool: &PgPool, id: Uuid, error: Option<&str>) -> Result<(), StoreError> {
    sqlx::query!(
        "UPDATE jail_uploads SET state = CASE WHEN $2::text IS NULL THEN 'written' ELSE 'failed' END,
             error = $2, content = NULL, done_at = now() WHERE id = $1",
        id,
        error
    )
    .execute(pool)
    .await?;
    Ok(())
}
