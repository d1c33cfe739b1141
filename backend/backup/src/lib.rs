//! Backups off the node: where they go (a folder, or any S3-compatible
//! object store) and what one is.
//!
//! A backup of a jail is two objects under `<prefix>/`:
//!
//! - `volume.img.zst`: the jail's volume image (a sparse ext4 filesystem,
//!   its holes as zeros) compressed with zstd. `zstd -d` gives an image a
//!   customer can mount with `mount -o loop`.
//! - `manifest.json`: a [`Manifest`]: whose jail it was, its image,
//!   command and limits, the volume's length, and SHA-256 sums of the image
//!   and of the compressed object.
//!
//! The manifest is written last: a backup whose manifest is missing was
//! never finished. A restore checks both sums and the length before it
//! gives the image to a jail.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, anyhow, bail};
use futures::StreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// How much of the image is read, compressed and sent at once.
const CHUNK: usize = 4 << 20;
/// The zstd level: fast, and zeros (a volume's free space) cost nothing.
const LEVEL: i32 = 3;
/// The version of the format written.
pub const FORMAT: u32 = 1;
/// The longest manifest read (a bad or hostile object is refused).
const MAX_MANIFEST: usize = 1 << 20;

/// What a backup says of itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`FORMAT`].
    pub format: u32,
    /// The backup's id.
    pub backup_id: Uuid,
    /// The tenant whose jail it is: a restore for another is refused.
    pub tenant_id: Uuid,
    /// The jail it was taken of.
    pub jail_id: Uuid,
    /// Its name then.
    pub jail_name: String,
    /// Its root filesystem image.
    pub image: String,
    /// `app` or `system`.
    pub kind: String,
    /// Its command (empty: the image's default).
    pub command: Vec<String>,
    /// Its limits then (as the API writes them).
    pub limits: serde_json::Value,
    /// The first host uid of the jail's user namespace then (`None`: host
    /// ids): a restore into another range shifts the files' owners.
    pub uid_base: Option<u32>,
    /// Length of the volume image.
    pub volume_bytes: u64,
    /// SHA-256 of the image (holes read as zeros), hex.
    pub volume_sha256: String,
    /// Length of `volume.img.zst`.
    pub archive_bytes: u64,
    /// SHA-256 of `volume.img.zst`, hex.
    pub archive_sha256: String,
    /// When it was taken.
    pub created_at: chrono::DateTime<chrono::Utc>,
}

/// What a backup's archive came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub volume_bytes: u64,
    pub volume_sha256: String,
    pub archive_bytes: u64,
    pub archive_sha256: String,
}

/// Where backups are kept.
#[derive(Clone)]
pub struct Target {
    store: Arc<dyn ObjectStore>,
    /// The target in words (no secrets).
    describe: String,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe)
    }
}

/// The prefix of a backup's objects.
pub fn prefix(tenant_id: Uuid, backup_id: Uuid) -> String {
    format!("tenants/{tenant_id}/backups/{backup_id}")
}

fn object(prefix: &str, name: &str) -> ObjectPath {
    ObjectPath::from(format!("{prefix}/{name}"))
}

