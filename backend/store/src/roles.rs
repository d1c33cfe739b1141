//! The database roles of the control plane, and what each may touch.
//!
//! Migrations run as the role that owns the database. The web tier and the
//! agent connect as roles of their own that own nothing: they may read and
//! change the rows of the tables below and nothing else. No DDL (not even
//! temporary tables), no superuser, no server files or programs. A flaw in
//! the web tier then reaches rows the web tier reads anyway, not the
//! metering it does not write, the schema, the cluster or the host.
//!
//! The lists are kept by hand next to the SQL of this crate, and proven by
//! the test suites, which run the web tier and the agent as these roles.

use anyhow::Context;
use secrecy::{ExposeSecret, SecretString};
use sqlx::PgPool;

/// The role that owns the schema on a managed cluster: migrations run as
/// it. It cannot log in; the cluster's administrator takes it on (`SET
/// ROLE`) to migrate, so the objects a migration makes are never a
/// superuser's.
pub const OWNER: &str = "stockade_owner";
/// The role the web tier connects as.
pub const WEB: &str = "stockade_web";
/// The role each node's agent connects as.
pub const AGENT: &str = "stockade_agent";

/// Reads only.
const R: &str = "SELECT";
/// Reads and adds rows.
const RI: &str = "SELECT, INSERT";
/// Reads, adds and changes rows.
const RIU: &str = "SELECT, INSERT, UPDATE";
/// Reads and changes rows (`FOR UPDATE` locks need `UPDATE` too).
const RU: &str = "SELECT, UPDATE";
/// Everything on the rows.
const ALL: &str = "SELECT, INSERT, UPDATE, DELETE";

/// What the web tier may do to each table. Metering and node records are
/// the agents': the web tier reads them.
const WEB_TABLES: &[(&str, &str)] = &[
    ("api_tokens", RIU),
    ("audit_log", RI),
    ("backups", ALL),
    ("certificates", ALL),
    ("domain_traffic", R),
    ("domains", ALL),
    ("events", RI),
    ("idempotency_keys", ALL),
    ("images", ALL),
    ("jail_counters", R),
    ("jail_uploads", RI),
    ("jails", RIU),
    ("log_tickets", RI),
    ("node_drains", ALL),
    ("node_images", R),
    ("nodes", R),
    ("password_resets", ALL),
    ("plans", RIU),
    ("published_ports", ALL),
    ("sealing_key", R),
    ("sessions", ALL),
    ("sign_in_attempts", ALL),
    ("snapshots", ALL),
    ("ssh_keys", ALL),
    ("tenant_quota_overrides", RIU),
    ("tenants", RIU),
    ("usage_jail_days", R),
    ("usage_jail_months", R),
    ("usage_months_closed", RI),
    ("usage_rollups", R),
    ("usage_samples", R),
    ("usage_tenant_months", R),
    ("users", RIU),
    ("webhook_attempts", RI),
    ("webhook_deliveries", RIU),
    ("webhook_endpoints", RIU),
];

/// What an agent may do to each table: its node, the observed side of its
/// jails, uploads to write, metering (the roll-up triggers run as the
/// agent), the transfer throttle of a tenant, expired sessions, and the
/// events its changes cause (queued for the endpoints that want them,
/// whose URLs and secrets it never reads).
const AGENT_TABLES: &[(&str, &str)] = &[
    ("audit_log", RI),
    // Scheduled backups are asked for by the agents.
    ("backups", ALL),
    ("certificates", RIU),
    ("domain_traffic", RIU),
    ("domains", "SELECT, UPDATE (acme_tried_at, acme_error)"),
    ("events", RI),
    // The catalogue it pulls; what it got, per node.
    ("images", R),
    ("node_images", ALL),
    ("webhook_deliveries", "INSERT"),
    (
        "webhook_endpoints",
        "SELECT (id, tenant_id, event_types, disabled_at)",
    ),
    ("jail_counters", RIU),
    ("jail_uploads", RU),
    ("jails", RU),
    ("log_tickets", "SELECT, DELETE"),
    ("node_drains", R),
    ("nodes", RIU),
    ("plans", R),
    // A jail moved to this node brings its published ports.
    ("published_ports", "SELECT, INSERT, DELETE"),
    ("sealing_key", RI),
    ("sessions", "SELECT, DELETE"),
    (
        "snapshots",
        "SELECT, UPDATE (state, size_bytes, error, taken_at), DELETE",
    ),
    ("ssh_keys", "SELECT, UPDATE (last_used_at)"),
    ("tenant_quota_overrides", R),
    ("tenants", RU),
    ("usage_jail_days", RIU),
    ("usage_jail_months", RIU),
    ("usage_rollups", ALL),
    ("usage_samples", "SELECT, INSERT, DELETE"),
    ("usage_tenant_months", RIU),
];

/// Whether `name` is safe to write into SQL as an identifier unquoted.
fn plain_identifier(name: &str) -> bool {
    !name.is_empty()
        && name.len() < 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !name.as_bytes()[0].is_ascii_digit()
}

