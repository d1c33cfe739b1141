//! A jail's optional health check: what its node probes, how often, and
//! how many failures in a row make it unhealthy.

use serde::{Deserialize, Serialize};

use crate::ParseError;

/// How a jail is probed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeKind {
    /// `GET path` on the port answers 2xx or 3xx.
    Http,
    /// The port takes a connection.
    Tcp,
}

/// A health check as users set it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// HTTP or TCP.
    pub kind: ProbeKind,
    /// The jail's port probed.
    pub port: u16,
    /// The path an HTTP check asks for (`/` by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Seconds between two probes (1 to 3600, 10 by default).
    #[serde(default = "default_interval")]
    pub interval_secs: u32,
    /// Failures in a row that make the jail unhealthy (1 to 10, 3 by default).
    #[serde(default = "default_failures")]
    pub failures: u32,
}

fn default_interval() -> u32 {
    10
}

fn default_failures() -> u32 {
    3
}

impl HealthCheck {
    /// Checks every field; the error names the first one that is wrong.
    pub fn check(&self) -> Result<(), ParseError> {
        let bad = |reason: &str| Err(ParseError::new("health_check", reason.to_owned()));
        if self.port == 0 {
            return bad("port: 1 to 65535");
        }
        if !(1..=3600).contains(&self.interval_secs) {
            return bad("interval_secs: 1 to 3600");
        }
        if !(1..=10).contains(&self.failures) {
            return bad("failures: 1 to 10");
        }
        match (self.kind, self.path.as_deref()) {
            (ProbeKind::Tcp, Some(_)) => bad("path: only an http check has one"),
            (ProbeKind::Http, Some(p))
                if !p.starts_with('/')
                    || p.len() > 512
                    || p.chars().any(|c| c.is_whitespace() || c.is_control()) =>
            {
                bad("path: starts with /, at most 512 characters, no spaces")
            }
            _ => Ok(()),
        }
    }

    /// The path an HTTP check asks for.
    pub fn http_path(&self) -> &str {
        self.path.as_deref().unwrap_or("/")
    }

    /// The check in words, e.g. `GET /healthz on port 80 every 10 s`.
    pub fn describe(&self) -> String {
        let what = match self.kind {
            ProbeKind::Http => format!("GET {} on port {}", self.http_path(), self.port),
            ProbeKind::Tcp => format!("a connection to port {}", self.port),
        };
        format!(
            "{what} every {} s, unhealthy after {} failures in a row",
            self.interval_secs, self.failures
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_are_read_with_defaults_and_refused_by_field() {
        let c: HealthCheck = serde_json::from_str(r#"{"kind": "http", "port": 80}"#).unwrap();
        assert_eq!((c.interval_secs, c.failures, c.http_path()), (10, 3, "/"));
        c.check().unwrap();
        for (json, says) in [
            (r#"{"kind": "tcp", "port": 0}"#, "port"),
            (r#"{"kind": "tcp", "port": 5432, "path": "/x"}"#, "path"),
            (
                r#"{"kind": "http", "port": 80, "path": "no-slash"}"#,
                "path",
            ),
            (
                r#"{"kind": "http", "port": 80, "interval_secs": 0}"#,
                "interval_secs",
            ),
            (
                r#"{"kind": "http", "port": 80, "failures": 11}"#,
                "failures",
            ),
        ] {
            let c: HealthCheck = serde_json::from_str(json).unwrap();
            let e = c.check().unwrap_err();
            assert_eq!(e.field, "health_check");
            assert!(e.reason.starts_with(says), "{json}: {e}");
        }
        assert!(serde_json::from_str::<HealthCheck>(r#"{"kind": "udp", "port": 1}"#).is_err());
    }
}
