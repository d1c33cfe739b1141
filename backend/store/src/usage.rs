//! Usage metering: raw samples of cumulative kernel counters, and hourly
//! rollups of their deltas for billing. All quantities are integers.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::{PgPool, StoreError, to_i64};

/// One reading of a jail's counters, as the agent took it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sample {
    /// The jail.
    pub jail_id: Uuid,
    /// Its tenant.
    pub tenant_id: Uuid,
    /// When it was read.
    pub sampled_at: DateTime<Utc>,
    /// CPU time, microseconds (cumulative).
    pub cpu_usec: u64,
    /// Memory now, bytes.
    pub memory_bytes: u64,
    /// Memory peak reported by the kernel, bytes.
    pub memory_peak_bytes: u64,
    /// Processes now.
    pub pids: u64,
    /// Bytes read (cumulative).
    pub io_read_bytes: u64,
    /// Bytes written (cumulative).
    pub io_write_bytes: u64,
    /// Bytes received (cumulative).
    pub net_rx_bytes: u64,
    /// Bytes sent (cumulative).
    pub net_tx_bytes: u64,
    /// Packets received (cumulative).
    pub net_rx_packets: u64,
    /// Packets sent (cumulative).
    pub net_tx_packets: u64,
    /// Volume bytes used now.
    pub disk_used_bytes: u64,
    /// OOM kills (cumulative).
    pub oom_kills: u64,
    /// Memory limit hits (cumulative).
    pub memory_limit_hits: u64,
    /// Forks refused at the pids limit (cumulative).
    pub pids_limit_hits: u64,
    /// Throttled CPU periods (cumulative).
    pub cpu_throttled_periods: u64,
}

/// Records a batch of samples of one node and folds them into the hourly
/// rollups, in one transaction. A sample not newer than the jail's last
/// recorded one is ignored, so replaying a batch changes nothing.
pub async fn record(pool: &PgPool, node_id: Uuid, samples: &[Sample]) -> Result<usize, StoreError> {
    if samples.is_empty() {
        return Ok(0);
    }
    let mut cols: [Vec<i64>; 15] = Default::default();
    let mut jail_ids = Vec::with_capacity(samples.len());
    let mut tenant_ids = Vec::with_capacity(samples.len());
    let mut times = Vec::with_capacity(samples.len());
    for s in samples {
        jail_ids.push(s.jail_id);
        tenant_ids.push(s.tenant_id);
        times.push(s.sampled_at);
        let values = [
            s.cpu_usec,
            s.memory_bytes,
            s.memory_peak_bytes,
            s.pids,
            s.io_read_bytes,
            s.io_write_bytes,
            s.net_rx_bytes,
            s.net_tx_bytes,
            s.net_rx_packets,
            s.net_tx_packets,
            s.disk_used_bytes,
            s.oom_kills,
            s.memory_limit_hits,
            s.pids_limit_hits,
            s.cpu_throttled_periods,
        ];
        for (col, v) in cols.iter_mut().zip(values) {
            col.push(to_i64("counter", v)?);
        }
    }
    let [
        cpu,
        mem,
        mem_peak,
        pids,
        io_r,
        io_w,
        rx,
        tx_,
        rxp,
        txp,
        disk,
        oom,
        memhit,
        pidhit,
        thr,
    ] = cols;
    let mut tx = pool.begin().await?;
    // 1. The new samples, minus any not newer than what was already counted.
    // 2. Deltas against the last counters (a lower value means a reset: count it whole).
    // 3. Fold into the hour, then remember the counters.
    let inserted = sqlx::query!(
        "WITH input AS (
             SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::timestamptz[], $4::bigint[], $5::bigint[],
                 $6::bigint[], $7::bigint[], $8::bigint[], $9::bigint[], $10::bigint[], $11::bigint[],
                 $12::bigint[], $13::bigint[], $14::bigint[], $15::bigint[], $16::bigint[], $17::bigint[],
                 $18::bigint[])
             AS t(jail_id, tenant_id, sampled_at, cpu_usec, memory_bytes, memory_peak_bytes, pids,
                  io_read_bytes, io_write_bytes, net_rx_bytes, net_tx_bytes, net_rx_packets,
                  net_tx_packets, disk_used_bytes, oom_kills, memory_limit_hits, pids_limit_hits,
                  cpu_throttled_periods)
         ), fresh AS (
             SELECT i.* FROM input i LEFT JOIN jail_counters c ON c.jail_id = i.jail_id
             WHERE c.sampled_at IS NULL OR i.sampled_at > c.sampled_at
         )
         INSERT INTO usage_samples (jail_id, tenant_id, node_id, sampled_at, cpu_usec, memory_bytes,
             memory_peak_bytes, pids, io_read_bytes, io_write_bytes, net_rx_bytes, net_tx_bytes,
             net_rx_packets, net_tx_packets, disk_used_bytes, oom_kills, memory_limit_hits,
             pids_limit_hits, cpu_throttled_periods)
         SELECT jail_id, tenant_id, $19, sampled_at, cpu_usec, memory_bytes, memory_peak_bytes, pids,
             io_read_bytes, io_write_bytes, net_rx_bytes, net_tx_bytes, net_rx_packets, net_tx_packets,
             disk_used_bytes, oom_kills, memory_limit_hits, pids_limit_hits, cpu_throttled_periods
         FROM fresh
         ON CONFLICT (jail_id, sampled_at) DO NOTHING",
        jail_ids.as_slice(),
        tenant_ids.as_slice(),
        times.as_slice(),
        cpu.as_slice(),
        mem.as_slice(),
        mem_peak.as_slice(),
        pids.as_slice(),
        io_r.as_slice(),
        io_w.as_slice(),
        rx.as_slice(),
        tx_.as_slice(),
        rxp.as_slice(),
        txp.as_slice(),
        disk.as_slice(),
        oom.as_slice(),
        memhit.as_slice(),
        pidhit.as_slice(),
        thr.as_slice(),
        node_id
    )
    .execute(&mut *tx)
    .await?
    .rows_affected();
    // Samples of one jail in one batch are folded in time order, one at a time.
    let mut order: Vec<usize> = (0..samples.len()).collect();
    order.sort_by_key(|&i| (samples[i].jail_id, samples[i].sampled_at));
    for i in order {
        fold_one(&mut tx, samples[i].jail_id, samples[i].sampled_at).await?;
    }
    tx.commit().await?;
    Ok(usize::try_from(inserted).unwrap_or(0))
}

