//! `stockade-init`: PID 1 of every started or run jail.
//!
//! The engine sets up the jail's namespaces, root and cgroup, then execs
//! this small static program from a descriptor it opened before entering
//! the jail (the node's read-only copy of it), so the jail's PID 1 carries
//! nothing of the engine (no memory, no descriptors but the ones below) and
//! `/proc/1/exe` is never a host binary a jail could write to (the runc
//! CVE-2019-5736 class).
//!
//! It starts the command, forwards signals to it, reaps every zombie of
//! the jail, keeps a started jail's output in its bounded log, and exits
//! with the command's status (its exit code, or 128 + signal).
//!
//! Usage (by the engine only): `stockade-init [--log LIMIT] [--tty] -- CMD ARGS…`
//! with the command's environment as its own, and descriptors 0-2 (the
//! command's stdio), [`REPORT_FD`] (the engine's report pipe), [`FILTER_FD`]
//! (the system call filter) and, with `--log`, [`LOG_FD`] (the log file).
//! Run as `stockade-sftp` (argv[0]'s file name), it serves one SFTP session
//! on stdin and stdout instead, inside a running jail (see `sftp`).
//!
//! It is one file over 500 lines on purpose: PID 1 of every jail is the
//! program a security review reads first, and its whole life (start, signal
//! forwarding, reaping, log bounds, exit) reads best top to bottom.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;

mod sftp;

use stockade_init::{
    FILTER_FD, JAIL_PATH, LOG_FD, REPORT_FD, Stage, drop_capabilities, errno, exec_first, exit,
    fail, lock_down, new_session, reset_signals,
};

/// Signals the init passes on to the command.
const FORWARDED: [libc::c_int; 7] = [
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGWINCH,
];

/// What the engine asked for.
struct Options {
    log_limit: Option<u64>,
    tty: bool,
    cwd: Option<CString>,
    user: Option<(libc::uid_t, libc::gid_t)>,
    argv: Vec<CString>,
}

/// Arguments the engine never passes.
fn bad() -> ! {
    fail(REPORT_FD, Stage::Init, 0, libc::EINVAL)
}

fn options() -> Options {
    let mut args = std::env::args_os().skip(1);
    let mut opts = Options {
        log_limit: None,
        tty: false,
        cwd: None,
        user: None,
        argv: Vec::new(),
    };
    while let Some(a) = args.next() {
        match a.as_bytes() {
            b"--log" => {
                let n = args.next().unwrap_or_else(|| bad());
                let n = n.to_str().and_then(|n| n.parse().ok());
                opts.log_limit = Some(n.unwrap_or_else(|| bad()));
            }
            b"--tty" => opts.tty = true,
            b"--cwd" => {
                let dir = args.next().unwrap_or_else(|| bad());
                opts.cwd = Some(CString::new(dir.as_bytes()).unwrap_or_else(|_| bad()));
            }
            b"--user" => {
                let ids = args.next().unwrap_or_else(|| bad());
                let ids = ids
                    .to_str()
                    .and_then(|i| i.split_once(':'))
                    .and_then(|(u, g)| Some((u.parse().ok()?, g.parse().ok()?)));
                opts.user = Some(ids.unwrap_or_else(|| bad()));
            }
            b"--" => break,
            _ => bad(),
        }
    }
    opts.argv = args
        .map(|a| CString::new(a.as_bytes()).unwrap_or_else(|_| bad()))
        .collect();
    if opts.argv.is_empty() {
        bad();
    }
    opts
}

