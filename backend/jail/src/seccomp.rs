//! The system call allow-list of every jail process, at least as tight as
//! the default profile of Docker and Podman for a container without
//! CAP_SYS_ADMIN, CAP_SYS_PTRACE and the other capabilities jails lack:
//!
//! - a call not in [`calls`] fails with `ENOSYS`, as if the kernel lacked
//!   it: a call added by a future kernel reaches no jail, and programs
//!   take the fallback they already have for older kernels;
//! - a listed but refused call fails with `EPERM` and the process lives
//!   on: calls that reach host-wide kernel state (mounts, modules,
//!   keyrings, BPF, clocks, reboot), other processes' memory (`ptrace`,
//!   `process_vm_*`, `pidfd_getfd`), file handles, or need a capability
//!   jails do not keep. `io_uring_*` are among them: `EPERM` is also what
//!   the kernel answers when its administrator disables io_uring, so
//!   programs that use it report or fall back exactly as they would there;
//! - `clone` and `unshare` fail with `EPERM` when their flags ask for any
//!   new namespace; `clone3` fails with `ENOSYS` (its flags are passed in
//!   memory, out of a filter's reach, and the C library then falls back
//!   to `clone`); `personality` takes only the five personas the container
//!   profiles allow (others `EPERM`); `socket` fails with `EAFNOSUPPORT`,
//!   as for a family the kernel was built without, for `AF_ALG` (the
//!   kernel's crypto interface) and `AF_VSOCK` (the host's hypervisor
//!   channel). Netlink, audit netlink included, stays open: jails keep
//!   CAP_AUDIT_WRITE so login programs can write audit records.
//!
//! The filter is compiled in the engine's process and installed by the
//! jail's first process as its last step before exec. It is one classic BPF
//! program that finds a call's number by binary search over ranges of
//! numbers that share a rule: the kernel checks and translates it at every
//! jail start and, to learn which calls it may let through without running
//! it, follows it once for every call number, so its length and depth are
//! paid at each start; a linear list of comparisons (as general filter
//! compilers emit) costs a quarter of a millisecond there.

use crate::error::JailError;

/// What the filter does with one call number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rule {
    /// Let through.
    Allow,
    /// Fails with `EPERM`.
    Deny,
    /// Fails with `ENOSYS`: every number not listed, and clone3.
    Missing,
    /// Fails with `EPERM` when the flags (first argument of clone and
    /// unshare) ask for a new namespace: a user namespace gives the caller
    /// every capability inside it, and the others are the jail's walls.
    NoNewNamespace,
    /// Allowed only for the personas of [`PERSONAS`], else `EPERM`.
    Personality,
    /// Fails with `EAFNOSUPPORT` for the families of [`REFUSED_FAMILIES`].
    Socket,
}

