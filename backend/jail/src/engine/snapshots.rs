//! Snapshots of a jail's volume: taken while it runs (its filesystem
//! frozen for the copy), restored while it is stopped, kept in the jail's
//! folder as `snapshots/<id>.img` with what a restore needs in `<id>.json`.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use stockade_domain::JailName;

use super::Engine;
use crate::error::JailError;
use crate::state::{self, IdShift, JailPaths, Upper};
use crate::storage::{self, Driver, Frozen};
use crate::volume;

/// What is kept beside a snapshot's image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct SnapshotMeta {
    /// The jail's uid range when it was taken (`None`: host ids): a
    /// restore into a jail whose range changed since shifts the owners.
    uid_base: Option<u32>,
    /// Length of the volume image.
    image_bytes: u64,
}

/// A snapshot on the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Its id, as the caller named it.
    pub id: String,
    /// Host bytes its image takes.
    pub bytes: u64,
    /// The jail's uid range when it was taken (`None`: host ids).
    pub uid_base: Option<u32>,
}

fn check_id(id: &str) -> Result<(), JailError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(JailError::Invalid {
            what: "snapshot id",
            reason: format!("{id:?}: 1 to 64 letters, digits, - or _"),
        })
    }
}

struct SnapshotPaths {
    dir: PathBuf,
    image: PathBuf,
    meta: PathBuf,
    partial: PathBuf,
}

fn snapshot_paths(paths: &JailPaths, id: &str) -> SnapshotPaths {
    let dir = paths.dir.join("snapshots");
    SnapshotPaths {
        image: dir.join(format!("{id}.img")),
        meta: dir.join(format!("{id}.json")),
        partial: dir.join(format!("{id}.img.new")),
        dir,
    }
}

impl Engine {
    /// How this node duplicates volumes (see [`crate::storage`]).
    pub fn storage_driver(&self) -> Driver {
        self.storage
    }

    /// Takes a snapshot `id` of the jail's volume, running or not, and
    /// returns it. A running jail's filesystem is frozen while its image
    /// is duplicated: its writers wait, nothing it wrote is half in the
    /// snapshot. Taking one that exists returns it (a retried request).
    pub fn snapshot(&self, name: &JailName, id: &str) -> Result<Snapshot, JailError> {
        check_id(id)?;
        let _lock = self.lock_jail(name.as_str())?;
        let (paths, rec) = self.record(name)?;
        if rec.upper != Upper::Volume {
            return Err(JailError::Invalid {
                what: "snapshot",
                reason: format!("jail {name} keeps no volume to snapshot"),
            });
        }
        let s = snapshot_paths(&paths, id);
        if s.image.exists()
            && let Ok(bytes) = fs::read(&s.meta)
            && let Ok(meta) = serde_json::from_slice::<SnapshotMeta>(&bytes)
        {
            return Ok(Snapshot {
                id: id.to_owned(),
                bytes: storage::allocated_bytes(&s.image)?,
                uid_base: meta.uid_base,
            });
        }
        fs::create_dir_all(&s.dir).map_err(JailError::io("create", &s.dir))?;
        fs::set_permissions(&s.dir, fs::Permissions::from_mode(0o700))
            .map_err(JailError::io("chmod", &s.dir))?;
        let image_bytes = fs::metadata(&paths.volume_image)
            .map_err(JailError::io("stat", &paths.volume_image))?
            .len();
        let meta = SnapshotMeta {
            uid_base: rec.uid_base,
            image_bytes,
        };
        let json = serde_json::to_vec(&meta).map_err(|source| JailError::State {
            path: s.meta.clone(),
            source,
        })?;
        fs::write(&s.meta, json).map_err(JailError::io("write", &s.meta))?;
        let copied = {
            // Frozen only while its image is duplicated; thawed on return.
            let _frozen = match self.view().mounted_device(&paths.volume) {
                Some(_) => Some(Frozen::freeze(&paths.volume)?),
                None => None,
            };
            self.storage.duplicate(&paths.volume_image, &s.partial)
        };
        if let Err(e) = copied {
            let _ = fs::remove_file(&s.partial);
            let _ = fs::remove_file(&s.meta);
            return Err(e);
        }
        // Its name says it is whole only once it is.
        fs::rename(&s.partial, &s.image).map_err(JailError::io("rename", &s.image))?;
        Ok(Snapshot {
            id: id.to_owned(),
            bytes: storage::allocated_bytes(&s.image)?,
            uid_base: meta.uid_base,
        })
    }

    /// Returns the stopped jail's volume to snapshot `id`; the snapshot
    /// stays. What was written since is gone. The jail is started again by
    /// the caller; a volume the quota grew since is grown at that start's
    /// `update_limits`, and file owners follow a uid range changed since.
    pub fn restore_snapshot(&self, name: &JailName, id: &str) -> Result<(), JailError> {
        check_id(id)?;
        let _lock = self.lock_jail(name.as_str())?;
        let (paths, mut rec) = self.record(name)?;
        if self.live_init(&rec).is_some() {
            return Err(JailError::Invalid {
                what: "restore",
                reason: format!("jail {name} is running: it is stopped first"),
            });
        }
        let s = snapshot_paths(&paths, id);
        let meta: SnapshotMeta = match (fs::read(&s.meta), s.image.exists()) {
            (Ok(bytes), true) => {
                serde_json::from_slice(&bytes).map_err(|source| JailError::State {
                    path: s.meta.clone(),
                    source,
                })?
            }
            _ => {
                return Err(JailError::NotFound(format!(
                    "{name}'s snapshot {id} (not on this node)"
                )));
            }
        };
        // The copy is made beside the volume and put in its place whole.
        let partial = paths.dir.join("volume.img.restore");
        self.storage
            .duplicate(&s.image, &partial)
            .inspect_err(|_| {
                let _ = fs::remove_file(&partial);
            })?;
        self.put_volume_in_place(&paths, &mut rec, &partial, meta.uid_base)?;
        tracing::info!(jail = %name, snapshot = id, "volume restored");
        Ok(())
    }

