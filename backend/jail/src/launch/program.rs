//! The jail init program and the seccomp filter as sealed descriptors:
//! written once per node, exec'd or loaded from a descriptor.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use nix::errno::Errno;

use crate::error::JailError;

/// The jail's init program, built for this node's architecture and
/// linked statically (see the crate's build script).
pub(super) static INIT_PROGRAM: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/stockade-init"));

/// A name of the init program's content (its FNV-1a hash, from the build
/// script): a new version gets a file of its own.
pub(super) const INIT_NAME: &str = concat!("stockade-init-", env!("STOCKADE_INIT_HASH"));

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
pub(super) fn open_init_file(path: &Path) -> Option<std::fs::File> {
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
pub(super) fn node_init_file(dir: &Path) -> Result<OwnedFd, JailError> {
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
pub(super) fn sealed_file(
    name: &std::ffi::CStr,
    bytes: &[u8],
    exec: bool,
) -> Result<OwnedFd, JailError> {
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