impl Target {
    /// A target from its setting:
    ///
    /// - an absolute folder, or `file:///folder`: made if missing, for
    ///   root only;
    /// - `s3://bucket[/prefix]?endpoint=URL&region=NAME`: any S3-compatible
    ///   store; the keys come from `AWS_ACCESS_KEY_ID` and
    ///   `AWS_SECRET_ACCESS_KEY` (or the other `AWS_*` settings the AWS
    ///   tools read). Without `endpoint`, Amazon's.
    pub fn parse(spec: &str) -> anyhow::Result<Target> {
        let spec = spec.trim();
        if let Some(rest) = spec.strip_prefix("s3://") {
            let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
            let (bucket, prefix) = path.split_once('/').unwrap_or((path, ""));
            if bucket.is_empty() {
                bail!("{spec:?}: no bucket (s3://bucket/prefix?endpoint=…)");
            }
            let mut b = AmazonS3Builder::from_env().with_bucket_name(bucket);
            let mut endpoint = None;
            for pair in query.split('&').filter(|p| !p.is_empty()) {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                match k {
                    "endpoint" => {
                        b = b
                            .with_endpoint(v)
                            .with_allow_http(v.starts_with("http://"))
                            .with_virtual_hosted_style_request(false);
                        endpoint = Some(v.to_owned());
                    }
                    "region" => b = b.with_region(v),
                    other => bail!("{spec:?}: unknown setting {other:?} (endpoint, region)"),
                }
            }
            let store = b
                .build()
                .with_context(|| format!("the S3 target {bucket}"))?;
            let store: Arc<dyn ObjectStore> = if prefix.trim_matches('/').is_empty() {
                Arc::new(store)
            } else {
                Arc::new(object_store::prefix::PrefixStore::new(
                    store,
                    prefix.trim_matches('/'),
                ))
            };
            let describe = format!(
                "s3://{bucket}/{}{}",
                prefix.trim_matches('/'),
                endpoint.map(|e| format!(" at {e}")).unwrap_or_default()
            );
            return Ok(Target { store, describe });
        }
        let dir = spec.strip_prefix("file://").unwrap_or(spec);
        if !dir.starts_with('/') {
            bail!("{spec:?}: a backup target is an absolute folder or s3://bucket/prefix");
        }
        std::fs::create_dir_all(dir).with_context(|| format!("making {dir}"))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .with_context(|| format!("chmod {dir}"))?;
        }
        let store = LocalFileSystem::new_with_prefix(dir)
            .with_context(|| format!("the backup folder {dir}"))?;
        Ok(Target {
            store: Arc::new(store),
            describe: format!("folder {dir}"),
        })
    }

    /// Compresses the volume image at `image` into `<prefix>/volume.img.zst`,
    /// streaming: at most a few chunks are in memory at once.
    pub async fn put_volume(&self, prefix: &str, image: &Path) -> anyhow::Result<Stored> {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
        let path = image.to_owned();
        let reader = tokio::task::spawn_blocking(move || compress(&path, &tx));
        let upload = self
            .store
            .put_multipart(&object(prefix, "volume.img.zst"))
            .await
            .context("starting the upload")?;
        let mut w = WriteMultipart::new(upload);
        let mut archive_bytes = 0u64;
        let mut sha = Sha256::new();
        while let Some(chunk) = rx.recv().await {
            archive_bytes += chunk.len() as u64;
            sha.update(&chunk);
            w.wait_for_capacity(4).await.context("uploading")?;
            w.write(&chunk);
        }
        let (volume_bytes, volume_sha256) = match reader.await {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                let _ = w.abort().await;
                return Err(e.context(format!("reading {}", image.display())));
            }
            Err(e) => {
                let _ = w.abort().await;
                return Err(anyhow!("the compressor failed: {e}"));
            }
        };
        w.finish().await.context("finishing the upload")?;
        Ok(Stored {
            volume_bytes,
            volume_sha256,
            archive_bytes,
            archive_sha256: hex::encode(sha.finalize()),
        })
    }

    /// Writes the manifest: the backup is whole from now on.
    pub async fn put_manifest(&self, prefix: &str, m: &Manifest) -> anyhow::Result<()> {
        let body = serde_json::to_vec_pretty(m)?;
        self.store
            .put(&object(prefix, "manifest.json"), PutPayload::from(body))
            .await
            .context("writing the manifest")?;
        Ok(())
    }

    /// Reads a backup's manifest.
    pub async fn manifest(&self, prefix: &str) -> anyhow::Result<Manifest> {
        let got = self
            .store
            .get(&object(prefix, "manifest.json"))
            .await
            .context("the backup has no manifest (not finished, or removed)")?;
        if got.meta.size > MAX_MANIFEST as u64 {
            bail!("the manifest is {} bytes: not a manifest", got.meta.size);
        }
        let bytes = got.bytes().await.context("reading the manifest")?;
        let m: Manifest = serde_json::from_slice(&bytes).context("the manifest is not valid")?;
        if m.format != FORMAT {
            bail!("backup format {} is not known here", m.format);
        }
        Ok(m)
    }

    /// The compressed volume as stored, for a download.
    pub async fn volume_stream(
        &self,
        prefix: &str,
    ) -> anyhow::Result<(
        u64,
        futures::stream::BoxStream<'static, anyhow::Result<Vec<u8>>>,
    )> {
        let got = self
            .store
            .get(&object(prefix, "volume.img.zst"))
            .await
            .context("the backup's volume is missing")?;
        let size = got.meta.size;
        let stream = got
            .into_stream()
            .map(|r| r.map(|b| b.to_vec()).map_err(anyhow::Error::from))
            .boxed();
        Ok((size, stream))
    }

    /// Writes the backup's volume to `to` (made, or replaced), sparse, and
    /// checks it against `m`: a length or sum that differs (a corrupt or
    /// truncated object) is an error and `to` is removed.
    pub async fn get_volume(&self, prefix: &str, m: &Manifest, to: &Path) -> anyhow::Result<()> {
        let got = self
            .store
            .get(&object(prefix, "volume.img.zst"))
            .await
            .context("the backup's volume is missing")?;
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(4);
        let out = to.to_owned();
        let expect = m.clone();
        let writer = tokio::task::spawn_blocking(move || {
            let r = decompress(ChannelReader::new(rx), &out, &expect);
            if r.is_err() {
                let _ = std::fs::remove_file(&out);
            }
            r
        });
        let mut stream = got.into_stream();
        let mut archive_bytes = 0u64;
        let mut sha = Sha256::new();
        let mut failed = None;
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(b) => {
                    archive_bytes += b.len() as u64;
                    sha.update(&b);
                    if tx.send(b.to_vec()).is_err() {
                        break;
                    }
                }
                Err(e) => {
                    failed = Some(anyhow::Error::from(e).context("reading the backup"));
                    break;
                }
            }
        }
        drop(tx);
        let written = writer
            .await
            .map_err(|e| anyhow!("the decompressor failed: {e}"))?;
        let archive_sha256 = hex::encode(sha.finalize());
        let archive_ok = archive_bytes == m.archive_bytes && archive_sha256 == m.archive_sha256;
        let outcome = match (failed, written) {
            (Some(e), _) => Err(e),
            (None, Err(e)) => Err(e),
            (None, Ok(())) if !archive_ok => Err(anyhow!(
                "the backup's archive is {archive_bytes} bytes with SHA-256 {archive_sha256}, its manifest says {} and {}: corrupt or truncated",
                m.archive_bytes,
                m.archive_sha256
            )),
            (None, Ok(())) => Ok(()),
        };
        if outcome.is_err() {
            let _ = std::fs::remove_file(to);
        }
        outcome
    }

    /// Removes a backup's objects, as far as present.
    pub async fn delete(&self, prefix: &str) -> anyhow::Result<()> {
        // The manifest first: a half-removed backup is never taken for whole.
        for name in ["manifest.json", "volume.img.zst"] {
            match self.store.delete(&object(prefix, name)).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(anyhow::Error::from(e).context(format!("removing {name}"))),
            }
        }
        Ok(())
    }
}

