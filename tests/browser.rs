//! The panel in real headless Chromium: a customer signs in, creates a jail,
//! sees it running and its usage chart; staff lower the tenant's memory
//! quota and the running jail follows; a wrong password and a form without
//! its CSRF token are refused. Screenshots land in target/screenshots/.

mod common;

use std::time::{Duration, Instant};

use common::TestApp;
use common::agent::{Node, is_root, wait_node};
use common::browser::Browser;
use stockade_domain::{Role, TenantSlug};
use stockade_store::{jails, plans, tenants};

const PASSWORD: &str = "correct horse battery";

async fn sign_in(b: &Browser, app: &TestApp, email: &str, password: &str) {
    b.goto(&app.url("/login")).await;
    b.fill("input[name=email]", email).await;
    b.fill("input[name=password]", password).await;
    b.click("form button[type=submit]").await;
}

async fn sign_out(b: &Browser) {
    b.click("nav form button[type=submit]").await;
    b.wait_url("/login", Duration::from_secs(10)).await;
}

#[tokio::test]
async fn customer_and_staff_journeys_in_a_real_browser() {
    if !is_root() {
        return;
    }
    let app = TestApp::spawn().await;
    let node = Node::new(&app.db_url);
    wait_node(&app.pool, &node.name).await;
    let plan = plans::by_name(&app.pool, "starter").await.unwrap();
    let tenant = tenants::create(
        &app.pool,
        &TenantSlug::parse("acme").unwrap(),
        "Acme Hosting",
        plan.id,
    )
    .await
    .unwrap();
    app.create_user("owner@acme.test", Role::Customer, Some(tenant.id))
        .await;
    app.create_user("admin@provider.test", Role::Admin, None)
        .await;

    let b = Browser::start().await;

    // A wrong password is refused with a clear message.
    sign_in(&b, &app, "owner@acme.test", "not my password").await;
    assert!(b.url().await.ends_with("/login"));
    assert!(
        b.text(".flash.error")
            .await
            .contains("Wrong email or password.")
    );
    b.screenshot("sign-in-refused").await;

    // The customer signs in and creates a jail.
    sign_in(&b, &app, "owner@acme.test", PASSWORD).await;
    b.wait_url("/overview", Duration::from_secs(10)).await;
    assert!(b.source().await.contains("Starter"));
    b.screenshot("customer-overview").await;
    b.goto(&app.url("/jails")).await;
    b.fill("input[name=name]", "site").await;
    b.fill("input[name=cpu]", "250m").await;
    b.fill("input[name=memory]", "64M").await;
    b.fill("input[name=pids]", "32").await;
    b.fill("input[name=disk]", "64M").await;
    b.screenshot("customer-jails").await;
    b.click("form.grid2 button[type=submit]").await;
    b.wait_for(".flash.ok", Duration::from_secs(10)).await;
    let jail_page = b.url().await;
    assert!(jail_page.contains("/jails/"), "{jail_page}");
    assert!(b.text(".flash.ok").await.contains("Jail site created"));

    // It runs, and its usage chart fills in.
    b.wait_text(&jail_page, "h1 .badge", "running", Duration::from_secs(40))
        .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        b.goto(&jail_page).await;
        if b.exists("svg.chart polyline.series").await {
            break;
        }
        assert!(Instant::now() < deadline, "no usage was charted");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    b.screenshot("customer-jail").await;

    // A form whose CSRF token was tampered with is refused.
    b.execute(
        "document.querySelectorAll('input[name=csrf_token]').forEach(e => e.value = 'forged')",
    )
    .await;
    b.click("form[action$='/stop'] button").await;
    b.wait_for(".error-page", Duration::from_secs(10)).await;
    assert!(b.source().await.contains("this form has expired"));
    let id = jail_page.rsplit('/').next().unwrap().parse().unwrap();
    let jail = jails::get(&app.pool, tenant.id, id).await.unwrap();
    assert_eq!(
        jail.desired_state,
        stockade_domain::DesiredState::Running,
        "the forged stop did nothing"
    );

    // Staff lower the tenant's memory quota; the running jail follows.
    b.goto(&jail_page).await;
    sign_out(&b).await;
    sign_in(&b, &app, "admin@provider.test", PASSWORD).await;
    b.wait_url("/staff/tenants", Duration::from_secs(10)).await;
    b.screenshot("staff-tenants").await;
    b.goto(&app.url(&format!("/staff/tenants/{}", tenant.id)))
        .await;
    b.fill("form[action$='/overrides'] input[name=memory]", "32M")
        .await;
    b.click("form[action$='/overrides'] button").await;
    b.wait_for(".flash.ok", Duration::from_secs(10)).await;
    assert!(b.text(".flash.ok").await.contains("Quota overrides saved"));
    b.screenshot("staff-tenant").await;
    let limit_file = node
        .cgroup_dir("memory", &jail)
        .join("memory.limit_in_bytes");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = std::fs::read_to_string(&limit_file).unwrap_or_default();
        if v.trim() == (32u64 << 20).to_string() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the lowered quota never reached the jail: {v}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    b.goto(&app.url("/staff/nodes")).await;
    assert!(b.source().await.contains(&node.name));
    b.screenshot("staff-nodes").await;
    b.goto(&app.url("/staff/audit")).await;
    b.screenshot("staff-audit").await;
    b.close().await;

    jails::set_desired(
        &app.pool,
        tenant.id,
        id,
        stockade_domain::DesiredState::Deleted,
    )
    .await
    .unwrap();
    common::agent::wait_observed(
        &app.pool,
        tenant.id,
        id,
        stockade_domain::ObservedState::Deleted,
    )
    .await;
}
