//! The image catalogue (`/images`): the provider adds registry images
//! (every node pulls them), says which customers may pick, and removes
//! them; a tenant's token lists the images it may pick.

use actix_web::{HttpRequest, HttpResponse, web};
use serde::{Deserialize, Serialize};
use stockade_store::images;
use utoipa::ToSchema;

use super::auth::{Authorized, TenantsRead, TenantsWrite};
use super::error::ApiError;
use super::resource;
use super::tenants::record;
use crate::AppState;

pub(crate) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        resource("/images")
            .route(web::get().to(list))
            .route(web::post().to(add)),
    )
    .service(
        resource("/images/{name}")
            .route(web::get().to(get))
            .route(web::patch().to(update))
            .route(web::delete().to(remove)),
    );
}

/// One node's copy of an image.
#[derive(Debug, Serialize, ToSchema)]
pub struct NodeImageOut {
    pub node: String,
    /// `ready` or `failed`.
    pub state: String,
    pub digest: Option<String>,
    /// Why the pull failed.
    pub error: Option<String>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

/// A catalogue image.
#[derive(Debug, Serialize, ToSchema)]
pub struct ImageOut {
    pub name: String,
    /// Where nodes pull it from; `null`: provided on the nodes by hand.
    pub reference: Option<String>,
    pub registry_username: Option<String>,
    /// Whether customers may pick it.
    pub offered: bool,
    pub created_at: chrono::DateTime<chrono::Utc>,
    /// Each node's pull (provider tokens only).
    pub nodes: Vec<NodeImageOut>,
}

impl From<images::Image> for ImageOut {
    fn from(i: images::Image) -> Self {
        ImageOut {
            name: i.name,
            reference: i.reference,
            registry_username: i.registry_username,
            offered: i.offered,
            created_at: i.created_at,
            nodes: i
                .nodes
                .into_iter()
                .map(|n| NodeImageOut {
                    node: n.node,
                    state: n.state,
                    digest: n.digest,
                    error: n.error,
                    updated_at: n.updated_at,
                })
                .collect(),
        }
    }
}

/// A list of images.
#[derive(Debug, Serialize, ToSchema)]
pub struct ImageList {
    pub data: Vec<ImageOut>,
}

/// The catalogue (provider) or the images the tenant may pick (a tenant's
/// token: offered images a node has, without node details).
#[utoipa::path(get, path = "/api/v1/images", tag = "images",
    responses((status = 200, description = "Images", body = ImageList)),
    security(("bearer" = ["tenants:read"])))]
pub(crate) async fn list(
    Authorized(caller, _): Authorized<TenantsRead>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let all = images::list(&state.pool).await?;
    let out: Vec<ImageOut> = if caller.tenant().is_some() {
        let offered = images::offered(&state.pool).await?;
        all.into_iter()
            .filter(|i| offered.contains(&i.name))
            .map(|i| ImageOut {
                nodes: Vec::new(),
                registry_username: None,
                ..ImageOut::from(i)
            })
            .collect()
    } else {
        all.into_iter().map(ImageOut::from).collect()
    };
    Ok(HttpResponse::Ok().json(ImageList { data: out }))
}

/// One catalogue image (provider).
#[utoipa::path(get, path = "/api/v1/images/{name}", tag = "images",
    params(("name" = String, Path, description = "Image name")),
    responses((status = 200, description = "The image", body = ImageOut)),
    security(("bearer" = ["tenants:read"])))]
pub(crate) async fn get(
    Authorized(caller, _): Authorized<TenantsRead>,
    name: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    caller.unbound()?;
    Ok(HttpResponse::Ok().json(ImageOut::from(images::get(&state.pool, &name).await?)))
}

/// A registry image to add to the catalogue.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddImage {
    /// The name jails use (lower-case letters, digits, `.`, `_`, `-`).
    #[schema(
        min_length = 1,
        max_length = 63,
        pattern = "^[a-z0-9][a-z0-9._-]{0,62}$"
    )]
    pub name: String,
    /// `registry[:port]/repository[:tag|@digest]`; absent: an image the
    /// provider puts on the nodes by hand.
    #[schema(min_length = 1, max_length = 512)]
    pub reference: Option<String>,
    /// The registry account nodes pull with (token or basic auth).
    #[schema(min_length = 1, max_length = 256)]
    pub registry_username: Option<String>,
    /// Its password, sealed to the nodes' key at once; never shown again.
    #[schema(min_length = 1, max_length = 1024)]
    pub registry_password: Option<String>,
    /// Whether customers may pick it (default: not until staff say so).
    pub offered: Option<bool>,
}

