//! Root-only tests of jails' user namespaces: each jail's root is an
//! unprivileged host uid of a range no other jail holds, and a jail's
//! volume follows it when its user namespace is turned on or off.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::Duration;

use common::*;
use stockade_jail::{JailKind, JailName, JailStatus, Limits, UID_RANGE};

const SLEEPER: &[&str] = &["sleep", "600"];

fn sh(f: &Fixture, name: &JailName, script: &str) -> i32 {
    f.engine
        .exec(name, &["sh".into(), "-c".into(), script.into()])
        .unwrap()
}

/// The host uid and gid the jail's command (the init's child) runs as.
fn command_ids(f: &Fixture, name: &JailName) -> (u32, u32) {
    let Some(JailStatus::Running { pid }) = f.engine.status(name).unwrap() else {
        panic!("{name} is not running");
    };
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap();
    let command = children
        .split_whitespace()
        .next()
        .expect("the command runs");
    let status = std::fs::read_to_string(format!("/proc/{command}/status")).unwrap();
    let id = |field: &str| -> u32 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.split_whitespace().next())
            .unwrap()
            .parse()
            .unwrap()
    };
    (id("Uid:"), id("Gid:"))
}

fn range_of(f: &Fixture, name: &JailName) -> Option<u32> {
    f.engine
        .uid_ranges()
        .unwrap()
        .into_iter()
        .find_map(|(base, jail)| (jail == name.as_str()).then_some(base))
}

fn upper(f: &Fixture, name: &JailName, path: &str) -> PathBuf {
    f.state_dir()
        .join("jails")
        .join(name.as_str())
        .join("volume/upper")
        .join(path)
}

fn owner(path: &PathBuf) -> (u32, u32, u32) {
    let m = std::fs::symlink_metadata(path).unwrap();
    (m.uid(), m.gid(), m.mode() & 0o7777)
}

#[test]
fn a_jail_made_without_a_user_namespace_is_moved_into_a_range_and_back() {
    if !root_or_skip("a_jail_made_without_a_user_namespace_is_moved_into_a_range_and_back") {
        return;
    }
    let f = Fixture::new();
    let limits = Limits {
        disk_bytes: 64 << 20,
        ..small_limits()
    };
    let mut spec = f.spec("shift", JailKind::System, SLEEPER, limits);
    spec.user_namespace = false;
    f.engine.create(&spec).unwrap();
    f.engine.start(&spec.name).unwrap();
    assert_eq!(command_ids(&f, &spec.name), (0, 0), "no user namespace yet");
    assert_eq!(
        sh(
            &f,
            &spec.name,
            "mkdir -p /srv/data && echo hello > /srv/data/f && chown 33:34 /srv/data/f \
             && ln -s /etc/passwd /srv/data/link && touch /srv/data/tool && chmod 4755 /srv/data/tool"
        ),
        0
    );
    assert_eq!(owner(&upper(&f, &spec.name, "srv/data/f")), (33, 34, 0o644));

    // Asked for while it runs: nothing changes until it is next started.
    spec.user_namespace = true;
    f.engine.create(&spec).unwrap();
    assert_eq!(command_ids(&f, &spec.name), (0, 0));
    f.engine.stop(&spec.name, Duration::from_secs(1)).unwrap();
    f.engine.start(&spec.name).unwrap();
    let base = range_of(&f, &spec.name).expect("the jail holds a range");
    assert!(base >= f.engine.config().uid_base);
    assert_eq!(command_ids(&f, &spec.name), (base, base));
    // On the host, the volume's files moved into the jail's range; the
    // host file the link names did not, and the set-user-ID bit stayed.
    assert_eq!(
        owner(&upper(&f, &spec.name, "srv/data/f")),
        (base + 33, base + 34, 0o644)
    );
    assert_eq!(owner(&upper(&f, &spec.name, "srv/data")).0, base);
    assert_eq!(owner(&upper(&f, &spec.name, "srv/data/link")).0, base);
    assert_eq!(
        owner(&upper(&f, &spec.name, "srv/data/tool")),
        (base, base, 0o4755)
    );
    assert_eq!(std::fs::metadata("/etc/passwd").unwrap().uid(), 0);
    // Inside, nothing changed: the same owners, readable and writable.
    assert_eq!(
        sh(
            &f,
            &spec.name,
            "[ $(id -u) = 0 ] && [ $(stat -c %u:%g /srv/data/f) = 33:34 ] && grep -q hello /srv/data/f \
             && echo more >> /srv/data/f && echo new > /srv/data/g && [ $(stat -c %u /srv/data/g) = 0 ] \
             && [ $(stat -c %u /srv/data/tool) = 0 ]"
        ),
        0
    );
    assert_eq!(owner(&upper(&f, &spec.name, "srv/data/g")).0, base);
    // A file the node writes into the jail (an upload) is the jail root's too.
    f.engine
        .write_file(&spec.name, "/srv/data", "up", b"uploaded")
        .unwrap();
    assert_eq!(owner(&upper(&f, &spec.name, "srv/data/up")).0, base);
    assert_eq!(
        sh(
            &f,
            &spec.name,
            "[ $(stat -c %u /srv/data/up) = 0 ] && echo more >> /srv/data/up"
        ),
        0
    );

    // Turned off again (a plan without user namespaces): back to host ids,
    // and the range is free.
    f.engine.stop(&spec.name, Duration::from_secs(1)).unwrap();
    spec.user_namespace = false;
    f.engine.create(&spec).unwrap();
    f.engine.start(&spec.name).unwrap();
    assert_eq!(range_of(&f, &spec.name), None);
    assert_eq!(command_ids(&f, &spec.name), (0, 0));
    assert_eq!(owner(&upper(&f, &spec.name, "srv/data/f")), (33, 34, 0o644));
    assert_eq!(owner(&upper(&f, &spec.name, "srv/data/g")).0, 0);
    assert_eq!(
        sh(
            &f,
            &spec.name,
            "[ $(stat -c %u:%g /srv/data/f) = 33:34 ] && grep -q more /srv/data/f"
        ),
        0
    );
    f.engine.destroy(&spec.name).unwrap();
    assert!(f.leftovers().is_empty(), "{:?}", f.leftovers());
}

