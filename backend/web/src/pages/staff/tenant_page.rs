//! One tenant: its page, quota overrides, plan, users and status.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use askama::Template;
use serde::Deserialize;
use stockade_domain::{ByteSize, Email, Millicores, Role};
use stockade_store::plans::{self};
use stockade_store::tenants::{self, Overrides};
use stockade_store::{StoreError, jails, users};
use uuid::Uuid;

use super::parse_id;
use crate::auth::SignedIn;
use crate::pages::customer::{ConfirmPage, JailRow};
use crate::pages::{
    ActionForm, Layout, QuotaTile, quota_tiles, record, render, require_admin, require_staff,
};
use crate::{AppState, WebError, flash};

#[derive(Template)]
#[template(path = "staff_tenant.html")]
pub(super) struct TenantPage {
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
    o_ports: String,
    o_nat: &'static str,
    p_cpu: String,
    p_memory: String,
    p_pids: String,
    p_disk: String,
    p_jails: String,
    p_transfer: String,
    p_ports: u32,
    p_nat: bool,
    ports: Vec<PortLine>,
    /// Domains: id, name, proven.
    domains: Vec<(Uuid, String, bool)>,
}

/// A published port of the tenant, as its page lists them.
pub(super) struct PortLine {
    pub(super) jail: String,
    pub(super) node_port: String,
    pub(super) jail_port: u16,
}

pub(super) async fn tenant_page(
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
    let ports = jails
        .iter()
        .flat_map(|j| {
            j.published.iter().map(|p| PortLine {
                jail: j.name.to_string(),
                node_port: format!("{}/{}", p.host_port, p.protocol),
                jail_port: p.jail_port,
            })
        })
        .collect();
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
        o_ports: o
            .max_published_ports
            .map(|p| p.to_string())
            .unwrap_or_default(),
        o_nat: match o.outbound_nat {
            None => "",
            Some(true) => "on",
            Some(false) => "off",
        },
        p_cpu: Millicores(plan.quota.cpu_millicores).to_string(),
        p_memory: ByteSize(plan.quota.memory_bytes).to_string(),
        p_pids: plan.quota.pids.to_string(),
        p_disk: ByteSize(plan.quota.disk_bytes).to_string(),
        p_jails: plan.quota.max_jails.to_string(),
        p_transfer: ByteSize(plan.quota.monthly_transfer_bytes).to_string(),
        p_ports: plan.max_published_ports,
        p_nat: plan.outbound_nat,
        ports,
        domains: stockade_store::domains::for_tenant(&state.pool, id)
            .await?
            .into_iter()
            .map(|d| (d.id, d.name, d.verified))
            .collect(),
    };
    render(StatusCode::OK, &page, had_flash)
}

#[derive(Deserialize)]
pub(super) struct OverridesForm {
    csrf_token: String,
    cpu: String,
    memory: String,
    pids: String,
    disk: String,
    max_jails: String,
    transfer: String,
    #[serde(default)]
    published_ports: String,
    /// `on`, `off` or empty (as the plan says).
    #[serde(default)]
    outbound_nat: String,
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
            outbound_nat: match f.outbound_nat.trim() {
                "" => None,
                "on" => Some(true),
                "off" => Some(false),
                other => {
                    return Err(format!(
                        "outbound access: {other:?} is not on, off or as the plan says"
                    ));
                }
            },
            max_published_ports: count("published ports", &f.published_ports)?,
        })
    }
}

pub(super) async fn set_overrides(
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
    let before = tenants::overrides(&state.pool, id).await?;
    tenants::set_overrides(&state.pool, id, &o).await?;
    let t = tenants::get(&state.pool, id).await?;
    record(
        &state,
        &req,
        &s,
        Some(id),
        "tenant.quota_override",
        t.slug.as_str(),
        serde_json::json!({ "before": before, "after": o }),
    )
    .await?;
    Ok(flash::redirect(
        &here,
        "ok",
        "Quota overrides saved; running jails follow within one reconcile.",
    ))
}

