//! Backups of a tenant's jails, kept off the node in the provider's backup
//! target: taken on demand (`POST …/jails/{jail_id}/backups`) or daily by
//! the plan, listed, restored into the same jail or a new one on any node,
//! removed.

use actix_web::{HttpRequest, HttpResponse, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use stockade_domain::JailName;
use stockade_store::backups::{self, Backup};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::auth::{Authorized, JailsRead, JailsWrite};
use super::error::ApiError;
use super::resource;
use super::tenants::record;
use crate::AppState;

pub(crate) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/tenants/{tenant_id}/backups").route(web::get().to(list)))
        .service(
            resource("/tenants/{tenant_id}/jails/{jail_id}/backups").route(web::post().to(take)),
        )
        .service(
            resource("/tenants/{tenant_id}/backups/{backup_id}")
                .route(web::get().to(get))
                .route(web::delete().to(delete)),
        )
        .service(
            resource("/tenants/{tenant_id}/backups/{backup_id}/restore")
                .route(web::post().to(restore)),
        )
        .service(
            resource("/tenants/{tenant_id}/backups/{backup_id}/download")
                .route(web::get().to(download)),
        );
}

/// Downloads a finished backup: the jail's volume image compressed with
/// zstd (`zstd -d` gives an ext4 image to mount with `mount -o loop`).
/// 409 unless it is finished; 503 when no node that reads the backups is up.
#[utoipa::path(get, path = "/api/v1/tenants/{tenant_id}/backups/{backup_id}/download", tag = "jails",
    params(("tenant_id" = Uuid, Path, description = "Tenant id"),
           ("backup_id" = Uuid, Path, description = "Backup id")),
    responses((status = 200, description = "The compressed volume", content_type = "application/zstd")),
    security(("bearer" = ["jails:read"])))]
pub(crate) async fn download(
    Authorized(caller, _): Authorized<JailsRead>,
    path: web::Path<(Uuid, Uuid)>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (tenant_id, backup_id) = path.into_inner();
    caller.see_tenant(tenant_id)?;
    let b = backups::get(&state.pool, tenant_id, backup_id).await?;
    let name = format!("{}-{}", b.jail_name, b.created_at.format("%Y%m%d-%H%M%S"));
    crate::output::backup_download(&state, tenant_id, backup_id, &name)
        .await
        .map_err(|e| match e {
            crate::output::OutputError::NotFound => ApiError::NotFound,
            crate::output::OutputError::Store(e) => e.into(),
            crate::output::OutputError::Invalid(m) => ApiError::Conflict {
                code: "not_ready",
                message: m,
            },
            crate::output::OutputError::NotServed(m)
            | crate::output::OutputError::Unavailable(m) => ApiError::NodeUnavailable(m),
        })
}

/// A backup of a jail.
#[derive(Debug, Serialize, ToSchema)]
pub struct BackupOut {
    /// Stable id.
    pub id: Uuid,
    /// The jail it was taken of, while that jail exists.
    pub jail_id: Option<Uuid>,
    /// That jail's name when it was taken.
    pub jail_name: String,
    /// `pending` (being taken), `ready`, `failed` (see `error`), `deleting`.
    pub state: String,
    /// Taken by the plan's daily schedule; removed after `expires_at`.
    pub scheduled: bool,
    /// The volume's length.
    pub volume_bytes: u64,
    /// What the backup target holds of it, compressed: billed as stored.
    pub size_bytes: u64,
    /// Why it failed.
    pub error: Option<String>,
    /// When it was asked for.
    pub created_at: DateTime<Utc>,
    /// When it was done.
    pub finished_at: Option<DateTime<Utc>>,
    /// When a scheduled backup is removed.
    pub expires_at: Option<DateTime<Utc>>,
}

impl From<Backup> for BackupOut {
    fn from(b: Backup) -> Self {
        BackupOut {
            id: b.id,
            jail_id: b.jail_id,
            jail_name: b.jail_name,
            state: b.state,
            scheduled: b.scheduled,
            volume_bytes: b.volume_bytes,
            size_bytes: b.size_bytes,
            error: b.error,
            created_at: b.created_at,
            finished_at: b.finished_at,
            expires_at: b.expires_at,
        }
    }
}

/// The tenant's backups.
#[derive(Debug, Serialize, ToSchema)]
pub struct BackupList {
    /// Newest first.
    pub data: Vec<BackupOut>,
    /// Bytes the backup target holds for the tenant (billed).
    pub stored_bytes: u64,
}

/// Which backups to list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only those of this jail.
    pub jail_id: Option<Uuid>,
}

/// Where to restore a backup: the jail it names, or a new jail.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RestoreBackup {
    /// Restore into this jail of the tenant (it stops, its disk becomes the
    /// backup's, it runs again if it was meant to).
    #[serde(default)]
    pub jail_id: Option<Uuid>,
    /// Or make a new jail of this name from the backup (its image, command
    /// and limits then), on whichever node has room.
    #[serde(default)]
    #[schema(pattern = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")]
    pub name: Option<String>,
}

/// Lists the tenant's backups.
#[utoipa::path(get, path = "/api/v1/tenants/{tenant_id}/backups", tag = "jails",
    params(("tenant_id" = Uuid, Path, description = "Tenant id"), ListQuery),
    responses((status = 200, description = "The tenant's backups", body = BackupList)),
    security(("bearer" = ["jails:read"])))]
