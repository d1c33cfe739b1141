//! Root-only tests of jail networks and privileges: probes run inside real
//! jails and must fail (or be contained); rate limits are measured with a
//! transfer between the jail and the host. Each test checks on exit
//! (through the fixture) that no veth, bridge port, firewall element,
//! mount, cgroup or state is left, and removes its bridge and table.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;
use stockade_jail::{
    JailError, JailKind, JailName, JailStatus, Limits, NetSpec, Protocol, Publish,
};

fn sh(f: &Fixture, name: &JailName, script: &str) -> i32 {
    f.engine
        .exec(name, &["sh".into(), "-c".into(), script.into()])
        .unwrap()
}

fn init_pid(f: &Fixture, name: &JailName) -> i32 {
    match f.engine.status(name).unwrap() {
        Some(JailStatus::Running { pid }) => pid,
        other => panic!("{name} not running: {other:?}"),
    }
}

/// A file inside a running jail, seen from the host.
fn in_jail(f: &Fixture, name: &JailName, path: &str) -> PathBuf {
    PathBuf::from(format!("/proc/{}/root{path}", init_pid(f, name)))
}

fn address(spec: &stockade_jail::JailSpec) -> Ipv4Addr {
    spec.network.as_ref().unwrap().address
}

/// GETs `/` over plain HTTP/1.0; the whole response.
fn http_get(to: SocketAddr) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

