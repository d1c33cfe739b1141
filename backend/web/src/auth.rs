//! Sign-in, sign-out and the signed-in user of a request.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use actix_web::cookie::{Cookie, SameSite};
use actix_web::http::header;
use actix_web::{FromRequest, HttpRequest, HttpResponse, web};
use askama::Template;
use secrecy::SecretString;
use serde::Deserialize;
use stockade_domain::Email;
use stockade_store::sessions::{self, Session};
use stockade_store::{audit, password, users};

use crate::{AppState, WebError};

/// Name of the cookie holding the session token.
pub(crate) const SESSION_COOKIE: &str = "stockade_session";
/// Name of the cookie holding the sign-in form's CSRF token (before a session exists).
const LOGIN_CSRF_COOKIE: &str = "stockade_login_csrf";

pub(crate) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/login", web::get().to(login_form))
        .route("/login", web::post().to(login))
        .route("/logout", web::post().to(logout));
}

/// The signed-in session of a request; extracting it refuses anonymous requests.
pub(crate) struct SignedIn(pub Arc<Session>);

impl FromRequest for SignedIn {
    type Error = WebError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, WebError>>>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let token = req.cookie(SESSION_COOKIE).map(|c| c.value().to_owned());
        let state = req.app_data::<web::Data<AppState>>().cloned();
        Box::pin(async move {
            let (Some(token), Some(state)) = (token, state) else {
                return Err(WebError::SignInRequired);
            };
            let hash = sessions::token_hash(&token);
            if let Some(session) = state.caches.session(&hash) {
                return Ok(SignedIn(session));
            }
            let epoch = state.caches.epoch();
            let session = sessions::touch(&state.pool, &token, state.settings.session_expiry)
                .await?
                .map(Arc::new)
                .ok_or(WebError::SignInRequired)?;
            state.caches.keep_session(hash, &session, epoch);
            Ok(SignedIn(session))
        })
    }
}

impl SignedIn {
    /// Refuses a form whose CSRF token is not this session's.
    pub(crate) fn check_csrf(&self, submitted: &str) -> Result<(), WebError> {
        if constant_time_eq(submitted.as_bytes(), self.0.csrf_token.as_bytes()) {
            Ok(())
        } else {
            Err(WebError::Csrf)
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The client's address. Forwarding headers are set by whoever sends the
/// request, so they are believed only from a peer in `trusted_proxies`:
/// then the client is the nearest address of `X-Forwarded-For` (or
/// `Forwarded: for=`) that is not itself a trusted proxy.
pub(crate) fn client_addr(req: &HttpRequest) -> Option<String> {
    let peer = req.peer_addr()?.ip();
    let trusted: &[ipnet::IpNet] = req
        .app_data::<web::Data<AppState>>()
        .map_or(&[], |s| s.settings.trusted_proxies.as_slice());
    let is_trusted = |ip: &std::net::IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer) {
        return Some(peer.to_string());
    }
    let mut hops: Vec<std::net::IpAddr> = Vec::new();
    for value in req.headers().get_all("forwarded") {
        for element in value.to_str().unwrap_or_default().split(',') {
            for pair in element.split(';') {
                if let Some((k, v)) = pair.trim().split_once('=')
                    && k.trim().eq_ignore_ascii_case("for")
                {
                    let v = v.trim().trim_matches('"');
                    let v = v
                        .strip_prefix('[')
                        .map_or(v, |v| v.split(']').next().unwrap_or(v));
                    let v = if v.matches(':').count() == 1 {
                        v.split(':').next().unwrap_or(v)
                    } else {
                        v
                    };
                    if let Ok(ip) = v.parse() {
                        hops.push(ip);
                    }
                }
            }
        }
    }
    if hops.is_empty() {
        for value in req.headers().get_all("x-forwarded-for") {
            hops.extend(
                value
                    .to_str()
                    .unwrap_or_default()
                    .split(',')
                    .filter_map(|h| h.trim().parse::<std::net::IpAddr>().ok()),
            );
        }
    }
    let client = hops
        .into_iter()
        .rev()
        .find(|ip| !is_trusted(ip))
        .unwrap_or(peer);
    Some(client.to_string())
}

pub(crate) fn cookie<'a>(
    state: &AppState,
    name: &'a str,
    value: String,
    path: &'a str,
) -> Cookie<'a> {
    Cookie::build(name, value)
        .path(path)
        .http_only(true)
        .same_site(SameSite::Lax)
        .secure(state.settings.secure_cookies())
        .finish()
}

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage<'a> {
    csrf_token: &'a str,
    email: &'a str,
    error: Option<&'a str>,
}

