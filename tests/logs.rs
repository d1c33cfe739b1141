//! A jail's output and a console in it: read from (and typed into) its
//! node's agent on single-use tickets the web tier mints, in the panel (the
//! last lines, a live tail, a download, a shell) and through the API. Needs
//! root; without it the tests return.

mod common;

use std::time::{Duration, Instant};

use common::agent::{Node, is_root, wait_node, wait_observed};
use common::{TestApp, new_client};
use stockade_domain::{JailKind, JailName, Limits, ObservedState, Role, TenantSlug};
use stockade_store::jails::{self, NewJail};
use stockade_store::tokens::{self, Scope};
use stockade_store::{plans, tenants};

fn counting_jail() -> NewJail {
    NewJail {
        name: JailName::parse("counter").unwrap(),
        image: "busybox".into(),
        kind: JailKind::System,
        command: vec![
            "sh".into(),
            "-c".into(),
            r#"i=0; while true; do i=$((i+1)); echo "line $i"; sleep 0.2; done"#.into(),
        ],
        limits: Limits {
            cpu_millicores: 250,
            memory_bytes: 64 << 20,
            pids: 32,
            disk_bytes: 32 << 20,
            ..Limits::default()
        },
    }
}

/// A node and the panel, a tenant with a running counting jail, and
/// another tenant.
struct World {
    // Before the panel: the node goes first.
    _node: Node,
    app: TestApp,
    tenant: uuid::Uuid,
    other: uuid::Uuid,
    jail: jails::Jail,
}

async fn world(own: &str, other: &str) -> World {
    let app = TestApp::spawn().await;
    let node = Node::new(&app.db_url);
    wait_node(&app.pool, &node.name).await;
    let plan = plans::by_name(&app.pool, "starter").await.unwrap();
    let mut ids = Vec::new();
    for slug in [own, other] {
        let t = tenants::create(&app.pool, &TenantSlug::parse(slug).unwrap(), slug, plan.id)
            .await
            .unwrap();
        ids.push(t.id);
    }
    let jail = jails::create(&app.pool, ids[0], &counting_jail())
        .await
        .unwrap();
    wait_observed(&app.pool, ids[0], jail.id, ObservedState::Running).await;
    World {
        _node: node,
        app,
        tenant: ids[0],
        other: ids[1],
        jail,
    }
}

/// The numbers of the `line N` lines of `text`.
fn numbers(text: &str) -> Vec<u64> {
    text.lines()
        .filter_map(|l| l.strip_prefix("line ")?.parse().ok())
        .collect()
}

