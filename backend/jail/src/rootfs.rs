//! The mount plan of a jail's root filesystem: an ordered list of steps,
//! built (with every string allocated) in the engine's process and carried
//! out by the jail's first process, which then only makes system calls.
//! Building the plan is pure, so its order is checked by unit tests.

use std::ffi::CString;
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};

/// Where the overlay's writable layer comes from.
#[derive(Debug, Clone)]
pub(crate) enum UpperSource<'a> {
    /// A mounted volume holding `upper/` and `work/`.
    Volume(&'a Path),
    /// A tmpfs of `bytes`, inside the jail only.
    Tmpfs { bytes: u64 },
}

/// The image under the jail's root (the overlay's lower layer).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Lower<'a> {
    /// The image's folder as it is, for a jail with host root ids.
    Image(&'a Path),
    /// For a jail with a user namespace: the image id-mapped to it, as a
    /// detached mount behind descriptor `fd` that the engine made and the
    /// jail attaches inside its own mount namespace. The node's mount
    /// table never holds it.
    IdMapped { fd: RawFd },
}

/// Size of the jail's own tmpfs when it holds only the root's mount point.
const MOUNT_POINT_TMPFS_BYTES: u64 = 64 << 10;

/// Where the root is assembled: inside the jail's own tmpfs over `mnt`.
pub(crate) fn root_in(mnt: &Path) -> PathBuf {
    mnt.join("root")
}

/// One step of the root filesystem setup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step {
    /// Attaches the detached mount behind `fd` at `target` (`move_mount`).
    Attach { fd: RawFd, target: CString },
    /// `mount(2)`.
    Mount {
        what: &'static str,
        source: Option<CString>,
        target: CString,
        fstype: Option<CString>,
        flags: MsFlags,
        data: Option<CString>,
    },
    /// `mkdir(2)`; an existing folder is fine.
    Mkdir { path: CString, mode: u32 },
    /// `mknod(2)` of a character device.
    CharDevice {
        path: CString,
        major: u32,
        minor: u32,
    },
    /// Creates an empty file (a mount point for a device); an existing
    /// file is fine.
    File { path: CString },
    /// `symlink(2)`; an existing link is fine.
    Symlink { target: CString, link: CString },
    /// Enter `new_root` with pivot_root and detach the old root.
    PivotRoot { new_root: CString },
    /// Run `step` only if `path` exists (kernel features that may be absent).
    IfExists { path: CString, step: Box<Step> },
}

fn c(p: impl AsRef<[u8]>) -> CString {
    // Paths come from the state and image folders (validated names); a NUL
    // byte cannot occur, and if it did the step would fail on an empty path.
    CString::new(p.as_ref().to_vec()).unwrap_or_default()
}

fn cp(p: &Path) -> CString {
    c(p.as_os_str().as_bytes())
}

fn mount(
    what: &'static str,
    source: &str,
    target: &Path,
    fstype: &str,
    flags: MsFlags,
    data: Option<String>,
) -> Step {
    Step::Mount {
        what,
        source: Some(c(source)),
        target: cp(target),
        fstype: Some(c(fstype)),
        flags,
        data: data.map(c),
    }
}

fn bind(what: &'static str, source: &Path, target: &Path) -> Step {
    Step::Mount {
        what,
        source: Some(cp(source)),
        target: cp(target),
        fstype: None,
        flags: MsFlags::MS_BIND,
        data: None,
    }
}

fn remount_ro(what: &'static str, target: &Path) -> Step {
    Step::Mount {
        what,
        source: None,
        target: cp(target),
        fstype: None,
        flags: MsFlags::MS_BIND
            | MsFlags::MS_REMOUNT
            | MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV
            | MsFlags::MS_NOEXEC,
        data: None,
    }
}

