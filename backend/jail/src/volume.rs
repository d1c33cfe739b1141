//! A jail's volume: a sparse ext4 image file sized to its disk quota,
//! attached to a loop device and mounted under the jail's state folder,
//! holding the overlay's upper and work folders.

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};

use crate::error::JailError;
use crate::host::Host;
use crate::hostinfo;
use crate::state::JailPaths;

/// The host folders the volume logic reads the host's state from.
#[derive(Debug, Clone)]
pub(crate) struct HostView<'a> {
    pub proc_root: &'a Path,
    pub sys_root: &'a Path,
}

impl HostView<'_> {
    /// The device mounted on `target`, if any.
    pub fn mounted_device(&self, target: &Path) -> Option<PathBuf> {
        hostinfo::mounts(self.proc_root)
            .into_iter()
            .rev()
            .find(|m| m.mount_point == target)
            .map(|m| PathBuf::from(m.source))
    }

    /// The loop devices backed by `image`.
    pub fn loops_of(&self, image: &Path) -> Vec<PathBuf> {
        hostinfo::loop_devices(self.sys_root)
            .into_iter()
            .filter(|l| l.backing_file == image)
            .map(|l| l.device)
            .collect()
    }
}

/// Creates, attaches and mounts the volume as far as missing; returns the
/// loop device. Each step is create-if-missing, so a crashed run is redone.
pub(crate) fn ensure(
    host: &dyn Host,
    view: &HostView<'_>,
    paths: &JailPaths,
    bytes: u64,
) -> Result<PathBuf, JailError> {
    if !paths.volume_image.exists() {
        // Made under a temporary name: a crash before mkfs completes leaves
        // no file that looks like a finished volume.
        let tmp = paths.dir.join("volume.img.new");
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&tmp)
            .map_err(JailError::io("create", &tmp))?;
        // set_len makes a sparse file: the host disk is used only as the
        // jail writes.
        file.set_len(bytes).map_err(JailError::io("resize", &tmp))?;
        drop(file);
        host.mkfs(&tmp)?;
        fs::rename(&tmp, &paths.volume_image)
            .map_err(JailError::io("rename", &paths.volume_image))?;
    }
    let device = match view.mounted_device(&paths.volume) {
        Some(dev) => dev,
        None => {
            fs::create_dir_all(&paths.volume).map_err(JailError::io("create", &paths.volume))?;
            host.mount_volume(&paths.volume_image, &paths.volume)?
        }
    };
    for sub in ["upper", "work"] {
        let d = paths.volume.join(sub);
        fs::create_dir_all(&d).map_err(JailError::io("create", &d))?;
    }
    Ok(device)
}

/// Grows the volume to `bytes`. Online (`device` given, jail running):
/// the file, the loop device's idea of its size, then the mounted
/// filesystem. Offline: unmount, grow file and filesystem; `ensure` mounts
/// it again. Shrinking is refused.
pub(crate) fn grow(
    host: &dyn Host,
    view: &HostView<'_>,
    paths: &JailPaths,
    online_device: Option<&Path>,
    bytes: u64,
) -> Result<(), JailError> {
    let current = fs::metadata(&paths.volume_image)
        .map_err(JailError::io("stat", &paths.volume_image))?
        .len();
    // An image grown already whose filesystem was not (the host refused
    // to grow it online) is grown again: its filesystem is.
    if bytes == current && fits(&paths.volume_image, bytes)? {
        return Ok(());
    }
    if bytes < current {
        return Err(JailError::Shrink {
            path: paths.volume_image.clone(),
            current,
            requested: bytes,
        });
    }
    if online_device.is_none() {
        teardown(host, view, paths)?;
    }
    let file = OpenOptions::new()
        .write(true)
        .open(&paths.volume_image)
        .map_err(JailError::io("open", &paths.volume_image))?;
    file.set_len(bytes)
        .map_err(JailError::io("resize", &paths.volume_image))?;
    drop(file);
    match online_device {
        Some(device) => {
            host.refresh_capacity(device)?;
            host.grow_fs(device)
        }
        None => host.grow_fs(&paths.volume_image),
    }
}

/// Whether the volume image is `bytes` long and its filesystem fills it
/// (as far as `resize2fs` would: a last block group too small for its own
/// metadata is left out).
pub(crate) fn fits(image: &Path, bytes: u64) -> Result<bool, JailError> {
    let len = fs::metadata(image)
        .map_err(JailError::io("stat", image))?
        .len();
    if len != bytes {
        return Ok(false);
    }
    let sb = Superblock::read(image)?;
    Ok(sb.blocks >= sb.full_blocks(len))
}

