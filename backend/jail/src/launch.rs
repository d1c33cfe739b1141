//! Starting processes inside jails: the launcher, the jail's first process
//! (which becomes its init, PID 1, by exec'ing the `stockade-init`
//! program), and joining a running jail for `exec`.
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
//! engine ──fork──▶ launcher ──fork──▶ PID 1 in the jail ──exec──▶ stockade-init ──spawn──▶ command
//!                  unshares the       mounts the root, pivots,     starts the command,    drops capabilities,
//!                  namespaces         enters its cgroup namespace  reaps, forwards         filter, execs
//!                                                                  signals, keeps the log
//! ```
//!
//! The init program is embedded in the engine, written once per node (see
//! [`init_program`]) and exec'd from a descriptor opened before the jail's
//! root was entered, so nothing of the engine's memory or descriptors stays
//! in a jail, and a jail's `/proc/1/exe` is never the node's `stockade`
//! binary nor a file the jail could change.
//!
//! Meanwhile the engine creates the jail's cgroup and writes its limits
//! (and connects its network): the host side and the jail side of the
//! start-up run at the same time, on different cores. The engine's go-ahead
//! carries descriptors of the group's membership files, opened by the
//! engine; the init writes itself into them before it starts the command,
//! so the command and everything it forks are inside the cgroup from their
//! first instruction.
//!
//! A process that moves itself alone (`0` into a v1 hierarchy's `tasks`)
//! spares the kernel a whole-system lock that moving a process by pid takes
//! (`cgroup.procs`): that lock waits for an RCU grace period, measured at
//! 7 to 11 ms here, the largest single cost of a start. The init is one
//! thread then, so moving the thread moves the process. The kernel checks
//! the opener's credentials (the engine's), so the init may write them from
//! inside its user namespace.
//!
//! A started jail's launcher calls `setsid` and exits at once, so the init is
//! reparented away from the caller: the jail outlives the agent or CLI that
//! started it. For `run` the launcher instead waits for the init and exits
//! with its status, and both die with their parent (`libc::PR_SET_PDEATHSIG`).

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sched::CloneFlags;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid};

pub(crate) use stockade_init::JAIL_PATH;
use stockade_init::{
    FILTER_FD, LOG_FD, MSG_ERROR, MSG_PID, MSG_USERNS, REPORT_FD, Stage, exit, send,
};

use crate::error::JailError;
use crate::rootfs::Step;

/// Where the init program's descriptor is put before it is exec'd.
const PROGRAM_FD: RawFd = 6;

/// Where a jail with a user namespace keeps the id-mapped image the engine
/// sends it, until its root is assembled (see [`crate::rootfs::Lower`]).
pub(crate) const LOWER_FD: RawFd = 8;


/// A command ready to exec: candidates from the jail's PATH, argv and envp
/// as NUL-terminated arrays, all allocated before any fork.
#[derive(Debug)]
pub(crate) struct ExecPlan {
    candidates: Vec<CString>,
    argv: Vec<CString>,
    envp: Vec<CString>,
    argv_ptrs: Vec<*const libc::c_char>,
    envp_ptrs: Vec<*const libc::c_char>,
    candidate_ptrs: Vec<*const libc::c_char>,
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
            candidate_ptrs: candidates.iter().map(|c| c.as_ptr()).collect(),
            candidates,
            argv,
            envp,
            argv_ptrs,
            envp_ptrs,
        })
    }

    /// The init program's arguments and environment for this command: a
    /// started jail's log limit, whether the command gets a terminal, then
    /// the command itself; its environment is the command's.
    pub fn for_init(&self, log_limit: Option<u64>, tty: bool) -> InitPlan {
        let mut argv = vec![c"stockade-init".to_owned()];
        if let Some(limit) = log_limit {
            argv.push(c"--log".to_owned());
            argv.push(CString::new(limit.to_string()).unwrap_or_default());
        }
        if tty {
            argv.push(c"--tty".to_owned());
        }
        argv.push(c"--".to_owned());
        argv.extend(self.argv.iter().cloned());
        let argv_ptrs = argv
            .iter()
            .map(|a| a.as_ptr())
            .chain([std::ptr::null()])
            .collect();
        InitPlan {
            argv,
            argv_ptrs,
            envp_ptrs: self.envp_ptrs.clone(),
        }
    }

    /// The program as the user gave it, for error messages.
    pub fn program(&self) -> PathBuf {
        PathBuf::from(std::ffi::OsStr::from_bytes(self.argv[0].as_bytes()))
    }

    /// Tries each candidate; returns only on failure, with the most telling
    /// errno (a permission problem beats "not found" on another PATH entry).
    fn exec(&self) -> Errno {
        let _ = (&self.candidates, &self.envp);
        // SAFETY: the plan holds NUL-terminated strings and NULL-terminated
        // arrays of them, alive for the call.
        Errno::from_raw(unsafe {
            stockade_init::exec_first(
                &self.candidate_ptrs,
                self.argv_ptrs.as_ptr(),
                self.envp_ptrs.as_ptr(),
            )
        })
    }
}

