//! Kernel events that can mean a node's network was changed behind the
//! agent's back: a jail's host link or the bridge deleted, a jail's link
//! taken off the bridge (rtnetlink), or the node's firewall table changed
//! (nfnetlink). The agent repairs on them at once instead of at the next
//! resync; the resync stays the backstop for what sends no event.

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use crate::error::JailError;

// From <linux/rtnetlink.h>, <linux/if_link.h>, <linux/netfilter/nfnetlink.h>.
const RTMGRP_LINK: u32 = 1;
const NFNLGRP_NFTABLES: u32 = 7;
const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const IFLA_IFNAME: u16 = 3;
const IFLA_MASTER: u16 = 10;
const IFF_UP: u32 = 1;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
/// Every nftables object message names its table in attribute 1.
const NFTA_TABLE: u16 = 1;

/// Watches for changes of the node's network made by anyone.
#[derive(Debug)]
pub struct NetWatch {
    links: OwnedFd,
    rules: OwnedFd,
    bridge: String,
    table: String,
}

fn socket(protocol: libc::c_int, groups: u32) -> Result<OwnedFd, Errno> {
    // SAFETY: plain socket creation; the fd is wrapped at once.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            protocol,
        )
    };
    // SAFETY: the kernel just returned this fd; nobody else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(Errno::result(fd)?) };
    // SAFETY: an all-zero sockaddr_nl is valid; the fields are set below.
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::sa_family_t::try_from(libc::AF_NETLINK).map_err(|_| Errno::EINVAL)?;
    addr.nl_groups = groups;
    // SAFETY: binds the live socket to a fully initialised address of the
    // size given.
    let r = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&raw const addr).cast(),
            libc::socklen_t::try_from(std::mem::size_of::<libc::sockaddr_nl>())
                .map_err(|_| Errno::EINVAL)?,
        )
    };
    Errno::result(r)?;
    Ok(fd)
}

/// The attributes of one netlink message's payload after its fixed
/// struct of `fixed` bytes: (type, value) pairs.
fn attrs(payload: &[u8], fixed: usize) -> impl Iterator<Item = (u16, &[u8])> {
    let mut rest = payload.get(fixed..).unwrap_or_default();
    std::iter::from_fn(move || {
        if rest.len() < 4 {
            return None;
        }
        let len = usize::from(u16::from_ne_bytes([rest[0], rest[1]]));
        let kind = u16::from_ne_bytes([rest[2], rest[3]]) & 0x3fff;
        if len < 4 || len > rest.len() {
            return None;
        }
        let value = &rest[4..len];
        rest = rest.get((len + 3) & !3..).unwrap_or_default();
        Some((kind, value))
    })
}

fn c_string(v: &[u8]) -> &[u8] {
    v.split(|b| *b == 0).next().unwrap_or_default()
}

/// The messages of one datagram: (type, payload).
fn messages(buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut rest = buf;
    std::iter::from_fn(move || {
        if rest.len() < 16 {
            return None;
        }
        let len = usize::try_from(u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]])).ok()?;
        let kind = u16::from_ne_bytes([rest[4], rest[5]]);
        if len < 16 || len > rest.len() {
            return None;
        }
        let payload = &rest[16..len];
        rest = rest.get((len + 3) & !3..).unwrap_or_default();
        Some((kind, payload))
    })
}

impl NetWatch {
    /// Starts watching the links of the calling thread's namespace and its
    /// nftables rulesets, for the node's `bridge` and firewall `table`.
    pub fn open(bridge: &str, table: &str) -> Result<NetWatch, JailError> {
        let err = |what: &'static str| {
            move |source| JailError::Net {
                op: "watch",
                object: what.to_owned(),
                source,
            }
        };
        Ok(NetWatch {
            links: socket(libc::NETLINK_ROUTE, RTMGRP_LINK).map_err(err("links"))?,
            rules: socket(libc::NETLINK_NETFILTER, 1 << (NFNLGRP_NFTABLES - 1))
                .map_err(err("firewall rules"))?,
            bridge: bridge.to_owned(),
            table: table.to_owned(),
        })
    }
}

/// What a watcher looks for.
#[derive(Debug)]
struct Filter<'a> {
    bridge: &'a str,
    table: &'a str,
}

impl Filter<'_> {
    /// Whether a link event may need a repair: a jail's host link or the
    /// bridge deleted, or a jail's host link without a bridge.
    fn link_matters(&self, kind: u16, payload: &[u8]) -> bool {
        if kind != RTM_NEWLINK && kind != RTM_DELLINK {
            return false;
        }
        // struct ifinfomsg: 16 bytes.
        let mut name: &[u8] = &[];
        let mut master = false;
        for (t, v) in attrs(payload, 16) {
            match t {
                IFLA_IFNAME => name = c_string(v),
                IFLA_MASTER => master = v.iter().any(|b| *b != 0),
                _ => {}
            }
        }
        let jail_link = name.starts_with(b"sk");
        // ifi_flags, after family, padding, type and index. A link being
        // made is down until it has its bridge: only an up link without
        // one was taken off it.
        let up = payload
            .get(8..12)
            .and_then(|b| b.try_into().ok())
            .is_some_and(|b| u32::from_ne_bytes(b) & IFF_UP != 0);
        match kind {
            RTM_DELLINK => jail_link || name == self.bridge.as_bytes(),
            _ => jail_link && up && !master,
        }
    }

    /// Whether an nftables event touches the node's table.
    fn rule_matters(&self, kind: u16, payload: &[u8]) -> bool {
        if kind >> 8 != NFNL_SUBSYS_NFTABLES {
            return false;
        }
        // struct nfgenmsg: 4 bytes.
        attrs(payload, 4).any(|(t, v)| t == NFTA_TABLE && c_string(v) == self.table.as_bytes())
    }
}

