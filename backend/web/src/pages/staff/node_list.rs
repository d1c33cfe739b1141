//! The nodes and their health.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use askama::Template;
use stockade_store::{nodes, ports};

use crate::auth::SignedIn;
use crate::format;
use crate::pages::{ActionForm, Layout, record, render, require_admin, require_staff};
use crate::{AppState, WebError, flash};

pub(super) struct NodeLine {
    id: uuid::Uuid,
    drained: bool,
    name: String,
    state: &'static str,
    heartbeat: String,
    jails: i64,
    running: i64,
    cpu: String,
    memory: String,
    disk: String,
    /// The SSH gateway's address and host key fingerprint, or why none.
    ssh: String,
    /// Why it moves jails cold.
    moves: String,
}

#[derive(Template)]
#[template(path = "staff_nodes.html")]
pub(super) struct NodesPage {
    layout: Layout,
    can_admin: bool,
    nodes: Vec<NodeLine>,
    /// Published ports: node, node port, tenant, jail, jail port.
    ports: Vec<(String, String, String, String, u16)>,
}

pub(super) async fn nodes_page(
    req: HttpRequest,
    state: web::Data<AppState>,
    s: SignedIn,
) -> Result<HttpResponse, WebError> {
    require_staff(&s)?;
    let to_u = |v: i64| u64::try_from(v).unwrap_or(0);
    let drained = stockade_store::moves::drained(&state.pool).await?;
    let nodes = nodes::loads(&state.pool)
        .await?
        .into_iter()
        .map(|n| NodeLine {
            id: n.id,
            drained: drained.contains(&n.id),
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
            ssh: match (&n.ssh_endpoint, &n.ssh_host_fingerprint) {
                (Some(e), Some(f)) => format!("{e} ({f})"),
                _ => "none".to_owned(),
            },
            moves: n.cold_moves.unwrap_or_else(|| "not reported".to_owned()),
            jails: n.jails,
            running: n.running,
            name: n.name,
        })
        .collect();
    let ports = ports::holders(&state.pool)
        .await?
        .into_iter()
        .map(|h| {
            (
                h.node,
                format!("{}/{}", h.port.host_port, h.port.protocol),
                h.tenant,
                h.jail,
                h.port.jail_port,
            )
        })
        .collect();
    let layout = Layout::new(&req, &s.0);
    let had_flash = layout.flash.is_some();
    render(
        StatusCode::OK,
        &NodesPage {
            layout,
            can_admin: s.0.user.role == stockade_domain::Role::Admin,
            nodes,
            ports,
        },
        had_flash,
    )
}

/// Drains a node (admins): it takes no new jails, and each of its jails
/// moves to the node with the most room, or stops where none has room.
pub(super) async fn drain(
    req: HttpRequest,
    state: web::Data<AppState>,
    s: SignedIn,
    path: web::Path<String>,
    form: web::Form<ActionForm>,
) -> Result<HttpResponse, WebError> {
    require_admin(&s)?;
    s.check_csrf(&form.csrf_token)?;
    let id = uuid::Uuid::parse_str(&path).map_err(|_| WebError::NotFound)?;
    let done = stockade_store::moves::drain(&state.pool, id, Some(s.0.user.id)).await?;
    let moved = done.iter().filter(|d| d.to_node.is_some()).count();
    let stopped: Vec<&str> = done
        .iter()
        .filter(|d| d.to_node.is_none())
        .map(|d| d.name.as_str())
        .collect();
    record(
        &state,
        &req,
        &s,
        None,
        "node.drain",
        &id.to_string(),
        serde_json::to_value(&done).unwrap_or_default(),
    )
    .await?;
    let mut said =
        format!("The node takes no new jails; {moved} of its jails move to other nodes.");
    if !stopped.is_empty() {
        said.push_str(&format!(
            " No node had room for {}: stopped.",
            stopped.join(", ")
        ));
    }
    Ok(flash::redirect("/staff/nodes", "ok", &said))
}

/// Lets a drained node take jails again (admins).
pub(super) async fn undrain(
    req: HttpRequest,
    state: web::Data<AppState>,
    s: SignedIn,
    path: web::Path<String>,
    form: web::Form<ActionForm>,
) -> Result<HttpResponse, WebError> {
    require_admin(&s)?;
    s.check_csrf(&form.csrf_token)?;
    let id = uuid::Uuid::parse_str(&path).map_err(|_| WebError::NotFound)?;
    stockade_store::moves::undrain(&state.pool, id).await?;
    record(
        &state,
        &req,
        &s,
        None,
        "node.undrain",
        &id.to_string(),
        serde_json::json!({}),
    )
    .await?;
    Ok(flash::redirect(
        "/staff/nodes",
        "ok",
        "The node takes jails again.",
    ))
}
