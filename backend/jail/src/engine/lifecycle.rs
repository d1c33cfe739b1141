//! A jail's lifecycle: made (volume, root, cgroup, user ids), started,
//! stopped, restarted and destroyed.

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;
use std::time::Duration;

use nix::sys::signal::Signal;
use stockade_domain::{JailKind, JailName};

use crate::error::JailError;
use crate::launch::{self, ExecPlan, JAIL_PATH, Launch, Outcome, Stdio};
use crate::rootfs::{self, UpperSource};
use crate::spec::JailSpec;
use crate::state::{self, IdShift, InitProcess, JailPaths, JailRecord, Upper};
use crate::teardown;
use crate::volume::{self};
use crate::{hostinfo, image, uids};

use super::*;

impl Engine {
    /// Creates the jail's state record, volume, cgroup and firewall entries
    /// as far as missing, and applies its limits. Idempotent. A new jail
    /// whose creation fails is removed again.
    pub fn create(&self, spec: &JailSpec) -> Result<(), JailError> {
        self.prepare(spec, false, true).map(drop)
    }

    /// Makes what the jail needs on the node, as far as missing. The cgroup
    /// is made here only with `cgroup`: a launch makes it while the jail's
    /// init sets up its root, in parallel.
    pub(super) fn prepare(
        &self,
        spec: &JailSpec,
        transient: bool,
        cgroup: bool,
    ) -> Result<(JailPaths, JailRecord), JailError> {
        let _lock = self.lock_jail(spec.name.as_str())?;
        let new = !self.paths(spec.name.as_str()).record.exists();
        let _image = self
            .image_use
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let r = self
            .prepare_parts(spec, transient)
            .and_then(|(paths, rec)| {
                if cgroup {
                    self.setup_cgroup(&rec)?;
                }
                Ok((paths, rec))
            });
        if r.is_err()
            && new
            && let Err(e) = self.destroy(&spec.name)
        {
            tracing::warn!(jail = %spec.name, error = %e, "removing a half-created jail failed");
        }
        r
    }