/// Folds the stored sample (`jail_id`, `at`) into its hour, if it is newer
/// than the jail's last counters.
async fn fold_one(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    jail_id: Uuid,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    sqlx::query!(
        "WITH s AS (
             SELECT * FROM usage_samples WHERE jail_id = $1 AND sampled_at = $2
         ), c AS (
             SELECT * FROM jail_counters WHERE jail_id = $1
         ), d AS (
             SELECT s.jail_id, s.tenant_id, date_trunc('hour', s.sampled_at) AS hour,
                 s.memory_bytes, s.disk_used_bytes,
                 CASE WHEN c.jail_id IS NULL OR s.cpu_usec < c.cpu_usec THEN s.cpu_usec ELSE s.cpu_usec - c.cpu_usec END AS cpu_usec,
                 CASE WHEN c.jail_id IS NULL OR s.io_read_bytes < c.io_read_bytes THEN s.io_read_bytes ELSE s.io_read_bytes - c.io_read_bytes END AS io_read_bytes,
                 CASE WHEN c.jail_id IS NULL OR s.io_write_bytes < c.io_write_bytes THEN s.io_write_bytes ELSE s.io_write_bytes - c.io_write_bytes END AS io_write_bytes,
                 CASE WHEN c.jail_id IS NULL OR s.net_rx_bytes < c.net_rx_bytes THEN s.net_rx_bytes ELSE s.net_rx_bytes - c.net_rx_bytes END AS net_rx_bytes,
                 CASE WHEN c.jail_id IS NULL OR s.net_tx_bytes < c.net_tx_bytes THEN s.net_tx_bytes ELSE s.net_tx_bytes - c.net_tx_bytes END AS net_tx_bytes,
                 CASE WHEN c.jail_id IS NULL OR s.oom_kills < c.oom_kills THEN s.oom_kills ELSE s.oom_kills - c.oom_kills END AS oom_kills,
                 CASE WHEN c.jail_id IS NULL OR s.memory_limit_hits < c.memory_limit_hits THEN s.memory_limit_hits ELSE s.memory_limit_hits - c.memory_limit_hits END AS memory_limit_hits,
                 CASE WHEN c.jail_id IS NULL OR s.pids_limit_hits < c.pids_limit_hits THEN s.pids_limit_hits ELSE s.pids_limit_hits - c.pids_limit_hits END AS pids_limit_hits,
                 CASE WHEN c.jail_id IS NULL OR s.cpu_throttled_periods < c.cpu_throttled_periods THEN s.cpu_throttled_periods ELSE s.cpu_throttled_periods - c.cpu_throttled_periods END AS cpu_throttled_periods
             FROM s LEFT JOIN c ON true
             WHERE c.sampled_at IS NULL OR s.sampled_at > c.sampled_at
         ), rolled AS (
             INSERT INTO usage_rollups AS r (jail_id, hour, tenant_id, samples, cpu_usec, memory_bytes_sum,
                 memory_peak_bytes, io_read_bytes, io_write_bytes, net_rx_bytes, net_tx_bytes,
                 disk_bytes_sum, disk_peak_bytes, oom_kills, memory_limit_hits, pids_limit_hits,
                 cpu_throttled_periods)
             SELECT jail_id, hour, tenant_id, 1, cpu_usec, memory_bytes, memory_bytes, io_read_bytes,
                 io_write_bytes, net_rx_bytes, net_tx_bytes, disk_used_bytes, disk_used_bytes, oom_kills,
                 memory_limit_hits, pids_limit_hits, cpu_throttled_periods
             FROM d
             ON CONFLICT (jail_id, hour) DO UPDATE SET
                 samples = r.samples + 1,
                 cpu_usec = r.cpu_usec + EXCLUDED.cpu_usec,
                 memory_bytes_sum = r.memory_bytes_sum + EXCLUDED.memory_bytes_sum,
                 memory_peak_bytes = GREATEST(r.memory_peak_bytes, EXCLUDED.memory_peak_bytes),
                 io_read_bytes = r.io_read_bytes + EXCLUDED.io_read_bytes,
                 io_write_bytes = r.io_write_bytes + EXCLUDED.io_write_bytes,
                 net_rx_bytes = r.net_rx_bytes + EXCLUDED.net_rx_bytes,
                 net_tx_bytes = r.net_tx_bytes + EXCLUDED.net_tx_bytes,
                 disk_bytes_sum = r.disk_bytes_sum + EXCLUDED.disk_bytes_sum,
                 disk_peak_bytes = GREATEST(r.disk_peak_bytes, EXCLUDED.disk_peak_bytes),
                 oom_kills = r.oom_kills + EXCLUDED.oom_kills,
                 memory_limit_hits = r.memory_limit_hits + EXCLUDED.memory_limit_hits,
                 pids_limit_hits = r.pids_limit_hits + EXCLUDED.pids_limit_hits,
                 cpu_throttled_periods = r.cpu_throttled_periods + EXCLUDED.cpu_throttled_periods
             RETURNING 1
         )
         INSERT INTO jail_counters (jail_id, sampled_at, cpu_usec, io_read_bytes, io_write_bytes,
             net_rx_bytes, net_tx_bytes, oom_kills, memory_limit_hits, pids_limit_hits, cpu_throttled_periods)
         SELECT s.jail_id, s.sampled_at, s.cpu_usec, s.io_read_bytes, s.io_write_bytes, s.net_rx_bytes,
             s.net_tx_bytes, s.oom_kills, s.memory_limit_hits, s.pids_limit_hits, s.cpu_throttled_periods
         FROM s WHERE EXISTS (SELECT 1 FROM d) AND EXISTS (SELECT 1 FROM rolled)
         ON CONFLICT (jail_id) DO UPDATE SET sampled_at = EXCLUDED.sampled_at, cpu_usec = EXCLUDED.cpu_usec,
             io_read_bytes = EXCLUDED.io_read_bytes, io_write_bytes = EXCLUDED.io_write_bytes,
             net_rx_bytes = EXCLUDED.net_rx_bytes, net_tx_bytes = EXCLUDED.net_tx_bytes,
             oom_kills = EXCLUDED.oom_kills, memory_limit_hits = EXCLUDED.memory_limit_hits,
             pids_limit_hits = EXCLUDED.pids_limit_hits, cpu_throttled_periods = EXCLUDED.cpu_throttled_periods",
        jail_id,
        at
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Sums of a jail's hourly rollups.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, sqlx::FromRow)]
pub struct Totals {
    /// Samples folded in.
    pub samples: i64,
    /// CPU microseconds.
    pub cpu_usec: i64,
    /// Bytes read.
    pub io_read_bytes: i64,
    /// Bytes written.
    pub io_write_bytes: i64,
    /// Bytes received.
    pub net_rx_bytes: i64,
    /// Bytes sent.
    pub net_tx_bytes: i64,
    /// OOM kills.
    pub oom_kills: i64,
    /// Memory limit hits.
    pub memory_limit_hits: i64,
    /// Pids limit hits.
    pub pids_limit_hits: i64,
    /// Throttled CPU periods.
    pub cpu_throttled_periods: i64,
}

/// Totals of one jail's rollups between two instants (hours starting in `[from, to)`).
pub async fn jail_totals(
    pool: &PgPool,
    jail_id: Uuid,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Totals, StoreError> {
    Ok(sqlx::query_as!(
        Totals,
        r#"SELECT COALESCE(sum(samples), 0)::bigint AS "samples!", COALESCE(sum(cpu_usec), 0)::bigint AS "cpu_usec!",
             COALESCE(sum(io_read_bytes), 0)::bigint AS "io_read_bytes!", COALESCE(sum(io_write_bytes), 0)::bigint AS "io_write_bytes!",
             COALESCE(sum(net_rx_bytes), 0)::bigint AS "net_rx_bytes!", COALESCE(sum(net_tx_bytes), 0)::bigint AS "net_tx_bytes!",
             COALESCE(sum(oom_kills), 0)::bigint AS "oom_kills!", COALESCE(sum(memory_limit_hits), 0)::bigint AS "memory_limit_hits!",
             COALESCE(sum(pids_limit_hits), 0)::bigint AS "pids_limit_hits!",
             COALESCE(sum(cpu_throttled_periods), 0)::bigint AS "cpu_throttled_periods!"
         FROM usage_rollups WHERE jail_id = $1 AND hour >= $2 AND hour < $3"#,
        jail_id,
        from,
        to
    )
    .fetch_one(pool)
    .await?)
}

/// A jail's raw samples in time order: (time, cpu_usec, io_write_bytes, oom_kills).
pub async fn jail_samples(
    pool: &PgPool,
    jail_id: Uuid,
) -> Result<Vec<(DateTime<Utc>, i64, i64, i64)>, StoreError> {
    let rows = sqlx::query!(
        "SELECT sampled_at, cpu_usec, io_write_bytes, oom_kills FROM usage_samples WHERE jail_id = $1 ORDER BY sampled_at",
        jail_id
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.sampled_at, r.cpu_usec, r.io_write_bytes, r.oom_kills))
        .collect())
}

