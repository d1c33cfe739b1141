//! Mixed panel benchmark: what people using the panel at the same time
//! feel. 1,000 tenants (ten jails each, a month of hourly usage for one
//! tenant in ten); 20 users at once, 18 customers of different tenants and
//! 2 staff, each doing 90 % page views and 10 % actions (a customer stops or
//! starts a jail, staff suspend or unsuspend a tenant) with no pause between
//! requests. The same load runs against a server with the page cache on and
//! one with it off, in alternating rounds of one run, and the latency of
//! each page is reported side by side (p50 and p99).
//!
//! Run: `cargo bench --bench mixed`. `BENCH_SECS=N` sets each round's
//! length (10), `BENCH_ROUNDS=N` the rounds per server (2).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use uuid::Uuid;

mod common;

use common::panel;

const TENANTS: u32 = 1_000;
const CUSTOMERS: usize = 18;
const STAFF: usize = 2;

/// One signed-in user of the benchmark.
struct User {
    cookie: String,
    csrf: String,
    /// A customer's own jail; `None` for staff.
    jail: Option<Uuid>,
    /// The tenant staff suspend and unsuspend (one no customer here uses).
    target: Uuid,
}

type Samples = Arc<Mutex<BTreeMap<&'static str, Vec<Duration>>>>;

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

async fn get(http: &reqwest::Client, url: &str, cookie: &str) -> String {
    let resp = http
        .get(url)
        .header("Cookie", format!("stockade_session={cookie}"))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{url}: {}", resp.status());
    resp.text().await.unwrap()
}

async fn post(http: &reqwest::Client, url: &str, user: &User) {
    let resp = http
        .post(url)
        .header("Cookie", format!("stockade_session={}", user.cookie))
        .form(&[("csrf_token", user.csrf.as_str()), ("confirm", "yes")])
        .send()
        .await
        .unwrap();
    assert!(
        resp.status().is_redirection() || resp.status().is_success(),
        "{url}: {}",
        resp.status()
    );
}

/// The form token a page's forms carry.
fn csrf(html: &str) -> String {
    let at = html
        .find("name=\"csrf_token\" value=\"")
        .expect("a form on the page");
    let rest = &html[at + "name=\"csrf_token\" value=\"".len()..];
    rest[..rest.find('"').unwrap()].to_owned()
}

