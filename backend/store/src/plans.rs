//! Plans: named quota bundles that tenants subscribe to.

use uuid::Uuid;

use crate::{PgPool, StoreError, conflict_as, to_i32, to_i64, to_u32, to_u64};

/// Tenant-wide quota: totals for the sum of a tenant's jails, and per-jail
/// ceilings for rates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Quota {
    /// Total CPU over all jails, in millicores.
    pub cpu_millicores: u32,
    /// Total memory over all jails, in bytes.
    pub memory_bytes: u64,
    /// Total processes over all jails.
    pub pids: u32,
    /// Total volume size over all jails, in bytes.
    pub disk_bytes: u64,
    /// Number of jails.
    pub max_jails: u32,
    /// Per-jail read ceiling, bytes/s (0 = any).
    pub io_read_bps: u64,
    /// Per-jail write ceiling, bytes/s (0 = any).
    pub io_write_bps: u64,
    /// Per-jail read operations ceiling (0 = any).
    pub io_read_iops: u64,
    /// Per-jail write operations ceiling (0 = any).
    pub io_write_iops: u64,
    /// Per-jail outbound rate ceiling, bits/s (0 = any).
    pub net_egress_bps: u64,
    /// Per-jail inbound rate ceiling, bits/s (0 = any).
    pub net_ingress_bps: u64,
    /// Transfer (rx + tx) per calendar month, bytes (0 = unmetered).
    pub monthly_transfer_bytes: u64,
}

/// A plan as shown and edited by staff.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Plan {
    /// Stable id.
    pub id: Uuid,
    /// Short unique name (`starter`).
    pub name: String,
    /// Name shown to customers.
    pub display_name: String,
    /// What a tenant on this plan may use.
    pub quota: Quota,
    /// Share of the monthly transfer after which jails are throttled.
    pub transfer_soft_percent: u32,
    /// Rate jails are throttled to past the soft share, bits/s.
    pub transfer_throttle_bps: u64,
    /// Jails of its tenants run in a user namespace of their own: root in
    /// a jail is an unprivileged host uid. Off, root in a jail is host root.
    pub user_namespace: bool,
    /// Jails of its tenants reach the world through their node's NAT.
    pub outbound_nat: bool,
    /// Ports its tenants may publish on their jails' nodes (all jails).
    pub max_published_ports: u32,
    /// Snapshots each jail of its tenants keeps.
    pub snapshots_per_jail: u32,
    /// Days each daily backup of its tenants' jails is kept (0: none taken).
    pub backup_days: u32,
}

pub(crate) struct QuotaRow {
    pub cpu_millicores: i32,
    pub memory_bytes: i64,
    pub pids: i32,
    pub disk_bytes: i64,
    pub max_jails: i32,
    pub io_read_bps: i64,
    pub io_write_bps: i64,
    pub io_read_iops: i64,
    pub io_write_iops: i64,
    pub net_egress_bps: i64,
    pub net_ingress_bps: i64,
    pub monthly_transfer_bytes: i64,
}

impl TryFrom<QuotaRow> for Quota {
    type Error = StoreError;
    fn try_from(r: QuotaRow) -> Result<Self, StoreError> {
        Ok(Quota {
            cpu_millicores: to_u32("cpu", r.cpu_millicores)?,
            memory_bytes: to_u64("memory", r.memory_bytes)?,
            pids: to_u32("pids", r.pids)?,
            disk_bytes: to_u64("disk", r.disk_bytes)?,
            max_jails: to_u32("max_jails", r.max_jails)?,
            io_read_bps: to_u64("io_read_bps", r.io_read_bps)?,
            io_write_bps: to_u64("io_write_bps", r.io_write_bps)?,
            io_read_iops: to_u64("io_read_iops", r.io_read_iops)?,
            io_write_iops: to_u64("io_write_iops", r.io_write_iops)?,
            net_egress_bps: to_u64("net_egress_bps", r.net_egress_bps)?,
            net_ingress_bps: to_u64("net_ingress_bps", r.net_ingress_bps)?,
            monthly_transfer_bytes: to_u64("monthly_transfer_bytes", r.monthly_transfer_bytes)?,
        })
    }
}

