//! rtnetlink over a raw socket: the few link, address and route requests a
//! jail's network needs, built by hand. The engine is synchronous and needs
//! a dozen message shapes; a small builder here is quicker to compile and
//! to read than an async netlink stack.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

use nix::errno::Errno;

// From <linux/netlink.h>, <linux/rtnetlink.h>, <linux/if_link.h>.
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_DUMP: u16 = 0x300;
const NLA_F_NESTED: u16 = 0x8000;
const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_SETLINK: u16 = 19;
const RTM_NEWADDR: u16 = 20;
const RTM_NEWROUTE: u16 = 24;
const RTM_NEWSTATS: u16 = 92;
const RTM_GETSTATS: u16 = 94;
const IFLA_STATS_LINK_64: u16 = 1;
const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_MASTER: u16 = 10;
const IFLA_PROTINFO: u16 = 12;
const IFLA_LINKINFO: u16 = 18;
const IFLA_NET_NS_FD: u16 = 28;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;
const VETH_INFO_PEER: u16 = 1;
const IFLA_BRPORT_ISOLATED: u16 = 33;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const RTA_GATEWAY: u16 = 5;
const RTA_OIF: u16 = 4;
const RT_TABLE_MAIN: u8 = 254;
const RTPROT_BOOT: u8 = 3;
const RTN_UNICAST: u8 = 1;
const AF_INET: u8 = 2;
const AF_BRIDGE: u8 = 7;
const AF_UNSPEC: u8 = 0;
const IFF_UP: u32 = 1;
// From <linux/netfilter/nfnetlink.h> and <linux/netfilter/nf_tables.h>.
const NFT_MSG_GETTABLE: u16 = (10 << 8) | 1;
const NFTA_TABLE_NAME: u16 = 1;
/// `NFPROTO_INET`: nftables' dual-stack family.
pub(crate) const NFPROTO_INET: u8 = 1;

/// One request under construction: a header, a fixed struct, attributes.
#[derive(Debug)]
struct Msg {
    buf: Vec<u8>,
    nests: Vec<usize>,
}

fn align(n: usize) -> usize {
    (n + 3) & !3
}

impl Msg {
    fn new(kind: u16, flags: u16) -> Self {
        let mut buf = vec![0u8; 16];
        buf[4..6].copy_from_slice(&kind.to_ne_bytes());
        buf[6..8].copy_from_slice(&(flags | NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
        Self {
            buf,
            nests: Vec::new(),
        }
    }

    /// A dump request: answered by many messages and `NLMSG_DONE`, no ack.
    fn dump(kind: u16) -> Self {
        let mut m = Self::new(kind, 0);
        m.buf[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
        m
    }

    fn pad(&mut self) {
        self.buf.resize(align(self.buf.len()), 0);
    }

    fn raw(&mut self, bytes: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(bytes);
        self.pad();
        self
    }

    /// A `struct ifinfomsg`.
    fn ifinfo(&mut self, family: u8, index: i32, flags: u32, change: u32) -> &mut Self {
        let mut b = [0u8; 16];
        b[0] = family;
        b[4..8].copy_from_slice(&index.to_ne_bytes());
        b[8..12].copy_from_slice(&flags.to_ne_bytes());
        b[12..16].copy_from_slice(&change.to_ne_bytes());
        self.raw(&b)
    }

    fn attr(&mut self, kind: u16, data: &[u8]) -> &mut Self {
        let len = u16::try_from(4 + data.len()).unwrap_or(u16::MAX);
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.raw(data)
    }

    fn attr_str(&mut self, kind: u16, s: &str) -> &mut Self {
        let mut v = s.as_bytes().to_vec();
        v.push(0);
        self.attr(kind, &v)
    }

    fn begin(&mut self, kind: u16) -> &mut Self {
        self.nests.push(self.buf.len());
        self.buf.extend_from_slice(&[0, 0]);
        self.buf
            .extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
        self
    }

    fn end(&mut self) -> &mut Self {
        if let Some(start) = self.nests.pop() {
            let len = u16::try_from(self.buf.len() - start).unwrap_or(u16::MAX);
            self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        }
        self
    }

    fn finish(&mut self, seq: u32) -> &[u8] {
        let len = u32::try_from(self.buf.len()).unwrap_or(u32::MAX);
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf[8..12].copy_from_slice(&seq.to_ne_bytes());
        &self.buf
    }
}

/// An rtnetlink socket, bound to the network namespace it was opened in.
#[derive(Debug)]
pub(crate) struct Netlink {
    fd: OwnedFd,
    seq: u32,
}

impl Netlink {
    /// An rtnetlink socket in the calling thread's network namespace.
    pub fn route() -> Result<Self, Errno> {
        Self::open(libc::NETLINK_ROUTE)
    }

    /// An nfnetlink socket (nftables) in the calling thread's namespace.
    pub fn netfilter() -> Result<Self, Errno> {
        Self::open(libc::NETLINK_NETFILTER)
    }

    fn open(protocol: libc::c_int) -> Result<Self, Errno> {
        // SAFETY: plain socket creation; the fd is wrapped at once.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                protocol,
            )
        };
        let fd = Errno::result(fd)?;
        // SAFETY: the kernel just returned this fd; nobody else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self { fd, seq: 0 })
    }

    /// Sends one request and waits for its acknowledgement.
    fn request(&mut self, msg: &mut Msg) -> Result<(), Errno> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let bytes = msg.finish(seq);
        // SAFETY: sends from a live buffer; the netlink socket has a
        // default destination (the kernel) for unconnected sends.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), bytes.as_ptr().cast(), bytes.len(), 0) };
        Errno::result(n)?;
        let mut buf = vec![0u8; 8192];
        loop {
            // SAFETY: receives into a live buffer of the given length.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            let n = usize::try_from(Errno::result(n)?).map_err(|_| Errno::EIO)?;
            let mut off = 0;
            while off + 16 <= n {
                let word =
                    |i: usize| u32::from_ne_bytes([buf[i], buf[i + 1], buf[i + 2], buf[i + 3]]);
                let len = usize::try_from(word(off)).map_err(|_| Errno::EIO)?;
                let kind = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
                let got_seq = word(off + 8);
                if len < 16 {
                    return Err(Errno::EIO);
                }
                if kind == NLMSG_ERROR && got_seq == seq && off + 20 <= n {
                    return error_message(&buf, off);
                }
                off += align(len);
            }
        }
    }

