//! Start, stop, restart and delete, with a confirmation where it matters.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use askama::Template;
use stockade_domain::DesiredState;
use stockade_store::StoreError;
use stockade_store::jails::{self};

use super::parse_id;
use super::{ActionForm, Layout, customer_tenant, record, render};
use crate::auth::SignedIn;
use crate::{AppState, WebError, flash};

#[derive(Template)]
#[template(path = "confirm.html")]
pub(crate) struct ConfirmPage {
    pub layout: Layout,
    pub title: String,
    pub message: String,
    pub action: String,
    pub button: &'static str,
    pub back: String,
    /// Asks for a reason, shown to the tenant's customers (a suspension).
    pub reason: bool,
}

pub(super) async fn confirm_delete(
    req: HttpRequest,
    state: web::Data<AppState>,
    s: SignedIn,
    path: web::Path<String>,
) -> Result<HttpResponse, WebError> {
    let tenant_id = customer_tenant(&s)?;
    let jail = jails::get(&state.pool, tenant_id, parse_id(&path)?).await?;
    let page = ConfirmPage {
        reason: false,
        layout: Layout::new(&req, &s.0),
        title: format!("Delete {}?", jail.name),
        message: format!(
            "The jail {} and everything on its volume will be destroyed. This cannot be undone.",
            jail.name
        ),
        action: format!("/jails/{}/delete", jail.id),
        button: "Delete jail",
        back: format!("/jails/{}", jail.id),
    };
    render(StatusCode::OK, &page, false)
}

pub(super) async fn action(
    req: HttpRequest,
    state: web::Data<AppState>,
    s: SignedIn,
    path: web::Path<(String, String)>,
    form: web::Form<ActionForm>,
) -> Result<HttpResponse, WebError> {
    let tenant_id = customer_tenant(&s)?;
    s.check_csrf(&form.csrf_token)?;
    let (id, action) = path.into_inner();
    let id = parse_id(&id)?;
    let (desired, verb) = match action.as_str() {
        "start" => (DesiredState::Running, "start"),
        "stop" => (DesiredState::Stopped, "stop"),
        "restart" => (DesiredState::Running, "restart"),
        "delete" if form.confirm.as_deref() == Some("yes") => (DesiredState::Deleted, "delete"),
        "delete" => return Ok(crate::auth::see_other(&format!("/jails/{id}/delete"))),
        _ => return Err(WebError::NotFound),
    };
    let result = if verb == "restart" {
        jails::restart(&state.pool, tenant_id, id).await
    } else {
        jails::set_desired(&state.pool, tenant_id, id, desired).await
    };
    match result {
        Ok(jail) => {
            record(
                &state,
                &req,
                &s,
                Some(tenant_id),
                &format!("jail.{verb}"),
                jail.name.as_str(),
                serde_json::json!({}),
            )
            .await?;
            let (to, msg) = if verb == "delete" {
                (
                    "/jails".to_owned(),
                    format!("Jail {} is being deleted.", jail.name),
                )
            } else {
                (
                    format!("/jails/{id}"),
                    format!("Jail {}: {verb} requested.", jail.name),
                )
            };
            Ok(flash::redirect(&to, "ok", &msg))
        }
        Err(StoreError::InvalidState(msg)) => Ok(flash::redirect(
            &format!("/jails/{id}"),
            "error",
            &format!("Cannot {verb}: {msg}."),
        )),
        Err(e) => Err(e.into()),
    }
}
