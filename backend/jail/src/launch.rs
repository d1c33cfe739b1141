//! Starting processes inside jails: the launcher, the jail's init (PID 1)
//! and the command it runs, and joining a running jail for `exec`.
//!
//! # Forking a possibly multi-threaded caller
//!
//! The agent that calls the engine runs many threads. After `fork(2)` only
//! the forking thread exists in the child, and any lock another thread held
//! (the allocator's, stdout's, the tracing subscriber's) stays locked
//! forever. glibc's `fork()` takes and resets its own allocator locks around
//! the fork, so allocation would be safe, but other locks are not; so the
//! children here do not allocate, log or touch std's global state: every
//! string, path and argv/envp array is built before the fork ([`ExecPlan`],
//! [`crate::rootfs::Step`]) and the children make only system calls on them.
//! Errors travel back as fixed-size records on a close-on-exec pipe; the
//! parent maps them to [`JailError`]s naming the path that failed.
//!
//! # Processes
//!
//! ```text
//! engine ──fork──▶ launcher ──fork──▶ init (PID 1 in the jail) ──fork──▶ command
//!                  unshares the       mounts the root, pivots,      drops capabilities,
//!                  namespaces         enters its cgroup namespace,  execs
//!                                     reaps zombies, forwards signals
//! ```
//!
//! Meanwhile the engine creates the jail's cgroup, writes its limits and
//! moves the init into it (and connects its network): the host side and the
//! jail side of the start-up run at the same time, on different cores. The
//! init waits for the engine's go-ahead before it starts the command, so the
//! command and everything it forks are inside the cgroup from their first
//! instruction.
//!
//! A started jail's launcher calls `setsid` and exits at once, so the init is
//! reparented away from the caller: the jail outlives the agent or CLI that
//! started it. For `run` the launcher instead waits for the init and exits
//! with its status, and both die with their parent (`PR_SET_PDEATHSIG`).

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sched::CloneFlags;
use nix::sys::signal::{SigHandler, SigSet, Signal};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid};

use crate::error::JailError;
use crate::rootfs::Step;

/// The search path inside jails.
pub(crate) const JAIL_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Capabilities a jail's processes keep (Docker's default set without
/// MKNOD and NET_RAW): enough for a service to bind port 80, change owners
/// and switch users; no mounting, no module loading, no device nodes, no
/// raw or forged packets, no host tuning.
pub(crate) const KEEP_CAPS: [u32; 12] = [
    0,  // CHOWN
    1,  // DAC_OVERRIDE
    3,  // FOWNER
    4,  // FSETID
    5,  // KILL
    6,  // SETGID
    7,  // SETUID
    8,  // SETPCAP
    10, // NET_BIND_SERVICE
    18, // SYS_CHROOT
    29, // AUDIT_WRITE
    31, // SETFCAP
];

const PR_SET_PDEATHSIG: libc::c_int = 1;
const PR_CAPBSET_DROP: libc::c_int = 24;
const PR_SET_NO_NEW_PRIVS: libc::c_int = 38;
const PR_CAP_AMBIENT: libc::c_int = 47;
const PR_CAP_AMBIENT_CLEAR_ALL: libc::c_ulong = 4;
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;
const SIOCGIFFLAGS: libc::c_ulong = 0x8913;
const SIOCSIFFLAGS: libc::c_ulong = 0x8914;

/// Signals the init passes on to the command.
const FORWARDED: [Signal; 7] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
];

/// A command ready to exec: candidates from the jail's PATH, argv and envp
/// as NUL-terminated arrays, all allocated before any fork.
#[derive(Debug)]
pub(crate) struct ExecPlan {
    candidates: Vec<CString>,
    argv: Vec<CString>,
    envp: Vec<CString>,
    argv_ptrs: Vec<*const libc::c_char>,
    envp_ptrs: Vec<*const libc::c_char>,
}

fn cstring(what: &'static str, s: &str) -> Result<CString, JailError> {
    CString::new(s).map_err(|_| JailError::Invalid {
        what,
        reason: format!("{s:?} contains a NUL byte"),
    })
}

impl ExecPlan {
    /// Prepares `argv` with the environment `env`; a bare command name is
    /// looked up in [`JAIL_PATH`] inside the jail at exec time.
    pub fn new(argv: &[String], env: &[(&str, &str)]) -> Result<Self, JailError> {
        let first = argv.first().ok_or(JailError::Invalid {
            what: "command",
            reason: "is empty".into(),
        })?;
        let candidates = if first.contains('/') {
            vec![cstring("command", first)?]
        } else {
            JAIL_PATH
                .split(':')
                .map(|d| cstring("command", &format!("{d}/{first}")))
                .collect::<Result<_, _>>()?
        };
        let argv: Vec<CString> = argv
            .iter()
            .map(|a| cstring("command", a))
            .collect::<Result<_, _>>()?;
        let envp: Vec<CString> = env
            .iter()
            .map(|(k, v)| cstring("environment", &format!("{k}={v}")))
            .collect::<Result<_, _>>()?;
        let argv_ptrs = argv
            .iter()
            .map(|a| a.as_ptr())
            .chain([std::ptr::null()])
            .collect();
        let envp_ptrs = envp
            .iter()
            .map(|a| a.as_ptr())
            .chain([std::ptr::null()])
            .collect();
        Ok(Self {
            candidates,
            argv,
            envp,
            argv_ptrs,
            envp_ptrs,
        })
    }

    /// The program as the user gave it, for error messages.
    pub fn program(&self) -> PathBuf {
        PathBuf::from(std::ffi::OsStr::from_bytes(self.argv[0].as_bytes()))
    }

    /// Tries each candidate; returns only on failure, with the most telling
    /// errno (a permission problem beats "not found" on another PATH entry).
    fn exec(&self) -> Errno {
        let _ = &self.envp;
        let mut err = Errno::ENOENT;
        for c in &self.candidates {
            // SAFETY: the path and both arrays are NUL-terminated and live
            // for the call; on success execve does not return.
            unsafe { libc::execve(c.as_ptr(), self.argv_ptrs.as_ptr(), self.envp_ptrs.as_ptr()) };
            let e = Errno::last();
            if e != Errno::ENOENT && e != Errno::ENOTDIR {
                err = e;
            }
        }
        err
    }
}

/// Where a child failed, as carried on the report pipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
enum Stage {
    Cgroup = 1,
    Unshare = 2,
    Fork = 3,
    Hostname = 4,
    Loopback = 5,
    Root = 6,
    Exec = 7,
    Setns = 8,
    Capabilities = 9,
    Session = 10,
    Seccomp = 11,
    UserNs = 12,
    CgroupNs = 13,
}

