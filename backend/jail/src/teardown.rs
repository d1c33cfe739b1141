//! Removing a jail's folder from the node without ever reaching through a
//! mount point. A jail's folder may have other filesystems mounted below it:
//! its volume, and for a jail with a user namespace the shared image, seen
//! through an id-mapped mount. Deleting files through such a mount deletes
//! the image every other jail runs on, so the folder is torn down in three
//! steps, in this order:
//!
//! 1. unmount everything mounted at or below it, deepest first (detached
//!    lazily where a plain unmount finds it busy);
//! 2. check the mount table again and refuse, naming the mount, if anything
//!    is still mounted there;
//! 3. remove the tree with calls relative to open directory descriptors,
//!    never following a symlink and refusing to enter any directory whose
//!    device or mount differs from the top folder's, so even a mount made
//!    after step 2 is never crossed.

use std::ffi::{CStr, CString, OsStr};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{AT_FDCWD, OFlag};
use nix::sys::stat::Mode;
use nix::unistd::UnlinkatFlags;

use crate::error::JailError;
use crate::host::Host;
use crate::hostinfo;

/// How many times the mount table is read and unmounted from before the
/// check: an unmount may uncover a mount that was stacked below it.
const UNMOUNT_ROUNDS: usize = 4;

/// Tears down a jail's folder `dir`: unmounts what is mounted at or below
/// it (as seen in `<proc_root>/self/mountinfo`), checks nothing is left
/// mounted there, then removes the tree without crossing into another
/// filesystem. A missing folder is not an error.
pub(crate) fn remove_jail_dir(
    host: &dyn Host,
    proc_root: &Path,
    dir: &Path,
) -> Result<(), JailError> {
    let dir = host_path(dir)?;
    if let Some(mount_point) = unmount_resolved(host, proc_root, &dir)? {
        return Err(JailError::StillMounted { dir, mount_point });
    }
    remove_tree(&dir)
}

/// Unmounts everything mounted at or below `dir`, deepest first; a mount
/// that is busy is detached from the tree (the kernel frees it when its
/// last user lets go).
pub(crate) fn unmount_all(host: &dyn Host, proc_root: &Path, dir: &Path) -> Result<(), JailError> {
    let dir = host_path(dir)?;
    match unmount_resolved(host, proc_root, &dir)? {
        None => Ok(()),
        Some(mount_point) => Err(JailError::StillMounted { dir, mount_point }),
    }
}

/// Unmounts what is at or below `dir`; returns the first mount point still
/// there after the last round, if any. Reads the mount table once when
/// nothing is mounted there (the common case).
fn unmount_resolved(
    host: &dyn Host,
    proc_root: &Path,
    dir: &Path,
) -> Result<Option<PathBuf>, JailError> {
    let mut below = mounts_at_or_below(proc_root, dir);
    for _ in 0..UNMOUNT_ROUNDS {
        if below.is_empty() {
            return Ok(None);
        }
        for m in deepest_first(below) {
            host.unmount(&m)?;
        }
        below = mounts_at_or_below(proc_root, dir);
    }
    Ok(below.into_iter().next())
}

/// `dir` as the mount table names it: absolute, with its parent's symlinks
/// resolved (the folder itself is never followed).
fn host_path(dir: &Path) -> Result<PathBuf, JailError> {
    let abs = std::path::absolute(dir).map_err(JailError::io("resolve", dir))?;
    let (Some(parent), Some(name)) = (abs.parent(), abs.file_name()) else {
        return Err(JailError::Invalid {
            what: "jail folder",
            reason: format!("{} has no parent folder", abs.display()),
        });
    };
    match std::fs::canonicalize(parent) {
        Ok(p) => Ok(p.join(name)),
        // No parent, no folder: nothing to resolve or remove.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(abs),
        Err(e) => Err(JailError::io("resolve", parent)(e)),
    }
}

/// Mount points at or below `dir`, in mount table order (parents before
/// the mounts made on them, lower before upper of a stack).
fn mounts_at_or_below(proc_root: &Path, dir: &Path) -> Vec<PathBuf> {
    hostinfo::mounts(proc_root)
        .into_iter()
        .map(|m| m.mount_point)
        .filter(|p| p.starts_with(dir))
        .collect()
}

/// Orders mount points so that each is unmounted before the one it sits
/// on: deepest path first, and of a stack on one point the last made first.
fn deepest_first(mut mounts: Vec<PathBuf>) -> Vec<PathBuf> {
    mounts.reverse();
    // Stable: the reversed table order is kept among equally deep points.
    mounts.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    mounts
}

/// The filesystem and mount a directory is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Place {
    dev: u64,
    /// The mount id, where the kernel reports it (`STATX_MNT_ID`); it also
    /// tells apart two mounts of one filesystem (a bind or id-mapped mount).
    mnt_id: Option<u64>,
    /// The directory is the root of a mount (`STATX_ATTR_MOUNT_ROOT`).
    mount_root: bool,
    dir: bool,
}

