//! Root-only test of jail teardown: jails with user namespaces, a third of
//! them killed with SIGKILL while they start or while they run (their
//! engine process, their init, or both), are found again and removed
//! without losing a file of a shared image and without leaving a mount,
//! loop device, cgroup or process on the node.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use stockade_jail::{Condition, Engine, EngineConfig, JailKind, JailName, JailSpec, JailStatus};

/// How many jails the test runs, and how many threads start them.
const JAILS: usize = 50;
const THREADS: usize = 4;
/// Every jail's uid range lies in this many ranges from the fixture's base.
const RANGES: u32 = 64;

/// How a jail of the test ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// Started, running until it is removed.
    Runs,
    /// A transient `run` of `id` that exits by itself.
    RunsOnce,
    /// The engine process starting it is SIGKILLed while it starts.
    EngineKilledMidStart,
    /// Its init is SIGKILLed by another thread while `start` runs.
    InitKilledMidStart,
    /// Its init is SIGKILLed the moment `start` returns.
    InitKilledAfterStart,
    /// The engine process of its transient `run` is SIGKILLed mid-run.
    RunnerKilledMidRun,
    /// Its init is SIGKILLed while it runs.
    InitKilledMidRun,
}

impl Fate {
    fn of(i: usize) -> Self {
        const KILLED: [Fate; 5] = [
            Fate::EngineKilledMidStart,
            Fate::InitKilledMidStart,
            Fate::InitKilledAfterStart,
            Fate::RunnerKilledMidRun,
            Fate::InitKilledMidRun,
        ];
        if i.is_multiple_of(3) {
            KILLED[(i / 3) % KILLED.len()]
        } else if i % 10 == 1 {
            Fate::RunsOnce
        } else {
            Fate::Runs
        }
    }

    fn killed(self) -> bool {
        !matches!(self, Fate::Runs | Fate::RunsOnce)
    }
}

/// The node configuration the helper processes rebuild from the
/// environment, so that they act on the fixture's node.
fn helper_config(state: &str) -> EngineConfig {
    let mut cfg = EngineConfig::new(format!("{state}/state"), format!("{state}/images"));
    cfg.cgroup_parent = std::env::var("STOCKADE_TEST_CGROUP").unwrap();
    cfg.tmpfs_upper_bytes = 64 << 20;
    cfg.uid_base = std::env::var("STOCKADE_TEST_UID_BASE")
        .unwrap()
        .parse()
        .unwrap();
    cfg.uid_ranges = RANGES;
    cfg
}

fn spec_for(name: JailName, image: &str, i: usize) -> JailSpec {
    let mut limits = small_limits();
    // Some jails have a volume (a loop device), some a tmpfs upper layer.
    if i % 4 == 2 {
        limits.disk_bytes = 32 << 20;
    }
    JailSpec {
        hostname: name.clone(),
        name,
        image: image.into(),
        kind: JailKind::System,
        command: vec!["sleep".into(), "600".into()],
        limits,
        network: None,
        user_namespace: true,
        env: Vec::new(),
    }
}

/// Run by the test in a child process: creates and starts (or runs) one
/// jail, and is killed by the test while it does.
#[test]
#[ignore = "helper, run by killed_userns_jails_leave_images_whole_and_nothing_behind"]
fn helper_start_or_run() {
    let Ok(state) = std::env::var("STOCKADE_TEST_STATE") else {
        return;
    };
    let engine = Engine::new(helper_config(&state)).unwrap();
    let name = JailName::parse(&std::env::var("STOCKADE_TEST_JAIL").unwrap()).unwrap();
    let image = std::env::var("STOCKADE_TEST_IMAGE").unwrap();
    let i: usize = std::env::var("STOCKADE_TEST_INDEX")
        .unwrap()
        .parse()
        .unwrap();
    let spec = spec_for(name.clone(), &image, i);
    println!("ready");
    if std::env::var("STOCKADE_TEST_RUN").is_ok() {
        let _ = engine.run(&spec, &["sleep".into(), "600".into()]);
    } else {
        engine.create(&spec).unwrap();
        let _ = engine.start(&name);
    }
    // Killed before it gets here, unless it was too quick.
    std::thread::sleep(Duration::from_secs(600));
}