#[test]
fn jails_get_disjoint_ranges_and_their_root_is_an_unprivileged_host_uid() {
    if !root_or_skip("jails_get_disjoint_ranges_and_their_root_is_an_unprivileged_host_uid") {
        return;
    }
    let f = Fixture::new();
    let limits = Limits {
        disk_bytes: 32 << 20,
        ..small_limits()
    };
    let mut ids = Vec::new();
    let mut names = Vec::new();
    for _ in 0..2 {
        let mut spec = f.spec("pair", JailKind::System, SLEEPER, limits);
        spec.user_namespace = true;
        f.engine.create(&spec).unwrap();
        f.engine.start(&spec.name).unwrap();
        let (uid, gid) = command_ids(&f, &spec.name);
        assert_eq!(Some(uid), range_of(&f, &spec.name));
        assert_eq!(uid, gid);
        assert!(uid >= f.engine.config().uid_base, "host uid {uid}");
        // Root inside cannot act on the host's files it might reach.
        assert_eq!(sh(&f, &spec.name, "[ $(id -u) = 0 ]"), 0);
        assert_ne!(sh(&f, &spec.name, "echo x > /proc/sys/kernel/hostname"), 0);
        ids.push(uid);
        names.push(spec.name);
    }
    assert!(
        ids[0].abs_diff(ids[1]) >= UID_RANGE,
        "ranges overlap: {ids:?}"
    );
    for name in &names {
        f.engine.destroy(name).unwrap();
    }
    assert!(f.engine.uid_ranges().unwrap().is_empty());
    assert!(f.leftovers().is_empty(), "{:?}", f.leftovers());
}

#[test]
fn a_jail_that_filled_its_disk_starts_again_and_can_free_it() {
    if !root_or_skip("a_jail_that_filled_its_disk_starts_again_and_can_free_it") {
        return;
    }
    let f = Fixture::new();
    let limits = Limits {
        disk_bytes: 32 << 20,
        ..small_limits()
    };
    let mut spec = f.spec("full", JailKind::System, SLEEPER, limits);
    spec.user_namespace = true;
    f.engine.create(&spec).unwrap();
    f.engine.start(&spec.name).unwrap();
    for round in 0..5 {
        // A file of scattered blocks (each its own extent), then every
        // block the jail may take. Written back, the scattered file's
        // extent tree takes blocks from the volume's last reserve, which
        // no process of the jail may touch.
        let fill = format!(
            "mkdir -p /r{round} && i=0; while [ $i -lt 1200 ]; do \
               dd if=/dev/zero of=/r{round}/scattered bs=4k count=1 seek=$((i * 2)) conv=notrunc 2>/dev/null; \
               i=$((i + 1)); done; \
             dd if=/dev/zero of=/r{round}/fill bs=32k 2>/dev/null; dd if=/dev/zero of=/r{round}/tail bs=4k 2>/dev/null; \
             [ \"$(df / | awk 'NR == 2 {{ print $4 }}')\" = 0 ]"
        );
        assert_eq!(
            sh(&f, &spec.name, &fill),
            0,
            "round {round}: the disk filled"
        );
        f.engine.stop(&spec.name, Duration::from_secs(1)).unwrap();
        f.engine
            .start(&spec.name)
            .unwrap_or_else(|e| panic!("round {round}: a full jail starts again: {e}"));
        assert_eq!(sh(&f, &spec.name, &format!("rm -rf /r{round}")), 0);
    }
    f.engine.destroy(&spec.name).unwrap();
    assert!(f.leftovers().is_empty(), "{:?}", f.leftovers());
}
