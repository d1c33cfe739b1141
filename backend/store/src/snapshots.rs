//! Snapshots of jails' volumes: asked for, restored and removed by
//! customers; taken and removed by the agent of the jail's node (see the
//! migration `snapshots`).

use chrono::{DateTime, Utc};
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use crate::jails::{allocated, effective_quota, fmt_bytes};
use crate::{PgPool, StoreError, conflict_as, to_u32, to_u64};

/// Where a snapshot is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotState {
    /// Asked for; its node has not taken it yet.
    Pending,
    /// Taken: it can be restored.
    Ready,
    /// Its node could not take it (`error` says why).
    Failed,
    /// Being removed by its node.
    Deleting,
}

impl SnapshotState {
    fn parse(s: &str) -> Result<Self, StoreError> {
        Ok(match s {
            "pending" => Self::Pending,
            "ready" => Self::Ready,
            "failed" => Self::Failed,
            "deleting" => Self::Deleting,
            other => {
                return Err(StoreError::Unexpected(anyhow::anyhow!(
                    "stored snapshot state {other:?}"
                )));
            }
        })
    }

    /// Its name in words.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Ready => "ready",
            Self::Failed => "failed",
            Self::Deleting => "deleting",
        }
    }
}

/// A snapshot as customers see it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Snapshot {
    pub id: Uuid,
    pub jail_id: Uuid,
    pub name: String,
    pub state: SnapshotState,
    /// Host bytes it takes once taken; the admitted estimate before.
    pub size_bytes: u64,
    /// Why its node could not take it.
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub taken_at: Option<DateTime<Utc>>,
    /// A restore to it is under way.
    pub restoring: bool,
}

struct Row {
    id: Uuid,
    jail_id: Uuid,
    name: String,
    state: String,
    size_bytes: i64,
    error: Option<String>,
    created_at: DateTime<Utc>,
    taken_at: Option<DateTime<Utc>>,
    restoring: bool,
}

impl TryFrom<Row> for Snapshot {
    type Error = StoreError;
    fn try_from(r: Row) -> Result<Self, StoreError> {
        Ok(Snapshot {
            id: r.id,
            jail_id: r.jail_id,
            name: r.name,
            state: SnapshotState::parse(&r.state)?,
            size_bytes: to_u64("size_bytes", r.size_bytes)?,
            error: r.error,
            created_at: r.created_at,
            taken_at: r.taken_at,
            restoring: r.restoring,
        })
    }
}

/// A jail's snapshots, newest first, and how many its plan keeps.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Listing {
    pub snapshots: Vec<Snapshot>,
    /// Snapshots each jail of the tenant's plan keeps.
    pub per_jail: u32,
}

/// Checks a snapshot's name: what the migration's rule allows, said in words.
pub fn check_name(name: &str) -> Result<(), StoreError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(StoreError::Invalid {
            field: "name",
            message: "1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"
                .into(),
        })
    }
}

/// The tenant's jail's snapshots (a jail of another tenant is not found).
pub async fn list(pool: &PgPool, tenant_id: Uuid, jail_id: Uuid) -> Result<Listing, StoreError> {
    let per_jail = sqlx::query_scalar!(
        "SELECT p.snapshots_per_jail FROM jails j JOIN tenants t ON t.id = j.tenant_id
         JOIN plans p ON p.id = t.plan_id
         WHERE j.id = $1 AND j.tenant_id = $2 AND j.desired_state <> 'deleted'",
        jail_id,
        tenant_id
    )
    .fetch_optional(pool)
    .await?
    .ok_or(StoreError::NotFound)?;
    let rows = sqlx::query_as!(
        Row,
        r#"SELECT s.id, s.jail_id, s.name, s.state, s.size_bytes, s.error, s.created_at,
                  s.taken_at,
                  (j.restore_snapshot_id = s.id
                   AND j.restore_generation > j.observed_generation) AS "restoring!"
           FROM snapshots s JOIN jails j ON j.id = s.jail_id
           WHERE s.jail_id = $1 AND s.tenant_id = $2
           ORDER BY s.created_at DESC, s.name"#,
        jail_id,
        tenant_id
    )
    .fetch_all(pool)
    .await?;
    Ok(Listing {
        snapshots: rows
            .into_iter()
            .map(Snapshot::try_from)
            .collect::<Result<_, _>>()?,
        per_jail: to_u32("snapshots_per_jail", per_jail)?,
    })
}