    pub(super) fn prepare_parts(
        &self,
        spec: &JailSpec,
        transient: bool,
    ) -> Result<(JailPaths, JailRecord), JailError> {
        check_rates(&spec.limits)?;
        if let Some(n) = &spec.network {
            // Before anything exists: a refused address or port leaves
            // nothing (and an existing jail as it was).
            let network = self.network();
            network.validate(spec.name.as_str(), n, &self.networks())?;
            network.check_ports(n)?;
        }
        let lower = image::path(&self.cfg.image_dir, &spec.image)?;
        if !lower.is_dir() {
            return Err(JailError::ImageNotFound {
                name: spec.image.clone(),
                path: lower,
            });
        }
        let paths = self.paths(spec.name.as_str());
        let existing = state::load(&paths)?;
        let upper = match &existing {
            Some(r) => r.upper,
            None if spec.limits.disk_bytes > 0 => Upper::Volume,
            None => Upper::Tmpfs {
                bytes: self.cfg.tmpfs_upper_bytes,
            },
        };
        let (uid_base, id_shift) = self.user_ids(spec, existing.as_ref())?;
        // Limits change only through `update_limits`, which applies them
        // (and grows a volume): the record keeps the limits in force.
        let mut kept = spec.clone();
        if let Some(r) = &existing {
            kept.limits = r.spec.limits;
        }
        let mut rec = JailRecord {
            spec: kept,
            upper,
            loop_device: existing.as_ref().and_then(|r| r.loop_device.clone()),
            init: existing.as_ref().and_then(|r| r.init),
            transient,
            uid_base,
            id_shift,
            last_exit: existing.as_ref().and_then(|r| r.last_exit),
        };
        // The record first: whatever is created next can be found from it
        // (a range is claimed before, and a shift is recorded before it starts).
        state::save(&paths, &rec)?;
        // A jail's folder (record, volume image, output) is for root only,
        // and for a jail with a user namespace its own root, which mounts
        // the layers inside it.
        let target = id_shift.map_or(uid_base, IdShift::target);
        if target.is_some() || id_shift.is_some() {
            self.host.chown(&paths.dir, target.unwrap_or(0))?;
        }
        fs::set_permissions(&paths.dir, fs::Permissions::from_mode(0o700))
            .map_err(JailError::io("chmod", &paths.dir))?;
        if upper == Upper::Volume {
            let dev = volume::ensure(
                self.host.as_ref(),
                &self.view(),
                &paths,
                rec.spec.limits.disk_bytes,
            )?;
            if rec.loop_device.as_ref() != Some(&dev) {
                rec.loop_device = Some(dev);
                state::save(&paths, &rec)?;
            }
            if let Some(shift) = id_shift {
                for sub in ["upper", "work"] {
                    uids::shift_tree(&paths.volume.join(sub), shift.from, shift.to)?;
                }
            }
            // The overlay's own folders belong to the jail's root; what the
            // jail writes lands in the upper layer with its host ids.
            if let Some(base) = uid_base {
                for sub in ["upper", "work"] {
                    self.host.chown(&paths.volume.join(sub), base)?;
                }
            }
        }
        if let Some(shift) = id_shift {
            rec.uid_base = shift.target();
            rec.id_shift = None;
            state::save(&paths, &rec)?;
            if rec.uid_base.is_none() {
                uids::release(&uids::dir(&self.cfg.state_dir), spec.name.as_str())?;
            }
            tracing::info!(jail = %spec.name, from = shift.from, to = shift.to, "volume's owners shifted");
        }
        // The record already says what the elements are (saved above).
        let _changes = self
            .net_changes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let old_net = existing.and_then(|r| r.spec.network);
        if let Some(old) = old_net.filter(|o| Some(o) != spec.network.as_ref()) {
            self.network().unpublish(spec.name.as_str(), &old)?;
        }
        if let Some(n) = &spec.network {
            let network = self.network();
            network.ensure_node()?;
            network.publish(spec.name.as_str(), n)?;
        }
        Ok((paths, rec))
    }

    /// The uid range the jail's record holds, and the shift of its volume's
    /// owners still to do, for `spec`. A new jail with a user namespace
    /// claims a range. An existing, stopped jail whose spec turns its user
    /// namespace on (or off) is shifted into a newly claimed range (or back
    /// to host ids); a running one keeps its ids until it is next started.
    /// A shift recorded by a run that stopped half-way is finished first.
    pub(super) fn user_ids(
        &self,
        spec: &JailSpec,
        existing: Option<&JailRecord>,
    ) -> Result<(Option<u32>, Option<IdShift>), JailError> {
        let Some(r) = existing else {
            let base = if spec.user_namespace {
                Some(self.claim_uid_range(&spec.name)?)
            } else {
                None
            };
            return Ok((base, None));
        };
        let uids_dir = uids::dir(&self.cfg.state_dir);
        if let Some(base) = r.uid_base {
            // A record from before ranges were held in files.
            uids::adopt(&uids_dir, base, spec.name.as_str())?;
        }
        if r.id_shift.is_some() {
            return Ok((r.uid_base, r.id_shift));
        }
        if spec.user_namespace == r.uid_base.is_some() || self.live_init(r).is_some() {
            return Ok((r.uid_base, None));
        }
        let shift = match r.uid_base {
            None => IdShift {
                from: 0,
                to: self.claim_uid_range(&spec.name)?,
            },
            Some(base) => IdShift { from: base, to: 0 },
        };
        Ok((r.uid_base, Some(shift)))
    }

    /// The jail's volume device as (major, minor), for IO limits.
    pub(super) fn volume_device(rec: &JailRecord) -> Result<Option<(u64, u64)>, JailError> {
        rec.loop_device
            .as_deref()
            .filter(|_| rec.upper == Upper::Volume)
            .map(device_numbers)
            .transpose()
    }