struct PlanRow {
    id: Uuid,
    name: String,
    display_name: String,
    transfer_soft_percent: i16,
    transfer_throttle_bps: i64,
    user_namespace: bool,
    outbound_nat: bool,
    max_published_ports: i32,
    snapshots_per_jail: i32,
    backup_days: i32,
    cpu_millicores: i32,
    memory_bytes: i64,
    pids: i32,
    disk_bytes: i64,
    max_jails: i32,
    io_read_bps: i64,
    io_write_bps: i64,
    io_read_iops: i64,
    io_write_iops: i64,
    net_egress_bps: i64,
    net_ingress_bps: i64,
    monthly_transfer_bytes: i64,
}

impl TryFrom<PlanRow> for Plan {
    type Error = StoreError;
    fn try_from(r: PlanRow) -> Result<Self, StoreError> {
        let quota = QuotaRow {
            cpu_millicores: r.cpu_millicores,
            memory_bytes: r.memory_bytes,
            pids: r.pids,
            disk_bytes: r.disk_bytes,
            max_jails: r.max_jails,
            io_read_bps: r.io_read_bps,
            io_write_bps: r.io_write_bps,
            io_read_iops: r.io_read_iops,
            io_write_iops: r.io_write_iops,
            net_egress_bps: r.net_egress_bps,
            net_ingress_bps: r.net_ingress_bps,
            monthly_transfer_bytes: r.monthly_transfer_bytes,
        };
        Ok(Plan {
            id: r.id,
            name: r.name,
            display_name: r.display_name,
            quota: quota.try_into()?,
            transfer_soft_percent: u32::try_from(r.transfer_soft_percent).unwrap_or(80),
            transfer_throttle_bps: to_u64("transfer_throttle_bps", r.transfer_throttle_bps)?,
            user_namespace: r.user_namespace,
            outbound_nat: r.outbound_nat,
            max_published_ports: to_u32("max_published_ports", r.max_published_ports)?,
            snapshots_per_jail: to_u32("snapshots_per_jail", r.snapshots_per_jail)?,
            backup_days: to_u32("backup_days", r.backup_days)?,
        })
    }
}

/// A query of [`PlanRow`]s: `$before` (up to `SELECT` or `RETURNING`), a
/// plan's columns, `$after`, then the arguments.
macro_rules! plan_query {
    ($before:tt, $after:tt $(, $arg:expr)* $(,)?) => {
        sqlx::query_as!(
            PlanRow,
            $before
                + "id, name, display_name, transfer_soft_percent, transfer_throttle_bps, user_namespace,
    outbound_nat, max_published_ports, snapshots_per_jail, backup_days, cpu_millicores, memory_bytes, pids, disk_bytes, max_jails, io_read_bps, io_write_bps,
    io_read_iops, io_write_iops, net_egress_bps, net_ingress_bps, monthly_transfer_bytes"
                + $after
            $(, $arg)*
        )
    };
}

/// Every plan, by name.
pub async fn list(pool: &PgPool) -> Result<Vec<Plan>, StoreError> {
    let rows = plan_query!("SELECT ", " FROM plans ORDER BY name")
        .fetch_all(pool)
        .await?;
    rows.into_iter().map(Plan::try_from).collect()
}

/// One plan by id.
pub async fn get(pool: &PgPool, id: Uuid) -> Result<Plan, StoreError> {
    let row = plan_query!("SELECT ", " FROM plans WHERE id = $1", id)
        .fetch_optional(pool)
        .await?;
    row.ok_or(StoreError::NotFound)?.try_into()
}

/// One plan by name.
pub async fn by_name(pool: &PgPool, name: &str) -> Result<Plan, StoreError> {
    let row = plan_query!("SELECT ", " FROM plans WHERE name = $1", name)
        .fetch_optional(pool)
        .await?;
    row.ok_or(StoreError::NotFound)?.try_into()
}

