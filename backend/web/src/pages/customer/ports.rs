//! Publishing a jail's ports on its node, and taking them back.

use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;
use stockade_domain::Protocol;
use stockade_store::StoreError;
use stockade_store::ports::{self, NewPort};

use super::parse_id;
use super::{ActionForm, customer_tenant, record};
use crate::auth::SignedIn;
use crate::{AppState, WebError, flash};

#[derive(Deserialize)]
pub(super) struct PublishForm {
    csrf_token: String,
    protocol: String,
    jail_port: String,
    /// Empty: the node picks the lowest free port of its pool.
    #[serde(default)]
    host_port: String,
}

impl PublishForm {
    fn parse(&self) -> Result<NewPort, String> {
        let protocol: Protocol = self.protocol.trim().parse().map_err(|e| format!("{e}"))?;
        let port = |field: &str, v: &str| match v.trim().parse::<u16>() {
            Ok(p) if p > 0 => Ok(p),
            _ => Err(format!("{field}: {v:?} is not a port (1 to 65535)")),
        };
        let host_port = match self.host_port.trim() {
            "" => None,
            v => Some(port("node port", v)?),
        };
        Ok(NewPort {
            protocol,
            jail_port: port("jail port", &self.jail_port)?,
            host_port,
        })
    }
}

/// The words a refused publication is shown with.
fn refusal(e: StoreError) -> Result<String, WebError> {
    match e {
        StoreError::Invalid { field, message } => Ok(format!(
            "{}: {message}",
            if field == "host_port" {
                "node port"
            } else {
                "jail port"
            }
        )),
        StoreError::QuotaExceeded(m) | StoreError::InvalidState(m) | StoreError::NoCapacity(m) => {
            Ok(m)
        }
        StoreError::Conflict(m) => Ok(format!("{m} already exists")),
        e => Err(e.into()),
    }
}

pub(super) async fn publish(
    req: HttpRequest,
    state: web::Data<AppState>,
    s: SignedIn,
    path: web::Path<String>,
    form: web::Form<PublishForm>,
) -> Result<HttpResponse, WebError> {
    let tenant_id = customer_tenant(&s)?;
    s.check_csrf(&form.csrf_token)?;
    let jail_id = parse_id(&path)?;
    let here = format!("/jails/{jail_id}");
    let new = match form.parse() {
        Ok(n) => n,
        Err(msg) => return Ok(flash::redirect(&here, "error", &msg)),
    };
    match ports::publish(&state.pool, tenant_id, jail_id, new).await {
        Ok(p) => {
            record(
                &state,
                &req,
                &s,
                Some(tenant_id),
                "port.publish",
                &format!("{}/{}", p.host_port, p.protocol),
                serde_json::json!({ "jail_id": jail_id, "jail_port": p.jail_port }),
            )
            .await?;
            Ok(flash::redirect(
                &here,
                "ok",
                &format!(
                    "Port {}/{} of the jail is published on port {} of its node.",
                    p.jail_port, p.protocol, p.host_port
                ),
            ))
        }
        Err(StoreError::NotFound) => Err(WebError::NotFound),
        Err(e) => Ok(flash::redirect(
            &here,
            "error",
            &format!("Not published: {}", refusal(e)?),
        )),
    }
}

pub(super) async fn unpublish(
    req: HttpRequest,
    state: web::Data<AppState>,
    s: SignedIn,
    path: web::Path<(String, String)>,
    form: web::Form<ActionForm>,
) -> Result<HttpResponse, WebError> {
    let tenant_id = customer_tenant(&s)?;
    s.check_csrf(&form.csrf_token)?;
    let (jail, port) = path.into_inner();
    let jail_id = parse_id(&jail)?;
    let port_id = parse_id(&port)?;
    let p = ports::unpublish(&state.pool, tenant_id, jail_id, port_id).await?;
    record(
        &state,
        &req,
        &s,
        Some(tenant_id),
        "port.unpublish",
        &format!("{}/{}", p.host_port, p.protocol),
        serde_json::json!({ "jail_id": jail_id, "jail_port": p.jail_port }),
    )
    .await?;
    Ok(flash::redirect(
        &format!("/jails/{jail_id}"),
        "ok",
        &format!(
            "Port {}/{} is no longer published.",
            p.host_port, p.protocol
        ),
    ))
}