/// One user's requests for `secs` against `base`.
async fn browse(base: String, user: Arc<User>, until: Instant, samples: Samples) {
    let http = client();
    let mut stopped = false;
    let mut suspended = false;
    let mut mine: Vec<(&'static str, Duration)> = Vec::new();
    while Instant::now() < until {
        let (roll, pick) = {
            let mut rng = rand::rng();
            (rng.random_range(0..100u32), rng.random_range(0..3u32))
        };
        let t = Instant::now();
        let name = match (user.jail, roll < 10) {
            (Some(jail), true) => {
                let verb = if stopped { "start" } else { "stop" };
                stopped = !stopped;
                post(&http, &format!("{base}/jails/{jail}/{verb}"), &user).await;
                "action: customer stops/starts a jail"
            }
            (None, true) => {
                let verb = if suspended { "unsuspend" } else { "suspend" };
                suspended = !suspended;
                let url = format!("{base}/staff/tenants/{}/{verb}", user.target);
                post(&http, &url, &user).await;
                "action: staff suspend/unsuspend a tenant"
            }
            (Some(jail), false) => {
                let (name, path) = match pick {
                    0 => ("customer overview", "/overview".to_owned()),
                    1 => ("jail page, last hour", format!("/jails/{jail}")),
                    _ => (
                        "jail page, last month",
                        format!("/jails/{jail}?period=month"),
                    ),
                };
                get(&http, &format!("{base}{path}"), &user.cookie).await;
                name
            }
            (None, false) => {
                let (name, path) = match pick {
                    0 => ("staff tenant list", "/staff/tenants".to_owned()),
                    1 => (
                        "staff tenant list by CPU",
                        "/staff/tenants?sort=cpu".to_owned(),
                    ),
                    _ => (
                        "staff tenant page (not cached)",
                        format!("/staff/tenants/{}", user.target),
                    ),
                };
                get(&http, &format!("{base}{path}"), &user.cookie).await;
                name
            }
        };
        mine.push((name, t.elapsed()));
    }
    let mut all = samples.lock().unwrap();
    for (name, d) in mine {
        all.entry(name).or_default().push(d);
    }
}

/// `users` browsing `base` at once for `secs`.
async fn round(base: &str, users: &[Arc<User>], secs: u64, samples: &Samples) {
    let until = Instant::now() + Duration::from_secs(secs);
    let tasks: Vec<_> = users
        .iter()
        .map(|u| tokio::spawn(browse(base.to_owned(), u.clone(), until, samples.clone())))
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let i = (((sorted.len() - 1) as f64) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

fn main() {
    let secs: u64 = std::env::var("BENCH_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let rounds: u32 = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let db = panel::seeded(&rt, TENANTS);
    let cached = panel::serve(&db.pool, Duration::from_secs(5));
    let uncached = panel::serve(&db.pool, Duration::ZERO);
    std::thread::sleep(Duration::from_millis(500));
    let users: Vec<Arc<User>> = rt.block_on(async {
        let http = client();
        let mut users = Vec::new();
        for i in 0..CUSTOMERS + STAFF {
            // Customers of tenants with a month of usage (t10, t20, ...);
            // staff act on tenants no customer here uses (t5, t15).
            let n = i + 1;
            let (cookie, jail, target) = if i < CUSTOMERS {
                let tenant = panel::tenant(&db.pool, &format!("t{}", n * 10)).await;
                let cookie =
                    panel::session(&db.pool, &format!("c@t{}.test", n * 10), Some(tenant)).await;
                let jail = stockade_store::jails::list_for_tenant(&db.pool, tenant)
                    .await
                    .unwrap()[0]
                    .id;
                (cookie, Some(jail), tenant)
            } else {
                let target =
                    panel::tenant(&db.pool, &format!("t{}", (i - CUSTOMERS) * 10 + 5)).await;
                let cookie = panel::session(&db.pool, &format!("staff{i}@bench.test"), None).await;
                (cookie, None, target)
            };
            let page = if jail.is_some() {
                format!("{cached}/overview")
            } else {
                format!("{cached}/staff/tenants/{target}")
            };
            let csrf = csrf(&get(&http, &page, &cookie).await);
            users.push(Arc::new(User {
                cookie,
                csrf,
                jail,
                target,
            }));
        }
        users
    });
    let on: Samples = Arc::default();
    let off: Samples = Arc::default();
    for r in 0..rounds {
        for (how, base, samples) in [("on", &cached, &on), ("off", &uncached, &off)] {
            rt.block_on(round(base, &users, secs, samples));
            println!("round {} with the page cache {how}: done", r + 1);
        }
    }
    let mut on = std::mem::take(&mut *on.lock().unwrap());
    let mut off = std::mem::take(&mut *off.lock().unwrap());
    println!(
        "\n{TENANTS} tenants, {} users at once ({CUSTOMERS} customers, {STAFF} staff), 90 % views / 10 % actions, {rounds} x {secs} s per server",
        CUSTOMERS + STAFF
    );
    println!(
        "{:<42} {:>22} {:>22}",
        "page", "cache on: p50 / p99", "cache off: p50 / p99"
    );
    let names: Vec<&'static str> = on.keys().chain(off.keys()).copied().collect();
    let mut shown = std::collections::BTreeSet::new();
    let (mut all_on, mut all_off) = (Vec::new(), Vec::new());
    for name in names {
        if !shown.insert(name) {
            continue;
        }
        let a = on.entry(name).or_default();
        let b = off.entry(name).or_default();
        a.sort();
        b.sort();
        all_on.extend_from_slice(a);
        all_off.extend_from_slice(b);
        println!(
            "{name:<42} {:>9.1} / {:>6.1} ms {:>9.1} / {:>6.1} ms   ({} / {} requests)",
            percentile(a, 0.5),
            percentile(a, 0.99),
            percentile(b, 0.5),
            percentile(b, 0.99),
            a.len(),
            b.len()
        );
    }
    all_on.sort();
    all_off.sort();
    println!(
        "{:<42} {:>9.1} / {:>6.1} ms {:>9.1} / {:>6.1} ms   ({} / {} requests)",
        "all requests",
        percentile(&all_on, 0.5),
        percentile(&all_on, 0.99),
        percentile(&all_off, 0.5),
        percentile(&all_off, 0.99),
        all_on.len(),
        all_off.len()
    );
    // The server threads serve until the process ends; stop the database
    // and remove its folder first.
    drop(db);
    std::process::exit(0);
}
