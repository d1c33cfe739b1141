//! Proving a domain: its TXT record `_stockade.<name>` must hold the token
//! the panel showed (see [`stockade_store::domains::Domain::proof_record`]).

use hickory_resolver::Resolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;

use crate::DomainProof;

/// Whether the TXT record `record` holds `value`, asked of the configured
/// DNS server (or the host's). The reason when it cannot be told.
pub(crate) async fn txt_holds(
    proof: &DomainProof,
    record: &str,
    value: &str,
) -> Result<bool, String> {
    let resolver = match proof.resolver {
        Some(addr) => {
            let mut udp = ConnectionConfig::udp();
            udp.port = addr.port();
            let mut tcp = ConnectionConfig::tcp();
            tcp.port = addr.port();
            Resolver::builder_with_config(
                ResolverConfig::from_name_servers(vec![NameServerConfig::new(
                    addr.ip(),
                    true,
                    vec![udp, tcp],
                )]),
                TokioRuntimeProvider::default(),
            )
            .build()
        }
        None => Resolver::builder_tokio()
            .map_err(|e| format!("no DNS configuration on this host: {e}"))?
            .build(),
    }
    .map_err(|e| format!("cannot ask DNS: {e}"))?;
    let lookup = match resolver.txt_lookup(format!("{record}.")).await {
        Ok(l) => l,
        // No such record (yet): not proven.
        Err(_) => return Ok(false),
    };
    Ok(lookup.answers().iter().any(|r| match &r.data {
        RData::TXT(txt) => {
            let text: String = txt
                .txt_data
                .iter()
                .map(|part| String::from_utf8_lossy(part).into_owned())
                .collect();
            text.trim() == value
        }
        _ => false,
    }))
}

/// Why a domain is not proven.
#[derive(Debug)]
pub(crate) enum NotProven {
    /// The store's answer (not found, ...).
    Store(stockade_store::StoreError),
    /// The record is not there, or holds something else; the words say which.
    Missing(String),
}

impl From<stockade_store::StoreError> for NotProven {
    fn from(e: stockade_store::StoreError) -> Self {
        NotProven::Store(e)
    }
}

/// Proves a tenant's domain by its TXT record, marking it proven (it then
/// routes). A domain already proven stays so.
pub(crate) async fn prove(
    state: &crate::AppState,
    tenant_id: uuid::Uuid,
    jail_id: uuid::Uuid,
    domain_id: uuid::Uuid,
) -> Result<stockade_store::domains::Domain, NotProven> {
    use stockade_store::domains;
    let d = domains::for_jail(&state.pool, tenant_id, jail_id)
        .await?
        .into_iter()
        .find(|d| d.id == domain_id)
        .ok_or(stockade_store::StoreError::NotFound)?;
    let Some((record, value)) = d.proof_record() else {
        return Ok(d);
    };
    let proof = state
        .settings
        .domain_proof
        .unwrap_or(DomainProof { resolver: None });
    match txt_holds(&proof, &record, &value).await {
        Ok(true) => Ok(domains::mark_verified(&state.pool, tenant_id, domain_id, None).await?),
        Ok(false) => Err(NotProven::Missing(format!(
            "no TXT record {record} holding {value} was found yet (DNS changes may take a while to show)"
        ))),
        Err(e) => Err(NotProven::Missing(e)),
    }
}
