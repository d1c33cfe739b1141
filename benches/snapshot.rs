//! Snapshots as a customer waits for them: a running jail with a 1 GiB
//! volume holding 200 MiB of incompressible data is snapshotted (its
//! filesystem frozen for the copy) and, stopped, restored; 5 rounds each,
//! medians. Once with the node's state folder on a btrfs filesystem (the
//! reflink driver: copy-on-write clones), once on the host's own
//! filesystem here (ext4: the copy driver, a sparse in-kernel copy).
//!
//! Run as root: `cargo bench --bench snapshot` (btrfs-progs for the first).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use stockade_domain::{JailName, Limits};
use stockade_jail::{Engine, EngineConfig};

const ROUNDS: usize = 5;
const PARENT: &str = "stockade-bench-snapshot";

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// A btrfs filesystem on a loop file under `dir`, mounted on `dir/mnt`.
struct Btrfs {
    mnt: PathBuf,
    device: String,
}

impl Btrfs {
    fn make(dir: &Path) -> Option<Btrfs> {
        let image = dir.join("pool.img");
        std::fs::File::create(&image).ok()?.set_len(4 << 30).ok()?;
        let ok = Command::new("mkfs.btrfs")
            .args(["-q", "-f"])
            .arg(&image)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return None;
        }
        let out = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&image)
            .output()
            .ok()?;
        let device = String::from_utf8(out.stdout).ok()?.trim().to_owned();
        let mnt = dir.join("mnt");
        std::fs::create_dir_all(&mnt).ok()?;
        let b = Btrfs { mnt, device };
        Command::new("mount")
            .args(["-t", "btrfs", &b.device])
            .arg(&b.mnt)
            .status()
            .ok()?
            .success()
            .then_some(b)
    }
}

impl Drop for Btrfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mnt).status();
        let _ = Command::new("losetup").args(["-d", &self.device]).status();
    }
}

/// Snapshot and restore times (medians) of a jail in `state`.
fn measure(state: &Path, images: &Path) -> (String, Duration, Duration) {
    let mut cfg = EngineConfig::new(state, images);
    cfg.cgroup_parent = PARENT.into();
    let engine = Engine::new(cfg).unwrap();
    engine.ensure_busybox().unwrap();
    let driver = engine.storage_driver().name().to_owned();
    let name = JailName::parse("snap-bench").unwrap();
    let mut spec = common::idle_jail(&name, None);
    spec.limits = Limits {
        disk_bytes: 1 << 30,
        ..spec.limits
    };
    engine.create(&spec).unwrap();
    engine.start(&name).unwrap();
    let code = engine
        .exec(
            &name,
            &[
                "sh".into(),
                "-c".into(),
                "dd if=/dev/urandom of=/data bs=1M count=200 2>/dev/null && sync".into(),
            ],
        )
        .unwrap();
    assert_eq!(code, 0);
    let mut snaps = Vec::new();
    for i in 0..ROUNDS {
        let t = Instant::now();
        engine.snapshot(&name, &format!("s{i}")).unwrap();
        snaps.push(t.elapsed());
    }
    engine.stop(&name, Duration::ZERO).unwrap();
    let mut restores = Vec::new();
    for i in 0..ROUNDS {
        let t = Instant::now();
        engine.restore_snapshot(&name, &format!("s{i}")).unwrap();
        restores.push(t.elapsed());
    }
    engine.destroy(&name).unwrap();
    (driver, median(snaps), median(restores))
}

fn main() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("the snapshot bench needs root");
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("stockade-bench-snapshot")
        .tempdir_in("/var/tmp")
        .unwrap();
    let images = dir.path().join("images");
    match Btrfs::make(dir.path()) {
        Some(pool) => {
            let (driver, snap, restore) = measure(&pool.mnt.join("state"), &images);
            println!(
                "{driver}: snapshot of a running jail's 1 GiB volume with 200 MiB used: median {:.1} ms; restore {:.1} ms ({ROUNDS} rounds)",
                snap.as_secs_f64() * 1e3,
                restore.as_secs_f64() * 1e3
            );
            drop(pool);
        }
        None => println!(
            "no btrfs here (mkfs.btrfs from btrfs-progs): the reflink driver is not measured"
        ),
    }
    let (driver, snap, restore) = measure(&dir.path().join("state"), &images);
    println!(
        "{driver}: snapshot of a running jail's 1 GiB volume with 200 MiB used: median {:.1} ms ({:.0} MiB/s); restore {:.1} ms ({ROUNDS} rounds)",
        snap.as_secs_f64() * 1e3,
        200.0 / snap.as_secs_f64(),
        restore.as_secs_f64() * 1e3
    );
    for entry in std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
    {
        let _ = std::fs::remove_dir(entry.path().join(PARENT));
    }
}
