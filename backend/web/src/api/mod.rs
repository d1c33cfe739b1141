//! The JSON API under `/api/v1`, for billing systems: scoped bearer tokens,
//! one error shape, idempotent POSTs, a per-token rate limit, an OpenAPI
//! description generated from this code, and signed webhooks.

mod auth;
mod backups;
pub mod delivery;
mod docs;
mod domains;
pub mod egress;
pub(crate) mod error;
mod idempotency;
pub(crate) mod images;
mod jails;
pub(crate) mod metrics;
mod moves;
mod openapi;
mod plans;
mod ports;
mod ratelimit;
mod snapshots;
mod ssh_keys;
mod tenants;
mod types;
mod usage;
mod webhooks;

use actix_web::middleware::from_fn;
use actix_web::web;

pub use delivery::DeliverySettings;
pub use error::ApiError;
pub use openapi::spec_json;

/// How the API behaves.
#[derive(Debug, Clone)]
pub struct ApiSettings {
    /// Requests per second a token may make on average (per web process).
    pub rate_per_sec: u32,
    /// Requests a token may make at once.
    pub rate_burst: u32,
    /// Webhook delivery schedule.
    pub delivery: DeliverySettings,
}

impl Default for ApiSettings {
    fn default() -> Self {
        Self {
            rate_per_sec: 20,
            rate_burst: 100,
            delivery: DeliverySettings::default(),
        }
    }
}

/// State shared by every worker thread of one web process.
pub(crate) struct ApiState {
    limiter: ratelimit::RateLimiter,
    /// Where webhook deliveries may go; registration checks it too.
    egress: egress::EgressPolicy,
}

impl ApiState {
    pub(crate) fn new(settings: &ApiSettings) -> Self {
        Self {
            limiter: ratelimit::RateLimiter::new(settings.rate_per_sec, settings.rate_burst),
            egress: settings.delivery.egress.clone(),
        }
    }
}

/// Registers the API, its description, its reference page and `/metrics`.
pub(crate) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/api/v1/openapi.json", web::get().to(openapi::serve))
        .route("/api/docs", web::get().to(docs::page))
        .service(
            // Provider tokens with `metrics:read` only: the figures describe
            // every tenant.
            web::resource("/metrics")
                .wrap(from_fn(auth::middleware))
                .route(web::get().to(metrics::serve))
                .default_service(web::to(error::method_not_allowed)),
        )
        .service(
            web::scope("/api/v1")
                .app_data(
                    web::JsonConfig::default()
                        .limit(idempotency::BODY_LIMIT)
                        .error_handler(error::json_error),
                )
                .app_data(web::QueryConfig::default().error_handler(error::query_error))
                .app_data(web::PathConfig::default().error_handler(error::path_error))
                .wrap(from_fn(idempotency::json_objects_only))
                .wrap(from_fn(idempotency::middleware))
                .wrap(from_fn(auth::middleware))
                .configure(tenants::routes)
                .configure(plans::routes)
                .configure(jails::routes)
                .configure(ports::routes)
                .configure(domains::routes)
                .configure(ssh_keys::routes)
                .configure(snapshots::routes)
                .configure(backups::routes)
                .configure(moves::routes)
                .configure(images::routes)
                .configure(usage::routes)
                .configure(webhooks::routes)
                .default_service(web::to(error::not_found)),
        );
}

/// A resource whose other methods answer 405 in the API's error shape.
pub(crate) fn resource(path: &str) -> actix_web::Resource {
    web::resource(path).default_service(web::to(error::method_not_allowed))
}
