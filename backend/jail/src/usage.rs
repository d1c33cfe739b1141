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

/// Reads the counter files of an entry, one `pread` each.
fn read_counters(
    cgroups: &Cgroups,
    buf: &mut Vec<u8>,
    name: &JailName,
    e: &Entry,
) -> Result<CgroupUsage, JailError> {
    let files = usage_files(cgroups.version());
    let mut texts: Vec<String> = Vec::with_capacity(files.len());
    for (i, f) in e.counters.iter().enumerate() {
        let Some(f) = f else {
            texts.push(String::new());
            continue;
        };
        let n = pread_all(f, buf).map_err(|err| {
            let (c, file) = files[i];
            JailError::io("read", cgroups.dir(c, name.as_str()).join(file))(err)
        })?;
        texts.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    let read = |controller: &str, file: &str| {
        files
            .iter()
            .position(|&(c, f)| c == controller && f == file)
            .and_then(|i| texts.get(i).cloned())
            .unwrap_or_default()
    };
    Ok(parse_usage(cgroups.version(), &read))
}

/// Reads a kernel file from its start into `buf` (grown as needed); returns
/// the length. cgroupfs and sysfs regenerate the text at offset 0, so one
/// call reads a fresh counter.
fn pread_all(f: &File, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    let mut len = 0;
    loop {
        let n = f.read_at(&mut buf[len..], u64::try_from(len).unwrap_or(u64::MAX))?;
        len += n;
        if n == 0 || len < buf.len() {
            return Ok(len);
        }
        buf.resize(buf.len() * 2, 0);
    }
}

/// Reads the counters of every link into `links`, once per sweep that
/// reads a jail with a network; false when they could not be read (each
/// jail's sysfs files are read then).
fn dump_links(netlink: &mut Option<Netlink>, links: &mut HashMap<u32, LinkStats>) -> bool {
    if netlink.is_none() {
        *netlink = Netlink::route().ok();
    }
    let Some(nl) = netlink.as_mut() else {
        return false;
    };
    match nl.link_stats(links) {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %e, "reading link counters over netlink failed; reading sysfs");
            *netlink = None;
            false
        }
    }
}

/// The jail's network counters from the dump; its link's index is looked
/// up when unknown or gone (a restarted jail has a new link).
fn link_counters(link: &mut Link, links: &HashMap<u32, LinkStats>) -> NetCounters {
    let stats = link
        .index
        .and_then(|i| links.get(&i))
        .or_else(|| {
            link.index = netlink::link_index(&link.name).ok();
            links.get(&link.index?)
        })
        .copied()
        .unwrap_or_default();
    // What the host end sends, the jail receives, and the other way round.
    NetCounters {
        rx_bytes: stats.tx_bytes,
        tx_bytes: stats.rx_bytes,
        rx_packets: stats.tx_packets,
        tx_packets: stats.rx_packets,
    }
}

fn usage(cg: &CgroupUsage, disk_used_bytes: u64, net: &NetCounters) -> Usage {
    Usage {
        cpu_usec: cg.cpu_usec,
        memory_bytes: cg.memory_bytes,
        memory_peak_bytes: cg.memory_peak_bytes,
        pids: cg.pids,
        io_read_bytes: cg.io_read_bytes,
        io_write_bytes: cg.io_write_bytes,
        disk_used_bytes,
        oom_kills: cg.oom_kills,
        memory_limit_hits: cg.memory_limit_hits,
        pids_limit_hits: cg.pids_limit_hits,
        cpu_throttled_periods: cg.cpu_throttled_periods,
        net_rx_bytes: net.rx_bytes,
        net_tx_bytes: net.tx_bytes,
        net_rx_packets: net.rx_packets,
        net_tx_packets: net.tx_packets,
    }
}

/// CPU time (user and system) the calling thread has used.
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes one timespec that lives on this stack frame.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &raw mut ts) };
    Duration::new(
        u64::try_from(ts.tv_sec).unwrap_or(0),
        u32::try_from(ts.tv_nsec).unwrap_or(0),
    )
}

/// The process's soft limit on open files.
fn open_file_limit() -> u64 {
    getrlimit(Resource::RLIMIT_NOFILE).map_or(1024, |(soft, _)| soft)
}

/// The soft open-file limit the process had before
/// [`raise_open_file_limit`].
static CALLER_NOFILE: OnceLock<(u64, u64)> = OnceLock::new();

