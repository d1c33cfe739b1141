//! TLS certificates of domains: checked on upload, their private keys
//! sealed to the provider's certificate key, issued and renewed by the
//! agents through ACME.
//!
//! Sealing is public-key: the web tier seals an uploaded key with the
//! public half kept in `sealing_key`; only agents, which hold the secret
//! half, open keys to hand them to their node's proxy.

use chrono::{DateTime, TimeZone, Utc};
use crypto_box::aead::OsRng;
use crypto_box::{PublicKey, SecretKey};
use uuid::Uuid;
use x509_parser::prelude::*;

use crate::{PgPool, StoreError};

/// Days before expiry that a certificate is renewed, and that its page warns.
pub const RENEW_DAYS: i64 = 30;
/// Days before expiry that the panel warns of a certificate.
pub const WARN_DAYS: i64 = 14;

/// What a certificate says of itself.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CertInfo {
    /// The DNS names it covers.
    pub names: Vec<String>,
    /// Its issuer, as a distinguished name.
    pub issuer: String,
    /// Valid from.
    pub not_before: DateTime<Utc>,
    /// Valid until.
    pub not_after: DateTime<Utc>,
}

fn invalid(field: &'static str, message: impl Into<String>) -> StoreError {
    StoreError::Invalid {
        field,
        message: message.into(),
    }
}

fn time(t: ASN1Time) -> DateTime<Utc> {
    Utc.timestamp_opt(t.timestamp(), 0)
        .single()
        .unwrap_or_default()
}

/// Whether `pattern` (a SAN entry, maybe `*.example.com`) covers `name`.
fn covers(pattern: &str, name: &str) -> bool {
    let pattern = pattern.to_ascii_lowercase();
    match pattern.strip_prefix("*.") {
        Some(parent) => name
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest == parent),
        None => pattern == name,
    }
}

/// The certificates of a PEM chain, leaf first.
fn chain_ders(chain_pem: &str) -> Result<Vec<Vec<u8>>, StoreError> {
    let mut ders = Vec::new();
    for pem in Pem::iter_from_buffer(chain_pem.as_bytes()) {
        let pem = pem.map_err(|e| invalid("certificate", format!("not PEM: {e}")))?;
        if pem.label != "CERTIFICATE" {
            return Err(invalid(
                "certificate",
                format!("holds a {} block; only certificates belong here", pem.label),
            ));
        }
        ders.push(pem.contents);
    }
    if ders.is_empty() {
        return Err(invalid("certificate", "no PEM certificate found"));
    }
    Ok(ders)
}

/// What a chain's leaf says, after checking the chain is in order (each
/// certificate signed by the next).
pub fn inspect(chain_pem: &str) -> Result<CertInfo, StoreError> {
    read_chain(chain_pem).map(|(info, _)| info)
}

/// [`inspect`], and the leaf's public key (its SubjectPublicKeyInfo, DER).
fn read_chain(chain_pem: &str) -> Result<(CertInfo, Vec<u8>), StoreError> {
    let ders = chain_ders(chain_pem)?;
    let mut certs = Vec::new();
    for (i, der) in ders.iter().enumerate() {
        let (_, c) = X509Certificate::from_der(der).map_err(|e| {
            invalid(
                "certificate",
                format!("certificate {} of the chain cannot be read: {e}", i + 1),
            )
        })?;
        certs.push(c);
    }
    for (i, pair) in certs.windows(2).enumerate() {
        let (cert, issuer) = (&pair[0], &pair[1]);
        let in_order = cert.issuer().as_raw() == issuer.subject().as_raw()
            && cert.verify_signature(Some(issuer.public_key())).is_ok();
        if !in_order {
            return Err(invalid(
                "certificate",
                format!(
                    "the chain is out of order: certificate {} is not signed by certificate {} (put the site's certificate first, then each issuer)",
                    i + 1,
                    i + 2
                ),
            ));
        }
    }
    let leaf = &certs[0];
    let mut names = Vec::new();
    if let Ok(Some(san)) = leaf.subject_alternative_name() {
        for n in &san.value.general_names {
            if let GeneralName::DNSName(d) = n {
                names.push(d.to_ascii_lowercase());
            }
        }
    }
    names.sort();
    names.dedup();
    let info = CertInfo {
        names,
        issuer: leaf.issuer().to_string(),
        not_before: time(leaf.validity().not_before),
        not_after: time(leaf.validity().not_after),
    };
    Ok((info, leaf.public_key().raw.to_vec()))
}

