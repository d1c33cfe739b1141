//! Events and webhooks: an outbox written in the transaction of each change,
//! the endpoints that want events, and the delivery log.
//!
//! [`emit`] writes the event and one pending delivery per interested endpoint
//! in the caller's transaction, so an event exists if and only if its change
//! committed. Delivery workers (any number, in any web replica) claim due
//! deliveries with `FOR UPDATE SKIP LOCKED` and lease them by pushing
//! `next_attempt_at` forward, so no two send the same delivery at once and a
//! worker that dies mid-send only delays it.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use crate::{PgPool, StoreError};

/// Every event type a webhook endpoint may ask for.
pub const EVENT_TYPES: [&str; 8] = [
    "tenant.created",
    "tenant.suspended",
    "tenant.unsuspended",
    "tenant.terminated",
    "jail.state_changed",
    "quota.soft_limit_reached",
    "quota.hard_limit_reached",
    "usage.month_closed",
];

/// Records an event in the outbox and queues it for every endpoint that
/// wants it, inside the transaction of the change it reports.
pub async fn emit(
    tx: &mut Transaction<'_, Postgres>,
    tenant_id: Option<Uuid>,
    event_type: &str,
    data: serde_json::Value,
) -> Result<Uuid, StoreError> {
    let id = sqlx::query_scalar!(
        "INSERT INTO events (tenant_id, event_type, data) VALUES ($1, $2, $3) RETURNING id",
        tenant_id,
        event_type,
        &data
    )
    .fetch_one(&mut **tx)
    .await?;
    // An endpoint bound to a tenant gets only that tenant's events.
    sqlx::query!(
        "INSERT INTO webhook_deliveries (event_id, endpoint_id)
         SELECT $1, id FROM webhook_endpoints
         WHERE disabled_at IS NULL AND $2 = ANY (event_types)
           AND (tenant_id IS NULL OR tenant_id = $3)",
        id,
        event_type,
        tenant_id
    )
    .execute(&mut **tx)
    .await?;
    Ok(id)
}

/// An event as stored.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct Event {
    /// Stable id, also sent to endpoints.
    pub id: Uuid,
    /// The tenant it concerns.
    pub tenant_id: Option<Uuid>,
    /// `tenant.suspended`, ...
    pub event_type: String,
    /// Event-specific payload.
    pub data: serde_json::Value,
    /// When the change committed (its transaction's time).
    pub created_at: DateTime<Utc>,
}

/// The latest events, newest first, optionally of one tenant.
pub async fn recent(
    pool: &PgPool,
    tenant_id: Option<Uuid>,
    limit: u32,
) -> Result<Vec<Event>, StoreError> {
    Ok(sqlx::query_as!(
        Event,
        "SELECT id, tenant_id, event_type, data, created_at FROM events
         WHERE ($1::uuid IS NULL OR tenant_id = $1) ORDER BY seq DESC LIMIT $2",
        tenant_id,
        i64::from(limit)
    )
    .fetch_all(pool)
    .await?)
}

/// A registered webhook endpoint (its secret included: only the API that
/// created it and the delivery worker read it).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Endpoint {
    /// Stable id.
    pub id: Uuid,
    /// Where events are POSTed.
    pub url: String,
    /// The HMAC key of the signatures.
    pub secret: String,
    /// Event types it wants.
    pub event_types: Vec<String>,
    /// The one tenant whose events it gets, if bound.
    pub tenant_id: Option<Uuid>,
    /// Free text.
    pub description: String,
    /// When it was registered.
    pub created_at: DateTime<Utc>,
}

/// What a new endpoint holds; checked by the caller.
#[derive(Debug, Clone)]
pub struct NewEndpoint {
    /// Where events are POSTed (`http(s)://`).
    pub url: String,
    /// The HMAC key.
    pub secret: String,
    /// Event types, each one of [`EVENT_TYPES`].
    pub event_types: Vec<String>,
    /// Bound tenant.
    pub tenant_id: Option<Uuid>,
    /// Free text.
    pub description: String,
    /// The token that registered it.
    pub created_by: Option<Uuid>,
}

/// A query of [`Endpoint`]s: `$before` (up to `SELECT` or `RETURNING`), an
/// endpoint's columns, `$after`, then the arguments.
macro_rules! endpoint_query {
    ($before:tt, $after:tt $(, $arg:expr)* $(,)?) => {
        sqlx::query_as!(
            Endpoint,
            $before + "id, url, secret, event_types, tenant_id, description, created_at" + $after
            $(, $arg)*
        )
    };
}