impl Stage {
    fn from_u32(v: u32) -> Option<Self> {
        use Stage::*;
        [
            Cgroup,
            Unshare,
            Fork,
            Hostname,
            Loopback,
            Root,
            Exec,
            Setns,
            Capabilities,
            Session,
            Seccomp,
            UserNs,
            CgroupNs,
        ]
        .into_iter()
        .find(|s| *s as u32 == v)
    }
}

const MSG_PID: u32 = 1;
const MSG_ERROR: u32 = 2;
const MSG_USERNS: u32 = 3;

/// Writes one 16-byte record; async-signal-safe.
fn send(fd: RawFd, kind: u32, a: u32, b: u32, c: i32) {
    let mut buf = [0u8; 16];
    buf[0..4].copy_from_slice(&kind.to_ne_bytes());
    buf[4..8].copy_from_slice(&a.to_ne_bytes());
    buf[8..12].copy_from_slice(&b.to_ne_bytes());
    buf[12..16].copy_from_slice(&c.to_ne_bytes());
    // SAFETY: writes from a live stack buffer; a short or failed write only
    // loses the report, and the parent still sees the process fail.
    unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
}

/// Reports a failure and ends the child without running any exit handlers.
fn fail(fd: RawFd, stage: Stage, index: usize, errno: Errno) -> ! {
    send(
        fd,
        MSG_ERROR,
        stage as u32,
        u32::try_from(index).unwrap_or(u32::MAX),
        errno as i32,
    );
    // SAFETY: _exit is async-signal-safe and ends the process at once.
    unsafe { libc::_exit(1) }
}

fn exit(code: i32) -> ! {
    // SAFETY: as in `fail`.
    unsafe { libc::_exit(code) }
}

/// What the children reported.
#[derive(Debug, Default)]
struct Report {
    pid: Option<i32>,
    /// The launcher is in its new user namespace, waiting for id maps.
    userns: bool,
    error: Option<(Stage, usize, Errno)>,
}

/// Reads records into `rep` until `enough` says so or the pipe ends.
fn read_report(r: &OwnedFd, rep: &mut Report, enough: impl Fn(&Report) -> bool) {
    let mut buf = [0u8; 16];
    let mut filled = 0;
    loop {
        if filled == 0 && enough(rep) {
            break;
        }
        match nix::unistd::read(r, &mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => {
                filled += n;
                if filled < 16 {
                    continue;
                }
                filled = 0;
                let word =
                    |i: usize| u32::from_ne_bytes([buf[i], buf[i + 1], buf[i + 2], buf[i + 3]]);
                match word(0) {
                    MSG_PID => rep.pid = i32::try_from(word(4)).ok(),
                    MSG_USERNS => rep.userns = true,
                    MSG_ERROR if rep.error.is_none() => {
                        if let Some(stage) = Stage::from_u32(word(4)) {
                            let errno = Errno::from_raw(i32::from_ne_bytes([
                                buf[12], buf[13], buf[14], buf[15],
                            ]));
                            rep.error = Some((
                                stage,
                                usize::try_from(word(8)).unwrap_or(usize::MAX),
                                errno,
                            ));
                        }
                    }
                    _ => {}
                }
            }
            Err(Errno::EINTR) => continue,
            Err(_) => break,
        }
    }
}

