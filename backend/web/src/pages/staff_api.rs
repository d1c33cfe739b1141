//! Staff pages for the API: tokens (created and revoked here or with
//! `stockade token`) and the webhook delivery log.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use askama::Template;
use stockade_domain::{Role, TenantSlug};
use stockade_store::tokens::{self, Scope};
use stockade_store::{StoreError, events, tenants};
use uuid::Uuid;

use super::{ActionForm, Layout, record, render, require_admin, require_staff};
use crate::auth::SignedIn;
use crate::{AppState, WebError, flash};

pub(super) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/staff/tokens", web::get().to(tokens_page))
        .route("/staff/tokens", web::post().to(create))
        .route("/staff/tokens/{id}/revoke", web::post().to(revoke))
        .route("/staff/webhooks", web::get().to(webhooks_page));
}

struct TokenLine {
    id: Uuid,
    name: String,
    prefix: String,
    scopes: String,
    tenant: String,
    created: String,
    created_iso: String,
    last_used: String,
    revoked: bool,
}

#[derive(Template)]
#[template(path = "staff_tokens.html")]
struct TokensPage {
    layout: Layout,
    tokens: Vec<TokenLine>,
    scopes: Vec<&'static str>,
    can_admin: bool,
    new_token: Option<String>,
    error: Option<String>,
}

async fn view(
    req: &HttpRequest,
    state: &AppState,
    s: &SignedIn,
    status: StatusCode,
    new_token: Option<String>,
    error: Option<String>,
) -> Result<HttpResponse, WebError> {
    let list = tokens::list(&state.pool).await?;
    let mut lines = Vec::with_capacity(list.len());
    for t in list {
        let tenant = match t.tenant_id {
            Some(id) => tenants::get(&state.pool, id)
                .await
                .map(|t| t.slug.to_string())
                .unwrap_or_default(),
            None => "all".into(),
        };
        lines.push(TokenLine {
            id: t.id,
            scopes: t
                .scopes
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            created: t.created_at.format("%Y-%m-%d %H:%M UTC").to_string(),
            created_iso: t.created_at.to_rfc3339(),
            last_used: t.last_used_at.map_or("never".into(), |d| {
                d.format("%Y-%m-%d %H:%M UTC").to_string()
            }),
            revoked: t.revoked_at.is_some(),
            name: t.name,
            prefix: t.prefix,
            tenant,
        });
    }
    let layout = Layout::new(req, &s.0);
    let had_flash = layout.flash.is_some();
    let page = TokensPage {
        layout,
        tokens: lines,
        scopes: Scope::ALL.iter().map(|s| s.as_str()).collect(),
        can_admin: s.0.user.role == Role::Admin,
        new_token,
        error,
    };
    render(status, &page, had_flash)
}

async fn tokens_page(
    req: HttpRequest,
    state: web::Data<AppState>,
    s: SignedIn,
) -> Result<HttpResponse, WebError> {
    require_staff(&s)?;
    view(&req, &state, &s, StatusCode::OK, None, None).await
}

async fn create(
    req: HttpRequest,
    state: web::Data<AppState>,
    s: SignedIn,
    body: web::Bytes,
) -> Result<HttpResponse, WebError> {
    require_admin(&s)?;
    // Repeated `scope` fields: read the form as pairs.
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_bytes(&body).map_err(|_| WebError::Csrf)?;
    let field = |k: &str| {
        pairs
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    s.check_csrf(&field("csrf_token"))?;
    let refuse = |msg: String| {
        view(
            &req,
            &state,
            &s,
            StatusCode::UNPROCESSABLE_ENTITY,
            None,
            Some(msg),
        )
    };
    let mut scopes = Vec::new();
    for (_, v) in pairs.iter().filter(|(n, _)| n == "scope") {
        match v.parse::<Scope>() {
            Ok(sc) => scopes.push(sc),
            Err(e) => return refuse(e.to_string()).await,
        }
    }
    let tenant_text = field("tenant");
    let tenant_id = if tenant_text.trim().is_empty() {
        None
    } else {
        let slug = match TenantSlug::parse(tenant_text.trim()) {
            Ok(s) => s,
            Err(e) => return refuse(e.to_string()).await,
        };
        match tenants::by_slug(&state.pool, &slug).await {
            Ok(t) => Some(t.id),
            Err(StoreError::NotFound) => {
                return refuse(format!("tenant {slug} does not exist")).await;
            }
            Err(e) => return Err(e.into()),
        }
    };
    let (token, secret) =
        match tokens::create(&state.pool, &field("name"), &scopes, tenant_id).await {
            Ok(v) => v,
            Err(StoreError::InvalidState(msg)) => return refuse(msg).await,
            Err(e) => return Err(e.into()),
        };
    let scopes: Vec<&str> = token.scopes.iter().map(|s| s.as_str()).collect();
    record(
        &state,
        &req,
        &s,
        tenant_id,
        "token.create",
        &token.prefix,
        serde_json::json!({ "name": token.name, "scopes": scopes }),
    )
    .await?;
    use secrecy::ExposeSecret;
    view(
        &req,
        &state,
        &s,
        StatusCode::OK,
        Some(secret.expose_secret().to_owned()),
        None,
    )
    .await
}

async fn revoke(
    req: HttpRequest,
    state: web::Data<AppState>,
    s: SignedIn,
    path: web::Path<String>,
    form: web::Form<ActionForm>,
) -> Result<HttpResponse, WebError> {
    require_admin(&s)?;
    s.check_csrf(&form.csrf_token)?;
    let id = Uuid::parse_str(&path).map_err(|_| WebError::NotFound)?;
    let t = tokens::revoke(&state.pool, &id.to_string()).await?;
    record(
        &state,
        &req,
        &s,
        t.tenant_id,
        "token.revoke",
        &t.prefix,
        serde_json::json!({ "name": t.name }),
    )
    .await?;
    Ok(flash::redirect(
        "/staff/tokens",
        "ok",
        &format!("Token {} revoked.", t.name),
    ))
}

struct DeliveryLine {
    created: String,
    created_iso: String,
    event: String,
    url: String,
    status: String,
    attempts: i32,
    last: String,
}

#[derive(Template)]
#[template(path = "staff_webhooks.html")]
struct WebhooksPage {
    layout: Layout,
    rows: Vec<DeliveryLine>,
}

async fn webhooks_page(
    req: HttpRequest,
    state: web::Data<AppState>,
    s: SignedIn,
) -> Result<HttpResponse, WebError> {
    require_staff(&s)?;
    let rows = events::deliveries(&state.pool, None, None, 100)
        .await?
        .into_iter()
        .map(|d| DeliveryLine {
            created: d.created_at.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
            created_iso: d.created_at.to_rfc3339(),
            event: d.event_type,
            url: d.url,
            status: d.status,
            attempts: d.attempts,
            last: match (d.last_status, d.last_error) {
                (Some(code), _) => format!("HTTP {code}"),
                (None, Some(e)) => e,
                _ => "—".into(),
            },
        })
        .collect();
    let layout = Layout::new(&req, &s.0);
    let had_flash = layout.flash.is_some();
    render(StatusCode::OK, &WebhooksPage { layout, rows }, had_flash)
}
