//! A jail's network: an address from the node's pool on the node's bridge,
//! one veth pair whose jail end is created directly inside the jail's
//! network namespace, bridge port isolation (jails never reach each other),
//! an nftables table of Stockade's own (jails never reach host services;
//! published ports; optional outbound NAT) and tbf rate limits per
//! direction.
//!
//! Links, addresses, routes and the firewall check go over netlink. Two
//! steps start a program: `nft` (loading rules and map elements: the
//! nftables rule bytecode is not worth re-implementing, and it runs only
//! when the firewall is missing or a jail publishes ports or uses NAT) and
//! `tc` (tbf parameters; only for jails with a rate limit).

use std::collections::HashSet;
use std::fmt;
use std::fs::File;
use std::io::Write as _;
use std::net::{Ipv4Addr, TcpListener};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use ipnet::Ipv4Net;
use nix::errno::Errno;
use serde::{Deserialize, Serialize};
use stockade_domain::Limits;

use crate::error::JailError;
use crate::netlink::{self, Netlink};

/// The nftables table Stockade owns on a node (family `inet`) by default.
pub const FIREWALL_TABLE: &str = "stockade";
/// The name of the jail's end of its veth pair, inside the jail.
pub const JAIL_LINK: &str = "eth0";

/// A jail's network: its address on the node's bridge and what it exposes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetSpec {
    /// The jail's address, from the node's pool (see [`allocate`]).
    pub address: Ipv4Addr,
    /// Host ports forwarded to the jail.
    #[serde(default)]
    pub publish: Vec<Publish>,
    /// Outbound NAT to the world (off: the jail reaches only what is
    /// published towards it).
    #[serde(default)]
    pub nat: bool,
}

impl NetSpec {
    /// A jail on `address` with nothing published and no outbound NAT.
    pub fn new(address: Ipv4Addr) -> Self {
        Self {
            address,
            publish: Vec::new(),
            nat: false,
        }
    }
}

/// A TCP port of the host forwarded to a port of the jail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Publish {
    /// The host's port.
    pub host_port: u16,
    /// The jail's port.
    pub jail_port: u16,
}

impl Publish {
    /// Parses `HOST:JAIL`, e.g. `8080:80`.
    pub fn parse(s: &str) -> Result<Self, JailError> {
        let invalid = |reason: &str| JailError::Invalid {
            what: "published port",
            reason: format!("{s:?}: {reason}"),
        };
        let (h, j) = s
            .split_once(':')
            .ok_or_else(|| invalid("expected HOST:JAIL, e.g. 8080:80"))?;
        let port = |p: &str| match p.parse::<u16>() {
            Ok(0) | Err(_) => Err(invalid("ports are 1 to 65535")),
            Ok(n) => Ok(n),
        };
        Ok(Self {
            host_port: port(h)?,
            jail_port: port(j)?,
        })
    }
}

/// Every address of the pool is taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("address pool {pool} is exhausted")]
pub struct PoolExhausted {
    /// The pool.
    pub pool: Ipv4Net,
}

/// The first free jail address of `pool` (given as the gateway address
/// with its prefix, e.g. `10.77.0.1/16`): not the network or broadcast
/// address, not the gateway, not in `used`.
pub fn allocate(pool: Ipv4Net, used: &[Ipv4Addr]) -> Result<Ipv4Addr, PoolExhausted> {
    let used: HashSet<Ipv4Addr> = used.iter().copied().collect();
    pool.hosts()
        .find(|a| *a != pool.addr() && !used.contains(a))
        .ok_or(PoolExhausted { pool })
}

/// Parses a rate in bits/s: a number with an optional unit, as `tc` writes
/// them (`10mbit`, `500kbit`, `1gbit`, `1000000`; `kbps`/`mbps` are
/// bytes/s). `0` means "not limited".
pub fn parse_rate(what: &'static str, s: &str) -> Result<u64, JailError> {
    let invalid = |reason: &str| JailError::Invalid {
        what,
        reason: format!("{s:?}: {reason}"),
    };
    let t = s.trim().to_ascii_lowercase();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let factor: u64 = match unit {
        "" | "bit" => 1,
        "k" | "kbit" => 1_000,
        "m" | "mbit" => 1_000_000,
        "g" | "gbit" => 1_000_000_000,
        "bps" => 8,
        "kbps" => 8_000,
        "mbps" => 8_000_000,
        "gbps" => 8_000_000_000,
        _ => {
            return Err(invalid(
                "unknown unit (bit, kbit, mbit, gbit, bps, kbps, mbps)",
            ));
        }
    };
    let (whole, frac) = num.split_once('.').unwrap_or((num, ""));
    if whole.is_empty() && frac.is_empty() {
        return Err(invalid("expected a number, e.g. 10mbit"));
    }
    let whole: u64 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| invalid("not a number"))?
    };
    let mut bits = whole
        .checked_mul(factor)
        .ok_or_else(|| invalid("too large"))?;
    if !frac.is_empty() {
        let digits = u32::try_from(frac.len()).map_err(|_| invalid("not a number"))?;
        let f: u64 = frac.parse().map_err(|_| invalid("not a number"))?;
        let scale = 10u64
            .checked_pow(digits)
            .ok_or_else(|| invalid("too many decimals"))?;
        bits = bits
            .checked_add(f.saturating_mul(factor) / scale)
            .ok_or_else(|| invalid("too large"))?;
    }
    if bits != 0 && bits < MIN_RATE_BPS {
        return Err(invalid("below the smallest rate, 8kbit"));
    }
    Ok(bits)
}