impl NetWatch {
    /// Reads what is queued on both sockets; whether any of it matters.
    /// A socket whose queue overflowed (events were lost) matters too.
    fn drain(&self) -> bool {
        let filter = Filter {
            bridge: &self.bridge,
            table: &self.table,
        };
        let mut matters = false;
        let mut buf = vec![0u8; 64 << 10];
        for (fd, links) in [(&self.links, true), (&self.rules, false)] {
            loop {
                // SAFETY: receives into a live buffer of the given length.
                let n =
                    unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
                let n = match Errno::result(n) {
                    Ok(n) => usize::try_from(n).unwrap_or(0),
                    Err(Errno::EAGAIN) => break,
                    Err(Errno::EINTR) => continue,
                    // ENOBUFS: events were dropped; look at everything.
                    Err(_) => {
                        matters = true;
                        break;
                    }
                };
                matters |= messages(&buf[..n]).any(|(kind, payload)| {
                    if links {
                        filter.link_matters(kind, payload)
                    } else {
                        filter.rule_matters(kind, payload)
                    }
                });
            }
        }
        matters
    }

    /// Waits at most `timeout` for events; whether any that arrived may
    /// need a repair. Events are read until none is left.
    pub fn wait(&self, timeout: Duration) -> bool {
        let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
        let mut fds = [
            PollFd::new(self.links.as_fd(), PollFlags::POLLIN),
            PollFd::new(self.rules.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(0) | Err(_) => false,
            Ok(_) => self.drain(),
        }
    }

    /// Forgets every event queued so far (those of a repair just made).
    pub fn forget(&self) {
        let _ = self.drain();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One netlink message with a fixed struct of `fixed` zero bytes and
    /// the attributes given.
    fn msg(kind: u16, fixed: usize, attributes: &[(u16, &[u8])]) -> Vec<u8> {
        let mut b = vec![0u8; 16 + fixed];
        for (t, v) in attributes {
            let len = u16::try_from(4 + v.len()).unwrap();
            b.extend_from_slice(&len.to_ne_bytes());
            b.extend_from_slice(&t.to_ne_bytes());
            b.extend_from_slice(v);
            b.resize((b.len() + 3) & !3, 0);
        }
        let len = u32::try_from(b.len()).unwrap();
        b[0..4].copy_from_slice(&len.to_ne_bytes());
        b[4..6].copy_from_slice(&kind.to_ne_bytes());
        b
    }

    #[test]
    fn only_events_about_the_nodes_links_and_table_matter() {
        let w = Filter {
            bridge: "stk0",
            table: "stockade",
        };
        let check = |m: Vec<u8>, links: bool| {
            messages(&m).any(|(k, p)| {
                if links {
                    w.link_matters(k, p)
                } else {
                    w.rule_matters(k, p)
                }
            })
        };
        let idx = 7u32.to_ne_bytes();
        // A jail's link deleted, or the bridge: yes; another link: no.
        assert!(check(
            msg(RTM_DELLINK, 16, &[(IFLA_IFNAME, b"sk0123456789ab\0")]),
            true
        ));
        assert!(check(
            msg(RTM_DELLINK, 16, &[(IFLA_IFNAME, b"stk0\0")]),
            true
        ));
        assert!(!check(
            msg(RTM_DELLINK, 16, &[(IFLA_IFNAME, b"eth1\0")]),
            true
        ));
        // A jail's link changed: only when up without a bridge (one being
        // made is down until it has its bridge).
        let up = |mut m: Vec<u8>| {
            m[16 + 8..16 + 12].copy_from_slice(&IFF_UP.to_ne_bytes());
            m
        };
        let name = (IFLA_IFNAME, &b"sk0123456789ab\0"[..]);
        assert!(check(up(msg(RTM_NEWLINK, 16, &[name])), true));
        assert!(!check(msg(RTM_NEWLINK, 16, &[name]), true), "down");
        assert!(
            !check(up(msg(RTM_NEWLINK, 16, &[name, (IFLA_MASTER, &idx)])), true),
            "on a bridge"
        );
        // Rules of the node's table: yes; of another table: no.
        let rule = (NFNL_SUBSYS_NFTABLES << 8) | 6;
        assert!(check(msg(rule, 4, &[(NFTA_TABLE, b"stockade\0")]), false));
        assert!(!check(msg(rule, 4, &[(NFTA_TABLE, b"other\0")]), false));
        // Cut short: nothing read past the end.
        let mut cut = msg(RTM_DELLINK, 16, &[(IFLA_IFNAME, b"sk0123456789ab\0")]);
        cut.truncate(20);
        assert!(!check(cut, true));
    }
}
