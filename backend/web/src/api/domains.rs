//! `/api/v1/tenants/{tenant_id}/jails/{jail_id}/domains`: names routed to a
//! jail by its node's reverse proxy.

use actix_web::{HttpRequest, HttpResponse, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use stockade_domain::DomainName;
use stockade_store::certificates::{self, Certificate};
use stockade_store::domains::{self, Domain, NewDomain};
use utoipa::ToSchema;
use uuid::Uuid;

use super::auth::{Authorized, DomainsWrite, JailsRead};
use super::error::ApiError;
use super::resource;
use super::tenants::record;
use crate::AppState;

pub(crate) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        resource("/tenants/{tenant_id}/jails/{jail_id}/domains")
            .route(web::get().to(list))
            .route(web::post().to(attach)),
    )
    .service(
        resource("/tenants/{tenant_id}/jails/{jail_id}/domains/{domain_id}")
            .route(web::delete().to(detach)),
    )
    .service(
        resource("/tenants/{tenant_id}/jails/{jail_id}/domains/{domain_id}/certificate")
            .route(web::put().to(upload_certificate)),
    )
    .service(
        resource("/tenants/{tenant_id}/jails/{jail_id}/domains/{domain_id}/verify")
            .route(web::post().to(verify)),
    );
}

/// The TXT record that proves a domain.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProofRecord {
    /// The record's name (`_stockade.<domain>`).
    pub name: String,
    /// The value it must hold.
    pub value: String,
}

/// A domain's TLS certificate.
#[derive(Debug, Serialize, ToSchema)]
pub struct CertificateOut {
    /// `acme` (issued and renewed by the node) or `upload`.
    pub source: String,
    /// The DNS names it covers.
    pub names: Vec<String>,
    /// Its issuer.
    pub issuer: String,
    /// Valid from.
    pub not_before: DateTime<Utc>,
    /// Valid until.
    pub not_after: DateTime<Utc>,
    /// It expires within 14 days.
    pub expires_soon: bool,
}

impl From<Certificate> for CertificateOut {
    fn from(c: Certificate) -> Self {
        CertificateOut {
            expires_soon: c.expires_soon(Utc::now()),
            source: c.source,
            names: c.info.names,
            issuer: c.info.issuer,
            not_before: c.info.not_before,
            not_after: c.info.not_after,
        }
    }
}

/// A domain routed to a jail.
#[derive(Debug, Serialize, ToSchema)]
pub struct DomainOut {
    /// Stable id.
    pub id: Uuid,
    /// The jail it routes to.
    pub jail_id: Uuid,
    /// The name.
    pub name: String,
    /// Whether its `www.` alias routes too.
    pub www: bool,
    /// The jail's port it routes to.
    pub jail_port: u16,
    /// When it was attached.
    pub created_at: DateTime<Utc>,
    /// Its TLS certificate, once there is one.
    pub certificate: Option<CertificateOut>,
    /// Why the node's last certificate order failed, if it did.
    pub tls_error: Option<String>,
    /// It routes: proven, its proof waived, or no proof asked for.
    pub proven: bool,
    /// While not proven: the TXT record to add, then `POST .../verify`.
    pub proof_record: Option<ProofRecord>,
}

impl DomainOut {
    fn new(d: Domain, certificate: Option<Certificate>) -> Self {
        let proof_record = d
            .proof_record()
            .map(|(name, value)| ProofRecord { name, value });
        DomainOut {
            proven: d.verified,
            proof_record,
            id: d.id,
            jail_id: d.jail_id,
            name: d.name,
            www: d.www,
            jail_port: d.jail_port,
            created_at: d.created_at,
            certificate: certificate.map(CertificateOut::from),
            tls_error: d.acme_error,
        }
    }
}

/// A jail's domains.
#[derive(Debug, Serialize, ToSchema)]
pub struct DomainList {
    /// By name.
    pub data: Vec<DomainOut>,
    /// What the node's proxy carried for all of them today (UTC).
    pub traffic_today: TrafficOut,
}

/// Requests and bytes through a node's proxy.
#[derive(Debug, Serialize, ToSchema)]
pub struct TrafficOut {
    /// Requests answered.
    pub requests: u64,
    /// Bytes received from clients.
    pub bytes_in: u64,
    /// Bytes sent to clients.
    pub bytes_out: u64,
}