/// Waits for a child, retrying on EINTR; returns its status as a shell
/// would: the exit code, or 128 + the signal number.
fn wait_code(pid: Pid) -> Result<i32, Errno> {
    loop {
        match waitpid(pid, Some(WaitPidFlag::__WALL)) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(128 + sig as i32),
            Ok(_) => continue,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Restores default signal dispositions and an empty mask: the caller's
/// handlers (an async runtime's) mean nothing in a jail, and an ignored
/// SIGPIPE would be inherited across exec.
fn reset_signals() {
    for sig in 1..32 {
        if sig != libc::SIGKILL && sig != libc::SIGSTOP {
            // SAFETY: installing SIG_DFL is always valid and async-signal-safe.
            unsafe { libc::signal(sig, libc::SIG_DFL) };
        }
    }
    let _ = nix::sys::signal::sigprocmask(
        nix::sys::signal::SigmaskHow::SIG_SETMASK,
        Some(&SigSet::empty()),
        None,
    );
}

/// Writes "0" (the writer itself) into each `cgroup.procs` file.
fn join_cgroup(report: RawFd, procs: &[CString]) {
    for (i, file) in procs.iter().enumerate() {
        // SAFETY: `file` is NUL-terminated; the fd is closed below.
        let fd = unsafe { libc::open(file.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
        if fd < 0 {
            fail(report, Stage::Cgroup, i, Errno::last());
        }
        // SAFETY: writes one byte from a static buffer to the fd opened above.
        let n = unsafe { libc::write(fd, c"0".as_ptr().cast(), 1) };
        let err = Errno::last();
        // SAFETY: closes the fd opened above, once.
        unsafe { libc::close(fd) };
        if n != 1 {
            fail(report, Stage::Cgroup, i, err);
        }
    }
}

/// Brings the jail's loopback interface up (its only interface for now).
fn loopback_up() -> Result<(), Errno> {
    #[repr(C)]
    struct IfReqFlags {
        name: [u8; 16],
        flags: libc::c_short,
        pad: [u8; 22],
    }
    let mut req = IfReqFlags {
        name: [0; 16],
        flags: 0,
        pad: [0; 22],
    };
    req.name[..2].copy_from_slice(b"lo");
    // SAFETY: plain socket creation; the fd is closed below.
    let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if sock < 0 {
        return Err(Errno::last());
    }
    // SAFETY: SIOC[GS]IFFLAGS read and write a `struct ifreq`, whose name and
    // flags fields `IfReqFlags` mirrors at the same offsets and size.
    let r = unsafe {
        let mut r = libc::ioctl(sock, SIOCGIFFLAGS, &raw mut req);
        if r == 0 {
            req.flags |= libc::c_short::try_from(libc::IFF_UP).unwrap_or(1);
            r = libc::ioctl(sock, SIOCSIFFLAGS, &raw const req);
        }
        r
    };
    let err = Errno::last();
    // SAFETY: closes the socket opened above, once.
    unsafe { libc::close(sock) };
    if r < 0 { Err(err) } else { Ok(()) }
}

/// Reduces every capability set to [`KEEP_CAPS`]: the bounding set (at
/// exec a root process gets exactly the bounding set), the ambient set
/// (emptied: nothing passes to non-root programs), the effective and
/// permitted sets of the process itself, and the inheritable set (emptied,
/// as runtimes do since CVE-2022-24769: it could hand capabilities to
/// programs with inheritable file capabilities).
fn drop_capabilities() -> Result<(), Errno> {
    for cap in 0..64u32 {
        if KEEP_CAPS.contains(&cap) {
            continue;
        }
        // SAFETY: PR_CAPBSET_DROP takes a capability number and no pointers.
        let r = unsafe { libc::prctl(PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0, 0, 0) };
        if r < 0 {
            match Errno::last() {
                Errno::EINVAL => break, // past the kernel's last capability
                e => return Err(e),
            }
        }
    }
    // SAFETY: PR_CAP_AMBIENT takes integers only.
    let r = unsafe { libc::prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) };
    // EINVAL: a kernel without ambient capabilities has none to clear.
    match Errno::result(r) {
        Ok(_) | Err(Errno::EINVAL) => {}
        Err(e) => return Err(e),
    }
    let keep = KEEP_CAPS.iter().fold(0u64, |m, c| m | (1u64 << c));
    let low = u32::try_from(keep & 0xffff_ffff).unwrap_or(0);
    let high = u32::try_from(keep >> 32).unwrap_or(0);
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let header = Header {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [
        Data {
            effective: low,
            permitted: low,
            inheritable: 0,
        },
        Data {
            effective: high,
            permitted: high,
            inheritable: 0,
        },
    ];
    // SAFETY: capset reads a version-3 header and two data records, which
    // `Header` and `Data` mirror; both are alive for the call.
    let r = unsafe { libc::syscall(libc::SYS_capset, &raw const header, data.as_ptr()) };
    Errno::result(r).map(drop)
}

/// Last steps before exec: no program may gain privileges (setuid bits and
/// file capabilities are ignored from here on), then the system call filter.
fn lock_down(seccomp: &[Vec<libc::sock_filter>]) -> Result<(), Errno> {
    // SAFETY: PR_SET_NO_NEW_PRIVS takes integers only.
    let r = unsafe { libc::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    Errno::result(r)?;
    crate::seccomp::install(seccomp)
}

/// Writes `value` to a small file such as `/proc/self/oom_score_adj`.
fn write_file(path: &std::ffi::CStr, value: &[u8]) -> bool {
    // SAFETY: `path` is NUL-terminated; the fd is closed below.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return false;
    }
    // SAFETY: writes from a live slice to the fd opened above.
    let n = unsafe { libc::write(fd, value.as_ptr().cast(), value.len()) };
    // SAFETY: closes the fd opened above, once.
    unsafe { libc::close(fd) };
    usize::try_from(n).is_ok_and(|n| n == value.len())
}

/// Becomes the jail's command: runs in the child of the init (or of the
/// exec helper), ends in execve. `oom_score_adj` is written first if given.
fn become_command(
    report: RawFd,
    command: &ExecPlan,
    seccomp: &[Vec<libc::sock_filter>],
    oom_score_adj: Option<&[u8]>,
    tty: bool,
) -> ! {
    // A session of its own: no terminal of the caller's is the command's
    // controlling terminal (whose input it could fake with TIOCSTI, or
    // whose other processes it could signal). A terminal made for the jail
    // (on fd 0) becomes its controlling terminal instead.
    if let Err(e) = nix::unistd::setsid() {
        fail(report, Stage::Session, 1, e);
    }
    // SAFETY: TIOCSCTTY takes an integer argument.
    if tty && unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) } < 0 {
        fail(report, Stage::Session, 2, Errno::last());
    }
    if let Some(adj) = oom_score_adj {
        write_file(c"/proc/self/oom_score_adj", adj);
    }
    let _ = nix::sys::signal::sigprocmask(
        nix::sys::signal::SigmaskHow::SIG_SETMASK,
        Some(&SigSet::empty()),
        None,
    );
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    // The engine's process may have raised its open-file limit for the
    // usage reader; the jail's command gets the limit it would have had.
    crate::usage::restore_open_file_limit();
    if let Err(e) = drop_capabilities() {
        fail(report, Stage::Capabilities, 0, e);
    }
    if let Err(e) = lock_down(seccomp) {
        fail(report, Stage::Seccomp, 0, e);
    }
    let e = command.exec();
    fail(report, Stage::Exec, 0, e)
}

/// What the command's process needs, on the stack of the init that waits.
struct CommandArgs<'a> {
    report: RawFd,
    command: &'a ExecPlan,
    seccomp: &'a [Vec<libc::sock_filter>],
    oom_score_adj: Option<&'a [u8]>,
    tty: bool,
}

extern "C" fn command_entry(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the `CommandArgs` of `spawn_command`'s caller, which
    // is suspended (CLONE_VFORK) and keeps it alive until this process execs
    // or exits, neither of which returns here.
    let a = unsafe { &*arg.cast::<CommandArgs<'_>>() };
    become_command(a.report, a.command, a.seccomp, a.oom_score_adj, a.tty)
}

/// Starts the jail's command as `posix_spawn` does: the new process shares
/// the init's memory, on a stack of its own, until it execs, and the init
/// waits meanwhile. Unlike a fork, nothing of the init's address space (a
/// copy of the engine's) is copied for the command, or torn down by its
/// exec. The child makes only system calls (see module docs).
fn spawn_command(args: &CommandArgs<'_>) -> Result<Pid, Errno> {
    const STACK: usize = 256 << 10;
    // SAFETY: an anonymous private mapping; no allocator involved.
    let stack = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            STACK,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
            -1,
            0,
        )
    };
    if stack == libc::MAP_FAILED {
        return Err(Errno::last());
    }
    // SAFETY: the stack grows down from the end of the mapping made above;
    // `args` outlives the child's use of it (see `command_entry`). With
    // CLONE_VFORK this call returns once the child has exec'd or exited.
    let pid = unsafe {
        libc::clone(
            command_entry,
            stack.cast::<u8>().add(STACK).cast(),
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            std::ptr::from_ref(args).cast_mut().cast(),
        )
    };
    let err = Errno::last();
    // SAFETY: unmaps the mapping made above; the child no longer runs on it.
    unsafe { libc::munmap(stack, STACK) };
    if pid < 0 {
        Err(err)
    } else {
        Ok(Pid::from_raw(pid))
    }
}

extern "C" fn forward_marker(_: libc::c_int) {}

/// Waits for the engine's go-ahead byte; false if the engine gave up.
fn wait_go(go: RawFd) -> bool {
    let mut byte = [0u8; 1];
    loop {
        // SAFETY: reads one byte into a live stack buffer.
        let n = unsafe { libc::read(go, byte.as_mut_ptr().cast(), 1) };
        if n >= 0 || Errno::last() != Errno::EINTR {
            return n == 1;
        }
    }
}

