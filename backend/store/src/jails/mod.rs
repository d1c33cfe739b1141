//! Jails: desired state written by users, observed state written by agents.
//!
//! Creating a jail checks the tenant's aggregate quota and places it on a
//! node in one transaction that holds the tenant's row lock, so concurrent
//! creations for one tenant are serialised whichever web process serves them.

use chrono::{DateTime, Utc};
use sqlx::{Postgres, Transaction};
use stockade_domain::{
    DesiredState, EnvVar, Health, HealthCheck, JailKind, JailName, Limits, ObservedState, Publish,
};
use uuid::Uuid;

use crate::{JAILS_CHANNEL, PgPool, StoreError, to_i32, to_i64, to_u32, to_u64};
pub use node_side::*;
pub use quota::*;

/// A node whose heartbeat is older than this is down and gets no new jails.
pub const NODE_DOWN_AFTER_SECS: i64 = 30;

/// A jail as users and agents see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jail {
    /// Stable id.
    pub id: Uuid,
    /// Owning tenant.
    pub tenant_id: Uuid,
    /// The node it is placed on.
    pub node_id: Option<Uuid>,
    /// Name, unique among the tenant's live jails; also its hostname.
    pub name: JailName,
    /// Root filesystem image.
    pub image: String,
    /// App or system jail.
    pub kind: JailKind,
    /// Command to run (empty = the image's default).
    pub command: Vec<String>,
    /// Resource limits.
    pub limits: Limits,
    /// What users want.
    pub desired_state: DesiredState,
    /// What the agent last saw.
    pub observed_state: ObservedState,
    /// Bumped on every change of desired state or limits.
    pub generation: i64,
    /// The generation the agent last converged to.
    pub observed_generation: i64,
    /// A restart was asked for at this generation (0 = never).
    pub restart_generation: i64,
    /// The snapshot its volume is to be put back to, asked for at
    /// `restore_generation` (done once the agent converged past it).
    pub restore_snapshot_id: Option<Uuid>,
    /// The generation a restore was asked for at (0 = never).
    pub restore_generation: i64,
    /// The backup its volume is to be put back to, asked for at
    /// `restore_generation` (instead of a snapshot).
    pub restore_backup_id: Option<Uuid>,
    /// The node it is being moved to: its node stops it and ships its
    /// volume (see [`crate::moves`]).
    pub move_to_node: Option<Uuid>,
    /// The node it was moved from, whose copy stays until it converged here.
    pub moved_from_node: Option<Uuid>,
    /// Address inside the node's pool.
    pub address: Option<String>,
    /// The last failure of the agent on this jail.
    pub last_error: Option<String>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// Runs in a user namespace of its own (its tenant's plan says).
    pub user_namespace: bool,
    /// Ports of its node forwarded to it (see [`crate::ports`]).
    pub published: Vec<Publish>,
    /// Reaches the world through its node's NAT (its tenant's override or
    /// plan says).
    pub outbound_nat: bool,
    /// Its command's runs: restarts, the last exit, the next try.
    pub run: RunState,
    /// Environment variables of its command.
    pub env: Vec<EnvVar>,
    /// What its node probes to tell it is healthy, if anything.
    pub health_check: Option<HealthCheck>,
    /// What the probes last said.
    pub health: Health,
    /// Why, in words (the last failure), when known.
    pub health_detail: Option<String>,
    /// The CPU, memory and process limits it had before its tenant's quota
    /// was lowered and it was shrunk; `None` when it was not.
    pub shrunk_from: Option<ShrunkFrom>,
}

/// What a shrunk jail had (see [`Jail::shrunk_from`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ShrunkFrom {
    /// CPU, millicores.
    pub cpu_millicores: u32,
    /// Memory, bytes.
    pub memory_bytes: u64,
    /// Processes.
    pub pids: u32,
}

/// What the agent saw of a jail's command over its runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunState {
    /// Restarts after the command ended on its own, since the jail was made.
    pub restart_count: u32,
    /// Exits in a row, each soon after its start; drives the back-off.
    pub crash_count: u32,
    /// How the command last ended on its own.
    pub last_exit: Option<LastExit>,
    /// When the current run began; `None` while nothing runs.
    pub started_at: Option<DateTime<Utc>>,
    /// A crash-looping jail is not started again before this.
    pub retry_at: Option<DateTime<Utc>>,
}