/// The character devices of a jail's /dev: (name, major, minor).
const DEVICES: [(&str, u32, u32); 6] = [
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

/// Kernel files a jail must not write (runc's read-only paths).
const READ_ONLY: [&str; 5] = [
    "proc/bus",
    "proc/fs",
    "proc/irq",
    "proc/sys",
    "proc/sysrq-trigger",
];

/// Kernel files hidden behind /dev/null: runc's masked files, and the
/// kernel's allocator statistics (a side channel on other tenants' work).
const MASKED_FILES: [&str; 7] = [
    "proc/kcore",
    "proc/keys",
    "proc/latency_stats",
    "proc/timer_list",
    "proc/timer_stats",
    "proc/sched_debug",
    "proc/slabinfo",
];

/// Kernel folders hidden behind an empty read-only tmpfs: runc's masked
/// folders, and the node's block devices, whose loop devices name the
/// volume files (and so the jails) of other tenants (`backing_file`).
const MASKED_DIRS: [&str; 9] = [
    "proc/acpi",
    "proc/asound",
    "proc/scsi",
    "sys/firmware",
    "sys/devices/virtual/powercap",
    "sys/block",
    "sys/class/block",
    "sys/dev/block",
    "sys/devices/virtual/block",
];

/// The ordered setup of a jail's root from the image `lower`, assembled at
/// [`root_in`]`(mnt)`: `mnt` is a folder of the node that every jail covers
/// with a tmpfs of its own, in its own mount namespace, so the root's mount
/// point (and a tmpfs upper layer) are made in memory and go with the jail;
/// nothing is created or removed on the node's disk for them.
///
/// In a user namespace (an id-mapped `lower`) device nodes cannot be made:
/// the host's are bound instead (the same six harmless devices).
pub(crate) fn plan(lower: Lower<'_>, upper: &UpperSource<'_>, mnt: &Path) -> Vec<Step> {
    let userns = matches!(lower, Lower::IdMapped { .. });
    let nosuid_noexec = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC;
    let rootfs = &root_in(mnt);
    let r = |p: &str| rootfs.join(p);
    let mut steps = vec![
        // 1. Before any mount: nothing done below may propagate back to the
        //    host's mount table (or to other jails).
        Step::Mount {
            what: "make mounts private",
            source: None,
            target: c("/"),
            fstype: None,
            flags: MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            data: None,
        },
    ];
    // 2. The jail's own tmpfs with the root's mount point, the writable
    //    layer, then the overlay root on top of the image.
    let bytes = match upper {
        UpperSource::Tmpfs { bytes } => *bytes,
        UpperSource::Volume(_) => MOUNT_POINT_TMPFS_BYTES,
    };
    steps.push(mount(
        "mount the jail's tmpfs",
        "tmpfs",
        mnt,
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(format!("size={bytes},mode=0700")),
    ));
    steps.push(Step::Mkdir {
        path: cp(rootfs),
        mode: 0o755,
    });
    let (upper_dir, work_dir) = match upper {
        UpperSource::Volume(dir) => (dir.join("upper"), dir.join("work")),
        UpperSource::Tmpfs { .. } => {
            steps.push(Step::Mkdir {
                path: cp(&mnt.join("upper")),
                mode: 0o755,
            });
            steps.push(Step::Mkdir {
                path: cp(&mnt.join("work")),
                mode: 0o700,
            });
            (mnt.join("upper"), mnt.join("work"))
        }
    };
    let lower = match lower {
        Lower::Image(dir) => dir.to_owned(),
        Lower::IdMapped { fd } => {
            let dir = mnt.join("lower");
            steps.push(Step::Mkdir {
                path: cp(&dir),
                mode: 0o755,
            });
            steps.push(Step::Attach {
                fd,
                target: cp(&dir),
            });
            dir
        }
    };
    // No device node on the root works (one planted in a volume or an
    // image included): the jail's devices are the few bound below, on /dev.
    steps.push(mount(
        "mount overlay root",
        "overlay",
        rootfs,
        "overlay",
        MsFlags::MS_NODEV,
        Some(format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.display(),
            upper_dir.display(),
            work_dir.display()
        )),
    ));
    // 3. Mount points an imported image may lack (created in the upper layer).
    for (dir, mode) in [
        ("proc", 0o555),
        ("sys", 0o555),
        ("dev", 0o755),
        ("tmp", 0o1777),
    ] {
        steps.push(Step::Mkdir {
            path: cp(&r(dir)),
            mode,
        });
    }
    // 4. Kernel filesystems. A fresh proc shows only the jail's PID
    //    namespace; sysfs is read-only and shows the jail's network devices.
    steps.push(mount(
        "mount proc",
        "proc",
        &r("proc"),
        "proc",
        nosuid_noexec | MsFlags::MS_NODEV,
        None,
    ));
    steps.push(mount(
        "mount sysfs",
        "sysfs",
        &r("sys"),
        "sysfs",
        nosuid_noexec | MsFlags::MS_NODEV | MsFlags::MS_RDONLY,
        None,
    ));
    // 5. A minimal /dev on tmpfs: a handful of devices, a private devpts
    //    instance, /dev/shm. No disks: the jail cannot reach host devices.
    steps.push(mount(
        "mount /dev",
        "tmpfs",
        &r("dev"),
        "tmpfs",
        nosuid_noexec,
        Some("mode=755,size=65536".into()),
    ));
    for (name, major, minor) in DEVICES {
        let path = r("dev").join(name);
        if userns {
            steps.push(Step::File { path: cp(&path) });
            steps.push(bind("bind device", &Path::new("/dev").join(name), &path));
        } else {
            steps.push(Step::CharDevice {
                path: cp(&path),
                major,
                minor,
            });
        }
    }
    for dir in ["pts", "shm"] {
        steps.push(Step::Mkdir {
            path: cp(&r("dev").join(dir)),
            mode: 0o755,
        });
    }
    steps.push(mount(
        "mount devpts",
        "devpts",
        &r("dev/pts"),
        "devpts",
        nosuid_noexec,
        Some("newinstance,ptmxmode=0666,mode=0620".into()),
    ));
    steps.push(mount(
        "mount /dev/shm",
        "tmpfs",
        &r("dev/shm"),
        "tmpfs",
        nosuid_noexec | MsFlags::MS_NODEV,
        Some("mode=1777".into()),
    ));
    for (target, link) in [
        ("pts/ptmx", "ptmx"),
        ("/proc/self/fd", "fd"),
        ("/proc/self/fd/0", "stdin"),
        ("/proc/self/fd/1", "stdout"),
        ("/proc/self/fd/2", "stderr"),
    ] {
        steps.push(Step::Symlink {
            target: c(target),
            link: cp(&r("dev").join(link)),
        });
    }
    // 6. After proc and /dev exist: host-wide knobs in /proc become
    //    read-only, and entries that show host memory, keys, timers or
    //    hardware are hidden (the paths runc masks); entries this kernel
    //    lacks are skipped.
    let if_exists = |p: &str, step: Step| Step::IfExists {
        path: cp(&r(p)),
        step: Box::new(step),
    };
    for p in READ_ONLY {
        steps.push(if_exists(p, bind("bind /proc entry", &r(p), &r(p))));
        steps.push(if_exists(
            p,
            remount_ro("make /proc entry read-only", &r(p)),
        ));
    }
    for p in MASKED_FILES {
        steps.push(if_exists(
            p,
            bind("hide kernel file", &r("dev/null"), &r(p)),
        ));
    }
    for p in MASKED_DIRS {
        steps.push(if_exists(
            p,
            mount(
                "hide kernel folder",
                "tmpfs",
                &r(p),
                "tmpfs",
                MsFlags::MS_RDONLY | nosuid_noexec | MsFlags::MS_NODEV,
                None,
            ),
        ));
    }
    // 7. Last: enter the new root. Everything above was reached through host
    //    paths, which are gone after this.
    steps.push(Step::PivotRoot {
        new_root: cp(rootfs),
    });
    steps
}

