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

    // A snapshot taken from the jail's page, shown once its node took it.
    let snapshots_page = format!("{jail_page}/snapshots");
    b.goto(&jail_page).await;
    b.click("a[href$='/snapshots']").await;
    b.wait_for("input[name=name]", Duration::from_secs(10))
        .await;
    b.fill("input[name=name]", "first").await;
    b.click("form[action$='/snapshots'] button").await;
    b.wait_for(".flash.ok", Duration::from_secs(10)).await;
    b.wait_text(
        &snapshots_page,
        "tr[data-snapshot=first] [data-snapshot-state]",
        "ready",
        Duration::from_secs(30),
    )
    .await;

    // Every page the customer uses passes axe-core's WCAG 2.1 A/AA rules,
    // and reads on a phone 390 pixels wide without scrolling sideways.
    let settings = format!("{jail_page}/settings");
    let pages = [
        app.url("/overview"),
        app.url("/jails"),
        jail_page.clone(),
        settings.clone(),
        snapshots_page.clone(),
        format!("{jail_page}/backups"),
    ];
    for page in &pages {
        b.goto(page).await;
        match b.accessibility_violations().await {
            Some(found) => assert!(found.is_empty(), "{page}: {found:#?}"),
            None => eprintln!("SKIPPED: axe-core is not installed (scripts/test installs it)"),
        }
    }
    b.resize(390, 844).await;
    for page in &pages {
        b.goto(page).await;
        assert!(
            !b.overflows_sideways().await,
            "{page} scrolls sideways at 390 px"
        );
    }
    b.goto(&jail_page).await;
    b.screenshot("customer-jail-phone").await;
    b.resize(1280, 1000).await;
    b.goto(&jail_page).await;

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
    b.goto(&app.url("/staff/images")).await;
    assert!(b.text("[data-images]").await.contains("busybox"));
    if let Some(found) = b.accessibility_violations().await {
        assert!(found.is_empty(), "/staff/images: {found:#?}");
    }
    b.screenshot("staff-images").await;
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

/// The base64 SHA-256 of a certificate's public key: what Chromium's
/// `--ignore-certificate-errors-spki-list` takes to trust a test CA.
fn spki_hash(pem: &str) -> String {
    use base64::Engine as _;
    use sha2::Digest as _;
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
    let cert = pem.parse_x509().unwrap();
    base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(cert.public_key().raw))
}

