//! Domains: names a customer attaches to a jail and a port inside it, and
//! the routes each node's reverse proxy serves from them.
//!
//! A name belongs to one tenant: no two rows hold the same name, and no
//! row's `www.` alias is another row's name. Attaching and detaching notify
//! the jail's node, whose agent rewrites its proxy's routes.

use chrono::{DateTime, Utc};
use sqlx::{Postgres, Transaction};
use stockade_domain::DomainName;
use uuid::Uuid;

use crate::jails::{lock_active_tenant, notify};
use crate::{PgPool, StoreError};

/// Key of the transaction lock that attaching takes, so two tenants cannot
/// both take a name and its alias at once.
const DOMAIN_LOCK: i64 = 0x5354_4b44_4f4d_4149; // "STKDOMAI"

/// A domain as its tenant sees it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Domain {
    /// Stable id.
    pub id: Uuid,
    /// Its tenant.
    pub tenant_id: Uuid,
    /// The jail it routes to.
    pub jail_id: Uuid,
    /// The name.
    pub name: String,
    /// Its `www.` alias routes too.
    pub www: bool,
    /// The jail's port it routes to.
    pub jail_port: u16,
    /// When it was attached.
    pub created_at: DateTime<Utc>,
    /// Why the last certificate order failed, if it did.
    pub acme_error: Option<String>,
    /// While the name is not proven: the token its TXT record must hold.
    pub proof_token: Option<String>,
    /// Proven (or the proof waived): it routes.
    pub verified: bool,
}

impl Domain {
    /// The TXT record that proves the name: its name and value.
    pub fn proof_record(&self) -> Option<(String, String)> {
        let token = self.proof_token.as_ref().filter(|_| !self.verified)?;
        Some((
            format!("_stockade.{}", self.name),
            format!("stockade-proof={token}"),
        ))
    }
}

struct DomainRow {
    id: Uuid,
    tenant_id: Uuid,
    jail_id: Uuid,
    name: String,
    www: bool,
    jail_port: i32,
    created_at: DateTime<Utc>,
    acme_error: Option<String>,
    proof_token: Option<String>,
    verified_at: Option<DateTime<Utc>>,
}

impl TryFrom<DomainRow> for Domain {
    type Error = StoreError;
    fn try_from(r: DomainRow) -> Result<Self, StoreError> {
        Ok(Domain {
            id: r.id,
            tenant_id: r.tenant_id,
            jail_id: r.jail_id,
            name: r.name,
            www: r.www,
            jail_port: u16::try_from(r.jail_port)
                .map_err(|e| StoreError::Unexpected(anyhow::anyhow!("stored jail_port: {e}")))?,
            created_at: r.created_at,
            acme_error: r.acme_error,
            proof_token: r.proof_token,
            verified: r.verified_at.is_some(),
        })
    }
}

/// What a customer attaches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDomain {
    /// The name.
    pub name: DomainName,
    /// Whether its `www.` alias routes too.
    pub www: bool,
    /// The jail's port (1 to 65535).
    pub jail_port: u16,
    /// The name must be proven by a TXT record before it routes.
    pub proof_required: bool,
}

