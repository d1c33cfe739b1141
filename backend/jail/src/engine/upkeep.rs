//! Keeping jails as they should be: limits applied (and put back), the
//! node's network and each jail's link repaired, status and usage read.

use std::fs::{self};

use stockade_domain::{JailName, Limits};

use crate::error::JailError;
use crate::spec::{JailStatus, Usage};
use crate::state::{self, Upper};
use crate::usage::{Reader, ReaderConfig, UsageReader};
use crate::volume::{self};

use super::*;

impl Engine {
    /// Puts the node's network back as it should be and says what had to
    /// be repaired: the bridge and the whole firewall table (rules,
    /// published ports, NAT; rewritten in one transaction). Each jail's own
    /// link is [`Engine::repair_jail`]'s.
    pub fn repair_network(&self) -> Result<Vec<String>, JailError> {
        let _changes = self
            .net_changes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let network = self.network();
        let mut repaired = Vec::new();
        let bridge_dir = self.cfg.sys_root.join("class/net").join(&self.cfg.bridge);
        if !bridge_dir.exists() {
            repaired.push(format!("bridge {}", self.cfg.bridge));
        }
        network.ensure_node()?;
        let mut written = self
            .firewall_written
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if network.repair_firewall(&self.networks(), &mut written)? {
            repaired.push(format!("firewall table {}", self.cfg.firewall_table));
        }
        Ok(repaired)
    }

    /// Watches the node's network for changes made by anyone (see
    /// [`crate::NetWatch`]), in the calling thread's namespace.
    pub fn watch_network(&self) -> Result<crate::NetWatch, JailError> {
        crate::NetWatch::open(&self.cfg.bridge, &self.cfg.firewall_table)
    }

    /// Puts a running jail's link back as it should be and says what had to
    /// be repaired: the link made again in the jail's namespace when it was
    /// deleted, taken off the bridge, or lost its address, default route or
    /// up state inside; else each rate limit that differs from the one in
    /// force. Nothing for a stopped jail or one without a network.
    pub fn repair_jail(&self, name: &JailName) -> Result<Vec<String>, JailError> {
        let _lock = self.lock_jail(name.as_str())?;
        let (_, rec) = self.record(name)?;
        let (Some(spec), Some(init)) = (&rec.spec.network, self.live_init(&rec)) else {
            return Ok(Vec::new());
        };
        let network = self.network();
        let link = crate::net::host_link(name.as_str());
        let netns = self.netns(init.pid);
        let master = fs::read_link(
            self.cfg
                .sys_root
                .join("class/net")
                .join(&link)
                .join("master"),
        )
        .ok()
        .and_then(|m| m.file_name().map(|f| f.to_string_lossy().into_owned()));
        if master.as_deref() == Some(self.cfg.bridge.as_str()) {
            return network.check_jail(name.as_str(), spec, &rec.spec.limits, &netns);
        }
        network.attach(name.as_str(), spec, &rec.spec.limits, &netns)?;
        Ok(vec![format!("link {link} of jail {name}")])
    }

    /// Applies new limits, live on a running jail. A larger disk quota grows
    /// the volume online; a smaller one is refused. Returns the cgroup
    /// files whose values were not already these limits' (on a jail whose
    /// limits did not change, what was changed by hand and is now put back).
    pub fn update_limits(
        &self,
        name: &JailName,
        limits: &Limits,
    ) -> Result<Vec<String>, JailError> {
        check_rates(limits)?;
        let _lock = self.lock_jail(name.as_str())?;
        let (paths, mut rec) = self.record(name)?;
        let mut device = None;
        // What applies now: all of `limits`, unless the host refuses to grow
        // a running jail's volume; then the rest, and the record keeps the
        // old size, so the next update while stopped grows it offline.
        let mut applied = *limits;
        let mut deferred = None;
        let mut regrown = false;
        if rec.upper == Upper::Volume {
            let running = self.live_init(&rec).is_some();
            let mut dev = self.view().mounted_device(&paths.volume);
            // A new quota, or a volume found smaller than the one in force
            // (its image or filesystem not grown, or cut by hand).
            let unchanged = limits.disk_bytes == rec.spec.limits.disk_bytes;
            if !unchanged || !volume::fits(&paths.volume_image, limits.disk_bytes)? {
                let online = if running { dev.as_deref() } else { None };
                match volume::grow(
                    self.host.as_ref(),
                    &self.view(),
                    &paths,
                    online,
                    limits.disk_bytes,
                ) {
                    Ok(()) => regrown = unchanged,
                    Err(
                        e @ (JailError::Program { .. }
                        | JailError::Io { .. }
                        | JailError::Sys { .. }),
                    ) if running => {
                        applied.disk_bytes = rec.spec.limits.disk_bytes;
                        deferred = Some(JailError::GrowsAtNextStop {
                            requested: limits.disk_bytes,
                            reason: e.to_string(),
                        });
                    }
                    Err(e) => return Err(e),
                }
                if !running {
                    dev = Some(volume::ensure(
                        self.host.as_ref(),
                        &self.view(),
                        &paths,
                        limits.disk_bytes,
                    )?);
                }
            }
            if let Some(dev) = dev {
                device = Some(device_numbers(&dev)?);
                rec.loop_device = Some(dev);
            }
        }
        let mut changed = self.cgroups.apply(name.as_str(), &applied, device)?;
        if regrown {
            changed.push("volume size".to_owned());
        }
        if rec.spec.network.is_some()
            && let Some(init) = self.live_init(&rec)
        {
            self.network().set_rates(
                name.as_str(),
                &applied,
                Some(&rec.spec.limits),
                &self.netns(init.pid),
            )?;
        }
        rec.spec.limits = applied;
        state::save(&paths, &rec)?;
        deferred.map_or(Ok(changed), Err)
    }

