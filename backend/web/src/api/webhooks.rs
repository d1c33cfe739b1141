//! `/api/v1/webhooks`: endpoints that receive signed events, and their delivery log.

use actix_web::{HttpRequest, HttpResponse, web};
use chrono::{DateTime, Utc};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use stockade_store::events::{self, EVENT_TYPES, Endpoint, NewEndpoint};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::auth::{Authorized, WebhooksWrite};
use super::error::ApiError;
use super::resource;
use super::tenants::record;
use super::types::text;
use crate::AppState;

pub(crate) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        resource("/webhooks")
            .route(web::get().to(list))
            .route(web::post().to(create)),
    )
    .service(
        resource("/webhooks/{webhook_id}")
            .route(web::get().to(get))
            .route(web::delete().to(delete)),
    )
    .service(resource("/webhooks/{webhook_id}/deliveries").route(web::get().to(deliveries)));
}

/// A webhook endpoint (its secret is shown only when it is created).
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookOut {
    /// Stable id.
    pub id: Uuid,
    /// Where events are POSTed.
    pub url: String,
    /// Event types it receives.
    pub event_types: Vec<String>,
    /// The one tenant whose events it receives, if bound.
    pub tenant_id: Option<Uuid>,
    /// Free text.
    pub description: String,
    /// When it was registered.
    pub created_at: DateTime<Utc>,
}

impl From<Endpoint> for WebhookOut {
    fn from(e: Endpoint) -> Self {
        WebhookOut {
            id: e.id,
            url: e.url,
            event_types: e.event_types,
            tenant_id: e.tenant_id,
            description: e.description,
            created_at: e.created_at,
        }
    }
}

/// A registered endpoint and its signing secret, shown only in this answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedWebhook {
    /// The endpoint.
    pub webhook: WebhookOut,
    /// The HMAC-SHA256 key of the `Stockade-Signature` header; `null` in a
    /// replay (see `secrets_omitted`).
    #[schema(nullable = true)]
    pub secret: String,
    /// In a replay of this answer (`Idempotent-Replayed`): where a secret
    /// shown once was left out (`["secret"]`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secrets_omitted: Option<Vec<String>>,
}

/// Every endpoint this token may see.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookList {
    /// The endpoints, oldest first.
    pub data: Vec<WebhookOut>,
}

/// A new endpoint.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhook {
    /// `http://` or `https://` URL that receives POSTs.
    #[schema(
        example = "https://billing.example.com/stockade",
        pattern = "^https?://",
        max_length = 2000
    )]
    pub url: String,
    /// Signing key, 16 to 200 characters; generated when absent.
    #[schema(min_length = 16, max_length = 200)]
    pub secret: Option<String>,
    /// Event types to receive: tenant.created, tenant.suspended,
    /// tenant.unsuspended, tenant.terminated, jail.state_changed,
    /// quota.soft_limit_reached, quota.hard_limit_reached, usage.month_closed.
    #[schema(schema_with = event_types_schema)]
    pub event_types: Vec<String>,
    /// Receive only this tenant's events (forced for tenant-bound tokens).
    pub tenant_id: Option<Uuid>,
    /// Free text.
    pub description: Option<String>,
}

/// One or more of the event types, each at most once.
fn event_types_schema() -> utoipa::openapi::schema::Array {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Type};
    ArrayBuilder::new()
        .items(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some(EVENT_TYPES.iter().copied())),
        )
        .min_items(Some(1))
        .max_items(Some(EVENT_TYPES.len()))
        .unique_items(true)
        .build()
}

struct ValidWebhook {
    url: String,
    secret: String,
    event_types: Vec<String>,
    tenant_id: Option<Uuid>,
    description: String,
}