    /// The counters of every link of the socket's namespace, by link
    /// index, from one `RTM_GETSTATS` dump asking for the 64-bit link
    /// statistics only: about 0.3 µs a link, where four sysfs files cost
    /// several microseconds and a full link dump a few.
    pub fn link_stats(&mut self, out: &mut HashMap<u32, LinkStats>) -> Result<(), Errno> {
        out.clear();
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let mut m = Msg::dump(RTM_GETSTATS);
        // struct if_stats_msg: family, 3 pad bytes, ifindex, filter_mask.
        let mut req = [0u8; 12];
        req[8..12].copy_from_slice(&(1u32 << (IFLA_STATS_LINK_64 - 1)).to_ne_bytes());
        m.raw(&req);
        let bytes = m.finish(seq);
        // SAFETY: sends from a live buffer to the kernel (default destination).
        let n = unsafe { libc::send(self.fd.as_raw_fd(), bytes.as_ptr().cast(), bytes.len(), 0) };
        Errno::result(n)?;
        // Larger than any batch the kernel sends (at most 32 KiB).
        let mut buf = vec![0u8; 64 << 10];
        loop {
            // SAFETY: receives into a live buffer of the given length;
            // MSG_TRUNC makes the call report a batch that did not fit.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_TRUNC,
                )
            };
            let n = usize::try_from(Errno::result(n)?).map_err(|_| Errno::EIO)?;
            if n > buf.len() {
                return Err(Errno::EMSGSIZE);
            }
            if parse_stats(&buf[..n], seq, out)? {
                return Ok(());
            }
        }
    }

    /// Whether the nftables table `family name` exists (`ENOENT` if not):
    /// a cheap check, where listing it with `nft` costs a program start.
    pub fn nft_table_exists(&mut self, family: u8, name: &str) -> Result<(), Errno> {
        let mut m = Msg::new(NFT_MSG_GETTABLE, 0);
        // struct nfgenmsg: family, version, resource id (big endian).
        m.raw(&[family, 0, 0, 0]).attr_str(NFTA_TABLE_NAME, name);
        self.request(&mut m)
    }

    /// Creates a bridge, up, with a fixed MAC address (else a bridge takes
    /// the lowest of its ports', which changes as jails come and go and
    /// leaves the jails' neighbour entries for the gateway stale); `EEXIST`
    /// if it exists.
    pub fn add_bridge(&mut self, name: &str, mac: [u8; 6]) -> Result<(), Errno> {
        let mut m = Msg::new(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL);
        m.ifinfo(AF_UNSPEC, 0, IFF_UP, IFF_UP)
            .attr_str(IFLA_IFNAME, name)
            .attr(IFLA_ADDRESS, &mac)
            .begin(IFLA_LINKINFO)
            .attr_str(IFLA_INFO_KIND, "bridge")
            .end();
        self.request(&mut m)
    }

    /// Brings a link up.
    pub fn set_up(&mut self, index: u32) -> Result<(), Errno> {
        let mut m = Msg::new(RTM_NEWLINK, 0);
        m.ifinfo(AF_UNSPEC, signed(index)?, IFF_UP, IFF_UP);
        self.request(&mut m)
    }

    /// Creates a veth pair: `host` (up, a port of bridge `master`) in this
    /// namespace and `peer` (down) directly in the namespace `netns`, in one
    /// request, so the jail end never exists on the host. (The kernel
    /// configures the peer before linking the two, so asking for the peer
    /// up here fails with `ENOTCONN`: it is brought up from inside.)
    pub fn add_veth_into(
        &mut self,
        host: &str,
        master: u32,
        peer: &str,
        peer_mac: [u8; 6],
        netns: &File,
    ) -> Result<(), Errno> {
        let fd = u32::try_from(netns.as_fd().as_raw_fd()).map_err(|_| Errno::EBADF)?;
        let mut m = Msg::new(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL);
        m.ifinfo(AF_UNSPEC, 0, IFF_UP, IFF_UP)
            .attr_str(IFLA_IFNAME, host)
            .attr(IFLA_MASTER, &master.to_ne_bytes())
            .begin(IFLA_LINKINFO)
            .attr_str(IFLA_INFO_KIND, "veth")
            .begin(IFLA_INFO_DATA)
            .begin(VETH_INFO_PEER)
            .ifinfo(AF_UNSPEC, 0, 0, 0)
            .attr_str(IFLA_IFNAME, peer)
            .attr(IFLA_ADDRESS, &peer_mac)
            .attr(IFLA_NET_NS_FD, &fd.to_ne_bytes())
            .end()
            .end()
            .end();
        self.request(&mut m)
    }

    /// Isolates a bridge port: it can talk only to non-isolated ports (the
    /// bridge itself), never to another isolated port.
    pub fn isolate_port(&mut self, index: u32) -> Result<(), Errno> {
        let mut m = Msg::new(RTM_SETLINK, 0);
        m.ifinfo(AF_BRIDGE, signed(index)?, 0, 0)
            .begin(IFLA_PROTINFO)
            .attr(IFLA_BRPORT_ISOLATED, &[1])
            .end();
        self.request(&mut m)
    }

    /// Deletes a link by name (its veth peer goes with it).
    pub fn del_link(&mut self, name: &str) -> Result<(), Errno> {
        let mut m = Msg::new(RTM_DELLINK, 0);
        m.ifinfo(AF_UNSPEC, 0, 0, 0).attr_str(IFLA_IFNAME, name);
        self.request(&mut m)
    }

    /// Adds an IPv4 address with its prefix to a link; `EEXIST` if present.
    pub fn add_addr(&mut self, index: u32, addr: Ipv4Addr, prefix: u8) -> Result<(), Errno> {
        let mut m = Msg::new(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL);
        let mut ifa = [0u8; 8];
        ifa[0] = AF_INET;
        ifa[1] = prefix;
        ifa[4..8].copy_from_slice(&index.to_ne_bytes());
        m.raw(&ifa)
            .attr(IFA_LOCAL, &addr.octets())
            .attr(IFA_ADDRESS, &addr.octets());
        self.request(&mut m)
    }

    /// Adds the default route via `gateway` on link `index`.
    pub fn add_default_route(&mut self, index: u32, gateway: Ipv4Addr) -> Result<(), Errno> {
        let mut m = Msg::new(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL);
        // struct rtmsg: family, dst_len, src_len, tos, table, protocol,
        // scope (universe), type; flags.
        let rt = [
            AF_INET,
            0,
            0,
            0,
            RT_TABLE_MAIN,
            RTPROT_BOOT,
            0,
            RTN_UNICAST,
            0,
            0,
            0,
            0,
        ];
        m.raw(&rt)
            .attr(RTA_GATEWAY, &gateway.octets())
            .attr(RTA_OIF, &index.to_ne_bytes());
        self.request(&mut m)
    }
}

