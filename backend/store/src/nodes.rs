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
}

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
}

fn to_i64(what: &str, v: u64) -> Result<i64, StoreError> {
    i64::try_from(v)
        .map_err(|_| StoreError::Unexpected(anyhow::anyhow!("{what} {v} is out of range")))
}

/// Registers a node or updates its capacity (by name), returning its id.
pub async fn register(pool: &PgPool, info: &NodeInfo) -> Result<Uuid, StoreError> {
    let id = sqlx::query_scalar(
        "INSERT INTO nodes (name, cpus, memory_bytes, disk_bytes, address_pool, agent_version)
         VALUES ($1, $2, $3, $4, $5::cidr, $6)
         ON CONFLICT (name) DO UPDATE SET cpus = EXCLUDED.cpus, memory_bytes = EXCLUDED.memory_bytes,
             disk_bytes = EXCLUDED.disk_bytes, address_pool = EXCLUDED.address_pool,
             agent_version = EXCLUDED.agent_version, heartbeat_at = now()
         RETURNING id",
    )
    .bind(&info.name)
    .bind(i32::try_from(info.cpus).unwrap_or(i32::MAX))
    .bind(to_i64("memory", info.memory_bytes)?)
    .bind(to_i64("disk", info.disk_bytes)?)
    .bind(info.address_pool.as_deref())
    .bind(&info.agent_version)
    .fetch_one(pool)
    .await?;
    Ok(id)
}

/// Records that the node's agent is alive.
pub async fn heartbeat(pool: &PgPool, node_id: Uuid) -> Result<(), StoreError> {
    let done = sqlx::query("UPDATE nodes SET heartbeat_at = now() WHERE id = $1")
        .bind(node_id)
        .execute(pool)
        .await?;
    if done.rows_affected() == 0 {
        return Err(StoreError::NotFound);
    }
    Ok(())
}

/// Every node, by name.
pub async fn list(pool: &PgPool) -> Result<Vec<Node>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT id, name, cpus, memory_bytes, disk_bytes, heartbeat_at FROM nodes ORDER BY name",
    )
    .fetch_all(pool)
    .await?)
}
