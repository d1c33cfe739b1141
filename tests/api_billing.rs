//! Billing through the JSON API: usage equals the hourly rollups exactly at
//! every granularity and in CSV, suspension stops jails and sends a signed
//! webhook, failed deliveries are retried, months are closed once.

mod api_support;
mod common;

use std::collections::BTreeMap;

use api_support::{Api, Receiver, signature_valid};
use chrono::{DateTime, Datelike, TimeZone, Utc};
use serde_json::{Value, json};
use stockade_store::PgPool;
use uuid::Uuid;

const FIELDS: [&str; 15] = [
    "cpu_ms",
    "cpu_usec",
    "memory_byte_hours",
    "memory_peak_bytes",
    "io_read_bytes",
    "io_write_bytes",
    "net_rx_bytes",
    "net_tx_bytes",
    "disk_byte_hours",
    "disk_peak_bytes",
    "oom_kills",
    "memory_limit_hits",
    "pids_limit_hits",
    "cpu_throttled_periods",
    "samples",
];

/// One hourly rollup as the agent would write it.
#[derive(Clone, Copy)]
struct Rollup {
    hour: DateTime<Utc>,
    samples: i64,
    cpu_usec: i64,
    memory_bytes_sum: i64,
    memory_peak: i64,
    io_r: i64,
    io_w: i64,
    rx: i64,
    tx: i64,
    disk_sum: i64,
    disk_peak: i64,
    oom: i64,
    mem_hits: i64,
    pid_hits: i64,
    throttled: i64,
}

impl Rollup {
    fn new(hour: DateTime<Utc>, seed: i64) -> Self {
        Rollup {
            hour,
            samples: 360 - seed,
            cpu_usec: 1_234_567 * seed + 999,
            memory_bytes_sum: 360 * 100_000_007 + seed * 13,
            memory_peak: 200_000_000 + seed,
            io_r: 1000 * seed + 1,
            io_w: 2000 * seed + 3,
            rx: 3000 * seed + 5,
            tx: 4000 * seed + 7,
            disk_sum: 360 * 50_000_011 + seed * 7,
            disk_peak: 60_000_000 + seed,
            oom: seed % 2,
            mem_hits: seed,
            pid_hits: seed % 3,
            throttled: 10 * seed,
        }
    }

    /// What billing must report for this hour (byte-hours: sum / samples).
    fn expected(&self) -> BTreeMap<&'static str, i64> {
        BTreeMap::from([
            ("cpu_usec", self.cpu_usec),
            ("memory_byte_hours", self.memory_bytes_sum / self.samples),
            ("memory_peak_bytes", self.memory_peak),
            ("io_read_bytes", self.io_r),
            ("io_write_bytes", self.io_w),
            ("net_rx_bytes", self.rx),
            ("net_tx_bytes", self.tx),
            ("disk_byte_hours", self.disk_sum / self.samples),
            ("disk_peak_bytes", self.disk_peak),
            ("oom_kills", self.oom),
            ("memory_limit_hits", self.mem_hits),
            ("pids_limit_hits", self.pid_hits),
            ("cpu_throttled_periods", self.throttled),
            ("samples", self.samples),
        ])
    }
}

fn add(into: &mut BTreeMap<&'static str, i64>, from: &BTreeMap<&'static str, i64>) {
    for (k, v) in from {
        let e = into.entry(k).or_insert(0);
        if k.ends_with("_peak_bytes") {
            *e = (*e).max(*v);
        } else {
            *e += v;
        }
    }
}