/// The filter the engine compiled: raw `sock_filter` records.
fn read_filter() -> Vec<libc::sock_filter> {
    let mut bytes = Vec::new();
    let mut buf = [0u8; 4096];
    // By offset: the descriptor's position is shared with the engine's.
    loop {
        let at = i64::try_from(bytes.len()).unwrap_or(i64::MAX);
        // SAFETY: reads into a live buffer of its length.
        let n = unsafe { libc::pread(FILTER_FD, buf.as_mut_ptr().cast(), buf.len(), at) };
        match usize::try_from(n) {
            Ok(0) => break,
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
            Err(_) if errno() == libc::EINTR => {}
            Err(_) => fail(REPORT_FD, Stage::Init, 1, errno()),
        }
    }
    // SAFETY: closes the filter's descriptor, once; it is read.
    unsafe { libc::close(FILTER_FD) };
    let size = std::mem::size_of::<libc::sock_filter>();
    if bytes.is_empty() || bytes.len() % size != 0 {
        fail(REPORT_FD, Stage::Init, 1, libc::EINVAL);
    }
    bytes
        .chunks_exact(size)
        .map(|r| libc::sock_filter {
            code: u16::from_ne_bytes([r[0], r[1]]),
            jt: r[2],
            jf: r[3],
            k: u32::from_ne_bytes([r[4], r[5], r[6], r[7]]),
        })
        .collect()
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

/// The command, ready to exec: everything allocated before it is spawned.
struct Command {
    /// Owns the strings `candidate_ptrs` point at.
    _candidates: Vec<CString>,
    candidate_ptrs: Vec<*const libc::c_char>,
    argv_ptrs: Vec<*const libc::c_char>,
    envp_ptrs: Vec<*const libc::c_char>,
    filter: Vec<libc::sock_filter>,
    oom_score_adj: &'static [u8],
    tty: bool,
    cwd: Option<CString>,
    user: Option<(libc::uid_t, libc::gid_t)>,
}

/// The command's process: runs on the init's memory until it execs, so it
/// only makes system calls on what `Command` holds.
fn become_command(c: &Command) -> ! {
    reset_signals();
    write_file(c"/proc/self/oom_score_adj", c.oom_score_adj);
    // SAFETY: umask cannot fail.
    unsafe { libc::umask(0o022) };
    if let Err((i, e)) = new_session(c.tty) {
        fail(REPORT_FD, Stage::Session, i, e);
    }
    if let Err(e) = drop_capabilities() {
        fail(REPORT_FD, Stage::Capabilities, 0, e);
    }
    // The image's user (kept capabilities include SETUID and SETGID);
    // becoming a user other than root clears the rest, as for any user.
    if let Some((uid, gid)) = c.user {
        // SAFETY: plain system calls on values; the group list is one id.
        let failed = unsafe {
            libc::setgroups(1, &gid) != 0 || libc::setgid(gid) != 0 || libc::setuid(uid) != 0
        };
        if failed {
            fail(REPORT_FD, Stage::Identity, 0, errno());
        }
    }
    if let Some(dir) = &c.cwd {
        // SAFETY: `dir` is NUL-terminated and alive until the exec.
        if unsafe { libc::chdir(dir.as_ptr()) } != 0 {
            fail(REPORT_FD, Stage::Identity, 1, errno());
        }
    }
    if let Err((i, e)) = lock_down(&c.filter) {
        fail(REPORT_FD, Stage::Seccomp, i, e);
    }
    // SAFETY: `Command` holds NUL-terminated strings and NULL-terminated
    // arrays of them, alive until the exec.
    let e = unsafe {
        exec_first(
            &c.candidate_ptrs,
            c.argv_ptrs.as_ptr(),
            c.envp_ptrs.as_ptr(),
        )
    };
    fail(REPORT_FD, Stage::Exec, 0, e)
}

extern "C" fn command_entry(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the `Command` of `spawn`'s caller, which is
    // suspended (CLONE_VFORK) and keeps it alive until this process execs
    // or exits, neither of which returns here.
    let c = unsafe { &*arg.cast::<Command>() };
    become_command(c)
}

/// Starts the command as `posix_spawn` does: the new process shares the
/// init's memory, on a stack of its own, until it execs, and the init
/// waits meanwhile.
fn spawn(c: &Command) -> Result<libc::pid_t, i32> {
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
        return Err(errno());
    }
    // SAFETY: the stack grows down from the end of the mapping made above;
    // `c` outlives the child's use of it (see `command_entry`). With
    // CLONE_VFORK this call returns once the child has exec'd or exited.
    let pid = unsafe {
        libc::clone(
            command_entry,
            stack.cast::<u8>().add(STACK).cast(),
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            std::ptr::from_ref(c).cast_mut().cast(),
        )
    };
    let err = errno();
    // SAFETY: unmaps the mapping made above; the child no longer runs on it.
    unsafe { libc::munmap(stack, STACK) };
    if pid < 0 { Err(err) } else { Ok(pid) }
}

extern "C" fn forward_marker(_: libc::c_int) {}

