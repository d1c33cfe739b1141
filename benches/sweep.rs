//! The agent's usage sweep over many idle jails, without the database: the
//! CPU time of the sweeping thread (its own clock, user and system) and the
//! wall time, per jail, for the first sweep (which opens every jail's
//! files) and the sweeps after it.
//!
//! Run as root: `cargo bench --bench sweep`. `BENCH_JAILS` jails (1,000 by
//! default), `BENCH_NET_JAILS` of them (default: all) with a network on a
//! bridge and firewall table of the bench's own, `BENCH_SWEEPS` sweeps (10).
//! Every jail, the bridge, the table and the cgroup parent are removed at
//! the end, also when the bench fails.

use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

mod common;

use stockade_domain::JailName;
use stockade_jail::{Engine, EngineConfig, NetSpec};

const CGROUP_PARENT: &str = "stockade-bench-sweep";
const BRIDGE: &str = "stkbsweep";
const TABLE: &str = "stkbsweep";
/// Jails started to see what the reader's open files cost a start-up.
const EXTRA_STARTS: usize = 20;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn per_jail_ms(d: Duration, n: usize) -> f64 {
    d.as_secs_f64() * 1000.0 / f64::from(u32::try_from(n.max(1)).unwrap_or(u32::MAX))
}

fn meminfo_kib(key: &str) -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Removes every jail made and what the bench added to the host, also on
/// a panic.
struct Cleanup<'a> {
    engine: &'a Engine,
    names: Vec<JailName>,
    bridge_made: bool,
    table_made: bool,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        let t = Instant::now();
        let mut failed = 0;
        for name in &self.names {
            if let Err(e) = self.engine.destroy(name) {
                eprintln!("destroying {name}: {e}");
                failed += 1;
            }
        }
        println!(
            "{} jails destroyed in {:.2} s ({failed} failed)",
            self.names.len(),
            t.elapsed().as_secs_f64()
        );
        let root = Path::new("/sys/fs/cgroup");
        let _ = std::fs::remove_dir(root.join(CGROUP_PARENT));
        for entry in std::fs::read_dir(root).into_iter().flatten().flatten() {
            let _ = std::fs::remove_dir(entry.path().join(CGROUP_PARENT));
        }
        if self.bridge_made {
            let _ = Command::new("ip").args(["link", "del", BRIDGE]).status();
        }
        if self.table_made {
            let _ = Command::new("nft")
                .args(["delete", "table", "inet", TABLE])
                .status();
        }
    }
}

