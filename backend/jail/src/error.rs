//! The one error type of the jail engine; every variant names the path or
//! object it failed on, so an operator reading a log line knows where to look.

use std::path::PathBuf;

use nix::errno::Errno;

/// Why a jail operation failed.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    /// A value in a jail spec or a call is not acceptable.
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// Which input was refused.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// A file write found something other than a regular file at its name
    /// (a FIFO, socket, device, symbolic link or folder) and left it alone.
    #[error("{file} is not a regular file ({kind}); nothing was written")]
    NotRegularFile {
        /// The file name in its folder.
        file: String,
        /// What is there instead, in words ("a FIFO").
        kind: &'static str,
    },
    /// The jail has no state record on this node.
    #[error("jail {0} does not exist")]
    NotFound(String),
    /// The operation needs a running jail.
    #[error("jail {0} is not running")]
    NotRunning(String),
    /// A transient jail was asked for under a name already in use.
    #[error("jail {0} already exists")]
    AlreadyExists(String),
    /// The image is not present under the image folder.
    #[error("image {name} not found at {path}")]
    ImageNotFound {
        /// The image name.
        name: String,
        /// Where it was looked for.
        path: PathBuf,
    },
    /// A file or folder operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done ("create", "write", "remove", ...).
        op: &'static str,
        /// The path it was done on.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A system call on a path failed.
    #[error("{op} {path}: {source}")]
    Sys {
        /// The system call or step ("mount", "umount", "loop configure", ...).
        op: &'static str,
        /// The path or object it was made on.
        path: PathBuf,
        /// The errno.
        source: Errno,
    },
    /// Mounting failed.
    #[error("mount {target}: {source}")]
    Mount {
        /// The mount point.
        target: PathBuf,
        /// The errno.
        source: Errno,
    },
    /// A step of the in-jail setup failed (reported by the jail's first process).
    #[error("jail setup step {step} on {path}: {source}")]
    Setup {
        /// The step ("mount", "pivot_root", "exec", ...).
        step: &'static str,
        /// The path it was made on, inside or outside the jail.
        path: PathBuf,
        /// The errno.
        source: Errno,
    },
    /// A helper program (mkfs.ext4, resize2fs, tar, busybox) failed.
    #[error("{program} on {path} failed: {detail}")]
    Program {
        /// The program name.
        program: &'static str,
        /// The object it worked on.
        path: PathBuf,
        /// Its exit status and standard error.
        detail: String,
    },
    /// A state record could not be read or written.
    #[error("state record {path}: {source}")]
    State {
        /// The record file.
        path: PathBuf,
        /// The parse error.
        source: serde_json::Error,
    },
    /// The jail did not stop within the time allowed even after SIGKILL.
    #[error("jail {name} (pid {pid}) did not exit")]
    StopTimeout {
        /// The jail.
        name: String,
        /// Its init pid.
        pid: i32,
    },
    /// A cgroup still had members after its jail stopped.
    #[error("cgroup {path} still busy")]
    CgroupBusy {
        /// The cgroup folder.
        path: PathBuf,
    },
    /// A network operation (netlink) on a link, address or bridge failed.
    #[error("{op} {object}: {source}")]
    Net {
        /// The step ("create veth pair", "isolate bridge port", ...).
        op: &'static str,
        /// The link, bridge or address it was made on.
        object: String,
        /// The errno.
        source: Errno,
    },
    /// A jail address is taken.
    #[error("address {address} is already used by {by}")]
    AddressInUse {
        /// The address.
        address: std::net::Ipv4Addr,
        /// Who uses it (a jail, the gateway).
        by: String,
    },
    /// A host port to publish is taken.
    #[error("port {port} is already used by {by}")]
    PortInUse {
        /// The host port.
        port: u16,
        /// Who uses it (a jail, a process on the host).
        by: String,
    },
    /// No free address is left in the node's pool.
    #[error(transparent)]
    PoolExhausted(#[from] crate::net::PoolExhausted),
    /// Something is still mounted at or below a folder that was to be
    /// removed: nothing was removed.
    #[error("refusing to remove {dir}: {mount_point} is still mounted")]
    StillMounted {
        /// The folder that was to be removed.
        dir: PathBuf,
        /// The mount point still there.
        mount_point: PathBuf,
    },
    /// Removing a folder would have entered another filesystem or mount.
    #[error("refusing to remove {path}: it is on another mount than {top}")]
    CrossesMount {
        /// The folder on another mount.
        path: PathBuf,
        /// The folder it was found in.
        top: PathBuf,
    },
    /// Shrinking a volume is not supported (ext4 cannot shrink online).
    #[error("volume {path}: cannot shrink from {current} to {requested} bytes")]
    Shrink {
        /// The volume image file.
        path: PathBuf,
        /// Its size now.
        current: u64,
        /// The size asked for.
        requested: u64,
    },
    /// The host refused to grow a running jail's filesystem; it grows when
    /// the jail next stops or restarts.
    #[error(
        "the volume grows to {requested} bytes when the jail next stops or restarts: the host refused to grow it while mounted ({reason})"
    )]
    GrowsAtNextStop {
        /// The size asked for.
        requested: u64,
        /// Why the host refused.
        reason: String,
    },
}

impl JailError {
    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| JailError::Io { op, path, source }
    }

    pub(crate) fn sys(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(Errno) -> Self {
        let path = path.into();
        move |source| JailError::Sys { op, path, source }
    }
}
