//! What a jail's group says it used: the files to read and how their text is parsed, on v1 and v2.

use super::*;

/// The files [`parse_usage`] reads, as (controller, file).
pub(crate) fn usage_files(version: Version) -> &'static [(&'static str, &'static str)] {
    match version {
        Version::V1 => &[
            ("cpuacct", "cpuacct.usage"),
            ("memory", "memory.usage_in_bytes"),
            ("memory", "memory.max_usage_in_bytes"),
            ("memory", "memory.failcnt"),
            ("memory", "memory.memsw.failcnt"),
            ("memory", "memory.oom_control"),
            ("pids", "pids.current"),
            ("pids", "pids.events"),
            ("cpu", "cpu.stat"),
            ("blkio", "blkio.throttle.io_service_bytes_recursive"),
        ],
        Version::V2 => &[
            ("", "cpu.stat"),
            ("", "memory.current"),
            ("", "memory.peak"),
            ("", "memory.events"),
            ("", "pids.current"),
            ("", "pids.events"),
            ("", "io.stat"),
        ],
    }
}

/// Turns cgroup file contents (given by `read(controller, file)`) into usage.
pub(crate) fn parse_usage(version: Version, read: &dyn Fn(&str, &str) -> String) -> CgroupUsage {
    match version {
        Version::V1 => {
            let (io_read_bytes, io_write_bytes) =
                blkio_v1_bytes(&read("blkio", "blkio.throttle.io_service_bytes_recursive"));
            let oom_kills = keyed(&read("memory", "memory.oom_control"), "oom_kill").unwrap_or(0);
            // With memsw == memory the memsw counter usually fails first and
            // one failed charge bumps only one of the two. Recent kernels no
            // longer count v1 failures at all (both read 0): an OOM kill is
            // then the only trace of hitting the limit, so count at least those.
            let failures = number(&read("memory", "memory.failcnt"))
                + number(&read("memory", "memory.memsw.failcnt"));
            CgroupUsage {
                cpu_usec: number(&read("cpuacct", "cpuacct.usage")) / 1000,
                memory_bytes: number(&read("memory", "memory.usage_in_bytes")),
                memory_peak_bytes: number(&read("memory", "memory.max_usage_in_bytes")),
                pids: number(&read("pids", "pids.current")),
                io_read_bytes,
                io_write_bytes,
                oom_kills,
                memory_limit_hits: failures.max(oom_kills),
                pids_limit_hits: keyed(&read("pids", "pids.events"), "max").unwrap_or(0),
                cpu_throttled_periods: keyed(&read("cpu", "cpu.stat"), "nr_throttled").unwrap_or(0),
            }
        }
        Version::V2 => {
            let cpu = read("", "cpu.stat");
            let events = read("", "memory.events");
            let (io_read_bytes, io_write_bytes) = io_stat_v2_bytes(&read("", "io.stat"));
            CgroupUsage {
                cpu_usec: keyed(&cpu, "usage_usec").unwrap_or(0),
                memory_bytes: number(&read("", "memory.current")),
                memory_peak_bytes: number(&read("", "memory.peak")),
                pids: number(&read("", "pids.current")),
                io_read_bytes,
                io_write_bytes,
                oom_kills: keyed(&events, "oom_kill").unwrap_or(0),
                memory_limit_hits: keyed(&events, "max").unwrap_or(0),
                pids_limit_hits: keyed(&read("", "pids.events"), "max").unwrap_or(0),
                cpu_throttled_periods: keyed(&cpu, "nr_throttled").unwrap_or(0),
            }
        }
    }
}

/// Counters of one jail's group, cumulative as the kernel keeps them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct CgroupUsage {
    pub cpu_usec: u64,
    pub memory_bytes: u64,
    pub memory_peak_bytes: u64,
    pub pids: u64,
    pub io_read_bytes: u64,
    pub io_write_bytes: u64,
    pub oom_kills: u64,
    pub memory_limit_hits: u64,
    pub pids_limit_hits: u64,
    pub cpu_throttled_periods: u64,
}

/// The value of `key` in a flat-keyed cgroup file (`key value` per line).
fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let mut it = l.split_whitespace();
        (it.next() == Some(key))
            .then(|| it.next()?.parse().ok())
            .flatten()
    })
}

fn number(text: &str) -> u64 {
    text.trim().parse().unwrap_or(0)
}

/// Sums v1 `blkio.throttle.io_service_bytes_recursive` ("maj:min Read N").
fn blkio_v1_bytes(text: &str) -> (u64, u64) {
    let (mut r, mut wr) = (0, 0);
    for l in text.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if let [dev, op, n] = f[..] {
            if !dev.contains(':') {
                continue;
            }
            let n: u64 = n.parse().unwrap_or(0);
            match op {
                "Read" => r += n,
                "Write" => wr += n,
                _ => {}
            }
        }
    }
    (r, wr)
}

/// Sums v2 `io.stat` ("maj:min rbytes=N wbytes=N ...").
fn io_stat_v2_bytes(text: &str) -> (u64, u64) {
    let (mut r, mut wr) = (0, 0);
    for l in text.lines() {
        for kv in l.split_whitespace().skip(1) {
            if let Some((k, v)) = kv.split_once('=') {
                let v: u64 = v.parse().unwrap_or(0);
                match k {
                    "rbytes" => r += v,
                    "wbytes" => wr += v,
                    _ => {}
                }
            }
        }
    }
    (r, wr)
}
