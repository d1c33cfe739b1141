//! What a jail's network is: its address from the node's pool, its
//! published ports, its rate limits, and the name of its host link.

use std::collections::HashSet;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::error::JailError;
pub use stockade_domain::{Protocol, Publish};

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
