//! The panel's pages over real HTTP: every route × role × another tenant's ids.

mod common;

use common::{TestApp, hidden_field, new_client};
use stockade_domain::{JailKind, JailName, Limits, ObservedState, Role, TenantSlug};
use stockade_store::jails::{self, NewJail};
use stockade_store::{nodes, plans, tenants};
use uuid::Uuid;

struct World {
    app: TestApp,
    tenant_a: Uuid,
    tenant_b: Uuid,
    jail_a: Uuid,
    jail_b: Uuid,
    customer_a: reqwest::Client,
    operator: reqwest::Client,
    admin: reqwest::Client,
}

async fn signed_in(
    app: &TestApp,
    email: &str,
    role: Role,
    tenant: Option<Uuid>,
) -> reqwest::Client {
    let password = app.create_user(email, role, tenant).await;
    let client = new_client();
    let r = app.sign_in(&client, email, &password).await;
    assert_eq!(r.status(), 303, "{email} signs in");
    client
}

/// A node with room for everything, as a running agent registers it.
async fn register_node(app: &TestApp) {
    nodes::register(
        &app.pool,
        &nodes::NodeInfo {
            name: "n1".into(),
            cpus: 2,
            memory_bytes: 1 << 40,
            disk_bytes: 1 << 40,
            address_pool: None,
            agent_version: "t".into(),
            published_ports: stockade_store::nodes::DEFAULT_PUBLISHED_PORTS,
            cold_moves: "CRIU is not installed on this node".into(),
        },
    )
    .await
    .unwrap();
}

/// A small system jail named `name`.
fn small_jail(name: &str) -> NewJail {
    NewJail {
        name: JailName::parse(name).unwrap(),
        image: "busybox".into(),
        kind: JailKind::System,
        command: vec![],
        limits: Limits {
            cpu_millicores: 250,
            memory_bytes: 128 << 20,
            pids: 32,
            disk_bytes: 256 << 20,
            ..Limits::default()
        },
    }
}

async fn world() -> World {
    let app = TestApp::spawn().await;
    register_node(&app).await;
    let plan = plans::by_name(&app.pool, "starter").await.unwrap();
    let a = tenants::create(
        &app.pool,
        &TenantSlug::parse("alpha").unwrap(),
        "Alpha Ltd",
        plan.id,
    )
    .await
    .unwrap()
    .id;
    let b = tenants::create(
        &app.pool,
        &TenantSlug::parse("beta").unwrap(),
        "Beta Inc",
        plan.id,
    )
    .await
    .unwrap()
    .id;
    let jail = small_jail;
    let jail_a = jails::create(&app.pool, a, &jail("web")).await.unwrap().id;
    let jail_b = jails::create(&app.pool, b, &jail("secret"))
        .await
        .unwrap()
        .id;
    let customer_a = signed_in(&app, "a@alpha.test", Role::Customer, Some(a)).await;
    let operator = signed_in(&app, "op@provider.test", Role::Operator, None).await;
    let admin = signed_in(&app, "admin@provider.test", Role::Admin, None).await;
    World {
        app,
        tenant_a: a,
        tenant_b: b,
        jail_a,
        jail_b,
        customer_a,
        operator,
        admin,
    }
}

async fn csrf(client: &reqwest::Client, url: &str) -> String {
    let page = client.get(url).send().await.unwrap().text().await.unwrap();
    hidden_field(&page, "csrf_token").expect("page has a csrf token")
}

async fn status_of(client: &reqwest::Client, url: &str) -> u16 {
    client.get(url).send().await.unwrap().status().as_u16()
}