/// Builds [`calls`] from groups of `libc::SYS_*` names, each group
/// optionally limited to some architectures.
macro_rules! call_table {
    ($($(#[$when:meta])* $rule:ident: $($name:ident)+;)+) => {
        /// Every call the filter names, with its rule, on this architecture.
        fn calls() -> Vec<(&'static str, libc::c_long, Rule)> {
            let mut calls = Vec::new();
            $(
                $(#[$when])*
                calls.extend([$((stringify!($name), sys::$name, Rule::$rule)),+]);
            )+
            calls
        }
    };
}

#[cfg(any(
    target_arch = "x86_64",
    target_arch = "aarch64",
    target_arch = "riscv64"
))]
call_table! {
    // What the container profiles allow without a capability, less the
    // clock and file-handle calls of the Deny group.
    Allow: SYS_accept SYS_accept4 SYS_bind SYS_brk SYS_capget SYS_capset SYS_chdir
        SYS_clock_getres SYS_clock_gettime SYS_clock_nanosleep SYS_close SYS_close_range
        SYS_connect SYS_copy_file_range SYS_dup SYS_dup3 SYS_epoll_create1 SYS_epoll_ctl
        SYS_epoll_pwait SYS_epoll_pwait2 SYS_eventfd2 SYS_execve SYS_execveat SYS_exit
        SYS_exit_group SYS_faccessat SYS_faccessat2 SYS_fadvise64 SYS_fallocate
        SYS_fanotify_mark SYS_fchdir SYS_fchmod SYS_fchmodat SYS_fchmodat2 SYS_fchown
        SYS_fchownat SYS_fcntl SYS_fdatasync SYS_fgetxattr SYS_flistxattr SYS_flock
        SYS_fremovexattr SYS_fsetxattr SYS_fstat SYS_fstatfs SYS_fsync SYS_ftruncate
        SYS_futex SYS_futex_waitv SYS_get_robust_list SYS_getcpu SYS_getcwd SYS_getdents64
        SYS_getegid SYS_geteuid SYS_getgid SYS_getgroups SYS_getitimer SYS_getpeername
        SYS_getpgid SYS_getpid SYS_getppid SYS_getpriority SYS_getrandom SYS_getresgid
        SYS_getresuid SYS_getrlimit SYS_getrusage SYS_getsid SYS_getsockname
        SYS_getsockopt SYS_gettid SYS_gettimeofday SYS_getuid SYS_getxattr
        SYS_inotify_add_watch SYS_inotify_init1 SYS_inotify_rm_watch SYS_io_cancel
        SYS_io_destroy SYS_io_getevents SYS_io_setup SYS_io_submit SYS_ioctl
        SYS_ioprio_get SYS_ioprio_set SYS_kill SYS_landlock_add_rule
        SYS_landlock_create_ruleset SYS_landlock_restrict_self SYS_lgetxattr SYS_linkat
        SYS_listen SYS_listxattr SYS_llistxattr SYS_lremovexattr SYS_lseek SYS_lsetxattr
        SYS_madvise SYS_membarrier SYS_memfd_create SYS_memfd_secret SYS_mincore
        SYS_mkdirat SYS_mknodat SYS_mlock SYS_mlock2 SYS_mlockall SYS_mmap SYS_mprotect
        SYS_mq_getsetattr SYS_mq_notify SYS_mq_open SYS_mq_timedreceive SYS_mq_timedsend
        SYS_mq_unlink SYS_mremap SYS_mseal SYS_msgctl SYS_msgget SYS_msgrcv SYS_msgsnd
        SYS_msync SYS_munlock SYS_munlockall SYS_munmap SYS_nanosleep SYS_newfstatat
        SYS_openat SYS_openat2 SYS_pidfd_open SYS_pidfd_send_signal SYS_pipe2
        SYS_pkey_alloc SYS_pkey_free SYS_pkey_mprotect SYS_ppoll SYS_prctl SYS_pread64
        SYS_preadv SYS_preadv2 SYS_prlimit64 SYS_process_mrelease SYS_pselect6
        SYS_pwrite64 SYS_pwritev SYS_pwritev2 SYS_read SYS_readahead SYS_readlinkat
        SYS_readv SYS_recvfrom SYS_recvmmsg SYS_recvmsg SYS_remap_file_pages
        SYS_removexattr SYS_renameat2 SYS_restart_syscall SYS_rseq SYS_rt_sigaction
        SYS_rt_sigpending SYS_rt_sigprocmask SYS_rt_sigqueueinfo SYS_rt_sigreturn
        SYS_rt_sigsuspend SYS_rt_sigtimedwait SYS_rt_tgsigqueueinfo
        SYS_sched_get_priority_max SYS_sched_get_priority_min SYS_sched_getaffinity
        SYS_sched_getattr SYS_sched_getparam SYS_sched_getscheduler
        SYS_sched_rr_get_interval SYS_sched_setaffinity SYS_sched_setattr
        SYS_sched_setparam SYS_sched_setscheduler SYS_sched_yield SYS_seccomp SYS_semctl
        SYS_semget SYS_semop SYS_semtimedop SYS_sendfile SYS_sendmmsg SYS_sendmsg
        SYS_sendto SYS_set_robust_list SYS_set_tid_address SYS_setfsgid SYS_setfsuid
        SYS_setgid SYS_setgroups SYS_setitimer SYS_setpgid SYS_setpriority SYS_setregid
        SYS_setresgid SYS_setresuid SYS_setreuid SYS_setrlimit SYS_setsid SYS_setsockopt
        SYS_setuid SYS_setxattr SYS_shmat SYS_shmctl SYS_shmdt SYS_shmget SYS_shutdown
        SYS_sigaltstack SYS_signalfd4 SYS_socketpair SYS_splice SYS_statfs SYS_statx
        SYS_symlinkat SYS_sync SYS_sync_file_range SYS_syncfs SYS_sysinfo SYS_tee
        SYS_tgkill SYS_timer_create SYS_timer_delete SYS_timer_getoverrun
        SYS_timer_gettime SYS_timer_settime SYS_timerfd_create SYS_timerfd_gettime
        SYS_timerfd_settime SYS_times SYS_tkill SYS_truncate SYS_umask SYS_uname
        SYS_unlinkat SYS_utimensat SYS_vmsplice SYS_wait4 SYS_waitid SYS_write SYS_writev
        // Jails keep CAP_SYS_CHROOT.
        SYS_chroot;
    // The older forms other architectures left out.
    #[cfg(target_arch = "x86_64")]
    Allow: SYS_access SYS_alarm SYS_arch_prctl SYS_chmod SYS_chown SYS_creat SYS_dup2
        SYS_epoll_create SYS_epoll_ctl_old SYS_epoll_wait SYS_epoll_wait_old SYS_eventfd
        SYS_fork SYS_futimesat SYS_get_thread_area SYS_getdents SYS_getpgrp
        SYS_inotify_init SYS_lchown SYS_link SYS_lstat SYS_mkdir SYS_mknod SYS_modify_ldt
        SYS_open SYS_pause SYS_pipe SYS_poll SYS_readlink SYS_rename SYS_rmdir SYS_select
        SYS_set_thread_area SYS_signalfd SYS_stat SYS_symlink SYS_time SYS_unlink
        SYS_utime SYS_utimes SYS_vfork;
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    Allow: SYS_renameat;
    #[cfg(target_arch = "riscv64")]
    Allow: SYS_riscv_flush_icache SYS_riscv_hwprobe;
    // Host-wide state, other processes, file handles, and what the
    // container profiles allow only with a capability jails lack.
    Deny: SYS_io_uring_setup SYS_io_uring_enter SYS_io_uring_register
        SYS_ptrace SYS_process_vm_readv SYS_process_vm_writev SYS_pidfd_getfd SYS_kcmp
        SYS_process_madvise
        SYS_mount SYS_umount2 SYS_pivot_root SYS_fsopen SYS_fsmount SYS_fsconfig
        SYS_fspick SYS_move_mount SYS_open_tree SYS_mount_setattr SYS_setns
        SYS_bpf SYS_perf_event_open SYS_userfaultfd SYS_keyctl SYS_add_key SYS_request_key
        SYS_open_by_handle_at SYS_name_to_handle_at
        SYS_kexec_load SYS_kexec_file_load SYS_init_module SYS_finit_module
        SYS_delete_module SYS_reboot SYS_swapon SYS_swapoff SYS_acct
        SYS_settimeofday SYS_clock_settime SYS_adjtimex SYS_clock_adjtime
        SYS_syslog SYS_quotactl SYS_quotactl_fd SYS_lookup_dcookie SYS_vhangup
        SYS_fanotify_init SYS_sethostname SYS_setdomainname
        SYS_get_mempolicy SYS_mbind SYS_set_mempolicy SYS_set_mempolicy_home_node;
    #[cfg(target_arch = "x86_64")]
    Deny: SYS_iopl SYS_ioperm;
    NoNewNamespace: SYS_clone SYS_unshare;
    Personality: SYS_personality;
    Socket: SYS_socket;
    Missing: SYS_clone3;
}

