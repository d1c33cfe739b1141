//! Backups of jails' volumes off the node (see the migration `backups`):
//! asked for by customers or by a plan's schedule, taken by the agent of the
//! jail's node, restored into the same jail or a new one on any node,
//! removed by any agent.

use chrono::{DateTime, Utc};
use sqlx::{Postgres, Transaction};
use stockade_domain::{JailKind, JailName, Limits};
use uuid::Uuid;

use crate::jails::{Jail, NewJail};
use crate::{PgPool, StoreError, to_u64};

/// A backup as customers see it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Backup {
    pub id: Uuid,
    /// The jail it was taken of, while that jail exists.
    pub jail_id: Option<Uuid>,
    /// That jail's name then.
    pub jail_name: String,
    /// `pending`, `ready`, `failed` or `deleting`.
    pub state: String,
    /// Taken by the plan's schedule (removed after `expires_at`).
    pub scheduled: bool,
    /// The volume's length.
    pub volume_bytes: u64,
    /// What the backup target holds of it (billed).
    pub size_bytes: u64,
    /// Why it failed.
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
}

struct Row {
    id: Uuid,
    jail_id: Option<Uuid>,
    jail_name: String,
    state: String,
    scheduled: bool,
    volume_bytes: i64,
    size_bytes: i64,
    error: Option<String>,
    created_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
    expires_at: Option<DateTime<Utc>>,
}

impl TryFrom<Row> for Backup {
    type Error = StoreError;
    fn try_from(r: Row) -> Result<Self, StoreError> {
        Ok(Backup {
            id: r.id,
            jail_id: r.jail_id,
            jail_name: r.jail_name,
            state: r.state,
            scheduled: r.scheduled,
            volume_bytes: to_u64("volume_bytes", r.volume_bytes)?,
            size_bytes: to_u64("size_bytes", r.size_bytes)?,
            error: r.error,
            created_at: r.created_at,
            finished_at: r.finished_at,
            expires_at: r.expires_at,
        })
    }
}

/// The tenant's backups, newest first; of one jail when `jail_id` is given.
pub async fn list(
    pool: &PgPool,
    tenant_id: Uuid,
    jail_id: Option<Uuid>,
) -> Result<Vec<Backup>, StoreError> {
    let rows = sqlx::query_as!(
        Row,
        "SELECT id, jail_id, jail_name, state, scheduled, volume_bytes, size_bytes, error,
                created_at, finished_at, expires_at
         FROM backups WHERE tenant_id = $1 AND ($2::uuid IS NULL OR jail_id = $2)
           AND purpose = 'backup'
         ORDER BY created_at DESC, id",
        tenant_id,
        jail_id
    )
    .fetch_all(pool)
    .await?;
    rows.into_iter().map(Backup::try_from).collect()
}

/// One backup of the tenant.
pub async fn get(pool: &PgPool, tenant_id: Uuid, backup_id: Uuid) -> Result<Backup, StoreError> {
    let row = sqlx::query_as!(
        Row,
        "SELECT id, jail_id, jail_name, state, scheduled, volume_bytes, size_bytes, error,
                created_at, finished_at, expires_at
         FROM backups WHERE id = $1 AND tenant_id = $2",
        backup_id,
        tenant_id
    )
    .fetch_optional(pool)
    .await?;
    row.ok_or(StoreError::NotFound)?.try_into()
}

/// Bytes the backup target holds for the tenant (billed).
pub async fn stored_bytes(pool: &PgPool, tenant_id: Uuid) -> Result<u64, StoreError> {
    let n = sqlx::query_scalar!(
        r#"SELECT COALESCE(sum(size_bytes), 0)::bigint AS "n!" FROM backups
           WHERE tenant_id = $1 AND state IN ('ready', 'deleting')"#,
        tenant_id
    )
    .fetch_one(pool)
    .await?;
    to_u64("size_bytes", n)
}

