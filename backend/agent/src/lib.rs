//! The per-node agent: registers its node, heartbeats, and (as it grows)
//! reconciles jails to what PostgreSQL says and meters their usage.

use std::time::Duration;

use stockade_store::PgPool;
use stockade_store::nodes::{self, NodeInfo};
use tokio::sync::watch;
use uuid::Uuid;

/// How the agent is set up on this node.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The node's unique name.
    pub node_name: String,
    /// Time between two heartbeats.
    pub heartbeat: Duration,
}

/// Reads this host's capacity: CPUs, memory and the disk under `disk_path`.
pub fn host_capacity(disk_path: &std::path::Path) -> (u32, u64, u64) {
    let cpus = std::thread::available_parallelism()
        .ok()
        .and_then(|n| u32::try_from(n.get()).ok())
        .unwrap_or(1);
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb.saturating_mul(1024));
    let disk = nix::sys::statvfs::statvfs(disk_path)
        .map(|s| s.blocks_available().saturating_mul(s.fragment_size()))
        .unwrap_or(0);
    (cpus, memory, disk)
}

/// Registers the node and heartbeats until `shutdown` turns true. A failed
/// heartbeat (the database restarting, say) is logged and retried on the next
/// tick; it never ends the agent.
pub async fn run(
    pool: PgPool,
    cfg: AgentConfig,
    info: NodeInfo,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let node_id = register_with_retry(&pool, &info, &mut shutdown).await?;
    let Some(node_id) = node_id else {
        return Ok(());
    };
    tracing::info!(node = %cfg.node_name, %node_id, "node registered");
    let mut tick = tokio::time::interval(cfg.heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                match nodes::heartbeat(&pool, node_id).await {
                    Ok(()) => {}
                    Err(stockade_store::StoreError::NotFound) => {
                        // The row was removed by staff: register again.
                        if let Err(e) = nodes::register(&pool, &info).await {
                            tracing::warn!(error = %e, "re-registering the node failed");
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "heartbeat failed; retrying"),
                }
            }
            _ = shutdown.changed() => {
                if *shutdown.borrow() { return Ok(()); }
            }
        }
    }
}

async fn register_with_retry(
    pool: &PgPool,
    info: &NodeInfo,
    shutdown: &mut watch::Receiver<bool>,
) -> anyhow::Result<Option<Uuid>> {
    let mut delay = Duration::from_millis(200);
    loop {
        match nodes::register(pool, info).await {
            Ok(id) => return Ok(Some(id)),
            Err(e) => tracing::warn!(error = %e, "registering the node failed; retrying"),
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.changed() => if *shutdown.borrow() { return Ok(None) },
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}
