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

mod child;
mod plan;
mod program;
mod protocol;

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
use stockade_init::Stage;

use crate::error::JailError;
use crate::rootfs::Step;

use child::{Cloned, clone_into, direct_init, jail_namespaces, joiner, launcher};
pub(crate) use plan::{ExecPlan, Identity, InitPlan};
pub(crate) use program::{filter_file, init_program};
use protocol::{Report, read_report, send_go, wait_code};

/// Where the init program's descriptor is put before it is exec'd.
const PROGRAM_FD: RawFd = 6;

/// Where a jail with a user namespace keeps the id-mapped image the engine
/// sends it, until its root is assembled (see [`crate::rootfs::Lower`]).
pub(crate) const LOWER_FD: RawFd = 8;

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
            Stage::Identity => (
                "take the image's user or working folder for",
                self.command.program(),
            ),
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
    /// The command's standard streams.
    pub stdio: JoinStdio,
    /// A program to exec from this descriptor instead of looking the
    /// command up in the jail (the init program, serving SFTP).
    pub program: Option<RawFd>,
}

/// The standard streams of a command run in a running jail.
#[derive(Debug)]
pub(crate) enum JoinStdio {
    /// The caller's own.
    Caller,
    /// The slave end of a terminal made for the command, which becomes its
    /// controlling terminal.
    Terminal(OwnedFd),
    /// Three descriptors (pipes or sockets the caller relays) for its
    /// stdin, stdout and stderr, in a session of its own.
    Streams([OwnedFd; 3]),
}

/// Where the joiner puts [`Join::program`] before it closes the caller's
/// other descriptors.
const JOIN_PROGRAM_FD: RawFd = 4;

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
