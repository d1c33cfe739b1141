//! The agent under faults: killed at random moments during random changes,
//! two agents sharing the work, and PostgreSQL restarting under it.
//! Needs root; without it each test says so loudly and returns.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::agent::{Node, is_root, wait_node, wait_observed};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use secrecy::{ExposeSecret, SecretString};
use stockade_domain::{DesiredState, JailKind, JailName, Limits, ObservedState, TenantSlug};
use stockade_store::jails::{self, NewJail};
use stockade_store::{PgPool, StoreError, plans, tenants};
use uuid::Uuid;

const MIB: u64 = 1 << 20;

async fn tenant(pool: &PgPool) -> Uuid {
    let plan = plans::by_name(pool, "business").await.unwrap();
    let slug =
        TenantSlug::parse(&format!("t{}", &Uuid::new_v4().simple().to_string()[..8])).unwrap();
    tenants::create(pool, &slug, "Fault test", plan.id)
        .await
        .unwrap()
        .id
}

fn jail(name: &str) -> NewJail {
    NewJail {
        name: JailName::parse(name).unwrap(),
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
    }
}

/// Waits until every jail of the tenant has converged.
async fn wait_all_converged(pool: &PgPool, tenant: Uuid, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let all = jails::list_for_tenant(pool, tenant).await.unwrap();
        let pending: Vec<_> = all
            .iter()
            .filter(|j| {
                let want = match j.desired_state {
                    DesiredState::Running => ObservedState::Running,
                    DesiredState::Stopped => ObservedState::Stopped,
                    DesiredState::Deleted => ObservedState::Deleted,
                };
                j.observed_generation != j.generation || j.observed_state != want
            })
            .map(|j| {
                (
                    j.name.to_string(),
                    j.desired_state,
                    j.observed_state,
                    j.last_error.clone(),
                )
            })
            .collect();
        if pending.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "jails did not converge: {pending:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn random_changes_while_the_agent_is_killed_end_converged_and_leak_nothing() {
    if !is_root() {
        return;
    }
    let (pool, url) = common::fresh_database().await;
    let mut node = Node::new(&url);
    wait_node(&pool, &node.name).await;
    let tenant = tenant(&pool).await;
    let mut rng = StdRng::seed_from_u64(0x5eed);
    let names = ["a", "b", "c", "d", "e", "f"];
    let mut live: HashMap<&str, Uuid> = HashMap::new();
    for op in 0..200 {
        let name = names[rng.random_range(0..names.len())];
        match (live.get(name).copied(), rng.random_range(0..5)) {
            (None, _) => {
                let j = jails::create(&pool, tenant, &jail(name)).await.unwrap();
                live.insert(name, j.id);
            }
            (Some(id), 0) => drop(
                jails::set_desired(&pool, tenant, id, DesiredState::Running)
                    .await
                    .unwrap(),
            ),
            (Some(id), 1) => drop(
                jails::set_desired(&pool, tenant, id, DesiredState::Stopped)
                    .await
                    .unwrap(),
            ),
            (Some(id), 2) => {
                let mut limits = jail(name).limits;
                limits.memory_bytes = (24 + 8 * rng.random_range(0..4u64)) * MIB;
                limits.pids = 8 + rng.random_range(0..16u32);
                match jails::update_limits(&pool, tenant, id, &limits).await {
                    Ok(_) | Err(StoreError::QuotaExceeded(_)) => {}
                    Err(e) => panic!("{e:?}"),
                }
            }
            (Some(id), 3) => drop(jails::restart(&pool, tenant, id).await.unwrap()),
            (Some(id), _) => {
                jails::set_desired(&pool, tenant, id, DesiredState::Deleted)
                    .await
                    .unwrap();
                live.remove(name);
            }
        }
        if op % 17 == 16 {
            node.kill(nix::sys::signal::Signal::SIGKILL);
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..300))).await;
            node.start();
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..60))).await;
    }
    wait_all_converged(&pool, tenant, Duration::from_secs(90)).await;

    // The host holds exactly the jails that should exist, nothing else.
    let engine = node.engine();
    let on_host: Vec<String> = engine.discover().unwrap().jails.keys().cloned().collect();
    let mut wanted: Vec<String> = jails::list_for_tenant(&pool, tenant)
        .await
        .unwrap()
        .iter()
        .filter(|j| j.desired_state != DesiredState::Deleted)
        .map(|j| j.host_name().to_string())
        .collect();
    wanted.sort();
    assert_eq!(on_host, wanted);
    for j in jails::list_for_tenant(&pool, tenant).await.unwrap() {
        let status = engine.status(&j.host_name()).unwrap();
        match j.desired_state {
            DesiredState::Running => assert!(
                matches!(status, Some(stockade_jail::JailStatus::Running { .. })),
                "{}",
                j.name
            ),
            DesiredState::Stopped => assert_eq!(
                status,
                Some(stockade_jail::JailStatus::Stopped),
                "{}",
                j.name
            ),
            DesiredState::Deleted => assert_eq!(status, None),
        }
    }
    // Deleting everything leaves nothing behind.
    tenants::terminate(&pool, tenant).await.unwrap();
    wait_all_converged(&pool, tenant, Duration::from_secs(60)).await;
    assert!(engine.discover().unwrap().jails.is_empty());
}