async fn insert(pool: &PgPool, jail: Uuid, tenant: Uuid, r: &Rollup) {
    sqlx::query(
        "INSERT INTO usage_rollups (jail_id, hour, tenant_id, samples, cpu_usec, memory_bytes_sum,
             memory_peak_bytes, io_read_bytes, io_write_bytes, net_rx_bytes, net_tx_bytes,
             disk_bytes_sum, disk_peak_bytes, oom_kills, memory_limit_hits, pids_limit_hits,
             cpu_throttled_periods)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)",
    )
    .bind(jail)
    .bind(r.hour)
    .bind(tenant)
    .bind(r.samples)
    .bind(r.cpu_usec)
    .bind(r.memory_bytes_sum)
    .bind(r.memory_peak)
    .bind(r.io_r)
    .bind(r.io_w)
    .bind(r.rx)
    .bind(r.tx)
    .bind(r.disk_sum)
    .bind(r.disk_peak)
    .bind(r.oom)
    .bind(r.mem_hits)
    .bind(r.pid_hits)
    .bind(r.throttled)
    .execute(pool)
    .await
    .unwrap();
}

fn check(bucket: &Value, expected: &BTreeMap<&'static str, i64>, what: &str) {
    for (k, v) in expected {
        assert_eq!(bucket[*k].as_i64(), Some(*v), "{what}: {k} in {bucket}");
    }
    assert_eq!(
        bucket["cpu_ms"].as_i64(),
        Some(expected["cpu_usec"] / 1000),
        "{what}"
    );
}

fn csv_rows(text: &str) -> Vec<BTreeMap<String, String>> {
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    lines
        .map(|l| {
            header
                .iter()
                .zip(l.split(','))
                .map(|(h, v)| ((*h).to_owned(), v.to_owned()))
                .collect()
        })
        .collect()
}