fn wait_for_port(to: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect_timeout(&to, Duration::from_millis(200)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {to}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

const SLEEPER: &[&str] = &["sleep", "600"];

#[test]
fn jails_reach_neither_each_other_nor_the_host_but_published_ports_reach_them() {
    if !root_or_skip("jails_reach_neither_each_other_nor_the_host") {
        return;
    }
    let f = Fixture::with_network();
    let gateway = f.net.as_ref().unwrap().gateway.addr();
    // Jail A serves HTTP (the busybox image's default command) and
    // publishes it on a host port.
    let published = TcpListener::bind("0.0.0.0:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let published_udp = UdpSocket::bind("0.0.0.0:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut a = f.net_spec("web", JailKind::System, &[], small_limits());
    a.network.as_mut().unwrap().publish = vec![
        Publish {
            host_port: published,
            jail_port: 80,
            protocol: Protocol::Tcp,
        },
        Publish {
            host_port: published_udp,
            jail_port: 5353,
            protocol: Protocol::Udp,
        },
    ];
    f.engine.create(&a).unwrap();
    f.engine.start(&a.name).unwrap();
    assert_eq!(
        sh(&f, &a.name, "echo hello-from-a > /srv/www/index.html"),
        0
    );
    // Jail B has outbound NAT: the world is open to it, other jails and
    // the host are not.
    let mut b = f.net_spec("probe", JailKind::System, SLEEPER, small_limits());
    b.network.as_mut().unwrap().nat = true;
    f.engine.create(&b).unwrap();
    f.engine.start(&b.name).unwrap();

    // The host reaches a jail directly and through the published port, on
    // loopback and on its own (gateway) address.
    let a_http = SocketAddr::from((address(&a), 80));
    wait_for_port(a_http);
    assert!(http_get(a_http).unwrap().contains("hello-from-a"));
    for host in [Ipv4Addr::LOCALHOST, gateway] {
        let page = http_get(SocketAddr::from((host, published)))
            .unwrap_or_else(|e| panic!("published port on {host}: {e}"));
        assert!(page.contains("hello-from-a"), "{host}: {page}");
    }

    // A datagram to the published UDP port reaches the jail's port: a
    // socket bound in the jail's network namespace (busybox has no UDP
    // server) by a thread of this test.
    let netns = format!("/proc/{}/ns/net", init_pid(&f, &a.name));
    let (bound, ready) = std::sync::mpsc::channel();
    let receiver = std::thread::spawn(move || {
        let ns = std::fs::File::open(netns).unwrap();
        nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let s = UdpSocket::bind("0.0.0.0:5353").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        bound.send(()).unwrap();
        let mut buf = [0u8; 64];
        s.recv(&mut buf).map(|n| buf[..n].to_vec())
    });
    ready.recv().unwrap();
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .send_to(b"hello-udp", (Ipv4Addr::LOCALHOST, published_udp))
        .unwrap();
    let got = receiver.join().unwrap();
    assert_eq!(
        got.as_deref().ok(),
        Some(&b"hello-udp"[..]),
        "the datagram to UDP port {published_udp} reached the jail: {got:?}"
    );

    // Host services: one on every address, one on loopback; both answer
    // the host itself.
    let any = TcpListener::bind("0.0.0.0:0").unwrap();
    let any_port = any.local_addr().unwrap().port();
    let lo = TcpListener::bind("127.0.0.1:0").unwrap();
    let lo_port = lo.local_addr().unwrap().port();
    TcpStream::connect((gateway, any_port)).unwrap();
    TcpStream::connect((Ipv4Addr::LOCALHOST, lo_port)).unwrap();

    // From jail B every one of them is out of reach.
    let a_addr = address(&a);
    let probes = [
        (
            "another jail's web server",
            format!("nc -w 2 {a_addr} 80 </dev/null"),
        ),
        ("another jail by ping", format!("ping -c 1 -W 1 {a_addr}")),
        (
            "a host service via the gateway",
            format!("nc -w 2 {gateway} {any_port} </dev/null"),
        ),
        (
            "a host service on 127.0.0.1",
            format!("nc -w 2 127.0.0.1 {lo_port} </dev/null"),
        ),
    ];
    for (what, probe) in &probes {
        assert_ne!(sh(&f, &b.name, probe), 0, "jail reached {what}: {probe}");
    }
    // ... while its own network works: its address and route are there.
    assert_eq!(
        sh(
            &f,
            &b.name,
            &format!(
                "ip -4 addr show eth0 | grep -q 'inet {}/24' && ip route | grep -q 'default via {gateway}'",
                address(&b)
            )
        ),
        0
    );
    // It sees only its loopback and its own end of the pair.
    assert_eq!(
        sh(
            &f,
            &b.name,
            r#"[ "$(ip -o link | awk -F': ' '{print $2}' | cut -d@ -f1 | sort | tr '\n' ' ')" = "eth0 lo " ]"#
        ),
        0
    );
    // A jail cannot lift its own rate limits or addresses (no NET_ADMIN).
    assert_ne!(sh(&f, &b.name, "ip addr add 10.9.9.9/32 dev eth0"), 0);
    assert_ne!(sh(&f, &b.name, "ip link set eth0 down"), 0);

    // Usage counts the jail's traffic from its point of view.
    let u = f.engine.usage(&a.name).unwrap();
    assert!(u.net_tx_bytes > 0 && u.net_rx_bytes > 0, "{u:?}");
    assert!(u.net_tx_packets > 0 && u.net_rx_packets > 0, "{u:?}");

    // Stopping removes the pair; starting again makes a new one.
    f.engine.stop(&a.name, Duration::from_secs(1)).unwrap();
    let link = stockade_jail::host_link(a.name.as_str());
    assert!(link_gone(&link), "{link} still there");
    f.engine.start(&a.name).unwrap();
    wait_for_port(a_http);
    f.engine.destroy(&a.name).unwrap();
    f.engine.destroy(&b.name).unwrap();
    // The published port is gone with its jail.
    assert!(http_get(SocketAddr::from((Ipv4Addr::LOCALHOST, published))).is_err());
    assert!(f.leftovers().is_empty(), "{:?}", f.leftovers());
}

#[test]
fn privileged_probes_inside_a_jail_are_contained() {
    if !root_or_skip("privileged_probes_inside_a_jail_are_contained") {
        return;
    }
    let f = Fixture::with_network();
    let spec = f.net_spec("probe", JailKind::System, SLEEPER, small_limits());
    f.engine.create(&spec).unwrap();
    f.engine.start(&spec.name).unwrap();
    let secret = f.dir.path().join("host-secret");
    std::fs::write(&secret, "original").unwrap();
    let secret = secret.display();
    // Each probe exits 0 when the jail was contained.
    let probes = [
        ("mount", "mkdir -p /mnt/x; ! mount -t tmpfs none /mnt/x".to_string()),
        ("mknod a disk", "! mknod /tmp/sda b 8 0".into()),
        ("load a module", "echo x > /tmp/m.ko; insmod /tmp/m.ko 2>&1 | grep -q 'not permitted'".into()),
        ("a user namespace", "unshare -U -r true 2>&1 | grep -q 'not permitted'".into()),
        ("other namespaces", "! nsenter -t 1 -n true".into()),
        ("pivot_root", "! pivot_root /tmp /tmp".into()),
        ("swapon", "! swapon /dev/null".into()),
        ("write sysrq", "! sh -c 'echo h > /proc/sysrq-trigger' 2>/dev/null".into()),
        ("write a sysctl", "! sh -c 'echo 1 > /proc/sys/kernel/sysrq' 2>/dev/null".into()),
        ("read kernel memory", "[ $(head -c 16 /proc/kcore 2>/dev/null | wc -c) -eq 0 ]".into()),
        ("read keys", "[ $(cat /proc/keys /proc/timer_list 2>/dev/null | wc -c) -eq 0 ]".into()),
        (
            "raise its cgroup limits",
            "! sh -c 'echo max > /sys/fs/cgroup/pids.max' 2>/dev/null \
             && ! sh -c 'echo -1 > /sys/fs/cgroup/memory/memory.limit_in_bytes' 2>/dev/null \
             && mkdir -p /tmp/cg && ! mount -t cgroup2 none /tmp/cg"
                .into(),
        ),
        (
            "reach a host file",
            format!(
                "! sh -c 'echo pwned > {secret}' 2>/dev/null; \
                 ! sh -c 'echo pwned > /proc/1/root{secret}' 2>/dev/null; \
                 ! ls /dev | grep -qE '^(sd|vd|nvme|loop|dm-)'"
            ),
        ),
        // A setuid-root program started by an unprivileged user must not
        // become root: with no_new_privs the setuid bit is ignored.
        (
            "gain privileges through setuid",
            "mkdir -p /tmp/s && cp /bin/busybox /tmp/s/busybox && chmod 4755 /tmp/s/busybox \
             && sed -i 's/^root:x:/root::/' /etc/passwd \
             && out=$(start-stop-daemon -S -c nobody -x /tmp/s/busybox -- su root -c 'id -u' 2>&1); \
             echo \"$out\" | grep -q 'must be suid'"
                .into(),
        ),
        (
            "capability and filter state",
            "grep -q '^NoNewPrivs:[[:space:]]*1' /proc/self/status \
             && grep -q '^Seccomp:[[:space:]]*2' /proc/self/status \
             && grep -q '^CapInh:[[:space:]]*0000000000000000' /proc/self/status \
             && grep -q '^CapAmb:[[:space:]]*0000000000000000' /proc/self/status \
             && grep -q '^CapBnd:[[:space:]]*00000000a00405fb' /proc/self/status \
             && grep -q '^CapEff:[[:space:]]*00000000a00405fb' /proc/self/status"
                .into(),
        ),
    ];
    // The jail's own command (not only what exec runs) is filtered too.
    let init = init_pid(&f, &spec.name);
    let children = std::fs::read_to_string(format!("/proc/{init}/task/{init}/children")).unwrap();
    let command = children.split_whitespace().next().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{command}/status")).unwrap();
    for want in ["NoNewPrivs:\t1", "Seccomp:\t2", "CapEff:\t00000000a00405fb"] {
        assert!(status.contains(want), "{want} not in {status}");
    }
    let mut escaped = Vec::new();
    for (what, probe) in &probes {
        if sh(&f, &spec.name, probe) != 0 {
            escaped.push(format!("{what}: {probe}"));
        }
    }
    assert!(escaped.is_empty(), "not contained: {escaped:#?}");
    assert_eq!(
        std::fs::read_to_string(f.dir.path().join("host-secret")).unwrap(),
        "original"
    );
    // The jail still works as root for what it should: owners, ports < 1024.
    assert_eq!(
        sh(
            &f,
            &spec.name,
            "touch /tmp/o && chown 33:33 /tmp/o && (httpd -p 81 -h /tmp && sleep 0.2 && nc -w 1 127.0.0.1 81 </dev/null)"
        ),
        0
    );
    f.engine.destroy(&spec.name).unwrap();
    assert!(f.leftovers().is_empty(), "{:?}", f.leftovers());
}

/// Bits per second over `window` of a counter read by `read`.
#[allow(clippy::cast_precision_loss, reason = "a measured rate")]
fn rate(window: Duration, read: &dyn Fn() -> u64) -> f64 {
    let (t0, b0) = (Instant::now(), read());
    std::thread::sleep(window);
    let (t1, b1) = (Instant::now(), read());
    (b1 - b0) as f64 * 8.0 / (t1 - t0).as_secs_f64()
}

/// Keeps a download from the jail's web server running until `stop`.
fn download(to: SocketAddr, stop: &std::sync::atomic::AtomicBool) {
    use std::sync::atomic::Ordering;
    let mut buf = vec![0u8; 1 << 16];
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut s) = TcpStream::connect_timeout(&to, Duration::from_secs(2)) else {
            continue;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        let _ = s.write_all(b"GET /big HTTP/1.0\r\n\r\n");
        while !stop.load(Ordering::Relaxed) {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(_) => break,
            }
        }
    }
}

/// Keeps an upload to the jail's sink running until `stop`.
fn upload(to: SocketAddr, stop: &std::sync::atomic::AtomicBool) {
    use std::sync::atomic::Ordering;
    let buf = vec![0u8; 1 << 16];
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut s) = TcpStream::connect_timeout(&to, Duration::from_secs(2)) else {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        };
        let _ = s.set_write_timeout(Some(Duration::from_millis(500)));
        while !stop.load(Ordering::Relaxed) {
            match s.write(&buf) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(_) => break,
            }
        }
    }
}

