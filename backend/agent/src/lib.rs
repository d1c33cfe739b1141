//! The per-node agent: registers its node and heartbeats, reconciles the
//! node's jails to what PostgreSQL says, and meters their usage.
//!
//! Level-triggered: it wakes on NOTIFY and also re-reads everything on a
//! fixed period, so a lost notification, an agent crash or a host reboot only
//! delays convergence. Every engine step is idempotent.
//!
//! No jail can stall it: heartbeat, reconcile, sampling, upload writing and
//! purging are separate tasks; every engine call runs on a blocking thread,
//! one at a time per jail and a bounded number across jails, and is waited
//! for no longer than a deadline (see `slots`).

mod acme;
mod adopt;
mod backups;
mod checkpoint;
mod claim;
mod console;
mod health;
mod images;
mod logs;
mod metrics;
mod permits;
mod proxy;
mod pty;
mod reconcile;
mod sampler;
mod slots;
mod snapshots;
mod ssh;
mod uploads;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgListener;
use stockade_jail::Engine;
use stockade_store::PgPool;
use stockade_store::nodes::{self, NodeInfo};
use tokio::sync::watch;
use uuid::Uuid;

pub use acme::{AcmeConfig, certificate_key};
pub use checkpoint::cold_moves_because;
pub use claim::{Claims, claim_host_names};
pub use metrics::Metrics;
pub use proxy::{ProxyConfig, stop_proxy};
pub use ssh::SshConfig;

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
    /// Where the jails' output is served to the web tier (on tickets), and
    /// the address the web tier reaches it at; `None`: not served.
    pub logs_listen: Option<SocketAddr>,
    /// The node's SSH gateway to its jails, if it runs one.
    pub ssh: Option<SshConfig>,
    /// Time a stopping jail gets between SIGTERM and SIGKILL.
    pub stop_grace: Duration,
    /// The node's jail address pool (the bridge's gateway and prefix), or
    /// `None` when jails get loopback only.
    pub network: Option<ipnet::Ipv4Net>,
    /// Longest the agent waits for one engine step of a jail; a step that
    /// takes longer is abandoned and the jail marked with an error.
    pub step_deadline: Duration,
    /// Jails worked on at the same time.
    pub jail_parallelism: usize,
    /// The node's reverse proxy for its jails' domains, if it runs one.
    pub proxy: Option<ProxyConfig>,
    /// Where the proxy's certificates are ordered, if anywhere.
    pub acme: Option<AcmeConfig>,
    /// The file of the provider's certificate key (made if missing): it
    /// opens the sealed keys of certificates.
    pub certificate_key: std::path::PathBuf,
    /// Where backups of jails go, and come from for restores and moves.
    pub backup_target: Option<stockade_backup::Target>,
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
    let metrics = Arc::new(Metrics::new()?);
    if let Some(addr) = cfg.metrics_listen {
        metrics::serve(addr, metrics.clone(), shutdown.clone()).await?;
    }
    let log_endpoint = match cfg.logs_listen {
        Some(addr) => {
            let local = logs::serve(
                addr,
                pool.clone(),
                node_id,
                engine.clone(),
                cfg.backup_target.clone(),
                shutdown.clone(),
            )
            .await?;
            // Listening on every address: the web tier is told the host's name.
            Some(if local.ip().is_unspecified() {
                format!("{}:{}", cfg.node_name, local.port())
            } else {
                local.to_string()
            })
        }
        None => None,
    };
    if let Err(e) =
        stockade_store::logs::set_endpoint(&pool, node_id, log_endpoint.as_deref()).await
    {
        tracing::warn!(error = %e, "recording the node's log endpoint failed");
    }
    let gateway = match &cfg.ssh {
        Some(ssh) => match ssh::serve(
            ssh,
            &cfg.node_name,
            pool.clone(),
            node_id,
            engine.clone(),
            shutdown.clone(),
        )
        .await
        {
            Ok(g) => Some(g),
            // The jails are served regardless; customers are told the node
            // has no SSH gateway.
            Err(e) => {
                tracing::error!(error = format!("{e:#}"), "the SSH gateway cannot start");
                None
            }
        },
        None => None,
    };
    if let Err(e) = stockade_store::ssh_keys::set_gateway(&pool, node_id, gateway.as_ref()).await {
        tracing::warn!(error = %e, "recording the node's SSH gateway failed");
    }
    {
        let engine = engine.clone();
        let network = cfg.network.is_some();
        tokio::task::spawn_blocking(move || {
            engine.ensure_busybox()?;
            // A snapshot cut short by a crash may have left a volume frozen.
            engine.thaw_volumes();
            if network {
                engine.ensure_network()?;
            }
            Ok::<_, stockade_jail::JailError>(())
        })
        .await??;
    }
    let slots = Arc::new(slots::Slots::new(
        engine.clone(),
        cfg.jail_parallelism,
        cfg.step_deadline,
    ));
    let running = Arc::new(reconcile::RunningJails::default());
    let uploads_wake = Arc::new(tokio::sync::Notify::new());
    let reconciler = reconcile::Reconciler::new(
        pool.clone(),
        slots.clone(),
        node_id,
        cfg.clone(),
        metrics.clone(),
        running.clone(),
        uploads_wake.clone(),
    );
    if let Err(e) = adopt::adopt(&pool, &slots, node_id, &cfg.node_name).await {
        tracing::warn!(error = %e, "adopting host objects failed; will retry at the next resync");
    }
    // Changes of the node's network made by anyone wake the network repair
    // and a full pass over the jails (their links) at once.
    let network_changed = Arc::new(tokio::sync::Notify::new());
    let links_changed = Arc::new(tokio::sync::Notify::new());
    if cfg.network.is_some() {
        match engine.watch_network() {
            Ok(watch) => {
                let wakes = [
                    Arc::downgrade(&network_changed),
                    Arc::downgrade(&links_changed),
                ];
                std::thread::Builder::new()
                    .name("network-watch".into())
                    .spawn(move || watch_network(&watch, &wakes))?;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the node's network; repairs wait for the resync");
            }
        }
    }
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(heartbeat_task(
        pool.clone(),
        engine.clone(),
        node_id,
        info,
        cfg.heartbeat,
    ));
    tasks.spawn(purge_task(pool.clone(), cfg.sample_retention_hours));
    // The provider's key that opens what the web tier seals to the nodes
    // (certificate keys, registry passwords).
    let secret = Arc::new(acme::certificate_key(&cfg.certificate_key)?);
    match stockade_store::certificates::publish_sealing_key(&pool, &secret).await {
        Ok(true) => {}
        Ok(false) => tracing::warn!(
            "this node's certificate key is not the provider's (another node published \
             another): copy the first node's key file here, or certificates and registry \
             passwords cannot be opened"
        ),
        Err(e) => tracing::warn!(error = %e, "publishing the certificate key failed"),
    }
    if let Some(proxy) = cfg.proxy.clone() {
        let (challenges, served) = acme::Challenges::new();
        if let Some(acme) = cfg.acme.clone() {
            tasks.spawn(acme::acme_task(
                pool.clone(),
                node_id,
                acme,
                proxy.dir.join("acme"),
                secret.clone(),
                (challenges.clone(), served),
                Duration::from_secs(300),
            ));
        }
        tasks.spawn(proxy::proxy_task(
            pool.clone(),
            node_id,
            proxy,
            secret.clone(),
            challenges,
            cfg.resync,
        ));
    }
    if cfg.network.is_some() {
        // Health checks probe jails at their addresses.
        tasks.spawn(health::health_task(pool.clone(), node_id));
        tasks.spawn(repair_task(
            pool.clone(),
            engine.clone(),
            metrics.clone(),
            cfg.node_name.clone(),
            cfg.resync,
            network_changed.clone(),
        ));
    }
    let (sampler, sender) = sampler::new(
        pool.clone(),
        &engine,
        node_id,
        metrics.clone(),
        &cfg.node_name,
        cfg.step_deadline,
    );
    tasks.spawn(sender.run());
    tasks.spawn(sample_task(sampler, running.clone(), cfg.sample_interval));
    let uploads = Arc::new(uploads::Uploads::new(
        pool.clone(),
        slots.clone(),
        node_id,
        running,
    ));
    tasks.spawn(sweep_task(
        move || {
            let u = uploads.clone();
            async move { u.sweep().await }
        },
        uploads_wake.clone(),
        cfg.resync,
    ));
    let backups_wake = Arc::new(tokio::sync::Notify::new());
    let backups = Arc::new(backups::Backups::new(
        pool.clone(),
        slots.clone(),
        node_id,
        cfg.node_name.clone(),
        cfg.backup_target.clone(),
    ));
    tasks.spawn(sweep_task(
        move || {
            let b = backups.clone();
            async move { b.sweep().await }
        },
        backups_wake.clone(),
        cfg.resync,
    ));
    let snapshots_wake = Arc::new(tokio::sync::Notify::new());
    let snapshots = Arc::new(snapshots::Snapshots::new(
        pool.clone(),
        slots.clone(),
        node_id,
        cfg.node_name.clone(),
    ));
    tasks.spawn(sweep_task(
        move || {
            let s = snapshots.clone();
            async move { s.sweep().await }
        },
        snapshots_wake.clone(),
        cfg.resync,
    ));
    let images_wake = Arc::new(tokio::sync::Notify::new());
    let images = Arc::new(images::Images::new(
        pool.clone(),
        engine.clone(),
        node_id,
        secret,
    ));
    tasks.spawn(sweep_task(
        move || {
            let i = images.clone();
            async move { i.sweep().await }
        },
        images_wake.clone(),
        cfg.resync,
    ));
    tasks.spawn(reconcile_task(
        pool,
        reconciler,
        slots,
        node_id,
        cfg,
        [uploads_wake, snapshots_wake, backups_wake, images_wake],
        links_changed.clone(),
    ));
    loop {
        tokio::select! {
            _ = shutdown.changed() => {
                if *shutdown.borrow() { break; }
            }
            Some(done) = tasks.join_next() => {
                // The tasks loop for ever; one that ends has panicked.
                tasks.abort_all();
                return Err(anyhow::anyhow!("an agent task ended: {done:?}"));
            }
        }
    }
    tasks.abort_all();
    Ok(())
}

