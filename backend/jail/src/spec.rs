//! What callers hand the engine and what it hands back.

use serde::{Deserialize, Serialize};
use stockade_domain::{JailKind, JailName, Limits};

use crate::net::NetSpec;

/// Everything needed to create a jail on a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JailSpec {
    /// Unique on the node: names the cgroup, the state folder and the volume.
    pub name: JailName,
    /// The hostname seen inside the jail.
    pub hostname: JailName,
    /// The image (a folder under the image folder) used as read-only lower layer.
    pub image: String,
    /// An app jail ends with its command; a system jail is long-running.
    pub kind: JailKind,
    /// The command; empty means the image's default (system jails only).
    pub command: Vec<String>,
    /// The quotas.
    pub limits: Limits,
    /// A network interface on the node's bridge; `None`: loopback only.
    #[serde(default)]
    pub network: Option<NetSpec>,
    /// Root inside the jail is an unprivileged host uid (a range of its
    /// own, recorded when the jail is created); fixed at creation.
    #[serde(default)]
    pub user_namespace: bool,
    /// Environment variables of its command, over the defaults (`PATH`,
    /// `HOME`, `HOSTNAME`, `TERM`), which a same-named one replaces.
    #[serde(default)]
    pub env: Vec<(String, String)>,
}

/// What runs, as last seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum JailStatus {
    /// The jail's init runs with this host pid.
    Running {
        /// Host pid of the jail's init (PID 1 inside).
        pid: i32,
    },
    /// Created (volume and cgroup kept), nothing runs.
    Stopped,
}

/// A jail's resource usage; counters are cumulative since the jail's group
/// was created, as the kernel keeps them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// CPU time used, microseconds.
    pub cpu_usec: u64,
    /// Memory in use now, bytes (page cache included).
    pub memory_bytes: u64,
    /// Highest memory use seen, bytes.
    pub memory_peak_bytes: u64,
    /// Processes and threads now.
    pub pids: u64,
    /// Bytes read from block devices.
    pub io_read_bytes: u64,
    /// Bytes written to block devices.
    pub io_write_bytes: u64,
    /// Bytes used on the jail's volume (or its temporary upper layer).
    pub disk_used_bytes: u64,
    /// Processes killed by the OOM killer inside the jail.
    pub oom_kills: u64,
    /// Times the memory limit was hit.
    pub memory_limit_hits: u64,
    /// Times a fork failed at the pids limit.
    pub pids_limit_hits: u64,
    /// CFS periods in which the jail was throttled.
    pub cpu_throttled_periods: u64,
    /// Bytes the jail received over its network interface.
    #[serde(default)]
    pub net_rx_bytes: u64,
    /// Bytes the jail sent.
    #[serde(default)]
    pub net_tx_bytes: u64,
    /// Packets the jail received.
    #[serde(default)]
    pub net_rx_packets: u64,
    /// Packets the jail sent.
    #[serde(default)]
    pub net_tx_packets: u64,
}
