//! `stockade doctor`: what this host offers for jails, and what is missing.

use std::path::Path;
use std::process::{Command, ExitCode};

use crate::config::Config;

struct Check {
    what: &'static str,
    ok: bool,
    detail: String,
    fix: &'static str,
}

fn which(program: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Describes the cgroup layout from /proc/self/mountinfo: v2, v1 or hybrid,
/// and the controllers jails need.
fn cgroups() -> Check {
    let mountinfo = read("/proc/self/mountinfo");
    let mut v1 = Vec::new();
    let mut v2_root = None;
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let mount_point = left.split(' ').nth(4).unwrap_or("");
        let mut r = right.split(' ');
        let fstype = r.next().unwrap_or("");
        let opts = r.nth(1).unwrap_or("");
        match fstype {
            "cgroup2" => v2_root = Some(mount_point.to_owned()),
            "cgroup" => v1.extend(
                opts.split(',')
                    .filter(|o| {
                        [
                            "cpu", "cpuacct", "memory", "pids", "blkio", "cpuset", "freezer",
                            "devices",
                        ]
                        .contains(o)
                    })
                    .map(str::to_owned),
            ),
            _ => {}
        }
    }
    let need = ["cpu", "memory", "pids"];
    let (layout, have): (String, Vec<String>) = match (&v2_root, v1.is_empty()) {
        (Some(root), true) => {
            let ctl = read(&format!("{root}/cgroup.controllers"));
            (
                "v2".into(),
                ctl.split_whitespace().map(str::to_owned).collect(),
            )
        }
        (Some(root), false) => (format!("hybrid (v1 controllers, v2 at {root})"), v1.clone()),
        (None, false) => ("v1".into(), v1.clone()),
        (None, true) => ("none".into(), Vec::new()),
    };
    let missing: Vec<&str> = need
        .iter()
        .copied()
        .filter(|n| !have.iter().any(|h| h == n))
        .collect();
    let io = if have.iter().any(|h| h == "io" || h == "blkio") {
        ""
    } else {
        "; no io/blkio (IO limits off)"
    };
    Check {
        what: "cgroups",
        ok: missing.is_empty(),
        detail: if missing.is_empty() {
            format!("{layout}: {}{io}", have.join(" "))
        } else {
            format!("{layout}: missing {}", missing.join(", "))
        },
        fix: "kernel with cgroup controllers (boot option)",
    }
}

fn file_check(what: &'static str, path: &str, fix: &'static str) -> Check {
    let ok = Path::new(path).exists();
    Check {
        what,
        ok,
        detail: if ok {
            path.to_owned()
        } else {
            format!("{path} missing")
        },
        fix,
    }
}

fn program_check(what: &'static str, program: &str, fix: &'static str) -> Check {
    match which(program) {
        Some(p) => Check {
            what,
            ok: true,
            detail: p.display().to_string(),
            fix,
        },
        None => Check {
            what,
            ok: false,
            detail: format!("{program} not found"),
            fix,
        },
    }
}

/// Runs `script` in a throwaway network namespace (nothing it creates
/// outlives it); needs root.
fn probe_in_netns(what: &'static str, script: &str, ok_detail: &str, fix: &'static str) -> Check {
    if !nix::unistd::Uid::effective().is_root() {
        return Check {
            what,
            ok: false,
            detail: "not checked: needs root".into(),
            fix,
        };
    }
    let out = Command::new("unshare")
        .args(["-n", "sh", "-c", script])
        .output();
    match out {
        Ok(o) if o.status.success() => Check {
            what,
            ok: true,
            detail: ok_detail.into(),
            fix,
        },
        Ok(o) => Check {
            what,
            ok: false,
            detail: String::from_utf8_lossy(&o.stderr)
                .lines()
                .next()
                .unwrap_or("failed")
                .to_string(),
            fix,
        },
        Err(e) => Check {
            what,
            ok: false,
            detail: format!("unshare: {e}"),
            fix,
        },
    }
}