/// Keeps the node's heartbeat, whatever the jails do, with the images the
/// node offers (an image imported meanwhile is offered from the next beat).
async fn heartbeat_task(
    pool: PgPool,
    engine: Arc<Engine>,
    node_id: Uuid,
    info: NodeInfo,
    every: Duration,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let lister = engine.clone();
        let images = match tokio::task::spawn_blocking(move || lister.images()).await {
            Ok(Ok(images)) => Some(images),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "listing the node's images failed");
                None
            }
            Err(_) => None,
        };
        match nodes::heartbeat(&pool, node_id, images.as_deref()).await {
            Ok(()) => {}
            Err(stockade_store::StoreError::NotFound) => {
                if let Err(e) = nodes::register(&pool, &info).await {
                    tracing::warn!(error = %e, "re-registering the node failed");
                }
            }
            Err(e) => tracing::warn!(error = %e, "heartbeat failed; retrying"),
        }
    }
}

/// Wakes each of `wakes` when the kernel reports a change of the node's
/// network, until the agent is gone. A burst of events (a flushed table is
/// many) wakes once.
fn watch_network(watch: &stockade_jail::NetWatch, wakes: &[std::sync::Weak<tokio::sync::Notify>]) {
    loop {
        let changed = watch.wait(Duration::from_secs(1));
        let Some(wakes) = wakes
            .iter()
            .map(std::sync::Weak::upgrade)
            .collect::<Option<Vec<_>>>()
        else {
            return;
        };
        if changed {
            std::thread::sleep(Duration::from_millis(100));
            watch.forget();
            for wake in wakes {
                wake.notify_one();
            }
        }
    }
}

