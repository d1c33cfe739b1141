//! The child side of a start and a join: what runs after `clone`/`fork`
//! in a copy of a possibly multi-threaded caller. Nothing here allocates,
//! logs or takes a lock (see the module docs of [`super`]); a test binary
//! with an allocator that refuses forked children holds it to that.
//! It stays one file (some 500 lines) so that every step that must not
//! allocate can be reviewed together.

use std::ffi::CString;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;

use nix::errno::Errno;
use nix::sched::CloneFlags;
use nix::unistd::{ForkResult, Pid};

use stockade_init::{FILTER_FD, LOG_FD, MSG_PID, MSG_USERNS, REPORT_FD, Stage, exit, send};

use super::protocol::{MAX_GO_FDS, fail, wait_code, wait_go};
use super::{ExecPlan, JOIN_PROGRAM_FD, Join, JoinStdio, LOWER_FD, Launch, PROGRAM_FD, Stdio};

/// Writes "0" (the writer itself) into each membership file of the jail's
/// cgroup (`tasks` on v1, `cgroup.procs` on v2), opened here.
pub(super) fn join_cgroup(report: RawFd, files: &[CString]) {
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
pub(super) fn join_through(report: RawFd, fd: RawFd, index: usize) {
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
pub(super) fn loopback_up() -> Result<(), Errno> {
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
pub(super) fn become_command(
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
pub(super) fn write_proc_file(path: &std::ffi::CStr, value: &[u8]) {
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

/// After entering a user namespace whose ids are mapped: become its root
/// (uid and gid 0 inside, no supplementary groups).
///
/// Raw system calls, not libc's wrappers: those change the ids of every
/// thread libc knows of, signalling each and waiting for its answer. A
/// process made by a bare `clone3` is one thread, but libc still lists the
/// caller's other threads, and would wait for them forever.
pub(super) fn become_namespace_root() -> Result<(), Errno> {
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
pub(super) fn init(launch: &Launch<'_>, report: RawFd, go: RawFd) -> ! {
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

/// The namespaces the launcher makes for the jail; its cgroup namespace
/// is made by the init once the engine has moved it into its cgroup.
pub(super) fn jail_namespaces() -> CloneFlags {
    CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWNET
        | CloneFlags::CLONE_NEWPID
}

/// What [`clone_into`] made.
pub(super) enum Cloned {
    /// In the child.
    Child,
    /// In the caller, with the child's pid.
    Parent(Pid),
}

/// Forks straight into new namespaces (`clone3` without a stack behaves as
/// `fork`): the child needs no process in between to unshare them.
/// `ENOSYS` on kernels before 5.3.
pub(super) fn clone_into(namespaces: CloneFlags) -> Result<Cloned, Errno> {
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
pub(super) fn move_fd(fd: RawFd, target: RawFd, report: RawFd) -> RawFd {
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
pub(super) fn first_steps(
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
pub(super) fn enter_user_namespace(report: RawFd, go: RawFd) {
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
pub(super) fn direct_init(launch: &Launch<'_>, report: RawFd, go: RawFd) -> ! {
    let (report, go) = first_steps(launch, report, go, None);
    if launch.user_namespace {
        enter_user_namespace(report, go);
    }
    init(launch, report, go)
}

pub(super) fn launcher(launch: &Launch<'_>, report: RawFd, go: RawFd, parent: Pid) -> ! {
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

pub(super) fn joiner(join: &Join<'_>, report: RawFd, parent: Pid) -> ! {
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
    match &join.stdio {
        JoinStdio::Caller => {}
        JoinStdio::Terminal(tty) => {
            // SAFETY: duplicates an fd owned by `join` onto 0, 1 and 2.
            unsafe {
                libc::dup2(tty.as_raw_fd(), 0);
                libc::dup2(tty.as_raw_fd(), 1);
                libc::dup2(tty.as_raw_fd(), 2);
            }
        }
        JoinStdio::Streams(streams) => {
            // Each moved above 2 first, so none is overwritten before its
            // turn (the caller's may sit on 0-2 themselves).
            let mut high = [0; 3];
            for (i, fd) in streams.iter().enumerate() {
                // SAFETY: F_DUPFD_CLOEXEC only creates a descriptor.
                high[i] = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 10) };
                if high[i] < 0 {
                    fail(report, Stage::Session, 0, Errno::last());
                }
            }
            for (target, fd) in (0..).zip(high) {
                // SAFETY: dup2 onto 0-2 (not close-on-exec), replacing them.
                if unsafe { libc::dup2(fd, target) } < 0 {
                    fail(report, Stage::Session, 0, Errno::last());
                }
            }
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
    // A program to exec from a descriptor goes to 4, out of the way too.
    let first_closed: u32 = match join.program {
        Some(fd) => {
            move_fd(fd, JOIN_PROGRAM_FD, report);
            5
        }
        None => 4,
    };
    // SAFETY: close_range only closes descriptors; none of them is used again.
    unsafe { libc::syscall(libc::SYS_close_range, first_closed, u32::MAX, 0u32) };
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
                matches!(join.stdio, JoinStdio::Terminal(_)),
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
