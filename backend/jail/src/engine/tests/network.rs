//! The engine's network steps through the recording fake: addresses from
//! the pool, firewall elements, and what a refused or failed creation leaves.

use crate::engine::*;
use crate::net::host_link;
use crate::spec::JailSpec;
use std::net::Ipv4Addr;

use super::node::*;

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
            "invalid published port: host port 8080/tcp is published twice",
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
