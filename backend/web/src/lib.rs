//! The web tier: panel pages and the JSON API.
//!
//! It runs unprivileged and never touches the kernel: everything it knows
//! and changes is in PostgreSQL. What it keeps in memory is a read cache of
//! sessions and page data that PostgreSQL's change notifications keep
//! current (see [`cache`]).

pub mod api;
mod assets;
mod auth;
mod cache;
mod charts;
mod console;
mod error;
mod flash;
mod format;
mod health;
mod output;
mod pages;
mod proof;
mod reset;
mod signup;

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::middleware::{DefaultHeaders, from_fn};
use actix_web::{App, HttpServer, web};
use stockade_store::PgPool;
use stockade_store::sessions::Expiry;

pub use api::ApiSettings;
pub use error::WebError;

/// How the web tier behaves; built from the configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The address users reach the panel at; `https` makes cookies `Secure`.
    pub public_url: String,
    /// Session lifetimes.
    pub session_expiry: Expiry,
    /// Worker threads (0 = one per CPU).
    pub workers: usize,
    /// The plan self sign-up puts new tenants on; `None` turns sign-up off.
    pub signup_plan: Option<String>,
    /// How long the data of the busiest pages is kept between changes
    /// (usage figures are at most this old); zero keeps none.
    pub page_cache: Duration,
    /// Reverse proxies whose `X-Forwarded-For`/`Forwarded` is believed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Domains must be proven by a TXT record before they route; `None`:
    /// they route once attached.
    pub domain_proof: Option<DomainProof>,
}

/// How domain names are proven.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DomainProof {
    /// The DNS server asked for TXT records; `None`: the host's.
    pub resolver: Option<std::net::SocketAddr>,
}

impl Settings {
    fn secure_cookies(&self) -> bool {
        self.public_url.starts_with("https://")
    }
}

/// Shared state of every handler.
pub(crate) struct AppState {
    pub pool: PgPool,
    pub settings: Settings,
    pub caches: Arc<cache::Caches>,
    pub metrics: api::metrics::HttpMetrics,
    /// Reaches the nodes' agents (their log endpoints).
    pub nodes: reqwest::Client,
}

/// A built, not yet running web server.
pub struct Application {
    port: u16,
    server: Server,
    pool: PgPool,
    delivery: api::DeliverySettings,
    caches: Arc<cache::Caches>,
}

impl Application {
    /// Builds the server on an already bound listener (bind port 0 in tests).
    pub fn build(listener: TcpListener, pool: PgPool, settings: Settings) -> anyhow::Result<Self> {
        Self::build_with(listener, pool, settings, ApiSettings::default())
    }

    /// [`Application::build`] with the API's rate limit and webhook schedule.
    pub fn build_with(
        listener: TcpListener,
        pool: PgPool,
        settings: Settings,
        api: ApiSettings,
    ) -> anyhow::Result<Self> {
        let port = listener.local_addr()?.port();
        let workers = settings.workers;
        let idle = settings
            .session_expiry
            .idle
            .to_std()
            .unwrap_or(Duration::ZERO);
        let caches = Arc::new(cache::Caches::new(settings.page_cache, idle));
        let state = web::Data::new(AppState {
            pool: pool.clone(),
            settings,
            caches: caches.clone(),
            metrics: api::metrics::HttpMetrics::new()?,
            nodes: output::client()?,
        });
        flash::configure(state.settings.secure_cookies());
        let api_state = web::Data::new(api::ApiState::new(&api));
        let mut server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .app_data(api_state.clone())
                .app_data(web::FormConfig::default().limit(64 * 1024))
                .wrap(from_fn(cache::settle_after_changes))
                .wrap(from_fn(auth::same_origin_writes))
                .wrap(from_fn(error::refuse_nul_bytes))
                .wrap(from_fn(api::metrics::middleware))
                .wrap(security_headers())
                .configure(api::routes)
                .configure(health::routes)
                .configure(assets::routes)
                .configure(auth::routes)
                .configure(pages::routes)
                .configure(signup::routes)
                .configure(reset::routes)
                .default_service(web::to(error::not_found))
        })
        .listen(listener)?;
        if workers > 0 {
            server = server.workers(workers);
        }
        Ok(Self {
            port,
            server: server.run(),
            pool,
            delivery: api.delivery,
            caches,
        })
    }

    /// The port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until the server is stopped (SIGINT/SIGTERM stop it gracefully),
    /// delivering webhooks meanwhile.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let changes = tokio::spawn(cache::follow_changes(self.pool.clone(), self.caches));
        let delivery = tokio::spawn(api::delivery::run(self.pool, self.delivery));
        let served = self.server.await;
        delivery.abort();
        changes.abort();
        served
    }
}

/// The policy of pages with a console: the terminal (xterm.js) adds style
/// elements of its own, and the page opens a WebSocket to the panel.
/// Scripts stay as strict as everywhere else.
pub(crate) const CONSOLE_CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     style-src-elem 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; \
     form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Headers on every answer: no inline script, no framing, no sniffing.
fn security_headers() -> DefaultHeaders {
    DefaultHeaders::new()
        .add((
            "Content-Security-Policy",
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ))
        .add(("X-Content-Type-Options", "nosniff"))
        .add(("X-Frame-Options", "DENY"))
        .add(("Referrer-Policy", "same-origin"))
}
