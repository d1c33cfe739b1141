//! The engine's network steps on a node whose network is a recording
//! fake: jail addresses from the pool, firewall elements, what a refused
//! or failed creation leaves, and the repair of a running jail's link and
//! of the node's firewall.

use std::net::Ipv4Addr;

use stockade_domain::JailKind;

use crate::host::fake::RecordingHost;
use crate::net::fake::RecordingNet;
use crate::net::{JailEnd, Publish, host_link};
use crate::spec::JailSpec;
use crate::state::InitProcess;

use super::*;

/// The pid of the init of a jail pretended to run: above any pid the
/// kernel hands out (at most 2^22), so no signal or pidfd of the engine
/// can reach a real process through it.
const INIT_PID: i32 = 999_999_999;
/// Its start time, as its `stat` file gives it.
const INIT_START: u64 = 123_456;

const V1_CONTROLLERS: [&str; 6] = ["cpu", "cpuacct", "memory", "pids", "blkio", "devices"];

/// A node in a temporary folder (state, images, a cgroup v1 tree, the
/// proc and sys files the engine reads) whose network is `net`.
struct Node {
    dir: tempfile::TempDir,
    net: RecordingNet,
}

impl Node {
    fn new() -> Self {
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
    fn engine(&self) -> Engine {
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
    fn leftovers(&self, e: &Engine, name: &str) -> Vec<String> {
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
    fn empty_groups(&self, e: &Engine, name: &str) {
        for d in e.cgroups.dirs(name) {
            for f in fs::read_dir(&d).unwrap() {
                fs::remove_file(f.unwrap().path()).unwrap();
            }
        }
    }

    /// Makes the jail look running: its record names an init whose proc
    /// files say it lives.
    fn run(&self, e: &Engine, name: &str) {
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
    fn end(&self) {
        let proc = self.dir.path().join("proc").join(INIT_PID.to_string());
        fs::remove_dir_all(proc).unwrap();
    }

    /// Puts the jail's host link on `bridge` as the kernel shows it, or on
    /// none.
    fn plug(&self, jail: &str, bridge: Option<&str>) {
        let link = self.dir.path().join("sys/class/net").join(host_link(jail));
        fs::create_dir_all(&link).unwrap();
        let master = link.join("master");
        let _ = fs::remove_file(&master);
        if let Some(b) = bridge {
            std::os::unix::fs::symlink(format!("../{b}"), master).unwrap();
        }
    }
}

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 77, 0, last)
}

fn name(s: &str) -> JailName {
    JailName::parse(s).unwrap()
}

fn spec(jail: &str, network: Option<NetSpec>) -> JailSpec {
    JailSpec {
        name: name(jail),
        hostname: name(jail),
        image: "busybox".into(),
        kind: JailKind::System,
        command: vec![],
        limits: Limits::default(),
        network,
        user_namespace: true,
    }
}

fn published(address: Ipv4Addr, ports: &[&str], nat: bool) -> NetSpec {
    NetSpec {
        address,
        publish: ports.iter().map(|p| Publish::parse(p).unwrap()).collect(),
        nat,
    }
}

fn rates(ingress: u64, egress: u64) -> Limits {
    Limits {
        net_ingress_bps: ingress,
        net_egress_bps: egress,
        ..Limits::default()
    }
}

/// The calls since the last look that make or change something on the
/// node: removing what a refused jail might have left is neither.
fn making(net: &RecordingNet) -> Vec<String> {
    net.take_calls()
        .into_iter()
        .filter(|c| !c.starts_with("del ") && !c.starts_with("nft delete"))
        .collect()
}

fn tbf(ns: &str, dev: &str, bps: u64) -> String {
    format!("tc {ns} qdisc replace dev {dev} root tbf rate {bps}bit burst 15140 latency 50ms")
}

#[test]
fn jails_get_distinct_addresses_kept_by_a_new_engine_and_freed_by_destroy() {
    let node = Node::new();
    let e = node.engine();
    let a = e.allocate_address().unwrap();
    e.create(&spec("a", Some(published(a, &["8080:80"], true))))
        .unwrap();
    let b = e.allocate_address().unwrap();
    e.create(&spec("b", Some(NetSpec::new(b)))).unwrap();
    assert_eq!((a, b), (ip(2), ip(3)));
    assert_eq!(e.allocate_address().unwrap(), ip(4));
    // Another engine of the node (the agent after a restart) knows them.
    let e2 = node.engine();
    assert_eq!(e2.allocate_address().unwrap(), ip(4));
    let mut networks = e2.networks();
    networks.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(
        networks,
        [
            ("a".to_owned(), published(a, &["8080:80"], true)),
            ("b".to_owned(), NetSpec::new(b)),
        ]
    );
    // An address in use is refused before anything is made.
    node.net.take_calls();
    let err = e2.create(&spec("c", Some(NetSpec::new(a)))).unwrap_err();
    assert_eq!(
        err.to_string(),
        "address 10.77.0.2 is already used by jail a"
    );
    assert_eq!(node.leftovers(&e2, "c"), Vec::<String>::new());
    assert_eq!(making(&node.net), Vec::<String>::new());
    // A jail moved to another address frees its old one, for both engines.
    e2.create(&spec("b", Some(NetSpec::new(ip(9))))).unwrap();
    assert_eq!(e.allocate_address().unwrap(), ip(3));
    // Destroyed, a jail leaves nothing and its address is free again.
    node.empty_groups(&e2, "a");
    e2.destroy(&name("a")).unwrap();
    assert_eq!(node.leftovers(&e2, "a"), Vec::<String>::new());
    assert_eq!(node.net.elements(), Vec::<String>::new());
    assert_eq!(e2.allocate_address().unwrap(), a);
    assert_eq!(e.allocate_address().unwrap(), a);
}

#[test]
fn creating_a_jail_readies_the_node_network_once_and_publishes_its_ports() {
    let node = Node::new();
    let e = node.engine();
    e.create(&spec("web", Some(published(ip(2), &["8080:80"], true))))
        .unwrap();
    assert_eq!(
        node.net.take_calls(),
        [
            "bridge stk0 10.77.0.1/16",
            "sysctl route_localnet=1",
            "nft add table inet stockade",
            "sysctl ip_forward=1",
            "nft add element inet stockade publish_tcp { 8080 : 10.77.0.2 . 80 }",
        ]
    );
    assert_eq!(
        node.net.elements(),
        [
            "add element inet stockade nat_jails { 10.77.0.2 }",
            "add element inet stockade publish_tcp { 8080 : 10.77.0.2 . 80 }",
        ]
    );
    // A jail with nothing to publish: the firewall is there already and no
    // forwarding is needed. No link is made before the jail starts.
    e.create(&spec("db", Some(NetSpec::new(ip(3))))).unwrap();
    assert_eq!(
        node.net.take_calls(),
        ["bridge stk0 10.77.0.1/16", "sysctl route_localnet=1"]
    );
}

#[test]
fn a_changed_network_moves_the_jails_firewall_elements() {
    let node = Node::new();
    let e = node.engine();
    e.create(&spec("web", Some(published(ip(2), &["8080:80"], true))))
        .unwrap();
    e.create(&spec("web", Some(published(ip(5), &["8081:80"], false))))
        .unwrap();
    assert_eq!(
        node.net.elements(),
        ["add element inet stockade publish_tcp { 8081 : 10.77.0.5 . 80 }"]
    );
    // Its old port and address are another jail's to take.
    let other = published(e.allocate_address().unwrap(), &["8080:80"], false);
    assert_eq!(other.address, ip(2));
    e.create(&spec("other", Some(other))).unwrap();
    // Taking the network away removes the rest.
    e.create(&spec("web", None)).unwrap();
    assert_eq!(
        node.net.elements(),
        ["add element inet stockade publish_tcp { 8080 : 10.77.0.2 . 80 }"]
    );
}

#[test]
fn refused_input_leaves_nothing_behind() {
    let mut node = Node::new();
    node.net.busy_ports = vec![9090];
    let e = node.engine();
    let net = Some(NetSpec::new(ip(2)));
    let with_limits = |limits: Limits| JailSpec {
        limits,
        ..spec("bad", net.clone())
    };
    let cases = [
        (
            with_limits(rates(0, 100)),
            "invalid net-egress: 100 bit/s is below the smallest rate, 8kbit",
        ),
        (
            with_limits(rates(7_999, 0)),
            "invalid net-ingress: 7999 bit/s is below the smallest rate, 8kbit",
        ),
        (
            JailSpec {
                image: "nope".into(),
                ..spec("bad", net.clone())
            },
            "image nope not found at ",
        ),
        (
            spec("bad", Some(NetSpec::new(Ipv4Addr::new(10, 78, 0, 2)))),
            "invalid jail address: 10.78.0.2 is not a host address of the node's pool 10.77.0.1/16",
        ),
        (
            spec("bad", Some(NetSpec::new(ip(1)))),
            "address 10.77.0.1 is already used by the gateway of bridge stk0",
        ),
        (
            spec(
                "bad",
                Some(published(ip(2), &["8080:80", "8080:81"], false)),
            ),
            "invalid published port: host port 8080 is published twice",
        ),
        (
            spec("bad", Some(published(ip(2), &["9090:80"], false))),
            "port 9090 is already used by a process on the host",
        ),
    ];
    for (s, want) in cases {
        let err = e.create(&s).unwrap_err().to_string();
        assert!(err.starts_with(want), "{err}");
        assert_eq!(node.leftovers(&e, "bad"), Vec::<String>::new(), "{want}");
        assert_eq!(making(&node.net), Vec::<String>::new(), "{want}");
    }
    assert_eq!(e.allocate_address().unwrap(), ip(2));
}

#[test]
fn a_failed_network_step_leaves_nothing_behind() {
    let node = Node::new();
    let e = node.engine();
    let quota = Limits {
        disk_bytes: 64 << 20,
        ..Limits::default()
    };
    let cases = [
        ("bridge", "fake bridge stk0 10.77.0.1/16: "),
        ("nft add table", "fake nft add table inet stockade: "),
        (
            "nft add element",
            "fake nft add element inet stockade publish_tcp",
        ),
    ];
    for (fail_on, want) in cases {
        *node.net.fail_on.lock().unwrap() = Some(fail_on.to_owned());
        let address = e.allocate_address().unwrap();
        let s = JailSpec {
            limits: quota,
            ..spec("web", Some(published(address, &["8080:80"], true)))
        };
        let err = e.create(&s).unwrap_err().to_string();
        assert!(err.starts_with(want), "{err}");
        assert_eq!(node.leftovers(&e, "web"), Vec::<String>::new(), "{want}");
        assert_eq!(node.net.elements(), Vec::<String>::new(), "{want}");
        assert_eq!(e.allocate_address().unwrap(), address, "{want}");
    }
    // With the host as it should be, the same jail is made.
    *node.net.fail_on.lock().unwrap() = None;
    let s = spec("web", Some(published(ip(2), &["8080:80"], true)));
    e.create(&s).unwrap();
    assert_eq!(node.net.elements().len(), 2);
}

#[test]
fn a_port_refused_to_a_jail_leaves_it_as_it_was() {
    let mut node = Node::new();
    node.net.busy_ports = vec![9090];
    let e = node.engine();
    let was = published(ip(2), &["8080:80"], true);
    e.create(&spec("web", Some(was.clone()))).unwrap();
    let elements = node.net.elements();
    let refused = published(ip(2), &["8080:80", "9090:90"], true);
    let err = e.create(&spec("web", Some(refused))).unwrap_err();
    assert_eq!(
        err.to_string(),
        "port 9090 is already used by a process on the host"
    );
    assert_eq!(e.networks(), [("web".to_owned(), was)]);
    assert_eq!(node.net.elements(), elements);
    // Nor does a repair of the firewall publish it.
    e.repair_network().unwrap();
    assert_eq!(node.net.elements(), elements);
}

#[test]
fn live_rate_changes_touch_only_what_changed() {
    let node = Node::new();
    let e = node.engine();
    let web = name("web");
    let link = host_link("web");
    e.create(&JailSpec {
        limits: rates(10_000_000, 5_000_000),
        ..spec("web", Some(NetSpec::new(ip(2))))
    })
    .unwrap();
    node.run(&e, "web");
    let limits_of = || state::load(&e.paths("web")).unwrap().unwrap().spec.limits;
    node.net.take_calls();
    e.update_limits(&web, &rates(10_000_000, 2_000_000))
        .unwrap();
    assert_eq!(node.net.take_calls(), [tbf("jail", "eth0", 2_000_000)]);
    e.update_limits(&web, &rates(10_000_000, 2_000_000))
        .unwrap();
    assert_eq!(node.net.take_calls(), Vec::<String>::new());
    e.update_limits(&web, &rates(0, 2_000_000)).unwrap();
    assert_eq!(
        node.net.take_calls(),
        [format!("tc host qdisc del dev {link} root")]
    );
    // A rate too small is refused; the limits in force stay.
    let err = e.update_limits(&web, &rates(0, 100)).unwrap_err();
    assert!(err.to_string().contains("below the smallest rate"), "{err}");
    assert_eq!(limits_of(), rates(0, 2_000_000));
    assert_eq!(node.net.take_calls(), Vec::<String>::new());
    // A stopped jail has no link: its new limits wait for its start.
    node.end();
    e.update_limits(&web, &rates(0, 3_000_000)).unwrap();
    assert_eq!(node.net.take_calls(), Vec::<String>::new());
    assert_eq!(limits_of(), rates(0, 3_000_000));
}

#[test]
fn a_running_jails_drifted_link_is_repaired_and_said() {
    let node = Node::new();
    let e = node.engine();
    let web = name("web");
    let link = host_link("web");
    e.create(&JailSpec {
        limits: rates(10_000_000, 5_000_000),
        ..spec("web", Some(NetSpec::new(ip(2))))
    })
    .unwrap();
    node.run(&e, "web");
    node.plug("web", Some("stk0"));
    let right = JailEnd {
        up: true,
        addresses: vec![(ip(2), 16)],
        gateway: Some(ip(1)),
    };
    let as_made = || {
        *node.net.end.lock().unwrap() = Some(right.clone());
        *node.net.rates.lock().unwrap() =
            [(link.clone(), 10_000_000), ("eth0".to_owned(), 5_000_000)].into();
    };
    as_made();
    let relink = [
        format!("del {link}"),
        format!("link {link} stk0 10.77.0.2/16 via 10.77.0.1"),
        tbf("host", &link, 10_000_000),
        tbf("jail", "eth0", 5_000_000),
    ];
    node.net.take_calls();
    // As it should be: nothing repaired, nothing written.
    assert_eq!(e.repair_jail(&web).unwrap(), Vec::<String>::new());
    assert_eq!(node.net.take_calls(), Vec::<String>::new());
    // A rate limit removed by hand: that limit alone is set again.
    node.net.rates.lock().unwrap().insert(link.clone(), 0);
    assert_eq!(e.repair_jail(&web).unwrap(), ["rate limit to jail web"]);
    assert_eq!(node.net.take_calls(), [tbf("host", &link, 10_000_000)]);
    as_made();
    node.net
        .rates
        .lock()
        .unwrap()
        .insert("eth0".to_owned(), 1_000_000);
    assert_eq!(e.repair_jail(&web).unwrap(), ["rate limit from jail web"]);
    assert_eq!(node.net.take_calls(), [tbf("jail", "eth0", 5_000_000)]);
    // The jail's end down, or without its address: the link is made again.
    for end in [
        JailEnd {
            up: false,
            ..right.clone()
        },
        JailEnd {
            addresses: vec![],
            ..right.clone()
        },
    ] {
        as_made();
        *node.net.end.lock().unwrap() = Some(end);
        assert_eq!(
            e.repair_jail(&web).unwrap(),
            [format!("link {link} of jail web (its address or route)")]
        );
        assert_eq!(node.net.take_calls(), relink);
    }
    // Taken off the bridge, or put on another: the link is made again.
    as_made();
    for bridge in [None, Some("br9")] {
        node.plug("web", bridge);
        assert_eq!(
            e.repair_jail(&web).unwrap(),
            [format!("link {link} of jail web")]
        );
        assert_eq!(node.net.take_calls(), relink);
    }
    // A stopped jail has no link to repair.
    node.end();
    node.net.rates.lock().unwrap().clear();
    assert_eq!(e.repair_jail(&web).unwrap(), Vec::<String>::new());
    assert_eq!(node.net.take_calls(), Vec::<String>::new());
}

#[test]
fn a_running_jail_without_a_network_has_no_link_to_repair() {
    let node = Node::new();
    let e = node.engine();
    e.create(&spec("web", None)).unwrap();
    node.run(&e, "web");
    assert_eq!(e.repair_jail(&name("web")).unwrap(), Vec::<String>::new());
    assert_eq!(node.net.calls(), Vec::<String>::new());
}

#[test]
fn the_firewall_is_rewritten_only_when_it_drifted() {
    let node = Node::new();
    let e = node.engine();
    e.create(&spec("a", Some(published(ip(2), &["8080:80"], true))))
        .unwrap();
    e.create(&spec("b", Some(published(ip(3), &["8081:81"], false))))
        .unwrap();
    let good = node.net.table.lock().unwrap().clone();
    assert_eq!(node.net.elements().len(), 3);
    let table = || node.net.table.lock().unwrap().clone();
    let rewrites = || {
        node.net
            .take_calls()
            .iter()
            .filter(|c| c.starts_with("nft"))
            .count()
    };
    // An engine cannot know what the table held before it: it writes the
    // table once, which changes nothing and is not a repair.
    assert_eq!(e.repair_network().unwrap(), Vec::<String>::new());
    assert_eq!(table(), good);
    node.net.take_calls();
    // Still as written: left alone.
    assert_eq!(e.repair_network().unwrap(), Vec::<String>::new());
    assert_eq!(
        node.net.take_calls(),
        ["bridge stk0 10.77.0.1/16", "sysctl route_localnet=1"]
    );
    let drifts: [(&str, &dyn Fn()); 3] = [
        ("a published port deleted", &|| {
            node.net
                .table
                .lock()
                .unwrap()
                .remove("add element inet stockade publish_tcp { 8080 : 10.77.0.2 . 80 }");
        }),
        ("the forward rules flushed", &|| {
            node.net
                .table
                .lock()
                .unwrap()
                .retain(|l| !l.contains(" forward "));
        }),
        ("the table deleted", &|| {
            node.net.table.lock().unwrap().clear();
            *node.net.firewall.lock().unwrap() = false;
        }),
    ];
    for (what, drift) in drifts {
        drift();
        assert_eq!(
            e.repair_network().unwrap(),
            ["firewall table stockade"],
            "{what}"
        );
        assert_eq!(table(), good, "{what}");
        assert!(rewrites() > 0, "{what}");
        assert_eq!(e.repair_network().unwrap(), Vec::<String>::new(), "{what}");
        assert_eq!(rewrites(), 0, "{what}");
    }
    // The bridge gone: said (and made again).
    fs::remove_dir(node.dir.path().join("sys/class/net/stk0")).unwrap();
    assert_eq!(e.repair_network().unwrap(), ["bridge stk0"]);
    assert_eq!(node.net.take_calls()[0], "bridge stk0 10.77.0.1/16");
    // A jail's own changes to the table are no repair, and a destroyed
    // jail's elements are not put back.
    node.empty_groups(&e, "b");
    e.destroy(&name("b")).unwrap();
    fs::create_dir(node.dir.path().join("sys/class/net/stk0")).unwrap();
    assert_eq!(e.repair_network().unwrap(), Vec::<String>::new());
    assert_eq!(
        node.net.elements(),
        [
            "add element inet stockade nat_jails { 10.77.0.2 }",
            "add element inet stockade publish_tcp { 8080 : 10.77.0.2 . 80 }",
        ]
    );
}
