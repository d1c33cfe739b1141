//! Nodes: the hosts that run an agent, their capacity and heartbeat.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::{PgPool, StoreError};

/// What an agent reports about its host when it registers.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    /// Unique node name (by default the host name).
    pub name: String,
    /// Logical CPUs.
    pub cpus: u32,
    /// Physical memory in bytes.
    pub memory_bytes: u64,
    /// Disk bytes available for jail volumes.
    pub disk_bytes: u64,
    /// Jail addresses are taken from this network (CIDR), if networking is on.
    pub address_pool: Option<String>,
    /// Version of the agent binary.
    pub agent_version: String,
    /// The node's ports that jails' ports are published on.
    pub published_ports: std::ops::RangeInclusive<u16>,
    /// Why the node moves jails cold (never checkpointed live).
    pub cold_moves: String,
}

/// The pool of published ports a node has unless configured otherwise.
pub const DEFAULT_PUBLISHED_PORTS: std::ops::RangeInclusive<u16> = 20000..=29999;

/// A node as the staff pages show it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Node {
    /// Stable id.
    pub id: Uuid,
    /// Unique node name.
    pub name: String,
    /// Logical CPUs.
    pub cpus: i32,
    /// Memory in bytes.
    pub memory_bytes: i64,
    /// Disk in bytes.
    pub disk_bytes: i64,
    /// Last heartbeat.
    pub heartbeat_at: DateTime<Utc>,
    /// Why it moves jails cold, as its agent said when it started.
    pub cold_moves: Option<String>,
}

fn to_i64(what: &str, v: u64) -> Result<i64, StoreError> {
    i64::try_from(v)
        .map_err(|_| StoreError::Unexpected(anyhow::anyhow!("{what} {v} is out of range")))
}

/// Registers a node or updates its capacity (by name), returning its id.
pub async fn register(pool: &PgPool, info: &NodeInfo) -> Result<Uuid, StoreError> {
    // The address pool travels as text, cast by the server.
    let id = sqlx::query_scalar!(
        "INSERT INTO nodes (name, cpus, memory_bytes, disk_bytes, address_pool, agent_version,
             port_min, port_max, cold_moves)
         VALUES ($1, $2, $3, $4, $5::text::cidr, $6, $7, $8, $9)
         ON CONFLICT (name) DO UPDATE SET cpus = EXCLUDED.cpus, memory_bytes = EXCLUDED.memory_bytes,
             disk_bytes = EXCLUDED.disk_bytes, address_pool = EXCLUDED.address_pool,
             agent_version = EXCLUDED.agent_version, port_min = EXCLUDED.port_min,
             port_max = EXCLUDED.port_max, cold_moves = EXCLUDED.cold_moves, heartbeat_at = now()
         RETURNING id",
        info.name.as_str(),
        i32::try_from(info.cpus).unwrap_or(i32::MAX),
        to_i64("memory", info.memory_bytes)?,
        to_i64("disk", info.disk_bytes)?,
        info.address_pool.as_deref(),
        info.agent_version.as_str(),
        i32::from(*info.published_ports.start()),
        i32::from(*info.published_ports.end()),
        info.cold_moves.as_str()
    )
    .fetch_one(pool)
    .await?;
    Ok(id)
}

/// Records that the node's agent is alive, with the images the node offers
/// (kept as they were when `None`: the agent could not list them).
pub async fn heartbeat(
    pool: &PgPool,
    node_id: Uuid,
    images: Option<&[String]>,
) -> Result<(), StoreError> {
    let done = sqlx::query!(
        "UPDATE nodes SET heartbeat_at = now(), images = COALESCE($2, images) WHERE id = $1",
        node_id,
        images
    )
    .execute(pool)
    .await?;
    if done.rows_affected() == 0 {
        return Err(StoreError::NotFound);
    }
    Ok(())
}

