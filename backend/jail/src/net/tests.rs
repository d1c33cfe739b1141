use std::net::Ipv4Addr;

use super::fake::RecordingNet;
use super::*;

fn pool() -> Ipv4Net {
    "10.77.0.1/16".parse().unwrap()
}

fn node<'a>() -> NodeNet<'a> {
    NodeNet {
        bridge: "stk0",
        table: FIREWALL_TABLE,
        gateway: pool(),
        open_ports: &[],
        forwarding: false,
        proc_root: Path::new("/proc"),
    }
}

#[test]
fn allocate_skips_gateway_network_and_used_addresses() {
    let a = allocate(pool(), &[]).unwrap();
    assert_eq!(a, Ipv4Addr::new(10, 77, 0, 2));
    let used = [a, Ipv4Addr::new(10, 77, 0, 3)];
    assert_eq!(
        allocate(pool(), &used).unwrap(),
        Ipv4Addr::new(10, 77, 0, 4)
    );
    let tiny: Ipv4Net = "192.168.5.1/30".parse().unwrap();
    let only = allocate(tiny, &[]).unwrap();
    assert_eq!(only, Ipv4Addr::new(192, 168, 5, 2));
    let err = allocate(tiny, &[only]).unwrap_err();
    assert_eq!(err.to_string(), "address pool 192.168.5.1/30 is exhausted");
}

#[test]
fn rates_parse_in_bits_per_second() {
    assert_eq!(parse_rate("r", "10mbit").unwrap(), 10_000_000);
    assert_eq!(parse_rate("r", "1.5Mbit").unwrap(), 1_500_000);
    assert_eq!(parse_rate("r", "500kbit").unwrap(), 500_000);
    assert_eq!(parse_rate("r", "1mbps").unwrap(), 8_000_000);
    assert_eq!(parse_rate("r", "64000").unwrap(), 64_000);
    assert_eq!(parse_rate("r", "0").unwrap(), 0);
    for bad in [
        "",
        "fast",
        "10 furlongs",
        "-5",
        "100",
        "99999999999999999999gbit",
    ] {
        let e = parse_rate("net-egress", bad).unwrap_err().to_string();
        assert!(e.starts_with("invalid net-egress"), "{bad}: {e}");
    }
}

