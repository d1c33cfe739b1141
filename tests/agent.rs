//! The agent end to end through the database: rows in, jails on the host.
//! Needs root; without it each test says so loudly and returns.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};
use stockade_domain::{DesiredState, JailKind, JailName, Limits, ObservedState, TenantSlug};
use stockade_store::jails::{self, Jail, NewJail};
use stockade_store::{PgPool, plans, tenants};
use uuid::Uuid;

const MIB: u64 = 1 << 20;

fn is_root() -> bool {
    if nix::unistd::Uid::effective().is_root() {
        return true;
    }
    eprintln!("!!! SKIPPED: agent tests need root (they create jails); run the suite as root");
    false
}

/// An agent process on a node of its own, cleaned up (with every jail
/// object it made) when dropped.
struct Node {
    name: String,
    state: tempfile::TempDir,
    url: SecretString,
    child: Option<Child>,
}

impl Node {
    fn new(url: &SecretString) -> Node {
        let name = format!("agent-test-{}", &Uuid::new_v4().simple().to_string()[..8]);
        let state = tempfile::tempdir().unwrap();
        std::fs::set_permissions(state.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut node = Node {
            name,
            state,
            url: url.clone(),
            child: None,
        };
        node.start();
        node
    }

    fn start(&mut self) {
        let child = Command::new(env!("CARGO_BIN_EXE_stockade"))
            .arg("agent")
            .env_remove("STOCKADE_CONFIG")
            .env("DATABASE_URL", self.url.expose_secret())
            .env("STOCKADE_NODE_NAME", &self.name)
            .env("STOCKADE_STATE_DIR", self.state.path())
            .env("STOCKADE_AGENT_METRICS", "off")
            .env("STOCKADE_SAMPLE_SECS", "1")
            .env("STOCKADE_RESYNC_SECS", "2")
            .env("STOCKADE_HEARTBEAT_SECS", "1")
            .env("STOCKADE_STOP_GRACE_SECS", "2")
            .env("STOCKADE_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    fn kill(&mut self, signal: nix::sys::signal::Signal) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(i32::try_from(c.id()).unwrap()),
                signal,
            );
            let _ = c.wait();
        }
    }

    fn engine(&self) -> stockade_jail::Engine {
        let mut cfg = stockade_jail::EngineConfig::new(
            self.state.path().join("node"),
            self.state.path().join("images"),
        );
        cfg.cgroup_parent = format!("stockade-{}", self.name);
        stockade_jail::Engine::new(cfg).unwrap()
    }

    fn cgroup_dir(&self, controller: &str, jail: &Jail) -> PathBuf {
        Path::new("/sys/fs/cgroup")
            .join(controller)
            .join(format!("stockade-{}", self.name))
            .join(jail.host_name().as_str())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill(nix::sys::signal::Signal::SIGKILL);
        let engine = self.engine();
        if let Ok(found) = engine.discover() {
            for name in found.jails.keys() {
                let _ = engine.destroy(&JailName::parse(name).unwrap());
            }
        }
        for entry in std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = std::fs::remove_dir(entry.path().join(format!("stockade-{}", self.name)));
        }
    }
}

async fn tenant(pool: &PgPool) -> Uuid {
    let plan = plans::by_name(pool, "business").await.unwrap();
    let slug =
        TenantSlug::parse(&format!("t{}", &Uuid::new_v4().simple().to_string()[..8])).unwrap();
    tenants::create(pool, &slug, "Agent test", plan.id)
        .await
        .unwrap()
        .id
}

fn system_jail(name: &str, command: &[&str]) -> NewJail {
    NewJail {
        name: JailName::parse(name).unwrap(),
        image: "busybox".into(),
        kind: JailKind::System,
        command: command.iter().map(|s| (*s).to_owned()).collect(),
        limits: Limits {
            cpu_millicores: 500,
            memory_bytes: 64 * MIB,
            pids: 64,
            disk_bytes: 32 * MIB,
            ..Limits::default()
        },
    }
}

async fn wait_node(pool: &PgPool, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if stockade_store::nodes::list(pool)
            .await
            .unwrap()
            .iter()
            .any(|n| n.name == name)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("node {name} never registered");
}

