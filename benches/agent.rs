//! Agent benchmark: time from a jail row's insertion to observed running
//! (p50/p99 over 200 creations), then 1,000 running jails: the sampling
//! sweep's CPU and wall time per jail and the agent's RSS.
//!
//! Run as root: `cargo bench --bench agent`. It starts its own throw-away
//! PostgreSQL cluster and agent, and removes every jail it made.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};
use stockade_domain::{DesiredState, JailKind, JailName, Limits, ObservedState, TenantSlug};
use stockade_store::jails::{self, NewJail};
use stockade_store::plans::{self, PlanInput, Quota};
use stockade_store::{PgPool, tenants};
use uuid::Uuid;

const MIB: u64 = 1 << 20;

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        drop(self.0.stdin.take());
        if let Ok(pid) = i32::try_from(self.0.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let _ = self.0.wait();
    }
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}

async fn wait_running(pool: &PgPool, tenant: Uuid, id: Uuid) {
    loop {
        let j = jails::get(pool, tenant, id).await.unwrap();
        if j.observed_state == ObservedState::Running && j.observed_generation == j.generation {
            return;
        }
        if j.observed_state == ObservedState::Failed {
            panic!("jail failed: {:?}", j.last_error);
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn metric(addr: &str, name: &str) -> f64 {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(f64::NAN)
}

fn rss_mib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0)
        / 1024
}

#[tokio::main]
async fn main() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("agent bench: needs root; skipped");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let exe = env!("CARGO_BIN_EXE_stockade");
    let mut cluster = Command::new(exe)
        .args(["db-cluster", "--ephemeral", "--data-dir"])
        .arg(dir.path().join("pg"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(cluster.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _cluster = Kill(cluster);
    let server = SecretString::from(line.trim().trim_start_matches("DATABASE_URL=").to_owned());
    stockade_store::ensure_database(&server, "stockade")
        .await
        .unwrap();
    let url = SecretString::from(server.expose_secret().replace("/postgres", "/stockade"));
    let pool = stockade_store::connect(&url, 8, Duration::from_secs(10))
        .await
        .unwrap();
    stockade_store::migrate(&pool).await.unwrap();

    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let agent = Command::new(exe)
        .arg("agent")
        .env("DATABASE_URL", url.expose_secret())
        .env("STOCKADE_NODE_NAME", "bench-node")
        .env("STOCKADE_STATE_DIR", dir.path().join("state"))
        .env("STOCKADE_AGENT_METRICS", &metrics_addr)
        .env("STOCKADE_SAMPLE_SECS", "10")
        .env("STOCKADE_STOP_GRACE_SECS", "1")
        .env("STOCKADE_BRIDGE", "stkbench")
        .env("STOCKADE_FIREWALL_TABLE", "stkbench")
        .env("STOCKADE_JAIL_NETWORK", "10.78.0.1/16")
        .env("STOCKADE_PROXY_HTTP", "off")
        .env(
            "STOCKADE_LOG",
            std::env::var("BENCH_AGENT_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let agent_pid = agent.id();
    let agent = Kill(agent);
    while stockade_store::nodes::list(&pool).await.unwrap().is_empty() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let plan = plans::create(
        &pool,
        &PlanInput {
            name: TenantSlug::parse("bench").unwrap(),
            display_name: "Bench".into(),
            quota: Quota {
                cpu_millicores: 1_000_000,
                memory_bytes: 1 << 40,
                pids: 1_000_000,
                disk_bytes: 1 << 40,
                max_jails: 2000,
                ..Quota::default()
            },
            user_namespace: true,
            network: plans::PlanNetwork::default(),
        },
    )
    .await
    .unwrap();
    let tenant = tenants::create(
        &pool,
        &TenantSlug::parse("bench").unwrap(),
        "Bench",
        plan.id,
    )
    .await
    .unwrap()
    .id;
    // The node row's memory limits placement; a bench node takes them all.
    sqlx_update_capacity(&pool).await;
    let new = |i: usize| NewJail {
        name: JailName::parse(&format!("j{i}")).unwrap(),
        image: "busybox".into(),
        kind: JailKind::System,
        command: vec!["sleep".into(), "1000000".into()],
        limits: Limits {
            cpu_millicores: 250,
            memory_bytes: 16 * MIB,
            pids: 8,
            disk_bytes: 16 * MIB,
            ..Limits::default()
        },
    };

    // 1. Insertion to observed running, one at a time. Two clocks: the
    // database's own (row created → observed running, as the agent wrote
    // it), and this process's (call → seen running by polling).
    let mut times = Vec::new();
    let mut db_times = Vec::new();
    for i in 0..200 {
        let t = Instant::now();
        let j = jails::create(&pool, tenant, &new(i)).await.unwrap();
        wait_running(&pool, tenant, j.id).await;
        times.push(t.elapsed());
        let secs: f64 = sqlx::query_scalar(
            "SELECT extract(epoch FROM observed_at - created_at)::float8 FROM jails WHERE id = $1",
        )
        .bind(j.id)
        .fetch_one(&pool)
        .await
        .unwrap();
        db_times.push(Duration::from_secs_f64(secs.max(0.0)));
    }
    times.sort();
    db_times.sort();
    println!(
        "row inserted to observed running over 200 creations (database clock): p50 {:.1} ms, p99 {:.1} ms",
        percentile(&db_times, 50).as_secs_f64() * 1000.0,
        percentile(&db_times, 99).as_secs_f64() * 1000.0
    );
    println!(
        "create call to seen running by polling every 2 ms (client clock): p50 {:.1} ms, p99 {:.1} ms",
        percentile(&times, 50).as_secs_f64() * 1000.0,
        percentile(&times, 99).as_secs_f64() * 1000.0
    );

    // 2. Up to 1,000 running jails (BENCH_RUNNING): sampling sweep and agent memory.
    let running: usize = std::env::var("BENCH_RUNNING")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000)
        .max(200);
    let t = Instant::now();
    let mut ids = Vec::new();
    for i in 200..running {
        ids.push(jails::create(&pool, tenant, &new(i)).await.unwrap().id);
    }
    for id in &ids {
        wait_running(&pool, tenant, *id).await;
    }
    println!(
        "{} more jails created and running in {:.1} s",
        running - 200,
        t.elapsed().as_secs_f64()
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let jails_read = metric(&metrics_addr, "stockade_agent_sample_sweep_jails ");
        if jails_read >= f64::from(u32::try_from(running).unwrap_or(u32::MAX))
            || Instant::now() > deadline
        {
            // That sweep opened the files of the jails started since the
            // one before; the next (10 s later) finds them all open.
            tokio::time::sleep(Duration::from_secs(11)).await;
            let jails_read = metric(&metrics_addr, "stockade_agent_sample_sweep_jails ");
            let sweep = metric(&metrics_addr, "stockade_agent_sample_sweep_seconds ");
            let cpu = metric(&metrics_addr, "stockade_agent_sample_sweep_cpu_seconds ");
            println!(
                "sampling sweep over {jails_read} jails: CPU {:.1} ms, {:.3} ms per jail; wall {:.1} ms, {:.3} ms per jail; agent RSS {} MiB",
                cpu * 1000.0,
                cpu * 1000.0 / jails_read,
                sweep * 1000.0,
                sweep * 1000.0 / jails_read,
                rss_mib(agent_pid)
            );
            break;
        }
    }

    let t = Instant::now();
    tenants::terminate(&pool, tenant).await.unwrap();
    loop {
        let left = jails::list_for_tenant(&pool, tenant).await.unwrap();
        if left.iter().all(|j| {
            j.observed_state == ObservedState::Deleted && j.desired_state == DesiredState::Deleted
        }) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "{running} jails destroyed in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    drop(agent);
    for entry in std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
    {
        let _ = std::fs::remove_dir(entry.path().join("stockade-bench-node"));
    }
    let _ = Command::new("ip")
        .args(["link", "del", "stkbench"])
        .status();
    let _ = Command::new("nft")
        .args(["delete", "table", "inet", "stkbench"])
        .status();
}

async fn sqlx_update_capacity(pool: &PgPool) {
    stockade_store::nodes::set_capacity_for_tests(pool, "bench-node", 1 << 40, 1 << 40, 2000)
        .await
        .unwrap();
}
