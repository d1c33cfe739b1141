//! Reading the usage of every running jail of a node, sweep after sweep, at
//! a few system calls a jail.
//!
//! Read from scratch, a jail costs its record (a JSON file), a liveness
//! check (`/proc/<pid>/stat`), ten cgroup files opened, read and closed, a
//! statfs and four sysfs files: some forty-five system calls. Between two
//! sweeps little of that changes, so [`UsageReader`] keeps, for as long as a
//! jail's init lives:
//!
//! - the facts of its record it needs (its init, where its writable layer
//!   lives, whether it has a network);
//! - a pidfd of its init: one `poll` over all of them tells which inits
//!   ended since the last sweep;
//! - every counter file open: cgroupfs produces a file's text afresh on each
//!   read at offset 0, so one `pread` reads a counter;
//! - the index of its host-side link: one `RTM_GETSTATS` dump per sweep
//!   gives the counters of every link at once.
//!
//! Disk usage is still a statfs by path (`/proc/<pid>/root`): an open
//! descriptor of the jail's root would keep its filesystems mounted after
//! the jail stops, and stop its volume from being detached.
//!
//! A jail's entry is dropped, its descriptors closed, when its init ends,
//! when a read fails (its cgroup was removed: `ENODEV`) or when it is no
//! longer swept; the next sweep starts again from its record.
//!
//! The kept files (eleven a jail on cgroup v1) live in a descriptor table of
//! their own, that of the reader's thread: a jail start-up forks the
//! engine's process, and copying, then closing, 11,000 more descriptors
//! costs each fork about 0.6 ms of CPU; nor do they count against the
//! descriptors the rest of the process may open.

use std::collections::HashMap;
use std::fs::File;
use std::io::ErrorKind;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{OnceLock, mpsc};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sched::CloneFlags;
use nix::sys::resource::{Resource, getrlimit, setrlimit};
use stockade_domain::JailName;

use crate::cgroup::{CgroupUsage, Cgroups, parse_usage, usage_files};
use crate::engine::pidfd_open;
use crate::error::JailError;
use crate::hostinfo;
use crate::net::{self, NetCounters};
use crate::netlink::{self, LinkStats, Netlink};
use crate::spec::Usage;
use crate::state::{self, InitProcess, JailPaths, Upper};
use crate::volume::{self, HostView};

mod counters;

pub use counters::raise_open_file_limit;
pub(crate) use counters::restore_open_file_limit;
use counters::{dump_links, link_counters, open_file_limit, read_counters, thread_cpu_time, usage};

/// Descriptors of its table the reader leaves free (stdio, its netlink
/// socket, the files of jails read without keeping them): it never keeps
/// more than the open-file limit minus these.
const FD_RESERVE: u64 = 64;

/// The usage of the jails of one sweep and what reading it cost.
#[derive(Debug)]
pub struct Sweep {
    /// Each jail's usage, in the order the names were given, or why it
    /// could not be read.
    pub usage: Vec<Result<Usage, JailError>>,
    /// CPU time (user and system) the calling thread spent on the sweep.
    pub cpu: Duration,
    /// Wall-clock time of the sweep.
    pub wall: Duration,
    /// Descriptors the reader keeps open until the next sweep.
    pub open_files: u64,
}

/// The live init of a jail.
#[derive(Debug)]
struct Init {
    /// Names this process and no later one with the same pid.
    pidfd: OwnedFd,
    /// `<proc>/<pid>/root`: the jail's root as the host sees it.
    root: PathBuf,
}

/// A jail's host-side link, for jails with a network.
#[derive(Debug)]
struct Link {
    name: String,
    /// Its index, once looked up; a restarted jail has a new link.
    index: Option<u32>,
}

/// What the reader keeps of one jail.
#[derive(Debug)]
struct Entry {
    /// One per [`usage_files`] entry; `None`: the kernel does not offer it.
    counters: Vec<Option<File>>,
    init: Option<Init>,
    /// The host mount point of the jail's volume, if it has one.
    volume: Option<PathBuf>,
    link: Option<Link>,
    /// Kept for the next sweep (else closed after this one).
    keep: bool,
    /// The sweep that last read it.
    seen: u64,
}