/// How a jail's command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LastExit {
    /// Its exit code, when it exited.
    pub code: Option<i32>,
    /// The signal that ended it, when one did.
    pub signal: Option<i32>,
    /// When the agent saw it end.
    pub at: DateTime<Utc>,
}

impl LastExit {
    /// In words: "exited with code 3", "killed by signal 9 (SIGKILL)".
    pub fn describe(&self) -> String {
        match (self.code, self.signal) {
            (_, Some(sig)) => match signal_name(sig) {
                Some(name) => format!("killed by signal {sig} ({name})"),
                None => format!("killed by signal {sig}"),
            },
            (Some(code), None) => format!("exited with code {code}"),
            (None, None) => "ended".to_owned(),
        }
    }
}

/// The usual name of a signal that ends processes.
fn signal_name(sig: i32) -> Option<&'static str> {
    Some(match sig {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        4 => "SIGILL",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        13 => "SIGPIPE",
        14 => "SIGALRM",
        15 => "SIGTERM",
        31 => "SIGSYS",
        _ => return None,
    })
}

impl Jail {
    /// The key the node's engine knows this jail by: unique across tenants.
    pub fn host_name(&self) -> JailName {
        host_name(self.id)
    }
}

/// The engine key of jail `id`.
pub fn host_name(id: Uuid) -> JailName {
    let simple = id.simple().to_string();
    JailName::parse(&format!("j-{}", &simple[..20])).expect("hex is a valid jail name")
}

struct JailRow {
    id: Uuid,
    tenant_id: Uuid,
    node_id: Option<Uuid>,
    name: String,
    image: String,
    kind: String,
    command: Vec<String>,
    cpu_millicores: i32,
    memory_bytes: i64,
    pids: i32,
    disk_bytes: i64,
    io_read_bps: i64,
    io_write_bps: i64,
    io_read_iops: i64,
    io_write_iops: i64,
    net_egress_bps: i64,
    net_ingress_bps: i64,
    desired_state: String,
    observed_state: String,
    generation: i64,
    observed_generation: i64,
    restart_generation: i64,
    restore_snapshot_id: Option<Uuid>,
    restore_generation: i64,
    restore_backup_id: Option<Uuid>,
    move_to_node: Option<Uuid>,
    moved_from_node: Option<Uuid>,
    address: Option<String>,
    last_error: Option<String>,
    created_at: DateTime<Utc>,
    user_namespace: bool,
    published: Vec<String>,
    outbound_nat: bool,
    restart_count: i32,
    crash_count: i32,
    last_exit_code: Option<i32>,
    last_exit_signal: Option<i32>,
    last_exit_at: Option<DateTime<Utc>>,
    started_at: Option<DateTime<Utc>>,
    retry_at: Option<DateTime<Utc>>,
    env: serde_json::Value,
    health_check: Option<serde_json::Value>,
    health: String,
    health_detail: Option<String>,
    limits_before_clamp: Option<serde_json::Value>,
}

fn bad(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Unexpected(anyhow::anyhow!("stored {what}: {e}"))
}