impl TryFrom<CreateWebhook> for ValidWebhook {
    type Error = ApiError;
    fn try_from(b: CreateWebhook) -> Result<Self, ApiError> {
        let url = reqwest::Url::parse(&b.url)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
            .filter(|_| b.url.len() <= 2000)
            .ok_or_else(|| ApiError::field("url", "must be an http:// or https:// URL"))?;
        let secret = match b.secret {
            Some(s) => {
                let n = s.chars().count();
                if !(16..=200).contains(&n) || s.chars().any(char::is_control) {
                    return Err(ApiError::field("secret", "must be 16 to 200 characters"));
                }
                s
            }
            None => {
                let mut bytes = [0u8; 32];
                rand::rng().fill_bytes(&mut bytes);
                format!("whsec_{}", hex::encode(bytes))
            }
        };
        if b.event_types.is_empty() || b.event_types.len() > EVENT_TYPES.len() {
            return Err(ApiError::field(
                "event_types",
                "give one or more event types",
            ));
        }
        let mut event_types = Vec::new();
        for t in &b.event_types {
            if !EVENT_TYPES.contains(&t.as_str()) {
                return Err(ApiError::field(
                    "event_types",
                    format!("{t:?} is not one of: {}", EVENT_TYPES.join(", ")),
                ));
            }
            if !event_types.contains(t) {
                event_types.push(t.clone());
            }
        }
        let description = match b.description.as_deref() {
            None | Some("") => String::new(),
            Some(d) => text("description", d, 200)?,
        };
        Ok(ValidWebhook {
            url: url.to_string(),
            secret,
            event_types,
            tenant_id: b.tenant_id,
            description,
        })
    }
}

/// Registers an endpoint.
#[utoipa::path(post, path = "/api/v1/webhooks", tag = "webhooks",
    request_body = CreateWebhook,
    params(("Idempotency-Key" = Option<String>, Header, description = "Replays the first answer for a retry: 1 to 255 visible ASCII characters", pattern = "^[!-~]{1,255}$")),
    responses((status = 201, description = "Registered", body = CreatedWebhook),
              (status = 422, description = "A refused field, such as a URL the egress policy refuses")),
    security(("bearer" = ["webhooks:write"])))]
pub(crate) async fn create(
    Authorized(caller, _): Authorized<WebhooksWrite>,
    body: web::Json<CreateWebhook>,
    state: web::Data<AppState>,
    api: web::Data<super::ApiState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let mut w = ValidWebhook::try_from(body.into_inner())?;
    // An address the deliveries may not reach is refused now; a name is
    // checked on each delivery, on the address it resolves to then.
    let url = reqwest::Url::parse(&w.url)
        .map_err(|_| ApiError::field("url", "must be an http:// or https:// URL"))?;
    if super::egress::refuses_url(&api.egress, &url) {
        return Err(ApiError::field(
            "url",
            "refused by the webhook egress policy: loopback, private, link-local and other internal addresses are not reachable",
        ));
    }
    if let Some(bound) = caller.tenant() {
        if w.tenant_id.is_some_and(|t| t != bound) {
            return Err(ApiError::NotFound);
        }
        w.tenant_id = Some(bound);
    }
    let endpoint = events::create_endpoint(
        &state.pool,
        &NewEndpoint {
            url: w.url,
            secret: w.secret.clone(),
            event_types: w.event_types,
            tenant_id: w.tenant_id,
            description: w.description,
            created_by: Some(caller.0.id),
        },
    )
    .await
    .map_err(|e| match e {
        stockade_store::StoreError::NotFound => ApiError::field("tenant_id", "no such tenant"),
        other => other.into(),
    })?;
    record(
        &state,
        &req,
        &caller,
        endpoint.tenant_id,
        "webhook.create",
        &endpoint.url,
    )
    .await?;
    Ok(HttpResponse::Created()
        .insert_header(("Location", format!("/api/v1/webhooks/{}", endpoint.id)))
        .insert_header(("Cache-Control", "no-store"))
        .json(CreatedWebhook {
            webhook: endpoint.into(),
            secret: w.secret,
            secrets_omitted: None,
        }))
}

/// Lists endpoints.
#[utoipa::path(get, path = "/api/v1/webhooks", tag = "webhooks",
    responses((status = 200, description = "The endpoints", body = WebhookList)),
    security(("bearer" = ["webhooks:write"])))]