/// The smallest rate limit, bits/s (1 kB/s); less would starve TCP.
pub const MIN_RATE_BPS: u64 = 8_000;

/// The name of a jail's host-side veth: `sk` + 48 bits of a hash of the
/// jail's name (interface names have at most 15 bytes; jail names more).
pub fn host_link(jail: &str) -> String {
    // FNV-1a, 64 bits: stable across releases, unlike std's hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in jail.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("sk{:012x}", h & 0xffff_ffff_ffff)
}

/// The node's network settings, from the engine configuration.
#[derive(Debug, Clone)]
pub(crate) struct NodeNet<'a> {
    pub bridge: &'a str,
    pub table: &'a str,
    pub gateway: Ipv4Net,
    /// Host TCP ports jails may reach on the gateway address.
    pub open_ports: &'a [u16],
    /// Whether the engine may turn on IPv4 forwarding (publishing to other
    /// machines, outbound NAT).
    pub forwarding: bool,
    pub proc_root: &'a Path,
}

/// The nftables program that (re)creates Stockade's table: idempotent
/// (`add` keeps what exists, chains are flushed and refilled in the same
/// transaction) and it keeps the set and map elements of existing jails.
pub(crate) fn firewall(table: &str, bridge: &str, open_ports: &[u16]) -> String {
    let t = format!("inet {table}");
    let b = format!("\"{bridge}\"");
    let mut s = format!(
        "add table {t}\n\
         add set {t} nat_jails {{ type ipv4_addr; }}\n\
         add map {t} publish_tcp {{ type inet_service : ipv4_addr . inet_service; }}\n\
         add chain {t} input {{ type filter hook input priority filter; policy accept; }}\n\
         add chain {t} forward {{ type filter hook forward priority filter; policy accept; }}\n\
         add chain {t} prerouting {{ type nat hook prerouting priority dstnat; policy accept; }}\n\
         add chain {t} output {{ type nat hook output priority -100; policy accept; }}\n\
         add chain {t} postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}\n"
    );
    for chain in ["input", "forward", "prerouting", "output", "postrouting"] {
        s += &format!("flush chain {t} {chain}\n");
    }
    // Jails reach the host only with replies to connections the host
    // opened, and on the ports the operator opened to them.
    s += &format!("add rule {t} input iifname {b} ct state established,related accept\n");
    if !open_ports.is_empty() {
        let ports: Vec<String> = open_ports.iter().map(u16::to_string).collect();
        s += &format!(
            "add rule {t} input iifname {b} tcp dport {{ {} }} accept\n",
            ports.join(", ")
        );
    }
    s += &format!("add rule {t} input iifname {b} drop\n");
    // Routed jail-to-jail traffic (through the gateway) is refused as the
    // bridge's port isolation refuses bridged traffic; towards a jail only
    // replies and published ports pass; from a jail only replies and NAT.
    for rule in [
        format!("iifname {b} oifname {b} drop"),
        format!("oifname {b} ct state established,related accept"),
        format!("oifname {b} ct status dnat accept"),
        format!("oifname {b} drop"),
        format!("iifname {b} ct state established,related accept"),
        format!("iifname {b} ip saddr @nat_jails accept"),
        format!("iifname {b} drop"),
    ] {
        s += &format!("add rule {t} forward {rule}\n");
    }
    // Published ports: from other machines (prerouting) and from the host
    // itself, 127.0.0.1 included (output; the bridge routes loopback
    // sources, and they are masqueraded to the gateway address).
    for chain in ["prerouting", "output"] {
        s += &format!(
            "add rule {t} {chain} fib daddr type local dnat ip to tcp dport map @publish_tcp\n"
        );
    }
    s += &format!("add rule {t} postrouting oifname {b} ip saddr 127.0.0.0/8 masquerade\n");
    s += &format!("add rule {t} postrouting oifname != {b} ip saddr @nat_jails masquerade\n");
    s
}