/// What growing needs of an ext4 superblock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Superblock {
    /// Blocks in the filesystem.
    pub blocks: u64,
    pub block_size: u64,
    pub blocks_per_group: u64,
    /// Blocks of one group's inode table.
    pub inode_table_blocks: u64,
}

impl Superblock {
    /// Reads the superblock at byte 1024 of `image`.
    pub(crate) fn read(image: &Path) -> Result<Superblock, JailError> {
        use std::os::unix::fs::FileExt;
        let mut raw = [0u8; 1024];
        fs::File::open(image)
            .and_then(|f| f.read_exact_at(&mut raw, 1024))
            .map_err(JailError::io("read the superblock of", image))?;
        Self::parse(&raw).ok_or_else(|| JailError::Program {
            program: "ext4",
            path: image.to_owned(),
            detail: "no ext4 filesystem in the volume image".into(),
        })
    }

    fn parse(raw: &[u8; 1024]) -> Option<Superblock> {
        let u32_at = |at: usize| u32::from_le_bytes(raw[at..at + 4].try_into().unwrap());
        let u16_at = |at: usize| u16::from_le_bytes(raw[at..at + 2].try_into().unwrap());
        if u16_at(0x38) != 0xEF53 {
            return None;
        }
        let block_size = 1024u64.checked_shl(u32_at(0x18))?;
        let incompat_64bit = u32_at(0x60) & 0x80 != 0;
        let high = if incompat_64bit { u32_at(0x150) } else { 0 };
        let blocks = u64::from(u32_at(0x04)) | (u64::from(high) << 32);
        let inode_size = match u16_at(0x58) {
            0 => 128,
            n => u64::from(n),
        };
        Some(Superblock {
            blocks,
            block_size,
            blocks_per_group: u64::from(u32_at(0x20)).max(1),
            inode_table_blocks: (u64::from(u32_at(0x28)) * inode_size).div_ceil(block_size),
        })
    }

    /// The blocks `resize2fs` gives a filesystem on a device of `bytes`:
    /// every whole block, less a last group too small to hold its own
    /// metadata (with room to spare: counted short, a volume would be
    /// grown again at every pass).
    pub(crate) fn full_blocks(&self, bytes: u64) -> u64 {
        let all = bytes / self.block_size;
        let last = all % self.blocks_per_group;
        if last != 0 && last < self.inode_table_blocks + 512 {
            all - last
        } else {
            all
        }
    }
}

/// Unmounts the volume and detaches its loop device, as far as present.
pub(crate) fn teardown(
    host: &dyn Host,
    view: &HostView<'_>,
    paths: &JailPaths,
) -> Result<(), JailError> {
    if view.mounted_device(&paths.volume).is_some() {
        host.unmount(&paths.volume)?;
    }
    // Without its image file no loop device can be backed by the volume
    // (it is removed only after the detach below), and looking costs a
    // read of every loop device on the node.
    if !paths.volume_image.exists() {
        return Ok(());
    }
    for dev in view.loops_of(&paths.volume_image) {
        host.detach_loop(&dev)?;
    }
    Ok(())
}

