//! All of Stockade's SQL.
//!
//! Every statement lives in this crate; row types stay private and convert
//! into domain types. Every statement that reads or changes a tenant's
//! resources on behalf of a customer carries `tenant_id = $n`: that predicate
//! is the security boundary between tenants.

pub mod audit;
pub mod backups;
pub mod billing;
pub mod certificates;
pub mod changes;
pub mod domains;
pub mod events;
pub mod idempotency;
pub mod images;
pub mod jails;
pub mod logs;
pub mod moves;
pub mod nodes;
pub mod password;
pub mod plans;
pub mod ports;
pub mod roles;
pub mod sessions;
pub mod snapshots;
pub mod ssh_keys;
pub mod stats;
pub mod tenants;
pub mod tokens;
pub mod transfer;
pub mod uploads;
pub mod usage;
pub mod users;

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
pub use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

/// The migrations in `migrations/`, embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

/// Errors of the store that callers handle differently from a failed query.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A uniqueness rule refused the change (a taken slug, email or name).
    #[error("{0} already exists")]
    Conflict(&'static str),
    /// The row asked for does not exist (or is not visible to the caller).
    #[error("not found")]
    NotFound,
    /// The change would take a tenant past its quota; the message says which
    /// resource and how much is left.
    #[error("{0}")]
    QuotaExceeded(String),
    /// No live node has room for the jail.
    #[error("no node has room for this jail right now ({0})")]
    NoCapacity(String),
    /// A value of the request that no node can serve (an image no node
    /// offers); `field` names it.
    #[error("{field}: {message}")]
    Invalid {
        /// The request's field.
        field: &'static str,
        /// What is wrong, for the user.
        message: String,
    },
    /// The change is not allowed in the current state (e.g. a suspended tenant).
    #[error("{0}")]
    InvalidState(String),
    /// Anything else: a lost connection, a bug.
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

impl From<stockade_domain::ParseError> for StoreError {
    fn from(e: stockade_domain::ParseError) -> Self {
        StoreError::Invalid {
            field: e.field,
            message: e.reason,
        }
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::Unexpected(e.into())
    }
}

/// Parses a database URL, with an error that says what is wrong with it.
pub fn connect_options(url: &SecretString) -> anyhow::Result<PgConnectOptions> {
    url.expose_secret()
        .parse::<PgConnectOptions>()
        .map_err(|e| anyhow::anyhow!("the database URL is not valid: {e}"))
}

/// Opens a pool and checks the database answers, waiting at most `timeout`.
pub async fn connect(
    url: &SecretString,
    max_connections: u32,
    timeout: Duration,
) -> anyhow::Result<PgPool> {
    let options = connect_options(url)?;
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(timeout)
        .connect_with(options)
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach the database: {e}"))?;
    Ok(pool)
}

/// Opens a pool for serving requests: waits up to `startup` for the
/// database at first, then lets each request wait at most `acquire` for a
/// connection, so that while the database is away requests fail fast (and
/// say so, see [`unavailable`]) instead of hanging.
pub async fn connect_serving(
    url: &SecretString,
    max_connections: u32,
    startup: Duration,
    acquire: Duration,
) -> anyhow::Result<PgPool> {
    let options = connect_options(url)?;
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(acquire)
        .connect_lazy_with(options);
    let deadline = std::time::Instant::now() + startup;
    loop {
        match pool.acquire().await {
            Ok(_) => return Ok(pool),
            Err(e) if std::time::Instant::now() >= deadline => {
                return Err(anyhow::anyhow!("cannot reach the database: {e}"));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Whether an error means the database cannot be reached right now (down,
/// restarting, refusing connections, or every connection busy past the
/// acquire timeout), rather than a failed query: worth a retry later.
pub fn unavailable(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        // A store error carries the database's error inside.
        if let Some(StoreError::Unexpected(inner)) = cause.downcast_ref::<StoreError>() {
            return unavailable(inner);
        }
        let Some(e) = cause.downcast_ref::<sqlx::Error>() else {
            return false;
        };
        match e {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::WorkerCrashed => true,
            // Class 08: connection exceptions; 57P0x: the server is shutting
            // down, starting up or crashed.
            sqlx::Error::Database(db) => db
                .code()
                .is_some_and(|c| c.starts_with("08") || c.starts_with("57P")),
            _ => false,
        }
    })
}

/// Applies every pending migration (as the owner role where the server has
/// one, see [`roles::as_owner`]), then gives the web and agent roles their
/// rights again: new tables of a migration reach them only through the
/// grants. Whether the roles were there to be given them (see
/// [`roles::apply_grants`]).
pub async fn migrate(pool: &PgPool) -> anyhow::Result<bool> {
    let mut conn = pool.acquire().await?;
    roles::as_owner(&mut conn, async |conn| {
        MIGRATOR
            .run(conn)
            .await
            .map_err(|e| anyhow::anyhow!("migrating the database failed: {e}"))
    })
    .await?;
    drop(conn);
    roles::apply_grants(pool).await
}

/// Whether the database answers a trivial query.
pub async fn ping(pool: &PgPool) -> bool {
    sqlx::query_scalar!("SELECT 1")
        .fetch_one(pool)
        .await
        .is_ok()
}

/// Maps a unique-violation into [`StoreError::Conflict`] naming `what`.
pub(crate) fn conflict_as(what: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |e| match &e {
        sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict(what),
        _ => StoreError::from(e),
    }
}

/// Creates database `name` on the server `server_url` points at, if missing.
pub async fn ensure_database(server_url: &SecretString, name: &str) -> anyhow::Result<()> {
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        anyhow::bail!("database name {name:?} may only contain letters, digits and '_'");
    }
    let options = connect_options(server_url)?.database("postgres");
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options)
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach the database server: {e}"))?;
    let exists = sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1) AS "exists!""#,
        name
    )
    .fetch_one(&pool)
    .await?;
    if !exists {
        // The name was checked against an allow-list above; identifiers cannot be bound.
        let created = sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&pool)
            .await;
        if let Err(e) = created {
            let raced =
                matches!(&e, sqlx::Error::Database(d) if d.code().as_deref() == Some("42P04"));
            if !raced {
                return Err(anyhow::anyhow!("creating database {name} failed: {e}"));
            }
        }
    }
    pool.close().await;
    Ok(())
}