/// No table where no audit architecture is known: [`filters`] refuses.
#[cfg(not(any(
    target_arch = "x86_64",
    target_arch = "aarch64",
    target_arch = "riscv64"
)))]
fn calls() -> Vec<(&'static str, libc::c_long, Rule)> {
    Vec::new()
}

/// The call numbers of the table, with those this build's C library
/// bindings lack on some architectures (the kernel's numbers).
mod sys {
    pub(super) use libc::*;

    #[cfg(not(target_arch = "x86_64"))]
    pub(super) const SYS_fchmodat2: c_long = 452;
    #[cfg(target_arch = "riscv64")]
    pub(super) const SYS_mseal: c_long = 462;
    #[cfg(target_arch = "riscv64")]
    pub(super) const SYS_kexec_file_load: c_long = 294;
    #[cfg(target_arch = "riscv64")]
    pub(super) const SYS_riscv_hwprobe: c_long = 258;
    #[cfg(target_arch = "riscv64")]
    pub(super) const SYS_riscv_flush_icache: c_long = 259;
    #[cfg(target_arch = "aarch64")]
    pub(super) const SYS_renameat: c_long = 38;
    #[cfg(target_arch = "aarch64")]
    pub(super) const SYS_sync_file_range: c_long = 84;
    #[cfg(target_arch = "aarch64")]
    pub(super) const SYS_getrlimit: c_long = 163;
    #[cfg(target_arch = "aarch64")]
    pub(super) const SYS_setrlimit: c_long = 164;
}

