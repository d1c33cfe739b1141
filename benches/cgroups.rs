//! A jail's cgroup, side by side: the engine's own group handling against
//! cgroups-rs, the crate the design names, doing the same work. Each round
//! makes a group in the controllers a jail uses (`cpu`, `cpuacct`, `memory`,
//! `pids`, `blkio`, `devices` on v1; the one group on v2), puts the same
//! limits on it (CPU quota, memory and memory+swap, pids, and on v1 the
//! device allow-list) and removes it again; the two alternate, 300 rounds
//! each. A jail's start pays the making and the limits; its removal the rest.
//!
//! Then each raises the memory limit of a live group from 64 to 128 MiB, as a
//! quota change does, and the limit is read back from the kernel.
//!
//! Run as root: `cargo bench --bench cgroups`.

use std::path::Path;
use std::time::{Duration, Instant};

use cgroups_rs::fs::devices::{DevicePermissions, DeviceType};
use cgroups_rs::fs::{Cgroup, DeviceResource, MaxValue, Resources, hierarchies};
use stockade_jail::{CgroupVersion, Cgroups, Limits};

const ROUNDS: usize = 300;
const PARENT: &str = "stockade-cgroup-bench";

/// The devices a jail may use (null, zero, full, random, urandom, tty,
/// ptmx, its own pseudo-terminals), as the engine allows them.
const ALLOWED: [(i64, i64); 8] = [
    (1, 3),
    (1, 5),
    (1, 7),
    (1, 8),
    (1, 9),
    (5, 0),
    (5, 2),
    (136, -1),
];

fn limits() -> Limits {
    limits_of(256 << 20)
}

fn limits_of(memory_bytes: u64) -> Limits {
    Limits {
        cpu_millicores: 500,
        memory_bytes,
        pids: 128,
        ..Limits::default()
    }
}

/// The same limits as cgroups-rs resources.
fn resources(v1: bool) -> Resources {
    resources_of(v1, 256 << 20)
}

fn resources_of(v1: bool, memory: i64) -> Resources {
    let mut r = Resources::default();
    r.cpu.quota = Some(50_000);
    r.cpu.period = Some(100_000);
    r.memory.memory_hard_limit = Some(memory);
    r.memory.memory_swap_limit = Some(memory);
    r.pid.maximum_number_of_processes = Some(MaxValue::Value(128));
    if v1 {
        let all = vec![
            DevicePermissions::Read,
            DevicePermissions::Write,
            DevicePermissions::MkNod,
        ];
        r.devices.devices.push(DeviceResource {
            allow: false,
            devtype: DeviceType::All,
            major: -1,
            minor: -1,
            access: all.clone(),
        });
        for (major, minor) in ALLOWED {
            r.devices.devices.push(DeviceResource {
                allow: true,
                devtype: DeviceType::Char,
                major,
                minor,
                access: all.clone(),
            });
        }
    }
    r
}

/// Times (make and limit, remove) of one group made by the engine's code.
fn ours(cgroups: &Cgroups, name: &str) -> (Duration, Duration) {
    let t = Instant::now();
    cgroups.ensure(name).expect("make the group");
    cgroups.set(name, &limits(), None).expect("limit the group");
    let made = t.elapsed();
    let t = Instant::now();
    cgroups.remove(name).expect("remove the group");
    (made, t.elapsed())
}

/// The same through cgroups-rs: the hierarchy is found anew for each group,
/// as its handle takes it by value.
fn theirs(controllers: &[String], v1: bool, name: &str) -> (Duration, Duration) {
    let t = Instant::now();
    let cg = Cgroup::new_with_specified_controllers(
        hierarchies::auto(),
        format!("{PARENT}/{name}"),
        Some(controllers.to_vec()),
    )
    .expect("make the group");
    cg.apply(&resources(v1)).expect("limit the group");
    let made = t.elapsed();
    let t = Instant::now();
    cg.delete().expect("remove the group");
    (made, t.elapsed())
}