async fn create_jail(api: &Api, tenant: Uuid, name: &str) -> Uuid {
    let res = api
        .post(
            &format!("/api/v1/tenants/{tenant}/jails"),
            &api.admin,
            &json!({"name": name, "image": "busybox",
                    "limits": {"cpu_millicores": 100, "memory_bytes": 67108864, "pids": 32, "disk_bytes": 67108864}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    res.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn billing_scenario_usage_equals_rollups_and_suspension_is_signed_and_reversible() {
    let api = Api::spawn().await;
    api.node().await;
    let receiver = Receiver::start(vec![200]).await;
    let res = api
        .post(
            "/api/v1/webhooks",
            &api.admin,
            &json!({"url": receiver.url, "event_types": ["tenant.suspended", "tenant.unsuspended"]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let hook: Value = res.json().await.unwrap();
    let secret = hook["secret"].as_str().unwrap().to_owned();

    let tenant = api.tenant("billed").await;
    let other = api.tenant("other").await;
    let web = create_jail(&api, tenant, "web").await;
    let db = create_jail(&api, tenant, "db").await;
    let noise = create_jail(&api, other, "noise").await;

    // Five hours across a day and a month boundary; two jails share some hours.
    let h = |d: u32, m: u32, hour: u32| Utc.with_ymd_and_hms(2026, m, d, hour, 0, 0).unwrap();
    let hours = [
        h(31, 10, 22),
        h(31, 10, 23),
        h(1, 11, 0),
        h(1, 11, 1),
        h(1, 11, 5),
    ];
    let mut rollups: Vec<(Uuid, Rollup)> = Vec::new();
    for (i, hour) in hours.iter().enumerate() {
        let seed = i64::try_from(i).unwrap() + 1;
        rollups.push((web, Rollup::new(*hour, seed)));
        if i % 2 == 0 {
            rollups.push((db, Rollup::new(*hour, seed + 10)));
        }
    }
    for (jail, r) in &rollups {
        insert(&api.pool, *jail, tenant, r).await;
    }
    insert(&api.pool, noise, other, &Rollup::new(hours[0], 50)).await;
    // The agent updates a rollup in place as samples arrive: the aggregates follow.
    sqlx::query("UPDATE usage_rollups SET samples = samples + 1, cpu_usec = cpu_usec + 1000000, memory_bytes_sum = memory_bytes_sum + 5 WHERE jail_id = $1 AND hour = $2")
        .bind(web)
        .bind(hours[2])
        .execute(&api.pool)
        .await
        .unwrap();
    for (jail, r) in &mut rollups {
        if *jail == web && r.hour == hours[2] {
            r.samples += 1;
            r.cpu_usec += 1_000_000;
            r.memory_bytes_sum += 5;
        }
    }

    // Expected sums per hour, day and month from the rollups alone.
    let mut by: [BTreeMap<DateTime<Utc>, BTreeMap<&'static str, i64>>; 3] = Default::default();
    let mut total = BTreeMap::new();
    for (_, r) in &rollups {
        let e = r.expected();
        let day = Utc
            .with_ymd_and_hms(r.hour.year(), r.hour.month(), r.hour.day(), 0, 0, 0)
            .unwrap();
        let month = Utc
            .with_ymd_and_hms(r.hour.year(), r.hour.month(), 1, 0, 0, 0)
            .unwrap();
        add(by[0].entry(r.hour).or_default(), &e);
        add(by[1].entry(day).or_default(), &e);
        add(by[2].entry(month).or_default(), &e);
        add(&mut total, &e);
    }
    let ranges = [
        ("hour", "2026-10-31T22:00:00Z", "2026-11-01T06:00:00Z", 8),
        ("day", "2026-10-31", "2026-11-02", 2),
        ("month", "2026-10-01", "2026-12-01", 2),
    ];
    for (i, (granularity, from, to, count)) in ranges.into_iter().enumerate() {
        let path =
            format!("/api/v1/tenants/{tenant}/usage?granularity={granularity}&from={from}&to={to}");
        let report: Value = api
            .get(&path, &api.admin)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let buckets = report["buckets"].as_array().unwrap();
        assert_eq!(buckets.len(), count, "{granularity}: {report}");
        for b in buckets {
            let start: DateTime<Utc> = b["start"].as_str().unwrap().parse().unwrap();
            match by[i].get(&start) {
                Some(e) => check(b, e, granularity),
                None => assert_eq!(b["samples"], 0, "{granularity}: empty bucket {b}"),
            }
        }
        check(&report["totals"], &total, "totals");
        // CSV carries the same numbers.
        let csv = api
            .get(&path, &api.admin)
            .header("Accept", "text/csv")
            .send()
            .await
            .unwrap();
        assert!(
            csv.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/csv")
        );
        let rows = csv_rows(&csv.text().await.unwrap());
        assert_eq!(rows.len(), count);
        for (row, b) in rows.iter().zip(buckets) {
            for f in FIELDS {
                assert_eq!(row[f], b[f].to_string(), "{granularity} CSV {f}");
            }
            let start: DateTime<Utc> = row["start"].parse().unwrap();
            assert_eq!(
                start.to_rfc3339(),
                b["start"]
                    .as_str()
                    .unwrap()
                    .parse::<DateTime<Utc>>()
                    .unwrap()
                    .to_rfc3339()
            );
        }
    }

    // The invoicing export: every tenant's month, equal to the rollups.
    let november = Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).unwrap();
    let export: Value = api
        .get("/api/v1/usage?month=2026-11", &api.admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let row = export["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["slug"] == "billed")
        .unwrap();
    check(row, &by[2][&november], "November export");
    let october: Value = api
        .get("/api/v1/usage?month=2026-10", &api.admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let noise_row = october["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["slug"] == "other")
        .unwrap();
    check(
        noise_row,
        &Rollup::new(hours[0], 50).expected(),
        "other tenant",
    );
    let csv = api
        .get("/api/v1/usage?month=2026-11", &api.admin)
        .header("Accept", "text/csv")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let rows = csv_rows(&csv);
    let csv_row = rows.iter().find(|r| r["slug"] == "billed").unwrap();
    for f in FIELDS {
        assert_eq!(csv_row[f], row[f].to_string(), "export CSV {f}");
    }

    // Suspension: jails stop, a signed webhook arrives; unsuspension restores them.
    let res = api
        .post(
            &format!("/api/v1/tenants/{tenant}/suspend"),
            &api.admin,
            &json!({}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let jails: Value = api
        .get(&format!("/api/v1/tenants/{tenant}/jails"), &api.admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for j in jails["data"].as_array().unwrap() {
        assert_eq!(j["desired_state"], "stopped");
    }
    let got = receiver.wait_for(1, 10).await;
    assert_eq!(got.len(), 1, "the suspension webhook arrived");
    let sig = got[0].header("Stockade-Signature").unwrap();
    assert!(signature_valid(&secret, sig, &got[0].body), "{sig}");
    assert!(!signature_valid(
        "another-secret-entirely",
        sig,
        &got[0].body
    ));
    let event: Value = serde_json::from_slice(&got[0].body).unwrap();
    assert_eq!(event["type"], "tenant.suspended");
    assert_eq!(event["tenant_id"], tenant.to_string());
    assert_eq!(got[0].header("Stockade-Event"), Some("tenant.suspended"));

    api.post(
        &format!("/api/v1/tenants/{tenant}/unsuspend"),
        &api.admin,
        &json!({}),
    )
    .send()
    .await
    .unwrap();
    let jails: Value = api
        .get(&format!("/api/v1/tenants/{tenant}/jails"), &api.admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for j in jails["data"].as_array().unwrap() {
        assert_eq!(j["desired_state"], "running");
    }
    let got = receiver.wait_for(2, 10).await;
    let event: Value = serde_json::from_slice(&got[1].body).unwrap();
    assert_eq!(event["type"], "tenant.unsuspended");
    assert!(signature_valid(
        &secret,
        got[1].header("Stockade-Signature").unwrap(),
        &got[1].body
    ));
}

#[tokio::test]
async fn a_failing_receiver_gets_the_event_again_until_it_takes_it() {
    let api = Api::spawn().await;
    let receiver = Receiver::start(vec![500, 503, 204]).await;
    let res = api
        .post(
            "/api/v1/webhooks",
            &api.admin,
            &json!({"url": receiver.url, "event_types": ["tenant.created"], "secret": "0123456789abcdef-secret"}),
        )
        .send()
        .await
        .unwrap();
    let hook: Value = res.json().await.unwrap();
    let hook_id = hook["webhook"]["id"].as_str().unwrap().to_owned();
    api.tenant("retried").await;
    let got = receiver.wait_for(3, 20).await;
    assert_eq!(got.len(), 3, "two failures, then success");
    let delivery = got[0].header("Stockade-Delivery").unwrap().to_owned();
    for r in &got {
        assert_eq!(
            r.header("Stockade-Delivery"),
            Some(delivery.as_str()),
            "the same delivery each time"
        );
        assert!(signature_valid(
            "0123456789abcdef-secret",
            r.header("Stockade-Signature").unwrap(),
            &r.body
        ));
        assert_eq!(r.body, got[0].body);
    }
    // The delivery log shows it.
    let log = delivery_log_until(&api, &hook_id, |log| {
        log["data"][0]["status"] == "delivered"
    })
    .await;
    assert_eq!(log["data"][0]["status"], "delivered", "{log}");
    assert_eq!(log["data"][0]["attempts"], 3);
    assert_eq!(log["data"][0]["last_status"], 204);
    let staff_log = stockade_store::events::deliveries(&api.pool, None, None, 10)
        .await
        .unwrap();
    assert_eq!(staff_log.len(), 1);
    // No more requests arrive once delivered.
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    assert_eq!(receiver.got.lock().unwrap().len(), 3);
    // Removed endpoints get nothing.
    let res = api
        .delete(&format!("/api/v1/webhooks/{hook_id}"), &api.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    api.tenant("unheard").await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(receiver.got.lock().unwrap().len(), 3);
}

#[tokio::test]
async fn webhooks_reach_no_internal_address_unless_the_operator_allows_it() {
    // The default policy: no allow-list.
    let mut settings = api_support::fast_settings();
    settings.delivery.egress = Default::default();
    let api = Api::spawn_with(settings).await;
    let receiver = Receiver::start(vec![204]).await;
    let port = receiver
        .url
        .rsplit(':')
        .next()
        .unwrap()
        .trim_end_matches("/hook");
    // Addresses and names of this machine are refused when registered.
    for url in [
        receiver.url.clone(),
        format!("http://[::ffff:127.0.0.1]:{port}/hook"),
        format!("http://localhost:{port}/hook"),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        "http://10.77.0.2/hook".to_owned(),
    ] {
        let res = api
            .post(
                "/api/v1/webhooks",
                &api.admin,
                &json!({"url": url, "event_types": ["tenant.created"]}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 422, "{url}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["error"]["details"]["field"], "url", "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("egress policy"),
            "{body}"
        );
    }
    // A name is checked on the address it resolves to when delivering (as
    // if it had changed since it was registered): this machine's own name
    // resolves to loopback here.
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_owned();
    let resolved: Vec<std::net::SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
        .await
        .unwrap()
        .collect();
    assert!(
        resolved.iter().all(|a| a.ip().is_loopback()),
        "this test needs the host name to resolve to loopback: {resolved:?}"
    );
    let res = api
        .post(
            "/api/v1/webhooks",
            &api.admin,
            &json!({"url": format!("http://{host}:{port}/hook"), "event_types": ["tenant.created"]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let hook: Value = res.json().await.unwrap();
    let hook_id = hook["webhook"]["id"].as_str().unwrap().to_owned();
    api.tenant("refused").await;
    let log = delivery_log_until(&api, &hook_id, |log| {
        !log["data"][0]["last_error"].is_null()
    })
    .await;
    // The log says it was refused, and nothing of what listens there.
    assert_eq!(log["data"][0]["last_error"], "refused by policy", "{log}");
    assert!(receiver.got.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_month_is_closed_once_with_its_totals() {
    let (pool, _) = common::fresh_database().await;
    let now = Utc::now();
    let this_month = Utc
        .with_ymd_and_hms(now.year(), now.month(), 1, 0, 0, 0)
        .unwrap();
    let last_month = this_month
        .checked_sub_months(chrono::Months::new(1))
        .unwrap();
    let plan = stockade_store::plans::by_name(&pool, "starter")
        .await
        .unwrap();
    let slug = stockade_domain::TenantSlug::parse("closing").unwrap();
    let tenant = stockade_store::tenants::create(&pool, &slug, "Closing", plan.id)
        .await
        .unwrap();
    stockade_store::nodes::register(
        &pool,
        &stockade_store::nodes::NodeInfo {
            name: "n".into(),
            cpus: 1,
            memory_bytes: 1 << 40,
            disk_bytes: 1 << 40,
            address_pool: None,
            agent_version: "t".into(),
            published_ports: stockade_store::nodes::DEFAULT_PUBLISHED_PORTS,
            cold_moves: "CRIU is not installed on this node".into(),
        },
    )
    .await
    .unwrap();
    let jail = stockade_store::jails::create(
        &pool,
        tenant.id,
        &stockade_store::jails::NewJail {
            name: stockade_domain::JailName::parse("j").unwrap(),
            image: "busybox".into(),
            kind: stockade_domain::JailKind::System,
            command: vec![],
            limits: stockade_domain::Limits {
                cpu_millicores: 100,
                memory_bytes: 1 << 26,
                pids: 10,
                disk_bytes: 1 << 26,
                ..Default::default()
            },
        },
    )
    .await
    .unwrap();
    let r = Rollup::new(last_month + chrono::Duration::hours(5), 3);
    insert(&pool, jail.id, tenant.id, &r).await;
    let emitted = stockade_store::events::close_previous_month(&pool, std::time::Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(emitted, 1);
    assert_eq!(
        stockade_store::events::close_previous_month(&pool, std::time::Duration::ZERO)
            .await
            .unwrap(),
        0
    );
    let events = stockade_store::events::recent(&pool, Some(tenant.id), 10)
        .await
        .unwrap();
    let closed = events
        .iter()
        .find(|e| e.event_type == "usage.month_closed")
        .unwrap();
    assert_eq!(closed.data["month"], last_month.format("%Y-%m").to_string());
    assert_eq!(closed.data["usage"]["cpu_usec"], r.cpu_usec);
    assert_eq!(
        closed.data["usage"]["memory_byte_hours"],
        r.memory_bytes_sum / r.samples
    );
    assert!(events.iter().any(|e| e.event_type == "tenant.created"));
}

#[tokio::test]
async fn an_endpoint_of_a_tenant_bound_token_gets_only_that_tenants_events() {
    let api = Api::spawn().await;
    let a = api.tenant("hook-a").await;
    let b = api.tenant("hook-b").await;
    let bound = api_support::token(
        &api.pool,
        &[stockade_store::tokens::Scope::WebhooksWrite],
        Some(a),
    )
    .await;
    let receiver = Receiver::start(vec![200]).await;
    let res = api
        .post(
            "/api/v1/webhooks",
            &bound,
            &json!({"url": receiver.url, "event_types": ["tenant.suspended"], "tenant_id": b}),
        )
        .send()
        .await
        .unwrap();
    api_support::expect_error(res, 404, "not_found").await;
    let res = api
        .post(
            "/api/v1/webhooks",
            &bound,
            &json!({"url": receiver.url, "event_types": ["tenant.suspended"]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let hook: Value = res.json().await.unwrap();
    assert_eq!(hook["webhook"]["tenant_id"], a.to_string());
    let res = api
        .post(
            "/api/v1/webhooks",
            &bound,
            &json!({"url": "ftp://x", "event_types": ["tenant.suspended"]}),
        )
        .send()
        .await
        .unwrap();
    api_support::expect_error(res, 422, "validation_failed").await;
    let res = api
        .post(
            "/api/v1/webhooks",
            &bound,
            &json!({"url": receiver.url, "event_types": ["tenant.exploded"]}),
        )
        .send()
        .await
        .unwrap();
    api_support::expect_error(res, 422, "validation_failed").await;

    api.post(
        &format!("/api/v1/tenants/{b}/suspend"),
        &api.admin,
        &json!({}),
    )
    .send()
    .await
    .unwrap();
    api.post(
        &format!("/api/v1/tenants/{a}/suspend"),
        &api.admin,
        &json!({}),
    )
    .send()
    .await
    .unwrap();
    let got = receiver.wait_for(1, 10).await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let got_now = receiver.got.lock().unwrap().clone();
    assert_eq!(got_now.len(), 1, "only tenant A's event");
    let event: Value = serde_json::from_slice(&got[0].body).unwrap();
    assert_eq!(event["tenant_id"], a.to_string());
    // The unbound admin token sees the endpoint; the bound token does not see others'.
    let list: Value = api
        .get("/api/v1/webhooks", &api.admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    let other = api_support::token(
        &api.pool,
        &[stockade_store::tokens::Scope::WebhooksWrite],
        Some(b),
    )
    .await;
    let list: Value = api
        .get("/api/v1/webhooks", &other)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["data"].as_array().unwrap().len(), 0);
    let id = hook["webhook"]["id"].as_str().unwrap();
    let res = api
        .get(&format!("/api/v1/webhooks/{id}"), &other)
        .send()
        .await
        .unwrap();
    api_support::expect_error(res, 404, "not_found").await;
}

/// The endpoint's delivery log, read until `done` holds (or 5 s passed).
async fn delivery_log_until(api: &Api, hook_id: &str, done: impl Fn(&Value) -> bool) -> Value {
    let mut log = Value::Null;
    for _ in 0..50 {
        log = api
            .get(
                &format!("/api/v1/webhooks/{hook_id}/deliveries"),
                &api.admin,
            )
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if done(&log) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    log
}