#[tokio::test]
async fn a_jails_output_is_shown_followed_and_downloaded_only_by_its_tenant() {
    if !is_root() {
        eprintln!("SKIPPED: reading a jail's output needs root");
        return;
    }
    let World {
        _node: node,
        app,
        tenant,
        other,
        jail,
    } = world("loggy", "nosy").await;
    let password = app
        .create_user("c@loggy.test", Role::Customer, Some(tenant))
        .await;
    let customer = new_client();
    assert_eq!(
        app.sign_in(&customer, "c@loggy.test", &password)
            .await
            .status(),
        303
    );

    // The last lines.
    let url = app.url(&format!("/jails/{}/logs?tail=3", jail.id));
    let deadline = Instant::now() + Duration::from_secs(10);
    let last = loop {
        let res = customer.get(&url).send().await.unwrap();
        assert_eq!(res.status(), 200);
        let text = res.text().await.unwrap();
        if numbers(&text).len() == 3 {
            break numbers(&text);
        }
        assert!(Instant::now() < deadline, "three lines printed: {text:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(last[1], last[0] + 1, "consecutive lines: {last:?}");

    // Followed: lines printed after the request arrive on the same answer.
    let mut res = customer
        .get(app.url(&format!("/jails/{}/logs?tail=1&follow=1", jail.id)))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while numbers(&seen).len() < 4 {
        assert!(Instant::now() < deadline, "followed lines: {seen:?}");
        let chunk = tokio::time::timeout(Duration::from_secs(5), res.chunk())
            .await
            .expect("output keeps coming")
            .unwrap()
            .expect("the answer stays open while following");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    let followed = numbers(&seen);
    assert!(
        followed.windows(2).all(|w| w[1] == w[0] + 1),
        "{followed:?}"
    );
    assert!(followed[0] >= last[2], "{followed:?} after {last:?}");
    drop(res);

    // Downloaded as a file.
    let res = customer
        .get(app.url(&format!("/jails/{}/logs?download=1", jail.id)))
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.headers()["content-disposition"],
        "attachment; filename=\"counter.log\""
    );
    assert!(numbers(&res.text().await.unwrap()).len() >= 4);

    // The API: the tenant's token reads it, another tenant's does not.
    let (_, own) = tokens::create(&app.pool, "t", &[Scope::JailsRead], Some(tenant))
        .await
        .unwrap();
    let (_, foreign) = tokens::create(&app.pool, "n", &[Scope::JailsRead], Some(other))
        .await
        .unwrap();
    use secrecy::ExposeSecret;
    let api = |token: &str, query: &str| {
        new_client()
            .get(app.url(&format!(
                "/api/v1/tenants/{tenant}/jails/{}/logs{query}",
                jail.id
            )))
            .bearer_auth(token.to_owned())
            .send()
    };
    let res = api(own.expose_secret(), "?tail=2").await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(numbers(&res.text().await.unwrap()).len(), 2);
    let res = api(own.expose_secret(), "?tail=99999").await.unwrap();
    assert_eq!(res.status(), 422);
    assert!(res.text().await.unwrap().contains("\"field\":\"tail\""));
    let res = api(foreign.expose_secret(), "?tail=2").await.unwrap();
    assert!(
        matches!(res.status().as_u16(), 403 | 404),
        "{}",
        res.status()
    );
    // Another tenant's customer gets nothing from the panel either.
    let pw = app
        .create_user("n@nosy.test", Role::Customer, Some(other))
        .await;
    let nosy = new_client();
    app.sign_in(&nosy, "n@nosy.test", &pw).await;
    let res = nosy.get(&url).send().await.unwrap();
    assert_eq!(res.status(), 404);

    // The node's endpoint answers only on a fresh ticket, once.
    let endpoint: String = sqlx::query_scalar("SELECT log_endpoint FROM nodes WHERE name = $1")
        .bind(&node.name)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let direct = format!("http://{endpoint}/log?tail=1");
    assert_eq!(
        new_client().get(&direct).send().await.unwrap().status(),
        401
    );
    let (_, ticket) = stockade_store::logs::mint(
        &app.pool,
        tenant,
        jail.id,
        stockade_store::logs::TicketKind::Output,
    )
    .await
    .unwrap()
    .unwrap();
    let with = || {
        new_client()
            .get(&direct)
            .header("authorization", format!("Ticket {ticket}"))
            .send()
    };
    assert_eq!(with().await.unwrap().status(), 200);
    assert_eq!(with().await.unwrap().status(), 401, "a ticket is used once");

    // A deleted jail has no output to show.
    jails::set_desired(
        &app.pool,
        tenant,
        jail.id,
        stockade_domain::DesiredState::Deleted,
    )
    .await
    .unwrap();
    assert_eq!(customer.get(&url).send().await.unwrap().status(), 404);
    wait_observed(&app.pool, tenant, jail.id, ObservedState::Deleted).await;
}

/// The session cookie a sign-in sets, as a `Cookie` header's value.
async fn session_cookie(app: &TestApp, email: &str, password: &str) -> String {
    let client = new_client();
    let res = app.sign_in(&client, email, password).await;
    assert_eq!(res.status(), 303);
    res.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok()?.split(';').next().map(str::to_owned))
        .collect::<Vec<_>>()
        .join("; ")
}

/// A console's WebSocket handshake as a plain request: its status.
async fn handshake_status(app: &TestApp, path: &str, cookie: &str, origin: Option<&str>) -> u16 {
    let mut req = reqwest::Client::new()
        .get(app.url(path))
        .header("cookie", cookie)
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==");
    if let Some(o) = origin {
        req = req.header("origin", o);
    }
    req.send().await.unwrap().status().as_u16()
}

#[tokio::test]
async fn a_console_runs_a_shell_in_the_jail_for_its_tenant_only_and_is_recorded() {
    if !is_root() {
        eprintln!("SKIPPED: a console needs root");
        return;
    }
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest};
    let World {
        _node,
        app,
        tenant,
        other,
        jail,
    } = world("shelly", "peeky").await;
    let pw = app
        .create_user("c@shelly.test", Role::Customer, Some(tenant))
        .await;
    let cookie = session_cookie(&app, "c@shelly.test", &pw).await;
    let origin = app.url("").trim_end_matches('/').to_owned();
    let path = format!("/jails/{}/console", jail.id);

    // Refused: another site's page, another tenant's customer.
    assert_eq!(handshake_status(&app, &path, &cookie, None).await, 403);
    assert_eq!(
        handshake_status(&app, &path, &cookie, Some("http://evil.test")).await,
        403
    );
    let pw2 = app
        .create_user("p@peeky.test", Role::Customer, Some(other))
        .await;
    let nosy = session_cookie(&app, "p@peeky.test", &pw2).await;
    assert_eq!(
        handshake_status(&app, &path, &nosy, Some(&origin)).await,
        404
    );

    // A shell in the jail: what is typed runs there, and the answer comes back.
    let mut req = format!(
        "{}?cols=100&rows=30",
        app.url(&path).replacen("http://", "ws://", 1)
    )
    .into_client_request()
    .unwrap();
    req.headers_mut().insert("cookie", cookie.parse().unwrap());
    req.headers_mut().insert("origin", origin.parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("the console opens");
    ws.send(Message::Binary(
        "echo \"in $(hostname) as $(id -u)\"; stty size\n".into(),
    ))
    .await
    .unwrap();
    let mut screen = String::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(screen.contains("in counter as 0\r\n") && screen.contains("30 100")) {
        assert!(Instant::now() < deadline, "the shell answered: {screen:?}");
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
            Ok(Some(Ok(Message::Binary(b)))) => screen.push_str(&String::from_utf8_lossy(&b)),
            Ok(Some(Ok(_))) => {}
            other => panic!("the console ended early: {other:?} after {screen:?}"),
        }
    }
    // `exit` ends the shell, and with it the session.
    ws.send(Message::Binary("exit\n".into())).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let reason = loop {
        assert!(Instant::now() < deadline, "the console closed");
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
            Ok(Some(Ok(Message::Close(frame)))) => break frame.map(|f| f.reason.to_string()),
            Ok(Some(Ok(_))) => {}
            other => panic!("no close: {other:?}"),
        }
    };
    assert_eq!(reason.as_deref(), Some("the shell ended"));
    // Its start and end are on the record, never what was typed.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let logged: Vec<(String, serde_json::Value)> = sqlx::query_as(
            "SELECT action, details FROM audit_log WHERE action LIKE 'console.%' ORDER BY id",
        )
        .fetch_all(&app.pool)
        .await
        .unwrap();
        if logged.len() == 2 {
            assert_eq!(logged[0].0, "console.open");
            assert_eq!(logged[1].0, "console.close");
            assert_eq!(logged[1].1["ended"], "the shell ended");
            assert!(
                !logged
                    .iter()
                    .any(|(_, d)| d.to_string().contains("hostname"))
            );
            break;
        }
        assert!(Instant::now() < deadline, "{logged:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A stopped jail has no console.
    jails::set_desired(
        &app.pool,
        tenant,
        jail.id,
        stockade_domain::DesiredState::Stopped,
    )
    .await
    .unwrap();
    wait_observed(&app.pool, tenant, jail.id, ObservedState::Stopped).await;
    assert_eq!(
        handshake_status(&app, &path, &cookie, Some(&origin)).await,
        409
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
