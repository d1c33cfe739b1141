//! The privileged host operations behind a jail's volume, behind one small
//! trait: [`LinuxHost`] makes the real calls, tests use a recording fake.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};

use crate::error::JailError;

/// Privileged operations on volumes.
pub(crate) trait Host: Send + Sync + std::fmt::Debug {
    /// Makes an ext4 filesystem in the image file.
    fn mkfs(&self, image: &Path) -> Result<(), JailError>;
    /// Attaches the image to a free loop device (detached again by the
    /// kernel when unmounted) and mounts it on `target`; returns the device.
    fn mount_volume(&self, image: &Path, target: &Path) -> Result<PathBuf, JailError>;
    /// Tells the loop device its backing file grew.
    fn refresh_capacity(&self, device: &Path) -> Result<(), JailError>;
    /// Grows the filesystem on `target` (a mounted loop device, or an
    /// unmounted image file) to fill it.
    fn grow_fs(&self, target: &Path) -> Result<(), JailError>;
    /// Unmounts `target` if it is a mount point.
    fn unmount(&self, target: &Path) -> Result<(), JailError>;
    /// Detaches a loop device if still attached.
    fn detach_loop(&self, device: &Path) -> Result<(), JailError>;
    /// Maps ids 0..count of the user namespace of the process whose proc
    /// folder is `pid_dir` to host ids base..base+count (users and groups).
    fn write_id_maps(&self, pid_dir: &Path, base: u32, count: u32) -> Result<(), JailError>;
    /// A detached, read-only copy of the mount of `source` with the id
    /// mapping of the user namespace `userns` (a `/proc/<pid>/ns/user`
    /// file): files owned by host root appear owned by the namespace's
    /// root. Mounted nowhere; the jail attaches it inside its own mount
    /// namespace, and it dissolves when its last descriptor closes.
    fn idmap_tree(&self, source: &Path, userns: &Path) -> Result<OwnedFd, JailError>;
    /// Changes the owner (user and group) of one file.
    fn chown(&self, path: &Path, id: u32) -> Result<(), JailError>;
}

// Loop device ioctls, from <linux/loop.h> (absent from the libc crate).
const LOOP_CLR_FD: libc::c_ulong = 0x4C01;
const LOOP_SET_CAPACITY: libc::c_ulong = 0x4C07;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LO_FLAGS_AUTOCLEAR: u32 = 4;
const LO_FLAGS_DIRECT_IO: u32 = 16;

/// `struct loop_info64`.
#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; 64],
    lo_crypt_name: [u8; 64],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

/// `struct loop_config`.
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

fn ioctl_arg(
    file: &File,
    request: libc::c_ulong,
    arg: libc::c_ulong,
) -> Result<libc::c_int, Errno> {
    // SAFETY: the request takes an integer argument (or none) and the fd is
    // owned by `file` for the duration of the call.
    let r = unsafe { libc::ioctl(file.as_raw_fd(), request, arg) };
    Errno::result(r)
}

/// The real host.
#[derive(Debug, Default)]
pub(crate) struct LinuxHost;

fn run_program(
    program: &'static str,
    args: &[&std::ffi::OsStr],
    object: &Path,
) -> Result<(), JailError> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| JailError::Program {
            program,
            path: object.to_owned(),
            detail: e.to_string(),
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(JailError::Program {
            program,
            path: object.to_owned(),
            detail: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        })
    }
}

impl LinuxHost {
    /// Binds `image` to a free loop device; the returned file keeps the
    /// device open (with autoclear set, closing the last opener detaches it).
    fn attach(&self, image: &Path) -> Result<(File, PathBuf), JailError> {
        let backing = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(image)
            .map_err(JailError::io("open", image))?;
        let ctl_path = Path::new("/dev/loop-control");
        let ctl = File::open(ctl_path).map_err(JailError::io("open", ctl_path))?;
        // Another process may take the free device between GET_FREE and
        // CONFIGURE (EBUSY): ask again.
        for _ in 0..64 {
            let n = ioctl_arg(&ctl, LOOP_CTL_GET_FREE, 0)
                .map_err(JailError::sys("loop get free", ctl_path))?;
            let device = PathBuf::from(format!("/dev/loop{n}"));
            let dev = OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_CLOEXEC)
                .open(&device)
                .map_err(JailError::io("open", &device))?;
            let fd = u32::try_from(backing.as_raw_fd())
                .map_err(|_| JailError::sys("loop configure", &device)(Errno::EBADF))?;
            let config = LoopConfig {
                fd,
                block_size: 4096,
                info: LoopInfo64 {
                    lo_device: 0,
                    lo_inode: 0,
                    lo_rdevice: 0,
                    lo_offset: 0,
                    lo_sizelimit: 0,
                    lo_number: 0,
                    lo_encrypt_type: 0,
                    lo_encrypt_key_size: 0,
                    // Direct IO: the volume's pages are cached once (in the
                    // jail's filesystem), not twice, and its IO reaches the
                    // host disk at the rate the throttle lets through.
                    lo_flags: LO_FLAGS_AUTOCLEAR | LO_FLAGS_DIRECT_IO,
                    lo_file_name: [0; 64],
                    lo_crypt_name: [0; 64],
                    lo_encrypt_key: [0; 32],
                    lo_init: [0; 2],
                },
                reserved: [0; 8],
            };
            // SAFETY: LOOP_CONFIGURE reads a `struct loop_config`, which
            // `LoopConfig` mirrors; the pointer is valid for the call.
            let r = unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_CONFIGURE, &raw const config) };
            match Errno::result(r) {
                Ok(_) => return Ok((dev, device)),
                Err(Errno::EBUSY) => continue,
                Err(e) => return Err(JailError::sys("loop configure", &device)(e)),
            }
        }
        Err(JailError::sys("loop configure", image)(Errno::EBUSY))
    }
}

