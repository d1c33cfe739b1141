//! The OpenAPI 3 description of the API, generated from the handlers' annotations.

use std::sync::OnceLock;

use actix_web::HttpResponse;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi};

use super::error::ErrorBody;
use super::{
    backups, domains, images, jails, moves, plans, ports, snapshots, ssh_keys, tenants, usage,
    webhooks,
};

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
        jails::start, jails::stop, jails::restart, jails::logs, jails::grow_back,
        ports::list, ports::publish, ports::unpublish,
        ssh_keys::list, ssh_keys::add, ssh_keys::remove,
        snapshots::list, snapshots::take, snapshots::restore, snapshots::delete,
        backups::list, backups::get, backups::take, backups::restore, backups::delete, backups::download,
        moves::move_jail,
        images::list, images::get, images::add, images::update, images::remove,
        domains::list, domains::attach, domains::detach, domains::upload_certificate, domains::verify,
        usage::tenant_usage, usage::month_usage,
        webhooks::create, webhooks::list, webhooks::get, webhooks::delete, webhooks::deliveries,
    ),
    components(schemas(ErrorBody)),
    modifiers(&Common),
    tags(
        (name = "tenants", description = "The provider's customers"),
        (name = "plans", description = "Quota bundles"),
        (name = "jails", description = "A tenant's isolated environments"),
        (name = "images", description = "The images jails are made from"),
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
        // Unique operation ids from method and path (handlers of different
        // resources share names like `create`).
        for (path, item) in openapi.paths.paths.iter_mut() {
            let slug: String = path
                .trim_start_matches("/api/v1/")
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                .collect();
            let slug = slug.replace("__", "_");
            let slug = slug.trim_end_matches('_');
            for (method, op) in [
                ("get", &mut item.get),
                ("post", &mut item.post),
                ("patch", &mut item.patch),
                ("delete", &mut item.delete),
            ] {
                if let Some(op) = op {
                    op.operation_id = Some(format!("{method}_{slug}"));
                }
            }
        }
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

/// OpenAPI links from each creating POST to the operations on what it
/// created, so clients and generated tests can follow real ids. Written into
/// the JSON directly: the generator's link model names its fields in snake case.
fn add_links(spec: &mut serde_json::Value) {
    const CREATORS: [(&str, &str, &str); 4] = [
        ("/api/v1/tenants", "tenant_id", "$response.body#/tenant/id"),
        ("/api/v1/plans", "plan_id", "$response.body#/id"),
        (
            "/api/v1/tenants/{tenant_id}/jails",
            "jail_id",
            "$response.body#/id",
        ),
        (
            "/api/v1/webhooks",
            "webhook_id",
            "$response.body#/webhook/id",
        ),
    ];
    let Some(paths) = spec.get_mut("paths").and_then(|p| p.as_object_mut()) else {
        return;
    };
    for (collection, param, expr) in CREATORS {
        let item_prefix = format!("{collection}/{{{param}}}");
        let mut links = serde_json::Map::new();
        for (path, item) in paths.iter() {
            let tail = match path.strip_prefix(&item_prefix) {
                Some(t) if t.is_empty() || t.starts_with('/') => t,
                _ => continue,
            };
            // Only operations that need nothing but what the creator knows.
            if tail.contains('{') {
                continue;
            }
            for method in ["get", "post", "patch", "delete"] {
                let Some(id) = item
                    .pointer(&format!("/{method}/operationId"))
                    .and_then(|v| v.as_str())
                else {
                    continue;
                };
                let mut parameters = serde_json::json!({ param: expr });
                if param != "tenant_id" && path.contains("{tenant_id}") {
                    parameters["tenant_id"] = "$request.path.tenant_id".into();
                }
                links.insert(
                    id.to_owned(),
                    serde_json::json!({ "operationId": id, "parameters": parameters }),
                );
            }
        }
        if let Some(created) = paths
            .get_mut(collection)
            .and_then(|item| item.pointer_mut("/post/responses/201"))
            .and_then(|r| r.as_object_mut())
        {
            created.insert("links".into(), serde_json::Value::Object(links));
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
    JSON.get_or_init(|| {
        let mut value = serde_json::to_value(spec()).unwrap_or_default();
        add_links(&mut value);
        serde_json::to_string_pretty(&value).unwrap_or_default()
    })
}

/// `GET /api/v1/openapi.json`.
pub(crate) async fn serve() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(spec_json())
}
