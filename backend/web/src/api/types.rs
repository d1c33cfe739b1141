//! Request and response bodies shared by several resources.

use serde::{Deserialize, Serialize};
use stockade_domain::{Limits, ParseError};
use stockade_store::plans::Quota;
use utoipa::ToSchema;
use uuid::Uuid;

use super::error::ApiError;

/// A page of a list.
#[derive(Debug, Serialize, ToSchema)]
pub struct Page<T> {
    /// The items.
    pub data: Vec<T>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// A quota: totals over a tenant's jails and per-jail rate ceilings.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QuotaBody {
    /// Total CPU over all jails, millicores.
    pub cpu_millicores: u32,
    /// Total memory over all jails, bytes.
    pub memory_bytes: u64,
    /// Total processes over all jails.
    pub pids: u32,
    /// Total volume size over all jails, bytes.
    pub disk_bytes: u64,
    /// Number of jails.
    pub max_jails: u32,
    /// Per-jail read ceiling, bytes/s (0 = none).
    #[serde(default)]
    #[schema(schema_with = io_rate)]
    pub io_read_bps: u64,
    /// Per-jail write ceiling, bytes/s (0 = none).
    #[serde(default)]
    #[schema(schema_with = io_rate)]
    pub io_write_bps: u64,
    /// Per-jail read operations ceiling (0 = none).
    #[serde(default)]
    pub io_read_iops: u64,
    /// Per-jail write operations ceiling (0 = none).
    #[serde(default)]
    pub io_write_iops: u64,
    /// Per-jail outbound ceiling, bits/s (0 = none).
    #[serde(default)]
    #[schema(schema_with = net_rate)]
    pub net_egress_bps: u64,
    /// Per-jail inbound ceiling, bits/s (0 = none).
    #[serde(default)]
    #[schema(schema_with = net_rate)]
    pub net_ingress_bps: u64,
    /// Monthly transfer, bytes (0 = unmetered).
    #[serde(default)]
    pub monthly_transfer_bytes: u64,
}

/// A rate a node applies as "0 = none, else at least `min`": one of the
/// two, so that a generated client (and a property test) never sends what
/// is refused.
fn zero_or_at_least(min: u64, nullable: bool) -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
    let mut one_of = OneOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .enum_values(Some([0])),
        )
        .item(
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(min))
                .maximum(Some(MAX_I64)),
        );
    if nullable {
        one_of = one_of.item(ObjectBuilder::new().schema_type(Type::Null));
    }
    utoipa::openapi::schema::Schema::OneOf(one_of.build())
}

/// A network rate, bits/s: 0 (none) or at least 8000.
pub(crate) fn net_rate() -> utoipa::openapi::schema::Schema {
    zero_or_at_least(stockade_domain::limits::MIN_NET_BPS, false)
}

/// A disk rate, bytes/s: 0 (none) or at least 4096.
pub(crate) fn io_rate() -> utoipa::openapi::schema::Schema {
    zero_or_at_least(stockade_domain::limits::MIN_IO_BPS, false)
}

/// A network rate, or null (unchanged).
pub(crate) fn net_rate_or_null() -> utoipa::openapi::schema::Schema {
    zero_or_at_least(stockade_domain::limits::MIN_NET_BPS, true)
}

/// A disk rate, or null (unchanged).
pub(crate) fn io_rate_or_null() -> utoipa::openapi::schema::Schema {
    zero_or_at_least(stockade_domain::limits::MIN_IO_BPS, true)
}

/// The largest integer SQL stores.
const MAX_I64: u64 = 9_223_372_036_854_775_807;
const MAX_I32: u32 = 2_147_483_647;

pub(crate) fn check_u64(field: &'static str, v: u64) -> Result<u64, ApiError> {
    if v > MAX_I64 {
        return Err(ApiError::field(field, format!("must be at most {MAX_I64}")));
    }
    Ok(v)
}

pub(crate) fn check_u32(field: &'static str, v: u32) -> Result<u32, ApiError> {
    if v > MAX_I32 {
        return Err(ApiError::field(field, format!("must be at most {MAX_I32}")));
    }
    Ok(v)
}

