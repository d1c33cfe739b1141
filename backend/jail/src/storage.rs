//! The storage driver: how a volume image is copied for a snapshot and
//! back for a restore.
//!
//! Every driver keeps today's volume format, a sparse ext4 image on a loop
//! device (the disk quota stays a hard `ENOSPC` of its own filesystem);
//! they differ in how an image is duplicated:
//!
//! - [`Driver::Reflink`], where the node's state folder is on a filesystem
//!   that shares extents (btrfs, XFS with reflink): a copy is an `FICLONE`,
//!   copy-on-write, taking constant time whatever the volume holds.
//! - [`Driver::Copy`] everywhere else: the image's data extents are copied
//!   in the kernel (`copy_file_range`), its holes left holes.
//!
//! Either way a mounted volume is frozen (`FIFREEZE`: the filesystem flushes
//! and blocks its writers) for the duration of the copy, so a snapshot is
//! the filesystem at one instant, never a copy of a changing file.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use crate::error::JailError;

/// How the node duplicates volume images.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Driver {
    /// Copy-on-write clones of the image file.
    Reflink,
    /// A sparse copy of the image's data.
    Copy,
}

impl Driver {
    /// The driver the filesystem holding `dir` allows: a small file is
    /// cloned there as a probe.
    pub fn detect(dir: &Path) -> Driver {
        let a = dir.join(format!(".clone-probe-{}-a", std::process::id()));
        let b = dir.join(format!(".clone-probe-{}-b", std::process::id()));
        let probe = || -> io::Result<()> {
            fs::write(&a, [0u8; 4096])?;
            clone(&File::open(&a)?, &File::create(&b)?)
        };
        let driver = match probe() {
            Ok(()) => Driver::Reflink,
            Err(_) => Driver::Copy,
        };
        let _ = fs::remove_file(&a);
        let _ = fs::remove_file(&b);
        driver
    }

    /// Its name, as `stockade doctor` and the panel show it.
    pub fn name(self) -> &'static str {
        match self {
            Driver::Reflink => "reflink (copy-on-write clones)",
            Driver::Copy => "copy (sparse copy of a frozen volume)",
        }
    }

    /// Makes `to` (created, or replaced) hold what `from` holds.
    pub(crate) fn duplicate(self, from: &Path, to: &Path) -> Result<(), JailError> {
        let src = File::open(from).map_err(JailError::io("open", from))?;
        let dst = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(to)
            .map_err(JailError::io("create", to))?;
        match self {
            Driver::Reflink => clone(&src, &dst).map_err(JailError::io("clone into", to))?,
            Driver::Copy => sparse_copy(&src, &dst).map_err(JailError::io("copy into", to))?,
        }
        dst.sync_all().map_err(JailError::io("sync", to))
    }
}

/// Host bytes a file takes (its allocated blocks).
pub(crate) fn allocated_bytes(path: &Path) -> Result<u64, JailError> {
    let m = fs::metadata(path).map_err(JailError::io("stat", path))?;
    Ok(m.blocks().saturating_mul(512))
}

fn clone(src: &File, dst: &File) -> io::Result<()> {
    // SAFETY: FICLONE takes the source descriptor as its argument; both
    // descriptors are open for the call's duration.
    let r = unsafe { libc::ioctl(dst.as_raw_fd(), libc::FICLONE, src.as_raw_fd()) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Copies the data extents of `src` into `dst` at the same offsets, leaving
/// holes as holes, then sets `dst`'s length to `src`'s.
fn sparse_copy(src: &File, dst: &File) -> io::Result<()> {
    use nix::unistd::{Whence, lseek};
    let len = src.metadata()?.len();
    dst.set_len(0)?;
    let mut pos: i64 = 0;
    let end = i64::try_from(len).map_err(io::Error::other)?;
    while pos < end {
        let data = match lseek(src, pos, Whence::SeekData) {
            Ok(d) => d,
            // No data after `pos`: the rest is a hole.
            Err(nix::errno::Errno::ENXIO) => break,
            Err(e) => return Err(e.into()),
        };
        let hole = lseek(src, data, Whence::SeekHole).map_err(io::Error::from)?;
        let mut off_in = data;
        let mut off_out = data;
        while off_in < hole {
            let want = usize::try_from(hole - off_in).unwrap_or(usize::MAX);
            // SAFETY: both descriptors are open; the offsets are ours.
            let n = unsafe {
                libc::copy_file_range(
                    src.as_raw_fd(),
                    &raw mut off_in,
                    dst.as_raw_fd(),
                    &raw mut off_out,
                    want.min(1 << 30),
                    0,
                )
            };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the image ended while it was copied",
                ));
            }
        }
        pos = hole;
    }
    dst.set_len(len)
}

