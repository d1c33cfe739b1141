//! `/api/v1/plans`: list, create, change.

use actix_web::{HttpRequest, HttpResponse, web};
use serde::{Deserialize, Serialize};
use stockade_domain::TenantSlug;
use stockade_store::plans::{self, Plan, PlanInput, Quota};
use utoipa::ToSchema;
use uuid::Uuid;

use super::auth::{Authorized, TenantsRead, TenantsWrite};
use super::error::ApiError;
use super::resource;
use super::tenants::record;
use super::types::{QuotaBody, text};
use crate::AppState;

pub(crate) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        resource("/plans")
            .route(web::get().to(list))
            .route(web::post().to(create)),
    )
    .service(
        resource("/plans/{plan_id}")
            .route(web::get().to(get))
            .route(web::patch().to(update)),
    );
}

/// A plan: a named quota that tenants subscribe to.
#[derive(Debug, Serialize, ToSchema)]
pub struct PlanOut {
    /// Stable id.
    pub id: Uuid,
    /// Unique short name.
    pub name: String,
    /// Name shown to customers.
    pub display_name: String,
    /// What a tenant on this plan may use.
    pub quota: QuotaBody,
    /// Jails of its tenants run in a user namespace of their own: root in a
    /// jail is an unprivileged host uid. Off, root in a jail is host root.
    pub user_namespace: bool,
    /// Jails of its tenants reach the world through their node's NAT.
    pub outbound_nat: bool,
    /// Ports its tenants may publish on their jails' nodes, over all jails.
    pub max_published_ports: u32,
    /// Snapshots each jail of its tenants keeps.
    pub snapshots_per_jail: u32,
    /// Days the daily backups of its tenants' jails are kept (0: no
    /// daily backups).
    pub backup_days: u32,
}

impl From<Plan> for PlanOut {
    fn from(p: Plan) -> Self {
        PlanOut {
            id: p.id,
            name: p.name,
            display_name: p.display_name,
            quota: p.quota.into(),
            user_namespace: p.user_namespace,
            outbound_nat: p.outbound_nat,
            max_published_ports: p.max_published_ports,
            snapshots_per_jail: p.snapshots_per_jail,
            backup_days: p.backup_days,
        }
    }
}

/// Every plan.
#[derive(Debug, Serialize, ToSchema)]
pub struct PlanList {
    /// The plans, by name.
    pub data: Vec<PlanOut>,
}

/// Lists every plan.
#[utoipa::path(get, path = "/api/v1/plans", tag = "plans",
    responses((status = 200, description = "Every plan", body = PlanList)),
    security(("bearer" = ["tenants:read"])))]
pub(crate) async fn list(
    _: Authorized<TenantsRead>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let data = plans::list(&state.pool)
        .await?
        .into_iter()
        .map(PlanOut::from)
        .collect();
    Ok(HttpResponse::Ok().json(PlanList { data }))
}

/// One plan.
#[utoipa::path(get, path = "/api/v1/plans/{plan_id}", tag = "plans",
    params(("plan_id" = Uuid, Path, description = "Plan id")),
    responses((status = 200, description = "The plan", body = PlanOut)),
    security(("bearer" = ["tenants:read"])))]
pub(crate) async fn get(
    _: Authorized<TenantsRead>,
    path: web::Path<Uuid>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let plan = plans::get(&state.pool, path.into_inner()).await?;
    Ok(HttpResponse::Ok().json(PlanOut::from(plan)))
}

/// A new plan.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePlan {
    /// Unique short name: a-z, 0-9 and inner '-'.
    #[schema(example = "pro", pattern = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")]
    pub name: String,
    /// Name shown to customers.
    #[schema(
        example = "Pro",
        min_length = 1,
        max_length = 200,
        pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]*[^\\s\\u0000-\\u001f\\u007f-\\u009f][^\\u0000-\\u001f\\u007f-\\u009f]*$"
    )]
    pub display_name: String,
    /// What a tenant on it may use.
    pub quota: QuotaBody,
    /// Jails of its tenants get a user namespace of their own (default true).
    #[serde(default)]
    pub user_namespace: Option<bool>,
    /// Jails of its tenants reach the world through NAT (default true).
    #[serde(default)]
    pub outbound_nat: Option<bool>,
    /// Ports its tenants may publish (default 4).
    #[serde(default)]
    #[schema(maximum = 2147483647)]
    pub max_published_ports: Option<u32>,
}

impl TryFrom<CreatePlan> for PlanInput {
    type Error = ApiError;
    fn try_from(b: CreatePlan) -> Result<Self, ApiError> {
        let name = TenantSlug::parse(&b.name).map_err(|e| ApiError::field("name", e.reason))?;
        Ok(PlanInput {
            name,
            display_name: text("display_name", &b.display_name, 200)?,
            quota: b.quota.try_into()?,
            user_namespace: b.user_namespace.unwrap_or(true),
            network: network_of(
                plans::PlanNetwork::default(),
                b.outbound_nat,
                b.max_published_ports,
            )?,
        })
    }
}

/// Creates a plan.
#[utoipa::path(post, path = "/api/v1/plans", tag = "plans",
    request_body = CreatePlan,
    params(("Idempotency-Key" = Option<String>, Header, description = "Replays the first answer for a retry: 1 to 255 visible ASCII characters", pattern = "^[!-~]{1,255}$")),
    responses((status = 201, description = "Created", body = PlanOut)),
    security(("bearer" = ["tenants:write"])))]