fn collect(cfg: &Config) -> Vec<Check> {
    let filesystems = read("/proc/filesystems");
    let userns = read("/proc/sys/user/max_user_namespaces")
        .trim()
        .parse::<u64>()
        .unwrap_or(0);
    let seccomp = read("/proc/self/status")
        .lines()
        .any(|l| l.starts_with("Seccomp:"));
    let veth = Path::new("/sys/module/veth").exists()
        || Command::new("ip")
            .args(["link", "help", "veth"])
            .output()
            .is_ok();
    let mut checks = vec![
        cgroups(),
        Check {
            what: "overlayfs",
            ok: filesystems.contains("overlay"),
            detail: if filesystems.contains("overlay") {
                "supported".into()
            } else {
                "not in /proc/filesystems".into()
            },
            fix: "kernel with CONFIG_OVERLAY_FS",
        },
        file_check(
            "loop devices",
            "/dev/loop-control",
            "kernel with CONFIG_BLK_DEV_LOOP",
        ),
        file_check(
            "network namespaces",
            "/proc/self/ns/net",
            "kernel with CONFIG_NET_NS",
        ),
        Check {
            what: "veth",
            ok: veth,
            detail: if veth {
                "available".into()
            } else {
                "unknown".into()
            },
            fix: "kernel with CONFIG_VETH; iproute2",
        },
        probe_in_netns(
            "bridge",
            "ip link add stkprobe type bridge && ip link add stkv0 type veth peer name stkv1 \
             && ip link set stkv0 master stkprobe && bridge link set dev stkv0 isolated on",
            "bridges with port isolation",
            "kernel with CONFIG_BRIDGE; iproute2",
        ),
        program_check("tc", "tc", "iproute2"),
        probe_in_netns(
            "tc tbf",
            "ip link set lo up && tc qdisc add dev lo root tbf rate 1mbit burst 16k latency 50ms",
            "tbf rate limits",
            "kernel with CONFIG_NET_SCH_TBF; iproute2",
        ),
        program_check("nft", "nft", "nftables"),
        probe_in_netns(
            "nftables",
            "nft 'add table inet probe; add chain inet probe o { type nat hook output priority -100; }; \
             add rule inet probe o fib daddr type local tcp dport 1 dnat ip to 10.0.0.1'",
            "filter, NAT and fib",
            "kernel with CONFIG_NF_TABLES, NFT_NAT, NFT_FIB; nftables",
        ),
        Check {
            what: "user namespaces",
            ok: userns > 0,
            detail: format!("max_user_namespaces = {userns}"),
            fix: "sysctl user.max_user_namespaces > 0",
        },
        Check {
            what: "seccomp",
            ok: seccomp,
            detail: if seccomp {
                "supported".into()
            } else {
                "not supported".into()
            },
            fix: "kernel with CONFIG_SECCOMP_FILTER",
        },
        program_check("busybox", "busybox", "busybox-static"),
        program_check("mkfs.ext4", "mkfs.ext4", "e2fsprogs"),
        program_check("resize2fs", "resize2fs", "e2fsprogs"),
    ];
    match crate::cluster::find_bindir() {
        Ok(dir) => checks.push(Check {
            what: "PostgreSQL binaries",
            ok: true,
            detail: dir.display().to_string(),
            fix: "postgresql",
        }),
        Err(_) => checks.push(Check {
            what: "PostgreSQL binaries",
            ok: false,
            detail: "initdb/postgres not found".into(),
            fix: "postgresql",
        }),
    }
    checks.push(storage_check(&cfg.state_dir));
    checks.push(checkpoint_check());
    checks.push(database_check(cfg));
    checks
}

/// Whether this host could move jails live (CRIU), and why not: jails
/// move cold (stopped, shipped through the backup target, started).
fn checkpoint_check() -> Check {
    let detail = format!(
        "jails move cold (stopped, shipped through the backup target, started): {}",
        stockade_agent::cold_moves_because(true)
    );
    Check {
        what: "checkpoint/restore",
        ok: true,
        detail,
        fix: "",
    }
}

/// Which storage driver volumes get in the state folder: copy-on-write
/// clones where its filesystem shares extents, sparse copies elsewhere.
fn storage_check(state_dir: &Path) -> Check {
    // The folder itself, or the nearest one above it that exists yet.
    let probe_dir = state_dir
        .ancestors()
        .find(|d| d.is_dir())
        .unwrap_or(Path::new("."));
    let driver = stockade_jail::StorageDriver::detect(probe_dir);
    let detail = match driver {
        stockade_jail::StorageDriver::Reflink => format!(
            "{} in {}: a snapshot takes constant time and no room until the jail writes",
            driver.name(),
            state_dir.display()
        ),
        stockade_jail::StorageDriver::Copy => format!(
            "{} in {}: a snapshot copies what the volume holds; put the state folder on btrfs or XFS (reflink) for copy-on-write",
            driver.name(),
            state_dir.display()
        ),
    };
    Check {
        what: "volume snapshots",
        ok: true,
        detail,
        fix: "",
    }
}

fn database_check(cfg: &Config) -> Check {
    let Some(url) = cfg.database_url.clone() else {
        return Check {
            what: "PostgreSQL server",
            ok: true,
            detail: format!("managed by `stockade up` in {}", cfg.pg_data.display()),
            fix: "postgresql",
        };
    };
    let reachable = crate::runtime()
        .map(|rt| {
            rt.block_on(async {
                stockade_store::connect(&url, 1, std::time::Duration::from_secs(3))
                    .await
                    .map(|_| ())
            })
        })
        .and_then(|r| r);
    match reachable {
        Ok(()) => Check {
            what: "PostgreSQL server",
            ok: true,
            detail: "DATABASE_URL reachable".into(),
            fix: "postgresql",
        },
        Err(e) => Check {
            what: "PostgreSQL server",
            ok: false,
            detail: format!("{e:#}"),
            fix: "check DATABASE_URL",
        },
    }
}

/// Prints the table; exits non-zero when something is missing.
pub fn run(cfg: &Config) -> ExitCode {
    let checks = collect(cfg);
    let width = checks.iter().map(|c| c.what.len()).max().unwrap_or(0);
    println!("{:width$}  {:7}  DETAIL (FIX)", "CHECK", "STATUS");
    for c in &checks {
        let status = if c.ok { "ok" } else { "MISSING" };
        let fix = if c.ok {
            String::new()
        } else {
            format!("  (fix: {})", c.fix)
        };
        println!("{:width$}  {:7}  {}{}", c.what, status, c.detail, fix);
    }
    let missing = checks.iter().filter(|c| !c.ok).count();
    if missing == 0 {
        println!("\nthis host has everything Stockade needs");
        ExitCode::SUCCESS
    } else {
        println!("\n{missing} missing; install the packages named above");
        ExitCode::FAILURE
    }
}
