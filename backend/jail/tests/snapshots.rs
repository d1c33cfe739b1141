//! Root-only tests of volume snapshots: what a snapshot saw comes back on
//! restore, whatever the jail wrote after it is gone, and on a filesystem
//! that shares extents a snapshot takes no room of its own.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use stockade_jail::{JailError, JailKind, JailName, Limits, StorageDriver};

const SLEEPER: &[&str] = &["sleep", "600"];

fn sh(f: &Fixture, name: &JailName, script: &str) -> i32 {
    f.engine
        .exec(name, &["sh".into(), "-c".into(), script.into()])
        .unwrap()
}

fn limits() -> Limits {
    Limits {
        disk_bytes: 256 << 20,
        ..small_limits()
    }
}

/// A file's checksum inside the jail; `None` when it is not there.
fn sum(f: &Fixture, name: &JailName, path: &str) -> Option<String> {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "sha256sum /proc/{}/root{path} 2>/dev/null",
            match f.engine.status(name).unwrap() {
                Some(stockade_jail::JailStatus::Running { pid }) => pid,
                other => panic!("{name} is not running: {other:?}"),
            }
        ))
        .output()
        .unwrap();
    let s = String::from_utf8_lossy(&out.stdout);
    s.split_whitespace().next().map(str::to_owned)
}

#[test]
fn a_restored_volume_holds_what_its_snapshot_saw() {
    if !root_or_skip("a_restored_volume_holds_what_its_snapshot_saw") {
        return;
    }
    let f = Fixture::new();
    let mut spec = f.spec("snap", JailKind::System, SLEEPER, limits());
    spec.user_namespace = true;
    f.engine.create(&spec).unwrap();
    f.engine.start(&spec.name).unwrap();
    assert_eq!(
        sh(
            &f,
            &spec.name,
            "mkdir -p /data && dd if=/dev/urandom of=/data/keep bs=64k count=40 2>/dev/null && \
             chown 33:33 /data/keep"
        ),
        0
    );
    let kept = sum(&f, &spec.name, "/data/keep").expect("the file was written");

    // Taken while the jail runs and writes: frozen for the copy, the
    // snapshot is a clean filesystem (the volume has no journal to replay,
    // so a copy of a changing image would not be).
    assert_eq!(
        sh(
            &f,
            &spec.name,
            "mkdir -p /w && (i=0; while :; do dd if=/dev/urandom of=/w/f$((i % 40)) bs=64k count=4 \
             2>/dev/null; rm -f /w/f$(((i + 20) % 40)); i=$((i + 1)); done) >/dev/null 2>&1 &"
        ),
        0
    );
    std::thread::sleep(Duration::from_millis(300));
    let snap = f.engine.snapshot(&spec.name, "s1").unwrap();
    let image = f
        .state_dir()
        .join("jails")
        .join(spec.name.as_str())
        .join("snapshots/s1.img");
    let fsck = Command::new("e2fsck")
        .arg("-fn")
        .arg(&image)
        .output()
        .unwrap();
    assert!(
        fsck.status.success(),
        "the snapshot is a consistent filesystem: {}",
        String::from_utf8_lossy(&fsck.stdout)
    );
    assert!(
        snap.bytes >= 2 << 20,
        "the snapshot holds the 2.5 MiB written: {} bytes",
        snap.bytes
    );
    assert_eq!(f.engine.snapshot(&spec.name, "s1").unwrap(), snap);
    assert_eq!(
        sh(&f, &spec.name, "rm /data/keep && echo later > /data/later"),
        0
    );

    // A running jail is not restored under its feet.
    let err = f.engine.restore_snapshot(&spec.name, "s1").unwrap_err();
    assert!(matches!(err, JailError::Invalid { .. }), "{err}");
    f.engine.stop(&spec.name, Duration::from_secs(1)).unwrap();
    // Bad ids and missing snapshots are refused, and change nothing.
    let err = f.engine.restore_snapshot(&spec.name, "../s1").unwrap_err();
    assert!(matches!(err, JailError::Invalid { .. }), "{err}");
    let err = f.engine.restore_snapshot(&spec.name, "gone").unwrap_err();
    assert!(matches!(err, JailError::NotFound(_)), "{err}");
    f.engine.start(&spec.name).unwrap();
    assert_eq!(sh(&f, &spec.name, "test -f /data/later"), 0);
    f.engine.stop(&spec.name, Duration::from_secs(1)).unwrap();

    f.engine.restore_snapshot(&spec.name, "s1").unwrap();
    f.engine.create(&spec).unwrap();
    f.engine.update_limits(&spec.name, &spec.limits).unwrap();
    f.engine.start(&spec.name).unwrap();
    assert_eq!(sum(&f, &spec.name, "/data/keep").as_deref(), Some(&*kept));
    assert_eq!(
        sh(&f, &spec.name, "test ! -e /data/later"),
        0,
        "what was written after the snapshot is gone"
    );
    // Owned as the jail saw it, and writable again.
    assert_eq!(
        sh(
            &f,
            &spec.name,
            "[ \"$(stat -c %u /data/keep)\" = 33 ] && echo again > /data/again"
        ),
        0
    );
    assert_eq!(
        f.engine
            .snapshots(&spec.name)
            .unwrap()
            .iter()
            .map(|s| s.id.as_str())
            .collect::<Vec<_>>(),
        ["s1"]
    );
    f.engine.delete_snapshot(&spec.name, "s1").unwrap();
    f.engine.delete_snapshot(&spec.name, "s1").unwrap();
    assert!(f.engine.snapshots(&spec.name).unwrap().is_empty());
    f.engine.destroy(&spec.name).unwrap();
    assert!(f.leftovers().is_empty(), "{:?}", f.leftovers());
}

