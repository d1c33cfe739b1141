//! Panel benchmark: 10,000 tenants and 100,000 jails, a month of hourly
//! rollups for one jail in ten (7.2 million rows), then `wrk` against the
//! customer overview, a jail page with its charts and the staff tenant list,
//! next to a trivial route of the same server.
//!
//! Run as root or not: `cargo bench --bench panel` (needs `wrk`, Debian's
//! package of that name). It starts its own throw-away PostgreSQL cluster.
//! `BENCH_TENANTS=N` seeds N tenants instead of 10,000 (ten jails each);
//! `BENCH_PAGES=text` measures only the pages whose name contains it;
//! `BENCH_HOLD=S` keeps the servers up S seconds afterwards (for profiling).

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};
use stockade_domain::{Email, Role};

struct Cluster(Child);
impl Drop for Cluster {
    fn drop(&mut self) {
        drop(self.0.stdin.take());
        let _ = self.0.wait();
    }
}

/// The seed, for `{tenants}` tenants.
const SEED: &str = "
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

fn wrk(url: &str, cookie: Option<&str>) -> (f64, String) {
    let mut cmd = Command::new("wrk");
    cmd.args(["-t", "2", "-c", "16", "-d", "10s", "--latency"]);
    if let Some(c) = cookie {
        cmd.args(["-H", &format!("Cookie: stockade_session={c}")]);
    }
    let out = cmd.arg(url).output().expect("wrk runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        !text.contains("Non-2xx"),
        "every answer was a success:\n{text}"
    );
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    let p99 = text
        .lines()
        .find(|l| l.trim_start().starts_with("99%"))
        .map(|l| l.trim().trim_start_matches("99%").trim().to_owned())
        .unwrap_or_default();
    (rps, p99)
}

fn main() {
    if Command::new("wrk").arg("--version").output().is_err() {
        eprintln!("panel bench: needs wrk (apt-get install wrk); skipped");
        return;
    }
    let tenants: u32 = std::env::var("BENCH_TENANTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
        .max(10);
    let only = std::env::var("BENCH_PAGES").unwrap_or_default();
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
    let _cluster = Cluster(child);
    let server = SecretString::from(line.trim().trim_start_matches("DATABASE_URL=").to_owned());
    let url = SecretString::from(server.expose_secret().replace("/postgres", "/stockade"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (pool, customer, staff, jail_id) = rt.block_on(async {
        stockade_store::ensure_database(&server, "stockade")
            .await
            .unwrap();
        let pool = stockade_store::connect(&url, 16, Duration::from_secs(10))
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
        let tenant = stockade_store::tenants::by_slug(
            &pool,
            &stockade_domain::TenantSlug::parse("t10").unwrap(),
        )
        .await
        .unwrap();
        let jail_id = stockade_store::jails::list_for_tenant(&pool, tenant.id)
            .await
            .unwrap()[0]
            .id;
        let hash = stockade_store::password::hash(&SecretString::from("bench password".to_owned()))
            .unwrap();
        let c = stockade_store::users::create(
            &pool,
            &Email::parse("c@t10.test").unwrap(),
            &hash,
            Role::Customer,
            Some(tenant.id),
        )
        .await
        .unwrap();
        let s = stockade_store::users::create(
            &pool,
            &Email::parse("staff@bench.test").unwrap(),
            &hash,
            Role::Admin,
            None,
        )
        .await
        .unwrap();
        let expiry = stockade_store::sessions::Expiry {
            idle: chrono::Duration::hours(1),
            absolute: chrono::Duration::hours(2),
        };
        let customer = stockade_store::sessions::create(&pool, c.id, expiry, None)
            .await
            .unwrap();
        let staff = stockade_store::sessions::create(&pool, s.id, expiry, None)
            .await
            .unwrap();
        (pool, customer, staff, jail_id)
    });
    // Two servers on the same database: as configured by default (page data
    // kept 5 s between changes) and with no page cache at all, to show what
    // a page costs when its data must be read.
    let serve = |page_cache: Duration| {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let settings = stockade_web::Settings {
            public_url: format!("http://127.0.0.1:{port}"),
            session_expiry: stockade_store::sessions::Expiry {
                idle: chrono::Duration::hours(1),
                absolute: chrono::Duration::hours(2),
            },
            workers: 2,
            signup_plan: None,
            page_cache,
            trusted_proxies: Vec::new(),
        };
        let pool = pool.clone();
        // Serves until the process ends.
        std::thread::spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                let app = stockade_web::Application::build(listener, pool, settings).unwrap();
                app.run_until_stopped().await.unwrap();
            });
        });
        format!("http://127.0.0.1:{port}")
    };
    let cached = serve(Duration::from_secs(5));
    let uncached = serve(Duration::ZERO);
    std::thread::sleep(Duration::from_millis(500));
    // The trivial route is measured before and after the pages, and each
    // page is compared with the faster of the two: this machine's speed
    // drifts, and the comparison should not flatter the pages.
    let (before, before_p99) = wrk(&format!("{cached}/healthz"), None);
    println!("trivial route /healthz: {before:.0} req/s, p99 {before_p99}");
    let mut results = Vec::new();
    for (name, path, cookie) in [
        ("customer overview", "/overview".to_owned(), &customer),
        (
            "jail page, last hour (360 samples, 5 charts)",
            format!("/jails/{jail_id}"),
            &customer,
        ),
        (
            "jail page, last month (720 rollups, 5 charts)",
            format!("/jails/{jail_id}?period=month"),
            &customer,
        ),
        (
            "staff tenant list (10,000 tenants, page 1)",
            "/staff/tenants".to_owned(),
            &staff,
        ),
        (
            "staff tenant list sorted by CPU this month",
            "/staff/tenants?sort=cpu".to_owned(),
            &staff,
        ),
    ] {
        if !name.contains(only.as_str()) {
            continue;
        }
        for (how, base) in [("page cache on", &cached), ("no page cache", &uncached)] {
            let (rps, p99) = wrk(&format!("{base}{path}"), Some(cookie));
            println!("{name}, {how}: {rps:.0} req/s, p99 {p99}");
            results.push((name, how, rps, p99));
        }
    }
    let (after, after_p99) = wrk(&format!("{cached}/healthz"), None);
    println!("trivial route /healthz again: {after:.0} req/s, p99 {after_p99}");
    let trivial = before.max(after);
    println!("\nagainst the trivial route's faster run ({trivial:.0} req/s):");
    for (name, how, rps, p99) in results {
        println!(
            "{name}, {how}: {:.0}% of trivial, p99 {p99}",
            rps * 100.0 / trivial
        );
    }
    if let Some(secs) = std::env::var("BENCH_HOLD")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        println!(
            "serving {cached} (uncached: {uncached}) for {secs} s; customer cookie stockade_session={}, staff cookie stockade_session={}, jail {jail_id}",
            customer, staff
        );
        std::thread::sleep(Duration::from_secs(secs));
    }
    // The server threads serve until the process ends; stop the database
    // and remove its folder first.
    drop(_cluster);
    drop(dir);
    std::process::exit(0);
}
