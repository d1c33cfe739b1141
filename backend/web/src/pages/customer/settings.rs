//! A jail's settings: what it runs (a command line split like a shell's,
//! environment variables with masked secrets) and its limits within what
//! is left of the tenant's quota. A refused change shows the form again as
//! typed, with the reason; nothing is lost.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use askama::Template;
use serde::Deserialize;
use stockade_domain::{EnvVar, command_line, parse_command_line};
use stockade_store::StoreError;
use stockade_store::jails::{self, Jail};
use uuid::Uuid;

use super::jail_list::parse_limits;
use super::{Layout, customer_tenant, parse_id, record, refusal, render};
use crate::auth::SignedIn;
use crate::{AppState, WebError, flash, format};

/// What a secret's value is shown as; sent back unchanged, it keeps the value.
const MASK: &str = "********";

#[derive(Deserialize, Clone, Default)]
pub(super) struct ProgramForm {
    csrf_token: String,
    /// Empty: the jail keeps its image.
    #[serde(default)]
    image: String,
    #[serde(default)]
    command: String,
    #[serde(default)]
    env: String,
}

#[derive(Deserialize, Clone, Default)]
pub(super) struct LimitsForm {
    csrf_token: String,
    cpu: String,
    memory: String,
    pids: String,
    disk: String,
}

#[derive(Deserialize, Clone, Default)]
pub(super) struct HealthForm {
    csrf_token: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    port: String,
    #[serde(default)]
    path: String,
    #[serde(default)]
    interval: String,
    #[serde(default)]
    failures: String,
}

impl HealthForm {
    fn of(check: Option<&stockade_domain::HealthCheck>) -> Self {
        match check {
            None => HealthForm {
                interval: "10".into(),
                failures: "3".into(),
                ..HealthForm::default()
            },
            Some(c) => HealthForm {
                csrf_token: String::new(),
                kind: match c.kind {
                    stockade_domain::ProbeKind::Http => "http".into(),
                    stockade_domain::ProbeKind::Tcp => "tcp".into(),
                },
                port: c.port.to_string(),
                path: c.path.clone().unwrap_or_default(),
                interval: c.interval_secs.to_string(),
                failures: c.failures.to_string(),
            },
        }
    }

    /// The check typed, `None` for none; the error names the field.
    fn parse(&self) -> Result<Option<stockade_domain::HealthCheck>, String> {
        let kind = match self.kind.as_str() {
            "" | "none" => return Ok(None),
            "http" => stockade_domain::ProbeKind::Http,
            "tcp" => stockade_domain::ProbeKind::Tcp,
            other => return Err(format!("kind: {other:?} is not none, http or tcp")),
        };
        let num = |field: &str, v: &str| {
            v.trim()
                .parse::<u32>()
                .map_err(|_| format!("{field}: {v:?} is not a whole number"))
        };
        let port = u16::try_from(num("port", &self.port)?)
            .map_err(|_| format!("port: {} is not a port", self.port.trim()))?;
        let path = self.path.trim();
        let check = stockade_domain::HealthCheck {
            kind,
            port,
            path: (kind == stockade_domain::ProbeKind::Http && !path.is_empty())
                .then(|| path.to_owned()),
            interval_secs: num("interval", &self.interval)?,
            failures: num("failures", &self.failures)?,
        };
        check.check().map_err(|e| e.reason)?;
        Ok(Some(check))
    }
}

