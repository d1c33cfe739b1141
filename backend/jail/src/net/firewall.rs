//! The node's nftables table as a program for `nft -f`: its rules, and the
//! elements each jail adds to it.

use super::NetSpec;

/// IPv4 link-local addresses, where clouds serve instance metadata.
const LINK_LOCAL: &str = "169.254.0.0/16";

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
         add map {t} publish_udp {{ type inet_service : ipv4_addr . inet_service; }}\n\
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
        // Link-local addresses (a cloud's metadata service at
        // 169.254.169.254) are the node's, never a jail's, NAT or not.
        format!("iifname {b} ip daddr {LINK_LOCAL} drop"),
        format!("iifname {b} ip saddr @nat_jails accept"),
        format!("iifname {b} drop"),
    ] {
        s += &format!("add rule {t} forward {rule}\n");
    }
    // Published ports: from other machines (prerouting) and from the host
    // itself, 127.0.0.1 included (output; the bridge routes loopback
    // sources, and they are masqueraded to the gateway address).
    for chain in ["prerouting", "output"] {
        for proto in ["tcp", "udp"] {
            s += &format!(
                "add rule {t} {chain} fib daddr type local dnat ip to {proto} dport map @publish_{proto}\n"
            );
        }
    }
    s += &format!("add rule {t} postrouting oifname {b} ip saddr 127.0.0.0/8 masquerade\n");
    s += &format!("add rule {t} postrouting oifname != {b} ip saddr @nat_jails masquerade\n");
    s
}

/// How many rules `program` (see [`firewall`]) adds.
pub(crate) fn rules_in_program(program: &str) -> usize {
    program
        .lines()
        .filter(|l| l.starts_with("add rule "))
        .count()
}

/// How many rules a listing of the table (`nft list table`) holds: the
/// lines of its chains but their `type … hook` line. A listing in the
/// program's own form (as the test host keeps it) counts its `add rule`
/// lines.
pub(crate) fn rules_in_listing(listing: &str) -> usize {
    let mut in_chain = false;
    let mut rules = 0;
    for line in listing.lines().map(str::trim) {
        if line.starts_with("add rule ") {
            rules += 1;
        } else if line.starts_with("chain ") && line.ends_with('{') {
            in_chain = true;
        } else if line == "}" {
            in_chain = false;
        } else if in_chain && !line.is_empty() && !line.starts_with("type ") {
            rules += 1;
        }
    }
    rules
}

/// The nftables elements of one jail (publish map, NAT set), as `verb`
/// (`add` or `delete`) commands, one per line.
pub(crate) fn jail_elements(table: &str, verb: &str, spec: &NetSpec) -> Vec<String> {
    let t = format!("inet {table}");
    let mut out = Vec::new();
    for p in &spec.publish {
        let map = format!("publish_{}", p.protocol.as_str());
        out.push(if verb == "delete" {
            format!("delete element {t} {map} {{ {} }}", p.host_port)
        } else {
            format!(
                "{verb} element {t} {map} {{ {} : {} . {} }}",
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
