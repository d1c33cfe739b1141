//! `/metrics` in Prometheus text format: requests by route and status, a
//! latency histogram per route, and tenants and jails by state.
//!
//! Counters live in this process; each web replica is scraped on its own.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{HttpResponse, web};

use super::ApiError;
use super::auth::{Authorized, MetricsRead};
use crate::AppState;

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 11] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

#[derive(Default)]
struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

#[derive(Default)]
struct Registry {
    /// (method, route, status) → requests.
    requests: Mutex<BTreeMap<(String, String, u16), u64>>,
    /// route → latency histogram (leaked once per route: routes are a fixed set).
    latency: Mutex<BTreeMap<String, &'static Histogram>>,
}

fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(Registry::default)
}

fn observe(method: &str, route: &str, status: u16, started: Instant) {
    let r = registry();
    {
        let mut requests = r.requests.lock().unwrap_or_else(|p| p.into_inner());
        *requests
            .entry((method.to_owned(), route.to_owned(), status))
            .or_default() += 1;
    }
    let histogram = {
        let mut latency = r.latency.lock().unwrap_or_else(|p| p.into_inner());
        *latency
            .entry(route.to_owned())
            .or_insert_with(|| Box::leak(Box::default()))
    };
    let elapsed = started.elapsed();
    let secs = elapsed.as_secs_f64();
    for (bound, counter) in BUCKETS.iter().zip(&histogram.buckets) {
        if secs <= *bound {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }
    histogram.count.fetch_add(1, Ordering::Relaxed);
    histogram.sum_micros.fetch_add(
        u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
        Ordering::Relaxed,
    );
}

/// Counts every request of the web server by its route pattern (not its
/// path, so ids do not make the label set grow).
pub(crate) async fn middleware(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    // Any string is a method to HTTP: the label keeps the standard ones and
    // counts the rest as one, so a client cannot grow the series.
    let method = match req.method().as_str() {
        m @ ("GET" | "HEAD" | "POST" | "PUT" | "PATCH" | "DELETE" | "OPTIONS") => m,
        _ => "other",
    }
    .to_owned();
    let res = next.call(req).await?;
    let route = route_of(res.request());
    observe(&method, &route, res.status().as_u16(), started);
    Ok(res)
}

/// The route pattern a request matched. Finding it walks the route table
/// and runs the pattern of every dynamic route before the matching one;
/// the answer for a path never changes, so recent paths are remembered.
fn route_of(req: &actix_web::HttpRequest) -> String {
    const REMEMBERED: usize = 4096;
    static SEEN: OnceLock<Mutex<std::collections::HashMap<String, String>>> = OnceLock::new();
    let seen = SEEN.get_or_init(Mutex::default);
    let path = req.path();
    if let Some(route) = seen.lock().unwrap_or_else(|p| p.into_inner()).get(path) {
        return route.clone();
    }
    let route = req
        .match_pattern()
        .unwrap_or_else(|| "unmatched".to_owned());
    let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
    if seen.len() >= REMEMBERED {
        seen.clear();
    }
    seen.insert(path.to_owned(), route.clone());
    route
}

fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// `GET /metrics`: for a provider token with `metrics:read`.
pub(crate) async fn serve(
    Authorized(caller, _): Authorized<MetricsRead>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    caller.unbound()?;
    let mut out = String::new();
    out.push_str("# HELP stockade_http_requests_total HTTP requests by route and status.\n");
    out.push_str("# TYPE stockade_http_requests_total counter\n");
    let r = registry();
    {
        let requests = r.requests.lock().unwrap_or_else(|p| p.into_inner());
        for ((method, route, status), n) in requests.iter() {
            let _ = writeln!(
                out,
                "stockade_http_requests_total{{method=\"{}\",route=\"{}\",status=\"{status}\"}} {n}",
                label(method),
                label(route)
            );
        }
    }
    out.push_str("# HELP stockade_http_request_duration_seconds Time to answer, by route.\n");
    out.push_str("# TYPE stockade_http_request_duration_seconds histogram\n");
    {
        let latency = r.latency.lock().unwrap_or_else(|p| p.into_inner());
        for (route, h) in latency.iter() {
            let route = label(route);
            for (bound, counter) in BUCKETS.iter().zip(&h.buckets) {
                let _ = writeln!(
                    out,
                    "stockade_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"{bound}\"}} {}",
                    counter.load(Ordering::Relaxed)
                );
            }
            let count = h.count.load(Ordering::Relaxed);
            let sum_micros = h.sum_micros.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "stockade_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {count}"
            );
            let _ = writeln!(
                out,
                "stockade_http_request_duration_seconds_sum{{route=\"{route}\"}} {}.{:06}",
                sum_micros / 1_000_000,
                sum_micros % 1_000_000
            );
            let _ = writeln!(
                out,
                "stockade_http_request_duration_seconds_count{{route=\"{route}\"}} {count}"
            );
        }
    }
    out.push_str("# HELP stockade_web_listening Whether this process listens for the database's change notifications (its read caches are used only then).\n");
    out.push_str("# TYPE stockade_web_listening gauge\n");
    let _ = writeln!(
        out,
        "stockade_web_listening {}",
        u8::from(state.caches.is_live())
    );
    match stockade_store::stats::tenants_by_status(&state.pool).await {
        Ok(rows) => {
            out.push_str("# HELP stockade_tenants Tenants by status.\n");
            out.push_str("# TYPE stockade_tenants gauge\n");
            for (status, n) in rows {
                let _ = writeln!(out, "stockade_tenants{{status=\"{}\"}} {n}", label(&status));
            }
        }
        Err(e) => tracing::warn!(error = ?e, "counting tenants for metrics failed"),
    }
    match stockade_store::stats::jails_by_state(&state.pool).await {
        Ok(rows) => {
            out.push_str("# HELP stockade_jails Jails by desired and observed state.\n");
            out.push_str("# TYPE stockade_jails gauge\n");
            for (desired, observed, n) in rows {
                let _ = writeln!(
                    out,
                    "stockade_jails{{desired=\"{}\",observed=\"{}\"}} {n}",
                    label(&desired),
                    label(&observed)
                );
            }
        }
        Err(e) => tracing::warn!(error = ?e, "counting jails for metrics failed"),
    }
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(out))
}