/// A name to attach.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AttachDomain {
    /// A fully qualified name (`example.com`); no wildcards, international
    /// names in their `xn--` form.
    #[schema(example = "example.com", max_length = 254)]
    pub name: String,
    /// Route its `www.` alias too (default false).
    #[serde(default)]
    pub www: bool,
    /// The jail's port (default 80).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 65535)]
    pub jail_port: Option<u32>,
}

impl TryFrom<AttachDomain> for NewDomain {
    type Error = ApiError;
    fn try_from(b: AttachDomain) -> Result<Self, ApiError> {
        let jail_port = match b.jail_port.map(u16::try_from) {
            None => 80,
            Some(Ok(p)) if p > 0 => p,
            Some(_) => return Err(ApiError::field("jail_port", "ports are 1 to 65535")),
        };
        Ok(NewDomain {
            name: DomainName::parse(&b.name).map_err(|e| ApiError::field("name", e.reason))?,
            www: b.www,
            jail_port,
            proof_required: false,
        })
    }
}

/// Lists a jail's domains.
#[utoipa::path(get, path = "/api/v1/tenants/{tenant_id}/jails/{jail_id}/domains", tag = "jails",
    params(("tenant_id" = Uuid, Path, description = "Tenant id"),
           ("jail_id" = Uuid, Path, description = "Jail id")),
    responses((status = 200, description = "The jail's domains", body = DomainList)),
    security(("bearer" = ["jails:read"])))]
pub(crate) async fn list(
    Authorized(caller, _): Authorized<JailsRead>,
    path: web::Path<(Uuid, Uuid)>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (tenant_id, jail_id) = path.into_inner();
    caller.see_tenant(tenant_id)?;
    stockade_store::jails::get(&state.pool, tenant_id, jail_id).await?;
    let mut certs = certificates::for_tenant(&state.pool, tenant_id).await?;
    let data = domains::for_jail(&state.pool, tenant_id, jail_id)
        .await?
        .into_iter()
        .map(|d| {
            let cert = certs
                .iter()
                .position(|c| c.domain_id == d.id)
                .map(|i| certs.swap_remove(i));
            DomainOut::new(d, cert)
        })
        .collect();
    let t = domains::traffic_today(&state.pool, tenant_id, jail_id).await?;
    Ok(HttpResponse::Ok().json(DomainList {
        data,
        traffic_today: TrafficOut {
            requests: t.requests,
            bytes_in: t.bytes_in,
            bytes_out: t.bytes_out,
        },
    }))
}

/// Attaches a name to the jail: its node's proxy routes it within a second.
/// A name another tenant (or another jail) holds is refused.
#[utoipa::path(post, path = "/api/v1/tenants/{tenant_id}/jails/{jail_id}/domains", tag = "jails",
    params(("tenant_id" = Uuid, Path, description = "Tenant id"),
           ("jail_id" = Uuid, Path, description = "Jail id")),
    request_body = AttachDomain,
    responses((status = 201, description = "Attached", body = DomainOut)),
    security(("bearer" = ["domains:write"])))]
pub(crate) async fn attach(
    Authorized(caller, _): Authorized<DomainsWrite>,
    path: web::Path<(Uuid, Uuid)>,
    body: web::Json<AttachDomain>,
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let mut new = NewDomain::try_from(body.into_inner())?;
    new.proof_required = state.settings.domain_proof.is_some();
    let (tenant_id, jail_id) = path.into_inner();
    caller.see_tenant(tenant_id)?;
    let d = domains::attach(&state.pool, tenant_id, jail_id, &new).await?;
    record(
        &state,
        &req,
        &caller,
        Some(tenant_id),
        "domain.attach",
        &d.name,
    )
    .await?;
    Ok(HttpResponse::Created()
        .insert_header((
            "Location",
            format!(
                "/api/v1/tenants/{tenant_id}/jails/{jail_id}/domains/{}",
                d.id
            ),
        ))
        .json(DomainOut::new(d, None)))
}

