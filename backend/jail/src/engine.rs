//! The engine: jail lifecycle on one node, built from the parts in the
//! other modules. Every step is create-if-missing or delete-if-present.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sched::CloneFlags;
use nix::sys::signal::Signal;
use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::Pid;
use stockade_domain::{JailKind, JailName, Limits};

use crate::cgroup::Cgroups;
use crate::discover::{self, Discovered, Observed};
use crate::error::JailError;
use crate::host::{Host, LinuxHost};
use crate::launch::{self, ExecPlan, JAIL_PATH, Launch, Outcome, Stdio};
use crate::net::{self, LinuxNet, NetHost, NetSpec, Network, NodeNet};
use crate::rootfs::{self, UpperSource};
use crate::seccomp::{self, Filters};
use crate::spec::{JailSpec, JailStatus, Usage};
use crate::state::{self, IdShift, InitProcess, JailPaths, JailRecord, Upper};
use crate::teardown;
use crate::terminal::Terminal;
use crate::usage::{Reader, ReaderConfig, UsageReader};
use crate::volume::{self, HostView};
use crate::{hostinfo, image, uids};

/// Host paths and defaults of an engine. Every host path is a parameter so
/// tests can point the engine at temporary folders.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Jail records, volumes and mount points (`/var/lib/stockade`).
    pub state_dir: PathBuf,
    /// Images, one folder each (`/var/lib/stockade/images`).
    pub image_dir: PathBuf,
    /// The cgroup filesystem root (`/sys/fs/cgroup`).
    pub cgroup_root: PathBuf,
    /// The group holding every jail's group (`stockade`).
    pub cgroup_parent: String,
    /// The proc filesystem (`/proc`).
    pub proc_root: PathBuf,
    /// The sys filesystem (`/sys`), for loop devices.
    pub sys_root: PathBuf,
    /// The host's static busybox, for the built-in image.
    pub busybox: PathBuf,
    /// Size of the tmpfs upper layer of jails without a disk quota.
    pub tmpfs_upper_bytes: u64,
    /// The node's bridge for jail networks (`stk0`), created if missing.
    pub bridge: String,
    /// The bridge's gateway address with the prefix of the node's jail
    /// address pool (`10.77.0.1/16`).
    pub gateway: ipnet::Ipv4Net,
    /// Host TCP ports jails may reach on the gateway address (none).
    pub open_ports: Vec<u16>,
    /// The nftables table (family `inet`) the engine owns (`stockade`).
    pub firewall_table: String,
    /// First host uid of the ranges given to jails with a user namespace
    /// (`1000000`); jail `k` maps 0..65536 to base + k * 65536.
    pub uid_base: u32,
    /// How many such ranges there are (`4096`).
    pub uid_ranges: u32,
    /// The host's account files (`/etc`): ranges overlapping an id of
    /// `passwd`, `group`, `subuid` or `subgid` are never given to a jail.
    pub etc_dir: PathBuf,
    /// Whether the engine turns on IPv4 forwarding when a jail publishes
    /// ports or uses outbound NAT (needed to reach it from other machines).
    pub forwarding: bool,
    /// Most bytes of a started jail's output kept on the node (`console.log`,
    /// the newest output; 4 MiB).
    pub console_bytes: u64,
}

