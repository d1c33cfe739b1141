use stockade_domain::JailKind;

use super::*;
use crate::host::fake::RecordingHost;
use crate::spec::JailSpec;
use crate::state::IdShift;

fn engine(dir: &Path, ranges: u32) -> Engine {
    let mut cfg = EngineConfig::new(dir.join("state"), dir.join("images"));
    cfg.cgroup_root = dir.join("cgroup");
    cfg.uid_ranges = ranges;
    cfg.etc_dir = dir.join("etc");
    fs::create_dir_all(dir.join("images/busybox")).unwrap();
    fs::create_dir_all(dir.join("etc")).unwrap();
    Engine::with_host(cfg, Box::<RecordingHost>::default()).unwrap()
}

fn spec(name: &str, user_namespace: bool) -> JailSpec {
    JailSpec {
        name: JailName::parse(name).unwrap(),
        hostname: JailName::parse(name).unwrap(),
        image: "busybox".into(),
        kind: JailKind::System,
        command: vec![],
        limits: Limits::default(),
        network: None,
        user_namespace,
        env: Vec::new(),
    }
}

fn base_of(e: &Engine, name: &str) -> Option<u32> {
    state::load(&e.paths(name)).unwrap().unwrap().uid_base
}

#[test]
fn ranges_are_disjoint_kept_by_a_new_engine_and_freed_by_destroy() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path(), 3);
    e.prepare(&spec("a", true), false, false).unwrap();
    e.prepare(&spec("b", true), false, false).unwrap();
    e.prepare(&spec("plain", false), false, false).unwrap();
    let (a, b) = (base_of(&e, "a").unwrap(), base_of(&e, "b").unwrap());
    assert_ne!(a, b);
    assert_eq!(base_of(&e, "plain"), None);
    // Another engine of the node (the agent after a restart) sees them.
    let e2 = engine(dir.path(), 3);
    e2.prepare(&spec("c", true), false, false).unwrap();
    let c = base_of(&e2, "c").unwrap();
    assert!(c != a && c != b, "{a} {b} {c}");
    let err = e2.prepare(&spec("d", true), false, false).unwrap_err();
    assert!(
        err.to_string().contains("no free uid range: 3 of 3 in use"),
        "{err}"
    );
    assert!(!e2.paths("d").dir.exists(), "a refused jail leaves nothing");
    // Creating again keeps the range.
    e2.prepare(&spec("a", true), false, false).unwrap();
    assert_eq!(base_of(&e2, "a"), Some(a));
    e2.destroy(&JailName::parse("a").unwrap()).unwrap();
    e2.prepare(&spec("d", true), false, false).unwrap();
    assert_eq!(base_of(&e2, "d"), Some(a));
    let held: Vec<String> = e2
        .uid_ranges()
        .unwrap()
        .into_iter()
        .map(|(_, j)| j)
        .collect();
    let mut held = held;
    held.sort();
    assert_eq!(held, ["b", "c", "d"]);
}

#[test]
fn ranges_of_host_accounts_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path(), 2);
    // The first range overlaps a host account, the second a subordinate range.
    fs::write(
        dir.path().join("etc/passwd"),
        "svc:x:1000005:1000005::/:/bin/false\n",
    )
    .unwrap();
    fs::write(dir.path().join("etc/subgid"), "alice:1100000:65536\n").unwrap();
    let err = e
        .prepare(&spec("a", true), false, false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("no free uid range: 0 of 2 in use"), "{err}");
    assert!(err.contains("2 more overlap"), "{err}");
    fs::write(dir.path().join("etc/subgid"), "").unwrap();
    e.prepare(&spec("a", true), false, false).unwrap();
    assert_eq!(base_of(&e, "a"), Some(1_000_000 + UID_RANGE));
}

#[test]
fn records_from_before_range_files_keep_their_range() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path(), 2);
    e.prepare(&spec("old", true), false, false).unwrap();
    let old = base_of(&e, "old").unwrap();
    fs::remove_dir_all(uids::dir(&e.cfg.state_dir)).unwrap();
    let e = engine(dir.path(), 2);
    e.prepare(&spec("new", true), false, false).unwrap();
    assert_ne!(base_of(&e, "new"), Some(old));
    assert_eq!(e.uid_ranges().unwrap().len(), 2);
}

#[test]
fn a_stopped_jail_switches_its_user_namespace_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path(), 1);
    e.prepare(&spec("a", false), false, false).unwrap();
    e.prepare(&spec("a", true), false, false).unwrap();
    assert_eq!(base_of(&e, "a"), Some(1_000_000));
    assert!(
        state::load(&e.paths("a"))
            .unwrap()
            .unwrap()
            .id_shift
            .is_none()
    );
    e.prepare(&spec("a", false), false, false).unwrap();
    assert_eq!(base_of(&e, "a"), None);
    assert!(
        e.uid_ranges().unwrap().is_empty(),
        "turned off, the range is free"
    );
}

#[test]
fn a_shift_recorded_half_way_is_finished() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path(), 1);
    e.prepare(&spec("a", true), false, false).unwrap();
    let paths = e.paths("a");
    let mut rec = state::load(&paths).unwrap().unwrap();
    rec.id_shift = Some(IdShift {
        from: 1_000_000,
        to: 0,
    });
    state::save(&paths, &rec).unwrap();
    // Whatever the spec says now, the recorded shift is done first.
    e.prepare(&spec("a", true), false, false).unwrap();
    let rec = state::load(&paths).unwrap().unwrap();
    assert_eq!((rec.uid_base, rec.id_shift), (None, None));
}

mod network;
mod node;
mod repair;