/// A fingerprint of every file of an image: path, type, mode, owner,
/// size, and the contents of regular files and symlinks.
fn tree_hash(root: &Path) -> BTreeMap<PathBuf, String> {
    use std::hash::Hasher;
    let mut out = BTreeMap::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let content = if m.file_type().is_symlink() {
                std::fs::read_link(&p).unwrap().display().to_string()
            } else if m.is_file() {
                let mut h = std::hash::DefaultHasher::new();
                let mut bytes = Vec::new();
                std::fs::File::open(&p)
                    .unwrap()
                    .read_to_end(&mut bytes)
                    .unwrap();
                h.write(&bytes);
                format!("{:016x}", h.finish())
            } else {
                if m.is_dir() {
                    todo.push(p.clone());
                }
                String::new()
            };
            out.insert(
                p.strip_prefix(root).unwrap().to_owned(),
                format!(
                    "mode {:o} owner {}:{} size {} {content}",
                    m.mode(),
                    m.uid(),
                    m.gid(),
                    m.len()
                ),
            );
        }
    }
    out
}

/// The `cgroup.procs` files the jail's group would have.
fn procs_files(f: &Fixture, name: &JailName) -> Vec<PathBuf> {
    ["pids", "memory", "cpu", ""]
        .iter()
        .map(|c| {
            Path::new("/sys/fs/cgroup")
                .join(c)
                .join(&f.cgroup_parent)
                .join(name.as_str())
                .join("cgroup.procs")
        })
        .collect()
}

fn pids_in(files: &[PathBuf]) -> Vec<i32> {
    files
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .flat_map(|t| {
            t.lines()
                .filter_map(|l| l.parse().ok())
                .collect::<Vec<i32>>()
        })
        .collect()
}