impl EngineConfig {
    /// The standard host paths with the given state and image folders.
    pub fn new(state_dir: impl Into<PathBuf>, image_dir: impl Into<PathBuf>) -> Self {
        let busybox = ["/bin/busybox", "/usr/bin/busybox"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .unwrap_or_else(|| "/bin/busybox".into());
        Self {
            state_dir: state_dir.into(),
            image_dir: image_dir.into(),
            cgroup_root: "/sys/fs/cgroup".into(),
            cgroup_parent: "stockade".into(),
            proc_root: "/proc".into(),
            sys_root: "/sys".into(),
            busybox,
            tmpfs_upper_bytes: 256 << 20,
            bridge: "stk0".into(),
            gateway: ipnet::Ipv4Net::new(Ipv4Addr::new(10, 77, 0, 1), 16).unwrap_or_default(),
            open_ports: Vec::new(),
            firewall_table: net::FIREWALL_TABLE.into(),
            uid_base: 1_000_000,
            uid_ranges: 4096,
            etc_dir: "/etc".into(),
            forwarding: true,
            console_bytes: 4 << 20,
        }
    }
}

/// The jail engine of one node. Cheap to share between threads; operations
/// on different jails may run concurrently, operations on the same jail
/// must be serialised by the caller (the agent's reconciler does).
#[derive(Debug)]
pub struct Engine {
    cfg: EngineConfig,
    cgroups: Cgroups,
    host: Box<dyn Host>,
    net: Box<dyn NetHost>,
    seccomp: Filters,
    /// The jail init program (see [`launch::init_program`]) and the filter (a
    /// sealed in-memory file).
    init_program: OwnedFd,
    filter_file: OwnedFd,
    /// The networks of the node's jails as last read (see [`Self::networks`]).
    net_index: std::sync::Mutex<HashMap<String, (RecordKey, Option<NetSpec>)>>,
    /// The firewall table as the last repair left it.
    firewall_written: std::sync::Mutex<Option<String>>,
}

/// Which version of a record file was read: records are replaced by a
/// rename, so a rewritten one has another inode or change time.
type RecordKey = (u64, i64, i64, u64);

/// The size of a jail's uid (and gid) range.
pub const UID_RANGE: u32 = 65_536;

/// Refuses network rates too small to carry TCP (0 is "no limit").
fn check_rates(limits: &Limits) -> Result<(), JailError> {
    for (what, bps) in [
        ("net-egress", limits.net_egress_bps),
        ("net-ingress", limits.net_ingress_bps),
    ] {
        if bps != 0 && bps < net::MIN_RATE_BPS {
            return Err(JailError::Invalid {
                what,
                reason: format!("{bps} bit/s is below the smallest rate, 8kbit"),
            });
        }
    }
    Ok(())
}

/// Whether `name` can name a network interface (the bridge).
fn valid_link_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

pub(crate) fn c_path(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap_or_default()
}

/// A block device's (major, minor) numbers.
fn device_numbers(dev: &Path) -> Result<(u64, u64), JailError> {
    let rdev = fs::metadata(dev)
        .map_err(JailError::io("stat", dev))?
        .rdev();
    Ok((u64::from(libc::major(rdev)), u64::from(libc::minor(rdev))))
}

pub(crate) fn pidfd_open(pid: i32) -> Result<OwnedFd, Errno> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let fd = Errno::result(fd)?;
    let fd = i32::try_from(fd).map_err(|_| Errno::EBADF)?;
    // SAFETY: the kernel just returned this fd to us; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn pidfd_signal(fd: &OwnedFd, sig: Signal) -> Result<(), Errno> {
    // SAFETY: pidfd_send_signal with a valid pidfd, no siginfo, no flags.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            sig as libc::c_int,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    Errno::result(r).map(drop)
}

/// Waits until the process behind `fd` has exited, up to `timeout`.
fn pidfd_wait(fd: &OwnedFd, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ms = i32::try_from(left.as_millis()).unwrap_or(i32::MAX);
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: polls one valid pollfd for at most `ms` milliseconds.
        let r = unsafe { libc::poll(&raw mut pfd, 1, ms) };
        if r > 0 {
            return true;
        }
        if r == 0 || (r < 0 && Errno::last() != Errno::EINTR) {
            return false;
        }
    }
}

/// Reaps `pid` if it is our child (the engine's process may be the jails'
/// subreaper); otherwise its parent does.
fn reap(pid: i32) {
    let _ = waitpid(
        Pid::from_raw(pid),
        Some(WaitPidFlag::WNOHANG | WaitPidFlag::__WALL),
    );
}

impl Engine {
    /// An engine on the real host with `cfg`'s paths; creates the state and
    /// image folders if missing.
    pub fn new(cfg: EngineConfig) -> Result<Self, JailError> {
        Self::with_host(cfg, Box::new(LinuxHost))
    }

    pub(crate) fn with_host(cfg: EngineConfig, host: Box<dyn Host>) -> Result<Self, JailError> {
        Self::with_hosts(cfg, host, Box::new(LinuxNet))
    }

