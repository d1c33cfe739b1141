//! The engine: jail lifecycle on one node, built from the parts in the
//! other modules. Every step is create-if-missing or delete-if-present.

mod inside;
mod lifecycle;
mod lock;
mod snapshots;
#[cfg(test)]
mod tests;
mod upkeep;

pub use snapshots::Snapshot;

use std::collections::HashMap;
use std::ffi::CString;
use std::fs::{self};
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::Pid;
use stockade_domain::{JailName, Limits};

use crate::cgroup::Cgroups;
use crate::error::JailError;
use crate::host::{Host, LinuxHost};
use crate::launch::{self};
use crate::net::{self, LinuxNet, NetHost, NetSpec, Network, NodeNet};
use crate::seccomp::{self, Filters};
use crate::state::{self, InitProcess, JailPaths, JailRecord};
use crate::volume::HostView;
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
    /// Held by a repair of the node's network (which reads every jail's
    /// record and rewrites the firewall table) and by a jail's change of
    /// its own elements, made after its record says what they are: a
    /// repair that read a record just before it changed cannot put back
    /// an element the change took away.
    pub(super) net_changes: std::sync::Mutex<()>,
    /// Held (shared) while a jail is prepared from an image until its
    /// record names the image, and (alone) while an image unused by any
    /// record is removed: a removal never takes a jail's image away.
    pub(super) image_use: std::sync::RwLock<()>,
    /// How volumes are duplicated for snapshots, as the state folder allows.
    storage: crate::storage::Driver,
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
/// subreaper); otherwise its parent does. Its wait status when reaped here.
fn reap(pid: i32) -> Option<nix::sys::wait::WaitStatus> {
    waitpid(
        Pid::from_raw(pid),
        Some(WaitPidFlag::WNOHANG | WaitPidFlag::__WALL),
    )
    .ok()
    .filter(|s| !matches!(s, nix::sys::wait::WaitStatus::StillAlive))
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
        // Images hold files owned by the jails' ids, set-id bits kept: the
        // host's users must not reach them (jails see them through mounts
        // the engine makes as root).
        fs::set_permissions(&cfg.image_dir, fs::Permissions::from_mode(0o700))
            .map_err(JailError::io("chmod", &cfg.image_dir))?;
        uids::ensure_dir(&cfg.state_dir)?;
        let uids_dir = uids::dir(&cfg.state_dir);
        fs::set_permissions(&uids_dir, fs::Permissions::from_mode(0o700))
            .map_err(JailError::io("chmod", &uids_dir))?;
        let init_program = launch::init_program(&cfg.state_dir)?;
        let cgroups = Cgroups::detect(&cfg.cgroup_root, &cfg.cgroup_parent);
        let storage = crate::storage::Driver::detect(&state::jails_dir(&cfg.state_dir));
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
            net_changes: std::sync::Mutex::default(),
            image_use: std::sync::RwLock::default(),
            storage,
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

    /// Takes the jail's lock (see [`lock`]): held by whoever changes it.
    fn lock_jail(&self, name: &str) -> Result<lock::JailLock, JailError> {
        lock::lock(&lock::dir(&self.cfg.state_dir), name)
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

    /// Unpacks an OCI image or a root filesystem tarball as image `name`.
    pub fn import_image(&self, name: &str, tarball: &Path) -> Result<(), JailError> {
        image::import(&self.cfg.image_dir, name, tarball)
    }

    /// Unpacks an OCI image layout or archive as image `name` within
    /// `bounds`, noting the registry reference and digest it was pulled
    /// as (`origin`); returns its configuration (the jails' defaults).
    pub fn import_oci_image(
        &self,
        name: &str,
        source: &Path,
        bounds: &stockade_image::Bounds,
        origin: Option<(&str, &str)>,
    ) -> Result<stockade_image::ImageConfig, JailError> {
        image::import_oci(&self.cfg.image_dir, name, source, bounds, origin)
    }

    /// An OCI image's configuration; `None` for other images.
    pub fn image_config(
        &self,
        name: &str,
    ) -> Result<Option<stockade_image::ImageConfig>, JailError> {
        image::config(&self.cfg.image_dir, name)
    }

    /// Where an image being fetched may be staged (on the images' own
    /// filesystem, removed by the caller).
    pub fn image_staging(&self, name: &str) -> Result<PathBuf, JailError> {
        let dir = self.cfg.image_dir.join(format!(".pull-{name}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(JailError::io("create", &dir))?;
        Ok(dir)
    }

    /// The images the jails of this node are made from.
    pub fn images_in_use(&self) -> Result<std::collections::BTreeSet<String>, JailError> {
        let dir = state::jails_dir(&self.cfg.state_dir);
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Default::default()),
            Err(e) => return Err(JailError::io("list", &dir)(e)),
        };
        let mut used = std::collections::BTreeSet::new();
        for entry in rd.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(rec) = state::load(&self.paths(&name))? {
                used.insert(rec.spec.image);
            }
        }
        Ok(used)
    }

    /// Removes image `name`, refused while a jail of this node uses it.
    pub fn remove_image(&self, name: &str) -> Result<(), JailError> {
        let _alone = self
            .image_use
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if self.images_in_use()?.contains(name) {
            return Err(JailError::Invalid {
                what: "image",
                reason: format!("{name} is used by a jail of this node"),
            });
        }
        image::remove(&self.cfg.image_dir, name)
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
}