fn main() {
    if std::env::args_os()
        .next()
        .is_some_and(|a| std::path::Path::new(&a).file_name() == Some("stockade-sftp".as_ref()))
    {
        // Nothing else in the jail may read its memory or /proc/<pid>/exe.
        // SAFETY: prctl with integer arguments only.
        unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
        exit(sftp::run());
    }
    // Nothing in the jail may trace PID 1 or read its memory.
    // SAFETY: prctl with integer arguments only; fcntl sets descriptor flags.
    unsafe {
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
        for fd in [REPORT_FD, LOG_FD, FILTER_FD] {
            libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
        }
    }
    let opts = options();
    let filter = read_filter();
    // Keep the OOM killer off the init, or an OOM in the jail would end the
    // whole jail. Lowering needs CAP_SYS_RESOURCE on the host; without it
    // (a jail with a user namespace) the command is made the likelier victim.
    let protected = write_file(c"/proc/self/oom_score_adj", b"-1000");
    let candidates: Vec<CString> = if opts.argv[0].as_bytes().contains(&b'/') {
        vec![opts.argv[0].clone()]
    } else {
        JAIL_PATH
            .split(':')
            .map(|d| {
                let mut p = d.as_bytes().to_vec();
                p.push(b'/');
                p.extend_from_slice(opts.argv[0].as_bytes());
                CString::new(p).unwrap_or_default()
            })
            .collect()
    };
    let envp: Vec<CString> = std::env::vars_os()
        .filter_map(|(k, v)| {
            let mut kv = k.as_bytes().to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            CString::new(kv).ok()
        })
        .collect();
    let nul = |v: &[CString]| {
        v.iter()
            .map(|s| s.as_ptr())
            .chain([std::ptr::null()])
            .collect::<Vec<_>>()
    };
    let command = Command {
        candidate_ptrs: candidates.iter().map(|c| c.as_ptr()).collect(),
        _candidates: candidates,
        argv_ptrs: nul(&opts.argv),
        envp_ptrs: nul(&envp),
        filter,
        oom_score_adj: if protected { b"0" } else { b"500" },
        tty: opts.tty,
        cwd: opts.cwd.clone(),
        user: opts.user,
    };
    // Block the signals waited for *before* the command starts, so none is
    // lost. A handler (never run, the signals stay blocked) is installed
    // too: the kernel drops a signal to a namespace's init whose
    // disposition is SIG_DFL, so without one `stop`'s SIGTERM could not
    // reach the command.
    let mut waited = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigemptyset initialises the set; sigaddset and sigaction read
    // live values; the handler does nothing, so it is async-signal-safe.
    let waited = unsafe {
        libc::sigemptyset(waited.as_mut_ptr());
        libc::sigaddset(waited.as_mut_ptr(), libc::SIGCHLD);
        for s in FORWARDED {
            libc::sigaddset(waited.as_mut_ptr(), s);
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = forward_marker as *const () as usize;
            action.sa_flags = libc::SA_RESTART;
            libc::sigaction(s, &raw const action, std::ptr::null_mut());
        }
        libc::sigprocmask(libc::SIG_BLOCK, waited.as_ptr(), std::ptr::null_mut());
        waited.assume_init()
    };
    // A started jail's command writes into a pipe the init reads; only the
    // init writes the log, so the log never outgrows its limit whatever
    // the command prints.
    let mut console = opts.log_limit.map(Console::open);
    let child = match spawn(&command) {
        Ok(child) => child,
        Err(e) => fail(REPORT_FD, Stage::Fork, 0, e),
    };
    // SAFETY: closes our copy of the report pipe; the command's copy closes
    // at exec, which tells the engine the jail is up.
    unsafe { libc::close(REPORT_FD) };
    if let Some(ring) = &console {
        ring.after_spawn();
    }
    // SAFETY: signalfd reads the set; the set is blocked above.
    let signals = unsafe {
        libc::signalfd(
            -1,
            &raw const waited,
            libc::SFD_CLOEXEC | libc::SFD_NONBLOCK,
        )
    };
    if signals < 0 {
        fail(REPORT_FD, Stage::Init, 2, errno());
    }
    // Made at the first output: an idle jail's init keeps no buffer.
    let mut chunk = Vec::new();
    loop {
        let mut fds = [
            libc::pollfd {
                fd: signals,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: console.as_ref().map_or(-1, |c| c.pipe),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: polls two live pollfd records; a negative fd is skipped.
        if unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) } < 0 {
            continue;
        }
        if fds[1].revents != 0
            && let Some(ring) = console.as_mut()
            && !ring.pump(chunk_of(&mut chunk))
        {
            console = None;
        }
        if fds[0].revents == 0 {
            continue;
        }
        let mut info = std::mem::MaybeUninit::<libc::signalfd_siginfo>::uninit();
        let size = std::mem::size_of::<libc::signalfd_siginfo>();
        // SAFETY: reads at most one record into a buffer of its size.
        while unsafe { libc::read(signals, info.as_mut_ptr().cast(), size) }
            == isize::try_from(size).unwrap_or(0)
        {
            // SAFETY: the kernel filled the whole record.
            let signo = unsafe { info.assume_init_ref() }.ssi_signo;
            let signo = i32::try_from(signo).unwrap_or(0);
            if signo != libc::SIGCHLD {
                // SAFETY: kill takes integers only.
                unsafe { libc::kill(child, signo) };
            } else if let Some(code) = reap(child) {
                if let Some(ring) = console.as_mut() {
                    ring.pump(&mut chunk);
                }
                exit(code);
            }
        }
    }
}