/// Reports a failure and ends the child without running any exit handlers.
fn fail(fd: RawFd, stage: Stage, index: usize, errno: Errno) -> ! {
    stockade_init::fail(fd, stage, index, errno as i32)
}

/// The init program's argv (NUL-terminated) and the command's environment,
/// prepared before any fork.
#[derive(Debug)]
pub(crate) struct InitPlan {
    argv: Vec<CString>,
    argv_ptrs: Vec<*const libc::c_char>,
    envp_ptrs: Vec<*const libc::c_char>,
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

/// Writes "0" (the writer itself) into each membership file of the jail's
/// cgroup (`tasks` on v1, `cgroup.procs` on v2), opened here.
fn join_cgroup(report: RawFd, files: &[CString]) {
    for (i, file) in files.iter().enumerate() {
        // SAFETY: `file` is NUL-terminated; the fd is closed below.
        let fd = unsafe { libc::open(file.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
        if fd < 0 {
            fail(report, Stage::Cgroup, i, Errno::last());
        }
        join_through(report, fd, i);
    }
}

/// Writes "0" into an open membership file, then closes it.
fn join_through(report: RawFd, fd: RawFd, index: usize) {
    // SAFETY: writes one byte from a static buffer to an fd this process
    // owns.
    let n = unsafe { libc::write(fd, c"0".as_ptr().cast(), 1) };
    let err = Errno::last();
    // SAFETY: closes that fd, once.
    unsafe { libc::close(fd) };
    if n != 1 {
        fail(report, Stage::Cgroup, index, err);
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
        let mut r = libc::ioctl(sock, libc::SIOCGIFFLAGS, &raw mut req);
        if r == 0 {
            req.flags |= libc::c_short::try_from(libc::IFF_UP).unwrap_or(1);
            r = libc::ioctl(sock, libc::SIOCSIFFLAGS, &raw const req);
        }
        r
    };
    let err = Errno::last();
    // SAFETY: closes the socket opened above, once.
    unsafe { libc::close(sock) };
    if r < 0 { Err(err) } else { Ok(()) }
}

/// Becomes a command run in a running jail (`exec`): ends in execve with
/// the jail's capability limits and filter, in a session of its own.
fn become_command(
    report: RawFd,
    command: &ExecPlan,
    seccomp: &[libc::sock_filter],
    oom_score_adj: &[u8],
    tty: bool,
) -> ! {
    stockade_init::reset_signals();
    if let Err((i, e)) = stockade_init::new_session(tty) {
        fail(report, Stage::Session, i, Errno::from_raw(e));
    }
    write_proc_file(c"/proc/self/oom_score_adj", oom_score_adj);
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    // The engine's process may have raised its open-file limit for the
    // usage reader; the jail's command gets the limit it would have had.
    crate::usage::restore_open_file_limit();
    if let Err(e) = stockade_init::drop_capabilities() {
        fail(report, Stage::Capabilities, 0, Errno::from_raw(e));
    }
    if let Err((i, e)) = stockade_init::lock_down(seccomp) {
        fail(report, Stage::Seccomp, i, Errno::from_raw(e));
    }
    let e = command.exec();
    fail(report, Stage::Exec, 0, e)
}

/// Writes `value` to a small file such as `/proc/self/oom_score_adj`.
fn write_proc_file(path: &std::ffi::CStr, value: &[u8]) {
    // SAFETY: `path` is NUL-terminated; the fd is closed below.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
    if fd >= 0 {
        // SAFETY: writes from a live slice to the fd opened above, then
        // closes it, once.
        unsafe {
            libc::write(fd, value.as_ptr().cast(), value.len());
            libc::close(fd);
        }
    }
}

/// Most descriptors a go-ahead carries: one per cgroup hierarchy.
const MAX_GO_FDS: usize = 8;

/// Control-message space for [`MAX_GO_FDS`] descriptors, aligned as
/// `struct cmsghdr` needs.
#[repr(C, align(8))]
struct GoControl([u8; 64]);

/// Waits for the engine's go-ahead byte and takes the descriptors sent with
/// it into `fds` (close-on-exec); `None` if the engine gave up.
fn wait_go(go: RawFd, fds: &mut [RawFd; MAX_GO_FDS]) -> Option<usize> {
    let mut byte = [0u8; 1];
    let mut control = GoControl([0; 64]);
    loop {
        let mut iov = libc::iovec {
            iov_base: byte.as_mut_ptr().cast(),
            iov_len: 1,
        };
        // SAFETY: an all-zero msghdr is valid (no name, no buffers).
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &raw mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.0.as_mut_ptr().cast();
        msg.msg_controllen = control.0.len();
        // SAFETY: recvmsg fills the live stack buffers `msg` points to.
        let n = unsafe { libc::recvmsg(go, &raw mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n < 0 && Errno::last() == Errno::EINTR {
            continue;
        }
        if n != 1 {
            return None;
        }
        let mut count = 0;
        // SAFETY: the CMSG_* helpers walk the control buffer the kernel
        // filled, within the length it set; descriptor data is read
        // unaligned from there.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&raw const msg);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                    let data = libc::CMSG_DATA(c).cast::<RawFd>();
                    let len = (*c).cmsg_len - libc::CMSG_LEN(0) as usize;
                    for i in 0..len / std::mem::size_of::<RawFd>() {
                        if count < MAX_GO_FDS {
                            fds[count] = data.add(i).read_unaligned();
                            count += 1;
                        }
                    }
                }
                c = libc::CMSG_NXTHDR(&raw const msg, c);
            }
        }
        return Some(count);
    }
}

/// Sends the go-ahead byte with `fds`.
fn send_go(go: &OwnedFd, fds: &[OwnedFd]) -> Result<(), Errno> {
    let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let mut byte = [1u8; 1];
    let mut control = GoControl([0; 64]);
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    // SAFETY: an all-zero msghdr is valid (no name, no buffers).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    if !raw.is_empty() {
        let bytes = std::mem::size_of_val(raw.as_slice());
        let bytes = u32::try_from(bytes).map_err(|_| Errno::EINVAL)?;
        // SAFETY: CMSG_SPACE is arithmetic on a length.
        let space = unsafe { libc::CMSG_SPACE(bytes) } as usize;
        if raw.len() > MAX_GO_FDS || space > control.0.len() {
            return Err(Errno::EINVAL);
        }
        msg.msg_control = control.0.as_mut_ptr().cast();
        msg.msg_controllen = space;
        // SAFETY: the first header lies inside `control`, which has room
        // for the header and the descriptors (checked above); the data is
        // written unaligned.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&raw const msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(bytes) as usize;
            std::ptr::copy_nonoverlapping(
                raw.as_ptr().cast::<u8>(),
                libc::CMSG_DATA(c),
                bytes as usize,
            );
        }
    }
    loop {
        // SAFETY: sendmsg reads the live buffers `msg` points to.
        let n = unsafe { libc::sendmsg(go.as_raw_fd(), &raw const msg, libc::MSG_NOSIGNAL) };
        if n == 1 {
            return Ok(());
        }
        let e = Errno::last();
        if n < 0 && e != Errno::EINTR {
            return Err(e);
        }
    }
}