/// Bytes used on the filesystem holding `path`.
pub(crate) fn used_bytes(path: &Path) -> Option<u64> {
    let s = nix::sys::statvfs::statvfs(path).ok()?;
    let blocks = s.blocks().saturating_sub(s.blocks_free());
    Some(blocks.saturating_mul(s.fragment_size()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::fake::RecordingHost;

    struct Fixture {
        _dir: tempfile::TempDir,
        proc: PathBuf,
        sys: PathBuf,
        paths: JailPaths,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let proc = dir.path().join("proc");
        let sys = dir.path().join("sys");
        fs::create_dir_all(proc.join("self")).unwrap();
        fs::create_dir_all(sys.join("block")).unwrap();
        fs::write(proc.join("self/mountinfo"), "").unwrap();
        let paths = JailPaths::new(&dir.path().join("state"), "web");
        fs::create_dir_all(&paths.dir).unwrap();
        Fixture {
            proc,
            sys,
            paths,
            _dir: dir,
        }
    }

    #[test]
    fn a_filesystem_fits_its_image_only_once_grown_to_it() {
        use crate::host::LinuxHost;
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("volume.img");
        let host = LinuxHost;
        let sized = |bytes: u64| {
            OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&image)
                .unwrap()
                .set_len(bytes)
                .unwrap();
        };
        sized(16 << 20);
        host.mkfs(&image).unwrap();
        assert!(fits(&image, 16 << 20).unwrap());
        let sb = Superblock::read(&image).unwrap();
        assert_eq!(sb.blocks * sb.block_size, 16 << 20);
        // The image grown, not its filesystem: it does not fit yet.
        sized(24 << 20);
        assert!(!fits(&image, 24 << 20).unwrap());
        assert!(!fits(&image, 32 << 20).unwrap(), "the image is not 32 MiB");
        host.grow_fs(&image).unwrap();
        assert!(fits(&image, 24 << 20).unwrap());
        // Just past a group boundary, resize2fs leaves the last sliver out:
        // still a fit, or the volume would be grown at every pass.
        sized(129 << 20);
        host.grow_fs(&image).unwrap();
        assert!(fits(&image, 129 << 20).unwrap());
        let sb = Superblock::read(&image).unwrap();
        assert!(sb.blocks * sb.block_size < 129 << 20, "{sb:?}");
        // No filesystem at all: said.
        let empty = dir.path().join("empty.img");
        fs::write(&empty, vec![0u8; 4096]).unwrap();
        let e = fits(&empty, 4096).unwrap_err();
        assert!(e.to_string().contains("no ext4 filesystem"), "{e}");
    }

    #[test]
    fn first_ensure_makes_a_sparse_image_formats_and_mounts_it() {
        let f = fixture();
        let host = RecordingHost::default();
        let view = HostView {
            proc_root: &f.proc,
            sys_root: &f.sys,
        };
        let dev = ensure(&host, &view, &f.paths, 1 << 30).unwrap();
        assert_eq!(dev, PathBuf::from("/dev/loop9"));
        assert_eq!(host.calls(), ["mkfs volume.img.new", "mount volume"]);
        let meta = fs::metadata(&f.paths.volume_image).unwrap();
        assert_eq!(meta.len(), 1 << 30);
        use std::os::unix::fs::MetadataExt;
        assert!(meta.blocks() < 16, "the image must be sparse");
        assert!(f.paths.volume.join("upper").is_dir() && f.paths.volume.join("work").is_dir());
    }

    #[test]
    fn ensure_on_a_mounted_volume_does_nothing_new() {
        let f = fixture();
        fs::write(&f.paths.volume_image, "").unwrap();
        fs::write(
            f.proc.join("self/mountinfo"),
            format!(
                "40 22 7:3 / {} rw - ext4 /dev/loop3 rw\n",
                f.paths.volume.display()
            ),
        )
        .unwrap();
        let host = RecordingHost::default();
        let view = HostView {
            proc_root: &f.proc,
            sys_root: &f.sys,
        };
        assert_eq!(
            ensure(&host, &view, &f.paths, 1 << 30).unwrap(),
            PathBuf::from("/dev/loop3")
        );
        assert!(host.calls().is_empty());
    }

    #[test]
    fn growing_resizes_file_then_device_then_filesystem_and_shrinking_is_refused() {
        let f = fixture();
        fs::File::create(&f.paths.volume_image)
            .unwrap()
            .set_len(100)
            .unwrap();
        let host = RecordingHost::default();
        let view = HostView {
            proc_root: &f.proc,
            sys_root: &f.sys,
        };
        let dev = Some(Path::new("/dev/loop3"));
        grow(&host, &view, &f.paths, dev, 200).unwrap();
        assert_eq!(host.calls(), ["capacity /dev/loop3", "grow /dev/loop3"]);
        assert_eq!(fs::metadata(&f.paths.volume_image).unwrap().len(), 200);
        assert!(matches!(
            grow(&host, &view, &f.paths, dev, 50),
            Err(JailError::Shrink { .. })
        ));
        // Offline the filesystem is grown in the image file itself.
        grow(&host, &view, &f.paths, None, 300).unwrap();
        assert_eq!(
            host.calls()[2],
            format!("grow {}", f.paths.volume_image.display())
        );
    }

    #[test]
    fn teardown_unmounts_then_detaches_what_is_left() {
        let f = fixture();
        fs::write(
            f.proc.join("self/mountinfo"),
            format!(
                "40 22 7:3 / {} rw - ext4 /dev/loop3 rw\n",
                f.paths.volume.display()
            ),
        )
        .unwrap();
        let l = f.sys.join("block/loop3/loop");
        fs::create_dir_all(&l).unwrap();
        fs::write(
            l.join("backing_file"),
            format!("{}\n", f.paths.volume_image.display()),
        )
        .unwrap();
        let host = RecordingHost::default();
        let view = HostView {
            proc_root: &f.proc,
            sys_root: &f.sys,
        };
        // No image file: nothing can be attached to it, nothing is detached.
        teardown(&host, &view, &f.paths).unwrap();
        assert_eq!(host.calls(), ["unmount volume"]);
        fs::write(&f.paths.volume_image, "").unwrap();
        teardown(&host, &view, &f.paths).unwrap();
        assert_eq!(
            host.calls(),
            ["unmount volume", "unmount volume", "detach /dev/loop3"]
        );
    }
}
