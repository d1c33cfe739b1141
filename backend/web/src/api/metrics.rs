//! `/metrics` in Prometheus text format: requests by route and status, a
//! latency histogram per route, and tenants and jails by state.
//!
//! Counters live in this process; each web replica is scraped on its own.

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{HttpResponse, web};
use prometheus::core::Collector;
use prometheus::{
    HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use super::ApiError;
use super::auth::{Authorized, MetricsRead};
use crate::AppState;

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 11] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// The request counters of one web process.
pub(crate) struct HttpMetrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
}

impl HttpMetrics {
    pub(crate) fn new() -> prometheus::Result<Self> {
        let requests = IntCounterVec::new(
            Opts::new(
                "stockade_http_requests_total",
                "HTTP requests by route and status.",
            ),
            &["method", "route", "status"],
        )?;
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "stockade_http_request_duration_seconds",
                "Time to answer, by route.",
            )
            .buckets(BUCKETS.to_vec()),
            &["route"],
        )?;
        let registry = Registry::new();
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        Ok(Self {
            registry,
            requests,
            latency,
        })
    }

    fn observe(&self, method: &str, route: &str, status: u16, started: Instant) {
        self.requests
            .with_label_values(&[method, route, &status.to_string()])
            .inc();
        self.latency
            .with_label_values(&[route])
            .observe(started.elapsed().as_secs_f64());
    }
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
    let method: &'static str = match req.method().as_str() {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        "OPTIONS" => "OPTIONS",
        _ => "other",
    };
    let state = req.app_data::<web::Data<AppState>>().cloned();
    let res = next.call(req).await?;
    if let Some(state) = state {
        let route = res
            .request()
            .match_pattern()
            .unwrap_or_else(|| "unmatched".to_owned());
        state
            .metrics
            .observe(method, &route, res.status().as_u16(), started);
    }
    Ok(res)
}

/// `GET /metrics`: for a provider token with `metrics:read`.
pub(crate) async fn serve(
    Authorized(caller, _): Authorized<MetricsRead>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    caller.unbound()?;
    let internal = |e: prometheus::Error| ApiError::Unexpected(e.into());
    let mut families = state.metrics.registry.gather();
    let listening = IntGauge::new(
        "stockade_web_listening",
        "Whether this process listens for the database's change notifications (its read caches are used only then).",
    )
    .map_err(internal)?;
    listening.set(i64::from(state.caches.is_live()));
    families.extend(listening.collect());
    match stockade_store::stats::tenants_by_status(&state.pool).await {
        Ok(rows) => {
            let tenants = IntGaugeVec::new(
                Opts::new("stockade_tenants", "Tenants by status."),
                &["status"],
            )
            .map_err(internal)?;
            for (status, n) in rows {
                tenants.with_label_values(&[&status]).set(n);
            }
            families.extend(tenants.collect());
        }
        Err(e) => tracing::warn!(error = ?e, "counting tenants for metrics failed"),
    }
    match stockade_store::stats::jails_by_state(&state.pool).await {
        Ok(rows) => {
            let jails = IntGaugeVec::new(
                Opts::new("stockade_jails", "Jails by desired and observed state."),
                &["desired", "observed"],
            )
            .map_err(internal)?;
            for (desired, observed, n) in rows {
                jails.with_label_values(&[&desired, &observed]).set(n);
            }
            families.extend(jails.collect());
        }
        Err(e) => tracing::warn!(error = ?e, "counting jails for metrics failed"),
    }
    // A family without a series (no jails yet) is not written at all.
    families.retain(|f| !f.get_metric().is_empty());
    let body = TextEncoder::new()
        .encode_to_string(&families)
        .map_err(internal)?;
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(body))
}
