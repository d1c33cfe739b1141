//! Where webhook deliveries may go.
//!
//! A webhook URL is chosen by a customer, so by default a delivery never
//! reaches the provider's own networks: loopback, private, link-local
//! (the cloud metadata address among them), carrier-grade NAT, multicast,
//! unspecified and reserved addresses are refused (the nodes' jail networks
//! are private ranges). The check is made on the address actually connected
//! to: names are resolved once, by the resolver given to the HTTP client,
//! which hands it only permitted addresses, so a name that changes its
//! answer after registration (DNS rebinding) gains nothing. The operator
//! may allow networks explicitly (`webhook_allow`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;

/// The addresses deliveries may connect to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EgressPolicy {
    /// Networks allowed even though they are internal.
    pub allow: Vec<IpNet>,
}

/// A delivery the policy refused (the whole message the log shows).
#[derive(Debug, thiserror::Error)]
#[error("refused by policy")]
pub struct Refused;

impl EgressPolicy {
    /// Whether a delivery may connect to `ip`.
    pub fn permits(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.allow.iter().any(|n| n.contains(&ip)) || !internal(ip)
    }

    /// An HTTP client resolver that yields only permitted addresses.
    pub fn resolver(&self) -> Arc<PolicyResolver> {
        Arc::new(PolicyResolver {
            policy: self.clone(),
        })
    }
}

/// An IPv4 address written as IPv6 (`::ffff:a.b.c.d`) is that IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn in_v4(ip: Ipv4Addr, net: [u8; 4], prefix: u32) -> bool {
    let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
    u32::from(ip) & mask == u32::from(Ipv4Addr::from(net)) & mask
}

fn in_v6(ip: Ipv6Addr, first: u16, prefix: u32) -> bool {
    let mask = u16::MAX.checked_shl(16 - prefix).unwrap_or(0);
    ip.segments()[0] & mask == first & mask
}

/// Addresses of the provider's own networks, or of no one.
fn internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => {
            a.is_loopback()
                || a.is_private()
                || a.is_link_local()
                || a.is_unspecified()
                || a.is_multicast()
                || a.is_broadcast()
                || in_v4(a, [0, 0, 0, 0], 8)
                || in_v4(a, [100, 64, 0, 0], 10)
                || in_v4(a, [192, 0, 0, 0], 24)
                || in_v4(a, [198, 18, 0, 0], 15)
                || in_v4(a, [240, 0, 0, 0], 4)
        }
        IpAddr::V6(a) => {
            a.is_loopback()
                || a.is_unspecified()
                || a.is_multicast()
                || in_v6(a, 0xfc00, 7)
                || in_v6(a, 0xfe80, 10)
                || in_v6(a, 0xfec0, 10)
                // IPv4-compatible (deprecated) and NAT64 forms of any address.
                || a.segments()[..6].iter().all(|s| *s == 0)
                || (a.segments()[0] == 0x64 && a.segments()[1] == 0xff9b)
        }
    }
}

/// Resolves names for webhook deliveries, keeping only permitted addresses.
#[derive(Debug)]
pub struct PolicyResolver {
    policy: EgressPolicy,
}

impl reqwest::dns::Resolve for PolicyResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| policy.permits(a.ip()))
                .collect();
            if found.is_empty() {
                return Err(Box::new(Refused) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(found.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Whether a URL's host is refused before any connection: an address the
/// policy refuses, or a name of this machine.
pub fn refuses_url(policy: &EgressPolicy, url: &reqwest::Url) -> bool {
    let Some(host) = url.host_str() else {
        return true;
    };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return !policy.permits(ip);
    }
    let name = host.trim_end_matches('.').to_ascii_lowercase();
    let local = name == "localhost" || name.ends_with(".localhost");
    local && !policy.permits(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

/// Whether `err` (from sending a delivery) is the policy's refusal.
pub fn is_refusal(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut e: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(cur) = e {
        if cur.downcast_ref::<Refused>().is_some() {
            return true;
        }
        e = cur.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn internal_addresses_are_refused_unless_allowed() {
        let p = EgressPolicy::default();
        for a in [
            "127.0.0.1",
            "10.77.0.5",
            "172.16.3.4",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
        ] {
            assert!(!p.permits(ip(a)), "{a} must be refused");
        }
        for a in ["93.184.216.34", "1.1.1.1", "2606:4700::1111"] {
            assert!(p.permits(ip(a)), "{a} must be allowed");
        }
        let allowed = EgressPolicy {
            allow: vec![
                "127.0.0.1/32".parse().unwrap(),
                "10.1.0.0/16".parse().unwrap(),
            ],
        };
        assert!(allowed.permits(ip("127.0.0.1")));
        assert!(allowed.permits(ip("::ffff:127.0.0.1")));
        assert!(allowed.permits(ip("10.1.2.3")));
        assert!(!allowed.permits(ip("10.2.0.1")));
        assert!(!allowed.permits(ip("127.0.0.2")));
    }

    #[test]
    fn urls_naming_this_machine_or_internal_addresses_are_refused() {
        let p = EgressPolicy::default();
        for u in [
            "http://127.0.0.1:9/x",
            "http://[::1]/x",
            "http://[::ffff:7f00:1]/x",
            "http://169.254.169.254/latest/meta-data",
            "http://localhost:8080/",
            "http://LOCALHOST./",
            "http://a.localhost/",
        ] {
            assert!(refuses_url(&p, &reqwest::Url::parse(u).unwrap()), "{u}");
        }
        for u in ["https://example.com/hook", "http://93.184.216.34/"] {
            assert!(!refuses_url(&p, &reqwest::Url::parse(u).unwrap()), "{u}");
        }
    }
}