/// What a new or edited plan holds.
#[derive(Debug, Clone)]
pub struct PlanInput {
    /// Short unique name.
    pub name: stockade_domain::TenantSlug,
    /// Name shown to customers.
    pub display_name: String,
    /// Quota.
    pub quota: Quota,
    /// Jails of its tenants get a user namespace of their own.
    pub user_namespace: bool,
    /// Outbound access and published ports.
    pub network: PlanNetwork,
}

/// What a plan says of its tenants' networks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanNetwork {
    /// Jails reach the world through their node's NAT.
    pub outbound_nat: bool,
    /// Ports its tenants may publish.
    pub max_published_ports: u32,
}

impl Default for PlanNetwork {
    fn default() -> Self {
        Self {
            outbound_nat: true,
            max_published_ports: 4,
        }
    }
}

/// Creates a plan.
pub async fn create(pool: &PgPool, input: &PlanInput) -> Result<Plan, StoreError> {
    let q = &input.quota;
    let row = plan_query!(
        "INSERT INTO plans (name, display_name, cpu_millicores, memory_bytes, pids, disk_bytes, max_jails,
            io_read_bps, io_write_bps, io_read_iops, io_write_iops, net_egress_bps, net_ingress_bps,
            monthly_transfer_bytes, user_namespace, outbound_nat, max_published_ports)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)
         RETURNING ",
        "",
        input.name.as_str(),
        input.display_name.as_str(),
        to_i32("cpu", q.cpu_millicores)?,
        to_i64("memory", q.memory_bytes)?,
        to_i32("pids", q.pids)?,
        to_i64("disk", q.disk_bytes)?,
        to_i32("max_jails", q.max_jails)?,
        to_i64("io_read_bps", q.io_read_bps)?,
        to_i64("io_write_bps", q.io_write_bps)?,
        to_i64("io_read_iops", q.io_read_iops)?,
        to_i64("io_write_iops", q.io_write_iops)?,
        to_i64("net_egress_bps", q.net_egress_bps)?,
        to_i64("net_ingress_bps", q.net_ingress_bps)?,
        to_i64("monthly_transfer_bytes", q.monthly_transfer_bytes)?,
        input.user_namespace,
        input.network.outbound_nat,
        to_i32("max_published_ports", input.network.max_published_ports)?
    )
    .fetch_one(pool)
    .await
    .map_err(conflict_as("a plan with this name"))?;
    row.try_into()
}

/// Replaces a plan's display name and quota, and bumps the generation of every
/// live jail of its tenants so the agents re-apply limits.
pub async fn update(
    pool: &PgPool,
    id: Uuid,
    display_name: &str,
    q: &Quota,
) -> Result<Plan, StoreError> {
    let mut tx = pool.begin().await?;
    let row = plan_query!(
        "UPDATE plans SET display_name = $2, cpu_millicores = $3, memory_bytes = $4, pids = $5,
            disk_bytes = $6, max_jails = $7, io_read_bps = $8, io_write_bps = $9, io_read_iops = $10,
            io_write_iops = $11, net_egress_bps = $12, net_ingress_bps = $13,
            monthly_transfer_bytes = $14, updated_at = now()
         WHERE id = $1 RETURNING ",
        "",
        id,
        display_name,
        to_i32("cpu", q.cpu_millicores)?,
        to_i64("memory", q.memory_bytes)?,
        to_i32("pids", q.pids)?,
        to_i64("disk", q.disk_bytes)?,
        to_i32("max_jails", q.max_jails)?,
        to_i64("io_read_bps", q.io_read_bps)?,
        to_i64("io_write_bps", q.io_write_bps)?,
        to_i64("io_read_iops", q.io_read_iops)?,
        to_i64("io_write_iops", q.io_write_iops)?,
        to_i64("net_egress_bps", q.net_egress_bps)?,
        to_i64("net_ingress_bps", q.net_ingress_bps)?,
        to_i64("monthly_transfer_bytes", q.monthly_transfer_bytes)?
    )
    .fetch_optional(&mut *tx)
    .await?;
    let plan: Plan = row.ok_or(StoreError::NotFound)?.try_into()?;
    crate::jails::clamp_to_quota_for_plan(&mut tx, id).await?;
    tx.commit().await?;
    Ok(plan)
}

