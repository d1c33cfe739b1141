//! The OpenAPI 3 description of the API, generated from the handlers' annotations.

use std::sync::OnceLock;

use actix_web::HttpResponse;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi};

use super::error::ErrorBody;
use super::{jails, plans, tenants, usage, webhooks};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Stockade API",
        version = "1",
        description = "Tenants, plans, jails, metered usage and webhooks for billing systems. \
            Authenticate with `Authorization: Bearer <token>` (`stockade token create`). \
            Every error answers `{\"error\": {\"code\", \"message\", \"details\"}}`."
    ),
    paths(
        tenants::create, tenants::list, tenants::get, tenants::update,
        tenants::suspend, tenants::unsuspend, tenants::terminate,
        plans::list, plans::get, plans::create, plans::update,
        jails::list, jails::create, jails::get, jails::update, jails::delete,
        jails::start, jails::stop, jails::restart,
        usage::tenant_usage, usage::month_usage,
        webhooks::create, webhooks::list, webhooks::get, webhooks::delete, webhooks::deliveries,
    ),
    components(schemas(ErrorBody)),
    modifiers(&Common),
    tags(
        (name = "tenants", description = "The provider's customers"),
        (name = "plans", description = "Quota bundles"),
        (name = "jails", description = "A tenant's isolated environments"),
        (name = "usage", description = "Metered usage for invoicing"),
        (name = "webhooks", description = "Signed event notifications"),
    )
)]
struct ApiDoc;

/// Adds the bearer scheme and the error answers every operation may give.
struct Common;

const ERRORS: [(&str, &str); 10] = [
    (
        "400",
        "The body is not valid JSON, or a header is malformed",
    ),
    ("401", "No valid token"),
    ("403", "The token lacks the scope, or is bound to a tenant"),
    ("404", "Not found, or not visible to this token"),
    ("405", "Method not allowed"),
    (
        "409",
        "Conflicts with what exists (name taken, wrong state, key in use)",
    ),
    ("413", "The body is too large"),
    ("415", "The body is not JSON"),
    (
        "422",
        "Validation failed, quota exceeded, or idempotency key reused",
    ),
    ("429", "Rate limited; see Retry-After"),
];

impl Modify for Common {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        let error = |description: &str| {
            RefOr::T(
                ResponseBuilder::new()
                    .description(description)
                    .content(
                        "application/json",
                        ContentBuilder::new()
                            .schema(Some(Ref::from_schema_name("ErrorBody")))
                            .build(),
                    )
                    .build(),
            )
        };
        for item in openapi.paths.paths.values_mut() {
            for op in [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.patch,
                &mut item.delete,
            ]
            .into_iter()
            .flatten()
            {
                for (code, description) in ERRORS {
                    op.responses
                        .responses
                        .entry(code.to_owned())
                        .or_insert_with(|| error(description));
                }
                op.responses
                    .responses
                    .entry("503".to_owned())
                    .or_insert_with(|| error("No node has room now; see Retry-After"));
                op.responses
                    .responses
                    .entry("500".to_owned())
                    .or_insert_with(|| error("Failure on the server's side"));
            }
        }
    }
}

/// The description as a value (for the reference page and tests).
pub(crate) fn spec() -> &'static utoipa::openapi::OpenApi {
    static SPEC: OnceLock<utoipa::openapi::OpenApi> = OnceLock::new();
    SPEC.get_or_init(ApiDoc::openapi)
}

/// The description as JSON.
pub fn spec_json() -> &'static str {
    static JSON: OnceLock<String> = OnceLock::new();
    JSON.get_or_init(|| spec().to_pretty_json().unwrap_or_default())
}

/// `GET /api/v1/openapi.json`.
pub(crate) async fn serve() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(spec_json())
}
