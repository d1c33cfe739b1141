//! Jail start-up against LXC, side by side in one run, and 1,000 idle jails.
//!
//! Run as root: `cargo bench --bench jail_start` (needs `lxc-execute` from
//! Debian's `lxc` for the comparison; without it only Stockade is measured).
//! Prints medians; the README's Performance section quotes a run of it.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use stockade_domain::JailName;
use stockade_jail::{Engine, EngineConfig};

const RUNS: usize = 60;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn time(cmd: &mut Command) -> Duration {
    // Each run starts on a quiet machine: the kernel finishes tearing down
    // the previous run's namespaces in the background, and that work would
    // otherwise land on whichever run comes next.
    std::thread::sleep(Duration::from_millis(30));
    let t = Instant::now();
    let status = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .status()
        .expect("spawn");
    let took = t.elapsed();
    assert!(status.success(), "{cmd:?} failed: {status}");
    took
}

fn stockade(state: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_stockade"));
    c.env("STOCKADE_STATE_DIR", state)
        .env("STOCKADE_CGROUP_PARENT", "stockade-bench-cli")
        .env("STOCKADE_LOG", "warn")
        .env_remove("STOCKADE_CONFIG");
    c
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn mem_available_kib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn main() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("jail_start: needs root; skipped");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let state = dir.path().join("state");
    assert!(
        stockade(&state)
            .args(["image", "ls"])
            .stdout(Stdio::null())
            .status()
            .unwrap()
            .success()
    );
    let image = state.join("images/busybox");

    let run_args = [
        "jail",
        "run",
        "--image",
        "busybox",
        "--memory",
        "256M",
        "--cpu",
        "500m",
        "--pids",
        "128",
        "--",
        "/bin/true",
    ];
    // The same jail with host root ids: what the user namespace costs.
    let plain_args: Vec<&str> = run_args[..2]
        .iter()
        .copied()
        .chain(["--no-userns"])
        .chain(run_args[2..].iter().copied())
        .collect();
    let lxc = which("lxc-execute");
    let lxc_dir = dir.path().join("lxc");
    if lxc.is_some() {
        std::fs::create_dir_all(&lxc_dir).unwrap();
        let rootfs = lxc_dir.join("rootfs");
        assert!(
            Command::new("cp")
                .arg("-a")
                .arg(&image)
                .arg(&rootfs)
                .status()
                .unwrap()
                .success()
        );
        std::fs::write(
            lxc_dir.join("bench.conf"),
            format!(
                "lxc.uts.name = bench\nlxc.rootfs.path = dir:{}\nlxc.net.0.type = empty\n\
                 lxc.mount.auto = proc:mixed sys:ro\nlxc.autodev = 1\n\
                 lxc.cgroup.memory.limit_in_bytes = 268435456\nlxc.cgroup.cpu.cfs_quota_us = 50000\n\
                 lxc.cgroup.cpu.cfs_period_us = 100000\nlxc.cgroup.pids.max = 128\n\
                 lxc.apparmor.profile = unconfined\n",
                rootfs.display()
            ),
        )
        .unwrap();
    }
    let lxc_cmd = || {
        let mut c = Command::new("lxc-execute");
        c.args(["-n", "bench", "-P"])
            .arg(&lxc_dir)
            .arg("-f")
            .arg(lxc_dir.join("bench.conf"))
            .args(["--", "/bin/true"]);
        c
    };
    // With networking: a veth pair to the node's bridge and an address.
    // The node's bridge and firewall table are made by the first run; if
    // this bench made them, it removes them at the end.
    let bridge_existed = Path::new("/sys/class/net/stk0").exists();
    let net_args = [
        "jail",
        "run",
        "--net",
        "--image",
        "busybox",
        "--memory",
        "256M",
        "--cpu",
        "500m",
        "--pids",
        "128",
        "--",
        "/bin/true",
    ];
    time(stockade(&state).args(net_args));
    if lxc.is_some() {
        let conf = std::fs::read_to_string(lxc_dir.join("bench.conf")).unwrap();
        std::fs::write(
            lxc_dir.join("bench-net.conf"),
            conf.replace(
                "lxc.net.0.type = empty\n",
                "lxc.net.0.type = veth\nlxc.net.0.link = stk0\nlxc.net.0.flags = up\n\
                 lxc.net.0.name = eth0\nlxc.net.0.ipv4.address = 10.77.255.250/16\n\
                 lxc.net.0.ipv4.gateway = 10.77.0.1\n",
            ),
        )
        .unwrap();
    }
    let lxc_net_cmd = || {
        let mut c = Command::new("lxc-execute");
        c.args(["-n", "bench", "-P"])
            .arg(&lxc_dir)
            .arg("-f")
            .arg(lxc_dir.join("bench-net.conf"))
            .args(["--", "/bin/true"]);
        c
    };

    // Each comparison alternates Stockade and LXC so both see the same
    // machine state, in a phase of its own: the kernel finishes tearing down
    // network namespaces, loop devices and volume files in the background,
    // and that work must not land on whichever case happens to run next.
    let settle = || std::thread::sleep(Duration::from_secs(2));
    for _ in 0..5 {
        time(stockade(&state).args(run_args));
        if lxc.is_some() {
            time(&mut lxc_cmd());
        }
    }
    let (mut ours, mut theirs, mut vol) = (Vec::new(), Vec::new(), Vec::new());
    let (mut ours_net, mut theirs_net) = (Vec::new(), Vec::new());
    for _ in 0..RUNS {
        ours.push(time(stockade(&state).args(run_args)));
        if lxc.is_some() {
            theirs.push(time(&mut lxc_cmd()));
        }
    }
    settle();
    for _ in 0..RUNS {
        ours_net.push(time(stockade(&state).args(net_args)));
        if lxc.is_some() {
            theirs_net.push(time(&mut lxc_net_cmd()));
        }
    }
    settle();
    let (mut with_ns, mut without_ns) = (Vec::new(), Vec::new());
    for _ in 0..RUNS {
        with_ns.push(time(stockade(&state).args(run_args)));
        without_ns.push(time(stockade(&state).args(&plain_args)));
    }
    settle();
    for _ in 0..RUNS {
        vol.push(time(stockade(&state).args([
            "jail",
            "run",
            "--image",
            "busybox",
            "--memory",
            "256M",
            "--cpu",
            "500m",
            "--pids",
            "128",
            "--disk",
            "1G",
            "--",
            "/bin/true",
        ])));
    }
    let ours_m = median(ours);
    println!(
        "stockade jail run /bin/true (256M, 500m, 128 pids, user namespace): median {} over {RUNS} runs",
        ms(ours_m)
    );
    let (with_m, without_m) = (median(with_ns), median(without_ns));
    println!(
        "user namespace: {} with, {} without (--no-userns), alternating, {RUNS} runs each: {:+.2} ms",
        ms(with_m),
        ms(without_m),
        (with_m.as_secs_f64() - without_m.as_secs_f64()) * 1000.0
    );
    if !theirs.is_empty() {
        let theirs_m = median(theirs);
        println!(
            "lxc-execute /bin/true, same limits and namespaces:   median {} over {RUNS} runs",
            ms(theirs_m)
        );
        println!(
            "ratio stockade / lxc-execute: {:.2}",
            ours_m.as_secs_f64() / theirs_m.as_secs_f64()
        );
    }
    println!(
        "stockade jail run with a fresh 1 GiB volume:        median {} over {RUNS} runs",
        ms(median(vol))
    );
    let ours_net_m = median(ours_net);
    println!(
        "stockade jail run --net (veth, address, route):    median {} over {RUNS} runs (+{} for the network)",
        ms(ours_net_m),
        ms(ours_net_m.saturating_sub(ours_m))
    );
    if !theirs_net.is_empty() {
        let theirs_net_m = median(theirs_net);
        println!(
            "lxc-execute with a veth on the same bridge:          median {} over {RUNS} runs",
            ms(theirs_net_m)
        );
        println!(
            "ratio stockade / lxc-execute, with network: {:.2}",
            ours_net_m.as_secs_f64() / theirs_net_m.as_secs_f64()
        );
    }
    if !bridge_existed {
        let _ = Command::new("ip").args(["link", "del", "stk0"]).status();
        let _ = Command::new("nft")
            .args(["delete", "table", "inet", "stockade"])
            .status();
    }

    idle_jails(dir.path(), 1000);
    for entry in std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
    {
        let _ = std::fs::remove_dir(entry.path().join("stockade-bench-cli"));
    }
}