/// Deletes raw samples older than `keep_hours` and rollups older than 13 months.
pub async fn purge(pool: &PgPool, keep_hours: u32) -> Result<(u64, u64), StoreError> {
    let samples = sqlx::query!(
        "DELETE FROM usage_samples WHERE sampled_at < now() - make_interval(hours => $1)",
        i32::try_from(keep_hours).unwrap_or(i32::MAX)
    )
    .execute(pool)
    .await?
    .rows_affected();
    let rollups = sqlx::query!(
        "DELETE FROM usage_rollups WHERE hour < date_trunc('month', now()) - interval '13 months'"
    )
    .execute(pool)
    .await?
    .rows_affected();
    Ok((samples, rollups))
}

/// One point of a usage chart: averages over the bucket starting at `at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::FromRow)]
pub struct Point {
    /// Bucket start.
    pub at: DateTime<Utc>,
    /// Average CPU use over the bucket, millicores.
    pub cpu_millicores: i64,
    /// Average memory, bytes.
    pub memory_bytes: i64,
    /// Network bytes received + sent in the bucket.
    pub net_bytes: i64,
    /// Average disk use, bytes.
    pub disk_bytes: i64,
    /// IO bytes read + written in the bucket.
    pub io_bytes: i64,
}

/// How wide the buckets of a chart are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bucket {
    /// From raw samples, one point per sample.
    Sample,
    /// From hourly rollups.
    Hour,
    /// Hourly rollups summed per day.
    Day,
}