/// After entering a user namespace whose ids are mapped: become its root
/// (uid and gid 0 inside, no supplementary groups).
///
/// Raw system calls, not libc's wrappers: those change the ids of every
/// thread libc knows of, signalling each and waiting for its answer. A
/// process made by a bare `clone3` is one thread, but libc still lists the
/// caller's other threads, and would wait for them forever.
fn become_namespace_root() -> Result<(), Errno> {
    let ok = |r: libc::c_long| if r == 0 { Ok(()) } else { Err(Errno::last()) };
    // SAFETY: takes integers; changes the calling thread's (the process's)
    // group ids.
    ok(unsafe { libc::syscall(libc::SYS_setresgid, 0, 0, 0) })?;
    // SAFETY: an empty list: a length of 0 and no pointer read.
    ok(unsafe { libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()) })?;
    // SAFETY: takes integers; changes the calling thread's user ids.
    ok(unsafe { libc::syscall(libc::SYS_setresuid, 0, 0, 0) })
}

/// The jail's first process (PID 1 of its PID namespace): sets up the
/// root, waits for the engine's go-ahead, then execs the init program,
/// which starts the command.
fn init(launch: &Launch<'_>, report: RawFd, go: RawFd) -> ! {
    // Order: hostname and loopback need only the new namespaces; the root
    // setup comes before the command starts, so it starts inside it.
    if let Err(e) =
        nix::unistd::sethostname(std::ffi::OsStr::from_bytes(launch.hostname.as_bytes()))
    {
        fail(report, Stage::Hostname, 0, e);
    }
    if let Err(e) = loopback_up() {
        fail(report, Stage::Loopback, 0, e);
    }
    // Exact modes for /dev nodes and /tmp; the command gets 022 back.
    nix::sys::stat::umask(nix::sys::stat::Mode::empty());
    for (i, step) in launch.steps.iter().enumerate() {
        if let Err(e) = step.run() {
            fail(report, Stage::Root, i, e);
        }
    }
    // The engine makes the jail's cgroup and connects its network
    // meanwhile; the command starts only once it is done. No byte: the
    // engine failed (and says why).
    let mut fds = [-1; MAX_GO_FDS];
    let go_on = wait_go(go, &mut fds);
    // SAFETY: closes the go channel, once; the init must not inherit it.
    unsafe { libc::close(go) };
    let Some(count) = go_on else { exit(1) };
    // Into the jail's cgroup, through the files the engine opened.
    for (i, fd) in fds[..count].iter().enumerate() {
        join_through(report, *fd, i);
    }
    // Our cgroup becomes the root of what the jail sees of cgroups.
    if let Err(e) = nix::sched::unshare(CloneFlags::CLONE_NEWCGROUP) {
        fail(report, Stage::CgroupNs, 0, e);
    }
    // The engine's process may have raised its open-file limit for the
    // usage reader; the jail gets the limit it would have had.
    crate::usage::restore_open_file_limit();
    // The init program keeps the report pipe, the filter and a started
    // jail's log across the exec; nothing else of ours reaches it.
    // SAFETY: fcntl only changes descriptor flags.
    unsafe {
        libc::fcntl(REPORT_FD, libc::F_SETFD, 0);
        libc::fcntl(FILTER_FD, libc::F_SETFD, 0);
        if matches!(launch.stdio, Stdio::Detached { .. }) {
            libc::fcntl(LOG_FD, libc::F_SETFD, 0);
        }
    }
    let plan = launch.init;
    let _ = &plan.argv;
    // SAFETY: execveat with an empty path runs the program behind
    // PROGRAM_FD (AT_EMPTY_PATH), with NULL-terminated arrays alive for the
    // call; on success it does not return.
    unsafe {
        libc::syscall(
            libc::SYS_execveat,
            PROGRAM_FD,
            c"".as_ptr(),
            plan.argv_ptrs.as_ptr(),
            plan.envp_ptrs.as_ptr(),
            libc::AT_EMPTY_PATH,
        )
    };
    fail(report, Stage::Init, 0, Errno::last())
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
    pub fn tty(&self) -> bool {
        matches!(self, Stdio::Inherit { tty: Some(_) })
    }
}

