//! Published ports: a port of a jail's node forwarded to a port of the jail,
//! from the node's pool, counted against the tenant's `max_published_ports`.
//!
//! Publishing or unpublishing bumps the jail's generation, so its node's
//! agent converges the firewall to the rows here like any other change.

use chrono::{DateTime, Utc};
use sqlx::{Postgres, Transaction};
use stockade_domain::Protocol;
use uuid::Uuid;

use crate::jails::{lock_active_tenant, notify};
use crate::{PgPool, StoreError, to_u32};

/// Key of the transaction lock that port assignments on one node take (with
/// the node's hash as the second key), so two cannot pick the same free port.
const PORT_LOCK: i32 = 0x5354_4b50; // "STKP"

/// A published port.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PublishedPort {
    /// Stable id.
    pub id: Uuid,
    /// The jail it forwards to.
    pub jail_id: Uuid,
    /// Its tenant.
    pub tenant_id: Uuid,
    /// The node whose address it is published on.
    pub node_id: Uuid,
    /// TCP or UDP.
    pub protocol: Protocol,
    /// The node's port.
    pub host_port: u16,
    /// The jail's port.
    pub jail_port: u16,
    /// When it was published.
    pub created_at: DateTime<Utc>,
}

struct PortRow {
    id: Uuid,
    jail_id: Uuid,
    tenant_id: Uuid,
    node_id: Uuid,
    protocol: String,
    host_port: i32,
    jail_port: i32,
    created_at: DateTime<Utc>,
}

fn port(what: &str, v: i32) -> Result<u16, StoreError> {
    u16::try_from(v).map_err(|e| StoreError::Unexpected(anyhow::anyhow!("stored {what}: {e}")))
}

impl TryFrom<PortRow> for PublishedPort {
    type Error = StoreError;
    fn try_from(r: PortRow) -> Result<Self, StoreError> {
        Ok(PublishedPort {
            id: r.id,
            jail_id: r.jail_id,
            tenant_id: r.tenant_id,
            node_id: r.node_id,
            protocol: r
                .protocol
                .parse()
                .map_err(|e| StoreError::Unexpected(anyhow::anyhow!("stored protocol: {e}")))?,
            host_port: port("host_port", r.host_port)?,
            jail_port: port("jail_port", r.jail_port)?,
            created_at: r.created_at,
        })
    }
}

/// The ports a jail of a tenant publishes, by protocol and node port. A jail
/// of another tenant publishes nothing.
pub async fn for_jail(
    pool: &PgPool,
    tenant_id: Uuid,
    jail_id: Uuid,
) -> Result<Vec<PublishedPort>, StoreError> {
    let rows = sqlx::query_as!(
        PortRow,
        "SELECT id, jail_id, tenant_id, node_id, protocol, host_port, jail_port, created_at
         FROM published_ports WHERE jail_id = $1 AND tenant_id = $2
         ORDER BY protocol, host_port",
        jail_id,
        tenant_id
    )
    .fetch_all(pool)
    .await?;
    rows.into_iter().map(PublishedPort::try_from).collect()
}

/// What a tenant may still publish: its limit (the override or the plan's)
/// and how many it publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct PortAllowance {
    /// The most ports the tenant may publish.
    pub limit: u32,
    /// How many it publishes.
    pub used: u32,
}

/// The tenant's port limit and use.
pub async fn allowance(pool: &PgPool, tenant_id: Uuid) -> Result<PortAllowance, StoreError> {
    allowance_in(&mut *pool.acquire().await?, tenant_id).await
}

async fn allowance_in(
    conn: &mut sqlx::PgConnection,
    tenant_id: Uuid,
) -> Result<PortAllowance, StoreError> {
    let row = sqlx::query!(
        r#"SELECT COALESCE(o.max_published_ports, p.max_published_ports) AS "limit!",
                  (SELECT count(*) FROM published_ports pp WHERE pp.tenant_id = t.id) AS "used!"
           FROM tenants t JOIN plans p ON p.id = t.plan_id
           LEFT JOIN tenant_quota_overrides o ON o.tenant_id = t.id
           WHERE t.id = $1"#,
        tenant_id
    )
    .fetch_optional(&mut *conn)
    .await?
    .ok_or(StoreError::NotFound)?;
    Ok(PortAllowance {
        limit: to_u32("max_published_ports", row.limit)?,
        used: u32::try_from(row.used).unwrap_or(u32::MAX),
    })
}

/// What a customer asks to publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewPort {
    /// TCP or UDP.
    pub protocol: Protocol,
    /// The jail's port.
    pub jail_port: u16,
    /// The node's port; `None`: the lowest free one of the node's pool.
    pub host_port: Option<u16>,
}

