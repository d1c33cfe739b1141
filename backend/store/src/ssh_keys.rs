//! SSH keys of tenants, and the logins the nodes' SSH gateways check with
//! them (see the migration's note).

use chrono::{DateTime, Utc};
use stockade_domain::{JailName, SshPublicKey, TenantSlug};
use uuid::Uuid;

use crate::{PgPool, StoreError, conflict_as};

/// Most keys one tenant may register.
pub const MAX_KEYS: i64 = 50;

/// A registered key, as the panel and the API show it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SshKey {
    pub id: Uuid,
    /// The name the customer gave it.
    pub name: String,
    /// `TYPE BASE64`.
    pub public_key: String,
    /// `SHA256:…`, as `ssh-keygen -l` prints it.
    pub fingerprint: String,
    pub created_at: DateTime<Utc>,
    /// When it last opened a session, if ever.
    pub last_used_at: Option<DateTime<Utc>>,
}

/// Registers `key` for the tenant under `name`; a key or name the tenant
/// already has is a conflict naming which.
pub async fn add(
    pool: &PgPool,
    tenant_id: Uuid,
    name: &str,
    key: &SshPublicKey,
    created_by: Option<Uuid>,
) -> Result<SshKey, StoreError> {
    let name = name.trim();
    let name = if name.is_empty() { key.comment() } else { name };
    let name = if name.is_empty() {
        key.algorithm()
    } else {
        name
    };
    if name.chars().count() > 100 || name.chars().any(char::is_control) {
        return Err(StoreError::Invalid {
            field: "name",
            message: "at most 100 characters, on one line".into(),
        });
    }
    let mut tx = pool.begin().await?;
    crate::jails::lock_active_tenant(&mut tx, tenant_id).await?;
    let fingerprint = key.fingerprint();
    let taken = sqlx::query!(
        r#"SELECT name, fingerprint = $2 AS "same_key!" FROM ssh_keys
           WHERE tenant_id = $1 AND (fingerprint = $2 OR name = $3)"#,
        tenant_id,
        fingerprint,
        name
    )
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(t) = taken {
        return Err(if t.same_key {
            StoreError::Invalid {
                field: "public_key",
                message: format!("this key is already registered, as {:?}", t.name),
            }
        } else {
            StoreError::Invalid {
                field: "name",
                message: format!("a key named {name:?} exists already"),
            }
        });
    }
    let count = sqlx::query_scalar!(
        r#"SELECT count(*) AS "n!" FROM ssh_keys WHERE tenant_id = $1"#,
        tenant_id
    )
    .fetch_one(&mut *tx)
    .await?;
    if count >= MAX_KEYS {
        return Err(StoreError::QuotaExceeded(format!(
            "a tenant may register at most {MAX_KEYS} SSH keys; remove one first"
        )));
    }
    let row = sqlx::query_as!(
        SshKey,
        "INSERT INTO ssh_keys (tenant_id, name, public_key, fingerprint, created_by)
         VALUES ($1, $2, $3, $4, $5)
         RETURNING id, name, public_key, fingerprint, created_at, last_used_at",
        tenant_id,
        name,
        key.openssh(),
        fingerprint,
        created_by
    )
    .fetch_one(&mut *tx)
    .await
    .map_err(conflict_as("SSH key"))?;
    tx.commit().await?;
    Ok(row)
}

/// The tenant's keys, newest first.
pub async fn list(pool: &PgPool, tenant_id: Uuid) -> Result<Vec<SshKey>, StoreError> {
    Ok(sqlx::query_as!(
        SshKey,
        "SELECT id, name, public_key, fingerprint, created_at, last_used_at
         FROM ssh_keys WHERE tenant_id = $1 ORDER BY created_at DESC, name",
        tenant_id
    )
    .fetch_all(pool)
    .await?)
}

/// Removes a key of the tenant: no new session opens with it (sessions
/// open with it go on until they end). Returns the removed key.
pub async fn remove(pool: &PgPool, tenant_id: Uuid, id: Uuid) -> Result<SshKey, StoreError> {
    sqlx::query_as!(
        SshKey,
        "DELETE FROM ssh_keys WHERE tenant_id = $1 AND id = $2
         RETURNING id, name, public_key, fingerprint, created_at, last_used_at",
        tenant_id,
        id
    )
    .fetch_optional(pool)
    .await?
    .ok_or(StoreError::NotFound)
}

/// Where a node's SSH gateway is reached, for the jail page.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Gateway {
    /// `host:port`.
    pub endpoint: String,
    /// The node's host key, `TYPE BASE64`.
    pub host_key: String,
    /// Its `SHA256:…` fingerprint, which the client shows on first contact.
    pub host_fingerprint: String,
}

