//! A real OCI distribution registry (the Debian `docker-registry` package)
//! on loopback, behind token authentication as public registries do: its
//! `/v2/` answers 401 with a `Bearer` challenge naming the token server
//! below, which checks an account with basic auth and hands out an ES256
//! token (signed by a key whose certificate the registry trusts) for the
//! repository and actions asked. Every other path of the token server
//! answers 500, standing in for a broken registry. Dropped: the registry
//! process is ended and its folder removed.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::secrets::RegistryAuth;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};

pub const USER: &str = "puller";
pub const PASSWORD: &str = "pull-secret-1";
const SERVICE: &str = "stockade-test-registry";
const ISSUER: &str = "stockade-test-issuer";

pub struct TestRegistry {
    child: Child,
    _dir: tempfile::TempDir,
    /// `127.0.0.1:port` of the registry.
    pub host: String,
    /// `127.0.0.1:port` of the token server (500 for registry paths).
    pub broken_host: String,
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A signed token granting `scope` (`repository:NAME:ACTIONS`).
fn token(key: &EcdsaKeyPair, cert_der: &[u8], scope: &str) -> String {
    let header = serde_json::json!({
        "typ": "JWT", "alg": "ES256",
        "x5c": [base64::engine::general_purpose::STANDARD.encode(cert_der)],
    });
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let access: Vec<serde_json::Value> = scope
        .split(' ')
        .filter_map(|s| {
            let mut parts = s.splitn(3, ':');
            let (kind, name, actions) = (parts.next()?, parts.next()?, parts.next()?);
            Some(serde_json::json!({"type": kind, "name": name,
                "actions": actions.split(',').collect::<Vec<_>>()}))
        })
        .collect();
    let claims = serde_json::json!({
        "iss": ISSUER, "sub": USER, "aud": SERVICE,
        "exp": now + 600, "nbf": now - 30, "iat": now - 30,
        "jti": format!("{now}-{}", rand::random::<u64>()),
        "access": access,
    });
    let signing_input = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let rng = ring::rand::SystemRandom::new();
    let sig = key.sign(&rng, signing_input.as_bytes()).unwrap();
    format!("{signing_input}.{}", b64url(sig.as_ref()))
}

fn answer(mut s: TcpStream, status: &str, body: &str) {
    let _ = write!(
        s,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

fn serve_tokens(listener: TcpListener, key: EcdsaKeyPair, cert_der: Vec<u8>) {
    let want = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"))
    );
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let mut reader = BufReader::new(conn.try_clone().unwrap());
        let mut line = String::new();
        if reader.read_line(&mut line).is_err() {
            continue;
        }
        let mut auth = String::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
                break;
            }
            if let Some((name, value)) = h.split_once(':')
                && name.eq_ignore_ascii_case("authorization")
            {
                auth = value.trim().to_owned();
            }
        }
        let target = line.split(' ').nth(1).unwrap_or("");
        let Some(query) = target.strip_prefix("/token?") else {
            answer(
                conn,
                "500 Internal Server Error",
                r#"{"errors":[{"code":"UNKNOWN","message":"the registry is broken"}]}"#,
            );
            continue;
        };
        if auth != want {
            answer(
                conn,
                "401 Unauthorized",
                r#"{"errors":[{"code":"UNAUTHORIZED","message":"wrong account"}]}"#,
            );
            continue;
        }
        let scope: String = query
            .split('&')
            .filter_map(|kv| kv.strip_prefix("scope="))
            .map(|s| {
                s.replace("%3A", ":")
                    .replace("%2C", ",")
                    .replace("%2F", "/")
                    .replace('+', " ")
            })
            .collect::<Vec<_>>()
            .join(" ");
        let body = serde_json::json!({ "token": token(&key, &cert_der, &scope) }).to_string();
        answer(conn, "200 OK", &body);
    }
}

