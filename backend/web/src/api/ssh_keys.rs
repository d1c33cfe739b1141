//! `/api/v1/tenants/{tenant_id}/ssh-keys`: the keys a tenant's people and
//! programs log in to its jails with, through the SSH gateway of each
//! jail's node (`ssh <jail>+<tenant>@<node>`).

use actix_web::{HttpRequest, HttpResponse, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use stockade_domain::SshPublicKey;
use stockade_store::ssh_keys::{self, SshKey};
use utoipa::ToSchema;
use uuid::Uuid;

use super::auth::{Authorized, JailsRead, JailsWrite};
use super::error::ApiError;
use super::resource;
use super::tenants::record;
use crate::AppState;

pub(crate) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        resource("/tenants/{tenant_id}/ssh-keys")
            .route(web::get().to(list))
            .route(web::post().to(add)),
    )
    .service(resource("/tenants/{tenant_id}/ssh-keys/{key_id}").route(web::delete().to(remove)));
}

/// A registered SSH public key.
#[derive(Debug, Serialize, ToSchema)]
pub struct SshKeyOut {
    /// Stable id.
    pub id: Uuid,
    /// Its name in the tenant.
    pub name: String,
    /// `TYPE BASE64`, without comment.
    pub public_key: String,
    /// `SHA256:…`, as `ssh-keygen -l` prints it.
    pub fingerprint: String,
    /// When it was added.
    pub created_at: DateTime<Utc>,
    /// When it last opened a session, if ever.
    pub last_used_at: Option<DateTime<Utc>>,
}

impl From<SshKey> for SshKeyOut {
    fn from(k: SshKey) -> Self {
        SshKeyOut {
            id: k.id,
            name: k.name,
            public_key: k.public_key,
            fingerprint: k.fingerprint,
            created_at: k.created_at,
            last_used_at: k.last_used_at,
        }
    }
}

/// The tenant's keys.
#[derive(Debug, Serialize, ToSchema)]
pub struct SshKeyList {
    /// Newest first.
    pub data: Vec<SshKeyOut>,
}

/// A key to register.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewSshKey {
    /// One line of an `authorized_keys` or `.pub` file: `TYPE BASE64
    /// [COMMENT]` (ed25519, ECDSA, RSA of 2048 bits or more, or a security
    /// key's).
    #[schema(max_length = 16384)]
    pub public_key: String,
    /// A name; absent or empty: the key's comment.
    #[serde(default)]
    #[schema(max_length = 100)]
    pub name: Option<String>,
}

/// Lists the tenant's SSH keys.
#[utoipa::path(get, path = "/api/v1/tenants/{tenant_id}/ssh-keys", tag = "jails",
    params(("tenant_id" = Uuid, Path, description = "Tenant id")),
    responses((status = 200, description = "The tenant's keys", body = SshKeyList)),
    security(("bearer" = ["jails:read"])))]
pub(crate) async fn list(
    Authorized(caller, _): Authorized<JailsRead>,
    path: web::Path<Uuid>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let tenant_id = path.into_inner();
    caller.see_tenant(tenant_id)?;
    stockade_store::tenants::get(&state.pool, tenant_id).await?;
    let data = ssh_keys::list(&state.pool, tenant_id)
        .await?
        .into_iter()
        .map(SshKeyOut::from)
        .collect();
    Ok(HttpResponse::Ok().json(SshKeyList { data }))
}

/// Registers an SSH key: it logs in to every running jail of the tenant,
/// as `<jail>+<tenant>` on the jail's node.
#[utoipa::path(post, path = "/api/v1/tenants/{tenant_id}/ssh-keys", tag = "jails",
    params(("tenant_id" = Uuid, Path, description = "Tenant id")),
    request_body = NewSshKey,
    responses((status = 201, description = "Registered", body = SshKeyOut)),
    security(("bearer" = ["jails:write"])))]
pub(crate) async fn add(
    Authorized(caller, _): Authorized<JailsWrite>,
    path: web::Path<Uuid>,
    body: web::Json<NewSshKey>,
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let tenant_id = path.into_inner();
    caller.see_tenant(tenant_id)?;
    let body = body.into_inner();
    let key = SshPublicKey::parse(&body.public_key)
        .map_err(|e| ApiError::field("public_key", &e.reason))?;
    let k = ssh_keys::add(
        &state.pool,
        tenant_id,
        body.name.as_deref().unwrap_or(""),
        &key,
        None,
    )
    .await?;
    record(
        &state,
        &req,
        &caller,
        Some(tenant_id),
        "ssh_key.add",
        &k.name,
    )
    .await?;
    Ok(HttpResponse::Created()
        .insert_header((
            "Location",
            format!("/api/v1/tenants/{tenant_id}/ssh-keys/{}", k.id),
        ))
        .json(SshKeyOut::from(k)))
}

/// Removes an SSH key: no new session opens with it.
#[utoipa::path(delete, path = "/api/v1/tenants/{tenant_id}/ssh-keys/{key_id}", tag = "jails",
    params(("tenant_id" = Uuid, Path, description = "Tenant id"),
           ("key_id" = Uuid, Path, description = "Key id")),
    responses((status = 204, description = "Removed")),
    security(("bearer" = ["jails:write"])))]
pub(crate) async fn remove(
    Authorized(caller, _): Authorized<JailsWrite>,
    path: web::Path<(Uuid, Uuid)>,
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let (tenant_id, key_id) = path.into_inner();
    caller.see_tenant(tenant_id)?;
    let k = ssh_keys::remove(&state.pool, tenant_id, key_id).await?;
    record(
        &state,
        &req,
        &caller,
        Some(tenant_id),
        "ssh_key.remove",
        &k.name,
    )
    .await?;
    Ok(HttpResponse::NoContent().finish())
}