/// Checks an uploaded certificate chain and key for `names` at `now`: the
/// key matches the leaf, the chain is in order, the names are covered and
/// it is valid now. The reason names the field at fault.
pub fn check_upload(
    chain_pem: &str,
    key_pem: &str,
    names: &[String],
    now: DateTime<Utc>,
) -> Result<CertInfo, StoreError> {
    let (info, leaf_key) = read_chain(chain_pem)?;
    let key = rcgen::KeyPair::from_pem(key_pem).map_err(|_| {
        invalid(
            "key",
            "not a private key in PEM (PKCS#8 ECDSA, Ed25519 or RSA)",
        )
    })?;
    if rcgen::PublicKeyData::subject_public_key_info(&key) != leaf_key {
        return Err(invalid(
            "key",
            "does not match the certificate (its public key differs)",
        ));
    }
    if let Some(missing) = names
        .iter()
        .find(|n| !info.names.iter().any(|p| covers(p, n)))
    {
        return Err(invalid(
            "certificate",
            format!(
                "does not cover {missing} (it covers {})",
                if info.names.is_empty() {
                    "no DNS name".to_owned()
                } else {
                    info.names.join(", ")
                }
            ),
        ));
    }
    if info.not_after <= now {
        return Err(invalid(
            "certificate",
            format!("expired on {}", info.not_after.format("%Y-%m-%d")),
        ));
    }
    if info.not_before > now {
        return Err(invalid(
            "certificate",
            format!("is not valid before {}", info.not_before.format("%Y-%m-%d")),
        ));
    }
    Ok(info)
}

/// The provider's public sealing key, if an agent has published it.
pub async fn sealing_key(pool: &PgPool) -> Result<Option<PublicKey>, StoreError> {
    let key = sqlx::query_scalar!("SELECT public_key FROM sealing_key")
        .fetch_optional(pool)
        .await?;
    Ok(key.and_then(|k| PublicKey::from_slice(&k).ok()))
}

/// Publishes the public half of `secret` unless a key is published: whether
/// the published key is this one.
pub async fn publish_sealing_key(pool: &PgPool, secret: &SecretKey) -> Result<bool, StoreError> {
    let public = secret.public_key();
    let stored = sqlx::query_scalar!(
        "WITH new AS (INSERT INTO sealing_key (public_key) VALUES ($1)
                      ON CONFLICT (id) DO NOTHING RETURNING public_key)
         SELECT public_key FROM new UNION ALL SELECT public_key FROM sealing_key",
        public.as_bytes().as_slice()
    )
    .fetch_all(pool)
    .await?;
    Ok(stored
        .iter()
        .any(|k| k.as_deref() == Some(public.as_bytes().as_slice())))
}

/// Seals a private key's PEM to `public`.
pub fn seal(public: &PublicKey, key_pem: &str) -> Result<Vec<u8>, StoreError> {
    public
        .seal(&mut OsRng, key_pem.as_bytes())
        .map_err(|_| StoreError::Unexpected(anyhow::anyhow!("sealing a key failed")))
}

/// Opens a sealed key with the secret half.
pub fn open(secret: &SecretKey, sealed: &[u8]) -> Result<String, StoreError> {
    let plain = secret.unseal(sealed).map_err(|_| {
        StoreError::Unexpected(anyhow::anyhow!(
            "a sealed key does not open with this node's certificate key"
        ))
    })?;
    String::from_utf8(plain)
        .map_err(|_| StoreError::Unexpected(anyhow::anyhow!("an opened key is not text")))
}