/// The nftables elements of one jail (publish map, NAT set), as `verb`
/// (`add` or `delete`) commands, one per line.
pub(crate) fn jail_elements(table: &str, verb: &str, spec: &NetSpec) -> Vec<String> {
    let t = format!("inet {table}");
    let mut out = Vec::new();
    for p in &spec.publish {
        out.push(if verb == "delete" {
            format!("delete element {t} publish_tcp {{ {} }}", p.host_port)
        } else {
            format!(
                "{verb} element {t} publish_tcp {{ {} : {} . {} }}",
                p.host_port, spec.address, p.jail_port
            )
        });
    }
    if spec.nat {
        out.push(format!(
            "{verb} element {t} nat_jails {{ {} }}",
            spec.address
        ));
    }
    out
}

/// `tc` arguments limiting `dev`'s egress to `bps` bits/s with tbf, or
/// removing the limit (`bps == 0`).
pub(crate) fn tbf_args(dev: &str, bps: u64) -> Vec<String> {
    if bps == 0 {
        return ["qdisc", "del", "dev", dev, "root"]
            .map(String::from)
            .to_vec();
    }
    // Burst: 10 ms at the rate, and at least ten full frames, so a token
    // bucket refilled at timer granularity still reaches the rate.
    let burst = (bps / 8 / 100).max(15_140);
    [
        "qdisc".to_string(),
        "replace".into(),
        "dev".into(),
        dev.into(),
        "root".into(),
        "tbf".into(),
        "rate".into(),
        format!("{bps}bit"),
        "burst".into(),
        burst.to_string(),
        "latency".into(),
        "50ms".into(),
    ]
    .to_vec()
}

/// The jail end of a veth pair, to be created in a jail's namespace.
#[derive(Debug, Clone)]
pub(crate) struct JailLink<'a> {
    /// Host-side name.
    pub host: &'a str,
    pub bridge: &'a str,
    /// The jail's network namespace (`/proc/<init>/ns/net`).
    pub netns: &'a Path,
    pub address: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Ipv4Addr,
}

/// The jail's end of its link, as seen inside its namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct JailEnd {
    /// Whether the link is up.
    pub up: bool,
    /// Its IPv4 addresses with their prefix lengths.
    pub addresses: Vec<(Ipv4Addr, u8)>,
    /// The gateway of its default route.
    pub gateway: Option<Ipv4Addr>,
}

/// The gateway of the default route through `dev` in a `/proc/net/route`
/// table (addresses in hex, in the kernel's byte order).
fn default_gateway(table: &str, dev: &str) -> Option<Ipv4Addr> {
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 8 || f[0] != dev || f[1] != "00000000" || f[7] != "00000000" {
            return None;
        }
        let raw = u32::from_str_radix(f[2], 16).ok()?;
        Some(Ipv4Addr::from(raw.to_ne_bytes()))
    })
}

/// The rate of a root token bucket in `tc -j qdisc show` output: bits/s,
/// 0 when the root is another queue (no limit).
fn tbf_rate(json: &str) -> Option<u64> {
    let qdiscs: Vec<serde_json::Value> = serde_json::from_str(json).ok()?;
    let root = qdiscs.iter().find(|q| q["root"].as_bool() == Some(true))?;
    if root["kind"] != "tbf" {
        return Some(0);
    }
    root["options"]["rate"].as_u64().map(|bytes| bytes * 8)
}

/// Whether a rate read back from the kernel is the one set: `tc` keeps
/// whole bytes per second.
fn same_rate(have: u64, want: u64) -> bool {
    have.abs_diff(want) < 8 + want / 1000
}

