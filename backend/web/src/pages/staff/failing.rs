//! Every failing jail across tenants: failed or crash-looping.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use askama::Template;
use stockade_store::jails;
use uuid::Uuid;

use crate::auth::SignedIn;
use crate::pages::customer::status_note;
use crate::pages::{Layout, render, require_staff};
use crate::{AppState, WebError};

/// The most failing jails one page lists.
const SHOWN: i64 = 500;

pub(super) struct FailingLine {
    tenant_id: Uuid,
    tenant: String,
    jail_id: Uuid,
    jail: String,
    state: &'static str,
    since: String,
    note: String,
}

#[derive(Template)]
#[template(path = "staff_failing.html")]
pub(super) struct FailingPage {
    layout: Layout,
    jails: Vec<FailingLine>,
    shown: i64,
}

pub(super) async fn failing_page(
    req: HttpRequest,
    state: web::Data<AppState>,
    s: SignedIn,
) -> Result<HttpResponse, WebError> {
    require_staff(&s)?;
    let jails = jails::failing(&state.pool, SHOWN)
        .await?
        .into_iter()
        .map(|(j, tenant)| FailingLine {
            tenant_id: j.tenant_id,
            tenant,
            jail_id: j.id,
            jail: j.name.to_string(),
            state: if j.health == stockade_domain::Health::Unhealthy
                && j.observed_state == stockade_domain::ObservedState::Running
            {
                "unhealthy"
            } else {
                j.observed_state.as_str()
            },
            since: j
                .run
                .last_exit
                .map(|e| e.at)
                .unwrap_or(j.created_at)
                .format("%Y-%m-%d %H:%M UTC")
                .to_string(),
            note: status_note(&j),
        })
        .collect();
    let layout = Layout::new(&req, &s.0);
    let had_flash = layout.flash.is_some();
    render(
        StatusCode::OK,
        &FailingPage {
            layout,
            jails,
            shown: SHOWN,
        },
        had_flash,
    )
}
