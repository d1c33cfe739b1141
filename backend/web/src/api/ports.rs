//! `/api/v1/tenants/{tenant_id}/jails/{jail_id}/ports`: a jail's ports
//! published on its node.

use actix_web::{HttpRequest, HttpResponse, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use stockade_domain::Protocol;
use stockade_store::ports::{self, NewPort, PublishedPort};
use utoipa::ToSchema;
use uuid::Uuid;

use super::auth::{Authorized, JailsRead, JailsWrite};
use super::error::ApiError;
use super::resource;
use super::tenants::record;
use crate::AppState;

pub(crate) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        resource("/tenants/{tenant_id}/jails/{jail_id}/ports")
            .route(web::get().to(list))
            .route(web::post().to(publish)),
    )
    .service(
        resource("/tenants/{tenant_id}/jails/{jail_id}/ports/{port_id}")
            .route(web::delete().to(unpublish)),
    );
}

/// A port of the jail's node forwarded to a port of the jail.
#[derive(Debug, Serialize, ToSchema)]
pub struct PortOut {
    /// Stable id.
    pub id: Uuid,
    /// The jail.
    pub jail_id: Uuid,
    /// The node whose address the port is published on.
    pub node_id: Uuid,
    /// `tcp` or `udp`.
    #[schema(pattern = "^(tcp|udp)$")]
    pub protocol: String,
    /// The node's port.
    pub host_port: u16,
    /// The jail's port.
    pub jail_port: u16,
    /// When it was published.
    pub created_at: DateTime<Utc>,
}

impl From<PublishedPort> for PortOut {
    fn from(p: PublishedPort) -> Self {
        PortOut {
            id: p.id,
            jail_id: p.jail_id,
            node_id: p.node_id,
            protocol: p.protocol.as_str().to_owned(),
            host_port: p.host_port,
            jail_port: p.jail_port,
            created_at: p.created_at,
        }
    }
}

/// A jail's published ports.
#[derive(Debug, Serialize, ToSchema)]
pub struct PortList {
    /// By protocol and node port.
    pub data: Vec<PortOut>,
    /// The most ports the tenant may publish over all its jails.
    pub limit: u32,
    /// How many the tenant publishes.
    pub used: u32,
}

/// A port to publish.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PublishPort {
    /// `tcp` (the default) or `udp`.
    #[serde(default)]
    #[schema(pattern = "^(tcp|udp)$")]
    pub protocol: Option<String>,
    /// The jail's port.
    #[schema(minimum = 1, maximum = 65535)]
    pub jail_port: u32,
    /// The node's port, from the node's pool; absent: the lowest free one.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 65535)]
    pub host_port: Option<u32>,
}

impl TryFrom<PublishPort> for NewPort {
    type Error = ApiError;
    fn try_from(b: PublishPort) -> Result<Self, ApiError> {
        let protocol: Protocol = b.protocol.as_deref().unwrap_or("tcp").parse()?;
        let port = |field: &'static str, v: u32| match u16::try_from(v) {
            Ok(p) if p > 0 => Ok(p),
            _ => Err(ApiError::field(field, "ports are 1 to 65535")),
        };
        Ok(NewPort {
            protocol,
            jail_port: port("jail_port", b.jail_port)?,
            host_port: b.host_port.map(|p| port("host_port", p)).transpose()?,
        })
    }
}

/// Lists a jail's published ports, with the tenant's allowance.
#[utoipa::path(get, path = "/api/v1/tenants/{tenant_id}/jails/{jail_id}/ports", tag = "jails",
    params(("tenant_id" = Uuid, Path, description = "Tenant id"),
           ("jail_id" = Uuid, Path, description = "Jail id")),
    responses((status = 200, description = "The jail's published ports", body = PortList)),
    security(("bearer" = ["jails:read"])))]
pub(crate) async fn list(
    Authorized(caller, _): Authorized<JailsRead>,
    path: web::Path<(Uuid, Uuid)>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (tenant_id, jail_id) = path.into_inner();
    caller.see_tenant(tenant_id)?;
    // A jail of another tenant is not found.
    stockade_store::jails::get(&state.pool, tenant_id, jail_id).await?;
    let data = ports::for_jail(&state.pool, tenant_id, jail_id)
        .await?
        .into_iter()
        .map(PortOut::from)
        .collect();
    let allowance = ports::allowance(&state.pool, tenant_id).await?;
    Ok(HttpResponse::Ok().json(PortList {
        data,
        limit: allowance.limit,
        used: allowance.used,
    }))
}

/// Publishes a port of the jail on its node, within the tenant's
/// `max_published_ports` and the node's pool; live within a reconcile.
#[utoipa::path(post, path = "/api/v1/tenants/{tenant_id}/jails/{jail_id}/ports", tag = "jails",
    params(("tenant_id" = Uuid, Path, description = "Tenant id"),
           ("jail_id" = Uuid, Path, description = "Jail id")),
    request_body = PublishPort,
    responses((status = 201, description = "Published", body = PortOut)),
    security(("bearer" = ["jails:write"])))]
pub(crate) async fn publish(
    Authorized(caller, _): Authorized<JailsWrite>,
    path: web::Path<(Uuid, Uuid)>,
    body: web::Json<PublishPort>,
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let new = NewPort::try_from(body.into_inner())?;
    let (tenant_id, jail_id) = path.into_inner();
    caller.see_tenant(tenant_id)?;
    let p = ports::publish(&state.pool, tenant_id, jail_id, new).await?;
    record(
        &state,
        &req,
        &caller,
        Some(tenant_id),
        "port.publish",
        &format!("{}/{}", p.host_port, p.protocol),
    )
    .await?;
    Ok(HttpResponse::Created()
        .insert_header((
            "Location",
            format!("/api/v1/tenants/{tenant_id}/jails/{jail_id}/ports/{}", p.id),
        ))
        .json(PortOut::from(p)))
}

/// Takes back a published port.
#[utoipa::path(delete, path = "/api/v1/tenants/{tenant_id}/jails/{jail_id}/ports/{port_id}", tag = "jails",
    params(("tenant_id" = Uuid, Path, description = "Tenant id"),
           ("jail_id" = Uuid, Path, description = "Jail id"),
           ("port_id" = Uuid, Path, description = "Published port id")),
    responses((status = 204, description = "No longer published")),
    security(("bearer" = ["jails:write"])))]
pub(crate) async fn unpublish(
    Authorized(caller, _): Authorized<JailsWrite>,
    path: web::Path<(Uuid, Uuid, Uuid)>,
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let (tenant_id, jail_id, port_id) = path.into_inner();
    caller.see_tenant(tenant_id)?;
    let p = ports::unpublish(&state.pool, tenant_id, jail_id, port_id).await?;
    record(
        &state,
        &req,
        &caller,
        Some(tenant_id),
        "port.unpublish",
        &format!("{}/{}", p.host_port, p.protocol),
    )
    .await?;
    Ok(HttpResponse::NoContent().finish())
}
