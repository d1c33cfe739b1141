//! Provider staff pages: tenants, plans, nodes and the audit log. Operators
//! read everything and suspend/unsuspend; admins do everything.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use askama::Template;
use serde::Deserialize;
use stockade_domain::{ByteSize, Email, Millicores, Role, TenantSlug, TenantStatus};
use stockade_store::plans::{self, PlanInput, Quota};
use stockade_store::tenants::{self, Overrides, SummaryOrder};
use stockade_store::{StoreError, audit, jails, nodes, users};
use uuid::Uuid;

use super::customer::{ConfirmPage, JailRow};
use super::{
    ActionForm, Layout, QuotaTile, cached_page, quota_tiles, record, render, require_admin,
    require_staff,
};
use crate::auth::SignedIn;
use crate::cache::PageKey;
use crate::format;
use crate::{AppState, WebError, flash};

pub(super) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/staff/tenants", web::get().to(tenants_page))
        .route("/staff/tenants", web::post().to(create_tenant))
        .route("/staff/tenants/{id}", web::get().to(tenant_page))
        .route(
            "/staff/tenants/{id}/overrides",
            web::post().to(set_overrides),
        )
        .route("/staff/tenants/{id}/plan", web::post().to(change_plan))
        .route("/staff/tenants/{id}/users", web::post().to(create_user))
        .route(
            "/staff/tenants/{id}/{action}",
            web::get().to(confirm_status),
        )
        .route(
            "/staff/tenants/{id}/{action}",
            web::post().to(change_status),
        )
        .route(
            "/staff/users/{id}/reset-password",
            web::post().to(reset_password),
        )
        .route("/staff/plans", web::get().to(plans_page))
        .route("/staff/plans", web::post().to(create_plan))
        .route("/staff/plans/{id}", web::get().to(edit_plan_page))
        .route("/staff/plans/{id}", web::post().to(update_plan))
        .route("/staff/nodes", web::get().to(nodes_page))
        .route("/staff/audit", web::get().to(audit_page));
}

const PAGE: u32 = 50;

fn parse_id(raw: &str) -> Result<Uuid, WebError> {
    Uuid::parse_str(raw).map_err(|_| WebError::NotFound)
}

// ---- tenants ----------------------------------------------------------------

