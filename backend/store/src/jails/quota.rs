//! A tenant's aggregate quota against what its jails hold: checked when a
//! jail is made or changed, and jails clamped when a plan or override shrinks.

use sqlx::{Postgres, Transaction};
use stockade_domain::Limits;
use uuid::Uuid;

use crate::plans::Quota;
use crate::{PgPool, StoreError, to_u64};

use super::notify;

/// The tenant's quota: its plan with its overrides applied.
pub(crate) async fn effective_quota<'e>(
    ex: impl sqlx::PgExecutor<'e>,
    tenant_id: Uuid,
) -> Result<Quota, StoreError> {
    let row = sqlx::query_as!(
        crate::plans::QuotaRow,
        r#"SELECT COALESCE(o.cpu_millicores, p.cpu_millicores) AS "cpu_millicores!",
                COALESCE(o.memory_bytes, p.memory_bytes) AS "memory_bytes!",
                COALESCE(o.pids, p.pids) AS "pids!",
                COALESCE(o.disk_bytes, p.disk_bytes) AS "disk_bytes!",
                COALESCE(o.max_jails, p.max_jails) AS "max_jails!",
                COALESCE(o.io_read_bps, p.io_read_bps) AS "io_read_bps!",
                COALESCE(o.io_write_bps, p.io_write_bps) AS "io_write_bps!",
                COALESCE(o.io_read_iops, p.io_read_iops) AS "io_read_iops!",
                COALESCE(o.io_write_iops, p.io_write_iops) AS "io_write_iops!",
                COALESCE(o.net_egress_bps, p.net_egress_bps) AS "net_egress_bps!",
                COALESCE(o.net_ingress_bps, p.net_ingress_bps) AS "net_ingress_bps!",
                COALESCE(o.monthly_transfer_bytes, p.monthly_transfer_bytes) AS "monthly_transfer_bytes!"
         FROM tenants t JOIN plans p ON p.id = t.plan_id
         LEFT JOIN tenant_quota_overrides o ON o.tenant_id = t.id
         WHERE t.id = $1"#,
        tenant_id
    )
    .fetch_optional(ex)
    .await?;
    row.ok_or(StoreError::NotFound)?.try_into()
}

/// What a tenant's live jails add up to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Allocated {
    /// Number of live jails.
    pub jails: u64,
    /// Sum of CPU limits.
    pub cpu_millicores: u64,
    /// Sum of memory limits.
    pub memory_bytes: u64,
    /// Sum of pids limits.
    pub pids: u64,
    /// Sum of volume sizes.
    pub disk_bytes: u64,
    /// Bytes their snapshots take (an estimate for those not yet taken);
    /// they share the disk quota with the volumes.
    pub snapshot_bytes: u64,
}

/// Sums the limits of a tenant's live jails, leaving out `except` (a jail being edited).
pub(crate) async fn allocated<'e>(
    ex: impl sqlx::PgExecutor<'e>,
    tenant_id: Uuid,
    except: Option<Uuid>,
) -> Result<Allocated, StoreError> {
    let row = sqlx::query!(
        r#"SELECT count(*) AS "jails!", COALESCE(sum(cpu_millicores), 0)::bigint AS "cpu!",
                COALESCE(sum(memory_bytes), 0)::bigint AS "mem!",
                COALESCE(sum(pids), 0)::bigint AS "pids!", COALESCE(sum(disk_bytes), 0)::bigint AS "disk!",
                (SELECT COALESCE(sum(s.size_bytes), 0)::bigint FROM snapshots s
                 JOIN jails j ON j.id = s.jail_id
                 WHERE s.tenant_id = $1 AND j.desired_state <> 'deleted'
                   AND s.state <> 'failed') AS "snapshots!"
         FROM jails WHERE tenant_id = $1 AND desired_state <> 'deleted'
           AND ($2::uuid IS NULL OR id <> $2)"#,
        tenant_id,
        except
    )
    .fetch_one(ex)
    .await?;
    Ok(Allocated {
        jails: to_u64("count", row.jails)?,
        cpu_millicores: to_u64("cpu", row.cpu)?,
        memory_bytes: to_u64("memory", row.mem)?,
        pids: to_u64("pids", row.pids)?,
        disk_bytes: to_u64("disk", row.disk)?,
        snapshot_bytes: to_u64("snapshots", row.snapshots)?,
    })
}