/// The memory limit of a live group raised from 64 to 128 MiB by each: what
/// the kernel then holds, and whether the call reported an error.
fn raise(cgroups: &Cgroups, controllers: &[String], v1: bool) {
    let file = if v1 {
        "memory/{PARENT}/{name}/memory.limit_in_bytes"
    } else {
        "{PARENT}/{name}/memory.max"
    };
    let read = |name: &str| {
        let path = file.replace("{PARENT}", PARENT).replace("{name}", name);
        std::fs::read_to_string(Path::new("/sys/fs/cgroup").join(path))
            .map(|t| t.trim().parse::<u64>().unwrap_or(0) >> 20)
            .unwrap_or(0)
    };
    cgroups.ensure("raise-a").expect("make the group");
    cgroups
        .set("raise-a", &limits_of(64 << 20), None)
        .expect("limit the group");
    let ours = cgroups.apply("raise-a", &limits_of(128 << 20), None);
    println!(
        "  raising a live group's memory from 64 to 128 MiB: engine reports {}, the kernel holds {} MiB",
        if ours.is_ok() { "success" } else { "an error" },
        read("raise-a")
    );
    cgroups.remove("raise-a").expect("remove the group");
    let cg = Cgroup::new_with_specified_controllers(
        hierarchies::auto(),
        format!("{PARENT}/raise-b"),
        Some(controllers.to_vec()),
    )
    .expect("make the group");
    cg.apply(&resources_of(v1, 64 << 20))
        .expect("limit the group");
    let theirs = cg.apply(&resources_of(v1, 128 << 20));
    println!(
        "  the same through cgroups-rs: it reports {}, the kernel holds {} MiB",
        if theirs.is_ok() {
            "success"
        } else {
            "an error"
        },
        read("raise-b")
    );
    cg.delete().expect("remove the group");
}

fn ms(mut v: Vec<Duration>, p: f64) -> f64 {
    v.sort();
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let i = (((v.len() - 1) as f64) * p).round() as usize;
    v[i].as_secs_f64() * 1000.0
}

fn main() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("cgroups bench: needs root; skipped");
        return;
    }
    let root = Path::new("/sys/fs/cgroup");
    let cgroups = Cgroups::detect(root, PARENT);
    let v1 = cgroups.version() == CgroupVersion::V1;
    let controllers: Vec<String> = if v1 {
        ["cpu", "cpuacct", "memory", "pids", "blkio", "devices"]
            .into_iter()
            .filter(|c| root.join(c).is_dir())
            .map(str::to_owned)
            .collect()
    } else {
        vec!["cpu".into(), "memory".into(), "pids".into()]
    };
    let (mut ours_made, mut ours_gone, mut theirs_made, mut theirs_gone) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..ROUNDS {
        let name = format!("j{i}");
        // Alternate which goes first, so neither always runs on a warmer cache.
        let run_ours = |made: &mut Vec<Duration>, gone: &mut Vec<Duration>| {
            let (m, g) = ours(&cgroups, &format!("{name}-a"));
            made.push(m);
            gone.push(g);
        };
        if i % 2 == 0 {
            run_ours(&mut ours_made, &mut ours_gone);
            let (m, g) = theirs(&controllers, v1, &format!("{name}-b"));
            theirs_made.push(m);
            theirs_gone.push(g);
        } else {
            let (m, g) = theirs(&controllers, v1, &format!("{name}-b"));
            theirs_made.push(m);
            theirs_gone.push(g);
            run_ours(&mut ours_made, &mut ours_gone);
        }
    }
    // The parents both made, in every hierarchy.
    for dir in cgroups.dirs("") {
        let _ = std::fs::remove_dir(&dir);
    }
    if !v1 {
        let _ = std::fs::remove_dir(root.join(PARENT));
    }
    println!(
        "cgroup {} with {} ({ROUNDS} rounds each, alternating), medians (p90):",
        if v1 { "v1" } else { "v2" },
        controllers.join(", ")
    );
    let (om, tm) = (ms(ours_made.clone(), 0.5), ms(theirs_made.clone(), 0.5));
    println!(
        "  make and limit a group: engine {om:.3} ms ({:.3}), cgroups-rs {tm:.3} ms ({:.3}): {:+.3} ms per start",
        ms(ours_made, 0.9),
        ms(theirs_made, 0.9),
        tm - om
    );
    println!(
        "  remove it: engine {:.3} ms ({:.3}), cgroups-rs {:.3} ms ({:.3})",
        ms(ours_gone.clone(), 0.5),
        ms(ours_gone, 0.9),
        ms(theirs_gone.clone(), 0.5),
        ms(theirs_gone, 0.9)
    );
    raise(&cgroups, &controllers, v1);
    for dir in cgroups.dirs("") {
        let _ = std::fs::remove_dir(&dir);
    }
    if !v1 {
        let _ = std::fs::remove_dir(root.join(PARENT));
    }
}