    /// Creates the jail's cgroup if missing and writes its limits.
    pub(super) fn setup_cgroup(&self, rec: &JailRecord) -> Result<(), JailError> {
        let name = rec.spec.name.as_str();
        self.cgroups.ensure(name)?;
        self.cgroups
            .set(name, &rec.spec.limits, Self::volume_device(rec)?)
    }

    pub(super) fn command_of(&self, spec: &JailSpec) -> Result<Vec<String>, JailError> {
        // An OCI image's entrypoint, then the jail's command or its cmd.
        if let Some(config) = image::config(&self.cfg.image_dir, &spec.image)? {
            let argv = config.command(&spec.command);
            if !argv.is_empty() {
                return Ok(argv);
            }
        }
        if !spec.command.is_empty() {
            return Ok(spec.command.clone());
        }
        if spec.kind == JailKind::App {
            return Err(JailError::Invalid {
                what: "command",
                reason: "an app jail needs a command".into(),
            });
        }
        let root = image::path(&self.cfg.image_dir, &spec.image)?;
        if fs::symlink_metadata(root.join("sbin/init")).is_ok() {
            Ok(vec!["/sbin/init".into()])
        } else if root.join("bin/busybox").exists() {
            Ok(
                ["/bin/busybox", "httpd", "-f", "-p", "80", "-h", "/srv/www"]
                    .map(String::from)
                    .to_vec(),
            )
        } else {
            Err(JailError::Invalid {
                what: "command",
                reason: format!("image {} has no /sbin/init", spec.image),
            })
        }
    }

