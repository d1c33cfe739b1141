//! Liveness and readiness for load balancers and `stockade up`.

use actix_web::{HttpResponse, web};

use crate::AppState;

pub(crate) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz));
}

/// The process answers.
async fn healthz() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain").body("ok\n")
}

/// The process answers and its database does too.
async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    if stockade_store::ping(&state.pool).await {
        HttpResponse::Ok()
            .content_type("text/plain")
            .body("ready\n")
    } else {
        HttpResponse::ServiceUnavailable()
            .content_type("text/plain")
            .body("database unreachable\n")
    }
}
