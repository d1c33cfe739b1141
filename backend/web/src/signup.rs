//! Self sign-up: a new tenant on the configured plan with its first
//! customer account. A setting, off by default; when off the pages do not exist.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use askama::Template;
use secrecy::SecretString;
use serde::Deserialize;
use stockade_domain::{Email, TenantSlug};
use stockade_store::{StoreError, audit, password, plans, sessions, tenants};

use crate::auth::{client_addr, session_cookie};
use crate::{AppState, WebError};

const CSRF_COOKIE: &str = "stockade_signup_csrf";

pub(crate) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/signup", web::get().to(form))
        .route("/signup", web::post().to(submit));
}

#[derive(Template)]
#[template(path = "signup.html")]
struct SignupPage<'a> {
    csrf_token: &'a str,
    display_name: &'a str,
    slug: &'a str,
    email: &'a str,
    error: Option<&'a str>,
}

fn page(
    state: &AppState,
    status: StatusCode,
    f: &SignupForm,
    error: Option<&str>,
) -> Result<HttpResponse, WebError> {
    let token = sessions::random_token();
    let body = SignupPage {
        csrf_token: &token,
        display_name: &f.display_name,
        slug: &f.slug,
        email: &f.email,
        error,
    }
    .render()
    .map_err(anyhow::Error::from)?;
    Ok(HttpResponse::build(status)
        .cookie(crate::auth::cookie(
            state,
            CSRF_COOKIE,
            token.clone(),
            "/signup",
        ))
        .content_type("text/html; charset=utf-8")
        .body(body))
}

#[derive(Deserialize, Default)]
struct SignupForm {
    #[serde(default)]
    csrf_token: String,
    display_name: String,
    slug: String,
    email: String,
    #[serde(default)]
    password: String,
}

async fn form(state: web::Data<AppState>) -> Result<HttpResponse, WebError> {
    if state.settings.signup_plan.is_none() {
        return Err(WebError::NotFound);
    }
    page(&state, StatusCode::OK, &SignupForm::default(), None)
}

async fn submit(
    req: HttpRequest,
    state: web::Data<AppState>,
    form: web::Form<SignupForm>,
) -> Result<HttpResponse, WebError> {
    let Some(plan_name) = state.settings.signup_plan.clone() else {
        return Err(WebError::NotFound);
    };
    let f = form.into_inner();
    let expected = req.cookie(CSRF_COOKIE).map(|c| c.value().to_owned());
    if expected.as_deref() != Some(f.csrf_token.as_str()) || f.csrf_token.is_empty() {
        return Err(WebError::Csrf);
    }
    let refuse = |msg: String| page(&state, StatusCode::UNPROCESSABLE_ENTITY, &f, Some(&msg));
    let slug = match TenantSlug::parse(f.slug.trim()) {
        Ok(s) => s,
        Err(e) => return refuse(e.to_string()),
    };
    let name = f.display_name.trim();
    if name.is_empty() || name.len() > 200 {
        return refuse("name: must be 1 to 200 characters".into());
    }
    let email = match Email::parse(&f.email) {
        Ok(e) => e,
        Err(e) => return refuse(e.to_string()),
    };
    let secret = SecretString::from(f.password.clone());
    if let Err(e) = password::check_strength(&secret) {
        return refuse(e.to_string());
    }
    let plan = plans::by_name(&state.pool, &plan_name).await?;
    let hash = web::block(move || password::hash(&secret))
        .await
        .map_err(anyhow::Error::from)??;
    let created =
        tenants::create_with_owner(&state.pool, &slug, name, plan.id, &email, &hash).await;
    let (tenant_id, user_id) = match created {
        Ok(ids) => ids,
        Err(e @ StoreError::Conflict(_)) => return refuse(e.to_string()),
        Err(e) => return Err(e.into()),
    };
    let addr = client_addr(&req);
    audit::record(
        &state.pool,
        &audit::Entry {
            actor_user_id: Some(user_id),
            actor: email.as_str(),
            tenant_id: Some(tenant_id),
            action: "tenant.sign_up",
            target: slug.as_str(),
            client_addr: addr.as_deref(),
            details: serde_json::json!({ "plan": plan_name }),
        },
    )
    .await?;
    let token = sessions::create(
        &state.pool,
        user_id,
        state.settings.session_expiry,
        addr.as_deref(),
    )
    .await?;
    Ok(HttpResponse::SeeOther()
        .insert_header((actix_web::http::header::LOCATION, "/overview"))
        .cookie(session_cookie(&state, token))
        .finish())
}