/// Everything the launcher and the init need, prepared before forking.
#[derive(Debug)]
pub(crate) struct Launch<'a> {
    pub hostname: CString,
    pub steps: &'a [Step],
    pub command: &'a ExecPlan,
    /// The init program's arguments and the command's environment.
    pub init: &'a InitPlan,
    /// The init program (see [`init_program`]) and the system call
    /// filter for the command (raw instructions), both owned by the engine.
    pub program: RawFd,
    pub filter: RawFd,
    /// Whether the jail gets a user namespace of its own.
    pub user_namespace: bool,
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
    let args = libc::clone_args {
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
            std::mem::size_of::<libc::clone_args>(),
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
    stockade_init::reset_signals();
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
            // SAFETY: libc::PR_SET_PDEATHSIG takes a signal number and no pointers.
            unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
            if parent.is_some_and(|p| nix::unistd::getppid() != p) {
                exit(1);
            }
        }
    }
    // The caller's descriptors (an agent's sockets, other jails' files)
    // must not reach the jail: keep 0-2, the report pipe (fd 3), the go
    // pipe (fd 4), a started jail's log (fd 5), the init program (fd 6) and
    // the system call filter (fd 7), close the rest. All are first lifted
    // above 10 so no move overwrites another.
    let keep = [
        (report, REPORT_FD),
        (go, 4),
        (log, LOG_FD),
        (launch.program, PROGRAM_FD),
        (launch.filter, FILTER_FD),
    ];
    let mut high = [-1; 5];
    for (i, (fd, _)) in keep.iter().enumerate() {
        if *fd >= 0 {
            // SAFETY: F_DUPFD_CLOEXEC only creates a descriptor.
            high[i] = unsafe { libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 10) };
            if high[i] < 0 {
                fail(report, Stage::Session, 0, Errno::last());
            }
        }
    }
    let mut report = report;
    for (i, (_, target)) in keep.iter().enumerate() {
        if high[i] >= 0 {
            move_fd(high[i], *target, report);
            if i == 0 {
                report = REPORT_FD;
            }
        } else {
            // SAFETY: closes what may be at an unused number.
            unsafe { libc::close(*target) };
        }
    }
    // SAFETY: close_range only closes descriptors; none above the filter's
    // is used again.
    unsafe { libc::syscall(libc::SYS_close_range, 8u32, u32::MAX, 0u32) };
    (REPORT_FD, 4)
}

