//! A node in a temporary folder whose network is a recording fake, and
//! the specs and calls the network tests share.

use std::net::Ipv4Addr;

use stockade_domain::JailKind;

use crate::host::fake::RecordingHost;
use crate::net::fake::RecordingNet;
use crate::net::{Publish, host_link};
use crate::spec::JailSpec;
use crate::state::InitProcess;

use crate::engine::*;

/// The pid of the init of a jail pretended to run: above any pid the
/// kernel hands out (at most 2^22), so no signal or pidfd of the engine
/// can reach a real process through it.
pub(super) const INIT_PID: i32 = 999_999_999;
/// Its start time, as its `stat` file gives it.
pub(super) const INIT_START: u64 = 123_456;

pub(super) const V1_CONTROLLERS: [&str; 6] =
    ["cpu", "cpuacct", "memory", "pids", "blkio", "devices"];

/// A node in a temporary folder (state, images, a cgroup v1 tree, the
/// proc and sys files the engine reads) whose network is `net`.
pub(super) struct Node {
    pub(super) dir: tempfile::TempDir,
    pub(super) net: RecordingNet,
}

impl Node {
    pub(super) fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for sub in ["images/busybox", "etc", "proc/self", "sys/class/net/stk0"] {
            fs::create_dir_all(d.join(sub)).unwrap();
        }
        for c in V1_CONTROLLERS {
            fs::create_dir_all(d.join("cgroup").join(c)).unwrap();
        }
        fs::write(d.join("proc/self/mountinfo"), "").unwrap();
        Self {
            dir,
            net: RecordingNet::default(),
        }
    }

    /// An engine of the node; a second one is the agent after a restart.
    pub(super) fn engine(&self) -> Engine {
        let d = self.dir.path();
        let mut cfg = EngineConfig::new(d.join("state"), d.join("images"));
        cfg.cgroup_root = d.join("cgroup");
        cfg.proc_root = d.join("proc");
        cfg.sys_root = d.join("sys");
        cfg.etc_dir = d.join("etc");
        cfg.uid_ranges = 8;
        Engine::with_hosts(
            cfg,
            Box::<RecordingHost>::default(),
            Box::new(self.net.clone()),
        )
        .unwrap()
    }

    /// What is left of jail `name` on the node: its folder, uid range and
    /// cgroup folders.
    pub(super) fn leftovers(&self, e: &Engine, name: &str) -> Vec<String> {
        let mut left = Vec::new();
        let dir = e.paths(name).dir;
        if dir.exists() {
            left.push(format!("folder {}", dir.display()));
        }
        for (base, jail) in e.uid_ranges().unwrap() {
            if jail == name {
                left.push(format!("uid range {base}"));
            }
        }
        for d in e.cgroups.dirs(name) {
            if d.exists() {
                left.push(format!("cgroup {}", d.display()));
            }
        }
        left
    }

    /// Lets the jail's groups be removed: a real cgroup filesystem drops a
    /// group's files with it, a temporary folder does not.
    pub(super) fn empty_groups(&self, e: &Engine, name: &str) {
        for d in e.cgroups.dirs(name) {
            for f in fs::read_dir(&d).unwrap() {
                fs::remove_file(f.unwrap().path()).unwrap();
            }
        }
    }

    /// Makes the jail look running: its record names an init whose proc
    /// files say it lives.
    pub(super) fn run(&self, e: &Engine, name: &str) {
        let proc = self.dir.path().join("proc").join(INIT_PID.to_string());
        fs::create_dir_all(&proc).unwrap();
        fs::write(
            proc.join("stat"),
            format!(
                "{INIT_PID} (init) S 1 1 1 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 {INIT_START} 1000 10"
            ),
        )
        .unwrap();
        let paths = e.paths(name);
        let mut rec = state::load(&paths).unwrap().unwrap();
        rec.init = Some(InitProcess {
            pid: INIT_PID,
            start_time: INIT_START,
        });
        state::save(&paths, &rec).unwrap();
    }

    /// The jail's init has exited.
    pub(super) fn end(&self) {
        let proc = self.dir.path().join("proc").join(INIT_PID.to_string());
        fs::remove_dir_all(proc).unwrap();
    }

    /// Puts the jail's host link on `bridge` as the kernel shows it, or on
    /// none.
    pub(super) fn plug(&self, jail: &str, bridge: Option<&str>) {
        let link = self.dir.path().join("sys/class/net").join(host_link(jail));
        fs::create_dir_all(&link).unwrap();
        let master = link.join("master");
        let _ = fs::remove_file(&master);
        if let Some(b) = bridge {
            std::os::unix::fs::symlink(format!("../{b}"), master).unwrap();
        }
    }
}

pub(super) fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 77, 0, last)
}

pub(super) fn name(s: &str) -> JailName {
    JailName::parse(s).unwrap()
}

pub(super) fn spec(jail: &str, network: Option<NetSpec>) -> JailSpec {
    JailSpec {
        name: name(jail),
        hostname: name(jail),
        image: "busybox".into(),
        kind: JailKind::System,
        command: vec![],
        limits: Limits::default(),
        network,
        user_namespace: true,
        env: Vec::new(),
    }
}

pub(super) fn published(address: Ipv4Addr, ports: &[&str], nat: bool) -> NetSpec {
    NetSpec {
        address,
        publish: ports.iter().map(|p| Publish::parse(p).unwrap()).collect(),
        nat,
    }
}

pub(super) fn rates(ingress: u64, egress: u64) -> Limits {
    Limits {
        net_ingress_bps: ingress,
        net_egress_bps: egress,
        ..Limits::default()
    }
}

/// The calls since the last look that make or change something on the
/// node: removing what a refused jail might have left is neither.
pub(super) fn making(net: &RecordingNet) -> Vec<String> {
    net.take_calls()
        .into_iter()
        .filter(|c| !c.starts_with("del ") && !c.starts_with("nft delete"))
        .collect()
}

pub(super) fn tbf(ns: &str, dev: &str, bps: u64) -> String {
    format!("tc {ns} qdisc replace dev {dev} root tbf rate {bps}bit burst 15140 latency 50ms")
}