/// A domain's certificate as its tenant sees it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Certificate {
    /// The domain.
    pub domain_id: Uuid,
    /// `acme` or `upload`.
    pub source: String,
    /// What it says of itself.
    pub info: CertInfo,
}

impl Certificate {
    /// Whether it expires within [`WARN_DAYS`] of `now`.
    pub fn expires_soon(&self, now: DateTime<Utc>) -> bool {
        self.info.not_after - now < chrono::Duration::days(WARN_DAYS)
    }
}

/// Stores a certificate of a tenant's domain, replacing any.
pub async fn store(
    pool: &PgPool,
    tenant_id: Uuid,
    domain_id: Uuid,
    source: &str,
    chain_pem: &str,
    key_sealed: &[u8],
    info: &CertInfo,
) -> Result<(), StoreError> {
    let done = sqlx::query!(
        "INSERT INTO certificates (domain_id, tenant_id, source, chain_pem, key_sealed, names,
             issuer, not_before, not_after)
         SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9
         FROM domains WHERE id = $1 AND tenant_id = $2
         ON CONFLICT (domain_id) DO UPDATE SET source = $3, chain_pem = $4, key_sealed = $5,
             names = $6, issuer = $7, not_before = $8, not_after = $9, updated_at = now()",
        domain_id,
        tenant_id,
        source,
        chain_pem,
        key_sealed,
        &info.names,
        info.issuer,
        info.not_before,
        info.not_after
    )
    .execute(pool)
    .await?;
    if done.rows_affected() == 0 {
        return Err(StoreError::NotFound);
    }
    sqlx::query!(
        "SELECT pg_notify($1, COALESCE(j.node_id::text, ''))
         FROM domains d JOIN jails j ON j.id = d.jail_id WHERE d.id = $2",
        crate::JAILS_CHANNEL,
        domain_id
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// The certificates of a tenant's domains.
pub async fn for_tenant(pool: &PgPool, tenant_id: Uuid) -> Result<Vec<Certificate>, StoreError> {
    let rows = sqlx::query!(
        "SELECT domain_id, source, names, issuer, not_before, not_after
         FROM certificates WHERE tenant_id = $1",
        tenant_id
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| Certificate {
            domain_id: r.domain_id,
            source: r.source,
            info: CertInfo {
                names: r.names,
                issuer: r.issuer,
                not_before: r.not_before,
                not_after: r.not_after,
            },
        })
        .collect())
}

/// A certificate a node's proxy serves: the names, chain and sealed key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    /// The domain.
    pub domain_id: Uuid,
    /// The names its SNI matches.
    pub names: Vec<String>,
    /// The chain, leaf first.
    pub chain_pem: String,
    /// The sealed private key.
    pub key_sealed: Vec<u8>,
}

/// The certificates of the domains of the jails on `node_id`.
pub async fn for_node(pool: &PgPool, node_id: Uuid) -> Result<Vec<Served>, StoreError> {
    let rows = sqlx::query!(
        "SELECT c.domain_id, d.name, d.www, c.chain_pem, c.key_sealed
         FROM certificates c JOIN domains d ON d.id = c.domain_id
         JOIN jails j ON j.id = d.jail_id
         WHERE j.node_id = $1 AND j.desired_state <> 'deleted'
         ORDER BY d.name",
        node_id
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| Served {
            domain_id: r.domain_id,
            names: if r.www {
                vec![r.name.clone(), format!("www.{}", r.name)]
            } else {
                vec![r.name]
            },
            chain_pem: r.chain_pem,
            key_sealed: r.key_sealed,
        })
        .collect())
}

/// A domain of a node that needs a certificate from ACME.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    /// The domain.
    pub domain_id: Uuid,
    /// Its tenant.
    pub tenant_id: Uuid,
    /// The names to order.
    pub names: Vec<String>,
}

