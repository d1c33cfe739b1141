//! The devices a jail may open: the same short allow-list on cgroup v1 (the
//! `devices` controller's rules) and v2 (a `BPF_PROG_TYPE_CGROUP_DEVICE`
//! program attached to the jail's group). Every other device, block devices
//! included, is refused by the kernel whatever node a jail finds or makes.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use nix::errno::Errno;

use crate::error::JailError;

/// Character devices a jail may use: (major, minor, or `None` for any minor).
pub(crate) const ALLOWED: [(u32, Option<u32>); 8] = [
    (1, Some(3)), // null
    (1, Some(5)), // zero
    (1, Some(7)), // full
    (1, Some(8)), // random
    (1, Some(9)), // urandom
    (5, Some(0)), // tty
    (5, Some(2)), // ptmx
    (136, None),  // the jail's own pseudo-terminals
];

/// The v1 rules: deny everything, then allow the list.
pub(crate) fn v1_rules() -> Vec<(&'static str, String)> {
    let mut rules = vec![("devices.deny", "a".to_owned())];
    for (major, minor) in ALLOWED {
        let minor = minor.map_or("*".to_owned(), |m| m.to_string());
        rules.push(("devices.allow", format!("c {major}:{minor} rwm")));
    }
    rules
}

/// One eBPF instruction (`struct bpf_insn`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

const BPF_LDX_W_MEM: u8 = 0x61; // BPF_LDX | BPF_W | BPF_MEM
const BPF_ALU64_AND_K: u8 = 0x57; // BPF_ALU64 | BPF_AND | BPF_K
const BPF_JNE_K: u8 = 0x55; // BPF_JMP | BPF_JNE | BPF_K
const BPF_MOV64_K: u8 = 0xb7; // BPF_ALU64 | BPF_MOV | BPF_K
const BPF_EXIT: u8 = 0x95; // BPF_JMP | BPF_EXIT
const DEVCG_DEV_CHAR: i32 = 2;

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (src << 4) | dst,
        off,
        imm,
    }
}

/// The v2 program: with `struct bpf_cgroup_dev_ctx { access_type, major,
/// minor }` in r1, answers 1 (allow) for a character device on the list
/// and 0 for anything else.
pub(crate) fn program() -> Vec<Insn> {
    let mut p = vec![
        insn(BPF_LDX_W_MEM, 2, 1, 0, 0),        // r2 = access_type
        insn(BPF_ALU64_AND_K, 2, 0, 0, 0xffff), // r2 = device type
        insn(BPF_LDX_W_MEM, 3, 1, 4, 0),        // r3 = major
        insn(BPF_LDX_W_MEM, 4, 1, 8, 0),        // r4 = minor
    ];
    // Not a character device: jump to the refusal at the end.
    let per_rule = |minor: Option<u32>| if minor.is_some() { 4 } else { 3 };
    let body: i16 = ALLOWED.iter().map(|(_, m)| per_rule(*m)).sum::<i16>();
    p.push(insn(BPF_JNE_K, 2, 0, body, DEVCG_DEV_CHAR));
    for (major, minor) in ALLOWED {
        let skip = per_rule(minor) - 1;
        p.push(insn(
            BPF_JNE_K,
            3,
            0,
            skip,
            i32::try_from(major).unwrap_or(-1),
        ));
        if let Some(minor) = minor {
            p.push(insn(BPF_JNE_K, 4, 0, 2, i32::try_from(minor).unwrap_or(-1)));
        }
        p.push(insn(BPF_MOV64_K, 0, 0, 0, 1));
        p.push(insn(BPF_EXIT, 0, 0, 0, 0));
    }
    p.push(insn(BPF_MOV64_K, 0, 0, 0, 0));
    p.push(insn(BPF_EXIT, 0, 0, 0, 0));
    p
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;

/// The first fields of `union bpf_attr` for BPF_PROG_LOAD.
#[repr(C)]
#[derive(Default)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
}

/// The fields of `union bpf_attr` for BPF_PROG_ATTACH.
#[repr(C)]
#[derive(Default)]
struct ProgAttach {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
}

/// The fields of `union bpf_attr` for BPF_PROG_QUERY.
#[repr(C)]
#[derive(Default)]
struct ProgQuery {
    target_fd: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
}

const BPF_PROG_QUERY: libc::c_long = 16;