pub(crate) async fn list(
    Authorized(caller, _): Authorized<WebhooksWrite>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let data = events::list_endpoints(&state.pool, caller.tenant())
        .await?
        .into_iter()
        .map(WebhookOut::from)
        .collect();
    Ok(HttpResponse::Ok().json(WebhookList { data }))
}

/// One endpoint.
#[utoipa::path(get, path = "/api/v1/webhooks/{webhook_id}", tag = "webhooks",
    params(("webhook_id" = Uuid, Path, description = "Endpoint id")),
    responses((status = 200, description = "The endpoint", body = WebhookOut)),
    security(("bearer" = ["webhooks:write"])))]
pub(crate) async fn get(
    Authorized(caller, _): Authorized<WebhooksWrite>,
    path: web::Path<Uuid>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let e = events::get_endpoint(&state.pool, caller.tenant(), path.into_inner()).await?;
    Ok(HttpResponse::Ok().json(WebhookOut::from(e)))
}

/// Removes an endpoint: it gets no more events and its pending deliveries stop.
#[utoipa::path(delete, path = "/api/v1/webhooks/{webhook_id}", tag = "webhooks",
    params(("webhook_id" = Uuid, Path, description = "Endpoint id")),
    responses((status = 204, description = "Removed")),
    security(("bearer" = ["webhooks:write"])))]
pub(crate) async fn delete(
    Authorized(caller, _): Authorized<WebhooksWrite>,
    path: web::Path<Uuid>,
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let id = path.into_inner();
    events::disable_endpoint(&state.pool, caller.tenant(), id).await?;
    record(
        &state,
        &req,
        &caller,
        caller.tenant(),
        "webhook.delete",
        &id.to_string(),
    )
    .await?;
    Ok(HttpResponse::NoContent().finish())
}

/// One delivery of an event to an endpoint.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryOut {
    /// Delivery id (also sent as `Stockade-Delivery`).
    pub id: i64,
    /// The event.
    pub event_id: Uuid,
    /// Its type.
    pub event_type: String,
    /// `pending`, `delivered` or `failed`.
    pub status: String,
    /// Attempts made.
    pub attempts: i32,
    /// The last HTTP status the endpoint answered.
    pub last_status: Option<i32>,
    /// The last error.
    pub last_error: Option<String>,
    /// The next attempt, while pending.
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// When it was queued.
    pub created_at: DateTime<Utc>,
    /// When it was delivered or given up.
    pub finished_at: Option<DateTime<Utc>>,
}

/// An endpoint's latest deliveries.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryList {
    /// Newest first.
    pub data: Vec<DeliveryOut>,
}

/// How many deliveries to list.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeliveriesQuery {
    /// 1 to 500 (default 100).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
}

/// The delivery log of an endpoint.
#[utoipa::path(get, path = "/api/v1/webhooks/{webhook_id}/deliveries", tag = "webhooks",
    params(("webhook_id" = Uuid, Path, description = "Endpoint id"), DeliveriesQuery),
    responses((status = 200, description = "The latest deliveries", body = DeliveryList)),
    security(("bearer" = ["webhooks:write"])))]
pub(crate) async fn deliveries(
    Authorized(caller, _): Authorized<WebhooksWrite>,
    path: web::Path<Uuid>,
    query: web::Query<DeliveriesQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let limit = query.into_inner().limit.unwrap_or(100);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::field("limit", "must be 1 to 500"));
    }
    let id = path.into_inner();
    events::get_endpoint(&state.pool, caller.tenant(), id).await?;
    let data = events::deliveries(&state.pool, caller.tenant(), Some(id), limit)
        .await?
        .into_iter()
        .map(|d| DeliveryOut {
            id: d.id,
            event_id: d.event_id,
            event_type: d.event_type,
            next_attempt_at: (d.status == "pending").then_some(d.next_attempt_at),
            status: d.status,
            attempts: d.attempts,
            last_status: d.last_status.map(i32::from),
            last_error: d.last_error,
            created_at: d.created_at,
            finished_at: d.finished_at,
        })
        .collect();
    Ok(HttpResponse::Ok().json(DeliveryList { data }))
}
