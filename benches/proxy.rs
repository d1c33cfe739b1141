//! Proxy benchmark: a jail's HTTP server reached through its node's proxy
//! (HAProxy as the agent runs it) against the same server reached directly,
//! side by side in one run (`wrk`, 16 keep-alive connections, small pages,
//! alternating twice), and through a bare TCP hop (HAProxy forwarding bytes,
//! no HTTP, no rules: the floor of any proxy on the same cores); then how soon a newly attached domain answers after
//! the store call returns (p50/p99 over 50 domains); then the throughput
//! again with 2,000 more domains on the node.
//!
//! The jail's server is a small keep-alive HTTP/1.1 server of this bench,
//! run in the jail's network namespace (busybox's httpd closes every
//! connection). Run as root with `wrk` and `haproxy` installed:
//! `cargo bench --bench proxy`. It starts its own throw-away PostgreSQL
//! cluster and agent, and removes everything it made.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};
use stockade_domain::{DomainName, JailKind, JailName, Limits, ObservedState, TenantSlug};
use stockade_store::domains::{self, NewDomain};
use stockade_store::jails::{self, NewJail};
use stockade_store::{plans, tenants};

/// Whatever the bench leaves on the host goes, pass or fail: the jails the
/// agent made, the proxy, the agent's cgroup group, the bridge and the
/// firewall table.
struct Cleanup {
    engine: stockade_jail::Engine,
    proxy: std::path::PathBuf,
}
impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Ok(found) = self.engine.discover() {
            for name in found.jails.keys() {
                if let Ok(name) = JailName::parse(name) {
                    let _ = self.engine.destroy(&name);
                }
            }
        }
        stockade_agent::stop_proxy(&self.proxy);
        // The agent's own group, in every hierarchy (the agent is gone).
        for entry in std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = std::fs::remove_dir(entry.path().join(CGROUP));
        }
        let _ = Command::new("ip")
            .args(["link", "del", "stkproxy"])
            .status();
        let _ = Command::new("nft")
            .args(["delete", "table", "inet", "stkproxy"])
            .status();
    }
}

/// The agent's cgroup group: `stockade-<node name>`.
const CGROUP: &str = "stockade-bench-proxy";

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

const PAGE: &str = "<!doctype html><title>bench</title><p>a small page of a site</p>\n";