pub(crate) async fn list(
    Authorized(caller, _): Authorized<JailsRead>,
    path: web::Path<Uuid>,
    query: web::Query<ListQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let tenant_id = path.into_inner();
    caller.see_tenant(tenant_id)?;
    stockade_store::tenants::get(&state.pool, tenant_id).await?;
    let data = backups::list(&state.pool, tenant_id, query.jail_id)
        .await?
        .into_iter()
        .map(BackupOut::from)
        .collect();
    Ok(HttpResponse::Ok().json(BackupList {
        data,
        stored_bytes: backups::stored_bytes(&state.pool, tenant_id).await?,
    }))
}

/// One backup.
#[utoipa::path(get, path = "/api/v1/tenants/{tenant_id}/backups/{backup_id}", tag = "jails",
    params(("tenant_id" = Uuid, Path, description = "Tenant id"),
           ("backup_id" = Uuid, Path, description = "Backup id")),
    responses((status = 200, description = "The backup", body = BackupOut)),
    security(("bearer" = ["jails:read"])))]
pub(crate) async fn get(
    Authorized(caller, _): Authorized<JailsRead>,
    path: web::Path<(Uuid, Uuid)>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (tenant_id, backup_id) = path.into_inner();
    caller.see_tenant(tenant_id)?;
    let b = backups::get(&state.pool, tenant_id, backup_id).await?;
    Ok(HttpResponse::Ok().json(BackupOut::from(b)))
}

/// Backs the jail up now: its node snapshots it (the jail runs on) and
/// streams the snapshot, compressed, to the backup target.
#[utoipa::path(post, path = "/api/v1/tenants/{tenant_id}/jails/{jail_id}/backups", tag = "jails",
    params(("tenant_id" = Uuid, Path, description = "Tenant id"),
           ("jail_id" = Uuid, Path, description = "Jail id")),
    responses((status = 202, description = "Asked for", body = BackupOut)),
    security(("bearer" = ["jails:write"])))]
pub(crate) async fn take(
    Authorized(caller, _): Authorized<JailsWrite>,
    path: web::Path<(Uuid, Uuid)>,
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let (tenant_id, jail_id) = path.into_inner();
    caller.see_tenant(tenant_id)?;
    let b = backups::request(&state.pool, tenant_id, jail_id, None).await?;
    record(
        &state,
        &req,
        &caller,
        Some(tenant_id),
        "backup.request",
        &b.id.to_string(),
    )
    .await?;
    Ok(HttpResponse::Accepted()
        .insert_header((
            "Location",
            format!("/api/v1/tenants/{tenant_id}/backups/{}", b.id),
        ))
        .json(BackupOut::from(b)))
}

/// Restores a backup into one of the tenant's jails (`jail_id`), or as a
/// new jail (`name`) on any node with room.
#[utoipa::path(post, path = "/api/v1/tenants/{tenant_id}/backups/{backup_id}/restore", tag = "jails",
    params(("tenant_id" = Uuid, Path, description = "Tenant id"),
           ("backup_id" = Uuid, Path, description = "Backup id")),
    request_body = RestoreBackup,
    responses((status = 202, description = "Restore asked for")),
    security(("bearer" = ["jails:write"])))]
pub(crate) async fn restore(
    Authorized(caller, _): Authorized<JailsWrite>,
    path: web::Path<(Uuid, Uuid)>,
    body: web::Json<RestoreBackup>,
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let (tenant_id, backup_id) = path.into_inner();
    caller.see_tenant(tenant_id)?;
    let body = body.into_inner();
    let into = match (body.jail_id, body.name.as_deref()) {
        (Some(jail_id), None) => {
            backups::restore_into(&state.pool, tenant_id, jail_id, backup_id).await?;
            jail_id
        }
        (None, Some(name)) => {
            let name =
                JailName::parse(name.trim()).map_err(|e| ApiError::field("name", &e.reason))?;
            backups::restore_as_new(&state.pool, tenant_id, backup_id, &name)
                .await?
                .id
        }
        _ => {
            return Err(ApiError::field(
                "jail_id",
                "give either jail_id (an existing jail) or name (a new jail)",
            ));
        }
    };
    record(
        &state,
        &req,
        &caller,
        Some(tenant_id),
        "backup.restore",
        &backup_id.to_string(),
    )
    .await?;
    Ok(HttpResponse::Accepted()
        .insert_header((
            "Location",
            format!("/api/v1/tenants/{tenant_id}/jails/{into}"),
        ))
        .json(serde_json::json!({ "jail_id": into })))
}

/// Removes a backup from the backup target.
#[utoipa::path(delete, path = "/api/v1/tenants/{tenant_id}/backups/{backup_id}", tag = "jails",
    params(("tenant_id" = Uuid, Path, description = "Tenant id"),
           ("backup_id" = Uuid, Path, description = "Backup id")),
    responses((status = 202, description = "Removal asked for")),
    security(("bearer" = ["jails:write"])))]
pub(crate) async fn delete(
    Authorized(caller, _): Authorized<JailsWrite>,
    path: web::Path<(Uuid, Uuid)>,
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let (tenant_id, backup_id) = path.into_inner();
    caller.see_tenant(tenant_id)?;
    backups::delete(&state.pool, tenant_id, backup_id).await?;
    record(
        &state,
        &req,
        &caller,
        Some(tenant_id),
        "backup.delete",
        &backup_id.to_string(),
    )
    .await?;
    Ok(HttpResponse::Accepted().finish())
}
