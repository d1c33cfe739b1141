//! The nodes and their health.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use askama::Template;
use stockade_store::{nodes, ports};

use crate::auth::SignedIn;
use crate::format;
use crate::pages::{Layout, render, require_staff};
use crate::{AppState, WebError};

pub(super) struct NodeLine {
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
}

#[derive(Template)]
#[template(path = "staff_nodes.html")]
pub(super) struct NodesPage {
    layout: Layout,
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
    let nodes = nodes::loads(&state.pool)
        .await?
        .into_iter()
        .map(|n| NodeLine {
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
            nodes,
            ports,
        },
        had_flash,
    )
}
