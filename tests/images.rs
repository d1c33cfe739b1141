//! OCI images end to end, against a real registry on loopback with token
//! authentication: staff add a registry image through the API with an
//! account, the node pulls it and says so, a customer's jail made from it
//! runs its entrypoint and cmd with its env, working folder and user; an
//! image not offered is refused to customers; bad pulls (wrong account,
//! unknown tag, a broken registry, a layer escaping with `..`, a device
//! node) each fail with their reason and leave nothing on the node; an
//! image taken out of the catalogue stays while a jail uses it and goes
//! when none does. Needs root; without it the test returns.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::agent::{Node, is_root, wait_node, wait_observed};
use common::registry::{self, Entry, TestRegistry};
use common::{TestApp, new_client, page_at};
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use stockade_domain::{DesiredState, ObservedState, Role, TenantSlug};
use stockade_store::jails;
use stockade_store::tokens::{self, Scope};
use stockade_store::{plans, tenants};
use uuid::Uuid;

struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    async fn send(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        let text = res.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }
}

/// Waits until the node's pull of `name` is recorded; the record.
async fn pull_of(api: &Api, name: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, image) = api
            .send(
                reqwest::Method::GET,
                &format!("/api/v1/images/{name}"),
                None,
            )
            .await;
        assert_eq!(status, 200, "{image}");
        if let Some(n) = image["nodes"].as_array().and_then(|n| n.first()) {
            return n.clone();
        }
        assert!(Instant::now() < deadline, "no node pulled {name}: {image}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Nothing of a refused image on the node: no tree, no configuration,
/// no staging or half-built folder.
fn nothing_left(node: &Node, name: &str) {
    let engine = node.engine();
    assert!(!engine.images().unwrap().contains(&name.to_owned()));
    let dir = &engine.config().image_dir;
    let left: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(name))
        .collect();
    assert!(left.is_empty(), "left on the node: {left:?}");
}

