//! Counts for the metrics endpoint.

use crate::{PgPool, StoreError};

/// Tenants per status.
pub async fn tenants_by_status(pool: &PgPool) -> Result<Vec<(String, i64)>, StoreError> {
    Ok(
        sqlx::query_as("SELECT status, count(*) FROM tenants GROUP BY status ORDER BY status")
            .fetch_all(pool)
            .await?,
    )
}

/// Jails per desired and observed state (deleted and gone jails left out).
pub async fn jails_by_state(pool: &PgPool) -> Result<Vec<(String, String, i64)>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT desired_state, observed_state, count(*) FROM jails
         WHERE NOT (desired_state = 'deleted' AND observed_state = 'deleted')
         GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .fetch_all(pool)
    .await?)
}
