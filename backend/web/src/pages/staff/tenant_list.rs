//! The tenant list and making a tenant.

use actix_web::{HttpRequest, HttpResponse, web};
use askama::Template;
use serde::Deserialize;
use stockade_domain::{Role, TenantSlug, TenantStatus};
use stockade_store::StoreError;
use stockade_store::plans::{self};
use stockade_store::tenants::{self, SummaryOrder};
use uuid::Uuid;

use super::PAGE;
use crate::auth::SignedIn;
use crate::format;
use crate::pages::{Layout, cached_page, record, require_admin, require_staff};
use crate::{AppState, WebError, flash};

pub(super) struct TenantLine {
    id: Uuid,
    slug: String,
    name: String,
    plan: String,
    status: String,
    jails: i64,
    memory: String,
    cpu: String,
    transfer: String,
}

/// The filters, a page of tenants and the pager.
#[derive(Template)]
#[template(path = "staff_tenants_table.html")]
pub(super) struct TenantsTable {
    rows: Vec<TenantLine>,
    q: String,
    status: String,
    sort: String,
    total: i64,
    prev: Option<String>,
    next: Option<String>,
}

/// A page of the tenant list (cached, see [`crate::cache`]), its table
/// rendered once: it is the same for every viewer.
pub(crate) struct TenantsData {
    table: String,
    plans: Vec<(Uuid, String)>,
}

#[derive(Template)]
#[template(path = "staff_tenants.html")]
pub(super) struct TenantsPage {
    layout: Layout,
    can_admin: bool,
    data: std::sync::Arc<TenantsData>,
}

impl std::ops::Deref for TenantsPage {
    type Target = TenantsData;
    fn deref(&self) -> &TenantsData {
        &self.data
    }
}

#[derive(Deserialize)]
pub(super) struct TenantsQuery {
    q: Option<String>,
    status: Option<String>,
    sort: Option<String>,
    page: Option<u32>,
}

pub(super) fn query_string(q: &str, status: &str, sort: &str, page: u32) -> String {
    let enc = format::url_encode;
    format!(
        "/staff/tenants?q={}&status={}&sort={}&page={page}",
        enc(q),
        enc(status),
        enc(sort)
    )
}

pub(super) async fn tenants_page(
    req: HttpRequest,
    state: web::Data<AppState>,
    s: SignedIn,
    q: web::Query<TenantsQuery>,
) -> Result<HttpResponse, WebError> {
    require_staff(&s)?;
    let search = q.q.clone().unwrap_or_default();
    let status: Option<TenantStatus> = q
        .status
        .as_deref()
        .filter(|v| !v.is_empty())
        .and_then(|v| v.parse().ok());
    let sort = q.sort.clone().unwrap_or_else(|| "slug".into());
    let order = match sort.as_str() {
        "cpu" => SummaryOrder::Cpu,
        "transfer" => SummaryOrder::Transfer,
        "memory" => SummaryOrder::Memory,
        _ => SummaryOrder::Slug,
    };
    let page = q.page.unwrap_or(0).min(100_000);
    let status_text = status.map(|s| s.as_str().to_owned()).unwrap_or_default();
    let key = query_string(&search, &status_text, &sort, page);
    let can_admin = s.0.user.role == Role::Admin;
    cached_page(
        &req,
        &s,
        &state.caches.tenant_lists,
        key,
        || {
            tenants_data(
                &state.pool,
                search.clone(),
                status,
                status_text.clone(),
                sort.clone(),
                order,
                page,
            )
        },
        |layout, data| TenantsPage {
            layout,
            can_admin,
            data,
        },
    )
    .await
}

pub(super) async fn tenants_data(
    pool: &stockade_store::PgPool,
    search: String,
    status: Option<TenantStatus>,
    status_text: String,
    sort: String,
    order: SummaryOrder,
    page: u32,
) -> Result<TenantsData, WebError> {
    let (rows, total) =
        tenants::summaries(pool, Some(&search), status, order, page * PAGE, PAGE).await?;
    let shown = i64::from((page + 1) * PAGE);
    let plans = plans::list(pool)
        .await?
        .into_iter()
        .map(|p| (p.id, p.name))
        .collect();
    let table = TenantsTable {
        rows: rows
            .into_iter()
            .map(|t| TenantLine {
                id: t.id,
                slug: t.slug,
                name: t.display_name,
                plan: t.plan_name,
                status: t.status,
                jails: t.jails,
                memory: format::bytes(u64::try_from(t.memory_bytes).unwrap_or(0)),
                cpu: format!(
                    "{} CPU·h",
                    u64::try_from(t.cpu_usec_month).unwrap_or(0) / 3_600_000_000
                ),
                transfer: format::bytes(u64::try_from(t.transfer_month).unwrap_or(0)),
            })
            .collect(),
        prev: (page > 0).then(|| query_string(&search, &status_text, &sort, page - 1)),
        next: (shown < total).then(|| query_string(&search, &status_text, &sort, page + 1)),
        q: search,
        status: status_text,
        sort,
        total,
    };
    Ok(TenantsData {
        table: crate::pages::fragment(&table)?,
        plans,
    })
}

#[derive(Deserialize)]
pub(super) struct NewTenantForm {
    csrf_token: String,
    slug: String,
    display_name: String,
    plan: String,
}

pub(super) async fn create_tenant(
    req: HttpRequest,
    state: web::Data<AppState>,
    s: SignedIn,
    form: web::Form<NewTenantForm>,
) -> Result<HttpResponse, WebError> {
    require_admin(&s)?;
    s.check_csrf(&form.csrf_token)?;
    let back = |msg: String| Ok(flash::redirect("/staff/tenants", "error", &msg));
    let slug = match TenantSlug::parse(form.slug.trim()) {
        Ok(s) => s,
        Err(e) => return back(e.to_string()),
    };
    let name = form.display_name.trim();
    if name.is_empty() || name.len() > 200 {
        return back("display name: must be 1 to 200 characters".into());
    }
    let Ok(plan_id) = Uuid::parse_str(&form.plan) else {
        return back("plan: choose a plan".into());
    };
    match tenants::create(&state.pool, &slug, name, plan_id).await {
        Ok(t) => {
            record(
                &state,
                &req,
                &s,
                Some(t.id),
                "tenant.create",
                t.slug.as_str(),
                serde_json::json!({}),
            )
            .await?;
            Ok(flash::redirect(
                &format!("/staff/tenants/{}", t.id),
                "ok",
                &format!("Tenant {} created.", t.slug),
            ))
        }
        Err(e @ (StoreError::Conflict(_) | StoreError::InvalidState(_))) => back(e.to_string()),
        Err(e) => Err(e.into()),
    }
}