#[derive(Template)]
#[template(path = "jail_settings.html")]
pub(super) struct SettingsPage {
    layout: Layout,
    id: Uuid,
    name: String,
    kind: &'static str,
    running: bool,
    program: ProgramForm,
    /// The images the jail's node offers, for the form's choice.
    images: Vec<String>,
    limits: LimitsForm,
    health: HealthForm,
    /// The check in words, and what it says now.
    health_now: String,
    /// What is left of the tenant's quota besides this jail, in words.
    left: String,
    /// Which form the error is about, and why.
    error: Option<(&'static str, String)>,
}

/// A jail's environment as the form shows it: `NAME=value` lines,
/// `secret NAME=********` for secrets.
fn env_text(env: &[EnvVar]) -> String {
    env.iter()
        .map(|v| {
            if v.secret {
                format!("secret {}={MASK}", v.name)
            } else {
                format!("{}={}", v.name, v.value)
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The environment typed in the form; a secret sent back masked keeps its
/// stored value. Errors name the line.
fn parse_env(text: &str, current: &[EnvVar]) -> Result<Vec<EnvVar>, String> {
    let mut vars = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        let (secret, rest) = match line.trim_start().strip_prefix("secret ") {
            Some(rest) => (true, rest.trim_start()),
            None => (false, line.trim_start()),
        };
        let Some((name, value)) = rest.split_once('=') else {
            return Err(format!("env: line {} is not NAME=value: {line:?}", i + 1));
        };
        let value = if secret && value == MASK {
            match current.iter().find(|v| v.name == name && v.secret) {
                Some(v) => v.value.as_str(),
                None => {
                    return Err(format!(
                        "env: line {}: type the value of the secret {name}",
                        i + 1
                    ));
                }
            }
        } else {
            value
        };
        vars.push(EnvVar::new(name, value, secret).map_err(|e| e.to_string())?);
    }
    stockade_domain::program::check_env(&vars).map_err(|e| e.to_string())?;
    Ok(vars)
}

fn limits_form(j: &Jail) -> LimitsForm {
    LimitsForm {
        csrf_token: String::new(),
        cpu: format!("{}m", j.limits.cpu_millicores),
        memory: stockade_domain::ByteSize(j.limits.memory_bytes).to_string(),
        pids: j.limits.pids.to_string(),
        disk: stockade_domain::ByteSize(j.limits.disk_bytes).to_string(),
    }
}

/// A form as typed, shown again with its refusal.
#[derive(Default)]
struct Typed {
    program: Option<ProgramForm>,
    limits: Option<LimitsForm>,
    health: Option<HealthForm>,
}

async fn page(
    req: &HttpRequest,
    state: &AppState,
    s: &SignedIn,
    jail: &Jail,
    typed: Typed,
    error: Option<(&'static str, String)>,
) -> Result<HttpResponse, WebError> {
    let Typed {
        program,
        limits,
        health,
    } = typed;
    let (q, a) = jails::quota_and_allocation(&state.pool, jail.tenant_id).await?;
    // What this jail could grow to: what is left plus what it holds.
    let left = format!(
        "up to {}, {} memory, {} disk for this jail",
        format::cpu(
            u64::from(q.cpu_millicores).saturating_sub(a.cpu_millicores)
                + u64::from(jail.limits.cpu_millicores)
        ),
        format::bytes(q.memory_bytes.saturating_sub(a.memory_bytes) + jail.limits.memory_bytes),
        format::bytes(
            q.disk_bytes.saturating_sub(a.disk_bytes + a.snapshot_bytes) + jail.limits.disk_bytes
        ),
    );
    let layout = Layout::new(req, &s.0);
    let had_flash = layout.flash.is_some();
    let status = if error.is_some() {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::OK
    };
    let p = SettingsPage {
        layout,
        id: jail.id,
        name: jail.name.to_string(),
        kind: jail.kind.as_str(),
        running: jail.desired_state == stockade_domain::DesiredState::Running,
        images: {
            let catalogue = stockade_store::images::offered(&state.pool).await?;
            let mut offered = jails::images_for(&state.pool, jail.tenant_id, jail.id).await?;
            offered.retain(|i| catalogue.contains(i));
            if !offered.contains(&jail.image) {
                offered.insert(0, jail.image.clone());
            }
            offered
        },
        program: program.unwrap_or_else(|| ProgramForm {
            csrf_token: String::new(),
            image: jail.image.clone(),
            command: command_line(&jail.command),
            env: env_text(&jail.env),
        }),
        limits: limits.unwrap_or_else(|| limits_form(jail)),
        health: health.unwrap_or_else(|| HealthForm::of(jail.health_check.as_ref())),
        health_now: match &jail.health_check {
            None => "No health check: the jail counts as healthy while it runs.".into(),
            Some(c) => format!(
                "{} — now {}{}.",
                c.describe(),
                jail.health,
                jail.health_detail
                    .as_deref()
                    .map(|d| format!(" ({d})"))
                    .unwrap_or_default()
            ),
        },
        left,
        error,
    };
    render(status, &p, had_flash)
}

async fn live_jail(state: &AppState, tenant_id: Uuid, id: Uuid) -> Result<Jail, WebError> {
    let jail = jails::get(&state.pool, tenant_id, id).await?;
    if jail.desired_state == stockade_domain::DesiredState::Deleted {
        return Err(WebError::NotFound);
    }
    Ok(jail)
}

pub(super) async fn settings(
    req: HttpRequest,
    state: web::Data<AppState>,
    s: SignedIn,
    path: web::Path<String>,
) -> Result<HttpResponse, WebError> {
    let tenant_id = customer_tenant(&s)?;
    let jail = live_jail(&state, tenant_id, parse_id(&path)?).await?;
    page(&req, &state, &s, &jail, Typed::default(), None).await
}

/// The store's answer: the changed jail, or its refusal in words to show
/// with the form; any other error as it is.
fn refused(answer: Result<Jail, StoreError>) -> Result<Result<Jail, String>, WebError> {
    match answer {
        Ok(jail) => Ok(Ok(jail)),
        Err(e) => refusal(e).map(Err),
    }
}

pub(super) async fn update_program(
    req: HttpRequest,
    state: web::Data<AppState>,
    s: SignedIn,
    path: web::Path<String>,
    form: web::Form<ProgramForm>,
) -> Result<HttpResponse, WebError> {
    let tenant_id = customer_tenant(&s)?;
    s.check_csrf(&form.csrf_token)?;
    let jail = live_jail(&state, tenant_id, parse_id(&path)?).await?;
    let typed = form.into_inner();
    let parsed = parse_command_line(&typed.command)
        .map_err(|e| e.to_string())
        .and_then(|c| Ok((c, parse_env(&typed.env, &jail.env)?)));
    let asked = typed.image.trim();
    let parsed = match parsed {
        Ok(p) if !asked.is_empty() && asked != jail.image => {
            match stockade_store::images::check_offered(&state.pool, asked).await {
                Ok(()) => Ok(p),
                Err(e) => Err(refusal(e)?),
            }
        }
        other => other,
    };
    let changed = match parsed {
        Ok((command, env)) => refused(
            jails::update_program(
                &state.pool,
                tenant_id,
                jail.id,
                jails::ProgramChange {
                    image: Some(typed.image.trim()).filter(|i| !i.is_empty()),
                    command: Some(&command),
                    env: Some(&env),
                },
            )
            .await,
        )?,
        Err(msg) => Err(msg),
    };
    let changed = match changed {
        Ok(changed) => changed,
        Err(msg) => {
            let typed = Typed {
                program: Some(typed),
                ..Typed::default()
            };
            return page(&req, &state, &s, &jail, typed, Some(("program", msg))).await;
        }
    };
    // Names only: a secret's value never goes to the audit log.
    let names: Vec<&str> = changed.env.iter().map(|v| v.name.as_str()).collect();
    record(
        &state,
        &req,
        &s,
        Some(tenant_id),
        "jail.program",
        changed.name.as_str(),
        serde_json::json!({ "image": changed.image, "command": changed.command, "env": names }),
    )
    .await?;
    let restart = if changed.desired_state == stockade_domain::DesiredState::Running {
        " It restarts with them now."
    } else {
        " They apply at its next start."
    };
    Ok(flash::redirect(
        &format!("/jails/{}/settings", jail.id),
        "ok",
        &format!("Image, command and environment saved.{restart}"),
    ))
}

/// The CPU, memory, process and disk limits of an audit entry.
fn limits_json(l: &stockade_domain::Limits) -> serde_json::Value {
    serde_json::json!({
        "cpu_millicores": l.cpu_millicores,
        "memory_bytes": l.memory_bytes,
        "pids": l.pids,
        "disk_bytes": l.disk_bytes,
    })
}

pub(super) async fn update_limits(
    req: HttpRequest,
    state: web::Data<AppState>,
    s: SignedIn,
    path: web::Path<String>,
    form: web::Form<LimitsForm>,
) -> Result<HttpResponse, WebError> {
    let tenant_id = customer_tenant(&s)?;
    s.check_csrf(&form.csrf_token)?;
    let jail = live_jail(&state, tenant_id, parse_id(&path)?).await?;
    let typed = form.into_inner();
    let changed = match parse_limits(&typed.cpu, &typed.memory, &typed.pids, &typed.disk) {
        // The rates stay as they are.
        Ok(l) => {
            let limits = stockade_domain::Limits {
                cpu_millicores: l.cpu_millicores,
                memory_bytes: l.memory_bytes,
                pids: l.pids,
                disk_bytes: l.disk_bytes,
                ..jail.limits
            };
            refused(jails::update_limits(&state.pool, tenant_id, jail.id, &limits).await)?
        }
        Err(msg) => Err(msg),
    };
    let changed = match changed {
        Ok(changed) => changed,
        Err(msg) => {
            let typed = Typed {
                limits: Some(typed),
                ..Typed::default()
            };
            return page(&req, &state, &s, &jail, typed, Some(("limits", msg))).await;
        }
    };
    record(
        &state,
        &req,
        &s,
        Some(tenant_id),
        "jail.update",
        changed.name.as_str(),
        serde_json::json!({
            "before": limits_json(&jail.limits),
            "after": limits_json(&changed.limits),
        }),
    )
    .await?;
    Ok(flash::redirect(
        &format!("/jails/{}/settings", jail.id),
        "ok",
        "Limits saved; they apply to the running jail now.",
    ))
}

pub(super) async fn update_health(
    req: HttpRequest,
    state: web::Data<AppState>,
    s: SignedIn,
    path: web::Path<String>,
    form: web::Form<HealthForm>,
) -> Result<HttpResponse, WebError> {
    let tenant_id = customer_tenant(&s)?;
    s.check_csrf(&form.csrf_token)?;
    let jail = live_jail(&state, tenant_id, parse_id(&path)?).await?;
    let typed = form.into_inner();
    let check = match typed.parse() {
        Ok(c) => c,
        Err(msg) => {
            return page(
                &req,
                &state,
                &s,
                &jail,
                Typed {
                    health: Some(typed),
                    ..Typed::default()
                },
                Some(("health", msg)),
            )
            .await;
        }
    };
    let changed = jails::set_health_check(&state.pool, tenant_id, jail.id, check.as_ref()).await?;
    record(
        &state,
        &req,
        &s,
        Some(tenant_id),
        "jail.health_check",
        changed.name.as_str(),
        serde_json::json!({
            "before": { "health_check": jail.health_check.as_ref().map(stockade_domain::HealthCheck::describe) },
            "after": { "health_check": check.as_ref().map(stockade_domain::HealthCheck::describe) },
        }),
    )
    .await?;
    Ok(flash::redirect(
        &format!("/jails/{}/settings", jail.id),
        "ok",
        if check.is_some() {
            "Health check saved; the jail's node probes it from now on."
        } else {
            "Health check removed."
        },
    ))
}

pub(super) async fn grow_back(
    req: HttpRequest,
    state: web::Data<AppState>,
    s: SignedIn,
    path: web::Path<String>,
    form: web::Form<super::ActionForm>,
) -> Result<HttpResponse, WebError> {
    let tenant_id = customer_tenant(&s)?;
    s.check_csrf(&form.csrf_token)?;
    let jail = live_jail(&state, tenant_id, parse_id(&path)?).await?;
    let here = format!("/jails/{}", jail.id);
    match jails::grow_back(&state.pool, tenant_id, jail.id).await {
        Ok(grown) => {
            record(
                &state,
                &req,
                &s,
                Some(tenant_id),
                "jail.grow_back",
                grown.name.as_str(),
                serde_json::json!({
                    "before": limits_json(&jail.limits),
                    "after": limits_json(&grown.limits),
                }),
            )
            .await?;
            Ok(flash::redirect(
                &here,
                "ok",
                "The jail has its limits back; they apply to it now.",
            ))
        }
        Err(e) => Ok(flash::redirect(
            &here,
            "error",
            &format!("Not grown back: {}", refusal(e)?),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_masked_secret_keeps_its_value_and_a_new_one_must_be_typed() {
        let current = vec![
            EnvVar::new("TOKEN", "s3cret", true).unwrap(),
            EnvVar::new("MODE", "prod", false).unwrap(),
        ];
        let text = env_text(&current);
        assert_eq!(text, "secret TOKEN=********\nMODE=prod");
        assert_eq!(parse_env(&text, &current).unwrap(), current);
        let err = parse_env("secret OTHER=********", &current).unwrap_err();
        assert!(err.contains("OTHER"), "{err}");
        assert!(
            parse_env("NOEQUALS", &current)
                .unwrap_err()
                .contains("line 1")
        );
        let changed = parse_env("secret TOKEN=new\n# a note\n\nX=a=b", &current).unwrap();
        assert_eq!(changed[0].value, "new");
        assert_eq!(changed[1].value, "a=b");
    }
}
