//! A small WebDriver client for driving headless Chromium through
//! chromedriver in browser tests, plus the process lifecycle around it.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A headless Chromium session; ends chromedriver and the browser when dropped.
pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: reqwest::Client,
    _profile: tempfile::TempDir,
}

fn which(p: &str) -> Option<std::path::PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(p))
        .find(|p| p.is_file())
}

impl Browser {
    /// Starts chromedriver on a free loopback port and opens a session.
    pub async fn start() -> Browser {
        let driver_bin = which("chromedriver")
            .expect("chromedriver is installed by scripts/test (Debian chromium-driver)");
        let chromium =
            which("chromium").expect("chromium is installed by scripts/test (Debian chromium)");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new(driver_bin)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("start chromedriver");
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = http.get(format!("{base}/status")).send().await
                && r.status().is_success()
            {
                break;
            }
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let profile = tempfile::tempdir().unwrap();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                    "--window-size=1280,1000", format!("--user-data-dir={}", profile.path().display())
                ]
            }
        }}});
        let mut browser = Browser {
            driver,
            base,
            session: String::new(),
            http,
            _profile: profile,
        };
        let v = browser.call(reqwest::Method::POST, "/session", caps).await;
        browser.session = v["sessionId"].as_str().expect("a session id").to_owned();
        browser
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let url = if path == "/session" {
            format!("{}{path}", self.base)
        } else {
            format!("{}/session/{}{path}", self.base, self.session)
        };
        let mut req = self.http.request(method, url);
        if !body.is_null() {
            req = req.json(&body);
        }
        let resp: Value = req
            .send()
            .await
            .expect("webdriver call")
            .json()
            .await
            .expect("webdriver json");
        if let Some(err) = resp["value"]["error"].as_str() {
            panic!("webdriver {path}: {err}: {}", resp["value"]["message"]);
        }
        resp["value"].clone()
    }

    /// Opens a URL and waits for the page to load.
    pub async fn goto(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", json!({"url": url}))
            .await;
    }

    /// The current URL.
    pub async fn url(&self) -> String {
        self.call(reqwest::Method::GET, "/url", Value::Null)
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// The page's HTML.
    pub async fn source(&self) -> String {
        self.call(reqwest::Method::GET, "/source", Value::Null)
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    async fn find(&self, css: &str) -> String {
        let v = self
            .call(
                reqwest::Method::POST,
                "/element",
                json!({"using": "css selector", "value": css}),
            )
            .await;
        v[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css}"))
            .to_owned()
    }

    /// Whether an element matching `css` exists.
    pub async fn exists(&self, css: &str) -> bool {
        let v = self
            .call(
                reqwest::Method::POST,
                "/elements",
                json!({"using": "css selector", "value": css}),
            )
            .await;
        v.as_array().is_some_and(|a| !a.is_empty())
    }

    /// Replaces an input's value with `text`, as typed.
    pub async fn fill(&self, css: &str, text: &str) {
        let id = self.find(css).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{id}/clear"),
            json!({}),
        )
        .await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{id}/value"),
            json!({"text": text}),
        )
        .await;
    }

    /// Clicks an element.
    pub async fn click(&self, css: &str) {
        let id = self.find(css).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{id}/click"),
            json!({}),
        )
        .await;
    }

    /// The visible text of an element.
    pub async fn text(&self, css: &str) -> String {
        let id = self.find(css).await;
        self.call(
            reqwest::Method::GET,
            &format!("/element/{id}/text"),
            Value::Null,
        )
        .await
        .as_str()
        .unwrap_or_default()
        .to_owned()
    }

    /// Runs a script in the page (from the driver, not the page, so the CSP does not apply).
    pub async fn execute(&self, script: &str) {
        self.call(
            reqwest::Method::POST,
            "/execute/sync",
            json!({"script": script, "args": []}),
        )
        .await;
    }

    /// Saves a PNG screenshot as `target/screenshots/NAME.png`.
    pub async fn screenshot(&self, name: &str) {
        use base64::Engine;
        let v = self
            .call(reqwest::Method::GET, "/screenshot", Value::Null)
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap_or_default())
            .unwrap();
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }

    /// Reloads until `css` has text containing `want`, or panics after `limit`.
    pub async fn wait_text(&self, page: &str, css: &str, want: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            self.goto(page).await;
            if self.exists(css).await && self.text(css).await.contains(want) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{css} on {page} never showed {want:?}"
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// Waits until the current URL ends with `suffix` (a form post's
    /// navigation may finish after the click returns).
    pub async fn wait_url(&self, suffix: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let url = self.url().await;
            if url.ends_with(suffix) {
                return url;
            }
            assert!(
                Instant::now() < deadline,
                "the page never reached {suffix}; it is at {url}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until an element matching `css` exists.
    pub async fn wait_for(&self, css: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        while !self.exists(css).await {
            assert!(
                Instant::now() < deadline,
                "{css} never appeared on {}",
                self.url().await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Ends the session and the driver.
    pub async fn close(mut self) {
        let _ = self
            .http
            .delete(format!("{}/session/{}", self.base, self.session))
            .send()
            .await;
        self.session.clear();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // chromedriver and the browsers it started share its process group.
        if let Ok(pid) = i32::try_from(self.driver.id()) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = self.driver.wait();
    }
}
