//! `stockade up`: the one-machine default.
//!
//! Order matters: the database first (everything else needs it), migrations
//! before anything reads a table, the first admin before the panel is
//! announced, the web server last. Shutdown goes in reverse: web server,
//! agent, database.

use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use secrecy::{ExposeSecret, SecretString};
use stockade_domain::Role;
use stockade_store::PgPool;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

use crate::cluster::{self, Cluster, Tuning};
use crate::config::{CgroupManager, Config};

use crate::cluster::DATABASE;

pub fn run(cfg: Config) -> anyhow::Result<ExitCode> {
    let (urls, cluster) = match &cfg.database_url {
        Some(url) => {
            for (key, given) in [
                ("web_database_url", &cfg.web_database_url),
                ("agent_database_url", &cfg.agent_database_url),
            ] {
                if given.is_none() {
                    tracing::warn!(
                        "{key} is not set: that part connects with database_url's rights; `stockade migrate` prints the grants of a role of its own"
                    );
                }
            }
            (Urls::external(&cfg, url), None)
        }
        None => {
            let (db, web) = cluster::accounts(&cfg)?;
            let cluster = Cluster::start(&cfg.pg_data, &db, Some(&web), Tuning::default())?;
            tracing::info!(data = %cluster.data_dir().display(), "managed PostgreSQL is running");
            (Urls::managed(&cluster.url(DATABASE))?, Some(cluster))
        }
    };
    let result = crate::runtime().and_then(|rt| {
        let done = rt.block_on(run_services(&cfg, &urls, cluster.is_some()));
        // An engine step stuck past its deadline still holds a blocking
        // thread; nothing waits for it on the way out.
        rt.shutdown_background();
        done
    });
    if let Some(cluster) = cluster
        && let Err(e) = cluster.stop()
    {
        eprintln!("stockade: stopping PostgreSQL: {e:#}");
    }
    result
}

/// Who connects with which URL: migrations and the first admin as the
/// owner, the web server and the agent as roles of their own.
pub struct Urls {
    pub owner: SecretString,
    pub web: SecretString,
    pub agent: SecretString,
}

impl Urls {
    /// On the managed cluster: the same socket, three roles.
    pub fn managed(owner: &SecretString) -> anyhow::Result<Self> {
        Ok(Self {
            owner: owner.clone(),
            web: stockade_store::roles::url_as(owner, stockade_store::roles::WEB)?,
            agent: stockade_store::roles::url_as(owner, stockade_store::roles::AGENT)?,
        })
    }

    /// On an external server: the roles' own URLs where the operator gave
    /// them, else the owner's.
    pub fn external(cfg: &Config, owner: &SecretString) -> Self {
        Self {
            owner: owner.clone(),
            web: cfg
                .web_database_url
                .clone()
                .unwrap_or_else(|| owner.clone()),
            agent: cfg
                .agent_database_url
                .clone()
                .unwrap_or_else(|| owner.clone()),
        }
    }
}

async fn run_services(cfg: &Config, urls: &Urls, managed: bool) -> anyhow::Result<ExitCode> {
    if managed {
        stockade_store::ensure_database(&urls.owner, DATABASE).await?;
    }
    let pool = stockade_store::connect(&urls.owner, 2, Duration::from_secs(10)).await?;
    if managed {
        stockade_store::roles::create_roles(&pool).await?;
    }
    stockade_store::migrate(&pool).await?;
    ensure_admin(&pool, cfg).await?;
    pool.close().await;

    // Heartbeat, jail tasks, sampler and upload writer each use one.
    let agent_pool = agent_pool(&urls.agent).await?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let agent = tokio::spawn(agent_task(agent_pool.clone(), cfg.clone(), stop_rx));
    let mut web = spawn_web(cfg, &urls.web)?;
    let outcome = wait_until_ready_then_serve(cfg, &mut web).await;

    // Reverse order: web server, agent, then (in the caller) the database.
    stop_web(&mut web).await;
    let _ = stop_tx.send(true);
    match tokio::time::timeout(Duration::from_secs(10), agent).await {
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "agent ended with an error"),
        Ok(Err(e)) => tracing::warn!(error = %e, "agent task failed"),
        _ => {}
    }
    agent_pool.close().await;
    // `up` stops what it started: the node's proxy too.
    if let Ok(state) = std::path::absolute(&cfg.state_dir) {
        stockade_agent::stop_proxy(&state.join("proxy"));
    }
    outcome
}

