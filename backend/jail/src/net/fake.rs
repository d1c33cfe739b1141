//! A network host that records what it was asked to do.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use nix::errno::Errno;

use super::*;

/// Clones share what they record and read: a test keeps one while an
/// engine owns another.
#[derive(Debug, Default, Clone)]
pub(crate) struct RecordingNet {
    pub calls: Arc<Mutex<Vec<String>>>,
    /// Calls starting with this fail.
    pub fail_on: Arc<Mutex<Option<String>>>,
    pub busy_ports: Vec<u16>,
    pub firewall: Arc<Mutex<bool>>,
    /// The firewall table's contents while it exists, one `add` command a
    /// line: a table program replaces its rules and keeps its elements,
    /// element commands add and delete elements. Its lines, sorted, are
    /// what `firewall_listing` reads.
    pub table: Arc<Mutex<BTreeSet<String>>>,
    /// What `root_rate` reads, by device; unknown when absent.
    pub rates: Arc<Mutex<std::collections::HashMap<String, u64>>>,
    /// What `jail_end` reads; unknown when `None`.
    pub end: Arc<Mutex<Option<JailEnd>>>,
}

impl RecordingNet {
    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
    /// The calls recorded so far, forgotten.
    pub fn take_calls(&self) -> Vec<String> {
        std::mem::take(&mut *self.calls.lock().unwrap())
    }
    /// The set and map elements in the firewall table.
    pub fn elements(&self) -> Vec<String> {
        let table = self.table.lock().unwrap();
        table
            .iter()
            .filter(|l| l.starts_with("add element"))
            .cloned()
            .collect()
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
        if !*self.firewall.lock().unwrap() {
            return None;
        }
        let table = self.table.lock().unwrap();
        Some(table.iter().map(|l| format!("{l}\n")).collect())
    }
    fn nft(&self, _object: &str, script: &str) -> Result<(), JailError> {
        let first = script.lines().next().unwrap_or_default().to_string();
        self.rec(format!("nft {first}"))?;
        let mut table = self.table.lock().unwrap();
        if first.starts_with("add table") {
            *self.firewall.lock().unwrap() = true;
            table.retain(|l| l.starts_with("add element"));
        }
        for line in script.lines() {
            if let Some(key) = line.strip_prefix("delete element ") {
                // `{ KEY }` names a set element or the map element `{ KEY : ... }`.
                let key = key.trim_end_matches(" }");
                let (whole, mapped) = (
                    format!("add element {key} }}"),
                    format!("add element {key} :"),
                );
                table.retain(|l| *l != whole && !l.starts_with(&mapped));
            } else if line.starts_with("add ") {
                table.insert(line.to_owned());
            }
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
    fn port_free(&self, port: u16, _protocol: Protocol) -> bool {
        !self.busy_ports.contains(&port)
    }
    fn sysctl(&self, path: &Path, value: &str) -> Result<(), JailError> {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        self.rec(format!("sysctl {name}={value}"))
    }
}
