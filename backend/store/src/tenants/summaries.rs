//! The staff's tenant list: one line per tenant with its allocation and this month's usage, filtered and sorted in SQL.

use super::*;

/// A row of the staff tenant table: the tenant with what its jails hold.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TenantSummary {
    /// Stable id.
    pub id: Uuid,
    /// Short name.
    pub slug: String,
    /// Display name.
    pub display_name: String,
    /// Plan name.
    pub plan_name: String,
    /// Status text.
    pub status: String,
    /// Live jails.
    pub jails: i64,
    /// Sum of live jails' memory limits.
    pub memory_bytes: i64,
    /// CPU microseconds used this month.
    pub cpu_usec_month: i64,
    /// Network bytes this month.
    pub transfer_month: i64,
}

/// How the staff tenant table is ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SummaryOrder {
    /// By slug.
    Slug,
    /// Most CPU used this month first.
    Cpu,
    /// Most transfer this month first.
    Transfer,
    /// Most memory allocated first.
    Memory,
}

/// A page of tenants with usage, filtered by a search and status.
pub async fn summaries(
    pool: &PgPool,
    search: Option<&str>,
    status: Option<TenantStatus>,
    order: SummaryOrder,
    offset: u32,
    limit: u32,
) -> Result<(Vec<TenantSummary>, i64), StoreError> {
    let pattern = search.filter(|s| !s.trim().is_empty()).map(|s| {
        format!(
            "%{}%",
            s.trim()
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_")
        )
    });
    let order_sql: i32 = match order {
        SummaryOrder::Slug => 0,
        SummaryOrder::Cpu => 1,
        SummaryOrder::Transfer => 2,
        SummaryOrder::Memory => 3,
    };
    let status = status.map(|s| s.as_str());
    let (offset, limit) = (i64::from(offset), i64::from(limit));
    // Page by name: pick the page first, then sum only its tenants' jails and
    // month. By this month's usage: pick the page from the per-tenant month
    // totals, then sum its tenants' jails. By memory: sum every tenant's jails.
    let rows = if matches!(order, SummaryOrder::Cpu | SummaryOrder::Transfer) {
        sqlx::query_as!(
            TenantSummary,
            r#"SELECT t.id, t.slug, t.display_name, p.name AS plan_name, t.status,
                 COALESCE(a.jails, 0) AS "jails!", COALESCE(a.memory, 0) AS "memory_bytes!",
                 t.cpu AS "cpu_usec_month!", t.transfer AS "transfer_month!"
             FROM (SELECT t.id, t.slug, t.display_name, t.status, t.plan_id,
                          COALESCE(m.cpu_usec, 0) AS cpu,
                          COALESCE(m.net_rx_bytes + m.net_tx_bytes, 0) AS transfer
                   FROM tenants t
                   LEFT JOIN usage_tenant_months m
                       ON m.tenant_id = t.id AND m.month = date_trunc('month', now() AT TIME ZONE 'UTC')::date
                   WHERE ($1::text IS NULL OR t.slug ILIKE $1 OR t.display_name ILIKE $1)
                     AND ($2::text IS NULL OR t.status = $2)
                   ORDER BY CASE $3::int WHEN 1 THEN COALESCE(m.cpu_usec, 0)
                                    ELSE COALESCE(m.net_rx_bytes + m.net_tx_bytes, 0) END DESC, t.slug
                   OFFSET $4 LIMIT $5) t
             JOIN plans p ON p.id = t.plan_id
             LEFT JOIN LATERAL (SELECT count(*) AS jails, sum(memory_bytes)::bigint AS memory FROM jails
                                WHERE tenant_id = t.id AND desired_state <> 'deleted') a ON true
             ORDER BY CASE $3::int WHEN 1 THEN t.cpu ELSE t.transfer END DESC, t.slug"#,
            pattern.as_deref(),
            status,
            order_sql,
            offset,
            limit
        )
        .fetch_all(pool)
        .await?
    } else if order == SummaryOrder::Slug {
        sqlx::query_as!(
            TenantSummary,
            r#"SELECT t.id, t.slug, t.display_name, p.name AS plan_name, t.status,
                 COALESCE(a.jails, 0) AS "jails!", COALESCE(a.memory, 0) AS "memory_bytes!",
                 COALESCE(m.cpu, 0) AS "cpu_usec_month!", COALESCE(m.transfer, 0) AS "transfer_month!"
             FROM (SELECT * FROM tenants t
                   WHERE ($1::text IS NULL OR t.slug ILIKE $1 OR t.display_name ILIKE $1)
                     AND ($2::text IS NULL OR t.status = $2)
                   ORDER BY t.slug OFFSET $3 LIMIT $4) t
             JOIN plans p ON p.id = t.plan_id
             LEFT JOIN LATERAL (SELECT count(*) AS jails, sum(memory_bytes)::bigint AS memory FROM jails
                                WHERE tenant_id = t.id AND desired_state <> 'deleted') a ON true
             LEFT JOIN LATERAL (SELECT sum(cpu_usec)::bigint AS cpu, sum(net_rx_bytes + net_tx_bytes)::bigint AS transfer
                                FROM usage_jail_months
                                WHERE tenant_id = t.id AND month = date_trunc('month', now() AT TIME ZONE 'UTC')::date) m ON true
             ORDER BY t.slug"#,
            pattern.as_deref(),
            status,
            offset,
            limit
        )
        .fetch_all(pool)
        .await?
    } else {
        sqlx::query_as!(
            TenantSummary,
            r#"WITH month AS (
                 SELECT tenant_id, sum(cpu_usec)::bigint AS cpu, sum(net_rx_bytes + net_tx_bytes)::bigint AS transfer
                 FROM usage_jail_months WHERE month = date_trunc('month', now() AT TIME ZONE 'UTC')::date
                 GROUP BY tenant_id
             ), alloc AS (
                 SELECT tenant_id, count(*) AS jails, sum(memory_bytes)::bigint AS memory
                 FROM jails WHERE desired_state <> 'deleted' GROUP BY tenant_id
             )
             SELECT t.id, t.slug, t.display_name, p.name AS plan_name, t.status,
                 COALESCE(a.jails, 0) AS "jails!", COALESCE(a.memory, 0) AS "memory_bytes!",
                 COALESCE(m.cpu, 0) AS "cpu_usec_month!", COALESCE(m.transfer, 0) AS "transfer_month!"
             FROM tenants t JOIN plans p ON p.id = t.plan_id
             LEFT JOIN alloc a ON a.tenant_id = t.id LEFT JOIN month m ON m.tenant_id = t.id
             WHERE ($1::text IS NULL OR t.slug ILIKE $1 OR t.display_name ILIKE $1)
               AND ($2::text IS NULL OR t.status = $2)
             ORDER BY CASE $3::int WHEN 1 THEN COALESCE(m.cpu, 0) WHEN 2 THEN COALESCE(m.transfer, 0)
                              ELSE COALESCE(a.memory, 0) END DESC, t.slug
             OFFSET $4 LIMIT $5"#,
            pattern.as_deref(),
            status,
            order_sql,
            offset,
            limit
        )
        .fetch_all(pool)
        .await?
    };
    let total = sqlx::query_scalar!(
        r#"SELECT count(*) AS "count!" FROM tenants t WHERE ($1::text IS NULL OR t.slug ILIKE $1 OR t.display_name ILIKE $1)
           AND ($2::text IS NULL OR t.status = $2)"#,
        pattern.as_deref(),
        status
    )
    .fetch_one(pool)
    .await?;
    Ok((rows, total))
}
