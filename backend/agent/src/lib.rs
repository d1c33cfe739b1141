//! The per-node agent: registers its node and heartbeats, reconciles the
//! node's jails to what PostgreSQL says, and meters their usage.
//!
//! Level-triggered: it wakes on NOTIFY and also re-reads everything on a
//! fixed period, so a lost notification, an agent crash or a host reboot only
//! delays convergence. Every engine step is idempotent.

mod adopt;
mod metrics;
mod reconcile;
mod sampler;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgListener;
use stockade_jail::Engine;
use stockade_store::PgPool;
use stockade_store::nodes::{self, NodeInfo};
use tokio::sync::watch;
use uuid::Uuid;

pub use metrics::Metrics;

/// How the agent is set up on this node.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The node's unique name.
    pub node_name: String,
    /// Time between two heartbeats.
    pub heartbeat: Duration,
    /// Time between two full re-reads of the node's jails.
    pub resync: Duration,
    /// Time between two usage samples of every jail.
    pub sample_interval: Duration,
    /// Hours raw samples are kept.
    pub sample_retention_hours: u32,
    /// Where the agent serves its own metrics (loopback), if anywhere.
    pub metrics_listen: Option<SocketAddr>,
    /// Time a stopping jail gets between SIGTERM and SIGKILL.
    pub stop_grace: Duration,
    /// The node's jail address pool (the bridge's gateway and prefix), or
    /// `None` when jails get loopback only.
    pub network: Option<ipnet::Ipv4Net>,
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

/// Makes this process the reaper of orphaned descendants, so the init of a
/// jail this agent started is reaped by it rather than left a zombie on
/// hosts whose PID 1 does not reap.
pub fn become_subreaper() {
    // SAFETY: PR_SET_CHILD_SUBREAPER takes an integer flag and touches no memory of ours.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) };
    if rc != 0 {
        tracing::warn!("cannot become a subreaper; exited jails may linger as zombies");
    }
}

/// Runs the agent until `shutdown` turns true. Database outages are logged
/// and retried; they never end the agent.
pub async fn run(
    pool: PgPool,
    engine: Arc<Engine>,
    cfg: AgentConfig,
    info: NodeInfo,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let Some(node_id) = register_with_retry(&pool, &info, &mut shutdown).await? else {
        return Ok(());
    };
    tracing::info!(node = %cfg.node_name, %node_id, "node registered");
    // The sampler keeps about a dozen files open per running jail.
    let open_files = stockade_jail::raise_open_file_limit();
    tracing::debug!(open_files, "open-file limit");
    let metrics = Arc::new(Metrics::default());
    if let Some(addr) = cfg.metrics_listen {
        metrics::serve(addr, metrics.clone(), shutdown.clone()).await?;
    }
    {
        let engine = engine.clone();
        let network = cfg.network.is_some();
        tokio::task::spawn_blocking(move || {
            engine.ensure_busybox()?;
            if network {
                engine.ensure_network()?;
            }
            Ok::<_, stockade_jail::JailError>(())
        })
        .await??;
    }
    let mut reconciler = reconcile::Reconciler::new(
        pool.clone(),
        engine.clone(),
        node_id,
        cfg.clone(),
        metrics.clone(),
    );
    if let Err(e) = adopt::adopt(&pool, &engine, node_id, &cfg.node_name).await {
        tracing::warn!(error = %e, "adopting host objects failed; will retry at the next resync");
    }
    let mut sampler = sampler::Sampler::new(
        pool.clone(),
        engine.clone(),
        node_id,
        metrics.clone(),
        &cfg.node_name,
    );

    let mut listener = connect_listener(&pool).await;
    let mut heartbeat = tokio::time::interval(cfg.heartbeat);
    let mut resync = tokio::time::interval(cfg.resync);
    let mut sample = tokio::time::interval(cfg.sample_interval);
    let mut purge = tokio::time::interval(Duration::from_secs(3600));
    for t in [&mut heartbeat, &mut resync, &mut sample, &mut purge] {
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    }
    loop {
        let mut full = false;
        let mut wake = false;
        tokio::select! {
            _ = shutdown.changed() => {
                if *shutdown.borrow() { return Ok(()); }
            }
            n = recv(&mut listener) => {
                match n {
                    Wake::Notified => wake = true,
                    Wake::Lost => {
                        // Notifications may have been missed: re-read everything.
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        listener = connect_listener(&pool).await;
                        full = true;
                    }
                }
            }
            _ = resync.tick() => full = true,
            _ = tokio::time::sleep(reconciler.next_retry_in()) => wake = true,
            _ = heartbeat.tick() => {
                match nodes::heartbeat(&pool, node_id).await {
                    Ok(()) => {}
                    Err(stockade_store::StoreError::NotFound) => {
                        if let Err(e) = nodes::register(&pool, &info).await {
                            tracing::warn!(error = %e, "re-registering the node failed");
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "heartbeat failed; retrying"),
                }
            }
            _ = sample.tick() => sampler.sweep(reconciler.running_jails()).await,
            _ = purge.tick() => {
                if let Err(e) = stockade_store::usage::purge(&pool, cfg.sample_retention_hours).await {
                    tracing::warn!(error = %e, "purging old samples failed");
                }
                if let Err(e) = stockade_store::sessions::purge_expired(&pool).await {
                    tracing::warn!(error = %e, "purging expired sessions failed");
                }
            }
        }
        if full && let Err(e) = adopt::adopt(&pool, &engine, node_id, &cfg.node_name).await {
            tracing::warn!(error = %e, "adopting host objects failed");
        }
        if full || wake {
            reconciler.pass(full).await;
        }
    }
}

enum Wake {
    Notified,
    Lost,
}

async fn connect_listener(pool: &PgPool) -> Option<PgListener> {
    match PgListener::connect_with(pool).await {
        Ok(mut l) => match l.listen(stockade_store::JAILS_CHANNEL).await {
            Ok(()) => Some(l),
            Err(e) => {
                tracing::warn!(error = %e, "LISTEN failed; relying on periodic resync");
                None
            }
        },
        Err(e) => {
            tracing::warn!(error = %e, "cannot open a notification connection; relying on periodic resync");
            None
        }
    }
}

async fn recv(listener: &mut Option<PgListener>) -> Wake {
    let Some(l) = listener else {
        tokio::time::sleep(Duration::from_secs(5)).await;
        return Wake::Lost;
    };
    match l.try_recv().await {
        Ok(Some(_)) => Wake::Notified,
        Ok(None) | Err(_) => Wake::Lost,
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