impl Step {
    /// What the step does and on which path, for error messages.
    pub fn describe(&self) -> (&'static str, PathBuf) {
        use std::os::unix::ffi::OsStrExt as _;
        let p = |s: &CString| PathBuf::from(std::ffi::OsStr::from_bytes(s.as_bytes()));
        match self {
            Step::Attach { target, .. } => ("attach the id-mapped image", p(target)),
            Step::Mount { what, target, .. } => (what, p(target)),
            Step::Mkdir { path, .. } => ("mkdir", p(path)),
            Step::CharDevice { path, .. } => ("mknod", p(path)),
            Step::File { path } => ("create file", p(path)),
            Step::Symlink { link, .. } => ("symlink", p(link)),
            Step::PivotRoot { new_root } => ("pivot_root", p(new_root)),
            Step::IfExists { step, .. } => step.describe(),
        }
    }

    /// Carries the step out. Runs in the forked jail process: no allocation,
    /// only system calls on the prepared strings.
    pub fn run(&self) -> Result<(), Errno> {
        match self {
            Step::Attach { fd, target } => {
                const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 4;
                // SAFETY: move_mount attaches the detached tree behind `fd`
                // at the NUL-terminated `target`.
                let r = unsafe {
                    libc::syscall(
                        libc::SYS_move_mount,
                        *fd,
                        c"".as_ptr(),
                        libc::AT_FDCWD,
                        target.as_ptr(),
                        MOVE_MOUNT_F_EMPTY_PATH,
                    )
                };
                Errno::result(r).map(drop)
            }
            Step::Mount {
                source,
                target,
                fstype,
                flags,
                data,
                ..
            } => nix::mount::mount(
                source.as_deref(),
                target.as_c_str(),
                fstype.as_deref(),
                *flags,
                data.as_deref(),
            ),
            Step::Mkdir { path, mode } => {
                // SAFETY: `path` is a valid NUL-terminated string.
                let r = unsafe { libc::mkdir(path.as_ptr(), *mode) };
                match Errno::result(r) {
                    Ok(_) | Err(Errno::EEXIST) => Ok(()),
                    Err(e) => Err(e),
                }
            }
            Step::CharDevice { path, major, minor } => {
                let dev = libc::makedev(*major, *minor);
                // SAFETY: `path` is a valid NUL-terminated string.
                let r = unsafe { libc::mknod(path.as_ptr(), libc::S_IFCHR | 0o666, dev) };
                Errno::result(r).map(drop)
            }
            Step::File { path } => {
                // SAFETY: `path` is a valid NUL-terminated string; the fd
                // is closed at once.
                let fd = unsafe {
                    libc::open(
                        path.as_ptr(),
                        libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC,
                        0o666,
                    )
                };
                let fd = Errno::result(fd)?;
                // SAFETY: closes the fd opened above, once.
                unsafe { libc::close(fd) };
                Ok(())
            }
            Step::Symlink { target, link } => {
                // SAFETY: both are valid NUL-terminated strings.
                let r = unsafe { libc::symlink(target.as_ptr(), link.as_ptr()) };
                match Errno::result(r) {
                    Ok(_) | Err(Errno::EEXIST) => Ok(()),
                    Err(e) => Err(e),
                }
            }
            Step::PivotRoot { new_root } => {
                nix::unistd::chdir(new_root.as_c_str())?;
                // pivot_root(".", ".") stacks the old root on top of the new
                // one; detaching it leaves only the new root, and no folder
                // for the old root is needed in the (read-only) image.
                nix::unistd::pivot_root(c".", c".")?;
                nix::mount::umount2(c".", MntFlags::MNT_DETACH)?;
                nix::unistd::chdir(c"/")
            }
            Step::IfExists { path, step } => {
                // SAFETY: `path` is a valid NUL-terminated string.
                let r = unsafe { libc::access(path.as_ptr(), libc::F_OK) };
                match Errno::result(r) {
                    Ok(_) => step.run(),
                    Err(Errno::ENOENT) => Ok(()),
                    Err(e) => Err(e),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
