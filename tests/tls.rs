//! HTTPS through a node's proxy: certificates issued by ACME (Debian's
//! `pebble` test CA on this machine) and uploaded by customers.
//! Needs root, haproxy and pebble; without them each test says so and returns.

mod common;

use std::time::{Duration, Instant};

use common::agent::{Node, is_root, wait_node, wait_observed};
use common::tls::{Pebble, TestCa, free_port};
use stockade_domain::{DomainName, JailKind, JailName, Limits, ObservedState, TenantSlug};
use stockade_store::domains::{self, NewDomain};
use stockade_store::jails::{self, NewJail};
use stockade_store::{PgPool, StoreError, certificates, plans, tenants};
use uuid::Uuid;

fn tools_here() -> bool {
    let ok = is_root()
        && [
            "/usr/sbin/haproxy",
            "/usr/bin/pebble",
            "/usr/bin/pebble-challtestsrv",
        ]
        .iter()
        .all(|p| std::path::Path::new(p).exists());
    if !ok {
        eprintln!("SKIPPED: needs root, haproxy and pebble (scripts/test installs them)");
    }
    ok
}

async fn tenant(pool: &PgPool) -> Uuid {
    let plan = plans::by_name(pool, "business").await.unwrap();
    let slug =
        TenantSlug::parse(&format!("t{}", &Uuid::new_v4().simple().to_string()[..8])).unwrap();
    tenants::create(pool, &slug, "TLS test", plan.id)
        .await
        .unwrap()
        .id
}

fn web_jail() -> NewJail {
    NewJail {
        name: JailName::parse("site").unwrap(),
        image: "busybox".into(),
        kind: JailKind::System,
        command: vec![],
        limits: Limits {
            cpu_millicores: 500,
            memory_bytes: 64 << 20,
            pids: 64,
            disk_bytes: 32 << 20,
            ..Limits::default()
        },
    }
}

/// A client trusting only `root` that reaches every name at `to`.
fn client_for(root: &str, names: &[&str], to: std::net::SocketAddr) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(root.as_bytes()).unwrap());
    for n in names {
        b = b.resolve(n, to);
    }
    b.build().unwrap()
}

