//! Attaching domains to a jail, and detaching them.

use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;
use stockade_domain::DomainName;
use stockade_store::StoreError;
use stockade_store::domains::{self, NewDomain};

use super::parse_id;
use super::{ActionForm, customer_tenant, record};
use crate::auth::SignedIn;
use crate::{AppState, WebError, flash};

#[derive(Deserialize)]
pub(super) struct AttachForm {
    csrf_token: String,
    name: String,
    /// Ticked: the `www.` alias routes too.
    #[serde(default)]
    www: Option<String>,
    #[serde(default)]
    jail_port: String,
}

impl AttachForm {
    fn parse(&self) -> Result<NewDomain, String> {
        let jail_port = match self.jail_port.trim() {
            "" => 80,
            v => match v.parse::<u16>() {
                Ok(p) if p > 0 => p,
                _ => return Err(format!("jail port: {v:?} is not a port (1 to 65535)")),
            },
        };
        Ok(NewDomain {
            name: DomainName::parse(&self.name).map_err(|e| e.to_string())?,
            www: self.www.is_some(),
            jail_port,
            proof_required: false,
        })
    }
}

pub(super) async fn attach(
    req: HttpRequest,
    state: web::Data<AppState>,
    s: SignedIn,
    path: web::Path<String>,
    form: web::Form<AttachForm>,
) -> Result<HttpResponse, WebError> {
    let tenant_id = customer_tenant(&s)?;
    s.check_csrf(&form.csrf_token)?;
    let jail_id = parse_id(&path)?;
    let here = format!("/jails/{jail_id}");
    let mut new = match form.parse() {
        Ok(n) => n,
        Err(msg) => return Ok(flash::redirect(&here, "error", &msg)),
    };
    new.proof_required = state.settings.domain_proof.is_some();
    match domains::attach(&state.pool, tenant_id, jail_id, &new).await {
        Ok(d) => {
            record(
                &state,
                &req,
                &s,
                Some(tenant_id),
                "domain.attach",
                &d.name,
                serde_json::json!({ "jail_id": jail_id, "www": d.www, "jail_port": d.jail_port }),
            )
            .await?;
            Ok(flash::redirect(
                &here,
                "ok",
                &format!(
                    "{} now leads to port {} of this jail once its DNS points at the node.",
                    d.name, d.jail_port
                ),
            ))
        }
        Err(StoreError::NotFound) => Err(WebError::NotFound),
        Err(StoreError::Invalid { field, message }) => Ok(flash::redirect(
            &here,
            "error",
            &format!(
                "{}: {message}",
                if field == "name" { "domain" } else { field }
            ),
        )),
        Err(e @ (StoreError::InvalidState(_) | StoreError::Conflict(_))) => Ok(flash::redirect(
            &here,
            "error",
            &format!("Not attached: {e}"),
        )),
        Err(e) => Err(e.into()),
    }
}

pub(super) async fn detach(
    req: HttpRequest,
    state: web::Data<AppState>,
    s: SignedIn,
    path: web::Path<(String, String)>,
    form: web::Form<ActionForm>,
) -> Result<HttpResponse, WebError> {
    let tenant_id = customer_tenant(&s)?;
    s.check_csrf(&form.csrf_token)?;
    let (jail, domain) = path.into_inner();
    let jail_id = parse_id(&jail)?;
    let d = domains::detach(&state.pool, tenant_id, jail_id, parse_id(&domain)?).await?;
    record(
        &state,
        &req,
        &s,
        Some(tenant_id),
        "domain.detach",
        &d.name,
        serde_json::json!({ "jail_id": jail_id }),
    )
    .await?;
    Ok(flash::redirect(
        &format!("/jails/{jail_id}"),
        "ok",
        &format!("{} is detached.", d.name),
    ))
}

#[derive(Deserialize)]
pub(super) struct CertificateForm {
    csrf_token: String,
    chain_pem: String,
    key_pem: String,
}

pub(super) async fn upload_certificate(
    req: HttpRequest,
    state: web::Data<AppState>,
    s: SignedIn,
    path: web::Path<(String, String)>,
    form: web::Form<CertificateForm>,
) -> Result<HttpResponse, WebError> {
    let tenant_id = customer_tenant(&s)?;
    s.check_csrf(&form.csrf_token)?;
    let (jail, domain) = path.into_inner();
    let jail_id = parse_id(&jail)?;
    let here = format!("/jails/{jail_id}");
    match domains::upload_certificate(
        &state.pool,
        tenant_id,
        jail_id,
        parse_id(&domain)?,
        &form.chain_pem,
        &form.key_pem,
    )
    .await
    {
        Ok(info) => {
            record(
                &state,
                &req,
                &s,
                Some(tenant_id),
                "certificate.upload",
                &info.names.join(" "),
                serde_json::json!({ "jail_id": jail_id, "not_after": info.not_after }),
            )
            .await?;
            Ok(flash::redirect(
                &here,
                "ok",
                &format!(
                    "Certificate for {} stored; valid until {}.",
                    info.names.join(", "),
                    info.not_after.format("%Y-%m-%d")
                ),
            ))
        }
        Err(StoreError::NotFound) => Err(WebError::NotFound),
        Err(e @ (StoreError::Invalid { .. } | StoreError::InvalidState(_))) => Ok(flash::redirect(
            &here,
            "error",
            &format!("Certificate not stored: {e}"),
        )),
        Err(e) => Err(e.into()),
    }
}

pub(super) async fn verify(
    req: HttpRequest,
    state: web::Data<AppState>,
    s: SignedIn,
    path: web::Path<(String, String)>,
    form: web::Form<ActionForm>,
) -> Result<HttpResponse, WebError> {
    let tenant_id = customer_tenant(&s)?;
    s.check_csrf(&form.csrf_token)?;
    let (jail, domain) = path.into_inner();
    let jail_id = parse_id(&jail)?;
    let here = format!("/jails/{jail_id}");
    match crate::proof::prove(&state, tenant_id, jail_id, parse_id(&domain)?).await {
        Ok(d) => {
            record(
                &state,
                &req,
                &s,
                Some(tenant_id),
                "domain.proven",
                &d.name,
                serde_json::json!({ "jail_id": jail_id }),
            )
            .await?;
            Ok(flash::redirect(
                &here,
                "ok",
                &format!("{} is proven; it routes to this jail now.", d.name),
            ))
        }
        Err(crate::proof::NotProven::Missing(why)) => Ok(flash::redirect(
            &here,
            "error",
            &format!("Not proven: {why}"),
        )),
        Err(crate::proof::NotProven::Store(e)) => Err(e.into()),
    }
}