#[allow(clippy::cast_precision_loss, reason = "a measured rate")]
fn within(measured: f64, limit: u64) -> bool {
    (0.85..=1.15).contains(&(measured / limit as f64))
}

#[allow(clippy::cast_precision_loss, reason = "a measured rate")]
fn assert_not_above(what: &str, measured: f64, limit: u64) {
    assert!(
        measured <= limit as f64 * 1.15,
        "{what}: measured {:.2} Mbit/s, over its limit of {:.2} Mbit/s",
        measured / 1e6,
        limit as f64 / 1e6
    );
}

#[allow(clippy::cast_precision_loss, reason = "a measured rate")]
fn assert_near(what: &str, measured: f64, limit: u64) {
    assert!(
        within(measured, limit),
        "{what}: measured {:.2} Mbit/s against a limit of {:.2} Mbit/s",
        measured / 1e6,
        limit as f64 / 1e6
    );
    eprintln!(
        "{what}: {:.2} Mbit/s, limit {:.2} Mbit/s",
        measured / 1e6,
        limit as f64 / 1e6
    );
}

#[test]
fn rate_limits_hold_each_way_and_change_live() {
    if !root_or_skip("rate_limits_hold_each_way_and_change_live") {
        return;
    }
    use std::sync::atomic::{AtomicBool, Ordering};
    let f = Fixture::with_network();
    let mut limits = Limits {
        net_egress_bps: 8_000_000,
        net_ingress_bps: 16_000_000,
        ..small_limits()
    };
    let spec = f.net_spec("rate", JailKind::System, &[], limits);
    f.engine.create(&spec).unwrap();
    f.engine.start(&spec.name).unwrap();
    // A large file to serve, and a sink for uploads.
    assert_eq!(
        sh(
            &f,
            &spec.name,
            "dd if=/dev/zero of=/srv/www/big bs=1M count=24 2>/dev/null && \
             printf '#!/bin/sh\\ncat >/dev/null\\n' > /tmp/sink && chmod +x /tmp/sink && \
             (nc -ll -p 5001 -e /tmp/sink >/dev/null 2>&1 </dev/null &)"
        ),
        0
    );
    let web = SocketAddr::from((address(&spec), 80));
    let sink = SocketAddr::from((address(&spec), 5001));
    wait_for_port(web);
    wait_for_port(sink);

    let measure = |what: &str,
                   load: fn(SocketAddr, &AtomicBool),
                   to: SocketAddr,
                   counter: &dyn Fn() -> u64,
                   limit: u64| {
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| load(to, &stop));
            // Let TCP fill the bucket and settle, then measure 2-s windows. A
            // window above the band fails at once (the limit leaks); one below
            // it may be the load starved of CPU on a busy host, so up to four
            // windows are taken and the best must be within the band.
            std::thread::sleep(Duration::from_millis(700));
            let mut best = 0.0_f64;
            for _ in 0..4 {
                let r = rate(Duration::from_secs(2), counter);
                assert_not_above(what, r, limit);
                best = best.max(r);
                if within(best, limit) {
                    break;
                }
            }
            stop.store(true, Ordering::Relaxed);
            assert_near(what, best, limit);
        });
    };
    let tx = || f.engine.usage(&spec.name).unwrap().net_tx_bytes;
    let rx = || f.engine.usage(&spec.name).unwrap().net_rx_bytes;
    measure("from the jail", download, web, &tx, limits.net_egress_bps);
    measure("to the jail", upload, sink, &rx, limits.net_ingress_bps);

    // Live: a new egress rate, the ingress limit lifted.
    limits.net_egress_bps = 24_000_000;
    limits.net_ingress_bps = 0;
    f.engine.update_limits(&spec.name, &limits).unwrap();
    measure(
        "from the jail, raised live",
        download,
        web,
        &tx,
        limits.net_egress_bps,
    );
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| upload(sink, &stop));
        std::thread::sleep(Duration::from_millis(500));
        let r = rate(Duration::from_secs(1), &rx);
        stop.store(true, Ordering::Relaxed);
        assert!(r > 16_000_000.0 * 1.5, "ingress still limited: {r} bit/s");
    });
    assert!(in_jail(&f, &spec.name, "/srv/www/big").exists());
    f.engine.destroy(&spec.name).unwrap();
    assert!(f.leftovers().is_empty(), "{:?}", f.leftovers());
}