/// Longest a change of the node's network waits to be put back when the
/// kernel's event for it was lost.
const NETWORK_CHECK: Duration = Duration::from_secs(5);

/// On every change the kernel reports, and every few seconds, puts the
/// node's network back as it should be (the bridge, the whole firewall
/// table) and logs, counts and audits each repair.
async fn repair_task(
    pool: PgPool,
    engine: Arc<Engine>,
    metrics: Arc<Metrics>,
    node: String,
    every: Duration,
    changed: Arc<tokio::sync::Notify>,
) {
    // The kernel's events wake it at once; a short period besides, since
    // the firewall is the jails' isolation and an event can be lost.
    let mut tick = tokio::time::interval(every.min(NETWORK_CHECK));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let actor = format!("agent:{node}");
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = changed.notified() => {}
        }
        let engine = engine.clone();
        let repaired = match tokio::task::spawn_blocking(move || engine.repair_network()).await {
            Ok(Ok(repaired)) => repaired,
            Ok(Err(e)) => {
                metrics.errors.inc();
                tracing::warn!(error = %e, "repairing the node's network failed; retrying at the next resync");
                continue;
            }
            Err(_) => continue,
        };
        for what in repaired {
            metrics.network_repairs.inc();
            tracing::warn!(repaired = %what, "the node's network had changed; put back");
            let entry = stockade_store::audit::Entry {
                actor_user_id: None,
                actor: &actor,
                tenant_id: None,
                action: "node.network_repaired",
                target: &what,
                client_addr: None,
                details: serde_json::json!({}),
            };
            if let Err(e) = stockade_store::audit::record(&pool, &entry).await {
                tracing::warn!(error = %e, "recording a repair in the audit log failed");
            }
        }
    }
}

