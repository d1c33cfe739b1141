//! Applying one layer (a tar stream, plain, gzip or zstd) onto an image
//! tree, as an overlay would show it: whiteouts remove what lower layers
//! made, opaque markers hide a folder's lower contents.
//!
//! A layer is untrusted input unpacked by root on the node, so every entry
//! is checked before it touches the disk: its path stays below the tree
//! (no `..`, absolute paths taken as relative), no folder on the way is a
//! symbolic link (a link made by an earlier entry cannot redirect a later
//! write outside), hard links point at files of the tree, owners fit the
//! jail's 65 536 ids, and device nodes are refused (a jail's devices are
//! the few its `/dev` gets). The bytes and entries of the whole image count
//! against [`Bounds`].

use std::collections::HashSet;
use std::fs;
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use crate::{Bounds, ImageError};

/// Marker of a folder whose lower-layer contents are hidden.
const OPAQUE: &str = ".wh..wh..opq";
/// Prefix of a whiteout: `.wh.NAME` removes `NAME`.
const WHITEOUT: &str = ".wh.";
/// Owners must fit the ids a jail maps.
const MAX_ID: u64 = 65_535;

/// What an image's layers have used of its bounds so far.
#[derive(Debug, Default)]
pub(crate) struct Budget {
    pub(crate) bytes: u64,
    pub(crate) entries: u64,
}

/// The stream of a layer, decompressed as its first bytes say.
pub(crate) fn decompressed<'a>(reader: impl Read + 'a) -> io::Result<Box<dyn Read + 'a>> {
    let mut reader = BufReader::with_capacity(1 << 20, reader);
    let head = reader.fill_buf()?;
    Ok(if head.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::read::MultiGzDecoder::new(reader))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(zstd::stream::read::Decoder::with_buffer(reader)?)
    } else {
        Box::new(reader)
    })
}

/// A layer path as a relative path of normal components; `None` for the
/// tree's root itself.
pub(crate) fn clean(path: &Path, layer: usize) -> Result<Option<PathBuf>, ImageError> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(ImageError::Unsafe {
                    layer,
                    path: path.display().to_string(),
                    reason: "leads outside the image (`..`)",
                });
            }
        }
    }
    Ok((!out.as_os_str().is_empty()).then_some(out))
}

/// Makes the folders leading to `rel` below `root`, refusing to pass
/// through a symbolic link; a file in the way is replaced by a folder.
pub(crate) fn parents(root: &Path, rel: &Path, layer: usize) -> Result<(), ImageError> {
    let mut at = root.to_path_buf();
    let Some(parent) = rel.parent() else {
        return Ok(());
    };
    for c in parent.components() {
        at.push(c);
        match fs::symlink_metadata(&at) {
            Ok(m) if m.is_dir() => {}
            Ok(m) if m.file_type().is_symlink() => {
                return Err(ImageError::Unsafe {
                    layer,
                    path: rel.display().to_string(),
                    reason: "passes through a symbolic link",
                });
            }
            Ok(_) => {
                fs::remove_file(&at).map_err(ImageError::io("remove", &at))?;
                mkdir(&at)?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => mkdir(&at)?,
            Err(e) => return Err(ImageError::io("stat", &at)(e)),
        }
    }
    Ok(())
}

fn mkdir(path: &Path) -> Result<(), ImageError> {
    fs::create_dir(path).map_err(ImageError::io("create", path))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))
        .map_err(ImageError::io("chmod", path))
}

/// Removes whatever is at `path` (not following a link); absent is fine.
pub(crate) fn remove(path: &Path) -> Result<(), ImageError> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path).map_err(ImageError::io("remove", path)),
        Ok(_) => fs::remove_file(path).map_err(ImageError::io("remove", path)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ImageError::io("stat", path)(e)),
    }
}