/// The quota and allocation of one tenant, for the overview pages.
pub async fn quota_and_allocation(
    pool: &PgPool,
    tenant_id: Uuid,
) -> Result<(Quota, Allocated), StoreError> {
    let quota = effective_quota(pool, tenant_id).await?;
    Ok((quota, allocated(pool, tenant_id, None).await?))
}

pub(crate) fn fmt_bytes(b: u64) -> String {
    stockade_domain::ByteSize(b).to_string()
}

/// Checks `limits` against what is left of `quota`, filling unset rates with
/// the plan's per-jail ceilings. The error says which resource and what is left.
pub fn fit_to_quota(
    limits: &mut Limits,
    quota: &Quota,
    used: &Allocated,
    adding_jail: bool,
) -> Result<(), StoreError> {
    if adding_jail && used.jails + 1 > u64::from(quota.max_jails) {
        return Err(StoreError::QuotaExceeded(format!(
            "jail quota exceeded: the plan allows {} jails and {} exist",
            quota.max_jails, used.jails
        )));
    }
    let left = |total: u64, used: u64| total.saturating_sub(used);
    let cpu_left = left(u64::from(quota.cpu_millicores), used.cpu_millicores);
    if u64::from(limits.cpu_millicores) > cpu_left {
        return Err(StoreError::QuotaExceeded(format!(
            "CPU quota exceeded: {}m requested, {cpu_left}m left of {}m",
            limits.cpu_millicores, quota.cpu_millicores
        )));
    }
    let mem_left = left(quota.memory_bytes, used.memory_bytes);
    if limits.memory_bytes > mem_left {
        return Err(StoreError::QuotaExceeded(format!(
            "memory quota exceeded: {} requested, {} left of {}",
            fmt_bytes(limits.memory_bytes),
            fmt_bytes(mem_left),
            fmt_bytes(quota.memory_bytes)
        )));
    }
    let pids_left = left(u64::from(quota.pids), used.pids);
    if u64::from(limits.pids) > pids_left {
        return Err(StoreError::QuotaExceeded(format!(
            "process quota exceeded: {} requested, {pids_left} left of {}",
            limits.pids, quota.pids
        )));
    }
    let disk_left = left(
        quota.disk_bytes,
        used.disk_bytes.saturating_add(used.snapshot_bytes),
    );
    if limits.disk_bytes > disk_left {
        let snapshots = if used.snapshot_bytes > 0 {
            format!(
                " ({} of it taken by snapshots)",
                fmt_bytes(used.snapshot_bytes)
            )
        } else {
            String::new()
        };
        return Err(StoreError::QuotaExceeded(format!(
            "disk quota exceeded: {} requested, {} left of {}{snapshots}",
            fmt_bytes(limits.disk_bytes),
            fmt_bytes(disk_left),
            fmt_bytes(quota.disk_bytes)
        )));
    }
    for (name, value, ceiling) in [
        ("IO read rate", &mut limits.io_read_bps, quota.io_read_bps),
        (
            "IO write rate",
            &mut limits.io_write_bps,
            quota.io_write_bps,
        ),
        (
            "IO read operations",
            &mut limits.io_read_iops,
            quota.io_read_iops,
        ),
        (
            "IO write operations",
            &mut limits.io_write_iops,
            quota.io_write_iops,
        ),
        (
            "network egress rate",
            &mut limits.net_egress_bps,
            quota.net_egress_bps,
        ),
        (
            "network ingress rate",
            &mut limits.net_ingress_bps,
            quota.net_ingress_bps,
        ),
    ] {
        if ceiling > 0 && *value == 0 {
            *value = ceiling;
        } else if ceiling > 0 && *value > ceiling {
            return Err(StoreError::QuotaExceeded(format!(
                "{name} {value} is above the plan's ceiling of {ceiling}"
            )));
        }
    }
    Ok(())
}

