//! A hosting customer's pages: overview, jails, one jail with its charts.

mod actions;
mod backups;
mod domains;
mod jail_list;
mod jail_page;
mod output;
mod overview;
mod ports;
mod settings;
mod snapshots;
mod ssh_keys;
mod uploads;

use actix_web::web;
use stockade_domain::{DesiredState, ObservedState};
use stockade_store::jails::Jail;
use uuid::Uuid;

use super::{
    ActionForm, Layout, QuotaTile, cached_page, customer_tenant, quota_tiles, record, render,
};
use crate::WebError;
use crate::format;
pub(crate) use actions::ConfirmPage;
use actions::{action, confirm_delete};
use jail_list::{create, list};
use jail_page::detail;
pub(crate) use jail_page::{JailData, JailPageKey, jail_data};
pub(crate) use overview::OverviewData;
use overview::overview;
use stockade_store::StoreError;
use uploads::upload;

pub(super) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/overview", web::get().to(overview))
        .route("/jails", web::get().to(list))
        .route("/jails", web::post().to(create))
        .route("/ssh-keys", web::get().to(ssh_keys::list))
        .route("/ssh-keys", web::post().to(ssh_keys::add))
        .route("/ssh-keys/{id}/delete", web::post().to(ssh_keys::remove))
        .route("/jails/{id}", web::get().to(detail))
        .route("/jails/{id}/delete", web::get().to(confirm_delete))
        .route("/jails/{id}/files", web::post().to(upload))
        .route("/jails/{id}/settings", web::get().to(settings::settings))
        .route("/jails/{id}/logs", web::get().to(output::output))
        .route("/jails/{id}/console", web::get().to(console))
        .route(
            "/jails/{id}/program",
            web::post().to(settings::update_program),
        )
        .route(
            "/jails/{id}/limits",
            web::post().to(settings::update_limits),
        )
        .route(
            "/jails/{id}/health",
            web::post().to(settings::update_health),
        )
        .route("/jails/{id}/grow-back", web::post().to(settings::grow_back))
        .route("/jails/{id}/ports", web::post().to(ports::publish))
        .route("/jails/{id}/backups", web::get().to(backups::list))
        .route("/jails/{id}/backups", web::post().to(backups::take))
        .route(
            "/jails/{id}/backups/{backup}/restore",
            web::post().to(backups::restore_here),
        )
        .route(
            "/jails/{id}/backups/{backup}/new-jail",
            web::post().to(backups::restore_new),
        )
        .route(
            "/jails/{id}/backups/{backup}/delete",
            web::post().to(backups::delete),
        )
        .route(
            "/jails/{id}/backups/{backup}/download",
            web::get().to(backups::download),
        )
        .route("/jails/{id}/snapshots", web::get().to(snapshots::list))
        .route("/jails/{id}/snapshots", web::post().to(snapshots::take))
        .route(
            "/jails/{id}/snapshots/{snapshot}/restore",
            web::post().to(snapshots::restore),
        )
        .route(
            "/jails/{id}/snapshots/{snapshot}/delete",
            web::post().to(snapshots::delete),
        )
        .route("/jails/{id}/domains", web::post().to(domains::attach))
        .route(
            "/jails/{id}/domains/{domain}/delete",
            web::post().to(domains::detach),
        )
        .route(
            "/jails/{id}/domains/{domain}/certificate",
            web::post().to(domains::upload_certificate),
        )
        .route(
            "/jails/{id}/domains/{domain}/verify",
            web::post().to(domains::verify),
        )
        .route(
            "/jails/{id}/ports/{port}/delete",
            web::post().to(ports::unpublish),
        )
        .route("/jails/{id}/{action}", web::post().to(action));
}

/// What a customer's action on a jail did, done: recorded in the audit log
/// as `action` on `target`.
pub(super) struct Done {
    pub action: &'static str,
    pub target: String,
    pub details: serde_json::Value,
    /// What the page then says.
    pub said: String,
}

/// The answer to a customer's action whose page is `here`: done, it is
/// recorded and `here` says so; refused, `here` says why after `refused`.
pub(super) async fn answer_action(
    state: &crate::AppState,
    req: &actix_web::HttpRequest,
    s: &crate::auth::SignedIn,
    tenant_id: Uuid,
    outcome: Result<Done, StoreError>,
    here: &str,
    refused: &str,
) -> Result<actix_web::HttpResponse, WebError> {
    match outcome {
        Ok(d) => {
            record(
                state,
                req,
                s,
                Some(tenant_id),
                d.action,
                &d.target,
                d.details,
            )
            .await?;
            Ok(crate::flash::redirect(here, "ok", &d.said))
        }
        Err(e) => Ok(crate::flash::redirect(
            here,
            "error",
            &format!("{refused}: {}", refusal(e)?),
        )),
    }
}