/// Attaches a name to a tenant's jail. The tenant must be active and the
/// jail not deleted; a name (or alias) another domain holds is refused
/// naming it.
pub async fn attach(
    pool: &PgPool,
    tenant_id: Uuid,
    jail_id: Uuid,
    new: &NewDomain,
) -> Result<Domain, StoreError> {
    if new.jail_port == 0 {
        return Err(StoreError::Invalid {
            field: "jail_port",
            message: "ports are 1 to 65535".into(),
        });
    }
    let www = if new.www {
        Some(new.name.www().ok_or_else(|| StoreError::Invalid {
            field: "www",
            message: format!("www.{} would be longer than a name may be", new.name),
        })?)
    } else {
        None
    };
    let mut tx = pool.begin().await?;
    lock_active_tenant(&mut tx, tenant_id).await?;
    let node_id = sqlx::query_scalar!(
        "SELECT node_id FROM jails
         WHERE id = $1 AND tenant_id = $2 AND desired_state <> 'deleted'",
        jail_id,
        tenant_id
    )
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(StoreError::NotFound)?;
    sqlx::query!("SELECT pg_advisory_xact_lock($1)", DOMAIN_LOCK)
        .execute(&mut *tx)
        .await?;
    let mut names = vec![new.name.as_str().to_owned()];
    names.extend(www.iter().map(|w| w.as_str().to_owned()));
    if let Some(taken) = taken(&mut tx, &names).await? {
        return Err(StoreError::Invalid {
            field: "name",
            message: format!("{taken} is already attached to a site"),
        });
    }
    let row = sqlx::query_as!(
        DomainRow,
        "INSERT INTO domains (tenant_id, jail_id, name, www, jail_port, proof_token, verified_at)
         VALUES ($1, $2, $3, $4, $5, $6, CASE WHEN $6::text IS NULL THEN now() END)
         RETURNING id, tenant_id, jail_id, name, www, jail_port, created_at, acme_error,
             proof_token, verified_at",
        tenant_id,
        jail_id,
        new.name.as_str(),
        new.www,
        i32::from(new.jail_port),
        new.proof_required
            .then(|| hex::encode(rand::random::<[u8; 16]>()))
    )
    .fetch_one(&mut *tx)
    .await
    .map_err(crate::conflict_as("a domain of this name"))?;
    notify(&mut tx, node_id).await?;
    tx.commit().await?;
    row.try_into()
}

/// Tells the node of jail `jail_id` that its routes changed.
async fn notify_node_of(
    tx: &mut Transaction<'_, Postgres>,
    jail_id: Uuid,
) -> Result<(), StoreError> {
    let node_id = sqlx::query_scalar!("SELECT node_id FROM jails WHERE id = $1", jail_id)
        .fetch_one(&mut **tx)
        .await?;
    notify(tx, node_id).await
}

/// The first of `names` any domain holds, as its name or its alias.
async fn taken(
    tx: &mut Transaction<'_, Postgres>,
    names: &[String],
) -> Result<Option<String>, StoreError> {
    Ok(sqlx::query_scalar!(
        r#"SELECT n AS "name!" FROM unnest($1::text[]) n
           WHERE EXISTS (SELECT 1 FROM domains d
                         WHERE d.name = n OR (d.www AND 'www.' || d.name = n))
           LIMIT 1"#,
        names
    )
    .fetch_optional(&mut **tx)
    .await?)
}

/// Detaches a domain of a tenant's jail. Allowed whatever the tenant's
/// state: it only takes a route away.
pub async fn detach(
    pool: &PgPool,
    tenant_id: Uuid,
    jail_id: Uuid,
    domain_id: Uuid,
) -> Result<Domain, StoreError> {
    let mut tx = pool.begin().await?;
    let row = sqlx::query_as!(
        DomainRow,
        "DELETE FROM domains WHERE id = $1 AND jail_id = $2 AND tenant_id = $3
         RETURNING id, tenant_id, jail_id, name, www, jail_port, created_at, acme_error,
             proof_token, verified_at",
        domain_id,
        jail_id,
        tenant_id
    )
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(StoreError::NotFound)?;
    notify_node_of(&mut tx, jail_id).await?;
    tx.commit().await?;
    row.try_into()
}

/// The domains of a tenant's jail, by name.
pub async fn for_jail(
    pool: &PgPool,
    tenant_id: Uuid,
    jail_id: Uuid,
) -> Result<Vec<Domain>, StoreError> {
    let rows = sqlx::query_as!(
        DomainRow,
        "SELECT id, tenant_id, jail_id, name, www, jail_port, created_at, acme_error,
             proof_token, verified_at
         FROM domains WHERE jail_id = $1 AND tenant_id = $2 ORDER BY name",
        jail_id,
        tenant_id
    )
    .fetch_all(pool)
    .await?;
    rows.into_iter().map(Domain::try_from).collect()
}

