//! The system call deny-list of every jail process: calls that reach
//! host-wide kernel state (mounts, modules, keyrings, BPF, reboot) or open
//! ways around the jail (new user namespaces, other namespaces, file
//! handles) fail with `EPERM`; the process lives on and sees an error.
//!
//! The filter is compiled in the engine's process and installed by the
//! jail's first process as its last step before exec. It is one classic BPF
//! program that finds a call's number by binary search: the kernel checks
//! and translates it at every jail start and, to learn which calls it may
//! let through without running it, follows it once for every call number,
//! so its length and depth are paid at each start; a linear list of
//! comparisons (as general filter compilers emit) costs a quarter of a
//! millisecond there.

use crate::error::JailError;

/// Calls refused outright.
const DENIED: &[(&str, libc::c_long)] = &[
    ("mount", libc::SYS_mount),
    ("umount2", libc::SYS_umount2),
    ("pivot_root", libc::SYS_pivot_root),
    ("swapon", libc::SYS_swapon),
    ("swapoff", libc::SYS_swapoff),
    ("reboot", libc::SYS_reboot),
    ("kexec_load", libc::SYS_kexec_load),
    ("kexec_file_load", libc::SYS_kexec_file_load),
    ("init_module", libc::SYS_init_module),
    ("finit_module", libc::SYS_finit_module),
    ("delete_module", libc::SYS_delete_module),
    ("bpf", libc::SYS_bpf),
    ("perf_event_open", libc::SYS_perf_event_open),
    ("keyctl", libc::SYS_keyctl),
    ("add_key", libc::SYS_add_key),
    ("request_key", libc::SYS_request_key),
    ("open_by_handle_at", libc::SYS_open_by_handle_at),
    ("name_to_handle_at", libc::SYS_name_to_handle_at),
    ("userfaultfd", libc::SYS_userfaultfd),
    ("setns", libc::SYS_setns),
    ("fsopen", libc::SYS_fsopen),
    ("fsmount", libc::SYS_fsmount),
    ("fsconfig", libc::SYS_fsconfig),
    ("move_mount", libc::SYS_move_mount),
    ("open_tree", libc::SYS_open_tree),
    ("mount_setattr", libc::SYS_mount_setattr),
    ("acct", libc::SYS_acct),
    ("settimeofday", libc::SYS_settimeofday),
    ("clock_settime", libc::SYS_clock_settime),
    ("adjtimex", libc::SYS_adjtimex),
    ("clock_adjtime", libc::SYS_clock_adjtime),
    ("syslog", libc::SYS_syslog),
    ("quotactl", libc::SYS_quotactl),
    ("lookup_dcookie", libc::SYS_lookup_dcookie),
    ("vhangup", libc::SYS_vhangup),
];

/// What the filter does with one listed call; every other call is allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rule {
    /// Fails with `EPERM`.
    Deny,
    /// Fails with `EPERM` when its first argument (the flags of clone and
    /// unshare) asks for a new user namespace, which would give the caller
    /// every capability inside it.
    DenyNewUser,
    /// Reported as missing (`ENOSYS`): clone3 passes its flags in memory,
    /// out of a filter's reach, and the C library falls back to clone.
    Missing,
}

/// The compiled filter, as `sock_fprog`-ready instruction arrays.
#[derive(Debug, Clone)]
pub(crate) struct Filters {
    programs: Vec<Vec<libc::sock_filter>>,
}

