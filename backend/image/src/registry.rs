//! Pulling an image from an OCI distribution registry into an image
//! layout folder, which [`crate::unpack`] then reads like any other. The
//! registry's token flow (a `Bearer` challenge, a token fetched from its
//! realm with the credentials) and plain basic authentication are the
//! client library's; every blob is checked against its digest as it lands.

use std::path::Path;

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use sha2::{Digest, Sha256};

use crate::{Bounds, ImageError};

/// A registry account.
#[derive(Clone)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, ****)", self.username)
    }
}

/// Checks an image reference (`host[:port]/repository[:tag|@digest]`).
pub fn parse_reference(reference: &str) -> Result<Reference, ImageError> {
    Reference::try_from(reference)
        .map_err(|e| ImageError::Invalid(format!("{reference:?} is not an image reference: {e}")))
}

/// Whether a registry is on this host, where images are pulled over plain
/// HTTP (as container engines do for loopback registries by default).
fn loopback(registry: &str) -> bool {
    let host = match registry.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => registry,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn platform(manifests: &[oci_client::manifest::ImageIndexEntry]) -> Option<String> {
    let arch = super::architecture();
    manifests
        .iter()
        .find(|m| {
            m.platform
                .as_ref()
                .is_some_and(|p| p.os.to_string() == "linux" && p.architecture.to_string() == arch)
        })
        .map(|m| m.digest.clone())
}

/// Says what went wrong in the words a staff member acts on.
fn explain(reference: &str, with_account: bool, e: OciDistributionError) -> ImageError {
    let why = match &e {
        OciDistributionError::AuthenticationFailure(detail) if with_account => {
            format!("the registry refused the credentials ({})", detail.trim())
        }
        OciDistributionError::AuthenticationFailure(detail) => format!(
            "the registry refused anonymous access; give its account ({})",
            detail.trim()
        ),
        OciDistributionError::UnauthorizedError { .. } => {
            "the registry answered 401 Unauthorized (credentials missing or wrong)".to_owned()
        }
        OciDistributionError::ImageManifestNotFoundError(_) => {
            "the registry has no such image (404 Not Found)".to_owned()
        }
        OciDistributionError::ServerError { code, message, .. } => {
            format!("the registry answered {code}: {}", message.trim())
        }
        OciDistributionError::RegistryError { envelope, url } => {
            format!("the registry answered an error for {url}: {envelope}")
        }
        OciDistributionError::RequestError(r) => format!("the registry is unreachable: {r}"),
        other => other.to_string(),
    };
    ImageError::Registry(format!("pulling {reference}: {why}"))
}

/// A blob's file that takes no more than the blob's declared size: a
/// registry sending more is cut off at once, not when the digest fails.
struct Bounded<W> {
    inner: W,
    left: u64,
}

impl<W: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Bounded<W> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if buf.len() as u64 > self.left {
            return std::task::Poll::Ready(Err(std::io::Error::other(
                "the registry sent more than the layer's declared size",
            )));
        }
        let this = &mut *self;
        let written = std::pin::Pin::new(&mut this.inner).poll_write(cx, buf);
        if let std::task::Poll::Ready(Ok(n)) = &written {
            this.left -= *n as u64;
        }
        written
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The longest a whole pull may take before it is given up.
const PULL_DEADLINE: std::time::Duration = std::time::Duration::from_secs(30 * 60);

/// Pulls `reference` into the layout folder `layout` (made here); returns
/// the manifest's digest as the registry names it. A pull taking longer
/// than half an hour is given up.
pub async fn pull(
    reference: &str,
    credentials: Option<&Credentials>,
    layout: &Path,
    bounds: &Bounds,
) -> Result<String, ImageError> {
    tokio::time::timeout(
        PULL_DEADLINE,
        pull_within(reference, credentials, layout, bounds),
    )
    .await
    .unwrap_or_else(|_| {
        Err(ImageError::Registry(format!(
            "pulling {reference}: gave up after {} minutes",
            PULL_DEADLINE.as_secs() / 60
        )))
    })
}

async fn pull_within(
    reference: &str,
    credentials: Option<&Credentials>,
    layout: &Path,
    bounds: &Bounds,
) -> Result<String, ImageError> {
    let image = parse_reference(reference)?;
    let registry = image.resolve_registry().to_owned();
    let protocol = if loopback(&registry) {
        ClientProtocol::HttpsExcept(vec![registry.clone()])
    } else {
        ClientProtocol::Https
    };
    let client = Client::new(ClientConfig {
        protocol,
        platform_resolver: Some(Box::new(platform)),
        connect_timeout: Some(std::time::Duration::from_secs(10)),
        read_timeout: Some(std::time::Duration::from_secs(60)),
        ..ClientConfig::default()
    });
    let auth = match credentials {
        Some(c) => RegistryAuth::Basic(c.username.clone(), c.password.clone()),
        None => RegistryAuth::Anonymous,
    };
    let (manifest, digest, config) = client
        .pull_manifest_and_config(&image, &auth)
        .await
        .map_err(|e| explain(reference, credentials.is_some(), e))?;
    if manifest.layers.len() > bounds.max_layers {
        return Err(ImageError::TooLarge(format!(
            "{} layers (at most {})",
            manifest.layers.len(),
            bounds.max_layers
        )));
    }
    let compressed: i64 = manifest.layers.iter().map(|l| l.size.max(0)).sum();
    if u64::try_from(compressed).unwrap_or(u64::MAX) > bounds.max_bytes {
        return Err(ImageError::TooLarge(format!(
            "its layers hold {compressed} bytes (at most {})",
            bounds.max_bytes
        )));
    }
    let blobs = layout.join("blobs/sha256");
    tokio::fs::create_dir_all(&blobs)
        .await
        .map_err(ImageError::io("create", &blobs))?;
    let write = |name: &str, bytes: Vec<u8>| {
        let path = layout.join(name);
        async move {
            tokio::fs::write(&path, bytes)
                .await
                .map_err(ImageError::io("write", &path))
        }
    };
    write("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec()).await?;
    write(
        &crate::blob_path(&manifest.config.digest)?,
        config.into_bytes(),
    )
    .await?;
    for l in &manifest.layers {
        let path = layout.join(crate::blob_path(&l.digest)?);
        let file = tokio::fs::File::create(&path)
            .await
            .map_err(ImageError::io("create", &path))?;
        let mut bounded = Bounded {
            inner: file,
            left: u64::try_from(l.size).unwrap_or(0),
        };
        client
            .pull_blob(&image, l, &mut bounded)
            .await
            .map_err(|e| explain(reference, credentials.is_some(), e))?;
        bounded
            .inner
            .sync_all()
            .await
            .map_err(ImageError::io("write", &path))?;
    }
    // The layout's own copy of the manifest, named by its own digest.
    let text = serde_json::to_vec(&manifest)
        .map_err(|e| ImageError::Invalid(format!("the manifest does not serialise: {e}")))?;
    let own = format!("sha256:{}", hex::encode(Sha256::digest(&text)));
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": own,
            "size": text.len(),
        }],
    });
    write(&crate::blob_path(&own)?, text).await?;
    write("index.json", index.to_string().into_bytes()).await?;
    Ok(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_registries_are_plain_http_others_not() {
        assert!(loopback("localhost:5000"));
        assert!(loopback("127.0.0.1:5000"));
        assert!(loopback("[::1]:5000"));
        assert!(loopback("localhost"));
        assert!(!loopback("registry.example.com:5000"));
        assert!(!loopback("10.0.0.1:5000"));
    }

    #[test]
    fn references_are_checked() {
        assert!(parse_reference("127.0.0.1:5000/site/web:1.0").is_ok());
        assert!(parse_reference("Not A Reference!").is_err());
    }
}