#[test]
fn publish_specs_parse() {
    assert_eq!(
        Publish::parse("8080:80").unwrap(),
        Publish {
            host_port: 8080,
            jail_port: 80,
            protocol: Protocol::Tcp,
        }
    );
    assert_eq!(
        Publish::parse("5353:53/udp").unwrap(),
        Publish {
            host_port: 5353,
            jail_port: 53,
            protocol: Protocol::Udp,
        }
    );
    assert_eq!(Publish::parse("80:80/tcp").unwrap().protocol, Protocol::Tcp);
    for bad in [
        "8080",
        "0:80",
        "8080:70000",
        "a:b",
        ":80",
        "80:80/sctp",
        "80:80/",
    ] {
        assert!(Publish::parse(bad).is_err(), "{bad}");
    }
    // A record written before UDP existed reads as TCP.
    let old: Publish = serde_json::from_str(r#"{"host_port":1,"jail_port":2}"#).unwrap();
    assert_eq!(old.protocol, Protocol::Tcp);
}

#[test]
fn the_metadata_address_is_dropped_before_outbound_nat() {
    let fw = firewall(FIREWALL_TABLE, "stk0", &[]);
    let forward: Vec<&str> = fw.lines().filter(|l| l.contains(" forward ")).collect();
    let metadata = forward
        .iter()
        .position(|l| l.ends_with("ip daddr 169.254.0.0/16 drop"))
        .expect("a rule for link-local addresses");
    let nat = forward
        .iter()
        .position(|l| l.contains("@nat_jails accept"))
        .unwrap();
    assert!(metadata < nat, "{fw}");
    // Both protocols are forwarded from their own maps.
    for proto in ["tcp", "udp"] {
        assert!(fw.contains(&format!("add map inet stockade publish_{proto} ")));
        assert!(fw.contains(&format!("dnat ip to {proto} dport map @publish_{proto}")));
    }
}

#[test]
fn host_links_are_short_stable_and_distinct() {
    let a = host_link("tenant-a-web-with-a-very-long-name");
    assert!(a.len() <= 15 && a.starts_with("sk"), "{a}");
    assert_eq!(a, host_link("tenant-a-web-with-a-very-long-name"));
    assert_ne!(a, host_link("tenant-b-web-with-a-very-long-name"));
}

#[test]
fn firewall_drops_jail_traffic_to_the_host_after_open_ports() {
    let fw = firewall(FIREWALL_TABLE, "stk0", &[53]);
    let input: Vec<&str> = fw.lines().filter(|l| l.contains(" input ")).collect();
    let open = input
        .iter()
        .position(|l| l.contains("dport { 53 }"))
        .unwrap();
    let drop = input
        .iter()
        .position(|l| l.ends_with("iifname \"stk0\" drop"))
        .unwrap();
    assert!(open < drop);
    // Flushing keeps the transaction idempotent; the map is never flushed.
    assert!(fw.contains("flush chain inet stockade input"));
    assert!(!fw.contains("flush map") && !fw.contains("flush set"));
}

#[test]
fn elements_name_the_jail_address() {
    let mut spec = NetSpec::new(Ipv4Addr::new(10, 77, 0, 9));
    spec.publish.push(Publish::parse("8080:80").unwrap());
    spec.publish.push(Publish::parse("8080:53/udp").unwrap());
    spec.nat = true;
    assert_eq!(
        jail_elements(FIREWALL_TABLE, "add", &spec),
        [
            "add element inet stockade publish_tcp { 8080 : 10.77.0.9 . 80 }",
            "add element inet stockade publish_udp { 8080 : 10.77.0.9 . 53 }",
            "add element inet stockade nat_jails { 10.77.0.9 }"
        ]
    );
    assert_eq!(
        jail_elements(FIREWALL_TABLE, "delete", &spec)[0],
        "delete element inet stockade publish_tcp { 8080 }"
    );
}

fn other_with(address: Ipv4Addr, publish: &str) -> NetSpec {
    let mut n = NetSpec::new(address);
    n.publish.push(Publish::parse(publish).unwrap());
    n
}

#[test]
fn validation_names_the_conflict() {
    let fake = RecordingNet::default();
    let net = Network {
        host: &fake,
        node: node(),
    };
    let spec = NetSpec::new(Ipv4Addr::new(10, 77, 0, 9));
    let mut other = NetSpec::new(Ipv4Addr::new(10, 77, 0, 9));
    let e = net
        .validate("a", &spec, &[("b".into(), other.clone())])
        .unwrap_err();
    assert_eq!(e.to_string(), "address 10.77.0.9 is already used by jail b");
    // Its own record is not a conflict.
    net.validate("a", &spec, &[("a".into(), spec.clone())])
        .unwrap();
    other.address = Ipv4Addr::new(10, 77, 0, 10);
    other.publish.push(Publish::parse("8080:80").unwrap());
    let mut mine = spec.clone();
    mine.publish.push(Publish::parse("8080:81").unwrap());
    let e = net
        .validate("a", &mine, &[("b".into(), other)])
        .unwrap_err();
    assert_eq!(e.to_string(), "port 8080 is already used by jail b");
    // The same number of the other protocol is another port.
    let mut udp = spec.clone();
    udp.publish.push(Publish::parse("8080:81/udp").unwrap());
    let mut tcp_user = other_with(Ipv4Addr::new(10, 77, 0, 10), "8080:80");
    net.validate("a", &udp, &[("b".into(), tcp_user.clone())])
        .unwrap();
    tcp_user
        .publish
        .push(Publish::parse("8080:80/udp").unwrap());
    assert!(net.validate("a", &udp, &[("b".into(), tcp_user)]).is_err());
    for bad in ["10.78.0.2", "10.77.255.255", "10.77.0.0"] {
        let s = NetSpec::new(bad.parse().unwrap());
        assert!(net.validate("a", &s, &[]).is_err(), "{bad}");
    }
    let s = NetSpec::new(Ipv4Addr::new(10, 77, 0, 1));
    assert!(
        net.validate("a", &s, &[])
            .unwrap_err()
            .to_string()
            .contains("gateway")
    );
}

#[test]
fn kernel_readings_of_routes_and_rates_parse() {
    let routes = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\n\
                  eth0\t00000000\t01004D0A\t0003\t0\t0\t0\t00000000\n\
                  eth0\t00004D0A\t00000000\t0001\t0\t0\t0\t0000FFFF\n";
    let gw = default_gateway(routes, "eth0").unwrap();
    assert_eq!(gw, Ipv4Addr::from(0x01004D0A_u32.to_ne_bytes()));
    assert_eq!(default_gateway(routes, "eth1"), None);
    assert_eq!(
        tbf_rate(r#"[{"kind":"tbf","handle":"8182:","root":true,"options":{"rate":1000000}}]"#),
        Some(8_000_000)
    );
    assert_eq!(
        tbf_rate(r#"[{"kind":"noqueue","handle":"0:","root":true,"options":{}}]"#),
        Some(0)
    );
    assert_eq!(tbf_rate("not json"), None);
    // Whole bytes per second: a rate not a multiple of 8 reads back lower.
    assert!(same_rate(1_234_560, 1_234_567));
    assert!(!same_rate(0, 1_000_000) && !same_rate(2_000_000, 1_000_000));
}

#[test]
fn a_jail_link_changed_by_hand_is_put_back_and_said() {
    let fake = RecordingNet::default();
    let net = Network {
        host: &fake,
        node: node(),
    };
    let limits = Limits {
        net_ingress_bps: 10_000_000,
        net_egress_bps: 5_000_000,
        ..Limits::default()
    };
    let spec = NetSpec::new(Ipv4Addr::new(10, 77, 0, 9));
    let ns = Path::new("/proc/1/ns/net");
    let host = host_link("web");
    let right = JailEnd {
        up: true,
        addresses: vec![(spec.address, 16)],
        gateway: Some(Ipv4Addr::new(10, 77, 0, 1)),
    };
    // As it should be: nothing to do.
    *fake.end.lock().unwrap() = Some(right.clone());
    fake.rates.lock().unwrap().extend([
        (host.clone(), 10_000_000),
        (JAIL_LINK.to_owned(), 5_000_000),
    ]);
    assert!(
        net.check_jail("web", &spec, &limits, ns)
            .unwrap()
            .is_empty()
    );
    assert!(fake.calls().is_empty(), "{:?}", fake.calls());
    // A rate removed by hand: that rate alone is set again.
    fake.rates.lock().unwrap().insert(host.clone(), 0);
    let repaired = net.check_jail("web", &spec, &limits, ns).unwrap();
    assert_eq!(repaired, ["rate limit to jail web"]);
    assert_eq!(fake.calls().len(), 1);
    assert!(fake.calls()[0].starts_with(&format!(
        "tc host qdisc replace dev {host} root tbf rate 10000000bit"
    )));
    // The address taken away inside: the whole link is made again.
    fake.calls.lock().unwrap().clear();
    *fake.end.lock().unwrap() = Some(JailEnd {
        addresses: Vec::new(),
        ..right.clone()
    });
    let repaired = net.check_jail("web", &spec, &limits, ns).unwrap();
    assert_eq!(repaired.len(), 1);
    assert!(repaired[0].contains("address or route"), "{repaired:?}");
    assert!(
        fake.calls()
            .iter()
            .any(|c| c.starts_with(&format!("link {host}")))
    );
    // A repair that fails says why and is tried again later.
    *fake.fail_on.lock().unwrap() = Some("link".into());
    assert!(net.check_jail("web", &spec, &limits, ns).is_err());
    // Its end unreadable (the jail ending meanwhile): left alone; its
    // rates unreadable: said, and nothing is touched.
    *fake.fail_on.lock().unwrap() = None;
    fake.calls.lock().unwrap().clear();
    *fake.end.lock().unwrap() = None;
    fake.rates.lock().unwrap().insert(host.clone(), 10_000_000);
    assert!(
        net.check_jail("web", &spec, &limits, ns)
            .unwrap()
            .is_empty()
    );
    fake.rates.lock().unwrap().clear();
    let e = net.check_jail("web", &spec, &limits, ns).unwrap_err();
    assert!(e.to_string().contains("unreadable"), "{e}");
    assert!(fake.calls().is_empty());
}

#[test]
fn a_failed_rate_limit_removes_the_new_link() {
    let fake = RecordingNet::default();
    *fake.fail_on.lock().unwrap() = Some("tc jail".into());
    let net = Network {
        host: &fake,
        node: node(),
    };
    let limits = Limits {
        net_ingress_bps: 10_000_000,
        net_egress_bps: 5_000_000,
        ..Limits::default()
    };
    let spec = NetSpec::new(Ipv4Addr::new(10, 77, 0, 9));
    let err = net
        .attach("web", &spec, &limits, Path::new("/proc/1/ns/net"))
        .unwrap_err();
    assert!(err.to_string().contains("tc jail"), "{err}");
    let l = host_link("web");
    assert_eq!(
        fake.calls(),
        [
            format!("del {l}"),
            format!("link {l} stk0 10.77.0.9/16 via 10.77.0.1"),
            format!(
                "tc host qdisc replace dev {l} root tbf rate 10000000bit burst 15140 latency 50ms"
            ),
            "tc jail qdisc replace dev eth0 root tbf rate 5000000bit burst 15140 latency 50ms"
                .to_string(),
            format!("del {l}"),
        ]
    );
}

#[test]
fn live_rate_changes_touch_only_the_changed_direction() {
    let fake = RecordingNet::default();
    let net = Network {
        host: &fake,
        node: node(),
    };
    let old = Limits {
        net_ingress_bps: 10_000_000,
        net_egress_bps: 5_000_000,
        ..Limits::default()
    };
    let new = Limits {
        net_egress_bps: 0,
        ..old
    };
    net.set_rates("web", &new, Some(&old), Path::new("/x"))
        .unwrap();
    assert_eq!(fake.calls(), ["tc jail qdisc del dev eth0 root"]);
}

#[test]
fn the_firewall_is_loaded_only_when_missing() {
    let fake = RecordingNet::default();
    let net = Network {
        host: &fake,
        node: node(),
    };
    net.ensure_node().unwrap();
    net.ensure_node().unwrap();
    let nft = fake.calls().iter().filter(|c| c.starts_with("nft")).count();
    assert_eq!(nft, 1);
}

/// The rule count of a real listing is what the program wrote, and none once
/// the table is flushed: what the repair relies on to tell a table it wrote
/// from one changed right after (run as root with `nft`).
#[test]
fn a_listed_table_counts_the_rules_its_program_wrote() {
    if !nix::unistd::Uid::effective().is_root()
        || std::process::Command::new("nft")
            .arg("--version")
            .output()
            .is_err()
    {
        eprintln!("SKIPPED: needs root and nft");
        return;
    }
    let table = format!("stkcount{}", std::process::id());
    struct Gone(String);
    impl Drop for Gone {
        fn drop(&mut self) {
            let _ = std::process::Command::new("nft")
                .args(["delete", "table", "inet", &self.0])
                .status();
        }
    }
    let _gone = Gone(table.clone());
    let mut program = firewall(&table, "stkcount0", &[22, 80]);
    let spec = NetSpec {
        nat: true,
        ..NetSpec::new(Ipv4Addr::new(10, 77, 0, 2))
    };
    for line in jail_elements(&table, "add", &spec) {
        program += &line;
        program.push('\n');
    }
    let nft = |script: &str| {
        use std::io::Write as _;
        let mut child = std::process::Command::new("nft")
            .args(["-f", "-"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        assert!(child.wait().unwrap().success(), "{script}");
    };
    let listing = || {
        let out = std::process::Command::new("nft")
            .args(["list", "table", "inet", &table])
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap()
    };
    nft(&program);
    let written = rules_in_program(&program);
    assert!(written > 10, "{program}");
    assert_eq!(rules_in_listing(&listing()), written, "{}", listing());
    nft(&format!("flush table inet {table}\n"));
    assert_eq!(rules_in_listing(&listing()), 0, "{}", listing());
}