/// In a new user namespace: waits for the engine to map its ids and to
/// send the id-mapped image (kept at [`LOWER_FD`]), then becomes its root.
fn enter_user_namespace(report: RawFd, go: RawFd) {
    send(report, MSG_USERNS, 0, 0, 0);
    let mut fds = [-1; MAX_GO_FDS];
    match wait_go(go, &mut fds) {
        Some(0) => {}
        Some(1) if fds[0] == LOWER_FD => {}
        Some(1) => {
            move_fd(fds[0], LOWER_FD, report);
            // SAFETY: closes the received descriptor, now kept at LOWER_FD.
            unsafe { libc::close(fds[0]) };
        }
        _ => exit(1),
    }
    if let Err(e) = become_namespace_root() {
        fail(report, Stage::UserNs, 1, e);
    }
}

/// A `run` jail's init made straight into the jail's namespaces (its user
/// namespace included) by `clone3`: no launcher in between.
fn direct_init(launch: &Launch<'_>, report: RawFd, go: RawFd) -> ! {
    let (report, go) = first_steps(launch, report, go, None);
    if launch.user_namespace {
        enter_user_namespace(report, go);
    }
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
                unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
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
            Stage::Init => ("start the jail's init", self.command.program()),
            Stage::Loopback => ("loopback up", PathBuf::from("lo")),
            Stage::Cgroup => ("join cgroup", self.rootfs.to_owned()),
            Stage::Fork | Stage::Setns | Stage::Session => ("fork", self.rootfs.to_owned()),
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
    /// With the pid of the jail's first process, once it is in its new user
    /// namespace: map its ids. Returns what is sent to it: the image
    /// id-mapped for it.
    pub on_userns: &'h mut dyn FnMut(i32) -> Result<Vec<OwnedFd>, JailError>,
    /// With the init's host pid once the jail's namespaces exist, while the
    /// init mounts the root and before its command starts: make the jail's
    /// cgroup and connect its network. Returns the group's membership files,
    /// opened for writing, which the init writes itself into.
    pub on_init: &'h mut dyn FnMut(i32) -> Result<Vec<OwnedFd>, JailError>,
}

