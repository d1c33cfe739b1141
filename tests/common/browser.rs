//! Headless Chromium driven through chromedriver with the `fantoccini`
//! WebDriver client, plus the process lifecycle around it.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};

/// A headless Chromium session; ends chromedriver and the browser when dropped.
pub struct Browser {
    driver: Child,
    client: Option<Client>,
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
        Self::start_with(&[]).await
    }

    /// [`Browser::start`] with more Chromium arguments.
    pub async fn start_with(extra: &[String]) -> Browser {
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
        let profile = tempfile::tempdir().unwrap();
        let mut args: Vec<String> = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--disable-dev-shm-usage",
            "--window-size=1280,1000",
        ]
        .map(str::to_owned)
        .to_vec();
        args.push(format!("--user-data-dir={}", profile.path().display()));
        args.extend(extra.iter().cloned());
        let caps = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": args
            }
        });
        let Value::Object(caps) = caps else {
            unreachable!("capabilities are an object")
        };
        // The driver is plain HTTP on loopback: no TLS connector needed.
        let mut builder = ClientBuilder::new(HttpConnector::new());
        builder.capabilities(caps);
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        let client = loop {
            match builder.connect(&url).await {
                Ok(client) => break client,
                Err(e) => assert!(
                    Instant::now() < deadline,
                    "chromedriver did not start a session: {e}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        Browser {
            driver,
            client: Some(client),
            _profile: profile,
        }
    }

    fn client(&self) -> &Client {
        self.client.as_ref().expect("an open session")
    }

    /// Opens a URL and waits for the page to load.
    pub async fn goto(&self, url: &str) {
        self.client()
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("open {url}: {e}"));
    }

    /// The current URL.
    pub async fn url(&self) -> String {
        self.client()
            .current_url()
            .await
            .expect("the current URL")
            .to_string()
    }

    /// The page's HTML.
    pub async fn source(&self) -> String {
        self.client().source().await.expect("the page's HTML")
    }

    async fn find(&self, css: &str) -> Element {
        self.client()
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no element {css}: {e}"))
    }

    /// Whether an element matching `css` exists.
    pub async fn exists(&self, css: &str) -> bool {
        !self
            .client()
            .find_all(Locator::Css(css))
            .await
            .expect("look for elements")
            .is_empty()
    }

    /// Replaces an input's value with `text`, as typed.
    pub async fn fill(&self, css: &str, text: &str) {
        let field = self.find(css).await;
        field.clear().await.expect("clear a field");
        field.send_keys(text).await.expect("type into a field");
    }

    /// Types into an element without clearing it (a terminal's input).
    pub async fn type_keys(&self, css: &str, text: &str) {
        self.find(css)
            .await
            .send_keys(text)
            .await
            .unwrap_or_else(|e| panic!("type into {css}: {e}"));
    }

    /// Clicks an element.
    pub async fn click(&self, css: &str) {
        self.find(css)
            .await
            .click()
            .await
            .unwrap_or_else(|e| panic!("click {css}: {e}"));
    }

    /// The visible text of an element.
    pub async fn text(&self, css: &str) -> String {
        self.find(css)
            .await
            .text()
            .await
            .expect("an element's text")
    }

    /// Runs a script in the page (from the driver, not the page, so the CSP does not apply).
    pub async fn execute(&self, script: &str) {
        self.client()
            .execute(script, Vec::new())
            .await
            .unwrap_or_else(|e| panic!("run a script: {e}"));
    }

    /// Resizes the window (e.g. to a phone's 390 pixels).
    pub async fn resize(&self, width: u32, height: u32) {
        self.client()
            .set_window_size(width, height)
            .await
            .unwrap_or_else(|e| panic!("resize the window: {e}"));
    }

    /// Whether the page is wider than the window (it scrolls sideways).
    pub async fn overflows_sideways(&self) -> bool {
        let v = self
            .client()
            .execute(
                "return document.documentElement.scrollWidth > window.innerWidth;",
                Vec::new(),
            )
            .await
            .unwrap_or_else(|e| panic!("measure the page: {e}"));
        v.as_bool().unwrap_or(true)
    }

    /// The accessibility rules (WCAG 2 A and AA) the current page breaks,
    /// as axe-core finds them: `rule (impact): elements` per violation.
    /// `None` when axe-core is not installed (scripts/test installs it).
    pub async fn accessibility_violations(&self) -> Option<Vec<String>> {
        let axe = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("target/js/node_modules/axe-core/axe.min.js");
        let source = std::fs::read_to_string(axe).ok()?;
        let script = format!(
            "const done = arguments[arguments.length - 1];\n{source}\n\
             axe.run(document, {{ runOnly: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa'] }})\
               .then(r => done(r.violations.map(v => v.id + ' (' + v.impact + '): ' +\
                 v.nodes.map(n => n.target.join(' ')).join(', '))))\
               .catch(e => done(['axe failed: ' + e]));"
        );
        let found = self
            .client()
            .execute_async(&script, Vec::new())
            .await
            .unwrap_or_else(|e| panic!("run axe-core: {e}"));
        Some(
            found
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default(),
        )
    }

    /// Saves a PNG screenshot as `target/screenshots/NAME.png`.
    pub async fn screenshot(&self, name: &str) {
        let png = self.client().screenshot().await.expect("a screenshot");
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
        if let Some(client) = self.client.take() {
            let _ = client.close().await;
        }
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
