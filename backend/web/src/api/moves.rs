//! Moving a jail to another node (`POST …/jails/{jail_id}/move`): the
//! provider's, never a tenant's. The jail stops, its volume is shipped
//! through the backup target and it runs on the new node with its domains,
//! ports and a new address; its old node's copy is removed once it runs.

use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::auth::{Authorized, TenantsWrite};
use super::error::ApiError;
use super::resource;
use super::tenants::record;
use crate::AppState;

pub(crate) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        resource("/tenants/{tenant_id}/jails/{jail_id}/move").route(web::post().to(move_jail)),
    );
}

/// Where to move a jail.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MoveJail {
    /// The node's name.
    #[schema(max_length = 63)]
    pub node: String,
}

/// Moves the jail to another node, cold: it stops, and starts on the new
/// node with its files (the answer's `cold_because` says why the node
/// cannot move it live). 422 on `node` for an unknown node or the
/// jail's own; 503 `no_capacity` when that node is down, being drained or
/// without room for it; 409 while the jail is moving already. A refused
/// move leaves the jail as it was.
#[utoipa::path(post, path = "/api/v1/tenants/{tenant_id}/jails/{jail_id}/move", tag = "jails",
    params(("tenant_id" = Uuid, Path, description = "Tenant id"),
           ("jail_id" = Uuid, Path, description = "Jail id")),
    request_body = MoveJail,
    responses((status = 202, description = "Move asked for")),
    security(("bearer" = ["tenants:write"])))]
pub(crate) async fn move_jail(
    Authorized(caller, _): Authorized<TenantsWrite>,
    path: web::Path<(Uuid, Uuid)>,
    body: web::Json<MoveJail>,
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let (tenant_id, jail_id) = path.into_inner();
    caller.see_tenant(tenant_id)?;
    caller.unbound()?;
    let nodes = stockade_store::nodes::list(&state.pool).await?;
    let jail = stockade_store::jails::get(&state.pool, tenant_id, jail_id).await?;
    let node = nodes
        .iter()
        .find(|n| n.name == body.node.trim())
        .ok_or_else(|| ApiError::field("node", "no node has this name"))?;
    // Moves are cold; the answer says why, in the source node's words.
    let cold_because = nodes
        .iter()
        .find(|n| Some(n.id) == jail.node_id)
        .and_then(|n| n.cold_moves.clone())
        .unwrap_or_else(|| "the node has not said whether it could move jails live".into());
    stockade_store::moves::request(&state.pool, jail_id, node.id).await?;
    record(
        &state,
        &req,
        &caller,
        Some(tenant_id),
        "jail.move",
        &jail_id.to_string(),
    )
    .await?;
    Ok(HttpResponse::Accepted().json(serde_json::json!({
        "jail_id": jail_id,
        "node": node.name,
        "live": false,
        "cold_because": cold_because,
    })))
}