impl TryFrom<JailRow> for Jail {
    type Error = StoreError;
    fn try_from(r: JailRow) -> Result<Self, StoreError> {
        Ok(Jail {
            id: r.id,
            tenant_id: r.tenant_id,
            node_id: r.node_id,
            name: JailName::parse(&r.name).map_err(|e| bad("name", e))?,
            image: r.image,
            kind: r.kind.parse().map_err(|e| bad("kind", e))?,
            command: r.command,
            limits: Limits {
                cpu_millicores: to_u32("cpu", r.cpu_millicores)?,
                memory_bytes: to_u64("memory", r.memory_bytes)?,
                pids: to_u32("pids", r.pids)?,
                disk_bytes: to_u64("disk", r.disk_bytes)?,
                io_read_bps: to_u64("io_read_bps", r.io_read_bps)?,
                io_write_bps: to_u64("io_write_bps", r.io_write_bps)?,
                io_read_iops: to_u64("io_read_iops", r.io_read_iops)?,
                io_write_iops: to_u64("io_write_iops", r.io_write_iops)?,
                net_egress_bps: to_u64("net_egress_bps", r.net_egress_bps)?,
                net_ingress_bps: to_u64("net_ingress_bps", r.net_ingress_bps)?,
            },
            desired_state: r
                .desired_state
                .parse()
                .map_err(|e| bad("desired_state", e))?,
            observed_state: r
                .observed_state
                .parse()
                .map_err(|e| bad("observed_state", e))?,
            generation: r.generation,
            observed_generation: r.observed_generation,
            restart_generation: r.restart_generation,
            restore_snapshot_id: r.restore_snapshot_id,
            restore_generation: r.restore_generation,
            restore_backup_id: r.restore_backup_id,
            move_to_node: r.move_to_node,
            moved_from_node: r.moved_from_node,
            address: r.address,
            last_error: r.last_error,
            created_at: r.created_at,
            user_namespace: r.user_namespace,
            published: r
                .published
                .iter()
                .map(|p| Publish::parse(p).map_err(|e| bad("published port", e)))
                .collect::<Result<_, _>>()?,
            outbound_nat: r.outbound_nat,
            run: RunState {
                restart_count: to_u32("restart_count", r.restart_count)?,
                crash_count: to_u32("crash_count", r.crash_count)?,
                last_exit: r.last_exit_at.map(|at| LastExit {
                    code: r.last_exit_code,
                    signal: r.last_exit_signal,
                    at,
                }),
                started_at: r.started_at,
                retry_at: r.retry_at,
            },
            env: serde_json::from_value(r.env).map_err(|e| bad("env", e))?,
            health_check: r
                .health_check
                .map(serde_json::from_value)
                .transpose()
                .map_err(|e| bad("health_check", e))?,
            health: r.health.parse().map_err(|e| bad("health", e))?,
            health_detail: r.health_detail,
            shrunk_from: r
                .limits_before_clamp
                .map(serde_json::from_value)
                .transpose()
                .map_err(|e| bad("limits_before_clamp", e))?,
        })
    }
}

/// A query of [`JailRow`]s: `$before` (up to `SELECT` or `RETURNING`), a
/// jail's columns, `$after`, then the arguments.
macro_rules! jail_query {
    ($before:tt, $after:tt $(, $arg:expr)* $(,)?) => {
        sqlx::query_as!(
            JailRow,
            $before
                + r#"id, tenant_id, node_id, name, image, kind, command, cpu_millicores,
    memory_bytes, pids, disk_bytes, io_read_bps, io_write_bps, io_read_iops, io_write_iops,
    net_egress_bps, net_ingress_bps, desired_state, observed_state, generation,
    observed_generation, restart_generation, restore_snapshot_id, restore_generation,
    restore_backup_id, move_to_node, moved_from_node,
    host(address) AS address, last_error, created_at,
    COALESCE((SELECT p.user_namespace FROM tenants t JOIN plans p ON p.id = t.plan_id
              WHERE t.id = jails.tenant_id), true) AS "user_namespace!",
    ARRAY(SELECT pp.host_port || ':' || pp.jail_port || '/' || pp.protocol
          FROM published_ports pp WHERE pp.jail_id = jails.id
          ORDER BY pp.protocol, pp.host_port) AS "published!",
    COALESCE((SELECT COALESCE(o.outbound_nat, p.outbound_nat)
              FROM tenants t JOIN plans p ON p.id = t.plan_id
              LEFT JOIN tenant_quota_overrides o ON o.tenant_id = t.id
              WHERE t.id = jails.tenant_id), true) AS "outbound_nat!",
    restart_count, crash_count, last_exit_code, last_exit_signal, last_exit_at, started_at,
    retry_at, env, health_check, health, health_detail, limits_before_clamp"#
                + $after
            $(, $arg)*
        )
    };
}

// After the macro, which they use.
mod node_side;
mod quota;

/// What a user asks for when creating a jail.
#[derive(Debug, Clone)]
pub struct NewJail {
    /// Name within the tenant.
    pub name: JailName,
    /// Image name.
    pub image: String,
    /// App or system.
    pub kind: JailKind,
    /// Command (empty = image default).
    pub command: Vec<String>,
    /// Limits; a rate of 0 takes the plan's per-jail ceiling.
    pub limits: Limits,
}