/// Launches a jail; for [`Stdio::Inherit`] waits for it to end. If a hook
/// fails, the jail ends before running anything and the hook's error is
/// returned.
pub(crate) fn launch(launch: &Launch<'_>, hooks: Hooks<'_>) -> Result<Outcome, JailError> {
    let (r, w) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(JailError::sys("pipe", launch.rootfs))?;
    // The go-ahead carries descriptors: a socket pair, one message each.
    let (go_w, go_r) = nix::sys::socket::socketpair(
        nix::sys::socket::AddressFamily::Unix,
        nix::sys::socket::SockType::SeqPacket,
        None,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
    )
    .map_err(JailError::sys("socketpair", launch.rootfs))?;
    let parent = nix::unistd::getpid();
    let mut rep = Report::default();
    // A `run` jail's init is made straight in its namespaces. A started
    // jail's goes through a launcher that exits, so that the init is not
    // the caller's child and outlives it.
    let mut direct = None;
    if matches!(launch.stdio, Stdio::Inherit { .. }) {
        let mut namespaces = jail_namespaces();
        if launch.user_namespace {
            namespaces |= CloneFlags::CLONE_NEWUSER;
        }
        match clone_into(namespaces) {
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
        // A launcher unshares its user namespace after the fork: wait for
        // it. A process cloned into one is in it already.
        if direct.is_none() {
            read_report(&r, &mut rep, |rep| rep.userns || rep.error.is_some());
        }
        if direct.is_some() || (rep.userns && rep.error.is_none()) {
            setup = (hooks.on_userns)(child.as_raw()).and_then(|fds| {
                send_go(&go_w, &fds).map_err(JailError::sys("send go-ahead", launch.rootfs))
            });
        }
    }
    if setup.is_ok() {
        read_report(&r, &mut rep, |rep| rep.pid.is_some() || rep.error.is_some());
        if let (Some(pid), None) = (rep.pid, rep.error) {
            setup = (hooks.on_init)(pid).and_then(|files| {
                send_go(&go_w, &files).map_err(JailError::sys("send go-ahead", launch.rootfs))
            });
        }
    }
    // Without the byte the init exits before running anything.
    drop(go_w);
    read_report(&r, &mut rep, |_| false);
    let detached = matches!(launch.stdio, Stdio::Detached { .. });
    let status = wait_code(child).map_err(JailError::sys("wait", launch.rootfs));
    let failed = rep.error.is_some() || setup.is_err();
    if let (true, true, Some(pid)) = (failed, detached, rep.pid) {
        end_failed_init(pid);
    }
    // What the jail reported comes first: a hook may have failed only
    // because the jail's process had already ended.
    if let Some((stage, index, errno)) = rep.error {
        return Err(launch.error(stage, index, errno));
    }
    setup?;
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

/// Ends and reaps the init of a start that failed. Its launcher has exited,
/// so the init is now the child of the nearest subreaper: when that is this
/// process (an agent), nobody else would reap it and it would stay a zombie.
/// When it is not our child, it is left alone (its pid may be another's by
/// now).
fn end_failed_init(pid: i32) {
    let pid = Pid::from_raw(pid);
    let flags = WaitPidFlag::WNOHANG | WaitPidFlag::__WALL;
    if matches!(waitpid(pid, Some(flags)), Ok(WaitStatus::StillAlive)) {
        // Our child, still running: it exits at its next step anyway (its
        // go-ahead never comes); do not wait for that.
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        let _ = wait_code(pid);
    }
}

/// A running jail's namespaces and cgroup, to run one more command in.
#[derive(Debug)]
pub(crate) struct Join<'a> {
    /// Opened `/proc/<init>/ns/*` files, the user namespace (if any) first,
    /// the mount namespace last.
    pub namespaces: Vec<(OwnedFd, CloneFlags, PathBuf)>,
    /// The cgroup's membership files (see [`crate::cgroup::Cgroups::join_files`]).
    pub cgroup_files: &'a [CString],
    pub command: &'a ExecPlan,
    pub seccomp: &'a [libc::sock_filter],
    /// The value the command's `oom_score_adj` gets (as the jail's own).
    pub oom_score_adj: &'static [u8],
    /// A terminal made for the command (its slave end), instead of the
    /// caller's streams.
    pub tty: Option<OwnedFd>,
}

fn joiner(join: &Join<'_>, report: RawFd, parent: Pid) -> ! {
    stockade_init::reset_signals();
    // Not traceable from inside the jail until the command's exec (see
    // `first_steps`).
    // SAFETY: prctl with integer arguments only.
    unsafe {
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
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
    join_cgroup(report, join.cgroup_files);
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
                join.oom_score_adj,
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
                join.cgroup_files
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

/// The jail's init program, built for this node's architecture and
/// linked statically (see the crate's build script).
static INIT_PROGRAM: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/stockade-init"));

/// A name of the init program's content (its FNV-1a hash, from the build
/// script): a new version gets a file of its own.
const INIT_NAME: &str = concat!("stockade-init-", env!("STOCKADE_INIT_HASH"));

/// The init program, opened for every jail's first process to exec.
///
/// One file for the node, `<state>/init/stockade-init-<hash>`: every jail
/// maps the same pages, and starting one copies nothing. It is root's and
/// read-only (`r-x` for all: a jail's unprivileged root runs it) in a
/// folder only root may enter, and no jail can reach it to
/// change what other jails run (the runc CVE-2019-5736 class): after
/// `pivot_root` no path leads to it; `/proc/1/exe` is closed to the jail
/// (its init is not dumpable, and no jail may trace); and the kernel
/// refuses writes to a program while it runs, which it does as long as the
/// jail has a process. Where the file cannot be written, a sealed
/// in-memory copy per engine is used instead.
pub(crate) fn init_program(state_dir: &Path) -> Result<OwnedFd, JailError> {
    match node_init_file(&state_dir.join("init")) {
        Ok(fd) => Ok(fd),
        Err(e) => {
            tracing::warn!(error = %e, "the node's init program file is unusable; using an in-memory copy");
            sealed_file(c"stockade-init", INIT_PROGRAM, true)
        }
    }
}

/// The node's init program file, opened, if it is as it must be: a
/// regular file of root's that anyone may run and nobody may write, of the
/// program's size.
fn open_init_file(path: &Path) -> Option<std::fs::File> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .ok()?;
    let meta = file.metadata().ok()?;
    let ok = meta.is_file()
        && meta.uid() == 0
        && meta.mode() & 0o7777 == 0o555
        && meta.len() == INIT_PROGRAM.len() as u64;
    ok.then_some(file)
}

/// Opens the node's init program file in `dir`, writing it first if this
/// version has none.
fn node_init_file(dir: &Path) -> Result<OwnedFd, JailError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let path = dir.join(INIT_NAME);
    if let Some(file) = open_init_file(&path) {
        return Ok(file.into());
    }
    std::fs::create_dir_all(dir).map_err(JailError::io("create", dir))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(JailError::io("chmod", dir))?;
    // Written in full and flushed under a name of its own, then renamed
    // into place: the file is never seen half-written, even after a crash.
    // Two engines doing this at once write the same bytes.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let tmp = dir.join(format!(".{INIT_NAME}.{}.{nanos}", std::process::id()));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o555)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)
        .and_then(|mut f| {
            std::io::Write::write_all(&mut f, INIT_PROGRAM)?;
            f.sync_all()
        })
        .and_then(|()| std::fs::rename(&tmp, &path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(JailError::io("write", &path)(e));
    }
    // Earlier versions' files go; jails still running one keep it (a
    // removed file lives on while it runs).
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = entry.file_name();
        if name.to_string_lossy().starts_with("stockade-init-") && name != INIT_NAME {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    open_init_file(&path)
        .map(OwnedFd::from)
        .ok_or_else(|| JailError::sys("check", &path)(Errno::EPERM))
}

/// The system call filter as a sealed in-memory file of raw instructions,
/// which every jail's init reads.
pub(crate) fn filter_file(program: &[libc::sock_filter]) -> Result<OwnedFd, JailError> {
    let bytes: Vec<u8> = program
        .iter()
        .flat_map(|i| {
            let mut r = [0u8; 8];
            r[0..2].copy_from_slice(&i.code.to_ne_bytes());
            r[2] = i.jt;
            r[3] = i.jf;
            r[4..8].copy_from_slice(&i.k.to_ne_bytes());
            r
        })
        .collect();
    sealed_file(c"stockade-filter", &bytes, false)
}

/// An in-memory file holding `bytes` that nobody can change any more
/// (write, grow, shrink and further seals refused).
fn sealed_file(name: &std::ffi::CStr, bytes: &[u8], exec: bool) -> Result<OwnedFd, JailError> {
    const MFD_NOEXEC_SEAL: libc::c_uint = 0x8;
    const MFD_EXEC: libc::c_uint = 0x10;
    let shown = || PathBuf::from(format!("memfd:{}", name.to_string_lossy()));
    let base = libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING;
    let mode = if exec { MFD_EXEC } else { MFD_NOEXEC_SEAL };
    // SAFETY: memfd_create reads a NUL-terminated name; the result is owned
    // at once. Kernels before 6.3 know neither mode flag (EINVAL): retry
    // without, as every memfd was executable there.
    let mut fd = unsafe { libc::memfd_create(name.as_ptr(), base | mode) };
    if fd < 0 && Errno::last() == Errno::EINVAL {
        // SAFETY: as above.
        fd = unsafe { libc::memfd_create(name.as_ptr(), base) };
    }
    if fd < 0 {
        return Err(JailError::sys("memfd_create", shown())(Errno::last()));
    }
    // SAFETY: `fd` was just created and is owned by nothing else.
    let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let mut file = std::fs::File::from(fd);
    std::io::Write::write_all(&mut file, bytes).map_err(JailError::io("write", shown()))?;
    let seals = libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
    nix::fcntl::fcntl(
        &file,
        nix::fcntl::FcntlArg::F_ADD_SEALS(nix::fcntl::SealFlag::from_bits_truncate(seals)),
    )
    .map_err(JailError::sys("seal", shown()))?;
    Ok(file.into())
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
