//! One cgroup per jail, on cgroup v1, v2 and hybrid hosts.
//!
//! This talks to the cgroup filesystem with plain file writes rather than
//! through cgroups-rs 0.5, which `cargo bench --bench cgroups` compares side
//! by side (it makes a group only in the controllers it is given, like this
//! module):
//!
//! - cgroups-rs applies memory limits discarding the kernel's refusals. Raising
//!   a live group's memory from 64 to 128 MiB (a quota raised for a running
//!   jail) is refused while memory+swap is still 64 MiB; cgroups-rs reports
//!   success and the kernel keeps 64 MiB. [`Cgroups::apply`] orders the two
//!   writes as the kernel requires and every refused write is an error the
//!   agent reports.
//! - It finds its hierarchy from the host's mount table and `/sys/fs/cgroup`,
//!   so the cgroup root cannot be a parameter: the engine's unit tests run on
//!   a folder.
//! - Making and limiting a group costs about 0.1 ms more per start (0.50
//!   against 0.40 ms on the development machine): not decisive by itself.
//!
//! A jail needs five files per controller at most. Its devices are limited to a short
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

pub use delegated::{delegated_parent, own_group};

mod usage;
pub(crate) use usage::{CgroupUsage, parse_usage, usage_files};

mod delegated;

/// CFS period for CPU quotas: 100 ms, as Kubernetes and Docker use.
pub(crate) const CPU_PERIOD_US: u64 = 100_000;

/// The v1 controllers a jail uses; each is its own hierarchy on v1 hosts.
const V1_CONTROLLERS: [&str; 6] = ["cpu", "cpuacct", "memory", "pids", "blkio", "devices"];

/// Which cgroup interface the host offers for the controllers a jail needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
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

/// The cgroups of the jails of one node, under `<root>/.../<parent>/<jail>`.
#[derive(Debug, Clone)]
pub struct Cgroups {
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
            // Every group from the root down to the parent hands the
            // controllers on (the parent may sit deep in a delegated subtree).
            let mut dirs = vec![self.root.clone()];
            for part in Path::new(&self.parent).components() {
                let next = dirs[dirs.len() - 1].join(part);
                dirs.push(next);
            }
            for dir in &dirs {
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

#[cfg(test)]
mod tests;
