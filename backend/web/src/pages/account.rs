//! The signed-in user's own account: changing the password.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use askama::Template;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use stockade_store::{password, sessions, users};

use super::{Layout, record, render};
use crate::auth::{SignedIn, client_addr};
use crate::{AppState, WebError, flash};

pub(super) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/account", web::get().to(page))
        .route("/account/password", web::post().to(change));
}

#[derive(Template)]
#[template(path = "account.html")]
struct AccountPage {
    layout: Layout,
    error: Option<String>,
}

async fn page(req: HttpRequest, s: SignedIn) -> Result<HttpResponse, WebError> {
    let layout = Layout::new(&req, &s.0);
    let had_flash = layout.flash.is_some();
    render(
        StatusCode::OK,
        &AccountPage {
            layout,
            error: None,
        },
        had_flash,
    )
}

#[derive(Deserialize)]
struct ChangeForm {
    csrf_token: String,
    current: String,
    new: String,
    again: String,
}

async fn change(
    req: HttpRequest,
    state: web::Data<AppState>,
    s: SignedIn,
    form: web::Form<ChangeForm>,
) -> Result<HttpResponse, WebError> {
    s.check_csrf(&form.csrf_token)?;
    let form = form.into_inner();
    let current = SecretString::from(form.current);
    let new = SecretString::from(form.new);
    let refuse = |msg: &str| {
        render(
            StatusCode::UNPROCESSABLE_ENTITY,
            &AccountPage {
                layout: Layout::new(&req, &s.0),
                error: Some(msg.to_owned()),
            },
            false,
        )
    };
    if new.expose_secret() != form.again.as_str() {
        return refuse("The new passwords do not match.");
    }
    if let Err(e) = password::check_strength(&new) {
        return refuse(&format!("New password {}.", e.reason));
    }
    let stored = users::password_hash(&state.pool, s.0.user.id).await?;
    let ok = web::block(move || password::verify(&current, &stored))
        .await
        .map_err(anyhow::Error::from)?;
    if !ok {
        return refuse("The current password is wrong.");
    }
    let hash = web::block(move || password::hash(&new))
        .await
        .map_err(anyhow::Error::from)??;
    // Revokes every session of the account, this one included...
    users::set_password(&state.pool, s.0.user.id, &hash).await?;
    record(
        &state,
        &req,
        &s,
        s.0.user.tenant_id,
        "user.password_change",
        s.0.user.email.as_str(),
        serde_json::json!({}),
    )
    .await?;
    let addr = client_addr(&req);
    // ...and this browser gets a fresh one, so the user stays signed in here.
    let token = sessions::create(
        &state.pool,
        s.0.user.id,
        state.settings.session_expiry,
        addr.as_deref(),
    )
    .await?;
    let mut resp = flash::redirect(
        "/account",
        "ok",
        "Password changed; every other session was signed out.",
    );
    let _ = resp.add_cookie(&crate::auth::session_cookie(&state, token));
    Ok(resp)
}