impl Host for LinuxHost {
    fn write_id_maps(&self, pid_dir: &Path, base: u32, count: u32) -> Result<(), JailError> {
        let line = format!("0 {base} {count}\n");
        for file in ["uid_map", "gid_map"] {
            let p = pid_dir.join(file);
            std::fs::write(&p, &line).map_err(JailError::io("write", &p))?;
        }
        Ok(())
    }

    fn idmap_tree(&self, source: &Path, userns: &Path) -> Result<OwnedFd, JailError> {
        use std::os::fd::FromRawFd;
        let ns = File::open(userns).map_err(JailError::io("open", userns))?;
        let src = crate::engine::c_path(source);
        // SAFETY: open_tree takes a NUL-terminated path and flags; the
        // returned fd is wrapped at once.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_open_tree,
                libc::AT_FDCWD,
                src.as_ptr(),
                libc::OPEN_TREE_CLONE | libc::c_uint::try_from(libc::O_CLOEXEC).unwrap_or(0),
            )
        };
        let fd = Errno::result(fd).map_err(JailError::sys("open_tree", source))?;
        let fd =
            i32::try_from(fd).map_err(|_| JailError::sys("open_tree", source)(Errno::EBADF))?;
        // SAFETY: the kernel just returned this fd; nobody else owns it.
        let tree = unsafe { OwnedFd::from_raw_fd(fd) };
        // Read-only: the image is shared by every jail on it, and the
        // overlay never writes to its lower layer.
        let attr = libc::mount_attr {
            attr_set: libc::MOUNT_ATTR_IDMAP | libc::MOUNT_ATTR_RDONLY,
            attr_clr: 0,
            propagation: 0,
            userns_fd: u64::try_from(ns.as_raw_fd()).unwrap_or(u64::MAX),
        };
        // SAFETY: mount_setattr reads a `struct mount_attr` of the given
        // size; the path is the empty C string.
        let r = unsafe {
            libc::syscall(
                libc::SYS_mount_setattr,
                tree.as_raw_fd(),
                c"".as_ptr(),
                libc::AT_EMPTY_PATH,
                &raw const attr,
                std::mem::size_of::<libc::mount_attr>(),
            )
        };
        Errno::result(r).map_err(JailError::sys("idmap", source))?;
        Ok(tree)
    }

    fn chown(&self, path: &Path, id: u32) -> Result<(), JailError> {
        std::os::unix::fs::chown(path, Some(id), Some(id)).map_err(JailError::io("chown", path))
    }

    fn mkfs(&self, image: &Path) -> Result<(), JailError> {
        // No journal and lazy inode tables: a fresh volume costs a few
        // milliseconds. `-m 0`: the quota is the customer's, no root reserve.
        run_program(
            "mkfs.ext4",
            &[
                "-q".as_ref(),
                "-F".as_ref(),
                "-m".as_ref(),
                "0".as_ref(),
                // The loop device uses 4 KiB logical blocks (direct IO on the
                // backing file); small filesystems would default to 1 KiB.
                "-b".as_ref(),
                "4096".as_ref(),
                // `inline_data`: an empty folder takes no block of its own.
                // The overlay mount of every start makes its work folder
                // anew with the jail's credentials, which may not dip into
                // the last blocks of a full volume; without it, a jail that
                // filled its disk could never start again.
                "-O".as_ref(),
                "^has_journal,inline_data".as_ref(),
                "-E".as_ref(),
                "nodiscard,lazy_itable_init=1".as_ref(),
                image.as_os_str(),
            ],
            image,
        )
    }

    fn mount_volume(&self, image: &Path, target: &Path) -> Result<PathBuf, JailError> {
        let (dev, device) = self.attach(image)?;
        let r = nix::mount::mount(
            Some(&device),
            target,
            Some("ext4"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOATIME,
            None::<&str>,
        );
        if let Err(source) = r {
            let _ = ioctl_arg(&dev, LOOP_CLR_FD, 0);
            return Err(JailError::Mount {
                target: target.to_owned(),
                source,
            });
        }
        Ok(device)
    }

    fn refresh_capacity(&self, device: &Path) -> Result<(), JailError> {
        let dev = File::open(device).map_err(JailError::io("open", device))?;
        ioctl_arg(&dev, LOOP_SET_CAPACITY, 0)
            .map_err(JailError::sys("loop set capacity", device))?;
        Ok(())
    }

    fn grow_fs(&self, target: &Path) -> Result<(), JailError> {
        // -f: an unmounted volume was mounted since its last fsck; it was
        // unmounted cleanly just before, so the check may be skipped.
        // Online, the kernel needs CAP_SYS_RESOURCE (EXT4_IOC_RESIZE_FS).
        run_program("resize2fs", &["-f".as_ref(), target.as_os_str()], target)
    }

    fn unmount(&self, target: &Path) -> Result<(), JailError> {
        match nix::mount::umount2(target, MntFlags::empty()) {
            Ok(()) | Err(Errno::EINVAL | Errno::ENOENT) => Ok(()),
            // Something still holds it (a shell in the folder): detach it
            // from the tree now; the kernel finishes when the holder lets go.
            Err(Errno::EBUSY) => {
                nix::mount::umount2(target, MntFlags::MNT_DETACH).map_err(|source| {
                    JailError::Mount {
                        target: target.to_owned(),
                        source,
                    }
                })
            }
            Err(source) => Err(JailError::Mount {
                target: target.to_owned(),
                source,
            }),
        }
    }

    fn detach_loop(&self, device: &Path) -> Result<(), JailError> {
        let dev = match File::open(device) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(JailError::io("open", device)(e)),
        };
        match ioctl_arg(&dev, LOOP_CLR_FD, 0) {
            Ok(_) | Err(Errno::ENXIO) => Ok(()),
            Err(e) => Err(JailError::sys("loop clear", device)(e)),
        }
    }
}