async fn ensure_admin(pool: &PgPool, cfg: &Config) -> anyhow::Result<()> {
    if stockade_store::users::admin_exists(pool).await? {
        return Ok(());
    }
    let (password, generated) = match &cfg.admin_password {
        Some(p) => (p.clone(), false),
        None => (stockade_store::password::generate(), true),
    };
    let to_hash = password.clone();
    let hash =
        tokio::task::spawn_blocking(move || stockade_store::password::hash(&to_hash)).await??;
    stockade_store::users::create(pool, &cfg.admin_email, &hash, Role::Admin, None).await?;
    println!("First admin account: {}", cfg.admin_email);
    if generated {
        println!("Its password (shown once): {}", password.expose_secret());
    }
    Ok(())
}

/// The agent's pool: heartbeat, jail tasks, sampler and upload writer each
/// use a connection. A step waits at most a few seconds for one, so while
/// the database is away the agent's loops go round (and jails keep running,
/// samples are kept) instead of hanging.
pub async fn agent_pool(url: &SecretString) -> anyhow::Result<PgPool> {
    stockade_store::connect_serving(url, 8, Duration::from_secs(10), Duration::from_secs(3)).await
}

/// Where the agents of this host note which host names each uses.
const AGENT_CLAIMS: &str = "/run/stockade/agents";

/// The agent of this node; it runs in this (root) process.
pub async fn agent_task(
    pool: PgPool,
    cfg: Config,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    if !nix::unistd::Uid::effective().is_root() {
        tracing::warn!("not running as root: the agent registers the node but jails cannot start");
    }
    std::fs::create_dir_all(&cfg.state_dir)
        .with_context(|| format!("cannot create {}", cfg.state_dir.display()))?;
    let state_dir = std::path::absolute(&cfg.state_dir)?;
    let mut engine_cfg =
        stockade_jail::EngineConfig::new(state_dir.join("node"), state_dir.join("images"));
    // Each node's jails live under a cgroup of their own, so several agents
    // (and jails made by hand with `stockade jail`) never adopt each other's:
    // a group of the agent's own, or the subtree systemd delegated to its unit.
    engine_cfg.cgroup_parent = match cfg.cgroup_manager {
        CgroupManager::Cgroupfs => format!("stockade-{}", cfg.node_name),
        CgroupManager::Systemd => {
            let version = stockade_jail::Cgroups::detect(&engine_cfg.cgroup_root, "").version();
            stockade_jail::delegated_parent(
                &engine_cfg.cgroup_root,
                &engine_cfg.proc_root,
                version,
            )?
        }
    };
    engine_cfg.bridge = cfg.bridge.clone();
    engine_cfg.firewall_table = cfg.firewall_table.clone();
    engine_cfg.console_bytes = cfg.console_kib << 10;
    if let Some(net) = cfg.jail_network {
        engine_cfg.gateway = net;
    }
    // Before anything is touched: no other agent on this host uses the
    // same cgroup group, bridge or firewall table.
    let mut names = vec![("cgroup", engine_cfg.cgroup_parent.as_str())];
    if cfg.jail_network.is_some() {
        names.push(("bridge", engine_cfg.bridge.as_str()));
        names.push(("firewall", engine_cfg.firewall_table.as_str()));
    }
    let _claims = if nix::unistd::Uid::effective().is_root() {
        Some(stockade_agent::claim_host_names(
            std::path::Path::new(AGENT_CLAIMS),
            &engine_cfg.proc_root,
            &state_dir,
            &names,
        )?)
    } else {
        None
    };
    let engine = std::sync::Arc::new(stockade_jail::Engine::new(engine_cfg)?);
    stockade_agent::become_subreaper();
    let (cpus, memory_bytes, disk_bytes) = stockade_agent::host_capacity(&state_dir);
    let info = stockade_store::nodes::NodeInfo {
        name: cfg.node_name.clone(),
        cpus,
        memory_bytes,
        disk_bytes,
        address_pool: cfg.jail_network.map(|n| n.trunc().to_string()),
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        published_ports: cfg.published_ports.clone(),
        cold_moves: stockade_agent::cold_moves_because(false),
    };
    let agent_cfg = stockade_agent::AgentConfig {
        node_name: cfg.node_name.clone(),
        heartbeat: cfg.heartbeat,
        resync: cfg.resync,
        sample_interval: cfg.sample_interval,
        sample_retention_hours: cfg.sample_retention_hours,
        metrics_listen: cfg.agent_metrics,
        logs_listen: cfg.agent_logs,
        ssh: cfg.agent_ssh.map(|listen| stockade_agent::SshConfig {
            listen,
            host_key: state_dir.join("ssh").join("host_ed25519_key"),
        }),
        stop_grace: cfg.stop_grace,
        network: cfg.jail_network,
        step_deadline: cfg.step_deadline,
        jail_parallelism: cfg.jail_parallelism,
        proxy: cfg.proxy_http.map(|http| stockade_agent::ProxyConfig {
            http,
            https: cfg.proxy_https,
            dir: state_dir.join("proxy"),
            program: "haproxy".into(),
        }),
        acme: cfg
            .acme_directory
            .clone()
            .map(|directory| stockade_agent::AcmeConfig {
                directory,
                root: cfg.acme_root.clone(),
                email: cfg.acme_email.clone(),
            }),
        certificate_key: cfg
            .certificate_key_file
            .clone()
            .unwrap_or_else(|| state_dir.join("certificate.key")),
        backup_target: match &cfg.backup_target {
            Some(None) => None,
            Some(Some(t)) => Some(stockade_backup::Target::parse(t).context("backup_target")?),
            None => Some(
                stockade_backup::Target::parse(&state_dir.join("backups").display().to_string())
                    .context("backup_target")?,
            ),
        },
    };
    stockade_agent::run(pool, engine, agent_cfg, info, stop).await
}

