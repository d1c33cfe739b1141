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

use std::process::Command;
use std::time::Duration;

mod common;

use common::panel;

/// `wrk` against a page, signed in with session `cookie` if given.
fn wrk(url: &str, cookie: Option<&str>) -> (f64, String) {
    let header = cookie.map(|c| format!("Cookie: stockade_session={c}"));
    common::wrk(url, header.as_deref())
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
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let db = panel::seeded(&rt, tenants);
    let (customer, staff, jail_id) = rt.block_on(async {
        let tenant = panel::tenant(&db.pool, "t10").await;
        let jail_id = stockade_store::jails::list_for_tenant(&db.pool, tenant)
            .await
            .unwrap()[0]
            .id;
        let customer = panel::session(&db.pool, "c@t10.test", Some(tenant)).await;
        let staff = panel::session(&db.pool, "staff@bench.test", None).await;
        (customer, staff, jail_id)
    });
    // Two servers on the same database: as configured by default (page data
    // kept 5 s between changes) and with no page cache at all, to show what
    // a page costs when its data must be read.
    let cached = panel::serve(&db.pool, Duration::from_secs(5));
    let uncached = panel::serve(&db.pool, Duration::ZERO);
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
    drop(db);
    std::process::exit(0);
}
