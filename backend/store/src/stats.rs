//! Counts for the metrics endpoint.

use crate::{PgPool, StoreError};

/// Tenants per status.
pub async fn tenants_by_status(pool: &PgPool) -> Result<Vec<(String, i64)>, StoreError> {
    let rows = sqlx::query!(
        r#"SELECT status, count(*) AS "count!" FROM tenants GROUP BY status ORDER BY status"#
    )
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|r| (r.status, r.count)).collect())
}

/// Jails per desired and observed state (deleted and gone jails left out).
pub async fn jails_by_state(pool: &PgPool) -> Result<Vec<(String, String, i64)>, StoreError> {
    let rows = sqlx::query!(
        r#"SELECT desired_state, observed_state, count(*) AS "count!" FROM jails
         WHERE NOT (desired_state = 'deleted' AND observed_state = 'deleted')
         GROUP BY 1, 2 ORDER BY 1, 2"#
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.desired_state, r.observed_state, r.count))
        .collect())
}
