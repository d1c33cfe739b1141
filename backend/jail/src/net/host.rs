//! The privileged operations on the host's network, behind one small
//! trait ([`NetHost`]): links, addresses and routes over netlink, the
//! firewall through `nft`, rate limits through `tc`; and what is read back
//! from the kernel (queues, a jail's end, counters, bridge ports).

use std::fmt;
use std::fs::File;
use std::io::Write as _;
use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use ipnet::Ipv4Net;
use nix::errno::Errno;

use crate::error::JailError;
use crate::netlink::{self, Netlink};

use super::{JAIL_LINK, Protocol};

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
pub(super) fn default_gateway(table: &str, dev: &str) -> Option<Ipv4Addr> {
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
pub(super) fn tbf_rate(json: &str) -> Option<u64> {
    let qdiscs: Vec<serde_json::Value> = serde_json::from_str(json).ok()?;
    let root = qdiscs.iter().find(|q| q["root"].as_bool() == Some(true))?;
    if root["kind"] != "tbf" {
        return Some(0);
    }
    root["options"]["rate"].as_u64().map(|bytes| bytes * 8)
}

/// Whether a rate read back from the kernel is the one set: `tc` keeps
/// whole bytes per second.
pub(super) fn same_rate(have: u64, want: u64) -> bool {
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
    /// Whether nothing on the host listens on `port` of `protocol`.
    fn port_free(&self, port: u16, protocol: Protocol) -> bool;
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

pub(super) fn program_error(program: &'static str, object: &str, detail: String) -> JailError {
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
        // A program that ends without reading its input (refusing it)
        // breaks the pipe: it is still waited for, and its own words are
        // the error.
        let written = child
            .stdin
            .take()
            .map_or(Ok(()), |mut stdin| stdin.write_all(script.as_bytes()));
        let out = child
            .wait_with_output()
            .map_err(|e| program_error("nft", object, e.to_string()))?;
        if out.status.success() {
            written.map_err(|e| program_error("nft", object, e.to_string()))
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
        let out = run_tc(netns, object, args)?;
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
        let out = run_tc(netns, dev, &["-j", "qdisc", "show", "dev", dev])?;
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

    fn port_free(&self, port: u16, protocol: Protocol) -> bool {
        match protocol {
            Protocol::Tcp => TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).is_ok(),
            Protocol::Udp => UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port)).is_ok(),
        }
    }

    fn sysctl(&self, path: &Path, value: &str) -> Result<(), JailError> {
        if std::fs::read_to_string(path).is_ok_and(|v| v.trim() == value) {
            return Ok(());
        }
        std::fs::write(path, value).map_err(JailError::io("write", path))
    }
}

/// Runs `tc` with `args`, in the network namespace `netns` if given; its
/// output, whatever its exit status.
fn run_tc(
    netns: Option<&Path>,
    object: &str,
    args: &[impl AsRef<std::ffi::OsStr>],
) -> Result<std::process::Output, JailError> {
    let mut cmd = Command::new("tc");
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
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
    cmd.output()
        .map_err(|e| program_error("tc", object, e.to_string()))
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
