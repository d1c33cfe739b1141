//! What the agents read and write: the jails of a node, claimed one at a
//! time, their observed state and addresses.

use sqlx::{Postgres, Transaction};
use stockade_domain::{DesiredState, ObservedState};
use uuid::Uuid;

use crate::{PgPool, StoreError, to_i32};

use super::{Jail, JailRow, RunState, bad};

/// Every jail placed on `node_id` that still has something on the node or
/// is wanted there.
pub async fn for_node(pool: &PgPool, node_id: Uuid) -> Result<Vec<Jail>, StoreError> {
    let rows = jail_query!(
        "SELECT ",
        " FROM jails
         WHERE node_id = $1 AND NOT (desired_state = 'deleted' AND observed_state = 'deleted')
         ORDER BY created_at",
        node_id
    )
    .fetch_all(pool)
    .await?;
    rows.into_iter().map(Jail::try_from).collect()
}

/// Ids of every jail ever placed on `node_id`, deleted or not (to tell an
/// adoptable leftover from a stranger).
pub async fn ids_on_node(
    pool: &PgPool,
    node_id: Uuid,
) -> Result<Vec<(Uuid, DesiredState)>, StoreError> {
    let rows = sqlx::query!(
        "SELECT id, desired_state FROM jails WHERE node_id = $1 OR moved_from_node = $1",
        node_id
    )
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|r| {
            let desired = r.desired_state.parse();
            Ok((r.id, desired.map_err(|e| bad("desired_state", e))?))
        })
        .collect()
}

/// Claims one jail for reconciling: the row is locked until `tx` ends and
/// skipped by anyone else who tries meanwhile.
pub async fn claim(
    tx: &mut Transaction<'_, Postgres>,
    node_id: Uuid,
    jail_id: Uuid,
) -> Result<Option<Jail>, StoreError> {
    let row = jail_query!(
        "SELECT ",
        " FROM jails WHERE id = $1 AND node_id = $2 FOR NO KEY UPDATE SKIP LOCKED",
        jail_id,
        node_id
    )
    .fetch_optional(&mut **tx)
    .await?;
    row.map(Jail::try_from).transpose()
}

/// Records what the agent sees of a jail after working on `generation`, and
/// a `jail.state_changed` event when the observed state changed.
pub async fn record_observed(
    tx: &mut Transaction<'_, Postgres>,
    jail_id: Uuid,
    observed: ObservedState,
    generation: i64,
    last_error: Option<&str>,
    run: &RunState,
) -> Result<(), StoreError> {
    let before = sqlx::query!(
        "SELECT observed_state, tenant_id, name, desired_state FROM jails WHERE id = $1",
        jail_id
    )
    .fetch_optional(&mut **tx)
    .await?;
    let exit = run.last_exit;
    sqlx::query!(
        "UPDATE jails SET observed_state = $2, observed_generation = GREATEST(observed_generation, $3),
             last_error = $4, observed_at = clock_timestamp(), restart_count = $5,
             crash_count = $6, last_exit_code = $7, last_exit_signal = $8, last_exit_at = $9,
             started_at = $10, retry_at = $11,
             moved_from_node = CASE
                 WHEN $4::text IS NULL AND $2 IN ('running', 'stopped')
                      AND GREATEST(observed_generation, $3) >= restore_generation
                 THEN NULL ELSE moved_from_node END
         WHERE id = $1",
        jail_id,
        observed.as_str(),
        generation,
        last_error,
        to_i32("restart_count", run.restart_count)?,
        to_i32("crash_count", run.crash_count)?,
        exit.and_then(|e| e.code),
        exit.and_then(|e| e.signal),
        exit.map(|e| e.at),
        run.started_at,
        run.retry_at
    )
    .execute(&mut **tx)
    .await?;
    // A jail stopped for a move is shipped now: its node's workers hear.
    sqlx::query!(
        "SELECT pg_notify($2, node_id::text) FROM jails
         WHERE id = $1 AND move_to_node IS NOT NULL AND observed_state = 'stopped'",
        jail_id,
        super::JAILS_CHANNEL
    )
    .execute(&mut **tx)
    .await?;
    // A move is done once the jail converged on its new node: its volume's
    // copy in the backup target goes.
    sqlx::query!(
        "UPDATE backups SET state = 'deleting'
         WHERE purpose = 'move' AND state = 'ready'
           AND id = (SELECT move_backup_id FROM jails WHERE id = $1 AND moved_from_node IS NULL
                       AND move_to_node IS NULL)",
        jail_id
    )
    .execute(&mut **tx)
    .await?;
    if let Some(before) = before
        && before.observed_state != observed.as_str()
    {
        let tenant_id = before.tenant_id;
        crate::events::emit(
            tx,
            Some(tenant_id),
            "jail.state_changed",
            serde_json::json!({
                "jail_id": jail_id,
                "tenant_id": tenant_id,
                "name": before.name,
                "previous_state": before.observed_state,
                "state": observed.as_str(),
                "desired_state": before.desired_state,
                "error": last_error,
                "restart_count": run.restart_count,
                "last_exit": run.last_exit.map(|e| e.describe()),
                "retry_at": run.retry_at,
            }),
        )
        .await?;
    }
    Ok(())
}

