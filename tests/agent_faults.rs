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

    /// A cluster in a folder of its own with the `stockade` database
    /// migrated: the cluster, the database's URL and an owner's pool.
    async fn migrated(max_connections: u32) -> (OwnCluster, SecretString, PgPool) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let (cluster, server) = OwnCluster::start(dir);
        stockade_store::ensure_database(&server, "stockade")
            .await
            .unwrap();
        let url = SecretString::from(server.expose_secret().replace("/postgres", "/stockade"));
        let pool = stockade_store::connect(&url, max_connections, Duration::from_secs(10))
            .await
            .unwrap();
        stockade_store::migrate(&pool).await.unwrap();
        (cluster, url, pool)
    }

    /// The postmaster dies without a word, as in a crash; the next start
    /// recovers.
    fn crash(&self) {
        let pid = std::fs::read_to_string(self.dir.path().join("pg/postmaster.pid"))
            .unwrap()
            .lines()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
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
async fn the_agent_rides_out_clean_and_crashed_database_outages_without_losing_samples() {
    if !is_root() {
        return;
    }
    let (mut cluster, url, pool) = OwnCluster::migrated(4).await;
    let mut node = Node::new(&url);
    wait_node(&pool, &node.name).await;
    let tenant = tenant(&pool).await;
    let j = jails::create(&pool, tenant, &jail("steady")).await.unwrap();
    wait_observed(&pool, tenant, j.id, ObservedState::Running).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    pool.close().await;

    // A clean stop, briefly; then a crash, after which the server refuses
    // connections for a minute. Samples are taken every second throughout.
    for (crash, outage) in [(false, 4), (true, 60)] {
        if crash {
            cluster.crash();
        }
        let down_at = chrono::Utc::now();
        let dir = cluster.stop();
        tokio::time::sleep(Duration::from_secs(outage)).await;
        let up_at = chrono::Utc::now();
        cluster = OwnCluster::start(dir).0;
        let pool = stockade_store::connect(&url, 4, Duration::from_secs(30))
            .await
            .unwrap();
        // Sampling sent what it kept at its first sweep after the server came back.
        let deadline = Instant::now() + Duration::from_secs(20);
        let samples = loop {
            let samples = stockade_store::usage::jail_samples(&pool, j.id)
                .await
                .unwrap();
            if samples.iter().filter(|s| s.0 > up_at).count() >= 2 {
                break samples;
            }
            assert!(
                Instant::now() < deadline,
                "sampling did not go on after the restart"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        let during = samples
            .iter()
            .filter(|s| s.0 > down_at && s.0 < up_at)
            .count() as u64;
        eprintln!("outage of {outage} s (crash: {crash}): {during} samples kept");
        // One a second; a couple may fall at the edges.
        assert!(
            during + 3 >= outage,
            "samples taken during the outage were kept and sent later: {during} of about {outage}"
        );
        assert!(node.is_running(), "the agent survived the outage");
        // A change made after the outage converges at once.
        let again = jails::create(
            &pool,
            tenant,
            &jail(if crash { "after-crash" } else { "after-stop" }),
        )
        .await
        .unwrap();
        let took = time_to_running(&pool, tenant, again.id, Duration::from_secs(20)).await;
        eprintln!("a new jail ran {took:?} after the outage");
        pool.close().await;
    }
    let pool = stockade_store::connect(&url, 4, Duration::from_secs(30))
        .await
        .unwrap();
    tenants::terminate(&pool, tenant).await.unwrap();
    wait_all_converged(&pool, tenant, Duration::from_secs(60)).await;
    node.kill(nix::sys::signal::Signal::SIGTERM);
    pool.close().await;
    drop(cluster);
}

/// Waits until jail `id` runs; how long that took.
async fn time_to_running(pool: &PgPool, tenant: Uuid, id: Uuid, limit: Duration) -> Duration {
    let began = Instant::now();
    loop {
        if let Ok(j) = jails::get(pool, tenant, id).await
            && j.observed_state == ObservedState::Running
        {
            return began.elapsed();
        }
        assert!(
            began.elapsed() < limit,
            "the jail did not start within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn after_a_clean_or_crashed_database_restart_new_jails_start_without_a_resync() {
    if !is_root() {
        return;
    }
    let (mut cluster, url, pool) = OwnCluster::migrated(4).await;
    // A resync too far away to matter: only a notification starts a jail
    // in time.
    let mut node = Node::with_env(&url, &[("STOCKADE_RESYNC_SECS", "600")]);
    wait_node(&pool, &node.name).await;
    let tenant = tenant(&pool).await;
    let first = jails::create(&pool, tenant, &jail("first")).await.unwrap();
    time_to_running(&pool, tenant, first.id, Duration::from_secs(30)).await;
    pool.close().await;

    for crash in [false, true] {
        if crash {
            cluster.crash();
        }
        let dir = cluster.stop();
        tokio::time::sleep(Duration::from_secs(2)).await;
        cluster = OwnCluster::start(dir).0;
        let pool = stockade_store::connect(&url, 4, Duration::from_secs(30))
            .await
            .unwrap();
        // The agent reconnects within its backoff (well under a second
        // once the server is back; a few seconds are allowed here).
        tokio::time::sleep(Duration::from_secs(3)).await;
        let name = if crash {
            "after-crash"
        } else {
            "after-restart"
        };
        let j = jails::create(&pool, tenant, &jail(name)).await.unwrap();
        let took = time_to_running(&pool, tenant, j.id, Duration::from_secs(20)).await;
        eprintln!("{name}: running after {took:?}");
        pool.close().await;
    }
    assert!(node.is_running(), "the agent survived both outages");
    node.kill(nix::sys::signal::Signal::SIGTERM);
    drop(cluster);
}

#[tokio::test]
async fn while_the_database_is_away_the_api_and_panel_say_so_at_once_and_recover() {
    if !is_root() {
        return;
    }
    let (cluster, url, pool) = OwnCluster::migrated(2).await;
    let (_, token) =
        stockade_store::tokens::create(&pool, "outage", &stockade_store::tokens::Scope::ALL, None)
            .await
            .unwrap();
    // The web tier as `serve` runs it: a second at most for a connection.
    let web_pool = stockade_store::connect_serving(
        &common::role_url(&url, stockade_store::roles::WEB),
        4,
        Duration::from_secs(10),
        Duration::from_secs(1),
    )
    .await
    .unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let settings = stockade_web::Settings {
        public_url: "http://127.0.0.1".into(),
        session_expiry: stockade_store::sessions::Expiry {
            idle: chrono::Duration::minutes(30),
            absolute: chrono::Duration::hours(12),
        },
        workers: 2,
        signup_plan: None,
        page_cache: Duration::from_secs(5),
        trusted_proxies: Vec::new(),
        domain_proof: None,
    };
    let app = stockade_web::Application::build(listener, web_pool, settings).unwrap();
    let base = format!("http://127.0.0.1:{}", app.port());
    tokio::spawn(app.run_until_stopped());
    let client = reqwest::Client::new();
    let tenants = || {
        client
            .get(format!("{base}/api/v1/tenants"))
            .bearer_auth(token.expose_secret())
            .send()
    };
    assert_eq!(tenants().await.unwrap().status(), 200);
    an_ended_session_is_refused_at_once(&base, &pool, "before").await;
    pool.close().await;

    let dir = cluster.stop();
    for _ in 0..2 {
        let began = Instant::now();
        let res = tenants().await.unwrap();
        let took = began.elapsed();
        eprintln!(
            "API answer while the database is away: {} after {took:?}",
            res.status()
        );
        assert_eq!(res.status(), 503);
        assert_eq!(res.headers()["retry-after"], "5");
        let body: serde_json::Value = res.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unavailable", "{body}");
        assert!(took < Duration::from_secs(5), "the answer waited {took:?}");
    }
    // A signed-in page (the session is looked up in the database).
    let page = client
        .get(format!("{base}/"))
        .header("cookie", "stockade_session=an-existing-session")
        .send()
        .await
        .unwrap();
    let status = page.status();
    let text = page.text().await.unwrap();
    assert!(
        status == 503 && text.contains("Temporarily unavailable"),
        "{status}: {text}"
    );

    let (cluster, _) = OwnCluster::start(dir);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if tenants().await.unwrap().status() == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the API did not recover");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The web tier listens for changes again (its caches are back in use)...
    let listening = || async {
        client
            .get(format!("{base}/metrics"))
            .bearer_auth(token.expose_secret())
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
            .contains("stockade_web_listening 1")
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !listening().await {
        assert!(
            Instant::now() < deadline,
            "the web tier did not listen for changes again"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // ...and hears them again.
    let pool = stockade_store::connect(&url, 2, Duration::from_secs(10))
        .await
        .unwrap();
    an_ended_session_is_refused_at_once(&base, &pool, "after").await;
    pool.close().await;
    drop(cluster);
}

/// A session ended elsewhere (another process's connection) is refused at
/// once by the web tier at `base`, though it holds that session in memory:
/// the web tier hears the database's change notifications.
async fn an_ended_session_is_refused_at_once(base: &str, pool: &PgPool, who: &str) {
    let admin = stockade_store::users::create(
        pool,
        &stockade_domain::Email::parse(&format!("staff-{who}@outage.test")).unwrap(),
        // Never signed in with: the session is made directly.
        "$argon2id$v=19$m=19456,t=2,p=1$unused$unused",
        stockade_domain::Role::Admin,
        None,
    )
    .await
    .unwrap();
    let session = stockade_store::sessions::create(
        pool,
        admin.id,
        stockade_store::sessions::Expiry {
            idle: chrono::Duration::minutes(30),
            absolute: chrono::Duration::hours(1),
        },
        None,
    )
    .await
    .unwrap();
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let home = || {
        client
            .get(format!("{base}/staff/tenants"))
            .header("cookie", format!("stockade_session={session}"))
            .send()
    };
    assert_eq!(home().await.unwrap().status(), 200, "signed in");
    assert_eq!(
        home().await.unwrap().status(),
        200,
        "signed in, from memory"
    );
    stockade_store::sessions::delete(pool, &session)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let status = home().await.unwrap().status();
        if status.is_redirection() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{who}: a session ended elsewhere was still honoured: {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One jail's processes frozen (a freezer group of the test's own on v1,
/// the jail's own `cgroup.freeze` on v2), so every engine step that waits
/// for them hangs. Thawed (and the group removed) when dropped.
struct Frozen {
    /// v1: the test's freezer group; v2: the jail's group.
    dir: std::path::PathBuf,
    v1: bool,
}

impl Frozen {
    fn jail(node: &Node, jail: &jails::Jail) -> Frozen {
        let v1_root = std::path::Path::new("/sys/fs/cgroup/freezer");
        let pids_dir = node.cgroup_dir("pids", jail);
        if v1_root.join("cgroup.procs").exists() && pids_dir.exists() {
            let dir = v1_root.join(format!("stockade-test-{}", Uuid::new_v4().simple()));
            std::fs::create_dir(&dir).unwrap();
            let frozen = Frozen { dir, v1: true };
            for pid in std::fs::read_to_string(pids_dir.join("cgroup.procs"))
                .unwrap()
                .lines()
            {
                std::fs::write(frozen.dir.join("cgroup.procs"), pid).unwrap();
            }
            std::fs::write(frozen.dir.join("freezer.state"), "FROZEN").unwrap();
            let deadline = Instant::now() + Duration::from_secs(10);
            while std::fs::read_to_string(frozen.dir.join("freezer.state"))
                .unwrap()
                .trim()
                != "FROZEN"
            {
                assert!(Instant::now() < deadline, "the jail did not freeze");
                std::thread::sleep(Duration::from_millis(20));
            }
            frozen
        } else {
            let dir = node.cgroup_dir("", jail);
            std::fs::write(dir.join("cgroup.freeze"), "1").unwrap();
            Frozen { dir, v1: false }
        }
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        if !self.v1 {
            let _ = std::fs::write(self.dir.join("cgroup.freeze"), "0");
            return;
        }
        let _ = std::fs::write(self.dir.join("freezer.state"), "THAWED");
        // Back to the root group (where they were), then the group goes.
        for pid in std::fs::read_to_string(self.dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
        {
            let _ = std::fs::write("/sys/fs/cgroup/freezer/cgroup.procs", pid);
        }
        for _ in 0..50 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("!!! could not remove {}", self.dir.display());
    }
}

async fn heartbeat_of(pool: &PgPool, node: &str) -> chrono::DateTime<chrono::Utc> {
    stockade_store::nodes::list(pool)
        .await
        .unwrap()
        .into_iter()
        .find(|n| n.name == node)
        .unwrap()
        .heartbeat_at
}

#[tokio::test]
async fn a_stuck_jail_never_stalls_heartbeats_other_jails_uploads_or_metering() {
    if !is_root() {
        return;
    }
    let (pool, url) = common::fresh_database().await;
    // Stopping a jail whose processes are frozen waits the whole grace.
    let mut node = Node::with_env(
        &url,
        &[
            ("STOCKADE_STEP_DEADLINE_SECS", "3"),
            ("STOCKADE_STOP_GRACE_SECS", "600"),
        ],
    );
    wait_node(&pool, &node.name).await;
    let tenant = tenant(&pool).await;
    let site = jails::create(&pool, tenant, &jail("site")).await.unwrap();
    let stuck = jails::create(&pool, tenant, &jail("stuck")).await.unwrap();
    let site = wait_observed(&pool, tenant, site.id, ObservedState::Running).await;
    let stuck = wait_observed(&pool, tenant, stuck.id, ObservedState::Running).await;
    let engine = node.engine();
    let frozen = Frozen::jail(&node, &stuck);
    jails::set_desired(&pool, tenant, stuck.id, DesiredState::Stopped)
        .await
        .unwrap();

    // A FIFO in another jail's site folder, and an upload onto it.
    // Made by the tenant, from inside the jail.
    let code = engine
        .exec(
            &site.host_name(),
            &[
                "sh".into(),
                "-c".into(),
                "mkdir -p /srv/www && mkfifo /srv/www/pipe".into(),
            ],
        )
        .unwrap();
    assert_eq!(code, 0);
    stockade_store::uploads::create(&pool, tenant, site.id, "pipe", b"data")
        .await
        .unwrap();
    let beat = heartbeat_of(&pool, &node.name).await;
    let sampled = stockade_store::usage::jail_samples(&pool, site.id)
        .await
        .unwrap()
        .len();

    // The stuck jail's step is abandoned at its deadline and the jail says so.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let j = jails::get(&pool, tenant, stuck.id).await.unwrap();
        if j.last_error
            .as_deref()
            .is_some_and(|e| e.contains("did not finish within 3 s"))
        {
            assert_eq!(j.observed_state, ObservedState::Failed);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the stuck step was never given up: {j:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Meanwhile a new jail converges, the upload is refused and the next one written.
    let late = jails::create(&pool, tenant, &jail("late")).await.unwrap();
    wait_observed(&pool, tenant, late.id, ObservedState::Running).await;
    stockade_store::uploads::create(&pool, tenant, site.id, "index.html", b"<p>up</p>")
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let list = stockade_store::uploads::list(&pool, tenant, site.id)
            .await
            .unwrap();
        let state = |name: &str| {
            list.iter()
                .find(|u| u.file_name == name)
                .map(|u| (u.state.clone(), u.error.clone()))
                .unwrap()
        };
        if state("pipe").0 != "pending" && state("index.html").0 != "pending" {
            assert_eq!(
                state("pipe"),
                (
                    "failed".into(),
                    Some("pipe is not a regular file (a FIFO); nothing was written".into())
                )
            );
            assert_eq!(state("index.html"), ("written".into(), None));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "uploads were never written: {list:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Heartbeats and metering go on.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now_beat = heartbeat_of(&pool, &node.name).await;
        let now_sampled = stockade_store::usage::jail_samples(&pool, site.id)
            .await
            .unwrap()
            .len();
        if now_beat > beat && now_sampled >= sampled + 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "heartbeat {beat} -> {now_beat}, samples {sampled} -> {now_sampled}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // All of that while the stuck jail's stop was still under way.
    assert!(matches!(
        engine.status(&stuck.host_name()).unwrap(),
        Some(stockade_jail::JailStatus::Running { .. })
    ));
    // The agent stops when told, stuck step or not, and comes back.
    assert!(
        node.terminate_within(Duration::from_secs(10)),
        "the agent waited for the stuck step on its way out"
    );
    node.start();
    // Thawed, its step ends and the jail converges.
    drop(frozen);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let j = jails::get(&pool, tenant, stuck.id).await.unwrap();
        if j.observed_state == ObservedState::Stopped && j.observed_generation == j.generation {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the thawed jail never stopped: {j:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tenants::terminate(&pool, tenant).await.unwrap();
    wait_all_converged(&pool, tenant, Duration::from_secs(60)).await;
}

#[tokio::test]
async fn two_agents_on_one_host_never_touch_each_others_jails() {
    if !is_root() {
        return;
    }
    let (pool, url) = common::fresh_database().await;
    // Separate state folders, node names, cgroup parents, bridges,
    // networks and firewall tables.
    let mut one = Node::with_network(&url, "10.93.0.1/24");
    let mut two = Node::with_network(&url, "10.94.0.1/24");
    wait_node(&pool, &one.name).await;
    wait_node(&pool, &two.name).await;
    let tenant = tenant(&pool).await;
    let mut made = Vec::new();
    for i in 0..4 {
        made.push(
            jails::create(&pool, tenant, &jail(&format!("n{i}")))
                .await
                .unwrap(),
        );
    }
    let loads = stockade_store::nodes::loads(&pool).await.unwrap();
    let one_id = loads.iter().find(|n| n.name == one.name).unwrap().id;
    let two_id = loads.iter().find(|n| n.name == two.name).unwrap().id;
    assert!(made.iter().any(|j| j.node_id == Some(one_id)));
    assert!(made.iter().any(|j| j.node_id == Some(two_id)));
    for j in &made {
        wait_observed(&pool, tenant, j.id, ObservedState::Running).await;
    }
    let (e1, e2) = (one.engine(), two.engine());
    let pids = |e1: &stockade_jail::Engine, e2: &stockade_jail::Engine| {
        made.iter()
            .map(|j| {
                let (own, other) = if j.node_id == Some(one_id) {
                    (e1, e2)
                } else {
                    (e2, e1)
                };
                assert_eq!(other.status(&j.host_name()).unwrap(), None);
                match own.status(&j.host_name()).unwrap() {
                    Some(stockade_jail::JailStatus::Running { pid }) => pid,
                    s => panic!("{} is {s:?}", j.name),
                }
            })
            .collect::<Vec<_>>()
    };
    let before = pids(&e1, &e2);
    // Several resync periods (2 s), then each agent restarted (adoption
    // runs at start), then several periods again.
    tokio::time::sleep(Duration::from_secs(6)).await;
    one.kill(nix::sys::signal::Signal::SIGKILL);
    one.start();
    tokio::time::sleep(Duration::from_secs(6)).await;
    two.kill(nix::sys::signal::Signal::SIGTERM);
    two.start();
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(pids(&e1, &e2), before, "every jail still runs, same init");
    assert_eq!(
        stockade_store::audit::count_action(&pool, "jail.stray_removed")
            .await
            .unwrap(),
        0,
        "neither agent removed anything"
    );
    let mut addresses = std::collections::HashSet::new();
    for j in &made {
        let j = jails::get(&pool, tenant, j.id).await.unwrap();
        assert_eq!(j.observed_state, ObservedState::Running);
        assert!(j.last_error.is_none(), "{j:?}");
        assert!(addresses.insert(j.address.clone().expect("an address")));
    }
    tenants::terminate(&pool, tenant).await.unwrap();
    wait_all_converged(&pool, tenant, Duration::from_secs(60)).await;
}

#[tokio::test]
async fn a_second_agent_with_the_same_node_name_stops_instead_of_removing_jails() {
    if !is_root() {
        return;
    }
    let (pool, url) = common::fresh_database().await;
    let one = Node::new(&url);
    wait_node(&pool, &one.name).await;
    let tenant = tenant(&pool).await;
    let j = jails::create(&pool, tenant, &jail("prod")).await.unwrap();
    wait_observed(&pool, tenant, j.id, ObservedState::Running).await;
    let engine = one.engine();
    let before = engine.status(&j.host_name()).unwrap();
    assert!(matches!(
        before,
        Some(stockade_jail::JailStatus::Running { .. })
    ));
    // Staging beside production: another database and state folder, the
    // same node name (so the same cgroup group).
    let (_, staging_url) = common::fresh_database().await;
    let mut two = Node::with_name_and_env(&staging_url, &one.name, &[]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while two.is_running() {
        assert!(
            Instant::now() < deadline,
            "the second agent kept running on the first one's names"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Several resync periods of the first agent later, its jail is untouched.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(engine.status(&j.host_name()).unwrap(), before);
    tenants::terminate(&pool, tenant).await.unwrap();
    wait_all_converged(&pool, tenant, Duration::from_secs(60)).await;
}
