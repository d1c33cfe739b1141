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

/// The smallest values a node can really apply to one jail. Below them a
/// jail is accepted and then fails on its node (a 1-byte volume cannot hold
/// a filesystem; a 1-process jail cannot start its command beside its init;
/// traffic shaping has no rate under 8 kbit/s).
pub const MIN_CPU_MILLICORES: u32 = 10;
/// See [`MIN_CPU_MILLICORES`].
pub const MIN_MEMORY_BYTES: u64 = 4 << 20;
/// See [`MIN_CPU_MILLICORES`].
pub const MIN_PIDS: u32 = 4;
/// See [`MIN_CPU_MILLICORES`].
pub const MIN_DISK_BYTES: u64 = 16 << 20;
/// The lowest network rate (bits/s), when a rate is set at all.
pub const MIN_NET_BPS: u64 = 8_000;
/// The lowest IO rate (bytes/s), when a rate is set at all.
pub const MIN_IO_BPS: u64 = 4_096;

impl Limits {
    /// Refuses limits no node can apply: each value at or above its minimum
    /// (rates: 0 for none, or at least their minimum), and no value past
    /// what the database stores.
    pub fn check(&self) -> Result<(), crate::ParseError> {
        let at_least = |field: &'static str, v: u64, min: u64, unit: &str| {
            if v < min {
                Err(crate::ParseError::new(
                    field,
                    format!("must be at least {min}{unit}"),
                ))
            } else {
                Ok(())
            }
        };
        let rate = |field: &'static str, v: u64, min: u64, unit: &str| {
            if v != 0 && v < min {
                Err(crate::ParseError::new(
                    field,
                    format!("must be 0 (no limit) or at least {min}{unit}"),
                ))
            } else {
                Ok(())
            }
        };
        at_least(
            "cpu_millicores",
            u64::from(self.cpu_millicores),
            u64::from(MIN_CPU_MILLICORES),
            " (millicores)",
        )?;
        at_least(
            "memory_bytes",
            self.memory_bytes,
            MIN_MEMORY_BYTES,
            " bytes (4 MiB)",
        )?;
        at_least("pids", u64::from(self.pids), u64::from(MIN_PIDS), "")?;
        at_least(
            "disk_bytes",
            self.disk_bytes,
            MIN_DISK_BYTES,
            " bytes (16 MiB)",
        )?;
        rate(
            "net_egress_bps",
            self.net_egress_bps,
            MIN_NET_BPS,
            " bits/s",
        )?;
        rate(
            "net_ingress_bps",
            self.net_ingress_bps,
            MIN_NET_BPS,
            " bits/s",
        )?;
        rate("io_read_bps", self.io_read_bps, MIN_IO_BPS, " bytes/s")?;
        rate("io_write_bps", self.io_write_bps, MIN_IO_BPS, " bytes/s")?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok() -> Limits {
        Limits {
            cpu_millicores: 100,
            memory_bytes: 64 << 20,
            pids: 32,
            disk_bytes: 64 << 20,
            ..Limits::default()
        }
    }

    #[test]
    fn values_no_node_can_apply_are_refused_by_name() {
        assert!(ok().check().is_ok());
        for (l, field) in [
            (
                Limits {
                    disk_bytes: 1,
                    ..ok()
                },
                "disk_bytes",
            ),
            (Limits { pids: 1, ..ok() }, "pids"),
            (
                Limits {
                    cpu_millicores: 1,
                    ..ok()
                },
                "cpu_millicores",
            ),
            (
                Limits {
                    memory_bytes: 1 << 20,
                    ..ok()
                },
                "memory_bytes",
            ),
            (
                Limits {
                    net_egress_bps: 1_202,
                    ..ok()
                },
                "net_egress_bps",
            ),
            (
                Limits {
                    net_ingress_bps: 7_999,
                    ..ok()
                },
                "net_ingress_bps",
            ),
            (
                Limits {
                    io_write_bps: 100,
                    ..ok()
                },
                "io_write_bps",
            ),
        ] {
            assert_eq!(l.check().unwrap_err().field, field);
        }
        assert!(
            Limits {
                net_egress_bps: 0,
                io_read_bps: 0,
                ..ok()
            }
            .check()
            .is_ok()
        );
        assert!(
            Limits {
                net_egress_bps: 8_000,
                ..ok()
            }
            .check()
            .is_ok()
        );
    }
}
