//! What the filters allow and refuse, and how their programs are built.

use super::*;
use nix::errno::Errno;

/// Runs `p` as the kernel does for a call `nr` made under `arch` with
/// first argument `arg0`, returning its verdict.
fn run(p: &[libc::sock_filter], arch: u32, nr: u32, arg0: u64) -> u32 {
    let mut data = [0u8; 64];
    data[0..4].copy_from_slice(&nr.to_ne_bytes());
    data[4..8].copy_from_slice(&arch.to_ne_bytes());
    data[16..24].copy_from_slice(&arg0.to_ne_bytes());
    let (mut pc, mut acc) = (0usize, 0u32);
    loop {
        let i = p[pc];
        pc += 1;
        let taken = |yes: bool| usize::from(if yes { i.jt } else { i.jf });
        match u32::from(i.code) {
            c if c == libc::BPF_LD | libc::BPF_W | libc::BPF_ABS => {
                let at = usize::try_from(i.k).unwrap();
                acc = u32::from_ne_bytes(data[at..at + 4].try_into().unwrap());
            }
            c if c == libc::BPF_RET | libc::BPF_K => return i.k,
            c if c == libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K => pc += taken(acc == i.k),
            c if c == libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K => pc += taken(acc >= i.k),
            c if c == libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K => {
                pc += taken(acc & i.k != 0);
            }
            c => panic!("unexpected instruction {c:#x}"),
        }
    }
}

fn program() -> Vec<libc::sock_filter> {
    let f = filters().unwrap();
    f.program().to_vec()
}

fn nr(n: libc::c_long) -> u32 {
    u32::try_from(n).unwrap()
}

fn flag(f: libc::c_int) -> u64 {
    u64::try_from(f).unwrap()
}

const EPERM: u32 = RET_ERRNO | 1;
const ENOSYS: u32 = RET_ERRNO | 38;
const EAFNOSUPPORT: u32 = RET_ERRNO | 97;

/// The verdict for `call` with first argument `arg0`, as a user of the
/// filter expects it.
fn verdict_of(p: &[libc::sock_filter], call: libc::c_long, arg0: u64) -> u32 {
    run(p, AUDIT_ARCH.unwrap(), nr(call), arg0)
}

#[test]
fn the_program_gives_every_number_its_rule() {
    let p = program();
    assert!(p.len() < 4096, "the kernel takes at most 4096 instructions");
    assert!(
        p.len() < 256,
        "{} instructions: each start pays for them",
        p.len()
    );
    let arch = AUDIT_ARCH.unwrap();
    let table = rules().unwrap();
    let thread = flag(
        libc::CLONE_VM
            | libc::CLONE_FS
            | libc::CLONE_FILES
            | libc::CLONE_SIGHAND
            | libc::CLONE_THREAD
            | libc::CLONE_SYSVSEM
            | libc::CLONE_SETTLS
            | libc::CLONE_PARENT_SETTID
            | libc::CLONE_CHILD_CLEARTID,
    );
    let namespaces = [
        libc::CLONE_NEWNS,
        libc::CLONE_NEWUTS,
        libc::CLONE_NEWIPC,
        libc::CLONE_NEWUSER,
        libc::CLONE_NEWPID,
        libc::CLONE_NEWNET,
        libc::CLONE_NEWCGROUP,
        0x80, // CLONE_NEWTIME
    ];
    for call in (0..1024).chain([X32_SYSCALL_BIT - 1]) {
        let rule = table.iter().find(|(n, _)| *n == call).map(|(_, r)| *r);
        let at = |arg0: u64| run(&p, arch, call, arg0);
        match rule.unwrap_or(Rule::Missing) {
            Rule::Allow => assert_eq!(at(0xdead_beef), RET_ALLOW, "call {call}"),
            Rule::Deny => assert_eq!(at(0), EPERM, "call {call}"),
            Rule::Missing => assert_eq!(at(0), ENOSYS, "call {call}"),
            Rule::NoNewNamespace => {
                for ns in namespaces {
                    assert_eq!(at(flag(ns) | thread), EPERM, "call {call} {ns:#x}");
                }
                assert_eq!(at(flag(libc::SIGCHLD)), RET_ALLOW, "call {call}");
                assert_eq!(at(thread | (1 << 40)), RET_ALLOW, "call {call}");
            }
            Rule::Personality => {
                for persona in PERSONAS {
                    assert_eq!(at(u64::from(persona)), RET_ALLOW, "{persona:#x}");
                }
                for persona in [0x4_0000, 0x40_0000, 0x1, 0x0800_0000] {
                    assert_eq!(at(persona), EPERM, "{persona:#x}");
                }
            }
            Rule::Socket => {
                for family in REFUSED_FAMILIES {
                    assert_eq!(at(u64::from(family)), EAFNOSUPPORT, "{family}");
                }
                for family in [0, 1, 2, 10, 16, 17, 37, 39, 41, 44] {
                    assert_eq!(at(family), RET_ALLOW, "{family}");
                }
            }
        }
    }
    assert_eq!(
        run(&p, arch ^ 1, nr(libc::SYS_getpid), 0),
        RET_KILL_PROCESS,
        "calls under another architecture's numbers"
    );
    if cfg!(target_arch = "x86_64") {
        assert_eq!(
            run(&p, arch, nr(libc::SYS_getpid) | X32_SYSCALL_BIT, 0),
            ENOSYS
        );
    }
}

