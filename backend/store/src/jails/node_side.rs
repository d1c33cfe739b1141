//! What the agents read and write: the jails of a node, claimed one at a
//! time, their observed state and addresses.

use sqlx::{Postgres, Transaction};
use stockade_domain::{DesiredState, ObservedState};
use uuid::Uuid;

use crate::{PgPool, StoreError};

use super::{Jail, JailRow, bad};

/// Every jail placed on `node_id` that still has something on the node or
/// is wanted there.
pub async fn for_node(pool: &PgPool, node_id: Uuid) -> Result<Vec<Jail>, StoreError> {
    let rows: Vec<JailRow> = sqlx::query_as(concat!(
        "SELECT ",
        jail_columns!(),
        " FROM jails
         WHERE node_id = $1 AND NOT (desired_state = 'deleted' AND observed_state = 'deleted')
         ORDER BY created_at"
    ))
    .bind(node_id)
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
    let rows: Vec<(Uuid, String)> =
        sqlx::query_as("SELECT id, desired_state FROM jails WHERE node_id = $1")
            .bind(node_id)
            .fetch_all(pool)
            .await?;
    rows.into_iter()
        .map(|(id, s)| Ok((id, s.parse().map_err(|e| bad("desired_state", e))?)))
        .collect()
}

/// Claims one jail for reconciling: the row is locked until `tx` ends and
/// skipped by anyone else who tries meanwhile.
pub async fn claim(
    tx: &mut Transaction<'_, Postgres>,
    node_id: Uuid,
    jail_id: Uuid,
) -> Result<Option<Jail>, StoreError> {
    let row: Option<JailRow> = sqlx::query_as(concat!(
        "SELECT ",
        jail_columns!(),
        " FROM jails WHERE id = $1 AND node_id = $2 FOR NO KEY UPDATE SKIP LOCKED"
    ))
    .bind(jail_id)
    .bind(node_id)
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
) -> Result<(), StoreError> {
    let before: Option<(String, Uuid, String, String)> = sqlx::query_as(
        "SELECT observed_state, tenant_id, name, desired_state FROM jails WHERE id = $1",
    )
    .bind(jail_id)
    .fetch_optional(&mut **tx)
    .await?;
    sqlx::query(
        "UPDATE jails SET observed_state = $2, observed_generation = GREATEST(observed_generation, $3),
             last_error = $4, observed_at = clock_timestamp()
         WHERE id = $1",
    )
    .bind(jail_id)
    .bind(observed.as_str())
    .bind(generation)
    .bind(last_error)
    .execute(&mut **tx)
    .await?;
    if let Some((previous, tenant_id, name, desired)) = before
        && previous != observed.as_str()
    {
        crate::events::emit(
            tx,
            Some(tenant_id),
            "jail.state_changed",
            serde_json::json!({
                "jail_id": jail_id,
                "tenant_id": tenant_id,
                "name": name,
                "previous_state": previous,
                "state": observed.as_str(),
                "desired_state": desired,
                "error": last_error,
            }),
        )
        .await?;
    }
    Ok(())
}

/// Addresses held by the jails of a node (deleted jails release theirs).
pub async fn addresses_on_node(
    pool: &PgPool,
    node_id: Uuid,
) -> Result<Vec<std::net::Ipv4Addr>, StoreError> {
    let rows: Vec<String> = sqlx::query_scalar(
        "SELECT host(address) FROM jails WHERE node_id = $1 AND address IS NOT NULL AND observed_state <> 'deleted'",
    )
    .bind(node_id)
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
    sqlx::query("UPDATE jails SET address = $2::inet WHERE id = $1")
        .bind(jail_id)
        .bind(address.to_string())
        .execute(&mut **tx)
        .await
        .map_err(crate::conflict_as("a jail with this address on the node"))?;
    Ok(())
}