/// The jail's row, locked, for a change of its snapshots: its node, and
/// whether it is placed at all.
async fn lock_jail(
    tx: &mut Transaction<'_, Postgres>,
    tenant_id: Uuid,
    jail_id: Uuid,
) -> Result<Uuid, StoreError> {
    crate::jails::lock_active_tenant(tx, tenant_id).await?;
    let node = sqlx::query_scalar!(
        "SELECT node_id FROM jails
         WHERE id = $1 AND tenant_id = $2 AND desired_state <> 'deleted' FOR UPDATE",
        jail_id,
        tenant_id
    )
    .fetch_optional(&mut **tx)
    .await?
    .ok_or(StoreError::NotFound)?;
    node.ok_or_else(|| StoreError::InvalidState("the jail is not placed on a node yet".into()))
}

/// Asks the jail's node to snapshot it as `name` (a name of the moment
/// when `None`). Admitted only within the plan's count per jail and the
/// tenant's disk quota, which its volumes and snapshots share; the
/// estimate admitted is the jail's last sampled disk use.
pub async fn request(
    pool: &PgPool,
    tenant_id: Uuid,
    jail_id: Uuid,
    name: Option<&str>,
    created_by: Option<Uuid>,
) -> Result<Snapshot, StoreError> {
    let name = match name.map(str::trim).filter(|n| !n.is_empty()) {
        Some(n) => n.to_owned(),
        None => Utc::now().format("%Y-%m-%d-%H%M%S").to_string(),
    };
    check_name(&name)?;
    let mut tx = pool.begin().await?;
    let node = lock_jail(&mut tx, tenant_id, jail_id).await?;
    let (kept, per_jail) = sqlx::query!(
        r#"SELECT (SELECT count(*) FROM snapshots WHERE jail_id = $1 AND state <> 'deleting')
                    AS "kept!",
                  p.snapshots_per_jail
           FROM tenants t JOIN plans p ON p.id = t.plan_id WHERE t.id = $2"#,
        jail_id,
        tenant_id
    )
    .fetch_one(&mut *tx)
    .await
    .map(|r| (r.kept, r.snapshots_per_jail))?;
    if kept >= i64::from(per_jail) {
        return Err(StoreError::QuotaExceeded(if per_jail == 0 {
            "the plan keeps no snapshots".to_owned()
        } else {
            format!(
                "the plan keeps {per_jail} snapshots per jail and this jail has {kept}: delete one first"
            )
        }));
    }
    let estimate = sqlx::query_scalar!(
        "SELECT disk_used_bytes FROM usage_samples WHERE jail_id = $1
         ORDER BY sampled_at DESC LIMIT 1",
        jail_id
    )
    .fetch_optional(&mut *tx)
    .await?
    .unwrap_or(0);
    let quota = effective_quota(&mut *tx, tenant_id).await?;
    let used = allocated(&mut *tx, tenant_id, None).await?;
    let left = quota
        .disk_bytes
        .saturating_sub(used.disk_bytes + used.snapshot_bytes);
    let need = to_u64("disk_used_bytes", estimate)?;
    if need > left {
        return Err(StoreError::QuotaExceeded(format!(
            "disk quota exceeded: a snapshot of this jail takes about {}, {} left of {} (volumes and snapshots)",
            fmt_bytes(need),
            fmt_bytes(left),
            fmt_bytes(quota.disk_bytes)
        )));
    }
    let row = sqlx::query_as!(
        Row,
        r#"INSERT INTO snapshots (tenant_id, jail_id, name, size_bytes, created_by)
           VALUES ($1, $2, $3, $4, $5)
           RETURNING id, jail_id, name, state, size_bytes, error, created_at, taken_at,
                     false AS "restoring!""#,
        tenant_id,
        jail_id,
        name,
        estimate,
        created_by
    )
    .fetch_one(&mut *tx)
    .await
    .map_err(conflict_as("a snapshot of this jail with this name"))?;
    crate::jails::notify(&mut tx, Some(node)).await?;
    tx.commit().await?;
    row.try_into()
}