#[tokio::test]
async fn a_customer_puts_a_site_online_over_https_and_publishes_a_port() {
    let tools = [
        "/usr/sbin/haproxy",
        "/usr/bin/pebble",
        "/usr/bin/pebble-challtestsrv",
    ];
    if !is_root() || !tools.iter().all(|t| std::path::Path::new(t).exists()) {
        eprintln!("SKIPPED: needs root, haproxy and pebble (scripts/test installs them)");
        return;
    }
    use common::tls::{Pebble, free_port};
    let app = TestApp::spawn().await;
    let (http, https) = (free_port(), free_port());
    let pebble = Pebble::start(http);
    let (http_at, https_at) = (format!("127.0.0.1:{http}"), format!("127.0.0.1:{https}"));
    let api_root = pebble.api_root.display().to_string();
    let ports = {
        let base = free_port() / 10 * 10;
        format!("{base}-{}", base + 9)
    };
    let node = Node::with_network_and_env(
        &app.db_url,
        "10.101.0.1/24",
        &[
            ("STOCKADE_PROXY_HTTP", http_at.as_str()),
            ("STOCKADE_PROXY_HTTPS", https_at.as_str()),
            ("STOCKADE_ACME_DIRECTORY", pebble.directory.as_str()),
            ("STOCKADE_ACME_ROOT", api_root.as_str()),
            ("STOCKADE_PUBLISHED_PORTS", ports.as_str()),
        ],
    );
    wait_node(&app.pool, &node.name).await;
    let plan = plans::by_name(&app.pool, "starter").await.unwrap();
    let tenant = tenants::create(
        &app.pool,
        &TenantSlug::parse("sites").unwrap(),
        "Sites Ltd",
        plan.id,
    )
    .await
    .unwrap();
    app.create_user("owner@sites.test", Role::Customer, Some(tenant.id))
        .await;
    // Chromium resolves the site's names to this machine and trusts
    // pebble's issuing certificate, as a real browser trusts a public CA.
    let intermediate = pebble.intermediate().await;
    let b = Browser::start_with(&[
        "--host-resolver-rules=MAP site.test 127.0.0.1, MAP www.site.test 127.0.0.1".to_owned(),
        format!(
            "--ignore-certificate-errors-spki-list={},{}",
            spki_hash(&intermediate),
            spki_hash(&pebble.issuing_root().await)
        ),
    ])
    .await;
    sign_in(&b, &app, "owner@sites.test", PASSWORD).await;
    b.wait_url("/overview", Duration::from_secs(10)).await;
    b.goto(&app.url("/jails")).await;
    b.fill("input[name=name]", "site").await;
    b.fill("input[name=cpu]", "250m").await;
    b.fill("input[name=memory]", "64M").await;
    b.fill("input[name=pids]", "32").await;
    b.fill("input[name=disk]", "64M").await;
    b.click("form.grid2 button[type=submit]").await;
    b.wait_for(".flash.ok", Duration::from_secs(10)).await;
    let jail_page = b.url().await;
    b.wait_text(&jail_page, "h1 .badge", "running", Duration::from_secs(40))
        .await;
    let id = jail_page.rsplit('/').next().unwrap().parse().unwrap();
    let jail = jails::get(&app.pool, tenant.id, id).await.unwrap();
    let script = "echo '<h1>Welcome to site.test</h1>' > /srv/www/index.html";
    assert_eq!(
        node.engine()
            .exec(
                &jail.host_name(),
                &["sh".into(), "-c".into(), script.into()]
            )
            .unwrap(),
        0
    );

    // The domain, with its www. alias: a certificate follows on its own.
    b.fill("form[action$='/domains'] input[name=name]", "site.test")
        .await;
    b.click("form[action$='/domains'] input[name=www]").await;
    b.click("form[action$='/domains'] button").await;
    b.wait_for(".flash.ok", Duration::from_secs(10)).await;
    assert!(
        b.text(".flash.ok")
            .await
            .contains("site.test now leads to port 80")
    );
    b.wait_text(
        &jail_page,
        "td[data-tls]",
        "Pebble",
        Duration::from_secs(60),
    )
    .await;
    let tls = b.text("td[data-tls]").await;
    assert!(
        tls.contains("Automatic certificate for site.test, www.site.test"),
        "{tls}"
    );
    b.screenshot("customer-domain").await;

    // The site over HTTPS through the node's proxy.
    let site = format!("https://site.test:{https}/");
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        b.goto(&site).await;
        if b.source().await.contains("Welcome to site.test") {
            break;
        }
        assert!(Instant::now() < deadline, "{site} never showed the site");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    b.screenshot("site-over-https").await;

    // A TCP port published from the panel reaches the jail.
    b.goto(&jail_page).await;
    b.fill("form[action$='/ports'] input[name=jail_port]", "80")
        .await;
    b.click("form[action$='/ports'] button").await;
    b.wait_for(".flash.ok", Duration::from_secs(10)).await;
    let said = b.text(".flash.ok").await;
    let port: u16 = said
        .split("on port ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("the page names the node's port: {said}"));
    let deadline = Instant::now() + Duration::from_secs(10);
    let page = loop {
        use std::io::{Read, Write};
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
            let mut text = String::new();
            if s.read_to_string(&mut text).is_ok() && text.contains("Welcome") {
                break text;
            }
        }
        assert!(
            Instant::now() < deadline,
            "port {port} never reached the jail"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(page.starts_with("HTTP/1.0 200") || page.starts_with("HTTP/1.1 200"));

    // The command and environment changed on the settings page: the jail
    // restarts with them, and its page shows what it prints as it prints.
    b.goto(&format!("{jail_page}/settings")).await;
    b.fill(
        "input[name=command]",
        r#"sh -c "echo \"hello from $WHO\"; while sleep 1; do echo tick; done""#,
    )
    .await;
    b.fill("textarea[name=env]", "WHO=the settings page").await;
    b.click("form[action$='/program'] button").await;
    b.wait_for(".flash.ok", Duration::from_secs(10)).await;
    assert!(
        b.text(".flash.ok")
            .await
            .contains("It restarts with them now")
    );
    b.wait_text(&jail_page, "h1 .badge", "running", Duration::from_secs(40))
        .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let shown = b.text("pre[data-log]").await;
        // The greeting, then lines printed after the page was loaded.
        if shown.contains("hello from the settings page") && shown.matches("tick").count() >= 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the output never showed: {shown:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    b.screenshot("jail-output").await;

    // A console on the same page: typed into, read back.
    b.click("button[data-console]").await;
    b.wait_for(
        "[data-console-screen][data-state=open]",
        Duration::from_secs(10),
    )
    .await;
    b.type_keys(".xterm-helper-textarea", "echo hi from the console\u{E007}")
        .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let shown = b.text(".xterm-rows").await;
        // The typed line, then what the shell printed on a line of its own.
        if shown.lines().any(|l| l.trim() == "hi from the console") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the console never answered: {shown:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    b.screenshot("jail-console").await;
    b.click("button[data-console]").await;
    b.wait_for(
        "[data-console-screen][data-state=closed]",
        Duration::from_secs(10),
    )
    .await;
    b.close().await;

    tenants::terminate(&app.pool, tenant.id).await.unwrap();
    common::agent::wait_observed(
        &app.pool,
        tenant.id,
        id,
        stockade_domain::ObservedState::Deleted,
    )
    .await;
    drop(node);
    drop(pebble);
}