fn render_login(
    state: &AppState,
    status: actix_web::http::StatusCode,
    email: &str,
    error: Option<&str>,
) -> Result<HttpResponse, WebError> {
    let csrf = sessions::random_token();
    let body = LoginPage {
        csrf_token: &csrf,
        email,
        error,
    }
    .render()
    .map_err(anyhow::Error::from)?;
    Ok(HttpResponse::build(status)
        .cookie(cookie(state, LOGIN_CSRF_COOKIE, csrf.clone(), "/login"))
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .body(body))
}

async fn login_form(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, WebError> {
    if let Some(c) = req.cookie(SESSION_COOKIE)
        && sessions::touch(&state.pool, c.value(), state.settings.session_expiry)
            .await?
            .is_some()
    {
        return Ok(see_other("/"));
    }
    render_login(&state, actix_web::http::StatusCode::OK, "", None)
}

#[derive(Deserialize)]
struct LoginForm {
    csrf_token: String,
    email: String,
    password: String,
}

const WRONG_CREDENTIALS: &str = "Wrong email or password.";
/// Unsuccessful sign-ins for one email from one address within the window
/// before that pair is locked. An account is never locked as a whole: a
/// flood of wrong passwords from elsewhere does not stop its owner.
const LOCK_AFTER_PAIR: i64 = 10;
/// Unsuccessful sign-ins from one address (any email) before it is locked.
const LOCK_AFTER_ADDR: i64 = 30;
/// The window, and how long a lock lasts.
const LOCK_MINUTES: i32 = 15;
/// Extra wait per recent failure, for a wrong password only.
const FAILURE_DELAY: std::time::Duration = std::time::Duration::from_millis(200);

async fn login(
    req: HttpRequest,
    state: web::Data<AppState>,
    form: web::Form<LoginForm>,
) -> Result<HttpResponse, WebError> {
    let form = form.into_inner();
    let expected = req.cookie(LOGIN_CSRF_COOKIE).map(|c| c.value().to_owned());
    if !expected.is_some_and(|e| constant_time_eq(e.as_bytes(), form.csrf_token.as_bytes())) {
        return Err(WebError::Csrf);
    }
    let unauthorized = actix_web::http::StatusCode::UNAUTHORIZED;
    let password = SecretString::from(form.password);
    let Ok(email) = Email::parse(&form.email) else {
        return render_login(&state, unauthorized, &form.email, Some(WRONG_CREDENTIALS));
    };
    // Throttling counts attempts per (email, client address) and per client
    // address, whether the account exists or not, so it tells nothing about
    // which emails do. Each attempt is counted before its password is
    // checked, so concurrent guesses are counted too.
    let addr = client_addr(&req);
    let attempt =
        audit::begin_sign_in(&state.pool, email.as_str(), addr.as_deref(), LOCK_MINUTES).await?;
    if attempt.by_pair > LOCK_AFTER_PAIR || attempt.by_addr > LOCK_AFTER_ADDR {
        return render_login(
            &state,
            actix_web::http::StatusCode::TOO_MANY_REQUESTS,
            email.as_str(),
            Some(&format!(
                "Too many failed sign-ins. Try again in {LOCK_MINUTES} minutes."
            )),
        );
    }
    let found = users::find_for_sign_in(&state.pool, &email).await?;
    // Unknown accounts are checked against a dummy hash so both answers take
    // the same time and nothing tells which emails exist.
    let (user, phc) = match found {
        Some((user, phc)) => (Some(user), phc),
        None => (None, password::dummy_hash().to_owned()),
    };
    let ok = web::block(move || password::verify(&password, &phc))
        .await
        .map_err(anyhow::Error::from)?;
    let Some(user) = user.filter(|_| ok) else {
        // Each failure in a row answers a little slower, also when the
        // guesses for one account come from many addresses.
        let recent = attempt.by_account.max(attempt.by_addr) - 1;
        let delay = FAILURE_DELAY.saturating_mul(u32::try_from(recent).unwrap_or(u32::MAX));
        tokio::time::sleep(delay.min(std::time::Duration::from_secs(3))).await;
        audit::record(
            &state.pool,
            &audit::Entry {
                actor_user_id: None,
                actor: email.as_str(),
                tenant_id: None,
                action: "user.sign_in_failed",
                target: email.as_str(),
                client_addr: addr.as_deref(),
                details: serde_json::json!({}),
            },
        )
        .await?;
        return render_login(
            &state,
            unauthorized,
            email.as_str(),
            Some(WRONG_CREDENTIALS),
        );
    };
    audit::sign_in_succeeded(&state.pool, attempt.id).await?;
    // A new token at every sign-in: a token planted before sign-in is worthless.
    if let Some(old) = req.cookie(SESSION_COOKIE) {
        sessions::delete(&state.pool, old.value()).await?;
    }
    let token = sessions::create(
        &state.pool,
        user.id,
        state.settings.session_expiry,
        addr.as_deref(),
    )
    .await?;
    audit::record(
        &state.pool,
        &audit::Entry {
            actor_user_id: Some(user.id),
            actor: user.email.as_str(),
            tenant_id: user.tenant_id,
            action: "user.sign_in",
            target: user.email.as_str(),
            client_addr: addr.as_deref(),
            details: serde_json::json!({}),
        },
    )
    .await?;
    let mut expired = cookie(&state, LOGIN_CSRF_COOKIE, String::new(), "/login");
    expired.make_removal();
    Ok(HttpResponse::SeeOther()
        .insert_header((header::LOCATION, "/"))
        .cookie(cookie(&state, SESSION_COOKIE, token, "/"))
        .cookie(expired)
        .finish())
}

#[derive(Deserialize)]
struct CsrfForm {
    csrf_token: String,
}

async fn logout(
    req: HttpRequest,
    state: web::Data<AppState>,
    signed_in: SignedIn,
    form: web::Form<CsrfForm>,
) -> Result<HttpResponse, WebError> {
    signed_in.check_csrf(&form.csrf_token)?;
    if let Some(c) = req.cookie(SESSION_COOKIE) {
        sessions::delete(&state.pool, c.value()).await?;
    }
    let mut gone = cookie(&state, SESSION_COOKIE, String::new(), "/");
    gone.make_removal();
    Ok(HttpResponse::SeeOther()
        .insert_header((header::LOCATION, "/login"))
        .cookie(gone)
        .finish())
}

/// The session cookie carrying `token`.
pub(crate) fn session_cookie(state: &AppState, token: String) -> Cookie<'static> {
    cookie(state, SESSION_COOKIE, token, "/")
}

