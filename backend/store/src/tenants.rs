//! Tenants: the provider's customers, their plan, quota overrides and status.

use chrono::{DateTime, Utc};
use sqlx::{Postgres, Transaction};
use stockade_domain::{TenantSlug, TenantStatus};
use uuid::Uuid;

use crate::{JAILS_CHANNEL, PgPool, StoreError, conflict_as};

mod summaries;
pub use summaries::{SummaryOrder, TenantSummary, summaries};

/// A tenant as staff and billing see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    /// Stable id.
    pub id: Uuid,
    /// Unique short name.
    pub slug: TenantSlug,
    /// Name shown in the panel.
    pub display_name: String,
    /// The plan's id.
    pub plan_id: Uuid,
    /// The plan's short name.
    pub plan_name: String,
    /// Account status.
    pub status: TenantStatus,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// Why it is suspended, as staff wrote it (shown to its customers).
    pub suspension_reason: Option<String>,
}

struct TenantRow {
    id: Uuid,
    slug: String,
    display_name: String,
    plan_id: Uuid,
    plan_name: String,
    status: String,
    created_at: DateTime<Utc>,
    suspension_reason: Option<String>,
}

impl TryFrom<TenantRow> for Tenant {
    type Error = StoreError;
    fn try_from(r: TenantRow) -> Result<Self, StoreError> {
        Ok(Tenant {
            id: r.id,
            slug: TenantSlug::parse(&r.slug).map_err(|e| anyhow::anyhow!("stored slug: {e}"))?,
            display_name: r.display_name,
            plan_id: r.plan_id,
            plan_name: r.plan_name,
            status: r
                .status
                .parse()
                .map_err(|e| anyhow::anyhow!("stored status: {e}"))?,
            created_at: r.created_at,
            suspension_reason: r.suspension_reason,
        })
    }
}

/// A query of [`TenantRow`]s: the tenant with its plan's name, then `$rest`
/// (the `WHERE` clause and what follows) and the arguments.
macro_rules! tenant_query {
    ($rest:tt $(, $arg:expr)* $(,)?) => {
        sqlx::query_as!(
            TenantRow,
            "SELECT t.id, t.slug, t.display_name, t.plan_id, p.name AS plan_name, t.status, t.created_at,
             t.suspension_reason
         FROM tenants t JOIN plans p ON p.id = t.plan_id" + $rest
            $(, $arg)*
        )
    };
}

/// Creates a tenant on a plan.
pub async fn create(
    pool: &PgPool,
    slug: &TenantSlug,
    display_name: &str,
    plan_id: Uuid,
) -> Result<Tenant, StoreError> {
    let mut tx = pool.begin().await?;
    let id = create_in(&mut tx, slug, display_name, plan_id).await?;
    tx.commit().await?;
    get(pool, id).await
}

/// Creates a tenant inside a caller's transaction (to add its owner alongside).
pub async fn create_in(
    tx: &mut Transaction<'_, Postgres>,
    slug: &TenantSlug,
    display_name: &str,
    plan_id: Uuid,
) -> Result<Uuid, StoreError> {
    let plan_exists = sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM plans WHERE id = $1) AS "exists!""#,
        plan_id
    )
    .fetch_one(&mut **tx)
    .await?;
    if !plan_exists {
        return Err(StoreError::InvalidState("the plan does not exist".into()));
    }
    let id = sqlx::query_scalar!(
        "INSERT INTO tenants (slug, display_name, plan_id) VALUES ($1, $2, $3) RETURNING id",
        slug.as_str(),
        display_name,
        plan_id
    )
    .fetch_one(&mut **tx)
    .await
    .map_err(conflict_as("a tenant with this slug"))?;
    let data = serde_json::json!({ "tenant_id": id, "slug": slug, "plan_id": plan_id });
    crate::events::emit(tx, Some(id), "tenant.created", data).await?;
    Ok(id)
}

/// One tenant.
pub async fn get(pool: &PgPool, id: Uuid) -> Result<Tenant, StoreError> {
    let row = tenant_query!(" WHERE t.id = $1", id)
        .fetch_optional(pool)
        .await?;
    row.ok_or(StoreError::NotFound)?.try_into()
}

