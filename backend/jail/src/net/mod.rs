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

mod firewall;
mod host;
mod spec;

#[cfg(test)]
pub(crate) mod fake;
#[cfg(test)]
mod tests;

pub(crate) use firewall::{firewall, jail_elements};
#[cfg(test)]
use firewall::{rules_in_listing, rules_in_program};
use host::same_rate;
pub(crate) use host::{
    JailEnd, JailLink, LinuxNet, NetCounters, NetHost, bridge_ports, counters, tbf_args,
};
#[cfg(test)]
use host::{default_gateway, program_error, tbf_rate};
pub use spec::{
    FIREWALL_TABLE, JAIL_LINK, MIN_RATE_BPS, NetSpec, PoolExhausted, Protocol, Publish, allocate,
    host_link, parse_rate,
};

use std::collections::HashSet;
use std::path::Path;

use ipnet::Ipv4Net;
use stockade_domain::Limits;

use crate::error::JailError;

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
            if !seen.insert((p.protocol, p.host_port)) {
                return Err(JailError::Invalid {
                    what: "published port",
                    reason: format!(
                        "host port {}/{} is published twice",
                        p.host_port,
                        p.protocol.as_str()
                    ),
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
            if let Some(p) = other
                .publish
                .iter()
                .find(|p| seen.contains(&(p.protocol, p.host_port)))
            {
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

    /// Refuses host ports to publish that a process on the host listens on.
    pub fn check_ports(&self, spec: &NetSpec) -> Result<(), JailError> {
        for p in &spec.publish {
            if !self.host.port_free(p.host_port, p.protocol) {
                return Err(JailError::PortInUse {
                    port: p.host_port,
                    by: "a process on the host".into(),
                });
            }
        }
        Ok(())
    }

    /// Registers a jail's published ports and NAT in the firewall. The
    /// bridge and firewall must exist ([`Self::ensure_node`]) and the ports
    /// be free ([`Self::check_ports`]).
    pub fn publish(&self, jail: &str, spec: &NetSpec) -> Result<(), JailError> {
        let lines = jail_elements(self.node.table, "add", spec);
        if lines.is_empty() {
            return Ok(());
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
        // The listing is remembered as what was written only when it holds
        // every rule just written: a change made between the write and the
        // listing (a flush) would otherwise be taken for the table as it
        // should be, and never put back. Not remembered, the table is
        // written again at the next check.
        let whole = after
            .as_deref()
            .is_some_and(|l| firewall::rules_in_listing(l) >= firewall::rules_in_program(&program));
        *written = if whole { after } else { None };
        Ok(changed)
    }

    /// Removes the jail's veth pair if present.
    pub fn detach(&self, jail: &str) -> Result<(), JailError> {
        self.host.del_link(&host_link(jail))
    }
}
