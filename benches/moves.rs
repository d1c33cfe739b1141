//! Backups and moves as a customer and the provider wait for them, with two
//! agents on this host (state folders of their own) sharing a backup
//! folder: a running jail with a 1 GiB volume holding 200 MiB from
//! `/dev/urandom`. Each round backs it up (asked through the store as the
//! API does, until its node records it taken), restores that backup into
//! it (until it runs again), and moves it to the other node (until it runs
//! there with its source's copy gone); 3 rounds, medians. Throughput is
//! the volume's length (1 GiB) over the time.
//!
//! Run as root: `cargo bench --bench moves`.

mod common;

use std::time::{Duration, Instant};

use common::{node, panel};
use stockade_domain::{JailKind, JailName, Limits, TenantSlug};
use stockade_store::jails::{self, NewJail};
use uuid::Uuid;

const ROUNDS: usize = 3;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

async fn until(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !done().await {
        assert!(Instant::now() < deadline, "{what} never happened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn main() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("moves bench: needs root; skipped");
        return;
    }
    let shared = tempfile::Builder::new()
        .prefix("stockade-bench-moves")
        .tempdir_in("/var/tmp")
        .unwrap();
    let target = shared.path().join("backups").display().to_string();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let db = panel::seeded(&rt, 0);
    rt.block_on(sqlx::query("DELETE FROM nodes").execute(&db.pool))
        .unwrap();
    let env = [("STOCKADE_BACKUP_TARGET", target.as_str())];
    let a = node::Agent::start(&db.url, "bench-move-a", &env);
    let b = node::Agent::start(&db.url, "bench-move-b", &env);
    let pool = db.pool.clone();
    rt.block_on(async {
        until("both nodes registering", async || {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM nodes")
                .fetch_one(&pool)
                .await
                .unwrap()
                == 2
        })
        .await;
        let nodes: Vec<(Uuid, String)> = sqlx::query_as("SELECT id, name FROM nodes")
            .fetch_all(&pool)
            .await
            .unwrap();
        let plan = stockade_store::plans::by_name(&pool, "business").await.unwrap();
        let tenant = stockade_store::tenants::create(
            &pool,
            &TenantSlug::parse("movers").unwrap(),
            "Movers",
            plan.id,
        )
        .await
        .unwrap()
        .id;
        let jail = jails::create(
            &pool,
            tenant,
            &NewJail {
                name: JailName::parse("site").unwrap(),
                image: "busybox".into(),
                kind: JailKind::System,
                command: vec!["sleep".into(), "1000000".into()],
                limits: Limits {
                    cpu_millicores: 1000,
                    memory_bytes: 128 << 20,
                    pids: 64,
                    disk_bytes: 1 << 30,
                    ..Limits::default()
                },
            },
        )
        .await
        .unwrap();
        node::wait_running(&pool, tenant, jail.id).await;
        let on = jails::get(&pool, tenant, jail.id).await.unwrap().node_id;
        let engine = if nodes.iter().any(|(id, n)| Some(*id) == on && n == "bench-move-a") {
            &a
        } else {
            &b
        };
        let code = engine
            .engine()
            .exec(
                &jail.host_name(),
                &[
                    "sh".into(),
                    "-c".into(),
                    "dd if=/dev/urandom of=/data bs=1M count=200 2>/dev/null && sync".into(),
                ],
            )
            .unwrap();
        assert_eq!(code, 0);
        let (mut backups, mut restores, mut moves) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            let t = Instant::now();
            let backup = stockade_store::backups::request(&pool, tenant, jail.id, None)
                .await
                .unwrap();
            until("the backup", async || {
                stockade_store::backups::get(&pool, tenant, backup.id)
                    .await
                    .unwrap()
                    .state
                    == "ready"
            })
            .await;
            backups.push(t.elapsed());

            let t = Instant::now();
            stockade_store::backups::restore_into(&pool, tenant, jail.id, backup.id)
                .await
                .unwrap();
            until("the restore", async || {
                let j = jails::get(&pool, tenant, jail.id).await.unwrap();
                j.observed_generation >= j.generation
                    && j.observed_state == stockade_domain::ObservedState::Running
            })
            .await;
            restores.push(t.elapsed());

            let here = jails::get(&pool, tenant, jail.id).await.unwrap().node_id;
            let to = nodes.iter().find(|(id, _)| Some(*id) != here).unwrap().0;
            let t = Instant::now();
            stockade_store::moves::request(&pool, jail.id, to).await.unwrap();
            until("the move", async || {
                let j = jails::get(&pool, tenant, jail.id).await.unwrap();
                j.node_id == Some(to)
                    && j.moved_from_node.is_none()
                    && j.observed_generation >= j.generation
                    && j.observed_state == stockade_domain::ObservedState::Running
            })
            .await;
            moves.push(t.elapsed());
            stockade_store::backups::delete(&pool, tenant, backup.id)
                .await
                .unwrap();
        }
        let mib_s = |d: Duration| 1024.0 / d.as_secs_f64();
        let (bk, rs, mv) = (median(backups), median(restores), median(moves));
        println!(
            "backup of a running jail's 1 GiB volume (200 MiB used) to a local folder: median {:.2} s ({:.0} MiB/s of volume)",
            bk.as_secs_f64(),
            mib_s(bk)
        );
        println!(
            "restore of it into the jail, until it runs again: median {:.2} s ({:.0} MiB/s of volume)",
            rs.as_secs_f64(),
            mib_s(rs)
        );
        println!(
            "cold move of the jail to the other agent, until it runs there: median {:.2} s ({ROUNDS} rounds)",
            mv.as_secs_f64()
        );
        stockade_store::jails::set_desired(
            &pool,
            tenant,
            jail.id,
            stockade_domain::DesiredState::Deleted,
        )
        .await
        .unwrap();
    });
    drop(a);
    drop(b);
}