struct TenantLine {
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
struct TenantsTable {
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
struct TenantsData {
    table: String,
    plans: Vec<(Uuid, String)>,
}

#[derive(Template)]
#[template(path = "staff_tenants.html")]
struct TenantsPage {
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
struct TenantsQuery {
    q: Option<String>,
    status: Option<String>,
    sort: Option<String>,
    page: Option<u32>,
}

fn query_string(q: &str, status: &str, sort: &str, page: u32) -> String {
    let enc = format::url_encode;
    format!(
        "/staff/tenants?q={}&status={}&sort={}&page={page}",
        enc(q),
        enc(status),
        enc(sort)
    )
}

async fn tenants_page(
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
    let key = PageKey::StaffTenants(query_string(&search, &status_text, &sort, page));
    let can_admin = s.0.user.role == Role::Admin;
    cached_page(
        &state,
        &req,
        &s,
        key,
        || tenants_data(&state.pool, search, status, status_text, sort, order, page),
        |layout, data| TenantsPage {
            layout,
            can_admin,
            data,
        },
    )
    .await
}

async fn tenants_data(
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
        table: super::fragment(&table)?,
        plans,
    })
}

#[derive(Deserialize)]
struct NewTenantForm {
    csrf_token: String,
    slug: String,
    display_name: String,
    plan: String,
}

async fn create_tenant(
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

#[derive(Template)]
#[template(path = "staff_tenant.html")]
struct TenantPage {
    layout: Layout,
    id: Uuid,
    slug: String,
    display_name: String,
    status: &'static str,
    plan_name: String,
    created: String,
    created_iso: String,
    error: Option<String>,
    can_admin: bool,
    quotas: Vec<QuotaTile>,
    jails: Vec<JailRow>,
    users: Vec<(Uuid, String)>,
    plans: Vec<(Uuid, String)>,
    o_cpu: String,
    o_memory: String,
    o_pids: String,
    o_disk: String,
    o_jails: String,
    o_transfer: String,
    p_cpu: String,
    p_memory: String,
    p_pids: String,
    p_disk: String,
    p_jails: String,
    p_transfer: String,
}

async fn tenant_page(
    req: HttpRequest,
    state: web::Data<AppState>,
    s: SignedIn,
    path: web::Path<String>,
) -> Result<HttpResponse, WebError> {
    require_staff(&s)?;
    let id = parse_id(&path)?;
    let t = tenants::get(&state.pool, id).await?;
    let plan = plans::get(&state.pool, t.plan_id).await?;
    let o = tenants::overrides(&state.pool, id).await?;
    let jails = jails::list_for_tenant(&state.pool, id).await?;
    let users = users::list_for_tenant(&state.pool, id).await?;
    let layout = Layout::new(&req, &s.0);
    let had_flash = layout.flash.is_some();
    let size = |v: Option<u64>| v.map(|b| ByteSize(b).to_string()).unwrap_or_default();
    let page = TenantPage {
        layout,
        id,
        slug: t.slug.to_string(),
        display_name: t.display_name.clone(),
        status: t.status.as_str(),
        plan_name: t.plan_name.clone(),
        created: t.created_at.format("%Y-%m-%d %H:%M UTC").to_string(),
        created_iso: t.created_at.to_rfc3339(),
        error: None,
        can_admin: s.0.user.role == Role::Admin,
        quotas: quota_tiles(&state.pool, id).await?,
        jails: jails.iter().map(JailRow::from).collect(),
        users: users
            .into_iter()
            .map(|u| (u.id, u.email.to_string()))
            .collect(),
        plans: plans::list(&state.pool)
            .await?
            .into_iter()
            .map(|p| (p.id, p.name))
            .collect(),
        o_cpu: o
            .cpu_millicores
            .map(|m| Millicores(m).to_string())
            .unwrap_or_default(),
        o_memory: size(o.memory_bytes),
        o_pids: o.pids.map(|p| p.to_string()).unwrap_or_default(),
        o_disk: size(o.disk_bytes),
        o_jails: o.max_jails.map(|p| p.to_string()).unwrap_or_default(),
        o_transfer: size(o.monthly_transfer_bytes),
        p_cpu: Millicores(plan.quota.cpu_millicores).to_string(),
        p_memory: ByteSize(plan.quota.memory_bytes).to_string(),
        p_pids: plan.quota.pids.to_string(),
        p_disk: ByteSize(plan.quota.disk_bytes).to_string(),
        p_jails: plan.quota.max_jails.to_string(),
        p_transfer: ByteSize(plan.quota.monthly_transfer_bytes).to_string(),
    };
    render(StatusCode::OK, &page, had_flash)
}

#[derive(Deserialize)]
struct OverridesForm {
    csrf_token: String,
    cpu: String,
    memory: String,
    pids: String,
    disk: String,
    max_jails: String,
    transfer: String,
}

impl TryFrom<&OverridesForm> for Overrides {
    type Error = String;
    fn try_from(f: &OverridesForm) -> Result<Self, String> {
        fn opt(v: &str) -> Option<&str> {
            Some(v.trim()).filter(|v| !v.is_empty())
        }
        let size = |field: &'static str, v: &str| {
            opt(v)
                .map(|v| ByteSize::parse(field, v).map(ByteSize::bytes))
                .transpose()
                .map_err(|e| e.to_string())
        };
        let count = |field: &str, v: &str| {
            opt(v)
                .map(|v| {
                    v.parse::<u32>()
                        .map_err(|_| format!("{field}: {v:?} is not a whole number"))
                })
                .transpose()
        };
        Ok(Overrides {
            cpu_millicores: opt(&f.cpu)
                .map(|v| Millicores::parse("cpu", v).map(Millicores::millis))
                .transpose()
                .map_err(|e| e.to_string())?,
            memory_bytes: size("memory", &f.memory)?,
            pids: count("processes", &f.pids)?,
            disk_bytes: size("disk", &f.disk)?,
            max_jails: count("jails", &f.max_jails)?,
            monthly_transfer_bytes: size("monthly transfer", &f.transfer)?,
        })
    }
}

async fn set_overrides(
    req: HttpRequest,
    state: web::Data<AppState>,
    s: SignedIn,
    path: web::Path<String>,
    form: web::Form<OverridesForm>,
) -> Result<HttpResponse, WebError> {
    require_admin(&s)?;
    s.check_csrf(&form.csrf_token)?;
    let id = parse_id(&path)?;
    let here = format!("/staff/tenants/{id}");
    let o = match Overrides::try_from(&*form) {
        Ok(o) => o,
        Err(msg) => return Ok(flash::redirect(&here, "error", &msg)),
    };
    tenants::set_overrides(&state.pool, id, &o).await?;
    let t = tenants::get(&state.pool, id).await?;
    record(
        &state,
        &req,
        &s,
        Some(id),
        "tenant.quota_override",
        t.slug.as_str(),
        serde_json::to_value(o).unwrap_or_default(),
    )
    .await?;
    Ok(flash::redirect(
        &here,
        "ok",
        "Quota overrides saved; running jails follow within one reconcile.",
    ))
}

#[derive(Deserialize)]
struct PlanChoice {
    csrf_token: String,
    plan: String,
}

async fn change_plan(
    req: HttpRequest,
    state: web::Data<AppState>,
    s: SignedIn,
    path: web::Path<String>,
    form: web::Form<PlanChoice>,
) -> Result<HttpResponse, WebError> {
    require_admin(&s)?;
    s.check_csrf(&form.csrf_token)?;
    let id = parse_id(&path)?;
    let here = format!("/staff/tenants/{id}");
    let Ok(plan_id) = Uuid::parse_str(&form.plan) else {
        return Ok(flash::redirect(&here, "error", "plan: choose a plan"));
    };
    match tenants::change_plan(&state.pool, id, plan_id).await {
        Ok(t) => {
            record(
                &state,
                &req,
                &s,
                Some(id),
                "tenant.plan_change",
                t.slug.as_str(),
                serde_json::json!({"plan": t.plan_name}),
            )
            .await?;
            Ok(flash::redirect(
                &here,
                "ok",
                &format!("Plan changed to {}.", t.plan_name),
            ))
        }
        Err(StoreError::InvalidState(msg)) => Ok(flash::redirect(&here, "error", &msg)),
        Err(e) => Err(e.into()),
    }
}

#[derive(Deserialize)]
struct NewUserForm {
    csrf_token: String,
    email: String,
}

async fn create_user(
    req: HttpRequest,
    state: web::Data<AppState>,
    s: SignedIn,
    path: web::Path<String>,
    form: web::Form<NewUserForm>,
) -> Result<HttpResponse, WebError> {
    require_admin(&s)?;
    s.check_csrf(&form.csrf_token)?;
    let id = parse_id(&path)?;
    let here = format!("/staff/tenants/{id}");
    let email = match Email::parse(&form.email) {
        Ok(e) => e,
        Err(e) => return Ok(flash::redirect(&here, "error", &e.to_string())),
    };
    tenants::get(&state.pool, id).await?;
    let password = stockade_store::password::generate();
    let hash = {
        let p = password.clone();
        web::block(move || stockade_store::password::hash(&p))
            .await
            .map_err(anyhow::Error::from)??
    };
    match users::create(&state.pool, &email, &hash, Role::Customer, Some(id)).await {
        Ok(u) => {
            record(
                &state,
                &req,
                &s,
                Some(id),
                "user.create",
                u.email.as_str(),
                serde_json::json!({}),
            )
            .await?;
            use secrecy::ExposeSecret;
            Ok(flash::redirect(
                &here,
                "ok",
                &format!(
                    "User {} created. Their password (shown once): {}",
                    u.email,
                    password.expose_secret()
                ),
            ))
        }
        Err(e @ StoreError::Conflict(_)) => Ok(flash::redirect(&here, "error", &e.to_string())),
        Err(e) => Err(e.into()),
    }
}

async fn reset_password(
    req: HttpRequest,
    state: web::Data<AppState>,
    s: SignedIn,
    path: web::Path<String>,
    form: web::Form<ActionForm>,
) -> Result<HttpResponse, WebError> {
    require_admin(&s)?;
    s.check_csrf(&form.csrf_token)?;
    let id = parse_id(&path)?;
    let user = users::get(&state.pool, id).await?;
    let password = stockade_store::password::generate();
    let hash = {
        let p = password.clone();
        web::block(move || stockade_store::password::hash(&p))
            .await
            .map_err(anyhow::Error::from)??
    };
    users::set_password(&state.pool, id, &hash).await?;
    record(
        &state,
        &req,
        &s,
        user.tenant_id,
        "user.password_reset",
        user.email.as_str(),
        serde_json::json!({}),
    )
    .await?;
    let back = user.tenant_id.map_or("/staff/tenants".to_owned(), |t| {
        format!("/staff/tenants/{t}")
    });
    use secrecy::ExposeSecret;
    Ok(flash::redirect(
        &back,
        "ok",
        &format!(
            "New password for {} (shown once): {}; their sessions were ended.",
            user.email,
            password.expose_secret()
        ),
    ))
}

/// Who may change a tenant's status how.
fn status_action(action: &str, s: &SignedIn) -> Result<(&'static str, &'static str), WebError> {
    match action {
        "suspend" => require_staff(s).map(|()| ("suspend", "Suspend")),
        "unsuspend" => require_staff(s).map(|()| ("unsuspend", "Unsuspend")),
        "terminate" => require_admin(s).map(|()| ("terminate", "Terminate")),
        _ => Err(WebError::NotFound),
    }
}

async fn confirm_status(
    req: HttpRequest,
    state: web::Data<AppState>,
    s: SignedIn,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, WebError> {
    let (id, action) = path.into_inner();
    let (verb, button) = status_action(&action, &s)?;
    let t = tenants::get(&state.pool, parse_id(&id)?).await?;
    let message = match verb {
        "suspend" => format!(
            "Every jail of {} stops until the tenant is unsuspended; each jail then returns to what it was.",
            t.slug
        ),
        "terminate" => format!(
            "Every jail of {} is destroyed with its volume and its users can no longer sign in. This cannot be undone.",
            t.slug
        ),
        _ => format!(
            "The jails of {} return to what they were before the suspension.",
            t.slug
        ),
    };
    let page = ConfirmPage {
        layout: Layout::new(&req, &s.0),
        title: format!("{button} {}?", t.slug),
        message,
        action: format!("/staff/tenants/{}/{verb}", t.id),
        button,
        back: format!("/staff/tenants/{}", t.id),
    };
    render(StatusCode::OK, &page, false)
}

async fn change_status(
    req: HttpRequest,
    state: web::Data<AppState>,
    s: SignedIn,
    path: web::Path<(String, String)>,
    form: web::Form<ActionForm>,
) -> Result<HttpResponse, WebError> {
    let (id, action) = path.into_inner();
    let (verb, _) = status_action(&action, &s)?;
    s.check_csrf(&form.csrf_token)?;
    let id = parse_id(&id)?;
    let here = format!("/staff/tenants/{id}");
    if form.confirm.as_deref() != Some("yes") {
        return Ok(crate::auth::see_other(&format!("{here}/{verb}")));
    }
    let result = match verb {
        "suspend" => tenants::suspend(&state.pool, id).await,
        "unsuspend" => tenants::unsuspend(&state.pool, id).await,
        _ => tenants::terminate(&state.pool, id).await,
    };
    match result {
        Ok(t) => {
            record(
                &state,
                &req,
                &s,
                Some(id),
                &format!("tenant.{verb}"),
                t.slug.as_str(),
                serde_json::json!({}),
            )
            .await?;
            Ok(flash::redirect(
                &here,
                "ok",
                &format!("Tenant {} is now {}.", t.slug, t.status),
            ))
        }
        Err(StoreError::InvalidState(msg)) => Ok(flash::redirect(
            &here,
            "error",
            &format!("Cannot {verb}: {msg}."),
        )),
        Err(e) => Err(e.into()),
    }
}

// ---- plans ------------------------------------------------------------------

struct PlanLine {
    id: Uuid,
    name: String,
    display_name: String,
    cpu: String,
    memory: String,
    pids: u32,
    disk: String,
    jails: u32,
    transfer: String,
    user_namespace: bool,
}

#[derive(Deserialize, Default, Clone)]
struct PlanForm {
    #[serde(default)]
    csrf_token: String,
    name: String,
    display_name: String,
    cpu: String,
    memory: String,
    pids: String,
    disk: String,
    max_jails: String,
    transfer: String,
    /// Ticked: the plan's jails run without a user namespace (root in a jail
    /// is host root). Unticked, the default, is the safe choice.
    #[serde(default)]
    host_root_ids: Option<String>,
}

impl TryFrom<&PlanForm> for PlanInput {
    type Error = String;
    fn try_from(f: &PlanForm) -> Result<Self, String> {
        let name =
            TenantSlug::parse(f.name.trim()).map_err(|e| e.to_string().replace("slug", "name"))?;
        let display_name = f.display_name.trim().to_owned();
        if display_name.is_empty() || display_name.len() > 200 {
            return Err("display name: must be 1 to 200 characters".into());
        }
        let count = |field: &str, v: &str| {
            v.trim()
                .parse::<u32>()
                .map_err(|_| format!("{field}: {v:?} is not a whole number"))
        };
        let size = |field: &'static str, v: &str| {
            ByteSize::parse(field, v)
                .map(ByteSize::bytes)
                .map_err(|e| e.to_string())
        };
        Ok(PlanInput {
            name,
            display_name,
            quota: Quota {
                cpu_millicores: Millicores::parse("cpu", &f.cpu)
                    .map_err(|e| e.to_string())?
                    .millis(),
                memory_bytes: size("memory", &f.memory)?,
                pids: count("processes", &f.pids)?,
                disk_bytes: size("disk", &f.disk)?,
                max_jails: count("jails", &f.max_jails)?,
                monthly_transfer_bytes: size("monthly transfer", &f.transfer)?,
                ..Quota::default()
            },
            user_namespace: f.host_root_ids.is_none(),
        })
    }
}

#[derive(Template)]
#[template(path = "staff_plans.html")]
struct PlansPage {
    layout: Layout,
    plans: Vec<PlanLine>,
    can_admin: bool,
    editing: Option<Uuid>,
    form_action: String,
    form: PlanForm,
    error: Option<String>,
}

async fn plans_view(
    req: &HttpRequest,
    state: &AppState,
    s: &SignedIn,
    editing: Option<Uuid>,
    form: PlanForm,
    error: Option<String>,
) -> Result<HttpResponse, WebError> {
    let plans = plans::list(&state.pool).await?;
    let layout = Layout::new(req, &s.0);
    let had_flash = layout.flash.is_some();
    let status = if error.is_some() {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::OK
    };
    let page = PlansPage {
        layout,
        plans: plans
            .into_iter()
            .map(|p| PlanLine {
                id: p.id,
                name: p.name,
                display_name: p.display_name,
                cpu: format::cpu(u64::from(p.quota.cpu_millicores)),
                memory: format::bytes(p.quota.memory_bytes),
                pids: p.quota.pids,
                disk: format::bytes(p.quota.disk_bytes),
                jails: p.quota.max_jails,
                transfer: format::bytes(p.quota.monthly_transfer_bytes),
                user_namespace: p.user_namespace,
            })
            .collect(),
        can_admin: s.0.user.role == Role::Admin,
        form_action: editing.map_or("/staff/plans".to_owned(), |id| format!("/staff/plans/{id}")),
        editing,
        form,
        error,
    };
    render(status, &page, had_flash)
}

async fn plans_page(
    req: HttpRequest,
    state: web::Data<AppState>,
    s: SignedIn,
) -> Result<HttpResponse, WebError> {
    require_staff(&s)?;
    plans_view(&req, &state, &s, None, PlanForm::default(), None).await
}

async fn edit_plan_page(
    req: HttpRequest,
    state: web::Data<AppState>,
    s: SignedIn,
    path: web::Path<String>,
) -> Result<HttpResponse, WebError> {
    require_admin(&s)?;
    let p = plans::get(&state.pool, parse_id(&path)?).await?;
    let form = PlanForm {
        csrf_token: String::new(),
        name: p.name.clone(),
        display_name: p.display_name.clone(),
        cpu: Millicores(p.quota.cpu_millicores).to_string(),
        memory: ByteSize(p.quota.memory_bytes).to_string(),
        pids: p.quota.pids.to_string(),
        disk: ByteSize(p.quota.disk_bytes).to_string(),
        max_jails: p.quota.max_jails.to_string(),
        transfer: ByteSize(p.quota.monthly_transfer_bytes).to_string(),
        host_root_ids: (!p.user_namespace).then(|| "on".to_owned()),
    };
    plans_view(&req, &state, &s, Some(p.id), form, None).await
}

async fn create_plan(
    req: HttpRequest,
    state: web::Data<AppState>,
    s: SignedIn,
    form: web::Form<PlanForm>,
) -> Result<HttpResponse, WebError> {
    require_admin(&s)?;
    s.check_csrf(&form.csrf_token)?;
    let typed = form.into_inner();
    let input = match PlanInput::try_from(&typed) {
        Ok(i) => i,
        Err(msg) => return plans_view(&req, &state, &s, None, typed, Some(msg)).await,
    };
    match plans::create(&state.pool, &input).await {
        Ok(p) => {
            record(
                &state,
                &req,
                &s,
                None,
                "plan.create",
                &p.name,
                serde_json::to_value(p.quota).unwrap_or_default(),
            )
            .await?;
            if !p.user_namespace {
                record_user_namespace(&state, &req, &s, &p.name, false).await?;
            }
            Ok(flash::redirect(
                "/staff/plans",
                "ok",
                &format!("Plan {} created.", p.name),
            ))
        }
        Err(e @ StoreError::Conflict(_)) => {
            plans_view(&req, &state, &s, None, typed, Some(e.to_string())).await
        }
        Err(e) => Err(e.into()),
    }
}

async fn update_plan(
    req: HttpRequest,
    state: web::Data<AppState>,
    s: SignedIn,
    path: web::Path<String>,
    form: web::Form<PlanForm>,
) -> Result<HttpResponse, WebError> {
    require_admin(&s)?;
    s.check_csrf(&form.csrf_token)?;
    let id = parse_id(&path)?;
    let current = plans::get(&state.pool, id).await?;
    let mut typed = form.into_inner();
    typed.name = current.name.clone();
    let input = match PlanInput::try_from(&typed) {
        Ok(i) => i,
        Err(msg) => return plans_view(&req, &state, &s, Some(id), typed, Some(msg)).await,
    };
    let mut quota = current.quota;
    quota.cpu_millicores = input.quota.cpu_millicores;
    quota.memory_bytes = input.quota.memory_bytes;
    quota.pids = input.quota.pids;
    quota.disk_bytes = input.quota.disk_bytes;
    quota.max_jails = input.quota.max_jails;
    quota.monthly_transfer_bytes = input.quota.monthly_transfer_bytes;
    let p = plans::update(&state.pool, id, &input.display_name, &quota).await?;
    record(
        &state,
        &req,
        &s,
        None,
        "plan.update",
        &p.name,
        serde_json::to_value(p.quota).unwrap_or_default(),
    )
    .await?;
    let (p, changed) = plans::set_user_namespace(&state.pool, id, input.user_namespace).await?;
    if changed {
        record_user_namespace(&state, &req, &s, &p.name, p.user_namespace).await?;
    }
    Ok(flash::redirect(
        "/staff/plans",
        "ok",
        &format!(
            "Plan {} saved; tenants' jails follow within one reconcile.",
            p.name
        ),
    ))
}

/// The audit entry of a change of a plan's user namespace setting.
async fn record_user_namespace(
    state: &AppState,
    req: &HttpRequest,
    s: &SignedIn,
    plan: &str,
    on: bool,
) -> Result<(), WebError> {
    let action = if on {
        "plan.user_namespace_on"
    } else {
        "plan.user_namespace_off"
    };
    record(
        state,
        req,
        s,
        None,
        action,
        plan,
        serde_json::json!({ "user_namespace": on }),
    )
    .await
}

// ---- nodes and audit ---------------------------------------------------------

struct NodeLine {
    name: String,
    state: &'static str,
    heartbeat: String,
    jails: i64,
    running: i64,
    cpu: String,
    memory: String,
    disk: String,
}

#[derive(Template)]
#[template(path = "staff_nodes.html")]
struct NodesPage {
    layout: Layout,
    nodes: Vec<NodeLine>,
}

async fn nodes_page(
    req: HttpRequest,
    state: web::Data<AppState>,
    s: SignedIn,
) -> Result<HttpResponse, WebError> {
    require_staff(&s)?;
    let to_u = |v: i64| u64::try_from(v).unwrap_or(0);
    let nodes = nodes::loads(&state.pool)
        .await?
        .into_iter()
        .map(|n| NodeLine {
            state: if n.is_down() { "down" } else { "up" },
            heartbeat: format!("{} s ago", n.heartbeat_age_secs.max(0)),
            cpu: format!(
                "{} of {} CPU",
                format::cpu(to_u(n.cpu_allocated)).trim_end_matches(" CPU"),
                n.cpus
            ),
            memory: format!(
                "{} of {} ({}%)",
                format::bytes(to_u(n.memory_allocated)),
                format::bytes(to_u(n.memory_bytes)),
                format::percent(to_u(n.memory_allocated), to_u(n.memory_bytes))
            ),
            disk: format!(
                "{} of {}",
                format::bytes(to_u(n.disk_allocated)),
                format::bytes(to_u(n.disk_bytes))
            ),
            jails: n.jails,
            running: n.running,
            name: n.name,
        })
        .collect();
    let layout = Layout::new(&req, &s.0);
    let had_flash = layout.flash.is_some();
    render(StatusCode::OK, &NodesPage { layout, nodes }, had_flash)
}

struct AuditLine {
    at: String,
    at_iso: String,
    actor: String,
    tenant: String,
    action: String,
    target: String,
    addr: String,
}

#[derive(Template)]
#[template(path = "staff_audit.html")]
struct AuditPage {
    layout: Layout,
    entries: Vec<AuditLine>,
    f_tenant: String,
    f_actor: String,
    f_action: String,
    f_since: String,
    next: Option<String>,
}

#[derive(Deserialize)]
struct AuditQuery {
    tenant: Option<String>,
    actor: Option<String>,
    action: Option<String>,
    since: Option<String>,
    before: Option<i64>,
}

async fn audit_page(
    req: HttpRequest,
    state: web::Data<AppState>,
    s: SignedIn,
    q: web::Query<AuditQuery>,
) -> Result<HttpResponse, WebError> {
    require_staff(&s)?;
    let since = q
        .since
        .as_deref()
        .and_then(|d| chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").ok())
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|d| d.and_utc());
    let filter = audit::Filter {
        tenant: q.tenant.clone(),
        actor: q.actor.clone(),
        action: q.action.clone(),
        since,
        until: None,
    };
    let entries = audit::list(&state.pool, &filter, q.before, PAGE).await?;
    let enc = |s: &Option<String>| format::url_encode(s.as_deref().unwrap_or_default());
    let next = (entries.len() == usize::try_from(PAGE).unwrap_or(50)).then(|| {
        format!(
            "/staff/audit?tenant={}&actor={}&action={}&since={}&before={}",
            enc(&q.tenant),
            enc(&q.actor),
            enc(&q.action),
            enc(&q.since),
            entries.last().map_or(0, |e| e.id)
        )
    });
    let layout = Layout::new(&req, &s.0);
    let had_flash = layout.flash.is_some();
    let page = AuditPage {
        layout,
        entries: entries
            .into_iter()
            .map(|e| AuditLine {
                at: e.at.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
                at_iso: e.at.to_rfc3339(),
                actor: e.actor,
                tenant: e.tenant.unwrap_or_default(),
                action: e.action,
                target: e.target,
                addr: e.client_addr.unwrap_or_default(),
            })
            .collect(),
        f_tenant: q.tenant.clone().unwrap_or_default(),
        f_actor: q.actor.clone().unwrap_or_default(),
        f_action: q.action.clone().unwrap_or_default(),
        f_since: q.since.clone().unwrap_or_default(),
        next,
    };
    render(StatusCode::OK, &page, had_flash)
}