/// Attaches the device program to the v2 group at `group`, unless the
/// group has one already (a group keeps it for its lifetime).
pub(crate) fn attach_v2(group: &Path) -> Result<(), JailError> {
    let dir = std::fs::File::open(group).map_err(JailError::io("open cgroup", group))?;
    let mut query = ProgQuery {
        target_fd: u32::try_from(dir.as_raw_fd()).unwrap_or(0),
        attach_type: BPF_CGROUP_DEVICE,
        ..ProgQuery::default()
    };
    // SAFETY: BPF_PROG_QUERY reads and fills the attribute record, alive
    // for the call; with no id buffer it only counts.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_QUERY,
            &raw mut query,
            std::mem::size_of::<ProgQuery>(),
        )
    };
    if r == 0 && query.prog_cnt > 0 {
        return Ok(());
    }
    let insns = program();
    let load = ProgLoad {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: u32::try_from(insns.len()).unwrap_or(0),
        insns: insns.as_ptr() as u64,
        license: c"Apache-2.0".as_ptr() as u64,
        ..ProgLoad::default()
    };
    // SAFETY: BPF_PROG_LOAD reads the attribute record and the instructions
    // it points at, both alive for the call; the result is a new fd.
    let prog = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            &raw const load,
            std::mem::size_of::<ProgLoad>(),
        )
    };
    let prog = i32::try_from(prog).unwrap_or(-1);
    if prog < 0 {
        return Err(JailError::sys("load device program", group)(Errno::last()));
    }
    // SAFETY: `prog` was just returned by the kernel and is owned here only.
    let prog = unsafe { OwnedFd::from_raw_fd(prog) };
    let attach = ProgAttach {
        target_fd: u32::try_from(dir.as_raw_fd()).unwrap_or(0),
        attach_bpf_fd: u32::try_from(prog.as_raw_fd()).unwrap_or(0),
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: 0,
    };
    // SAFETY: BPF_PROG_ATTACH reads the attribute record, alive for the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_ATTACH,
            &raw const attach,
            std::mem::size_of::<ProgAttach>(),
        )
    };
    Errno::result(r)
        .map(drop)
        .map_err(JailError::sys("attach device program", group))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the program as the kernel would on one device access.
    fn verdict(kind: u32, major: u32, minor: u32) -> i64 {
        let p = program();
        let ctx = [kind | (7 << 16), major, minor];
        let mut r = [0i64; 11];
        let mut pc = 0usize;
        loop {
            let i = p[pc];
            let (dst, src) = (usize::from(i.regs & 0xf), usize::from(i.regs >> 4));
            pc += 1;
            match i.code {
                BPF_LDX_W_MEM => {
                    assert_eq!(src, 1);
                    r[dst] = i64::from(ctx[usize::try_from(i.off).unwrap() / 4]);
                }
                BPF_ALU64_AND_K => r[dst] &= i64::from(i.imm),
                BPF_MOV64_K => r[dst] = i64::from(i.imm),
                BPF_JNE_K => {
                    if r[dst] != i64::from(i.imm) {
                        pc = pc.checked_add_signed(isize::from(i.off)).unwrap();
                    }
                }
                BPF_EXIT => return r[0],
                c => panic!("unexpected instruction {c:#x}"),
            }
        }
    }

    #[test]
    fn the_program_allows_exactly_the_listed_character_devices() {
        for (major, minor) in ALLOWED {
            assert_eq!(
                verdict(2, major, minor.unwrap_or(4)),
                1,
                "{major}:{minor:?}"
            );
        }
        assert_eq!(verdict(2, 136, 0), 1, "any pseudo-terminal");
        assert_eq!(verdict(2, 1, 1), 0, "/dev/mem");
        assert_eq!(verdict(2, 10, 237), 0, "/dev/loop-control");
        assert_eq!(verdict(2, 5, 1), 0, "/dev/console");
        assert_eq!(verdict(1, 1, 3), 0, "a block device with a listed number");
        assert_eq!(verdict(1, 7, 0), 0, "a loop device");
    }

    #[test]
    fn v1_rules_deny_everything_then_allow_the_list() {
        let rules = v1_rules();
        assert_eq!(rules[0], ("devices.deny", "a".to_owned()));
        assert!(rules.contains(&("devices.allow", "c 1:3 rwm".to_owned())));
        assert!(rules.contains(&("devices.allow", "c 136:* rwm".to_owned())));
        assert_eq!(rules.len(), ALLOWED.len() + 1);
    }

    /// The v2 program in a real group: the node's unified hierarchy (on a
    /// hybrid node the one at `unified/`), a child process moved into it.
    #[test]
    fn the_v2_program_refuses_unlisted_devices_in_a_real_group() {
        let unified = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
            .map(Path::new)
            .into_iter()
            .find(|p| p.join("cgroup.procs").exists() && p.join("cgroup.controllers").exists());
        let (true, Some(unified)) = (nix::unistd::geteuid().is_root(), unified) else {
            eprintln!("SKIPPED: needs root and a cgroup v2 hierarchy");
            return;
        };
        let group = unified.join(format!("stockade-devices-test-{}", std::process::id()));
        std::fs::create_dir(&group).unwrap();
        let result = std::panic::catch_unwind(|| {
            attach_v2(&group).unwrap();
            attach_v2(&group).unwrap(); // once only
            let procs = std::ffi::CString::new(
                group
                    .join("cgroup.procs")
                    .into_os_string()
                    .into_encoded_bytes(),
            )
            .unwrap();
            // SAFETY: the child only makes system calls and ends with _exit.
            match unsafe { nix::unistd::fork() }.unwrap() {
                nix::unistd::ForkResult::Child => {
                    let open = |p: &std::ffi::CStr, flags| {
                        // SAFETY: opens a NUL-terminated path.
                        let fd = unsafe { libc::open(p.as_ptr(), flags | libc::O_CLOEXEC) };
                        if fd >= 0 {
                            // SAFETY: closes the fd just opened.
                            unsafe { libc::close(fd) };
                            0
                        } else {
                            Errno::last() as i32
                        }
                    };
                    // SAFETY: opens, writes "0" (this process) and closes.
                    let joined = unsafe {
                        let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                        let n = libc::write(fd, c"0".as_ptr().cast(), 1);
                        libc::close(fd);
                        fd >= 0 && n == 1
                    };
                    let code = if !joined {
                        10
                    } else if open(c"/dev/null", libc::O_RDWR) != 0 {
                        11
                    } else if open(c"/dev/loop-control", libc::O_RDWR) != libc::EPERM {
                        12
                    } else {
                        0
                    };
                    // SAFETY: ends the child at once.
                    unsafe { libc::_exit(code) }
                }
                nix::unistd::ForkResult::Parent { child } => {
                    let status = nix::sys::wait::waitpid(child, None).unwrap();
                    assert_eq!(
                        status,
                        nix::sys::wait::WaitStatus::Exited(child, 0),
                        "10: not joined, 11: /dev/null refused, 12: /dev/loop-control allowed"
                    );
                }
            }
        });
        std::fs::remove_dir(&group).unwrap();
        result.unwrap();
    }
}