    pub(super) fn launch(
        &self,
        paths: &JailPaths,
        rec: &JailRecord,
        argv: &[String],
        stdio: Stdio,
    ) -> Result<Outcome, JailError> {
        let spec = &rec.spec;
        let lower = image::path(&self.cfg.image_dir, &spec.image)?;
        let upper = match rec.upper {
            Upper::Volume => UpperSource::Volume(&paths.volume),
            Upper::Tmpfs { bytes } => UpperSource::Tmpfs { bytes },
        };
        let userns = rec.uid_base;
        // In a user namespace the image is seen through an id-mapped mount
        // (made once the namespace exists and handed to the jail), so its
        // root-owned files belong to the jail's root.
        let lower_layer = match userns {
            Some(_) => rootfs::Lower::IdMapped {
                fd: launch::LOWER_FD,
            },
            None => rootfs::Lower::Image(&lower),
        };
        let mnt = state::mount_dir(&self.cfg.state_dir);
        let steps = rootfs::plan(lower_layer, &upper, &mnt);
        let root = rootfs::root_in(&mnt);
        let term = std::env::var("TERM").unwrap_or_else(|_| "xterm".into());
        // An OCI image's variables over the defaults, the jail's over both;
        // its working folder and user (and that user's home) for the command.
        let config = image::config(&self.cfg.image_dir, &spec.image)?.unwrap_or_default();
        let user = match config.user.as_str() {
            "" => None,
            user => Some(image::resolve_user(&lower, user)?),
        };
        let home = user.as_ref().map_or("/root", |u| u.home.as_str());
        let defaults = [
            ("PATH", JAIL_PATH),
            ("HOME", home),
            ("HOSTNAME", spec.hostname.as_str()),
            ("TERM", term.as_str()),
        ];
        let image_env = config.env_pairs();
        let own = |k: &str| spec.env.iter().any(|(name, _)| name == k);
        let env: Vec<(&str, &str)> = defaults
            .into_iter()
            .filter(|(k, _)| !own(k) && !image_env.iter().any(|(name, _)| name == k))
            .chain(
                image_env
                    .iter()
                    .filter(|(k, _)| !own(k))
                    .map(|(k, v)| (k.as_str(), v.as_str())),
            )
            .chain(spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .collect();
        let identity = launch::Identity {
            workdir: Some(config.workdir.clone()).filter(|d| d.starts_with('/')),
            user: user.as_ref().map(|u| (u.uid, u.gid)),
        };
        let command = ExecPlan::new(argv, &env)?;
        let log_limit = match &stdio {
            Stdio::Detached { log_limit, .. } => Some(*log_limit),
            Stdio::Inherit { .. } => None,
        };
        let init = command.for_init(log_limit, stdio.tty(), &identity);
        let launch = Launch {
            hostname: CString::new(spec.hostname.as_str()).unwrap_or_default(),
            steps: &steps,
            command: &command,
            init: &init,
            program: self.init_program.as_raw_fd(),
            filter: self.filter_file.as_raw_fd(),
            user_namespace: userns.is_some(),
            stdio,
            rootfs: &root,
        };
        // The jail's namespaces exist once the init does; its cgroup and
        // veth are made meanwhile the init mounts the root.
        let mut connect = |pid: i32| {
            self.setup_cgroup(rec)?;
            let join = self.cgroups.open_join_files(spec.name.as_str())?;
            if let Some(n) = &spec.network {
                self.network()
                    .attach(spec.name.as_str(), n, &spec.limits, &self.netns(pid))?;
            }
            Ok(join)
        };
        let mut map_ids = |launcher: i32| match userns {
            None => Ok(Vec::new()),
            Some(base) => {
                let pid_dir = self.cfg.proc_root.join(launcher.to_string());
                self.host.write_id_maps(&pid_dir, base, UID_RANGE)?;
                let tree = self.host.idmap_tree(&lower, &pid_dir.join("ns/user"))?;
                Ok(vec![tree])
            }
        };
        let r = launch::launch(
            &launch,
            launch::Hooks {
                on_userns: &mut map_ids,
                on_init: &mut connect,
            },
        );
        if r.is_err() && spec.network.is_some() {
            let _ = self.network().detach(spec.name.as_str());
        }
        r
    }

    pub(super) fn netns(&self, pid: i32) -> PathBuf {
        self.cfg.proc_root.join(pid.to_string()).join("ns/net")
    }

    /// Starts the jail's init and command if not running. The jail keeps
    /// running when the calling process exits.
    pub fn start(&self, name: &JailName) -> Result<(), JailError> {
        let _lock = self.lock_jail(name.as_str())?;
        let (_, rec) = self.record(name)?;
        if self.live_init(&rec).is_some() {
            return Ok(());
        }
        // After a host reboot the volume and cgroup are gone: recreate them.
        let (paths, mut rec) = self.prepare(&rec.spec, rec.transient, false)?;
        // Leftovers of a crashed init (exec'd helpers) would hold the cgroup.
        self.kill_group(name.as_str());
        let argv = self.command_of(&rec.spec)?;
        let null = File::open("/dev/null").map_err(JailError::io("open", "/dev/null"))?;
        let log = OpenOptions::new()
            .create(true)
            .read(true)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&paths.log)
            .map_err(JailError::io("open", &paths.log))?;
        let stdio = Stdio::Detached {
            stdin: null.into(),
            log: log.into(),
            log_limit: self.cfg.console_bytes,
        };
        let Outcome::Started { pid } = self.launch(&paths, &rec, &argv, stdio)? else {
            return Err(JailError::NotRunning(name.to_string()));
        };
        let start_time = hostinfo::start_time(&self.cfg.proc_root, pid).unwrap_or(0);
        rec.init = Some(InitProcess { pid, start_time });
        state::save(&paths, &rec)?;
        tracing::info!(jail = %name, pid, "jail started");
        Ok(())
    }

    /// SIGKILLs whatever is still in the jail's cgroup and waits for it:
    /// the whole group at once where the kernel offers it, then each
    /// member that is left, reaped.
    pub(super) fn kill_group(&self, name: &str) {
        self.cgroups.kill(name);
        for _ in 0..3 {
            let pids = self.cgroups.pids(name);
            if pids.is_empty() {
                return;
            }
            for pid in pids {
                if let Ok(fd) = pidfd_open(pid) {
                    let _ = pidfd_signal(&fd, Signal::SIGKILL);
                    pidfd_wait(&fd, Duration::from_secs(2));
                    reap(pid);
                }
            }
        }
    }