/// Turns user namespaces on or off for the jails of a plan's tenants, and
/// asks for each of those jails that should run to be restarted: a jail's
/// ids change only while it is stopped. Returns the plan and whether the
/// setting changed.
pub async fn set_user_namespace(
    pool: &PgPool,
    id: Uuid,
    on: bool,
) -> Result<(Plan, bool), StoreError> {
    let mut tx = pool.begin().await?;
    let row = plan_query!(
        "UPDATE plans SET user_namespace = $2, updated_at = now()
         WHERE id = $1 AND user_namespace <> $2 RETURNING ",
        "",
        id,
        on
    )
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else {
        tx.rollback().await?;
        return Ok((get(pool, id).await?, false));
    };
    crate::jails::restart_for_plan(&mut tx, id).await?;
    tx.commit().await?;
    Ok((row.try_into()?, true))
}

/// Sets a plan's outbound access and published-port allowance. A change of
/// outbound access gives its tenants' jails a new generation, so their
/// nodes apply it to running jails. Returns the plan and whether anything
/// changed.
pub async fn set_network(
    pool: &PgPool,
    id: Uuid,
    network: PlanNetwork,
) -> Result<(Plan, bool), StoreError> {
    let mut tx = pool.begin().await?;
    let before = sqlx::query!(
        "SELECT outbound_nat FROM plans WHERE id = $1 FOR UPDATE",
        id
    )
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(StoreError::NotFound)?;
    let row = plan_query!(
        "UPDATE plans SET outbound_nat = $2, max_published_ports = $3, updated_at = now()
         WHERE id = $1 AND (outbound_nat, max_published_ports) IS DISTINCT FROM ($2, $3)
         RETURNING ",
        "",
        id,
        network.outbound_nat,
        to_i32("max_published_ports", network.max_published_ports)?
    )
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else {
        tx.rollback().await?;
        return Ok((get(pool, id).await?, false));
    };
    if before.outbound_nat != network.outbound_nat {
        crate::jails::renew_network(&mut tx, None, Some(id)).await?;
    }
    tx.commit().await?;
    Ok((row.try_into()?, true))
}

/// Sets how many snapshots each jail of a plan's tenants keeps (at most
/// 100). Lowered, snapshots kept already stay; new ones wait until fewer
/// are kept.
pub async fn set_snapshots_per_jail(pool: &PgPool, id: Uuid, n: u32) -> Result<Plan, StoreError> {
    if n > 100 {
        return Err(StoreError::Invalid {
            field: "snapshots_per_jail",
            message: format!("{n}: at most 100"),
        });
    }
    let row = plan_query!(
        "UPDATE plans SET snapshots_per_jail = $2, updated_at = now() WHERE id = $1 RETURNING ",
        "",
        id,
        to_i32("snapshots_per_jail", n)?
    )
    .fetch_optional(pool)
    .await?;
    row.ok_or(StoreError::NotFound)?.try_into()
}

/// Sets how many days the daily backups of a plan's tenants' jails are kept
/// (0 to 365; 0 takes none). Backups taken already keep their day of removal.
pub async fn set_backup_days(pool: &PgPool, id: Uuid, days: u32) -> Result<Plan, StoreError> {
    if days > 365 {
        return Err(StoreError::Invalid {
            field: "backup_days",
            message: format!("{days}: at most 365"),
        });
    }
    let row = plan_query!(
        "UPDATE plans SET backup_days = $2, updated_at = now() WHERE id = $1 RETURNING ",
        "",
        id,
        to_i32("backup_days", days)?
    )
    .fetch_optional(pool)
    .await?;
    row.ok_or(StoreError::NotFound)?.try_into()
}