fn main() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("sweep bench: needs root; skipped");
        return;
    }
    let jails = env_or("BENCH_JAILS", 1000);
    let net_jails = env_or("BENCH_NET_JAILS", jails).min(jails);
    let sweeps = env_or("BENCH_SWEEPS", 10).max(2);
    // Started jails outlive their launcher; as subreaper this process
    // reaps their inits when they are destroyed.
    nix::sys::prctl::set_child_subreaper(true).unwrap();
    let open_files = stockade_jail::raise_open_file_limit();

    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut cfg = EngineConfig::new(dir.path().join("state"), dir.path().join("images"));
    cfg.cgroup_parent = CGROUP_PARENT.into();
    cfg.bridge = BRIDGE.into();
    cfg.firewall_table = TABLE.into();
    cfg.gateway = "10.79.0.1/16".parse().unwrap();
    cfg.forwarding = false;
    let engine = Engine::new(cfg).unwrap();
    engine.ensure_busybox().unwrap();
    let mut cleanup = Cleanup {
        engine: &engine,
        names: Vec::new(),
        bridge_made: net_jails > 0 && !Path::new("/sys/class/net").join(BRIDGE).exists(),
        table_made: net_jails > 0
            && !Command::new("nft")
                .args(["list", "table", "inet", TABLE])
                .output()
                .is_ok_and(|o| o.status.success()),
    };

    let t = Instant::now();
    for i in 0..jails {
        let name = JailName::parse(&format!("sweep-{i}")).unwrap();
        cleanup.names.push(name.clone());
        let network = (i < net_jails).then(|| {
            let base = u32::from(Ipv4Addr::new(10, 79, 0, 2));
            NetSpec::new(Ipv4Addr::from(base + u32::try_from(i).unwrap()))
        });
        engine.create(&common::idle_jail(&name, network)).unwrap();
        engine.start(&name).unwrap();
    }
    println!(
        "{jails} idle system jails ({net_jails} with a network) created and started in {:.1} s; open-file limit {open_files}",
        t.elapsed().as_secs_f64()
    );
    std::thread::sleep(Duration::from_secs(1));

    let names = cleanup.names.clone();
    let mut reader = engine.usage_reader();
    let (avail, unreclaimable) = (meminfo_kib("MemAvailable:"), meminfo_kib("SUnreclaim:"));
    let mut cpu = Vec::new();
    let mut wall = Vec::new();
    let mut kept = 0;
    for i in 0..sweeps {
        let s = reader.sweep(&names);
        let failed = s.usage.iter().filter(|u| u.is_err()).count();
        if let Some(Err(e)) = s.usage.iter().find(|u| u.is_err()) {
            eprintln!("sweep {i}: {failed} jails failed, e.g. {e}");
        }
        let traffic = s
            .usage
            .iter()
            .flatten()
            .filter(|u| u.net_tx_packets > 0)
            .count();
        let label = if i == 0 { "first (cold)" } else { "warm" };
        println!(
            "sweep {i} {label}: CPU {:.2} ms, {:.4} ms per jail; wall {:.2} ms, {:.4} ms per jail; {failed} failed; {traffic} jails with traffic",
            s.cpu.as_secs_f64() * 1000.0,
            per_jail_ms(s.cpu, jails),
            s.wall.as_secs_f64() * 1000.0,
            per_jail_ms(s.wall, jails),
        );
        if i > 0 {
            cpu.push(s.cpu);
            wall.push(s.wall);
        }
        kept = s.open_files;
        std::thread::sleep(Duration::from_millis(200));
    }
    println!(
        "warm sweeps, median of {}: CPU {:.4} ms per jail, wall {:.4} ms per jail; {kept} files kept open ({:.1} per jail); host memory {} KiB less available, unreclaimable slab {} KiB more",
        cpu.len(),
        per_jail_ms(median(cpu), jails),
        per_jail_ms(median(wall), jails),
        f64::from(u32::try_from(kept).unwrap_or(u32::MAX))
            / f64::from(u32::try_from(jails.max(1)).unwrap_or(u32::MAX)),
        avail.saturating_sub(meminfo_kib("MemAvailable:")),
        meminfo_kib("SUnreclaim:").saturating_sub(unreclaimable),
    );

    // A jail start-up forks the engine's process and so copies its
    // descriptor table: time starts while a reader keeps every jail's files
    // (in its thread's own table) and while none does, alternately.
    drop(reader);
    let start_one = |cleanup: &mut Cleanup<'_>, i: usize| {
        let name = JailName::parse(&format!("sweep-extra-{i}")).unwrap();
        cleanup.names.push(name.clone());
        engine.create(&common::idle_jail(&name, None)).unwrap();
        let t = Instant::now();
        engine.start(&name).unwrap();
        let took = t.elapsed();
        engine.destroy(&name).unwrap();
        cleanup.names.pop();
        took
    };
    for i in 0..3 {
        start_one(&mut cleanup, i);
    }
    let (mut with_files, mut without) = (Vec::new(), Vec::new());
    for i in 0..EXTRA_STARTS {
        let mut reader = engine.usage_reader();
        reader.sweep(&names);
        with_files.push(start_one(&mut cleanup, 2 * i));
        drop(reader);
        without.push(start_one(&mut cleanup, 2 * i + 1));
    }
    println!(
        "jail start-up, median of {EXTRA_STARTS}: {:.2} ms while a reader keeps {kept} files open, {:.2} ms while none does",
        median(with_files).as_secs_f64() * 1000.0,
        median(without).as_secs_f64() * 1000.0
    );
}