/// After entering a user namespace whose ids are mapped: become its root
/// (uid and gid 0 inside, no supplementary groups).
fn become_namespace_root() -> Result<(), Errno> {
    let root_g = nix::unistd::Gid::from_raw(0);
    let root_u = nix::unistd::Uid::from_raw(0);
    nix::unistd::setresgid(root_g, root_g, root_g)?;
    nix::unistd::setgroups(&[])?;
    nix::unistd::setresuid(root_u, root_u, root_u)
}

/// The jail's PID 1: sets up the root, starts the command, forwards
/// signals to it and reaps every zombie; exits with the command's status.
fn init(launch: &Launch<'_>, report: RawFd, go: RawFd) -> ! {
    // Order: hostname and loopback need only the new namespaces; the root
    // setup must come before the fork so the command starts inside it.
    if let Err(e) =
        nix::unistd::sethostname(std::ffi::OsStr::from_bytes(launch.hostname.as_bytes()))
    {
        fail(report, Stage::Hostname, 0, e);
    }
    if let Err(e) = loopback_up() {
        fail(report, Stage::Loopback, 0, e);
    }
    // The init is a fork of the engine's (possibly large) process, so its
    // RSS can exceed the command's: keep the OOM killer off it, or an OOM
    // in the jail would end the whole jail. Lowering needs CAP_SYS_RESOURCE;
    // without it the command is made the likelier victim instead.
    let init_protected = write_file(c"/proc/self/oom_score_adj", b"-1000");
    let command_adj: &[u8] = if init_protected { b"0" } else { b"500" };
    // Exact modes for /dev nodes and /tmp; the command gets 022 back.
    nix::sys::stat::umask(nix::sys::stat::Mode::empty());
    for (i, step) in launch.steps.iter().enumerate() {
        if let Err(e) = step.run() {
            fail(report, Stage::Root, i, e);
        }
    }
    // The engine connects the jail's network meanwhile; the command starts
    // only once it is done. No byte: the engine failed (and says why).
    let go_on = wait_go(go);
    // SAFETY: closes the go pipe, once; the command must not inherit it.
    unsafe { libc::close(go) };
    if !go_on {
        exit(1);
    }
    // The engine has moved us into the jail's cgroup: it becomes the root
    // of what the jail sees of cgroups.
    if let Err(e) = nix::sched::unshare(CloneFlags::CLONE_NEWCGROUP) {
        fail(report, Stage::CgroupNs, 0, e);
    }
    // Block the signals we wait for *before* forking, so none is lost. A
    // handler (never run, the signals stay blocked) is installed as well:
    // the kernel drops a signal to a namespace's init whose disposition is
    // SIG_DFL, so without one `stop`'s SIGTERM could not reach the command.
    let mut waited = SigSet::empty();
    waited.add(Signal::SIGCHLD);
    for s in FORWARDED {
        waited.add(s);
        let action = nix::sys::signal::SigAction::new(
            SigHandler::Handler(forward_marker),
            nix::sys::signal::SaFlags::SA_RESTART,
            SigSet::empty(),
        );
        // SAFETY: the handler does nothing, so it is trivially async-signal-safe.
        let _ = unsafe { nix::sys::signal::sigaction(s, &action) };
    }
    let _ =
        nix::sys::signal::sigprocmask(nix::sys::signal::SigmaskHow::SIG_BLOCK, Some(&waited), None);
    let command = CommandArgs {
        report,
        command: launch.command,
        seccomp: launch.seccomp,
        oom_score_adj: Some(command_adj),
        tty: launch.stdio.tty(),
    };
    // A started jail's command writes into a pipe the init reads; only the
    // init writes the log, so the log never outgrows its limit whatever
    // the command prints.
    let mut console = match &launch.stdio {
        Stdio::Detached { log_limit, .. } => Some(console_pipe(report, *log_limit)),
        Stdio::Inherit { .. } => None,
    };
    let child = match spawn_command(&command) {
        Ok(child) => child,
        Err(e) => fail(report, Stage::Fork, 0, e),
    };
    // SAFETY: closes our copy of the report pipe; the command's copy closes
    // at exec, which tells the engine the jail is up.
    unsafe { libc::close(report) };
    if let Some(ring) = &console {
        ring.after_spawn();
    }
    // SAFETY: signalfd reads the set; the mask is blocked above.
    let signals =
        unsafe { libc::signalfd(-1, waited.as_ref(), libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) };
    let mut chunk = [0u8; 16 << 10];
    loop {
        let pipe = console.as_ref().map_or(-1, |c| c.pipe);
        let mut fds = [
            libc::pollfd {
                fd: signals,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: pipe,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        if signals < 0 {
            // No signalfd (a very old kernel): wait for signals alone.
            if let Ok(sig) = waited.wait() {
                on_signal(sig, child, console.as_mut(), &mut chunk);
            }
            continue;
        }
        // SAFETY: polls two live pollfd records; a negative fd is skipped.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if n < 0 {
            continue;
        }
        if fds[1].revents != 0
            && let Some(ring) = console.as_mut()
            && !ring.pump(&mut chunk)
        {
            console = None;
        }
        if fds[0].revents != 0 {
            let mut info = std::mem::MaybeUninit::<libc::signalfd_siginfo>::uninit();
            let size = std::mem::size_of::<libc::signalfd_siginfo>();
            // SAFETY: reads at most one record into a buffer of its size.
            while unsafe { libc::read(signals, info.as_mut_ptr().cast(), size) }
                == isize::try_from(size).unwrap_or(0)
            {
                // SAFETY: the kernel filled the whole record.
                let signo = unsafe { info.assume_init_ref() }.ssi_signo;
                if let Ok(sig) = Signal::try_from(i32::try_from(signo).unwrap_or(0)) {
                    on_signal(sig, child, console.as_mut(), &mut chunk);
                }
            }
        }
    }
}

/// Forwards `sig` to the command; on SIGCHLD reaps every zombie and, once
/// the command has ended, keeps what it printed last and exits with its
/// status.
fn on_signal(sig: Signal, child: Pid, console: Option<&mut Console>, chunk: &mut [u8]) {
    if sig != Signal::SIGCHLD {
        let _ = nix::sys::signal::kill(child, sig);
        return;
    }
    let mut status = None;
    loop {
        match waitpid(
            Pid::from_raw(-1),
            Some(WaitPidFlag::WNOHANG | WaitPidFlag::__WALL),
        ) {
            Ok(WaitStatus::Exited(pid, code)) if pid == child => status = Some(code),
            Ok(WaitStatus::Signaled(pid, sig, _)) if pid == child => {
                status = Some(128 + sig as i32);
            }
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => break,
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(_) => break,
        }
    }
    if let Some(code) = status {
        if let Some(ring) = console {
            ring.drain(chunk);
        }
        exit(code);
    }
}

/// The descriptor a started jail's init keeps its log on.
const LOG_FD: RawFd = 5;

/// A started jail's output, as its init keeps it: the command's stdout and
/// stderr are a pipe, and the log file holds at most `limit` bytes, the
/// newest ones. When a write would pass the limit, the newest half of the
/// file is moved to its start and the rest cut off, so the log stays an
/// ordinary file in order, and copying costs at most what was written.
struct Console {
    /// The pipe's read end.
    pipe: RawFd,
    /// The log's current size.
    size: u64,
    limit: u64,
}

/// Makes the console pipe and connects the init's fds 1 and 2 to its write
/// end, for the command to inherit.
fn console_pipe(report: RawFd, limit: u64) -> Console {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two descriptors.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        fail(report, Stage::Session, 3, Errno::last());
    }
    // SAFETY: dup2 onto the standard streams (without close-on-exec), then
    // closes the original write end, once.
    unsafe {
        libc::dup2(fds[1], 1);
        libc::dup2(fds[1], 2);
        libc::close(fds[1]);
    }
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat fills the record on success.
    let size = if unsafe { libc::fstat(LOG_FD, st.as_mut_ptr()) } == 0 {
        // SAFETY: filled by the successful fstat above.
        u64::try_from(unsafe { st.assume_init_ref() }.st_size).unwrap_or(0)
    } else {
        0
    };
    Console {
        pipe: fds[0],
        size,
        limit: limit.max(2 * 4096),
    }
}

