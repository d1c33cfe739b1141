//! The audit log: who did what to which tenant's resource, from where.

use uuid::Uuid;

use crate::{PgPool, StoreError};

/// One state-changing action, as recorded.
#[derive(Debug, Clone)]
pub struct Entry<'a> {
    /// The acting account, when a person acted.
    pub actor_user_id: Option<Uuid>,
    /// A readable name of the actor: an email, `token:NAME`, `agent:NODE`, `system`.
    pub actor: &'a str,
    /// The tenant whose resource changed, if any.
    pub tenant_id: Option<Uuid>,
    /// `area.verb`, e.g. `user.sign_in`, `jail.create`.
    pub action: &'a str,
    /// What was acted on, e.g. a jail name or an email.
    pub target: &'a str,
    /// The client's address, for web and API actions.
    pub client_addr: Option<&'a str>,
    /// Anything else worth keeping.
    pub details: serde_json::Value,
}

/// Appends an entry to the log.
pub async fn record<'e, E>(executor: E, entry: &Entry<'_>) -> Result<(), StoreError>
where
    E: sqlx::PgExecutor<'e>,
{
    sqlx::query(
        "INSERT INTO audit_log (actor_user_id, actor, tenant_id, action, target, client_addr, details)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(entry.actor_user_id)
    .bind(entry.actor)
    .bind(entry.tenant_id)
    .bind(entry.action)
    .bind(entry.target)
    .bind(entry.client_addr)
    .bind(&entry.details)
    .execute(executor)
    .await?;
    Ok(())
}

/// Counts entries with a given action (for tests and the staff overview).
pub async fn count_action(pool: &PgPool, action: &str) -> Result<i64, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE action = $1")
            .bind(action)
            .fetch_one(pool)
            .await?,
    )
}
