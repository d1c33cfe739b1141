//! Metered usage for billing: one tenant by hour, day or month, and every
//! tenant's totals of a month, as JSON or CSV (`Accept: text/csv`).

use std::fmt::Write as _;

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use chrono::{DateTime, Datelike, NaiveDate, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use stockade_store::billing::{self, Granularity, Usage};
use stockade_store::tenants;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::auth::{Authorized, UsageRead};
use super::error::ApiError;
use super::resource;
use crate::AppState;

pub(crate) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/tenants/{tenant_id}/usage").route(web::get().to(tenant_usage)))
        .service(resource("/usage").route(web::get().to(month_usage)));
}

/// What was used in some time. Sums are exact integers: a day is the sum of
/// its hours, a month the sum of its days. Peaks are maxima.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub struct UsageOut {
    /// CPU time, milliseconds (`cpu_usec / 1000`, rounded down).
    pub cpu_ms: i64,
    /// CPU time, microseconds (exact).
    pub cpu_usec: i64,
    /// Memory held, byte-hours: per jail-hour, the mean of its samples.
    pub memory_byte_hours: i64,
    /// Highest sampled memory of one jail, bytes.
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
    /// Highest sampled volume use of one jail, bytes.
    pub disk_peak_bytes: i64,
    /// Processes killed for lack of memory.
    pub oom_kills: i64,
    /// Times a memory limit was hit.
    pub memory_limit_hits: i64,
    /// Forks refused at a process limit.
    pub pids_limit_hits: i64,
    /// CPU periods throttled at a CPU limit.
    pub cpu_throttled_periods: i64,
    /// Samples taken.
    pub samples: i64,
}

impl From<Usage> for UsageOut {
    fn from(u: Usage) -> Self {
        UsageOut {
            cpu_ms: u.cpu_usec / 1000,
            cpu_usec: u.cpu_usec,
            memory_byte_hours: u.memory_byte_hours,
            memory_peak_bytes: u.memory_peak_bytes,
            io_read_bytes: u.io_read_bytes,
            io_write_bytes: u.io_write_bytes,
            net_rx_bytes: u.net_rx_bytes,
            net_tx_bytes: u.net_tx_bytes,
            disk_byte_hours: u.disk_byte_hours,
            disk_peak_bytes: u.disk_peak_bytes,
            oom_kills: u.oom_kills,
            memory_limit_hits: u.memory_limit_hits,
            pids_limit_hits: u.pids_limit_hits,
            cpu_throttled_periods: u.cpu_throttled_periods,
            samples: u.samples,
        }
    }
}

const CSV_COLUMNS: &str = "cpu_ms,cpu_usec,memory_byte_hours,memory_peak_bytes,io_read_bytes,\
io_write_bytes,net_rx_bytes,net_tx_bytes,disk_byte_hours,disk_peak_bytes,oom_kills,\
memory_limit_hits,pids_limit_hits,cpu_throttled_periods,samples";

impl UsageOut {
    fn csv(&self, out: &mut String) {
        let _ = write!(
            out,
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
            self.cpu_ms,
            self.cpu_usec,
            self.memory_byte_hours,
            self.memory_peak_bytes,
            self.io_read_bytes,
            self.io_write_bytes,
            self.net_rx_bytes,
            self.net_tx_bytes,
            self.disk_byte_hours,
            self.disk_peak_bytes,
            self.oom_kills,
            self.memory_limit_hits,
            self.pids_limit_hits,
            self.cpu_throttled_periods,
            self.samples
        );
    }
}

/// One bucket of a report.
#[derive(Debug, Serialize, ToSchema)]
pub struct BucketOut {
    /// Where the bucket starts (inclusive).
    pub start: DateTime<Utc>,
    /// Where it ends (exclusive).
    pub end: DateTime<Utc>,
    /// What was used in it.
    #[serde(flatten)]
    pub usage: UsageOut,
}

