//! Ports of a jail published on its node's address.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ParseError;

/// The transport protocol of a published port.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP.
    #[default]
    Tcp,
    /// UDP.
    Udp,
}

impl Protocol {
    /// `tcp` or `udp`.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

impl std::str::FromStr for Protocol {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        match s {
            "tcp" => Ok(Protocol::Tcp),
            "udp" => Ok(Protocol::Udp),
            _ => Err(ParseError::new(
                "protocol",
                format!("{s:?}: expected tcp or udp"),
            )),
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A port of the host forwarded to a port of the jail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Publish {
    /// The host's port.
    pub host_port: u16,
    /// The jail's port.
    pub jail_port: u16,
    /// TCP (records written before UDP existed say nothing: TCP) or UDP.
    #[serde(default)]
    pub protocol: Protocol,
}

impl Publish {
    /// Parses `HOST:JAIL` or `HOST:JAIL/udp`, e.g. `8080:80`.
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        let invalid = |reason: &str| ParseError::new("published port", format!("{s:?}: {reason}"));
        let (ports, protocol) = match s.split_once('/') {
            None => (s, Protocol::Tcp),
            Some((ports, proto)) => (
                ports,
                proto.parse().map_err(|e: ParseError| invalid(&e.reason))?,
            ),
        };
        let (h, j) = ports
            .split_once(':')
            .ok_or_else(|| invalid("expected HOST:JAIL, e.g. 8080:80 or 5353:53/udp"))?;
        let port = |p: &str| match p.parse::<u16>() {
            Ok(0) | Err(_) => Err(invalid("ports are 1 to 65535")),
            Ok(n) => Ok(n),
        };
        Ok(Self {
            host_port: port(h)?,
            jail_port: port(j)?,
            protocol,
        })
    }
}
