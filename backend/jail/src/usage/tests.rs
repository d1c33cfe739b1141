//! The usage reader against files laid out as the kernel lays them out.

use super::*;
use crate::net::NetSpec;
use crate::spec::JailSpec;
use crate::state::JailRecord;
use std::fs;
use stockade_domain::{JailKind, Limits};

const V1_FILES: [(&str, &str, &str); 9] = [
    ("cpuacct", "cpuacct.usage", "2500000\n"),
    ("memory", "memory.usage_in_bytes", "4096\n"),
    ("memory", "memory.max_usage_in_bytes", "8192\n"),
    ("memory", "memory.failcnt", "3\n"),
    (
        "memory",
        "memory.oom_control",
        "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n",
    ),
    ("pids", "pids.current", "2\n"),
    ("pids", "pids.events", "max 5\n"),
    (
        "cpu",
        "cpu.stat",
        "nr_periods 10\nnr_throttled 4\nthrottled_time 9\n",
    ),
    (
        "blkio",
        "blkio.throttle.io_service_bytes_recursive",
        "7:3 Read 100\n7:3 Write 200\nTotal 300\n",
    ),
];

/// A node on temporary folders: a v1 cgroup tree, a proc folder whose
/// `<pid>/stat` describes a real child process, a state folder.
struct Node {
    dir: tempfile::TempDir,
    cgroups: Cgroups,
    children: Vec<std::process::Child>,
}

