//! The image catalogue: which images customers may pick, where nodes pull
//! them from, and how each node's pull went.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use askama::Template;
use serde::Deserialize;
use stockade_store::images::{self, Image};

use crate::api::images::{AddImage, add_image};
use crate::auth::SignedIn;
use crate::pages::{Layout, record, render, require_admin, require_staff};
use crate::{AppState, WebError, flash};

#[derive(Debug, Default, Deserialize)]
pub(super) struct ImageForm {
    csrf_token: String,
    name: String,
    #[serde(default)]
    reference: String,
    #[serde(default)]
    registry_username: String,
    #[serde(default)]
    registry_password: String,
    #[serde(default)]
    offered: Option<String>,
}

/// What the add form shows again after a refusal (never the password).
#[derive(Debug, Default)]
pub(super) struct Typed {
    name: String,
    reference: String,
    registry_username: String,
    offered: bool,
}

#[derive(Template)]
#[template(path = "staff_images.html")]
pub(super) struct ImagesPage {
    layout: Layout,
    can_admin: bool,
    images: Vec<Image>,
    form: Typed,
    error: Option<String>,
}

async fn page(
    req: &HttpRequest,
    state: &AppState,
    s: &SignedIn,
    form: Typed,
    error: Option<String>,
) -> Result<HttpResponse, WebError> {
    let layout = Layout::new(req, &s.0);
    let had_flash = layout.flash.is_some();
    let status = if error.is_some() {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::OK
    };
    render(
        status,
        &ImagesPage {
            layout,
            can_admin: s.0.user.role == stockade_domain::Role::Admin,
            images: images::list(&state.pool).await?,
            form,
            error,
        },
        had_flash,
    )
}

pub(super) async fn images_page(
    req: HttpRequest,
    state: web::Data<AppState>,
    s: SignedIn,
) -> Result<HttpResponse, WebError> {
    require_staff(&s)?;
    page(&req, &state, &s, Typed::default(), None).await
}

/// Adds an image (admins).
pub(super) async fn add(
    req: HttpRequest,
    state: web::Data<AppState>,
    s: SignedIn,
    form: web::Form<ImageForm>,
) -> Result<HttpResponse, WebError> {
    require_admin(&s)?;
    s.check_csrf(&form.csrf_token)?;
    let f = form.into_inner();
    let body = AddImage {
        name: f.name.trim().to_owned(),
        reference: Some(f.reference.clone()),
        registry_username: Some(f.registry_username.clone()),
        registry_password: Some(f.registry_password),
        offered: Some(f.offered.is_some()),
    };
    match add_image(&state, &body).await {
        Ok(image) => {
            record(
                &state,
                &req,
                &s,
                None,
                "image.add",
                &image.name,
                serde_json::json!({ "reference": image.reference, "offered": image.offered }),
            )
            .await?;
            Ok(flash::redirect(
                "/staff/images",
                "ok",
                &match image.reference {
                    Some(_) => format!("Image {} added; every node pulls it now.", image.name),
                    None => format!("Image {} added.", image.name),
                },
            ))
        }
        Err(crate::api::error::ApiError::Unexpected(e)) => Err(WebError::Unexpected(e)),
        Err(refused) => {
            let typed = Typed {
                name: f.name,
                reference: f.reference,
                registry_username: f.registry_username,
                offered: f.offered.is_some(),
            };
            page(&req, &state, &s, typed, Some(refused.to_string())).await
        }
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct OfferForm {
    csrf_token: String,
    offered: bool,
}

/// Offers an image to customers or stops offering it (admins).
pub(super) async fn offer(
    req: HttpRequest,
    state: web::Data<AppState>,
    s: SignedIn,
    path: web::Path<String>,
    form: web::Form<OfferForm>,
) -> Result<HttpResponse, WebError> {
    require_admin(&s)?;
    s.check_csrf(&form.csrf_token)?;
    let image = images::set_offered(&state.pool, &path, form.offered)
        .await
        .map_err(|_| WebError::NotFound)?;
    let action = if image.offered {
        "image.offer"
    } else {
        "image.withdraw"
    };
    record(
        &state,
        &req,
        &s,
        None,
        action,
        &image.name,
        serde_json::json!({}),
    )
    .await?;
    let said = if image.offered {
        format!("Customers may pick {} now.", image.name)
    } else {
        format!(
            "Customers can no longer pick {}; jails made from it keep it.",
            image.name
        )
    };
    Ok(flash::redirect("/staff/images", "ok", &said))
}

#[derive(Debug, Deserialize)]
pub(super) struct RemoveForm {
    csrf_token: String,
}

/// Takes an image out of the catalogue (admins).
pub(super) async fn remove(
    req: HttpRequest,
    state: web::Data<AppState>,
    s: SignedIn,
    path: web::Path<String>,
    form: web::Form<RemoveForm>,
) -> Result<HttpResponse, WebError> {
    require_admin(&s)?;
    s.check_csrf(&form.csrf_token)?;
    images::remove(&state.pool, &path)
        .await
        .map_err(|_| WebError::NotFound)?;
    record(
        &state,
        &req,
        &s,
        None,
        "image.remove",
        &path,
        serde_json::json!({}),
    )
    .await?;
    Ok(flash::redirect(
        "/staff/images",
        "ok",
        &format!(
            "Image {} removed from the catalogue; nodes remove their copy once no jail uses it.",
            path.as_str()
        ),
    ))
}