impl Entry {
    fn fds(&self) -> u64 {
        let n = self.counters.iter().flatten().count() + usize::from(self.init.is_some());
        u64::try_from(n).unwrap_or(u64::MAX)
    }
}

/// Where a reader finds the node's jails.
#[derive(Debug, Clone)]
pub(crate) struct ReaderConfig {
    pub state_dir: PathBuf,
    pub proc_root: PathBuf,
    pub sys_root: PathBuf,
    pub cgroups: Cgroups,
}

/// Reads the usage of a node's jails on the calling thread, keeping their
/// counter files open between sweeps.
#[derive(Debug)]
pub(crate) struct Reader {
    state_dir: PathBuf,
    proc_root: PathBuf,
    sys_root: PathBuf,
    cgroups: Cgroups,
    jails: HashMap<String, Entry>,
    /// Opened on the first sweep with a networked jail.
    netlink: Option<Netlink>,
    links: HashMap<u32, LinkStats>,
    /// Whether this sweep has dumped the link counters, and with success.
    links_read: Option<bool>,
    /// Reused for every counter file.
    buf: Vec<u8>,
    sweeps: u64,
    /// Overrides the open-file limit (tests).
    fd_limit: Option<u64>,
}

impl Reader {
    pub fn new(cfg: ReaderConfig) -> Self {
        Self {
            state_dir: cfg.state_dir,
            proc_root: cfg.proc_root,
            sys_root: cfg.sys_root,
            cgroups: cfg.cgroups,
            jails: HashMap::new(),
            netlink: None,
            links: HashMap::new(),
            links_read: None,
            buf: vec![0; 16 << 10],
            sweeps: 0,
            fd_limit: None,
        }
    }

    /// Descriptors held between sweeps.
    pub fn open_files(&self) -> u64 {
        self.jails.values().map(Entry::fds).sum::<u64>() + u64::from(self.netlink.is_some())
    }

