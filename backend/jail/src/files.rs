//! Writing a customer's file into a running jail's filesystem.
//!
//! The write goes through the jail's own root (`/proc/<init>/root`) with
//! `openat2(RESOLVE_IN_ROOT)`, so every symlink a customer planted is resolved
//! inside the jail and can never lead to a host file, and it goes through the
//! overlay, so the jail sees the file at once and the volume's quota applies.
//!
//! Nothing the tenant made is ever opened: the data goes into a new file of
//! our own in the target folder (`O_CREAT | O_EXCL | O_NOFOLLOW | O_NONBLOCK`),
//! which is renamed over the target name once it is complete. A FIFO, socket,
//! device, symlink or folder at the target name is refused before anything is
//! written, so no call here can block on what a tenant planted, and a failure
//! at any step leaves the folder as it was.

use std::fs::File;
use std::hash::{BuildHasher, Hasher};
use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, OpenHow, ResolveFlag, openat2, renameat};
use nix::sys::stat::{Mode, SFlag, fstatat};
use nix::unistd::{UnlinkatFlags, unlinkat};

use crate::error::JailError;
use crate::spec::JailStatus;
use crate::state::{self, JailPaths};
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
fn open_dir(root: &OwnedFd, dir: &str, shown: &Path) -> Result<OwnedFd, JailError> {
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

fn sys(op: &'static str, path: &Path, source: Errno) -> JailError {
    JailError::Sys {
        op,
        path: path.to_owned(),
        source,
    }
}

/// What kind of file a mode names, in words, when it is not a regular file.
fn not_regular(mode: u32) -> Option<&'static str> {
    let kind = SFlag::from_bits_truncate(mode & SFlag::S_IFMT.bits());
    Some(match kind {
        SFlag::S_IFREG => return None,
        SFlag::S_IFIFO => "a FIFO",
        SFlag::S_IFSOCK => "a socket",
        SFlag::S_IFCHR => "a character device",
        SFlag::S_IFBLK => "a block device",
        SFlag::S_IFLNK => "a symbolic link",
        SFlag::S_IFDIR => "a folder",
        _ => "not a file",
    })
}

/// Refuses an existing entry at `file` that is not a regular file. The
/// entry itself is never followed or opened.
fn check_target(folder: &OwnedFd, file: &str, shown: &Path) -> Result<(), JailError> {
    match fstatat(folder, file, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => match not_regular(st.st_mode) {
            None => Ok(()),
            Some(kind) => Err(JailError::NotRegularFile {
                file: file.to_owned(),
                kind,
            }),
        },
        Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(sys("stat", shown, e)),
    }
}

/// A name for a new temporary file in the target folder, hidden and
/// unlikely to be taken (the create is exclusive anyway).
fn temp_name(file: &str, attempt: u32) -> String {
    let mut h = std::hash::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u32(attempt);
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    format!(".{file}.upload-{:016x}", h.finish())
}

/// Creates a new temporary file in `folder`; never opens an existing entry.
fn create_temp(folder: &OwnedFd, file: &str, shown: &Path) -> Result<(String, File), JailError> {
    for attempt in 0..8 {
        let name = temp_name(file, attempt);
        let how = OpenHow::new()
            .flags(
                OFlag::O_WRONLY
                    | OFlag::O_CREAT
                    | OFlag::O_EXCL
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_NONBLOCK
                    | OFlag::O_CLOEXEC,
            )
            .mode(Mode::from_bits_truncate(0o644))
            .resolve(resolve());
        match openat2(folder, name.as_str(), how) {
            Ok(fd) => return Ok((name, File::from(fd))),
            Err(Errno::EEXIST) => continue,
            Err(e) => return Err(sys("create", shown, e)),
        }
    }
    Err(sys("create", shown, Errno::EEXIST))
}

/// Writes `data` into a new temporary file of `folder`, then renames it
/// over `file`. Any failure removes the temporary file.
fn write_replacing(
    folder: &OwnedFd,
    file: &str,
    data: &[u8],
    shown: &Path,
) -> Result<(), JailError> {
    check_target(folder, file, shown)?;
    let (temp, mut out) = create_temp(folder, file, shown)?;
    let written = out
        .write_all(data)
        .and_then(|()| out.sync_all())
        .map_err(|source| JailError::Io {
            op: "write",
            path: shown.to_owned(),
            source,
        })
        // The check is repeated just before the rename: a FIFO or folder
        // the tenant made meanwhile is refused rather than replaced.
        .and_then(|()| check_target(folder, file, shown))
        .and_then(|()| {
            renameat(folder, temp.as_str(), folder, file).map_err(|e| sys("rename", shown, e))
        });
    drop(out);
    if written.is_err() {
        // Leave nothing half-written behind.
        let _ = unlinkat(folder, temp.as_str(), UnlinkatFlags::NoRemoveDir);
    }
    written
}

impl Engine {
    /// Writes `data` as `dir/file` inside the running jail `name`, replacing
    /// a regular file of that name and refusing anything else there. The
    /// file belongs to the jail's root. A full volume fails with ENOSPC and
    /// leaves no partial file.
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
        let uid_base = state::load(&JailPaths::new(&self.config().state_dir, name.as_str()))?
            .and_then(|r| r.uid_base);
        let root_path = self.config().proc_root.join(pid.to_string()).join("root");
        let shown = PathBuf::from(format!("{name}:/{}/{file}", dir.trim_matches('/')));
        let root = openat2(
            nix::fcntl::AT_FDCWD,
            &root_path,
            OpenHow::new().flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC),
        )
        .map_err(|e| sys("open", &root_path, e))?;
        // In a jail with a user namespace, folders and files are made as
        // the jail's root (host root has no id in the jail's mounts), so
        // they belong to the jail's range like everything else on its
        // volume; without one, as host root, which is the jail's root.
        let _as_jail_root = uid_base
            .and_then(|_| jail_root_ids(&self.config().proc_root, pid))
            .map(FsIds::set);
        let folder = open_dir(&root, dir, &shown)?;
        write_replacing(&folder, file, data, &shown)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn folder(dir: &Path) -> OwnedFd {
        nix::fcntl::open(
            dir,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .unwrap()
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_regular_file_is_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("index.html"), "old").unwrap();
        let fd = folder(dir.path());
        write_replacing(&fd, "index.html", b"new", Path::new("x")).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("index.html")).unwrap(),
            "new"
        );
        assert_eq!(
            entries(dir.path()),
            ["index.html"],
            "no temporary file left"
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("index.html"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o644);
    }

    #[test]
    fn fifos_links_and_folders_are_refused_without_blocking_or_writing() {
        let dir = tempfile::tempdir().unwrap();
        nix::unistd::mkfifo(&dir.path().join("pipe"), Mode::from_bits_truncate(0o644)).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", dir.path().join("link")).unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let sock = std::os::unix::net::UnixListener::bind(dir.path().join("sock")).unwrap();
        let fd = folder(dir.path());
        for (name, kind) in [
            ("pipe", "a FIFO"),
            ("link", "a symbolic link"),
            ("sub", "a folder"),
            ("sock", "a socket"),
        ] {
            let e = write_replacing(&fd, name, b"data", Path::new("x")).unwrap_err();
            assert_eq!(
                e.to_string(),
                format!("{name} is not a regular file ({kind}); nothing was written")
            );
        }
        drop(sock);
        assert_eq!(entries(dir.path()), ["link", "pipe", "sock", "sub"]);
        assert!(
            std::fs::symlink_metadata(dir.path().join("link"))
                .unwrap()
                .file_type()
                .is_symlink()
        );
    }
}