/// Waits until the jail's group holds at least `n` processes.
fn wait_for_pids(files: &[PathBuf], n: usize, timeout: Duration) -> Vec<i32> {
    let deadline = Instant::now() + timeout;
    loop {
        let pids = pids_in(files);
        if pids.len() >= n || Instant::now() > deadline {
            return pids;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Host processes whose real uid lies in the node's jail ranges.
fn jail_processes(base: u32) -> Vec<String> {
    let top = u64::from(base) + u64::from(RANGES) * u64::from(stockade_jail::UID_RANGE);
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(status) = std::fs::read_to_string(e.path().join("status")) else {
            continue;
        };
        let uid: Option<u64> = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok());
        if uid.is_some_and(|u| u >= u64::from(base) && u < top) {
            let head: Vec<&str> = status.lines().take(3).collect();
            out.push(format!("pid {}: {head:?}", e.file_name().to_string_lossy()));
        }
    }
    out
}

/// Builds a second image from a tarball, as an operator imports one:
/// the busybox tree plus nested folders, a hard link and odd modes.
fn import_tarred_image(f: &Fixture) {
    let stage = f.dir.path().join("stage");
    let images = f.dir.path().join("images");
    let ok = Command::new("cp")
        .arg("-a")
        .arg(images.join("busybox"))
        .arg(&stage)
        .status()
        .unwrap();
    assert!(ok.success());
    std::fs::create_dir_all(stage.join("var/lib/app/deep/deeper")).unwrap();
    std::fs::write(
        stage.join("var/lib/app/deep/deeper/data"),
        vec![7u8; 70_000],
    )
    .unwrap();
    std::fs::write(stage.join("etc/motd"), "welcome\n").unwrap();
    std::fs::hard_link(stage.join("etc/motd"), stage.join("etc/motd.link")).unwrap();
    std::fs::set_permissions(
        stage.join("var/lib/app"),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    let tarball = f.dir.path().join("tarred.tar");
    let ok = Command::new("tar")
        .arg("-cf")
        .arg(&tarball)
        .arg("-C")
        .arg(&stage)
        .arg(".")
        .status()
        .unwrap();
    assert!(ok.success());
    f.engine.import_image("tarred", &tarball).unwrap();
    std::fs::remove_dir_all(&stage).unwrap();
}

#[test]
fn killed_userns_jails_leave_images_whole_and_nothing_behind() {
    if !root_or_skip("killed_userns_jails_leave_images_whole_and_nothing_behind") {
        return;
    }
    let began = Instant::now();
    // A uid range block of this test process's own, so that jails of other
    // tests on the host are never mistaken for this test's.
    let uid_base = 2_000_000_000 + (std::process::id() % 500) * RANGES * stockade_jail::UID_RANGE;
    let f = Fixture::with_config(|cfg| {
        cfg.uid_base = uid_base;
        cfg.uid_ranges = RANGES;
    });
    import_tarred_image(&f);
    let images = ["busybox", "tarred"];
    let image_dir = f.dir.path().join("images");
    let before: Vec<_> = images
        .iter()
        .map(|i| tree_hash(&image_dir.join(i)))
        .collect();
    assert!(before.iter().all(|h| h.len() > 50), "images too small");

    let jails: Vec<(JailName, Fate, &str)> = (0..JAILS)
        .map(|i| {
            let s = f.spec("td", JailKind::System, &[], small_limits());
            (s.name, Fate::of(i), images[i % 2])
        })
        .collect();
    let next = AtomicUsize::new(0);
    let seen_pids = Mutex::new(Vec::new());
    let outcomes = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..THREADS {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some((name, fate, image)) = jails.get(i) else {
                        break;
                    };
                    let outcome = start_one(&f, i, name, *fate, image, &seen_pids);
                    outcomes
                        .lock()
                        .unwrap()
                        .push((name.clone(), *fate, outcome));
                }
            });
        }
    });
    let started = began.elapsed();
    // Mid-run: the inits of the running jails chosen for it die now.
    for (name, fate, _) in &jails {
        if *fate == Fate::InitKilledMidRun
            && let Some(JailStatus::Running { pid }) = f.engine.status(name).unwrap()
        {
            kill_and_wait(pid);
        }
    }
    for (name, fate, outcome) in outcomes.lock().unwrap().iter() {
        eprintln!("{name}: {fate:?}: {outcome}");
    }

    // An agent starting up: a new engine on the node finds every jail and,
    // wanting none of them, removes them (as its adoption step does).
    let agent = Engine::new(f.engine.config().clone()).unwrap();
    let found = agent.discover().unwrap();
    for (name, fate, _) in &jails {
        if let Some(j) = found.jails.get(name.as_str())
            && fate.killed()
        {
            assert_ne!(
                j.condition(),
                Condition::Running,
                "{name} ({fate:?}) was killed but is found running: {j:?}"
            );
        }
    }
    let killed_with_mounts = jails
        .iter()
        .filter(|(n, fate, _)| {
            fate.killed()
                && found
                    .jails
                    .get(n.as_str())
                    .is_some_and(|j| !j.mounts.is_empty())
        })
        .count();
    for name in found.jails.keys() {
        agent.destroy(&JailName::parse(name).unwrap()).unwrap();
    }
    // And by name, as the fixture's cleanup and a customer's delete do.
    for (name, _, _) in &jails {
        f.engine.destroy(name).unwrap();
    }
    let removed = began.elapsed();

    // Nothing of an image was lost or changed.
    for (image, before) in images.iter().zip(&before) {
        let after = tree_hash(&image_dir.join(image));
        let lost = before.keys().filter(|k| !after.contains_key(*k)).count();
        assert!(
            &after == before,
            "image {image} changed: {} files before, {} after, {lost} lost",
            before.len(),
            after.len()
        );
    }
    // No mount, loop device, cgroup or state of the node is left.
    let left = f.leftovers();
    assert!(left.is_empty(), "left over: {left:#?}");
    // No process of those jails: every process seen in their groups is
    // gone, and no host process runs with an id of their ranges.
    reap_children();
    for pid in seen_pids.lock().unwrap().iter() {
        let alive = std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && uid_in(l, uid_base))
        });
        assert!(!alive, "process {pid} of a jail is still there");
    }
    let procs = jail_processes(uid_base);
    assert!(procs.is_empty(), "jail processes left: {procs:#?}");
    eprintln!(
        "{JAILS} jails ({} killed, {killed_with_mounts} of them found with mounts): \
         started in {started:?}, all removed after {removed:?}",
        jails.iter().filter(|(_, f, _)| f.killed()).count()
    );
}

fn uid_in(line: &str, base: u32) -> bool {
    let top = u64::from(base) + u64::from(RANGES) * u64::from(stockade_jail::UID_RANGE);
    line.split_whitespace()
        .nth(1)
        .and_then(|u| u.parse::<u64>().ok())
        .is_some_and(|u| u >= u64::from(base) && u < top)
}

/// Reaps the exited children this process inherited as the jails'
/// subreaper (the inits and launchers of killed engine processes).
fn reap_children() {
    use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
    while let Ok(s) = waitpid(None, Some(WaitPidFlag::WNOHANG | WaitPidFlag::__WALL)) {
        if s == WaitStatus::StillAlive {
            break;
        }
    }
}