/// Registers an endpoint.
pub async fn create_endpoint(pool: &PgPool, new: &NewEndpoint) -> Result<Endpoint, StoreError> {
    endpoint_query!(
        "INSERT INTO webhook_endpoints (url, secret, event_types, tenant_id, description, created_by)
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING ",
        "",
        new.url.as_str(),
        new.secret.as_str(),
        new.event_types.as_slice(),
        new.tenant_id,
        new.description.as_str(),
        new.created_by
    )
    .fetch_one(pool)
    .await
    .map_err(|e| match &e {
        sqlx::Error::Database(db) if db.is_foreign_key_violation() => StoreError::NotFound,
        _ => StoreError::from(e),
    })
}

/// Live endpoints; with `tenant_id`, only those bound to that tenant. The
/// tenant predicate is the boundary for tokens bound to a tenant.
pub async fn list_endpoints(
    pool: &PgPool,
    tenant_id: Option<Uuid>,
) -> Result<Vec<Endpoint>, StoreError> {
    Ok(endpoint_query!(
        "SELECT ",
        " FROM webhook_endpoints WHERE disabled_at IS NULL AND ($1::uuid IS NULL OR tenant_id = $1)
          ORDER BY created_at, id",
        tenant_id
    )
    .fetch_all(pool)
    .await?)
}

/// One live endpoint (within `tenant_id` when given).
pub async fn get_endpoint(
    pool: &PgPool,
    tenant_id: Option<Uuid>,
    id: Uuid,
) -> Result<Endpoint, StoreError> {
    let row = endpoint_query!(
        "SELECT ",
        " FROM webhook_endpoints WHERE id = $1 AND disabled_at IS NULL
           AND ($2::uuid IS NULL OR tenant_id = $2)",
        id,
        tenant_id
    )
    .fetch_optional(pool)
    .await?;
    row.ok_or(StoreError::NotFound)
}

/// Disables an endpoint: it gets no new events and its pending deliveries stop.
pub async fn disable_endpoint(
    pool: &PgPool,
    tenant_id: Option<Uuid>,
    id: Uuid,
) -> Result<(), StoreError> {
    let mut tx = pool.begin().await?;
    let done = sqlx::query!(
        "UPDATE webhook_endpoints SET disabled_at = now()
         WHERE id = $1 AND disabled_at IS NULL AND ($2::uuid IS NULL OR tenant_id = $2)",
        id,
        tenant_id
    )
    .execute(&mut *tx)
    .await?;
    if done.rows_affected() == 0 {
        return Err(StoreError::NotFound);
    }
    sqlx::query!(
        "UPDATE webhook_deliveries SET status = 'failed', last_error = 'endpoint disabled',
             finished_at = now()
         WHERE endpoint_id = $1 AND status = 'pending'",
        id
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// A delivery claimed by a worker, with what it needs to send it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DueDelivery {
    /// Delivery id.
    pub id: i64,
    /// Attempts made before this one.
    pub attempts: i32,
    /// When the delivery was queued (retries stop a while after).
    pub created_at: DateTime<Utc>,
    /// Target URL.
    pub url: String,
    /// HMAC key.
    pub secret: String,
    /// Event id.
    pub event_id: Uuid,
    /// Event type.
    pub event_type: String,
    /// The event's tenant.
    pub tenant_id: Option<Uuid>,
    /// The event's payload.
    pub data: serde_json::Value,
    /// When the event happened.
    pub event_created_at: DateTime<Utc>,
}

/// Claims up to `limit` due deliveries for `lease`: nobody else picks them up
/// until the lease runs out or the outcome is recorded.
pub async fn claim_due(
    pool: &PgPool,
    limit: u32,
    lease: Duration,
) -> Result<Vec<DueDelivery>, StoreError> {
    let lease_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
    Ok(sqlx::query_as!(
        DueDelivery,
        "WITH due AS (
             SELECT id FROM webhook_deliveries
             WHERE status = 'pending' AND next_attempt_at <= now()
             ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED
         )
         UPDATE webhook_deliveries d SET next_attempt_at = clock_timestamp() + $2::bigint * interval '1 millisecond'
         FROM due, events e, webhook_endpoints w
         WHERE d.id = due.id AND e.id = d.event_id AND w.id = d.endpoint_id
         RETURNING d.id, d.attempts, d.created_at, w.url, w.secret, e.id AS event_id, e.event_type,
                   e.tenant_id, e.data, e.created_at AS event_created_at",
        i64::from(limit),
        lease_ms
    )
    .fetch_all(pool)
    .await?)
}

/// How one attempt went.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// The HTTP status the endpoint answered, if it answered.
    pub status_code: Option<u16>,
    /// Why it failed, if it did.
    pub error: Option<String>,
    /// How long it took.
    pub duration: Duration,
}

/// What happens to a delivery after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// The endpoint took it.
    Delivered,
    /// Try again at this time.
    RetryAt(DateTime<Utc>),
    /// Give up.
    GiveUp,
}