/// Locks the tenant's row (serialising quota checks) and refuses changes to
/// a tenant that is not active.
pub(crate) async fn lock_active_tenant(
    tx: &mut Transaction<'_, Postgres>,
    tenant_id: Uuid,
) -> Result<(), StoreError> {
    let status = sqlx::query_scalar!(
        "SELECT status FROM tenants WHERE id = $1 FOR NO KEY UPDATE",
        tenant_id
    )
    .fetch_optional(&mut **tx)
    .await?;
    match status.as_deref() {
        None => Err(StoreError::NotFound),
        Some("active") => Ok(()),
        Some(other) => Err(StoreError::InvalidState(format!("the tenant is {other}"))),
    }
}

/// Key of the transaction lock that placements take, so two cannot both
/// take the last room of a node. A lock of its own rather than on the node
/// rows: the web role may read nodes but not lock them for update.
const PLACEMENT_LOCK: i64 = 0x5354_4b50_4c41_4345; // "STKPLACE"

/// Picks the live node offering `image` with the most free memory that
/// fits `limits`; placements are serialised (see [`PLACEMENT_LOCK`]).
async fn place(
    tx: &mut Transaction<'_, Postgres>,
    limits: &Limits,
    image: &str,
) -> Result<Uuid, StoreError> {
    struct Candidate {
        id: Uuid,
        free_memory: i64,
        free_disk: i64,
        free_slots: i64,
        images: Option<Vec<String>>,
    }
    sqlx::query!("SELECT pg_advisory_xact_lock($1)", PLACEMENT_LOCK)
        .execute(&mut **tx)
        .await?;
    let mut candidates = sqlx::query_as!(
        Candidate,
        r#"WITH live AS (
             SELECT id, name, memory_bytes, disk_bytes, max_jails, images FROM nodes
             WHERE heartbeat_at > now() - make_interval(secs => $1)
               AND id NOT IN (SELECT node_id FROM node_drains))
         SELECT l.id AS "id!",
                l.memory_bytes - COALESCE(sum(j.memory_bytes), 0)::bigint AS "free_memory!",
                l.disk_bytes - COALESCE(sum(j.disk_bytes), 0)::bigint AS "free_disk!",
                l.max_jails - count(j.id) AS "free_slots!",
                l.images
         FROM live l LEFT JOIN jails j ON j.node_id = l.id AND j.desired_state <> 'deleted'
         GROUP BY l.id, l.name, l.memory_bytes, l.disk_bytes, l.max_jails, l.images
         ORDER BY "free_memory!" DESC, l.name"#,
        f64::from(u32::try_from(NODE_DOWN_AFTER_SECS).unwrap_or(30))
    )
    .fetch_all(&mut **tx)
    .await?;
    if candidates.is_empty() {
        return Err(StoreError::NoCapacity("no node is up".into()));
    }
    // A node that has not reported its images yet may have any.
    let offers = |c: &Candidate| {
        c.images
            .as_ref()
            .is_none_or(|i| i.iter().any(|i| i == image))
    };
    if !candidates.iter().any(offers) {
        let mut known: Vec<&str> = candidates
            .iter()
            .flat_map(|c| c.images.iter().flatten().map(String::as_str))
            .collect();
        known.sort_unstable();
        known.dedup();
        return Err(StoreError::Invalid {
            field: "image",
            message: format!(
                "no node offers the image {image:?}; images offered: {}",
                if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                }
            ),
        });
    }
    candidates.retain(offers);
    let mem = to_i64("memory", limits.memory_bytes)?;
    let disk = to_i64("disk", limits.disk_bytes)?;
    candidates
        .iter()
        .find(|c| c.free_memory >= mem && c.free_disk >= disk && c.free_slots > 0)
        .map(|c| c.id)
        .ok_or_else(|| StoreError::NoCapacity("every node is full".into()))
}