/// Drops old raw samples and expired sessions, hourly.
async fn purge_task(pool: PgPool, retention_hours: u32) {
    let mut tick = tokio::time::interval(Duration::from_secs(3600));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = stockade_store::usage::purge(&pool, retention_hours).await {
            tracing::warn!(error = %e, "purging old samples failed");
        }
        if let Err(e) = stockade_store::sessions::purge_expired(&pool).await {
            tracing::warn!(error = %e, "purging expired sessions failed");
        }
    }
}

/// Samples the running jails' usage on a fixed period.
async fn sample_task(
    mut sampler: sampler::Sampler,
    running: Arc<reconcile::RunningJails>,
    every: Duration,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        sampler.sweep(running.snapshot()).await;
    }
}

/// Runs `sweep` when woken and on every `every`: the workers that act on
/// rows of this node (uploads to write when one arrives or a jail starts;
/// snapshots and backups to take or remove when asked, and what a busy
/// jail put off or a schedule made due at the next period).
async fn sweep_task<F: Future<Output = ()>>(
    mut sweep: impl FnMut() -> F,
    wake: Arc<tokio::sync::Notify>,
    every: Duration,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = wake.notified() => {}
        }
        sweep().await;
    }
}

/// Converges the node's jails on every notification, every ended step,
/// every change of the node's links and every resync period; adopts host
/// objects on each full pass.
async fn reconcile_task(
    pool: PgPool,
    reconciler: reconcile::Reconciler,
    slots: Arc<slots::Slots>,
    node_id: Uuid,
    cfg: AgentConfig,
    node_work: [Arc<tokio::sync::Notify>; 4],
    links_changed: Arc<tokio::sync::Notify>,
) {
    let adopting = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut listener = connect_listener(&pool).await;
    let mut resync = tokio::time::interval(cfg.resync);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let mut full = false;
        tokio::select! {
            n = recv(&mut listener) => {
                match n {
                    // An upload, a snapshot, a backup or an image may have
                    // been asked for: their workers look too.
                    Wake::Notified => node_work.iter().for_each(|w| w.notify_one()),
                    Wake::Lost => {
                        // Notifications may have been missed: re-read everything.
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        listener = connect_listener(&pool).await;
                        full = true;
                    }
                }
            }
            _ = resync.tick() => full = true,
            // A link changed by someone: every jail's link is looked at.
            () = links_changed.notified() => full = true,
            () = tokio::time::sleep(reconciler.next_retry_in()) => {}
            () = reconciler.step_ended() => {}
            () = slots.freed() => reconciler.retry_now(&slots.take_freed()),
        }
        if full && !adopting.swap(true, std::sync::atomic::Ordering::AcqRel) {
            // Adoption may remove strays (slow); it runs beside the passes.
            let (pool, slots, adopting, node) = (
                pool.clone(),
                slots.clone(),
                adopting.clone(),
                cfg.node_name.clone(),
            );
            tokio::spawn(async move {
                if let Err(e) = adopt::adopt(&pool, &slots, node_id, &node).await {
                    tracing::warn!(error = %e, "adopting host objects failed");
                }
                adopting.store(false, std::sync::atomic::Ordering::Release);
            });
        }
        reconciler.pass(full).await;
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
        Ok(Some(_)) => {
            // The notifications already arrived ask for the same re-read:
            // a run of 2,000 changes is one or a few passes, not 2,000.
            loop {
                match tokio::time::timeout(Duration::ZERO, l.try_recv()).await {
                    Ok(Ok(Some(_))) => {}
                    Ok(Ok(None) | Err(_)) => return Wake::Lost,
                    Err(_) => return Wake::Notified,
                }
            }
        }
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