/// Applies one layer onto `root`.
pub(crate) fn apply(
    reader: impl Read,
    root: &Path,
    layer: usize,
    bounds: &Bounds,
    budget: &mut Budget,
) -> Result<(), ImageError> {
    let mut archive = tar::Archive::new(decompressed(reader).map_err(ImageError::layer(layer))?);
    // Paths this layer made: an opaque marker hides only what lower ones did.
    let mut made: HashSet<PathBuf> = HashSet::new();
    for entry in archive.entries().map_err(ImageError::layer(layer))? {
        let mut entry = entry.map_err(ImageError::layer(layer))?;
        let raw = entry.path().map_err(ImageError::layer(layer))?.into_owned();
        let Some(rel) = clean(&raw, layer)? else {
            continue;
        };
        budget.entries += 1;
        if budget.entries > bounds.max_entries {
            return Err(ImageError::TooLarge(format!(
                "more than {} files",
                bounds.max_entries
            )));
        }
        let name = rel
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name == OPAQUE {
            let dir_rel = rel.parent().unwrap_or(Path::new(""));
            parents(root, &rel, layer)?;
            let dir = root.join(dir_rel);
            for child in fs::read_dir(&dir).map_err(ImageError::io("list", &dir))? {
                let child = child.map_err(ImageError::io("list", &dir))?;
                if !made.contains(&dir_rel.join(child.file_name())) {
                    remove(&child.path())?;
                }
            }
            continue;
        }
        if let Some(hidden) = name.strip_prefix(WHITEOUT) {
            // `.wh..` or `.wh...` would name the folder itself or its parent.
            if hidden.is_empty() || hidden == "." || hidden == ".." {
                return Err(ImageError::Unsafe {
                    layer,
                    path: rel.display().to_string(),
                    reason: "is a whiteout of no file",
                });
            }
            parents(root, &rel, layer)?;
            remove(&root.join(rel.with_file_name(hidden)))?;
            continue;
        }
        let header = entry.header();
        let (uid, gid) = (
            header.uid().map_err(ImageError::layer(layer))?,
            header.gid().map_err(ImageError::layer(layer))?,
        );
        if uid > MAX_ID || gid > MAX_ID {
            return Err(ImageError::Unsafe {
                layer,
                path: rel.display().to_string(),
                reason: "has an owner beyond the 65536 ids a jail maps",
            });
        }
        let mode = header.mode().map_err(ImageError::layer(layer))? & 0o7777;
        let kind = header.entry_type();
        parents(root, &rel, layer)?;
        let path = root.join(&rel);
        match kind {
            tar::EntryType::Directory => {
                match fs::symlink_metadata(&path) {
                    Ok(m) if m.is_dir() => {}
                    _ => {
                        remove(&path)?;
                        fs::create_dir(&path).map_err(ImageError::io("create", &path))?;
                    }
                }
                fs::set_permissions(&path, fs::Permissions::from_mode(mode))
                    .map_err(ImageError::io("chmod", &path))?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                remove(&path)?;
                let mut file = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .mode(0o600)
                    .open(&path)
                    .map_err(ImageError::io("create", &path))?;
                let room = bounds.max_bytes.saturating_sub(budget.bytes);
                let copied = io::copy(&mut (&mut entry).take(room + 1), &mut file)
                    .map_err(ImageError::layer(layer))?;
                budget.bytes += copied;
                if copied > room {
                    return Err(ImageError::TooLarge(format!(
                        "more than {} bytes unpacked",
                        bounds.max_bytes
                    )));
                }
                file.set_permissions(fs::Permissions::from_mode(mode))
                    .map_err(ImageError::io("chmod", &path))?;
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(ImageError::layer(layer))?
                    .ok_or_else(|| ImageError::Unsafe {
                        layer,
                        path: rel.display().to_string(),
                        reason: "is a symbolic link without a target",
                    })?;
                remove(&path)?;
                // The link is only ever followed inside the jail's root.
                std::os::unix::fs::symlink(&target, &path)
                    .map_err(ImageError::io("symlink", &path))?;
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name()
                    .map_err(ImageError::layer(layer))?
                    .and_then(|t| clean(&t, layer).transpose())
                    .transpose()?
                    .ok_or_else(|| ImageError::Unsafe {
                        layer,
                        path: rel.display().to_string(),
                        reason: "is a hard link without a target",
                    })?;
                parents(root, &target, layer)?;
                let source = root.join(&target);
                match fs::symlink_metadata(&source) {
                    Ok(m) if !m.is_dir() => {}
                    _ => {
                        return Err(ImageError::Unsafe {
                            layer,
                            path: rel.display().to_string(),
                            reason: "is a hard link to no file of the image",
                        });
                    }
                }
                remove(&path)?;
                fs::hard_link(&source, &path).map_err(ImageError::io("link", &path))?;
                made.insert(rel);
                continue;
            }
            tar::EntryType::Fifo => {
                remove(&path)?;
                nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(mode))
                    .map_err(|e| ImageError::io("mkfifo", &path)(e.into()))?;
            }
            tar::EntryType::Char | tar::EntryType::Block => {
                return Err(ImageError::Unsafe {
                    layer,
                    path: rel.display().to_string(),
                    reason: "is a device node",
                });
            }
            // Metadata records the tar reader already applied, and kinds
            // an image has no use for.
            _ => continue,
        }
        std::os::unix::fs::lchown(&path, Some(id(uid)), Some(id(gid)))
            .map_err(ImageError::io("chown", &path))?;
        if kind == tar::EntryType::Directory || kind == tar::EntryType::Regular {
            // chown clears set-id bits; put the entry's mode back.
            fs::set_permissions(&path, fs::Permissions::from_mode(mode))
                .map_err(ImageError::io("chmod", &path))?;
        }
        made.insert(rel);
    }
    Ok(())
}

fn id(v: u64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}