/// The domains of running jails of active tenants on `node_id` without a
/// certificate, or with an ACME one that expires within [`RENEW_DAYS`];
/// one that failed is tried again after `retry_after`.
pub async fn due_for_acme(
    pool: &PgPool,
    node_id: Uuid,
    retry_after: std::time::Duration,
) -> Result<Vec<Due>, StoreError> {
    let rows = sqlx::query!(
        r#"SELECT d.id, d.tenant_id, d.name, d.www
           FROM domains d
           JOIN jails j ON j.id = d.jail_id
           JOIN tenants t ON t.id = d.tenant_id
           LEFT JOIN certificates c ON c.domain_id = d.id
           WHERE j.node_id = $1 AND j.desired_state = 'running' AND t.status = 'active'
             AND d.verified_at IS NOT NULL
             AND (c.domain_id IS NULL
                  OR (c.source = 'acme' AND c.not_after < now() + make_interval(days => $2)))
             AND (d.acme_tried_at IS NULL OR d.acme_error IS NULL
                  OR d.acme_tried_at < now() - make_interval(secs => $3))
           ORDER BY d.created_at"#,
        node_id,
        i32::try_from(RENEW_DAYS).unwrap_or(30),
        retry_after.as_secs_f64()
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| Due {
            domain_id: r.id,
            tenant_id: r.tenant_id,
            names: if r.www {
                vec![r.name.clone(), format!("www.{}", r.name)]
            } else {
                vec![r.name]
            },
        })
        .collect())
}

/// Records an ACME attempt for a domain: its error, or none.
pub async fn record_attempt(
    pool: &PgPool,
    domain_id: Uuid,
    error: Option<&str>,
) -> Result<(), StoreError> {
    sqlx::query!(
        "UPDATE domains SET acme_tried_at = now(), acme_error = $2 WHERE id = $1",
        domain_id,
        error
    )
    .execute(pool)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn self_signed(names: &[&str], days: i64) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(
            names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>(),
        )
        .unwrap();
        let now = ::time::OffsetDateTime::now_utc();
        params.not_before = now - ::time::Duration::days(1);
        params.not_after = now + ::time::Duration::days(days);
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn uploads_are_checked_for_key_names_order_and_dates() {
        let now = Utc::now();
        let names = vec!["site.test".to_owned(), "www.site.test".to_owned()];
        let (cert, key) = self_signed(&["site.test", "www.site.test"], 90);
        let info = check_upload(&cert, &key, &names, now).unwrap();
        assert_eq!(info.names, names);
        let field = |r: Result<CertInfo, StoreError>| match r {
            Err(StoreError::Invalid { field, message }) => format!("{field}: {message}"),
            other => panic!("{other:?}"),
        };
        let (_, other_key) = self_signed(&["site.test"], 90);
        assert!(
            field(check_upload(&cert, &other_key, &names, now)).starts_with("key: does not match")
        );
        assert!(
            field(check_upload(&cert, "junk", &names, now)).starts_with("key: not a private key")
        );
        let (narrow, narrow_key) = self_signed(&["site.test"], 90);
        assert!(
            field(check_upload(&narrow, &narrow_key, &names, now))
                .contains("does not cover www.site.test")
        );
        let (wild, wild_key) = self_signed(&["*.site.test", "site.test"], 90);
        check_upload(&wild, &wild_key, &names, now).unwrap();
        let later = now + chrono::Duration::days(100);
        assert!(field(check_upload(&cert, &key, &names, later)).contains("expired on"));
        // Two unrelated certificates are not a chain.
        let chain = format!("{cert}{narrow}");
        assert!(field(check_upload(&chain, &key, &names, now)).contains("out of order"));
        assert!(field(check_upload(&key, &key, &names, now)).contains("only certificates"));
    }

    #[test]
    fn sealed_keys_open_only_with_the_secret_half() {
        let secret = SecretKey::generate(&mut OsRng);
        let sealed = seal(&secret.public_key(), "-----BEGIN PRIVATE KEY-----").unwrap();
        assert_eq!(
            open(&secret, &sealed).unwrap(),
            "-----BEGIN PRIVATE KEY-----"
        );
        assert!(!String::from_utf8_lossy(&sealed).contains("PRIVATE KEY"));
        let other = SecretKey::generate(&mut OsRng);
        assert!(open(&other, &sealed).is_err());
    }
}