#[cfg(test)]
pub(crate) mod fake {
    //! A host that records what it was asked to do.
    use super::*;
    use std::sync::Mutex;

    #[derive(Debug, Default)]
    pub(crate) struct RecordingHost {
        pub calls: Mutex<Vec<String>>,
    }

    impl RecordingHost {
        pub fn calls(&self) -> Vec<String> {
            self.calls.lock().unwrap().clone()
        }
        fn rec(&self, s: String) {
            self.calls.lock().unwrap().push(s);
        }
    }

    impl Host for RecordingHost {
        fn mkfs(&self, image: &Path) -> Result<(), JailError> {
            self.rec(format!(
                "mkfs {}",
                image.file_name().unwrap().to_string_lossy()
            ));
            Ok(())
        }
        fn mount_volume(&self, _image: &Path, target: &Path) -> Result<PathBuf, JailError> {
            self.rec(format!(
                "mount {}",
                target.file_name().unwrap().to_string_lossy()
            ));
            Ok("/dev/loop9".into())
        }
        fn refresh_capacity(&self, device: &Path) -> Result<(), JailError> {
            self.rec(format!("capacity {}", device.display()));
            Ok(())
        }
        fn grow_fs(&self, device: &Path) -> Result<(), JailError> {
            self.rec(format!("grow {}", device.display()));
            Ok(())
        }
        fn unmount(&self, target: &Path) -> Result<(), JailError> {
            self.rec(format!(
                "unmount {}",
                target.file_name().unwrap().to_string_lossy()
            ));
            Ok(())
        }
        fn detach_loop(&self, device: &Path) -> Result<(), JailError> {
            self.rec(format!("detach {}", device.display()));
            Ok(())
        }
        fn write_id_maps(&self, _pid_dir: &Path, base: u32, count: u32) -> Result<(), JailError> {
            self.rec(format!("idmap 0 {base} {count}"));
            Ok(())
        }
        fn idmap_tree(&self, source: &Path, _u: &Path) -> Result<OwnedFd, JailError> {
            self.rec(format!(
                "idmap tree {}",
                source.file_name().unwrap().to_string_lossy()
            ));
            Ok(File::open("/dev/null").unwrap().into())
        }
        fn chown(&self, path: &Path, id: u32) -> Result<(), JailError> {
            self.rec(format!(
                "chown {} {id}",
                path.file_name().unwrap().to_string_lossy()
            ));
            Ok(())
        }
    }
}