#[tokio::test]
async fn two_agents_share_the_jails_and_a_stopped_one_shows_down() {
    if !is_root() {
        return;
    }
    let (pool, url) = common::fresh_database().await;
    let mut one = Node::new(&url);
    let two = Node::new(&url);
    wait_node(&pool, &one.name).await;
    wait_node(&pool, &two.name).await;
    let tenant = tenant(&pool).await;
    let mut ids = Vec::new();
    for i in 0..4 {
        ids.push(
            jails::create(&pool, tenant, &jail(&format!("j{i}")))
                .await
                .unwrap(),
        );
    }
    let nodes: std::collections::HashSet<_> = ids.iter().map(|j| j.node_id.unwrap()).collect();
    assert_eq!(nodes.len(), 2, "jails are placed on both nodes");
    for j in &ids {
        wait_observed(&pool, tenant, j.id, ObservedState::Running).await;
    }
    one.kill(nix::sys::signal::Signal::SIGTERM);
    // Its heartbeat stops; after 30 s it is shown as down.
    sqlx::query("UPDATE nodes SET heartbeat_at = now() - interval '31 seconds' WHERE name = $1")
        .bind(&one.name)
        .execute(&pool)
        .await
        .unwrap();
    let loads = stockade_store::nodes::loads(&pool).await.unwrap();
    assert!(loads.iter().find(|n| n.name == one.name).unwrap().is_down());
    assert!(!loads.iter().find(|n| n.name == two.name).unwrap().is_down());
    // New jails go to the live node only.
    let extra = jails::create(&pool, tenant, &jail("late")).await.unwrap();
    let two_id = loads.iter().find(|n| n.name == two.name).unwrap().id;
    assert_eq!(extra.node_id, Some(two_id));
    // A change made while the agent is down converges once it is back.
    let on_one = ids
        .iter()
        .find(|j| {
            loads
                .iter()
                .any(|n| n.name == one.name && Some(n.id) == j.node_id)
        })
        .unwrap();
    jails::set_desired(&pool, tenant, on_one.id, DesiredState::Stopped)
        .await
        .unwrap();
    one.start();
    wait_observed(&pool, tenant, on_one.id, ObservedState::Stopped).await;
    let loads = stockade_store::nodes::loads(&pool).await.unwrap();
    assert!(
        !loads.iter().find(|n| n.name == one.name).unwrap().is_down(),
        "back up after its heartbeat"
    );
    tenants::terminate(&pool, tenant).await.unwrap();
    wait_all_converged(&pool, tenant, Duration::from_secs(60)).await;
}

/// A cluster of this test's own, so restarting it disturbs no other test.
struct OwnCluster {
    dir: tempfile::TempDir,
    child: Option<std::process::Child>,
}

impl OwnCluster {
    fn start(dir: tempfile::TempDir) -> (OwnCluster, SecretString) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_stockade"))
            .args(["db-cluster", "--data-dir"])
            .arg(dir.path().join("pg"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line
            .trim()
            .strip_prefix("DATABASE_URL=")
            .expect("cluster URL")
            .to_owned();
        (
            OwnCluster {
                dir,
                child: Some(child),
            },
            SecretString::from(url),
        )
    }

    /// Stops the server (closing its stdin) and hands back the folder.
    fn stop(mut self) -> tempfile::TempDir {
        let mut child = self.child.take().unwrap();
        drop(child.stdin.take());
        child.wait().unwrap();
        std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap())
    }
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            drop(c.stdin.take());
            let _ = c.wait();
        }
    }
}

#[tokio::test]
async fn the_agent_rides_out_a_database_restart_without_losing_samples() {
    if !is_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (cluster, server) = OwnCluster::start(dir);
    stockade_store::ensure_database(&server, "stockade")
        .await
        .unwrap();
    let url = SecretString::from(server.expose_secret().replace("/postgres", "/stockade"));
    let pool = stockade_store::connect(&url, 4, Duration::from_secs(10))
        .await
        .unwrap();
    stockade_store::migrate(&pool).await.unwrap();
    let mut node = Node::new(&url);
    wait_node(&pool, &node.name).await;
    let tenant = tenant(&pool).await;
    let j = jails::create(&pool, tenant, &jail("steady")).await.unwrap();
    wait_observed(&pool, tenant, j.id, ObservedState::Running).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    pool.close().await;

    let down_at = chrono::Utc::now();
    let dir = cluster.stop();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let up_at = chrono::Utc::now();
    let (cluster, _) = OwnCluster::start(dir);
    let pool = stockade_store::connect(&url, 4, Duration::from_secs(10))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;

    assert!(node.is_running(), "the agent survived the outage");
    let samples = stockade_store::usage::jail_samples(&pool, j.id)
        .await
        .unwrap();
    let during = samples
        .iter()
        .filter(|s| s.0 > down_at && s.0 < up_at)
        .count();
    assert!(
        during >= 2,
        "samples taken during the outage were kept and sent later: {during}"
    );
    let after = samples.iter().filter(|s| s.0 > up_at).count();
    assert!(after >= 2, "sampling went on after the restart: {after}");
    // Changes made after the restart still converge (notifications reconnected or resync).
    jails::set_desired(&pool, tenant, j.id, DesiredState::Deleted)
        .await
        .unwrap();
    wait_observed(&pool, tenant, j.id, ObservedState::Deleted).await;
    node.kill(nix::sys::signal::Signal::SIGTERM);
    pool.close().await;
    drop(cluster);
}
