//! The monthly transfer quota: past the plan's soft share a tenant's jails
//! are throttled for the rest of the month; at the full quota the tenant is
//! suspended. Both happen once per month, whichever agent notices first.

use uuid::Uuid;

use crate::{PgPool, StoreError, audit};

/// What a check did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Below the soft share, or already handled this month.
    Nothing,
    /// The soft share was passed: jails are throttled from now on.
    Throttled,
    /// The quota was used up: the tenant was suspended.
    Suspended,
}

/// Checks one tenant's transfer this month against its quota.
pub async fn check(pool: &PgPool, tenant_id: Uuid, actor: &str) -> Result<Outcome, StoreError> {
    let mut tx = pool.begin().await?;
    let row = sqlx::query!(
        r#"SELECT t.status, t.transfer_throttled_month,
             COALESCE(o.monthly_transfer_bytes, p.monthly_transfer_bytes) AS "quota!", p.transfer_soft_percent,
             t.transfer_throttled_month IS NOT DISTINCT FROM date_trunc('month', now() AT TIME ZONE 'UTC')::date
                 AS "throttled_now!"
         FROM tenants t JOIN plans p ON p.id = t.plan_id
         LEFT JOIN tenant_quota_overrides o ON o.tenant_id = t.id
         WHERE t.id = $1 FOR NO KEY UPDATE OF t"#,
        tenant_id
    )
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else {
        return Err(StoreError::NotFound);
    };
    let (quota, soft_percent, throttled_now) =
        (row.quota, row.transfer_soft_percent, row.throttled_now);
    if row.status != "active" || quota <= 0 {
        return Ok(Outcome::Nothing);
    }
    let used = crate::usage::transfer_this_month!(tenant_id)
        .fetch_one(&mut *tx)
        .await?;
    let soft = i64::try_from(i128::from(quota) * i128::from(soft_percent) / 100).unwrap_or(quota);
    let details =
        serde_json::json!({ "used_bytes": used, "quota_bytes": quota, "soft_bytes": soft });
    let outcome = if used >= quota {
        tx.commit().await?;
        crate::tenants::suspend(
            pool,
            tenant_id,
            Some("this month's transfer quota is used up"),
        )
        .await?;
        let mut tx = pool.begin().await?;
        crate::events::emit(
            &mut tx,
            Some(tenant_id),
            "quota.hard_limit_reached",
            details.clone(),
        )
        .await?;
        tx.commit().await?;
        audit::record(
            pool,
            &audit::Entry {
                actor_user_id: None,
                actor,
                tenant_id: Some(tenant_id),
                action: "quota.hard_limit_reached",
                target: "monthly_transfer",
                client_addr: None,
                details,
            },
        )
        .await?;
        return Ok(Outcome::Suspended);
    } else if used >= soft && !throttled_now {
        sqlx::query!(
            "UPDATE tenants SET transfer_throttled_month = date_trunc('month', now() AT TIME ZONE 'UTC')::date WHERE id = $1",
            tenant_id
        )
        .execute(&mut *tx)
        .await?;
        sqlx::query!(
            "UPDATE jails SET generation = generation + 1 WHERE tenant_id = $1 AND desired_state <> 'deleted'",
            tenant_id
        )
        .execute(&mut *tx)
        .await?;
        crate::events::emit(
            &mut tx,
            Some(tenant_id),
            "quota.soft_limit_reached",
            details.clone(),
        )
        .await?;
        audit::record(
            &mut *tx,
            &audit::Entry {
                actor_user_id: None,
                actor,
                tenant_id: Some(tenant_id),
                action: "quota.soft_limit_reached",
                target: "monthly_transfer",
                client_addr: None,
                details,
            },
        )
        .await?;
        Outcome::Throttled
    } else {
        Outcome::Nothing
    };
    tx.commit().await?;
    Ok(outcome)
}

/// The network rate (bits/s) each tenant with jails on `node_id` is throttled
/// to this month, for tenants that are throttled.
pub async fn throttles_on_node(
    pool: &PgPool,
    node_id: Uuid,
) -> Result<Vec<(Uuid, u64)>, StoreError> {
    let rows = sqlx::query!(
        "SELECT DISTINCT t.id, p.transfer_throttle_bps FROM tenants t
         JOIN plans p ON p.id = t.plan_id JOIN jails j ON j.tenant_id = t.id
         WHERE j.node_id = $1 AND t.transfer_throttled_month = date_trunc('month', now() AT TIME ZONE 'UTC')::date",
        node_id
    )
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|r| Ok((r.id, crate::to_u64("throttle", r.transfer_throttle_bps)?)))
        .collect()
}
