//! Helpers of the API tests: the app with a fast webhook schedule, tokens,
//! requests, a node, and a local webhook receiver.
#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use secrecy::ExposeSecret;
use serde_json::Value;
use stockade_store::PgPool;
use stockade_store::nodes::{self, NodeInfo};
use stockade_store::tokens::{self, Scope};
use stockade_web::ApiSettings;
use stockade_web::api::DeliverySettings;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use uuid::Uuid;

use crate::common;

/// The app, its database and a token holding every scope.
pub struct Api {
    pub address: String,
    pub pool: PgPool,
    pub client: reqwest::Client,
    pub admin: String,
    /// The database's URL, for the command line.
    pub database_url: String,
}

/// Delivery retries in fractions of a second, so tests run in seconds.
pub fn fast_settings() -> ApiSettings {
    ApiSettings {
        rate_per_sec: 10_000,
        rate_burst: 10_000,
        delivery: DeliverySettings {
            poll: Duration::from_millis(50),
            first_retry: Duration::from_millis(300),
            max_retry: Duration::from_secs(2),
            give_up_after: Duration::from_secs(60),
            timeout: Duration::from_secs(5),
            // The tests' receivers listen on loopback, which the default
            // policy refuses: the operator's allow-list lets it through.
            egress: stockade_web::api::egress::EgressPolicy {
                allow: vec!["127.0.0.1/32".parse().unwrap()],
            },
            ..DeliverySettings::default()
        },
    }
}

impl Api {
    pub async fn spawn() -> Api {
        Self::spawn_with(fast_settings()).await
    }

    pub async fn spawn_with(api: ApiSettings) -> Api {
        Self::spawn_proving(api, None).await
    }

