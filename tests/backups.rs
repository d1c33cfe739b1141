//! Backups off the node, against an S3 server on this machine (moto): taken
//! through the API while the jail runs, stored compressed with a manifest,
//! restored into the same jail and as a new jail on the other node, refused
//! when the jail's disk is too small, when the archive was corrupted, or for
//! another tenant, and removed from the store. Needs root and moto (the
//! test script installs it); without root the test returns.

mod common;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::agent::{Node, is_root, wait_node, wait_observed};
use common::{TestApp, hidden_field, new_client};
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use stockade_domain::{DesiredState, JailKind, JailName, Limits, ObservedState, Role, TenantSlug};
use stockade_store::jails::{self, NewJail};
use stockade_store::tokens::{self, Scope};
use stockade_store::{plans, tenants};
use uuid::Uuid;

const BUCKET: &str = "stockade-backups";

/// moto's S3 server on a loopback port; stopped when dropped.
struct S3 {
    child: Child,
    url: String,
}

impl S3 {
    fn start() -> S3 {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("python3")
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 with moto[server] (scripts/test installs it)");
        let s3 = S3 {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto's S3 server never listened");
            std::thread::sleep(Duration::from_millis(100));
        }
        s3
    }

    /// The keys stored in the bucket.
    async fn keys(&self) -> Vec<String> {
        let body = reqwest::get(format!("{}/{BUCKET}?list-type=2", self.url))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        body.split("<Key>")
            .skip(1)
            .filter_map(|s| s.split("</Key>").next())
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for S3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sh(node: &Node, jail: &jails::Jail, script: &str) -> i32 {
    node.engine()
        .exec(
            &jail.host_name(),
            &["sh".into(), "-c".into(), script.into()],
        )
        .unwrap()
}

/// The node (of two) a jail is placed on.
fn node_of<'a>(
    nodes: &'a [&'a Node],
    app_nodes: &[(Uuid, String)],
    jail: &jails::Jail,
) -> &'a Node {
    let name = &app_nodes
        .iter()
        .find(|(id, _)| Some(*id) == jail.node_id)
        .unwrap()
        .1;
    nodes.iter().find(|n| &n.name == name).unwrap()
}

fn new_jail(name: &str, disk: u64) -> NewJail {
    NewJail {
        name: JailName::parse(name).unwrap(),
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
            disk_bytes: disk,
            ..Limits::default()
        },
    }
}

