//! Benchmark of the billing reads (not a timed test; ignored by default):
//! 10,000 tenants with a month of hourly rollups each, the monthly invoicing
//! export, and one tenant's 13 months of daily usage.
//!
//!     cargo test --release --test api_bench -- --ignored --nocapture

mod api_support;
mod common;

use std::time::{Duration, Instant};

use api_support::Api;
use chrono::{TimeZone, Utc};

const TENANTS: i64 = 10_000;

fn summary(mut times: Vec<Duration>) -> String {
    times.sort();
    let pct = |p: usize| times[(times.len() * p / 100).min(times.len() - 1)];
    format!(
        "n={} min={:.1}ms p50={:.1}ms p99={:.1}ms max={:.1}ms",
        times.len(),
        times[0].as_secs_f64() * 1e3,
        pct(50).as_secs_f64() * 1e3,
        pct(99).as_secs_f64() * 1e3,
        times[times.len() - 1].as_secs_f64() * 1e3
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --ignored --nocapture"]
async fn billing_reads_at_ten_thousand_tenants() {
    let api = Api::spawn().await;
    let pool = &api.pool;
    let node = api.node().await;
    let started = Instant::now();
    // Seeding goes around the API: tenants and jails by SQL, rollups in bulk
    // with the aggregate trigger off and the aggregates rebuilt set-wise
    // (exactly as the migration backfills them).
    sqlx::query(
        "INSERT INTO tenants (slug, display_name, plan_id, created_at)
         SELECT 'bench-' || i, 'Bench ' || i, (SELECT id FROM plans WHERE name = 'starter'),
                '2025-01-01'::timestamptz
         FROM generate_series(1, $1) i",
    )
    .bind(TENANTS)
    .execute(pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO jails (tenant_id, node_id, name, image, kind, cpu_millicores, memory_bytes, pids, disk_bytes)
         SELECT id, $1, 'web', 'busybox', 'system', 100, 67108864, 64, 67108864 FROM tenants",
    )
    .bind(node)
    .execute(pool)
    .await
    .unwrap();
    sqlx::query("ALTER TABLE usage_rollups DISABLE TRIGGER usage_rollups_fold")
        .execute(pool)
        .await
        .unwrap();
    let rollups = |from: &str, to: &str, only: Option<&str>| {
        let sql = format!(
            "INSERT INTO usage_rollups (jail_id, hour, tenant_id, samples, cpu_usec, memory_bytes_sum,
                 memory_peak_bytes, io_read_bytes, io_write_bytes, net_rx_bytes, net_tx_bytes,
                 disk_bytes_sum, disk_peak_bytes, oom_kills, memory_limit_hits, pids_limit_hits,
                 cpu_throttled_periods)
             SELECT j.id, h, j.tenant_id, 360, (random() * 3.6e9)::bigint, (random() * 3.6e10)::bigint,
                 (random() * 1e8)::bigint, (random() * 1e7)::bigint, (random() * 1e7)::bigint,
                 (random() * 1e8)::bigint, (random() * 1e8)::bigint, (random() * 3.6e11)::bigint,
                 (random() * 1e9)::bigint, 0, (random() * 3)::bigint, 0, (random() * 100)::bigint
             FROM jails j JOIN tenants t ON t.id = j.tenant_id
             CROSS JOIN generate_series('{from}'::timestamptz, '{to}'::timestamptz - interval '1 hour', interval '1 hour') h
             {}",
            only.map(|s| format!("WHERE t.slug = '{s}'")).unwrap_or_default()
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
    };
    rollups("2026-11-01", "2026-12-01", None)
        .execute(pool)
        .await
        .unwrap();
    // One tenant also has the twelve months before.
    rollups("2025-11-01", "2026-11-01", Some("bench-1"))
        .execute(pool)
        .await
        .unwrap();
    sqlx::raw_sql(
        "INSERT INTO usage_jail_days (jail_id, day, tenant_id, samples, cpu_usec, memory_byte_hours,
             memory_peak_bytes, io_read_bytes, io_write_bytes, net_rx_bytes, net_tx_bytes, disk_byte_hours,
             disk_peak_bytes, oom_kills, memory_limit_hits, pids_limit_hits, cpu_throttled_periods)
         SELECT jail_id, (hour AT TIME ZONE 'UTC')::date, min(tenant_id::text)::uuid, sum(samples), sum(cpu_usec),
             sum(usage_byte_hours(memory_bytes_sum, samples)), max(memory_peak_bytes), sum(io_read_bytes),
             sum(io_write_bytes), sum(net_rx_bytes), sum(net_tx_bytes), sum(usage_byte_hours(disk_bytes_sum, samples)),
             max(disk_peak_bytes), sum(oom_kills), sum(memory_limit_hits), sum(pids_limit_hits), sum(cpu_throttled_periods)
         FROM usage_rollups GROUP BY 1, 2;
         INSERT INTO usage_jail_months (jail_id, month, tenant_id, samples, cpu_usec, memory_byte_hours,
             memory_peak_bytes, io_read_bytes, io_write_bytes, net_rx_bytes, net_tx_bytes, disk_byte_hours,
             disk_peak_bytes, oom_kills, memory_limit_hits, pids_limit_hits, cpu_throttled_periods)
         SELECT jail_id, date_trunc('month', day)::date, min(tenant_id::text)::uuid, sum(samples), sum(cpu_usec),
             sum(memory_byte_hours), max(memory_peak_bytes), sum(io_read_bytes), sum(io_write_bytes),
             sum(net_rx_bytes), sum(net_tx_bytes), sum(disk_byte_hours), max(disk_peak_bytes), sum(oom_kills),
             sum(memory_limit_hits), sum(pids_limit_hits), sum(cpu_throttled_periods)
         FROM usage_jail_days GROUP BY 1, 2;
         ALTER TABLE usage_rollups ENABLE TRIGGER usage_rollups_fold;
         ANALYZE;",
    )
    .execute(pool)
    .await
    .unwrap();
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM usage_rollups")
        .fetch_one(pool)
        .await
        .unwrap();
    println!(
        "seeded {TENANTS} tenants, {rows} hourly rollups in {:.1}s",
        started.elapsed().as_secs_f64()
    );

    // The write path: rollups written one by one through the trigger, as agents do.
    let jail: (uuid::Uuid, uuid::Uuid) =
        sqlx::query_as("SELECT j.id, j.tenant_id FROM jails j JOIN tenants t ON t.id = j.tenant_id WHERE t.slug = 'bench-2'")
            .fetch_one(pool)
            .await
            .unwrap();
    let t0 = Instant::now();
    let writes = 2000;
    for i in 0..writes {
        let hour =
            Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap() + chrono::Duration::hours(i % 24);
        sqlx::query(
            "INSERT INTO usage_rollups AS r (jail_id, hour, tenant_id, samples, cpu_usec, memory_bytes_sum)
             VALUES ($1, $2, $3, 1, 1000, 100000) ON CONFLICT (jail_id, hour) DO UPDATE
             SET samples = r.samples + 1, cpu_usec = r.cpu_usec + 1000, memory_bytes_sum = r.memory_bytes_sum + 100000",
        )
        .bind(jail.0)
        .bind(hour)
        .bind(jail.1)
        .execute(pool)
        .await
        .unwrap();
    }
    println!(
        "rollup upserts with aggregates: {:.0} µs each ({writes} sequential)",
        t0.elapsed().as_secs_f64() * 1e6 / f64::from(u32::try_from(writes).unwrap())
    );

    // The monthly invoicing export, JSON and CSV, over HTTP.
    for (label, accept) in [("JSON", "application/json"), ("CSV", "text/csv")] {
        let mut times = Vec::new();
        let mut size = 0;
        for _ in 0..11 {
            let t = Instant::now();
            let res = api
                .get("/api/v1/usage?month=2026-11", &api.admin)
                .header("Accept", accept)
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 200);
            size = res.bytes().await.unwrap().len();
            times.push(t.elapsed());
        }
        times.remove(0);
        println!(
            "monthly export {label} ({size} bytes, {TENANTS} tenants): {}",
            summary(times)
        );
    }
    let mut times = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        let rows = stockade_store::billing::month_totals(
            pool,
            chrono::NaiveDate::from_ymd_opt(2026, 11, 1).unwrap(),
            None,
        )
        .await
        .unwrap();
        assert_eq!(i64::try_from(rows.len()).unwrap(), TENANTS);
        times.push(t.elapsed());
    }
    println!("monthly export, store query only: {}", summary(times));

    // One tenant's 13 months by day.
    let tenant: uuid::Uuid = sqlx::query_scalar("SELECT id FROM tenants WHERE slug = 'bench-1'")
        .fetch_one(pool)
        .await
        .unwrap();
    let path =
        format!("/api/v1/tenants/{tenant}/usage?granularity=day&from=2025-11-01&to=2026-12-01");
    let mut times = Vec::new();
    for i in 0..510 {
        let t = Instant::now();
        let res = api.get(&path, &api.admin).send().await.unwrap();
        assert_eq!(res.status(), 200);
        let body: serde_json::Value = res.json().await.unwrap();
        assert_eq!(body["buckets"].as_array().unwrap().len(), 395);
        if i >= 10 {
            times.push(t.elapsed());
        }
    }
    println!(
        "13 months by day, one tenant, over HTTP: {}",
        summary(times)
    );
}
