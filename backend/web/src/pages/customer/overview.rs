//! A tenant's overview: its jails and quota.

use actix_web::{HttpRequest, HttpResponse, web};
use askama::Template;
use std::sync::Arc;
use stockade_store::jails::{self};
use uuid::Uuid;

use super::JailRow;
use super::{Layout, QuotaTile, cached_page, customer_tenant, quota_tiles};
use crate::auth::SignedIn;
use crate::{AppState, WebError};

/// What the overview shows of a tenant (cached, see [`crate::cache`]).
pub(crate) struct OverviewData {
    pub(super) tenant_name: String,
    pub(super) plan_name: String,
    pub(super) status: &'static str,
    pub(super) quotas: Vec<QuotaTile>,
    pub(super) jails: Vec<JailRow>,
    /// Why the account is suspended, as the provider said.
    pub(super) suspension_reason: Option<String>,
    /// What the provider's staff did on the account lately: when, who, what.
    pub(super) staff_actions: Vec<(String, String, String)>,
}

#[derive(Template)]
#[template(path = "dashboard.html")]
pub(super) struct OverviewPage {
    pub(super) layout: Layout,
    pub(super) data: Arc<OverviewData>,
}

impl std::ops::Deref for OverviewPage {
    type Target = OverviewData;
    fn deref(&self) -> &OverviewData {
        &self.data
    }
}

pub(super) async fn overview_data(
    pool: &stockade_store::PgPool,
    tenant_id: Uuid,
) -> Result<OverviewData, WebError> {
    let tenant = stockade_store::tenants::get(pool, tenant_id).await?;
    let plan = stockade_store::plans::get(pool, tenant.plan_id).await?;
    let jails = super::failing_first(jails::list_for_tenant(pool, tenant_id).await?);
    Ok(OverviewData {
        tenant_name: tenant.display_name,
        plan_name: plan.display_name,
        status: tenant.status.as_str(),
        quotas: quota_tiles(pool, tenant_id).await?,
        jails: jails.iter().map(JailRow::from).collect(),
        suspension_reason: tenant.suspension_reason,
        staff_actions: stockade_store::audit::staff_actions_on(pool, tenant_id, 10)
            .await?
            .into_iter()
            .map(|e| {
                (
                    e.at.format("%Y-%m-%d %H:%M UTC").to_string(),
                    e.actor,
                    format!("{} {}", staff_action_words(&e.action), e.target),
                )
            })
            .collect(),
    })
}

pub(super) async fn overview(
    req: HttpRequest,
    state: web::Data<AppState>,
    s: SignedIn,
) -> Result<HttpResponse, WebError> {
    let tenant_id = customer_tenant(&s)?;
    cached_page(
        &req,
        &s,
        &state.caches.overviews,
        tenant_id,
        || overview_data(&state.pool, tenant_id),
        |layout, data| OverviewPage { layout, data },
    )
    .await
}

/// A staff action as its customer reads it.
fn staff_action_words(action: &str) -> &str {
    match action {
        "jail.output_read" => "read the output of",
        "jail.staff_restart" => "restarted",
        "console.open" => "opened a console in",
        "console.close" => "closed a console in",
        "tenant.suspend" => "suspended",
        "tenant.unsuspend" => "unsuspended",
        "tenant.plan_change" => "changed the plan of",
        "tenant.quota_override" => "changed the quota of",
        "user.password_reset" => "sent a password link to",
        other => other,
    }
}