/// Logs an attempt and moves the delivery on.
pub async fn record_attempt(
    pool: &PgPool,
    delivery_id: i64,
    attempt: &Attempt,
    next: Next,
) -> Result<(), StoreError> {
    let mut tx = pool.begin().await?;
    let status_code = attempt
        .status_code
        .map(|s| i16::try_from(s).unwrap_or(i16::MAX));
    sqlx::query!(
        "INSERT INTO webhook_attempts (delivery_id, status_code, error, duration_ms)
         VALUES ($1, $2, $3, $4)",
        delivery_id,
        status_code,
        attempt.error.as_deref(),
        i32::try_from(attempt.duration.as_millis()).unwrap_or(i32::MAX)
    )
    .execute(&mut *tx)
    .await?;
    let (status, next_at) = match next {
        Next::Delivered => ("delivered", None),
        Next::RetryAt(at) => ("pending", Some(at)),
        Next::GiveUp => ("failed", None),
    };
    sqlx::query!(
        "UPDATE webhook_deliveries SET attempts = attempts + 1, status = $2,
             next_attempt_at = COALESCE($3, next_attempt_at), last_status = $4, last_error = $5,
             finished_at = CASE WHEN $2 = 'pending' THEN NULL ELSE now() END
         WHERE id = $1",
        delivery_id,
        status,
        next_at,
        status_code,
        attempt.error.as_deref()
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// One line of the delivery log.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct DeliveryLogEntry {
    /// Delivery id.
    pub id: i64,
    /// The endpoint.
    pub endpoint_id: Uuid,
    /// Its URL.
    pub url: String,
    /// The event.
    pub event_id: Uuid,
    /// Its type.
    pub event_type: String,
    /// The event's tenant.
    pub tenant_id: Option<Uuid>,
    /// `pending`, `delivered` or `failed`.
    pub status: String,
    /// Attempts made.
    pub attempts: i32,
    /// The last HTTP status answered.
    pub last_status: Option<i16>,
    /// The last error.
    pub last_error: Option<String>,
    /// Next attempt (for pending deliveries).
    pub next_attempt_at: DateTime<Utc>,
    /// When it was queued.
    pub created_at: DateTime<Utc>,
    /// When it was delivered or given up.
    pub finished_at: Option<DateTime<Utc>>,
}

/// The delivery log, newest first: of one endpoint, or of all; within a
/// tenant's endpoints when `tenant_id` is given.
pub async fn deliveries(
    pool: &PgPool,
    tenant_id: Option<Uuid>,
    endpoint_id: Option<Uuid>,
    limit: u32,
) -> Result<Vec<DeliveryLogEntry>, StoreError> {
    Ok(sqlx::query_as!(
        DeliveryLogEntry,
        "SELECT d.id, d.endpoint_id, w.url, d.event_id, e.event_type, e.tenant_id, d.status,
                d.attempts, d.last_status, d.last_error, d.next_attempt_at, d.created_at, d.finished_at
         FROM webhook_deliveries d
         JOIN webhook_endpoints w ON w.id = d.endpoint_id
         JOIN events e ON e.id = d.event_id
         WHERE ($1::uuid IS NULL OR w.tenant_id = $1) AND ($2::uuid IS NULL OR d.endpoint_id = $2)
         ORDER BY d.id DESC LIMIT $3",
        tenant_id,
        endpoint_id,
        i64::from(limit)
    )
    .fetch_all(pool)
    .await?)
}

/// Emits `usage.month_closed` for every tenant with usage in the calendar
/// month before the current one, once per month however many workers call
/// this. `grace` after the month's end lets late rollups land first.
/// Returns the number of events emitted.
pub async fn close_previous_month(pool: &PgPool, grace: Duration) -> Result<u64, StoreError> {
    let mut tx = pool.begin().await?;
    let grace_ms = i64::try_from(grace.as_millis()).unwrap_or(i64::MAX);
    let month = sqlx::query_scalar!(
        "INSERT INTO usage_months_closed (month)
         SELECT (date_trunc('month', now() AT TIME ZONE 'UTC') - interval '1 month')::date
         WHERE now() AT TIME ZONE 'UTC' >= date_trunc('month', now() AT TIME ZONE 'UTC')
                                          + $1::bigint * interval '1 millisecond'
         ON CONFLICT (month) DO NOTHING RETURNING month",
        grace_ms
    )
    .fetch_optional(&mut *tx)
    .await?;
    let Some(month) = month else {
        return Ok(0);
    };
    let totals = crate::billing::month_totals_in(&mut tx, month).await?;
    let mut emitted = 0;
    for t in totals {
        let tenant_id = t.tenant_id;
        let data = serde_json::json!({
            "month": month.format("%Y-%m").to_string(),
            "tenant_id": tenant_id,
            "slug": t.slug,
            "usage": t.usage,
        });
        emit(&mut tx, Some(tenant_id), "usage.month_closed", data).await?;
        emitted += 1;
    }
    tx.commit().await?;
    Ok(emitted)
}