/// The statements that give `web` and `agent` exactly their rights in
/// database `database`, after taking back whatever they had: what a DBA
/// runs on an external server, and what [`apply_grants`] runs here.
pub fn grant_statements(database: &str, web: &str, agent: &str) -> anyhow::Result<String> {
    for name in [database, web, agent] {
        if !plain_identifier(name) {
            anyhow::bail!(
                "{name:?} is not a plain SQL name (lower-case letters, digits and '_' only)"
            );
        }
    }
    let mut sql = String::new();
    sql.push_str(&format!(
        "-- Nobody but the owner creates anything: no objects in the schema, no\n\
         -- temporary tables.\n\
         REVOKE CREATE ON SCHEMA public FROM PUBLIC;\n\
         REVOKE TEMPORARY ON DATABASE {database} FROM PUBLIC;\n\
         GRANT CONNECT ON DATABASE {database} TO {web}, {agent};\n\
         GRANT USAGE ON SCHEMA public TO {web}, {agent};\n\
         REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {web}, {agent};\n\
         GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {web}, {agent};\n"
    ));
    for (role, tables) in [(web, WEB_TABLES), (agent, AGENT_TABLES)] {
        for (table, rights) in tables {
            sql.push_str(&format!("GRANT {rights} ON {table} TO {role};\n"));
        }
    }
    Ok(sql)
}

/// Which of the roles exist on the server.
async fn existing(pool: &PgPool, roles: &[&str]) -> anyhow::Result<Vec<String>> {
    let names: Vec<String> = roles.iter().map(|r| (*r).to_owned()).collect();
    Ok(
        sqlx::query_scalar("SELECT rolname::text FROM pg_roles WHERE rolname = ANY($1)")
            .bind(&names)
            .fetch_all(pool)
            .await?,
    )
}

/// Creates the owner, web and agent roles on a server this process
/// administers (the managed cluster). The web and agent roles log in (over
/// the local socket, mapped from their OS accounts); none holds any other
/// attribute.
pub async fn create_roles(pool: &PgPool) -> anyhow::Result<()> {
    let have = existing(pool, &[OWNER, WEB, AGENT]).await?;
    for role in [OWNER, WEB, AGENT] {
        if !have.iter().any(|h| h == role) {
            // The owner gets the schema's rights through the database's
            // ownership (membership in pg_database_owner), so it inherits.
            let attributes = if role == OWNER {
                "NOLOGIN INHERIT"
            } else {
                "LOGIN NOINHERIT"
            };
            // A constant, plain name: identifiers cannot be bound.
            let created = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "CREATE ROLE {role} {attributes} NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION"
            )))
            .execute(pool)
            .await;
            if let Err(e) = created {
                let raced =
                    matches!(&e, sqlx::Error::Database(d) if d.code().as_deref() == Some("42710"));
                if !raced {
                    return Err(e).with_context(|| format!("creating the role {role} failed"));
                }
            }
        }
    }
    Ok(())
}

/// Gives the web and agent roles their rights in the database `pool` is
/// connected to, when both exist. Returns `false` when they do not (an
/// external server whose DBA has not made them yet).
pub async fn apply_grants(pool: &PgPool) -> anyhow::Result<bool> {
    if existing(pool, &[WEB, AGENT]).await?.len() < 2 {
        return Ok(false);
    }
    let database: String = sqlx::query_scalar("SELECT current_database()::text")
        .fetch_one(pool)
        .await?;
    let sql = grant_statements(&database, WEB, AGENT)?;
    let mut tx = pool.begin().await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(&mut *tx)
        .await
        .context("granting the web and agent roles their rights failed")?;
    tx.commit().await?;
    Ok(true)
}

/// Runs `migrate` on `conn` as the owner role when the server has one and
/// this session may take it on (the managed cluster's administrator):
/// first the database and whatever an earlier release made as the
/// administrator are handed to it. Elsewhere (an external server, whose
/// URL is the owner's) as the connecting role.
pub async fn as_owner<F, T>(conn: &mut sqlx::PgConnection, migrate: F) -> anyhow::Result<T>
where
    F: AsyncFnOnce(&mut sqlx::PgConnection) -> anyhow::Result<T>,
{
    let superuser: bool =
        sqlx::query_scalar("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
            .fetch_one(&mut *conn)
            .await?;
    let owner_exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)")
            .bind(OWNER)
            .fetch_one(&mut *conn)
            .await?;
    if !(superuser && owner_exists) {
        return migrate(conn).await;
    }
    hand_to_owner(conn).await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("SET ROLE {OWNER}")))
        .execute(&mut *conn)
        .await?;
    let done = migrate(conn).await;
    sqlx::raw_sql("RESET ROLE").execute(&mut *conn).await?;
    done
}