#[derive(Deserialize)]
pub(super) struct PlanChoice {
    csrf_token: String,
    plan: String,
}

pub(super) async fn change_plan(
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
    let before = tenants::get(&state.pool, id).await?;
    match tenants::change_plan(&state.pool, id, plan_id).await {
        Ok(t) => {
            record(
                &state,
                &req,
                &s,
                Some(id),
                "tenant.plan_change",
                t.slug.as_str(),
                serde_json::json!({
                    "before": { "plan": before.plan_name },
                    "after": { "plan": t.plan_name },
                }),
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
pub(super) struct NewUserForm {
    csrf_token: String,
    email: String,
}

pub(super) async fn create_user(
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

pub(super) async fn reset_password(
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
    // A link the user follows to choose a password: staff never know it.
    let token = users::create_password_reset(&state.pool, id, Some(s.0.user.id)).await?;
    record(
        &state,
        &req,
        &s,
        user.tenant_id,
        "user.password_reset",
        user.email.as_str(),
        serde_json::json!({ "link_valid_hours": users::RESET_HOURS }),
    )
    .await?;
    let back = user.tenant_id.map_or("/staff/tenants".to_owned(), |t| {
        format!("/staff/tenants/{t}")
    });
    let link = format!(
        "{}/reset/{token}",
        state.settings.public_url.trim_end_matches('/')
    );
    Ok(flash::redirect(
        &back,
        "ok",
        &format!(
            "One-time link for {} to choose a new password (works once, for {} hours; their sessions were ended; shown once): {link}",
            user.email,
            users::RESET_HOURS
        ),
    ))
}

/// Who may change a tenant's status how.
pub(super) fn status_action(
    action: &str,
    s: &SignedIn,
) -> Result<(&'static str, &'static str), WebError> {
    match action {
        "suspend" => require_staff(s).map(|()| ("suspend", "Suspend")),
        "unsuspend" => require_staff(s).map(|()| ("unsuspend", "Unsuspend")),
        "terminate" => require_admin(s).map(|()| ("terminate", "Terminate")),
        _ => Err(WebError::NotFound),
    }
}

pub(super) async fn confirm_status(
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
        reason: verb == "suspend",
    };
    render(StatusCode::OK, &page, false)
}

pub(super) async fn change_status(
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
    let reason = form
        .reason
        .as_deref()
        .map(str::trim)
        .filter(|r| !r.is_empty());
    let before = tenants::get(&state.pool, id).await?;
    let result = match verb {
        "suspend" => tenants::suspend(&state.pool, id, reason).await,
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
                serde_json::json!({
                    "before": { "status": before.status.as_str(), "reason": before.suspension_reason },
                    "after": { "status": t.status.as_str(), "reason": t.suspension_reason },
                }),
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
        Err(StoreError::Invalid { field, message }) => Ok(flash::redirect(
            &here,
            "error",
            &format!("Cannot {verb}: {field}: {message}."),
        )),
        Err(e) => Err(e.into()),
    }
}

pub(super) async fn waive_proof(
    req: HttpRequest,
    state: web::Data<AppState>,
    s: SignedIn,
    path: web::Path<(String, String)>,
    form: web::Form<ActionForm>,
) -> Result<HttpResponse, WebError> {
    require_admin(&s)?;
    s.check_csrf(&form.csrf_token)?;
    let (tenant, domain) = path.into_inner();
    let id = parse_id(&tenant)?;
    let by = s.0.user.email.to_string();
    let d = stockade_store::domains::mark_verified(&state.pool, id, parse_id(&domain)?, Some(&by))
        .await?;
    record(
        &state,
        &req,
        &s,
        Some(id),
        "domain.proof_waived",
        &d.name,
        serde_json::json!({ "domain_id": d.id }),
    )
    .await?;
    Ok(flash::redirect(
        &format!("/staff/tenants/{id}"),
        "ok",
        &format!("Proof of {} waived; it routes now.", d.name),
    ))
}