#[test]
fn refused_calls_get_the_documented_errno() {
    let p = program();
    for call in [
        libc::SYS_io_uring_setup,
        libc::SYS_io_uring_enter,
        libc::SYS_io_uring_register,
        libc::SYS_ptrace,
        libc::SYS_process_vm_readv,
        libc::SYS_process_vm_writev,
        libc::SYS_pidfd_getfd,
        libc::SYS_mount,
        libc::SYS_umount2,
        libc::SYS_pivot_root,
        libc::SYS_bpf,
        libc::SYS_keyctl,
        libc::SYS_add_key,
        libc::SYS_request_key,
        libc::SYS_perf_event_open,
        libc::SYS_userfaultfd,
        libc::SYS_setns,
        libc::SYS_open_by_handle_at,
        libc::SYS_name_to_handle_at,
        libc::SYS_fsopen,
        libc::SYS_fsmount,
        libc::SYS_fsconfig,
        libc::SYS_move_mount,
        libc::SYS_open_tree,
        libc::SYS_mount_setattr,
        libc::SYS_kexec_load,
        libc::SYS_init_module,
        libc::SYS_finit_module,
        libc::SYS_delete_module,
        libc::SYS_reboot,
        libc::SYS_swapon,
        libc::SYS_swapoff,
        libc::SYS_acct,
        libc::SYS_settimeofday,
        libc::SYS_clock_settime,
        libc::SYS_adjtimex,
        libc::SYS_clock_adjtime,
        libc::SYS_syslog,
        libc::SYS_quotactl,
        libc::SYS_lookup_dcookie,
        libc::SYS_vhangup,
    ] {
        assert_eq!(verdict_of(&p, call, 0), EPERM, "call {call}");
    }
    assert_eq!(verdict_of(&p, libc::SYS_clone3, 0), ENOSYS);
    // Calls the kernel has but the profiles never allow.
    for call in [libc::SYS_migrate_pages, libc::SYS_move_pages] {
        assert_eq!(verdict_of(&p, call, 0), ENOSYS, "call {call}");
    }
    let newest = rules().unwrap().last().unwrap().0;
    for call in [newest + 1, newest + 100, 1000, X32_SYSCALL_BIT - 1] {
        assert_eq!(run(&p, AUDIT_ARCH.unwrap(), call, 0), ENOSYS, "call {call}");
    }
    assert_eq!(
        verdict_of(&p, libc::SYS_unshare, flag(libc::CLONE_NEWUSER)),
        EPERM
    );
    assert_eq!(verdict_of(&p, libc::SYS_personality, 0x4_0000), EPERM);
    assert_eq!(verdict_of(&p, libc::SYS_socket, 40), EAFNOSUPPORT);
    assert_eq!(verdict_of(&p, libc::SYS_socket, 38), EAFNOSUPPORT);
}