/// Raises the process's soft limit on open files to its hard limit, so a
/// [`UsageReader`] may keep the counter files of every jail open (eleven a
/// jail on cgroup v1; the limit applies to its descriptor table). Commands started in jails afterwards still get the
/// limit the process had before. Returns the new soft limit.
pub fn raise_open_file_limit() -> u64 {
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return 1024;
    };
    let before = *CALLER_NOFILE.get_or_init(|| (soft, hard));
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return hard;
    }
    soft.max(before.0)
}

/// Gives a process about to exec a jail's command the open-file limit the
/// caller had before [`raise_open_file_limit`]. Safe after `fork`: one
/// atomic load and one system call.
pub(crate) fn restore_open_file_limit() {
    if let Some(&(soft, hard)) = CALLER_NOFILE.get() {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, soft, hard);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::NetSpec;
    use crate::spec::JailSpec;
    use crate::state::JailRecord;
    use std::fs;
    use stockade_domain::{JailKind, Limits};

    const V1_FILES: [(&str, &str, &str); 9] = [
        ("cpuacct", "cpuacct.usage", "2500000\n"),
        ("memory", "memory.usage_in_bytes", "4096\n"),
        ("memory", "memory.max_usage_in_bytes", "8192\n"),
        ("memory", "memory.failcnt", "3\n"),
        (
            "memory",
            "memory.oom_control",
            "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n",
        ),
        ("pids", "pids.current", "2\n"),
        ("pids", "pids.events", "max 5\n"),
        (
            "cpu",
            "cpu.stat",
            "nr_periods 10\nnr_throttled 4\nthrottled_time 9\n",
        ),
        (
            "blkio",
            "blkio.throttle.io_service_bytes_recursive",
            "7:3 Read 100\n7:3 Write 200\nTotal 300\n",
        ),
    ];

    /// A node on temporary folders: a v1 cgroup tree, a proc folder whose
    /// `<pid>/stat` describes a real child process, a state folder.
    struct Node {
        dir: tempfile::TempDir,
        cgroups: Cgroups,
        children: Vec<std::process::Child>,
    }

    impl Node {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            for c in ["cpu", "cpuacct", "memory", "pids", "blkio"] {
                fs::create_dir_all(dir.path().join("cgroup").join(c)).unwrap();
            }
            let cgroups = Cgroups::detect(&dir.path().join("cgroup"), "stockade");
            Self {
                dir,
                cgroups,
                children: Vec::new(),
            }
        }

        fn config(&self) -> ReaderConfig {
            ReaderConfig {
                state_dir: self.dir.path().join("state"),
                proc_root: self.dir.path().join("proc"),
                sys_root: self.dir.path().join("sys"),
                cgroups: self.cgroups.clone(),
            }
        }

        fn reader(&self) -> Reader {
            Reader::new(self.config())
        }

        /// A jail whose init is a fresh child process (or none).
        fn jail(&mut self, name: &str, running: bool) -> JailName {
            let jail = JailName::parse(name).unwrap();
            self.cgroups.ensure(name).unwrap();
            for (c, f, text) in V1_FILES {
                fs::write(self.cgroups.dir(c, name).join(f), text).unwrap();
            }
            let init = running.then(|| self.start_init());
            self.save(&jail, init);
            jail
        }

        fn start_init(&mut self) -> InitProcess {
            let child = std::process::Command::new("sleep")
                .arg("1000")
                .spawn()
                .unwrap();
            let pid = i32::try_from(child.id()).unwrap();
            self.children.push(child);
            let d = self.dir.path().join("proc").join(pid.to_string());
            fs::create_dir_all(d.join("root")).unwrap();
            let tail = "1 1 1 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 4242 1000 10";
            fs::write(d.join("stat"), format!("{pid} (sleep) S {tail}")).unwrap();
            InitProcess {
                pid,
                start_time: 4242,
            }
        }

        fn save(&self, jail: &JailName, init: Option<InitProcess>) {
            self.save_with(jail, init, None);
        }

        fn save_with(&self, jail: &JailName, init: Option<InitProcess>, network: Option<NetSpec>) {
            let paths = JailPaths::new(&self.dir.path().join("state"), jail.as_str());
            state::save(
                &paths,
                &JailRecord {
                    spec: JailSpec {
                        name: jail.clone(),
                        hostname: jail.clone(),
                        image: "busybox".into(),
                        kind: JailKind::System,
                        command: vec![],
                        limits: Limits::default(),
                        network,
                        user_namespace: false,
                    },
                    upper: Upper::Tmpfs { bytes: 1 << 20 },
                    loop_device: None,
                    init,
                    transient: false,
                    uid_base: None,
                    id_shift: None,
                },
            )
            .unwrap();
        }

        fn set(&self, jail: &JailName, controller: &str, file: &str, text: &str) {
            fs::write(self.cgroups.dir(controller, jail.as_str()).join(file), text).unwrap();
        }

        fn end_init(&mut self, i: usize) {
            self.children[i].kill().unwrap();
            self.children[i].wait().unwrap();
        }
    }

    impl Drop for Node {
        fn drop(&mut self) {
            for c in &mut self.children {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }

    fn ok(s: &mut Sweep) -> Vec<Usage> {
        s.usage.drain(..).map(Result::unwrap).collect()
    }

    #[test]
    fn counters_are_parsed_and_reread_through_the_kept_files() {
        let mut node = Node::new();
        let web = node.jail("web", true);
        let mut reader = node.reader();
        let u = ok(&mut reader.sweep([&web]))[0];
        assert_eq!(
            (u.cpu_usec, u.memory_bytes, u.memory_peak_bytes, u.pids),
            (2500, 4096, 8192, 2)
        );
        assert_eq!((u.io_read_bytes, u.io_write_bytes), (100, 200));
        assert_eq!((u.oom_kills, u.memory_limit_hits), (1, 3));
        assert_eq!((u.pids_limit_hits, u.cpu_throttled_periods), (5, 4));
        assert!(u.disk_used_bytes > 0, "the init's root is statted");
        // Nine counter files (no swap accounting here) and the pidfd.
        assert_eq!(reader.open_files(), 10);

        node.set(&web, "cpuacct", "cpuacct.usage", "7000000\n");
        let u = ok(&mut reader.sweep([&web]))[0];
        assert_eq!(u.cpu_usec, 7000);
        assert_eq!(reader.open_files(), 10);
    }

    #[test]
    fn a_jail_no_longer_swept_has_its_files_closed() {
        let mut node = Node::new();
        let a = node.jail("a", true);
        let b = node.jail("b", true);
        let mut reader = node.reader();
        assert_eq!(ok(&mut reader.sweep([&a, &b])).len(), 2);
        assert_eq!(reader.open_files(), 20);
        ok(&mut reader.sweep([&a]));
        assert_eq!(reader.open_files(), 10);
    }

    #[test]
    fn a_restarted_jail_is_read_from_its_new_record() {
        let mut node = Node::new();
        let web = node.jail("web", true);
        let mut reader = node.reader();
        ok(&mut reader.sweep([&web]));
        // The init ends: the jail is read afresh, without an init.
        node.end_init(0);
        node.save(&web, None);
        let u = ok(&mut reader.sweep([&web]))[0];
        assert_eq!((u.cpu_usec, u.disk_used_bytes), (2500, 0));
        assert_eq!(reader.open_files(), 0, "nothing is kept of a stopped jail");
        // A new init: kept again.
        let init = node.start_init();
        node.save(&web, Some(init));
        node.set(&web, "pids", "pids.current", "7\n");
        let u = ok(&mut reader.sweep([&web]))[0];
        assert_eq!(u.pids, 7);
        assert!(u.disk_used_bytes > 0);
        assert_eq!(reader.open_files(), 10);
    }

    #[test]
    fn a_destroyed_jail_is_reported_missing_and_forgotten() {
        let mut node = Node::new();
        let web = node.jail("web", true);
        let db = node.jail("db", true);
        let mut reader = node.reader();
        ok(&mut reader.sweep([&web, &db]));
        node.end_init(0);
        fs::remove_dir_all(node.dir.path().join("state/jails/web")).unwrap();
        let s = reader.sweep([&web, &db]);
        assert!(matches!(s.usage[0], Err(JailError::NotFound(_))));
        assert_eq!(s.usage[1].as_ref().unwrap().cpu_usec, 2500);
        assert_eq!(reader.open_files(), 10);
    }

    #[test]
    fn an_unreadable_counter_fails_that_jail_only_and_is_retried() {
        let mut node = Node::new();
        let web = node.jail("web", true);
        let db = node.jail("db", true);
        // A folder opens but cannot be read.
        let stat = node.cgroups.dir("cpu", "web").join("cpu.stat");
        fs::remove_file(&stat).unwrap();
        fs::create_dir(&stat).unwrap();
        let mut reader = node.reader();
        let s = reader.sweep([&web, &db]);
        let err = s.usage[0].as_ref().unwrap_err().to_string();
        assert!(err.contains("cpu.stat"), "{err}");
        assert!(s.usage[1].is_ok());
        assert_eq!(reader.open_files(), 10, "the failed jail is not kept");
        fs::remove_dir(&stat).unwrap();
        fs::write(&stat, "nr_throttled 8\n").unwrap();
        let u = ok(&mut reader.sweep([&web, &db]));
        assert_eq!(u[0].cpu_throttled_periods, 8);
        assert_eq!(reader.open_files(), 20);
    }

    #[test]
    fn jails_beyond_the_descriptor_budget_are_read_without_keeping_files() {
        let mut node = Node::new();
        let a = node.jail("a", true);
        let b = node.jail("b", true);
        let mut reader = node.reader();
        reader.fd_limit = Some(FD_RESERVE + 15);
        let u = ok(&mut reader.sweep([&a, &b]));
        assert_eq!((u[0].cpu_usec, u[1].cpu_usec), (2500, 2500));
        assert_eq!(reader.open_files(), 10);
        node.set(&b, "pids", "pids.current", "9\n");
        assert_eq!(ok(&mut reader.sweep([&a, &b]))[1].pids, 9);
    }

    #[test]
    fn a_jail_without_a_group_reads_zero_counters() {
        let mut node = Node::new();
        let web = node.jail("web", true);
        for d in node.cgroups.dirs("web") {
            fs::remove_dir_all(d).unwrap();
        }
        let mut reader = node.reader();
        let u = ok(&mut reader.sweep([&web]))[0];
        assert_eq!((u.cpu_usec, u.memory_bytes), (0, 0));
        assert_eq!(reader.open_files(), 0);
    }

    #[test]
    fn a_jail_whose_link_is_gone_reads_zero_traffic() {
        let mut node = Node::new();
        let web = node.jail("web", true);
        let init = node.start_init();
        node.save_with(&web, Some(init), Some(NetSpec::new([10, 77, 0, 2].into())));
        let mut reader = node.reader();
        for _ in 0..2 {
            let u = ok(&mut reader.sweep([&web]))[0];
            assert_eq!((u.cpu_usec, u.net_rx_bytes, u.net_tx_packets), (2500, 0, 0));
        }
        // The netlink socket is kept with the jail's files.
        assert_eq!(reader.open_files(), 11);
    }

    #[test]
    fn the_kept_files_stay_out_of_the_processs_descriptor_table() {
        let mut node = Node::new();
        let web = node.jail("web", true);
        let mut reader = UsageReader::new(node.config());
        let s = reader.sweep([&web]);
        assert_eq!(s.usage[0].as_ref().unwrap().cpu_usec, 2500);
        assert_eq!(s.open_files, 10);
        let cgroup = node.dir.path().join("cgroup");
        let shared: Vec<PathBuf> = fs::read_dir("/proc/self/fd")
            .unwrap()
            .flatten()
            .filter_map(|e| fs::read_link(e.path()).ok())
            .filter(|target| target.starts_with(&cgroup))
            .collect();
        assert!(shared.is_empty(), "{shared:?}");
        node.set(&web, "pids", "pids.current", "4\n");
        assert_eq!(reader.sweep([&web]).usage[0].as_ref().unwrap().pids, 4);
    }

    #[test]
    fn long_counter_files_are_read_whole() {
        let mut node = Node::new();
        let web = node.jail("web", true);
        let mut text = String::new();
        for minor in 0..2000 {
            text.push_str(&format!("7:{minor} Read 1\n7:{minor} Write 2\n"));
        }
        assert!(text.len() > 16 << 10);
        node.set(
            &web,
            "blkio",
            "blkio.throttle.io_service_bytes_recursive",
            &text,
        );
        let mut reader = node.reader();
        let u = ok(&mut reader.sweep([&web]))[0];
        assert_eq!((u.io_read_bytes, u.io_write_bytes), (2000, 4000));
    }
}
