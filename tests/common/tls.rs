//! A test certificate authority, and Debian's `pebble` ACME test server with
//! its DNS stand-in (`pebble-challtestsrv`, answering 127.0.0.1 for every
//! name), on loopback ports of this test's own.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A certificate authority made for one test.
pub struct TestCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    /// Its certificate, PEM.
    pub pem: String,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        TestCa {
            issuer: rcgen::Issuer::new(params, key),
            pem: cert.pem(),
        }
    }

    /// A certificate for `names` (DNS names or addresses) valid `days`
    /// days from yesterday, and its key: PEM.
    pub fn issue(&self, names: &[&str], days: i64) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(
            names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>(),
        )
        .unwrap();
        let now = ::time::OffsetDateTime::now_utc();
        params.not_before = now - ::time::Duration::days(1);
        params.not_after = now + ::time::Duration::days(days);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

pub use super::ports::free_port;

/// Pebble and its DNS, until dropped.
pub struct Pebble {
    pebble: Child,
    dns: Child,
    dir: tempfile::TempDir,
    /// The ACME directory URL.
    pub directory: String,
    /// The root pebble's own HTTPS is checked against.
    pub api_root: PathBuf,
    management: u16,
}

impl Pebble {
    /// Pebble validating HTTP-01 challenges on port `http_port` of
    /// 127.0.0.1, which its DNS gives for every name.
    pub fn start(http_port: u16) -> Pebble {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new("pebble API test root");
        let (cert, key) = ca.issue(&["127.0.0.1", "localhost"], 30);
        let path = |f: &str| dir.path().join(f);
        std::fs::write(path("api-root.pem"), &ca.pem).unwrap();
        std::fs::write(path("cert.pem"), cert).unwrap();
        std::fs::write(path("key.pem"), key).unwrap();
        let (listen, management, dns, tls) = (free_port(), free_port(), free_port(), free_port());
        let config = serde_json::json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{listen}"),
            "managementListenAddress": format!("127.0.0.1:{management}"),
            "certificate": path("cert.pem"),
            "privateKey": path("key.pem"),
            "httpPort": http_port,
            "tlsPort": tls,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false
        }});
        std::fs::write(path("pebble.json"), config.to_string()).unwrap();
        let dns_child = Command::new("pebble-challtestsrv")
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .args(["-dns01", &format!("127.0.0.1:{dns}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-management", &format!("127.0.0.1:{}", free_port())])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("pebble-challtestsrv runs (Debian package pebble)");
        let pebble = Command::new("pebble")
            .arg("-config")
            .arg(path("pebble.json"))
            .args(["-dnsserver", &format!("127.0.0.1:{dns}")])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("pebble runs (Debian package pebble)");
        let p = Pebble {
            pebble,
            dns: dns_child,
            api_root: path("api-root.pem"),
            directory: format!("https://127.0.0.1:{listen}/dir"),
            dir,
            management,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", listen)).is_err()
            || std::net::TcpStream::connect(("127.0.0.1", management)).is_err()
        {
            assert!(Instant::now() < deadline, "pebble did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        p
    }

    /// A client that trusts pebble's own API certificate.
    fn api_client(&self) -> reqwest::Client {
        let root = std::fs::read(&self.api_root).unwrap();
        reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&root).unwrap())
            .build()
            .unwrap()
    }

    /// The roots and intermediates pebble issues from, PEM: what a client
    /// of a site with a pebble certificate trusts.
    pub async fn issuing_root(&self) -> String {
        let url = format!("https://127.0.0.1:{}/roots/0", self.management);
        self.api_client()
            .get(url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// pebble's intermediate certificate, PEM.
    pub async fn intermediate(&self) -> String {
        let url = format!("https://127.0.0.1:{}/intermediates/0", self.management);
        self.api_client()
            .get(url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The folder of its files.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for child in [&mut self.pebble, &mut self.dns] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