/// A btrfs filesystem on a loop file, mounted on a temporary folder;
/// unmounted and detached when dropped.
struct Btrfs {
    dir: tempfile::TempDir,
    device: String,
}

impl Btrfs {
    fn make(bytes: u64) -> Option<Btrfs> {
        let mkfs = [
            "/usr/sbin/mkfs.btrfs",
            "/sbin/mkfs.btrfs",
            "/usr/bin/mkfs.btrfs",
        ]
        .into_iter()
        .find(|p| Path::new(p).exists())?;
        let dir = tempfile::Builder::new()
            .prefix("stockade-btrfs")
            .tempdir()
            .unwrap();
        let file = dir.path().join("pool.img");
        std::fs::File::create(&file)
            .unwrap()
            .set_len(bytes)
            .unwrap();
        assert!(
            Command::new(mkfs)
                .args(["-q", "-f"])
                .arg(&file)
                .status()
                .unwrap()
                .success()
        );
        let out = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&file)
            .output()
            .unwrap();
        assert!(out.status.success());
        let device = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "btrfs", &device])
            .arg(&mnt)
            .status()
            .unwrap();
        let b = Btrfs { dir, device };
        assert!(mounted.success(), "mounting the test btrfs failed");
        std::fs::set_permissions(&mnt, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        Some(b)
    }

    fn mount_point(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }

    /// Bytes in use on the filesystem (after a sync).
    fn used(&self) -> u64 {
        let _ = Command::new("sync").status();
        let s = nix::sys::statvfs::statvfs(&self.mount_point()).unwrap();
        (s.blocks() - s.blocks_free()) * s.fragment_size()
    }
}

impl Drop for Btrfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.mount_point()).status();
        let _ = Command::new("losetup").args(["-d", &self.device]).status();
    }
}

#[test]
fn on_a_filesystem_that_shares_extents_a_snapshot_is_a_clone() {
    if !root_or_skip("on_a_filesystem_that_shares_extents_a_snapshot_is_a_clone") {
        return;
    }
    let Some(pool) = Btrfs::make(2 << 30) else {
        panic!("mkfs.btrfs is missing: the test script installs btrfs-progs");
    };
    let state = pool.mount_point().join("state");
    let f = Fixture::with_config(|cfg| cfg.state_dir = state.clone());
    assert_eq!(f.engine.storage_driver(), StorageDriver::Reflink);
    let spec = f.spec(
        "clone",
        JailKind::System,
        SLEEPER,
        Limits {
            disk_bytes: 1 << 30,
            ..small_limits()
        },
    );
    f.engine.create(&spec).unwrap();
    f.engine.start(&spec.name).unwrap();
    assert_eq!(
        sh(
            &f,
            &spec.name,
            "dd if=/dev/urandom of=/big bs=1M count=200 2>/dev/null && sync"
        ),
        0
    );
    let big = sum(&f, &spec.name, "/big").unwrap();
    let before = pool.used();
    let started = Instant::now();
    f.engine.snapshot(&spec.name, "s1").unwrap();
    let took = started.elapsed();
    let grown = pool.used().saturating_sub(before);
    eprintln!("a clone of 200 MiB used took {took:?} and {grown} bytes");
    assert!(
        grown < 20 << 20,
        "the clone shares the volume's 200 MiB, yet took {grown} bytes more"
    );
    assert_eq!(sh(&f, &spec.name, "rm /big && sync"), 0);
    f.engine.stop(&spec.name, Duration::from_secs(1)).unwrap();
    f.engine.restore_snapshot(&spec.name, "s1").unwrap();
    f.engine.create(&spec).unwrap();
    f.engine.start(&spec.name).unwrap();
    assert_eq!(sum(&f, &spec.name, "/big").as_deref(), Some(&*big));
    f.engine.destroy(&spec.name).unwrap();
    assert!(f.leftovers().is_empty(), "{:?}", f.leftovers());
    drop(f);
    drop(pool);
}