/// Gives the database, and every table, view, sequence and function of its
/// schema that the connecting role owns, to the owner role.
async fn hand_to_owner(conn: &mut sqlx::PgConnection) -> anyhow::Result<()> {
    let database: String = sqlx::query_scalar("SELECT current_database()::text")
        .fetch_one(&mut *conn)
        .await?;
    if !plain_identifier(&database) {
        anyhow::bail!("{database:?} is not a plain SQL name");
    }
    let mut sql = format!("ALTER DATABASE {database} OWNER TO {OWNER};\n");
    let relations: Vec<(String, String)> = sqlx::query_as(
        "SELECT c.relname::text, CASE c.relkind WHEN 'S' THEN 'SEQUENCE' WHEN 'v' THEN 'VIEW'
                 WHEN 'm' THEN 'MATERIALIZED VIEW' ELSE 'TABLE' END
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm', 'S')
           AND c.relowner = (SELECT oid FROM pg_roles WHERE rolname = current_user)
           -- A sequence owned by a column goes with its table.
           AND NOT (c.relkind = 'S' AND EXISTS (SELECT 1 FROM pg_depend d
                    WHERE d.objid = c.oid AND d.deptype IN ('a', 'i')))",
    )
    .fetch_all(&mut *conn)
    .await?;
    for (name, kind) in relations {
        sql.push_str(&format!(
            "ALTER {kind} public.\"{name}\" OWNER TO {OWNER};\n"
        ));
    }
    let functions: Vec<String> = sqlx::query_scalar(
        "SELECT p.oid::regprocedure::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
         WHERE n.nspname = 'public'
           AND p.proowner = (SELECT oid FROM pg_roles WHERE rolname = current_user)",
    )
    .fetch_all(&mut *conn)
    .await?;
    for function in functions {
        sql.push_str(&format!("ALTER FUNCTION {function} OWNER TO {OWNER};\n"));
    }
    // Names come from the catalogue, quoted; the role is a constant.
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(&mut *conn)
        .await
        .context("handing the database to its owner role failed")?;
    Ok(())
}

/// The same URL with another user name: the role `role` reaches the same
/// server and database.
pub fn url_as(url: &SecretString, role: &str) -> anyhow::Result<SecretString> {
    let url = url.expose_secret();
    let invalid =
        || anyhow::anyhow!("the database URL is not of the form postgres://user@host/database");
    let (scheme, rest) = url.split_once("://").ok_or_else(invalid)?;
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    Ok(SecretString::from(format!(
        "{scheme}://{role}@{host}{tail}"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_role_may_change_the_schema_or_reach_beyond_its_tables() {
        let sql = grant_statements("stockade", WEB, AGENT).unwrap();
        let tables = sql.lines().filter(|l| {
            l.starts_with("GRANT")
                && !l.contains(" IN SCHEMA ")
                && !l.contains(" ON SCHEMA ")
                && !l.contains(" ON DATABASE ")
        });
        assert_eq!(
            tables.clone().count(),
            WEB_TABLES.len() + AGENT_TABLES.len()
        );
        for line in tables {
            for word in ["CREATE", "TRUNCATE", "REFERENCES", "TRIGGER", "ALL", "TEMP"] {
                assert!(
                    !line.split([' ', ',']).any(|w| w == word),
                    "{line} grants {word}"
                );
            }
        }
        // The web tier never writes metering; an agent never writes users,
        // tokens or plans.
        for table in ["usage_samples", "usage_rollups", "jail_counters", "nodes"] {
            assert!(sql.contains(&format!("GRANT SELECT ON {table} TO {WEB};")));
        }
        for table in ["users", "api_tokens", "idempotency_keys"] {
            assert!(!sql.contains(&format!("ON {table} TO {AGENT};")));
        }
        // Which endpoints want an event, never their URLs or secrets.
        let endpoints = sql
            .lines()
            .find(|l| l.ends_with(&format!("ON webhook_endpoints TO {AGENT};")))
            .unwrap();
        assert!(!endpoints.contains("secret") && !endpoints.contains("url"));
    }

    #[test]
    fn names_that_are_not_plain_are_refused() {
        assert!(grant_statements("stockade; DROP TABLE x", WEB, AGENT).is_err());
        assert!(grant_statements("stockade", "Web", AGENT).is_err());
        assert!(grant_statements("stockade", WEB, "9agent").is_err());
    }

    #[test]
    fn a_role_url_keeps_the_server_and_database_and_drops_the_password() {
        let url = SecretString::from("postgres://owner:secret@%2Fvar%2Fpg.sock/stockade");
        let web = url_as(&url, WEB).unwrap();
        assert_eq!(
            web.expose_secret(),
            "postgres://stockade_web@%2Fvar%2Fpg.sock/stockade"
        );
        let bare = SecretString::from("postgresql://db.example:5433/app?sslmode=require");
        assert_eq!(
            url_as(&bare, AGENT).unwrap().expose_secret(),
            "postgresql://stockade_agent@db.example:5433/app?sslmode=require"
        );
        assert!(url_as(&SecretString::from("stockade"), WEB).is_err());
    }
}