/// One tenant by slug.
pub async fn by_slug(pool: &PgPool, slug: &TenantSlug) -> Result<Tenant, StoreError> {
    let row = tenant_query!(" WHERE t.slug = $1", slug.as_str())
        .fetch_optional(pool)
        .await?;
    row.ok_or(StoreError::NotFound)?.try_into()
}

/// A page of tenants ordered by slug, after `after` (a slug cursor),
/// optionally filtered by status and a search in slug and display name.
pub async fn list(
    pool: &PgPool,
    status: Option<TenantStatus>,
    search: Option<&str>,
    after: Option<&str>,
    limit: u32,
) -> Result<Vec<Tenant>, StoreError> {
    let pattern = search.map(|s| {
        format!(
            "%{}%",
            s.replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_")
        )
    });
    let rows = tenant_query!(
        " WHERE ($1::text IS NULL OR t.status = $1)
            AND ($2::text IS NULL OR t.slug ILIKE $2 OR t.display_name ILIKE $2)
            AND ($3::text IS NULL OR t.slug > $3)
          ORDER BY t.slug LIMIT $4",
        status.map(|s| s.as_str()),
        pattern,
        after,
        i64::from(limit)
    )
    .fetch_all(pool)
    .await?;
    rows.into_iter().map(Tenant::try_from).collect()
}

