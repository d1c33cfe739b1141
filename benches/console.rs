//! Console and output benchmark, through the whole path a customer uses
//! (panel → node's endpoint on a ticket → the jail), on loopback:
//!
//! - the first byte of a jail's output (`GET /jails/{id}/logs?tail=100`), 200
//!   requests one after another: p50 and p99;
//! - a console keystroke's echo: 500 keystrokes into a shell in the jail,
//!   each timed from its send to the first message carrying it back.
//!
//! Run as root: `cargo bench --bench console`. It starts its own throw-away
//! PostgreSQL cluster, agent and web server, and removes what it made.

mod common;

use std::time::{Duration, Instant};

use common::{node, panel};
use futures_util::{SinkExt, StreamExt};
use stockade_domain::{JailKind, JailName, Limits, ObservedState, TenantSlug};
use stockade_store::jails::{self, NewJail};
use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest};

/// The agent's cgroup group: `stockade-<node name>`.
const NODE: &str = "bench-console";

/// The `per_mille`th value of `sorted`, in milliseconds.
fn percentile(sorted: &[Duration], per_mille: usize) -> f64 {
    let i = (sorted.len() - 1) * per_mille / 1000;
    sorted[i].as_secs_f64() * 1000.0
}

fn main() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("console bench: needs root; skipped");
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let db = panel::seeded(&rt, 0);
    rt.block_on(sqlx::query("DELETE FROM nodes").execute(&db.pool))
        .unwrap();
    let _agent = node::Agent::start(&db.url, NODE, &[("STOCKADE_AGENT_LOGS", "127.0.0.1:0")]);
    let base = panel::serve(&db.pool, Duration::from_secs(5));
    rt.block_on(async {
        let pool = &db.pool;
        let deadline = Instant::now() + Duration::from_secs(60);
        while sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM nodes WHERE log_endpoint IS NOT NULL",
        )
        .fetch_one(pool)
        .await
        .unwrap()
            == 0
        {
            assert!(Instant::now() < deadline, "the agent never registered");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let plan = stockade_store::plans::by_name(pool, "business")
            .await
            .unwrap();
        let tenant = stockade_store::tenants::create(
            pool,
            &TenantSlug::parse("consoles").unwrap(),
            "Consoles",
            plan.id,
        )
        .await
        .unwrap()
        .id;
        let cookie = panel::session(pool, "c@consoles.test", Some(tenant)).await;
        let jail = jails::create(
            pool,
            tenant,
            &NewJail {
                name: JailName::parse("chatty").unwrap(),
                image: "busybox".into(),
                kind: JailKind::System,
                command: vec![
                    "sh".into(),
                    "-c".into(),
                    "i=0; while true; do i=$((i+1)); echo \"line $i\"; sleep 0.1; done".into(),
                ],
                limits: Limits {
                    cpu_millicores: 500,
                    memory_bytes: 64 << 20,
                    pids: 64,
                    disk_bytes: 64 << 20,
                    ..Limits::default()
                },
            },
        )
        .await
        .unwrap();
        node::wait_running(pool, tenant, jail.id).await;
        tokio::time::sleep(Duration::from_secs(2)).await;

        // The first byte of the output's tail.
        let http = reqwest::Client::new();
        let url = format!("{base}/jails/{}/logs?tail=100", jail.id);
        let mut firsts = Vec::new();
        for _ in 0..200 {
            let t = Instant::now();
            let mut res = http
                .get(&url)
                .header("Cookie", format!("stockade_session={cookie}"))
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 200);
            let chunk = res.chunk().await.unwrap();
            firsts.push(t.elapsed());
            assert!(chunk.is_some_and(|c| !c.is_empty()));
            while res.chunk().await.unwrap().is_some() {}
        }
        firsts.sort();
        println!(
            "output: first byte of a 100-line tail p50 {:.1} ms, p99 {:.1} ms (200 requests)",
            percentile(&firsts, 500),
            percentile(&firsts, 990)
        );

        // A console's keystroke echo.
        let mut req = format!(
            "{}/jails/{}/console",
            base.replacen("http://", "ws://", 1),
            jail.id
        )
        .into_client_request()
        .unwrap();
        req.headers_mut().insert(
            "cookie",
            format!("stockade_session={cookie}").parse().unwrap(),
        );
        req.headers_mut().insert("origin", base.parse().unwrap());
        let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
        // The prompt first.
        let _ = tokio::time::timeout(Duration::from_secs(2), ws.next()).await;
        let mut echoes = Vec::new();
        for i in 0..500 {
            // Letters, with a new line now and then so the shell's line stays short.
            let key: &[u8] = if i % 50 == 49 { b"\x15" } else { b"x" };
            let t = Instant::now();
            ws.send(Message::Binary(key.to_vec().into())).await.unwrap();
            loop {
                match ws.next().await {
                    Some(Ok(Message::Binary(_))) => break,
                    Some(Ok(_)) => {}
                    other => panic!("the console ended: {other:?}"),
                }
            }
            echoes.push(t.elapsed());
            // What else the key drew (a redrawn line) before the next key.
            while let Ok(Some(Ok(_))) =
                tokio::time::timeout(Duration::from_millis(2), ws.next()).await
            {}
        }
        echoes.sort();
        println!(
            "console: keystroke echo p50 {:.2} ms, p99 {:.2} ms (500 keystrokes)",
            percentile(&echoes, 500),
            percentile(&echoes, 990)
        );
        let _ = ws.send(Message::Binary(b"exit\n".to_vec().into())).await;
        jails::set_desired(
            pool,
            tenant,
            jail.id,
            stockade_domain::DesiredState::Deleted,
        )
        .await
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while jails::get(pool, tenant, jail.id)
            .await
            .unwrap()
            .observed_state
            != ObservedState::Deleted
        {
            assert!(Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
}
