//! Plans: their list, making and changing them.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use askama::Template;
use serde::Deserialize;
use stockade_domain::{ByteSize, Millicores, Role, TenantSlug};
use stockade_store::StoreError;
use stockade_store::plans::{self, PlanInput, Quota};
use uuid::Uuid;

use super::parse_id;
use crate::auth::SignedIn;
use crate::format;
use crate::pages::{Layout, record, render, require_admin, require_staff};
use crate::{AppState, WebError, flash};

pub(super) struct PlanLine {
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
    outbound_nat: bool,
    published_ports: u32,
    snapshots: u32,
    backup_days: u32,
}

#[derive(Deserialize, Default, Clone)]
pub(super) struct PlanForm {
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
    /// Ticked: the plan's jails reach the world through NAT.
    #[serde(default)]
    outbound_nat: Option<String>,
    /// Ports its tenants may publish.
    #[serde(default)]
    published_ports: String,
    /// Snapshots each jail keeps.
    #[serde(default)]
    snapshots: String,
    /// Days each jail's daily backup is kept (0: none).
    #[serde(default)]
    backup_days: String,
}

impl PlanForm {
    /// An empty form for a new plan, with the defaults ticked.
    fn new_plan() -> Self {
        let network = plans::PlanNetwork::default();
        PlanForm {
            outbound_nat: network.outbound_nat.then(|| "on".to_owned()),
            published_ports: network.max_published_ports.to_string(),
            snapshots: "3".into(),
            backup_days: "0".into(),
            ..PlanForm::default()
        }
    }
}

impl PlanForm {
    /// The snapshots each jail keeps, as typed (0 to 100); left empty, as
    /// it was (3 for a new plan).
    fn snapshots_per_jail(&self, current: u32) -> Result<u32, String> {
        if self.snapshots.trim().is_empty() {
            return Ok(current);
        }
        match self.snapshots.trim().parse::<u32>() {
            Ok(n) if n <= 100 => Ok(n),
            _ => Err(format!(
                "snapshots per jail: {:?} is not a whole number from 0 to 100",
                self.snapshots
            )),
        }
    }
}

impl PlanForm {
    /// The days daily backups are kept, as typed (0 to 365; 0 takes none);
    /// left empty, as it was.
    fn backup_days(&self, current: u32) -> Result<u32, String> {
        if self.backup_days.trim().is_empty() {
            return Ok(current);
        }
        match self.backup_days.trim().parse::<u32>() {
            Ok(n) if n <= 365 => Ok(n),
            _ => Err(format!(
                "daily backups kept: {:?} is not a number of days from 0 to 365",
                self.backup_days
            )),
        }
    }
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
            network: plans::PlanNetwork {
                outbound_nat: f.outbound_nat.is_some(),
                max_published_ports: count("published ports", &f.published_ports)?,
            },
        })
    }
}

#[derive(Template)]
#[template(path = "staff_plans.html")]
pub(super) struct PlansPage {
    layout: Layout,
    plans: Vec<PlanLine>,
    can_admin: bool,
    editing: Option<Uuid>,
    form_action: String,
    form: PlanForm,
    error: Option<String>,
}

pub(super) async fn plans_view(
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
                outbound_nat: p.outbound_nat,
                published_ports: p.max_published_ports,
                snapshots: p.snapshots_per_jail,
                backup_days: p.backup_days,
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

pub(super) async fn plans_page(
    req: HttpRequest,
    state: web::Data<AppState>,
    s: SignedIn,
) -> Result<HttpResponse, WebError> {
    require_staff(&s)?;
    plans_view(&req, &state, &s, None, PlanForm::new_plan(), None).await
}

pub(super) async fn edit_plan_page(
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
        outbound_nat: p.outbound_nat.then(|| "on".to_owned()),
        published_ports: p.max_published_ports.to_string(),
        snapshots: p.snapshots_per_jail.to_string(),
        backup_days: p.backup_days.to_string(),
    };
    plans_view(&req, &state, &s, Some(p.id), form, None).await
}

pub(super) async fn create_plan(
    req: HttpRequest,
    state: web::Data<AppState>,
    s: SignedIn,
    form: web::Form<PlanForm>,
) -> Result<HttpResponse, WebError> {
    require_admin(&s)?;
    s.check_csrf(&form.csrf_token)?;
    let typed = form.into_inner();
    let input = PlanInput::try_from(&typed)
        .and_then(|i| Ok((i, typed.snapshots_per_jail(3)?, typed.backup_days(0)?)));
    let (input, snapshots, days) = match input {
        Ok(i) => i,
        Err(msg) => return plans_view(&req, &state, &s, None, typed, Some(msg)).await,
    };
    match plans::create(&state.pool, &input).await {
        Ok(p) => {
            plans::set_snapshots_per_jail(&state.pool, p.id, snapshots).await?;
            let p = plans::set_backup_days(&state.pool, p.id, days).await?;
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

pub(super) async fn update_plan(
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
    let input = PlanInput::try_from(&typed).and_then(|i| {
        Ok((
            i,
            typed.snapshots_per_jail(current.snapshots_per_jail)?,
            typed.backup_days(current.backup_days)?,
        ))
    });
    let (input, snapshots, days) = match input {
        Ok(i) => i,
        Err(msg) => return plans_view(&req, &state, &s, Some(id), typed, Some(msg)).await,
    };
    if days != current.backup_days {
        let p = plans::set_backup_days(&state.pool, id, days).await?;
        record(
            &state,
            &req,
            &s,
            None,
            "plan.backups",
            &p.name,
            serde_json::json!({ "backup_days": days }),
        )
        .await?;
    }
    if snapshots != current.snapshots_per_jail {
        let p = plans::set_snapshots_per_jail(&state.pool, id, snapshots).await?;
        record(
            &state,
            &req,
            &s,
            None,
            "plan.snapshots",
            &p.name,
            serde_json::json!({ "snapshots_per_jail": snapshots }),
        )
        .await?;
    }
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
    let (p, changed) = plans::set_network(&state.pool, id, input.network).await?;
    if changed {
        record(
            &state,
            &req,
            &s,
            None,
            "plan.network",
            &p.name,
            serde_json::json!({
                "outbound_nat": p.outbound_nat,
                "max_published_ports": p.max_published_ports,
            }),
        )
        .await?;
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
pub(super) async fn record_user_namespace(
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
