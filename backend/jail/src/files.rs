//! Writing a customer's file into a running jail's filesystem.
//!
//! The write goes through the jail's own root (`/proc/<init>/root`) with
//! `openat2(RESOLVE_IN_ROOT)`, so every symlink a customer planted is resolved
//! inside the jail and can never lead to a host file, and it goes through the
//! overlay, so the jail sees the file at once and the volume's quota applies.

use std::fs::File;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::PathBuf;

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use nix::sys::stat::Mode;

use crate::error::JailError;
use crate::spec::JailStatus;
use crate::{Engine, JailName};

/// Refuses anything but a plain file name (see [`stockade_domain::FileName`]).
pub fn check_file_name(name: &str) -> Result<(), JailError> {
    stockade_domain::FileName::parse(name)
        .map(drop)
        .map_err(|e| JailError::Invalid {
            what: "file name",
            reason: e.reason,
        })
}

fn resolve() -> ResolveFlag {
    ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS
}

/// Opens (creating as needed) the folder `dir` (relative, `/`-separated) inside the jail root.
fn open_dir(root: &OwnedFd, dir: &str, shown: &std::path::Path) -> Result<OwnedFd, JailError> {
    let how = || {
        OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
            .resolve(resolve())
    };
    let mut current = openat2(root, ".", how()).map_err(|e| sys("open", shown, e))?;
    for part in dir.split('/').filter(|p| !p.is_empty()) {
        if part == "." || part == ".." {
            return Err(JailError::Invalid {
                what: "folder",
                reason: format!("{dir:?} may not contain . or .."),
            });
        }
        match nix::sys::stat::mkdirat(&current, part, Mode::from_bits_truncate(0o755)) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(sys("mkdir", shown, e)),
        }
        current = openat2(&current, part, how()).map_err(|e| sys("open", shown, e))?;
    }
    Ok(current)
}

fn sys(op: &'static str, path: &std::path::Path, source: Errno) -> JailError {
    JailError::Sys {
        op,
        path: path.to_owned(),
        source,
    }
}

impl Engine {
    /// Writes `data` as `dir/file` inside the running jail `name`, replacing
    /// any file of that name. A full volume fails with ENOSPC and leaves no
    /// partial file.
    pub fn write_file(
        &self,
        name: &JailName,
        dir: &str,
        file: &str,
        data: &[u8],
    ) -> Result<(), JailError> {
        check_file_name(file)?;
        let Some(JailStatus::Running { pid }) = self.status(name)? else {
            return Err(JailError::NotRunning(name.to_string()));
        };
        let root_path = self.config().proc_root.join(pid.to_string()).join("root");
        let shown = PathBuf::from(format!("{name}:/{}/{file}", dir.trim_matches('/')));
        let root = openat2(
            nix::fcntl::AT_FDCWD,
            &root_path,
            OpenHow::new().flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC),
        )
        .map_err(|e| sys("open", &root_path, e))?;
        let folder = open_dir(&root, dir, &shown)?;
        let how = OpenHow::new()
            .flags(
                OFlag::O_WRONLY
                    | OFlag::O_CREAT
                    | OFlag::O_TRUNC
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_CLOEXEC,
            )
            .mode(Mode::from_bits_truncate(0o644))
            .resolve(resolve());
        let fd = openat2(&folder, file, how).map_err(|e| sys("create", &shown, e))?;
        let mut out = File::from(fd);
        if let Err(e) = out.write_all(data).and_then(|()| out.sync_all()) {
            drop(out);
            // Leave no half-written file behind.
            let _ = nix::unistd::unlinkat(&folder, file, nix::unistd::UnlinkatFlags::NoRemoveDir);
            return Err(JailError::Io {
                op: "write",
                path: shown,
                source: e,
            });
        }
        Ok(())
    }
}