impl Filters {
    /// The programs in installation order (one).
    pub fn programs(&self) -> &[Vec<libc::sock_filter>] {
        &self.programs
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

/// The instructions that decide a listed call; they always return.
fn verdict(rule: Rule) -> Vec<libc::sock_filter> {
    let new_user = u32::try_from(libc::CLONE_NEWUSER).unwrap_or(u32::MAX);
    match rule {
        Rule::Deny => vec![ret(errno(nix::errno::Errno::EPERM))],
        Rule::Missing => vec![ret(errno(nix::errno::Errno::ENOSYS))],
        Rule::DenyNewUser => vec![
            load(ARG0_LOW_OFFSET),
            jump(libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K, new_user, 0, 1),
            ret(errno(nix::errno::Errno::EPERM)),
            ret(RET_ALLOW),
        ],
    }
}

/// A binary search for the call number (in the accumulator) among
/// `rules`, sorted by number; every path ends in a return.
fn search(rules: &[(u32, Rule)]) -> Result<Vec<libc::sock_filter>, JailError> {
    if rules.len() <= 2 {
        let mut out = Vec::new();
        for (nr, rule) in rules {
            let body = verdict(*rule);
            out.push(jump(
                libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K,
                *nr,
                0,
                skip(body.len())?,
            ));
            out.extend(body);
        }
        out.push(ret(RET_ALLOW));
        return Ok(out);
    }
    let (low, high) = rules.split_at(rules.len() / 2);
    let below = search(low)?;
    let mut out = vec![jump(
        libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K,
        high[0].0,
        skip(below.len())?,
        0,
    )];
    out.extend(below);
    out.extend(search(high)?);
    Ok(out)
}

/// The listed calls of this architecture, sorted by number.
fn rules() -> Result<Vec<(u32, Rule)>, JailError> {
    let mut rules = DENIED
        .iter()
        .map(|(_, nr)| (*nr, Rule::Deny))
        .chain([
            (libc::SYS_unshare, Rule::DenyNewUser),
            (libc::SYS_clone, Rule::DenyNewUser),
            (libc::SYS_clone3, Rule::Missing),
        ])
        .map(|(nr, rule)| {
            u32::try_from(nr)
                .map(|nr| (nr, rule))
                .map_err(|_| compile_error(format!("call number {nr}")))
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
    p.extend(search(&rules()?)?);
    Ok(Filters { programs: vec![p] })
}

/// Installs `filters` on the calling thread; needs `no_new_privs` (or
/// CAP_SYS_ADMIN). Runs in a forked jail process: no allocation.
pub(crate) fn install(filters: &[Vec<libc::sock_filter>]) -> Result<(), nix::errno::Errno> {
    for p in filters {
        let prog = libc::sock_fprog {
            len: u16::try_from(p.len()).map_err(|_| nix::errno::Errno::E2BIG)?,
            filter: p.as_ptr().cast_mut(),
        };
        // SAFETY: SECCOMP_SET_MODE_FILTER reads a `struct sock_fprog`
        // pointing at `p`'s instructions, both alive for the call.
        let r = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                0,
                &raw const prog,
            )
        };
        nix::errno::Errno::result(r)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn the_filter_refuses_exactly_the_listed_calls() {
        let f = filters().unwrap();
        let [p] = f.programs() else {
            panic!("one program")
        };
        assert!(p.len() < 4096, "the kernel takes at most 4096 instructions");
        let arch = AUDIT_ARCH.unwrap();
        let nr = |n: libc::c_long| u32::try_from(n).unwrap();
        let eperm = RET_ERRNO | 1;
        let enosys = RET_ERRNO | 38;
        let denied: Vec<u32> = DENIED.iter().map(|(_, n)| nr(*n)).collect();
        let flagged = [nr(libc::SYS_clone), nr(libc::SYS_unshare)];
        let new_user = u64::try_from(libc::CLONE_NEWUSER).unwrap();
        let other_flags = u64::try_from(libc::CLONE_NEWNS | libc::SIGCHLD).unwrap();
        for call in 0..1024 {
            if flagged.contains(&call) {
                assert_eq!(run(p, arch, call, new_user | other_flags), eperm);
                assert_eq!(run(p, arch, call, other_flags), RET_ALLOW);
                assert_eq!(run(p, arch, call, other_flags | (1 << 40)), RET_ALLOW);
                continue;
            }
            let expected = if denied.contains(&call) {
                eperm
            } else if call == nr(libc::SYS_clone3) {
                enosys
            } else {
                RET_ALLOW
            };
            assert_eq!(run(p, arch, call, 0), expected, "call {call}");
        }
        assert_eq!(
            run(p, arch ^ 1, nr(libc::SYS_getpid), 0),
            RET_KILL_PROCESS,
            "calls under another architecture's numbers"
        );
        if cfg!(target_arch = "x86_64") {
            assert_eq!(
                run(p, arch, nr(libc::SYS_getpid) | X32_SYSCALL_BIT, 0),
                enosys
            );
        }
    }

    /// getpid under its x32 number fails with ENOSYS (always so off x86_64).
    fn x32_refused() -> bool {
        if cfg!(not(target_arch = "x86_64")) {
            return true;
        }
        // SAFETY: getpid takes no arguments and changes nothing.
        let r = unsafe { libc::syscall(libc::SYS_getpid | 0x4000_0000) };
        r == -1 && nix::errno::Errno::last() == nix::errno::Errno::ENOSYS
    }

    #[test]
    fn a_denied_call_fails_with_eperm_and_others_work() {
        // In a child, so the test runner keeps its freedom.
        let f = filters().unwrap();
        // SAFETY: the child only makes system calls and exits with _exit.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                // SAFETY: PR_SET_NO_NEW_PRIVS takes integers only.
                unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
                let ok = install(f.programs()).is_ok()
                    && nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER)
                        == Err(nix::errno::Errno::EPERM)
                    // SAFETY: keyctl with invalid arguments has no effect.
                    && unsafe { libc::syscall(libc::SYS_keyctl, 0, 0, 0, 0, 0) } == -1
                    && nix::errno::Errno::last() == nix::errno::Errno::EPERM
                    // SAFETY: clone3 with a null argument has no effect.
                    && unsafe { libc::syscall(libc::SYS_clone3, 0, 0) } == -1
                    && nix::errno::Errno::last() == nix::errno::Errno::ENOSYS
                    && x32_refused()
                    && nix::unistd::getpid().as_raw() > 0;
                // SAFETY: ends the child at once.
                unsafe { libc::_exit(if ok { 0 } else { 1 }) }
            }
            nix::unistd::ForkResult::Parent { child } => {
                let st = nix::sys::wait::waitpid(child, None).unwrap();
                assert_eq!(st, nix::sys::wait::WaitStatus::Exited(child, 0));
            }
        }
    }
}