/// A tenant's usage report.
#[derive(Debug, Serialize, ToSchema)]
pub struct TenantUsage {
    /// The tenant.
    pub tenant_id: Uuid,
    /// `hour`, `day` or `month`.
    pub granularity: String,
    /// Start of the first bucket.
    pub from: DateTime<Utc>,
    /// End of the report (exclusive).
    pub to: DateTime<Utc>,
    /// Buckets in time order; buckets without usage are zero.
    pub buckets: Vec<BucketOut>,
    /// Sums over all buckets (peaks: maxima).
    pub totals: UsageOut,
}

/// The time range and bucket width of a report.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UsageQuery {
    /// Start (RFC 3339 time or YYYY-MM-DD, UTC), rounded down to the bucket;
    /// default: the start of the current month.
    #[param(schema_with = date_or_time)]
    pub from: Option<String>,
    /// End, exclusive (RFC 3339 time or YYYY-MM-DD); default: now.
    #[param(schema_with = date_or_time)]
    pub to: Option<String>,
    /// `hour`, `day` (default) or `month`.
    #[param(pattern = "^(hour|day|month)$")]
    pub granularity: Option<String>,
}

/// A date (`YYYY-MM-DD`) or an RFC 3339 time.
fn date_or_time() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{AnyOfBuilder, KnownFormat, ObjectBuilder, SchemaFormat, Type};
    let string = |format| {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(format)))
    };
    utoipa::openapi::schema::Schema::AnyOf(
        AnyOfBuilder::new()
            .item(string(KnownFormat::Date))
            .item(string(KnownFormat::DateTime))
            .build(),
    )
}

fn time(field: &'static str, raw: &str) -> Result<DateTime<Utc>, ApiError> {
    if let Ok(t) = DateTime::parse_from_rfc3339(raw) {
        return Ok(t.with_timezone(&Utc));
    }
    NaiveDate::parse_from_str(raw, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| Utc.from_utc_datetime(&t))
        .ok_or_else(|| ApiError::field(field, "must be an RFC 3339 time or a date YYYY-MM-DD"))
}

fn month_start(t: DateTime<Utc>) -> DateTime<Utc> {
    let d = NaiveDate::from_ymd_opt(t.year(), t.month(), 1).unwrap_or_default();
    Utc.from_utc_datetime(&d.and_hms_opt(0, 0, 0).unwrap_or_default())
}

fn bucket_end(start: DateTime<Utc>, g: Granularity) -> DateTime<Utc> {
    match g {
        Granularity::Hour => start + chrono::Duration::hours(1),
        Granularity::Day => start + chrono::Duration::days(1),
        Granularity::Month => start
            .checked_add_months(chrono::Months::new(1))
            .unwrap_or(start),
    }
}

fn wants_csv(req: &HttpRequest) -> bool {
    req.headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/csv"))
}

fn csv_response(body: String, filename: &str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/csv; charset=utf-8")
        .insert_header((
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"{filename}\""),
        ))
        .body(body)
}

/// One tenant's usage by hour, day or month.
#[utoipa::path(get, path = "/api/v1/tenants/{tenant_id}/usage", tag = "usage",
    params(("tenant_id" = Uuid, Path, description = "Tenant id"), UsageQuery),
    responses((status = 200, description = "The report", content(
        (TenantUsage = "application/json"),
        (String = "text/csv", example = "start,end,cpu_ms,...")))),
    security(("bearer" = ["usage:read"])))]