/// The personas `personality` may set or query (the profiles' values):
/// Linux, Linux with 32-bit addresses, with `uname` reporting a 2.6
/// kernel, both, and the query.
const PERSONAS: [u32; 5] = [0x0, 0x8, 0x2_0000, 0x2_0008, 0xffff_ffff];

/// `AF_ALG` and `AF_VSOCK`, as the profiles refuse them.
const REFUSED_FAMILIES: [u32; 2] = [38, 40];

/// Every namespace flag of clone and unshare. `CLONE_NEWTIME` shares its
/// bit with clone's exit signal, whose valid values never reach it.
const NEW_NAMESPACES: u32 = {
    let flags = libc::CLONE_NEWNS
        | libc::CLONE_NEWUTS
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWUSER
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWNET
        | libc::CLONE_NEWCGROUP
        | 0x80; // CLONE_NEWTIME
    flags.cast_unsigned()
};

/// The compiled filter, as a `sock_fprog`-ready instruction array; the
/// jail's init installs it in each command (see `stockade_init::lock_down`).
#[derive(Debug, Clone)]
pub(crate) struct Filters {
    program: Vec<libc::sock_filter>,
}

impl Filters {
    /// The program.
    pub fn program(&self) -> &[libc::sock_filter] {
        &self.program
    }
}

const RET_ALLOW: u32 = 0x7fff_0000;
const RET_KILL_PROCESS: u32 = 0x8000_0000;
const RET_ERRNO: u32 = 0x0005_0000;
/// `struct seccomp_data`: the call number, then the architecture, then the
/// instruction pointer and the six arguments as 64-bit words.
const NR_OFFSET: u32 = 0;
const ARCH_OFFSET: u32 = 4;
/// The low half of the first argument.
const ARG0_LOW_OFFSET: u32 = if cfg!(target_endian = "little") {
    16
} else {
    20
};

/// The audit architecture of this build: a call made under another one
/// (a 32-bit program's) would reach other calls under the same numbers.
const AUDIT_ARCH: Option<u32> = if cfg!(target_arch = "x86_64") {
    Some(0xC000_003E)
} else if cfg!(target_arch = "aarch64") {
    Some(0xC000_00B7)
} else if cfg!(target_arch = "riscv64") {
    Some(0xC000_00F3)
} else {
    None
};

/// On x86_64 the x32 ABI reaches the same calls under other numbers (bit
/// 30 set), which a filter keyed on numbers would let through.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

fn compile_error(reason: impl Into<String>) -> JailError {
    JailError::Invalid {
        what: "seccomp filter",
        reason: reason.into(),
    }
}

fn stmt(code: u32, k: u32) -> libc::sock_filter {
    jump(code, k, 0, 0)
}

fn jump(code: u32, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter {
        // Every BPF opcode fits 16 bits.
        code: u16::try_from(code).unwrap_or(u16::MAX),
        jt,
        jf,
        k,
    }
}

fn load(offset: u32) -> libc::sock_filter {
    stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, offset)
}

fn ret(k: u32) -> libc::sock_filter {
    stmt(libc::BPF_RET | libc::BPF_K, k)
}

fn errno(e: nix::errno::Errno) -> u32 {
    RET_ERRNO | u32::try_from(e as i32).unwrap_or(1)
}

fn skip(n: usize) -> Result<u8, JailError> {
    u8::try_from(n).map_err(|_| compile_error("a jump longer than 255 instructions"))
}