/// Detaches a domain.
#[utoipa::path(delete, path = "/api/v1/tenants/{tenant_id}/jails/{jail_id}/domains/{domain_id}", tag = "jails",
    params(("tenant_id" = Uuid, Path, description = "Tenant id"),
           ("jail_id" = Uuid, Path, description = "Jail id"),
           ("domain_id" = Uuid, Path, description = "Domain id")),
    responses((status = 204, description = "Detached")),
    security(("bearer" = ["domains:write"])))]
pub(crate) async fn detach(
    Authorized(caller, _): Authorized<DomainsWrite>,
    path: web::Path<(Uuid, Uuid, Uuid)>,
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let (tenant_id, jail_id, domain_id) = path.into_inner();
    caller.see_tenant(tenant_id)?;
    let d = domains::detach(&state.pool, tenant_id, jail_id, domain_id).await?;
    record(
        &state,
        &req,
        &caller,
        Some(tenant_id),
        "domain.detach",
        &d.name,
    )
    .await?;
    Ok(HttpResponse::NoContent().finish())
}

/// A certificate and its key to serve for a domain instead of ACME's.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UploadCertificate {
    /// The certificate chain in PEM: the site's certificate first, then each
    /// issuer.
    #[schema(max_length = 65536)]
    pub chain_pem: String,
    /// The private key in PEM (PKCS#8).
    #[schema(max_length = 16384)]
    pub key_pem: String,
}

/// Uploads a certificate for a domain: refused unless the key matches, the
/// chain is in order, it covers the domain (and its alias) and is valid now.
/// The key is stored sealed; the node serves it within a second.
#[utoipa::path(put, path = "/api/v1/tenants/{tenant_id}/jails/{jail_id}/domains/{domain_id}/certificate", tag = "jails",
    params(("tenant_id" = Uuid, Path, description = "Tenant id"),
           ("jail_id" = Uuid, Path, description = "Jail id"),
           ("domain_id" = Uuid, Path, description = "Domain id")),
    request_body = UploadCertificate,
    responses((status = 200, description = "Stored", body = CertificateOut)),
    security(("bearer" = ["domains:write"])))]
pub(crate) async fn upload_certificate(
    Authorized(caller, _): Authorized<DomainsWrite>,
    path: web::Path<(Uuid, Uuid, Uuid)>,
    body: web::Json<UploadCertificate>,
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let (tenant_id, jail_id, domain_id) = path.into_inner();
    caller.see_tenant(tenant_id)?;
    let info = domains::upload_certificate(
        &state.pool,
        tenant_id,
        jail_id,
        domain_id,
        &body.chain_pem,
        &body.key_pem,
    )
    .await?;
    record(
        &state,
        &req,
        &caller,
        Some(tenant_id),
        "certificate.upload",
        &info.names.join(" "),
    )
    .await?;
    Ok(HttpResponse::Ok().json(CertificateOut::from(Certificate {
        domain_id,
        source: "upload".into(),
        info,
    })))
}

/// Proves a domain by its TXT record: it routes from then on. A domain
/// already proven answers as it is; a record not (yet) there is a 409.
#[utoipa::path(post, path = "/api/v1/tenants/{tenant_id}/jails/{jail_id}/domains/{domain_id}/verify", tag = "jails",
    params(("tenant_id" = Uuid, Path, description = "Tenant id"),
           ("jail_id" = Uuid, Path, description = "Jail id"),
           ("domain_id" = Uuid, Path, description = "Domain id")),
    responses((status = 200, description = "Proven", body = DomainOut)),
    security(("bearer" = ["domains:write"])))]
pub(crate) async fn verify(
    Authorized(caller, _): Authorized<DomainsWrite>,
    path: web::Path<(Uuid, Uuid, Uuid)>,
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let (tenant_id, jail_id, domain_id) = path.into_inner();
    caller.see_tenant(tenant_id)?;
    match crate::proof::prove(&state, tenant_id, jail_id, domain_id).await {
        Ok(d) => {
            record(
                &state,
                &req,
                &caller,
                Some(tenant_id),
                "domain.proven",
                &d.name,
            )
            .await?;
            Ok(HttpResponse::Ok().json(DomainOut::new(d, None)))
        }
        Err(crate::proof::NotProven::Missing(why)) => Err(ApiError::Conflict {
            code: "not_proven",
            message: why,
        }),
        Err(crate::proof::NotProven::Store(e)) => Err(e.into()),
    }
}