#[tokio::test]
async fn every_page_answers_each_role_as_it_should() {
    let w = world().await;
    let u = |p: String| w.app.url(&p);
    let anon = new_client();
    // (path, anonymous, customer of A, operator, admin)
    let cases: Vec<(String, u16, u16, u16, u16)> = vec![
        ("/".into(), 303, 303, 303, 303),
        ("/overview".into(), 303, 200, 403, 403),
        ("/jails".into(), 303, 200, 403, 403),
        (format!("/jails/{}", w.jail_a), 303, 200, 403, 403),
        (
            format!("/jails/{}?period=day", w.jail_a),
            303,
            200,
            403,
            403,
        ),
        (
            format!("/jails/{}?period=month", w.jail_a),
            303,
            200,
            403,
            403,
        ),
        (format!("/jails/{}/delete", w.jail_a), 303, 200, 403, 403),
        (format!("/jails/{}", w.jail_b), 303, 404, 403, 403),
        (format!("/jails/{}/delete", w.jail_b), 303, 404, 403, 403),
        ("/jails/not-a-uuid".into(), 303, 404, 403, 403),
        ("/account".into(), 303, 200, 200, 200),
        ("/staff/tenants".into(), 303, 403, 200, 200),
        (
            "/staff/tenants?q=alp&sort=memory&status=active&page=0".into(),
            303,
            403,
            200,
            200,
        ),
        (format!("/staff/tenants/{}", w.tenant_b), 303, 403, 200, 200),
        (
            format!("/staff/tenants/{}/suspend", w.tenant_b),
            303,
            403,
            200,
            200,
        ),
        (
            format!("/staff/tenants/{}/terminate", w.tenant_b),
            303,
            403,
            403,
            200,
        ),
        ("/staff/plans".into(), 303, 403, 200, 200),
        ("/staff/failing".into(), 303, 403, 200, 200),
        ("/staff/nodes".into(), 303, 403, 200, 200),
        ("/staff/audit?action=user.".into(), 303, 403, 200, 200),
    ];
    for (path, anon_s, cust_s, op_s, admin_s) in cases {
        assert_eq!(
            status_of(&anon, &u(path.clone())).await,
            anon_s,
            "anonymous {path}"
        );
        assert_eq!(
            status_of(&w.customer_a, &u(path.clone())).await,
            cust_s,
            "customer {path}"
        );
        assert_eq!(
            status_of(&w.operator, &u(path.clone())).await,
            op_s,
            "operator {path}"
        );
        assert_eq!(
            status_of(&w.admin, &u(path.clone())).await,
            admin_s,
            "admin {path}"
        );
    }
    // Another tenant's jail is invisible in lists too.
    let list = w
        .customer_a
        .get(u("/jails".into()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(list.contains("web") && !list.contains("secret"));
}

#[tokio::test]
async fn customers_cannot_act_on_another_tenants_jail() {
    let w = world().await;
    let token = csrf(&w.customer_a, &w.app.url("/jails")).await;
    for action in ["start", "stop", "restart", "delete"] {
        let r = w
            .customer_a
            .post(w.app.url(&format!("/jails/{}/{action}", w.jail_b)))
            .form(&[("csrf_token", token.as_str()), ("confirm", "yes")])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{action}");
    }
    let j = jails::get(&w.app.pool, w.tenant_b, w.jail_b).await.unwrap();
    assert_eq!(j.desired_state, stockade_domain::DesiredState::Running);
    assert_eq!(j.generation, 1, "untouched");
}

#[tokio::test]
async fn state_changing_posts_need_the_csrf_token() {
    let w = world().await;
    let r = w
        .customer_a
        .post(w.app.url(&format!("/jails/{}/stop", w.jail_a)))
        .form(&[("csrf_token", "forged")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = w
        .admin
        .post(w.app.url(&format!("/staff/tenants/{}/suspend", w.tenant_a)))
        .form(&[("confirm", "yes")])
        .send()
        .await
        .unwrap();
    assert!(r.status() == 400 || r.status() == 403, "{}", r.status());
    assert_eq!(
        tenants::get(&w.app.pool, w.tenant_a).await.unwrap().status,
        stockade_domain::TenantStatus::Active
    );
}

#[tokio::test]
async fn a_customer_creates_stops_and_deletes_a_jail() {
    let w = world().await;
    let token = csrf(&w.customer_a, &w.app.url("/jails")).await;
    let form = |name: &str, memory: &str| {
        vec![
            ("csrf_token", token.clone()),
            ("name", name.to_owned()),
            ("image", "busybox".into()),
            ("kind", "system".into()),
            ("command", String::new()),
            ("cpu", "250m".into()),
            ("memory", memory.to_owned()),
            ("pids", "32".into()),
            ("disk", "256M".into()),
        ]
    };
    let r = w
        .customer_a
        .post(w.app.url("/jails"))
        .form(&form("shop", "128M"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    let page = w
        .customer_a
        .get(w.app.url(&location))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("Jail shop created"), "flash shown");
    assert!(page.contains("<svg"), "charts are drawn");

    // Over quota: a clear message, the typed values kept, nothing created.
    let r = w
        .customer_a
        .post(w.app.url("/jails"))
        .form(&form("huge", "64G"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let page = r.text().await.unwrap();
    assert!(page.contains("memory quota exceeded"), "{page}");
    assert!(page.contains("value=\"huge\""));
    // Bad input: a clear message.
    let r = w
        .customer_a
        .post(w.app.url("/jails"))
        .form(&form("Bad_Name", "128M"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    assert!(r.text().await.unwrap().contains("may only contain a-z"));
    assert_eq!(
        jails::list_for_tenant(&w.app.pool, w.tenant_a)
            .await
            .unwrap()
            .len(),
        2
    );

    let id = location.trim_start_matches("/jails/");
    let r = w
        .customer_a
        .post(w.app.url(&format!("/jails/{id}/stop")))
        .form(&[("csrf_token", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    // Delete without confirming goes to the confirmation page.
    let r = w
        .customer_a
        .post(w.app.url(&format!("/jails/{id}/delete")))
        .form(&[("csrf_token", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["location"].to_str().unwrap(),
        format!("/jails/{id}/delete")
    );
    let r = w
        .customer_a
        .post(w.app.url(&format!("/jails/{id}/delete")))
        .form(&[("csrf_token", token.as_str()), ("confirm", "yes")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let deleted = jails::get(&w.app.pool, w.tenant_a, Uuid::parse_str(id).unwrap())
        .await
        .unwrap();
    assert_eq!(
        deleted.desired_state,
        stockade_domain::DesiredState::Deleted
    );
    assert!(
        stockade_store::audit::count_action(&w.app.pool, "jail.create")
            .await
            .unwrap()
            >= 1
    );
}

#[tokio::test]
async fn operators_suspend_but_only_admins_change_quotas_or_terminate() {
    let w = world().await;
    let detail = w.app.url(&format!("/staff/tenants/{}", w.tenant_b));
    let op_token = csrf(&w.operator, &detail).await;
    let r = w
        .operator
        .post(
            w.app
                .url(&format!("/staff/tenants/{}/overrides", w.tenant_b)),
        )
        .form(&[
            ("csrf_token", op_token.as_str()),
            ("cpu", ""),
            ("memory", "64M"),
            ("pids", ""),
            ("disk", ""),
            ("max_jails", ""),
            ("transfer", ""),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = w
        .operator
        .post(
            w.app
                .url(&format!("/staff/tenants/{}/terminate", w.tenant_b)),
        )
        .form(&[("csrf_token", op_token.as_str()), ("confirm", "yes")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = w
        .operator
        .post(w.app.url(&format!("/staff/tenants/{}/suspend", w.tenant_b)))
        .form(&[("csrf_token", op_token.as_str()), ("confirm", "yes")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(
        tenants::get(&w.app.pool, w.tenant_b).await.unwrap().status,
        stockade_domain::TenantStatus::Suspended
    );

    // The admin lowers the memory quota; the tenant's jail follows.
    let admin_token = csrf(&w.admin, &detail).await;
    let r = w
        .admin
        .post(
            w.app
                .url(&format!("/staff/tenants/{}/overrides", w.tenant_b)),
        )
        .form(&[
            ("csrf_token", admin_token.as_str()),
            ("cpu", ""),
            ("memory", "64M"),
            ("pids", ""),
            ("disk", ""),
            ("max_jails", ""),
            ("transfer", ""),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let page = w
        .admin
        .get(&detail)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("Quota overrides saved"));
    assert!(page.contains("value=\"64M\""));
    let j = jails::get(&w.app.pool, w.tenant_b, w.jail_b).await.unwrap();
    assert_eq!(j.limits.memory_bytes, 64 << 20);
    let audit = w
        .admin
        .get(w.app.url("/staff/audit?tenant=beta"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(audit.contains("tenant.suspend") && audit.contains("tenant.quota_override"));
}

#[tokio::test]
async fn admins_manage_plans_and_see_nodes() {
    let w = world().await;
    let token = csrf(&w.admin, &w.app.url("/staff/plans")).await;
    let fields = |name: &str, memory: &str| {
        vec![
            ("csrf_token", token.clone()),
            ("name", name.to_owned()),
            ("display_name", "Pro".to_owned()),
            ("cpu", "2".to_owned()),
            ("memory", memory.to_owned()),
            ("pids", "512".to_owned()),
            ("disk", "20G".to_owned()),
            ("max_jails", "5".to_owned()),
            ("transfer", "500G".to_owned()),
            ("published_ports", "2".to_owned()),
            ("snapshots", "5".to_owned()),
            ("backup_days", "7".to_owned()),
            ("outbound_nat", "on".to_owned()),
        ]
    };
    let r = w
        .admin
        .post(w.app.url("/staff/plans"))
        .form(&fields("pro", "2G"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let r = w
        .admin
        .post(w.app.url("/staff/plans"))
        .form(&fields("pro", "2G"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422, "a taken name is refused");
    let r = w
        .admin
        .post(w.app.url("/staff/plans"))
        .form(&fields("cheap", "lots"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    assert!(r.text().await.unwrap().contains("is not a size"));
    let mut hoarder = fields("hoarder", "1G");
    hoarder.retain(|(k, _)| *k != "snapshots");
    hoarder.push(("snapshots", "200".to_owned()));
    let r = w
        .admin
        .post(w.app.url("/staff/plans"))
        .form(&hoarder)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let page = r.text().await.unwrap();
    assert!(page.contains("snapshots per jail"), "{page}");
    assert!(
        page.contains("value=\"200\""),
        "the form keeps what was typed"
    );
    let pro = plans::by_name(&w.app.pool, "pro").await.unwrap();
    assert_eq!(pro.quota.memory_bytes, 2 << 30);
    assert_eq!((pro.snapshots_per_jail, pro.backup_days), (5, 7));
    assert_eq!((pro.max_published_ports, pro.outbound_nat), (2, true));
    // Outbound access unticked: the plan's jails reach only what is published.
    let mut closed = fields("closed", "1G");
    closed.retain(|(k, _)| *k != "outbound_nat");
    let r = w
        .admin
        .post(w.app.url("/staff/plans"))
        .form(&closed)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert!(
        !plans::by_name(&w.app.pool, "closed")
            .await
            .unwrap()
            .outbound_nat
    );
    page_with(
        &w.admin,
        &w.app.url("/staff/plans"),
        "<td>none</td><td>2</td><td>5</td><td>7 days</td>",
    )
    .await;
    let r = w
        .operator
        .post(w.app.url("/staff/plans"))
        .form(&fields("ops", "2G"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let nodes = w
        .operator
        .get(w.app.url("/staff/nodes"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(nodes.contains("n1") && nodes.contains(">up<"));
}

/// Polls `url` until its page contains `text` (pages may be cached briefly).
async fn page_with(client: &reqwest::Client, url: &str, text: &str) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let page = client.get(url).send().await.unwrap().text().await.unwrap();
        if page.contains(text) {
            return page;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{url} never showed {text:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn staff_turn_off_user_namespaces_per_plan_audited_and_customers_see_it() {
    use stockade_domain::{ByteSize, Millicores};
    let w = world().await;
    let jail_page = w.app.url(&format!("/jails/{}", w.jail_a));
    page_with(&w.customer_a, &jail_page, "Isolated user ids: on").await;
    let starter = plans::by_name(&w.app.pool, "starter").await.unwrap();
    assert!(starter.user_namespace, "on by default");
    let edit = w.app.url(&format!("/staff/plans/{}", starter.id));
    let token = csrf(&w.admin, &edit).await;
    let q = starter.quota;
    let mut fields = vec![
        ("csrf_token", token.clone()),
        ("name", starter.name.clone()),
        ("display_name", starter.display_name.clone()),
        ("cpu", Millicores(q.cpu_millicores).to_string()),
        ("memory", ByteSize(q.memory_bytes).to_string()),
        ("pids", q.pids.to_string()),
        ("disk", ByteSize(q.disk_bytes).to_string()),
        ("max_jails", q.max_jails.to_string()),
        ("transfer", ByteSize(q.monthly_transfer_bytes).to_string()),
        ("published_ports", starter.max_published_ports.to_string()),
        ("outbound_nat", "on".to_owned()),
    ];
    fields.push(("host_root_ids", "on".to_owned()));
    let r = w.admin.post(&edit).form(&fields).send().await.unwrap();
    assert_eq!(r.status(), 303);
    assert!(
        !plans::get(&w.app.pool, starter.id)
            .await
            .unwrap()
            .user_namespace
    );
    let count = |action: &'static str| {
        let pool = w.app.pool.clone();
        async move {
            stockade_store::audit::count_action(&pool, action)
                .await
                .unwrap()
        }
    };
    assert_eq!(count("plan.user_namespace_off").await, 1);
    // The tenant's jails follow: those that run are restarted with host ids.
    let j = jails::get(&w.app.pool, w.tenant_a, w.jail_a).await.unwrap();
    assert!(!j.user_namespace);
    assert_eq!(j.restart_generation, j.generation);
    page_with(
        &w.customer_a,
        &jail_page,
        "Isolated user ids: off (host root ids",
    )
    .await;
    page_with(&w.admin, &w.app.url("/staff/plans"), "host root").await;
    page_with(&w.admin, &edit, "name=\"host_root_ids\" checked").await;
    // Saving the form unchanged logs nothing more; unticked turns it back on.
    let r = w.admin.post(&edit).form(&fields).send().await.unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(count("plan.user_namespace_off").await, 1);
    fields.pop();
    let r = w.admin.post(&edit).form(&fields).send().await.unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(count("plan.user_namespace_on").await, 1);
    page_with(&w.customer_a, &jail_page, "Isolated user ids: on").await;
}

#[tokio::test]
async fn password_change_keeps_this_session_and_ends_the_others() {
    let w = world().await;
    let second = new_client();
    w.app
        .sign_in(&second, "a@alpha.test", "correct horse battery")
        .await;
    assert_eq!(status_of(&second, &w.app.url("/overview")).await, 200);
    let token = csrf(&w.customer_a, &w.app.url("/account")).await;
    let r = w
        .customer_a
        .post(w.app.url("/account/password"))
        .form(&[
            ("csrf_token", token.as_str()),
            ("current", "correct horse battery"),
            ("new", "a brand new secret"),
            ("again", "a brand new secret"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(
        status_of(&w.customer_a, &w.app.url("/overview")).await,
        200,
        "this browser stays signed in"
    );
    assert_eq!(
        status_of(&second, &w.app.url("/overview")).await,
        303,
        "the other session ended"
    );
    let r = w
        .app
        .sign_in(&new_client(), "a@alpha.test", "a brand new secret")
        .await;
    assert_eq!(r.status(), 303);
}

#[tokio::test]
async fn repeated_failures_lock_sign_in_for_known_and_unknown_emails_alike() {
    let app = TestApp::spawn().await;
    app.create_user("victim@example.com", Role::Admin, None)
        .await;
    for email in ["victim@example.com", "ghost@example.com"] {
        let client = new_client();
        let mut last = 0;
        for _ in 0..11 {
            last = app.sign_in(&client, email, "guess").await.status().as_u16();
        }
        assert_eq!(last, 429, "{email} is locked after repeated failures");
    }
    // Even the right password is refused while locked.
    let r = app
        .sign_in(&new_client(), "victim@example.com", "correct horse battery")
        .await;
    assert_eq!(r.status(), 429);
}

#[tokio::test]
async fn admins_create_and_revoke_api_tokens_shown_once() {
    let w = world().await;
    let token = csrf(&w.admin, &w.app.url("/staff/tokens")).await;
    let r = w
        .admin
        .post(w.app.url("/staff/tokens"))
        .form(&[
            ("csrf_token", token.as_str()),
            ("name", "billing"),
            ("scope", "usage:read"),
            ("scope", "tenants:write"),
            ("tenant", ""),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let page = r.text().await.unwrap();
    let start = page
        .find("<code class=\"secret\">")
        .expect("the new token is shown")
        + "<code class=\"secret\">".len();
    let secret = &page[start..start + page[start..].find('<').unwrap()];
    assert!(secret.starts_with("stk_"), "{secret}");
    // It works on the API, and the list never shows it again.
    let api = new_client()
        .get(w.app.url("/api/v1/tenants"))
        .bearer_auth(secret)
        .send()
        .await
        .unwrap();
    assert_eq!(api.status(), 200);
    let list = w
        .admin
        .get(w.app.url("/staff/tokens"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(list.contains("billing") && !list.contains(secret));
    // Bad input: an unknown tenant is refused and creates nothing.
    let r = w
        .admin
        .post(w.app.url("/staff/tokens"))
        .form(&[
            ("csrf_token", token.as_str()),
            ("name", "x"),
            ("scope", "usage:read"),
            ("tenant", "nobody"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    // Operators read the list but cannot create or revoke.
    assert_eq!(
        status_of(&w.operator, &w.app.url("/staff/tokens")).await,
        200
    );
    assert_eq!(
        status_of(&w.operator, &w.app.url("/staff/webhooks")).await,
        200
    );
    assert_eq!(
        status_of(&w.customer_a, &w.app.url("/staff/tokens")).await,
        403
    );
    let id = stockade_store::tokens::list(&w.app.pool).await.unwrap()[0].id;
    let op_token = csrf(&w.operator, &w.app.url("/staff/tokens")).await;
    let r = w
        .operator
        .post(w.app.url(&format!("/staff/tokens/{id}/revoke")))
        .form(&[("csrf_token", op_token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = w
        .admin
        .post(w.app.url(&format!("/staff/tokens/{id}/revoke")))
        .form(&[("csrf_token", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let api = new_client()
        .get(w.app.url("/api/v1/tenants"))
        .bearer_auth(secret)
        .send()
        .await
        .unwrap();
    assert_eq!(api.status(), 401, "a revoked token is refused");
}

/// A panel that keeps page data an hour, with a node and a tenant on the
/// starter plan that has one small jail.
async fn kept_pages_world(slug: &str, name: &str) -> (TestApp, Uuid, jails::Jail) {
    let app = TestApp::spawn_with(None, std::time::Duration::from_secs(3600)).await;
    register_node(&app).await;
    let plan = plans::by_name(&app.pool, "starter").await.unwrap();
    let t = tenants::create(&app.pool, &TenantSlug::parse(slug).unwrap(), name, plan.id)
        .await
        .unwrap()
        .id;
    let jail = jails::create(&app.pool, t, &small_jail("shop"))
        .await
        .unwrap();
    (app, t, jail)
}

/// The panel keeps sessions and page data in memory; what changes elsewhere
/// (the agent reporting a jail's state, a session ended by another web
/// process) shows at once, long before that data would expire.
#[tokio::test]
async fn pages_show_changes_made_elsewhere_at_once() {
    let (app, t, jail) = kept_pages_world("gamma", "Gamma GmbH").await;
    let customer = signed_in(&app, "c@gamma.test", Role::Customer, Some(t)).await;
    let page = |path: &str| {
        let url = app.url(path);
        let customer = customer.clone();
        async move {
            let r = customer.get(url).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let overview = page("/overview").await.1;
    assert!(overview.contains(">starting</span>"), "{overview}");
    let detail_path = format!("/jails/{}", jail.id);
    assert!(page(&detail_path).await.1.contains(">starting</span>"));
    // A change no notification announces (made here with triggers off) is
    // not seen: the page comes from memory.
    let mut conn = app.pool.acquire().await.unwrap();
    sqlx::query("SET session_replication_role = replica")
        .execute(&mut *conn)
        .await
        .unwrap();
    sqlx::query("UPDATE tenants SET display_name = 'Gamma AG' WHERE id = $1")
        .bind(t)
        .execute(&mut *conn)
        .await
        .unwrap();
    sqlx::query("RESET session_replication_role")
        .execute(&mut *conn)
        .await
        .unwrap();
    drop(conn);
    assert!(page("/overview").await.1.contains("Gamma GmbH"));
    // The agent, another process, reports the jail running.
    sqlx::query(
        "UPDATE jails SET observed_state = 'running', observed_generation = generation WHERE id = $1",
    )
    .bind(jail.id)
    .execute(&app.pool)
    .await
    .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (o, d) = (page("/overview").await.1, page(&detail_path).await.1);
        if o.contains(">running</span>") && d.contains(">running</span>") {
            assert!(
                o.contains("Gamma AG"),
                "the tenant's page was re-read whole"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the new state never showed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // Another web process signs the customer out: the session row goes.
    sqlx::query(
        "DELETE FROM sessions WHERE user_id = (SELECT id FROM users WHERE email = 'c@gamma.test')",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (status, _) = page("/overview").await;
        if status == 303 {
            break;
        }
        assert_eq!(status, 200);
        assert!(
            std::time::Instant::now() < deadline,
            "the ended session was still served"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Staff sort tenants by this month's CPU time and transfer; the order
/// follows usage as the agent records it, hour by hour.
#[tokio::test]
async fn staff_sort_tenants_by_this_months_usage() {
    let w = world().await;
    let plan = plans::by_name(&w.app.pool, "starter").await.unwrap();
    let c = tenants::create(
        &w.app.pool,
        &TenantSlug::parse("carbon").unwrap(),
        "Carbon Co",
        plan.id,
    )
    .await
    .unwrap()
    .id;
    let jail_c = jails::create(&w.app.pool, c, &small_jail("api"))
        .await
        .unwrap()
        .id;
    // Hourly rollups as the agent writes them: alpha uses the most CPU,
    // carbon the most transfer, beta little of both.
    let rollup = |jail: Uuid, tenant: Uuid, hours_ago: i32, cpu: i64, rx: i64| {
        let pool = w.app.pool.clone();
        async move {
            sqlx::query(
                "INSERT INTO usage_rollups (jail_id, hour, tenant_id, samples, cpu_usec, net_rx_bytes)
                 VALUES ($1, date_trunc('hour', now()) - make_interval(hours => $3), $2, 360, $4, $5)
                 ON CONFLICT (jail_id, hour) DO UPDATE
                 SET cpu_usec = usage_rollups.cpu_usec + EXCLUDED.cpu_usec,
                     net_rx_bytes = usage_rollups.net_rx_bytes + EXCLUDED.net_rx_bytes",
            )
            .bind(jail)
            .bind(tenant)
            .bind(hours_ago)
            .bind(cpu)
            .bind(rx)
            .execute(&pool)
            .await
            .unwrap();
        }
    };
    rollup(w.jail_a, w.tenant_a, 0, 9_000_000_000, 1_000).await;
    rollup(w.jail_b, w.tenant_b, 0, 1_000_000, 2_000).await;
    rollup(jail_c, c, 0, 5_000_000_000, 7_000_000).await;
    let order = |sort: &'static str| {
        let url = w.app.url(&format!("/staff/tenants?sort={sort}"));
        let client = w.operator.clone();
        async move {
            let page = client.get(url).send().await.unwrap().text().await.unwrap();
            let mut found: Vec<(usize, &str)> = ["alpha", "beta", "carbon"]
                .into_iter()
                .map(|slug| (page.find(&format!(">{slug}<")).expect(slug), slug))
                .collect();
            found.sort();
            found.into_iter().map(|(_, s)| s).collect::<Vec<_>>()
        }
    };
    assert_eq!(order("cpu").await, ["alpha", "carbon", "beta"]);
    assert_eq!(order("transfer").await, ["carbon", "beta", "alpha"]);
    // More CPU for carbon as the hour goes on: it moves to the top (usage
    // figures on staff pages are at most a few seconds old).
    rollup(jail_c, c, 0, 3_000_000_000, 0).await;
    rollup(jail_c, c, 0, 2_000_000_000, 0).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while order("cpu").await != ["carbon", "alpha", "beta"] {
        assert!(
            std::time::Instant::now() < deadline,
            "the order never followed the usage"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// One customer in two browsers, pages kept in memory: each page carries
/// its own session's form token (a form from either works), and a message
/// after an action shows once, then the page is as before.
#[tokio::test]
async fn kept_pages_carry_each_sessions_form_token_and_show_a_message_once() {
    let (app, t, jail) = kept_pages_world("delta", "Delta BV").await;
    let password = app
        .create_user("c@delta.test", Role::Customer, Some(t))
        .await;
    let (a, b) = (new_client(), new_client());
    for c in [&a, &b] {
        let r = app.sign_in(c, "c@delta.test", &password).await;
        assert_eq!(r.status(), 303);
    }
    let detail = format!("/jails/{}", jail.id);
    let page = |c: &reqwest::Client| {
        let req = c.get(app.url(&detail));
        async move { req.send().await.unwrap().text().await.unwrap() }
    };
    let (a1, b1, a2, b2) = (
        page(&a).await,
        page(&b).await,
        page(&a).await,
        page(&b).await,
    );
    let token = |html: &str| hidden_field(html, "csrf_token").expect("a form token");
    assert_eq!(token(&a1), token(&a2));
    assert_eq!(token(&b1), token(&b2));
    assert_ne!(
        token(&a1),
        token(&b1),
        "each session has a token of its own"
    );
    for (c, html) in [(&a, &a2), (&b, &b2)] {
        let r = c
            .post(app.url(&format!("/jails/{}/stop", jail.id)))
            .form(&[("csrf_token", token(html))])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 303, "a form from a kept page is accepted");
        let shown = page(c).await;
        assert!(
            shown.contains("class=\"flash ok\"") && shown.contains("stop requested"),
            "{shown}"
        );
        let again = page(c).await;
        assert!(!again.contains("class=\"flash"), "{again}");
        assert!(again.contains(">stopping</span>"), "{again}");
    }
}

#[tokio::test]
async fn customers_publish_ports_within_the_allowance_and_staff_see_who_holds_them() {
    let w = world().await;
    let jail_page = w.app.url(&format!("/jails/{}", w.jail_a));
    let page = page_with(&w.customer_a, &jail_page, "Published ports").await;
    assert!(
        page.contains("4 of 4 left"),
        "the plan's allowance is shown"
    );
    assert!(page.contains("outbound access: on"), "{page}");
    let token = csrf(&w.customer_a, &jail_page).await;
    let publish = |protocol: &str, jail_port: &str, host_port: &str| {
        w.customer_a
            .post(w.app.url(&format!("/jails/{}/ports", w.jail_a)))
            .form(&[
                ("csrf_token", token.as_str()),
                ("protocol", protocol),
                ("jail_port", jail_port),
                ("host_port", host_port),
            ])
            .send()
    };
    let r = publish("tcp", "80", "").await.unwrap();
    assert_eq!(r.status(), 303);
    let page = page_with(
        &w.customer_a,
        &jail_page,
        "Port 80/tcp of the jail is published on port 20000 of its node.",
    )
    .await;
    assert!(page.contains("<td>20000/tcp</td><td>80/tcp</td>"), "{page}");
    assert!(page.contains("3 of 4 left"), "{page}");

    // Bad input: a message naming the field; nothing more published.
    for (protocol, jail_port, host_port, says) in [
        (
            "tcp",
            "80",
            "",
            "jail port: 80/tcp is already published, on port 20000",
        ),
        (
            "tcp",
            "81",
            "20000",
            "node port: 20000/tcp is already published",
        ),
        ("tcp", "81", "22", "node port: 22 is outside this node"),
        ("tcp", "http", "", "http&#34; is not a port (1 to 65535)"),
        ("sctp", "81", "", "sctp&#34;: expected tcp or udp"),
    ] {
        let r = publish(protocol, jail_port, host_port).await.unwrap();
        assert_eq!(r.status(), 303);
        page_with(&w.customer_a, &jail_page, says).await;
    }
    assert_eq!(
        stockade_store::ports::allowance(&w.app.pool, w.tenant_a)
            .await
            .unwrap()
            .used,
        1
    );
    // Another tenant's jail: not found, nothing published.
    let r = w
        .customer_a
        .post(w.app.url(&format!("/jails/{}/ports", w.jail_b)))
        .form(&[
            ("csrf_token", token.as_str()),
            ("protocol", "tcp"),
            ("jail_port", "80"),
            ("host_port", ""),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // Staff see which tenant holds which port of which node.
    let nodes_page = page_with(&w.operator, &w.app.url("/staff/nodes"), "20000/tcp").await;
    assert!(
        nodes_page.contains("<td>n1</td><td>20000/tcp</td><td>alpha</td><td>web</td><td>80</td>"),
        "{nodes_page}"
    );
    // An admin turns the tenant's outbound access off; the customer sees it.
    let tenant_page = w.app.url(&format!("/staff/tenants/{}", w.tenant_a));
    let page = page_with(&w.admin, &tenant_page, "Published ports").await;
    assert!(
        page.contains("<td>web</td><td>20000/tcp</td><td>80</td>"),
        "{page}"
    );
    let admin_token = csrf(&w.admin, &tenant_page).await;
    let overrides = |nat: &str, ports: &str| {
        vec![
            ("csrf_token", admin_token.clone()),
            ("cpu", String::new()),
            ("memory", String::new()),
            ("pids", String::new()),
            ("disk", String::new()),
            ("max_jails", String::new()),
            ("transfer", String::new()),
            ("published_ports", ports.to_owned()),
            ("outbound_nat", nat.to_owned()),
        ]
    };
    let r = w
        .admin
        .post(
            w.app
                .url(&format!("/staff/tenants/{}/overrides", w.tenant_a)),
        )
        .form(&overrides("maybe", ""))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    page_with(&w.admin, &tenant_page, "maybe&#34; is not on, off").await;
    let r = w
        .admin
        .post(
            w.app
                .url(&format!("/staff/tenants/{}/overrides", w.tenant_a)),
        )
        .form(&overrides("off", "1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let j = jails::get(&w.app.pool, w.tenant_a, w.jail_a).await.unwrap();
    assert!(!j.outbound_nat);
    let page = page_with(&w.customer_a, &jail_page, "outbound access: off").await;
    assert!(page.contains("0 of 1 left"), "{page}");
    let r = publish("udp", "53", "").await.unwrap();
    assert_eq!(r.status(), 303);
    page_with(
        &w.customer_a,
        &jail_page,
        "published ports: the plan allows 1 and 1 are published",
    )
    .await;

    // Taken back: gone from the page and the node's list.
    let port = stockade_store::ports::for_jail(&w.app.pool, w.tenant_a, w.jail_a)
        .await
        .unwrap()
        .remove(0);
    let r = w
        .customer_a
        .post(
            w.app
                .url(&format!("/jails/{}/ports/{}/delete", w.jail_a, port.id)),
        )
        .form(&[("csrf_token", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    page_with(
        &w.customer_a,
        &jail_page,
        "Port 20000/tcp is no longer published.",
    )
    .await;
    page_with(
        &w.operator,
        &w.app.url("/staff/nodes"),
        "No jail publishes a port.",
    )
    .await;
}

/// A crash-looping jail is shown as such, first, with why and when it is
/// tried again; staff see it among every tenant's failing jails.
#[tokio::test]
async fn a_crash_looping_jail_is_shown_first_with_its_exit_and_staff_see_it_failing() {
    let w = world().await;
    let t = w.tenant_a;
    // A second jail of the tenant, named to sort before the failing one.
    let calm = jails::create(&w.app.pool, t, &small_jail("aaa"))
        .await
        .unwrap();
    let failing = jails::get(&w.app.pool, t, w.jail_a).await.unwrap();
    // What the node records of a command that keeps ending.
    let now = chrono::Utc::now();
    let run = jails::RunState {
        restart_count: 4,
        crash_count: 4,
        last_exit: Some(jails::LastExit {
            code: Some(3),
            signal: None,
            at: now,
        }),
        started_at: None,
        retry_at: Some(now + chrono::Duration::seconds(4)),
    };
    let mut tx = w.app.pool.begin().await.unwrap();
    for (id, state, generation, run) in [
        (
            failing.id,
            ObservedState::CrashLooping,
            failing.generation,
            &run,
        ),
        (
            calm.id,
            ObservedState::Running,
            calm.generation,
            &jails::RunState::default(),
        ),
    ] {
        jails::record_observed(&mut tx, id, state, generation, None, run)
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();

    let overview = page_with(&w.customer_a, &w.app.url("/overview"), "crash_looping").await;
    let (first, second) = (
        overview.find(&format!("/jails/{}", failing.id)).unwrap(),
        overview.find(&format!("/jails/{}", calm.id)).unwrap(),
    );
    assert!(first < second, "the failing jail is listed first");
    assert!(
        overview.contains("restarted 4 times; last exited with code 3 at"),
        "{overview}"
    );
    let detail = page_with(
        &w.customer_a,
        &w.app.url(&format!("/jails/{}", failing.id)),
        "next try in",
    )
    .await;
    assert!(detail.contains(">crash_looping</span>"), "{detail}");
    assert!(detail.contains("exited with code 3"), "{detail}");

    let staff = page_with(
        &w.operator,
        &w.app.url("/staff/failing"),
        "data-failing-jails",
    )
    .await;
    assert!(
        staff.contains("alpha") && staff.contains(">web</a>"),
        "{staff}"
    );
    assert!(!staff.contains(">aaa<"), "a running jail is not failing");
    assert_eq!(
        status_of(&w.customer_a, &w.app.url("/staff/failing")).await,
        403
    );
}

/// A customer changes what a jail runs and its limits in the panel: a
/// quoted command line, variables with a masked secret, limits within what
/// is left; a refused change shows the form again as typed, with the reason.
#[tokio::test]
async fn customers_change_a_jails_command_environment_and_limits() {
    let w = world().await;
    let c = &w.customer_a;
    let settings = w.app.url(&format!("/jails/{}/settings", w.jail_a));
    let page = c.get(&settings).send().await.unwrap().text().await.unwrap();
    assert!(page.contains("Your quota leaves up to"), "{page}");
    // Every form is in the page's body, none in its title.
    let (head, body) = page.split_once("</title>").unwrap();
    assert!(!head.contains("<form"), "a form in the title: {head}");
    for action in ["program", "limits", "health"] {
        assert!(
            body.contains(&format!("action=\"/jails/{}/{action}\"", w.jail_a)),
            "the {action} form: {body}"
        );
    }
    let token = csrf(c, &settings).await;
    let program = w.app.url(&format!("/jails/{}/program", w.jail_a));

    // An unbalanced quote: refused by name, the typed text kept.
    let typed = r#"sh -c "echo unterminated"#;
    let res = c
        .post(&program)
        .form(&[
            ("csrf_token", token.as_str()),
            ("command", typed),
            ("env", "MODE=prod"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 422);
    let page = res.text().await.unwrap();
    assert!(page.contains("command: a quote is not closed"), "{page}");
    assert!(
        page.contains("sh -c &#34;echo unterminated")
            || page.contains("sh -c &quot;echo unterminated"),
        "{page}"
    );
    assert!(page.contains("MODE=prod"), "{page}");
    let unchanged = jails::get(&w.app.pool, w.tenant_a, w.jail_a).await.unwrap();
    assert!(unchanged.command.is_empty() && unchanged.env.is_empty());

    // Saved: the command split like a shell's, the secret masked from then on.
    let res = c
        .post(&program)
        .form(&[
            ("csrf_token", token.as_str()),
            ("command", r#"sh -c "echo 'hi there'; sleep 60""#),
            ("env", "MODE=prod\nsecret TOKEN=s3cret"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 303);
    let saved = jails::get(&w.app.pool, w.tenant_a, w.jail_a).await.unwrap();
    assert_eq!(saved.command, ["sh", "-c", "echo 'hi there'; sleep 60"]);
    assert_eq!(saved.env.len(), 2);
    assert!(saved.env[1].secret && saved.env[1].value == "s3cret");
    assert!(
        saved.restart_generation > unchanged.restart_generation,
        "a running jail restarts"
    );
    let page = page_with(c, &settings, "secret TOKEN=********").await;
    assert!(!page.contains("s3cret"), "{page}");
    assert!(page.contains("MODE=prod"), "{page}");
    // Sent back masked, the secret keeps its value.
    let res = c
        .post(&program)
        .form(&[
            ("csrf_token", token.as_str()),
            ("command", "sleep 60"),
            ("env", "secret TOKEN=********"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 303);
    let kept = jails::get(&w.app.pool, w.tenant_a, w.jail_a).await.unwrap();
    assert_eq!((kept.env.len(), kept.env[0].value.as_str()), (1, "s3cret"));

    // Limits: beyond the quota refused with what is left; within, saved.
    let limits = w.app.url(&format!("/jails/{}/limits", w.jail_a));
    let res = c
        .post(&limits)
        .form(&[
            ("csrf_token", token.as_str()),
            ("cpu", "500m"),
            ("memory", "2G"),
            ("pids", "64"),
            ("disk", "256M"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 422);
    let page = res.text().await.unwrap();
    assert!(
        page.contains("memory quota exceeded") || page.contains("Memory quota exceeded"),
        "{page}"
    );
    assert!(page.contains("2G"), "typed values kept: {page}");
    let res = c
        .post(&limits)
        .form(&[
            ("csrf_token", token.as_str()),
            ("cpu", "500m"),
            ("memory", "192M"),
            ("pids", "64"),
            ("disk", "256M"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 303);
    let resized = jails::get(&w.app.pool, w.tenant_a, w.jail_a).await.unwrap();
    assert_eq!(resized.limits.cpu_millicores, 500);
    assert_eq!(resized.limits.memory_bytes, 192 << 20);
    assert_eq!(
        resized.limits.io_read_bps, kept.limits.io_read_bps,
        "rates kept"
    );
    // Another tenant's jail has no settings page for this customer.
    let other = w.app.url(&format!("/jails/{}/settings", w.jail_b));
    assert_eq!(status_of(c, &other).await, 404);
}

/// Staff open a customer's jail, read its output and restart it, reset a
/// password with a one-time link, and suspend with a reason: the customer
/// sees each of these, and the audit log shows old and new values.
#[tokio::test]
async fn staff_drill_down_is_visible_to_the_customer_and_audited() {
    let w = world().await;
    let (t, j) = (w.tenant_a, w.jail_a);
    let jail_page = w.app.url(&format!("/staff/tenants/{t}/jails/{j}"));
    let page = page_with(&w.operator, &jail_page, "data-log").await;
    assert!(page.contains(">web <span"), "{page}");
    assert_eq!(status_of(&w.customer_a, &jail_page).await, 403);
    // The output (no node serves it here, but the read is on the record).
    let res = w
        .operator
        .get(
            w.app
                .url(&format!("/staff/tenants/{t}/jails/{j}/logs?tail=5")),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
    assert!(res.text().await.unwrap().contains("cannot be shown now"));
    // Restarting is a change: admins only.
    let restart = w.app.url(&format!("/staff/tenants/{t}/jails/{j}/restart"));
    let token = csrf(&w.operator, &jail_page).await;
    let res = w
        .operator
        .post(&restart)
        .form(&[("csrf_token", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    let token = csrf(&w.admin, &jail_page).await;
    let res = w
        .admin
        .post(&restart)
        .form(&[("csrf_token", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 303);
    let restarted = jails::get(&w.app.pool, t, j).await.unwrap();
    assert!(restarted.restart_generation > 0);
    let overview = page_with(&w.customer_a, &w.app.url("/overview"), "data-staff-actions").await;
    assert!(overview.contains("read the output of web"), "{overview}");
    assert!(overview.contains("restarted web"), "{overview}");

    // A one-time link instead of a password staff would know.
    let tenant_page = w.app.url(&format!("/staff/tenants/{t}"));
    let token = csrf(&w.admin, &tenant_page).await;
    let user = stockade_store::users::list_for_tenant(&w.app.pool, t)
        .await
        .unwrap()
        .into_iter()
        .find(|u| u.email.as_str() == "a@alpha.test")
        .unwrap();
    let res = w
        .admin
        .post(
            w.app
                .url(&format!("/staff/users/{}/reset-password", user.id)),
        )
        .form(&[("csrf_token", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 303);
    let shown = w
        .admin
        .get(&tenant_page)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let link = shown
        .split("shown once): ")
        .nth(1)
        .and_then(|r| r.split(['<', ' ']).next())
        .expect("the flash shows the link")
        .to_owned();
    assert!(link.contains("/reset/"), "{link}");
    let path = &link[link.find("/reset/").unwrap()..];
    let visitor = new_client();
    let form = visitor
        .get(w.app.url(path))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(form.contains("a@alpha.test"), "{form}");
    let post = |token: String, password: &'static str, repeat: &'static str| {
        visitor
            .post(w.app.url(path))
            .form(&[
                ("csrf_token", token.as_str()),
                ("password", password),
                ("repeat", repeat),
            ])
            .send()
    };
    let token = hidden_field(&form, "csrf_token").unwrap();
    let res = post(token, "a new long password", "another long one")
        .await
        .unwrap();
    assert_eq!(res.status(), 422);
    let again_form = res.text().await.unwrap();
    assert!(again_form.contains("the two passwords differ"));
    let token = hidden_field(&again_form, "csrf_token").unwrap();
    let res = post(token.clone(), "a new long password", "a new long password")
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.text().await.unwrap().contains("data-password-set"));
    assert_eq!(
        post(token, "a new long password", "a new long password")
            .await
            .unwrap()
            .status(),
        410,
        "once"
    );
    // The customer's old session ended; the new password signs in.
    assert_eq!(status_of(&w.customer_a, &w.app.url("/overview")).await, 303);
    let again = new_client();
    assert_eq!(
        w.app
            .sign_in(&again, "a@alpha.test", "a new long password")
            .await
            .status(),
        303
    );

    // Suspended with a reason the customer reads; the audit log shows the change.
    let token = csrf(&w.operator, &tenant_page).await;
    let res = w
        .operator
        .post(w.app.url(&format!("/staff/tenants/{t}/suspend")))
        .form(&[
            ("csrf_token", token.as_str()),
            ("confirm", "yes"),
            ("reason", "invoice 42 is unpaid"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 303);
    let overview = page_with(&again, &w.app.url("/overview"), "data-suspension").await;
    assert!(
        overview.contains("Your account is suspended: invoice 42 is unpaid."),
        "{overview}"
    );
    let audit = page_with(
        &w.admin,
        &w.app.url("/staff/audit?action=tenant.suspend"),
        "data-changes",
    )
    .await;
    assert!(
        audit.contains("reason: none → invoice 42 is unpaid; status: active → suspended"),
        "{audit}"
    );
}

/// A jail shrunk by a lowered quota says so on its page and, once the quota
/// has room again, offers to grow it back.
#[tokio::test]
async fn a_shrunk_jail_is_offered_to_grow_back_once_the_quota_allows() {
    let w = world().await;
    let (t, j) = (w.tenant_a, w.jail_a);
    let had = jails::get(&w.app.pool, t, j).await.unwrap().limits;
    tenants::set_overrides(
        &w.app.pool,
        t,
        &tenants::Overrides {
            memory_bytes: Some(64 << 20),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let page_url = w.app.url(&format!("/jails/{j}"));
    let page = page_with(&w.customer_a, &page_url, "data-shrunk").await;
    assert!(
        page.contains("this jail was shrunk: it had 0.25 CPU, 128 MiB memory"),
        "{page}"
    );
    assert!(page.contains("no room to grow it back yet"), "{page}");
    tenants::set_overrides(&w.app.pool, t, &tenants::Overrides::default())
        .await
        .unwrap();
    let page = page_with(&w.customer_a, &page_url, "Grow it back").await;
    let token = hidden_field(&page, "csrf_token").unwrap();
    let res = w
        .customer_a
        .post(w.app.url(&format!("/jails/{j}/grow-back")))
        .form(&[("csrf_token", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 303);
    let grown = jails::get(&w.app.pool, t, j).await.unwrap();
    assert_eq!(grown.limits.memory_bytes, had.memory_bytes);
    assert_eq!(grown.shrunk_from, None);
    let page = page_with(&w.customer_a, &page_url, "has its limits back").await;
    assert!(!page.contains("data-shrunk"), "{page}");
}
