//! Metered usage as billing reads it: per hour, day or month, per tenant.
//!
//! Hours come from `usage_rollups`; days and months from per-jail aggregates
//! that a trigger keeps equal to the sums of the hourly rows (see the
//! migration for the definition of byte-hours). Every quantity is an exact
//! integer; summing a tenant's hours gives its days, and its days its months.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, NaiveDate, Utc};
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use crate::{PgPool, StoreError};

/// How wide one bucket of a usage report is (UTC calendar boundaries).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Granularity {
    /// One hour.
    Hour,
    /// One UTC day.
    Day,
    /// One UTC calendar month.
    Month,
}

impl Granularity {
    /// The name used in URLs.
    pub fn as_str(self) -> &'static str {
        match self {
            Granularity::Hour => "hour",
            Granularity::Day => "day",
            Granularity::Month => "month",
        }
    }
}

impl fmt::Display for Granularity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Granularity {
    type Err = stockade_domain::ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "hour" => Ok(Granularity::Hour),
            "day" => Ok(Granularity::Day),
            "month" => Ok(Granularity::Month),
            _ => Err(stockade_domain::ParseError {
                field: "granularity",
                reason: format!("{s:?} is not one of: hour, day, month"),
            }),
        }
    }
}

/// Usage over some time: sums, except the peaks, which are maxima.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, sqlx::FromRow)]
pub struct Usage {
    /// Samples the agents took.
    pub samples: i64,
    /// CPU time, microseconds.
    pub cpu_usec: i64,
    /// Memory held, byte-hours.
    pub memory_byte_hours: i64,
    /// Highest sampled memory, bytes.
    pub memory_peak_bytes: i64,
    /// Bytes read from volumes.
    pub io_read_bytes: i64,
    /// Bytes written to volumes.
    pub io_write_bytes: i64,
    /// Bytes received.
    pub net_rx_bytes: i64,
    /// Bytes sent.
    pub net_tx_bytes: i64,
    /// Volume space used, byte-hours.
    pub disk_byte_hours: i64,
    /// Highest sampled volume use, bytes.
    pub disk_peak_bytes: i64,
    /// Processes killed for lack of memory.
    pub oom_kills: i64,
    /// Times the memory limit was hit.
    pub memory_limit_hits: i64,
    /// Forks refused at the process limit.
    pub pids_limit_hits: i64,
    /// CPU periods throttled at the CPU limit.
    pub cpu_throttled_periods: i64,
}

impl Usage {
    /// Adds `other` (peaks take the maximum).
    pub fn add(&mut self, o: &Usage) {
        self.samples += o.samples;
        self.cpu_usec += o.cpu_usec;
        self.memory_byte_hours += o.memory_byte_hours;
        self.memory_peak_bytes = self.memory_peak_bytes.max(o.memory_peak_bytes);
        self.io_read_bytes += o.io_read_bytes;
        self.io_write_bytes += o.io_write_bytes;
        self.net_rx_bytes += o.net_rx_bytes;
        self.net_tx_bytes += o.net_tx_bytes;
        self.disk_byte_hours += o.disk_byte_hours;
        self.disk_peak_bytes = self.disk_peak_bytes.max(o.disk_peak_bytes);
        self.oom_kills += o.oom_kills;
        self.memory_limit_hits += o.memory_limit_hits;
        self.pids_limit_hits += o.pids_limit_hits;
        self.cpu_throttled_periods += o.cpu_throttled_periods;
    }
}

/// One bucket of a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::FromRow)]
pub struct Bucket {
    /// Where the bucket starts.
    pub start: DateTime<Utc>,
    /// What was used in it.
    #[sqlx(flatten)]
    pub usage: Usage,
}

/// A [`Usage`] from a row that has a column of each of its fields.
macro_rules! usage_of {
    ($row:ident) => {
        Usage {
            samples: $row.samples,
            cpu_usec: $row.cpu_usec,
            memory_byte_hours: $row.memory_byte_hours,
            memory_peak_bytes: $row.memory_peak_bytes,
            io_read_bytes: $row.io_read_bytes,
            io_write_bytes: $row.io_write_bytes,
            net_rx_bytes: $row.net_rx_bytes,
            net_tx_bytes: $row.net_tx_bytes,
            disk_byte_hours: $row.disk_byte_hours,
            disk_peak_bytes: $row.disk_peak_bytes,
            oom_kills: $row.oom_kills,
            memory_limit_hits: $row.memory_limit_hits,
            pids_limit_hits: $row.pids_limit_hits,
            cpu_throttled_periods: $row.cpu_throttled_periods,
        }
    };
}

