//! A jail's snapshots: taken (by name or of the moment), restored and
//! deleted by the customer. Each is taken by the jail's node within
//! moments; the page says where each one is.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use askama::Template;
use serde::Deserialize;
use stockade_store::snapshots::{self, SnapshotState};
use uuid::Uuid;

use super::{
    ActionForm, Done, Layout, answer_action, customer_tenant, parse_id, record, refusal, render,
};
use crate::auth::SignedIn;
use crate::{AppState, WebError, flash, format};

#[derive(Deserialize)]
pub(super) struct TakeForm {
    csrf_token: String,
    #[serde(default)]
    name: String,
}

struct SnapshotRow {
    id: Uuid,
    name: String,
    state: &'static str,
    size: String,
    taken: String,
    taken_iso: String,
    error: Option<String>,
    ready: bool,
    restoring: bool,
    deleting: bool,
}

#[derive(Template)]
#[template(path = "jail_snapshots.html")]
struct SnapshotsPage {
    layout: Layout,
    id: Uuid,
    name: String,
    rows: Vec<SnapshotRow>,
    per_jail: u32,
    kept: usize,
    quota_note: String,
    typed_name: String,
    error: Option<String>,
}

async fn page(
    req: &HttpRequest,
    state: &AppState,
    s: &SignedIn,
    jail_id: Uuid,
    typed_name: String,
    error: Option<String>,
) -> Result<HttpResponse, WebError> {
    let tenant_id = customer_tenant(s)?;
    let jail = stockade_store::jails::get(&state.pool, tenant_id, jail_id).await?;
    let listing = snapshots::list(&state.pool, tenant_id, jail_id).await?;
    let (q, a) = stockade_store::jails::quota_and_allocation(&state.pool, tenant_id).await?;
    let rows: Vec<SnapshotRow> = listing
        .snapshots
        .into_iter()
        .map(|sn| SnapshotRow {
            id: sn.id,
            state: if sn.restoring {
                "restoring"
            } else {
                sn.state.as_str()
            },
            size: if sn.state == SnapshotState::Pending {
                format!("about {}", format::bytes(sn.size_bytes))
            } else {
                format::bytes(sn.size_bytes)
            },
            taken: sn
                .taken_at
                .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
                .unwrap_or_default(),
            taken_iso: sn.taken_at.map(|t| t.to_rfc3339()).unwrap_or_default(),
            error: sn.error,
            ready: sn.state == SnapshotState::Ready && !sn.restoring,
            restoring: sn.restoring,
            deleting: sn.state == SnapshotState::Deleting,
            name: sn.name,
        })
        .collect();
    let kept = rows.iter().filter(|r| !r.deleting).count();
    let quota_note = format!(
        "Snapshots take {} of your {} disk quota, which they share with your jails' disks ({} allocated).",
        format::bytes(a.snapshot_bytes),
        format::bytes(q.disk_bytes),
        format::bytes(a.disk_bytes)
    );
    let layout = Layout::new(req, &s.0);
    let had_flash = layout.flash.is_some();
    let status = if error.is_some() {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::OK
    };
    let p = SnapshotsPage {
        layout,
        id: jail.id,
        name: jail.name.to_string(),
        rows,
        per_jail: listing.per_jail,
        kept,
        quota_note,
        typed_name,
        error,
    };
    render(status, &p, had_flash)
}

pub(super) async fn list(
    req: HttpRequest,
    state: web::Data<AppState>,
    s: SignedIn,
    path: web::Path<String>,
) -> Result<HttpResponse, WebError> {
    page(&req, &state, &s, parse_id(&path)?, String::new(), None).await
}

pub(super) async fn take(
    req: HttpRequest,
    state: web::Data<AppState>,
    s: SignedIn,
    path: web::Path<String>,
    form: web::Form<TakeForm>,
) -> Result<HttpResponse, WebError> {
    let tenant_id = customer_tenant(&s)?;
    s.check_csrf(&form.csrf_token)?;
    let jail_id = parse_id(&path)?;
    let typed = form.into_inner().name;
    let user = Some(s.0.user.id);
    match snapshots::request(&state.pool, tenant_id, jail_id, Some(&typed), user).await {
        Ok(sn) => {
            record(
                &state,
                &req,
                &s,
                Some(tenant_id),
                "snapshot.request",
                &sn.id.to_string(),
                serde_json::json!({ "jail_id": jail_id, "name": sn.name }),
            )
            .await?;
            Ok(flash::redirect(
                &format!("/jails/{jail_id}/snapshots"),
                "ok",
                &format!(
                    "Snapshot {} asked for: the jail's node takes it within moments.",
                    sn.name
                ),
            ))
        }
        Err(e) => {
            let msg = format!("Not taken: {}", refusal(e)?);
            page(&req, &state, &s, jail_id, typed, Some(msg)).await
        }
    }
}

pub(super) async fn restore(
    req: HttpRequest,
    state: web::Data<AppState>,
    s: SignedIn,
    path: web::Path<(String, String)>,
    form: web::Form<ActionForm>,
) -> Result<HttpResponse, WebError> {
    let tenant_id = customer_tenant(&s)?;
    s.check_csrf(&form.csrf_token)?;
    let (jail, snap) = path.into_inner();
    let (jail_id, snapshot_id) = (parse_id(&jail)?, parse_id(&snap)?);
    let outcome = snapshots::restore(&state.pool, tenant_id, jail_id, snapshot_id)
        .await
        .map(|()| Done {
            action: "snapshot.restore",
            target: snapshot_id.to_string(),
            details: serde_json::json!({ "jail_id": jail_id }),
            said: "Restore asked for: the jail stops, its disk returns to the snapshot, and it starts again if it was running.".into(),
        });
    let here = format!("/jails/{jail_id}/snapshots");
    answer_action(&state, &req, &s, tenant_id, outcome, &here, "Not restored").await
}

pub(super) async fn delete(
    req: HttpRequest,
    state: web::Data<AppState>,
    s: SignedIn,
    path: web::Path<(String, String)>,
    form: web::Form<ActionForm>,
) -> Result<HttpResponse, WebError> {
    let tenant_id = customer_tenant(&s)?;
    s.check_csrf(&form.csrf_token)?;
    let (jail, snap) = path.into_inner();
    let (jail_id, snapshot_id) = (parse_id(&jail)?, parse_id(&snap)?);
    let outcome = snapshots::delete(&state.pool, tenant_id, jail_id, snapshot_id)
        .await
        .map(|()| Done {
            action: "snapshot.delete",
            target: snapshot_id.to_string(),
            details: serde_json::json!({ "jail_id": jail_id }),
            said: "The snapshot is being deleted.".into(),
        });
    let here = format!("/jails/{jail_id}/snapshots");
    answer_action(&state, &req, &s, tenant_id, outcome, &here, "Not deleted").await
}