fn which(p: &str) -> Option<std::path::PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(p))
        .find(|p| p.is_file())
}

/// Starts `n` persistent idle system jails through the engine (as the agent
/// does: each with a user namespace), reports time and memory, and removes
/// them.
fn idle_jails(dir: &Path, n: usize) {
    let mut cfg = EngineConfig::new(dir.join("idle"), dir.join("state/images"));
    cfg.cgroup_parent = "stockade-bench".into();
    let engine = Engine::new(cfg).unwrap();
    let before = mem_available_kib();
    let names: Vec<JailName> = (0..n)
        .map(|i| JailName::parse(&format!("idle-{i}")).unwrap())
        .collect();
    let t = Instant::now();
    for name in &names {
        engine.create(&common::idle_jail(name, None)).unwrap();
        engine.start(name).unwrap();
    }
    let took = t.elapsed();
    std::thread::sleep(Duration::from_secs(2));
    let used = before.saturating_sub(mem_available_kib());
    println!(
        "{n} idle system jails created and started in {:.2} s ({:.2} ms each); host memory used {} MiB ({} KiB per jail); RSS of the managing process {} MiB",
        took.as_secs_f64(),
        took.as_secs_f64() * 1000.0 / f64::from(u32::try_from(n).unwrap()),
        used / 1024,
        used / u64::try_from(n).unwrap(),
        rss_kib(std::process::id()) / 1024
    );
    let t = Instant::now();
    for name in &names {
        engine.destroy(name).unwrap();
    }
    println!("{n} jails destroyed in {:.2} s", t.elapsed().as_secs_f64());
    for entry in std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
    {
        let _ = std::fs::remove_dir(entry.path().join("stockade-bench"));
    }
}