/// The images live nodes offer, by name. A node that has not reported
/// its images yet offers at least the built-in `busybox` its agent makes.
pub async fn offered_images(pool: &PgPool) -> Result<Vec<String>, StoreError> {
    Ok(sqlx::query_scalar!(
        r#"SELECT DISTINCT image AS "image!" FROM nodes,
             unnest(COALESCE(images, ARRAY['busybox'])) AS image
         WHERE heartbeat_at > now() - make_interval(secs => $1)
         ORDER BY image"#,
        f64::from(u32::try_from(crate::jails::NODE_DOWN_AFTER_SECS).unwrap_or(30))
    )
    .fetch_all(pool)
    .await?)
}

/// Every node, by name.
pub async fn list(pool: &PgPool) -> Result<Vec<Node>, StoreError> {
    Ok(sqlx::query_as!(
        Node,
        "SELECT id, name, cpus, memory_bytes, disk_bytes, heartbeat_at, cold_moves FROM nodes ORDER BY name"
    )
    .fetch_all(pool)
    .await?)
}

/// A node with what is placed on it, for the staff page.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct NodeLoad {
    /// Stable id.
    pub id: Uuid,
    /// Name.
    pub name: String,
    /// CPUs.
    pub cpus: i32,
    /// Memory, bytes.
    pub memory_bytes: i64,
    /// Disk, bytes.
    pub disk_bytes: i64,
    /// Most jails it takes.
    pub max_jails: i32,
    /// Seconds since its last heartbeat.
    pub heartbeat_age_secs: i64,
    /// Live jails placed on it.
    pub jails: i64,
    /// Jails observed running.
    pub running: i64,
    /// Sum of CPU limits placed, millicores.
    pub cpu_allocated: i64,
    /// Sum of memory limits placed, bytes.
    pub memory_allocated: i64,
    /// Sum of volume sizes placed, bytes.
    pub disk_allocated: i64,
    /// Where its SSH gateway listens, and its host key's fingerprint.
    pub ssh_endpoint: Option<String>,
    pub ssh_host_fingerprint: Option<String>,
    /// Why it moves jails cold, as its agent said when it started.
    pub cold_moves: Option<String>,
}

impl NodeLoad {
    /// Whether the node's agent has been silent too long.
    pub fn is_down(&self) -> bool {
        self.heartbeat_age_secs > crate::jails::NODE_DOWN_AFTER_SECS
    }
}

/// Every node with its allocation.
pub async fn loads(pool: &PgPool) -> Result<Vec<NodeLoad>, StoreError> {
    Ok(sqlx::query_as!(
        NodeLoad,
        r#"SELECT n.id, n.name, n.cpus, n.memory_bytes, n.disk_bytes, n.max_jails,
             extract(epoch FROM now() - n.heartbeat_at)::bigint AS "heartbeat_age_secs!",
             count(j.id) AS "jails!",
             count(j.id) FILTER (WHERE j.observed_state = 'running') AS "running!",
             COALESCE(sum(j.cpu_millicores), 0)::bigint AS "cpu_allocated!",
             COALESCE(sum(j.memory_bytes), 0)::bigint AS "memory_allocated!",
             COALESCE(sum(j.disk_bytes), 0)::bigint AS "disk_allocated!",
             n.ssh_endpoint, n.ssh_host_fingerprint, n.cold_moves
         FROM nodes n LEFT JOIN jails j ON j.node_id = n.id AND j.desired_state <> 'deleted'
         GROUP BY n.id ORDER BY n.name"#
    )
    .fetch_all(pool)
    .await?)
}

/// Overrides a node's recorded capacity (benchmarks place more jails than
/// the host's memory would admit, since idle jails use far less than their limit).
pub async fn set_capacity_for_tests(
    pool: &PgPool,
    name: &str,
    memory_bytes: i64,
    disk_bytes: i64,
    max_jails: i32,
) -> Result<(), StoreError> {
    sqlx::query!(
        "UPDATE nodes SET memory_bytes = $2, disk_bytes = $3, max_jails = $4 WHERE name = $1",
        name,
        memory_bytes,
        disk_bytes,
        max_jails
    )
    .execute(pool)
    .await?;
    Ok(())
}