/// Reads `image` (holes as zeros), compresses it and sends the compressed
/// bytes down `tx`; returns the image's length and SHA-256.
fn compress(
    image: &Path,
    tx: &tokio::sync::mpsc::Sender<Vec<u8>>,
) -> anyhow::Result<(u64, String)> {
    let mut f = File::open(image)?;
    let mut enc = zstd::stream::write::Encoder::new(Vec::with_capacity(CHUNK), LEVEL)?;
    let mut sha = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    loop {
        let n = read_full(&mut f, &mut buf)?;
        if n == 0 {
            break;
        }
        total += n as u64;
        sha.update(&buf[..n]);
        enc.write_all(&buf[..n])?;
        if enc.get_ref().len() >= CHUNK {
            let out = std::mem::replace(enc.get_mut(), Vec::with_capacity(CHUNK));
            tx.blocking_send(out)
                .map_err(|_| anyhow!("the upload stopped"))?;
        }
    }
    let rest = enc.finish()?;
    if !rest.is_empty() {
        tx.blocking_send(rest)
            .map_err(|_| anyhow!("the upload stopped"))?;
    }
    Ok((total, hex::encode(sha.finalize())))
}

fn read_full(f: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Decompresses into `out`, leaving blocks of zeros as holes, and checks
/// the image's length and sum against `m`.
fn decompress(input: impl Read, out: &Path, m: &Manifest) -> anyhow::Result<()> {
    let mut dec = zstd::stream::read::Decoder::new(input)?;
    let mut f = File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let mut sha = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = read_full(&mut dec, &mut buf).context("the backup's archive is not valid zstd")?;
        if n == 0 {
            break;
        }
        total += n as u64;
        if total > m.volume_bytes {
            bail!(
                "the backup's volume is longer than its manifest's {} bytes",
                m.volume_bytes
            );
        }
        sha.update(&buf[..n]);
        // 4 KiB blocks of zeros are skipped: the file stays sparse.
        for block in buf[..n].chunks(4096) {
            if block.iter().all(|b| *b == 0) {
                f.seek(SeekFrom::Current(i64::try_from(block.len())?))?;
            } else {
                f.write_all(block)?;
            }
        }
    }
    f.set_len(total)?;
    let sum = hex::encode(sha.finalize());
    if total != m.volume_bytes || sum != m.volume_sha256 {
        bail!(
            "the backup's volume is {total} bytes with SHA-256 {sum}, its manifest says {} and {}: corrupt or truncated",
            m.volume_bytes,
            m.volume_sha256
        );
    }
    f.sync_all()?;
    Ok(())
}

/// A reader over chunks arriving on a channel.
struct ChannelReader {
    rx: std::sync::mpsc::Receiver<Vec<u8>>,
    chunk: Vec<u8>,
    at: usize,
}