/// Publishes a port of a tenant's jail on its node, within the tenant's
/// allowance and the node's pool. The tenant must be active and the jail
/// not deleted.
pub async fn publish(
    pool: &PgPool,
    tenant_id: Uuid,
    jail_id: Uuid,
    new: NewPort,
) -> Result<PublishedPort, StoreError> {
    if new.jail_port == 0 {
        return Err(StoreError::Invalid {
            field: "jail_port",
            message: "ports are 1 to 65535".into(),
        });
    }
    let mut tx = pool.begin().await?;
    lock_active_tenant(&mut tx, tenant_id).await?;
    let jail = sqlx::query!(
        "SELECT node_id FROM jails
         WHERE id = $1 AND tenant_id = $2 AND desired_state <> 'deleted'",
        jail_id,
        tenant_id
    )
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(StoreError::NotFound)?;
    let Some(node_id) = jail.node_id else {
        return Err(StoreError::InvalidState(
            "the jail is not placed on a node yet".into(),
        ));
    };
    let allowance = allowance_in(&mut tx, tenant_id).await?;
    if allowance.used >= allowance.limit {
        return Err(StoreError::QuotaExceeded(format!(
            "published ports: the plan allows {} and {} are published",
            allowance.limit, allowance.used
        )));
    }
    sqlx::query!(
        "SELECT pg_advisory_xact_lock($1, hashtext($2::text))",
        PORT_LOCK,
        node_id.to_string()
    )
    .execute(&mut *tx)
    .await?;
    let already = sqlx::query_scalar!(
        "SELECT host_port FROM published_ports
         WHERE jail_id = $1 AND protocol = $2 AND jail_port = $3",
        jail_id,
        new.protocol.as_str(),
        i32::from(new.jail_port)
    )
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(on) = already {
        return Err(StoreError::Invalid {
            field: "jail_port",
            message: format!(
                "{}/{} is already published, on port {on}",
                new.jail_port, new.protocol
            ),
        });
    }
    let host_port = host_port(&mut tx, node_id, new.protocol, new.host_port).await?;
    let row = sqlx::query_as!(
        PortRow,
        "INSERT INTO published_ports (jail_id, tenant_id, node_id, protocol, host_port, jail_port)
         VALUES ($1, $2, $3, $4, $5, $6)
         RETURNING id, jail_id, tenant_id, node_id, protocol, host_port, jail_port, created_at",
        jail_id,
        tenant_id,
        node_id,
        new.protocol.as_str(),
        i32::from(host_port),
        i32::from(new.jail_port)
    )
    .fetch_one(&mut *tx)
    .await
    .map_err(crate::conflict_as("a published port like this"))?;
    bump(&mut tx, jail_id, node_id).await?;
    tx.commit().await?;
    row.try_into()
}

/// The node port to publish on: `asked` if it is in the node's pool and
/// free, else the lowest free one of the pool.
async fn host_port(
    tx: &mut Transaction<'_, Postgres>,
    node_id: Uuid,
    protocol: Protocol,
    asked: Option<u16>,
) -> Result<u16, StoreError> {
    let pool = sqlx::query!(
        "SELECT port_min, port_max FROM nodes WHERE id = $1",
        node_id
    )
    .fetch_one(&mut **tx)
    .await?;
    if let Some(p) = asked {
        let p32 = i32::from(p);
        if p32 < pool.port_min || p32 > pool.port_max {
            return Err(StoreError::Invalid {
                field: "host_port",
                message: format!(
                    "{p} is outside this node's pool of published ports, {} to {}",
                    pool.port_min, pool.port_max
                ),
            });
        }
        let taken = sqlx::query_scalar!(
            r#"SELECT EXISTS (SELECT 1 FROM published_ports
                              WHERE node_id = $1 AND protocol = $2 AND host_port = $3) AS "taken!""#,
            node_id,
            protocol.as_str(),
            p32
        )
        .fetch_one(&mut **tx)
        .await?;
        if taken {
            return Err(StoreError::Invalid {
                field: "host_port",
                message: format!("{p}/{protocol} is already published on this node"),
            });
        }
        return Ok(p);
    }
    let free = sqlx::query_scalar!(
        "SELECT min(p) FROM generate_series($2::int, $3::int) p
         WHERE NOT EXISTS (SELECT 1 FROM published_ports
                           WHERE node_id = $1 AND protocol = $4 AND host_port = p)",
        node_id,
        pool.port_min,
        pool.port_max,
        protocol.as_str()
    )
    .fetch_one(&mut **tx)
    .await?;
    let free = free.ok_or_else(|| {
        StoreError::NoCapacity(format!(
            "every {protocol} port of the node's pool, {} to {}, is published",
            pool.port_min, pool.port_max
        ))
    })?;
    port("host_port", free)
}

