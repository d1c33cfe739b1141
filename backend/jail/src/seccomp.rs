//! The system call deny-list of every jail process: calls that reach
//! host-wide kernel state (mounts, modules, keyrings, BPF, reboot) or open
//! ways around the jail (new user namespaces, other namespaces, file
//! handles) fail with `EPERM`; the process lives on and sees an error.
//!
//! The filters are compiled in the engine's process and installed by the
//! jail's first process as its last step before exec.

use std::collections::BTreeMap;

use seccompiler::{
    SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule,
    TargetArch,
};

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

/// The compiled filters, in installation order.
#[derive(Debug, Clone)]
pub(crate) struct Filters {
    programs: Vec<Vec<libc::sock_filter>>,
}

impl Filters {
    /// The filters as `sock_fprog`-ready instruction arrays.
    pub fn programs(&self) -> &[Vec<libc::sock_filter>] {
        &self.programs
    }
}

fn arch() -> Result<TargetArch, JailError> {
    TargetArch::try_from(std::env::consts::ARCH).map_err(|e| JailError::Invalid {
        what: "seccomp architecture",
        reason: e.to_string(),
    })
}

fn compile_error(e: impl std::fmt::Display) -> JailError {
    JailError::Invalid {
        what: "seccomp filter",
        reason: e.to_string(),
    }
}

/// Compiles the jail filters for the running architecture.
pub(crate) fn filters() -> Result<Filters, JailError> {
    let new_user = u64::try_from(libc::CLONE_NEWUSER).map_err(compile_error)?;
    let flag_rule = |arg: u8| -> Result<Vec<SeccompRule>, JailError> {
        let cond = SeccompCondition::new(
            arg,
            SeccompCmpArgLen::Qword,
            SeccompCmpOp::MaskedEq(new_user),
            new_user,
        )
        .map_err(compile_error)?;
        Ok(vec![SeccompRule::new(vec![cond]).map_err(compile_error)?])
    };
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        DENIED.iter().map(|(_, nr)| (*nr, Vec::new())).collect();
    // A new user namespace would give the caller every capability inside
    // it; unshare and clone carry the flag in their first argument.
    rules.insert(libc::SYS_unshare, flag_rule(0)?);
    rules.insert(libc::SYS_clone, flag_rule(0)?);
    let deny = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(u32::try_from(libc::EPERM).map_err(compile_error)?),
        arch()?,
    )
    .map_err(compile_error)?;
    let deny: seccompiler::BpfProgram = deny.try_into().map_err(compile_error)?;
    // clone3 passes its flags in memory, out of a filter's reach: report
    // it as missing, and the C library falls back to clone (checked above).
    let clone3: BTreeMap<i64, Vec<SeccompRule>> = [(libc::SYS_clone3, Vec::new())].into();
    let clone3 = SeccompFilter::new(
        clone3,
        SeccompAction::Allow,
        SeccompAction::Errno(u32::try_from(libc::ENOSYS).map_err(compile_error)?),
        arch()?,
    )
    .map_err(compile_error)?;
    let clone3: seccompiler::BpfProgram = clone3.try_into().map_err(compile_error)?;
    let programs = match x32_and_clone3_guard() {
        // One program: each filter costs a compilation at every jail start
        // and a run at every system call of every jail process.
        Some(mut guard) => {
            guard.extend(to_libc(&deny));
            vec![guard]
        }
        None => vec![to_libc(&deny), to_libc(&clone3)],
    };
    Ok(Filters { programs })
}

fn to_libc(p: &[seccompiler::sock_filter]) -> Vec<libc::sock_filter> {
    p.iter()
        .map(|i| libc::sock_filter {
            code: i.code,
            jt: i.jt,
            jf: i.jf,
            k: i.k,
        })
        .collect()
}

/// On x86_64 the x32 ABI reaches the same calls under other numbers (bit
/// 30 set), which a filter keyed on numbers would let through: refuse them
/// with `ENOSYS`, as clone3 (see above). The deny-list program follows these
/// instructions in the same program; they end in a return or fall through
/// to its first instruction.
#[cfg(target_arch = "x86_64")]
fn x32_and_clone3_guard() -> Option<Vec<libc::sock_filter>> {
    const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
    const X32_SYSCALL_BIT: u32 = 0x4000_0000;
    const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
    let stmt = |code: u32, k: u32| libc::sock_filter {
        code: u16::try_from(code).unwrap_or(0),
        jt: 0,
        jf: 0,
        k,
    };
    let jump = |code: u32, k: u32, jt: u8, jf: u8| libc::sock_filter {
        code: u16::try_from(code).unwrap_or(0),
        jt,
        jf,
        k,
    };
    let enosys = u32::try_from(libc::ENOSYS).unwrap_or(38);
    let clone3 = u32::try_from(libc::SYS_clone3).ok()?;
    // A jump goes to the next instruction plus its offset; 7 is the first
    // instruction of the deny-list program.
    Some(vec![
        // struct seccomp_data: nr at 0, arch at 4.
        /* 0 */
        stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 4),
        /* 1 */
        jump(
            libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K,
            AUDIT_ARCH_X86_64,
            0,
            5,
        ),
        /* 2 */ stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0),
        /* 3 */
        jump(
            libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K,
            X32_SYSCALL_BIT,
            0,
            1,
        ),
        /* 4 */ stmt(libc::BPF_RET | libc::BPF_K, SECCOMP_RET_ERRNO | enosys),
        /* 5 */ jump(libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K, clone3, 0, 1),
        /* 6 */ stmt(libc::BPF_RET | libc::BPF_K, SECCOMP_RET_ERRNO | enosys),
    ])
}

#[cfg(not(target_arch = "x86_64"))]
fn x32_and_clone3_guard() -> Option<Vec<libc::sock_filter>> {
    None
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

    #[test]
    fn filters_compile_for_this_machine() {
        let f = filters().unwrap();
        assert!(!f.programs().is_empty());
        assert!(f.programs().iter().all(|p| !p.is_empty() && p.len() < 4096));
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
