//! CSS and JS from `frontend/`, embedded in the binary.

use actix_web::http::header;
use actix_web::{HttpResponse, web};

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
    // The console's terminal (xterm.js, MIT; see frontend/vendor/xterm).
    (
        "vendor/xterm/xterm.js",
        "text/javascript; charset=utf-8",
        include_str!("../../../frontend/vendor/xterm/xterm.js"),
    ),
    (
        "vendor/xterm/xterm.css",
        "text/css; charset=utf-8",
        include_str!("../../../frontend/vendor/xterm/xterm.css"),
    ),
    (
        "vendor/xterm/LICENSE",
        "text/plain; charset=utf-8",
        include_str!("../../../frontend/vendor/xterm/LICENSE"),
    ),
];

pub(crate) fn routes(cfg: &mut web::ServiceConfig) {
    // One fixed path per file: the router matches them without a pattern.
    for (name, mime, body) in ASSETS {
        cfg.route(
            &format!("/static/{name}"),
            web::get().to(move || async move { asset(mime, body) }),
        );
    }
}

fn asset(mime: &'static str, body: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(mime)
        .insert_header((header::CACHE_CONTROL, "public, max-age=300"))
        .body(body)
}