    /// The app asking domains for a TXT proof of the DNS server `resolver`.
    pub async fn spawn_proving(api: ApiSettings, resolver: Option<std::net::SocketAddr>) -> Api {
        let (pool, url) = common::fresh_database().await;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let settings = stockade_web::Settings {
            public_url: "http://127.0.0.1".into(),
            session_expiry: stockade_store::sessions::Expiry {
                idle: chrono::Duration::minutes(30),
                absolute: chrono::Duration::hours(12),
            },
            workers: 2,
            signup_plan: None,
            page_cache: std::time::Duration::from_secs(5),
            trusted_proxies: Vec::new(),
            domain_proof: resolver.map(|r| stockade_web::DomainProof { resolver: Some(r) }),
        };
        // The web tier as its own database role, as in the product.
        let web_pool = stockade_store::connect(
            &common::role_url(&url, stockade_store::roles::WEB),
            5,
            Duration::from_secs(10),
        )
        .await
        .expect("connect as the web role");
        let app = stockade_web::Application::build_with(listener, web_pool, settings, api).unwrap();
        let address = format!("http://127.0.0.1:{}", app.port());
        tokio::spawn(app.run_until_stopped());
        let admin = token(&pool, &Scope::ALL, None).await;
        Api {
            address,
            pool,
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            admin,
            database_url: url.expose_secret().to_owned(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    pub fn get(&self, path: &str, token: &str) -> reqwest::RequestBuilder {
        self.client.get(self.url(path)).bearer_auth(token)
    }

    pub fn post(&self, path: &str, token: &str, body: &Value) -> reqwest::RequestBuilder {
        self.client
            .post(self.url(path))
            .bearer_auth(token)
            .json(body)
    }

    pub fn patch(&self, path: &str, token: &str, body: &Value) -> reqwest::RequestBuilder {
        self.client
            .patch(self.url(path))
            .bearer_auth(token)
            .json(body)
    }

    pub fn put(&self, path: &str, token: &str, body: &Value) -> reqwest::RequestBuilder {
        self.client
            .put(self.url(path))
            .bearer_auth(token)
            .json(body)
    }

    pub fn delete(&self, path: &str, token: &str) -> reqwest::RequestBuilder {
        self.client.delete(self.url(path)).bearer_auth(token)
    }

    /// Creates a tenant on the starter plan through the API, returning its id.
    pub async fn tenant(&self, slug: &str) -> Uuid {
        let res = self
            .post(
                "/api/v1/tenants",
                &self.admin,
                &serde_json::json!({"slug": slug, "display_name": slug, "plan": "starter"}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 201, "{}", res.text().await.unwrap());
        let body: Value = res.json().await.unwrap();
        body["tenant"]["id"].as_str().unwrap().parse().unwrap()
    }

    /// Registers a live node with plenty of room, kept alive by a heartbeat task.
    pub async fn node(&self) -> Uuid {
        let id = nodes::register(
            &self.pool,
            &NodeInfo {
                name: "node-1".into(),
                cpus: 8,
                memory_bytes: 1 << 40,
                disk_bytes: 1 << 44,
                address_pool: None,
                agent_version: "test".into(),
                published_ports: stockade_store::nodes::DEFAULT_PUBLISHED_PORTS,
                cold_moves: "CRIU is not installed on this node".into(),
            },
        )
        .await
        .unwrap();
        let pool = self.pool.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                if nodes::heartbeat(&pool, id, None).await.is_err() {
                    break;
                }
            }
        });
        id
    }
}

/// A token with `scopes`, optionally bound to a tenant.
pub async fn token(pool: &PgPool, scopes: &[Scope], tenant: Option<Uuid>) -> String {
    let (_, secret) = tokens::create(pool, "test", scopes, tenant).await.unwrap();
    secret.expose_secret().to_owned()
}

/// Asserts the API's error shape and code, returning the body.
pub async fn expect_error(res: reqwest::Response, status: u16, code: &str) -> Value {
    let got = res.status().as_u16();
    let body: Value = res.json().await.expect("error answers are JSON");
    assert_eq!(got, status, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(body["error"]["message"].is_string(), "{body}");
    assert!(body["error"]["details"].is_object(), "{body}");
    body
}

/// One request a receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A webhook receiver on 127.0.0.1 that answers the given statuses in
/// turn (the last one forever after) and keeps what it got.
pub struct Receiver {
    pub url: String,
    pub got: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    pub async fn start(statuses: Vec<u16>) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let got = Arc::new(Mutex::new(Vec::new()));
        let seen = got.clone();
        tokio::spawn(async move {
            let mut n = 0usize;
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    break;
                };
                let status = *statuses.get(n).or(statuses.last()).unwrap_or(&200);
                n += 1;
                let seen = seen.clone();
                tokio::spawn(async move {
                    if let Some(req) = read_request(&mut stream).await {
                        seen.lock().unwrap().push(req);
                    }
                    let reply = format!(
                        "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                    );
                    let _ = stream.write_all(reply.as_bytes()).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        Receiver { url, got }
    }

    /// Waits up to `secs` for at least `n` requests.
    pub async fn wait_for(&self, n: usize, secs: u64) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let got = self.got.lock().unwrap().clone();
            if got.len() >= n || tokio::time::Instant::now() > deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn read_request(stream: &mut tokio::net::TcpStream) -> Option<Received> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let header_end = loop {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..header_end]).to_string();
    let headers: Vec<(String, String)> = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    while buf.len() < header_end + len {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Some(Received {
        headers,
        body: buf[header_end..].to_vec(),
    })
}

/// Checks a `Stockade-Signature` header the way a receiver would.
pub fn signature_valid(secret: &str, header: &str, body: &[u8]) -> bool {
    use hmac::{Hmac, Mac};
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = Some(v.to_owned()),
            Some(("v1", v)) => v1 = Some(v.to_owned()),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else {
        return false;
    };
    let Ok(expected) = hex::decode(v1) else {
        return false;
    };
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(t.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.verify_slice(&expected).is_ok()
}
