//! Panel pages, server-rendered. Every action is a plain form post with a
//! CSRF token and works without script.

mod account;
pub(crate) mod customer;
mod staff;

pub(crate) use customer::{JailData, JailPageKey, OverviewData};
pub(crate) use staff::TenantsData;
mod staff_api;

use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;

use actix_web::{HttpRequest, HttpResponse, web};
use askama::Template;
use stockade_domain::Role;
use stockade_store::sessions::Session;
use uuid::Uuid;

use crate::auth::SignedIn;
use crate::cache::PageCache;
use crate::flash::{self, Flash};
use crate::{AppState, WebError};

pub(crate) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/", web::get().to(home));
    customer::routes(cfg);
    staff::routes(cfg);
    staff_api::routes(cfg);
    account::routes(cfg);
}

/// What every signed-in page shows around its content.
pub(crate) struct Layout {
    pub email: String,
    pub role: &'static str,
    pub is_staff: bool,
    pub csrf_token: String,
    pub flash: Option<Flash>,
}

impl Layout {
    pub(crate) fn new(req: &HttpRequest, s: &Session) -> Self {
        Self::with_flash(s, flash::take(req))
    }

    fn with_flash(s: &Session, flash: Option<Flash>) -> Self {
        Layout {
            email: s.user.email.to_string(),
            role: s.user.role.as_str(),
            is_staff: s.user.role.is_staff(),
            csrf_token: s.csrf_token.clone(),
            flash,
        }
    }
}

/// Renders a page, clearing a shown flash message.
pub(crate) fn render(
    status: actix_web::http::StatusCode,
    page: &impl Template,
    had_flash: bool,
) -> Result<HttpResponse, WebError> {
    let body = page.render().map_err(anyhow::Error::from)?;
    Ok(html_response(status, body, had_flash))
}

fn html_response(
    status: actix_web::http::StatusCode,
    body: impl actix_web::body::MessageBody + 'static,
    had_flash: bool,
) -> HttpResponse {
    let mut resp = HttpResponse::build(status)
        .content_type("text/html; charset=utf-8")
        .insert_header(("Cache-Control", "no-store"))
        .body(body);
    if had_flash {
        flash::clear(&mut resp);
    }
    resp
}

/// Answers page `key` with its data from `cache` (loaded once for every
/// request asking meanwhile, see [`crate::cache`]), rendered for this viewer.
pub(crate) async fn cached_page<K, T, P, F, Fut>(
    req: &HttpRequest,
    s: &SignedIn,
    cache: &PageCache<K, T>,
    key: K,
    load: F,
    page: impl FnOnce(Layout, Arc<T>) -> P,
) -> Result<HttpResponse, WebError>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    T: Send + Sync + 'static,
    F: Fn() -> Fut,
    Fut: Future<Output = Result<T, WebError>>,
    P: Template,
{
    let data = cache.get(key, load).await?;
    let flash = flash::take(req);
    let had_flash = flash.is_some();
    let html = fragment(&page(Layout::with_flash(&s.0, flash), data))?;
    Ok(html_response(
        actix_web::http::StatusCode::OK,
        html,
        had_flash,
    ))
}

/// Renders a template to text: a whole page, or the part of one that is the
/// same for every viewer, rendered once and kept with the page's data.
pub(crate) fn fragment(part: &impl Template) -> Result<String, WebError> {
    Ok(part.render().map_err(anyhow::Error::from)?)
}

/// The tenant of a signed-in customer; staff have none here.
pub(crate) fn customer_tenant(s: &SignedIn) -> Result<Uuid, WebError> {
    match (s.0.user.role, s.0.user.tenant_id) {
        (Role::Customer, Some(t)) => Ok(t),
        _ => Err(WebError::Forbidden),
    }
}

/// Refuses anyone but operators and admins.
pub(crate) fn require_staff(s: &SignedIn) -> Result<(), WebError> {
    if s.0.user.role.is_staff() {
        Ok(())
    } else {
        Err(WebError::Forbidden)
    }
}

/// Refuses anyone but admins.
pub(crate) fn require_admin(s: &SignedIn) -> Result<(), WebError> {
    if s.0.user.role == Role::Admin {
        Ok(())
    } else {
        Err(WebError::Forbidden)
    }
}

/// A form whose only field is the CSRF token (and an optional confirmation).
#[derive(serde::Deserialize)]
pub(crate) struct ActionForm {
    pub csrf_token: String,
    #[serde(default)]
    pub confirm: Option<String>,
    /// Why (a suspension), shown to the tenant's customers.
    #[serde(default)]
    pub reason: Option<String>,
}

async fn home(signed_in: SignedIn) -> Result<HttpResponse, WebError> {
    if signed_in.0.user.role.is_staff() {
        return Ok(crate::auth::see_other("/staff/tenants"));
    }
    Ok(crate::auth::see_other("/overview"))
}

/// Appends an audit entry for an action of the signed-in user.
pub(crate) async fn record(
    state: &AppState,
    req: &HttpRequest,
    s: &SignedIn,
    tenant_id: Option<Uuid>,
    action: &str,
    target: &str,
    details: serde_json::Value,
) -> Result<(), WebError> {
    let addr = crate::auth::client_addr(req);
    stockade_store::audit::record(
        &state.pool,
        &stockade_store::audit::Entry {
            actor_user_id: Some(s.0.user.id),
            actor: s.0.user.email.as_str(),
            tenant_id,
            action,
            target,
            client_addr: addr.as_deref(),
            details,
        },
    )
    .await?;
    Ok(())
}

/// A quota tile: used vs allocated, with a bar.
pub(crate) struct QuotaTile {
    pub label: &'static str,
    pub used: String,
    pub total: String,
    pub percent: u64,
}

/// The tiles of a tenant's overview.
pub(crate) async fn quota_tiles(
    pool: &stockade_store::PgPool,
    tenant_id: Uuid,
) -> Result<Vec<QuotaTile>, WebError> {
    use crate::format::{bytes, cpu, percent};
    let (q, a) = stockade_store::jails::quota_and_allocation(pool, tenant_id).await?;
    let transfer = stockade_store::usage::tenant_transfer_this_month(pool, tenant_id).await?;
    Ok(vec![
        QuotaTile {
            label: "CPU",
            used: cpu(a.cpu_millicores),
            total: cpu(u64::from(q.cpu_millicores)),
            percent: percent(a.cpu_millicores, u64::from(q.cpu_millicores)),
        },
        QuotaTile {
            label: "Memory",
            used: bytes(a.memory_bytes),
            total: bytes(q.memory_bytes),
            percent: percent(a.memory_bytes, q.memory_bytes),
        },
        QuotaTile {
            // Jails' disks and their snapshots share the quota.
            label: "Disk",
            used: bytes(a.disk_bytes + a.snapshot_bytes),
            total: bytes(q.disk_bytes),
            percent: percent(a.disk_bytes + a.snapshot_bytes, q.disk_bytes),
        },
        QuotaTile {
            label: "Jails",
            used: a.jails.to_string(),
            total: q.max_jails.to_string(),
            percent: percent(a.jails, u64::from(q.max_jails)),
        },
        QuotaTile {
            label: "Transfer this month",
            used: bytes(transfer),
            total: if q.monthly_transfer_bytes == 0 {
                "unmetered".into()
            } else {
                bytes(q.monthly_transfer_bytes)
            },
            percent: percent(transfer, q.monthly_transfer_bytes),
        },
    ])
}
