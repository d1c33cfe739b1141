//! CSS and JS from `frontend/`, embedded in the binary.

use actix_web::http::header;
use actix_web::{HttpResponse, web};

use crate::WebError;

const ASSETS: &[(&str, &str, &str)] = &[
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("../../../frontend/style.css"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("../../../frontend/app.js"),
    ),
];

pub(crate) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/static/{file}", web::get().to(asset));
}

async fn asset(file: web::Path<String>) -> Result<HttpResponse, WebError> {
    let (_, mime, body) = ASSETS
        .iter()
        .find(|(name, _, _)| *name == file.as_str())
        .ok_or(WebError::NotFound)?;
    Ok(HttpResponse::Ok()
        .content_type(*mime)
        .insert_header((header::CACHE_CONTROL, "public, max-age=300"))
        .body(*body))
}
