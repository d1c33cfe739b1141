//! One-time links to choose a new password (`/reset/{token}`), made by
//! staff for a user who lost theirs: the staff never learn the password,
//! the link works once and for a day, and every session of the account ends.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use askama::Template;
use secrecy::SecretString;
use serde::Deserialize;
use stockade_store::{audit, password, sessions, users};

use crate::auth::client_addr;
use crate::{AppState, WebError};

const CSRF_COOKIE: &str = "stockade_reset_csrf";

pub(crate) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/reset/{token}", web::get().to(form))
        .route("/reset/{token}", web::post().to(submit));
}

#[derive(Template)]
#[template(path = "reset.html")]
struct ResetPage<'a> {
    csrf_token: &'a str,
    email: &'a str,
    action: &'a str,
    error: Option<&'a str>,
}

fn page(
    state: &AppState,
    status: StatusCode,
    token: &str,
    email: &str,
    error: Option<&str>,
) -> Result<HttpResponse, WebError> {
    let csrf = sessions::random_token();
    let action = format!("/reset/{token}");
    let body = ResetPage {
        csrf_token: &csrf,
        email,
        action: &action,
        error,
    }
    .render()
    .map_err(anyhow::Error::from)?;
    Ok(HttpResponse::build(status)
        .cookie(crate::auth::cookie(
            state,
            CSRF_COOKIE,
            csrf.clone(),
            &action,
        ))
        .insert_header(("cache-control", "no-store"))
        .insert_header(("referrer-policy", "no-referrer"))
        .content_type("text/html; charset=utf-8")
        .body(body))
}

/// A used, expired or unknown link: one page that says so.
fn gone() -> HttpResponse {
    HttpResponse::Gone()
        .content_type("text/html; charset=utf-8")
        .insert_header(("cache-control", "no-store"))
        .body(
            "<!doctype html><html lang=\"en\"><meta charset=\"utf-8\"><title>Link expired</title>\
             <main><h1>This link no longer works</h1><p>It was used already or is older than a day. \
             Ask your provider for a new one.</p><p><a href=\"/login\">Sign in</a></p></main></html>",
        )
}

async fn form(
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, WebError> {
    let token = path.into_inner();
    match users::password_reset_user(&state.pool, &token).await? {
        Some(user) => page(&state, StatusCode::OK, &token, user.email.as_str(), None),
        None => Ok(gone()),
    }
}

#[derive(Deserialize)]
struct ResetForm {
    #[serde(default)]
    csrf_token: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    repeat: String,
}

async fn submit(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
    form: web::Form<ResetForm>,
) -> Result<HttpResponse, WebError> {
    let token = path.into_inner();
    let expected = req.cookie(CSRF_COOKIE).map(|c| c.value().to_owned());
    if expected.as_deref() != Some(form.csrf_token.as_str()) || form.csrf_token.is_empty() {
        return Err(WebError::Csrf);
    }
    let Some(user) = users::password_reset_user(&state.pool, &token).await? else {
        return Ok(gone());
    };
    let refuse = |msg: &str| {
        page(
            &state,
            StatusCode::UNPROCESSABLE_ENTITY,
            &token,
            user.email.as_str(),
            Some(msg),
        )
    };
    if form.password != form.repeat {
        return refuse("password: the two passwords differ");
    }
    let secret = SecretString::from(form.password.clone());
    if let Err(e) = password::check_strength(&secret) {
        return refuse(&e.to_string());
    }
    let hash = web::block(move || password::hash(&secret))
        .await
        .map_err(anyhow::Error::from)??;
    let Some(user_id) = users::reset_password(&state.pool, &token, &hash).await? else {
        return Ok(gone());
    };
    let addr = client_addr(&req);
    audit::record(
        &state.pool,
        &audit::Entry {
            actor_user_id: Some(user_id),
            actor: user.email.as_str(),
            tenant_id: user.tenant_id,
            action: "user.password_set",
            target: user.email.as_str(),
            client_addr: addr.as_deref(),
            details: serde_json::json!({ "through": "one-time link" }),
        },
    )
    .await?;
    Ok(HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header(("cache-control", "no-store"))
        .body(
            "<!doctype html><html lang=\"en\"><meta charset=\"utf-8\"><title>Password set</title>\
             <main><h1>Your new password is set</h1><p data-password-set>Every other session of \
             the account has ended.</p><p><a href=\"/login\">Sign in</a></p></main></html>",
        ))
}
