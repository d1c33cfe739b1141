//! OCI images on a node: an OCI image layout (a folder, or a tar of one,
//! as `docker save` writes since 25) or a legacy `docker save` archive is
//! read, its blobs checked against their digests, and its layers applied
//! in order onto one tree (see `layer` for what is refused). The image's
//! configuration (entrypoint, cmd, env, working folder, user) becomes the
//! jail's defaults. With the `registry` feature, `registry::pull` fetches
//! an image from an OCI distribution registry into a layout first.

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

mod layer;
#[cfg(feature = "registry")]
pub mod registry;

/// Why an image could not be read or unpacked.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{0}")]
    Invalid(String),
    #[error("layer {layer}: {path:?} {reason}")]
    Unsafe {
        layer: usize,
        path: String,
        reason: &'static str,
    },
    #[error("the image is too large: {0}")]
    TooLarge(String),
    #[error("layer {layer} is not a readable tar stream: {source}")]
    Layer { layer: usize, source: io::Error },
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{0}")]
    Registry(String),
}

impl ImageError {
    pub(crate) fn io(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> Self + use<> {
        let path = path.to_owned();
        move |source| ImageError::Io {
            action,
            path,
            source,
        }
    }

    pub(crate) fn layer(layer: usize) -> impl FnOnce(io::Error) -> Self {
        move |source| ImageError::Layer { layer, source }
    }
}

/// Limits on what one image may unpack to.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Bytes of file contents, all layers together.
    pub max_bytes: u64,
    /// Entries (files, folders, links), all layers together.
    pub max_entries: u64,
    /// Layers.
    pub max_layers: usize,
}

impl Default for Bounds {
    fn default() -> Self {
        Bounds {
            max_bytes: 8 << 30,
            max_entries: 500_000,
            max_layers: 128,
        }
    }
}

/// What an image asks of the jails made from it, and where it came from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    /// The program always run (the jail's command is appended to it).
    #[serde(default)]
    pub entrypoint: Vec<String>,
    /// The default arguments, replaced by a jail's own command.
    #[serde(default)]
    pub cmd: Vec<String>,
    /// `NAME=value` defaults, under a jail's own variables.
    #[serde(default)]
    pub env: Vec<String>,
    /// The command's working folder inside the jail; empty: `/`.
    #[serde(default)]
    pub workdir: String,
    /// `user[:group]` by name or number; empty: root.
    #[serde(default)]
    pub user: String,
    /// The digest of the image's manifest.
    #[serde(default)]
    pub digest: String,
    /// The registry reference it was pulled from; empty when imported.
    #[serde(default)]
    pub source: String,
}

impl ImageConfig {
    /// The command a jail runs: the entrypoint, then the jail's own
    /// command or else the image's cmd. Empty when the image names none.
    pub fn command(&self, asked: &[String]) -> Vec<String> {
        let args = if asked.is_empty() { &self.cmd } else { asked };
        self.entrypoint.iter().chain(args).cloned().collect()
    }

    /// The environment as (name, value) pairs.
    pub fn env_pairs(&self) -> Vec<(String, String)> {
        self.env
            .iter()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }
}

/// The `config` object of an OCI image configuration blob.
#[derive(Deserialize, Default)]
struct RawConfig {
    #[serde(default, rename = "config")]
    config: Option<RawRunConfig>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct RawRunConfig {
    entrypoint: Option<Vec<String>>,
    cmd: Option<Vec<String>>,
    env: Option<Vec<String>>,
    working_dir: Option<String>,
    user: Option<String>,
}

/// Reads an image configuration blob.
pub fn parse_config(bytes: &[u8], digest: &str) -> Result<ImageConfig, ImageError> {
    let raw: RawConfig = serde_json::from_slice(bytes)
        .map_err(|e| ImageError::Invalid(format!("the image configuration is not valid: {e}")))?;
    let c = raw.config.unwrap_or_default();
    Ok(ImageConfig {
        entrypoint: c.entrypoint.unwrap_or_default(),
        cmd: c.cmd.unwrap_or_default(),
        env: c.env.unwrap_or_default(),
        workdir: c.working_dir.unwrap_or_default(),
        user: c.user.unwrap_or_default(),
        digest: digest.to_owned(),
        source: String::new(),
    })
}

#[derive(Deserialize)]
struct Descriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Deserialize)]
struct Platform {
    architecture: String,
    os: String,
}