/// Says a claimed jail is being started (no event: the step's outcome
/// follows in moments and is what subscribers hear of).
pub async fn mark_starting(
    tx: &mut Transaction<'_, Postgres>,
    jail_id: Uuid,
) -> Result<(), StoreError> {
    sqlx::query!(
        "UPDATE jails SET observed_state = 'starting', observed_at = clock_timestamp() WHERE id = $1",
        jail_id
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Addresses held by the jails of a node (deleted jails release theirs).
pub async fn addresses_on_node(
    pool: &PgPool,
    node_id: Uuid,
) -> Result<Vec<std::net::Ipv4Addr>, StoreError> {
    let rows = sqlx::query_scalar!(
        r#"SELECT host(address) AS "host!" FROM jails WHERE node_id = $1 AND address IS NOT NULL AND observed_state <> 'deleted'"#,
        node_id
    )
    .fetch_all(pool)
    .await?;
    Ok(rows.iter().filter_map(|a| a.parse().ok()).collect())
}

/// Gives a jail its address on its node, inside the claiming transaction.
pub async fn set_address(
    tx: &mut Transaction<'_, Postgres>,
    jail_id: Uuid,
    address: std::net::Ipv4Addr,
) -> Result<(), StoreError> {
    // The address travels as text, cast by the server.
    sqlx::query!(
        "UPDATE jails SET address = $2::text::inet WHERE id = $1",
        jail_id,
        address.to_string()
    )
    .execute(&mut **tx)
    .await
    .map_err(crate::conflict_as("a jail with this address on the node"))?;
    Ok(())
}

/// A running jail of a node with a health check: what its agent probes.
#[derive(Debug, Clone)]
pub struct Probe {
    /// The jail.
    pub jail_id: Uuid,
    /// Its address on the node.
    pub address: std::net::Ipv4Addr,
    /// What to probe.
    pub check: stockade_domain::HealthCheck,
    /// What the probes said last.
    pub health: stockade_domain::Health,
}

/// The running jails of a node that have a health check and an address.
pub async fn probes_on_node(pool: &PgPool, node_id: Uuid) -> Result<Vec<Probe>, StoreError> {
    let rows = sqlx::query!(
        r#"SELECT id, host(address) AS "address!", health_check AS "check!", health FROM jails
         WHERE node_id = $1 AND health_check IS NOT NULL AND address IS NOT NULL
           AND desired_state = 'running' AND observed_state IN ('running', 'crash_looping')"#,
        node_id
    )
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|r| {
            Ok(Probe {
                jail_id: r.id,
                address: r.address.parse().map_err(|e| bad("address", e))?,
                check: serde_json::from_value(r.check).map_err(|e| bad("health_check", e))?,
                health: r.health.parse().map_err(|e| bad("health", e))?,
            })
        })
        .collect()
}

/// Records a jail's health when it changed, with a `jail.state_changed`
/// event carrying the health before and after.
pub async fn record_health(
    pool: &PgPool,
    jail_id: Uuid,
    health: stockade_domain::Health,
    detail: Option<&str>,
) -> Result<(), StoreError> {
    let mut tx = pool.begin().await?;
    let Some(before) = sqlx::query!(
        "SELECT tenant_id, name, observed_state, desired_state, health FROM jails
         WHERE id = $1 FOR NO KEY UPDATE",
        jail_id
    )
    .fetch_optional(&mut *tx)
    .await?
    else {
        return Ok(());
    };
    sqlx::query!(
        "UPDATE jails SET health = $2, health_detail = $3, health_at = clock_timestamp() WHERE id = $1",
        jail_id,
        health.as_str(),
        detail
    )
    .execute(&mut *tx)
    .await?;
    if before.health != health.as_str() {
        crate::events::emit(
            &mut tx,
            Some(before.tenant_id),
            "jail.state_changed",
            serde_json::json!({
                "jail_id": jail_id,
                "tenant_id": before.tenant_id,
                "name": before.name,
                "previous_state": before.observed_state,
                "state": before.observed_state,
                "desired_state": before.desired_state,
                "previous_health": before.health,
                "health": health.as_str(),
                "error": detail,
            }),
        )
        .await?;
    }
    tx.commit().await?;
    Ok(())
}
