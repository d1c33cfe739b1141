//! The state folder: one folder per jail holding its JSON record, its
//! volume image and mount points. What exists on the node is written here
//! before it is created, so a crash half-way leaves a record to clean up from.

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::JailError;
use crate::spec::JailSpec;

/// Where a jail's writable layer lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum Upper {
    /// On its ext4 volume: survives restarts, holds the disk quota.
    Volume,
    /// On a tmpfs of this size inside the jail: gone when the jail ends.
    Tmpfs {
        /// Size limit of the tmpfs in bytes.
        bytes: u64,
    },
}

/// The init process of a running jail. The start time (clock ticks since
/// boot, from `/proc/<pid>/stat`) tells the jail's init from a later process
/// that got the same pid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitProcess {
    /// Host pid.
    pub pid: i32,
    /// Field 22 of `/proc/<pid>/stat`.
    pub start_time: u64,
}

/// The state record of one jail, `<state>/jails/<name>/jail.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JailRecord {
    /// The spec it was created with (limits as last applied).
    pub spec: JailSpec,
    /// Where its writable layer lives.
    pub upper: Upper,
    /// The loop device its volume was last attached to.
    pub loop_device: Option<PathBuf>,
    /// Its init while it runs.
    pub init: Option<InitProcess>,
    /// Made by `run`: removed when its command exits.
    pub transient: bool,
    /// First host uid (and gid) of the jail's user namespace range; `None`:
    /// no user namespace, root in the jail is root on the host.
    #[serde(default)]
    pub uid_base: Option<u32>,
    /// A change of the owners of the volume's files between host ids and
    /// a uid range, recorded before it starts and cleared once done; a
    /// jail found with one is shifted again before anything else (the
    /// shift moves only ids still in its source range).
    #[serde(default)]
    pub id_shift: Option<IdShift>,
    /// How its init last ended on its own (not stopped by the engine),
    /// as seen when the engine reaped it.
    #[serde(default)]
    pub last_exit: Option<Exit>,
}

/// How a jail's command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exit {
    /// Its exit code, when it exited.
    pub code: Option<i32>,
    /// The signal that ended it, when one did.
    pub signal: Option<i32>,
    /// When the engine saw it ended, milliseconds since the epoch.
    pub at_ms: u64,
}

impl Exit {
    /// The exit of a jail's init from its wait status: the init exits with
    /// its command's code, or 128 + the signal that ended the command (the
    /// shell's convention); an init ended by a signal itself (the kernel's
    /// out-of-memory killer, a SIGKILL from the host) reports that signal.
    /// `None` when the init was reaped by someone else: the engine then
    /// knows only that it ended.
    pub fn of(status: Option<nix::sys::wait::WaitStatus>, at_ms: u64) -> Self {
        use nix::sys::wait::WaitStatus;
        let (code, signal) = match status {
            Some(WaitStatus::Exited(_, code)) if code > 128 && code < 160 => {
                (None, Some(code - 128))
            }
            Some(WaitStatus::Exited(_, code)) => (Some(code), None),
            Some(WaitStatus::Signaled(_, sig, _)) => (None, Some(sig as i32)),
            _ => (None, None),
        };
        Exit {
            code,
            signal,
            at_ms,
        }
    }
}

/// Owners of a volume's files in `[from, from + 65536)` move to the same
/// offset from `to`; 0 is host ids (no user namespace).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdShift {
    /// First id of the range the owners are in.
    pub from: u32,
    /// First id of the range they move to.
    pub to: u32,
}

impl IdShift {
    /// The jail's uid range once the shift is done.
    pub fn target(self) -> Option<u32> {
        (self.to != 0).then_some(self.to)
    }
}

/// The paths of one jail under the state folder.
#[derive(Debug, Clone)]
pub(crate) struct JailPaths {
    pub dir: PathBuf,
    pub record: PathBuf,
    pub volume_image: PathBuf,
    /// Where the volume is mounted on the host.
    pub volume: PathBuf,
    /// Standard output and error of a started (not run) jail.
    pub log: PathBuf,
    /// The image mounted with the jail's id mapping (user namespaces).
    pub lower: PathBuf,
}

impl JailPaths {
    pub fn new(state_dir: &Path, name: &str) -> Self {
        let dir = jails_dir(state_dir).join(name);
        Self {
            record: dir.join("jail.json"),
            volume_image: dir.join("volume.img"),
            volume: dir.join("volume"),
            log: dir.join("console.log"),
            lower: dir.join("lower"),
            dir,
        }
    }
}

pub(crate) fn jails_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("jails")
}

/// The folder every jail covers with a tmpfs of its own, in its own mount
/// namespace, to assemble its root in (see [`crate::rootfs::plan`]).
pub(crate) fn mount_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("mnt")
}

/// Reads a record; `None` when the jail has none.
pub(crate) fn load(paths: &JailPaths) -> Result<Option<JailRecord>, JailError> {
    match fs::read(&paths.record) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| JailError::State {
                path: paths.record.clone(),
                source,
            }),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(JailError::io("read", &paths.record)(e)),
    }
}

/// Writes a record atomically (temp file + rename), so a crash never leaves
/// half a record.
pub(crate) fn save(paths: &JailPaths, record: &JailRecord) -> Result<(), JailError> {
    fs::create_dir_all(&paths.dir).map_err(JailError::io("create", &paths.dir))?;
    let tmp = paths.dir.join("jail.json.tmp");
    let bytes = serde_json::to_vec_pretty(record).map_err(|source| JailError::State {
        path: tmp.clone(),
        source,
    })?;
    fs::write(&tmp, bytes).map_err(JailError::io("write", &tmp))?;
    fs::rename(&tmp, &paths.record).map_err(JailError::io("rename", &paths.record))
}

#[cfg(test)]
mod tests {
    use super::*;
    use stockade_domain::{JailKind, JailName, Limits};

    #[test]
    fn records_round_trip_and_missing_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let paths = JailPaths::new(dir.path(), "web");
        assert!(load(&paths).unwrap().is_none());
        let rec = JailRecord {
            spec: JailSpec {
                name: JailName::parse("web").unwrap(),
                hostname: JailName::parse("web").unwrap(),
                image: "busybox".into(),
                kind: JailKind::System,
                command: vec![],
                limits: Limits {
                    memory_bytes: 1 << 20,
                    ..Limits::default()
                },
                network: None,
                user_namespace: false,
                env: Vec::new(),
            },
            upper: Upper::Tmpfs { bytes: 4096 },
            loop_device: Some("/dev/loop3".into()),
            init: Some(InitProcess {
                pid: 42,
                start_time: 7,
            }),
            transient: false,
            uid_base: None,
            id_shift: None,
            last_exit: None,
        };
        save(&paths, &rec).unwrap();
        assert_eq!(load(&paths).unwrap(), Some(rec));
        assert!(paths.record.starts_with(dir.path().join("jails/web")));
    }

    #[test]
    fn a_corrupt_record_names_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let paths = JailPaths::new(dir.path(), "web");
        fs::create_dir_all(&paths.dir).unwrap();
        fs::write(&paths.record, "{").unwrap();
        let err = load(&paths).unwrap_err().to_string();
        assert!(err.contains("jail.json"), "{err}");
    }
}