pub(crate) async fn notify(
    tx: &mut Transaction<'_, Postgres>,
    node_id: Option<Uuid>,
) -> Result<(), StoreError> {
    sqlx::query!(
        "SELECT pg_notify($1, $2)",
        JAILS_CHANNEL,
        node_id.map(|n| n.to_string()).unwrap_or_default()
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Creates a jail in a tenant within its quota and places it on a node.
pub async fn create(pool: &PgPool, tenant_id: Uuid, new: &NewJail) -> Result<Jail, StoreError> {
    let mut tx = pool.begin().await?;
    let jail = create_in(&mut tx, tenant_id, new).await?;
    tx.commit().await?;
    Ok(jail)
}

/// [`create`] within `tx`: its node hears of it when `tx` commits.
pub(crate) async fn create_in(
    tx: &mut Transaction<'_, Postgres>,
    tenant_id: Uuid,
    new: &NewJail,
) -> Result<Jail, StoreError> {
    lock_active_tenant(tx, tenant_id).await?;
    let quota = effective_quota(&mut **tx, tenant_id).await?;
    let used = allocated(&mut **tx, tenant_id, None).await?;
    let mut limits = new.limits;
    fit_to_quota(&mut limits, &quota, &used, true)?;
    let node_id = place(tx, &limits, &new.image).await?;
    let row = jail_query!(
        "INSERT INTO jails (tenant_id, node_id, name, image, kind, command, cpu_millicores, memory_bytes,
            pids, disk_bytes, io_read_bps, io_write_bps, io_read_iops, io_write_iops, net_egress_bps,
            net_ingress_bps)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)
         RETURNING ",
        "",
        tenant_id,
        node_id,
        new.name.as_str(),
        new.image.as_str(),
        new.kind.as_str(),
        new.command.as_slice(),
        to_i32("cpu", limits.cpu_millicores)?,
        to_i64("memory", limits.memory_bytes)?,
        to_i32("pids", limits.pids)?,
        to_i64("disk", limits.disk_bytes)?,
        to_i64("io_read_bps", limits.io_read_bps)?,
        to_i64("io_write_bps", limits.io_write_bps)?,
        to_i64("io_read_iops", limits.io_read_iops)?,
        to_i64("io_write_iops", limits.io_write_iops)?,
        to_i64("net_egress_bps", limits.net_egress_bps)?,
        to_i64("net_ingress_bps", limits.net_ingress_bps)?
    )
    .fetch_one(&mut **tx)
    .await
    .map_err(crate::conflict_as("a jail with this name"))?;
    notify(tx, Some(node_id)).await?;
    row.try_into()
}

/// One jail of a tenant. The `tenant_id` predicate is the boundary: a jail of
/// another tenant is simply not found.
pub async fn get(pool: &PgPool, tenant_id: Uuid, jail_id: Uuid) -> Result<Jail, StoreError> {
    let row = jail_query!(
        "SELECT ",
        " FROM jails WHERE id = $1 AND tenant_id = $2",
        jail_id,
        tenant_id
    )
    .fetch_optional(pool)
    .await?;
    row.ok_or(StoreError::NotFound)?.try_into()
}

/// A tenant's jails that are not deleted, by name.
pub async fn list_for_tenant(pool: &PgPool, tenant_id: Uuid) -> Result<Vec<Jail>, StoreError> {
    let rows = jail_query!(
        "SELECT ",
        " FROM jails
         WHERE tenant_id = $1 AND NOT (desired_state = 'deleted' AND observed_state = 'deleted')
         ORDER BY name",
        tenant_id
    )
    .fetch_all(pool)
    .await?;
    rows.into_iter().map(Jail::try_from).collect()
}