impl TryFrom<QuotaBody> for Quota {
    type Error = ApiError;
    fn try_from(q: QuotaBody) -> Result<Self, ApiError> {
        // A plan's rates become every jail's ceiling: none a node cannot apply.
        for (field, v, min) in [
            (
                "net_egress_bps",
                q.net_egress_bps,
                stockade_domain::limits::MIN_NET_BPS,
            ),
            (
                "net_ingress_bps",
                q.net_ingress_bps,
                stockade_domain::limits::MIN_NET_BPS,
            ),
            (
                "io_read_bps",
                q.io_read_bps,
                stockade_domain::limits::MIN_IO_BPS,
            ),
            (
                "io_write_bps",
                q.io_write_bps,
                stockade_domain::limits::MIN_IO_BPS,
            ),
        ] {
            if v != 0 && v < min {
                return Err(ApiError::field(
                    field,
                    format!("must be 0 (no limit) or at least {min}"),
                ));
            }
        }
        Ok(Quota {
            cpu_millicores: check_u32("cpu_millicores", q.cpu_millicores)?,
            memory_bytes: check_u64("memory_bytes", q.memory_bytes)?,
            pids: check_u32("pids", q.pids)?,
            disk_bytes: check_u64("disk_bytes", q.disk_bytes)?,
            max_jails: check_u32("max_jails", q.max_jails)?,
            io_read_bps: check_u64("io_read_bps", q.io_read_bps)?,
            io_write_bps: check_u64("io_write_bps", q.io_write_bps)?,
            io_read_iops: check_u64("io_read_iops", q.io_read_iops)?,
            io_write_iops: check_u64("io_write_iops", q.io_write_iops)?,
            net_egress_bps: check_u64("net_egress_bps", q.net_egress_bps)?,
            net_ingress_bps: check_u64("net_ingress_bps", q.net_ingress_bps)?,
            monthly_transfer_bytes: check_u64("monthly_transfer_bytes", q.monthly_transfer_bytes)?,
        })
    }
}

impl From<Quota> for QuotaBody {
    fn from(q: Quota) -> Self {
        QuotaBody {
            cpu_millicores: q.cpu_millicores,
            memory_bytes: q.memory_bytes,
            pids: q.pids,
            disk_bytes: q.disk_bytes,
            max_jails: q.max_jails,
            io_read_bps: q.io_read_bps,
            io_write_bps: q.io_write_bps,
            io_read_iops: q.io_read_iops,
            io_write_iops: q.io_write_iops,
            net_egress_bps: q.net_egress_bps,
            net_ingress_bps: q.net_ingress_bps,
            monthly_transfer_bytes: q.monthly_transfer_bytes,
        }
    }
}

/// A jail's resource limits (rates 0 = the plan's per-jail ceiling, or none).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitsBody {
    /// CPU, millicores (at least 10).
    #[schema(minimum = 10, maximum = 2147483647)]
    pub cpu_millicores: u32,
    /// Memory, bytes (at least 4 MiB).
    #[schema(minimum = 4194304, maximum = 9223372036854775807_u64)]
    pub memory_bytes: u64,
    /// Processes (at least 4).
    #[schema(minimum = 4, maximum = 2147483647)]
    pub pids: u32,
    /// Volume size, bytes (at least 16 MiB).
    #[schema(minimum = 16777216, maximum = 9223372036854775807_u64)]
    pub disk_bytes: u64,
    /// Read rate, bytes/s (0 = none, else at least 4096).
    #[serde(default)]
    #[schema(schema_with = io_rate)]
    pub io_read_bps: u64,
    /// Write rate, bytes/s (0 = none, else at least 4096).
    #[serde(default)]
    #[schema(schema_with = io_rate)]
    pub io_write_bps: u64,
    /// Read operations/s.
    #[serde(default)]
    pub io_read_iops: u64,
    /// Write operations/s.
    #[serde(default)]
    pub io_write_iops: u64,
    /// Outbound rate, bits/s (0 = none, else at least 8000).
    #[serde(default)]
    #[schema(schema_with = net_rate)]
    pub net_egress_bps: u64,
    /// Inbound rate, bits/s (0 = none, else at least 8000).
    #[serde(default)]
    #[schema(schema_with = net_rate)]
    pub net_ingress_bps: u64,
}