    pub(crate) fn with_hosts(
        cfg: EngineConfig,
        host: Box<dyn Host>,
        net: Box<dyn NetHost>,
    ) -> Result<Self, JailError> {
        if !valid_link_name(&cfg.bridge) {
            return Err(JailError::Invalid {
                what: "bridge name",
                reason: format!("{:?}: 1 to 15 letters, digits, - or _", cfg.bridge),
            });
        }
        if !valid_link_name(&cfg.firewall_table) {
            return Err(JailError::Invalid {
                what: "firewall table",
                reason: format!("{:?}: letters, digits, - or _", cfg.firewall_table),
            });
        }
        if cfg.gateway.prefix_len() > 30 {
            return Err(JailError::Invalid {
                what: "gateway",
                reason: format!("{}: the pool needs a prefix of at most /30", cfg.gateway),
            });
        }
        if cfg.uid_base < UID_RANGE {
            return Err(JailError::Invalid {
                what: "uid base",
                reason: format!(
                    "{}: jail ranges start at {UID_RANGE} or above, apart from the ids a volume holds before it is shifted",
                    cfg.uid_base
                ),
            });
        }
        let seccomp = seccomp::filters()?;
        let filter_file = launch::filter_file(seccomp.program())?;
        // The node's state is root's: its folders can be passed through
        // (a jail with a user namespace reaches its own layers as its
        // unprivileged host uid) but not listed by anyone else.
        for dir in [
            cfg.state_dir.clone(),
            state::jails_dir(&cfg.state_dir),
            state::mount_dir(&cfg.state_dir),
        ] {
            fs::create_dir_all(&dir).map_err(JailError::io("create", &dir))?;
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o711))
                .map_err(JailError::io("chmod", &dir))?;
        }
        fs::create_dir_all(&cfg.image_dir).map_err(JailError::io("create", &cfg.image_dir))?;
        uids::ensure_dir(&cfg.state_dir)?;
        let uids_dir = uids::dir(&cfg.state_dir);
        fs::set_permissions(&uids_dir, fs::Permissions::from_mode(0o700))
            .map_err(JailError::io("chmod", &uids_dir))?;
        let init_program = launch::init_program(&cfg.state_dir)?;
        let cgroups = Cgroups::detect(&cfg.cgroup_root, &cfg.cgroup_parent);
        Ok(Self {
            cfg,
            cgroups,
            host,
            net,
            seccomp,
            init_program,
            filter_file,
            net_index: std::sync::Mutex::default(),
            firewall_written: std::sync::Mutex::default(),
        })
    }

    fn network(&self) -> Network<'_> {
        Network {
            host: self.net.as_ref(),
            node: NodeNet {
                bridge: &self.cfg.bridge,
                table: &self.cfg.firewall_table,
                gateway: self.cfg.gateway,
                open_ports: &self.cfg.open_ports,
                forwarding: self.cfg.forwarding,
                proc_root: &self.cfg.proc_root,
            },
        }
    }

    /// The network of every jail on the node with one. Each record is read
    /// again only when it was rewritten since (by this engine or another
    /// process), so asking on every creation costs a `stat` per jail, not
    /// a read and parse.
    pub fn networks(&self) -> Vec<(String, NetSpec)> {
        let dir = state::jails_dir(&self.cfg.state_dir);
        let Ok(entries) = fs::read_dir(&dir) else {
            return Vec::new();
        };
        let mut index = self
            .net_index
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut seen = std::collections::HashSet::new();
        let mut networks = Vec::new();
        for entry in entries.flatten() {
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            let record = entry.path().join("jail.json");
            let Ok(meta) = fs::metadata(&record) else {
                continue;
            };
            let key = (meta.ino(), meta.ctime(), meta.ctime_nsec(), meta.len());
            let network = match index.get(&name) {
                Some((k, network)) if *k == key => network.clone(),
                _ => {
                    let network = fs::read(&record)
                        .ok()
                        .and_then(|b| serde_json::from_slice::<JailRecord>(&b).ok())
                        .and_then(|r| r.spec.network);
                    index.insert(name.clone(), (key, network.clone()));
                    network
                }
            };
            if let Some(n) = network {
                networks.push((name.clone(), n));
            }
            seen.insert(name);
        }
        index.retain(|name, _| seen.contains(name));
        networks
    }

    /// Gives the jail a uid range no other jail on the node holds and no
    /// host account uses (see [`uids`]).
    fn claim_uid_range(&self, name: &JailName) -> Result<u32, JailError> {
        let host = uids::HostIds::read(&self.cfg.etc_dir)?;
        let pool = uids::Pool {
            base: self.cfg.uid_base,
            count: self.cfg.uid_ranges,
        };
        uids::claim(&uids::dir(&self.cfg.state_dir), pool, &host, name.as_str())
    }

    /// The uid ranges held on the node, by first host id, with their jails.
    pub fn uid_ranges(&self) -> Result<Vec<(u32, String)>, JailError> {
        uids::held(&uids::dir(&self.cfg.state_dir))
    }

    /// A free address of the node's pool for a new jail.
    pub fn allocate_address(&self) -> Result<Ipv4Addr, JailError> {
        let used: Vec<Ipv4Addr> = self.networks().iter().map(|(_, n)| n.address).collect();
        Ok(net::allocate(self.cfg.gateway, &used)?)
    }

    /// Makes sure the node's bridge and firewall exist (`stockade doctor`,
    /// the agent at start-up); creating a jail with a network does it too.
    pub fn ensure_network(&self) -> Result<(), JailError> {
        self.network().ensure_node()
    }

    /// The configuration it was made with.
    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    fn paths(&self, name: &str) -> JailPaths {
        JailPaths::new(&self.cfg.state_dir, name)
    }

    fn view(&self) -> HostView<'_> {
        HostView {
            proc_root: &self.cfg.proc_root,
            sys_root: &self.cfg.sys_root,
        }
    }

    fn record(&self, name: &JailName) -> Result<(JailPaths, JailRecord), JailError> {
        let paths = self.paths(name.as_str());
        let rec = state::load(&paths)?.ok_or_else(|| JailError::NotFound(name.to_string()))?;
        Ok((paths, rec))
    }

    /// The init of a record if it still runs (same pid *and* start time).
    fn live_init(&self, rec: &JailRecord) -> Option<InitProcess> {
        let init = rec.init?;
        (hostinfo::start_time(&self.cfg.proc_root, init.pid) == Some(init.start_time))
            .then_some(init)
    }

    // ---- images ----

    /// Unpacks a root filesystem tarball as image `name`.
    pub fn import_image(&self, name: &str, tarball: &Path) -> Result<(), JailError> {
        image::import(&self.cfg.image_dir, name, tarball)
    }

    /// The images present on the node.
    pub fn images(&self) -> Result<Vec<String>, JailError> {
        image::list(&self.cfg.image_dir)
    }

    /// Builds the `busybox` image from the host's busybox-static if missing.
    pub fn ensure_busybox(&self) -> Result<(), JailError> {
        image::ensure_busybox(&self.cfg.image_dir, &self.cfg.busybox)
    }

    // ---- lifecycle ----

    /// Creates the jail's state record, volume, cgroup and firewall entries
    /// as far as missing, and applies its limits. Idempotent. A new jail
    /// whose creation fails is removed again.
    pub fn create(&self, spec: &JailSpec) -> Result<(), JailError> {
        self.prepare(spec, false, true).map(drop)
    }

    /// Makes what the jail needs on the node, as far as missing. The cgroup
    /// is made here only with `cgroup`: a launch makes it while the jail's
    /// init sets up its root, in parallel.
    fn prepare(
        &self,
        spec: &JailSpec,
        transient: bool,
        cgroup: bool,
    ) -> Result<(JailPaths, JailRecord), JailError> {
        let new = !self.paths(spec.name.as_str()).record.exists();
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

    fn prepare_parts(
        &self,
        spec: &JailSpec,
        transient: bool,
    ) -> Result<(JailPaths, JailRecord), JailError> {
        check_rates(&spec.limits)?;
        if let Some(n) = &spec.network {
            // Before anything exists: a refused address leaves nothing.
            self.network()
                .validate(spec.name.as_str(), n, &self.networks())?;
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
    fn user_ids(
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
    fn volume_device(rec: &JailRecord) -> Result<Option<(u64, u64)>, JailError> {
        rec.loop_device
            .as_deref()
            .filter(|_| rec.upper == Upper::Volume)
            .map(device_numbers)
            .transpose()
    }

    /// Creates the jail's cgroup if missing and writes its limits.
    fn setup_cgroup(&self, rec: &JailRecord) -> Result<(), JailError> {
        let name = rec.spec.name.as_str();
        self.cgroups.ensure(name)?;
        self.cgroups
            .apply(name, &rec.spec.limits, Self::volume_device(rec)?)
            .map(drop)
    }

    fn command_of(&self, spec: &JailSpec) -> Result<Vec<String>, JailError> {
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

    fn launch(
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
        let command = ExecPlan::new(
            argv,
            &[
                ("PATH", JAIL_PATH),
                ("HOME", "/root"),
                ("HOSTNAME", spec.hostname.as_str()),
                ("TERM", &term),
            ],
        )?;
        let log_limit = match &stdio {
            Stdio::Detached { log_limit, .. } => Some(*log_limit),
            Stdio::Inherit { .. } => None,
        };
        let init = command.for_init(log_limit, stdio.tty());
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

    fn netns(&self, pid: i32) -> PathBuf {
        self.cfg.proc_root.join(pid.to_string()).join("ns/net")
    }

    /// Starts the jail's init and command if not running. The jail keeps
    /// running when the calling process exits.
    pub fn start(&self, name: &JailName) -> Result<(), JailError> {
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
    fn kill_group(&self, name: &str) {
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
        self.stop(name, grace)?;
        self.start(name)
    }

    /// Removes everything of the jail: processes, volume mount, loop
    /// device, cgroup, state folder. Works from the name alone, with or
    /// without a record. Idempotent.
    pub fn destroy(&self, name: &JailName) -> Result<(), JailError> {
        let paths = self.paths(name.as_str());
        let network = state::load(&paths)
            .ok()
            .flatten()
            .and_then(|r| r.spec.network);
        self.stop(name, Duration::ZERO)?;
        if let Some(n) = &network {
            self.network().unpublish(name.as_str(), n)?;
        }
        volume::teardown(self.host.as_ref(), &self.view(), &paths)?;
        self.cgroups.remove(name.as_str())?;
        // Whatever else is still mounted under the jail's folder (the
        // id-mapped image of a jail killed while it started or ran, a
        // crashed agent's half-done work) is unmounted first: files are
        // never deleted through a mount.
        teardown::remove_jail_dir(self.host.as_ref(), &self.cfg.proc_root, &paths.dir)?;
        // Only now that no file of the jail is left is its range free.
        uids::release(&uids::dir(&self.cfg.state_dir), name.as_str())
    }

    /// Puts the node's network back as it should be and says what had to
    /// be repaired: the bridge and the whole firewall table (rules,
    /// published ports, NAT; rewritten in one transaction). Each jail's own
    /// link is [`Engine::repair_jail`]'s.
    pub fn repair_network(&self) -> Result<Vec<String>, JailError> {
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
            None => {
                if let Some(init) = rec.init {
                    reap(init.pid);
                }
                JailStatus::Stopped
            }
        }))
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

    fn reader_config(&self) -> ReaderConfig {
        ReaderConfig {
            state_dir: self.cfg.state_dir.clone(),
            proc_root: self.cfg.proc_root.clone(),
            sys_root: self.cfg.sys_root.clone(),
            cgroups: self.cgroups.clone(),
        }
    }

    /// Runs `argv` inside the running jail (its namespaces, cgroup, root
    /// and capability limits) with the caller's stdio; returns its exit
    /// code, or 128 + the signal that ended it.
    pub fn exec(&self, name: &JailName, argv: &[String]) -> Result<i32, JailError> {
        let (_, rec) = self.record(name)?;
        let init = self
            .live_init(&rec)
            .ok_or_else(|| JailError::NotRunning(name.to_string()))?;
        let ns_dir = self.cfg.proc_root.join(init.pid.to_string()).join("ns");
        let mut namespaces = Vec::new();
        let user = rec.uid_base.map(|_| ("user", CloneFlags::CLONE_NEWUSER));
        for (file, flag) in user.into_iter().chain([
            ("cgroup", CloneFlags::CLONE_NEWCGROUP),
            ("ipc", CloneFlags::CLONE_NEWIPC),
            ("uts", CloneFlags::CLONE_NEWUTS),
            ("net", CloneFlags::CLONE_NEWNET),
            ("pid", CloneFlags::CLONE_NEWPID),
            ("mnt", CloneFlags::CLONE_NEWNS),
        ]) {
            let p = ns_dir.join(file);
            let f = File::open(&p).map_err(JailError::io("open", &p))?;
            namespaces.push((OwnedFd::from(f), flag, p));
        }
        // The namespace files are open: if the init was replaced meanwhile
        // by another process with the same pid, refuse.
        if self.live_init(&rec).is_none() {
            return Err(JailError::NotRunning(name.to_string()));
        }
        let term = std::env::var("TERM").unwrap_or_else(|_| "xterm".into());
        let command = ExecPlan::new(
            argv,
            &[
                ("PATH", JAIL_PATH),
                ("HOME", "/root"),
                ("HOSTNAME", rec.spec.hostname.as_str()),
                ("TERM", &term),
            ],
        )?;
        let join_files: Vec<CString> = self
            .cgroups
            .join_files(name.as_str())
            .iter()
            .map(|p| c_path(p))
            .collect();
        // Like the jail's own command: the OOM killer prefers it to the init.
        let init_adj = fs::read_to_string(
            self.cfg
                .proc_root
                .join(init.pid.to_string())
                .join("oom_score_adj"),
        );
        let oom_score_adj: &'static [u8] = if init_adj.is_ok_and(|a| a.trim() == "-1000") {
            b"0"
        } else {
            b"500"
        };
        let mut terminal = Terminal::for_caller()?;
        let code = launch::join(&launch::Join {
            namespaces,
            cgroup_files: &join_files,
            command: &command,
            seccomp: self.seccomp.program(),
            oom_score_adj,
            tty: terminal.as_mut().and_then(Terminal::slave),
        });
        if let Some(t) = terminal {
            t.finish();
        }
        code
    }

    /// Runs a transient app jail: creates it, runs `argv` (or the spec's
    /// command) with the caller's stdin, stdout and stderr, removes every
    /// trace of it, and returns the command's exit code (128 + signal if
    /// killed). Without a disk quota its writable layer is a tmpfs.
    pub fn run(&self, spec: &JailSpec, argv: &[String]) -> Result<i32, JailError> {
        let paths = self.paths(spec.name.as_str());
        if paths.record.exists() {
            return Err(JailError::AlreadyExists(spec.name.to_string()));
        }
        let argv = if argv.is_empty() {
            self.command_of(spec)?
        } else {
            argv.to_vec()
        };
        let mut simple = false;
        let mut terminal = Terminal::for_caller()?;
        let tty = terminal.as_mut().and_then(Terminal::slave);
        let result = self.prepare(spec, true, false).and_then(|(paths, rec)| {
            simple = rec.upper != Upper::Volume && rec.spec.network.is_none();
            self.launch(&paths, &rec, &argv, Stdio::Inherit { tty })
        });
        if let Some(t) = terminal {
            t.finish();
        }
        let cleanup = match result {
            // The init has been reaped, and with it went every process of
            // its PID namespace and every mount of its mount namespace: of a
            // jail without volume or network, only its cgroup and folder are
            // left on the node.
            Ok(Outcome::Exited { .. }) if simple => self.remove_leftovers(&spec.name, &paths),
            _ => self.destroy(&spec.name),
        };
        let code = match result? {
            Outcome::Exited { code } => code,
            Outcome::Started { .. } => 0,
        };
        cleanup?;
        Ok(code)
    }

    /// Removes the cgroup and folder of a jail that has nothing else left.
    /// A jail with a user namespace still has its id-mapped image mounted
    /// in the folder: it is unmounted before anything is removed.
    fn remove_leftovers(&self, name: &JailName, paths: &JailPaths) -> Result<(), JailError> {
        self.cgroups.remove(name.as_str())?;
        teardown::remove_jail_dir(self.host.as_ref(), &self.cfg.proc_root, &paths.dir)?;
        uids::release(&uids::dir(&self.cfg.state_dir), name.as_str())
    }

    /// Removes a port of the node's bridge that [`Engine::discover`] found
    /// belonging to no jail. Refuses anything else.
    pub fn remove_stray_link(&self, link: &str) -> Result<(), JailError> {
        if !net::bridge_ports(&self.cfg.sys_root, &self.cfg.bridge)
            .iter()
            .any(|p| p == link)
            || !link.starts_with("sk")
        {
            return Err(JailError::Invalid {
                what: "link",
                reason: format!("{link} is not a jail port of bridge {}", self.cfg.bridge),
            });
        }
        self.net.del_link(link)
    }

    /// Every jail-related object on the node, grouped by jail name.
    pub fn discover(&self) -> Result<Discovered, JailError> {
        let jails_dir = state::jails_dir(&self.cfg.state_dir);
        let state_dirs = discover::state_dirs(&jails_dir);
        let live_inits = state_dirs
            .iter()
            .filter_map(|(name, _, rec)| Some((name.clone(), self.live_init(rec.as_ref()?)?.pid)))
            .collect();
        let cgroups = self.cgroups.list();
        let mut names: Vec<&String> = cgroups.iter().map(|(n, _)| n).collect();
        names.sort();
        names.dedup();
        let cgroup_pids = names
            .into_iter()
            .map(|n| (n.clone(), self.cgroups.pids(n)))
            .collect();
        // The kernel names mount points and loop backing files by their
        // real path: a state folder reached through a symlink must match.
        let host_jails_dir = fs::canonicalize(&jails_dir).unwrap_or(jails_dir);
        Ok(discover::group(
            &host_jails_dir,
            Observed {
                state_dirs,
                cgroups,
                cgroup_pids,
                mounts: hostinfo::mounts(&self.cfg.proc_root),
                loops: hostinfo::loop_devices(&self.cfg.sys_root),
                live_inits,
                bridge_ports: net::bridge_ports(&self.cfg.sys_root, &self.cfg.bridge),
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::fake::RecordingHost;

    fn engine(dir: &Path, ranges: u32) -> Engine {
        let mut cfg = EngineConfig::new(dir.join("state"), dir.join("images"));
        cfg.cgroup_root = dir.join("cgroup");
        cfg.uid_ranges = ranges;
        cfg.etc_dir = dir.join("etc");
        fs::create_dir_all(dir.join("images/busybox")).unwrap();
        fs::create_dir_all(dir.join("etc")).unwrap();
        Engine::with_host(cfg, Box::<RecordingHost>::default()).unwrap()
    }

    fn spec(name: &str, user_namespace: bool) -> JailSpec {
        JailSpec {
            name: JailName::parse(name).unwrap(),
            hostname: JailName::parse(name).unwrap(),
            image: "busybox".into(),
            kind: JailKind::System,
            command: vec![],
            limits: Limits::default(),
            network: None,
            user_namespace,
        }
    }

    fn base_of(e: &Engine, name: &str) -> Option<u32> {
        state::load(&e.paths(name)).unwrap().unwrap().uid_base
    }

    #[test]
    fn ranges_are_disjoint_kept_by_a_new_engine_and_freed_by_destroy() {
        let dir = tempfile::tempdir().unwrap();
        let e = engine(dir.path(), 3);
        e.prepare(&spec("a", true), false, false).unwrap();
        e.prepare(&spec("b", true), false, false).unwrap();
        e.prepare(&spec("plain", false), false, false).unwrap();
        let (a, b) = (base_of(&e, "a").unwrap(), base_of(&e, "b").unwrap());
        assert_ne!(a, b);
        assert_eq!(base_of(&e, "plain"), None);
        // Another engine of the node (the agent after a restart) sees them.
        let e2 = engine(dir.path(), 3);
        e2.prepare(&spec("c", true), false, false).unwrap();
        let c = base_of(&e2, "c").unwrap();
        assert!(c != a && c != b, "{a} {b} {c}");
        let err = e2.prepare(&spec("d", true), false, false).unwrap_err();
        assert!(
            err.to_string().contains("no free uid range: 3 of 3 in use"),
            "{err}"
        );
        assert!(!e2.paths("d").dir.exists(), "a refused jail leaves nothing");
        // Creating again keeps the range.
        e2.prepare(&spec("a", true), false, false).unwrap();
        assert_eq!(base_of(&e2, "a"), Some(a));
        e2.destroy(&JailName::parse("a").unwrap()).unwrap();
        e2.prepare(&spec("d", true), false, false).unwrap();
        assert_eq!(base_of(&e2, "d"), Some(a));
        let held: Vec<String> = e2
            .uid_ranges()
            .unwrap()
            .into_iter()
            .map(|(_, j)| j)
            .collect();
        let mut held = held;
        held.sort();
        assert_eq!(held, ["b", "c", "d"]);
    }

    #[test]
    fn ranges_of_host_accounts_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let e = engine(dir.path(), 2);
        // The first range overlaps a host account, the second a subordinate range.
        fs::write(
            dir.path().join("etc/passwd"),
            "svc:x:1000005:1000005::/:/bin/false\n",
        )
        .unwrap();
        fs::write(dir.path().join("etc/subgid"), "alice:1100000:65536\n").unwrap();
        let err = e
            .prepare(&spec("a", true), false, false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no free uid range: 0 of 2 in use"), "{err}");
        assert!(err.contains("2 more overlap"), "{err}");
        fs::write(dir.path().join("etc/subgid"), "").unwrap();
        e.prepare(&spec("a", true), false, false).unwrap();
        assert_eq!(base_of(&e, "a"), Some(1_000_000 + UID_RANGE));
    }

    #[test]
    fn records_from_before_range_files_keep_their_range() {
        let dir = tempfile::tempdir().unwrap();
        let e = engine(dir.path(), 2);
        e.prepare(&spec("old", true), false, false).unwrap();
        let old = base_of(&e, "old").unwrap();
        fs::remove_dir_all(uids::dir(&e.cfg.state_dir)).unwrap();
        let e = engine(dir.path(), 2);
        e.prepare(&spec("new", true), false, false).unwrap();
        assert_ne!(base_of(&e, "new"), Some(old));
        assert_eq!(e.uid_ranges().unwrap().len(), 2);
    }

    #[test]
    fn a_stopped_jail_switches_its_user_namespace_both_ways() {
        let dir = tempfile::tempdir().unwrap();
        let e = engine(dir.path(), 1);
        e.prepare(&spec("a", false), false, false).unwrap();
        e.prepare(&spec("a", true), false, false).unwrap();
        assert_eq!(base_of(&e, "a"), Some(1_000_000));
        assert!(
            state::load(&e.paths("a"))
                .unwrap()
                .unwrap()
                .id_shift
                .is_none()
        );
        e.prepare(&spec("a", false), false, false).unwrap();
        assert_eq!(base_of(&e, "a"), None);
        assert!(
            e.uid_ranges().unwrap().is_empty(),
            "turned off, the range is free"
        );
    }

    #[test]
    fn a_shift_recorded_half_way_is_finished() {
        let dir = tempfile::tempdir().unwrap();
        let e = engine(dir.path(), 1);
        e.prepare(&spec("a", true), false, false).unwrap();
        let paths = e.paths("a");
        let mut rec = state::load(&paths).unwrap().unwrap();
        rec.id_shift = Some(IdShift {
            from: 1_000_000,
            to: 0,
        });
        state::save(&paths, &rec).unwrap();
        // Whatever the spec says now, the recorded shift is done first.
        e.prepare(&spec("a", true), false, false).unwrap();
        let rec = state::load(&paths).unwrap().unwrap();
        assert_eq!((rec.uid_base, rec.id_shift), (None, None));
    }
}