/// The SSH gateway of the node a jail of the tenant is on, if that node
/// runs one.
pub async fn gateway_of(
    pool: &PgPool,
    tenant_id: Uuid,
    jail_id: Uuid,
) -> Result<Option<Gateway>, StoreError> {
    let row = sqlx::query!(
        r#"SELECT n.ssh_endpoint AS "endpoint?", n.ssh_host_key AS "key?",
                  n.ssh_host_fingerprint AS "fingerprint?"
           FROM jails j LEFT JOIN nodes n ON n.id = j.node_id
           WHERE j.id = $1 AND j.tenant_id = $2"#,
        jail_id,
        tenant_id
    )
    .fetch_optional(pool)
    .await?
    .ok_or(StoreError::NotFound)?;
    Ok(match (row.endpoint, row.key, row.fingerprint) {
        (Some(endpoint), Some(host_key), Some(host_fingerprint)) => Some(Gateway {
            endpoint,
            host_key,
            host_fingerprint,
        }),
        _ => None,
    })
}

/// Records a node's SSH gateway (or that it runs none).
pub async fn set_gateway(
    pool: &PgPool,
    node_id: Uuid,
    gateway: Option<&Gateway>,
) -> Result<(), StoreError> {
    sqlx::query!(
        "UPDATE nodes SET ssh_endpoint = $2, ssh_host_key = $3, ssh_host_fingerprint = $4
         WHERE id = $1",
        node_id,
        gateway.map(|g| g.endpoint.as_str()),
        gateway.map(|g| g.host_key.as_str()),
        gateway.map(|g| g.host_fingerprint.as_str()),
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// A login a gateway accepted: the jail to open sessions in.
#[derive(Debug, Clone)]
pub struct Login {
    pub tenant_id: Uuid,
    pub jail_id: Uuid,
    /// The name of the key that opened it.
    pub key_name: String,
}

/// Why a login is refused; the gateway tells the client only "denied"
/// (never whether a jail or tenant exists), and logs this.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No such tenant, jail (on this node) or key of the tenant.
    Unknown,
    /// The tenant is suspended or terminated.
    TenantNotActive,
}

/// Checks a login on node `node_id`: `user` is `<jail>+<tenant>`, and
/// `fingerprint` names a key the client proved it holds. Only a live jail
/// of that tenant placed on this node, with a key of that tenant, passes.
pub async fn check_login(
    pool: &PgPool,
    node_id: Uuid,
    user: &str,
    fingerprint: &str,
) -> Result<Result<Login, Refusal>, StoreError> {
    let Some((jail, tenant)) = split_login(user) else {
        return Ok(Err(Refusal::Unknown));
    };
    let row = sqlx::query!(
        r#"SELECT t.id AS tenant_id, t.status, j.id AS jail_id, k.name AS key_name
           FROM tenants t
           JOIN jails j ON j.tenant_id = t.id AND j.name = $2 AND j.desired_state <> 'deleted'
           JOIN ssh_keys k ON k.tenant_id = t.id AND k.fingerprint = $3
           WHERE t.slug = $1 AND j.node_id = $4"#,
        tenant.as_str(),
        jail.as_str(),
        fingerprint,
        node_id
    )
    .fetch_optional(pool)
    .await?;
    let Some(row) = row else {
        return Ok(Err(Refusal::Unknown));
    };
    if row.status != "active" {
        return Ok(Err(Refusal::TenantNotActive));
    }
    Ok(Ok(Login {
        tenant_id: row.tenant_id,
        jail_id: row.jail_id,
        key_name: row.key_name,
    }))
}

/// Notes that a key of the tenant opened a session.
pub async fn touch(pool: &PgPool, tenant_id: Uuid, fingerprint: &str) -> Result<(), StoreError> {
    sqlx::query!(
        "UPDATE ssh_keys SET last_used_at = now() WHERE tenant_id = $1 AND fingerprint = $2",
        tenant_id,
        fingerprint
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// `<jail>+<tenant>` split into its names, if both are valid names.
pub fn split_login(user: &str) -> Option<(JailName, TenantSlug)> {
    let (jail, tenant) = user.split_once('+')?;
    Some((JailName::parse(jail).ok()?, TenantSlug::parse(tenant).ok()?))
}

/// The login name of a jail: `<jail>+<tenant>`.
pub fn login_name(jail: &str, tenant: &str) -> String {
    format!("{jail}+{tenant}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_login_names_a_jail_and_its_tenant() {
        let (j, t) = split_login("web+acme").unwrap();
        assert_eq!((j.as_str(), t.as_str()), ("web", "acme"));
        assert!(split_login("web").is_none());
        assert!(split_login("web+").is_none());
        assert!(split_login("Web+acme").is_none());
        assert!(split_login("../x+acme").is_none());
        assert_eq!(login_name("web", "acme"), "web+acme");
    }
}