pub(crate) async fn tenant_usage(
    Authorized(caller, _): Authorized<UsageRead>,
    path: web::Path<Uuid>,
    query: web::Query<UsageQuery>,
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let q = query.into_inner();
    let granularity: Granularity = q.granularity.as_deref().unwrap_or("day").parse()?;
    let now = Utc::now();
    let from = q.from.as_deref().map(|f| time("from", f)).transpose()?;
    let to =
        q.to.as_deref()
            .map(|t| time("to", t))
            .transpose()?
            .unwrap_or(now);
    let from = from.unwrap_or_else(|| month_start(now));
    if from >= to {
        return Err(ApiError::field("from", "must be before to"));
    }
    let tenant_id = path.into_inner();
    caller.see_tenant(tenant_id)?;
    tenants::get(&state.pool, tenant_id).await?;
    let buckets = billing::tenant_usage(&state.pool, tenant_id, from, to, granularity)
        .await
        .map_err(|e| match e {
            stockade_store::StoreError::InvalidState(m) => ApiError::Validation {
                message: m,
                field: Some("to".into()),
            },
            other => other.into(),
        })?;
    let mut totals = Usage::default();
    for b in &buckets {
        totals.add(&b.usage);
    }
    let buckets: Vec<BucketOut> = buckets
        .into_iter()
        .map(|b| BucketOut {
            start: b.start,
            end: bucket_end(b.start, granularity),
            usage: b.usage.into(),
        })
        .collect();
    let from = buckets.first().map_or(from, |b| b.start);
    if wants_csv(&req) {
        let mut out = format!("start,end,{CSV_COLUMNS}\n");
        for b in &buckets {
            let _ = write!(out, "{},{},", b.start.to_rfc3339(), b.end.to_rfc3339());
            b.usage.csv(&mut out);
            out.push('\n');
        }
        return Ok(csv_response(out, &format!("usage-{tenant_id}.csv")));
    }
    Ok(HttpResponse::Ok().json(TenantUsage {
        tenant_id,
        granularity: granularity.as_str().to_owned(),
        from,
        to,
        buckets,
        totals: totals.into(),
    }))
}

/// The month to invoice.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct MonthQuery {
    /// The calendar month (UTC), `YYYY-MM`.
    #[param(example = "2026-11", pattern = "^[0-9]{4}-(0[1-9]|1[0-2])$")]
    pub month: String,
}

/// One tenant's totals of a month.
#[derive(Debug, Serialize, ToSchema)]
pub struct TenantMonthOut {
    /// The tenant.
    pub tenant_id: Uuid,
    /// Its slug.
    pub slug: String,
    /// What it used.
    #[serde(flatten)]
    pub usage: UsageOut,
}

/// Every tenant's totals of a month, for invoicing.
#[derive(Debug, Serialize, ToSchema)]
pub struct MonthUsage {
    /// The month, `YYYY-MM`.
    pub month: String,
    /// Every tenant that existed during the month, by slug (zero when idle).
    pub tenants: Vec<TenantMonthOut>,
}

/// Every tenant's usage totals of a month (a bound token sees its own).
#[utoipa::path(get, path = "/api/v1/usage", tag = "usage",
    params(MonthQuery),
    responses((status = 200, description = "The month's totals", content(
        (MonthUsage = "application/json"),
        (String = "text/csv", example = "tenant_id,slug,cpu_ms,...")))),
    security(("bearer" = ["usage:read"])))]
pub(crate) async fn month_usage(
    Authorized(caller, _): Authorized<UsageRead>,
    query: web::Query<MonthQuery>,
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let raw = query.into_inner().month;
    let month = NaiveDate::parse_from_str(&format!("{raw}-01"), "%Y-%m-%d")
        .ok()
        .filter(|_| raw.len() == 7)
        .ok_or_else(|| ApiError::field("month", "must be a month YYYY-MM"))?;
    let rows = billing::month_totals(&state.pool, month, caller.tenant()).await?;
    if wants_csv(&req) {
        let mut out = String::with_capacity(rows.len() * 160 + 256);
        out.push_str("tenant_id,slug,");
        out.push_str(CSV_COLUMNS);
        out.push('\n');
        for r in rows {
            let _ = write!(out, "{},{},", r.tenant_id, r.slug);
            UsageOut::from(r.usage).csv(&mut out);
            out.push('\n');
        }
        return Ok(csv_response(out, &format!("usage-{raw}.csv")));
    }
    let tenants = rows
        .into_iter()
        .map(|r| TenantMonthOut {
            tenant_id: r.tenant_id,
            slug: r.slug,
            usage: r.usage.into(),
        })
        .collect();
    Ok(HttpResponse::Ok().json(MonthUsage {
        month: raw,
        tenants,
    }))
}