#[derive(Deserialize)]
struct Index {
    manifests: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct Manifest {
    config: Descriptor,
    layers: Vec<Descriptor>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifest {
    config: String,
    layers: Vec<String>,
}

/// This host's architecture as OCI names it.
fn architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// Whether `path` is an image layout folder or an archive holding one or
/// a `docker save` (rather than a plain root filesystem tarball).
pub fn is_oci(path: &Path) -> bool {
    if path.is_dir() {
        return path.join("index.json").is_file() || path.join("manifest.json").is_file();
    }
    let Ok(file) = fs::File::open(path) else {
        return false;
    };
    let Ok(reader) = layer::decompressed(file) else {
        return false;
    };
    let mut archive = tar::Archive::new(reader);
    let Ok(entries) = archive.entries() else {
        return false;
    };
    entries.take(64).flatten().any(|e| {
        e.path().is_ok_and(|p| {
            let p = p.to_string_lossy();
            let p = p.trim_start_matches("./");
            p == "oci-layout" || p == "index.json" || p == "manifest.json"
        })
    })
}

/// Unpacks the image at `source` (a layout folder or an archive) into the
/// empty folder `root`, using `scratch` (made and removed here) to hold an
/// archive's contents; returns its configuration.
pub fn unpack(
    source: &Path,
    root: &Path,
    scratch: &Path,
    bounds: &Bounds,
) -> Result<ImageConfig, ImageError> {
    if source.is_dir() {
        return unpack_layout(source, root, bounds);
    }
    let _ = fs::remove_dir_all(scratch);
    fs::create_dir_all(scratch).map_err(ImageError::io("create", scratch))?;
    let r = extract_archive(source, scratch, bounds)
        .and_then(|()| unpack_layout(scratch, root, bounds));
    let _ = fs::remove_dir_all(scratch);
    r
}

/// Copies an archive's files and links into `dir` (links resolved later,
/// only within `dir`).
fn extract_archive(source: &Path, dir: &Path, bounds: &Bounds) -> Result<(), ImageError> {
    let file = fs::File::open(source).map_err(ImageError::io("open", source))?;
    let reader = layer::decompressed(file).map_err(ImageError::io("read", source))?;
    let mut archive = tar::Archive::new(layer::Capped {
        inner: reader,
        left: bounds.max_bytes.saturating_add(1 << 30),
    });
    let mut budget = layer::Budget::default();
    // The archive holds compressed layers: no more than the image.
    let max_entries = 100_000;
    layer::walk(&mut archive, 0, |entry, meta| {
        let Some(rel) = layer::clean(&meta.path, 0)? else {
            return Ok(());
        };
        budget.entries += 1;
        if budget.entries > max_entries {
            return Err(ImageError::TooLarge(
                "the archive has too many entries".into(),
            ));
        }
        // As for layers: never through a link an earlier entry made.
        layer::parents(dir, &rel, 0)?;
        let path = dir.join(&rel);
        match entry.header().entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                layer::remove(&path)?;
                let mut out = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&path)
                    .map_err(ImageError::io("create", &path))?;
                let room = bounds.max_bytes.saturating_sub(budget.bytes);
                let n = io::copy(&mut entry.take(room + 1), &mut out)
                    .map_err(ImageError::io("read", source))?;
                budget.bytes += n;
                if n > room {
                    return Err(ImageError::TooLarge(format!(
                        "the archive holds more than {} bytes",
                        bounds.max_bytes
                    )));
                }
            }
            tar::EntryType::Symlink => {
                if let Some(target) = meta.link {
                    layer::remove(&path)?;
                    std::os::unix::fs::symlink(&target, &path)
                        .map_err(ImageError::io("symlink", &path))?;
                }
            }
            tar::EntryType::Directory => match fs::symlink_metadata(&path) {
                Ok(m) if m.is_dir() => {}
                _ => {
                    layer::remove(&path)?;
                    fs::create_dir(&path).map_err(ImageError::io("create", &path))?;
                }
            },
            _ => {}
        }
        Ok(())
    })?;
    Ok(())
}