/// Starts `stockade serve` as a child with the whole configuration but its
/// secrets: the admin password and the owner's database URL stay here.
fn spawn_web(cfg: &Config, url: &SecretString) -> anyhow::Result<tokio::process::Child> {
    let exe = std::env::current_exe().context("cannot find the stockade binary")?;
    let mut cmd = tokio::process::Command::new(exe);
    cmd.arg("serve")
        .arg("--exit-with-parent")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        // The whole configuration but its secrets, and only the web role's
        // URL: the child never learns the owner's or the admin password.
        .envs(cfg.plain_settings())
        .env("DATABASE_URL", url.expose_secret())
        .env("STOCKADE_WEB_DATABASE_URL", url.expose_secret())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    // A session of its own: the operator's terminal (and its signals) is
    // not the web server's; `up` stops it itself.
    // SAFETY: setsid is async-signal-safe and touches no memory.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn().context("cannot start the web server")
}

async fn wait_until_ready_then_serve(
    cfg: &Config,
    web: &mut tokio::process::Child,
) -> anyhow::Result<ExitCode> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = web.try_wait()? {
            anyhow::bail!("the web server exited during start-up ({status})");
        }
        if probe_ready(cfg).await {
            break;
        }
        if Instant::now() > deadline {
            anyhow::bail!("the web server did not answer /readyz within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("Stockade is up: {}", cfg.public_url);
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {
            println!("Stopping Stockade…");
            Ok(ExitCode::SUCCESS)
        }
        _ = term.recv() => Ok(ExitCode::SUCCESS),
        status = web.wait() => {
            anyhow::bail!("the web server exited unexpectedly ({})", status?)
        }
    }
}

/// GET /readyz over a plain TCP connection.
async fn probe_ready(cfg: &Config) -> bool {
    let mut addr = cfg.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let attempt = async {
        let mut conn = tokio::net::TcpStream::connect(addr).await.ok()?;
        conn.write_all(b"GET /readyz HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .await
            .ok()?;
        let mut buf = vec![0u8; 64];
        let n = conn.read(&mut buf).await.ok()?;
        Some(buf[..n].starts_with(b"HTTP/1.0 200") || buf[..n].starts_with(b"HTTP/1.1 200"))
    };
    tokio::time::timeout(Duration::from_secs(2), attempt)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

async fn stop_web(web: &mut tokio::process::Child) {
    if let Some(pid) = web.id().and_then(|p| i32::try_from(p).ok()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    if tokio::time::timeout(Duration::from_secs(15), web.wait())
        .await
        .is_err()
    {
        let _ = web.kill().await;
    }
}
