//! One cgroup per jail, on cgroup v1, v2 and hybrid hosts.
//!
//! This talks to the cgroup filesystem with plain file writes rather than
//! through cgroups-rs: cgroups-rs 0.5 decides v1 versus v2 by looking at the
//! fixed path `/sys/fs/cgroup` (so the cgroup root cannot be a parameter and
//! the logic cannot be tested on a temporary folder), and on v1 it creates the
//! jail's group in every mounted hierarchy (cpuset, freezer, ...), which costs
//! time on the start path and needs cpuset values copied in. A jail needs five
//! files per controller at most; writing them directly keeps the host paths
//! parameters and the start path short. Its devices are limited to a short
//! allow-list ([`crate::devices`]): the v1 `devices` controller's rules, or a
//! device program on v2.
//!
//! What is written is computed by pure functions ([`limit_writes`],
//! [`parse_usage`]) that the unit tests cover; the file operations are thin.

use std::fs::{self, OpenOptions};
use std::io::ErrorKind;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use stockade_domain::Limits;

use crate::error::JailError;
use crate::hostinfo::read_small;

/// CFS period for CPU quotas: 100 ms, as Kubernetes and Docker use.
pub(crate) const CPU_PERIOD_US: u64 = 100_000;

/// The v1 controllers a jail uses; each is its own hierarchy on v1 hosts.
const V1_CONTROLLERS: [&str; 6] = ["cpu", "cpuacct", "memory", "pids", "blkio", "devices"];

/// Which cgroup interface the host offers for the controllers a jail needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Version {
    /// Controllers on per-controller v1 hierarchies (also hybrid hosts, whose
    /// v2 tree at `unified/` holds no controllers).
    V1,
    /// A pure unified hierarchy.
    V2,
}

/// One value to write into a cgroup file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Write {
    /// v1 controller folder (`memory`), or `""` on v2.
    pub controller: &'static str,
    /// The file inside the jail's group.
    pub file: &'static str,
    /// The value.
    pub value: String,
    /// Skip when the kernel does not offer the file (swap accounting off).
    pub optional: bool,
}

fn w(controller: &'static str, file: &'static str, value: String) -> Write {
    Write {
        controller,
        file,
        value,
        optional: false,
    }
}

fn w_opt(controller: &'static str, file: &'static str, value: String) -> Write {
    Write {
        controller,
        file,
        value,
        optional: true,
    }
}

/// The file writes that put `limits` on a jail's group. `device` is the
/// major:minor of the jail's volume (IO limits need one).
pub(crate) fn limit_writes(
    version: Version,
    limits: &Limits,
    device: Option<(u64, u64)>,
) -> Vec<Write> {
    let quota_us = u64::from(limits.cpu_millicores) * CPU_PERIOD_US / 1000;
    let mut out = Vec::new();
    match version {
        Version::V1 => {
            out.push(w("cpu", "cpu.cfs_period_us", CPU_PERIOD_US.to_string()));
            let quota = if quota_us == 0 {
                "-1".to_owned()
            } else {
                quota_us.max(1000).to_string()
            };
            out.push(w("cpu", "cpu.cfs_quota_us", quota));
            let mem = if limits.memory_bytes == 0 {
                "-1".to_owned()
            } else {
                limits.memory_bytes.to_string()
            };
            // memory+swap equal to memory: the jail gets no swap beyond its limit.
            // `apply` swaps the two writes when the new limit is above the old
            // memsw limit (the kernel keeps memsw >= memory at every step).
            out.push(w("memory", "memory.limit_in_bytes", mem.clone()));
            out.push(w_opt("memory", "memory.memsw.limit_in_bytes", mem));
            out.push(w("pids", "pids.max", max_or(u64::from(limits.pids))));
            if let Some((major, minor)) = device {
                // On v1 writing "0" as the rate removes the rule: unthrottled.
                for (file, v) in [
                    ("blkio.throttle.read_bps_device", limits.io_read_bps),
                    ("blkio.throttle.write_bps_device", limits.io_write_bps),
                    ("blkio.throttle.read_iops_device", limits.io_read_iops),
                    ("blkio.throttle.write_iops_device", limits.io_write_iops),
                ] {
                    out.push(w("blkio", file, format!("{major}:{minor} {v}")));
                }
            }
        }
        Version::V2 => {
            let quota = if quota_us == 0 {
                "max".to_owned()
            } else {
                quota_us.max(1000).to_string()
            };
            out.push(w("", "cpu.max", format!("{quota} {CPU_PERIOD_US}")));
            out.push(w("", "memory.max", max_or(limits.memory_bytes)));
            out.push(w_opt("", "memory.swap.max", "0".to_owned()));
            out.push(w("", "pids.max", max_or(u64::from(limits.pids))));
            if let Some((major, minor)) = device {
                out.push(w(
                    "",
                    "io.max",
                    format!(
                        "{major}:{minor} rbps={} wbps={} riops={} wiops={}",
                        max_or(limits.io_read_bps),
                        max_or(limits.io_write_bps),
                        max_or(limits.io_read_iops),
                        max_or(limits.io_write_iops)
                    ),
                ));
            }
        }
    }
    out
}