impl ChannelReader {
    fn new(rx: std::sync::mpsc::Receiver<Vec<u8>>) -> Self {
        Self {
            rx,
            chunk: Vec::new(),
            at: 0,
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.at >= self.chunk.len() {
            match self.rx.recv() {
                Ok(c) => {
                    self.chunk = c;
                    self.at = 0;
                }
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len() - self.at);
        buf[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(stored: &Stored) -> Manifest {
        Manifest {
            format: FORMAT,
            backup_id: Uuid::new_v4(),
            tenant_id: Uuid::new_v4(),
            jail_id: Uuid::new_v4(),
            jail_name: "web".into(),
            image: "busybox".into(),
            kind: "system".into(),
            command: vec![],
            limits: serde_json::json!({}),
            uid_base: None,
            volume_bytes: stored.volume_bytes,
            volume_sha256: stored.volume_sha256.clone(),
            archive_bytes: stored.archive_bytes,
            archive_sha256: stored.archive_sha256.clone(),
            created_at: chrono::Utc::now(),
        }
    }

    /// A sparse 64 MiB image with data in two places.
    fn image(dir: &Path) -> std::path::PathBuf {
        let p = dir.join("volume.img");
        let mut f = File::create(&p).unwrap();
        f.set_len(64 << 20).unwrap();
        f.seek(SeekFrom::Start(3 << 20)).unwrap();
        let data: Vec<u8> = (0..(5u32 << 20)).map(|i| (i * 7 % 251) as u8).collect();
        f.write_all(&data).unwrap();
        f.seek(SeekFrom::Start(60 << 20)).unwrap();
        f.write_all(b"superblock copy").unwrap();
        p
    }

    #[tokio::test]
    async fn a_volume_goes_to_a_folder_and_comes_back_sparse_and_equal() {
        let dir = tempfile::tempdir().unwrap();
        let target = Target::parse(&dir.path().join("target").display().to_string()).unwrap();
        let img = image(dir.path());
        let stored = target.put_volume("t/b1", &img).await.unwrap();
        assert_eq!(stored.volume_bytes, 64 << 20);
        assert!(
            stored.archive_bytes < 6 << 20,
            "zeros compress away: {}",
            stored.archive_bytes
        );
        let m = manifest(&stored);
        target.put_manifest("t/b1", &m).await.unwrap();
        assert_eq!(target.manifest("t/b1").await.unwrap(), m);
        let back = dir.path().join("back.img");
        target.get_volume("t/b1", &m, &back).await.unwrap();
        assert!(std::fs::read(&back).unwrap() == std::fs::read(&img).unwrap());
        use std::os::unix::fs::MetadataExt;
        assert!(
            std::fs::metadata(&back).unwrap().blocks() * 512 < 8 << 20,
            "the restored image stays sparse"
        );
        target.delete("t/b1").await.unwrap();
        assert!(target.manifest("t/b1").await.is_err());
        target.delete("t/b1").await.unwrap();
    }

    #[tokio::test]
    async fn a_corrupt_or_truncated_archive_is_refused_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("target");
        let target = Target::parse(&root.display().to_string()).unwrap();
        let img = image(dir.path());
        let stored = target.put_volume("t/b2", &img).await.unwrap();
        let m = manifest(&stored);
        target.put_manifest("t/b2", &m).await.unwrap();
        let archive = root.join("t/b2/volume.img.zst");
        let good = std::fs::read(&archive).unwrap();
        let back = dir.path().join("back.img");
        // Truncated.
        std::fs::write(&archive, &good[..good.len() / 2]).unwrap();
        let e = target.get_volume("t/b2", &m, &back).await.unwrap_err();
        assert!(!back.exists(), "{e:#}");
        // One byte changed.
        let mut bad = good.clone();
        let mid = bad.len() / 2;
        bad[mid] ^= 0x40;
        std::fs::write(&archive, &bad).unwrap();
        let e = target.get_volume("t/b2", &m, &back).await.unwrap_err();
        assert!(!back.exists(), "{e:#}");
        // Not zstd at all.
        std::fs::write(&archive, b"not an archive").unwrap();
        assert!(target.get_volume("t/b2", &m, &back).await.is_err());
        assert!(!back.exists());
        // A manifest that is not one.
        std::fs::write(root.join("t/b2/manifest.json"), b"{\"format\": 9}").unwrap();
        assert!(target.manifest("t/b2").await.is_err());
    }

    #[test]
    fn targets_are_folders_or_s3() {
        assert!(Target::parse("relative/dir").is_err());
        assert!(Target::parse("s3://").is_err());
        assert!(Target::parse("s3://b/p?nope=1").is_err());
        let t =
            Target::parse("s3://bucket/pre?endpoint=http://127.0.0.1:9&region=us-east-1").unwrap();
        assert_eq!(format!("{t:?}"), "s3://bucket/pre at http://127.0.0.1:9");
    }
}