/// The names a domain's certificate must cover: its name, and its alias.
pub fn names_of(d: &Domain) -> Vec<String> {
    let mut names = vec![d.name.clone()];
    if d.www {
        names.push(format!("www.{}", d.name));
    }
    names
}

/// Stores an uploaded certificate and key for a tenant's domain, after
/// checking them (see [`crate::certificates::check_upload`]); the key is
/// sealed to the provider's certificate key. The certificate replaces any,
/// ACME's too, and is not renewed by ACME.
pub async fn upload_certificate(
    pool: &PgPool,
    tenant_id: Uuid,
    jail_id: Uuid,
    domain_id: Uuid,
    chain_pem: &str,
    key_pem: &str,
) -> Result<crate::certificates::CertInfo, StoreError> {
    use crate::certificates;
    let domain = for_jail(pool, tenant_id, jail_id)
        .await?
        .into_iter()
        .find(|d| d.id == domain_id)
        .ok_or(StoreError::NotFound)?;
    let info = certificates::check_upload(chain_pem, key_pem, &names_of(&domain), Utc::now())?;
    let public = certificates::sealing_key(pool).await?.ok_or_else(|| {
        StoreError::InvalidState(
            "no node has published the provider's certificate key yet; start a node's agent first"
                .into(),
        )
    })?;
    let sealed = certificates::seal(&public, key_pem)?;
    certificates::store(
        pool, tenant_id, domain_id, "upload", chain_pem, &sealed, &info,
    )
    .await?;
    Ok(info)
}

/// What a node's proxy answers for a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Forwards to the jail's address and port.
    Jail {
        /// The jail's address on its node.
        address: String,
        /// The jail's port.
        port: u16,
    },
    /// The tenant is suspended: a page saying so.
    Suspended,
    /// The jail is stopped or has no address yet: a page saying so.
    Unavailable,
}

/// A name a node's proxy routes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The domain's id.
    pub domain_id: Uuid,
    /// The names (the domain and maybe its `www.` alias).
    pub names: Vec<String>,
    /// What it answers.
    pub target: Target,
}

/// Every route of the jails placed on `node_id`, by name.
pub async fn routes_for_node(pool: &PgPool, node_id: Uuid) -> Result<Vec<Route>, StoreError> {
    let rows = sqlx::query!(
        r#"SELECT d.id, d.name, d.www, d.jail_port, host(j.address) AS address,
                  j.desired_state, t.status
           FROM domains d
           JOIN jails j ON j.id = d.jail_id
           JOIN tenants t ON t.id = d.tenant_id
           WHERE j.node_id = $1 AND j.desired_state <> 'deleted' AND d.verified_at IS NOT NULL
           ORDER BY d.name"#,
        node_id
    )
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|r| {
            let mut names = vec![r.name.clone()];
            if r.www {
                names.push(format!("www.{}", r.name));
            }
            let target = if r.status == "suspended" {
                Target::Suspended
            } else {
                match (r.desired_state.as_str(), r.address) {
                    ("running", Some(address)) => Target::Jail {
                        address,
                        port: u16::try_from(r.jail_port).map_err(|e| {
                            StoreError::Unexpected(anyhow::anyhow!("stored jail_port: {e}"))
                        })?,
                    },
                    _ => Target::Unavailable,
                }
            };
            Ok(Route {
                domain_id: r.id,
                names,
                target,
            })
        })
        .collect()
}

/// Marks a tenant's domain proven (its TXT record was found), or its proof
/// waived by staff member `waived_by`: it routes from now on.
pub async fn mark_verified(
    pool: &PgPool,
    tenant_id: Uuid,
    domain_id: Uuid,
    waived_by: Option<&str>,
) -> Result<Domain, StoreError> {
    let mut tx = pool.begin().await?;
    let row = sqlx::query_as!(
        DomainRow,
        "UPDATE domains SET verified_at = COALESCE(verified_at, now()),
             proof_waived_by = COALESCE(proof_waived_by, $3)
         WHERE id = $1 AND tenant_id = $2
         RETURNING id, tenant_id, jail_id, name, www, jail_port, created_at, acme_error,
             proof_token, verified_at",
        domain_id,
        tenant_id,
        waived_by
    )
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(StoreError::NotFound)?;
    notify_node_of(&mut tx, row.jail_id).await?;
    tx.commit().await?;
    row.try_into()
}

