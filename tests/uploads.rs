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