    /// Stops the jail: SIGTERM to its command, `grace` to exit, then
    /// SIGKILL. The volume and cgroup stay. Idempotent.
    pub fn stop(&self, name: &JailName, grace: Duration) -> Result<(), JailError> {
        let _lock = self.lock_jail(name.as_str())?;
        let paths = self.paths(name.as_str());
        let rec = state::load(&paths)?;
        if let Some(init) = rec.as_ref().and_then(|r| r.init) {
            // Open the pidfd first, then check the start time: once open,
            // the fd keeps naming this process even if the pid is reused.
            if let Ok(fd) = pidfd_open(init.pid) {
                if hostinfo::start_time(&self.cfg.proc_root, init.pid) == Some(init.start_time) {
                    let mut gone = false;
                    if !grace.is_zero() && pidfd_signal(&fd, Signal::SIGTERM).is_ok() {
                        gone = pidfd_wait(&fd, grace);
                    }
                    if !gone {
                        let _ = pidfd_signal(&fd, Signal::SIGKILL);
                        if !pidfd_wait(&fd, Duration::from_secs(5)) {
                            return Err(JailError::StopTimeout {
                                name: name.to_string(),
                                pid: init.pid,
                            });
                        }
                    }
                }
                reap(init.pid);
            }
        }
        self.kill_group(name.as_str());
        // With its last process gone the jail's network namespace is freed
        // and the kernel removes the veth pair with it, shortly after, in
        // the background; deleting it here would make the caller wait for
        // the kernel's RCU grace periods (about 20 ms). Without a record
        // (a jail known by name only) the pair is deleted outright.
        if rec.is_none() {
            self.network().detach(name.as_str())?;
        }
        // The id-mapped image of a jail with a user namespace is needed
        // only while its root is assembled; it would keep the stopped
        // jail's user namespace alive.
        if rec.as_ref().is_none_or(|r| r.uid_base.is_some()) {
            teardown::unmount_all(self.host.as_ref(), &self.cfg.proc_root, &paths.lower)?;
        }
        if let Some(mut rec) = rec
            && rec.init.take().is_some()
        {
            state::save(&paths, &rec)?;
        }
        Ok(())
    }

    /// Stops, then starts the jail.
    pub fn restart(&self, name: &JailName, grace: Duration) -> Result<(), JailError> {
        let _lock = self.lock_jail(name.as_str())?;
        self.stop(name, grace)?;
        self.start(name)
    }

    /// Removes everything of the jail: processes, volume mount, loop
    /// device, cgroup, state folder. Works from the name alone, with or
    /// without a record. Idempotent.
    pub fn destroy(&self, name: &JailName) -> Result<(), JailError> {
        let _lock = self.lock_jail(name.as_str())?;
        let paths = self.paths(name.as_str());
        self.stop(name, Duration::ZERO)?;
        if let Some(mut rec) = state::load(&paths).ok().flatten()
            && let Some(n) = rec.spec.network.take()
        {
            // The record first says the jail has no elements, then they go:
            // a repair meanwhile cannot put them back.
            let _changes = self
                .net_changes
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            state::save(&paths, &rec)?;
            self.network().unpublish(name.as_str(), &n)?;
        }
        volume::teardown(self.host.as_ref(), &self.view(), &paths)?;
        self.cgroups.remove(name.as_str())?;
        // Whatever else is still mounted under the jail's folder (the
        // id-mapped image of a jail killed while it started or ran, a
        // crashed agent's half-done work) is unmounted first: files are
        // never deleted through a mount.
        teardown::remove_jail_dir(self.host.as_ref(), &self.cfg.proc_root, &paths.dir)?;
        // Only now that no file of the jail is left is its range free.
        uids::release(&uids::dir(&self.cfg.state_dir), name.as_str())?;
        lock::forget(&lock::dir(&self.cfg.state_dir), name.as_str())
    }
}
