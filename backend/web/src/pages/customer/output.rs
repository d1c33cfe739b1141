//! A jail's output in the panel: the last lines, a live tail and a download.

use actix_web::{HttpResponse, web};
use serde::Deserialize;

use super::{customer_tenant, parse_id};
use crate::auth::SignedIn;
use crate::output::{Ask, OutputError, open};
use crate::{AppState, WebError};

#[derive(Deserialize)]
pub(super) struct OutputQuery {
    tail: Option<usize>,
    follow: Option<u8>,
    download: Option<u8>,
}

pub(super) async fn output(
    state: web::Data<AppState>,
    s: SignedIn,
    path: web::Path<String>,
    q: web::Query<OutputQuery>,
) -> Result<HttpResponse, WebError> {
    let tenant_id = customer_tenant(&s)?;
    let jail_id = parse_id(&path)?;
    let jail = stockade_store::jails::get(&state.pool, tenant_id, jail_id).await?;
    if jail.desired_state == stockade_domain::DesiredState::Deleted {
        return Err(WebError::NotFound);
    }
    let download = q.download == Some(1);
    let ask = Ask {
        tail: q
            .tail
            .unwrap_or(if download { 10_000 } else { 200 })
            .min(10_000),
        follow: q.follow == Some(1) && !download,
    };
    let name = jail.name.to_string();
    open(
        &state,
        tenant_id,
        jail_id,
        ask,
        download.then_some(name.as_str()),
    )
    .await
    .or_else(OutputError::page_answer)
}