/// Opens `rel` inside `dir`, refusing a path or link that leads outside.
fn open_inside(dir: &Path, rel: &str) -> Result<fs::File, ImageError> {
    let base = dir.canonicalize().map_err(ImageError::io("open", dir))?;
    let path = base.join(rel.trim_start_matches('/'));
    let real = path
        .canonicalize()
        .map_err(|_| ImageError::Invalid(format!("the image has no file {rel:?}")))?;
    if !real.starts_with(&base) {
        return Err(ImageError::Invalid(format!(
            "the image's file {rel:?} leads outside it"
        )));
    }
    fs::File::open(&real).map_err(ImageError::io("open", &real))
}

/// The path of a blob in a layout, by digest.
fn blob_path(digest: &str) -> Result<String, ImageError> {
    match digest.split_once(':') {
        Some(("sha256", hex)) if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Ok(format!("blobs/sha256/{hex}"))
        }
        _ => Err(ImageError::Invalid(format!(
            "unsupported digest {digest:?} (sha256 only)"
        ))),
    }
}

/// Reads a small blob whole, checking its digest.
fn read_blob(dir: &Path, digest: &str) -> Result<Vec<u8>, ImageError> {
    let mut bytes = Vec::new();
    open_inside(dir, &blob_path(digest)?)?
        .take(16 << 20)
        .read_to_end(&mut bytes)
        .map_err(ImageError::io("read", dir))?;
    check_digest(digest, &Sha256::digest(&bytes))?;
    Ok(bytes)
}

fn check_digest(digest: &str, sum: &[u8]) -> Result<(), ImageError> {
    let got = format!("sha256:{}", hex::encode(sum));
    if got == digest {
        Ok(())
    } else {
        Err(ImageError::Invalid(format!(
            "blob {digest} does not match its digest (its content is {got})"
        )))
    }
}

/// A reader that hashes what passes through it.
struct Hashing<R> {
    inner: R,
    sum: Sha256,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.sum.update(&buf[..n]);
        Ok(n)
    }
}

/// Picks the manifest for this host from an index (nested indexes
/// followed), returning its digest.
fn pick_manifest(dir: &Path, index: &Index, depth: usize) -> Result<String, ImageError> {
    let arch = architecture();
    let chosen = if index.manifests.len() == 1 {
        &index.manifests[0]
    } else {
        index
            .manifests
            .iter()
            .find(|m| {
                m.platform
                    .as_ref()
                    .is_some_and(|p| p.os == "linux" && p.architecture == arch)
            })
            .ok_or_else(|| ImageError::Invalid(format!("the image has no linux/{arch} manifest")))?
    };
    if chosen.media_type.contains("index") || chosen.media_type.contains("manifest.list") {
        if depth > 2 {
            return Err(ImageError::Invalid("image indexes nest too deep".into()));
        }
        let nested: Index = serde_json::from_slice(&read_blob(dir, &chosen.digest)?)
            .map_err(|e| ImageError::Invalid(format!("an image index is not valid: {e}")))?;
        return pick_manifest(dir, &nested, depth + 1);
    }
    Ok(chosen.digest.clone())
}