/// Starts jail `i` and kills what its fate says; returns what happened.
fn start_one(
    f: &Fixture,
    i: usize,
    name: &JailName,
    fate: Fate,
    image: &str,
    seen: &Mutex<Vec<i32>>,
) -> String {
    let procs = procs_files(f, name);
    let spec = spec_for(name.clone(), image, i);
    let remember = |pids: &[i32]| seen.lock().unwrap().extend_from_slice(pids);
    match fate {
        Fate::Runs | Fate::InitKilledMidRun | Fate::InitKilledAfterStart => {
            f.engine.create(&spec).unwrap();
            f.engine.start(name).unwrap();
            let Some(JailStatus::Running { pid }) = f.engine.status(name).unwrap() else {
                panic!("{name} is not running");
            };
            if fate == Fate::InitKilledAfterStart {
                kill_and_wait(pid);
                return format!("init {pid} killed after start");
            }
            remember(&wait_for_pids(&procs, 2, Duration::from_secs(5)));
            format!("running, init {pid}")
        }
        Fate::RunsOnce => {
            let code = f.engine.run(&spec, &["id".into()]).unwrap();
            assert_eq!(code, 0, "{name}: id failed");
            "ran id".into()
        }
        Fate::InitKilledMidStart => {
            f.engine.create(&spec).unwrap();
            let done = std::sync::atomic::AtomicBool::new(false);
            std::thread::scope(|s| {
                let killer = s.spawn(|| {
                    while !done.load(Ordering::Relaxed) {
                        if let Some(&pid) = pids_in(&procs).first() {
                            kill_and_wait(pid);
                            return Some(pid);
                        }
                        std::thread::yield_now();
                    }
                    None
                });
                let r = f.engine.start(name);
                done.store(true, Ordering::Relaxed);
                match killer.join().unwrap() {
                    Some(pid) => format!("init {pid} killed during a start that returned {r:?}"),
                    None => format!("start was too quick ({r:?}); {}", kill_init(f, name)),
                }
            })
        }
        Fate::EngineKilledMidStart | Fate::RunnerKilledMidRun => {
            let run = fate == Fate::RunnerKilledMidRun;
            let mut cmd = Command::new(std::env::current_exe().unwrap());
            cmd.args([
                "--ignored",
                "--exact",
                "helper_start_or_run",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("STOCKADE_TEST_STATE", f.dir.path())
            .env("STOCKADE_TEST_CGROUP", &f.cgroup_parent)
            .env(
                "STOCKADE_TEST_UID_BASE",
                f.engine.config().uid_base.to_string(),
            )
            .env("STOCKADE_TEST_JAIL", name.as_str())
            .env("STOCKADE_TEST_IMAGE", image)
            .env("STOCKADE_TEST_INDEX", i.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
            if run {
                cmd.env("STOCKADE_TEST_RUN", "1");
            }
            let mut child = cmd.spawn().unwrap();
            let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
            let ready = lines.find(|l| l.as_ref().is_ok_and(|l| l.contains("ready")));
            assert!(ready.is_some(), "helper for {name} did not start");
            let what = if run {
                // Killed once its jail's command runs.
                let pids = wait_for_pids(&procs, 2, Duration::from_secs(10));
                remember(&pids);
                format!("runner killed mid-run, jail processes {pids:?}")
            } else {
                // Killed somewhere in create and start: a few ms in.
                let delay = Duration::from_micros(u64::try_from((i * 2_300) % 25_000).unwrap());
                std::thread::sleep(delay);
                format!("engine killed {delay:?} into create and start")
            };
            child.kill().unwrap();
            child.wait().unwrap();
            remember(&pids_in(&procs));
            // A start that finished before the kill leaves a running jail:
            // its init is killed too, as a jail that dies mid-run.
            format!("{what}; {}", kill_init(f, name))
        }
    }
}

/// SIGKILLs the jail's init if it runs.
fn kill_init(f: &Fixture, name: &JailName) -> String {
    match f.engine.status(name) {
        Ok(Some(JailStatus::Running { pid })) => {
            kill_and_wait(pid);
            format!("init {pid} killed")
        }
        other => format!("not running: {other:?}"),
    }
}

/// SIGKILLs `pid` and waits until it has exited (a zombie or gone).
fn kill_and_wait(pid: i32) {
    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| s[s.rfind(')')? + 2..].chars().next());
        if !matches!(state, Some(c) if c != 'Z' && c != 'X') {
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    panic!("process {pid} did not exit after SIGKILL");
}
