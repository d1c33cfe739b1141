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
use std::os::unix::ffi::OsStringExt;
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
    /// Bytes of decompressed tar streams read so far.
    pub(crate) stream: u64,
}

impl Budget {
    /// What is left of the tar stream allowance: the bytes of files, and
    /// for each entry its header, names and padding.
    pub(crate) fn stream_left(&self, bounds: &Bounds) -> u64 {
        bounds
            .max_bytes
            .saturating_add(bounds.max_entries.saturating_mul(4096))
            .saturating_sub(self.stream)
    }
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

/// Extension records (GNU long names, PAX headers) are at most this long:
/// the tar reader would otherwise read a record of any declared size into
/// memory.
const MAX_EXTENSION: u64 = 64 << 10;

/// What an entry says of itself once its extension records are applied.
pub(crate) struct Meta {
    pub(crate) path: PathBuf,
    pub(crate) link: Option<PathBuf>,
    /// Its owner; `None` when its header's fields do not read as numbers.
    pub(crate) owner: Option<(u64, u64)>,
}

fn bytes_path(mut b: Vec<u8>) -> PathBuf {
    while b.last() == Some(&0) {
        b.pop();
    }
    PathBuf::from(std::ffi::OsString::from_vec(b))
}

fn read_extension<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    layer: usize,
) -> Result<Vec<u8>, ImageError> {
    if entry.size() > MAX_EXTENSION {
        return Err(ImageError::Unsafe {
            layer,
            path: String::from_utf8_lossy(&entry.header().path_bytes()).into_owned(),
            reason: "is an extension record over 64 KiB",
        });
    }
    let mut data = Vec::new();
    entry
        .read_to_end(&mut data)
        .map_err(ImageError::layer(layer))?;
    Ok(data)
}

/// The `key=value` records of a PAX extension (`LEN key=value\n` each).
fn pax_records(mut data: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    while let Some(space) = data.iter().position(|b| *b == b' ') {
        let Some(len) = std::str::from_utf8(&data[..space])
            .ok()
            .and_then(|l| l.parse::<usize>().ok())
            .filter(|l| *l > space + 1 && *l <= data.len())
        else {
            break;
        };
        let record = &data[space + 1..len];
        let record = record.strip_suffix(b"\n").unwrap_or(record);
        if let Some(eq) = record.iter().position(|b| *b == b'=') {
            out.push((record[..eq].to_vec(), record[eq + 1..].to_vec()));
        }
        data = &data[len..];
    }
    out
}