/// Asks the jail's node to put the jail's volume back to `snapshot`: the
/// jail stops, its volume returns to the snapshot, and it runs again if it
/// is meant to. What it wrote since is lost.
pub async fn restore(
    pool: &PgPool,
    tenant_id: Uuid,
    jail_id: Uuid,
    snapshot_id: Uuid,
) -> Result<(), StoreError> {
    let mut tx = pool.begin().await?;
    let node = lock_jail(&mut tx, tenant_id, jail_id).await?;
    let state = sqlx::query_scalar!(
        "SELECT state FROM snapshots WHERE id = $1 AND jail_id = $2",
        snapshot_id,
        jail_id
    )
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(StoreError::NotFound)?;
    if state != "ready" {
        return Err(StoreError::InvalidState(format!(
            "the snapshot is {state}: only a taken snapshot can be restored"
        )));
    }
    sqlx::query!(
        "UPDATE jails SET restore_snapshot_id = $2, restore_backup_id = NULL,
             generation = generation + 1,
             restore_generation = generation + 1, updated_at = now()
         WHERE id = $1",
        jail_id,
        snapshot_id
    )
    .execute(&mut *tx)
    .await?;
    crate::jails::notify(&mut tx, Some(node)).await?;
    tx.commit().await?;
    Ok(())
}

/// Asks the jail's node to remove `snapshot`; it stops counting against
/// the quota once gone. One a restore is still waiting for is kept.
pub async fn delete(
    pool: &PgPool,
    tenant_id: Uuid,
    jail_id: Uuid,
    snapshot_id: Uuid,
) -> Result<(), StoreError> {
    let mut tx = pool.begin().await?;
    let node = lock_jail(&mut tx, tenant_id, jail_id).await?;
    let row = sqlx::query!(
        r#"SELECT s.state, (j.restore_snapshot_id = s.id
                  AND j.restore_generation > j.observed_generation) AS "restoring!"
           FROM snapshots s JOIN jails j ON j.id = s.jail_id
           WHERE s.id = $1 AND s.jail_id = $2"#,
        snapshot_id,
        jail_id
    )
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(StoreError::NotFound)?;
    if row.restoring {
        return Err(StoreError::InvalidState(
            "the jail is being restored to this snapshot".into(),
        ));
    }
    if row.state != "deleting" {
        sqlx::query!(
            "UPDATE snapshots SET state = 'deleting' WHERE id = $1",
            snapshot_id
        )
        .execute(&mut *tx)
        .await?;
        crate::jails::notify(&mut tx, Some(node)).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// What an agent is to do for one snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Work {
    pub snapshot_id: Uuid,
    pub jail_id: Uuid,
    pub tenant_id: Uuid,
    pub name: String,
    /// Take it (`Pending`) or remove it (`Deleting`).
    pub state: SnapshotState,
}

/// The snapshots to take or remove of jails on `node_id`, oldest first.
/// A deleted jail's go with its folder; their rows with the jail's.
pub async fn work_on_node(pool: &PgPool, node_id: Uuid) -> Result<Vec<Work>, StoreError> {
    let rows = sqlx::query!(
        "SELECT s.id, s.jail_id, s.tenant_id, s.name, s.state
         FROM snapshots s JOIN jails j ON j.id = s.jail_id
         WHERE j.node_id = $1 AND j.desired_state <> 'deleted'
           AND s.state IN ('pending', 'deleting')
         ORDER BY s.created_at",
        node_id
    )
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|r| {
            Ok(Work {
                snapshot_id: r.id,
                jail_id: r.jail_id,
                tenant_id: r.tenant_id,
                name: r.name,
                state: SnapshotState::parse(&r.state)?,
            })
        })
        .collect()
}

/// Records a snapshot its node took (unless it was asked away meanwhile).
pub async fn taken(pool: &PgPool, snapshot_id: Uuid, bytes: u64) -> Result<(), StoreError> {
    sqlx::query!(
        "UPDATE snapshots SET state = 'ready', size_bytes = $2, taken_at = now(), error = NULL
         WHERE id = $1 AND state = 'pending'",
        snapshot_id,
        crate::to_i64("size_bytes", bytes)?
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Records why a snapshot could not be taken; it no longer counts.
pub async fn failed(pool: &PgPool, snapshot_id: Uuid, error: &str) -> Result<(), StoreError> {
    sqlx::query!(
        "UPDATE snapshots SET state = 'failed', size_bytes = 0, error = $2
         WHERE id = $1 AND state = 'pending'",
        snapshot_id,
        error
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Forgets a snapshot its node removed.
pub async fn removed(pool: &PgPool, snapshot_id: Uuid) -> Result<(), StoreError> {
    sqlx::query!(
        "DELETE FROM snapshots WHERE id = $1 AND state = 'deleting'",
        snapshot_id
    )
    .execute(pool)
    .await?;
    Ok(())
}