pub(crate) async fn create(
    Authorized(caller, _): Authorized<TenantsWrite>,
    body: web::Json<CreatePlan>,
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let input = PlanInput::try_from(body.into_inner())?;
    caller.unbound()?;
    let plan = plans::create(&state.pool, &input).await?;
    record(&state, &req, &caller, None, "plan.create", &plan.name).await?;
    if !plan.user_namespace {
        record(&state, &req, &caller, None, USER_NAMESPACE_OFF, &plan.name).await?;
    }
    Ok(HttpResponse::Created()
        .insert_header(("Location", format!("/api/v1/plans/{}", plan.id)))
        .json(PlanOut::from(plan)))
}

/// Changes to a plan; absent fields stay as they are.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdatePlan {
    /// New display name.
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]*[^\\s\\u0000-\\u001f\\u007f-\\u009f][^\\u0000-\\u001f\\u007f-\\u009f]*$"
    )]
    pub display_name: Option<String>,
    /// New quota (whole); tenants' jails are brought within it.
    pub quota: Option<QuotaBody>,
    /// Turns user namespaces on or off for the jails of its tenants; their
    /// running jails are restarted to apply it. Recorded in the audit log.
    pub user_namespace: Option<bool>,
    /// Turns outbound access (NAT) on or off for the jails of its tenants
    /// without an override of their own; running jails follow at once.
    pub outbound_nat: Option<bool>,
    /// Ports its tenants may publish; published ports above a lowered
    /// allowance stay until taken back.
    #[schema(maximum = 2147483647)]
    pub max_published_ports: Option<u32>,
    /// Snapshots each jail of its tenants keeps (0 to 100); snapshots kept
    /// above a lowered count stay until deleted.
    #[schema(maximum = 100)]
    pub snapshots_per_jail: Option<u32>,
    /// Days each jail's daily backup is kept (0 to 365; 0: none taken).
    #[schema(maximum = 365)]
    pub backup_days: Option<u32>,
}

/// `current` with what the request changes.
fn network_of(
    current: plans::PlanNetwork,
    outbound_nat: Option<bool>,
    max_published_ports: Option<u32>,
) -> Result<plans::PlanNetwork, ApiError> {
    Ok(plans::PlanNetwork {
        outbound_nat: outbound_nat.unwrap_or(current.outbound_nat),
        max_published_ports: max_published_ports
            .map(|v| super::types::check_u32("max_published_ports", v))
            .transpose()?
            .unwrap_or(current.max_published_ports),
    })
}

/// The audit actions of a plan's user namespace setting.
pub(crate) const USER_NAMESPACE_OFF: &str = "plan.user_namespace_off";
pub(crate) const USER_NAMESPACE_ON: &str = "plan.user_namespace_on";

/// Changes a plan's name shown to customers, its quota or whether its
/// tenants' jails get user namespaces.
#[utoipa::path(patch, path = "/api/v1/plans/{plan_id}", tag = "plans",
    params(("plan_id" = Uuid, Path, description = "Plan id")),
    request_body = UpdatePlan,
    responses((status = 200, description = "The changed plan", body = PlanOut)),
    security(("bearer" = ["tenants:write"])))]
pub(crate) async fn update(
    Authorized(caller, _): Authorized<TenantsWrite>,
    path: web::Path<Uuid>,
    body: web::Json<UpdatePlan>,
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let display_name = body
        .display_name
        .as_deref()
        .map(|d| text("display_name", d, 200))
        .transpose()?;
    let quota: Option<Quota> = body.quota.map(TryInto::try_into).transpose()?;
    // Refused before anything changes.
    if let Some(n) = body.snapshots_per_jail
        && n > 100
    {
        return Err(ApiError::field("snapshots_per_jail", "at most 100"));
    }
    if let Some(n) = body.backup_days
        && n > 365
    {
        return Err(ApiError::field("backup_days", "at most 365"));
    }
    network_of(
        plans::PlanNetwork::default(),
        body.outbound_nat,
        body.max_published_ports,
    )?;
    caller.unbound()?;
    let current = plans::get(&state.pool, path.into_inner()).await?;
    let plan = plans::update(
        &state.pool,
        current.id,
        display_name.as_deref().unwrap_or(&current.display_name),
        &quota.unwrap_or(current.quota),
    )
    .await?;
    record(&state, &req, &caller, None, "plan.update", &plan.name).await?;
    let plan = match body.user_namespace {
        Some(on) => {
            let (plan, changed) = plans::set_user_namespace(&state.pool, plan.id, on).await?;
            if changed {
                let action = if on {
                    USER_NAMESPACE_ON
                } else {
                    USER_NAMESPACE_OFF
                };
                record(&state, &req, &caller, None, action, &plan.name).await?;
            }
            plan
        }
        None => plan,
    };
    let plan = if body.outbound_nat.is_some() || body.max_published_ports.is_some() {
        let asked = network_of(
            plans::PlanNetwork {
                outbound_nat: plan.outbound_nat,
                max_published_ports: plan.max_published_ports,
            },
            body.outbound_nat,
            body.max_published_ports,
        )?;
        let (plan, changed) = plans::set_network(&state.pool, plan.id, asked).await?;
        if changed {
            record(&state, &req, &caller, None, "plan.network", &plan.name).await?;
        }
        plan
    } else {
        plan
    };
    let plan = match body.snapshots_per_jail {
        Some(n) if n != plan.snapshots_per_jail => {
            let plan = plans::set_snapshots_per_jail(&state.pool, plan.id, n).await?;
            record(&state, &req, &caller, None, "plan.snapshots", &plan.name).await?;
            plan
        }
        _ => plan,
    };
    let plan = match body.backup_days {
        Some(n) if n != plan.backup_days => {
            let plan = plans::set_backup_days(&state.pool, plan.id, n).await?;
            record(&state, &req, &caller, None, "plan.backups", &plan.name).await?;
            plan
        }
        _ => plan,
    };
    Ok(HttpResponse::Ok().json(PlanOut::from(plan)))
}