/// A jail's usage over `[from, to)`. Scoped by tenant: another tenant's jail has no points.
pub async fn jail_series(
    pool: &PgPool,
    tenant_id: Uuid,
    jail_id: Uuid,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    bucket: Bucket,
) -> Result<Vec<Point>, StoreError> {
    let rows = match bucket {
        Bucket::Sample => {
            sqlx::query_as!(
                Point,
                r#"SELECT sampled_at AS at,
                     CASE WHEN prev_at IS NULL OR cpu_usec < prev_cpu THEN 0
                          ELSE ((cpu_usec - prev_cpu) * 1000 / GREATEST(1, (extract(epoch FROM sampled_at - prev_at) * 1000000)::bigint))
                     END AS "cpu_millicores!",
                     memory_bytes,
                     CASE WHEN prev_at IS NULL OR net_rx_bytes + net_tx_bytes < prev_net THEN 0 ELSE net_rx_bytes + net_tx_bytes - prev_net END AS "net_bytes!",
                     disk_used_bytes AS disk_bytes,
                     CASE WHEN prev_at IS NULL OR io_read_bytes + io_write_bytes < prev_io THEN 0 ELSE io_read_bytes + io_write_bytes - prev_io END AS "io_bytes!"
                 FROM (
                     SELECT s.*, lag(sampled_at) OVER w AS prev_at, lag(cpu_usec) OVER w AS prev_cpu,
                         lag(net_rx_bytes + net_tx_bytes) OVER w AS prev_net,
                         lag(io_read_bytes + io_write_bytes) OVER w AS prev_io
                     FROM usage_samples s WHERE jail_id = $1 AND tenant_id = $2 AND sampled_at >= $3 AND sampled_at < $4
                     WINDOW w AS (ORDER BY sampled_at)
                 ) t ORDER BY sampled_at"#,
                jail_id,
                tenant_id,
                from,
                to
            )
            .fetch_all(pool)
            .await?
        }
        Bucket::Hour | Bucket::Day => {
            let (trunc, seconds): (&str, i64) = if bucket == Bucket::Hour { ("hour", 3600) } else { ("day", 86400) };
            sqlx::query_as!(
                Point,
                r#"SELECT date_trunc($5, hour) AS "at!",
                     (sum(cpu_usec) / ($6::bigint * 1000))::bigint AS "cpu_millicores!",
                     (sum(memory_bytes_sum) / GREATEST(1, sum(samples)))::bigint AS "memory_bytes!",
                     sum(net_rx_bytes + net_tx_bytes)::bigint AS "net_bytes!",
                     (sum(disk_bytes_sum) / GREATEST(1, sum(samples)))::bigint AS "disk_bytes!",
                     sum(io_read_bytes + io_write_bytes)::bigint AS "io_bytes!"
                 FROM usage_rollups WHERE jail_id = $1 AND tenant_id = $2 AND hour >= $3 AND hour < $4
                 GROUP BY 1 ORDER BY 1"#,
                jail_id,
                tenant_id,
                from,
                to,
                trunc,
                seconds
            )
            .fetch_all(pool)
            .await?
        }
    };
    Ok(rows)
}