impl Place {
    /// Whether a directory here is on the same mount as `top`.
    fn same_mount_as(&self, top: &Place) -> bool {
        let ids = match (self.mnt_id, top.mnt_id) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        };
        self.dev == top.dev && ids && !self.mount_root
    }
}

/// `statx` of `name` relative to `dirfd` (of `dirfd` itself when `name` is
/// empty), never following a symlink.
fn place_at(dirfd: &impl AsFd, name: &CStr) -> Result<Place, Errno> {
    let mut flags = libc::AT_SYMLINK_NOFOLLOW | libc::AT_NO_AUTOMOUNT;
    if name.is_empty() {
        flags |= libc::AT_EMPTY_PATH;
    }
    let mut buf = std::mem::MaybeUninit::<libc::statx>::zeroed();
    // SAFETY: statx reads the NUL-terminated `name` and writes one
    // `struct statx` into `buf`, which is large enough; the fd is borrowed
    // for the duration of the call.
    let r = unsafe {
        libc::statx(
            dirfd.as_fd().as_raw_fd(),
            name.as_ptr(),
            flags,
            libc::STATX_TYPE | libc::STATX_MNT_ID,
            buf.as_mut_ptr(),
        )
    };
    if r == -1 && Errno::last() == Errno::ENOSYS {
        // A kernel without statx: the device is all there is to compare.
        let flags = nix::fcntl::AtFlags::from_bits_truncate(flags);
        let st = nix::sys::stat::fstatat(dirfd, name, flags)?;
        return Ok(Place {
            dev: st.st_dev,
            mnt_id: None,
            mount_root: false,
            dir: st.st_mode & libc::S_IFMT == libc::S_IFDIR,
        });
    }
    Errno::result(r)?;
    // SAFETY: statx succeeded, so it filled in the buffer (which started
    // zeroed, so fields it did not report are 0).
    let st = unsafe { buf.assume_init() };
    let dev = libc::makedev(st.stx_dev_major, st.stx_dev_minor);
    let mnt_id = (st.stx_mask & libc::STATX_MNT_ID != 0).then_some(st.stx_mnt_id);
    let root_attr = u64::from(libc::STATX_ATTR_MOUNT_ROOT.unsigned_abs());
    let mount_root = st.stx_attributes_mask & root_attr != 0 && st.stx_attributes & root_attr != 0;
    Ok(Place {
        dev,
        mnt_id,
        mount_root,
        dir: u32::from(st.stx_mode) & libc::S_IFMT == libc::S_IFDIR,
    })
}

fn c_name(name: &OsStr) -> CString {
    CString::new(name.as_bytes()).unwrap_or_default()
}

/// Opens a directory below `dirfd` (or a path from the working folder)
/// without following a symlink in its last component.
fn open_dir(dirfd: &impl AsFd, name: &CStr) -> Result<OwnedFd, Errno> {
    nix::fcntl::openat(
        dirfd,
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
}

/// Removes the folder `dir` and everything in it, refusing to enter any
/// directory that is not on the same mount as `dir` itself.
fn remove_tree(dir: &Path) -> Result<(), JailError> {
    if dir.components().any(|c| c == Component::ParentDir) {
        return Err(JailError::Invalid {
            what: "jail folder",
            reason: format!("{} holds '..'", dir.display()),
        });
    }
    let (Some(parent), Some(name)) = (dir.parent(), dir.file_name()) else {
        return Err(JailError::Invalid {
            what: "jail folder",
            reason: format!("{} has no parent folder", dir.display()),
        });
    };
    let parent_fd = match open_dir(&AT_FDCWD, &c_path(parent)) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(()),
        Err(e) => return Err(JailError::sys("open", parent)(e)),
    };
    let name = c_name(name);
    let top = match open_dir(&parent_fd, &name) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(()),
        Err(e) => return Err(JailError::sys("open", dir)(e)),
    };
    let here = place_at(&top, c"").map_err(JailError::sys("stat", dir))?;
    // The folder itself must not be a mount (step 2 made sure; this is the
    // same question asked of the open folder).
    if here.mount_root {
        return Err(JailError::StillMounted {
            dir: dir.to_owned(),
            mount_point: dir.to_owned(),
        });
    }
    empty_dir(top, dir, &here)?;
    match nix::unistd::unlinkat(&parent_fd, name.as_c_str(), UnlinkatFlags::RemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(JailError::sys("remove", dir)(e)),
    }
}

fn c_path(p: &Path) -> CString {
    c_name(p.as_os_str())
}

