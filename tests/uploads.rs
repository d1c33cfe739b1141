//! Site file uploads: from the browser form, through the database, written
//! by the agent into the running jail, inside its root and within its disk.
//! Needs root; without it the test says so loudly and returns.

mod common;

use std::time::{Duration, Instant};

use common::agent::{Node, is_root, wait_node, wait_observed};
use common::{TestApp, hidden_field, new_client};
use stockade_domain::{JailKind, JailName, Limits, ObservedState, Role, TenantSlug};
use stockade_store::jails::{self, NewJail};
use stockade_store::{plans, tenants};

async fn upload(
    app: &TestApp,
    client: &reqwest::Client,
    jail: uuid::Uuid,
    name: &str,
    data: Vec<u8>,
) -> String {
    let page = client
        .get(app.url(&format!("/jails/{jail}")))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let csrf = hidden_field(&page, "csrf_token").unwrap();
    let form = reqwest::multipart::Form::new()
        .text("csrf_token", csrf)
        .part(
            "file",
            reqwest::multipart::Part::bytes(data).file_name(name.to_owned()),
        );
    let r = client
        .post(app.url(&format!("/jails/{jail}/files")))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    client
        .get(app.url(&format!("/jails/{jail}")))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

async fn wait_upload(
    app: &TestApp,
    tenant: uuid::Uuid,
    jail: uuid::Uuid,
    name: &str,
) -> (String, Option<String>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let list = stockade_store::uploads::list(&app.pool, tenant, jail)
            .await
            .unwrap();
        if let Some(u) = list
            .iter()
            .find(|u| u.file_name == name && u.state != "pending")
        {
            return (u.state.clone(), u.error.clone());
        }
        assert!(Instant::now() < deadline, "upload {name} was never written");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn uploads_land_in_the_jail_never_on_the_host_and_respect_the_disk() {
    if !is_root() {
        return;
    }
    let app = TestApp::spawn().await;
    let node = Node::new(&app.db_url);
    wait_node(&app.pool, &node.name).await;
    let plan = plans::by_name(&app.pool, "starter").await.unwrap();
    let tenant = tenants::create(
        &app.pool,
        &TenantSlug::parse("files").unwrap(),
        "Files",
        plan.id,
    )
    .await
    .unwrap()
    .id;
    let password = app
        .create_user("web@files.test", Role::Customer, Some(tenant))
        .await;
    let client = new_client();
    app.sign_in(&client, "web@files.test", &password).await;
    let jail = jails::create(
        &app.pool,
        tenant,
        &NewJail {
            name: JailName::parse("site").unwrap(),
            image: "busybox".into(),
            kind: JailKind::System,
            command: vec![],
            limits: Limits {
                cpu_millicores: 250,
                memory_bytes: 64 << 20,
                pids: 32,
                disk_bytes: 16 << 20,
                ..Limits::default()
            },
        },
    )
    .await
    .unwrap();
    wait_observed(&app.pool, tenant, jail.id, ObservedState::Running).await;
    let engine = node.engine();
    let Some(stockade_jail::JailStatus::Running { pid }) =
        engine.status(&jail.host_name()).unwrap()
    else {
        panic!()
    };
    let jail_root = std::path::PathBuf::from(format!("/proc/{pid}/root"));

    let page = upload(
        &app,
        &client,
        jail.id,
        "index.html",
        b"<h1>hello</h1>".to_vec(),
    )
    .await;
    assert!(page.contains("index.html uploaded"));
    assert_eq!(
        wait_upload(&app, tenant, jail.id, "index.html").await,
        ("written".into(), None)
    );
    assert_eq!(
        std::fs::read(jail_root.join("srv/www/index.html")).unwrap(),
        b"<h1>hello</h1>"
    );

    // A symlink planted in the site folder cannot steer the write to the host.
    let marker =
        std::env::temp_dir().join(format!("stockade-upload-marker-{}", std::process::id()));
    std::fs::write(&marker, "host file").unwrap();
    // Planted by the tenant, from inside: in a jail with a user namespace
    // host root has no id to make files with.
    let code = engine
        .exec(
            &jail.host_name(),
            &[
                "ln".into(),
                "-s".into(),
                marker.display().to_string(),
                "/srv/www/evil".into(),
            ],
        )
        .unwrap();
    assert_eq!(code, 0);
    assert!(
        std::fs::symlink_metadata(jail_root.join("srv/www/evil"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    upload(&app, &client, jail.id, "evil", b"jail data".to_vec()).await;
    assert_eq!(
        wait_upload(&app, tenant, jail.id, "evil").await.0,
        "failed",
        "O_NOFOLLOW refuses the link"
    );
    assert_eq!(
        std::fs::read_to_string(&marker).unwrap(),
        "host file",
        "the host file is untouched"
    );
    std::fs::remove_file(&marker).unwrap();

    // Names that are paths are refused before anything is stored.
    let page = upload(&app, &client, jail.id, ".htaccess", b"x".to_vec()).await;
    assert!(page.contains("Upload refused"), "hidden names are refused");

    // The jail's disk quota holds: a file bigger than what is left fails cleanly.
    for name in ["big1.bin", "big2.bin", "big3.bin"] {
        upload(&app, &client, jail.id, name, vec![7u8; 7 << 20]).await;
    }
    assert_eq!(
        wait_upload(&app, tenant, jail.id, "big1.bin").await.0,
        "written"
    );
    assert_eq!(
        wait_upload(&app, tenant, jail.id, "big2.bin").await.0,
        "written"
    );
    let third = wait_upload(&app, tenant, jail.id, "big3.bin").await;
    assert_eq!(
        third,
        ("failed".into(), Some("the jail's disk is full".into())),
        "16M volume holds two 7M files, not three"
    );
    assert!(
        !jail_root.join("srv/www/big3.bin").exists(),
        "no partial file is left"
    );

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

/// A tenant on `plan` with a signed-in customer.
async fn customer(app: &TestApp, slug: &str, plan: &str) -> (uuid::Uuid, reqwest::Client) {
    let plan = plans::by_name(&app.pool, plan).await.unwrap();
    let tenant = tenants::create(&app.pool, &TenantSlug::parse(slug).unwrap(), slug, plan.id)
        .await
        .unwrap()
        .id;
    let email = format!("web@{slug}.test");
    let password = app.create_user(&email, Role::Customer, Some(tenant)).await;
    let client = new_client();
    app.sign_in(&client, &email, &password).await;
    (tenant, client)
}

fn site_jail(name: &str, disk_bytes: u64) -> NewJail {
    NewJail {
        name: JailName::parse(name).unwrap(),
        image: "busybox".into(),
        kind: JailKind::System,
        command: vec![],
        limits: Limits {
            cpu_millicores: 250,
            memory_bytes: 64 << 20,
            pids: 32,
            disk_bytes,
            ..Limits::default()
        },
    }
}

/// The jail's root as the host sees it, while it runs.
fn jail_root(node: &Node, jail: &jails::Jail) -> std::path::PathBuf {
    let Some(stockade_jail::JailStatus::Running { pid }) =
        node.engine().status(&jail.host_name()).unwrap()
    else {
        panic!("the jail does not run")
    };
    std::path::PathBuf::from(format!("/proc/{pid}/root"))
}

#[tokio::test]
async fn a_fifo_or_link_at_the_upload_name_is_refused_and_the_agent_keeps_working() {
    if !is_root() {
        return;
    }
    let app = TestApp::spawn().await;
    let node = Node::new(&app.db_url);
    wait_node(&app.pool, &node.name).await;
    let (tenant, client) = customer(&app, "fifo", "starter").await;
    let jail = jails::create(&app.pool, tenant, &site_jail("site", 16 << 20))
        .await
        .unwrap();
    wait_observed(&app.pool, tenant, jail.id, ObservedState::Running).await;
    let www = jail_root(&node, &jail).join("srv/www");
    // What a tenant can make in its own site folder, from inside: a FIFO
    // nobody reads (opening it for writing would wait for ever) and a link.
    let code = node
        .engine()
        .exec(
            &jail.host_name(),
            &[
                "sh".into(),
                "-c".into(),
                "mkdir -p /srv/www && mkfifo /srv/www/pipe && ln -s index.html /srv/www/link"
                    .into(),
            ],
        )
        .unwrap();
    assert_eq!(code, 0);

    upload(&app, &client, jail.id, "pipe", b"data".to_vec()).await;
    assert_eq!(
        wait_upload(&app, tenant, jail.id, "pipe").await,
        (
            "failed".into(),
            Some("pipe is not a regular file (a FIFO); nothing was written".into())
        )
    );
    upload(&app, &client, jail.id, "link", b"data".to_vec()).await;
    assert_eq!(
        wait_upload(&app, tenant, jail.id, "link").await,
        (
            "failed".into(),
            Some("link is not a regular file (a symbolic link); nothing was written".into())
        )
    );
    // The customer reads why on the jail page.
    let page = client
        .get(app.url(&format!("/jails/{}", jail.id)))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("failed: pipe is not a regular file (a FIFO); nothing was written"),
        "{page}"
    );
    // The agent goes on: the next upload is written, into a folder that
    // holds exactly what the tenant made plus that file (no temporary files).
    upload(&app, &client, jail.id, "index.html", b"<p>ok</p>".to_vec()).await;
    assert_eq!(
        wait_upload(&app, tenant, jail.id, "index.html").await,
        ("written".into(), None)
    );
    assert_eq!(std::fs::read(www.join("index.html")).unwrap(), b"<p>ok</p>");
    let mut names: Vec<String> = std::fs::read_dir(&www)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["index.html", "link", "pipe"]);
    use std::os::unix::fs::FileTypeExt;
    assert!(
        std::fs::symlink_metadata(www.join("pipe"))
            .unwrap()
            .file_type()
            .is_fifo()
    );
    assert!(
        std::fs::symlink_metadata(www.join("link"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
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

#[tokio::test]
async fn uploads_wait_for_a_stopped_jail_within_the_tenant_limits() {
    if !is_root() {
        return;
    }
    use stockade_store::uploads::{MAX_PENDING_BYTES, MAX_PENDING_UPLOADS};
    let app = TestApp::spawn().await;
    let node = Node::new(&app.db_url);
    wait_node(&app.pool, &node.name).await;
    let (tenant, client) = customer(&app, "waiting", "business").await;
    let jail = jails::create(&app.pool, tenant, &site_jail("site", 128 << 20))
        .await
        .unwrap();
    jails::set_desired(
        &app.pool,
        tenant,
        jail.id,
        stockade_domain::DesiredState::Stopped,
    )
    .await
    .unwrap();
    wait_observed(&app.pool, tenant, jail.id, ObservedState::Stopped).await;

    // Nine 7 MiB files wait for the stopped jail: 63 of the 64 MiB allowed.
    assert_eq!(MAX_PENDING_BYTES, 64 << 20);
    for i in 0..9 {
        let page = upload(
            &app,
            &client,
            jail.id,
            &format!("big{i}.bin"),
            vec![1u8; 7 << 20],
        )
        .await;
        assert!(page.contains("once the jail runs"), "{page}");
    }
    // Two more MiB would pass the byte limit: refused, with the reason.
    let page = upload(&app, &client, jail.id, "over.bin", vec![2u8; 2 << 20]).await;
    assert!(
        page.contains("Upload of over.bin refused: uploads waiting to be written would come to 65 MiB, over the 64 MiB allowed (63 MiB are waiting)"),
        "{page}"
    );
    // Small files are taken up to the count limit, and not one more.
    let small = usize::try_from(MAX_PENDING_UPLOADS).unwrap() - 9;
    for i in 0..small {
        upload(&app, &client, jail.id, &format!("s{i}.txt"), b"x".to_vec()).await;
    }
    let page = upload(&app, &client, jail.id, "one-more.txt", b"x".to_vec()).await;
    assert!(
        page.contains("Upload of one-more.txt refused: 100 uploads are still waiting to be written (at most 100)"),
        "{page}"
    );
    // Nothing accepted was lost or failed; nothing refused was stored.
    let states: Vec<(String, String)> =
        sqlx::query_as("SELECT file_name, state FROM jail_uploads WHERE tenant_id = $1")
            .bind(tenant)
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(states.len(), 100);
    assert!(states.iter().all(|(_, s)| s == "pending"), "{states:?}");
    assert!(
        !states
            .iter()
            .any(|(n, _)| n == "over.bin" || n == "one-more.txt")
    );

    // Once the jail runs, every waiting upload is written.
    jails::set_desired(
        &app.pool,
        tenant,
        jail.id,
        stockade_domain::DesiredState::Running,
    )
    .await
    .unwrap();
    let running = wait_observed(&app.pool, tenant, jail.id, ObservedState::Running).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let states: Vec<(String, Option<String>)> =
            sqlx::query_as("SELECT state, error FROM jail_uploads WHERE tenant_id = $1")
                .bind(tenant)
                .fetch_all(&app.pool)
                .await
                .unwrap();
        if states.iter().all(|(s, _)| s != "pending") {
            assert!(
                states.iter().all(|(s, e)| s == "written" && e.is_none()),
                "{states:?}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "uploads were never written");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let www = jail_root(&node, &running).join("srv/www");
    assert_eq!(
        std::fs::metadata(www.join("big8.bin")).unwrap().len(),
        7 << 20
    );
    assert_eq!(std::fs::read(www.join("s0.txt")).unwrap(), b"x");
    // With nothing waiting, uploads are taken again.
    let page = upload(&app, &client, jail.id, "over.bin", vec![2u8; 2 << 20]).await;
    assert!(page.contains("over.bin uploaded"), "{page}");
    assert_eq!(
        wait_upload(&app, tenant, jail.id, "over.bin").await,
        ("written".into(), None)
    );
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
