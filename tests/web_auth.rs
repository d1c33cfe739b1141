//! Sign-in, sessions and the panel's protective headers, over real HTTP.

mod common;

use common::{TestApp, new_client};
use stockade_domain::Role;

#[tokio::test]
async fn health_and_readiness_answer() {
    let app = TestApp::spawn().await;
    let r = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "ready\n");
}

#[tokio::test]
async fn readiness_fails_when_the_database_is_gone() {
    let app = TestApp::spawn().await;
    app.web_pool.close().await;
    let r = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 503);
}

#[tokio::test]
async fn anonymous_users_are_sent_to_sign_in() {
    let app = TestApp::spawn().await;
    let r = app.client.get(app.url("/")).send().await.unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/login");
}

#[tokio::test]
async fn pages_carry_security_headers_and_styles() {
    let app = TestApp::spawn().await;
    let r = app.client.get(app.url("/login")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let csp = r.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        csp.contains("frame-ancestors 'none'") && csp.contains("script-src 'self'"),
        "{csp}"
    );
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    assert!(r.headers().contains_key("referrer-policy"));
    let html = r.text().await.unwrap();
    assert!(html.contains("/static/style.css"));
    assert!(!html.contains("<script>"), "no inline script");
    let css = app
        .client
        .get(app.url("/static/style.css"))
        .send()
        .await
        .unwrap();
    assert_eq!(css.status(), 200);
    assert!(
        css.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/css")
    );
    let missing = app
        .client
        .get(app.url("/static/../Cargo.toml"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
}

#[tokio::test]
async fn unknown_pages_get_a_styled_404() {
    let app = TestApp::spawn().await;
    let r = app
        .client
        .get(app.url("/no/such/page"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let html = r.text().await.unwrap();
    assert!(html.contains("Not found") && html.contains("style.css"));
}

#[tokio::test]
async fn staff_sign_in_and_out() {
    let app = TestApp::spawn().await;
    let password = app.create_user("ops@example.com", Role::Admin, None).await;
    let r = app.sign_in(&app.client, "OPS@example.com", &password).await;
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/");
    let set_cookie = r.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Lax"),
        "{set_cookie}"
    );

    let page = app.client.get(app.url("/account")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(html.contains("ops@example.com"));

    let csrf = common::hidden_field(&html, "csrf_token").unwrap();
    let r = app
        .client
        .post(app.url("/logout"))
        .form(&[("csrf_token", csrf)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let r = app.client.get(app.url("/account")).send().await.unwrap();
    assert_eq!(r.status(), 303, "signed out means signed out");
    assert_eq!(
        stockade_store::audit::count_action(&app.pool, "user.sign_in")
            .await
            .unwrap(),
        1
    );
}

#[tokio::test]
async fn wrong_password_and_unknown_account_get_the_same_answer() {
    let app = TestApp::spawn().await;
    app.create_user("ops@example.com", Role::Admin, None).await;
    let wrong = app
        .sign_in(&new_client(), "ops@example.com", "not the password")
        .await;
    let unknown = app
        .sign_in(&new_client(), "nobody@example.com", "not the password")
        .await;
    assert_eq!(wrong.status(), 401);
    assert_eq!(unknown.status(), 401);
    let a = wrong.text().await.unwrap();
    let b = unknown.text().await.unwrap();
    assert!(a.contains("Wrong email or password.") && b.contains("Wrong email or password."));
    assert_eq!(
        stockade_store::audit::count_action(&app.pool, "user.sign_in_failed")
            .await
            .unwrap(),
        2
    );
}

#[tokio::test]
async fn sign_in_without_the_csrf_token_is_refused() {
    let app = TestApp::spawn().await;
    let password = app.create_user("ops@example.com", Role::Admin, None).await;
    let r = app
        .client
        .post(app.url("/login"))
        .form(&[
            ("csrf_token", "forged"),
            ("email", "ops@example.com"),
            ("password", password.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.headers().get("set-cookie").is_none());
}

#[tokio::test]
async fn sign_out_needs_the_session_csrf_token() {
    let app = TestApp::spawn().await;
    let password = app.create_user("ops@example.com", Role::Admin, None).await;
    app.sign_in(&app.client, "ops@example.com", &password).await;
    let r = app
        .client
        .post(app.url("/logout"))
        .form(&[("csrf_token", "nope")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let still = app.client.get(app.url("/account")).send().await.unwrap();
    assert_eq!(still.status(), 200);
}

#[tokio::test]
async fn an_upload_is_refused_on_its_csrf_token_before_its_file_is_read() {
    let app = TestApp::spawn().await;
    let plan = stockade_store::plans::by_name(&app.pool, "starter")
        .await
        .unwrap();
    let tenant = stockade_store::tenants::create(
        &app.pool,
        &stockade_domain::TenantSlug::parse("uploader").unwrap(),
        "Uploader",
        plan.id,
    )
    .await
    .unwrap()
    .id;
    let password = app
        .create_user("web@uploader.test", Role::Customer, Some(tenant))
        .await;
    app.sign_in(&app.client, "web@uploader.test", &password)
        .await;
    let jail = uuid::Uuid::new_v4();
    let big = vec![7u8; 20 << 20];
    let post = |form: reqwest::multipart::Form| {
        app.client
            .post(app.url(&format!("/jails/{jail}/files")))
            .multipart(form)
            .send()
    };
    // A forged token, with 20 MiB behind it: refused at the token.
    let forged = reqwest::multipart::Form::new()
        .text("csrf_token", "forged")
        .part(
            "file",
            reqwest::multipart::Part::bytes(big.clone()).file_name("a.bin"),
        );
    assert_eq!(post(forged).await.unwrap().status(), 403);
    // The file before the token: nothing is read before the token is checked.
    let file_first = reqwest::multipart::Form::new()
        .part(
            "file",
            reqwest::multipart::Part::bytes(big.clone()).file_name("a.bin"),
        )
        .text("csrf_token", "forged");
    assert_eq!(post(file_first).await.unwrap().status(), 403);
    // The right token, but a body announced over the limit: refused with the
    // reason, without reading the file.
    let page = app
        .client
        .get(app.url("/account"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let csrf = common::hidden_field(&page, "csrf_token").unwrap();
    let too_big = reqwest::multipart::Form::new()
        .text("csrf_token", csrf)
        .part(
            "file",
            reqwest::multipart::Part::bytes(big).file_name("a.bin"),
        );
    let r = post(too_big).await.unwrap();
    assert_eq!(r.status(), 303);
    // (The made-up jail's page is "not found"; the message shows on the next page.)
    let page = app
        .client
        .get(app.url("/account"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("the file is larger than 8"), "{page}");
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM jail_uploads")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(stored, 0);
}

#[tokio::test]
async fn wrong_passwords_from_elsewhere_never_lock_out_the_owner() {
    let app = TestApp::spawn_behind_proxy().await;
    let password = app.create_user("ops@example.com", Role::Admin, None).await;
    // Someone at another address (as the proxy says) guesses: after ten
    // failures that address may not try this account for a while.
    let attacker = common::client_from("203.0.113.9");
    for i in 0..10 {
        let r = app
            .sign_in(&attacker, "ops@example.com", "wrong-password")
            .await;
        assert_eq!(r.status(), 401, "guess {i}");
    }
    let r = app
        .sign_in(&attacker, "ops@example.com", "wrong-password")
        .await;
    assert_eq!(r.status(), 429);
    let r = app.sign_in(&attacker, "ops@example.com", &password).await;
    assert_eq!(r.status(), 429, "a locked address may not try at all");
    // The owner, from their own address, signs in with the right password.
    let owner = common::client_from("198.51.100.7");
    let r = app.sign_in(&owner, "ops@example.com", &password).await;
    assert_eq!(r.status(), 303);
}

#[tokio::test]
async fn forwarding_headers_from_untrusted_peers_change_nothing_and_guesses_at_once_are_all_counted()
 {
    // No trusted proxy: X-Forwarded-For is whatever the client says.
    let app = TestApp::spawn().await;
    app.create_user("ops@example.com", Role::Admin, None).await;
    // Twenty guesses at once, each claiming another address: all are the
    // one peer's, and no more than ten are checked.
    let mut clients = Vec::new();
    for i in 0..20 {
        let client = common::client_from(&format!("192.0.2.{i}"));
        let csrf = app.login_csrf(&client).await;
        clients.push((client, csrf));
    }
    let mut guesses = tokio::task::JoinSet::new();
    for (client, csrf) in clients {
        let url = app.url("/login");
        guesses.spawn(async move {
            client
                .post(url)
                .form(&[
                    ("csrf_token", csrf.as_str()),
                    ("email", "ops@example.com"),
                    ("password", "wrong-password"),
                ])
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        });
    }
    let statuses = guesses.join_all().await;
    let checked = statuses.iter().filter(|s| **s == 401).count();
    let refused = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!(checked + refused, 20, "{statuses:?}");
    assert!(checked <= 10, "{statuses:?}");
}

#[tokio::test]
async fn a_nul_byte_in_an_address_is_a_clear_refusal_never_a_server_error() {
    let app = TestApp::spawn().await;
    let password = app.create_user("ops@example.com", Role::Admin, None).await;
    app.sign_in(&app.client, "ops@example.com", &password).await;
    for path in [
        "/staff/tenants?q=%00",
        "/staff/audit?actor=a%00b",
        "/staff/tenants?q=%2500",
    ] {
        let r = app.client.get(app.url(path)).send().await.unwrap();
        let status = r.status().as_u16();
        if path.contains("%2500") {
            // An escaped percent sign is text, not a NUL byte.
            assert_eq!(status, 200, "{path}");
        } else {
            assert_eq!(status, 422, "{path}");
            assert!(r.text().await.unwrap().contains("NUL byte"));
        }
    }
    let r = app
        .client
        .get(app.url("/api/v1/tenants?search=%00"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "validation_failed", "{body}");
}

#[tokio::test]
async fn a_session_token_planted_before_sign_in_is_replaced() {
    let app = TestApp::spawn().await;
    let password = app.create_user("ops@example.com", Role::Admin, None).await;
    let jar = std::sync::Arc::new(reqwest::cookie::Jar::default());
    jar.add_cookie_str(
        "stockade_session=planted-by-someone-else",
        &app.url("/").parse().unwrap(),
    );
    let client = reqwest::Client::builder()
        .cookie_provider(jar)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = app.sign_in(&client, "ops@example.com", &password).await;
    let token = r
        .cookies()
        .find(|c| c.name() == "stockade_session")
        .unwrap()
        .value()
        .to_owned();
    assert_ne!(token, "planted-by-someone-else");
    assert_eq!(token.len(), 64);
    let other = app
        .sign_in(&new_client(), "ops@example.com", &password)
        .await;
    let token2 = other
        .cookies()
        .find(|c| c.name() == "stockade_session")
        .unwrap()
        .value()
        .to_owned();
    assert_ne!(token, token2, "every sign-in gets its own token");
}

#[tokio::test]
async fn changing_a_password_revokes_every_session() {
    let app = TestApp::spawn().await;
    let password = app.create_user("ops@example.com", Role::Admin, None).await;
    app.sign_in(&app.client, "ops@example.com", &password).await;
    assert_eq!(
        app.client
            .get(app.url("/account"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let (user, _) = stockade_store::users::find_for_sign_in(
        &app.pool,
        &stockade_domain::Email::parse("ops@example.com").unwrap(),
    )
    .await
    .unwrap()
    .unwrap();
    let hash = stockade_store::password::hash(&secrecy::SecretString::from(
        "another good password".to_owned(),
    ))
    .unwrap();
    // Changed here as another process would: the web process hears of it
    // through PostgreSQL's notification, within milliseconds.
    stockade_store::users::set_password(&app.pool, user.id, &hash)
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        let status = app
            .client
            .get(app.url("/account"))
            .send()
            .await
            .unwrap()
            .status();
        if status == 303 {
            break;
        }
        assert_eq!(status, 200);
        assert!(
            std::time::Instant::now() < deadline,
            "the old session outlived the password change"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn self_sign_up_is_off_by_default() {
    let app = TestApp::spawn().await;
    assert_eq!(
        app.client
            .get(app.url("/signup"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
}

#[tokio::test]
async fn self_sign_up_creates_a_tenant_and_signs_in() {
    let app = TestApp::spawn_with_signup(Some("starter")).await;
    let page = app
        .client
        .get(app.url("/signup"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let csrf = common::hidden_field(&page, "csrf_token").unwrap();
    let post = |slug: &str, email: &str, password: &str| {
        app.client.post(app.url("/signup")).form(&[
            ("csrf_token", csrf.as_str()),
            ("display_name", "New Shop"),
            ("slug", slug),
            ("email", email),
            ("password", password),
        ])
    };
    let r = post("new-shop", "me@shop.test", "short")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let page = r.text().await.unwrap();
    assert!(page.contains("at least 10 characters"));
    assert!(page.contains("value=\"new-shop\""), "typed values are kept");
    let csrf = common::hidden_field(&page, "csrf_token").unwrap();
    let r = app
        .client
        .post(app.url("/signup"))
        .form(&[
            ("csrf_token", csrf.as_str()),
            ("display_name", "New Shop"),
            ("slug", "new-shop"),
            ("email", "me@shop.test"),
            ("password", "long enough password"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let overview = app.client.get(app.url("/overview")).send().await.unwrap();
    assert_eq!(overview.status(), 200);
    assert!(overview.text().await.unwrap().contains("New Shop"));
    // The same email again: refused, and no second tenant is left behind.
    let other = new_client();
    let page = other
        .get(app.url("/signup"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let csrf2 = common::hidden_field(&page, "csrf_token").unwrap();
    let r = other
        .post(app.url("/signup"))
        .form(&[
            ("csrf_token", csrf2.as_str()),
            ("display_name", "Copy"),
            ("slug", "copy-shop"),
            ("email", "me@shop.test"),
            ("password", "long enough password"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let slug = stockade_domain::TenantSlug::parse("copy-shop").unwrap();
    assert!(
        stockade_store::tenants::by_slug(&app.pool, &slug)
            .await
            .is_err()
    );
}

#[tokio::test]
async fn a_form_posted_from_another_site_is_refused_before_its_body_is_read() {
    let app = TestApp::spawn().await;
    let password = app
        .create_user("owner@example.com", Role::Admin, None)
        .await;
    let client = new_client();
    let csrf = app.login_csrf(&client).await;
    let form = [
        ("csrf_token", csrf.as_str()),
        ("email", "owner@example.com"),
        ("password", password.as_str()),
    ];
    // Another site's page posting the sign-in form, with a valid token even.
    for (name, value) in [
        ("origin", "http://evil.example"),
        ("sec-fetch-site", "cross-site"),
    ] {
        let r = client
            .post(app.url("/login"))
            .header(name, value)
            .form(&form)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{name}: {value}");
        assert!(r.headers().get("set-cookie").is_none());
    }
    // A megabyte from another site: refused as cross-site (403), not as too
    // large (413), so it was never read.
    let r = client
        .post(app.url("/login"))
        .header("origin", "http://evil.example")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(vec![b'a'; 1 << 20])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // From the panel's own pages it signs in.
    let r = client
        .post(app.url("/login"))
        .header("origin", app.address.as_str())
        .header("sec-fetch-site", "same-origin")
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
}
