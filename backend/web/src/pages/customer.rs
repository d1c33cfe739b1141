//! A hosting customer's pages: overview, jails, one jail with its charts.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use askama::Template;
use chrono::{Duration, Utc};
use serde::Deserialize;
use std::sync::Arc;
use stockade_domain::{
    ByteSize, DesiredState, JailKind, JailName, Limits, Millicores, ObservedState,
};
use stockade_store::StoreError;
use stockade_store::jails::{self, Jail, NewJail};
use stockade_store::nodes;
use stockade_store::usage::{self, Bucket};
use uuid::Uuid;

use super::{
    ActionForm, Layout, QuotaTile, cached_page, customer_tenant, quota_tiles, record, render,
};
use crate::auth::SignedIn;
use crate::cache::PageKey;
use crate::charts::{Series, line_chart};
use crate::format;
use crate::{AppState, WebError, flash};

pub(super) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/overview", web::get().to(overview))
        .route("/jails", web::get().to(list))
        .route("/jails", web::post().to(create))
        .route("/jails/{id}", web::get().to(detail))
        .route("/jails/{id}/delete", web::get().to(confirm_delete))
        .route("/jails/{id}/files", web::post().to(upload))
        .route("/jails/{id}/{action}", web::post().to(action));
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
    if j.observed_generation >= j.generation || j.observed_state == ObservedState::Failed {
        return j.observed_state.to_string();
    }
    match j.desired_state {
        DesiredState::Running => "starting".into(),
        DesiredState::Stopped => "stopping".into(),
        DesiredState::Deleted => "deleting".into(),
    }
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
            error: j.last_error.clone().unwrap_or_default(),
        }
    }
}

/// What the overview shows of a tenant (cached, see [`crate::cache`]).
struct OverviewData {
    tenant_name: String,
    plan_name: String,
    status: &'static str,
    quotas: Vec<QuotaTile>,
    jails: Vec<JailRow>,
}

#[derive(Template)]
#[template(path = "dashboard.html")]
struct OverviewPage {
    layout: Layout,
    data: Arc<OverviewData>,
}

impl std::ops::Deref for OverviewPage {
    type Target = OverviewData;
    fn deref(&self) -> &OverviewData {
        &self.data
    }
}

async fn overview_data(
    pool: &stockade_store::PgPool,
    tenant_id: Uuid,
) -> Result<OverviewData, WebError> {
    let tenant = stockade_store::tenants::get(pool, tenant_id).await?;
    let plan = stockade_store::plans::get(pool, tenant.plan_id).await?;
    let jails = jails::list_for_tenant(pool, tenant_id).await?;
    Ok(OverviewData {
        tenant_name: tenant.display_name,
        plan_name: plan.display_name,
        status: tenant.status.as_str(),
        quotas: quota_tiles(pool, tenant_id).await?,
        jails: jails.iter().map(JailRow::from).collect(),
    })
}

async fn overview(
    req: HttpRequest,
    state: web::Data<AppState>,
    s: SignedIn,
) -> Result<HttpResponse, WebError> {
    let tenant_id = customer_tenant(&s)?;
    cached_page(
        &state,
        &req,
        &s,
        PageKey::Overview(tenant_id),
        || overview_data(&state.pool, tenant_id),
        |layout, data| OverviewPage { layout, data },
    )
    .await
}

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
        let command: Vec<String> = f.command.split_whitespace().map(str::to_owned).collect();
        if kind == JailKind::App && command.is_empty() {
            return Err("command: an app jail needs a command".into());
        }
        let pids: u32 = f
            .pids
            .trim()
            .parse()
            .ok()
            .filter(|p| *p > 0)
            .ok_or("processes: must be a whole number above 0")?;
        let memory = ByteSize::parse("memory", &f.memory)
            .map_err(|e| e.to_string())?
            .bytes();
        if memory < 4 << 20 {
            return Err("memory: must be at least 4M".into());
        }
        let disk = ByteSize::parse("disk", &f.disk)
            .map_err(|e| e.to_string())?
            .bytes();
        if disk < 16 << 20 {
            return Err("disk: must be at least 16M".into());
        }
        Ok(NewJail {
            name,
            image,
            kind,
            command,
            limits: {
                let limits = Limits {
                    cpu_millicores: Millicores::parse("cpu", &f.cpu)
                        .map_err(|e| e.to_string())?
                        .millis(),
                    memory_bytes: memory,
                    pids,
                    disk_bytes: disk,
                    ..Limits::default()
                };
                limits.check().map_err(|e| e.to_string())?;
                limits
            },
        })
    }
}

