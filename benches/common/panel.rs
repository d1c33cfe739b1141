//! What the panel benches share: a throw-away PostgreSQL cluster seeded
//! with tenants, jails and usage, sessions to sign in with, and servers on
//! it with the page cache on or off.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};
use stockade_domain::{Email, Role};
use stockade_store::PgPool;

/// The cluster; stopped (and its folder removed) when dropped.
pub struct Database {
    child: Child,
    _dir: tempfile::TempDir,
    pub pool: PgPool,
    /// The database's URL (its owner's), for an agent of the bench.
    pub url: SecretString,
}

impl Drop for Database {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

/// The seed, for `{tenants}` tenants.
pub const SEED: &str = "
-- The day/month aggregates kept by a trigger serve the API, not these pages;
-- seeding 7.2 million rows through it would take many minutes.
ALTER TABLE usage_rollups DISABLE TRIGGER USER;
INSERT INTO nodes (name, cpus, memory_bytes, disk_bytes, max_jails) VALUES ('bench', 64, 1125899906842624, 1125899906842624, 1000000);
INSERT INTO tenants (slug, display_name, plan_id)
    SELECT 't' || g, 'Tenant ' || g, (SELECT id FROM plans WHERE name = 'business') FROM generate_series(1, {tenants}) g;
INSERT INTO jails (tenant_id, node_id, name, image, kind, cpu_millicores, memory_bytes, pids, disk_bytes, observed_state, observed_generation)
    SELECT t.id, n.id, 'j' || g, 'busybox', 'system', 100, 67108864, 32, 268435456, 'running', 1
    FROM tenants t CROSS JOIN generate_series(1, 10) g CROSS JOIN nodes n;
INSERT INTO usage_rollups (jail_id, hour, tenant_id, samples, cpu_usec, memory_bytes_sum, memory_peak_bytes,
        io_read_bytes, io_write_bytes, net_rx_bytes, net_tx_bytes, disk_bytes_sum, disk_peak_bytes)
    SELECT j.id, date_trunc('hour', now()) - make_interval(hours => h), j.tenant_id, 360, 36000000 + h,
        360 * 50000000::bigint, 60000000, 1000, 2000, 3000 + h, 4000, 360 * 100000000::bigint, 100000000
    FROM jails j JOIN tenants t ON t.id = j.tenant_id CROSS JOIN generate_series(0, 719) h
    WHERE t.slug LIKE '%0';
INSERT INTO usage_samples (jail_id, sampled_at, tenant_id, node_id, cpu_usec, memory_bytes, memory_peak_bytes, pids,
        io_read_bytes, io_write_bytes, net_rx_bytes, net_tx_bytes, net_rx_packets, net_tx_packets, disk_used_bytes,
        oom_kills, memory_limit_hits, pids_limit_hits, cpu_throttled_periods)
    SELECT j.id, now() - make_interval(secs => s * 10), j.tenant_id, j.node_id, 1000000000 - s * 100000, 50000000, 60000000, 3,
        0, 0, 0, 0, 0, 0, 100000000, 0, 0, 0, 0
    FROM jails j JOIN tenants t ON t.id = j.tenant_id CROSS JOIN generate_series(0, 359) s
    WHERE t.slug = 't10';
INSERT INTO usage_jail_months (jail_id, month, tenant_id, samples, cpu_usec, net_rx_bytes, net_tx_bytes)
    SELECT jail_id, date_trunc('month', hour AT TIME ZONE 'UTC')::date, tenant_id, sum(samples), sum(cpu_usec), sum(net_rx_bytes), sum(net_tx_bytes)
    FROM usage_rollups GROUP BY 1, 2, 3;
ALTER TABLE usage_rollups ENABLE TRIGGER USER;
ANALYZE;
";

/// Starts a cluster, migrates it and seeds `tenants` tenants (ten jails
/// each, a month of hourly usage for the jails of one tenant in ten).
pub fn seeded(rt: &tokio::runtime::Runtime, tenants: u32) -> Database {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_stockade"))
        .args(["db-cluster", "--ephemeral", "--data-dir"])
        .arg(dir.path().join("pg"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let server = SecretString::from(line.trim().trim_start_matches("DATABASE_URL=").to_owned());
    let url = SecretString::from(server.expose_secret().replace("/postgres", "/stockade"));
    let pool = rt.block_on(async {
        let url = &url;
        stockade_store::ensure_database(&server, "stockade")
            .await
            .unwrap();
        let pool = stockade_store::connect(url, 16, Duration::from_secs(10))
            .await
            .unwrap();
        stockade_store::migrate(&pool).await.unwrap();
        let t = Instant::now();
        sqlx::raw_sql(sqlx::AssertSqlSafe(
            SEED.replace("{tenants}", &tenants.to_string()),
        ))
        .execute(&pool)
        .await
        .unwrap();
        println!(
            "seeded {tenants} tenants, {} jails, {} hourly rollups in {:.0} s",
            tenants * 10,
            tenants * 720,
            t.elapsed().as_secs_f64()
        );
        pool
    });
    Database {
        child,
        _dir: dir,
        pool,
        url,
    }
}

/// A signed-in session of a new user (`tenant` for a customer, none for an
/// admin): its cookie value.
pub async fn session(pool: &PgPool, email: &str, tenant: Option<uuid::Uuid>) -> String {
    let hash =
        stockade_store::password::hash(&SecretString::from("bench password".to_owned())).unwrap();
    let role = if tenant.is_some() {
        Role::Customer
    } else {
        Role::Admin
    };
    let user =
        stockade_store::users::create(pool, &Email::parse(email).unwrap(), &hash, role, tenant)
            .await
            .unwrap();
    stockade_store::sessions::create(pool, user.id, expiry(), None)
        .await
        .unwrap()
}

fn expiry() -> stockade_store::sessions::Expiry {
    stockade_store::sessions::Expiry {
        idle: chrono::Duration::hours(1),
        absolute: chrono::Duration::hours(2),
    }
}

/// A tenant's id by its slug.
pub async fn tenant(pool: &PgPool, slug: &str) -> uuid::Uuid {
    stockade_store::tenants::by_slug(pool, &stockade_domain::TenantSlug::parse(slug).unwrap())
        .await
        .unwrap()
        .id
}

/// A web server on `pool` with page data kept `page_cache` (zero: no page
/// cache), two workers, serving until the process ends: its base URL.
pub fn serve(pool: &PgPool, page_cache: Duration) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let settings = stockade_web::Settings {
        public_url: format!("http://127.0.0.1:{port}"),
        session_expiry: expiry(),
        workers: 2,
        signup_plan: None,
        page_cache,
        trusted_proxies: Vec::new(),
        domain_proof: None,
    };
    let pool = pool.clone();
    std::thread::spawn(move || {
        actix_web::rt::System::new().block_on(async move {
            let app = stockade_web::Application::build(listener, pool, settings).unwrap();
            app.run_until_stopped().await.unwrap();
        });
    });
    format!("http://127.0.0.1:{port}")
}