/// A query with the sums of the day and month aggregates `a`, which already
/// hold byte-hours: `$before`, the sums (one column per field of [`Usage`]),
/// `$after`, then the arguments.
macro_rules! aggregate_query {
    ($before:tt, $after:tt $(, $arg:expr)* $(,)?) => {
        sqlx::query!(
            $before
                + r#"COALESCE(sum(a.samples), 0)::bigint AS "samples!",
         COALESCE(sum(a.cpu_usec), 0)::bigint AS "cpu_usec!",
         COALESCE(sum(a.memory_byte_hours), 0)::bigint AS "memory_byte_hours!",
         COALESCE(max(a.memory_peak_bytes), 0)::bigint AS "memory_peak_bytes!",
         COALESCE(sum(a.io_read_bytes), 0)::bigint AS "io_read_bytes!",
         COALESCE(sum(a.io_write_bytes), 0)::bigint AS "io_write_bytes!",
         COALESCE(sum(a.net_rx_bytes), 0)::bigint AS "net_rx_bytes!",
         COALESCE(sum(a.net_tx_bytes), 0)::bigint AS "net_tx_bytes!",
         COALESCE(sum(a.disk_byte_hours), 0)::bigint AS "disk_byte_hours!",
         COALESCE(max(a.disk_peak_bytes), 0)::bigint AS "disk_peak_bytes!",
         COALESCE(sum(a.oom_kills), 0)::bigint AS "oom_kills!",
         COALESCE(sum(a.memory_limit_hits), 0)::bigint AS "memory_limit_hits!",
         COALESCE(sum(a.pids_limit_hits), 0)::bigint AS "pids_limit_hits!",
         COALESCE(sum(a.cpu_throttled_periods), 0)::bigint AS "cpu_throttled_periods!""#
                + $after
            $(, $arg)*
        )
    };
}

/// The most buckets one report may hold.
pub const MAX_BUCKETS: i64 = 10_000;

/// A tenant's usage in buckets covering `[from, to)`: the first bucket starts
/// at `from` rounded down to the granularity; buckets without usage are zero.
pub async fn tenant_usage(
    pool: &PgPool,
    tenant_id: Uuid,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    granularity: Granularity,
) -> Result<Vec<Bucket>, StoreError> {
    if from >= to {
        return Err(StoreError::InvalidState("from: must be before to".into()));
    }
    let buckets = match granularity {
        Granularity::Hour => {
            if (to - from).num_hours() > MAX_BUCKETS {
                return Err(StoreError::InvalidState(format!(
                    "to: at most {MAX_BUCKETS} hours per report"
                )));
            }
            sqlx::query!(
                r#"SELECT g.start AS "start!",
                     COALESCE(sum(r.samples), 0)::bigint AS "samples!",
                     COALESCE(sum(r.cpu_usec), 0)::bigint AS "cpu_usec!",
                     COALESCE(sum(usage_byte_hours(r.memory_bytes_sum, r.samples)), 0)::bigint AS "memory_byte_hours!",
                     COALESCE(max(r.memory_peak_bytes), 0)::bigint AS "memory_peak_bytes!",
                     COALESCE(sum(r.io_read_bytes), 0)::bigint AS "io_read_bytes!",
                     COALESCE(sum(r.io_write_bytes), 0)::bigint AS "io_write_bytes!",
                     COALESCE(sum(r.net_rx_bytes), 0)::bigint AS "net_rx_bytes!",
                     COALESCE(sum(r.net_tx_bytes), 0)::bigint AS "net_tx_bytes!",
                     COALESCE(sum(usage_byte_hours(r.disk_bytes_sum, r.samples)), 0)::bigint AS "disk_byte_hours!",
                     COALESCE(max(r.disk_peak_bytes), 0)::bigint AS "disk_peak_bytes!",
                     COALESCE(sum(r.oom_kills), 0)::bigint AS "oom_kills!",
                     COALESCE(sum(r.memory_limit_hits), 0)::bigint AS "memory_limit_hits!",
                     COALESCE(sum(r.pids_limit_hits), 0)::bigint AS "pids_limit_hits!",
                     COALESCE(sum(r.cpu_throttled_periods), 0)::bigint AS "cpu_throttled_periods!"
                 FROM generate_series(date_trunc('hour', $2::timestamptz), $3::timestamptz, interval '1 hour') g(start)
                 LEFT JOIN usage_rollups r ON r.tenant_id = $1 AND r.hour = g.start
                 WHERE g.start < $3
                 GROUP BY g.start ORDER BY g.start"#,
                tenant_id,
                from,
                to
            )
            .fetch_all(pool)
            .await?
            .into_iter()
            .map(|r| Bucket {
                start: r.start,
                usage: usage_of!(r),
            })
            .collect()
        }
        Granularity::Day => {
            if (to - from).num_days() > MAX_BUCKETS {
                return Err(StoreError::InvalidState(format!(
                    "to: at most {MAX_BUCKETS} days per report"
                )));
            }
            aggregate_query!(
                r#"SELECT g.d AT TIME ZONE 'UTC' AS "start!", "#,
                " FROM generate_series(date_trunc('day', $2::timestamptz AT TIME ZONE 'UTC'),
                                       $3::timestamptz AT TIME ZONE 'UTC', interval '1 day') g(d)
                 LEFT JOIN usage_jail_days a ON a.tenant_id = $1 AND a.day = g.d::date
                 WHERE g.d < $3::timestamptz AT TIME ZONE 'UTC'
                 GROUP BY g.d ORDER BY g.d",
                tenant_id,
                from,
                to
            )
            .fetch_all(pool)
            .await?
            .into_iter()
            .map(|r| Bucket {
                start: r.start,
                usage: usage_of!(r),
            })
            .collect()
        }
        Granularity::Month => {
            if (to - from).num_days() > MAX_BUCKETS * 28 {
                return Err(StoreError::InvalidState(format!(
                    "to: at most {MAX_BUCKETS} months per report"
                )));
            }
            aggregate_query!(
                r#"SELECT g.d AT TIME ZONE 'UTC' AS "start!", "#,
                " FROM generate_series(date_trunc('month', $2::timestamptz AT TIME ZONE 'UTC'),
                                       $3::timestamptz AT TIME ZONE 'UTC', interval '1 month') g(d)
                 LEFT JOIN usage_jail_months a ON a.tenant_id = $1 AND a.month = g.d::date
                 WHERE g.d < $3::timestamptz AT TIME ZONE 'UTC'
                 GROUP BY g.d ORDER BY g.d",
                tenant_id,
                from,
                to
            )
            .fetch_all(pool)
            .await?
            .into_iter()
            .map(|r| Bucket {
                start: r.start,
                usage: usage_of!(r),
            })
            .collect()
        }
    };
    Ok(buckets)
}