/// A frozen filesystem: thawed when dropped.
pub(crate) struct Frozen {
    dir: File,
}

// _IOWR('X', 119, int) and _IOWR('X', 120, int) of <linux/fs.h>.
const FIFREEZE: libc::Ioctl = 0xC004_5877;
const FITHAW: libc::Ioctl = 0xC004_5878;

impl Frozen {
    /// Freezes the filesystem mounted on `mount_point`. One left frozen by
    /// a crash is thawed first, then frozen for this caller.
    pub(crate) fn freeze(mount_point: &Path) -> Result<Frozen, JailError> {
        let dir = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY)
            .open(mount_point)
            .map_err(JailError::io("open", mount_point))?;
        let freeze = || {
            // SAFETY: an ioctl on an open descriptor; the argument is unused.
            unsafe { libc::ioctl(dir.as_raw_fd(), FIFREEZE, 0) }
        };
        if freeze() != 0 {
            let first = io::Error::last_os_error();
            if first.raw_os_error() != Some(libc::EBUSY) {
                return Err(JailError::io("freeze", mount_point)(first));
            }
            thaw(&dir);
            if freeze() != 0 {
                return Err(JailError::io("freeze", mount_point)(
                    io::Error::last_os_error(),
                ));
            }
        }
        Ok(Frozen { dir })
    }
}

fn thaw(dir: &File) {
    // SAFETY: as for the freeze; EINVAL (not frozen) is fine.
    unsafe { libc::ioctl(dir.as_raw_fd(), FITHAW, 0) };
}

impl Drop for Frozen {
    fn drop(&mut self) {
        thaw(&self.dir);
    }
}

/// Thaws the filesystem on `mount_point` if it is frozen (one a crashed
/// snapshot left frozen); nothing otherwise.
pub(crate) fn thaw_mounted(mount_point: &Path) {
    if let Ok(dir) = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY)
        .open(mount_point)
    {
        thaw(&dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, SeekFrom, Write};

    #[test]
    fn a_sparse_copy_keeps_data_and_holes() {
        let dir = tempfile::tempdir().unwrap();
        let from = dir.path().join("a");
        let to = dir.path().join("b");
        let mut f = File::create(&from).unwrap();
        f.set_len(64 << 20).unwrap();
        f.seek(SeekFrom::Start(1 << 20)).unwrap();
        f.write_all(&[7u8; 8192]).unwrap();
        f.seek(SeekFrom::Start(40 << 20)).unwrap();
        f.write_all(b"end of data").unwrap();
        drop(f);
        // Something to overwrite: the copy replaces it whole.
        fs::write(&to, vec![1u8; 100 << 10]).unwrap();
        Driver::Copy.duplicate(&from, &to).unwrap();
        assert_eq!(fs::metadata(&to).unwrap().len(), 64 << 20);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        File::open(&from).unwrap().read_to_end(&mut a).unwrap();
        File::open(&to).unwrap().read_to_end(&mut b).unwrap();
        assert!(a == b, "the copy differs from its source");
        // Holes stayed holes: far less than the file's length is allocated.
        assert!(allocated_bytes(&to).unwrap() < 4 << 20);
    }

    #[test]
    fn a_filesystem_without_clones_is_copied() {
        // The test folder's filesystem may share extents or not; either
        // way what it duplicates is equal.
        let dir = tempfile::tempdir().unwrap();
        let driver = Driver::detect(dir.path());
        let from = dir.path().join("a");
        fs::write(&from, b"volume").unwrap();
        driver.duplicate(&from, &dir.path().join("b")).unwrap();
        assert_eq!(fs::read(dir.path().join("b")).unwrap(), b"volume");
    }
}