    /// Reads the usage of `jails`. Jails read by the previous sweep but not
    /// by this one are forgotten (their files closed).
    pub fn sweep<'a>(&mut self, jails: impl IntoIterator<Item = &'a JailName>) -> Sweep {
        let cpu = thread_cpu_time();
        let wall = Instant::now();
        let names: Vec<&JailName> = jails.into_iter().collect();
        self.sweeps += 1;
        self.note_ended_inits();
        let budget = self
            .fd_limit
            .unwrap_or_else(open_file_limit)
            .saturating_sub(FD_RESERVE);
        let mut kept = self.open_files();
        self.links_read = None;
        let usage = names
            .iter()
            .map(|name| {
                let usage = self
                    .prepare(name, budget, &mut kept)
                    .and_then(|()| self.read(name, budget, &mut kept));
                // Files not kept are closed at once: the budget bounds what
                // is open at any moment.
                if self.jails.get(name.as_str()).is_some_and(|e| !e.keep) {
                    self.jails.remove(name.as_str());
                }
                usage
            })
            .collect();
        let sweep = self.sweeps;
        self.jails.retain(|_, e| e.seen == sweep);
        Sweep {
            usage,
            cpu: thread_cpu_time().saturating_sub(cpu),
            wall: wall.elapsed(),
            open_files: self.open_files(),
        }
    }

    /// Drops the entries whose init has ended, with one `poll` over the
    /// pidfds of all (a pidfd turns readable when its process exits).
    fn note_ended_inits(&mut self) {
        let mut names = Vec::new();
        let mut fds = Vec::new();
        for (name, e) in &self.jails {
            if let Some(init) = &e.init {
                names.push(name.clone());
                fds.push(libc::pollfd {
                    fd: init.pidfd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                });
            }
        }
        let n = libc::nfds_t::try_from(fds.len()).unwrap_or(0);
        // SAFETY: polls `n` live pollfds without waiting.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), n, 0) };
        if r == 0 {
            return;
        }
        for (name, fd) in names.iter().zip(&fds) {
            // On a failed poll every init is checked afresh.
            if r < 0 || fd.revents != 0 {
                self.jails.remove(name);
            }
        }
    }

    /// Makes sure the jail has an entry, from its record if need be.
    fn prepare(&mut self, name: &JailName, budget: u64, kept: &mut u64) -> Result<(), JailError> {
        let sweep = self.sweeps;
        if let Some(e) = self.jails.get_mut(name.as_str()) {
            e.seen = sweep;
            return Ok(());
        }
        let mut e = self.open(name)?;
        e.seen = sweep;
        // A jail without a live init is looked at afresh each sweep, as is
        // one whose group is missing (its files may appear) or one beyond
        // the descriptor budget.
        e.keep =
            e.init.is_some() && e.counters.iter().any(Option::is_some) && *kept + e.fds() <= budget;
        if e.keep {
            *kept += e.fds();
        }
        self.jails.insert(name.as_str().to_owned(), e);
        Ok(())
    }

    /// A new entry for the jail, from its record.
    fn open(&self, name: &JailName) -> Result<Entry, JailError> {
        let paths = JailPaths::new(&self.state_dir, name.as_str());
        let rec = state::load(&paths)?.ok_or_else(|| JailError::NotFound(name.to_string()))?;
        let init = rec.init.and_then(|i| self.open_init(i));
        let mut counters = Vec::new();
        for (controller, file) in usage_files(self.cgroups.version()) {
            let path = self.cgroups.dir(controller, name.as_str()).join(file);
            match File::open(&path) {
                Ok(f) => counters.push(Some(f)),
                // Not offered by this kernel, or the group is missing:
                // reads as zero, as the kernel would count nothing.
                Err(e) if e.kind() == ErrorKind::NotFound => counters.push(None),
                Err(e) => return Err(JailError::io("open", path)(e)),
            }
        }
        Ok(Entry {
            counters,
            init,
            volume: (rec.upper == Upper::Volume).then_some(paths.volume),
            link: rec.spec.network.map(|_| Link {
                name: net::host_link(name.as_str()),
                index: None,
            }),
            keep: false,
            seen: 0,
        })
    }

    /// The init if it still runs: the pidfd is opened first, then the start
    /// time checked, so the pidfd names the jail's init and not a later
    /// process that got its pid.
    fn open_init(&self, init: InitProcess) -> Option<Init> {
        let pidfd = pidfd_open(init.pid).ok()?;
        (hostinfo::start_time(&self.proc_root, init.pid) == Some(init.start_time)).then(|| Init {
            pidfd,
            root: self.proc_root.join(init.pid.to_string()).join("root"),
        })
    }

    /// Reads one prepared jail. A kept entry whose files fail (its group
    /// was removed, perhaps made again) is dropped and opened once more.
    fn read(&mut self, name: &JailName, budget: u64, kept: &mut u64) -> Result<Usage, JailError> {
        let Some(e) = self.jails.get_mut(name.as_str()) else {
            return Err(JailError::NotFound(name.to_string()));
        };
        let counters = match read_counters(&self.cgroups, &mut self.buf, name, e) {
            Ok(c) => c,
            Err(_) if e.keep => {
                *kept = kept.saturating_sub(e.fds());
                self.jails.remove(name.as_str());
                self.prepare(name, budget, kept)?;
                let Some(e) = self.jails.get_mut(name.as_str()) else {
                    return Err(JailError::NotFound(name.to_string()));
                };
                match read_counters(&self.cgroups, &mut self.buf, name, e) {
                    Ok(c) => c,
                    Err(err) => {
                        if e.keep {
                            *kept = kept.saturating_sub(e.fds());
                            e.keep = false;
                        }
                        return Err(err);
                    }
                }
            }
            Err(err) => return Err(err),
        };
        let Some(e) = self.jails.get_mut(name.as_str()) else {
            return Err(JailError::NotFound(name.to_string()));
        };
        let disk = e
            .init
            .as_ref()
            .and_then(|i| volume::used_bytes(&i.root))
            .or_else(|| {
                // No init (or it just ended): the volume, if mounted; an
                // unmounted mount point would report the host's filesystem.
                let v = e.volume.as_ref()?;
                let view = HostView {
                    proc_root: &self.proc_root,
                    sys_root: &self.sys_root,
                };
                view.mounted_device(v)?;
                volume::used_bytes(v)
            });
        let net = match &mut e.link {
            None => NetCounters::default(),
            Some(link) => {
                let read = *self
                    .links_read
                    .get_or_insert_with(|| dump_links(&mut self.netlink, &mut self.links));
                if read {
                    link_counters(link, &self.links)
                } else {
                    net::counters(&self.sys_root, &link.name)
                }
            }
        };
        Ok(usage(&counters, disk.unwrap_or(0), &net))
    }
}