#[test]
fn calls_the_c_library_and_busybox_make_are_allowed() {
    let p = program();
    for call in [
        libc::SYS_read,
        libc::SYS_write,
        libc::SYS_openat,
        libc::SYS_close,
        libc::SYS_mmap,
        libc::SYS_execve,
        libc::SYS_exit_group,
        libc::SYS_wait4,
        libc::SYS_getpid,
        libc::SYS_rseq,
        libc::SYS_statx,
        libc::SYS_newfstatat,
        libc::SYS_faccessat2,
        libc::SYS_openat2,
        libc::SYS_close_range,
        libc::SYS_epoll_pwait2,
        libc::SYS_futex,
        libc::SYS_futex_waitv,
        libc::SYS_pidfd_open,
        libc::SYS_pidfd_send_signal,
        libc::SYS_memfd_create,
        libc::SYS_copy_file_range,
        libc::SYS_getrandom,
        libc::SYS_set_robust_list,
        libc::SYS_set_tid_address,
        libc::SYS_prlimit64,
        libc::SYS_membarrier,
        libc::SYS_rt_sigaction,
        libc::SYS_sendfile,
        libc::SYS_setsockopt,
        libc::SYS_chroot,
        libc::SYS_setresuid,
        libc::SYS_capset,
    ] {
        assert_eq!(verdict_of(&p, call, 0), RET_ALLOW, "call {call}");
    }
    let fork = flag(libc::SIGCHLD | libc::CLONE_CHILD_SETTID | libc::CLONE_CHILD_CLEARTID);
    assert_eq!(verdict_of(&p, libc::SYS_clone, fork), RET_ALLOW);
    assert_eq!(
        verdict_of(&p, libc::SYS_personality, 0xffff_ffff),
        RET_ALLOW
    );
    assert_eq!(
        verdict_of(&p, libc::SYS_socket, flag(libc::AF_INET)),
        RET_ALLOW
    );
    assert_eq!(
        verdict_of(&p, libc::SYS_socket, flag(libc::AF_NETLINK)),
        RET_ALLOW
    );
}

/// Raw call `nr` with `args`: its result, or the errno it failed with.
fn raw(nr: libc::c_long, args: [libc::c_long; 3]) -> Result<libc::c_long, Errno> {
    // SAFETY: only called with calls whose arguments hold no pointers
    // the kernel writes through (null or plain integers).
    let r = unsafe { libc::syscall(nr, args[0], args[1], args[2]) };
    if r == -1 { Err(Errno::last()) } else { Ok(r) }
}

/// What the child checks under the installed filter, in order.
const CHECKS: [&str; 14] = [
    "install the filter",
    "getpid works",
    "call number 1000 fails with ENOSYS",
    "a call the kernel has but the list lacks fails with ENOSYS",
    "io_uring_setup fails with EPERM",
    "ptrace fails with EPERM",
    "keyctl fails with EPERM",
    "clone3 fails with ENOSYS",
    "unshare(CLONE_NEWUSER) fails with EPERM",
    "personality(0xffffffff) works",
    "personality(ADDR_NO_RANDOMIZE) fails with EPERM",
    "socket(AF_VSOCK) fails with EAFNOSUPPORT",
    "socket(AF_INET) works",
    "an x32 call fails with ENOSYS",
];