/// Privileged network operations, behind one small trait: [`LinuxNet`]
/// makes the real calls, tests use a recording fake.
pub(crate) trait NetHost: Send + Sync + fmt::Debug {
    /// Creates the bridge with the gateway address if missing; brings it up.
    fn ensure_bridge(&self, bridge: &str, gateway: Ipv4Net) -> Result<(), JailError>;
    /// Whether Stockade's nftables table exists.
    fn firewall_present(&self, table: &str) -> bool;
    /// Runs an nftables program (`nft -f -`).
    fn nft(&self, object: &str, script: &str) -> Result<(), JailError>;
    /// The ruleset of Stockade's table as `nft list table` prints it, or
    /// `None` when it cannot be read.
    fn firewall_listing(&self, table: &str) -> Option<String>;
    /// Creates the veth pair into the jail's namespace, isolates the bridge
    /// port and gives the jail end its address and default route.
    fn add_link(&self, link: &JailLink<'_>) -> Result<(), JailError>;
    /// Deletes a host link if present.
    fn del_link(&self, name: &str) -> Result<(), JailError>;
    /// Runs `tc` with `args`, in the namespace `netns` if given.
    fn tc(&self, netns: Option<&Path>, args: &[String]) -> Result<(), JailError>;
    /// The rate in bits/s of the token bucket at the root of `dev` (in the
    /// namespace `netns` if given), 0 when there is none.
    fn root_rate(&self, netns: Option<&Path>, dev: &str) -> Result<u64, JailError>;
    /// What the jail's end of its link looks like from inside the jail's
    /// namespace, `None` when it cannot be read.
    fn jail_end(&self, netns: &Path) -> Option<JailEnd>;
    /// Whether nothing on the host listens on TCP `port`.
    fn port_free(&self, port: u16) -> bool;
    /// Writes a sysctl file.
    fn sysctl(&self, path: &Path, value: &str) -> Result<(), JailError>;
}

fn net_err(op: &'static str, object: impl Into<String>) -> impl FnOnce(Errno) -> JailError {
    let object = object.into();
    move |source| JailError::Net { op, object, source }
}

/// The real host.
#[derive(Debug, Default)]
pub(crate) struct LinuxNet;

fn program_error(program: &'static str, object: &str, detail: String) -> JailError {
    JailError::Program {
        program,
        path: PathBuf::from(object),
        detail,
    }
}

impl NetHost for LinuxNet {
    fn ensure_bridge(&self, bridge: &str, gateway: Ipv4Net) -> Result<(), JailError> {
        // The usual case, without taking the kernel's network lock (which
        // a jail's namespace being torn down may hold for milliseconds).
        if bridge_ready(bridge, gateway.addr()) {
            return Ok(());
        }
        let mut nl = Netlink::route().map_err(net_err("netlink socket", bridge))?;
        match nl.add_bridge(bridge, netlink::mac_of(gateway.addr())) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(net_err("create bridge", bridge)(e)),
        }
        let index = netlink::link_index(bridge).map_err(net_err("find bridge", bridge))?;
        nl.set_up(index).map_err(net_err("bring up", bridge))?;
        match nl.add_addr(index, gateway.addr(), gateway.prefix_len()) {
            Ok(()) | Err(Errno::EEXIST) => Ok(()),
            Err(e) => Err(net_err(
                "add gateway address",
                format!("{bridge} {gateway}"),
            )(e)),
        }
    }

    fn firewall_present(&self, table: &str) -> bool {
        Netlink::netfilter()
            .and_then(|mut nl| nl.nft_table_exists(netlink::NFPROTO_INET, table))
            .is_ok()
    }

