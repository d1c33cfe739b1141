//! A jail's backups, kept off its node: taken now, restored into the jail
//! or as a new jail, deleted. Each is taken by the jail's node within
//! moments; the page says where each one is.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use askama::Template;
use serde::Deserialize;
use stockade_domain::JailName;
use stockade_store::backups;
use uuid::Uuid;

use super::{
    ActionForm, Done, Layout, answer_action, customer_tenant, parse_id, record, refusal, render,
};
use crate::auth::SignedIn;
use crate::{AppState, WebError, flash, format};

#[derive(Deserialize)]
pub(super) struct NewJailForm {
    csrf_token: String,
    #[serde(default)]
    name: String,
}

struct BackupRow {
    id: Uuid,
    state: String,
    when: String,
    when_iso: String,
    size: String,
    volume: String,
    kind: &'static str,
    error: Option<String>,
    ready: bool,
    deletable: bool,
}

#[derive(Template)]
#[template(path = "jail_backups.html")]
struct BackupsPage {
    layout: Layout,
    id: Uuid,
    name: String,
    rows: Vec<BackupRow>,
    stored: String,
    daily: String,
    error: Option<String>,
    typed_name: String,
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
    let list = backups::list(&state.pool, tenant_id, Some(jail_id)).await?;
    let plan = stockade_store::tenants::get(&state.pool, tenant_id)
        .await?
        .plan_id;
    let days = stockade_store::plans::get(&state.pool, plan)
        .await?
        .backup_days;
    let rows = list
        .into_iter()
        .map(|b| BackupRow {
            id: b.id,
            when: b
                .finished_at
                .unwrap_or(b.created_at)
                .format("%Y-%m-%d %H:%M:%S UTC")
                .to_string(),
            when_iso: b.finished_at.unwrap_or(b.created_at).to_rfc3339(),
            size: format::bytes(b.size_bytes),
            volume: format::bytes(b.volume_bytes),
            kind: if b.scheduled { "daily" } else { "on demand" },
            error: b.error,
            ready: b.state == "ready",
            deletable: b.state == "ready" || b.state == "failed",
            state: b.state,
        })
        .collect();
    let layout = Layout::new(req, &s.0);
    let had_flash = layout.flash.is_some();
    let status = if error.is_some() {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::OK
    };
    let p = BackupsPage {
        layout,
        id: jail.id,
        name: jail.name.to_string(),
        rows,
        stored: format::bytes(backups::stored_bytes(&state.pool, tenant_id).await?),
        daily: if days == 0 {
            "Your plan takes no daily backups; take one whenever you like.".into()
        } else {
            format!("Your plan backs each jail up daily and keeps each backup {days} days.")
        },
        error,
        typed_name,
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
    form: web::Form<ActionForm>,
) -> Result<HttpResponse, WebError> {
    let tenant_id = customer_tenant(&s)?;
    s.check_csrf(&form.csrf_token)?;
    let jail_id = parse_id(&path)?;
    let outcome = backups::request(&state.pool, tenant_id, jail_id, Some(s.0.user.id))
        .await
        .map(|b| Done {
            action: "backup.request",
            target: b.id.to_string(),
            details: serde_json::json!({ "jail_id": jail_id }),
            said: "Backup asked for: the jail's node takes it now, and the jail runs on.".into(),
        });
    let here = format!("/jails/{jail_id}/backups");
    answer_action(&state, &req, &s, tenant_id, outcome, &here, "Not backed up").await
}

pub(super) async fn restore_here(
    req: HttpRequest,
    state: web::Data<AppState>,
    s: SignedIn,
    path: web::Path<(String, String)>,
    form: web::Form<ActionForm>,
) -> Result<HttpResponse, WebError> {
    let tenant_id = customer_tenant(&s)?;
    s.check_csrf(&form.csrf_token)?;
    let (jail, backup) = path.into_inner();
    let (jail_id, backup_id) = (parse_id(&jail)?, parse_id(&backup)?);
    let outcome = backups::restore_into(&state.pool, tenant_id, jail_id, backup_id)
        .await
        .map(|()| Done {
            action: "backup.restore",
            target: backup_id.to_string(),
            details: serde_json::json!({ "jail_id": jail_id }),
            said: "Restore asked for: the jail's node fetches the backup, then the jail stops, its disk becomes the backup's and it starts again.".into(),
        });
    let here = format!("/jails/{jail_id}/backups");
    answer_action(&state, &req, &s, tenant_id, outcome, &here, "Not restored").await
}

pub(super) async fn restore_new(
    req: HttpRequest,
    state: web::Data<AppState>,
    s: SignedIn,
    path: web::Path<(String, String)>,
    form: web::Form<NewJailForm>,
) -> Result<HttpResponse, WebError> {
    let tenant_id = customer_tenant(&s)?;
    s.check_csrf(&form.csrf_token)?;
    let (jail, backup) = path.into_inner();
    let (jail_id, backup_id) = (parse_id(&jail)?, parse_id(&backup)?);
    let typed = form.into_inner().name;
    let name = match JailName::parse(typed.trim()) {
        Ok(n) => n,
        Err(e) => {
            return page(
                &req,
                &state,
                &s,
                jail_id,
                typed,
                Some(format!("Not restored: name: {}", e.reason)),
            )
            .await;
        }
    };
    match backups::restore_as_new(&state.pool, tenant_id, backup_id, &name).await {
        Ok(j) => {
            record(
                &state,
                &req,
                &s,
                Some(tenant_id),
                "backup.restore",
                &backup_id.to_string(),
                serde_json::json!({ "jail_id": j.id, "new": true }),
            )
            .await?;
            Ok(flash::redirect(
                &format!("/jails/{}", j.id),
                "ok",
                &format!("Jail {} is being made from the backup.", j.name),
            ))
        }
        Err(e) => {
            let msg = format!("Not restored: {}", refusal(e)?);
            page(&req, &state, &s, jail_id, typed, Some(msg)).await
        }
    }
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
    let (jail, backup) = path.into_inner();
    let (jail_id, backup_id) = (parse_id(&jail)?, parse_id(&backup)?);
    let outcome = backups::delete(&state.pool, tenant_id, backup_id)
        .await
        .map(|()| Done {
            action: "backup.delete",
            target: backup_id.to_string(),
            details: serde_json::json!({ "jail_id": jail_id }),
            said: "The backup is being deleted.".into(),
        });
    let here = format!("/jails/{jail_id}/backups");
    answer_action(&state, &req, &s, tenant_id, outcome, &here, "Not deleted").await
}

pub(super) async fn download(
    state: web::Data<AppState>,
    s: SignedIn,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, WebError> {
    let tenant_id = customer_tenant(&s)?;
    let (jail, backup) = path.into_inner();
    let (jail_id, backup_id) = (parse_id(&jail)?, parse_id(&backup)?);
    let b = backups::get(&state.pool, tenant_id, backup_id).await?;
    if b.jail_id != Some(jail_id) {
        return Err(WebError::NotFound);
    }
    let name = format!("{}-{}", b.jail_name, b.created_at.format("%Y%m%d-%H%M%S"));
    crate::output::backup_download(&state, tenant_id, backup_id, &name)
        .await
        .or_else(crate::output::OutputError::page_answer)
}
