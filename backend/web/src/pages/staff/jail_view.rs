//! A customer's jail as staff see it: its state and why, its limits and
//! usage, its output, and a restart. Reading its output and restarting it
//! are audited, and the tenant's customers see both on their overview.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use askama::Template;
use uuid::Uuid;

use crate::auth::SignedIn;
use crate::output::{Ask, OutputError, open};
use crate::pages::customer::{JailData, jail_data, status_note};
use crate::pages::{ActionForm, Layout, record, render, require_admin, require_staff};
use crate::{AppState, WebError, flash};

#[derive(Template)]
#[template(path = "staff_jail.html")]
pub(super) struct StaffJailPage {
    layout: Layout,
    tenant_id: Uuid,
    tenant: String,
    data: JailData,
    note: String,
    /// The node it is on, and the other nodes it could move to.
    node: String,
    others: Vec<String>,
    /// Why a move stops the jail here.
    cold_moves: String,
    /// Where it is moving, while it does.
    moving: Option<String>,
}

fn ids(path: &(String, String)) -> Result<(Uuid, Uuid), WebError> {
    let parse = |s: &str| Uuid::parse_str(s).map_err(|_| WebError::NotFound);
    Ok((parse(&path.0)?, parse(&path.1)?))
}

pub(super) async fn jail_page(
    req: HttpRequest,
    state: web::Data<AppState>,
    s: SignedIn,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, WebError> {
    require_staff(&s)?;
    let (tenant_id, jail_id) = ids(&path)?;
    let tenant = stockade_store::tenants::get(&state.pool, tenant_id).await?;
    let jail = stockade_store::jails::get(&state.pool, tenant_id, jail_id).await?;
    let data = jail_data(&state.pool, tenant_id, jail_id, "hour").await?;
    let nodes = stockade_store::nodes::list(&state.pool).await?;
    let name_of = |id: Option<Uuid>| {
        id.and_then(|id| nodes.iter().find(|n| n.id == id))
            .map(|n| n.name.clone())
    };
    let node = name_of(jail.node_id).unwrap_or_else(|| "none".into());
    // Moves are cold; say why, in the node's own words.
    let cold_moves = jail
        .node_id
        .and_then(|id| nodes.iter().find(|n| n.id == id))
        .and_then(|n| n.cold_moves.clone())
        .unwrap_or_else(|| "the node has not said whether it could move jails live".into());
    let moving = name_of(jail.move_to_node).or_else(|| {
        jail.moved_from_node
            .map(|_| format!("{node} (its copy on its old node goes once it runs here)"))
    });
    let others = nodes
        .iter()
        .filter(|n| Some(n.id) != jail.node_id)
        .map(|n| n.name.clone())
        .collect();
    let layout = Layout::new(&req, &s.0);
    let had_flash = layout.flash.is_some();
    let mut page = render(
        StatusCode::OK,
        &StaffJailPage {
            layout,
            tenant_id,
            tenant: tenant.slug.to_string(),
            data,
            note: status_note(&jail),
            node,
            others,
            moving,
            cold_moves,
        },
        had_flash,
    )?;
    page.headers_mut().insert(
        actix_web::http::header::CONTENT_SECURITY_POLICY,
        actix_web::http::header::HeaderValue::from_static(crate::CONSOLE_CSP),
    );
    Ok(page)
}

#[derive(serde::Deserialize)]
pub(super) struct OutputQuery {
    tail: Option<usize>,
    follow: Option<u8>,
}

pub(super) async fn output(
    req: HttpRequest,
    state: web::Data<AppState>,
    s: SignedIn,
    path: web::Path<(String, String)>,
    q: web::Query<OutputQuery>,
) -> Result<HttpResponse, WebError> {
    require_staff(&s)?;
    let (tenant_id, jail_id) = ids(&path)?;
    let jail = stockade_store::jails::get(&state.pool, tenant_id, jail_id).await?;
    let ask = Ask {
        tail: q.tail.unwrap_or(200).min(10_000),
        follow: q.follow == Some(1),
    };
    // A customer's output is theirs: each read by staff is on the record.
    record(
        &state,
        &req,
        &s,
        Some(tenant_id),
        "jail.output_read",
        jail.name.as_str(),
        serde_json::json!({ "jail_id": jail_id, "tail": ask.tail, "follow": ask.follow }),
    )
    .await?;
    open(&state, tenant_id, jail_id, ask, None)
        .await
        .or_else(OutputError::page_answer)
}

pub(super) async fn restart(
    req: HttpRequest,
    state: web::Data<AppState>,
    s: SignedIn,
    path: web::Path<(String, String)>,
    form: web::Form<ActionForm>,
) -> Result<HttpResponse, WebError> {
    // A change: admins only (operators read and suspend).
    require_admin(&s)?;
    s.check_csrf(&form.csrf_token)?;
    let (tenant_id, jail_id) = ids(&path)?;
    let here = format!("/staff/tenants/{tenant_id}/jails/{jail_id}");
    match stockade_store::jails::restart(&state.pool, tenant_id, jail_id).await {
        Ok(jail) => {
            record(
                &state,
                &req,
                &s,
                Some(tenant_id),
                "jail.staff_restart",
                jail.name.as_str(),
                serde_json::json!({ "jail_id": jail_id }),
            )
            .await?;
            Ok(flash::redirect(
                &here,
                "ok",
                &format!(
                    "{} restarts; its customers see that you restarted it.",
                    jail.name
                ),
            ))
        }
        Err(stockade_store::StoreError::InvalidState(m)) => Ok(flash::redirect(
            &here,
            "error",
            &format!("Not restarted: {m}"),
        )),
        Err(e) => Err(e.into()),
    }
}

/// A console in a customer's jail, opened by staff (recorded, and shown to
/// the tenant's users).
pub(super) async fn console(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
    s: SignedIn,
    path: web::Path<(String, String)>,
    size: web::Query<crate::console::Size>,
) -> Result<HttpResponse, WebError> {
    // A root shell in a customer's jail: admins only.
    require_admin(&s)?;
    let (tenant_id, jail_id) = ids(&path)?;
    crate::console::open(req, body, state, s, tenant_id, jail_id, size.into_inner()).await
}

#[derive(serde::Deserialize)]
pub(super) struct MoveForm {
    csrf_token: String,
    node: String,
}

/// Moves the jail to the node named (admins): it stops, its volume goes
/// through the backup target, and it runs on the new node.
pub(super) async fn move_jail(
    req: HttpRequest,
    state: web::Data<AppState>,
    s: SignedIn,
    path: web::Path<(String, String)>,
    form: web::Form<MoveForm>,
) -> Result<HttpResponse, WebError> {
    require_admin(&s)?;
    s.check_csrf(&form.csrf_token)?;
    let (tenant_id, jail_id) = ids(&path)?;
    let here = format!("/staff/tenants/{tenant_id}/jails/{jail_id}");
    let jail = stockade_store::jails::get(&state.pool, tenant_id, jail_id).await?;
    let Some(node) = stockade_store::nodes::list(&state.pool)
        .await?
        .into_iter()
        .find(|n| n.name == form.node.trim())
    else {
        return Ok(flash::redirect(
            &here,
            "error",
            "Not moved: no node has this name.",
        ));
    };
    match stockade_store::moves::request(&state.pool, jail_id, node.id).await {
        Ok(()) => {
            record(
                &state,
                &req,
                &s,
                Some(tenant_id),
                "jail.move",
                jail.name.as_str(),
                serde_json::json!({ "jail_id": jail_id, "to": node.name }),
            )
            .await?;
            Ok(flash::redirect(
                &here,
                "ok",
                &format!(
                    "{} moves to {}: it stops, its disk is shipped, and it starts there.",
                    jail.name, node.name
                ),
            ))
        }
        Err(
            stockade_store::StoreError::InvalidState(m)
            | stockade_store::StoreError::NoCapacity(m)
            | stockade_store::StoreError::Invalid { message: m, .. },
        ) => Ok(flash::redirect(&here, "error", &format!("Not moved: {m}"))),
        Err(e) => Err(e.into()),
    }
}
