//! A network host that records what it was asked to do.

use std::sync::Mutex;

use nix::errno::Errno;

use super::*;

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
