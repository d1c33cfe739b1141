//! `/api/v1/tenants`: create, list, read, change, suspend, unsuspend, terminate.

use actix_web::{HttpRequest, HttpResponse, web};
use chrono::{DateTime, Utc};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use stockade_domain::{Email, Role, TenantSlug, TenantStatus};
use stockade_store::tenants::{self, Overrides, Tenant};
use stockade_store::{audit, password, users};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::auth::{Authorized, Caller, TenantsRead, TenantsWrite};
use super::error::ApiError;
use super::resource;
use super::types::{Page, PlanRef, check_u32, check_u64, text};
use crate::AppState;
use crate::auth::client_addr;

pub(crate) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        resource("/tenants")
            .route(web::get().to(list))
            .route(web::post().to(create)),
    )
    .service(
        resource("/tenants/{tenant_id}")
            .route(web::get().to(get))
            .route(web::patch().to(update))
            .route(web::delete().to(terminate)),
    )
    .service(resource("/tenants/{tenant_id}/suspend").route(web::post().to(suspend)))
    .service(resource("/tenants/{tenant_id}/unsuspend").route(web::post().to(unsuspend)));
}

/// A tenant.
#[derive(Debug, Serialize, ToSchema)]
pub struct TenantOut {
    /// Stable id.
    pub id: Uuid,
    /// Unique short name.
    pub slug: String,
    /// Name shown in the panel.
    pub display_name: String,
    /// The plan's id.
    pub plan_id: Uuid,
    /// The plan's name.
    pub plan: String,
    /// `active`, `suspended` or `terminated`.
    #[schema(example = "active")]
    pub status: String,
    /// Why it is suspended (while it is), as staff gave it.
    pub suspension_reason: Option<String>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// Per-tenant changes to the plan's quota (absent in lists).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quota_overrides: Option<OverridesBody>,
}

impl From<Tenant> for TenantOut {
    fn from(t: Tenant) -> Self {
        TenantOut {
            id: t.id,
            slug: t.slug.to_string(),
            display_name: t.display_name,
            plan_id: t.plan_id,
            plan: t.plan_name,
            status: t.status.as_str().to_owned(),
            suspension_reason: t.suspension_reason,
            created_at: t.created_at,
            quota_overrides: None,
        }
    }
}

/// Per-tenant quota changes; an absent or null field means "as the plan says".
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OverridesBody {
    /// CPU total, millicores.
    pub cpu_millicores: Option<u32>,
    /// Memory total, bytes.
    pub memory_bytes: Option<u64>,
    /// Process total.
    pub pids: Option<u32>,
    /// Disk total, bytes.
    pub disk_bytes: Option<u64>,
    /// Jail count.
    pub max_jails: Option<u32>,
    /// Monthly transfer, bytes.
    pub monthly_transfer_bytes: Option<u64>,
    /// Outbound access to the world (NAT) for its jails.
    pub outbound_nat: Option<bool>,
    /// Ports its jails may publish on their nodes.
    pub max_published_ports: Option<u32>,
}

impl TryFrom<OverridesBody> for Overrides {
    type Error = ApiError;
    fn try_from(o: OverridesBody) -> Result<Self, ApiError> {
        Ok(Overrides {
            cpu_millicores: o
                .cpu_millicores
                .map(|v| check_u32("cpu_millicores", v))
                .transpose()?,
            memory_bytes: o
                .memory_bytes
                .map(|v| check_u64("memory_bytes", v))
                .transpose()?,
            pids: o.pids.map(|v| check_u32("pids", v)).transpose()?,
            disk_bytes: o
                .disk_bytes
                .map(|v| check_u64("disk_bytes", v))
                .transpose()?,
            max_jails: o.max_jails.map(|v| check_u32("max_jails", v)).transpose()?,
            monthly_transfer_bytes: o
                .monthly_transfer_bytes
                .map(|v| check_u64("monthly_transfer_bytes", v))
                .transpose()?,
            outbound_nat: o.outbound_nat,
            max_published_ports: o
                .max_published_ports
                .map(|v| check_u32("max_published_ports", v))
                .transpose()?,
        })
    }
}

impl From<Overrides> for OverridesBody {
    fn from(o: Overrides) -> Self {
        OverridesBody {
            cpu_millicores: o.cpu_millicores,
            memory_bytes: o.memory_bytes,
            pids: o.pids,
            disk_bytes: o.disk_bytes,
            max_jails: o.max_jails,
            monthly_transfer_bytes: o.monthly_transfer_bytes,
            outbound_nat: o.outbound_nat,
            max_published_ports: o.max_published_ports,
        }
    }
}