/// After a tenant's quota was lowered: scales its jails' CPU, memory and
/// process limits down proportionally so their sum fits again, caps rates at
/// the per-jail ceilings, and bumps their generation so agents re-apply them.
/// Volumes are never shrunk. A shrunk jail remembers the limits it had
/// (the first ones, over several lowerings), to be grown back to.
pub(crate) async fn clamp_to_quota(
    tx: &mut Transaction<'_, Postgres>,
    tenant_id: Uuid,
) -> Result<(), StoreError> {
    let quota = effective_quota(&mut **tx, tenant_id).await?;
    let used = allocated(&mut **tx, tenant_id, None).await?;
    // factor = min(1, quota/used), applied in SQL with integer arithmetic.
    let scale = |q: u64, u: u64| -> (i64, i64) {
        if u > q && u > 0 {
            (
                i64::try_from(q).unwrap_or(i64::MAX),
                i64::try_from(u).unwrap_or(i64::MAX),
            )
        } else {
            (1, 1)
        }
    };
    let (cpu_n, cpu_d) = scale(u64::from(quota.cpu_millicores), used.cpu_millicores);
    let (mem_n, mem_d) = scale(quota.memory_bytes, used.memory_bytes);
    let (pid_n, pid_d) = scale(u64::from(quota.pids), used.pids);
    let cap = |v: u64| {
        if v == 0 {
            i64::MAX
        } else {
            i64::try_from(v).unwrap_or(i64::MAX)
        }
    };
    // The factors are bigints (the arithmetic is numeric, as the casts say).
    sqlx::query!(
        "UPDATE jails SET
             cpu_millicores = GREATEST(1, (cpu_millicores::numeric * $2::bigint / $3::bigint)::bigint)::integer,
             memory_bytes = GREATEST(1, (memory_bytes::numeric * $4::bigint / $5::bigint)::bigint),
             pids = GREATEST(1, (pids::numeric * $6::bigint / $7::bigint)::bigint)::integer,
             io_read_bps = LEAST(io_read_bps, $8), io_write_bps = LEAST(io_write_bps, $9),
             io_read_iops = LEAST(io_read_iops, $10), io_write_iops = LEAST(io_write_iops, $11),
             net_egress_bps = LEAST(net_egress_bps, $12), net_ingress_bps = LEAST(net_ingress_bps, $13),
             limits_before_clamp = CASE
                 WHEN $2::bigint < $3::bigint OR $4::bigint < $5::bigint OR $6::bigint < $7::bigint
                 THEN COALESCE(limits_before_clamp, jsonb_build_object(
                     'cpu_millicores', cpu_millicores, 'memory_bytes', memory_bytes, 'pids', pids))
                 ELSE limits_before_clamp END,
             generation = generation + 1, updated_at = now()
         WHERE tenant_id = $1 AND desired_state <> 'deleted'",
        tenant_id,
        cpu_n,
        cpu_d,
        mem_n,
        mem_d,
        pid_n,
        pid_d,
        cap(quota.io_read_bps),
        cap(quota.io_write_bps),
        cap(quota.io_read_iops),
        cap(quota.io_write_iops),
        cap(quota.net_egress_bps),
        cap(quota.net_ingress_bps)
    )
    .execute(&mut **tx)
    .await?;
    notify(tx, None).await?;
    Ok(())
}

/// [`clamp_to_quota`] for every tenant on a plan.
pub(crate) async fn clamp_to_quota_for_plan(
    tx: &mut Transaction<'_, Postgres>,
    plan_id: Uuid,
) -> Result<(), StoreError> {
    let tenants = sqlx::query_scalar!(
        "SELECT id FROM tenants WHERE plan_id = $1 AND status <> 'terminated' ORDER BY id FOR NO KEY UPDATE",
        plan_id
    )
    .fetch_all(&mut **tx)
    .await?;
    for t in tenants {
        clamp_to_quota(tx, t).await?;
    }
    Ok(())
}
