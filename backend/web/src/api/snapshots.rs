//! `/api/v1/tenants/{tenant_id}/jails/{jail_id}/snapshots`: snapshots of a
//! jail's volume, taken by its node (the volume frozen for the moment of
//! the copy), restored into the jail, removed. A plan sets how many each
//! jail keeps; their size counts against the tenant's disk quota.

use actix_web::{HttpRequest, HttpResponse, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use stockade_store::snapshots::{self, Snapshot};
use utoipa::ToSchema;
use uuid::Uuid;

use super::auth::{Authorized, JailsRead, JailsWrite};
use super::error::ApiError;
use super::resource;
use super::tenants::record;
use crate::AppState;

pub(crate) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        resource("/tenants/{tenant_id}/jails/{jail_id}/snapshots")
            .route(web::get().to(list))
            .route(web::post().to(take)),
    )
    .service(
        resource("/tenants/{tenant_id}/jails/{jail_id}/snapshots/{snapshot_id}")
            .route(web::delete().to(delete)),
    )
    .service(
        resource("/tenants/{tenant_id}/jails/{jail_id}/snapshots/{snapshot_id}/restore")
            .route(web::post().to(restore)),
    );
}

/// A snapshot of a jail's volume.
#[derive(Debug, Serialize, ToSchema)]
pub struct SnapshotOut {
    /// Stable id.
    pub id: Uuid,
    /// Its name in the jail.
    pub name: String,
    /// `pending` (asked for), `ready` (taken, can be restored), `failed`
    /// (see `error`), `deleting`.
    pub state: String,
    /// Bytes it takes on its node once taken (the admitted estimate before);
    /// counted against the disk quota.
    pub size_bytes: u64,
    /// Why its node could not take it.
    pub error: Option<String>,
    /// When it was asked for.
    pub created_at: DateTime<Utc>,
    /// When it was taken.
    pub taken_at: Option<DateTime<Utc>>,
    /// The jail is being restored to it.
    pub restoring: bool,
}

impl From<Snapshot> for SnapshotOut {
    fn from(s: Snapshot) -> Self {
        SnapshotOut {
            id: s.id,
            name: s.name,
            state: s.state.as_str().to_owned(),
            size_bytes: s.size_bytes,
            error: s.error,
            created_at: s.created_at,
            taken_at: s.taken_at,
            restoring: s.restoring,
        }
    }
}

/// A jail's snapshots.
#[derive(Debug, Serialize, ToSchema)]
pub struct SnapshotList {
    /// Newest first.
    pub data: Vec<SnapshotOut>,
    /// How many snapshots the plan keeps per jail.
    pub per_jail: u32,
}

/// A snapshot to take.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewSnapshot {
    /// 1 to 64 letters, digits, `.`, `_` or `-`; absent: the moment's
    /// date and time (`2026-12-01-171500`).
    #[serde(default)]
    #[schema(max_length = 64, pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
    pub name: Option<String>,
}

/// Lists a jail's snapshots.
#[utoipa::path(get, path = "/api/v1/tenants/{tenant_id}/jails/{jail_id}/snapshots", tag = "jails",
    params(("tenant_id" = Uuid, Path, description = "Tenant id"),
           ("jail_id" = Uuid, Path, description = "Jail id")),
    responses((status = 200, description = "The jail's snapshots", body = SnapshotList)),
    security(("bearer" = ["jails:read"])))]
pub(crate) async fn list(
    Authorized(caller, _): Authorized<JailsRead>,
    path: web::Path<(Uuid, Uuid)>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (tenant_id, jail_id) = path.into_inner();
    caller.see_tenant(tenant_id)?;
    let l = snapshots::list(&state.pool, tenant_id, jail_id).await?;
    Ok(HttpResponse::Ok().json(SnapshotList {
        data: l.snapshots.into_iter().map(SnapshotOut::from).collect(),
        per_jail: l.per_jail,
    }))
}