/// Every failing jail across tenants (failed, crash-looping or unhealthy,
/// not being deleted), with its tenant's slug: the longest failing first.
pub async fn failing(pool: &PgPool, limit: i64) -> Result<Vec<(Jail, String)>, StoreError> {
    let rows = jail_query!(
        "SELECT ",
        " FROM jails
         WHERE (observed_state IN ('failed', 'crash_looping')
                OR (observed_state = 'running' AND health = 'unhealthy'))
           AND desired_state <> 'deleted'
         ORDER BY observed_at LIMIT $1",
        limit
    )
    .fetch_all(pool)
    .await?;
    let jails = rows
        .into_iter()
        .map(Jail::try_from)
        .collect::<Result<Vec<_>, _>>()?;
    let ids: Vec<Uuid> = jails.iter().map(|j| j.tenant_id).collect();
    let names: std::collections::HashMap<Uuid, String> =
        sqlx::query!("SELECT id, slug FROM tenants WHERE id = ANY($1)", &ids)
            .fetch_all(pool)
            .await?
            .into_iter()
            .map(|r| (r.id, r.slug))
            .collect();
    Ok(jails
        .into_iter()
        .map(|j| {
            let name = names.get(&j.tenant_id).cloned().unwrap_or_default();
            (j, name)
        })
        .collect())
}

/// Sets what a tenant's jail should be. Starting needs an active tenant;
/// stopping and deleting are always allowed.
pub async fn set_desired(
    pool: &PgPool,
    tenant_id: Uuid,
    jail_id: Uuid,
    desired: DesiredState,
) -> Result<Jail, StoreError> {
    let mut tx = pool.begin().await?;
    if desired == DesiredState::Running {
        lock_active_tenant(&mut tx, tenant_id).await?;
    }

    let row = jail_query!(
        "UPDATE jails SET desired_state = $3, desired_before_suspend = NULL,
             generation = generation + 1, updated_at = now()
         WHERE id = $1 AND tenant_id = $2 AND desired_state <> 'deleted'
         RETURNING ",
        "",
        jail_id,
        tenant_id,
        desired.as_str()
    )
    .fetch_optional(&mut *tx)
    .await?;
    let jail: Jail = row.ok_or(StoreError::NotFound)?.try_into()?;
    notify(&mut tx, jail.node_id).await?;
    tx.commit().await?;
    Ok(jail)
}

/// Asks for a running jail to be restarted (started if it is not running).
pub async fn restart(pool: &PgPool, tenant_id: Uuid, jail_id: Uuid) -> Result<Jail, StoreError> {
    let mut tx = pool.begin().await?;
    lock_active_tenant(&mut tx, tenant_id).await?;
    let row = jail_query!(
        "UPDATE jails SET desired_state = 'running', desired_before_suspend = NULL,
             generation = generation + 1, restart_generation = generation + 1, updated_at = now()
         WHERE id = $1 AND tenant_id = $2 AND desired_state <> 'deleted'
         RETURNING ",
        "",
        jail_id,
        tenant_id
    )
    .fetch_optional(&mut *tx)
    .await?;
    let jail: Jail = row.ok_or(StoreError::NotFound)?.try_into()?;
    notify(&mut tx, jail.node_id).await?;
    tx.commit().await?;
    Ok(jail)
}

/// Changes a jail's limits within the tenant's quota. A volume only grows.
pub async fn update_limits(
    pool: &PgPool,
    tenant_id: Uuid,
    jail_id: Uuid,
    limits: &Limits,
) -> Result<Jail, StoreError> {
    let mut tx = pool.begin().await?;
    lock_active_tenant(&mut tx, tenant_id).await?;
    let current = jail_query!(
        "SELECT ",
        " FROM jails WHERE id = $1 AND tenant_id = $2 AND desired_state <> 'deleted' FOR NO KEY UPDATE",
        jail_id,
        tenant_id
    )
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(StoreError::NotFound)?;
    let current: Jail = current.try_into()?;
    if limits.disk_bytes < current.limits.disk_bytes {
        return Err(StoreError::QuotaExceeded(format!(
            "a volume cannot shrink: it is {} now",
            fmt_bytes(current.limits.disk_bytes)
        )));
    }
    let quota = effective_quota(&mut *tx, tenant_id).await?;
    let used = allocated(&mut *tx, tenant_id, Some(jail_id)).await?;
    let mut limits = *limits;
    fit_to_quota(&mut limits, &quota, &used, false)?;
    let row = jail_query!(
        "UPDATE jails SET cpu_millicores = $3, memory_bytes = $4, pids = $5, disk_bytes = $6,
             io_read_bps = $7, io_write_bps = $8, io_read_iops = $9, io_write_iops = $10,
             net_egress_bps = $11, net_ingress_bps = $12, limits_before_clamp = NULL,
             generation = generation + 1, updated_at = now()
         WHERE id = $1 AND tenant_id = $2 RETURNING ",
        "",
        jail_id,
        tenant_id,
        to_i32("cpu", limits.cpu_millicores)?,
        to_i64("memory", limits.memory_bytes)?,
        to_i32("pids", limits.pids)?,
        to_i64("disk", limits.disk_bytes)?,
        to_i64("io_read_bps", limits.io_read_bps)?,
        to_i64("io_write_bps", limits.io_write_bps)?,
        to_i64("io_read_iops", limits.io_read_iops)?,
        to_i64("io_write_iops", limits.io_write_iops)?,
        to_i64("net_egress_bps", limits.net_egress_bps)?,
        to_i64("net_ingress_bps", limits.net_ingress_bps)?
    )
    .fetch_one(&mut *tx)
    .await?;
    notify(&mut tx, current.node_id).await?;
    tx.commit().await?;
    row.try_into()
}