impl Console {
    /// Once the command holds the write end: the init lets go of its own
    /// copies (so the pipe ends when the command's processes are gone),
    /// and caps the files it may write, so even a subverted init cannot
    /// fill the host's disk through the log.
    fn after_spawn(&self) {
        // SAFETY: duplicates fd 0 (/dev/null) onto 1 and 2; sets a flag.
        unsafe {
            libc::dup2(0, 1);
            libc::dup2(0, 2);
            libc::fcntl(self.pipe, libc::F_SETFL, libc::O_NONBLOCK);
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
        }
        let cap = self.limit + (64 << 10);
        let _ = nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_FSIZE, cap, cap);
    }

    /// Copies what is waiting in the pipe into the log; false once the
    /// pipe has ended.
    fn pump(&mut self, chunk: &mut [u8]) -> bool {
        loop {
            // SAFETY: reads into a live buffer of its length.
            let n = unsafe { libc::read(self.pipe, chunk.as_mut_ptr().cast(), chunk.len()) };
            match usize::try_from(n) {
                Ok(0) => {
                    // SAFETY: closes the pipe's read end, once.
                    unsafe { libc::close(self.pipe) };
                    return false;
                }
                Ok(n) => self.append(&chunk[..n]),
                Err(_) => return Errno::last() != Errno::EBADF,
            }
        }
    }

    /// What is left in the pipe when the command has ended.
    fn drain(&mut self, chunk: &mut [u8]) {
        let _ = self.pump(chunk);
    }

    fn append(&mut self, data: &[u8]) {
        let len = data.len() as u64;
        let half = self.limit / 2;
        let mut shrunk = false;
        let data = if len > half {
            // Only the newest half of a large write can be kept anyway.
            self.size = 0;
            shrunk = true;
            &data[usize::try_from(len - half).unwrap_or(0)..]
        } else {
            if self.size + len > self.limit {
                self.keep_newest(half - len);
                shrunk = true;
            }
            data
        };
        // SAFETY: writes from a live slice at the log's end; a failed
        // write (a full disk) only loses output.
        let n = unsafe {
            libc::pwrite(
                LOG_FD,
                data.as_ptr().cast(),
                data.len(),
                i64::try_from(self.size).unwrap_or(0),
            )
        };
        if let Ok(n) = u64::try_from(n) {
            self.size += n;
        }
        if shrunk {
            // SAFETY: cuts the file at what it holds; shrinking is valid.
            unsafe { libc::ftruncate(LOG_FD, i64::try_from(self.size).unwrap_or(0)) };
        }
    }

    /// Moves the newest `keep` bytes of the log to its start.
    fn keep_newest(&mut self, keep: u64) {
        let keep = keep.min(self.size);
        let mut from = self.size - keep;
        let mut to = 0u64;
        let mut buf = [0u8; 16 << 10];
        while from < self.size {
            // SAFETY: reads into and writes from a live stack buffer.
            let n = unsafe {
                libc::pread(
                    LOG_FD,
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    i64::try_from(from).unwrap_or(0),
                )
            };
            let Ok(n) = usize::try_from(n) else { break };
            if n == 0 {
                break;
            }
            // SAFETY: as above.
            unsafe {
                libc::pwrite(
                    LOG_FD,
                    buf.as_ptr().cast(),
                    n,
                    i64::try_from(to).unwrap_or(0),
                )
            };
            from += n as u64;
            to += n as u64;
        }
        self.size = to;
    }
}

/// How the jail's standard streams are connected.
#[derive(Debug)]
pub(crate) enum Stdio {
    /// The caller's own: `run` passes the command's output through. With
    /// `tty`, the slave end of a terminal made for the jail replaces them
    /// and becomes the command's controlling terminal; the caller's own
    /// terminal is never one inside the jail.
    Inherit { tty: Option<OwnedFd> },
    /// A started jail: stdin from /dev/null, stdout and stderr through a
    /// pipe to its init, which keeps the newest output in the log.
    Detached {
        /// Opened /dev/null.
        stdin: OwnedFd,
        /// Opened log file (read-write, not appending: the ring rewrites it).
        log: OwnedFd,
        /// Most bytes the log may hold.
        log_limit: u64,
    },
}

impl Stdio {
    fn tty(&self) -> bool {
        matches!(self, Stdio::Inherit { tty: Some(_) })
    }
}

/// Everything the launcher and the init need, prepared before forking.
#[derive(Debug)]
pub(crate) struct Launch<'a> {
    pub hostname: CString,
    pub steps: &'a [Step],
    pub command: &'a ExecPlan,
    /// Whether the jail gets a user namespace of its own.
    pub user_namespace: bool,
    /// The system call filters, installed last before exec.
    pub seccomp: &'a [Vec<libc::sock_filter>],
    pub stdio: Stdio,
    /// For error messages about namespace setup.
    pub rootfs: &'a Path,
}