/// Asks the jail's node for a backup of it now.
pub async fn request(
    pool: &PgPool,
    tenant_id: Uuid,
    jail_id: Uuid,
    created_by: Option<Uuid>,
) -> Result<Backup, StoreError> {
    let mut tx = pool.begin().await?;
    crate::jails::lock_active_tenant(&mut tx, tenant_id).await?;
    let busy = sqlx::query_scalar!(
        r#"SELECT count(*) AS "n!" FROM backups WHERE jail_id = $1 AND state = 'pending'"#,
        jail_id
    )
    .fetch_one(&mut *tx)
    .await?;
    if busy > 0 {
        return Err(StoreError::InvalidState(
            "a backup of this jail is already under way".into(),
        ));
    }
    let row = sqlx::query_as!(
        Row,
        r#"INSERT INTO backups (tenant_id, jail_id, node_id, jail_name, image, kind, command,
                               limits, created_by)
           SELECT tenant_id, id, node_id, name, image, kind, command,
                  jail_limits(jails),
                  $3
           FROM jails WHERE id = $1 AND tenant_id = $2 AND desired_state <> 'deleted'
             AND node_id IS NOT NULL
           RETURNING id, jail_id, jail_name, state, scheduled, volume_bytes, size_bytes, error,
                     created_at, finished_at, expires_at"#,
        jail_id,
        tenant_id,
        created_by
    )
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(StoreError::NotFound)?;
    crate::jails::notify(&mut tx, None).await?;
    tx.commit().await?;
    row.try_into()
}