/// Images offered in the panel.
#[derive(Template)]
#[template(path = "jails.html")]
struct JailsPage {
    layout: Layout,
    jails: Vec<JailRow>,
    form: CreateJailForm,
    /// The images live nodes offer.
    images: Vec<String>,
    left: String,
    error: Option<String>,
}

async fn jails_page(
    req: &HttpRequest,
    state: &AppState,
    s: &SignedIn,
    tenant_id: Uuid,
    form: CreateJailForm,
    error: Option<String>,
) -> Result<HttpResponse, WebError> {
    let jails = jails::list_for_tenant(&state.pool, tenant_id).await?;
    let (q, a) = jails::quota_and_allocation(&state.pool, tenant_id).await?;
    let left = format!(
        "{}, {} memory, {} disk, {} jails",
        format::cpu(u64::from(q.cpu_millicores).saturating_sub(a.cpu_millicores)),
        format::bytes(q.memory_bytes.saturating_sub(a.memory_bytes)),
        format::bytes(q.disk_bytes.saturating_sub(a.disk_bytes)),
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
        images: nodes::offered_images(&state.pool).await?,
        left,
        error,
    };
    render(status, &page, had_flash)
}

async fn list(
    req: HttpRequest,
    state: web::Data<AppState>,
    s: SignedIn,
) -> Result<HttpResponse, WebError> {
    let tenant_id = customer_tenant(&s)?;
    jails_page(&req, &state, &s, tenant_id, CreateJailForm::default(), None).await
}