impl TestRegistry {
    pub fn start() -> TestRegistry {
        let dir = tempfile::tempdir().unwrap();
        let key_pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["token-issuer".to_owned()])
            .unwrap()
            .self_signed(&key_pair)
            .unwrap();
        std::fs::write(dir.path().join("token.pem"), cert.pem()).unwrap();
        let key = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            &key_pair.serialize_der(),
            &ring::rand::SystemRandom::new(),
        )
        .unwrap();
        let tokens = TcpListener::bind("127.0.0.1:0").unwrap();
        let broken_host = tokens.local_addr().unwrap().to_string();
        let cert_der = cert.der().to_vec();
        std::thread::spawn(move || serve_tokens(tokens, key, cert_der));
        let port = super::ports::free_port();
        let host = format!("127.0.0.1:{port}");
        let config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {data}\n  delete:\n    enabled: true\nhttp:\n  addr: {host}\nauth:\n  token:\n    realm: http://{broken_host}/token\n    service: {SERVICE}\n    issuer: {ISSUER}\n    rootcertbundle: {pem}\n",
            data = dir.path().join("data").display(),
            pem = dir.path().join("token.pem").display(),
        );
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry runs (the test script installs it)");
        let registry = TestRegistry {
            child,
            _dir: dir,
            host,
            broken_host,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(&registry.host).is_err() {
            assert!(Instant::now() < deadline, "the registry never listened");
            std::thread::sleep(Duration::from_millis(50));
        }
        registry
    }

    /// `host/repository:tag` of this registry.
    pub fn reference(&self, repository_tag: &str) -> String {
        format!("{}/{repository_tag}", self.host)
    }

    /// Pushes an image of gzipped tar `layers` and an image `config`
    /// (JSON) as `repository:tag`, with the account.
    pub async fn push(&self, repository_tag: &str, layers: Vec<Vec<u8>>, config: &str) {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = oci_client::Client::new(ClientConfig {
            protocol: ClientProtocol::Http,
            ..ClientConfig::default()
        });
        let reference: oci_client::Reference = self.reference(repository_tag).parse().unwrap();
        let layers: Vec<ImageLayer> = layers
            .into_iter()
            .map(|l| {
                ImageLayer::new(
                    l,
                    oci_client::manifest::IMAGE_LAYER_GZIP_MEDIA_TYPE.into(),
                    None,
                )
            })
            .collect();
        let config = Config::new(
            config.as_bytes().to_vec(),
            oci_client::manifest::IMAGE_CONFIG_MEDIA_TYPE.into(),
            None,
        );
        client
            .push(
                &reference,
                &layers,
                config,
                &RegistryAuth::Basic(USER.into(), PASSWORD.into()),
                None,
            )
            .await
            .unwrap();
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A tar entry of a test layer: (path, contents or link target, mode,
/// owner, kind).
pub enum Entry<'a> {
    Dir(&'a str, u32, u64),
    File(&'a str, &'a [u8], u32, u64),
    Symlink(&'a str, &'a str),
    /// A character device (refused by nodes).
    Device(&'a str),
}

/// A gzipped tar of `entries`; names are written raw, so a hostile `..`
/// gets through as a hostile registry would send it.
pub fn layer(entries: &[Entry<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        let (name, kind, data, mode, owner): (&str, _, &[u8], u32, u64) = match e {
            Entry::Dir(n, m, o) => (n, tar::EntryType::Directory, b"", *m, *o),
            Entry::File(n, d, m, o) => (n, tar::EntryType::Regular, d, *m, *o),
            Entry::Symlink(n, _) => (n, tar::EntryType::Symlink, b"", 0o777, 0),
            Entry::Device(n) => (n, tar::EntryType::Char, b"", 0o600, 0),
        };
        h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name.as_bytes());
        if let Entry::Symlink(_, target) = e {
            h.as_gnu_mut().unwrap().linkname[..target.len()].copy_from_slice(target.as_bytes());
        }
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_uid(owner);
        h.set_gid(owner);
        h.set_cksum();
        b.append(&h, data).unwrap();
    }
    let tar = b.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    gz.finish().unwrap()
}

/// A base layer that runs: the host's static busybox, a shell, a `www`
/// user (33) owning `/srv/www`, and the folders a root needs.
pub fn busybox_layer() -> Vec<u8> {
    let busybox = std::fs::read("/bin/busybox").expect("busybox-static is installed");
    layer(&[
        Entry::Dir("bin/", 0o755, 0),
        Entry::File("bin/busybox", &busybox, 0o755, 0),
        Entry::Symlink("bin/sh", "busybox"),
        Entry::Dir("etc/", 0o755, 0),
        Entry::File(
            "etc/passwd",
            b"root:x:0:0:root:/root:/bin/sh\nwww:x:33:33:www:/srv/www:/bin/sh\n",
            0o644,
            0,
        ),
        Entry::File("etc/group", b"root:x:0:\nwww:x:33:\n", 0o644, 0),
        Entry::Dir("srv/", 0o755, 0),
        Entry::Dir("srv/www/", 0o755, 33),
        Entry::Dir("tmp/", 0o1777, 0),
        Entry::Dir("proc/", 0o555, 0),
        Entry::Dir("sys/", 0o555, 0),
        Entry::Dir("dev/", 0o755, 0),
        Entry::Dir("root/", 0o700, 0),
    ])
}

/// An image configuration with these defaults.
pub fn config(
    entrypoint: &[&str],
    cmd: &[&str],
    env: &[&str],
    workdir: &str,
    user: &str,
) -> String {
    serde_json::json!({
        "architecture": match std::env::consts::ARCH { "x86_64" => "amd64", "aarch64" => "arm64", a => a },
        "os": "linux",
        "config": {"Entrypoint": entrypoint, "Cmd": cmd, "Env": env, "WorkingDir": workdir, "User": user},
        "rootfs": {"type": "layers", "diff_ids": []},
    })
    .to_string()
}
