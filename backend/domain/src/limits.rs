use serde::{Deserialize, Serialize};

/// The resource limits of one jail, or the quota of a plan or a tenant.
///
/// Every field is a non-negative integer in base units (millicores, bytes,
/// bytes per second, operations per second); `0` in an IO or network rate
/// means "not throttled".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// CPU capacity in millicores.
    pub cpu_millicores: u32,
    /// Memory limit in bytes; no swap beyond it.
    pub memory_bytes: u64,
    /// Maximum number of processes and threads.
    pub pids: u32,
    /// Size of the jail's volume in bytes.
    pub disk_bytes: u64,
    /// Read throughput limit on the volume, bytes/s (0 = none).
    pub io_read_bps: u64,
    /// Write throughput limit on the volume, bytes/s (0 = none).
    pub io_write_bps: u64,
    /// Read operations per second on the volume (0 = none).
    pub io_read_iops: u64,
    /// Write operations per second on the volume (0 = none).
    pub io_write_iops: u64,
    /// Outbound network rate, bits/s (0 = none).
    pub net_egress_bps: u64,
    /// Inbound network rate, bits/s (0 = none).
    pub net_ingress_bps: u64,
}