/// Asks the jail's node to snapshot its volume, running or not: answered at
/// once with the snapshot `pending`; it is `ready` within moments. Refused
/// past the plan's snapshots per jail or the disk quota.
#[utoipa::path(post, path = "/api/v1/tenants/{tenant_id}/jails/{jail_id}/snapshots", tag = "jails",
    params(("tenant_id" = Uuid, Path, description = "Tenant id"),
           ("jail_id" = Uuid, Path, description = "Jail id")),
    request_body(content = NewSnapshot, description = "May be empty"),
    responses((status = 202, description = "Asked for", body = SnapshotOut)),
    security(("bearer" = ["jails:write"])))]
pub(crate) async fn take(
    Authorized(caller, _): Authorized<JailsWrite>,
    path: web::Path<(Uuid, Uuid)>,
    body: Option<web::Json<NewSnapshot>>,
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let (tenant_id, jail_id) = path.into_inner();
    caller.see_tenant(tenant_id)?;
    let body = body.map(web::Json::into_inner).unwrap_or_default();
    let s = snapshots::request(&state.pool, tenant_id, jail_id, body.name.as_deref(), None).await?;
    record(
        &state,
        &req,
        &caller,
        Some(tenant_id),
        "snapshot.request",
        &s.id.to_string(),
    )
    .await?;
    Ok(HttpResponse::Accepted()
        .insert_header((
            "Location",
            format!(
                "/api/v1/tenants/{tenant_id}/jails/{jail_id}/snapshots/{}",
                s.id
            ),
        ))
        .json(SnapshotOut::from(s)))
}

/// Restores the jail to a taken snapshot: it stops, its volume returns to
/// the snapshot (what was written since is lost) and it runs again if it
/// was meant to. The snapshot stays.
#[utoipa::path(post, path = "/api/v1/tenants/{tenant_id}/jails/{jail_id}/snapshots/{snapshot_id}/restore", tag = "jails",
    params(("tenant_id" = Uuid, Path, description = "Tenant id"),
           ("jail_id" = Uuid, Path, description = "Jail id"),
           ("snapshot_id" = Uuid, Path, description = "Snapshot id")),
    responses((status = 202, description = "Restore asked for")),
    security(("bearer" = ["jails:write"])))]
pub(crate) async fn restore(
    Authorized(caller, _): Authorized<JailsWrite>,
    path: web::Path<(Uuid, Uuid, Uuid)>,
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let (tenant_id, jail_id, snapshot_id) = path.into_inner();
    caller.see_tenant(tenant_id)?;
    snapshots::restore(&state.pool, tenant_id, jail_id, snapshot_id).await?;
    record(
        &state,
        &req,
        &caller,
        Some(tenant_id),
        "snapshot.restore",
        &snapshot_id.to_string(),
    )
    .await?;
    Ok(HttpResponse::Accepted().finish())
}

/// Removes a snapshot; its bytes stop counting once its node removed it.
#[utoipa::path(delete, path = "/api/v1/tenants/{tenant_id}/jails/{jail_id}/snapshots/{snapshot_id}", tag = "jails",
    params(("tenant_id" = Uuid, Path, description = "Tenant id"),
           ("jail_id" = Uuid, Path, description = "Jail id"),
           ("snapshot_id" = Uuid, Path, description = "Snapshot id")),
    responses((status = 202, description = "Removal asked for")),
    security(("bearer" = ["jails:write"])))]
pub(crate) async fn delete(
    Authorized(caller, _): Authorized<JailsWrite>,
    path: web::Path<(Uuid, Uuid, Uuid)>,
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let (tenant_id, jail_id, snapshot_id) = path.into_inner();
    caller.see_tenant(tenant_id)?;
    snapshots::delete(&state.pool, tenant_id, jail_id, snapshot_id).await?;
    record(
        &state,
        &req,
        &caller,
        Some(tenant_id),
        "snapshot.delete",
        &snapshot_id.to_string(),
    )
    .await?;
    Ok(HttpResponse::Accepted().finish())
}
