//! Tickets to a jail's output or a console in it: minted by the web tier
//! for one jail, redeemed once by the agent of the jail's node (see the
//! migration's note).

use uuid::Uuid;

use crate::sessions::{random_token, token_hash};
use crate::{PgPool, StoreError};

/// How long a ticket may wait to be redeemed.
pub const TICKET_SECS: u32 = 60;

/// What a ticket opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TicketKind {
    /// The jail's output.
    Output,
    /// A console (a shell on a terminal) in the jail.
    Console,
}

impl TicketKind {
    fn as_str(self) -> &'static str {
        match self {
            TicketKind::Output => "output",
            TicketKind::Console => "console",
        }
    }
}

/// Where a jail's output is read: its node's log endpoint and a fresh
/// ticket for it. `None` when the jail is on no node yet or its node's
/// agent serves no output.
pub async fn mint(
    pool: &PgPool,
    tenant_id: Uuid,
    jail_id: Uuid,
    kind: TicketKind,
) -> Result<Option<(String, String)>, StoreError> {
    let Some(row) = sqlx::query!(
        r#"SELECT j.node_id, n.log_endpoint AS "log_endpoint?" FROM jails j
           LEFT JOIN nodes n ON n.id = j.node_id
           WHERE j.id = $1 AND j.tenant_id = $2"#,
        jail_id,
        tenant_id
    )
    .fetch_optional(pool)
    .await?
    else {
        return Err(StoreError::NotFound);
    };
    let (Some(node_id), Some(endpoint)) = (row.node_id, row.log_endpoint) else {
        return Ok(None);
    };
    let token = random_token();
    sqlx::query!(
        "INSERT INTO log_tickets (token_hash, jail_id, node_id, expires_at, kind)
         VALUES ($1, $2, $3, now() + make_interval(secs => $4), $5)",
        token_hash(&token),
        jail_id,
        node_id,
        f64::from(TICKET_SECS),
        kind.as_str()
    )
    .execute(pool)
    .await?;
    Ok(Some((endpoint, token)))
}

/// Redeems a ticket of `kind` on node `node_id`: the jail it was minted
/// for, once. Expired tickets of the node go too.
pub async fn redeem(
    pool: &PgPool,
    node_id: Uuid,
    token: &str,
    kind: TicketKind,
) -> Result<Option<Uuid>, StoreError> {
    sqlx::query!(
        "DELETE FROM log_tickets WHERE node_id = $1 AND expires_at < now()",
        node_id
    )
    .execute(pool)
    .await?;
    Ok(sqlx::query_scalar!(
        r#"DELETE FROM log_tickets WHERE token_hash = $1 AND node_id = $2 AND expires_at >= now()
           AND kind = $3
         RETURNING jail_id AS "jail_id!""#,
        token_hash(token),
        node_id,
        kind.as_str()
    )
    .fetch_optional(pool)
    .await?)
}

/// Records where the agent of `node_id` serves jails' output (`host:port`
/// the web tier can reach), or that it serves none.
pub async fn set_endpoint(
    pool: &PgPool,
    node_id: Uuid,
    endpoint: Option<&str>,
) -> Result<(), StoreError> {
    sqlx::query!(
        "UPDATE nodes SET log_endpoint = $2 WHERE id = $1",
        node_id,
        endpoint
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Where a backup of the tenant is downloaded: a live node's endpoint (the
/// one that took it if it is up, else any: they share the backup target)
/// and a fresh ticket for it. `None` when no live node serves downloads.
/// Only a finished backup is downloaded.
pub async fn mint_backup(
    pool: &PgPool,
    tenant_id: Uuid,
    backup_id: Uuid,
) -> Result<Option<(String, String)>, StoreError> {
    let state = sqlx::query_scalar!(
        "SELECT state FROM backups WHERE id = $1 AND tenant_id = $2 AND purpose = 'backup'",
        backup_id,
        tenant_id
    )
    .fetch_optional(pool)
    .await?
    .ok_or(StoreError::NotFound)?;
    if state != "ready" {
        return Err(StoreError::InvalidState(format!(
            "the backup is {state}: only a finished backup can be downloaded"
        )));
    }
    let node = sqlx::query!(
        r#"SELECT n.id, n.log_endpoint AS "log_endpoint!" FROM nodes n
           WHERE n.log_endpoint IS NOT NULL
             AND n.heartbeat_at > now() - make_interval(secs => $2)
           ORDER BY n.id = (SELECT node_id FROM backups WHERE id = $1) DESC, n.name
           LIMIT 1"#,
        backup_id,
        f64::from(u32::try_from(crate::jails::NODE_DOWN_AFTER_SECS).unwrap_or(30))
    )
    .fetch_optional(pool)
    .await?;
    let Some(node) = node else {
        return Ok(None);
    };
    let token = random_token();
    sqlx::query!(
        "INSERT INTO log_tickets (token_hash, backup_id, node_id, expires_at, kind)
         VALUES ($1, $2, $3, now() + make_interval(secs => $4), 'backup')",
        token_hash(&token),
        backup_id,
        node.id,
        f64::from(TICKET_SECS)
    )
    .execute(pool)
    .await?;
    Ok(Some((node.log_endpoint, token)))
}

/// Redeems a backup download ticket on node `node_id`: the backup's tenant
/// and id, once.
pub async fn redeem_backup(
    pool: &PgPool,
    node_id: Uuid,
    token: &str,
) -> Result<Option<(Uuid, Uuid)>, StoreError> {
    let row = sqlx::query!(
        r#"DELETE FROM log_tickets t USING backups b
           WHERE t.token_hash = $1 AND t.node_id = $2 AND t.expires_at >= now()
             AND t.kind = 'backup' AND b.id = t.backup_id
           RETURNING b.tenant_id, b.id"#,
        token_hash(token),
        node_id
    )
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|r| (r.tenant_id, r.id)))
}
