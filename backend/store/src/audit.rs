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
    sqlx::query!(
        "INSERT INTO audit_log (actor_user_id, actor, tenant_id, action, target, client_addr, details)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        entry.actor_user_id,
        entry.actor,
        entry.tenant_id,
        entry.action,
        entry.target,
        entry.client_addr,
        &entry.details
    )
    .execute(executor)
    .await?;
    Ok(())
}

/// Counts entries with a given action (for tests and the staff overview).
pub async fn count_action(pool: &PgPool, action: &str) -> Result<i64, StoreError> {
    Ok(sqlx::query_scalar!(
        r#"SELECT count(*) AS "count!" FROM audit_log WHERE action = $1"#,
        action
    )
    .fetch_one(pool)
    .await?)
}

/// An audit entry as staff read it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Logged {
    /// Sequence number.
    pub id: i64,
    /// When.
    pub at: chrono::DateTime<chrono::Utc>,
    /// Who.
    pub actor: String,
    /// Tenant slug, if any.
    pub tenant: Option<String>,
    /// What.
    pub action: String,
    /// On what.
    pub target: String,
    /// From where.
    pub client_addr: Option<String>,
    /// What else was kept (values before and after a change).
    pub details: serde_json::Value,
}

/// Filters of the audit page; empty strings mean "any".
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Tenant slug.
    pub tenant: Option<String>,
    /// Actor, as a substring.
    pub actor: Option<String>,
    /// Action prefix, e.g. `jail.` or `user.sign_in`.
    pub action: Option<String>,
    /// Not before.
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// Before.
    pub until: Option<chrono::DateTime<chrono::Utc>>,
}

/// Newest entries first, `limit` per page, entries older than `before_id`.
pub async fn list(
    pool: &PgPool,
    f: &Filter,
    before_id: Option<i64>,
    limit: u32,
) -> Result<Vec<Logged>, StoreError> {
    let like = |s: &Option<String>, prefix_only: bool| {
        s.as_deref().filter(|v| !v.trim().is_empty()).map(|v| {
            let v = v
                .trim()
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_");
            if prefix_only {
                format!("{v}%")
            } else {
                format!("%{v}%")
            }
        })
    };
    Ok(sqlx::query_as!(
        Logged,
        r#"SELECT a.id, a.at, a.actor, t.slug AS "tenant?", a.action, a.target, a.client_addr,
             a.details
         FROM audit_log a LEFT JOIN tenants t ON t.id = a.tenant_id
         WHERE ($1::text IS NULL OR t.slug = $1)
           AND ($2::text IS NULL OR a.actor ILIKE $2)
           AND ($3::text IS NULL OR a.action LIKE $3)
           AND ($4::timestamptz IS NULL OR a.at >= $4)
           AND ($5::timestamptz IS NULL OR a.at < $5)
           AND ($6::bigint IS NULL OR a.id < $6)
         ORDER BY a.id DESC LIMIT $7"#,
        f.tenant
            .as_deref()
            .filter(|v| !v.trim().is_empty())
            .map(str::trim),
        like(&f.actor, false),
        like(&f.action, true),
        f.since,
        f.until,
        before_id,
        i64::from(limit)
    )
    .fetch_all(pool)
    .await?)
}

/// A sign-in attempt, counted before its password is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignInAttempt {
    /// Its row, removed again if the password was right.
    pub id: i64,
    /// Attempts (this one included) for this email from this address.
    pub by_pair: i64,
    /// Attempts from this address, any email.
    pub by_addr: i64,
    /// Attempts for this email, any address.
    pub by_account: i64,
}

/// Records a sign-in attempt and counts the attempts of the last `minutes`
/// that were not successful, this one included. The row is written before
/// the count is read, so of concurrent attempts past a limit each sees the
/// others: none slips through.
pub async fn begin_sign_in(
    pool: &PgPool,
    email: &str,
    addr: Option<&str>,
    minutes: i32,
) -> Result<SignInAttempt, StoreError> {
    let id = sqlx::query_scalar!(
        "INSERT INTO sign_in_attempts (email, client_addr) VALUES ($1, $2) RETURNING id",
        email,
        addr
    )
    .fetch_one(pool)
    .await?;
    let counts = sqlx::query!(
        r#"SELECT count(*) FILTER (WHERE email = $1 AND client_addr IS NOT DISTINCT FROM $2) AS "by_pair!",
                count(*) FILTER (WHERE $2::text IS NOT NULL AND client_addr = $2) AS "by_addr!",
                count(*) FILTER (WHERE email = $1) AS "by_account!"
         FROM sign_in_attempts
         WHERE at > now() - make_interval(mins => $3) AND (email = $1 OR client_addr = $2)"#,
        email,
        addr,
        minutes
    )
    .fetch_one(pool)
    .await?;
    Ok(SignInAttempt {
        id,
        by_pair: counts.by_pair,
        by_addr: counts.by_addr,
        by_account: counts.by_account,
    })
}

/// Removes sign-in attempts older than a day (the window is minutes).
pub async fn purge_sign_in_attempts(pool: &PgPool) -> Result<u64, StoreError> {
    Ok(
        sqlx::query!("DELETE FROM sign_in_attempts WHERE at < now() - interval '1 day'")
            .execute(pool)
            .await?
            .rows_affected(),
    )
}

/// A sign-in succeeded: its attempt no longer counts.
pub async fn sign_in_succeeded(pool: &PgPool, attempt: i64) -> Result<(), StoreError> {
    sqlx::query!("DELETE FROM sign_in_attempts WHERE id = $1", attempt)
        .execute(pool)
        .await?;
    Ok(())
}

/// What the provider's staff did on a tenant's account, newest first: its
/// customers see it (an output read, a restart, a suspension).
pub async fn staff_actions_on(
    pool: &PgPool,
    tenant_id: Uuid,
    limit: u32,
) -> Result<Vec<Logged>, StoreError> {
    Ok(sqlx::query_as!(
        Logged,
        r#"SELECT a.id, a.at, a.actor, t.slug AS "tenant?", a.action, a.target, a.client_addr,
             a.details
         FROM audit_log a LEFT JOIN users u ON u.id = a.actor_user_id
              LEFT JOIN tenants t ON t.id = a.tenant_id
         WHERE a.tenant_id = $1
           AND (u.role IN ('operator', 'admin') OR a.details->>'by_provider' = 'true')
         ORDER BY a.id DESC LIMIT $2"#,
        tenant_id,
        i64::from(limit)
    )
    .fetch_all(pool)
    .await?)
}
