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
        // In a jail with a user namespace the file is made as the jail's
        // root (host root has no id in the jail's mounts), so it belongs to
        // the jail's range like everything else on its volume.
        let fd = {
            let _as_jail_root = jail_root_ids(&self.config().proc_root, pid).map(FsIds::set);
            openat2(&folder, file, how).map_err(|e| sys("create", &shown, e))?
        };
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

/// The host uid and gid of root in the user namespace of process `pid`;
/// `None` when root there is host root.
fn jail_root_ids(proc_root: &std::path::Path, pid: i32) -> Option<(u32, u32)> {
    let root_of = |file: &str| -> Option<u32> {
        let map = std::fs::read_to_string(proc_root.join(pid.to_string()).join(file)).ok()?;
        map.lines().find_map(|l| {
            let mut f = l.split_whitespace();
            (f.next()? == "0").then_some(())?;
            f.next()?.parse().ok()
        })
    };
    let (uid, gid) = (root_of("uid_map")?, root_of("gid_map")?);
    (uid != 0 || gid != 0).then_some((uid, gid))
}

/// The calling thread's filesystem user and group ids, set for a while and
/// put back when dropped. They are the thread's own: other threads are
/// unaffected.
struct FsIds {
    uid: libc::uid_t,
    gid: libc::gid_t,
}

impl FsIds {
    fn set((uid, gid): (u32, u32)) -> Self {
        // SAFETY: setfsgid and setfsuid change only the calling thread's
        // filesystem ids and return the previous ones; they cannot fail in
        // a way that harms memory. The group goes first, while the thread
        // still has the capability to change it.
        let (old_gid, old_uid) = unsafe { (libc::setfsgid(gid), libc::setfsuid(uid)) };
        Self {
            uid: libc::uid_t::try_from(old_uid).unwrap_or(0),
            gid: libc::gid_t::try_from(old_gid).unwrap_or(0),
        }
    }
}

impl Drop for FsIds {
    fn drop(&mut self) {
        // SAFETY: as in `set`; the user id goes back first, which restores
        // the capability to set the group id back.
        unsafe {
            libc::setfsuid(self.uid);
            libc::setfsgid(self.gid);
        }
    }
}
