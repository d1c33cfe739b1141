//! Panel pages for signed-in users.

use actix_web::{HttpResponse, web};
use askama::Template;

use crate::WebError;
use crate::auth::SignedIn;

pub(crate) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/", web::get().to(overview));
}

#[derive(Template)]
#[template(path = "dashboard.html")]
struct Overview<'a> {
    email: &'a str,
    role: &'a str,
    csrf_token: &'a str,
}

async fn overview(signed_in: SignedIn) -> Result<HttpResponse, WebError> {
    let s = &signed_in.0;
    let body = Overview {
        email: s.user.email.as_str(),
        role: s.user.role.as_str(),
        csrf_token: &s.csrf_token,
    }
    .render()
    .map_err(anyhow::Error::from)?;
    Ok(HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header(("Cache-Control", "no-store"))
        .body(body))
}