/// A new tenant.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTenant {
    /// Unique short name: a-z, 0-9 and inner '-', at most 63 characters.
    #[schema(example = "acme", pattern = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")]
    pub slug: String,
    /// Name shown in the panel.
    #[schema(
        example = "Acme Ltd",
        min_length = 1,
        max_length = 200,
        pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]*[^\\s\\u0000-\\u001f\\u007f-\\u009f][^\\u0000-\\u001f\\u007f-\\u009f]*$"
    )]
    pub display_name: String,
    /// The plan, by name or id.
    #[schema(
        example = "starter",
        pattern = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$|^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
    )]
    pub plan: String,
    /// When given, a customer account for this email is created with the
    /// tenant; its generated password is in the answer, once.
    #[schema(
        max_length = 254,
        pattern = "^[^\\s@\\u0000-\\u001f\\u007f-\\u009f]+@[^\\s@\\u0000-\\u001f\\u007f-\\u009f.]+(\\.[^\\s@\\u0000-\\u001f\\u007f-\\u009f.]+)*$"
    )]
    pub owner_email: Option<String>,
}

struct NewTenant {
    slug: TenantSlug,
    display_name: String,
    plan: PlanRef,
    owner: Option<Email>,
}

impl TryFrom<CreateTenant> for NewTenant {
    type Error = ApiError;
    fn try_from(b: CreateTenant) -> Result<Self, ApiError> {
        Ok(NewTenant {
            slug: TenantSlug::parse(&b.slug)?,
            display_name: text("display_name", &b.display_name, 200)?,
            plan: PlanRef::parse(&b.plan)?,
            owner: b.owner_email.as_deref().map(Email::parse).transpose()?,
        })
    }
}

/// The customer account created with a tenant.
#[derive(Debug, Serialize, ToSchema)]
pub struct OwnerOut {
    /// Account id.
    pub user_id: Uuid,
    /// Sign-in email.
    pub email: String,
    /// Generated password, shown only in this answer; `null` in a replay
    /// (see `secrets_omitted`).
    #[schema(nullable = true)]
    pub password: String,
}

/// A created tenant, and its owner account if one was asked for.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedTenant {
    /// The tenant.
    pub tenant: TenantOut,
    /// The owner account (only when `owner_email` was given).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<OwnerOut>,
    /// In a replay of this answer (`Idempotent-Replayed`): where a secret
    /// shown once was left out (`["owner.password"]`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secrets_omitted: Option<Vec<String>>,
}

pub(crate) async fn record(
    state: &AppState,
    req: &HttpRequest,
    caller: &Caller,
    tenant_id: Option<Uuid>,
    action: &str,
    target: &str,
) -> Result<(), ApiError> {
    let addr = client_addr(req);
    audit::record(
        &state.pool,
        &audit::Entry {
            actor_user_id: None,
            actor: &caller.actor(),
            tenant_id,
            action,
            target,
            client_addr: addr.as_deref(),
            details: serde_json::json!({ "token_id": caller.0.id }),
        },
    )
    .await?;
    Ok(())
}

/// Creates a tenant (and optionally its owner account, in the same transaction).
#[utoipa::path(post, path = "/api/v1/tenants", tag = "tenants",
    request_body = CreateTenant,
    params(("Idempotency-Key" = Option<String>, Header, description = "Replays the first answer for a retry: 1 to 255 visible ASCII characters", pattern = "^[!-~]{1,255}$")),
    responses((status = 201, description = "Created", body = CreatedTenant)),
    security(("bearer" = ["tenants:write"])))]
pub(crate) async fn create(
    Authorized(caller, _): Authorized<TenantsWrite>,
    body: web::Json<CreateTenant>,
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let new = NewTenant::try_from(body.into_inner())?;
    caller.unbound()?;
    let plan = new.plan.resolve(&state.pool).await?;
    let owner_secret = match new.owner {
        Some(ref email) => {
            let password = stockade_store::password::generate();
            let to_hash = password.clone();
            let hash = web::block(move || password::hash(&to_hash))
                .await
                .map_err(anyhow::Error::from)??;
            Some((email.clone(), password, hash))
        }
        None => None,
    };
    let mut tx = state.pool.begin().await.map_err(anyhow::Error::from)?;
    let id = tenants::create_in(&mut tx, &new.slug, &new.display_name, plan.id).await?;
    let owner = match owner_secret {
        Some((email, password, hash)) => {
            let user = users::create_in(&mut tx, &email, &hash, Role::Customer, Some(id)).await?;
            Some(OwnerOut {
                user_id: user.id,
                email: user.email.to_string(),
                password: password.expose_secret().to_owned(),
            })
        }
        None => None,
    };
    tx.commit().await.map_err(anyhow::Error::from)?;
    record(
        &state,
        &req,
        &caller,
        Some(id),
        "tenant.create",
        new.slug.as_str(),
    )
    .await?;
    let tenant = tenants::get(&state.pool, id).await?;
    Ok(HttpResponse::Created()
        .insert_header(("Location", format!("/api/v1/tenants/{id}")))
        .insert_header(("Cache-Control", "no-store"))
        .json(CreatedTenant {
            tenant: tenant.into(),
            owner,
            secrets_omitted: None,
        }))
}