#[tokio::test]
async fn registry_images_are_pulled_offered_run_and_removed() {
    if !is_root() {
        return;
    }
    let registry = TestRegistry::start();
    let base = registry::busybox_layer();
    let cmd = "echo \"$GREETING $(busybox id -u):$(busybox id -g) $(pwd)\" > index.html && exec busybox httpd -f -p 8080 -h .";
    registry
        .push(
            "site/web:1",
            vec![base.clone()],
            &registry::config(
                &["/bin/busybox", "sh", "-c"],
                &[cmd],
                &["PATH=/bin", "GREETING=hello-from-oci"],
                "/srv/www",
                "www",
            ),
        )
        .await;
    let plain = registry::config(&[], &["/bin/sh"], &[], "", "");
    registry
        .push(
            "site/evil:1",
            vec![
                base.clone(),
                registry::layer(&[Entry::File("../../escaped", b"x", 0o644, 0)]),
            ],
            &plain,
        )
        .await;
    registry
        .push(
            "site/device:1",
            vec![registry::layer(&[Entry::Device("dev/mem")])],
            &plain,
        )
        .await;

    let app = TestApp::spawn().await;
    let node = Node::with_network(&app.db_url, "10.144.0.1/24");
    wait_node(&app.pool, &node.name).await;
    let (_, provider) = tokens::create(
        &app.pool,
        "provider",
        &[Scope::TenantsRead, Scope::TenantsWrite, Scope::JailsWrite],
        None,
    )
    .await
    .unwrap();
    let http = reqwest::Client::new();
    let api = Api {
        http: http.clone(),
        base: app.url(""),
        token: provider.expose_secret().to_owned(),
    };
    // A node publishes the key the password is sealed to when it starts.
    let deadline = Instant::now() + Duration::from_secs(10);
    while stockade_store::certificates::sealing_key(&app.pool)
        .await
        .unwrap()
        .is_none()
    {
        assert!(Instant::now() < deadline, "no node published its key");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Bad input is refused with the field named, and nothing is added.
    for (body, field) in [
        (
            json!({"name": "Bad Name", "reference": registry.reference("site/web:1")}),
            "name",
        ),
        (
            json!({"name": "x", "reference": "no registry here"}),
            "reference",
        ),
        (
            json!({"name": "x", "reference": registry.reference("site/web:1"), "registry_username": "u"}),
            "registry_password",
        ),
        (
            json!({"name": "x", "registry_username": "u", "registry_password": "p"}),
            "registry_username",
        ),
    ] {
        let (status, err) = api
            .send(reqwest::Method::POST, "/api/v1/images", Some(body))
            .await;
        assert_eq!(status, 422, "{err}");
        assert!(
            err["error"]["message"].as_str().unwrap().starts_with(field),
            "{err}"
        );
    }

    // The good image, with the registry's account: pulled and recorded.
    let (status, added) = api
        .send(
            reqwest::Method::POST,
            "/api/v1/images",
            Some(
                json!({"name": "web", "reference": registry.reference("site/web:1"),
                "registry_username": registry::USER, "registry_password": registry::PASSWORD,
                "offered": true}),
            ),
        )
        .await;
    assert_eq!(status, 201, "{added}");
    assert_eq!(added["registry_username"], registry::USER);
    assert!(added.get("registry_password").is_none(), "{added}");
    let (status, again) = api
        .send(
            reqwest::Method::POST,
            "/api/v1/images",
            Some(json!({"name": "web"})),
        )
        .await;
    assert_eq!(status, 409, "{again}");
    let pull = pull_of(&api, "web").await;
    assert_eq!(pull["state"], "ready", "{pull}");
    assert!(
        pull["digest"].as_str().unwrap().starts_with("sha256:"),
        "{pull}"
    );
    assert!(node.engine().images().unwrap().contains(&"web".to_owned()));

    // Bad pulls: each fails with its reason, and leaves nothing.
    for (name, reference, account, reason) in [
        (
            "wrongpw",
            registry.reference("site/web:1"),
            Some("not-the-password"),
            "401 Unauthorized",
        ),
        (
            "anonymous",
            registry.reference("site/web:1"),
            None,
            "401 Unauthorized",
        ),
        (
            "missing",
            registry.reference("site/web:404"),
            Some(registry::PASSWORD),
            "404",
        ),
        (
            "broken",
            format!("{}/site/web:1", registry.broken_host),
            None,
            "500",
        ),
        (
            "evil",
            registry.reference("site/evil:1"),
            Some(registry::PASSWORD),
            "leads outside the image",
        ),
        (
            "device",
            registry.reference("site/device:1"),
            Some(registry::PASSWORD),
            "device node",
        ),
    ] {
        let mut body = json!({"name": name, "reference": reference});
        if let Some(password) = account {
            body["registry_username"] = json!(registry::USER);
            body["registry_password"] = json!(password);
        }
        let (status, added) = api
            .send(reqwest::Method::POST, "/api/v1/images", Some(body))
            .await;
        assert_eq!(status, 201, "{added}");
        let pull = pull_of(&api, name).await;
        assert_eq!(pull["state"], "failed", "{name}: {pull}");
        let error = pull["error"].as_str().unwrap();
        assert!(error.contains(reason), "{name}: {error} (wanted {reason})");
        nothing_left(&node, name);
    }

    // A customer's jail from the image runs its defaults.
    let plan = plans::by_name(&app.pool, "starter").await.unwrap();
    let tenant = tenants::create(
        &app.pool,
        &TenantSlug::parse("oci").unwrap(),
        "OCI",
        plan.id,
    )
    .await
    .unwrap()
    .id;
    let (_, own) = tokens::create(
        &app.pool,
        "customer",
        &[Scope::JailsWrite, Scope::JailsRead, Scope::TenantsRead],
        Some(tenant),
    )
    .await
    .unwrap();
    let customer = Api {
        http,
        base: app.url(""),
        token: own.expose_secret().to_owned(),
    };
    let (status, listed) = customer
        .send(reqwest::Method::GET, "/api/v1/images", None)
        .await;
    assert_eq!(status, 200);
    let names: Vec<&str> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["busybox", "web"],
        "offered images a node has: {listed}"
    );
    let jail_body = |name: &str, image: &str| {
        json!({"name": name, "image": image, "kind": "system",
            "limits": {"cpu_millicores": 250, "memory_bytes": 64 << 20, "pids": 32, "disk_bytes": 64 << 20}})
    };
    let jails_path = format!("/api/v1/tenants/{tenant}/jails");
    let (status, jail) = customer
        .send(
            reqwest::Method::POST,
            &jails_path,
            Some(jail_body("site", "web")),
        )
        .await;
    assert_eq!(status, 201, "{jail}");
    let jail_id: Uuid = jail["id"].as_str().unwrap().parse().unwrap();
    let running = wait_observed(&app.pool, tenant, jail_id, ObservedState::Running).await;
    let addr = SocketAddr::new(running.address.as_deref().unwrap().parse().unwrap(), 8080);
    assert_eq!(
        page_at(addr).trim(),
        "hello-from-oci 33:33 /srv/www",
        "the image's entrypoint and cmd ran as its user, in its folder, with its env"
    );

    // The customer's jail form offers it; the staff page shows the pulls.
    let email = "owner@oci.test";
    let password = app.create_user(email, Role::Customer, Some(tenant)).await;
    let client = new_client();
    app.sign_in(&client, email, &password).await;
    let form = client
        .get(app.url("/jails"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(form.contains(">web</option>"), "{form}");
    let staff_email = "admin@provider.test";
    let staff_password = app.create_user(staff_email, Role::Admin, None).await;
    let staff = new_client();
    app.sign_in(&staff, staff_email, &staff_password).await;
    let page = staff
        .get(app.url("/staff/images"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("leads outside the image"), "{page}");
    assert!(page.contains(&registry.reference("site/web:1")), "{page}");

    // Not offered: refused to the customer (its own jail keeps running),
    // still placed by the provider.
    let (status, _) = api
        .send(
            reqwest::Method::PATCH,
            "/api/v1/images/web",
            Some(json!({"offered": false})),
        )
        .await;
    assert_eq!(status, 200);
    let (status, err) = customer
        .send(
            reqwest::Method::POST,
            &jails_path,
            Some(jail_body("other", "web")),
        )
        .await;
    assert_eq!(status, 422, "{err}");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not offered"),
        "{err}"
    );
    let (status, listed) = customer
        .send(reqwest::Method::GET, "/api/v1/images", None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(listed["data"].as_array().unwrap().len(), 1, "{listed}");
    let (status, placed) = api
        .send(
            reqwest::Method::POST,
            &jails_path,
            Some(jail_body("staffs", "web")),
        )
        .await;
    assert_eq!(status, 201, "{placed}");
    let staffs: Uuid = placed["id"].as_str().unwrap().parse().unwrap();

    // Out of the catalogue: kept while jails use it, removed after.
    let (status, _) = api
        .send(reqwest::Method::DELETE, "/api/v1/images/web", None)
        .await;
    assert_eq!(status, 204);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        node.engine().images().unwrap().contains(&"web".to_owned()),
        "in use: kept"
    );
    for id in [jail_id, staffs] {
        jails::set_desired(&app.pool, tenant, id, DesiredState::Deleted)
            .await
            .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while node.engine().images().unwrap().contains(&"web".to_owned()) {
        assert!(
            Instant::now() < deadline,
            "the unused image was never removed"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    nothing_left(&node, "web");
    // Failed pulls of images taken out of the catalogue are forgotten too.
    let (status, _) = api
        .send(reqwest::Method::DELETE, "/api/v1/images/evil", None)
        .await;
    assert_eq!(status, 204);
    let left = sqlx::query_scalar::<_, i64>("SELECT count(*) FROM node_images WHERE image = 'web'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(left, 0, "the node forgot its pull");
    let deadline = Instant::now() + Duration::from_secs(30);
    while sqlx::query_scalar::<_, i64>("SELECT count(*) FROM node_images WHERE image = 'evil'")
        .fetch_one(&app.pool)
        .await
        .unwrap()
        > 0
    {
        assert!(
            Instant::now() < deadline,
            "a failed pull outlived its image"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while !jails::list_for_tenant(&app.pool, tenant)
        .await
        .unwrap()
        .is_empty()
    {
        assert!(Instant::now() < deadline, "the jails were never removed");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
