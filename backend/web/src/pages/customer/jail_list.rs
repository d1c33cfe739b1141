//! The jail list and the form that makes a jail.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use askama::Template;
use serde::Deserialize;
use stockade_domain::{ByteSize, JailKind, JailName, Limits, Millicores};
use stockade_store::StoreError;
use stockade_store::jails::{self, NewJail};
use uuid::Uuid;

use super::JailRow;
use super::{Layout, customer_tenant, record, render};
use crate::auth::SignedIn;
use crate::format;
use crate::{AppState, WebError, flash};

/// The create form as typed, kept to show it again with an error.
#[derive(Deserialize, Clone)]
pub(crate) struct CreateJailForm {
    csrf_token: String,
    name: String,
    image: String,
    kind: String,
    #[serde(default)]
    command: String,
    cpu: String,
    memory: String,
    pids: String,
    disk: String,
}

impl Default for CreateJailForm {
    fn default() -> Self {
        CreateJailForm {
            csrf_token: String::new(),
            name: String::new(),
            image: "busybox".into(),
            kind: "system".into(),
            command: String::new(),
            cpu: "500m".into(),
            memory: "256M".into(),
            pids: "128".into(),
            disk: "1G".into(),
        }
    }
}

impl TryFrom<CreateJailForm> for NewJail {
    type Error = String;
    fn try_from(f: CreateJailForm) -> Result<Self, String> {
        let name = JailName::parse(f.name.trim()).map_err(|e| e.to_string())?;
        let image = stockade_domain::image_name(f.image.trim()).map_err(|e| e.to_string())?;
        let kind: JailKind = f
            .kind
            .parse()
            .map_err(|e: stockade_domain::ParseError| e.to_string())?;
        let command = stockade_domain::parse_command_line(&f.command).map_err(|e| e.to_string())?;
        if kind == JailKind::App && command.is_empty() {
            return Err("command: an app jail needs a command".into());
        }
        Ok(NewJail {
            name,
            image,
            kind,
            command,
            limits: parse_limits(&f.cpu, &f.memory, &f.pids, &f.disk)?,
        })
    }
}

/// Limits as typed in a form ("500m", "256M", "128", "1G"); the error
/// names the field.
pub(super) fn parse_limits(
    cpu: &str,
    memory: &str,
    pids: &str,
    disk: &str,
) -> Result<Limits, String> {
    let pids: u32 = pids
        .trim()
        .parse()
        .ok()
        .filter(|p| *p > 0)
        .ok_or("processes: must be a whole number above 0")?;
    let memory = ByteSize::parse("memory", memory)
        .map_err(|e| e.to_string())?
        .bytes();
    if memory < 4 << 20 {
        return Err("memory: must be at least 4M".into());
    }
    let disk = ByteSize::parse("disk", disk)
        .map_err(|e| e.to_string())?
        .bytes();
    if disk < 16 << 20 {
        return Err("disk: must be at least 16M".into());
    }
    let limits = Limits {
        cpu_millicores: Millicores::parse("cpu", cpu)
            .map_err(|e| e.to_string())?
            .millis(),
        memory_bytes: memory,
        pids,
        disk_bytes: disk,
        ..Limits::default()
    };
    limits.check().map_err(|e| e.to_string())?;
    Ok(limits)
}

/// Images offered in the panel.
#[derive(Template)]
#[template(path = "jails.html")]
pub(super) struct JailsPage {
    pub(super) layout: Layout,
    pub(super) jails: Vec<JailRow>,
    pub(super) form: CreateJailForm,
    /// The images customers may pick that live nodes have.
    pub(super) images: Vec<String>,
    pub(super) left: String,
    pub(super) error: Option<String>,
}

pub(super) async fn jails_page(
    req: &HttpRequest,
    state: &AppState,
    s: &SignedIn,
    tenant_id: Uuid,
    form: CreateJailForm,
    error: Option<String>,
) -> Result<HttpResponse, WebError> {
    let jails = super::failing_first(jails::list_for_tenant(&state.pool, tenant_id).await?);
    let (q, a) = jails::quota_and_allocation(&state.pool, tenant_id).await?;
    let left = format!(
        "{}, {} memory, {} disk, {} jails",
        format::cpu(u64::from(q.cpu_millicores).saturating_sub(a.cpu_millicores)),
        format::bytes(q.memory_bytes.saturating_sub(a.memory_bytes)),
        format::bytes(q.disk_bytes.saturating_sub(a.disk_bytes + a.snapshot_bytes)),
        u64::from(q.max_jails).saturating_sub(a.jails)
    );
    let layout = Layout::new(req, &s.0);
    let had_flash = layout.flash.is_some();
    let status = if error.is_some() {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::OK
    };
    let page = JailsPage {
        layout,
        jails: jails.iter().map(JailRow::from).collect(),
        form,
        images: stockade_store::images::offered(&state.pool).await?,
        left,
        error,
    };
    render(status, &page, had_flash)
}

pub(super) async fn list(
    req: HttpRequest,
    state: web::Data<AppState>,
    s: SignedIn,
) -> Result<HttpResponse, WebError> {
    let tenant_id = customer_tenant(&s)?;
    jails_page(&req, &state, &s, tenant_id, CreateJailForm::default(), None).await
}

pub(super) async fn create(
    req: HttpRequest,
    state: web::Data<AppState>,
    s: SignedIn,
    form: web::Form<CreateJailForm>,
) -> Result<HttpResponse, WebError> {
    let tenant_id = customer_tenant(&s)?;
    s.check_csrf(&form.csrf_token)?;
    let typed = form.into_inner();
    let new = match NewJail::try_from(typed.clone()) {
        Ok(n) => n,
        Err(msg) => return jails_page(&req, &state, &s, tenant_id, typed, Some(msg)).await,
    };
    let made = match stockade_store::images::check_offered(&state.pool, &new.image).await {
        Ok(()) => jails::create(&state.pool, tenant_id, &new).await,
        Err(e) => Err(e),
    };
    match made {
        Ok(jail) => {
            record(
                &state,
                &req,
                &s,
                Some(tenant_id),
                "jail.create",
                jail.name.as_str(),
                serde_json::json!({}),
            )
            .await?;
            Ok(flash::redirect(
                &format!("/jails/{}", jail.id),
                "ok",
                &format!("Jail {} created; it starts in a moment.", jail.name),
            ))
        }
        Err(
            e @ (StoreError::QuotaExceeded(_)
            | StoreError::Conflict(_)
            | StoreError::NoCapacity(_)
            | StoreError::Invalid { .. }
            | StoreError::InvalidState(_)),
        ) => jails_page(&req, &state, &s, tenant_id, typed, Some(e.to_string())).await,
        Err(e) => Err(e.into()),
    }
}
