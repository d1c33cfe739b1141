//! Provider staff pages: tenants, plans, nodes and the audit log. Operators
//! read everything and suspend/unsuspend; admins do everything.

mod audit_log;
mod failing;
mod image_list;
mod jail_view;
mod node_list;
mod plan_pages;
mod tenant_list;
mod tenant_page;

use actix_web::web;
use uuid::Uuid;

use crate::WebError;

use audit_log::audit_page;
use node_list::nodes_page;
use plan_pages::{create_plan, edit_plan_page, plans_page, update_plan};
pub(crate) use tenant_list::TenantsData;
use tenant_list::{create_tenant, tenants_page};
use tenant_page::{
    change_plan, change_status, confirm_status, create_user, reset_password, set_overrides,
    tenant_page,
};

pub(super) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/staff/tenants", web::get().to(tenants_page))
        .route("/staff/tenants", web::post().to(create_tenant))
        .route("/staff/tenants/{id}", web::get().to(tenant_page))
        .route(
            "/staff/tenants/{id}/overrides",
            web::post().to(set_overrides),
        )
        .route("/staff/tenants/{id}/plan", web::post().to(change_plan))
        .route(
            "/staff/tenants/{id}/domains/{domain}/waive",
            web::post().to(tenant_page::waive_proof),
        )
        .route("/staff/tenants/{id}/users", web::post().to(create_user))
        .route(
            "/staff/tenants/{id}/{action}",
            web::get().to(confirm_status),
        )
        .route(
            "/staff/tenants/{id}/{action}",
            web::post().to(change_status),
        )
        .route(
            "/staff/users/{id}/reset-password",
            web::post().to(reset_password),
        )
        .route("/staff/plans", web::get().to(plans_page))
        .route("/staff/plans", web::post().to(create_plan))
        .route("/staff/plans/{id}", web::get().to(edit_plan_page))
        .route("/staff/plans/{id}", web::post().to(update_plan))
        .route("/staff/nodes", web::get().to(nodes_page))
        .route("/staff/images", web::get().to(image_list::images_page))
        .route("/staff/images", web::post().to(image_list::add))
        .route(
            "/staff/images/{name}/offer",
            web::post().to(image_list::offer),
        )
        .route(
            "/staff/images/{name}/remove",
            web::post().to(image_list::remove),
        )
        .route("/staff/failing", web::get().to(failing::failing_page))
        .route(
            "/staff/tenants/{id}/jails/{jail}",
            web::get().to(jail_view::jail_page),
        )
        .route(
            "/staff/tenants/{id}/jails/{jail}/logs",
            web::get().to(jail_view::output),
        )
        .route(
            "/staff/tenants/{id}/jails/{jail}/restart",
            web::post().to(jail_view::restart),
        )
        .route(
            "/staff/tenants/{id}/jails/{jail}/move",
            web::post().to(jail_view::move_jail),
        )
        .route("/staff/nodes/{id}/drain", web::post().to(node_list::drain))
        .route(
            "/staff/nodes/{id}/undrain",
            web::post().to(node_list::undrain),
        )
        .route(
            "/staff/tenants/{id}/jails/{jail}/console",
            web::get().to(jail_view::console),
        )
        .route("/staff/audit", web::get().to(audit_page));
}

pub(super) const PAGE: u32 = 50;

pub(super) fn parse_id(raw: &str) -> Result<Uuid, WebError> {
    Uuid::parse_str(raw).map_err(|_| WebError::NotFound)
}