/// Filters and paging of the tenant list.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListTenants {
    /// Only tenants with this status (`active`, `suspended`, `terminated`).
    #[param(pattern = "^(active|suspended|terminated)$")]
    pub status: Option<String>,
    /// Only tenants whose slug or name contains this.
    #[param(
        min_length = 1,
        max_length = 100,
        pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]*$"
    )]
    pub search: Option<String>,
    /// The `next_cursor` of the previous page.
    #[param(min_length = 1, max_length = 100)]
    pub cursor: Option<String>,
    /// Page size, 1 to 500 (default 100).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
}

/// Lists tenants by slug, a page at a time.
#[utoipa::path(get, path = "/api/v1/tenants", tag = "tenants",
    params(ListTenants),
    responses((status = 200, description = "A page of tenants", body = Page<TenantOut>)),
    security(("bearer" = ["tenants:read"])))]
pub(crate) async fn list(
    Authorized(caller, _): Authorized<TenantsRead>,
    query: web::Query<ListTenants>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let q = query.into_inner();
    let status: Option<TenantStatus> = q.status.as_deref().map(str::parse).transpose()?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::field("limit", "must be 1 to 500"));
    }
    let search = q
        .search
        .as_deref()
        .map(|s| text("search", s, 100))
        .transpose()?;
    let cursor = q
        .cursor
        .as_deref()
        .map(|s| text("cursor", s, 100))
        .transpose()?;
    let mut data: Vec<TenantOut> = match caller.tenant() {
        // A bound token's list holds its own tenant at most.
        Some(own) => {
            let t = tenants::get(&state.pool, own).await?;
            let shown = status.is_none_or(|s| s == t.status)
                && search.as_deref().is_none_or(|s| {
                    t.slug.as_str().contains(&s.to_lowercase())
                        || t.display_name.to_lowercase().contains(&s.to_lowercase())
                })
                && cursor.as_deref().is_none_or(|c| t.slug.as_str() > c);
            if shown { vec![t.into()] } else { vec![] }
        }
        None => tenants::list(
            &state.pool,
            status,
            search.as_deref(),
            cursor.as_deref(),
            limit + 1,
        )
        .await?
        .into_iter()
        .map(TenantOut::from)
        .collect(),
    };
    let next_cursor = if data.len() > usize::try_from(limit).unwrap_or(usize::MAX) {
        data.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
        data.last().map(|t| t.slug.clone())
    } else {
        None
    };
    Ok(HttpResponse::Ok().json(Page { data, next_cursor }))
}

async fn detail(state: &AppState, id: Uuid) -> Result<TenantOut, ApiError> {
    let tenant = tenants::get(&state.pool, id).await?;
    let overrides = tenants::overrides(&state.pool, id).await?;
    let mut out = TenantOut::from(tenant);
    out.quota_overrides = Some(overrides.into());
    Ok(out)
}

/// One tenant, with its quota overrides.
#[utoipa::path(get, path = "/api/v1/tenants/{tenant_id}", tag = "tenants",
    params(("tenant_id" = Uuid, Path, description = "Tenant id")),
    responses((status = 200, description = "The tenant", body = TenantOut)),
    security(("bearer" = ["tenants:read"])))]
pub(crate) async fn get(
    Authorized(caller, _): Authorized<TenantsRead>,
    path: web::Path<Uuid>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let id = path.into_inner();
    caller.see_tenant(id)?;
    Ok(HttpResponse::Ok().json(detail(&state, id).await?))
}

/// Changes to a tenant; absent fields stay as they are.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateTenant {
    /// Move to this plan (name or id); jails are brought within its quota.
    #[schema(
        pattern = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$|^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
    )]
    pub plan: Option<String>,
    /// Replace the quota overrides (fields left out or null follow the plan).
    pub quota_overrides: Option<OverridesBody>,
}

/// Changes a tenant's plan and quota overrides (a provider action: a token
/// bound to a tenant is refused with 403).
#[utoipa::path(patch, path = "/api/v1/tenants/{tenant_id}", tag = "tenants",
    params(("tenant_id" = Uuid, Path, description = "Tenant id")),
    request_body = UpdateTenant,
    responses((status = 200, description = "The changed tenant", body = TenantOut),
              (status = 403, description = "A token bound to a tenant: provider action")),
    security(("bearer" = ["tenants:write"])))]