/// Waits until a restore asked for is done; the jail as it is then.
async fn wait_restored(app: &TestApp, tenant: Uuid, jail: Uuid) -> jails::Jail {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let j = jails::get(&app.pool, tenant, jail).await.unwrap();
        if j.observed_generation >= j.restore_generation
            && j.observed_generation >= j.generation
            && j.observed_state == ObservedState::Running
        {
            return j;
        }
        assert!(Instant::now() < deadline, "the restore never ended: {j:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn backups_go_to_s3_and_come_back_on_any_node() {
    if !is_root() {
        return;
    }
    let s3 = S3::start();
    let made = reqwest::Client::new()
        .put(format!("{}/{BUCKET}", s3.url))
        .send()
        .await
        .unwrap();
    assert!(made.status().is_success());
    let app = TestApp::spawn().await;
    let target = format!(
        "s3://{BUCKET}/node-backups?endpoint={}&region=us-east-1",
        s3.url
    );
    let env = [
        ("STOCKADE_BACKUP_TARGET", target.as_str()),
        ("AWS_ACCESS_KEY_ID", "stockade-test"),
        ("AWS_SECRET_ACCESS_KEY", "stockade-test"),
    ];
    let a = Node::with_env(&app.db_url, &env);
    let b = Node::with_env(&app.db_url, &env);
    wait_node(&app.pool, &a.name).await;
    wait_node(&app.pool, &b.name).await;
    let app_nodes: Vec<(Uuid, String)> = stockade_store::nodes::list(&app.pool)
        .await
        .unwrap()
        .into_iter()
        .map(|n| (n.id, n.name))
        .collect();
    let nodes = [&a, &b];
    let plan = plans::by_name(&app.pool, "starter").await.unwrap();
    let tenant = tenants::create(
        &app.pool,
        &TenantSlug::parse("keep").unwrap(),
        "Keep",
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
    let (_, token) = tokens::create(
        &app.pool,
        "ops",
        &[Scope::JailsRead, Scope::JailsWrite],
        Some(tenant),
    )
    .await
    .unwrap();
    let (_, nosy) = tokens::create(&app.pool, "nosy", &[Scope::JailsWrite], Some(other))
        .await
        .unwrap();
    let api = reqwest::Client::new();
    let call = |method: reqwest::Method, path: String, body: Option<Value>| {
        let mut r = api
            .request(method, app.url(&path))
            .bearer_auth(token.expose_secret());
        if let Some(b) = body {
            r = r.json(&b);
        }
        r.send()
    };

    let jail = jails::create(&app.pool, tenant, &new_jail("shop", 64 << 20))
        .await
        .unwrap();
    wait_observed(&app.pool, tenant, jail.id, ObservedState::Running).await;
    let jail = jails::get(&app.pool, tenant, jail.id).await.unwrap();
    let home = node_of(&nodes, &app_nodes, &jail);
    assert_eq!(
        sh(
            home,
            &jail,
            "mkdir -p /srv && echo 'orders: 41' > /srv/orders && \
             dd if=/dev/urandom of=/srv/blob bs=64k count=32 2>/dev/null && \
             sha256sum /srv/blob > /srv/blob.sum"
        ),
        0
    );

    // Taken through the API while the jail runs.
    let res = call(
        reqwest::Method::POST,
        format!("/api/v1/tenants/{tenant}/jails/{}/backups", jail.id),
        None,
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 202);
    let backup: Value = res.json().await.unwrap();
    let id = backup["id"].as_str().unwrap().to_owned();
    assert_eq!(backup["state"], "pending");
    let deadline = Instant::now() + Duration::from_secs(60);
    let done = loop {
        let b: Value = call(
            reqwest::Method::GET,
            format!("/api/v1/tenants/{tenant}/backups/{id}"),
            None,
        )
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
        if b["state"] != "pending" {
            break b;
        }
        assert!(Instant::now() < deadline, "the backup was never taken: {b}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(done["state"], "ready", "{done}");
    assert_eq!(done["volume_bytes"], 64u64 << 20);
    let size = done["size_bytes"].as_u64().unwrap();
    assert!(
        size > 2 << 20 && size < 16 << 20,
        "the 2 MiB of random data are stored, the free space compressed away: {size}"
    );
    let keys = s3.keys().await;
    let prefix = format!("node-backups/tenants/{tenant}/backups/{id}");
    assert!(
        keys.contains(&format!("{prefix}/manifest.json")),
        "{keys:?}"
    );
    assert!(
        keys.contains(&format!("{prefix}/volume.img.zst")),
        "{keys:?}"
    );
    let listed: Value = call(
        reqwest::Method::GET,
        format!("/api/v1/tenants/{tenant}/backups?jail_id={}", jail.id),
        None,
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(listed["stored_bytes"], size);
    assert_eq!(listed["data"].as_array().unwrap().len(), 1);

    // The customer's page shows it; a bad name for a new jail comes back as typed.
    let password = app
        .create_user("ops@keep.test", Role::Customer, Some(tenant))
        .await;
    let client = new_client();
    app.sign_in(&client, "ops@keep.test", &password).await;
    let here = app.url(&format!("/jails/{}/backups", jail.id));
    let page = client
        .get(&here)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains(&format!("data-backup=\"{id}\"")), "{page}");
    assert!(page.contains(">ready<"), "{page}");
    let csrf = hidden_field(&page, "csrf_token").unwrap();
    let res = client
        .post(app.url(&format!("/jails/{}/backups/{id}/new-jail", jail.id)))
        .form(&[("csrf_token", csrf.as_str()), ("name", "Not A Name")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 422);
    let page = res.text().await.unwrap();
    assert!(
        page.contains("data-backup-error") && page.contains("value=\"Not A Name\""),
        "{page}"
    );

    // Downloaded, through the API and the page: the object as stored.
    let stored = reqwest::get(format!("{}/{BUCKET}/{prefix}/volume.img.zst", s3.url))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(&stored[..4], &[0x28, 0xb5, 0x2f, 0xfd], "a zstd frame");
    let res = call(
        reqwest::Method::GET,
        format!("/api/v1/tenants/{tenant}/backups/{id}/download"),
        None,
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 200);
    assert!(
        res.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .contains("shop-")
    );
    assert!(res.bytes().await.unwrap() == stored);
    let res = client
        .get(app.url(&format!("/jails/{}/backups/{id}/download", jail.id)))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.bytes().await.unwrap() == stored);
    let res = api
        .get(app.url(&format!("/api/v1/tenants/{tenant}/backups/{id}/download")))
        .bearer_auth(nosy.expose_secret())
        .send()
        .await
        .unwrap();
    assert!(matches!(res.status().as_u16(), 403 | 404));

    // Another tenant sees and restores nothing of it.
    let res = api
        .get(app.url(&format!("/api/v1/tenants/{tenant}/backups/{id}")))
        .bearer_auth(nosy.expose_secret())
        .send()
        .await
        .unwrap();
    assert!(matches!(res.status().as_u16(), 403 | 404));
    let res = api
        .post(app.url(&format!("/api/v1/tenants/{other}/backups/{id}/restore")))
        .bearer_auth(nosy.expose_secret())
        .json(&json!({ "name": "stolen" }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);

    // Restored into the same jail: what was lost is back, what came later gone.
    assert_eq!(
        sh(home, &jail, "rm /srv/orders && echo later > /srv/later"),
        0
    );
    let res = call(
        reqwest::Method::POST,
        format!("/api/v1/tenants/{tenant}/backups/{id}/restore"),
        Some(json!({ "jail_id": jail.id })),
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 202);
    let j = wait_restored(&app, tenant, jail.id).await;
    assert_eq!(j.last_error, None);
    assert_eq!(
        sh(
            home,
            &jail,
            "[ \"$(cat /srv/orders)\" = 'orders: 41' ] && sha256sum -c /srv/blob.sum >/dev/null \
             && [ ! -e /srv/later ] && echo after > /srv/after"
        ),
        0
    );

    // As a new jail: placed on the other node, with the same files.
    let res = call(
        reqwest::Method::POST,
        format!("/api/v1/tenants/{tenant}/backups/{id}/restore"),
        Some(json!({ "name": "shop-copy" })),
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 202);
    let copy_id: Uuid = res.json::<Value>().await.unwrap()["jail_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let copy = wait_restored(&app, tenant, copy_id).await;
    assert_eq!(copy.last_error, None);
    assert_ne!(
        copy.node_id, jail.node_id,
        "the copy runs on the other node"
    );
    let there = node_of(&nodes, &app_nodes, &copy);
    assert_eq!(
        sh(
            there,
            &copy,
            "[ \"$(cat /srv/orders)\" = 'orders: 41' ] && sha256sum -c /srv/blob.sum >/dev/null"
        ),
        0
    );

    // Bad requests: neither or both targets, a jail whose disk is too small.
    for body in [json!({}), json!({ "jail_id": jail.id, "name": "x" })] {
        let res = call(
            reqwest::Method::POST,
            format!("/api/v1/tenants/{tenant}/backups/{id}/restore"),
            Some(body),
        )
        .await
        .unwrap();
        assert_eq!(res.status(), 422);
    }
    let tiny = jails::create(&app.pool, tenant, &new_jail("tiny", 16 << 20))
        .await
        .unwrap();
    let res = call(
        reqwest::Method::POST,
        format!("/api/v1/tenants/{tenant}/backups/{id}/restore"),
        Some(json!({ "jail_id": tiny.id })),
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 422);
    let err: Value = res.json().await.unwrap();
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("grow the jail's disk first"),
        "{err}"
    );

    // A corrupted archive is refused whole: the jail keeps its files.
    let put = api
        .put(format!("{}/{BUCKET}/{prefix}/volume.img.zst", s3.url))
        .body(vec![0x28, 0xb5, 0x2f, 0xfd, 1, 2, 3, 4, 5, 6, 7, 8])
        .send()
        .await
        .unwrap();
    assert!(put.status().is_success());
    let res = call(
        reqwest::Method::POST,
        format!("/api/v1/tenants/{tenant}/backups/{id}/restore"),
        Some(json!({ "jail_id": jail.id })),
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 202);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let j = jails::get(&app.pool, tenant, jail.id).await.unwrap();
        if let Some(e) = &j.last_error {
            assert!(e.contains("restoring the backup"), "{e}");
            break;
        }
        assert!(
            j.observed_generation < j.generation,
            "a corrupt backup was restored without a word: {j:?}"
        );
        assert!(Instant::now() < deadline, "the restore never ended: {j:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_observed(&app.pool, tenant, jail.id, ObservedState::Running).await;
    assert_eq!(
        sh(home, &jail, "test -f /srv/after && test -f /srv/orders"),
        0,
        "the jail's own files are as they were"
    );

    // Removed: gone from the store, no longer billed.
    let res = call(
        reqwest::Method::DELETE,
        format!("/api/v1/tenants/{tenant}/backups/{id}"),
        None,
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 202);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !stockade_store::backups::list(&app.pool, tenant, None)
        .await
        .unwrap()
        .is_empty()
    {
        assert!(Instant::now() < deadline, "the backup was never removed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        !s3.keys().await.iter().any(|k| k.starts_with(&prefix)),
        "the objects are gone"
    );
    assert_eq!(
        stockade_store::backups::stored_bytes(&app.pool, tenant)
            .await
            .unwrap(),
        0
    );

    for j in [jail.id, copy_id, tiny.id] {
        jails::set_desired(&app.pool, tenant, j, DesiredState::Deleted)
            .await
            .unwrap();
    }
    for j in [jail.id, copy_id, tiny.id] {
        wait_observed(&app.pool, tenant, j, ObservedState::Deleted).await;
    }
}

#[tokio::test]
async fn a_plan_backs_its_jails_up_daily_and_lets_old_backups_go() {
    if !is_root() {
        return;
    }
    let app = TestApp::spawn().await;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("backups");
    let target = root.display().to_string();
    let node = Node::with_env(&app.db_url, &[("STOCKADE_BACKUP_TARGET", target.as_str())]);
    wait_node(&app.pool, &node.name).await;
    let plan = plans::by_name(&app.pool, "starter").await.unwrap();
    plans::set_backup_days(&app.pool, plan.id, 2).await.unwrap();
    let tenant = tenants::create(
        &app.pool,
        &TenantSlug::parse("daily").unwrap(),
        "Daily",
        plan.id,
    )
    .await
    .unwrap()
    .id;
    let jail = jails::create(&app.pool, tenant, &new_jail("blog", 32 << 20))
        .await
        .unwrap();
    wait_observed(&app.pool, tenant, jail.id, ObservedState::Running).await;

    // Within a resync period the day's backup is taken, kept two days.
    let deadline = Instant::now() + Duration::from_secs(60);
    let daily = loop {
        let list = stockade_store::backups::list(&app.pool, tenant, Some(jail.id))
            .await
            .unwrap();
        if let Some(b) = list.iter().find(|b| b.scheduled && b.state == "ready") {
            break b.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no daily backup was taken: {list:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let kept = daily.expires_at.unwrap() - daily.created_at;
    assert!(
        (kept - chrono::Duration::days(2)).num_seconds().abs() < 60,
        "kept {kept}"
    );
    let objects = root.join(format!("tenants/{tenant}/backups/{}", daily.id));
    assert!(objects.join("manifest.json").exists());
    // One a day: a few resync periods later it is still the only one.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let scheduled = stockade_store::backups::list(&app.pool, tenant, Some(jail.id))
        .await
        .unwrap()
        .into_iter()
        .filter(|b| b.scheduled)
        .count();
    assert_eq!(scheduled, 1);

    // Its days over, it goes from the target.
    sqlx::query("UPDATE backups SET expires_at = now() - interval '1 minute' WHERE id = $1")
        .bind(daily.id)
        .execute(&app.pool)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while stockade_store::backups::get(&app.pool, tenant, daily.id)
        .await
        .is_ok()
    {
        assert!(
            Instant::now() < deadline,
            "the old backup was never removed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(!objects.join("manifest.json").exists());
    assert!(!objects.join("volume.img.zst").exists());

    jails::set_desired(&app.pool, tenant, jail.id, DesiredState::Deleted)
        .await
        .unwrap();
    wait_observed(&app.pool, tenant, jail.id, ObservedState::Deleted).await;
}