/// Reads the usage of a node's jails on a thread of its own, whose
/// descriptor table holds the jails' counter files between sweeps. Made by
/// [`crate::Engine::usage_reader`]; the thread ends when it is dropped.
#[derive(Debug)]
pub struct UsageReader {
    cfg: ReaderConfig,
    thread: Option<ReaderThread>,
}

#[derive(Debug)]
struct ReaderThread {
    requests: mpsc::Sender<Vec<JailName>>,
    replies: mpsc::Receiver<Sweep>,
    handle: std::thread::JoinHandle<()>,
}

impl UsageReader {
    pub(crate) fn new(cfg: ReaderConfig) -> Self {
        Self { cfg, thread: None }
    }

    /// Reads the usage of `jails`. Jails read by the previous sweep but not
    /// by this one are forgotten (their files closed).
    pub fn sweep<'a>(&mut self, jails: impl IntoIterator<Item = &'a JailName>) -> Sweep {
        let names: Vec<JailName> = jails.into_iter().cloned().collect();
        // A thread that died (a panic) is replaced, once per sweep.
        for _ in 0..2 {
            let thread = match self.thread.take() {
                Some(t) => t,
                None => match spawn_reader(Reader::new(self.cfg.clone())) {
                    Ok(t) => t,
                    Err(e) => {
                        let errno = Errno::from_raw(e.raw_os_error().unwrap_or(libc::EAGAIN));
                        return failed(&names, "spawn", errno);
                    }
                },
            };
            if thread.requests.send(names.clone()).is_ok()
                && let Ok(sweep) = thread.replies.recv()
            {
                self.thread = Some(thread);
                return sweep;
            }
            let _ = thread.handle.join();
        }
        failed(&names, "sweep", Errno::EIO)
    }
}

impl Drop for UsageReader {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            drop(t.requests);
            let _ = t.handle.join();
        }
    }
}

/// A sweep whose thread could not run: every jail fails with `errno`.
fn failed(names: &[JailName], op: &'static str, errno: Errno) -> Sweep {
    Sweep {
        usage: names
            .iter()
            .map(|_| {
                Err(JailError::Sys {
                    op,
                    path: "usage reader thread".into(),
                    source: errno,
                })
            })
            .collect(),
        cpu: Duration::ZERO,
        wall: Duration::ZERO,
        open_files: 0,
    }
}

fn spawn_reader(mut reader: Reader) -> std::io::Result<ReaderThread> {
    let (requests, requests_rx) = mpsc::channel::<Vec<JailName>>();
    let (replies_tx, replies) = mpsc::channel();
    let handle = std::thread::Builder::new()
        .name("usage-reader".into())
        .spawn(move || {
            if let Err(e) = own_descriptor_table() {
                tracing::warn!(error = %e, "the usage reader could not make a descriptor table of its own");
            }
            for names in requests_rx {
                if replies_tx.send(reader.sweep(&names)).is_err() {
                    break;
                }
            }
            // The reader, and with it every kept file, is dropped here, on
            // the thread whose table holds them.
        })?;
    Ok(ReaderThread {
        requests,
        replies,
        handle,
    })
}

/// Gives the calling thread a descriptor table of its own holding only
/// stdio: the copy `unshare` makes of the shared one must not keep the
/// process's other files (a launch's pipe, a database socket) open.
fn own_descriptor_table() -> Result<(), Errno> {
    nix::sched::unshare(CloneFlags::CLONE_FILES)?;
    // SAFETY: close_range only closes descriptors, and only in this
    // thread's private table; none above 2 is in use on this thread yet.
    let r = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    if r != 0 {
        // Kernels before 5.9: one at a time, as listed by the kernel (the
        // listing's own descriptor is closed before, its number unused).
        let fds: Vec<i32> = std::fs::read_dir("/proc/thread-self/fd")
            .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))?
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .filter(|fd| *fd > 2)
            .collect();
        for fd in fds {
            // SAFETY: as above, this thread's private table only.
            unsafe { libc::close(fd) };
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
