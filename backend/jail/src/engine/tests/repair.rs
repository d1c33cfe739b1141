//! Repair of a running jail's link and rates and of the node's firewall,
//! through the recording fake: what drifted is put back and said, and
//! nothing else is written.

use crate::engine::*;
use crate::net::{JailEnd, host_link};
use crate::spec::JailSpec;

use super::node::*;

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