    /// The image of the jail's snapshot `id`, to read (a backup of it).
    pub fn snapshot_image(&self, name: &JailName, id: &str) -> Result<PathBuf, JailError> {
        check_id(id)?;
        let s = snapshot_paths(&self.paths(name.as_str()), id);
        if s.image.exists() {
            Ok(s.image)
        } else {
            Err(JailError::NotFound(format!("{name}'s snapshot {id}")))
        }
    }

    /// A folder on the volumes' filesystem for images on their way in (a
    /// backup being restored): [`Self::install_volume`] moves one from
    /// there into a jail without a copy.
    pub fn incoming_dir(&self) -> Result<PathBuf, JailError> {
        let dir = self.cfg.state_dir.join("incoming");
        fs::create_dir_all(&dir).map_err(JailError::io("create", &dir))?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
            .map_err(JailError::io("chmod", &dir))?;
        Ok(dir)
    }

    /// Makes `image` (a whole volume image in [`Self::incoming_dir`],
    /// whose files' owners are in the uid range from `uid_base`, `None`
    /// for host ids) the stopped jail's volume; the old one is gone. The
    /// image must not be larger than the jail's disk quota.
    pub fn install_volume(
        &self,
        name: &JailName,
        image: &std::path::Path,
        uid_base: Option<u32>,
    ) -> Result<(), JailError> {
        let _lock = self.lock_jail(name.as_str())?;
        let (paths, mut rec) = self.record(name)?;
        if self.live_init(&rec).is_some() {
            return Err(JailError::Invalid {
                what: "restore",
                reason: format!("jail {name} is running: it is stopped first"),
            });
        }
        let bytes = fs::metadata(image)
            .map_err(JailError::io("stat", image))?
            .len();
        if bytes > rec.spec.limits.disk_bytes {
            return Err(JailError::Invalid {
                what: "restore",
                reason: format!(
                    "the volume is {bytes} bytes, more than the jail's disk of {} bytes",
                    rec.spec.limits.disk_bytes
                ),
            });
        }
        self.put_volume_in_place(&paths, &mut rec, image, uid_base)?;
        tracing::info!(jail = %name, "volume installed");
        Ok(())
    }

    /// Unmounts the jail's volume and renames `image` over it, recording
    /// first the shift its owners need when `uid_base` is not the jail's.
    fn put_volume_in_place(
        &self,
        paths: &JailPaths,
        rec: &mut crate::state::JailRecord,
        image: &std::path::Path,
        uid_base: Option<u32>,
    ) -> Result<(), JailError> {
        volume::teardown(self.host.as_ref(), &self.view(), paths)?;
        if uid_base != rec.uid_base && rec.id_shift.is_none() {
            // Recorded before the files change: the next `create` shifts
            // them, and a crash in between is shifted then too.
            rec.id_shift = Some(IdShift {
                from: uid_base.unwrap_or(0),
                to: rec.uid_base.unwrap_or(0),
            });
            state::save(paths, rec)?;
        }
        fs::rename(image, &paths.volume_image).map_err(JailError::io("rename", &paths.volume_image))
    }

    /// Removes snapshot `id` of the jail, if present.
    pub fn delete_snapshot(&self, name: &JailName, id: &str) -> Result<(), JailError> {
        check_id(id)?;
        let _lock = self.lock_jail(name.as_str())?;
        let s = snapshot_paths(&self.paths(name.as_str()), id);
        for f in [&s.image, &s.partial, &s.meta] {
            match fs::remove_file(f) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(JailError::io("remove", f)(e)),
            }
        }
        Ok(())
    }

    /// The jail's whole snapshots on the node.
    pub fn snapshots(&self, name: &JailName) -> Result<Vec<Snapshot>, JailError> {
        let dir = snapshot_paths(&self.paths(name.as_str()), "x").dir;
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(JailError::io("read", &dir)(e)),
        };
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let file = entry.file_name();
            let Some(id) = file.to_str().and_then(|f| f.strip_suffix(".img")) else {
                continue;
            };
            let meta = fs::read(entry.path().with_extension("json"))
                .ok()
                .and_then(|b| serde_json::from_slice::<SnapshotMeta>(&b).ok());
            out.push(Snapshot {
                id: id.to_owned(),
                bytes: storage::allocated_bytes(&entry.path())?,
                uid_base: meta.and_then(|m| m.uid_base),
            });
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// Thaws every jail volume a crashed snapshot left frozen (its jail's
    /// writers would wait forever). Run when the agent starts.
    pub fn thaw_volumes(&self) {
        let Ok(entries) = fs::read_dir(state::jails_dir(&self.cfg.state_dir)) else {
            return;
        };
        for entry in entries.flatten() {
            let paths = JailPaths::new(&self.cfg.state_dir, &entry.file_name().to_string_lossy());
            if self.view().mounted_device(&paths.volume).is_some() {
                storage::thaw_mounted(&paths.volume);
            }
        }
    }
}