    /// Whether the jail runs; `None` when it does not exist.
    pub fn status(&self, name: &JailName) -> Result<Option<JailStatus>, JailError> {
        let Some(rec) = state::load(&self.paths(name.as_str()))? else {
            return Ok(None);
        };
        Ok(Some(match self.live_init(&rec) {
            Some(init) => JailStatus::Running { pid: init.pid },
            None if rec.init.is_some() => {
                // Ended on its own: how is kept for whoever asks. Asked again
                // under the jail's lock, as a stop, start or removal may
                // have come first.
                let _lock = self.lock_jail(name.as_str())?;
                let paths = self.paths(name.as_str());
                let Some(mut rec) = state::load(&paths)? else {
                    return Ok(None);
                };
                if let Some(init) = self.live_init(&rec) {
                    return Ok(Some(JailStatus::Running { pid: init.pid }));
                }
                if let Some(init) = rec.init.take() {
                    let status = reap(init.pid);
                    let at_ms = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
                    rec.last_exit = Some(crate::state::Exit::of(status, at_ms));
                    state::save(&paths, &rec)?;
                }
                JailStatus::Stopped
            }
            None => JailStatus::Stopped,
        }))
    }

    /// The file a started jail's output is kept in (a ring of at most
    /// [`Engine::console_bytes`] bytes, rewritten by the jail's init when
    /// full: its newest half moved to its start).
    pub fn console_log(&self, name: &JailName) -> std::path::PathBuf {
        self.paths(name.as_str()).log
    }

    /// The most bytes a jail's output file holds.
    pub fn console_bytes(&self) -> u64 {
        self.cfg.console_bytes
    }

    /// How the jail's command last ended on its own (seen by [`Self::status`]);
    /// `None` when it never did or the jail does not exist.
    pub fn last_exit(&self, name: &JailName) -> Result<Option<crate::state::Exit>, JailError> {
        Ok(state::load(&self.paths(name.as_str()))?.and_then(|r| r.last_exit))
    }

    /// A descriptor that becomes readable when the jail's init ends, so a
    /// caller learns of a crash at once; `None` when it does not run. The
    /// descriptor is opened before the init's start time is checked, so it
    /// never names a later process that got the same pid.
    pub fn watch_init(&self, name: &JailName) -> Result<Option<std::os::fd::OwnedFd>, JailError> {
        let Some(rec) = state::load(&self.paths(name.as_str()))? else {
            return Ok(None);
        };
        let Some(init) = rec.init else {
            return Ok(None);
        };
        let fd = match super::pidfd_open(init.pid) {
            Ok(fd) => fd,
            // Gone: it ended.
            Err(Errno::ESRCH) => return Ok(None),
            Err(e) => return Err(JailError::sys("pidfd_open", "/proc")(e)),
        };
        Ok(self.live_init(&rec).map(|_| fd))
    }

    /// The jail's resource usage and limit hits.
    pub fn usage(&self, name: &JailName) -> Result<Usage, JailError> {
        Reader::new(self.reader_config())
            .sweep([name])
            .usage
            .pop()
            .unwrap_or_else(|| Err(JailError::NotFound(name.to_string())))
    }

    /// A reader of many jails' usage that keeps their counter files open
    /// from one sweep to the next (the agent's sampler).
    pub fn usage_reader(&self) -> UsageReader {
        UsageReader::new(self.reader_config())
    }

    pub(super) fn reader_config(&self) -> ReaderConfig {
        ReaderConfig {
            state_dir: self.cfg.state_dir.clone(),
            proc_root: self.cfg.proc_root.clone(),
            sys_root: self.cfg.sys_root.clone(),
            cgroups: self.cgroups.clone(),
        }
    }
}