/// Every domain of a tenant, by name (for staff).
pub async fn for_tenant(pool: &PgPool, tenant_id: Uuid) -> Result<Vec<Domain>, StoreError> {
    let rows = sqlx::query_as!(
        DomainRow,
        "SELECT id, tenant_id, jail_id, name, www, jail_port, created_at, acme_error,
             proof_token, verified_at
         FROM domains WHERE tenant_id = $1 ORDER BY name",
        tenant_id
    )
    .fetch_all(pool)
    .await?;
    rows.into_iter().map(Domain::try_from).collect()
}

/// What a domain's route carried.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Traffic {
    /// Requests answered.
    pub requests: u64,
    /// Bytes received from clients.
    pub bytes_in: u64,
    /// Bytes sent to clients.
    pub bytes_out: u64,
}

/// Adds what the routes of domains carried since the last count, to today.
pub async fn add_traffic(pool: &PgPool, counts: &[(Uuid, Traffic)]) -> Result<(), StoreError> {
    let to_i = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    let ids: Vec<Uuid> = counts.iter().map(|(id, _)| *id).collect();
    let requests: Vec<i64> = counts.iter().map(|(_, t)| to_i(t.requests)).collect();
    let bytes_in: Vec<i64> = counts.iter().map(|(_, t)| to_i(t.bytes_in)).collect();
    let bytes_out: Vec<i64> = counts.iter().map(|(_, t)| to_i(t.bytes_out)).collect();
    // The domains counted are locked against removal until this commits; one
    // removed meanwhile is left out instead of failing the whole count.
    sqlx::query!(
        "INSERT INTO domain_traffic (domain_id, day, tenant_id, jail_id, requests, bytes_in, bytes_out)
         SELECT d.id, (now() AT TIME ZONE 'UTC')::date, d.tenant_id, d.jail_id, c.r, c.i, c.o
         FROM unnest($1::uuid[], $2::bigint[], $3::bigint[], $4::bigint[]) AS c(id, r, i, o)
         JOIN domains d ON d.id = c.id
         FOR KEY SHARE OF d
         ON CONFLICT (domain_id, day) DO UPDATE SET
             requests = domain_traffic.requests + EXCLUDED.requests,
             bytes_in = domain_traffic.bytes_in + EXCLUDED.bytes_in,
             bytes_out = domain_traffic.bytes_out + EXCLUDED.bytes_out",
        &ids,
        &requests,
        &bytes_in,
        &bytes_out
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// What the domains of a tenant's jail carried today (UTC), together.
pub async fn traffic_today(
    pool: &PgPool,
    tenant_id: Uuid,
    jail_id: Uuid,
) -> Result<Traffic, StoreError> {
    let r = sqlx::query!(
        r#"SELECT COALESCE(sum(requests), 0)::bigint AS "requests!",
                  COALESCE(sum(bytes_in), 0)::bigint AS "bytes_in!",
                  COALESCE(sum(bytes_out), 0)::bigint AS "bytes_out!"
           FROM domain_traffic
           WHERE tenant_id = $1 AND jail_id = $2 AND day = (now() AT TIME ZONE 'UTC')::date"#,
        tenant_id,
        jail_id
    )
    .fetch_one(pool)
    .await?;
    let to_u = |v: i64| u64::try_from(v).unwrap_or(0);
    Ok(Traffic {
        requests: to_u(r.requests),
        bytes_in: to_u(r.bytes_in),
        bytes_out: to_u(r.bytes_out),
    })
}