/// Unpacks an image layout (or an extracted `docker save`) folder.
fn unpack_layout(dir: &Path, root: &Path, bounds: &Bounds) -> Result<ImageConfig, ImageError> {
    let mut budget = layer::Budget::default();
    if dir.join("index.json").is_file() {
        let mut text = Vec::new();
        open_inside(dir, "index.json")?
            .take(4 << 20)
            .read_to_end(&mut text)
            .map_err(ImageError::io("read", dir))?;
        let index: Index = serde_json::from_slice(&text)
            .map_err(|e| ImageError::Invalid(format!("index.json is not valid: {e}")))?;
        if index.manifests.is_empty() {
            return Err(ImageError::Invalid("index.json lists no image".into()));
        }
        let digest = pick_manifest(dir, &index, 0)?;
        let manifest: Manifest = serde_json::from_slice(&read_blob(dir, &digest)?)
            .map_err(|e| ImageError::Invalid(format!("the image manifest is not valid: {e}")))?;
        if manifest.layers.len() > bounds.max_layers {
            return Err(ImageError::TooLarge(format!(
                "{} layers (at most {})",
                manifest.layers.len(),
                bounds.max_layers
            )));
        }
        let config = parse_config(&read_blob(dir, &manifest.config.digest)?, &digest)?;
        for (i, l) in manifest.layers.iter().enumerate() {
            let file = open_inside(dir, &blob_path(&l.digest)?)?;
            let mut hashing = Hashing {
                inner: file,
                sum: Sha256::new(),
            };
            layer::apply(&mut hashing, root, i + 1, bounds, &mut budget)?;
            // Whatever the tar reader left unread still counts.
            io::copy(&mut hashing, &mut io::sink()).map_err(ImageError::io("read", dir))?;
            check_digest(&l.digest, &hashing.sum.finalize())?;
        }
        return Ok(config);
    }
    let mut text = Vec::new();
    open_inside(dir, "manifest.json")?
        .take(4 << 20)
        .read_to_end(&mut text)
        .map_err(ImageError::io("read", dir))?;
    let manifests: Vec<DockerManifest> = serde_json::from_slice(&text)
        .map_err(|e| ImageError::Invalid(format!("manifest.json is not valid: {e}")))?;
    let m = manifests
        .first()
        .ok_or_else(|| ImageError::Invalid("manifest.json lists no image".into()))?;
    if m.layers.len() > bounds.max_layers {
        return Err(ImageError::TooLarge(format!(
            "{} layers (at most {})",
            m.layers.len(),
            bounds.max_layers
        )));
    }
    let mut bytes = Vec::new();
    open_inside(dir, &m.config)?
        .take(16 << 20)
        .read_to_end(&mut bytes)
        .map_err(ImageError::io("read", dir))?;
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(&text)));
    let config = parse_config(&bytes, &digest)?;
    for (i, l) in m.layers.iter().enumerate() {
        layer::apply(open_inside(dir, l)?, root, i + 1, bounds, &mut budget)?;
    }
    Ok(config)
}

/// Where an image's configuration is kept: in a hidden folder beside the
/// trees, so no image name can collide with it.
pub fn config_path(image_dir: &Path, name: &str) -> PathBuf {
    image_dir.join(".config").join(format!("{name}.json"))
}

/// An image's configuration, if it is an OCI image.
pub fn read_config(image_dir: &Path, name: &str) -> Result<Option<ImageConfig>, ImageError> {
    let path = config_path(image_dir, name);
    match fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| ImageError::Invalid(format!("{} is not valid: {e}", path.display()))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ImageError::io("read", &path)(e)),
    }
}

/// Writes an image's configuration beside its tree.
pub fn write_config(image_dir: &Path, name: &str, config: &ImageConfig) -> Result<(), ImageError> {
    let path = config_path(image_dir, name);
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(ImageError::io("create", dir))?;
    }
    let text = serde_json::to_vec_pretty(config)
        .map_err(|e| ImageError::Invalid(format!("cannot write the image configuration: {e}")))?;
    fs::write(&path, text).map_err(ImageError::io("write", &path))
}

#[cfg(test)]
mod tests;