/// A new generation for the jail, so its node publishes what the rows say.
async fn bump(
    tx: &mut Transaction<'_, Postgres>,
    jail_id: Uuid,
    node_id: Uuid,
) -> Result<(), StoreError> {
    sqlx::query!(
        "UPDATE jails SET generation = generation + 1, updated_at = now() WHERE id = $1",
        jail_id
    )
    .execute(&mut **tx)
    .await?;
    notify(tx, Some(node_id)).await
}

/// Takes back a published port of a tenant's jail. Allowed whatever the
/// tenant's state: it only closes something.
pub async fn unpublish(
    pool: &PgPool,
    tenant_id: Uuid,
    jail_id: Uuid,
    port_id: Uuid,
) -> Result<PublishedPort, StoreError> {
    let mut tx = pool.begin().await?;
    let row = sqlx::query_as!(
        PortRow,
        "DELETE FROM published_ports WHERE id = $1 AND jail_id = $2 AND tenant_id = $3
         RETURNING id, jail_id, tenant_id, node_id, protocol, host_port, jail_port, created_at",
        port_id,
        jail_id,
        tenant_id
    )
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(StoreError::NotFound)?;
    bump(&mut tx, row.jail_id, row.node_id).await?;
    tx.commit().await?;
    row.try_into()
}

/// A published port as staff see it: which tenant and jail hold it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PortHolder {
    /// The port.
    pub port: PublishedPort,
    /// The node's name.
    pub node: String,
    /// The tenant's slug.
    pub tenant: String,
    /// The jail's name.
    pub jail: String,
}

/// Every published port of every node, by node and port.
pub async fn holders(pool: &PgPool) -> Result<Vec<PortHolder>, StoreError> {
    let rows = sqlx::query!(
        "SELECT pp.id, pp.jail_id, pp.tenant_id, pp.node_id, pp.protocol, pp.host_port,
                pp.jail_port, pp.created_at, n.name AS node, t.slug AS tenant, j.name AS jail
         FROM published_ports pp
         JOIN nodes n ON n.id = pp.node_id
         JOIN tenants t ON t.id = pp.tenant_id
         JOIN jails j ON j.id = pp.jail_id
         ORDER BY n.name, pp.host_port, pp.protocol"
    )
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|r| {
            Ok(PortHolder {
                port: PortRow {
                    id: r.id,
                    jail_id: r.jail_id,
                    tenant_id: r.tenant_id,
                    node_id: r.node_id,
                    protocol: r.protocol,
                    host_port: r.host_port,
                    jail_port: r.jail_port,
                    created_at: r.created_at,
                }
                .try_into()?,
                node: r.node,
                tenant: r.tenant,
                jail: r.jail,
            })
        })
        .collect()
}

/// Moves the jail's published ports to `to_node` (a jail moving there):
/// each keeps its node port where that is free in the new node's pool,
/// else takes the lowest free one. No room for one is an error, and the
/// caller's transaction changes nothing.
pub(crate) async fn repoint(
    tx: &mut Transaction<'_, Postgres>,
    jail_id: Uuid,
    to_node: Uuid,
) -> Result<(), StoreError> {
    sqlx::query!(
        "SELECT pg_advisory_xact_lock($1, hashtext($2::text))",
        PORT_LOCK,
        to_node.to_string()
    )
    .execute(&mut **tx)
    .await?;
    // Off the old node first, so the new one's pool is read without them.
    let ports = sqlx::query!(
        "DELETE FROM published_ports WHERE jail_id = $1
         RETURNING tenant_id, protocol, host_port, jail_port",
        jail_id
    )
    .fetch_all(&mut **tx)
    .await?;
    for p in ports {
        let protocol: Protocol = p
            .protocol
            .parse()
            .map_err(|e| StoreError::Unexpected(anyhow::anyhow!("stored protocol: {e}")))?;
        let asked = u16::try_from(p.host_port).ok();
        let host = match host_port(tx, to_node, protocol, asked).await {
            Ok(h) => h,
            Err(StoreError::Invalid { .. }) => host_port(tx, to_node, protocol, None).await?,
            Err(e) => return Err(e),
        };
        sqlx::query!(
            "INSERT INTO published_ports (jail_id, tenant_id, node_id, protocol, host_port, jail_port)
             VALUES ($1, $2, $3, $4, $5, $6)",
            jail_id,
            p.tenant_id,
            to_node,
            p.protocol,
            i32::from(host),
            p.jail_port
        )
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}