/// Runs [`CHECKS`] in order; the index of the first that fails. Makes
/// system calls only (it runs in a forked child).
fn run_checks(program: &[libc::sock_filter]) -> Option<usize> {
    // Known to the kernel, absent from the list: sysfs (count the
    // filesystem types) on x86_64, migrate_pages elsewhere.
    let (unlisted, unlisted_args) = if cfg!(target_arch = "x86_64") {
        (139, [3, 0, 0])
    } else {
        (libc::SYS_migrate_pages, [0, 0, 0])
    };
    let checks: [&dyn Fn() -> bool; CHECKS.len()] = [
        &|| {
            // SAFETY: PR_SET_NO_NEW_PRIVS takes integers only.
            let r = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
            r == 0 && stockade_init::lock_down(program).is_ok()
        },
        &|| raw(libc::SYS_getpid, [0; 3]).is_ok_and(|pid| pid > 0),
        &|| raw(1000, [0; 3]) == Err(Errno::ENOSYS),
        &|| raw(unlisted, unlisted_args) == Err(Errno::ENOSYS),
        // Unfiltered: EFAULT (no parameters).
        &|| raw(libc::SYS_io_uring_setup, [1, 0, 0]) == Err(Errno::EPERM),
        // PTRACE_PEEKUSER (3) on the parent, which this child does not
        // trace: ESRCH unfiltered.
        &|| {
            let parent = libc::c_long::from(nix::unistd::getppid().as_raw());
            raw(libc::SYS_ptrace, [3, parent, 0]) == Err(Errno::EPERM)
        },
        &|| raw(libc::SYS_keyctl, [0; 3]) == Err(Errno::EPERM),
        &|| raw(libc::SYS_clone3, [0; 3]) == Err(Errno::ENOSYS),
        &|| {
            let new_user = libc::c_long::from(libc::CLONE_NEWUSER);
            raw(libc::SYS_unshare, [new_user, 0, 0]) == Err(Errno::EPERM)
        },
        &|| raw(libc::SYS_personality, [0xffff_ffff, 0, 0]).is_ok(),
        &|| raw(libc::SYS_personality, [0x4_0000, 0, 0]) == Err(Errno::EPERM),
        &|| {
            let stream = libc::c_long::from(libc::SOCK_STREAM);
            raw(libc::SYS_socket, [40, stream, 0]) == Err(Errno::EAFNOSUPPORT)
        },
        &|| {
            let (inet, dgram) = (libc::AF_INET.into(), libc::SOCK_DGRAM.into());
            raw(libc::SYS_socket, [inet, dgram, 0])
                .and_then(|fd| raw(libc::SYS_close, [fd, 0, 0]))
                .is_ok()
        },
        &|| {
            cfg!(not(target_arch = "x86_64"))
                || raw(libc::SYS_getpid | 0x4000_0000, [0; 3]) == Err(Errno::ENOSYS)
        },
    ];
    checks.iter().position(|check| !check())
}

#[test]
fn the_installed_filter_refuses_and_allows_as_listed() {
    // In a child, so the test runner keeps its freedom; compiled
    // before the fork, so the child only makes system calls.
    let f = filters().unwrap();
    // SAFETY: the child only makes system calls and exits with _exit.
    match unsafe { nix::unistd::fork() }.unwrap() {
        nix::unistd::ForkResult::Child => {
            let failed = run_checks(f.program()).map_or(0, |i| i + 1);
            // SAFETY: ends the child at once.
            unsafe { libc::_exit(i32::try_from(failed).unwrap_or(255)) }
        }
        nix::unistd::ForkResult::Parent { child } => {
            match nix::sys::wait::waitpid(child, None).unwrap() {
                nix::sys::wait::WaitStatus::Exited(_, 0) => {}
                nix::sys::wait::WaitStatus::Exited(_, n) => {
                    let n = usize::try_from(n).unwrap();
                    panic!("failed: {}", CHECKS.get(n - 1).unwrap_or(&"?"));
                }
                st => panic!("the child ended otherwise: {st:?}"),
            }
        }
    }
}
