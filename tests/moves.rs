//! Moving a jail between two nodes on this machine (each with its own state
//! folder, bridge and network), through a backup target they share: the
//! same page is served before and after the move, its published port
//! follows, the source's copy is removed once the jail runs on its new
//! node, and a refused move leaves the jail as it was. Then the node it
//! moved to is drained and the jail comes back. Needs root; without it the
//! test returns.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::agent::{Node, is_root, wait_node, wait_observed};
use common::{TestApp, page_at};
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use stockade_domain::{DesiredState, JailKind, JailName, Limits, ObservedState, TenantSlug};
use stockade_store::jails::{self, Jail, NewJail};
use stockade_store::ports::NewPort;
use stockade_store::tokens::{self, Scope};
use stockade_store::{plans, tenants};
use uuid::Uuid;

fn address(j: &Jail) -> SocketAddr {
    SocketAddr::new(j.address.as_deref().unwrap().parse().unwrap(), 80)
}

/// Waits until the jail runs on `node`, converged and its move done.
async fn wait_on(app: &TestApp, tenant: Uuid, jail: Uuid, node: Uuid) -> Jail {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let j = jails::get(&app.pool, tenant, jail).await.unwrap();
        if j.node_id == Some(node)
            && j.move_to_node.is_none()
            && j.moved_from_node.is_none()
            && j.observed_state == ObservedState::Running
            && j.observed_generation >= j.generation
            && j.address.is_some()
        {
            return j;
        }
        assert!(
            Instant::now() < deadline,
            "the jail never ran on its new node: {j:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until `node` has no trace of the jail left.
async fn wait_gone(node: &Node, jail: &Jail) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while node.engine().status(&jail.host_name()).unwrap().is_some() {
        assert!(
            Instant::now() < deadline,
            "the source node kept the moved jail's copy"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_jail_moves_between_nodes_and_serves_the_same_page() {
    if !is_root() {
        return;
    }
    let app = TestApp::spawn().await;
    let shared = tempfile::tempdir().unwrap();
    let target = shared.path().join("backups").display().to_string();
    let env = [("STOCKADE_BACKUP_TARGET", target.as_str())];
    let a = Node::with_network_and_env(&app.db_url, "10.141.0.1/24", &env);
    let b = Node::with_network_and_env(&app.db_url, "10.142.0.1/24", &env);
    wait_node(&app.pool, &a.name).await;
    wait_node(&app.pool, &b.name).await;
    let ids: Vec<(Uuid, String)> = stockade_store::nodes::list(&app.pool)
        .await
        .unwrap()
        .into_iter()
        .map(|n| (n.id, n.name))
        .collect();
    let id_of = |n: &Node| ids.iter().find(|(_, name)| *name == n.name).unwrap().0;
    let plan = plans::by_name(&app.pool, "starter").await.unwrap();
    let tenant = tenants::create(
        &app.pool,
        &TenantSlug::parse("mover").unwrap(),
        "Mover",
        plan.id,
    )
    .await
    .unwrap()
    .id;
    let jail = jails::create(
        &app.pool,
        tenant,
        &NewJail {
            name: JailName::parse("site").unwrap(),
            image: "busybox".into(),
            kind: JailKind::System,
            command: vec![
                "sh".into(),
                "-c".into(),
                "mkdir -p /srv/site && [ -f /srv/site/index.html ] || echo \"made on $(hostname) $RANDOM$RANDOM\" > /srv/site/index.html; exec httpd -f -p 80 -h /srv/site".into(),
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
    let jail = wait_observed(&app.pool, tenant, jail.id, ObservedState::Running).await;
    let (from, to) = if jail.node_id == Some(id_of(&a)) {
        (&a, &b)
    } else {
        (&b, &a)
    };
    let before = page_at(address(&jail));
    assert!(before.starts_with("made on site"), "{before}");
    let published = stockade_store::ports::publish(
        &app.pool,
        tenant,
        jail.id,
        NewPort {
            protocol: stockade_domain::Protocol::Tcp,
            jail_port: 80,
            host_port: None,
        },
    )
    .await
    .unwrap();

    let domain = stockade_store::domains::attach(
        &app.pool,
        tenant,
        jail.id,
        &stockade_store::domains::NewDomain {
            name: stockade_domain::DomainName::parse("shop.move.test").unwrap(),
            www: false,
            jail_port: 80,
            proof_required: false,
        },
    )
    .await
    .unwrap();
    // The node the jail is on routes the domain to its address, and only it.
    let routes_to = |node: Uuid| {
        let pool = app.pool.clone();
        async move {
            stockade_store::domains::routes_for_node(&pool, node)
                .await
                .unwrap()
                .into_iter()
                .filter(|r| r.domain_id == domain.id)
                .map(|r| r.target)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        routes_to(id_of(from)).await,
        [stockade_store::domains::Target::Jail {
            address: jail.address.clone().unwrap(),
            port: 80
        }]
    );
    assert!(routes_to(id_of(to)).await.is_empty());

    // The provider's API: bad targets are refused and change nothing.
    let (_, token) = tokens::create(&app.pool, "provider", &[Scope::TenantsWrite], None)
        .await
        .unwrap();
    let (_, bound) = tokens::create(&app.pool, "tenant", &[Scope::TenantsWrite], Some(tenant))
        .await
        .unwrap();
    let api = reqwest::Client::new();
    let url = app.url(&format!("/api/v1/tenants/{tenant}/jails/{}/move", jail.id));
    let ask = |token: String, body: Value| {
        let api = api.clone();
        let url = url.clone();
        async move {
            api.post(url)
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .unwrap()
        }
    };
    let res = ask(bound.expose_secret().to_owned(), json!({ "node": to.name })).await;
    assert_eq!(res.status(), 403, "a tenant's token moves nothing");
    let res = ask(
        token.expose_secret().to_owned(),
        json!({ "node": "nowhere" }),
    )
    .await;
    assert_eq!(res.status(), 422);
    let res = ask(
        token.expose_secret().to_owned(),
        json!({ "node": from.name }),
    )
    .await;
    assert_eq!(res.status(), 422, "the jail's own node");
    // A node without room: refused, the jail untouched.
    sqlx::query("UPDATE nodes SET max_jails = 0 WHERE name = $1")
        .bind(&to.name)
        .execute(&app.pool)
        .await
        .unwrap();
    let res = ask(token.expose_secret().to_owned(), json!({ "node": to.name })).await;
    assert_eq!(res.status(), 503);
    let err: Value = res.json().await.unwrap();
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("holds as many jails"),
        "{err}"
    );
    sqlx::query("UPDATE nodes SET max_jails = 1000 WHERE name = $1")
        .bind(&to.name)
        .execute(&app.pool)
        .await
        .unwrap();
    let still = jails::get(&app.pool, tenant, jail.id).await.unwrap();
    assert_eq!((still.node_id, still.move_to_node), (jail.node_id, None));
    assert_eq!(page_at(address(&still)), before);

    // Moved: the same page from its new node, its port re-pointed there.
    let res = ask(token.expose_secret().to_owned(), json!({ "node": to.name })).await;
    assert_eq!(res.status(), 202);
    // The move is cold, and the answer says why in the node's words (this
    // host's CRIU is missing or cannot run on its kernel).
    let answer: Value = res.json().await.unwrap();
    assert_eq!(answer["live"], false, "{answer}");
    let because = answer["cold_because"].as_str().unwrap();
    assert!(because.contains("CRIU"), "{answer}");
    let nodes: Vec<String> = stockade_store::nodes::list(&app.pool)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|n| n.cold_moves)
        .collect();
    assert_eq!(nodes.len(), 2, "both nodes said why they move cold");
    let res = ask(token.expose_secret().to_owned(), json!({ "node": to.name })).await;
    assert_eq!(res.status(), 409, "moving already");
    let moved = wait_on(&app, tenant, jail.id, id_of(to)).await;
    assert_eq!(
        page_at(address(&moved)),
        before,
        "the same page after the move"
    );
    let ports = stockade_store::ports::for_jail(&app.pool, tenant, jail.id)
        .await
        .unwrap();
    assert_eq!(ports.len(), 1);
    assert_eq!(ports[0].node_id, id_of(to));
    assert_eq!(ports[0].jail_port, published.jail_port);
    wait_gone(from, &jail).await;
    // Its domain follows it: routed by its new node to its new address.
    assert_eq!(
        routes_to(id_of(to)).await,
        [stockade_store::domains::Target::Jail {
            address: moved.address.clone().unwrap(),
            port: 80
        }]
    );
    assert!(routes_to(id_of(from)).await.is_empty());

    // The node it moved to is drained: the jail goes back, the page with it.
    let drained = stockade_store::moves::drain(&app.pool, id_of(to), None)
        .await
        .unwrap();
    assert_eq!(drained.len(), 1);
    assert_eq!(drained[0].to_node, Some(id_of(from)));
    let back = wait_on(&app, tenant, jail.id, id_of(from)).await;
    assert_eq!(page_at(address(&back)), before);
    wait_gone(to, &jail).await;
    // A drained node takes no new jails.
    let other = jails::create(
        &app.pool,
        tenant,
        &NewJail {
            name: JailName::parse("other").unwrap(),
            image: "busybox".into(),
            kind: JailKind::System,
            command: vec!["sleep".into(), "1000".into()],
            limits: Limits {
                cpu_millicores: 100,
                memory_bytes: 32 << 20,
                pids: 16,
                disk_bytes: 16 << 20,
                ..Limits::default()
            },
        },
    )
    .await
    .unwrap();
    assert_eq!(other.node_id, Some(id_of(from)));
    stockade_store::moves::undrain(&app.pool, id_of(to))
        .await
        .unwrap();

    for j in [jail.id, other.id] {
        jails::set_desired(&app.pool, tenant, j, DesiredState::Deleted)
            .await
            .unwrap();
    }
    for j in [jail.id, other.id] {
        wait_observed(&app.pool, tenant, j, ObservedState::Deleted).await;
    }
}