/// What a launch ended with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Started and left running, with the init's host pid.
    Started { pid: i32 },
    /// Ran to its end with this status (code, or 128 + signal).
    Exited { code: i32 },
}

/// The namespaces the launcher makes for the jail; its cgroup namespace
/// is made by the init once the engine has moved it into its cgroup.
fn jail_namespaces() -> CloneFlags {
    CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWNET
        | CloneFlags::CLONE_NEWPID
}

/// `struct clone_args` of clone3(2), up to `cgroup` (version 2, 88 bytes).
#[repr(C)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// What [`clone_into`] made.
enum Cloned {
    /// In the child.
    Child,
    /// In the caller, with the child's pid.
    Parent(Pid),
}

/// Forks straight into new namespaces (`clone3` without a stack behaves as
/// `fork`): the child needs no process in between to unshare them.
/// `ENOSYS` on kernels before 5.3.
fn clone_into(namespaces: CloneFlags) -> Result<Cloned, Errno> {
    let args = CloneArgs {
        flags: u64::try_from(namespaces.bits()).unwrap_or(0),
        pidfd: 0,
        child_tid: 0,
        parent_tid: 0,
        exit_signal: libc::SIGCHLD as u64,
        stack: 0,
        stack_size: 0,
        tls: 0,
        set_tid: 0,
        set_tid_size: 0,
        cgroup: 0,
    };
    // SAFETY: clone3 reads `args` (alive for the call, its size given). With
    // neither CLONE_VM nor a stack the child runs on a copy of this stack,
    // as after fork; it then only makes system calls (see module docs).
    let r = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &raw const args,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    match r {
        0 => Ok(Cloned::Child),
        r if r > 0 => Ok(Cloned::Parent(Pid::from_raw(i32::try_from(r).unwrap_or(0)))),
        _ => Err(Errno::last()),
    }
}

/// Moves `fd` to exactly `target` (close-on-exec).
fn move_fd(fd: RawFd, target: RawFd, report: RawFd) -> RawFd {
    // SAFETY: dup3 onto `target`, replacing whatever was there.
    let r = unsafe { libc::dup3(fd, target, libc::O_CLOEXEC) };
    if r < 0 {
        fail(report, Stage::Session, 0, Errno::last());
    }
    target
}