/// A 303 redirect, the answer to a successful form post.
pub(crate) fn see_other(location: &str) -> HttpResponse {
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, location))
        .finish()
}

/// Refuses a cross-site write to the panel before its body is read: a
/// browser names the page a form was sent from (`Sec-Fetch-Site`, `Origin`),
/// so a form another site posts is refused without reading what it sends.
/// The form's CSRF token is still checked after (clients that send neither
/// header rely on it alone). The API is not concerned: it takes bearer
/// tokens, never cookies.
pub(crate) async fn same_origin_writes(
    req: actix_web::dev::ServiceRequest,
    next: actix_web::middleware::Next<impl actix_web::body::MessageBody + 'static>,
) -> Result<actix_web::dev::ServiceResponse<actix_web::body::BoxBody>, actix_web::Error> {
    use actix_web::http::Method;
    let writes = !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if writes && !req.path().starts_with("/api/") && cross_site(&req) {
        let refused = actix_web::ResponseError::error_response(&WebError::Csrf);
        return Ok(req.into_response(refused));
    }
    next.call(req)
        .await
        .map(actix_web::dev::ServiceResponse::map_into_boxed_body)
}

/// Whether the browser says the request comes from another site.
fn cross_site(req: &actix_web::dev::ServiceRequest) -> bool {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if header("sec-fetch-site").is_some_and(|s| s.eq_ignore_ascii_case("cross-site")) {
        return true;
    }
    let Some(origin) = header("origin") else {
        return false;
    };
    let state = req.app_data::<web::Data<AppState>>();
    let public = state.map(|s| s.settings.public_url.trim_end_matches('/').to_owned());
    let info = req.connection_info();
    let this = format!("{}://{}", info.scheme(), info.host());
    !(origin.eq_ignore_ascii_case(&this)
        || public.is_some_and(|p| origin.eq_ignore_ascii_case(origin_of(&p))))
}

/// The scheme, host and port of a URL (its origin), without the path.
fn origin_of(url: &str) -> &str {
    let start = url.find("://").map_or(0, |i| i + 3);
    url[start..]
        .find('/')
        .map_or(url, |end| &url[..start + end])
}