async fn create(
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
    match jails::create(&state.pool, tenant_id, &new).await {
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

fn parse_id(raw: &str) -> Result<Uuid, WebError> {
    Uuid::parse_str(raw).map_err(|_| WebError::NotFound)
}

#[derive(Deserialize)]
struct PeriodQuery {
    period: Option<String>,
}

/// What a jail's page shows for one period (cached, see [`crate::cache`]).
struct JailData {
    id: Uuid,
    name: String,
    state: String,
    desired: &'static str,
    kind: &'static str,
    image: String,
    address: String,
    created: String,
    created_iso: String,
    last_error: Option<String>,
    /// Whether root in the jail is an unprivileged host uid (its plan says).
    user_ids: &'static str,
    /// Limits, limit hits and charts, rendered once.
    usage: String,
    upload_limit: String,
    /// What a tenant may have waiting to be written, in words.
    pending_limit: String,
    uploads: Vec<(String, String, String)>,
}

/// A jail's limits, limit hits and usage charts for one period.
#[derive(Template)]
#[template(path = "jail_usage.html")]
struct JailUsage {
    id: Uuid,
    cpu: String,
    memory: String,
    pids: u32,
    disk: String,
    egress: String,
    ingress: String,
    hits: Vec<String>,
    period: &'static str,
    charts: Vec<String>,
}

#[derive(Template)]
#[template(path = "jail.html")]
struct JailPage {
    layout: Layout,
    data: Arc<JailData>,
}

impl std::ops::Deref for JailPage {
    type Target = JailData;
    fn deref(&self) -> &JailData {
        &self.data
    }
}

/// Largest file accepted by the upload form.
const UPLOAD_LIMIT: usize = 8 << 20;

/// Room the form's other fields and boundaries may take beyond the file.
const UPLOAD_OVERHEAD: usize = 64 << 10;

/// Reads the upload form: its CSRF token first (the form sends it before the
/// file), checked before any of the file is read, then one file, refusing
/// anything larger than the limit. A body announced larger than the limit is
/// refused before a byte of it is read. The outer error is a refused
/// request (a forged form); the inner one a message for the jail page.
async fn read_upload(
    s: &SignedIn,
    req: &HttpRequest,
    mut form: actix_multipart::Multipart,
) -> Result<Result<(String, Vec<u8>), String>, WebError> {
    use futures_util::StreamExt;
    let too_large = || {
        format!(
            "the file is larger than {}",
            format::bytes(UPLOAD_LIMIT as u64)
        )
    };
    let announced = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let mut checked = false;
    let mut file: Option<(String, Vec<u8>)> = None;
    while let Some(field) = form.next().await {
        let Ok(mut field) = field else {
            return Ok(Err("the upload could not be read".into()));
        };
        let name = field.name().unwrap_or_default().to_owned();
        if !checked {
            // Nothing but the token is read before it is checked.
            if name != "csrf_token" {
                return Err(WebError::Csrf);
            }
            let mut token = Vec::new();
            while let Some(chunk) = field.next().await {
                let Ok(chunk) = chunk else {
                    return Ok(Err("the upload could not be read".into()));
                };
                if token.len() + chunk.len() > 256 {
                    return Err(WebError::Csrf);
                }
                token.extend_from_slice(&chunk);
            }
            s.check_csrf(&String::from_utf8_lossy(&token))?;
            checked = true;
            if announced.is_some_and(|n| n > UPLOAD_LIMIT + UPLOAD_OVERHEAD) {
                return Ok(Err(too_large()));
            }
            continue;
        }
        let file_name = field
            .content_disposition()
            .and_then(|d| d.get_filename())
            .map(str::to_owned);
        let mut data = Vec::new();
        while let Some(chunk) = field.next().await {
            let Ok(chunk) = chunk else {
                return Ok(Err("the upload could not be read".into()));
            };
            if data.len() + chunk.len() > UPLOAD_LIMIT {
                return Ok(Err(too_large()));
            }
            data.extend_from_slice(&chunk);
        }
        if name == "file" {
            file = Some((file_name.unwrap_or_default(), data));
        }
    }
    if !checked {
        return Err(WebError::Csrf);
    }
    Ok(file.ok_or_else(|| "choose a file to upload".to_owned()))
}

async fn upload(
    req: HttpRequest,
    state: web::Data<AppState>,
    s: SignedIn,
    path: web::Path<String>,
    form: actix_multipart::Multipart,
) -> Result<HttpResponse, WebError> {
    let tenant_id = customer_tenant(&s)?;
    let id = parse_id(&path)?;
    let here = format!("/jails/{id}");
    let (file_name, data) = match read_upload(&s, &req, form).await? {
        Ok(v) => v,
        Err(msg) => {
            return Ok(flash::redirect(
                &here,
                "error",
                &format!("Upload refused: {msg}."),
            ));
        }
    };
    // Browsers send a bare name; older ones a full client path: keep the last part.
    let base = file_name
        .rsplit(['/', '\\'])
        .next()
        .unwrap_or_default()
        .to_owned();
    let base = match stockade_domain::FileName::parse(&base) {
        Ok(n) => n,
        Err(e) => {
            return Ok(flash::redirect(
                &here,
                "error",
                &format!("Upload refused: {e}."),
            ));
        }
    };
    let jail = jails::get(&state.pool, tenant_id, id).await?;
    let up = match stockade_store::uploads::create(
        &state.pool,
        tenant_id,
        jail.id,
        base.as_str(),
        &data,
    )
    .await
    {
        Ok(up) => up,
        Err(StoreError::QuotaExceeded(msg) | StoreError::InvalidState(msg)) => {
            return Ok(flash::redirect(
                &here,
                "error",
                &format!("Upload of {base} refused: {msg}. Nothing was stored."),
            ));
        }
        Err(e) => return Err(e.into()),
    };
    record(
        &state,
        &req,
        &s,
        Some(tenant_id),
        "jail.upload",
        &format!("{}:/srv/www/{}", jail.name, up.file_name),
        serde_json::json!({}),
    )
    .await?;
    let when = if jail.observed_state == stockade_domain::ObservedState::Running {
        "in a moment"
    } else {
        "once the jail runs"
    };
    Ok(flash::redirect(
        &here,
        "ok",
        &format!(
            "{} uploaded; it appears in /srv/www of {} {when}.",
            up.file_name, jail.name
        ),
    ))
}

/// Limit hits in plain words.
fn explain_hits(j: &Jail, (oom, mem, pids, throttled): (i64, i64, i64, i64)) -> Vec<String> {
    let times = |n: i64| {
        if n == 1 {
            "once".to_owned()
        } else {
            format!("{n} times")
        }
    };
    let mut out = Vec::new();
    if oom > 0 {
        out.push(format!(
            "A process was stopped by the memory limit of {} {} today.",
            format::bytes(j.limits.memory_bytes),
            times(oom)
        ));
    }
    if mem > oom {
        out.push(format!(
            "Memory use reached the limit of {} {} today.",
            format::bytes(j.limits.memory_bytes),
            times(mem)
        ));
    }
    if pids > 0 {
        out.push(format!(
            "Starting a process failed at the limit of {} processes {} today.",
            j.limits.pids,
            times(pids)
        ));
    }
    if throttled > 0 {
        out.push(format!(
            "The CPU limit of {} slowed the jail down in {throttled} periods of 0.1 s today.",
            format::cpu(u64::from(j.limits.cpu_millicores))
        ));
    }
    out
}

async fn detail(
    req: HttpRequest,
    state: web::Data<AppState>,
    s: SignedIn,
    path: web::Path<String>,
    q: web::Query<PeriodQuery>,
) -> Result<HttpResponse, WebError> {
    let tenant_id = customer_tenant(&s)?;
    let jail_id = parse_id(&path)?;
    let period = match q.period.as_deref() {
        Some("day") => "day",
        Some("month") => "month",
        _ => "hour",
    };
    let key = PageKey::Jail {
        tenant: tenant_id,
        jail: jail_id,
        period,
    };
    cached_page(
        &state,
        &req,
        &s,
        key,
        || jail_data(&state.pool, tenant_id, jail_id, period),
        |layout, data| JailPage { layout, data },
    )
    .await
}

async fn jail_data(
    pool: &stockade_store::PgPool,
    tenant_id: Uuid,
    jail_id: Uuid,
    period: &'static str,
) -> Result<JailData, WebError> {
    let jail = jails::get(pool, tenant_id, jail_id).await?;
    let now = Utc::now();
    let (from, bucket) = match period {
        "day" => (now - Duration::days(1), Bucket::Hour),
        "month" => (now - Duration::days(30), Bucket::Day),
        _ => (now - Duration::hours(1), Bucket::Sample),
    };
    let points = usage::jail_series(pool, tenant_id, jail.id, from, now, bucket).await?;
    let to_u = |v: i64| u64::try_from(v).unwrap_or(0);
    let series = [
        Series {
            title: "CPU",
            unit: format::cpu,
            points: points
                .iter()
                .map(|p| (p.at, to_u(p.cpu_millicores)))
                .collect(),
            limit: Some(u64::from(jail.limits.cpu_millicores)),
        },
        Series {
            title: "Memory",
            unit: format::bytes,
            points: points
                .iter()
                .map(|p| (p.at, to_u(p.memory_bytes)))
                .collect(),
            limit: Some(jail.limits.memory_bytes),
        },
        Series {
            title: "Network (received + sent per interval)",
            unit: format::bytes,
            points: points.iter().map(|p| (p.at, to_u(p.net_bytes))).collect(),
            limit: None,
        },
        Series {
            title: "Disk used",
            unit: format::bytes,
            points: points.iter().map(|p| (p.at, to_u(p.disk_bytes))).collect(),
            limit: Some(jail.limits.disk_bytes),
        },
        Series {
            title: "Disk IO (read + written per interval)",
            unit: format::bytes,
            points: points.iter().map(|p| (p.at, to_u(p.io_bytes))).collect(),
            limit: None,
        },
    ];
    let midnight = now
        .date_naive()
        .and_hms_opt(0, 0, 0)
        .map_or(now, |d| d.and_utc());
    let hits = usage::jail_limit_hits(pool, tenant_id, jail.id, midnight).await?;
    let usage = JailUsage {
        id: jail.id,
        cpu: format::cpu(u64::from(jail.limits.cpu_millicores)),
        memory: format::bytes(jail.limits.memory_bytes),
        pids: jail.limits.pids,
        disk: format::bytes(jail.limits.disk_bytes),
        egress: format::bits_per_sec(jail.limits.net_egress_bps),
        ingress: format::bits_per_sec(jail.limits.net_ingress_bps),
        hits: explain_hits(&jail, hits),
        period,
        charts: series.iter().map(|s| line_chart(s, from, now)).collect(),
    };
    Ok(JailData {
        id: jail.id,
        name: jail.name.to_string(),
        state: shown_state(&jail),
        desired: jail.desired_state.as_str(),
        kind: jail.kind.as_str(),
        image: jail.image.clone(),
        address: jail.address.clone().unwrap_or_else(|| "none yet".into()),
        created: jail.created_at.format("%Y-%m-%d %H:%M UTC").to_string(),
        created_iso: jail.created_at.to_rfc3339(),
        last_error: jail.last_error.clone(),
        user_ids: if jail.user_namespace {
            "on"
        } else {
            "off (host root ids; set by your provider's plan)"
        },
        usage: super::fragment(&usage)?,
        upload_limit: format::bytes(UPLOAD_LIMIT as u64),
        pending_limit: format!(
            "{} files or {}",
            stockade_store::uploads::MAX_PENDING_UPLOADS,
            format::bytes(stockade_store::uploads::MAX_PENDING_BYTES.unsigned_abs())
        ),
        uploads: stockade_store::uploads::list(pool, tenant_id, jail.id)
            .await?
            .into_iter()
            .map(|u| {
                let state = match u.error {
                    Some(e) => format!("failed: {e}"),
                    None => u.state,
                };
                (
                    u.file_name,
                    format::bytes(u64::try_from(u.size_bytes).unwrap_or(0)),
                    state,
                )
            })
            .collect(),
    })
}

#[derive(Template)]
#[template(path = "confirm.html")]
pub(crate) struct ConfirmPage {
    pub layout: Layout,
    pub title: String,
    pub message: String,
    pub action: String,
    pub button: &'static str,
    pub back: String,
}

async fn confirm_delete(
    req: HttpRequest,
    state: web::Data<AppState>,
    s: SignedIn,
    path: web::Path<String>,
) -> Result<HttpResponse, WebError> {
    let tenant_id = customer_tenant(&s)?;
    let jail = jails::get(&state.pool, tenant_id, parse_id(&path)?).await?;
    let page = ConfirmPage {
        layout: Layout::new(&req, &s.0),
        title: format!("Delete {}?", jail.name),
        message: format!(
            "The jail {} and everything on its volume will be destroyed. This cannot be undone.",
            jail.name
        ),
        action: format!("/jails/{}/delete", jail.id),
        button: "Delete jail",
        back: format!("/jails/{}", jail.id),
    };
    render(StatusCode::OK, &page, false)
}

async fn action(
    req: HttpRequest,
    state: web::Data<AppState>,
    s: SignedIn,
    path: web::Path<(String, String)>,
    form: web::Form<ActionForm>,
) -> Result<HttpResponse, WebError> {
    let tenant_id = customer_tenant(&s)?;
    s.check_csrf(&form.csrf_token)?;
    let (id, action) = path.into_inner();
    let id = parse_id(&id)?;
    let (desired, verb) = match action.as_str() {
        "start" => (DesiredState::Running, "start"),
        "stop" => (DesiredState::Stopped, "stop"),
        "restart" => (DesiredState::Running, "restart"),
        "delete" if form.confirm.as_deref() == Some("yes") => (DesiredState::Deleted, "delete"),
        "delete" => return Ok(crate::auth::see_other(&format!("/jails/{id}/delete"))),
        _ => return Err(WebError::NotFound),
    };
    let result = if verb == "restart" {
        jails::restart(&state.pool, tenant_id, id).await
    } else {
        jails::set_desired(&state.pool, tenant_id, id, desired).await
    };
    match result {
        Ok(jail) => {
            record(
                &state,
                &req,
                &s,
                Some(tenant_id),
                &format!("jail.{verb}"),
                jail.name.as_str(),
                serde_json::json!({}),
            )
            .await?;
            let (to, msg) = if verb == "delete" {
                (
                    "/jails".to_owned(),
                    format!("Jail {} is being deleted.", jail.name),
                )
            } else {
                (
                    format!("/jails/{id}"),
                    format!("Jail {}: {verb} requested.", jail.name),
                )
            };
            Ok(flash::redirect(&to, "ok", &msg))
        }
        Err(StoreError::InvalidState(msg)) => Ok(flash::redirect(
            &format!("/jails/{id}"),
            "error",
            &format!("Cannot {verb}: {msg}."),
        )),
        Err(e) => Err(e.into()),
    }
}