/// The first steps of the jail's first process: default signals, its
/// standard streams, and only the report (fd 3) and go (fd 4) pipes kept of
/// the caller's descriptors. `parent` is checked after asking to die with
/// it, unless the process is already in the jail's PID namespace (where its
/// parent has no pid; its go pipe then ends if the caller is gone).
fn first_steps(
    launch: &Launch<'_>,
    report: RawFd,
    go: RawFd,
    parent: Option<Pid>,
) -> (RawFd, RawFd) {
    reset_signals();
    // Nothing in the jail may read this process's memory (a copy of the
    // engine's) or trace it; the command becomes dumpable again at exec,
    // once its filter is installed.
    // SAFETY: PR_SET_DUMPABLE takes integers only.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    let mut log = -1;
    match &launch.stdio {
        Stdio::Detached {
            stdin, log: file, ..
        } => {
            // A session of its own: the caller's terminal and process group
            // signals never reach a started jail.
            if let Err(e) = nix::unistd::setsid() {
                fail(report, Stage::Session, 0, e);
            }
            // The caller's streams are not the jail's: 0-2 read and write
            // /dev/null until the init connects the command to its log.
            // SAFETY: duplicates an fd owned by `launch` onto 0, 1 and 2.
            unsafe {
                libc::dup2(stdin.as_raw_fd(), 0);
                libc::dup2(stdin.as_raw_fd(), 1);
                libc::dup2(stdin.as_raw_fd(), 2);
            }
            log = file.as_raw_fd();
        }
        Stdio::Inherit { tty } => {
            if let Some(tty) = tty {
                // SAFETY: duplicates an fd owned by `launch` onto 0, 1 and 2.
                unsafe {
                    libc::dup2(tty.as_raw_fd(), 0);
                    libc::dup2(tty.as_raw_fd(), 1);
                    libc::dup2(tty.as_raw_fd(), 2);
                }
            }
            // A `run` jail dies with its caller.
            // SAFETY: PR_SET_PDEATHSIG takes a signal number and no pointers.
            unsafe { libc::prctl(PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
            if parent.is_some_and(|p| nix::unistd::getppid() != p) {
                exit(1);
            }
        }
    }
    // The init never execs, so it must not keep the caller's descriptors
    // (an agent's sockets, other jails' files): keep 0-2, the report pipe
    // (moved to fd 3), the go pipe (fd 4) and a started jail's log (fd
    // [`LOG_FD`]), close the rest. All are first lifted above 10 so no move
    // overwrites another.
    // SAFETY: F_DUPFD_CLOEXEC only creates descriptors.
    let (high_report, high_go, high_log) = unsafe {
        (
            libc::fcntl(report, libc::F_DUPFD_CLOEXEC, 10),
            libc::fcntl(go, libc::F_DUPFD_CLOEXEC, 10),
            if log < 0 {
                0
            } else {
                libc::fcntl(log, libc::F_DUPFD_CLOEXEC, 10)
            },
        )
    };
    if high_report < 0 || high_go < 0 || high_log < 0 {
        fail(report, Stage::Session, 0, Errno::last());
    }
    let report = move_fd(high_report, 3, high_report);
    let go = move_fd(high_go, 4, report);
    if log >= 0 {
        move_fd(high_log, LOG_FD, report);
    }
    // SAFETY: close_range only closes descriptors; none above the log's is
    // used again.
    unsafe { libc::syscall(libc::SYS_close_range, 6u32, u32::MAX, 0u32) };
    if log < 0 {
        // SAFETY: closes what may be at the log's number; it is unused.
        unsafe { libc::close(LOG_FD) };
    }
    (report, go)
}

/// In a new user namespace: waits for the engine to map its ids, then
/// becomes its root.
fn enter_user_namespace(report: RawFd, go: RawFd) {
    send(report, MSG_USERNS, 0, 0, 0);
    if !wait_go(go) {
        exit(1);
    }
    if let Err(e) = become_namespace_root() {
        fail(report, Stage::UserNs, 1, e);
    }
}

/// A `run` jail's init made straight into the jail's namespaces by
/// `clone3`: no launcher in between.
fn direct_init(launch: &Launch<'_>, report: RawFd, go: RawFd) -> ! {
    let (report, go) = first_steps(launch, report, go, None);
    init(launch, report, go)
}

fn launcher(launch: &Launch<'_>, report: RawFd, go: RawFd, parent: Pid) -> ! {
    let detached = matches!(launch.stdio, Stdio::Detached { .. });
    let (report, go) = first_steps(launch, report, go, Some(parent));
    // The user namespace first, so that it owns every other namespace of
    // the jail (root inside may then bind port 80 in its own network, set
    // its hostname, mount its proc). The engine maps its ids meanwhile.
    if launch.user_namespace {
        if let Err(e) = nix::sched::unshare(CloneFlags::CLONE_NEWUSER) {
            fail(report, Stage::UserNs, 0, e);
        }
        enter_user_namespace(report, go);
    }
    if let Err(e) = nix::sched::unshare(jail_namespaces()) {
        fail(report, Stage::Unshare, 0, e);
    }
    // SAFETY: the child only makes system calls (see module docs).
    let init_pid = match unsafe { nix::unistd::fork() } {
        Ok(ForkResult::Child) => {
            if !detached {
                // SAFETY: as above.
                unsafe { libc::prctl(PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
            }
            init(launch, report, go)
        }
        Ok(ForkResult::Parent { child }) => child,
        Err(e) => fail(report, Stage::Fork, 0, e),
    };
    send(
        report,
        MSG_PID,
        u32::try_from(init_pid.as_raw()).unwrap_or(0),
        0,
        0,
    );
    // SAFETY: closes our copy of the report pipe, once.
    unsafe { libc::close(report) };
    if detached {
        exit(0);
    }
    match wait_code(init_pid) {
        Ok(code) => exit(code),
        Err(_) => exit(1),
    }
}

impl Launch<'_> {
    fn error(&self, stage: Stage, index: usize, errno: Errno) -> JailError {
        let (step, path): (&'static str, PathBuf) = match stage {
            Stage::Root => self
                .steps
                .get(index)
                .map_or(("root setup", PathBuf::new()), Step::describe),
            Stage::Exec => ("exec", self.command.program()),
            Stage::Capabilities => ("drop capabilities", self.command.program()),
            Stage::Seccomp => ("install seccomp filter", self.command.program()),
            Stage::UserNs => ("enter user namespace", self.rootfs.to_owned()),
            Stage::Hostname => (
                "sethostname",
                PathBuf::from(std::ffi::OsStr::from_bytes(self.hostname.as_bytes())),
            ),
            Stage::Unshare => ("unshare namespaces", self.rootfs.to_owned()),
            Stage::CgroupNs => ("unshare cgroup namespace", self.rootfs.to_owned()),
            Stage::Loopback => ("loopback up", PathBuf::from("lo")),
            Stage::Fork | Stage::Setns | Stage::Session | Stage::Cgroup => {
                ("fork", self.rootfs.to_owned())
            }
        };
        JailError::Setup {
            step,
            path,
            source: errno,
        }
    }
}

/// What the engine does while a jail starts, from the host side.
pub(crate) struct Hooks<'h> {
    /// With the launcher's pid, once it is in its new user namespace:
    /// map its ids (and id-map the image for it).
    pub on_userns: &'h mut dyn FnMut(i32) -> Result<(), JailError>,
    /// With the init's host pid once the jail's namespaces exist, while the
    /// init mounts the root and before its command starts: move the init
    /// into the jail's cgroup and connect its network.
    pub on_init: &'h mut dyn FnMut(i32) -> Result<(), JailError>,
}

/// Launches a jail; for [`Stdio::Inherit`] waits for it to end. If a hook
/// fails, the jail ends before running anything and the hook's error is
/// returned.
pub(crate) fn launch(launch: &Launch<'_>, hooks: Hooks<'_>) -> Result<Outcome, JailError> {
    let (r, w) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(JailError::sys("pipe", launch.rootfs))?;
    let (go_r, go_w) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(JailError::sys("pipe", launch.rootfs))?;
    let parent = nix::unistd::getpid();
    let mut rep = Report::default();
    // A `run` jail's init is made straight in its namespaces. A started
    // jail's goes through a launcher that exits, so that the init is not
    // the caller's child and outlives it; so does one with a user namespace,
    // whose mount namespace must be made after the engine id-maps the image.
    let mut direct = None;
    if matches!(launch.stdio, Stdio::Inherit { .. }) && !launch.user_namespace {
        match clone_into(jail_namespaces()) {
            Ok(Cloned::Child) => direct_init(launch, w.as_raw_fd(), go_r.as_raw_fd()),
            Ok(Cloned::Parent(child)) => direct = Some(child),
            Err(Errno::ENOSYS) => {}
            Err(e) => return Err(JailError::sys("clone3", launch.rootfs)(e)),
        }
    }
    let child = match direct {
        Some(child) => {
            rep.pid = Some(child.as_raw());
            child
        }
        // SAFETY: the child runs `launcher`, which only makes system calls
        // on data prepared before the fork and never returns.
        None => match unsafe { nix::unistd::fork() } {
            Ok(ForkResult::Child) => launcher(launch, w.as_raw_fd(), go_r.as_raw_fd(), parent),
            Ok(ForkResult::Parent { child }) => child,
            Err(e) => return Err(JailError::sys("fork", launch.rootfs)(e)),
        },
    };
    drop(w);
    drop(go_r);
    let mut setup = Ok(());
    if launch.user_namespace {
        read_report(&r, &mut rep, |rep| rep.userns || rep.error.is_some());
        if rep.userns && rep.error.is_none() {
            setup = (hooks.on_userns)(child.as_raw());
            if setup.is_ok() {
                let _ = nix::unistd::write(&go_w, &[1]);
            }
        }
    }
    if setup.is_ok() {
        read_report(&r, &mut rep, |rep| rep.pid.is_some() || rep.error.is_some());
        if let (Some(pid), None) = (rep.pid, rep.error) {
            setup = (hooks.on_init)(pid);
            if setup.is_ok() {
                let _ = nix::unistd::write(&go_w, &[1]);
            }
        }
    }
    // Without the byte the init exits before running anything.
    drop(go_w);
    read_report(&r, &mut rep, |_| false);
    let detached = matches!(launch.stdio, Stdio::Detached { .. });
    let status = wait_code(child).map_err(JailError::sys("wait", launch.rootfs));
    setup?;
    if let Some((stage, index, errno)) = rep.error {
        return Err(launch.error(stage, index, errno));
    }
    let code = status?;
    if detached {
        match rep.pid {
            Some(pid) => Ok(Outcome::Started { pid }),
            None => Err(JailError::Setup {
                step: "start",
                path: launch.rootfs.to_owned(),
                source: Errno::ECHILD,
            }),
        }
    } else {
        Ok(Outcome::Exited { code })
    }
}

/// A running jail's namespaces and cgroup, to run one more command in.
#[derive(Debug)]
pub(crate) struct Join<'a> {
    /// Opened `/proc/<init>/ns/*` files, the user namespace (if any) first,
    /// the mount namespace last.
    pub namespaces: Vec<(OwnedFd, CloneFlags, PathBuf)>,
    pub cgroup_procs: &'a [CString],
    pub command: &'a ExecPlan,
    pub seccomp: &'a [Vec<libc::sock_filter>],
    /// The value the command's `oom_score_adj` gets (as the jail's own).
    pub oom_score_adj: &'static [u8],
    /// A terminal made for the command (its slave end), instead of the
    /// caller's streams.
    pub tty: Option<OwnedFd>,
}

fn joiner(join: &Join<'_>, report: RawFd, parent: Pid) -> ! {
    reset_signals();
    // Not traceable from inside the jail until the command's exec (see
    // `first_steps`).
    // SAFETY: prctl with integer arguments only.
    unsafe {
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
        libc::prctl(PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
    }
    if nix::unistd::getppid() != parent {
        exit(1);
    }
    if let Some(tty) = &join.tty {
        // SAFETY: duplicates an fd owned by `join` onto 0, 1 and 2.
        unsafe {
            libc::dup2(tty.as_raw_fd(), 0);
            libc::dup2(tty.as_raw_fd(), 1);
            libc::dup2(tty.as_raw_fd(), 2);
        }
    }
    // The cgroup is joined through the host's cgroupfs, so before entering
    // the jail's mount namespace; the mount namespace goes last because
    // after it no host path is reachable.
    join_cgroup(report, join.cgroup_procs);
    for (i, (fd, flag, _)) in join.namespaces.iter().enumerate() {
        if let Err(e) = nix::sched::setns(fd, *flag) {
            fail(report, Stage::Setns, i, e);
        }
        // In the jail's user namespace (joined first) become its root.
        if *flag == CloneFlags::CLONE_NEWUSER
            && let Err(e) = become_namespace_root()
        {
            fail(report, Stage::UserNs, i, e);
        }
    }
    // Nothing of the caller's but the standard streams and the report
    // pipe (moved to fd 3) reaches the jail: its other descriptors (the
    // namespace files included, used above) are closed.
    // SAFETY: F_DUPFD_CLOEXEC only creates a descriptor.
    let high = unsafe { libc::fcntl(report, libc::F_DUPFD_CLOEXEC, 10) };
    if high < 0 {
        fail(report, Stage::Session, 0, Errno::last());
    }
    let report = move_fd(high, 3, high);
    // SAFETY: close_range only closes descriptors; none above 3 is used again.
    unsafe { libc::syscall(libc::SYS_close_range, 4u32, u32::MAX, 0u32) };
    // Entering a PID namespace applies to children only: fork once more.
    // SAFETY: the child only makes system calls before exec.
    let child = match unsafe { nix::unistd::fork() } {
        Ok(ForkResult::Child) => {
            if let Err(e) = nix::unistd::chdir(c"/") {
                fail(report, Stage::Setns, join.namespaces.len(), e);
            }
            become_command(
                report,
                join.command,
                join.seccomp,
                Some(join.oom_score_adj),
                join.tty.is_some(),
            )
        }
        Ok(ForkResult::Parent { child }) => child,
        Err(e) => fail(report, Stage::Fork, 0, e),
    };
    // SAFETY: closes our copy of the report pipe, once.
    unsafe { libc::close(report) };
    match wait_code(child) {
        Ok(code) => exit(code),
        Err(_) => exit(1),
    }
}

/// Runs a command inside a running jail with the caller's stdio; returns
/// its status (exit code, or 128 + signal).
pub(crate) fn join(join: &Join<'_>) -> Result<i32, JailError> {
    let program = join.command.program();
    let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(JailError::sys("pipe", &program))?;
    let parent = nix::unistd::getpid();
    // SAFETY: the child runs `joiner`, which only makes system calls on data
    // prepared before the fork and never returns.
    let child = match unsafe { nix::unistd::fork() } {
        Ok(ForkResult::Child) => joiner(join, w.as_raw_fd(), parent),
        Ok(ForkResult::Parent { child }) => child,
        Err(e) => return Err(JailError::sys("fork", &program)(e)),
    };
    drop(w);
    let mut rep = Report::default();
    read_report(&r, &mut rep, |_| false);
    let status = wait_code(child).map_err(JailError::sys("wait", &program));
    if let Some((stage, index, errno)) = rep.error {
        let (step, path) = match stage {
            Stage::Setns => (
                "setns",
                join.namespaces
                    .get(index)
                    .map(|n| n.2.clone())
                    .unwrap_or_else(|| "/".into()),
            ),
            Stage::Cgroup => (
                "join cgroup",
                join.cgroup_procs
                    .get(index)
                    .map(|c| PathBuf::from(std::ffi::OsStr::from_bytes(c.as_bytes())))
                    .unwrap_or_default(),
            ),
            Stage::Capabilities => ("drop capabilities", program),
            Stage::Seccomp => ("install seccomp filter", program),
            _ => ("exec", program),
        };
        return Err(JailError::Setup {
            step,
            path,
            source: errno,
        });
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_names_are_searched_on_the_jail_path() {
        let p = ExecPlan::new(
            &["sh".into(), "-c".into(), "true".into()],
            &[("PATH", JAIL_PATH)],
        )
        .unwrap();
        assert_eq!(p.candidates.len(), 6);
        assert_eq!(p.candidates[5].to_str().unwrap(), "/bin/sh");
        assert_eq!(p.argv_ptrs.len(), 4);
        assert!(p.argv_ptrs[3].is_null() && p.envp_ptrs[1].is_null());
        let p = ExecPlan::new(&["/bin/true".into()], &[]).unwrap();
        assert_eq!(p.candidates.len(), 1);
        assert!(ExecPlan::new(&[], &[]).is_err());
        assert!(ExecPlan::new(&["a\0b".into()], &[]).is_err());
    }

    #[test]
    fn stage_codes_round_trip() {
        for s in [Stage::Cgroup, Stage::Root, Stage::Exec, Stage::Session] {
            assert_eq!(Stage::from_u32(s as u32), Some(s));
        }
        assert_eq!(Stage::from_u32(0), None);
    }
}