/// Adds an image to the catalogue; every node pulls a registry image and
/// records how it went (`nodes`). 409 `conflict` for a name in use.
#[utoipa::path(post, path = "/api/v1/images", tag = "images",
    request_body = AddImage,
    responses((status = 201, description = "Added", body = ImageOut)),
    security(("bearer" = ["tenants:write"])))]
pub(crate) async fn add(
    Authorized(caller, _): Authorized<TenantsWrite>,
    body: web::Json<AddImage>,
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    caller.unbound()?;
    let body = body.into_inner();
    let image = add_image(&state, &body).await?;
    record(&state, &req, &caller, None, "image.add", &image.name).await?;
    Ok(HttpResponse::Created()
        .insert_header(("Location", format!("/api/v1/images/{}", image.name)))
        .json(ImageOut::from(image)))
}

/// Checks and adds an image (the API's and the staff page's).
pub(crate) async fn add_image(
    state: &AppState,
    body: &AddImage,
) -> Result<images::Image, ApiError> {
    let reference = body
        .reference
        .as_deref()
        .map(str::trim)
        .filter(|r| !r.is_empty());
    let username = body
        .registry_username
        .as_deref()
        .map(str::trim)
        .filter(|u| !u.is_empty());
    let password = body.registry_password.as_deref().filter(|p| !p.is_empty());
    let sealed = match (username, password) {
        (None, None) => None,
        (Some(_), None) => {
            return Err(ApiError::field(
                "registry_password",
                "is needed with a registry username",
            ));
        }
        (None, Some(_)) => {
            return Err(ApiError::field(
                "registry_username",
                "is needed with a registry password",
            ));
        }
        (Some(u), Some(p)) => {
            if p.len() > 1024 {
                return Err(ApiError::field("registry_password", "is too long"));
            }
            let key = stockade_store::certificates::sealing_key(&state.pool)
                .await?
                .ok_or_else(|| {
                    ApiError::field(
                        "registry_password",
                        "cannot be kept yet: no node has published its key (start a node first)",
                    )
                })?;
            Some((u, stockade_store::certificates::seal(&key, p)?))
        }
    };
    Ok(images::add(
        &state.pool,
        body.name.trim(),
        reference,
        sealed.as_ref().map(|(u, s)| (*u, s.as_slice())),
        body.offered.unwrap_or(false),
    )
    .await?)
}

/// What may change of a catalogue image.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateImage {
    /// Whether customers may pick it; jails made from it keep it.
    pub offered: bool,
}

/// Offers an image to customers or stops offering it.
#[utoipa::path(patch, path = "/api/v1/images/{name}", tag = "images",
    params(("name" = String, Path, description = "Image name")),
    request_body = UpdateImage,
    responses((status = 200, description = "Changed", body = ImageOut)),
    security(("bearer" = ["tenants:write"])))]
pub(crate) async fn update(
    Authorized(caller, _): Authorized<TenantsWrite>,
    name: web::Path<String>,
    body: web::Json<UpdateImage>,
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    caller.unbound()?;
    let image = images::set_offered(&state.pool, &name, body.offered).await?;
    let action = if body.offered {
        "image.offer"
    } else {
        "image.withdraw"
    };
    record(&state, &req, &caller, None, action, &image.name).await?;
    Ok(HttpResponse::Ok().json(ImageOut::from(image)))
}

/// Takes an image out of the catalogue: customers can no longer pick it;
/// each node removes its pulled copy once no jail of the node uses it.
#[utoipa::path(delete, path = "/api/v1/images/{name}", tag = "images",
    params(("name" = String, Path, description = "Image name")),
    responses((status = 204, description = "Removed")),
    security(("bearer" = ["tenants:write"])))]
pub(crate) async fn remove(
    Authorized(caller, _): Authorized<TenantsWrite>,
    name: web::Path<String>,
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    caller.unbound()?;
    images::remove(&state.pool, &name).await?;
    record(&state, &req, &caller, None, "image.remove", &name).await?;
    Ok(HttpResponse::NoContent().finish())
}