/// The buffer console output is copied through, made on first use.
fn chunk_of(chunk: &mut Vec<u8>) -> &mut [u8] {
    if chunk.is_empty() {
        chunk.resize(64 << 10, 0);
    }
    chunk
}

/// Reaps every zombie of the jail; the command's status once it has ended.
fn reap(child: libc::pid_t) -> Option<i32> {
    let mut status = None;
    loop {
        let mut wstatus = 0;
        // SAFETY: waitpid writes the status into a live integer.
        let pid = unsafe { libc::waitpid(-1, &raw mut wstatus, libc::WNOHANG | libc::__WALL) };
        if pid > 0 {
            if pid == child {
                if libc::WIFEXITED(wstatus) {
                    status = Some(libc::WEXITSTATUS(wstatus));
                } else if libc::WIFSIGNALED(wstatus) {
                    status = Some(128 + libc::WTERMSIG(wstatus));
                }
            }
            continue;
        }
        if pid < 0 && errno() == libc::EINTR {
            continue;
        }
        return status;
    }
}

/// A started jail's output, as its init keeps it: the command's stdout and
/// stderr are a pipe, and the log file holds at most `limit` bytes, the
/// newest ones. When a write would pass the limit, the newest half of the
/// file is moved to its start and the rest cut off, so the log stays an
/// ordinary file in order, and copying costs at most what was written.
struct Console {
    /// The pipe's read end.
    pipe: libc::c_int,
    /// The log's current size.
    size: u64,
    limit: u64,
}

impl Console {
    /// Makes the pipe and connects fds 1 and 2 to its write end, for the
    /// command to inherit.
    fn open(limit: u64) -> Self {
        let mut fds = [0; 2];
        // SAFETY: pipe2 fills two descriptors.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
            fail(REPORT_FD, Stage::Session, 3, errno());
        }
        // SAFETY: dup2 onto the standard streams (without close-on-exec),
        // then closes the original write end, once.
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
        Self {
            pipe: fds[0],
            size,
            limit: limit.max(16 << 10),
        }
    }

    /// Once the command holds the write end: the init lets go of its own
    /// copies (so the pipe ends when the command's processes are gone),
    /// and caps the files it may write, so even a subverted init cannot
    /// fill the node's disk through the log.
    fn after_spawn(&self) {
        let cap = self.limit + (64 << 10);
        let limit = libc::rlimit {
            rlim_cur: cap,
            rlim_max: cap,
        };
        // SAFETY: duplicates fd 0 (/dev/null) onto 1 and 2; sets flags and
        // a limit from live values.
        unsafe {
            libc::dup2(0, 1);
            libc::dup2(0, 2);
            libc::fcntl(self.pipe, libc::F_SETFL, libc::O_NONBLOCK);
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            libc::setrlimit(libc::RLIMIT_FSIZE, &raw const limit);
        }
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
                Err(_) if errno() == libc::EINTR => {}
                Err(_) => return true,
            }
        }
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
            // SAFETY: reads into a live stack buffer.
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
            // SAFETY: writes from the live stack buffer filled above.
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