impl Node {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        for c in ["cpu", "cpuacct", "memory", "pids", "blkio"] {
            fs::create_dir_all(dir.path().join("cgroup").join(c)).unwrap();
        }
        let cgroups = Cgroups::detect(&dir.path().join("cgroup"), "stockade");
        Self {
            dir,
            cgroups,
            children: Vec::new(),
        }
    }

    fn config(&self) -> ReaderConfig {
        ReaderConfig {
            state_dir: self.dir.path().join("state"),
            proc_root: self.dir.path().join("proc"),
            sys_root: self.dir.path().join("sys"),
            cgroups: self.cgroups.clone(),
        }
    }

    fn reader(&self) -> Reader {
        Reader::new(self.config())
    }

    /// A jail whose init is a fresh child process (or none).
    fn jail(&mut self, name: &str, running: bool) -> JailName {
        let jail = JailName::parse(name).unwrap();
        self.cgroups.ensure(name).unwrap();
        for (c, f, text) in V1_FILES {
            fs::write(self.cgroups.dir(c, name).join(f), text).unwrap();
        }
        let init = running.then(|| self.start_init());
        self.save(&jail, init);
        jail
    }

    fn start_init(&mut self) -> InitProcess {
        let child = std::process::Command::new("sleep")
            .arg("1000")
            .spawn()
            .unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        self.children.push(child);
        let d = self.dir.path().join("proc").join(pid.to_string());
        fs::create_dir_all(d.join("root")).unwrap();
        let tail = "1 1 1 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 4242 1000 10";
        fs::write(d.join("stat"), format!("{pid} (sleep) S {tail}")).unwrap();
        InitProcess {
            pid,
            start_time: 4242,
        }
    }

    fn save(&self, jail: &JailName, init: Option<InitProcess>) {
        self.save_with(jail, init, None);
    }

    fn save_with(&self, jail: &JailName, init: Option<InitProcess>, network: Option<NetSpec>) {
        let paths = JailPaths::new(&self.dir.path().join("state"), jail.as_str());
        state::save(
            &paths,
            &JailRecord {
                spec: JailSpec {
                    name: jail.clone(),
                    hostname: jail.clone(),
                    image: "busybox".into(),
                    kind: JailKind::System,
                    command: vec![],
                    limits: Limits::default(),
                    network,
                    user_namespace: false,
                    env: Vec::new(),
                },
                upper: Upper::Tmpfs { bytes: 1 << 20 },
                loop_device: None,
                init,
                transient: false,
                uid_base: None,
                id_shift: None,
                last_exit: None,
            },
        )
        .unwrap();
    }

    fn set(&self, jail: &JailName, controller: &str, file: &str, text: &str) {
        fs::write(self.cgroups.dir(controller, jail.as_str()).join(file), text).unwrap();
    }

    fn end_init(&mut self, i: usize) {
        self.children[i].kill().unwrap();
        self.children[i].wait().unwrap();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn ok(s: &mut Sweep) -> Vec<Usage> {
    s.usage.drain(..).map(Result::unwrap).collect()
}

#[test]
fn counters_are_parsed_and_reread_through_the_kept_files() {
    let mut node = Node::new();
    let web = node.jail("web", true);
    let mut reader = node.reader();
    let u = ok(&mut reader.sweep([&web]))[0];
    assert_eq!(
        (u.cpu_usec, u.memory_bytes, u.memory_peak_bytes, u.pids),
        (2500, 4096, 8192, 2)
    );
    assert_eq!((u.io_read_bytes, u.io_write_bytes), (100, 200));
    assert_eq!((u.oom_kills, u.memory_limit_hits), (1, 3));
    assert_eq!((u.pids_limit_hits, u.cpu_throttled_periods), (5, 4));
    assert!(u.disk_used_bytes > 0, "the init's root is statted");
    // Nine counter files (no swap accounting here) and the pidfd.
    assert_eq!(reader.open_files(), 10);

    node.set(&web, "cpuacct", "cpuacct.usage", "7000000\n");
    let u = ok(&mut reader.sweep([&web]))[0];
    assert_eq!(u.cpu_usec, 7000);
    assert_eq!(reader.open_files(), 10);
}

#[test]
fn a_jail_no_longer_swept_has_its_files_closed() {
    let mut node = Node::new();
    let a = node.jail("a", true);
    let b = node.jail("b", true);
    let mut reader = node.reader();
    assert_eq!(ok(&mut reader.sweep([&a, &b])).len(), 2);
    assert_eq!(reader.open_files(), 20);
    ok(&mut reader.sweep([&a]));
    assert_eq!(reader.open_files(), 10);
}

#[test]
fn a_restarted_jail_is_read_from_its_new_record() {
    let mut node = Node::new();
    let web = node.jail("web", true);
    let mut reader = node.reader();
    ok(&mut reader.sweep([&web]));
    // The init ends: the jail is read afresh, without an init.
    node.end_init(0);
    node.save(&web, None);
    let u = ok(&mut reader.sweep([&web]))[0];
    assert_eq!((u.cpu_usec, u.disk_used_bytes), (2500, 0));
    assert_eq!(reader.open_files(), 0, "nothing is kept of a stopped jail");
    // A new init: kept again.
    let init = node.start_init();
    node.save(&web, Some(init));
    node.set(&web, "pids", "pids.current", "7\n");
    let u = ok(&mut reader.sweep([&web]))[0];
    assert_eq!(u.pids, 7);
    assert!(u.disk_used_bytes > 0);
    assert_eq!(reader.open_files(), 10);
}

#[test]
fn a_destroyed_jail_is_reported_missing_and_forgotten() {
    let mut node = Node::new();
    let web = node.jail("web", true);
    let db = node.jail("db", true);
    let mut reader = node.reader();
    ok(&mut reader.sweep([&web, &db]));
    node.end_init(0);
    fs::remove_dir_all(node.dir.path().join("state/jails/web")).unwrap();
    let s = reader.sweep([&web, &db]);
    assert!(matches!(s.usage[0], Err(JailError::NotFound(_))));
    assert_eq!(s.usage[1].as_ref().unwrap().cpu_usec, 2500);
    assert_eq!(reader.open_files(), 10);
}

#[test]
fn an_unreadable_counter_fails_that_jail_only_and_is_retried() {
    let mut node = Node::new();
    let web = node.jail("web", true);
    let db = node.jail("db", true);
    // A folder opens but cannot be read.
    let stat = node.cgroups.dir("cpu", "web").join("cpu.stat");
    fs::remove_file(&stat).unwrap();
    fs::create_dir(&stat).unwrap();
    let mut reader = node.reader();
    let s = reader.sweep([&web, &db]);
    let err = s.usage[0].as_ref().unwrap_err().to_string();
    assert!(err.contains("cpu.stat"), "{err}");
    assert!(s.usage[1].is_ok());
    assert_eq!(reader.open_files(), 10, "the failed jail is not kept");
    fs::remove_dir(&stat).unwrap();
    fs::write(&stat, "nr_throttled 8\n").unwrap();
    let u = ok(&mut reader.sweep([&web, &db]));
    assert_eq!(u[0].cpu_throttled_periods, 8);
    assert_eq!(reader.open_files(), 20);
}

#[test]
fn jails_beyond_the_descriptor_budget_are_read_without_keeping_files() {
    let mut node = Node::new();
    let a = node.jail("a", true);
    let b = node.jail("b", true);
    let mut reader = node.reader();
    reader.fd_limit = Some(FD_RESERVE + 15);
    let u = ok(&mut reader.sweep([&a, &b]));
    assert_eq!((u[0].cpu_usec, u[1].cpu_usec), (2500, 2500));
    assert_eq!(reader.open_files(), 10);
    node.set(&b, "pids", "pids.current", "9\n");
    assert_eq!(ok(&mut reader.sweep([&a, &b]))[1].pids, 9);
}

#[test]
fn a_jail_without_a_group_reads_zero_counters() {
    let mut node = Node::new();
    let web = node.jail("web", true);
    for d in node.cgroups.dirs("web") {
        fs::remove_dir_all(d).unwrap();
    }
    let mut reader = node.reader();
    let u = ok(&mut reader.sweep([&web]))[0];
    assert_eq!((u.cpu_usec, u.memory_bytes), (0, 0));
    assert_eq!(reader.open_files(), 0);
}

#[test]
fn a_jail_whose_link_is_gone_reads_zero_traffic() {
    let mut node = Node::new();
    let web = node.jail("web", true);
    let init = node.start_init();
    node.save_with(&web, Some(init), Some(NetSpec::new([10, 77, 0, 2].into())));
    let mut reader = node.reader();
    for _ in 0..2 {
        let u = ok(&mut reader.sweep([&web]))[0];
        assert_eq!((u.cpu_usec, u.net_rx_bytes, u.net_tx_packets), (2500, 0, 0));
    }
    // The netlink socket is kept with the jail's files.
    assert_eq!(reader.open_files(), 11);
}

#[test]
fn the_kept_files_stay_out_of_the_processs_descriptor_table() {
    let mut node = Node::new();
    let web = node.jail("web", true);
    let mut reader = UsageReader::new(node.config());
    let s = reader.sweep([&web]);
    assert_eq!(s.usage[0].as_ref().unwrap().cpu_usec, 2500);
    assert_eq!(s.open_files, 10);
    let cgroup = node.dir.path().join("cgroup");
    let shared: Vec<PathBuf> = fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter_map(|e| fs::read_link(e.path()).ok())
        .filter(|target| target.starts_with(&cgroup))
        .collect();
    assert!(shared.is_empty(), "{shared:?}");
    node.set(&web, "pids", "pids.current", "4\n");
    assert_eq!(reader.sweep([&web]).usage[0].as_ref().unwrap().pids, 4);
}

#[test]
fn long_counter_files_are_read_whole() {
    let mut node = Node::new();
    let web = node.jail("web", true);
    let mut text = String::new();
    for minor in 0..2000 {
        text.push_str(&format!("7:{minor} Read 1\n7:{minor} Write 2\n"));
    }
    assert!(text.len() > 16 << 10);
    node.set(
        &web,
        "blkio",
        "blkio.throttle.io_service_bytes_recursive",
        &text,
    );
    let mut reader = node.reader();
    let u = ok(&mut reader.sweep([&web]))[0];
    assert_eq!((u.io_read_bytes, u.io_write_bytes), (2000, 4000));
}