/// Serves `PAGE` with keep-alive on port 80 of the network namespace of
/// process `pid`, one thread per connection, until the process ends.
fn serve_in(pid: i32) {
    let (ready, bound) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let ns = std::fs::File::open(format!("/proc/{pid}/ns/net")).unwrap();
        nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let listener = TcpListener::bind("0.0.0.0:80").unwrap();
        ready.send(()).unwrap();
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let _ = conn.set_nodelay(true);
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut conn = conn;
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\n\r\n{PAGE}",
                    PAGE.len()
                );
                loop {
                    let mut line = String::new();
                    // The request line and headers, up to the empty line.
                    loop {
                        line.clear();
                        match reader.read_line(&mut line) {
                            Ok(0) | Err(_) => return,
                            Ok(_) if line == "\r\n" => break,
                            Ok(_) => {}
                        }
                    }
                    if conn.write_all(answer.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    bound.recv().unwrap();
}

/// `wrk` against `url` (with `host` as the Host header): requests/s and
/// the p99 latency in ms.
fn wrk(url: &str, host: Option<&str>) -> (f64, f64) {
    let header = host.map(|h| format!("Host: {h}"));
    let (rps, p99) = common::wrk(url, header.as_deref());
    (rps, common::wrk_ms(&p99))
}

fn get(proxy: SocketAddr, host: &str) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(&proxy, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.split(' ').nth(1)?.parse().ok()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::main]
async fn main() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("proxy bench: needs root; skipped");
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
    let pool = stockade_store::connect(&url, 4, Duration::from_secs(10))
        .await
        .unwrap();
    stockade_store::migrate(&pool).await.unwrap();

    let proxy: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let state = dir.path().join("state");
    let agent = Command::new(exe)
        .arg("agent")
        .env("DATABASE_URL", url.expose_secret())
        .env("STOCKADE_NODE_NAME", "bench-proxy")
        .env("STOCKADE_STATE_DIR", &state)
        .env("STOCKADE_AGENT_METRICS", "off")
        .env("STOCKADE_BRIDGE", "stkproxy")
        .env("STOCKADE_FIREWALL_TABLE", "stkproxy")
        .env("STOCKADE_JAIL_NETWORK", "10.80.0.1/24")
        .env("STOCKADE_PROXY_HTTP", proxy.to_string())
        .env("STOCKADE_PROXY_HTTPS", "off")
        .env("STOCKADE_ACME_DIRECTORY", "off")
        .env("STOCKADE_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    // Declared before the agent: dropped after it.
    let cleanup = Cleanup {
        engine: stockade_jail::Engine::new({
            let mut c = stockade_jail::EngineConfig::new(state.join("node"), state.join("images"));
            c.bridge = "stkproxy".into();
            c.firewall_table = "stkproxy".into();
            c.cgroup_parent = CGROUP.into();
            c
        })
        .unwrap(),
        proxy: state.join("proxy"),
    };
    let agent = Kill(agent);
    while stockade_store::nodes::list(&pool).await.unwrap().is_empty() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let plan = plans::by_name(&pool, "business").await.unwrap();
    let tenant = tenants::create(
        &pool,
        &TenantSlug::parse("bench").unwrap(),
        "Bench",
        plan.id,
    )
    .await
    .unwrap()
    .id;
    let jail = jails::create(
        &pool,
        tenant,
        &NewJail {
            name: JailName::parse("site").unwrap(),
            image: "busybox".into(),
            kind: JailKind::System,
            command: vec!["sleep".into(), "1000000".into()],
            limits: Limits {
                cpu_millicores: 1000,
                memory_bytes: 64 << 20,
                pids: 64,
                disk_bytes: 32 << 20,
                ..Limits::default()
            },
        },
    )
    .await
    .unwrap();
    let jail = loop {
        let j = jails::get(&pool, tenant, jail.id).await.unwrap();
        if j.observed_state == ObservedState::Running {
            break j;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let Some(stockade_jail::JailStatus::Running { pid }) =
        cleanup.engine.status(&jail.host_name()).unwrap()
    else {
        panic!("the jail runs");
    };
    serve_in(pid);
    let address = jail.address.clone().unwrap();
    let attach = |name: String| {
        let pool = pool.clone();
        async move {
            domains::attach(
                &pool,
                tenant,
                jail.id,
                &NewDomain {
                    name: DomainName::parse(&name).unwrap(),
                    www: false,
                    jail_port: 80,
                    proof_required: false,
                },
            )
            .await
            .unwrap()
        }
    };
    attach("bench.test".into()).await;
    while get(proxy, "bench.test") != Some(200) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // 1. Throughput and p99: direct, through the node's proxy, and through
    // the barest hop a user-space proxy can be (HAProxy forwarding TCP with
    // no HTTP and no rules): what any proxy costs on these shared cores.
    let hop: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let hop_cfg = dir.path().join("hop.cfg");
    std::fs::write(
        &hop_cfg,
        format!(
            "defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 60s\n    \
             timeout server 60s\nlisten hop\n    bind {hop}\n    server jail {address}:80\n"
        ),
    )
    .unwrap();
    let _hop = Kill(
        Command::new("haproxy")
            .arg("-f")
            .arg(&hop_cfg)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    while TcpStream::connect(hop).is_err() {
        std::thread::sleep(Duration::from_millis(20));
    }
    let direct_url = format!("http://{address}:80/");
    let proxy_url = format!("http://{proxy}/");
    let hop_url = format!("http://{hop}/");
    // Two rounds each way, alternating: requests/s and p99 of each run.
    let rounds = || {
        let mut runs = [Vec::new(), Vec::new(), Vec::new()];
        for _ in 0..2 {
            runs[0].push(wrk(&direct_url, None));
            runs[1].push(wrk(&proxy_url, Some("bench.test")));
            runs[2].push(wrk(&hop_url, None));
        }
        runs
    };
    let best = |v: &[(f64, f64)]| {
        v.iter()
            .copied()
            .fold((0.0f64, f64::NAN), |a, b| if b.0 > a.0 { b } else { a })
    };
    let report = |title: &str, runs: &[Vec<(f64, f64)>; 3]| {
        println!("{title}, 16 keep-alive connections, best of two 10 s runs each:");
        let rounds = runs[0].iter().zip(&runs[1]).zip(&runs[2]);
        for (i, ((d, p), h)) in rounds.enumerate() {
            println!(
                "  round {}: direct {:.0} req/s (p99 {:.2} ms), through the proxy {:.0} req/s (p99 {:.2} ms), bare TCP hop {:.0} req/s (p99 {:.2} ms)",
                i + 1,
                d.0,
                d.1,
                p.0,
                p.1,
                h.0,
                h.1
            );
        }
        let (d, p, h) = (best(&runs[0]), best(&runs[1]), best(&runs[2]));
        println!(
            "  direct {:.0} req/s p99 {:.2} ms; proxy {:.0} req/s p99 {:.2} ms: the proxy keeps {:.0} % of the throughput; a bare TCP hop keeps {:.0} % ({:.0} req/s, p99 {:.2} ms)",
            d.0,
            d.1,
            p.0,
            p.1,
            100.0 * p.0 / d.0,
            100.0 * h.0 / d.0,
            h.0,
            h.1
        );
    };
    report("small pages", &rounds());

    // 2. A new domain answers how soon after the store call returns.
    let mut live = Vec::new();
    for i in 0..50 {
        let name = format!("r{i}.test");
        let d = attach(name.clone()).await;
        let t = Instant::now();
        while get(proxy, &name) != Some(200) {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "{name} never answered"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        live.push(t.elapsed());
        domains::detach(&pool, tenant, jail.id, d.id).await.unwrap();
    }
    live.sort();
    let pct = |p: usize| live[(live.len() * p / 100).min(live.len() - 1)];
    println!(
        "a new domain live after the call returns, 50 domains: p50 {:.0} ms, p99 {:.0} ms",
        pct(50).as_secs_f64() * 1000.0,
        pct(99).as_secs_f64() * 1000.0
    );

    // 3. The same through a proxy that serves many other sites too.
    let others = 2000;
    for i in 0..others {
        attach(format!("other{i}.test")).await;
    }
    let last = format!("other{}.test", others - 1);
    let t = Instant::now();
    while get(proxy, &last) != Some(200) {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "{last} never answered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The workers of the reloads on the way finish first.
    tokio::time::sleep(Duration::from_secs(5)).await;
    report(
        &format!("with {others} more domains on the node"),
        &rounds(),
    );

    // Everything goes: the jail, the agent, its proxy, the bridge and table.
    tenants::terminate(&pool, tenant).await.unwrap();
    loop {
        let j = jails::get(&pool, tenant, jail.id).await.unwrap();
        if j.observed_state == ObservedState::Deleted {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(agent);
    stockade_agent::stop_proxy(&state.join("proxy"));
    let _ = Command::new("ip")
        .args(["link", "del", "stkproxy"])
        .status();
    let _ = Command::new("nft")
        .args(["delete", "table", "inet", "stkproxy"])
        .status();
    pool.close().await;
}