#[tokio::test]
async fn acme_issues_through_the_proxy_and_customers_may_upload_their_own() {
    if !tools_here() {
        return;
    }
    let (pool, url) = common::fresh_database().await;
    let (http, https) = (free_port(), free_port());
    let pebble = Pebble::start(http);
    let http_at = format!("127.0.0.1:{http}");
    let https_at = format!("127.0.0.1:{https}");
    let api_root = pebble.api_root.display().to_string();
    let node = Node::with_network_and_env(
        &url,
        "10.99.0.1/24",
        &[
            ("STOCKADE_PROXY_HTTP", http_at.as_str()),
            ("STOCKADE_PROXY_HTTPS", https_at.as_str()),
            ("STOCKADE_ACME_DIRECTORY", pebble.directory.as_str()),
            ("STOCKADE_ACME_ROOT", api_root.as_str()),
        ],
    );
    wait_node(&pool, &node.name).await;
    let tenant = tenant(&pool).await;
    let jail = jails::create(&pool, tenant, &web_jail()).await.unwrap();
    let jail = wait_observed(&pool, tenant, jail.id, ObservedState::Running).await;
    let engine = node.engine();
    let script = "echo hello-over-tls > /srv/www/index.html";
    assert_eq!(
        engine
            .exec(
                &jail.host_name(),
                &["sh".into(), "-c".into(), script.into()]
            )
            .unwrap(),
        0
    );
    let site = domains::attach(
        &pool,
        tenant,
        jail.id,
        &NewDomain {
            name: DomainName::parse("site.test").unwrap(),
            www: true,
            jail_port: 80,
            proof_required: false,
        },
    )
    .await
    .unwrap();

    // The node orders a certificate for both names and serves it.
    let t = Instant::now();
    let cert = loop {
        let certs = certificates::for_tenant(&pool, tenant).await.unwrap();
        if let Some(c) = certs.into_iter().find(|c| c.domain_id == site.id) {
            break c;
        }
        let d = domains::for_jail(&pool, tenant, jail.id).await.unwrap();
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "no certificate: {:?}",
            d[0].acme_error
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(cert.source, "acme");
    assert_eq!(cert.info.names, ["site.test", "www.site.test"]);
    assert!(cert.info.issuer.contains("Pebble"), "{}", cert.info.issuer);
    assert!(!cert.expires_soon(chrono::Utc::now()));
    let root = pebble.issuing_root().await;
    let to: std::net::SocketAddr = https_at.parse().unwrap();
    let client = client_for(&root, &["site.test", "www.site.test"], to);
    // The proxy reloads with the new certificate within a second or two;
    // a busy machine may take longer.
    let deadline = Instant::now() + Duration::from_secs(30);
    let page = loop {
        match client
            .get(format!("https://site.test:{https}/"))
            .send()
            .await
        {
            Ok(r) if r.status() == 200 => break r,
            other => {
                assert!(Instant::now() < deadline, "no HTTPS answer: {other:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert_eq!(page.version(), reqwest::Version::HTTP_2, "HTTP/2 over TLS");
    assert!(page.text().await.unwrap().contains("hello-over-tls"));
    let www = client
        .get(format!("https://www.site.test:{https}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(www.status(), 200);

    // The key is stored sealed: the row holds no PEM key.
    let sealed: Vec<u8> =
        sqlx::query_scalar("SELECT key_sealed FROM certificates WHERE domain_id = $1")
            .bind(site.id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(!String::from_utf8_lossy(&sealed).contains("PRIVATE KEY"));

    // Renewed before it expires: a certificate within 30 days of its end
    // (aged here by moving its end) is ordered anew and replaced.
    let first_chain: String =
        sqlx::query_scalar("SELECT chain_pem FROM certificates WHERE domain_id = $1")
            .bind(site.id)
            .fetch_one(&pool)
            .await
            .unwrap();
    sqlx::query(
        "UPDATE certificates SET not_after = now() + interval '10 days' WHERE domain_id = $1",
    )
    .bind(site.id)
    .execute(&pool)
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (chain, fresh): (String, bool) = sqlx::query_as(
            "SELECT chain_pem, not_after > now() + interval '30 days' FROM certificates WHERE domain_id = $1",
        )
        .bind(site.id)
        .fetch_one(&pool)
        .await
        .unwrap();
        if chain != first_chain && fresh {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the certificate was never renewed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let renewed = certificates::for_tenant(&pool, tenant).await.unwrap();
    assert!(
        !renewed[0].expires_soon(chrono::Utc::now()),
        "renewed for its full term"
    );

    // An upload: checked, then served instead of ACME's.
    let ca = TestCa::new("Customer CA");
    let (leaf, key) = ca.issue(&["site.test", "www.site.test"], 90);
    let chain = format!("{leaf}{}", ca.pem);
    let refuse = |chain: String, key: String| {
        let pool = pool.clone();
        async move {
            match domains::upload_certificate(&pool, tenant, jail.id, site.id, &chain, &key).await {
                Err(StoreError::Invalid { field, message }) => format!("{field}: {message}"),
                other => panic!("{other:?}"),
            }
        }
    };
    let (_, other_key) = ca.issue(&["site.test"], 90);
    assert!(
        refuse(chain.clone(), other_key)
            .await
            .starts_with("key: does not match")
    );
    let (narrow, narrow_key) = ca.issue(&["site.test"], 90);
    assert!(
        refuse(narrow, narrow_key)
            .await
            .contains("does not cover www.site.test")
    );
    assert!(
        refuse(format!("{}{leaf}", ca.pem), key.clone())
            .await
            .contains("out of order"),
        "the CA first is refused"
    );
    let info = domains::upload_certificate(&pool, tenant, jail.id, site.id, &chain, &key)
        .await
        .unwrap();
    assert_eq!(info.issuer, "CN=Customer CA");
    let theirs = client_for(&ca.pem, &["site.test"], to);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = theirs
            .get(format!("https://site.test:{https}/"))
            .send()
            .await
            && r.status() == 200
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the uploaded certificate is not served"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The uploaded certificate is not replaced by ACME's.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let c = certificates::for_tenant(&pool, tenant).await.unwrap();
    assert_eq!(c[0].source, "upload");
    assert!(!c[0].expires_soon(chrono::Utc::now()));
    // One that ends in ten days is taken, and said to expire soon.
    let (short, short_key) = ca.issue(&["site.test", "www.site.test"], 10);
    domains::upload_certificate(
        &pool,
        tenant,
        jail.id,
        site.id,
        &format!("{short}{}", ca.pem),
        &short_key,
    )
    .await
    .unwrap();
    let c = certificates::for_tenant(&pool, tenant).await.unwrap();
    assert!(c[0].expires_soon(chrono::Utc::now()));

    tenants::terminate(&pool, tenant).await.unwrap();
    wait_observed(&pool, tenant, jail.id, ObservedState::Deleted).await;
    drop(node);
    drop(pebble);
}