/// Waits until the agent has converged the jail's current generation to `state`.
async fn wait_observed(pool: &PgPool, tenant: Uuid, id: Uuid, state: ObservedState) -> Jail {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let j = jails::get(pool, tenant, id).await.unwrap();
        if j.observed_state == state && j.observed_generation == j.generation {
            return j;
        }
        assert!(
            Instant::now() < deadline,
            "jail never became {state}: {j:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn rows_become_jails_and_follow_every_change() {
    if !is_root() {
        return;
    }
    let (pool, url) = common::fresh_database().await;
    let node = Node::new(&url);
    wait_node(&pool, &node.name).await;
    let tenant = tenant(&pool).await;
    let jail = jails::create(&pool, tenant, &system_jail("web", &["sleep", "3600"]))
        .await
        .unwrap();
    let running = wait_observed(&pool, tenant, jail.id, ObservedState::Running).await;
    assert!(running.last_error.is_none());
    let engine = node.engine();
    assert!(matches!(
        engine.status(&jail.host_name()).unwrap(),
        Some(stockade_jail::JailStatus::Running { .. })
    ));

    // New limits reach the running jail's cgroup.
    let mut limits = running.limits;
    limits.memory_bytes = 96 * MIB;
    jails::update_limits(&pool, tenant, jail.id, &limits)
        .await
        .unwrap();
    wait_observed(&pool, tenant, jail.id, ObservedState::Running).await;
    let limit = std::fs::read_to_string(
        node.cgroup_dir("memory", &jail)
            .join("memory.limit_in_bytes"),
    )
    .unwrap();
    assert_eq!(limit.trim(), (96 * MIB).to_string());

    // A limit changed by hand is set back at the next resync.
    std::fs::write(
        node.cgroup_dir("memory", &jail)
            .join("memory.limit_in_bytes"),
        (80 * MIB).to_string(),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let v = std::fs::read_to_string(
            node.cgroup_dir("memory", &jail)
                .join("memory.limit_in_bytes"),
        )
        .unwrap();
        if v.trim() == (96 * MIB).to_string() {
            break;
        }
        assert!(Instant::now() < deadline, "drift was not repaired: {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    jails::set_desired(&pool, tenant, jail.id, DesiredState::Stopped)
        .await
        .unwrap();
    wait_observed(&pool, tenant, jail.id, ObservedState::Stopped).await;
    assert_eq!(
        engine.status(&jail.host_name()).unwrap(),
        Some(stockade_jail::JailStatus::Stopped)
    );

    jails::set_desired(&pool, tenant, jail.id, DesiredState::Running)
        .await
        .unwrap();
    wait_observed(&pool, tenant, jail.id, ObservedState::Running).await;

    jails::set_desired(&pool, tenant, jail.id, DesiredState::Deleted)
        .await
        .unwrap();
    wait_observed(&pool, tenant, jail.id, ObservedState::Deleted).await;
    assert_eq!(engine.status(&jail.host_name()).unwrap(), None);
    assert!(
        engine.discover().unwrap().jails.is_empty(),
        "nothing of the jail is left"
    );
}

#[tokio::test]
async fn suspension_stops_and_unsuspension_restarts_jails() {
    if !is_root() {
        return;
    }
    let (pool, url) = common::fresh_database().await;
    let node = Node::new(&url);
    wait_node(&pool, &node.name).await;
    let tenant = tenant(&pool).await;
    let jail = jails::create(&pool, tenant, &system_jail("site", &[]))
        .await
        .unwrap();
    wait_observed(&pool, tenant, jail.id, ObservedState::Running).await;
    tenants::suspend(&pool, tenant).await.unwrap();
    wait_observed(&pool, tenant, jail.id, ObservedState::Stopped).await;
    tenants::unsuspend(&pool, tenant).await.unwrap();
    wait_observed(&pool, tenant, jail.id, ObservedState::Running).await;
    tenants::terminate(&pool, tenant).await.unwrap();
    wait_observed(&pool, tenant, jail.id, ObservedState::Deleted).await;
    assert!(node.engine().discover().unwrap().jails.is_empty());
}

#[tokio::test]
async fn jails_outlive_an_agent_crash_and_strays_are_removed_at_start() {
    if !is_root() {
        return;
    }
    let (pool, url) = common::fresh_database().await;
    let mut node = Node::new(&url);
    wait_node(&pool, &node.name).await;
    let tenant = tenant(&pool).await;
    let jail = jails::create(&pool, tenant, &system_jail("keep", &["sleep", "3600"]))
        .await
        .unwrap();
    wait_observed(&pool, tenant, jail.id, ObservedState::Running).await;
    let engine = node.engine();
    let Some(stockade_jail::JailStatus::Running { pid }) =
        engine.status(&jail.host_name()).unwrap()
    else {
        panic!("not running");
    };
    node.kill(nix::sys::signal::Signal::SIGKILL);
    // While the agent is down, a stray jail appears that no row wants.
    let stray = JailName::parse("j-00000000000000000000").unwrap();
    engine
        .create(&stockade_jail::JailSpec {
            name: stray.clone(),
            hostname: stray.clone(),
            image: "busybox".into(),
            kind: JailKind::System,
            command: vec!["sleep".into(), "3600".into()],
            limits: Limits {
                cpu_millicores: 100,
                memory_bytes: 32 * MIB,
                pids: 16,
                disk_bytes: 16 * MIB,
                ..Limits::default()
            },
            network: None,
            user_namespace: false,
        })
        .unwrap();
    node.start();
    let deadline = Instant::now() + Duration::from_secs(20);
    while engine.status(&stray).unwrap().is_some() {
        assert!(Instant::now() < deadline, "the stray jail was not removed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        engine.status(&jail.host_name()).unwrap(),
        Some(stockade_jail::JailStatus::Running { pid }),
        "the wanted jail kept running through the agent crash, same process"
    );
    assert_eq!(
        stockade_store::audit::count_action(&pool, "jail.stray_removed")
            .await
            .unwrap(),
        1
    );
}

#[tokio::test]
async fn metering_rollups_equal_the_sample_deltas_across_restarts() {
    if !is_root() {
        return;
    }
    let (pool, url) = common::fresh_database().await;
    let mut node = Node::new(&url);
    wait_node(&pool, &node.name).await;
    let tenant = tenant(&pool).await;
    // A known CPU and disk workload, forever.
    let jail = jails::create(
        &pool,
        tenant,
        &system_jail(
            "busy",
            &[
                "sh",
                "-c",
                "while true; do dd if=/dev/zero of=/tmp/f bs=64k count=16 2>/dev/null; done",
            ],
        ),
    )
    .await
    .unwrap();
    wait_observed(&pool, tenant, jail.id, ObservedState::Running).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Restart the jail (counters reset) and the agent (in-memory state lost).
    jails::set_desired(&pool, tenant, jail.id, DesiredState::Stopped)
        .await
        .unwrap();
    wait_observed(&pool, tenant, jail.id, ObservedState::Stopped).await;
    jails::set_desired(&pool, tenant, jail.id, DesiredState::Running)
        .await
        .unwrap();
    wait_observed(&pool, tenant, jail.id, ObservedState::Running).await;
    node.kill(nix::sys::signal::Signal::SIGKILL);
    node.start();
    tokio::time::sleep(Duration::from_secs(4)).await;
    node.kill(nix::sys::signal::Signal::SIGTERM);

    let samples = stockade_store::usage::jail_samples(&pool, jail.id)
        .await
        .unwrap();
    assert!(samples.len() >= 4, "samples were taken: {}", samples.len());
    // Deltas with reset detection, computed here from the raw samples.
    let mut expected_cpu = 0i64;
    let mut expected_write = 0i64;
    let mut last: Option<(i64, i64)> = None;
    let mut resets = 0;
    for (_, cpu, write, _) in &samples {
        match last {
            Some((c, w)) if *cpu >= c => {
                expected_cpu += cpu - c;
                expected_write += if *write >= w { write - w } else { *write };
            }
            Some(_) => {
                resets += 1;
                expected_cpu += cpu;
                expected_write += write;
            }
            None => {
                expected_cpu += cpu;
                expected_write += write;
            }
        }
        last = Some((*cpu, *write));
    }
    let from = chrono::Utc::now() - chrono::Duration::days(1);
    let to = chrono::Utc::now() + chrono::Duration::days(1);
    let totals = stockade_store::usage::jail_totals(&pool, jail.id, from, to)
        .await
        .unwrap();
    assert_eq!(totals.samples, i64::try_from(samples.len()).unwrap());
    assert_eq!(totals.cpu_usec, expected_cpu);
    assert_eq!(totals.io_write_bytes, expected_write);
    assert!(totals.cpu_usec > 0);
    let _ = resets;
    jails::set_desired(&pool, tenant, jail.id, DesiredState::Deleted)
        .await
        .unwrap();
    node.start();
    wait_observed(&pool, tenant, jail.id, ObservedState::Deleted).await;
}
