//! Snapshots as a customer uses them: taken in the panel and through the
//! API while the jail runs, restored (the jail's disk returns to what the
//! snapshot saw and the jail runs again), bounded by the plan's count per
//! jail and the disk quota, deleted on the node. Needs root; without it
//! the test returns.

mod common;

use std::time::{Duration, Instant};

use common::agent::{Node, is_root, wait_node, wait_observed};
use common::{TestApp, hidden_field, new_client};
use secrecy::ExposeSecret;
use stockade_domain::{JailKind, JailName, Limits, ObservedState, Role, TenantSlug};
use stockade_store::jails::{self, NewJail};
use stockade_store::snapshots::{self, SnapshotState};
use stockade_store::tokens::{self, Scope};
use stockade_store::{plans, tenants};
use uuid::Uuid;

/// Runs `script` in the jail; its exit code.
fn sh(node: &Node, jail: &jails::Jail, script: &str) -> i32 {
    node.engine()
        .exec(
            &jail.host_name(),
            &["sh".into(), "-c".into(), script.into()],
        )
        .unwrap()
}

/// Waits until the jail's snapshot `name` is in `state`; returns its id.
async fn wait_snapshot(
    app: &TestApp,
    tenant: Uuid,
    jail: Uuid,
    name: &str,
    state: SnapshotState,
) -> Uuid {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let l = snapshots::list(&app.pool, tenant, jail).await.unwrap();
        if let Some(s) = l.snapshots.iter().find(|s| s.name == name) {
            if s.state == state {
                return s.id;
            }
            assert_ne!(s.state, SnapshotState::Failed, "{s:?}");
        }
        assert!(
            Instant::now() < deadline,
            "snapshot {name} never became {state:?}: {l:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the jail has no snapshots left.
async fn wait_none(app: &TestApp, tenant: Uuid, jail: Uuid) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !snapshots::list(&app.pool, tenant, jail)
        .await
        .unwrap()
        .snapshots
        .is_empty()
    {
        assert!(
            Instant::now() < deadline,
            "the snapshots were never removed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_customer_snapshots_a_jail_and_restores_it() {
    if !is_root() {
        return;
    }
    let app = TestApp::spawn().await;
    let node = Node::new(&app.db_url);
    wait_node(&app.pool, &node.name).await;
    let plan = plans::by_name(&app.pool, "starter").await.unwrap();
    let tenant = tenants::create(
        &app.pool,
        &TenantSlug::parse("snaps").unwrap(),
        "Snaps",
        plan.id,
    )
    .await
    .unwrap()
    .id;
    let other = tenants::create(
        &app.pool,
        &TenantSlug::parse("other").unwrap(),
        "Other",
        plan.id,
    )
    .await
    .unwrap()
    .id;
    let api = reqwest::Client::new();

    // Staff set the plan to keep two snapshots per jail.
    let (_, staff) = tokens::create(&app.pool, "staff", &[Scope::TenantsWrite], None)
        .await
        .unwrap();
    let res = api
        .patch(app.url(&format!("/api/v1/plans/{}", plan.id)))
        .bearer_auth(staff.expose_secret())
        .json(&serde_json::json!({ "snapshots_per_jail": 101 }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 422);
    let res = api
        .patch(app.url(&format!("/api/v1/plans/{}", plan.id)))
        .bearer_auth(staff.expose_secret())
        .json(&serde_json::json!({ "snapshots_per_jail": 2 }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.json::<serde_json::Value>().await.unwrap()["snapshots_per_jail"],
        2
    );

    let password = app
        .create_user("ops@snaps.test", Role::Customer, Some(tenant))
        .await;
    let client = new_client();
    app.sign_in(&client, "ops@snaps.test", &password).await;
    let jail = jails::create(
        &app.pool,
        tenant,
        &NewJail {
            name: JailName::parse("shop").unwrap(),
            image: "busybox".into(),
            kind: JailKind::System,
            command: vec![
                "sh".into(),
                "-c".into(),
                "while true; do sleep 1; done".into(),
            ],
            limits: Limits {
                cpu_millicores: 250,
                memory_bytes: 64 << 20,
                pids: 32,
                disk_bytes: 64 << 20,
                ..Limits::default()
            },
        },
    )
    .await
    .unwrap();
    wait_observed(&app.pool, tenant, jail.id, ObservedState::Running).await;
    assert_eq!(
        sh(
            &node,
            &jail,
            "mkdir -p /srv && echo 'orders: 41' > /srv/orders && \
             dd if=/dev/urandom of=/srv/blob bs=64k count=16 2>/dev/null && \
             sha256sum /srv/blob > /srv/blob.sum"
        ),
        0
    );

    // In the panel: none yet; a bad name comes back as typed with why.
    let here = app.url(&format!("/jails/{}/snapshots", jail.id));
    let page = client
        .get(&here)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("No snapshots yet"), "{page}");
    let csrf = hidden_field(&page, "csrf_token").unwrap();
    let res = client
        .post(&here)
        .form(&[("csrf_token", csrf.as_str()), ("name", "../etc")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 422);
    let page = res.text().await.unwrap();
    assert!(page.contains("data-snapshot-error"), "{page}");
    assert!(
        page.contains("value=\"../etc\""),
        "the name is kept as typed"
    );
    let res = client
        .post(&here)
        .form(&[("csrf_token", csrf.as_str()), ("name", "before-change")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 303);
    let before = wait_snapshot(&app, tenant, jail.id, "before-change", SnapshotState::Ready).await;
    let page = client
        .get(&here)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("data-snapshot=\"before-change\""), "{page}");
    assert!(page.contains(">ready<"), "{page}");
    // The snapshot's bytes count against the disk quota.
    let (_, used) = jails::quota_and_allocation(&app.pool, tenant)
        .await
        .unwrap();
    assert!(
        used.snapshot_bytes >= 1 << 20,
        "the 1 MiB written is in the snapshot: {used:?}"
    );

    // The jail goes on: a file lost, another written.
    assert_eq!(
        sh(
            &node,
            &jail,
            "rm /srv/orders /srv/blob && echo later > /srv/later"
        ),
        0
    );

    // Through the API, with the tenant's own token: restored.
    let (_, token) = tokens::create(
        &app.pool,
        "ci",
        &[Scope::JailsRead, Scope::JailsWrite],
        Some(tenant),
    )
    .await
    .unwrap();
    let base = app.url(&format!(
        "/api/v1/tenants/{tenant}/jails/{}/snapshots",
        jail.id
    ));
    let res = api
        .post(format!("{base}/{before}/restore"))
        .bearer_auth(token.expose_secret())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let j = jails::get(&app.pool, tenant, jail.id).await.unwrap();
        if j.observed_generation >= j.restore_generation
            && j.observed_state == ObservedState::Running
        {
            assert_eq!(j.last_error, None);
            break;
        }
        assert!(Instant::now() < deadline, "the restore never ended: {j:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        sh(
            &node,
            &jail,
            "[ \"$(cat /srv/orders)\" = 'orders: 41' ] && sha256sum -c /srv/blob.sum >/dev/null && \
             [ ! -e /srv/later ] && echo after > /srv/after"
        ),
        0,
        "the disk is as the snapshot saw it, and writable"
    );

    // One more through the API (named of the moment); a third is past the plan's two.
    let res = api
        .post(&base)
        .bearer_auth(token.expose_secret())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let second: serde_json::Value = res.json().await.unwrap();
    assert_eq!(second["state"], "pending");
    let res = api
        .post(&base)
        .bearer_auth(token.expose_secret())
        .json(&serde_json::json!({ "name": "third" }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 422);
    let err: serde_json::Value = res.json().await.unwrap();
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("2 snapshots per jail"),
        "{err}"
    );
    let res = api
        .get(&base)
        .bearer_auth(token.expose_secret())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let listed: serde_json::Value = res.json().await.unwrap();
    assert_eq!(listed["per_jail"], 2);
    assert_eq!(listed["data"].as_array().unwrap().len(), 2);

    // Another tenant's token sees none of it and changes nothing.
    let (_, nosy) = tokens::create(&app.pool, "nosy", &[Scope::JailsWrite], Some(other))
        .await
        .unwrap();
    for res in [
        api.get(&base)
            .bearer_auth(nosy.expose_secret())
            .send()
            .await
            .unwrap(),
        api.post(format!("{base}/{before}/restore"))
            .bearer_auth(nosy.expose_secret())
            .send()
            .await
            .unwrap(),
    ] {
        assert!(matches!(res.status().as_u16(), 403 | 404), "{res:?}");
    }
    let other_base = app.url(&format!(
        "/api/v1/tenants/{other}/jails/{}/snapshots",
        jail.id
    ));
    let res = api
        .delete(format!("{other_base}/{before}"))
        .bearer_auth(nosy.expose_secret())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);

    // Deleted in the panel and the API: gone from the node too.
    let second_name = second["name"].as_str().unwrap().to_owned();
    wait_snapshot(&app, tenant, jail.id, &second_name, SnapshotState::Ready).await;
    assert_eq!(node.engine().snapshots(&jail.host_name()).unwrap().len(), 2);
    let page = client
        .get(&here)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let csrf = hidden_field(&page, "csrf_token").unwrap();
    let res = client
        .post(app.url(&format!("/jails/{}/snapshots/{before}/delete", jail.id)))
        .form(&[("csrf_token", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 303);
    let res = api
        .delete(format!("{base}/{}", second["id"].as_str().unwrap()))
        .bearer_auth(token.expose_secret())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    wait_none(&app, tenant, jail.id).await;
    assert!(
        node.engine()
            .snapshots(&jail.host_name())
            .unwrap()
            .is_empty()
    );
    let (_, used) = jails::quota_and_allocation(&app.pool, tenant)
        .await
        .unwrap();
    assert_eq!(used.snapshot_bytes, 0);
    // What the node did is in the tenant's audit log.
    let taken: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_log WHERE tenant_id = $1 AND action = 'snapshot.taken'",
    )
    .bind(tenant)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(taken, 2);
    jails::set_desired(
        &app.pool,
        tenant,
        jail.id,
        stockade_domain::DesiredState::Deleted,
    )
    .await
    .unwrap();
    wait_observed(&app.pool, tenant, jail.id, ObservedState::Deleted).await;
}