/// Asks for a backup's removal from the target; its bytes stop counting
/// once gone. One a restore still waits for is kept.
pub async fn delete(pool: &PgPool, tenant_id: Uuid, backup_id: Uuid) -> Result<(), StoreError> {
    let mut tx = pool.begin().await?;
    let state = sqlx::query_scalar!(
        "SELECT state FROM backups WHERE id = $1 AND tenant_id = $2 FOR UPDATE",
        backup_id,
        tenant_id
    )
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(StoreError::NotFound)?;
    let restoring = sqlx::query_scalar!(
        r#"SELECT count(*) AS "n!" FROM jails WHERE restore_backup_id = $1
             AND restore_generation > observed_generation AND desired_state <> 'deleted'"#,
        backup_id
    )
    .fetch_one(&mut *tx)
    .await?;
    if restoring > 0 {
        return Err(StoreError::InvalidState(
            "a jail is being restored from this backup".into(),
        ));
    }
    if state == "pending" {
        return Err(StoreError::InvalidState(
            "the backup is being taken: delete it once it is done".into(),
        ));
    }
    if state != "deleting" {
        sqlx::query!(
            "UPDATE backups SET state = 'deleting' WHERE id = $1",
            backup_id
        )
        .execute(&mut *tx)
        .await?;
        crate::jails::notify(&mut tx, None).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// What a restore needs of a backup: it must be the tenant's and taken.
async fn ready_backup(
    tx: &mut Transaction<'_, Postgres>,
    tenant_id: Uuid,
    backup_id: Uuid,
) -> Result<(i64, serde_json::Value, String, String, Vec<String>), StoreError> {
    let r = sqlx::query!(
        "SELECT state, volume_bytes, limits, image, kind, command FROM backups
         WHERE id = $1 AND tenant_id = $2",
        backup_id,
        tenant_id
    )
    .fetch_optional(&mut **tx)
    .await?
    .ok_or(StoreError::NotFound)?;
    if r.state != "ready" {
        return Err(StoreError::InvalidState(format!(
            "the backup is {}: only a finished backup can be restored",
            r.state
        )));
    }
    Ok((r.volume_bytes, r.limits, r.image, r.kind, r.command))
}

/// Asks for the jail's volume to be put back to the backup: the jail stops,
/// its node fetches the backup, checks it and makes it the jail's volume,
/// and the jail runs again if it is meant to. The jail's disk must hold it.
pub async fn restore_into(
    pool: &PgPool,
    tenant_id: Uuid,
    jail_id: Uuid,
    backup_id: Uuid,
) -> Result<(), StoreError> {
    let mut tx = pool.begin().await?;
    crate::jails::lock_active_tenant(&mut tx, tenant_id).await?;
    let (volume_bytes, ..) = ready_backup(&mut tx, tenant_id, backup_id).await?;
    let jail = sqlx::query!(
        "SELECT node_id, disk_bytes FROM jails
         WHERE id = $1 AND tenant_id = $2 AND desired_state <> 'deleted' FOR UPDATE",
        jail_id,
        tenant_id
    )
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(StoreError::NotFound)?;
    if volume_bytes > jail.disk_bytes {
        return Err(StoreError::QuotaExceeded(format!(
            "the backup holds a {} disk, larger than this jail's {}: grow the jail's disk first",
            crate::jails::fmt_bytes(to_u64("volume_bytes", volume_bytes)?),
            crate::jails::fmt_bytes(to_u64("disk_bytes", jail.disk_bytes)?)
        )));
    }
    sqlx::query!(
        "UPDATE jails SET restore_backup_id = $2, restore_snapshot_id = NULL,
             generation = generation + 1, restore_generation = generation + 1, updated_at = now()
         WHERE id = $1",
        jail_id,
        backup_id
    )
    .execute(&mut *tx)
    .await?;
    crate::jails::notify(&mut tx, jail.node_id).await?;
    tx.commit().await?;
    Ok(())
}

/// Makes a new jail `name` from the backup (its image, kind, command and
/// limits then, within what is left of the quota), on whichever node has
/// room; its volume is the backup's.
pub async fn restore_as_new(
    pool: &PgPool,
    tenant_id: Uuid,
    backup_id: Uuid,
    name: &JailName,
) -> Result<Jail, StoreError> {
    let mut tx = pool.begin().await?;
    crate::jails::lock_active_tenant(&mut tx, tenant_id).await?;
    let (volume_bytes, limits, image, kind, command) =
        ready_backup(&mut tx, tenant_id, backup_id).await?;
    let mut limits: Limits = serde_json::from_value(limits)
        .map_err(|e| StoreError::Unexpected(anyhow::anyhow!("stored backup limits: {e}")))?;
    limits.disk_bytes = limits.disk_bytes.max(to_u64("volume_bytes", volume_bytes)?);
    let new = NewJail {
        name: name.clone(),
        image,
        kind: kind
            .parse::<JailKind>()
            .map_err(|e| StoreError::Unexpected(anyhow::anyhow!("stored kind: {e}")))?,
        command,
        limits,
    };
    let jail = crate::jails::create_in(&mut tx, tenant_id, &new).await?;
    sqlx::query!(
        "UPDATE jails SET restore_backup_id = $2, restore_generation = generation WHERE id = $1",
        jail.id,
        backup_id
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    crate::jails::get(pool, tenant_id, jail.id).await
}

// ---- the agents' side ----

/// A backup an agent is to take or remove.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Work {
    pub backup_id: Uuid,
    pub tenant_id: Uuid,
    pub jail_id: Option<Uuid>,
    pub jail_name: String,
    pub image: String,
    pub kind: String,
    pub command: Vec<String>,
    pub limits: serde_json::Value,
    /// Take it (`pending`) or remove it (`deleting`).
    pub state: String,
}

/// The backups this node is to take (of its jails), and those any node may
/// remove; asks first for the scheduled backups that are due on its jails
/// (once a day each, once the jail is made here; a failed one an hour
/// later) and gives up those past their days.
pub async fn work_for_node(pool: &PgPool, node_id: Uuid) -> Result<Vec<Work>, StoreError> {
    let mut tx = pool.begin().await?;
    // A jail of a plan with scheduled backups gets one a day.
    sqlx::query!(
        "INSERT INTO backups (tenant_id, jail_id, node_id, jail_name, image, kind, command, limits,
                              scheduled, expires_at)
         SELECT j.tenant_id, j.id, j.node_id, j.name, j.image, j.kind, j.command,
                jail_limits(j),
                true, now() + make_interval(days => p.backup_days)
         FROM jails j JOIN tenants t ON t.id = j.tenant_id JOIN plans p ON p.id = t.plan_id
         WHERE j.node_id = $1 AND j.desired_state <> 'deleted' AND t.status = 'active'
           AND p.backup_days > 0
           -- Made on this node (it has a volume here), and staying here.
           AND j.observed_state IN ('running', 'stopped', 'crash_looping')
           AND j.move_to_node IS NULL AND j.moved_from_node IS NULL
           -- One a day; one that failed is tried again an hour later.
           AND NOT EXISTS (SELECT 1 FROM backups b WHERE b.jail_id = j.id AND b.scheduled
                           AND b.created_at > now() - interval '1 day' AND b.state <> 'failed')
           AND NOT EXISTS (SELECT 1 FROM backups b WHERE b.jail_id = j.id AND b.scheduled
                           AND b.created_at > now() - interval '1 hour' AND b.state = 'failed')
           AND NOT EXISTS (SELECT 1 FROM backups b WHERE b.jail_id = j.id AND b.state = 'pending')",
        node_id
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query!(
        "UPDATE backups SET state = 'deleting'
         WHERE scheduled AND expires_at < now() AND state IN ('ready', 'failed')"
    )
    .execute(&mut *tx)
    .await?;
    let rows = sqlx::query!(
        "SELECT id, tenant_id, jail_id, jail_name, image, kind, command, limits, state
         FROM backups
         WHERE (state = 'pending' AND node_id = $1
                AND (purpose <> 'move' OR EXISTS (
                    -- A moving jail is shipped once its node has stopped it.
                    SELECT 1 FROM jails j WHERE j.id = backups.jail_id
                      AND j.observed_state IN ('stopped', 'failed', 'pending')
                      AND j.observed_generation >= j.generation)))
            OR state = 'deleting'
         ORDER BY created_at",
        node_id
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(rows
        .into_iter()
        .map(|r| Work {
            backup_id: r.id,
            tenant_id: r.tenant_id,
            jail_id: r.jail_id,
            jail_name: r.jail_name,
            image: r.image,
            kind: r.kind,
            command: r.command,
            limits: r.limits,
            state: r.state,
        })
        .collect())
}

/// Records a backup its node finished (unless asked away meanwhile).
pub async fn finished(
    pool: &PgPool,
    backup_id: Uuid,
    volume_bytes: u64,
    size_bytes: u64,
) -> Result<(), StoreError> {
    let mut tx = pool.begin().await?;
    let purpose = sqlx::query_scalar!(
        "UPDATE backups SET state = 'ready', volume_bytes = $2, size_bytes = $3,
             finished_at = now(), error = NULL
         WHERE id = $1 AND state = 'pending' RETURNING purpose",
        backup_id,
        crate::to_i64("volume_bytes", volume_bytes)?,
        crate::to_i64("size_bytes", size_bytes)?
    )
    .fetch_optional(&mut *tx)
    .await?;
    if purpose.as_deref() == Some("move") {
        crate::moves::shipped(&mut tx, backup_id).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Records why a backup could not be taken.
pub async fn failed(pool: &PgPool, backup_id: Uuid, error: &str) -> Result<(), StoreError> {
    let mut tx = pool.begin().await?;
    let purpose = sqlx::query_scalar!(
        "UPDATE backups SET state = 'failed', error = $2, finished_at = now()
         WHERE id = $1 AND state = 'pending' RETURNING purpose",
        backup_id,
        error
    )
    .fetch_optional(&mut *tx)
    .await?;
    if purpose.as_deref() == Some("move") {
        crate::moves::not_shipped(&mut tx, backup_id).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Forgets a backup removed from the target.
pub async fn removed(pool: &PgPool, backup_id: Uuid) -> Result<(), StoreError> {
    sqlx::query!(
        "DELETE FROM backups WHERE id = $1 AND state = 'deleting'",
        backup_id
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// The tenant a backup belongs to, for a restore's checks.
pub async fn owner(pool: &PgPool, backup_id: Uuid) -> Result<Uuid, StoreError> {
    sqlx::query_scalar!("SELECT tenant_id FROM backups WHERE id = $1", backup_id)
        .fetch_optional(pool)
        .await?
        .ok_or(StoreError::NotFound)
}
