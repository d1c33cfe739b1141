//! The database roles of the managed cluster: the web tier and the agent
//! connect as roles that own nothing and may touch only their tables, and
//! no connection is let in without the kernel naming who makes it.

mod common;

use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use stockade_store::roles::{AGENT, WEB};

/// Runs `sql` as the role `role` of the test database; the error's SQLSTATE
/// when it fails.
async fn run_as_role(url: &SecretString, role: &str, sql: &str) -> Result<(), String> {
    let pool = stockade_store::connect(&common::role_url(url, role), 1, Duration::from_secs(10))
        .await
        .expect("connect as the role");
    let done = sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(&pool)
        .await;
    pool.close().await;
    match done {
        Ok(_) => Ok(()),
        Err(sqlx::Error::Database(e)) => Err(e.code().unwrap_or_default().into_owned()),
        Err(e) => Err(e.to_string()),
    }
}

/// SQLSTATE 42501: insufficient privilege.
const DENIED: &str = "42501";

#[tokio::test]
async fn the_web_role_cannot_change_the_schema_read_the_cluster_or_run_programs() {
    if std::env::var_os("DATABASE_URL").is_some() {
        eprintln!("SKIPPED: an external server's roles are its DBA's");
        return;
    }
    let (_pool, url) = common::fresh_database().await;
    for (what, sql) in [
        ("create a table", "CREATE TABLE stolen (x int)"),
        (
            "create a temporary table",
            "CREATE TEMP TABLE stolen (x int)",
        ),
        (
            "read the password hashes of the cluster",
            "SELECT * FROM pg_authid",
        ),
        (
            "run a program on the server",
            "COPY (SELECT 1) TO PROGRAM 'id > /tmp/stockade-owned'",
        ),
        (
            "read a file of the server",
            "SELECT pg_read_file('PG_VERSION')",
        ),
        ("write metering", "DELETE FROM usage_samples"),
        ("drop a table", "DROP TABLE tenants"),
        ("give itself rights", "GRANT stockade TO stockade_web"),
    ] {
        let r = run_as_role(&url, WEB, sql).await;
        assert_eq!(r, Err(DENIED.into()), "the web role could {what}: {sql}");
    }
    // What it is for still works.
    assert_eq!(
        run_as_role(&url, WEB, "SELECT count(*) FROM tenants").await,
        Ok(())
    );
    assert!(!std::path::Path::new("/tmp/stockade-owned").exists());
}

#[tokio::test]
async fn the_agent_role_cannot_read_accounts_tokens_or_webhook_secrets() {
    if std::env::var_os("DATABASE_URL").is_some() {
        eprintln!("SKIPPED: an external server's roles are its DBA's");
        return;
    }
    let (_pool, url) = common::fresh_database().await;
    for sql in [
        "SELECT password_hash FROM users",
        "SELECT * FROM api_tokens",
        "SELECT * FROM webhook_endpoints",
        "SELECT secret, url FROM webhook_endpoints",
        "UPDATE plans SET name = name",
        "CREATE TABLE stolen (x int)",
        "SELECT * FROM pg_authid",
    ] {
        let r = run_as_role(&url, AGENT, sql).await;
        assert_eq!(r, Err(DENIED.into()), "the agent role may run {sql}");
    }
    assert_eq!(
        run_as_role(&url, AGENT, "SELECT count(*) FROM jails").await,
        Ok(())
    );
}

/// The folder of PostgreSQL's client programs.
fn psql() -> std::path::PathBuf {
    let mut found: Vec<_> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin/psql"))
        .filter(|p| p.is_file())
        .collect();
    found.sort();
    found.pop().unwrap_or_else(|| "psql".into())
}

#[test]
fn an_account_the_cluster_does_not_know_is_refused_whatever_role_it_names() {
    if !nix::unistd::Uid::effective().is_root() || std::env::var_os("DATABASE_URL").is_some() {
        eprintln!("SKIPPED: needs root and the managed cluster");
        return;
    }
    let server = common::server_url();
    // The socket folder is the URL's host.
    let host = server
        .expose_secret()
        .split_once('@')
        .and_then(|(_, rest)| rest.split_once('/'))
        .map(|(h, _)| h.replace("%2F", "/"))
        .expect("a socket URL");
    let nobody = nix::unistd::User::from_name("nobody")
        .unwrap()
        .expect("the nobody account");
    for role in ["stockade", WEB, AGENT] {
        let out = Command::new(psql())
            .args(["-w", "-X", "-c", "SELECT 1"])
            .arg(format!("host={host} user={role} dbname=postgres"))
            .uid(nobody.uid.as_raw())
            .gid(nobody.gid.as_raw())
            .env_remove("PGPASSWORD")
            .output()
            .expect("run psql");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("authentication failed"),
            "nobody connected as {role}: {err}"
        );
    }
}

#[tokio::test]
async fn migrations_run_as_an_owner_that_is_no_superuser_and_adopt_an_earlier_releases_tables() {
    if std::env::var_os("DATABASE_URL").is_some() {
        eprintln!("SKIPPED: an external server's roles are its DBA's");
        return;
    }
    let server = common::server_url();
    let name = format!("test_{}", uuid::Uuid::new_v4().simple());
    stockade_store::ensure_database(&server, &name)
        .await
        .unwrap();
    let base = server.expose_secret();
    let url = SecretString::from(format!("{}/{name}", base.rsplit_once('/').unwrap().0));
    let pool = stockade_store::connect(&url, 2, Duration::from_secs(10))
        .await
        .unwrap();
    // As an earlier release did: every migration as the cluster's
    // administrator, who then owned every table.
    stockade_store::MIGRATOR.run(&pool).await.unwrap();
    stockade_store::migrate(&pool).await.unwrap();

    let owners: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT pg_get_userbyid(c.relowner)::text FROM pg_class c
         JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'S')
         UNION SELECT DISTINCT pg_get_userbyid(p.proowner)::text FROM pg_proc p
         JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'public'
         UNION SELECT pg_get_userbyid(datdba)::text FROM pg_database WHERE datname = current_database()",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(owners, [stockade_store::roles::OWNER]);
    let (superuser, login): (bool, bool) =
        sqlx::query_as("SELECT rolsuper, rolcanlogin FROM pg_roles WHERE rolname = $1")
            .bind(stockade_store::roles::OWNER)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(
        !superuser && !login,
        "the owner is an ordinary role that cannot log in"
    );
    // The web role still has what it needs on the adopted tables.
    assert_eq!(
        run_as_role(&url, WEB, "SELECT count(*) FROM tenants").await,
        Ok(())
    );
    pool.close().await;
}