/// What a jail runs: its image, command and environment; `None` keeps one.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProgramChange<'a> {
    pub image: Option<&'a str>,
    pub command: Option<&'a [String]>,
    pub env: Option<&'a [EnvVar]>,
}

/// Changes what a jail runs: its image (one its node offers; the files the
/// jail changed stay on top of it), its command and its environment. A
/// running jail is restarted with them.
pub async fn update_program(
    pool: &PgPool,
    tenant_id: Uuid,
    jail_id: Uuid,
    change: ProgramChange<'_>,
) -> Result<Jail, StoreError> {
    let ProgramChange {
        image,
        command,
        env,
    } = change;
    let image = image
        .map(stockade_domain::image_name)
        .transpose()
        .map_err(|e| StoreError::Invalid {
            field: "image",
            message: e.reason,
        })?;
    if let Some(c) = command {
        stockade_domain::program::check_command(c)?;
    }
    if let Some(e) = env {
        stockade_domain::program::check_env(e)?;
    }
    let mut tx = pool.begin().await?;
    lock_active_tenant(&mut tx, tenant_id).await?;
    let current: Jail = jail_query!(
        "SELECT ",
        " FROM jails WHERE id = $1 AND tenant_id = $2 AND desired_state <> 'deleted' FOR NO KEY UPDATE",
        jail_id,
        tenant_id
    )
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(StoreError::NotFound)?
    .try_into()?;
    let command = command.map_or_else(|| current.command.clone(), <[String]>::to_vec);
    if current.kind == JailKind::App && command.is_empty() {
        return Err(StoreError::Invalid {
            field: "command",
            message: "an app jail needs a command".into(),
        });
    }
    let env = env.map_or_else(|| current.env.clone(), <[EnvVar]>::to_vec);
    let env_json = serde_json::to_value(&env).map_err(|e| StoreError::Unexpected(e.into()))?;
    let image = match image {
        Some(i) if i != current.image => {
            check_node_offers(&mut tx, current.node_id, &i).await?;
            i
        }
        _ => current.image.clone(),
    };
    let row = jail_query!(
        "UPDATE jails SET command = $3, env = $4, image = $5, generation = generation + 1,
             restart_generation = CASE WHEN desired_state = 'running' THEN generation + 1
                                       ELSE restart_generation END,
             updated_at = now()
         WHERE id = $1 AND tenant_id = $2 RETURNING ",
        "",
        jail_id,
        tenant_id,
        &command,
        env_json,
        image
    )
    .fetch_one(&mut *tx)
    .await?;
    notify(&mut tx, current.node_id).await?;
    tx.commit().await?;
    row.try_into()
}

/// Refuses an image the jail's node does not offer (a node that has not
/// reported its images yet may have any, as at placement).
async fn check_node_offers(
    tx: &mut Transaction<'_, Postgres>,
    node_id: Option<Uuid>,
    image: &str,
) -> Result<(), StoreError> {
    let Some(node_id) = node_id else {
        return Ok(());
    };
    let offered = sqlx::query_scalar!("SELECT images FROM nodes WHERE id = $1", node_id)
        .fetch_optional(&mut **tx)
        .await?
        .flatten();
    match offered {
        Some(images) if !images.iter().any(|i| i == image) => Err(StoreError::Invalid {
            field: "image",
            message: format!(
                "the jail's node does not offer the image {image:?}; images offered: {}",
                images.join(", ")
            ),
        }),
        _ => Ok(()),
    }
}