pub(crate) async fn update(
    Authorized(caller, _): Authorized<TenantsWrite>,
    path: web::Path<Uuid>,
    body: web::Json<UpdateTenant>,
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let plan = body.plan.as_deref().map(PlanRef::parse).transpose()?;
    let overrides: Option<Overrides> = body.quota_overrides.map(TryInto::try_into).transpose()?;
    let id = path.into_inner();
    caller.see_tenant(id)?;
    // Plans, quotas and the transfer allowance are what the provider bills:
    // a tenant's own token never changes them.
    caller.unbound()?;
    let tenant = tenants::get(&state.pool, id).await?;
    if tenant.status == TenantStatus::Terminated {
        return Err(ApiError::Conflict {
            code: "invalid_state",
            message: "the tenant is terminated".into(),
        });
    }
    if let Some(plan) = plan {
        let plan = plan.resolve(&state.pool).await?;
        tenants::change_plan(&state.pool, id, plan.id).await?;
    }
    if let Some(o) = overrides {
        tenants::set_overrides(&state.pool, id, &o).await?;
    }
    record(
        &state,
        &req,
        &caller,
        Some(id),
        "tenant.update",
        tenant.slug.as_str(),
    )
    .await?;
    Ok(HttpResponse::Ok().json(detail(&state, id).await?))
}

macro_rules! lifecycle {
    ($name:ident, $store:ident, $method:ident, $path:literal, $action:literal, $doc:literal) => {
        #[doc = $doc]
        #[utoipa::path($method, path = $path, tag = "tenants",
                            params(("tenant_id" = Uuid, Path, description = "Tenant id")),
                            responses((status = 200, description = "The tenant", body = TenantOut),
                                      (status = 403, description = "A token bound to a tenant: provider action")),
                            security(("bearer" = ["tenants:write"])))]
        pub(crate) async fn $name(
            Authorized(caller, _): Authorized<TenantsWrite>,
            path: web::Path<Uuid>,
            state: web::Data<AppState>,
            req: HttpRequest,
        ) -> Result<HttpResponse, ApiError> {
            let id = path.into_inner();
            caller.see_tenant(id)?;
            // Suspension and termination are the provider's to decide.
            caller.unbound()?;
            let tenant = tenants::$store(&state.pool, id).await?;
            record(
                &state,
                &req,
                &caller,
                Some(id),
                $action,
                tenant.slug.as_str(),
            )
            .await?;
            Ok(HttpResponse::Ok().json(TenantOut::from(tenant)))
        }
    };
}

/// Why a tenant is suspended.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SuspendBody {
    /// Shown to the tenant's users (at most 500 characters).
    pub reason: Option<String>,
}

/// Suspends an active tenant: its jails stop until it is unsuspended. The
/// body (optional) gives a reason its users are shown.
#[utoipa::path(post, path = "/api/v1/tenants/{tenant_id}/suspend", tag = "tenants",
    params(("tenant_id" = Uuid, Path, description = "Tenant id")),
    request_body(content = SuspendBody, description = "Optional"),
    responses((status = 200, description = "The tenant", body = TenantOut),
              (status = 403, description = "A token bound to a tenant: provider action")),
    security(("bearer" = ["tenants:write"])))]
pub(crate) async fn suspend(
    Authorized(caller, _): Authorized<TenantsWrite>,
    path: web::Path<Uuid>,
    body: web::Bytes,
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let id = path.into_inner();
    caller.see_tenant(id)?;
    caller.unbound()?;
    let body: SuspendBody = if body.iter().all(u8::is_ascii_whitespace) {
        SuspendBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(format!("body: {e}")))?
    };
    let tenant = tenants::suspend(&state.pool, id, body.reason.as_deref()).await?;
    record(
        &state,
        &req,
        &caller,
        Some(id),
        "tenant.suspend",
        tenant.slug.as_str(),
    )
    .await?;
    Ok(HttpResponse::Ok().json(TenantOut::from(tenant)))
}
lifecycle!(
    unsuspend,
    unsuspend,
    post,
    "/api/v1/tenants/{tenant_id}/unsuspend",
    "tenant.unsuspend",
    "Unsuspends a tenant: each jail gets back the state it wanted before."
);
lifecycle!(
    terminate,
    terminate,
    delete,
    "/api/v1/tenants/{tenant_id}",
    "tenant.terminate",
    "Terminates a tenant: every jail is destroyed; usage stays for billing."
);