/// Calls `each` with every member of `archive` and what it says of itself,
/// reading the extension records itself (bounded), and refusing what an
/// image has no use for and the reader could mis-frame (sparse files, a
/// PAX size other than the header's).
pub(crate) fn walk<R: Read>(
    archive: &mut tar::Archive<R>,
    layer: usize,
    mut each: impl FnMut(&mut tar::Entry<'_, R>, Meta) -> Result<(), ImageError>,
) -> Result<(), ImageError> {
    let mut path: Option<Vec<u8>> = None;
    let mut link: Option<Vec<u8>> = None;
    let mut ids: (Option<u64>, Option<u64>) = (None, None);
    let mut size: Option<u64> = None;
    let entries = archive
        .entries()
        .map_err(ImageError::layer(layer))?
        .raw(true);
    for entry in entries {
        let mut entry = entry.map_err(ImageError::layer(layer))?;
        let kind = entry.header().entry_type();
        if kind.is_gnu_longname() {
            path = Some(read_extension(&mut entry, layer)?);
            continue;
        }
        if kind.is_gnu_longlink() {
            link = Some(read_extension(&mut entry, layer)?);
            continue;
        }
        if kind.is_pax_global_extensions() {
            read_extension(&mut entry, layer)?;
            continue;
        }
        if kind.is_pax_local_extensions() {
            for (key, value) in pax_records(&read_extension(&mut entry, layer)?) {
                let number = || {
                    std::str::from_utf8(&value)
                        .ok()
                        .and_then(|v| v.parse().ok())
                };
                match key.as_slice() {
                    b"path" => path = Some(value),
                    b"linkpath" => link = Some(value),
                    b"uid" => ids.0 = Some(number().unwrap_or(u64::MAX)),
                    b"gid" => ids.1 = Some(number().unwrap_or(u64::MAX)),
                    b"size" => size = Some(number().unwrap_or(u64::MAX)),
                    k if k.starts_with(b"GNU.sparse") => {
                        return Err(ImageError::Unsafe {
                            layer,
                            path: String::from_utf8_lossy(&entry.header().path_bytes())
                                .into_owned(),
                            reason: "is a sparse file (not supported in images)",
                        });
                    }
                    _ => {}
                }
            }
            continue;
        }
        let header_path = entry.header().path_bytes().into_owned();
        let shown = || String::from_utf8_lossy(&header_path).into_owned();
        if kind.is_gnu_sparse() {
            return Err(ImageError::Unsafe {
                layer,
                path: shown(),
                reason: "is a sparse file (not supported in images)",
            });
        }
        if size.take().is_some_and(|s| s != entry.size()) {
            return Err(ImageError::Unsafe {
                layer,
                path: shown(),
                reason: "has a size its tar header does not hold (over 8 GiB)",
            });
        }
        let meta = Meta {
            path: bytes_path(path.take().unwrap_or_else(|| header_path.clone())),
            link: link
                .take()
                .or_else(|| entry.header().link_name_bytes().map(|l| l.into_owned()))
                .map(bytes_path),
            owner: (|| {
                let uid = match ids.0.take() {
                    Some(u) => u,
                    None => entry.header().uid().ok()?,
                };
                let gid = match ids.1.take() {
                    Some(g) => g,
                    None => entry.header().gid().ok()?,
                };
                Some((uid, gid))
            })(),
        };
        each(&mut entry, meta)?;
    }
    Ok(())
}

/// A stream that fails once it has given `left` bytes: a layer's tar
/// stream (names, padding and skipped data included) is bounded too.
pub(crate) struct Capped<R> {
    pub(crate) inner: R,
    pub(crate) left: u64,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.left = self.left.checked_sub(n as u64).ok_or_else(|| {
            io::Error::other("the image's layers decompress to more than its bounds allow")
        })?;
        Ok(n)
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
    let allowed = budget.stream_left(bounds);
    let stream = Capped {
        inner: decompressed(reader).map_err(ImageError::layer(layer))?,
        left: allowed,
    };
    let mut archive = tar::Archive::new(stream);
    let walked = apply_entries(&mut archive, root, layer, bounds, budget);
    budget.stream += allowed - archive.into_inner().left;
    walked
}

fn apply_entries<R: Read>(
    archive: &mut tar::Archive<R>,
    root: &Path,
    layer: usize,
    bounds: &Bounds,
    budget: &mut Budget,
) -> Result<(), ImageError> {
    // Paths this layer made: an opaque marker hides only what lower ones did.
    let mut made: HashSet<PathBuf> = HashSet::new();
    walk(archive, layer, |entry, meta| {
        let Some(rel) = clean(&meta.path, layer)? else {
            return Ok(());
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
            hide_lower(root, dir_rel, &made)?;
            return Ok(());
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
            return Ok(());
        }
        let header = entry.header();
        let (uid, gid) = meta.owner.ok_or_else(|| ImageError::Unsafe {
            layer,
            path: rel.display().to_string(),
            reason: "has an owner that is not a number",
        })?;
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
                let copied = io::copy(&mut entry.take(room + 1), &mut file)
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
                let target = meta.link.ok_or_else(|| ImageError::Unsafe {
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
                let target = meta
                    .link
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
                return Ok(());
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
            // Kinds an image has no use for.
            _ => return Ok(()),
        }
        std::os::unix::fs::lchown(&path, Some(id(uid)), Some(id(gid)))
            .map_err(ImageError::io("chown", &path))?;
        if kind == tar::EntryType::Directory || kind == tar::EntryType::Regular {
            // chown clears set-id bits; put the entry's mode back.
            fs::set_permissions(&path, fs::Permissions::from_mode(mode))
                .map_err(ImageError::io("chmod", &path))?;
        }
        made.insert(rel);
        Ok(())
    })
}

/// Removes what lower layers put in `dir_rel` (an opaque marker): every
/// entry this layer did not make, and within folders it made again, the
/// same, all the way down.
fn hide_lower(root: &Path, dir_rel: &Path, made: &HashSet<PathBuf>) -> Result<(), ImageError> {
    let dir = root.join(dir_rel);
    for child in fs::read_dir(&dir).map_err(ImageError::io("list", &dir))? {
        let child = child.map_err(ImageError::io("list", &dir))?;
        let rel = dir_rel.join(child.file_name());
        if !made.contains(&rel) {
            remove(&child.path())?;
        } else if child.file_type().is_ok_and(|t| t.is_dir()) {
            hide_lower(root, &rel, made)?;
        }
    }
    Ok(())
}

fn id(v: u64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}