/// The images the jail's node offers, by name (empty while it has not
/// reported them).
pub async fn images_for(
    pool: &PgPool,
    tenant_id: Uuid,
    jail_id: Uuid,
) -> Result<Vec<String>, StoreError> {
    let mut images = sqlx::query_scalar!(
        r#"SELECT n.images AS "images?" FROM jails j JOIN nodes n ON n.id = j.node_id
           WHERE j.id = $1 AND j.tenant_id = $2"#,
        jail_id,
        tenant_id
    )
    .fetch_optional(pool)
    .await?
    .flatten()
    .unwrap_or_default();
    images.sort();
    Ok(images)
}

/// Grows a jail shrunk by a lowered quota back to the limits it had, when
/// the quota has room for them now (else the refusal says what is left).
pub async fn grow_back(pool: &PgPool, tenant_id: Uuid, jail_id: Uuid) -> Result<Jail, StoreError> {
    let current = get(pool, tenant_id, jail_id).await?;
    let Some(before) = current.shrunk_from else {
        return Err(StoreError::InvalidState(
            "the jail was not shrunk by a lowered quota".into(),
        ));
    };
    let limits = Limits {
        cpu_millicores: before.cpu_millicores.max(current.limits.cpu_millicores),
        memory_bytes: before.memory_bytes.max(current.limits.memory_bytes),
        pids: before.pids.max(current.limits.pids),
        ..current.limits
    };
    // Within the quota, in one transaction with the tenant locked; clears
    // what was remembered.
    update_limits(pool, tenant_id, jail_id, &limits).await
}

/// Sets (or with `None` removes) a jail's health check; its health is
/// unknown again until the next probes.
pub async fn set_health_check(
    pool: &PgPool,
    tenant_id: Uuid,
    jail_id: Uuid,
    check: Option<&HealthCheck>,
) -> Result<Jail, StoreError> {
    if let Some(c) = check {
        c.check()?;
    }
    let value = check
        .map(serde_json::to_value)
        .transpose()
        .map_err(|e| StoreError::Unexpected(e.into()))?;
    let row = jail_query!(
        "UPDATE jails SET health_check = $3, health = 'unknown', health_detail = NULL,
             health_at = NULL, updated_at = now()
         WHERE id = $1 AND tenant_id = $2 AND desired_state <> 'deleted' RETURNING ",
        "",
        jail_id,
        tenant_id,
        value
    )
    .fetch_optional(pool)
    .await?
    .ok_or(StoreError::NotFound)?;
    row.try_into()
}

/// Asks for every jail of a plan's tenants that should run to be restarted
/// (a change of the plan that applies only at a jail's start).
pub(crate) async fn restart_for_plan(
    tx: &mut Transaction<'_, Postgres>,
    plan_id: Uuid,
) -> Result<(), StoreError> {
    sqlx::query!(
        "UPDATE jails SET generation = generation + 1, restart_generation = generation + 1,
             updated_at = now()
         WHERE desired_state = 'running'
           AND tenant_id IN (SELECT id FROM tenants WHERE plan_id = $1)",
        plan_id
    )
    .execute(&mut **tx)
    .await?;
    notify(tx, None).await
}

/// A new generation for the live jails of tenant `tenant_id`, or of every
/// tenant on plan `plan_id`, so their nodes apply a changed outbound access.
pub(crate) async fn renew_network(
    tx: &mut Transaction<'_, Postgres>,
    tenant_id: Option<Uuid>,
    plan_id: Option<Uuid>,
) -> Result<(), StoreError> {
    sqlx::query!(
        "UPDATE jails SET generation = generation + 1, updated_at = now()
         WHERE desired_state <> 'deleted'
           AND (tenant_id = $1 OR tenant_id IN (SELECT id FROM tenants WHERE plan_id = $2))",
        tenant_id,
        plan_id
    )
    .execute(&mut **tx)
    .await?;
    notify(tx, None).await
}

// ---- the agent's side -------------------------------------------------------
