//! What a jail's command goes through before it runs, shared by the jail's
//! init (the `stockade-init` program, PID 1 of every started jail) and the
//! engine's `exec` into a running jail: a session of its own, capabilities
//! cut to a short list, `no_new_privs`, the system call filter, then exec.
//! And the report records both send to the engine over a pipe.
//!
//! Everything here makes system calls only, on data prepared beforehand:
//! it runs in processes forked from a multi-threaded engine, and in a
//! process that shares its parent's memory until it execs.

/// The search path inside jails.
pub const JAIL_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Capabilities a jail's processes keep (Docker's default set without
/// MKNOD and NET_RAW): enough for a service to bind port 80, change owners
/// and switch users; no mounting, no module loading, no device nodes, no
/// raw or forged packets, no host tuning.
pub const KEEP_CAPS: [u32; 12] = [
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

/// The descriptor the report pipe is on in the init.
pub const REPORT_FD: i32 = 3;
/// The descriptor a started jail's log is on in the init.
pub const LOG_FD: i32 = 5;
/// The descriptor the system call filter (raw `sock_filter` records) is on
/// when the init starts.
pub const FILTER_FD: i32 = 7;

/// Report record kinds.
pub const MSG_PID: u32 = 1;
/// A failure: stage, index, errno.
pub const MSG_ERROR: u32 = 2;
/// The launcher is in its new user namespace, waiting for id maps.
pub const MSG_USERNS: u32 = 3;

/// Where a jail's process failed, as carried on the report pipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Stage {
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
    Init = 14,
    /// Taking the image's user or working folder.
    Identity = 15,
}

impl Stage {
    /// The stage of a report record's code.
    pub fn from_u32(v: u32) -> Option<Self> {
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
            Init,
            Identity,
        ]
        .into_iter()
        .find(|s| *s as u32 == v)
    }
}

/// The calling thread's last error number.
pub fn errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// Writes one 16-byte record; async-signal-safe.
pub fn send(fd: i32, kind: u32, a: u32, b: u32, c: i32) {
    let mut buf = [0u8; 16];
    buf[0..4].copy_from_slice(&kind.to_ne_bytes());
    buf[4..8].copy_from_slice(&a.to_ne_bytes());
    buf[8..12].copy_from_slice(&b.to_ne_bytes());
    buf[12..16].copy_from_slice(&c.to_ne_bytes());
    // SAFETY: writes from a live stack buffer; a short or failed write only
    // loses the report, and the engine still sees the process fail.
    unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
}

/// Reports a failure and ends the process without running exit handlers.
pub fn fail(fd: i32, stage: Stage, index: usize, errno: i32) -> ! {
    send(
        fd,
        MSG_ERROR,
        stage as u32,
        u32::try_from(index).unwrap_or(u32::MAX),
        errno,
    );
    exit(1)
}

/// Ends the process at once.
pub fn exit(code: i32) -> ! {
    // SAFETY: _exit is async-signal-safe and ends the process.
    unsafe { libc::_exit(code) }
}

fn check(r: libc::c_long) -> Result<(), i32> {
    if r < 0 { Err(errno()) } else { Ok(()) }
}

/// A session of its own: no terminal of the caller's is the command's
/// controlling terminal (whose input it could fake with TIOCSTI, or whose
/// other processes it could signal). With `tty`, the terminal made for the
/// jail on fd 0 becomes its controlling terminal. Errors: (step, errno).
pub fn new_session(tty: bool) -> Result<(), (usize, i32)> {
    // SAFETY: setsid takes no arguments.
    if unsafe { libc::setsid() } < 0 {
        return Err((1, errno()));
    }
    // SAFETY: TIOCSCTTY takes an integer argument.
    if tty && unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) } < 0 {
        return Err((2, errno()));
    }
    Ok(())
}

const PR_CAPBSET_DROP: libc::c_int = 24;
const PR_CAP_AMBIENT: libc::c_int = 47;
const PR_CAP_AMBIENT_CLEAR_ALL: libc::c_ulong = 4;
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// Reduces every capability set to [`KEEP_CAPS`]: the bounding set (at
/// exec a root process gets exactly the bounding set), the ambient set
/// (emptied: nothing passes to non-root programs), the effective and
/// permitted sets of the process itself, and the inheritable set (emptied,
/// as runtimes do since CVE-2022-24769: it could hand capabilities to
/// programs with inheritable file capabilities).
pub fn drop_capabilities() -> Result<(), i32> {
    for cap in 0..64u32 {
        if KEEP_CAPS.contains(&cap) {
            continue;
        }
        // SAFETY: PR_CAPBSET_DROP takes a capability number and no pointers.
        let r = unsafe { libc::prctl(PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0, 0, 0) };
        if r < 0 {
            match errno() {
                libc::EINVAL => break, // past the kernel's last capability
                e => return Err(e),
            }
        }
    }
    // SAFETY: PR_CAP_AMBIENT takes integers only.
    let r = unsafe { libc::prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) };
    // EINVAL: a kernel without ambient capabilities has none to clear.
    if r < 0 && errno() != libc::EINVAL {
        return Err(errno());
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
    check(unsafe { libc::syscall(libc::SYS_capset, &raw const header, data.as_ptr()) })
}

/// Last steps before exec: no program may gain privileges (setuid bits and
/// file capabilities are ignored from here on), then the system call
/// filter. Errors: (step, errno), step 0 for no_new_privs, 1 the filter.
pub fn lock_down(filter: &[libc::sock_filter]) -> Result<(), (usize, i32)> {
    // SAFETY: PR_SET_NO_NEW_PRIVS takes integers only.
    check(libc::c_long::from(unsafe {
        libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    }))
    .map_err(|e| (0, e))?;
    let prog = libc::sock_fprog {
        len: u16::try_from(filter.len()).map_err(|_| (1, libc::E2BIG))?,
        filter: filter.as_ptr().cast_mut(),
    };
    // SAFETY: SECCOMP_SET_MODE_FILTER reads a `struct sock_fprog` pointing
    // at `filter`'s instructions, both alive for the call.
    check(unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0,
            &raw const prog,
        )
    })
    .map_err(|e| (1, e))
}

/// Restores default dispositions of every signal and an empty mask: a
/// caller's handlers (or ignored signals, which exec keeps) mean nothing
/// to a jail's command.
pub fn reset_signals() {
    for sig in 1..32 {
        if sig != libc::SIGKILL && sig != libc::SIGSTOP {
            // SAFETY: installing SIG_DFL is always valid and async-signal-safe.
            unsafe { libc::signal(sig, libc::SIG_DFL) };
        }
    }
    let mut empty = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigemptyset initialises the set, which sigprocmask then reads.
    unsafe {
        libc::sigemptyset(empty.as_mut_ptr());
        libc::sigprocmask(libc::SIG_SETMASK, empty.as_ptr(), std::ptr::null_mut());
    }
}

/// Execs the first of `candidates` that exists, with NULL-terminated
/// `argv` and `envp`; returns only on failure, with the most telling errno
/// (a permission problem beats "not found" on another PATH entry).
///
/// # Safety
///
/// Every candidate must be a NUL-terminated string, and `argv` and `envp`
/// NULL-terminated arrays of them, all alive for the call.
pub unsafe fn exec_first(
    candidates: &[*const libc::c_char],
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
) -> i32 {
    let mut err = libc::ENOENT;
    for &c in candidates {
        // SAFETY: the caller's contract (see above); on success execve does
        // not return.
        unsafe { libc::execve(c, argv, envp) };
        let e = errno();
        if e != libc::ENOENT && e != libc::ENOTDIR {
            err = e;
        }
    }
    err
}