    fn nft(&self, object: &str, script: &str) -> Result<(), JailError> {
        let mut child = Command::new("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| program_error("nft", object, e.to_string()))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(script.as_bytes())
                .map_err(|e| program_error("nft", object, e.to_string()))?;
        }
        let out = child
            .wait_with_output()
            .map_err(|e| program_error("nft", object, e.to_string()))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(program_error(
                "nft",
                object,
                format!(
                    "{}: {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            ))
        }
    }

    fn firewall_listing(&self, table: &str) -> Option<String> {
        let out = Command::new("nft")
            .args(["list", "table", "inet", table])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn add_link(&self, link: &JailLink<'_>) -> Result<(), JailError> {
        let netns = File::open(link.netns).map_err(JailError::io("open", link.netns))?;
        let mut nl = Netlink::route().map_err(net_err("netlink socket", link.host))?;
        let master =
            netlink::link_index(link.bridge).map_err(net_err("find bridge", link.bridge))?;
        nl.add_veth_into(
            link.host,
            master,
            JAIL_LINK,
            netlink::mac_of(link.address),
            &netns,
        )
        .map_err(net_err("create veth pair", link.host))?;
        let configured = (|| {
            let index = netlink::link_index(link.host).map_err(net_err("find", link.host))?;
            nl.isolate_port(index)
                .map_err(net_err("isolate bridge port", link.host))?;
            let jail_end = format!("{JAIL_LINK} of {}", link.netns.display());
            netlink::in_netns(&netns, || {
                let mut nl = Netlink::route()?;
                let index = netlink::link_index(JAIL_LINK)?;
                nl.set_up(index)?;
                nl.add_addr(index, link.address, link.prefix)?;
                nl.add_default_route(index, link.gateway)
            })
            .map_err(net_err("configure", jail_end))
        })();
        if configured.is_err() {
            let _ = nl.del_link(link.host);
        }
        configured
    }

    fn del_link(&self, name: &str) -> Result<(), JailError> {
        if !Path::new("/sys/class/net").join(name).exists() {
            return Ok(());
        }
        let mut nl = Netlink::route().map_err(net_err("netlink socket", name))?;
        match nl.del_link(name) {
            Ok(()) | Err(Errno::ENODEV) => Ok(()),
            Err(e) => Err(net_err("delete link", name)(e)),
        }
    }

    fn tc(&self, netns: Option<&Path>, args: &[String]) -> Result<(), JailError> {
        let object = args.get(3).map_or("tc", String::as_str);
        let mut cmd = Command::new("tc");
        cmd.args(args).stdout(Stdio::null()).stderr(Stdio::piped());
        let ns = netns
            .map(|p| File::open(p).map_err(JailError::io("open", p)))
            .transpose()?;
        if let Some(ns) = &ns {
            let fd = ns.as_raw_fd();
            // SAFETY: the closure runs in the forked child before exec and
            // makes one system call (setns) on an fd the parent keeps open.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setns(fd, libc::CLONE_NEWNET) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        let out = cmd
            .output()
            .map_err(|e| program_error("tc", object, e.to_string()))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(program_error(
                "tc",
                object,
                format!(
                    "{} {}: {}",
                    args.join(" "),
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            ))
        }
    }

    fn root_rate(&self, netns: Option<&Path>, dev: &str) -> Result<u64, JailError> {
        let mut cmd = Command::new("tc");
        cmd.args(["-j", "qdisc", "show", "dev", dev])
            .stdin(Stdio::null())
            .stderr(Stdio::piped());
        let ns = netns
            .map(|p| File::open(p).map_err(JailError::io("open", p)))
            .transpose()?;
        if let Some(ns) = &ns {
            let fd = ns.as_raw_fd();
            // SAFETY: as in `tc`: one system call (setns) in the forked child.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setns(fd, libc::CLONE_NEWNET) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        let out = cmd
            .output()
            .map_err(|e| program_error("tc", dev, e.to_string()))?;
        if !out.status.success() {
            return Err(program_error(
                "tc",
                dev,
                format!(
                    "reading its queue: {}: {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            ));
        }
        tbf_rate(&String::from_utf8_lossy(&out.stdout))
            .ok_or_else(|| program_error("tc", dev, "its queue listing was not understood".into()))
    }

    fn jail_end(&self, netns: &Path) -> Option<JailEnd> {
        let ns = File::open(netns).ok()?;
        netlink::in_netns(&ns, || {
            let mut end = JailEnd {
                up: false,
                addresses: Vec::new(),
                gateway: None,
            };
            for a in nix::ifaddrs::getifaddrs()? {
                if a.interface_name != JAIL_LINK {
                    continue;
                }
                end.up |= a.flags.contains(nix::net::if_::InterfaceFlags::IFF_UP);
                let addr = a.address.as_ref().and_then(|s| s.as_sockaddr_in());
                let mask = a.netmask.as_ref().and_then(|s| s.as_sockaddr_in());
                if let (Some(addr), Some(mask)) = (addr, mask) {
                    // At most 32 ones.
                    let prefix = u8::try_from(u32::from(mask.ip()).count_ones()).unwrap_or(32);
                    end.addresses.push((addr.ip(), prefix));
                }
            }
            // This thread's namespace, not the process's.
            let routes =
                std::fs::read_to_string("/proc/thread-self/net/route").map_err(|_| Errno::EIO)?;
            end.gateway = default_gateway(&routes, JAIL_LINK);
            Ok(end)
        })
        .ok()
    }

    fn port_free(&self, port: u16) -> bool {
        TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).is_ok()
    }

    fn sysctl(&self, path: &Path, value: &str) -> Result<(), JailError> {
        if std::fs::read_to_string(path).is_ok_and(|v| v.trim() == value) {
            return Ok(());
        }
        std::fs::write(path, value).map_err(JailError::io("write", path))
    }
}

/// Whether `bridge` exists as a bridge, is up and has `gateway`.
fn bridge_ready(bridge: &str, gateway: Ipv4Addr) -> bool {
    let dir = Path::new("/sys/class/net").join(bridge);
    let up = std::fs::read_to_string(dir.join("flags"))
        .ok()
        .and_then(|f| u32::from_str_radix(f.trim().trim_start_matches("0x"), 16).ok())
        .is_some_and(|f| f & 1 != 0);
    up && dir.join("bridge").is_dir()
        && nix::ifaddrs::getifaddrs().is_ok_and(|mut addrs| {
            addrs.any(|a| {
                a.interface_name == bridge
                    && a.address
                        .as_ref()
                        .and_then(|s| s.as_sockaddr_in())
                        .is_some_and(|sin| sin.ip() == gateway)
            })
        })
}

/// Network counters of a jail, from its point of view.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct NetCounters {
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub tx_packets: u64,
}

/// Reads the host-side veth counters: what the host end sends, the jail
/// receives, and the other way round.
pub(crate) fn counters(sys_root: &Path, host_link: &str) -> NetCounters {
    let dir = sys_root
        .join("class/net")
        .join(host_link)
        .join("statistics");
    let read = |f: &str| {
        std::fs::read_to_string(dir.join(f))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    };
    NetCounters {
        rx_bytes: read("tx_bytes"),
        tx_bytes: read("rx_bytes"),
        rx_packets: read("tx_packets"),
        tx_packets: read("rx_packets"),
    }
}

/// The ports (interface names) of `bridge`.
pub(crate) fn bridge_ports(sys_root: &Path, bridge: &str) -> Vec<String> {
    std::fs::read_dir(sys_root.join("class/net").join(bridge).join("brif"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The network steps of the engine, on one node.
#[derive(Debug)]
pub(crate) struct Network<'a> {
    pub host: &'a dyn NetHost,
    pub node: NodeNet<'a>,
}

impl Network<'_> {
    /// Checks a jail's network against the node's pool and the other
    /// jails (`others`: name and network of every other jail).
    pub fn validate(
        &self,
        jail: &str,
        spec: &NetSpec,
        others: &[(String, NetSpec)],
    ) -> Result<(), JailError> {
        let pool = self.node.gateway;
        let a = spec.address;
        if !pool.contains(&a) || a == pool.network() || a == pool.broadcast() {
            return Err(JailError::Invalid {
                what: "jail address",
                reason: format!("{a} is not a host address of the node's pool {pool}"),
            });
        }
        if a == pool.addr() {
            return Err(JailError::AddressInUse {
                address: a,
                by: format!("the gateway of bridge {}", self.node.bridge),
            });
        }
        let mut seen = HashSet::new();
        for p in &spec.publish {
            if !seen.insert(p.host_port) {
                return Err(JailError::Invalid {
                    what: "published port",
                    reason: format!("host port {} is published twice", p.host_port),
                });
            }
        }
        for (name, other) in others.iter().filter(|(n, _)| n != jail) {
            if other.address == a {
                return Err(JailError::AddressInUse {
                    address: a,
                    by: format!("jail {name}"),
                });
            }
            if let Some(p) = other.publish.iter().find(|p| seen.contains(&p.host_port)) {
                return Err(JailError::PortInUse {
                    port: p.host_port,
                    by: format!("jail {name}"),
                });
            }
        }
        Ok(())
    }

    /// Makes sure the bridge and the firewall exist.
    pub fn ensure_node(&self) -> Result<(), JailError> {
        self.host
            .ensure_bridge(self.node.bridge, self.node.gateway)?;
        // Without this the host's own connections to a published port on
        // 127.0.0.1 would be dropped as martians on the bridge; jails still
        // cannot reach the host's loopback (the input chain drops them).
        let localnet = self
            .node
            .proc_root
            .join("sys/net/ipv4/conf")
            .join(self.node.bridge)
            .join("route_localnet");
        self.host.sysctl(&localnet, "1")?;
        if !self.host.firewall_present(self.node.table) {
            self.host.nft(
                &format!("table inet {}", self.node.table),
                &firewall(self.node.table, self.node.bridge, self.node.open_ports),
            )?;
        }
        Ok(())
    }

    /// Registers a jail's published ports and NAT in the firewall. The
    /// bridge and firewall must exist ([`Self::ensure_node`]).
    pub fn publish(&self, jail: &str, spec: &NetSpec) -> Result<(), JailError> {
        let lines = jail_elements(self.node.table, "add", spec);
        if lines.is_empty() {
            return Ok(());
        }
        for p in &spec.publish {
            if !self.host.port_free(p.host_port) {
                return Err(JailError::PortInUse {
                    port: p.host_port,
                    by: "a process on the host".into(),
                });
            }
        }
        if self.node.forwarding {
            self.host
                .sysctl(&self.node.proc_root.join("sys/net/ipv4/ip_forward"), "1")?;
        }
        self.host
            .nft(&format!("jail {jail}"), &(lines.join("\n") + "\n"))
    }

    /// Removes a jail's elements from the firewall; missing ones are fine.
    pub fn unpublish(&self, jail: &str, spec: &NetSpec) -> Result<(), JailError> {
        for line in jail_elements(self.node.table, "delete", spec) {
            if let Err(e) = self.host.nft(&format!("jail {jail}"), &(line + "\n")) {
                let missing = matches!(&e, JailError::Program { detail, .. }
                    if detail.contains("No such file or directory"));
                if !missing {
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Connects a started jail (its network namespace at `netns`) to the
    /// bridge and applies its rate limits. On failure nothing is left.
    pub fn attach(
        &self,
        jail: &str,
        spec: &NetSpec,
        limits: &Limits,
        netns: &Path,
    ) -> Result<(), JailError> {
        let host = host_link(jail);
        // A pair of an earlier run may linger while its namespace is torn
        // down asynchronously.
        self.host.del_link(&host)?;
        self.host.add_link(&JailLink {
            host: &host,
            bridge: self.node.bridge,
            netns,
            address: spec.address,
            prefix: self.node.gateway.prefix_len(),
            gateway: self.node.gateway.addr(),
        })?;
        let rates = self.set_rates(jail, limits, None, netns);
        if rates.is_err() {
            let _ = self.host.del_link(&host);
        }
        rates
    }

    /// Applies the rate limits: traffic to the jail on the host end's
    /// egress, traffic from the jail on the jail end's egress (set from
    /// outside; the jail lacks CAP_NET_ADMIN to change it). `old`: the
    /// limits in force, so unchanged directions are left alone.
    pub fn set_rates(
        &self,
        jail: &str,
        limits: &Limits,
        old: Option<&Limits>,
        netns: &Path,
    ) -> Result<(), JailError> {
        let host = host_link(jail);
        let unchanged = |new: u64, old: Option<u64>| match old {
            Some(o) => o == new,
            // A fresh link has no limit to remove.
            None => new == 0,
        };
        if !unchanged(limits.net_ingress_bps, old.map(|o| o.net_ingress_bps)) {
            self.tc_rate(None, &host, limits.net_ingress_bps)?;
        }
        if !unchanged(limits.net_egress_bps, old.map(|o| o.net_egress_bps)) {
            self.tc_rate(Some(netns), JAIL_LINK, limits.net_egress_bps)?;
        }
        Ok(())
    }

    /// Compares a running jail's link with what it should be (its end up,
    /// with its address and default route; the rate limits of both ends)
    /// and puts back what differs: the whole link when its end changed,
    /// else each rate. What was repaired, in words; nothing when all was
    /// as it should be or could not be read.
    pub fn check_jail(
        &self,
        jail: &str,
        spec: &NetSpec,
        limits: &Limits,
        netns: &Path,
    ) -> Result<Vec<String>, JailError> {
        let host = host_link(jail);
        let want = JailEnd {
            up: true,
            addresses: vec![(spec.address, self.node.gateway.prefix_len())],
            gateway: Some(self.node.gateway.addr()),
        };
        if let Some(end) = self.host.jail_end(netns)
            && end != want
        {
            self.attach(jail, spec, limits, netns)?;
            return Ok(vec![format!(
                "link {host} of jail {jail} (its address or route)"
            )]);
        }
        let mut repaired = Vec::new();
        for (ns, dev, bps) in [
            (None, host.as_str(), limits.net_ingress_bps),
            (Some(netns), JAIL_LINK, limits.net_egress_bps),
        ] {
            if !same_rate(self.host.root_rate(ns, dev)?, bps) {
                self.tc_rate(ns, dev, bps)?;
                let side = if ns.is_some() { "from" } else { "to" };
                repaired.push(format!("rate limit {side} jail {jail}"));
            }
        }
        Ok(repaired)
    }

    fn tc_rate(&self, netns: Option<&Path>, dev: &str, bps: u64) -> Result<(), JailError> {
        match self.host.tc(netns, &tbf_args(dev, bps)) {
            // Removing a limit that is not there.
            Err(JailError::Program { detail, .. })
                if bps == 0
                    && (detail.contains("handle of zero") || detail.contains("No such file")) =>
            {
                Ok(())
            }
            r => r,
        }
    }

    /// Rewrites the node's whole firewall table as it should be (its rules,
    /// and the published ports and NAT of `jails`, added again: elements of
    /// a jail being made meanwhile are never taken away) in one transaction, so
    /// whatever was changed or flushed by hand is put back at once and no
    /// packet ever sees half a ruleset. Whether anything differed.
    /// `written`: the table as this repair last left it; while it still
    /// reads so, nothing is rewritten (a rewrite's own events would
    /// otherwise wake the next repair, and so on).
    pub fn repair_firewall(
        &self,
        jails: &[(String, NetSpec)],
        written: &mut Option<String>,
    ) -> Result<bool, JailError> {
        let table = self.node.table;
        let before = self.host.firewall_listing(table);
        if before.is_some() && before == *written {
            return Ok(false);
        }
        let mut program = firewall(table, self.node.bridge, self.node.open_ports);
        for (_, spec) in jails {
            for line in jail_elements(table, "add", spec) {
                program += &line;
                program.push('\n');
            }
        }
        self.host.nft(&format!("table inet {table}"), &program)?;
        let after = self.host.firewall_listing(table);
        let changed = before != after;
        *written = after;
        Ok(changed)
    }

    /// Removes the jail's veth pair if present.
    pub fn detach(&self, jail: &str) -> Result<(), JailError> {
        self.host.del_link(&host_link(jail))
    }
}

#[cfg(test)]
pub(crate) mod fake {
    //! A network host that records what it was asked to do.
    use super::*;
    use std::sync::Mutex;

    #[derive(Debug, Default)]
    pub(crate) struct RecordingNet {
        pub calls: Mutex<Vec<String>>,
        /// Calls starting with this fail.
        pub fail_on: Mutex<Option<String>>,
        pub busy_ports: Vec<u16>,
        pub firewall: Mutex<bool>,
        /// What `root_rate` reads, by device; unknown when absent.
        pub rates: Mutex<std::collections::HashMap<String, u64>>,
        /// What `jail_end` reads; unknown when `None`.
        pub end: Mutex<Option<JailEnd>>,
    }

    impl RecordingNet {
        pub fn calls(&self) -> Vec<String> {
            self.calls.lock().unwrap().clone()
        }
        fn rec(&self, s: String) -> Result<(), JailError> {
            let fail = self
                .fail_on
                .lock()
                .unwrap()
                .as_ref()
                .is_some_and(|f| s.starts_with(f.as_str()));
            self.calls.lock().unwrap().push(s.clone());
            if fail {
                Err(JailError::Net {
                    op: "fake",
                    object: s,
                    source: Errno::EIO,
                })
            } else {
                Ok(())
            }
        }
    }

    impl NetHost for RecordingNet {
        fn ensure_bridge(&self, bridge: &str, gateway: Ipv4Net) -> Result<(), JailError> {
            self.rec(format!("bridge {bridge} {gateway}"))
        }
        fn firewall_present(&self, _table: &str) -> bool {
            *self.firewall.lock().unwrap()
        }
        fn firewall_listing(&self, _table: &str) -> Option<String> {
            None
        }
        fn nft(&self, _object: &str, script: &str) -> Result<(), JailError> {
            let first = script.lines().next().unwrap_or_default().to_string();
            self.rec(format!("nft {first}"))?;
            if first.starts_with("add table") {
                *self.firewall.lock().unwrap() = true;
            }
            Ok(())
        }
        fn add_link(&self, link: &JailLink<'_>) -> Result<(), JailError> {
            self.rec(format!(
                "link {} {} {}/{} via {}",
                link.host, link.bridge, link.address, link.prefix, link.gateway
            ))
        }
        fn del_link(&self, name: &str) -> Result<(), JailError> {
            self.rec(format!("del {name}"))
        }
        fn tc(&self, netns: Option<&Path>, args: &[String]) -> Result<(), JailError> {
            let ns = if netns.is_some() { "jail" } else { "host" };
            self.rec(format!("tc {ns} {}", args.join(" ")))
        }
        fn root_rate(&self, _netns: Option<&Path>, dev: &str) -> Result<u64, JailError> {
            self.rates
                .lock()
                .unwrap()
                .get(dev)
                .copied()
                .ok_or_else(|| program_error("tc", dev, "unreadable in the fake".into()))
        }
        fn jail_end(&self, _netns: &Path) -> Option<JailEnd> {
            self.end.lock().unwrap().clone()
        }
        fn port_free(&self, port: u16) -> bool {
            !self.busy_ports.contains(&port)
        }
        fn sysctl(&self, path: &Path, value: &str) -> Result<(), JailError> {
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            self.rec(format!("sysctl {name}={value}"))
        }
    }
}

#[cfg(test)]
mod tests {
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
                jail_port: 80
            }
        );
        for bad in ["8080", "0:80", "8080:70000", "a:b", ":80"] {
            assert!(Publish::parse(bad).is_err(), "{bad}");
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
        spec.nat = true;
        assert_eq!(
            jail_elements(FIREWALL_TABLE, "add", &spec),
            [
                "add element inet stockade publish_tcp { 8080 : 10.77.0.9 . 80 }",
                "add element inet stockade nat_jails { 10.77.0.9 }"
            ]
        );
        assert_eq!(
            jail_elements(FIREWALL_TABLE, "delete", &spec)[0],
            "delete element inet stockade publish_tcp { 8080 }"
        );
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
}