fn positive<T: PartialEq + Default>(field: &'static str, v: T) -> Result<T, ApiError> {
    if v == T::default() {
        return Err(ApiError::field(field, "must be more than 0"));
    }
    Ok(v)
}

impl TryFrom<LimitsBody> for Limits {
    type Error = ApiError;
    fn try_from(l: LimitsBody) -> Result<Self, ApiError> {
        let limits = Limits {
            cpu_millicores: positive(
                "cpu_millicores",
                check_u32("cpu_millicores", l.cpu_millicores)?,
            )?,
            memory_bytes: positive("memory_bytes", check_u64("memory_bytes", l.memory_bytes)?)?,
            pids: positive("pids", check_u32("pids", l.pids)?)?,
            disk_bytes: positive("disk_bytes", check_u64("disk_bytes", l.disk_bytes)?)?,
            io_read_bps: check_u64("io_read_bps", l.io_read_bps)?,
            io_write_bps: check_u64("io_write_bps", l.io_write_bps)?,
            io_read_iops: check_u64("io_read_iops", l.io_read_iops)?,
            io_write_iops: check_u64("io_write_iops", l.io_write_iops)?,
            net_egress_bps: check_u64("net_egress_bps", l.net_egress_bps)?,
            net_ingress_bps: check_u64("net_ingress_bps", l.net_ingress_bps)?,
        };
        // What no node can apply is refused here, not by the node later.
        limits
            .check()
            .map_err(|e| ApiError::field(e.field, e.reason))?;
        Ok(limits)
    }
}

impl From<Limits> for LimitsBody {
    fn from(l: Limits) -> Self {
        LimitsBody {
            cpu_millicores: l.cpu_millicores,
            memory_bytes: l.memory_bytes,
            pids: l.pids,
            disk_bytes: l.disk_bytes,
            io_read_bps: l.io_read_bps,
            io_write_bps: l.io_write_bps,
            io_read_iops: l.io_read_iops,
            io_write_iops: l.io_write_iops,
            net_egress_bps: l.net_egress_bps,
            net_ingress_bps: l.net_ingress_bps,
        }
    }
}

/// A plan given by name or id.
pub(crate) enum PlanRef {
    Id(Uuid),
    Name(String),
}

impl PlanRef {
    pub fn parse(raw: &str) -> Result<Self, ApiError> {
        if let Ok(id) = Uuid::parse_str(raw) {
            return Ok(PlanRef::Id(id));
        }
        let name = stockade_domain::TenantSlug::parse(raw).map_err(|e: ParseError| {
            ApiError::field("plan", format!("a plan name or id: {}", e.reason))
        })?;
        Ok(PlanRef::Name(name.as_str().to_owned()))
    }

    /// The plan, or a validation error naming the field.
    pub async fn resolve(
        &self,
        pool: &stockade_store::PgPool,
    ) -> Result<stockade_store::plans::Plan, ApiError> {
        let found = match self {
            PlanRef::Id(id) => stockade_store::plans::get(pool, *id).await,
            PlanRef::Name(name) => stockade_store::plans::by_name(pool, name).await,
        };
        match found {
            Ok(p) => Ok(p),
            Err(stockade_store::StoreError::NotFound) => {
                Err(ApiError::field("plan", "no such plan"))
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// Refuses control characters in free text and limits its length.
pub(crate) fn text(field: &'static str, raw: &str, max: usize) -> Result<String, ApiError> {
    let s = raw.trim();
    if s.is_empty() || s.chars().count() > max {
        return Err(ApiError::field(
            field,
            format!("must be 1 to {max} characters"),
        ));
    }
    if s.chars().any(char::is_control) {
        return Err(ApiError::field(
            field,
            "must not contain control characters",
        ));
    }
    Ok(s.to_owned())
}