/// The instructions that decide a call under `rule`; they always return.
fn verdict(rule: Rule) -> Vec<libc::sock_filter> {
    use nix::errno::Errno;
    let jeq = libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K;
    match rule {
        Rule::Allow => vec![ret(RET_ALLOW)],
        Rule::Deny => vec![ret(errno(Errno::EPERM))],
        Rule::Missing => vec![ret(errno(Errno::ENOSYS))],
        Rule::NoNewNamespace => vec![
            load(ARG0_LOW_OFFSET),
            jump(
                libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K,
                NEW_NAMESPACES,
                0,
                1,
            ),
            ret(errno(Errno::EPERM)),
            ret(RET_ALLOW),
        ],
        // The kernel reads only the low 32 bits of both arguments.
        Rule::Personality => {
            let mut out = vec![load(ARG0_LOW_OFFSET)];
            for (i, persona) in PERSONAS.iter().enumerate() {
                // Over the later comparisons and the refusal, to the allow.
                let to_allow = u8::try_from(PERSONAS.len() - i).unwrap_or(u8::MAX);
                out.push(jump(jeq, *persona, to_allow, 0));
            }
            out.extend([ret(errno(Errno::EPERM)), ret(RET_ALLOW)]);
            out
        }
        Rule::Socket => {
            let mut out = vec![load(ARG0_LOW_OFFSET)];
            for (i, family) in REFUSED_FAMILIES.iter().enumerate() {
                // Over the later comparisons, to the refusal.
                let to_refuse = u8::try_from(REFUSED_FAMILIES.len() - 1 - i).unwrap_or(u8::MAX);
                out.push(jump(jeq, *family, to_refuse, 0));
            }
            // No refused family: over the refusal.
            if let Some(last) = out.last_mut() {
                last.jf = 1;
            }
            out.extend([ret(errno(Errno::EAFNOSUPPORT)), ret(RET_ALLOW)]);
            out
        }
    }
}

/// A binary search for the call number (in the accumulator) among
/// `ranges`, each the first number of a range and the rule of its numbers,
/// sorted, the first starting at 0; every path ends in a return.
fn search(ranges: &[(u32, Rule)]) -> Result<Vec<libc::sock_filter>, JailError> {
    let [(_, rule)] = ranges else {
        let (low, high) = ranges.split_at(ranges.len() / 2);
        let below = search(low)?;
        let mut out = vec![jump(
            libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K,
            high[0].0,
            skip(below.len())?,
            0,
        )];
        out.extend(below);
        out.extend(search(high)?);
        return Ok(out);
    };
    Ok(verdict(*rule))
}

/// The listed calls of this architecture, sorted by number.
fn rules() -> Result<Vec<(u32, Rule)>, JailError> {
    let mut rules = calls()
        .into_iter()
        .map(|(name, nr, rule)| {
            u32::try_from(nr)
                .ok()
                .filter(|nr| *nr < X32_SYSCALL_BIT)
                .map(|nr| (nr, rule))
                .ok_or_else(|| compile_error(format!("call number {nr} of {name}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    rules.sort_by_key(|(nr, _)| *nr);
    if let Some(w) = rules.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(compile_error(format!(
            "call number {} listed twice",
            w[0].0
        )));
    }
    Ok(rules)
}

/// The whole number space as ranges that share a rule: each listed call,
/// neighbours with the same rule merged, and `Missing` between them.
fn ranges(rules: &[(u32, Rule)]) -> Vec<(u32, Rule)> {
    let mut out: Vec<(u32, Rule)> = Vec::new();
    let mut put = |start: u32, rule: Rule| {
        match out.last_mut() {
            // An empty range (a gap between neighbours) gives way.
            Some(last) if last.0 == start => last.1 = rule,
            _ => out.push((start, rule)),
        }
        if let [.., before, last] = out.as_slice()
            && before.1 == last.1
        {
            out.pop();
        }
    };
    put(0, Rule::Missing);
    for (nr, rule) in rules {
        put(*nr, *rule);
        put(nr + 1, Rule::Missing);
    }
    out
}

/// Compiles the jail filter for the running architecture.
pub(crate) fn filters() -> Result<Filters, JailError> {
    let arch = AUDIT_ARCH.ok_or_else(|| {
        compile_error(format!(
            "no filter for architecture {}",
            std::env::consts::ARCH
        ))
    })?;
    let mut p = vec![
        load(ARCH_OFFSET),
        jump(libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K, arch, 1, 0),
        ret(RET_KILL_PROCESS),
        load(NR_OFFSET),
    ];
    if cfg!(target_arch = "x86_64") {
        p.push(jump(
            libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K,
            X32_SYSCALL_BIT,
            0,
            1,
        ));
        p.push(ret(errno(nix::errno::Errno::ENOSYS)));
    }
    p.extend(search(&ranges(&rules()?))?);
    Ok(Filters { program: p })
}

#[cfg(test)]
mod tests;
