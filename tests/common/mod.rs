//! Test harness: a managed PostgreSQL cluster per test binary (unless
//! DATABASE_URL is set), a fresh database per test, and the real web
//! application on port 0.
#![allow(dead_code)]

pub mod agent;
pub mod browser;
pub mod ports;
pub mod registry;
pub mod tls;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use stockade_domain::{Email, Role};
use stockade_store::PgPool;

/// The server every test of this binary creates its databases on.
pub fn server_url() -> SecretString {
    static URL: OnceLock<SecretString> = OnceLock::new();
    // Held for the life of the test process: when the process exits, the
    // cluster's stdin closes and it stops and removes its folder.
    static CLUSTER: OnceLock<Mutex<Child>> = OnceLock::new();
    URL.get_or_init(|| {
        if let Ok(url) = std::env::var("DATABASE_URL") {
            return SecretString::from(url);
        }
        let dir = std::env::temp_dir().join(format!("stockade-test-pg-{}", std::process::id()));
        let mut child = Command::new(env!("CARGO_BIN_EXE_stockade"))
            .args(["db-cluster", "--ephemeral", "--data-dir"])
            .arg(&dir)
            .env_remove("STOCKADE_CONFIG")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the test database cluster");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .expect("read the cluster's URL");
        let url = line
            .trim()
            .strip_prefix("DATABASE_URL=")
            .unwrap_or_else(|| panic!("the test cluster did not start: {line:?}"))
            .to_owned();
        CLUSTER.set(Mutex::new(child)).ok();
        SecretString::from(url)
    })
    .clone()
}

/// `url` for the database role `role` (the web tier's or the agent's), as
/// the product connects; on an external server (DATABASE_URL set) the
/// tests use its one URL for everything.
pub fn role_url(url: &SecretString, role: &str) -> SecretString {
    if std::env::var_os("DATABASE_URL").is_some() {
        return url.clone();
    }
    stockade_store::roles::url_as(url, role).expect("a role URL")
}

/// A fresh, migrated database of its own.
pub async fn fresh_database() -> (PgPool, SecretString) {
    let server = server_url();
    let name = format!("test_{}", uuid::Uuid::new_v4().simple());
    stockade_store::ensure_database(&server, &name)
        .await
        .expect("create test database");
    let base = server.expose_secret();
    let url = match base.rsplit_once('/') {
        Some((prefix, _)) => format!("{prefix}/{name}"),
        None => panic!("unexpected database URL shape"),
    };
    let url = SecretString::from(url);
    let pool = stockade_store::connect(&url, 5, Duration::from_secs(10))
        .await
        .expect("connect");
    stockade_store::migrate(&pool).await.expect("migrate");
    (pool, url)
}

/// The real application, serving on an ephemeral port.
pub struct TestApp {
    pub address: String,
    /// The database as its owner, for setting up and checking.
    pub pool: PgPool,
    /// The web tier's own connections (as the web role).
    pub web_pool: PgPool,
    pub db_url: SecretString,
    pub client: reqwest::Client,
}

impl TestApp {
    pub async fn spawn() -> TestApp {
        Self::spawn_with_signup(None).await
    }

    /// The application with self sign-up onto `plan` (or off).
    pub async fn spawn_with_signup(plan: Option<&str>) -> TestApp {
        Self::spawn_with(plan, std::time::Duration::from_secs(5)).await
    }

    /// The application with self sign-up onto `plan` (or off), keeping
    /// page data for `page_cache` between changes.
    pub async fn spawn_with(plan: Option<&str>, page_cache: std::time::Duration) -> TestApp {
        Self::spawn_full(plan, page_cache, Vec::new()).await
    }

    /// The application behind a reverse proxy on loopback: it believes the
    /// `X-Forwarded-For` of requests from 127.0.0.1.
    pub async fn spawn_behind_proxy() -> TestApp {
        Self::spawn_full(
            None,
            std::time::Duration::from_secs(5),
            vec!["127.0.0.1/32".parse().unwrap()],
        )
        .await
    }

    async fn spawn_full(
        plan: Option<&str>,
        page_cache: std::time::Duration,
        trusted_proxies: Vec<ipnet::IpNet>,
    ) -> TestApp {
        let (pool, db_url) = fresh_database().await;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let settings = stockade_web::Settings {
            public_url: "http://127.0.0.1".into(),
            session_expiry: stockade_store::sessions::Expiry {
                idle: chrono::Duration::minutes(30),
                absolute: chrono::Duration::hours(12),
            },
            workers: 2,
            signup_plan: plan.map(str::to_owned),
            page_cache,
            trusted_proxies,
            domain_proof: None,
        };
        // The web tier runs as its own database role, with only its grants,
        // as in the product: a query it has no right to fails the test.
        let web_pool = stockade_store::connect(
            &role_url(&db_url, stockade_store::roles::WEB),
            5,
            Duration::from_secs(10),
        )
        .await
        .expect("connect as the web role");
        let app = stockade_web::Application::build(listener, web_pool.clone(), settings).unwrap();
        let address = format!("http://127.0.0.1:{}", app.port());
        tokio::spawn(app.run_until_stopped());
        TestApp {
            address,
            pool,
            web_pool,
            db_url,
            client: new_client(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    /// Creates an account with a known password.
    pub async fn create_user(&self, email: &str, role: Role, tenant: Option<uuid::Uuid>) -> String {
        let password = "correct horse battery".to_owned();
        let hash = stockade_store::password::hash(&SecretString::from(password.clone())).unwrap();
        stockade_store::users::create(
            &self.pool,
            &Email::parse(email).unwrap(),
            &hash,
            role,
            tenant,
        )
        .await
        .unwrap();
        password
    }

    /// Loads the sign-in form and returns its CSRF token (the cookie is kept by the client).
    pub async fn login_csrf(&self, client: &reqwest::Client) -> String {
        let page = client
            .get(self.url("/login"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        hidden_field(&page, "csrf_token").expect("sign-in form has a CSRF token")
    }

    /// Signs in with `client`, returning the answer to the form post.
    pub async fn sign_in(
        &self,
        client: &reqwest::Client,
        email: &str,
        password: &str,
    ) -> reqwest::Response {
        let csrf = self.login_csrf(client).await;
        client
            .post(self.url("/login"))
            .form(&[
                ("csrf_token", csrf.as_str()),
                ("email", email),
                ("password", password),
            ])
            .send()
            .await
            .unwrap()
    }
}

/// A client that keeps cookies, does not follow redirects, and sends
/// `X-Forwarded-For: addr` (as a reverse proxy would for a client there).
pub fn client_from(addr: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("x-forwarded-for", addr.parse().unwrap());
    reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .default_headers(headers)
        .build()
        .unwrap()
}

/// A client that keeps cookies and does not follow redirects.
pub fn new_client() -> reqwest::Client {
    reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The value of a hidden input in an HTML page.
pub fn hidden_field(html: &str, name: &str) -> Option<String> {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html.find(&marker)? + marker.len();
    let end = html[start..].find('"')?;
    Some(html[start..start + end].to_owned())
}

/// GETs `/` from `addr` over HTTP/1.0; the body.
pub fn http_get(addr: std::net::SocketAddr) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned())
}

/// Waits until `addr` serves a page (30 s at most); the page.
pub fn page_at(addr: std::net::SocketAddr) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match http_get(addr) {
            Ok(p) if !p.is_empty() => return p,
            other => assert!(
                std::time::Instant::now() < deadline,
                "{addr} never served: {other:?}"
            ),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