#[test]
fn bad_network_input_is_refused_and_leaves_nothing() {
    if !root_or_skip("bad_network_input_is_refused_and_leaves_nothing") {
        return;
    }
    let f = Fixture::with_network();
    let pool = f.net.as_ref().unwrap().gateway;
    let a = f.net_spec("a", JailKind::System, SLEEPER, small_limits());
    f.engine.create(&a).unwrap();

    // The same address again.
    let mut b = f.spec("b", JailKind::System, SLEEPER, small_limits());
    b.network = Some(NetSpec::new(address(&a)));
    let e = f.engine.create(&b).unwrap_err();
    assert!(matches!(e, JailError::AddressInUse { .. }), "{e}");
    assert!(e.to_string().contains(a.name.as_str()), "{e}");
    // The gateway, and an address outside the pool.
    for bad in [pool.addr(), Ipv4Addr::new(192, 0, 2, 200)] {
        b.network = Some(NetSpec::new(bad));
        let e = f.engine.create(&b).unwrap_err();
        assert!(e.to_string().contains(&bad.to_string()), "{e}");
    }
    // A host port a host process listens on.
    let busy = TcpListener::bind("0.0.0.0:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let mut spec = NetSpec::new(f.engine.allocate_address().unwrap());
    spec.publish = vec![Publish {
        host_port: port,
        jail_port: 80,
        protocol: Protocol::Tcp,
    }];
    b.network = Some(spec);
    let e = f.engine.create(&b).unwrap_err();
    assert!(
        matches!(e, JailError::PortInUse { port: p, .. } if p == port),
        "{e}"
    );
    // Nothing of the refused jail exists.
    assert!(f.engine.status(&b.name).unwrap().is_none());

    // The pool runs out: a /30 has two host addresses, one the gateway's.
    let mut one: Vec<Ipv4Addr> = Vec::new();
    let tiny: stockade_jail::Ipv4Net = "10.213.250.1/30".parse().unwrap();
    one.push(stockade_jail::allocate(tiny, &one).unwrap());
    let e = stockade_jail::allocate(tiny, &one).unwrap_err();
    assert_eq!(e.to_string(), "address pool 10.213.250.1/30 is exhausted");

    // A rate too small to carry TCP.
    let mut slow = f.spec("slow", JailKind::System, SLEEPER, small_limits());
    slow.limits.net_egress_bps = 100;
    slow.network = Some(NetSpec::new(f.engine.allocate_address().unwrap()));
    let e = f.engine.create(&slow).unwrap_err();
    assert!(e.to_string().contains("net-egress"), "{e}");
    assert!(f.engine.status(&slow.name).unwrap().is_none());

    // Rates and port specs.
    for bad in ["ten", "5kbit", "10 parsecs"] {
        assert!(
            stockade_jail::parse_rate("net-egress", bad).is_err(),
            "{bad}"
        );
    }
    assert!(Publish::parse("80").is_err());

    // A jail whose network cannot be attached does not start, and keeps
    // no pair: the bridge is taken away under it.
    let net = f.net.as_ref().unwrap();
    std::process::Command::new("ip")
        .args(["link", "del", &net.bridge])
        .status()
        .unwrap();
    let peer = format!("{}p", net.bridge);
    let added = std::process::Command::new("ip")
        .args([
            "link",
            "add",
            &net.bridge,
            "type",
            "veth",
            "peer",
            "name",
            &peer,
        ])
        .status()
        .unwrap();
    assert!(added.success());
    let e = f.engine.start(&a.name).unwrap_err();
    let link = stockade_jail::host_link(a.name.as_str());
    assert!(e.to_string().contains(&link), "{e}");
    assert!(matches!(
        f.engine.status(&a.name).unwrap(),
        Some(JailStatus::Stopped)
    ));
    f.engine.destroy(&a.name).unwrap();
    assert!(f.leftovers().is_empty(), "{:?}", f.leftovers());
}

#[test]
fn run_with_network_leaves_nothing() {
    if !root_or_skip("run_with_network_leaves_nothing") {
        return;
    }
    let f = Fixture::with_network();
    let spec = f.net_spec("run", JailKind::App, &[], small_limits());
    let gateway = f.net.as_ref().unwrap().gateway.addr();
    let code = f
        .engine
        .run(
            &spec,
            &[
                "sh".into(),
                "-c".into(),
                format!("ip route | grep -q 'default via {gateway}' && exit 3"),
            ],
        )
        .unwrap();
    assert_eq!(code, 3);
    assert!(f.leftovers().is_empty(), "{:?}", f.leftovers());
}

#[test]
fn root_in_a_user_namespace_jail_is_not_root_on_the_host() {
    if !root_or_skip("root_in_a_user_namespace_jail_is_not_root_on_the_host") {
        return;
    }
    let f = Fixture::with_network();
    let limits = Limits {
        disk_bytes: 64 << 20,
        ..small_limits()
    };
    let mut spec = f.net_spec("userns", JailKind::System, &[], limits);
    spec.user_namespace = true;
    f.engine.create(&spec).unwrap();
    f.engine.start(&spec.name).unwrap();
    // Inside: root, the image's files owned by root, a writable root home,
    // and its web server on port 80 of its own network.
    assert_eq!(
        sh(
            &f,
            &spec.name,
            "[ $(id -u) = 0 ] && [ $(stat -c %u /bin/busybox) = 0 ] && [ $(stat -c %u /etc/passwd) = 0 ] \
             && echo made-inside > /root/made && chown 33:33 /root/made \
             && echo page > /srv/www/index.html"
        ),
        0
    );
    let web = SocketAddr::from((address(&spec), 80));
    wait_for_port(web);
    assert!(http_get(web).unwrap().contains("page"));
    // On the host: the jail's processes and files belong to its range.
    let pid = init_pid(&f, &spec.name);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let host_uid: u32 = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap();
    assert!(host_uid >= 1_000_000, "init runs as host uid {host_uid}");
    let made = f
        .state_dir()
        .join("jails")
        .join(spec.name.as_str())
        .join("volume/upper/root/made");
    let meta = std::fs::metadata(&made).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(meta.uid(), host_uid + 33, "{}", made.display());
    // Root in the jail cannot act as host root: the host's files it can
    // see (through /proc of its own processes) stay out of reach, and
    // even a capability it kept is bounded by its namespace.
    assert_ne!(sh(&f, &spec.name, "echo x > /proc/sys/kernel/hostname"), 0);
    // Restart keeps the range and the owners.
    f.engine
        .restart(&spec.name, Duration::from_secs(1))
        .unwrap();
    assert_eq!(
        sh(
            &f,
            &spec.name,
            "[ $(stat -c %u /root/made) = 33 ] && [ $(id -u) = 0 ]"
        ),
        0
    );
    f.engine.destroy(&spec.name).unwrap();
    assert!(f.leftovers().is_empty(), "{:?}", f.leftovers());
}