/// A jail's limit hits since `since`: (OOM kills, memory limit hits, pids limit hits, throttled periods).
pub async fn jail_limit_hits(
    pool: &PgPool,
    tenant_id: Uuid,
    jail_id: Uuid,
    since: DateTime<Utc>,
) -> Result<(i64, i64, i64, i64), StoreError> {
    let row = sqlx::query!(
        r#"SELECT COALESCE(sum(oom_kills), 0)::bigint AS "oom_kills!",
             COALESCE(sum(memory_limit_hits), 0)::bigint AS "memory_limit_hits!",
             COALESCE(sum(pids_limit_hits), 0)::bigint AS "pids_limit_hits!",
             COALESCE(sum(cpu_throttled_periods), 0)::bigint AS "cpu_throttled_periods!"
         FROM usage_rollups WHERE jail_id = $1 AND tenant_id = $2 AND hour >= date_trunc('hour', $3::timestamptz)"#,
        jail_id,
        tenant_id,
        since
    )
    .fetch_one(pool)
    .await?;
    Ok((
        row.oom_kills,
        row.memory_limit_hits,
        row.pids_limit_hits,
        row.cpu_throttled_periods,
    ))
}

/// A tenant's transfer (received + sent) this calendar month (UTC), from the
/// per-tenant month totals the rollup triggers keep: one row, however many
/// jails and hours. The query of tenant `$tenant_id`, for a `fetch_one`.
macro_rules! transfer_this_month {
    ($tenant_id:expr) => {
        sqlx::query_scalar!(
            r#"SELECT COALESCE((SELECT net_rx_bytes + net_tx_bytes
     FROM usage_tenant_months
     WHERE tenant_id = $1 AND month = date_trunc('month', now() AT TIME ZONE 'UTC')::date), 0)::bigint AS "bytes!""#,
            $tenant_id
        )
    };
}
pub(crate) use transfer_this_month;

/// A tenant's network transfer (received + sent) this calendar month (UTC), bytes.
pub async fn tenant_transfer_this_month(pool: &PgPool, tenant_id: Uuid) -> Result<u64, StoreError> {
    let v = transfer_this_month!(tenant_id).fetch_one(pool).await?;
    crate::to_u64("transfer", v)
}