/// A refusal of the store in words to show the customer, or the error
/// itself when it is not one (a missing row is not found).
pub(super) fn refusal(e: StoreError) -> Result<String, WebError> {
    match e {
        StoreError::Invalid { field, message } => Ok(format!("{field}: {message}")),
        StoreError::QuotaExceeded(m) | StoreError::InvalidState(m) | StoreError::NoCapacity(m) => {
            Ok(m)
        }
        StoreError::Conflict(m) => Ok(format!("{m} already exists")),
        StoreError::NotFound => Err(WebError::NotFound),
        e => Err(e.into()),
    }
}

/// A jail as a table row.
pub(crate) struct JailRow {
    pub id: Uuid,
    pub name: String,
    pub kind: &'static str,
    pub state: String,
    pub desired: &'static str,
    pub address: String,
    pub cpu: String,
    pub memory: String,
    pub disk: String,
    pub error: String,
}

/// What a user sees as a jail's state: the observed one, or the change under way.
pub(crate) fn shown_state(j: &Jail) -> String {
    if j.observed_state == ObservedState::Running
        && j.observed_generation >= j.generation
        && j.health_check.is_some()
        && j.address.is_some()
    {
        // Running, and what its health check says.
        return match j.health {
            stockade_domain::Health::Unhealthy => "unhealthy".into(),
            stockade_domain::Health::Unknown => "starting".into(),
            stockade_domain::Health::Healthy => "running".into(),
        };
    }
    if j.observed_generation >= j.generation
        || matches!(
            j.observed_state,
            ObservedState::Failed | ObservedState::CrashLooping
        )
    {
        return j.observed_state.to_string();
    }
    match j.desired_state {
        DesiredState::Running => "starting".into(),
        DesiredState::Stopped => "stopping".into(),
        DesiredState::Deleted => "deleting".into(),
    }
}

/// Why a jail is not simply running, in words: the node's last error, or
/// its command's restarts, last exit and next try. Empty when all is well.
pub(crate) fn status_note(j: &Jail) -> String {
    let mut parts = Vec::new();
    if let Some(e) = &j.last_error {
        parts.push(e.clone());
    }
    if j.health == stockade_domain::Health::Unhealthy {
        parts.push(format!(
            "health check failing: {}",
            j.health_detail.as_deref().unwrap_or("no answer")
        ));
    }
    let run = &j.run;
    if run.restart_count > 0 || j.observed_state == ObservedState::CrashLooping {
        let times = if run.restart_count == 1 {
            "time"
        } else {
            "times"
        };
        parts.push(format!("restarted {} {times}", run.restart_count));
    }
    if let Some(exit) = run.last_exit
        && (run.restart_count > 0 || j.kind == stockade_domain::JailKind::App)
    {
        parts.push(format!(
            "last {} at {}",
            exit.describe(),
            exit.at.format("%Y-%m-%d %H:%M:%S UTC")
        ));
    }
    if j.observed_state == ObservedState::CrashLooping
        && let Some(at) = run.retry_at
    {
        let wait = (at - chrono::Utc::now()).num_seconds().max(0);
        parts.push(format!("next try in {wait} s"));
    }
    parts.join("; ")
}

/// A tenant's jails as a panel shows them: failing ones first, then by name.
pub(crate) fn failing_first(mut jails: Vec<Jail>) -> Vec<Jail> {
    jails.sort_by_key(|j| !is_failing(j));
    jails
}

/// Whether a jail needs its owner's attention: failed, crash-looping or
/// running but failing its health check.
pub(crate) fn is_failing(j: &Jail) -> bool {
    matches!(
        j.observed_state,
        ObservedState::Failed | ObservedState::CrashLooping
    ) || (j.observed_state == ObservedState::Running
        && j.health == stockade_domain::Health::Unhealthy)
}

impl From<&Jail> for JailRow {
    fn from(j: &Jail) -> Self {
        JailRow {
            id: j.id,
            name: j.name.to_string(),
            kind: j.kind.as_str(),
            state: shown_state(j),
            desired: j.desired_state.as_str(),
            address: j.address.clone().unwrap_or_else(|| "—".into()),
            cpu: format::cpu(u64::from(j.limits.cpu_millicores)),
            memory: format::bytes(j.limits.memory_bytes),
            disk: format::bytes(j.limits.disk_bytes),
            error: status_note(j),
        }
    }
}

/// A console in one of the customer's jails (a WebSocket).
async fn console(
    req: actix_web::HttpRequest,
    body: web::Payload,
    state: web::Data<crate::AppState>,
    s: crate::auth::SignedIn,
    path: web::Path<String>,
    size: web::Query<crate::console::Size>,
) -> Result<actix_web::HttpResponse, WebError> {
    let tenant_id = customer_tenant(&s)?;
    let jail_id = parse_id(&path)?;
    crate::console::open(req, body, state, s, tenant_id, jail_id, size.into_inner()).await
}

fn parse_id(raw: &str) -> Result<Uuid, WebError> {
    Uuid::parse_str(raw).map_err(|_| WebError::NotFound)
}