/// Converts a stored non-negative integer, failing loudly on a broken row.
pub(crate) fn to_u64(what: &str, v: i64) -> Result<u64, StoreError> {
    u64::try_from(v)
        .map_err(|_| StoreError::Unexpected(anyhow::anyhow!("stored {what} {v} is negative")))
}

/// Converts a stored non-negative integer, failing loudly on a broken row.
pub(crate) fn to_u32(what: &str, v: i32) -> Result<u32, StoreError> {
    u32::try_from(v)
        .map_err(|_| StoreError::Unexpected(anyhow::anyhow!("stored {what} {v} is negative")))
}

/// Converts a quantity for storage, refusing values beyond SQL's bigint.
pub(crate) fn to_i64(what: &str, v: u64) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::QuotaExceeded(format!("{what} {v} is too large")))
}

/// Converts a quantity for storage, refusing values beyond SQL's integer.
pub(crate) fn to_i32(what: &str, v: u32) -> Result<i32, StoreError> {
    i32::try_from(v).map_err(|_| StoreError::QuotaExceeded(format!("{what} {v} is too large")))
}

/// The channel the agents LISTEN on; the payload is the node id.
pub const JAILS_CHANNEL: &str = "stockade_jails";

#[cfg(test)]
mod tests {
    use super::{StoreError, unavailable};

    #[test]
    fn an_unreachable_database_is_told_from_a_failed_query() {
        let away = |e: sqlx::Error| anyhow::Error::from(e);
        assert!(unavailable(&away(sqlx::Error::PoolTimedOut)));
        assert!(unavailable(&away(sqlx::Error::Io(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused
        )))));
        // Through a store error, as the web tier receives it.
        let through = anyhow::Error::from(StoreError::from(sqlx::Error::PoolClosed));
        assert!(unavailable(&through.context("loading the page")));
        assert!(!unavailable(&away(sqlx::Error::RowNotFound)));
        assert!(!unavailable(&anyhow::Error::from(StoreError::NotFound)));
    }
}