/// One tenant's totals for a month, for invoicing.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct TenantMonth {
    /// The tenant.
    pub tenant_id: Uuid,
    /// Its slug.
    pub slug: String,
    /// What it used in the month.
    #[sqlx(flatten)]
    pub usage: Usage,
}

/// The query of [`month_totals`]: `$month` (its first day) and `$tenant_id`
/// (every tenant when `None`). The aggregates' columns keep their names,
/// non-null marks included, inside the query.
macro_rules! month_totals_query {
    ($month:expr, $tenant_id:expr) => {
        aggregate_query!(
            "WITH a AS (
                 SELECT a.tenant_id, ",
            r#" FROM usage_jail_months a WHERE a.month = $1 AND ($2::uuid IS NULL OR a.tenant_id = $2)
                 GROUP BY a.tenant_id
             )
             SELECT t.id AS tenant_id, t.slug,
                 COALESCE(a."samples!", 0) AS "samples!", COALESCE(a."cpu_usec!", 0) AS "cpu_usec!",
                 COALESCE(a."memory_byte_hours!", 0) AS "memory_byte_hours!",
                 COALESCE(a."memory_peak_bytes!", 0) AS "memory_peak_bytes!",
                 COALESCE(a."io_read_bytes!", 0) AS "io_read_bytes!",
                 COALESCE(a."io_write_bytes!", 0) AS "io_write_bytes!",
                 COALESCE(a."net_rx_bytes!", 0) AS "net_rx_bytes!",
                 COALESCE(a."net_tx_bytes!", 0) AS "net_tx_bytes!",
                 COALESCE(a."disk_byte_hours!", 0) AS "disk_byte_hours!",
                 COALESCE(a."disk_peak_bytes!", 0) AS "disk_peak_bytes!",
                 COALESCE(a."oom_kills!", 0) AS "oom_kills!",
                 COALESCE(a."memory_limit_hits!", 0) AS "memory_limit_hits!",
                 COALESCE(a."pids_limit_hits!", 0) AS "pids_limit_hits!",
                 COALESCE(a."cpu_throttled_periods!", 0) AS "cpu_throttled_periods!"
             FROM tenants t LEFT JOIN a ON a.tenant_id = t.id
             WHERE ((t.created_at < ($1::date + interval '1 month') AT TIME ZONE 'UTC'
                     AND (t.terminated_at IS NULL OR t.terminated_at >= $1::date AT TIME ZONE 'UTC'))
                    OR a.tenant_id IS NOT NULL)
               AND ($2::uuid IS NULL OR t.id = $2)
             ORDER BY t.slug"#,
            $month,
            $tenant_id
        )
        .map(|r| TenantMonth {
            tenant_id: r.tenant_id,
            slug: r.slug,
            usage: usage_of!(r),
        })
    };
}

/// Every tenant that existed or used anything during `month` (its first day)
/// with its totals (zero when it used nothing); only `tenant_id` when given.
pub async fn month_totals(
    pool: &PgPool,
    month: NaiveDate,
    tenant_id: Option<Uuid>,
) -> Result<Vec<TenantMonth>, StoreError> {
    Ok(month_totals_query!(month, tenant_id)
        .fetch_all(pool)
        .await?)
}

/// [`month_totals`] of every tenant, inside a transaction.
pub(crate) async fn month_totals_in(
    tx: &mut Transaction<'_, Postgres>,
    month: NaiveDate,
) -> Result<Vec<TenantMonth>, StoreError> {
    Ok(month_totals_query!(month, None::<Uuid>)
        .fetch_all(&mut **tx)
        .await?)
}