/// The names in an open directory (named `path` in errors), without `.`
/// and `..`, read in full before the caller changes anything in it.
pub(crate) fn entry_names(dir: &mut Dir, path: &Path) -> Result<Vec<CString>, JailError> {
    let mut names = Vec::new();
    for entry in dir.iter() {
        let entry = entry.map_err(JailError::sys("read", path))?;
        let name = entry.file_name();
        if name != c"." && name != c".." {
            names.push(name.to_owned());
        }
    }
    Ok(names)
}

/// Removes everything in the open directory `fd` (named `path` in errors),
/// which is on the mount `top`.
fn empty_dir(fd: OwnedFd, path: &Path, top: &Place) -> Result<(), JailError> {
    let mut dir = Dir::from_fd(fd).map_err(JailError::sys("read", path))?;
    // Names first, then removal: entries are not removed while read.
    let names = entry_names(&mut dir, path)?;
    for name in names {
        let child = path.join(OsStr::from_bytes(name.to_bytes()));
        let place = match place_at(&dir, &name) {
            Ok(p) => p,
            Err(Errno::ENOENT) => continue,
            Err(e) => return Err(JailError::sys("stat", &child)(e)),
        };
        if place.dir {
            if !place.same_mount_as(top) {
                return Err(JailError::CrossesMount {
                    path: child,
                    top: path.to_owned(),
                });
            }
            let sub = match open_dir(&dir, &name) {
                Ok(fd) => fd,
                Err(Errno::ENOENT) => continue,
                Err(e) => return Err(JailError::sys("open", &child)(e)),
            };
            // Asked again of the open folder: between the look and the
            // open, a mount or a symlink may have taken the name's place.
            let opened = place_at(&sub, c"").map_err(JailError::sys("stat", &child))?;
            if !opened.same_mount_as(top) {
                return Err(JailError::CrossesMount {
                    path: child,
                    top: path.to_owned(),
                });
            }
            empty_dir(sub, &child, top)?;
        }
        let flag = if place.dir {
            UnlinkatFlags::RemoveDir
        } else {
            UnlinkatFlags::NoRemoveDir
        };
        match nix::unistd::unlinkat(&dir, name.as_c_str(), flag) {
            Ok(()) | Err(Errno::ENOENT) => {}
            Err(e) => return Err(JailError::sys("remove", &child)(e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::fake::RecordingHost;
    use std::fs;

    /// A fake `/proc` whose mount table is `lines`.
    fn proc_with(root: &Path, lines: &[String]) -> PathBuf {
        let proc = root.join("proc");
        fs::create_dir_all(proc.join("self")).unwrap();
        fs::write(proc.join("self/mountinfo"), lines.join("\n")).unwrap();
        proc
    }

    fn mount_line(id: u32, point: &Path) -> String {
        format!("{id} 22 0:50 / {} rw - ext4 /dev/loop3 rw", point.display())
    }

    #[test]
    fn a_tree_is_removed_without_following_a_symlink_out_of_it() {
        let t = tempfile::tempdir().unwrap();
        let root = fs::canonicalize(t.path()).unwrap();
        let outside = root.join("image");
        fs::create_dir_all(outside.join("bin")).unwrap();
        fs::write(outside.join("bin/sh"), "keep").unwrap();
        let jail = root.join("state/jails/web");
        fs::create_dir_all(jail.join("volume/upper/a/b")).unwrap();
        fs::write(jail.join("jail.json"), "{}").unwrap();
        fs::write(jail.join("volume/upper/a/b/f"), "x").unwrap();
        std::os::unix::fs::symlink(&outside, jail.join("lower")).unwrap();
        std::os::unix::fs::symlink(&outside, jail.join("volume/upper/a/escape")).unwrap();
        std::os::unix::fs::symlink(outside.join("bin/sh"), jail.join("sh")).unwrap();
        let proc = proc_with(&root, &[]);
        let host = RecordingHost::default();
        remove_jail_dir(&host, &proc, &jail).unwrap();
        assert!(!jail.exists());
        assert!(
            root.join("state/jails").is_dir(),
            "only the jail's folder goes"
        );
        assert_eq!(fs::read_to_string(outside.join("bin/sh")).unwrap(), "keep");
        assert!(host.calls().is_empty(), "{:?}", host.calls());
        // Removing it again is not an error.
        remove_jail_dir(&host, &proc, &jail).unwrap();
    }

    #[test]
    fn a_symlink_as_the_jail_folder_is_not_followed() {
        let t = tempfile::tempdir().unwrap();
        let root = fs::canonicalize(t.path()).unwrap();
        let outside = root.join("image");
        fs::create_dir_all(&outside).unwrap();
        fs::write(outside.join("f"), "keep").unwrap();
        fs::create_dir_all(root.join("jails")).unwrap();
        let jail = root.join("jails/web");
        std::os::unix::fs::symlink(&outside, &jail).unwrap();
        let proc = proc_with(&root, &[]);
        let err = remove_jail_dir(&RecordingHost::default(), &proc, &jail).unwrap_err();
        assert!(err.to_string().contains("jails/web"), "{err}");
        assert_eq!(fs::read_to_string(outside.join("f")).unwrap(), "keep");
    }

    #[test]
    fn mounts_are_unmounted_deepest_first_and_one_left_stops_the_removal() {
        let t = tempfile::tempdir().unwrap();
        let root = fs::canonicalize(t.path()).unwrap();
        let jail = root.join("jails/web");
        fs::create_dir_all(jail.join("volume/upper")).unwrap();
        fs::create_dir_all(jail.join("lower")).unwrap();
        fs::write(jail.join("lower/f"), "image file").unwrap();
        // The fake host unmounts nothing: the table stays as it is.
        let proc = proc_with(
            &root,
            &[
                mount_line(40, &root.join("jails/webby")),
                mount_line(41, &jail.join("volume")),
                mount_line(42, &jail.join("lower")),
                mount_line(43, &jail.join("volume/upper")),
                mount_line(44, &jail.join("lower")),
            ],
        );
        let host = RecordingHost::default();
        let err = remove_jail_dir(&host, &proc, &jail).unwrap_err();
        let calls = host.calls();
        let first_round = &calls[..4];
        assert_eq!(
            first_round,
            [
                "unmount upper",
                "unmount lower",
                "unmount lower",
                "unmount volume"
            ]
        );
        assert_eq!(calls.len(), 4 * UNMOUNT_ROUNDS, "{calls:?}");
        assert!(matches!(err, JailError::StillMounted { .. }), "{err}");
        assert!(err.to_string().contains("jails/web/volume"), "{err}");
        assert_eq!(
            fs::read_to_string(jail.join("lower/f")).unwrap(),
            "image file"
        );
    }

    #[test]
    fn deepest_first_keeps_stacks_in_reverse_order() {
        let m = |s: &str| PathBuf::from(s);
        assert_eq!(
            deepest_first(vec![m("/j"), m("/j/a"), m("/j/a/b"), m("/j/c"), m("/j/a")]),
            [m("/j/a/b"), m("/j/a"), m("/j/c"), m("/j/a"), m("/j")]
        );
    }

    /// Detaches a test's mounts however the test ends.
    struct Unmount(Vec<PathBuf>);

    impl Drop for Unmount {
        fn drop(&mut self) {
            for p in self.0.iter().rev() {
                let _ = nix::mount::umount2(p, nix::mount::MntFlags::MNT_DETACH);
            }
        }
    }

    fn bind(source: &Path, target: &Path) {
        nix::mount::mount(
            Some(source),
            target,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .unwrap();
    }

    fn mounted(p: &Path) -> bool {
        hostinfo::mounts(Path::new("/proc"))
            .iter()
            .any(|m| m.mount_point.starts_with(p))
    }

    #[test]
    fn root_bind_mounts_below_are_unmounted_and_their_source_kept() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!(
                "SKIPPED root_bind_mounts_below_are_unmounted_and_their_source_kept: needs root"
            );
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let root = fs::canonicalize(t.path()).unwrap();
        let image = root.join("image");
        fs::create_dir_all(image.join("etc")).unwrap();
        fs::write(image.join("etc/passwd"), "root:x:0:0").unwrap();
        let jail = root.join("jails/web");
        fs::create_dir_all(jail.join("lower")).unwrap();
        fs::create_dir_all(jail.join("volume")).unwrap();
        fs::write(jail.join("jail.json"), "{}").unwrap();
        // The image below the folder, a second mount on top of it, and one
        // inside the first: all of one filesystem, so only the mount ids
        // tell them apart.
        let _guard = Unmount(vec![
            jail.join("lower"),
            jail.join("lower"),
            jail.join("lower/etc"),
            jail.join("volume"),
        ]);
        bind(&image, &jail.join("lower"));
        bind(&image, &jail.join("lower"));
        bind(&image.join("etc"), &jail.join("lower/etc"));
        bind(&image, &jail.join("volume"));
        // Removing without unmounting first refuses at the first mount.
        let err = remove_tree(&jail).unwrap_err();
        assert!(matches!(err, JailError::CrossesMount { .. }), "{err}");
        assert_eq!(
            fs::read_to_string(image.join("etc/passwd")).unwrap(),
            "root:x:0:0"
        );
        // The teardown unmounts all of them, then removes the folder.
        remove_jail_dir(&crate::host::LinuxHost, Path::new("/proc"), &jail).unwrap();
        assert!(!jail.exists());
        assert!(!mounted(&jail), "a mount is left under {}", jail.display());
        assert_eq!(
            fs::read_to_string(image.join("etc/passwd")).unwrap(),
            "root:x:0:0"
        );
    }
}