/// The traffic counters of one link, as its own end counts them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct LinkStats {
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

/// The outcome an `NLMSG_ERROR` message at `off` carries: code 0 is an
/// acknowledgement, anything else the negated errno.
fn error_message(buf: &[u8], off: usize) -> Result<(), Errno> {
    let code = i32::from_ne_bytes([buf[off + 16], buf[off + 17], buf[off + 18], buf[off + 19]]);
    if code == 0 {
        Ok(())
    } else {
        Err(Errno::from_raw(-code))
    }
}

/// Adds the links of one batch of an `RTM_GETSTATS` dump answering
/// request `seq` to `out`; true once the dump is complete.
fn parse_stats(buf: &[u8], seq: u32, out: &mut HashMap<u32, LinkStats>) -> Result<bool, Errno> {
    let u16_at = |i: usize| u16::from_ne_bytes([buf[i], buf[i + 1]]);
    let u32_at = |i: usize| u32::from_ne_bytes([buf[i], buf[i + 1], buf[i + 2], buf[i + 3]]);
    let u64_at = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&buf[i..i + 8]);
        u64::from_ne_bytes(b)
    };
    let mut off = 0;
    while off + 16 <= buf.len() {
        let len = usize::try_from(u32_at(off)).map_err(|_| Errno::EIO)?;
        if len < 16 || off + len > buf.len() {
            return Err(Errno::EIO);
        }
        let kind = u16_at(off + 4);
        if u32_at(off + 8) == seq {
            match kind {
                NLMSG_DONE => return Ok(true),
                // An acknowledgement (code 0) also ends the answer.
                NLMSG_ERROR if len >= 20 => return error_message(buf, off).map(|()| true),
                // struct if_stats_msg (12 bytes), then attributes.
                RTM_NEWSTATS if len >= 28 => {
                    let index = u32_at(off + 20);
                    let mut a = off + 28;
                    while a + 4 <= off + len {
                        let alen = usize::from(u16_at(a));
                        if alen < 4 || a + alen > off + len {
                            break;
                        }
                        // struct rtnl_link_stats64 starts with these four.
                        if u16_at(a + 2) & !NLA_F_NESTED == IFLA_STATS_LINK_64 && alen >= 4 + 32 {
                            let p = a + 4;
                            out.insert(
                                index,
                                LinkStats {
                                    rx_packets: u64_at(p),
                                    tx_packets: u64_at(p + 8),
                                    rx_bytes: u64_at(p + 16),
                                    tx_bytes: u64_at(p + 24),
                                },
                            );
                        }
                        a += align(alen);
                    }
                }
                _ => {}
            }
        }
        off += align(len);
    }
    Ok(false)
}

fn signed(index: u32) -> Result<i32, Errno> {
    i32::try_from(index).map_err(|_| Errno::ENODEV)
}

/// A locally administered MAC address derived from an IPv4 address, so a
/// restarted jail (a new veth pair) keeps the MAC its neighbours cached.
pub(crate) fn mac_of(addr: Ipv4Addr) -> [u8; 6] {
    let [a, b, c, d] = addr.octets();
    [0x02, 0x42, a, b, c, d]
}

/// The index of a link in the calling thread's network namespace.
pub(crate) fn link_index(name: &str) -> Result<u32, Errno> {
    let c = CString::new(name).map_err(|_| Errno::EINVAL)?;
    // SAFETY: `c` is a valid NUL-terminated string for the call.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if i == 0 { Err(Errno::last()) } else { Ok(i) }
}

/// Runs `f` on a short-lived thread that has entered the network
/// namespace `netns`; the engine's own threads never change namespace.
pub(crate) fn in_netns<T: Send>(
    netns: &File,
    f: impl FnOnce() -> Result<T, Errno> + Send,
) -> Result<T, Errno> {
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::setns(netns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)?;
            f()
        })
        .join()
        .unwrap_or(Err(Errno::EIO))
    })
}

#[cfg(test)]
mod tests;