fn max_or(v: u64) -> String {
    if v == 0 {
        "max".to_owned()
    } else {
        v.to_string()
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
pub(crate) fn keyed(text: &str, key: &str) -> Option<u64> {
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

/// The cgroups of the jails of one node, under `<root>/.../<parent>/<jail>`.
#[derive(Debug, Clone)]
pub(crate) struct Cgroups {
    root: PathBuf,
    parent: String,
    version: Version,
    /// The v1 controllers mounted on the host (read once: hierarchies are
    /// mounted at boot).
    controllers: Vec<&'static str>,
}

impl Cgroups {
    /// Looks at `root` to tell v2 (a `cgroup.controllers` file at the top)
    /// from v1 and hybrid hosts.
    pub fn detect(root: &Path, parent: &str) -> Self {
        let version = if root.join("cgroup.controllers").exists() {
            Version::V2
        } else {
            Version::V1
        };
        let controllers = match version {
            Version::V2 => Vec::new(),
            Version::V1 => V1_CONTROLLERS
                .into_iter()
                .filter(|c| root.join(c).is_dir())
                .collect(),
        };
        Self {
            root: root.to_owned(),
            parent: parent.to_owned(),
            version,
            controllers,
        }
    }

    pub fn version(&self) -> Version {
        self.version
    }

    /// The folders holding the per-jail groups: one per v1 controller
    /// present on the host, or the one v2 folder.
    fn parents(&self) -> Vec<(&'static str, PathBuf)> {
        match self.version {
            Version::V2 => vec![("", self.root.join(&self.parent))],
            Version::V1 => self
                .controllers
                .iter()
                .map(|c| (*c, self.root.join(c).join(&self.parent)))
                .collect(),
        }
    }

    /// Every folder of one jail's group.
    pub fn dirs(&self, jail: &str) -> Vec<PathBuf> {
        self.parents()
            .into_iter()
            .map(|(_, p)| p.join(jail))
            .collect()
    }

    /// The jail's group folder of `controller` (ignored on v2).
    pub fn dir(&self, controller: &str, jail: &str) -> PathBuf {
        match self.version {
            Version::V2 => self.root.join(&self.parent).join(jail),
            Version::V1 => self.root.join(controller).join(&self.parent).join(jail),
        }
    }

    /// The `cgroup.procs` files, which list the group's processes.
    pub fn procs_files(&self, jail: &str) -> Vec<PathBuf> {
        self.dirs(jail)
            .into_iter()
            .map(|d| d.join("cgroup.procs"))
            .collect()
    }

    /// The files a process writes "0" into to join the jail's group: on v1
    /// each hierarchy's `tasks`, which moves the writing thread alone and so
    /// takes no whole-system lock (the process must be one thread); on v2
    /// `cgroup.procs`.
    pub fn join_files(&self, jail: &str) -> Vec<PathBuf> {
        let file = match self.version {
            Version::V1 => "tasks",
            Version::V2 => "cgroup.procs",
        };
        self.dirs(jail).into_iter().map(|d| d.join(file)).collect()
    }

    /// [`Self::join_files`], opened for writing by this (host root)
    /// process: the kernel checks the opener's credentials, so a process
    /// given them may join from inside its user namespace.
    pub fn open_join_files(&self, jail: &str) -> Result<Vec<OwnedFd>, JailError> {
        self.join_files(jail)
            .into_iter()
            .map(|f| {
                OpenOptions::new()
                    .write(true)
                    .open(&f)
                    .map(OwnedFd::from)
                    .map_err(JailError::io("join cgroup", &f))
            })
            .collect()
    }

    /// Creates the jail's group if missing (and on v2 delegates the
    /// controllers down to it), with the device allow-list on it. Called
    /// before the jail's first process joins the group.
    pub fn ensure(&self, jail: &str) -> Result<(), JailError> {
        self.ensure_group(jail)?;
        match self.version {
            Version::V2 => crate::devices::attach_v2(&self.dir("", jail)),
            Version::V1 if self.controllers.contains(&"devices") => {
                let dir = self.dir("devices", jail);
                // Rules go on once, before anything runs in the group: a
                // group keeps them, and rewriting them under a running jail
                // would refuse its devices for a moment.
                let list = fs::read_to_string(dir.join("devices.list")).unwrap_or_default();
                if !list.is_empty() && !list.contains("a *:* rwm") {
                    return Ok(());
                }
                for (file, rule) in crate::devices::v1_rules() {
                    let path = dir.join(file);
                    fs::write(&path, rule).map_err(JailError::io("write", &path))?;
                }
                Ok(())
            }
            Version::V1 => Ok(()),
        }
    }

    fn ensure_group(&self, jail: &str) -> Result<(), JailError> {
        if self.version == Version::V2 {
            let parent = self.root.join(&self.parent);
            fs::create_dir_all(&parent).map_err(JailError::io("create cgroup", &parent))?;
            for dir in [&self.root, &parent] {
                let file = dir.join("cgroup.subtree_control");
                // Enabling an already enabled controller is a no-op; a missing
                // controller (io on some hosts) must not stop the others.
                for c in ["+cpu", "+memory", "+pids", "+io"] {
                    let _ = fs::write(&file, c);
                }
            }
        }
        for dir in self.dirs(jail) {
            fs::create_dir_all(&dir).map_err(JailError::io("create cgroup", &dir))?;
        }
        Ok(())
    }

    /// Writes `limits` into a new jail group.
    pub fn set(
        &self,
        jail: &str,
        limits: &Limits,
        device: Option<(u64, u64)>,
    ) -> Result<(), JailError> {
        self.write_all(jail, &limit_writes(self.version, limits, device))
    }

    /// Writes `limits` into the jail's group; safe on a running jail.
    /// Returns the files whose values changed (as the kernel reads them
    /// back, so no value needs normalising here).
    pub fn apply(
        &self,
        jail: &str,
        limits: &Limits,
        device: Option<(u64, u64)>,
    ) -> Result<Vec<String>, JailError> {
        let writes = limit_writes(self.version, limits, device);
        let read =
            |wr: &Write| fs::read_to_string(self.dir(wr.controller, jail).join(wr.file)).ok();
        let before: Vec<Option<String>> = writes.iter().map(read).collect();
        self.write_all(jail, &writes)?;
        Ok(writes
            .iter()
            .zip(before)
            .filter(|(wr, was)| read(wr) != *was)
            .map(|(wr, _)| wr.file.to_owned())
            .collect())
    }

    fn write_all(&self, jail: &str, writes: &[Write]) -> Result<(), JailError> {
        let mut i = 0;
        while i < writes.len() {
            let wr = &writes[i];
            let path = self.dir(wr.controller, jail).join(wr.file);
            match self.write(&path, wr) {
                Err(JailError::Io { source, .. })
                    if source.raw_os_error() == Some(libc::EINVAL)
                        && wr.file == "memory.limit_in_bytes"
                        && writes
                            .get(i + 1)
                            .is_some_and(|n| n.file == "memory.memsw.limit_in_bytes") =>
                {
                    // Raising memory above the current memsw limit: memsw first.
                    let next = &writes[i + 1];
                    self.write(&self.dir(next.controller, jail).join(next.file), next)?;
                    self.write(&path, wr)?;
                    i += 2;
                    continue;
                }
                r => r?,
            }
            i += 1;
        }
        Ok(())
    }

    fn write(&self, path: &Path, wr: &Write) -> Result<(), JailError> {
        if wr.optional && !path.exists() {
            return Ok(());
        }
        fs::write(path, &wr.value).map_err(JailError::io("write cgroup", path))
    }

    /// Kills every process of the jail's group at once where the kernel
    /// can (`cgroup.kill`, v2 since Linux 5.14): nothing forks its way out
    /// between reading the members and signalling them. Whether it did; on
    /// v1 the caller signals each member (see [`Cgroups::pids`]).
    pub fn kill(&self, jail: &str) -> bool {
        if self.version != Version::V2 {
            return false;
        }
        let file = self.dir("", jail).join("cgroup.kill");
        file.exists() && fs::write(&file, "1").is_ok()
    }

    /// The pids in the jail's group (every controller, deduplicated).
    pub fn pids(&self, jail: &str) -> Vec<i32> {
        let mut pids: Vec<i32> = self
            .procs_files(jail)
            .iter()
            .filter_map(|f| read_small(f).ok())
            .flat_map(|t| {
                t.lines()
                    .filter_map(|l| l.trim().parse().ok())
                    .collect::<Vec<i32>>()
            })
            .collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// Removes the jail's group if present. The kernel refuses while a
    /// member is still exiting; that lasts microseconds, so retry briefly.
    pub fn remove(&self, jail: &str) -> Result<(), JailError> {
        for dir in self.dirs(jail) {
            let deadline = Instant::now() + Duration::from_secs(2);
            loop {
                match fs::remove_dir(&dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == ErrorKind::NotFound => break,
                    Err(e)
                        if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline =>
                    {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                        return Err(JailError::CgroupBusy { path: dir });
                    }
                    Err(e) => return Err(JailError::io("remove cgroup", &dir)(e)),
                }
            }
        }
        Ok(())
    }

    /// Names of every jail group present under the parent, with its folders.
    pub fn list(&self) -> Vec<(String, PathBuf)> {
        let mut out = Vec::new();
        for (_, parent) in self.parents() {
            let Ok(rd) = fs::read_dir(&parent) else {
                continue;
            };
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    out.push((e.file_name().to_string_lossy().into_owned(), e.path()));
                }
            }
        }
        out
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            cpu_millicores: 500,
            memory_bytes: 256 << 20,
            pids: 128,
            disk_bytes: 1 << 30,
            io_read_bps: 10 << 20,
            io_write_bps: 0,
            io_read_iops: 0,
            io_write_iops: 100,
            ..Limits::default()
        }
    }

    fn render(ws: &[Write]) -> Vec<String> {
        ws.iter()
            .map(|w| format!("{}/{}={}", w.controller, w.file, w.value))
            .collect()
    }

    #[test]
    fn v1_limits_become_cfs_quota_memsw_and_blkio_rules() {
        let ws = limit_writes(Version::V1, &limits(), Some((7, 3)));
        assert_eq!(
            render(&ws),
            [
                "cpu/cpu.cfs_period_us=100000",
                "cpu/cpu.cfs_quota_us=50000",
                "memory/memory.limit_in_bytes=268435456",
                "memory/memory.memsw.limit_in_bytes=268435456",
                "pids/pids.max=128",
                "blkio/blkio.throttle.read_bps_device=7:3 10485760",
                "blkio/blkio.throttle.write_bps_device=7:3 0",
                "blkio/blkio.throttle.read_iops_device=7:3 0",
                "blkio/blkio.throttle.write_iops_device=7:3 100",
            ]
        );
    }

    #[test]
    fn v2_limits_use_max_for_unlimited_and_forbid_swap() {
        let mut l = limits();
        l.cpu_millicores = 0;
        l.pids = 0;
        let ws = limit_writes(Version::V2, &l, Some((7, 3)));
        assert_eq!(
            render(&ws),
            [
                "/cpu.max=max 100000",
                "/memory.max=268435456",
                "/memory.swap.max=0",
                "/pids.max=max",
                "/io.max=7:3 rbps=10485760 wbps=max riops=max wiops=100",
            ]
        );
    }

    #[test]
    fn no_device_means_no_io_rules() {
        let ws = limit_writes(Version::V1, &limits(), None);
        assert!(ws.iter().all(|w| w.controller != "blkio"));
    }

    #[test]
    fn usage_parses_v1_and_v2_files() {
        let v1 = |c: &str, f: &str| -> String {
            match (c, f) {
                ("cpuacct", "cpuacct.usage") => "2500000\n".into(),
                ("memory", "memory.usage_in_bytes") => "4096\n".into(),
                ("memory", "memory.max_usage_in_bytes") => "8192\n".into(),
                ("memory", "memory.oom_control") => {
                    "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n".into()
                }
                ("memory", "memory.failcnt") => "17\n".into(),
                ("pids", "pids.current") => "3\n".into(),
                ("pids", "pids.events") => "max 5\n".into(),
                ("cpu", "cpu.stat") => "nr_periods 10\nnr_throttled 4\nthrottled_time 9\n".into(),
                ("blkio", "blkio.throttle.io_service_bytes_recursive") => {
                    "7:3 Read 100\n7:3 Write 200\n7:3 Sync 300\n7:3 Total 300\nTotal 300\n".into()
                }
                _ => String::new(),
            }
        };
        let u = parse_usage(Version::V1, &v1);
        assert_eq!(
            u,
            CgroupUsage {
                cpu_usec: 2500,
                memory_bytes: 4096,
                memory_peak_bytes: 8192,
                pids: 3,
                io_read_bytes: 100,
                io_write_bytes: 200,
                oom_kills: 2,
                memory_limit_hits: 17,
                pids_limit_hits: 5,
                cpu_throttled_periods: 4,
            }
        );
        let v2 = |_: &str, f: &str| -> String {
            match f {
                "cpu.stat" => "usage_usec 77\nnr_throttled 6\n".into(),
                "memory.events" => "low 0\nhigh 0\nmax 9\noom 1\noom_kill 1\n".into(),
                "io.stat" => {
                    "7:3 rbytes=10 wbytes=20 rios=1 wios=2\n8:0 rbytes=1 wbytes=2\n".into()
                }
                "pids.events" => "max 0\n".into(),
                _ => String::new(),
            }
        };
        let u = parse_usage(Version::V2, &v2);
        assert_eq!(
            (
                u.cpu_usec,
                u.cpu_throttled_periods,
                u.memory_limit_hits,
                u.oom_kills
            ),
            (77, 6, 9, 1)
        );
        assert_eq!((u.io_read_bytes, u.io_write_bytes), (11, 22));
    }

    #[test]
    fn usage_reads_exactly_the_listed_files() {
        for version in [Version::V1, Version::V2] {
            let asked = std::cell::RefCell::new(Vec::new());
            parse_usage(version, &|c: &str, f: &str| {
                asked.borrow_mut().push((c.to_owned(), f.to_owned()));
                String::new()
            });
            let mut asked = asked.into_inner();
            asked.sort();
            asked.dedup();
            let mut listed: Vec<(String, String)> = usage_files(version)
                .iter()
                .map(|(c, f)| ((*c).to_owned(), (*f).to_owned()))
                .collect();
            listed.sort();
            assert_eq!(asked, listed, "{version:?}");
        }
    }

    #[test]
    fn groups_are_created_written_listed_and_removed_on_a_fake_root() {
        let root = tempfile::tempdir().unwrap();
        for c in V1_CONTROLLERS {
            fs::create_dir(root.path().join(c)).unwrap();
        }
        let cg = Cgroups::detect(root.path(), "stockade");
        assert_eq!(cg.version(), Version::V1);
        cg.ensure("web").unwrap();
        cg.apply("web", &limits(), None).unwrap();
        let quota =
            fs::read_to_string(root.path().join("cpu/stockade/web/cpu.cfs_quota_us")).unwrap();
        assert_eq!(quota, "50000");
        // swap accounting absent on this fake host: the optional file is skipped
        assert!(
            !root
                .path()
                .join("memory/stockade/web/memory.memsw.limit_in_bytes")
                .exists()
        );
        assert_eq!(cg.list().len(), V1_CONTROLLERS.len());
        // Devices: everything denied, then the allow-list.
        let allowed =
            fs::read_to_string(root.path().join("devices/stockade/web/devices.allow")).unwrap();
        assert!(allowed.contains("c 136:* rwm"), "{allowed}");
        // A real cgroupfs removes its files itself; a temp folder does not.
        for d in cg.dirs("web") {
            for e in fs::read_dir(&d).unwrap() {
                fs::remove_file(e.unwrap().path()).unwrap();
            }
        }
        cg.remove("web").unwrap();
        cg.remove("web").unwrap();
        assert!(cg.list().is_empty());
    }

    #[test]
    fn v2_is_detected_by_its_controllers_file() {
        let root = tempfile::tempdir().unwrap();
        fs::write(
            root.path().join("cgroup.controllers"),
            "cpu memory pids io\n",
        )
        .unwrap();
        let cg = Cgroups::detect(root.path(), "stockade");
        assert_eq!(cg.version(), Version::V2);
        assert_eq!(cg.dirs("a"), vec![root.path().join("stockade/a")]);
        // A group is killed whole through its `cgroup.kill`, where present.
        fs::create_dir_all(root.path().join("stockade/a")).unwrap();
        assert!(!cg.kill("a"), "a kernel without cgroup.kill");
        fs::write(root.path().join("stockade/a/cgroup.kill"), "").unwrap();
        assert!(cg.kill("a"));
        let written = fs::read_to_string(root.path().join("stockade/a/cgroup.kill")).unwrap();
        assert_eq!(written, "1");
        // v1 has no such file: each member is signalled instead.
        let v1 = tempfile::tempdir().unwrap();
        for c in V1_CONTROLLERS {
            fs::create_dir(v1.path().join(c)).unwrap();
        }
        assert!(!Cgroups::detect(v1.path(), "stockade").kill("a"));
    }
}