async fn notify(tx: &mut Transaction<'_, Postgres>) -> Result<(), StoreError> {
    sqlx::query!("SELECT pg_notify($1, '')", JAILS_CHANNEL)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

async fn lock(tx: &mut Transaction<'_, Postgres>, id: Uuid) -> Result<TenantStatus, StoreError> {
    let status = sqlx::query_scalar!(
        "SELECT status FROM tenants WHERE id = $1 FOR NO KEY UPDATE",
        id
    )
    .fetch_optional(&mut **tx)
    .await?;
    status
        .ok_or(StoreError::NotFound)?
        .parse()
        .map_err(|e| StoreError::Unexpected(anyhow::anyhow!("stored status: {e}")))
}

/// Most characters of a suspension's reason.
pub const MAX_REASON: usize = 500;

/// Suspends an active tenant: its jails stop, remembering what each wanted.
/// `reason` is shown to its customers.
pub async fn suspend(pool: &PgPool, id: Uuid, reason: Option<&str>) -> Result<Tenant, StoreError> {
    let reason = reason.map(str::trim).filter(|r| !r.is_empty());
    if reason.is_some_and(|r| r.chars().count() > MAX_REASON) {
        return Err(StoreError::Invalid {
            field: "reason",
            message: format!("at most {MAX_REASON} characters"),
        });
    }
    let mut tx = pool.begin().await?;
    match lock(&mut tx, id).await? {
        TenantStatus::Active => {}
        other => {
            return Err(StoreError::InvalidState(format!(
                "the tenant is {other}, not active"
            )));
        }
    }
    sqlx::query!(
        "UPDATE tenants SET status = 'suspended', suspended_at = now(), suspension_reason = $2,
             updated_at = now() WHERE id = $1",
        id,
        reason
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query!(
        "UPDATE jails SET desired_before_suspend = desired_state, desired_state = 'stopped',
             generation = generation + 1, updated_at = now()
         WHERE tenant_id = $1 AND desired_state <> 'deleted'",
        id
    )
    .execute(&mut *tx)
    .await?;
    crate::events::emit(
        &mut tx,
        Some(id),
        "tenant.suspended",
        serde_json::json!({ "tenant_id": id, "reason": reason }),
    )
    .await?;
    notify(&mut tx).await?;
    tx.commit().await?;
    get(pool, id).await
}

/// Unsuspends a tenant: each jail gets back the state it wanted before.
pub async fn unsuspend(pool: &PgPool, id: Uuid) -> Result<Tenant, StoreError> {
    let mut tx = pool.begin().await?;
    match lock(&mut tx, id).await? {
        TenantStatus::Suspended => {}
        other => {
            return Err(StoreError::InvalidState(format!(
                "the tenant is {other}, not suspended"
            )));
        }
    }
    sqlx::query!(
        "UPDATE tenants SET status = 'active', suspended_at = NULL, suspension_reason = NULL,
             updated_at = now() WHERE id = $1",
        id
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query!(
        "UPDATE jails SET desired_state = COALESCE(desired_before_suspend, desired_state),
             desired_before_suspend = NULL, generation = generation + 1, updated_at = now()
         WHERE tenant_id = $1 AND desired_state <> 'deleted'",
        id
    )
    .execute(&mut *tx)
    .await?;
    crate::events::emit(
        &mut tx,
        Some(id),
        "tenant.unsuspended",
        serde_json::json!({ "tenant_id": id }),
    )
    .await?;
    notify(&mut tx).await?;
    tx.commit().await?;
    get(pool, id).await
}

/// Terminates a tenant: every jail is destroyed; the rows stay for billing.
pub async fn terminate(pool: &PgPool, id: Uuid) -> Result<Tenant, StoreError> {
    let mut tx = pool.begin().await?;
    if lock(&mut tx, id).await? == TenantStatus::Terminated {
        return Err(StoreError::InvalidState(
            "the tenant is already terminated".into(),
        ));
    }
    sqlx::query!(
        "UPDATE tenants SET status = 'terminated', terminated_at = now(), updated_at = now() WHERE id = $1",
        id
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query!(
        "UPDATE jails SET desired_state = 'deleted', desired_before_suspend = NULL,
             generation = generation + 1, updated_at = now()
         WHERE tenant_id = $1 AND desired_state <> 'deleted'",
        id
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query!(
        "DELETE FROM sessions WHERE user_id IN (SELECT id FROM users WHERE tenant_id = $1)",
        id
    )
    .execute(&mut *tx)
    .await?;
    // Its tokens end with it (and show as revoked in `token ls`).
    sqlx::query!(
        "UPDATE api_tokens SET revoked_at = COALESCE(revoked_at, now()) WHERE tenant_id = $1",
        id
    )
    .execute(&mut *tx)
    .await?;
    crate::events::emit(
        &mut tx,
        Some(id),
        "tenant.terminated",
        serde_json::json!({ "tenant_id": id }),
    )
    .await?;
    notify(&mut tx).await?;
    tx.commit().await?;
    get(pool, id).await
}

/// Per-tenant changes to the plan's quota; `None` means "as the plan says".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Overrides {
    /// CPU total, millicores.
    pub cpu_millicores: Option<u32>,
    /// Memory total, bytes.
    pub memory_bytes: Option<u64>,
    /// Process total.
    pub pids: Option<u32>,
    /// Disk total, bytes.
    pub disk_bytes: Option<u64>,
    /// Jail count.
    pub max_jails: Option<u32>,
    /// Monthly transfer, bytes.
    pub monthly_transfer_bytes: Option<u64>,
    /// Outbound access to the world (NAT).
    pub outbound_nat: Option<bool>,
    /// Published ports.
    pub max_published_ports: Option<u32>,
}

/// A tenant's overrides.
pub async fn overrides(pool: &PgPool, id: Uuid) -> Result<Overrides, StoreError> {
    let row = sqlx::query!(
        "SELECT cpu_millicores, memory_bytes, pids, disk_bytes, max_jails, monthly_transfer_bytes,
             outbound_nat, max_published_ports
         FROM tenant_quota_overrides WHERE tenant_id = $1",
        id
    )
    .fetch_optional(pool)
    .await?;
    let Some(row) = row else {
        return Ok(Overrides::default());
    };
    Ok(Overrides {
        cpu_millicores: row.cpu_millicores.and_then(|v| u32::try_from(v).ok()),
        memory_bytes: row.memory_bytes.and_then(|v| u64::try_from(v).ok()),
        pids: row.pids.and_then(|v| u32::try_from(v).ok()),
        disk_bytes: row.disk_bytes.and_then(|v| u64::try_from(v).ok()),
        max_jails: row.max_jails.and_then(|v| u32::try_from(v).ok()),
        monthly_transfer_bytes: row
            .monthly_transfer_bytes
            .and_then(|v| u64::try_from(v).ok()),
        outbound_nat: row.outbound_nat,
        max_published_ports: row.max_published_ports.and_then(|v| u32::try_from(v).ok()),
    })
}

fn opt_i64(v: Option<u64>) -> Result<Option<i64>, StoreError> {
    v.map(|v| crate::to_i64("quota", v)).transpose()
}
fn opt_i32(v: Option<u32>) -> Result<Option<i32>, StoreError> {
    v.map(|v| crate::to_i32("quota", v)).transpose()
}

/// Replaces a tenant's overrides and, when the quota went down, brings its
/// jails' limits within it (see [`crate::jails`]).
pub async fn set_overrides(pool: &PgPool, id: Uuid, o: &Overrides) -> Result<(), StoreError> {
    let mut tx = pool.begin().await?;
    lock(&mut tx, id).await?;
    let nat_before = sqlx::query_scalar!(
        "SELECT outbound_nat FROM tenant_quota_overrides WHERE tenant_id = $1",
        id
    )
    .fetch_optional(&mut *tx)
    .await?
    .flatten();
    sqlx::query!(
        "INSERT INTO tenant_quota_overrides (tenant_id, cpu_millicores, memory_bytes, pids, disk_bytes,
             max_jails, monthly_transfer_bytes, outbound_nat, max_published_ports)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
         ON CONFLICT (tenant_id) DO UPDATE SET cpu_millicores = $2, memory_bytes = $3, pids = $4,
             disk_bytes = $5, max_jails = $6, monthly_transfer_bytes = $7, outbound_nat = $8,
             max_published_ports = $9, updated_at = now()",
        id,
        opt_i32(o.cpu_millicores)?,
        opt_i64(o.memory_bytes)?,
        opt_i32(o.pids)?,
        opt_i64(o.disk_bytes)?,
        opt_i32(o.max_jails)?,
        opt_i64(o.monthly_transfer_bytes)?,
        o.outbound_nat,
        opt_i32(o.max_published_ports)?
    )
    .execute(&mut *tx)
    .await?;
    if nat_before != o.outbound_nat {
        crate::jails::renew_network(&mut tx, Some(id), None).await?;
    }
    crate::jails::clamp_to_quota(&mut tx, id).await?;
    tx.commit().await?;
    Ok(())
}

/// Moves a tenant to another plan, bringing its jails within the new quota.
pub async fn change_plan(pool: &PgPool, id: Uuid, plan_id: Uuid) -> Result<Tenant, StoreError> {
    let mut tx = pool.begin().await?;
    lock(&mut tx, id).await?;
    let done = sqlx::query!(
        "UPDATE tenants SET plan_id = $2, updated_at = now() WHERE id = $1 AND EXISTS (SELECT 1 FROM plans WHERE id = $2)",
        id,
        plan_id
    )
    .execute(&mut *tx)
    .await?;
    if done.rows_affected() == 0 {
        return Err(StoreError::InvalidState("the plan does not exist".into()));
    }
    // The new plan may say otherwise about outbound access.
    crate::jails::renew_network(&mut tx, Some(id), None).await?;
    crate::jails::clamp_to_quota(&mut tx, id).await?;
    tx.commit().await?;
    get(pool, id).await
}

/// Creates a tenant and its first customer account in one transaction, so a
/// taken email leaves no tenant behind. Returns (tenant id, user id).
pub async fn create_with_owner(
    pool: &PgPool,
    slug: &TenantSlug,
    display_name: &str,
    plan_id: Uuid,
    email: &stockade_domain::Email,
    password_hash: &str,
) -> Result<(Uuid, Uuid), StoreError> {
    let mut tx = pool.begin().await?;
    let tenant_id = create_in(&mut tx, slug, display_name, plan_id).await?;
    let user_id = sqlx::query_scalar!(
        "INSERT INTO users (email, password_hash, role, tenant_id) VALUES ($1, $2, 'customer', $3) RETURNING id",
        email.as_str(),
        password_hash,
        tenant_id
    )
    .fetch_one(&mut *tx)
    .await
    .map_err(conflict_as("an account with this email"))?;
    tx.commit().await?;
    Ok((tenant_id, user_id))
}
