//! SSH and SFTP into a jail through its node's gateway, with the OpenSSH
//! client a customer uses: keys registered in the panel and the API, a
//! command run in the jail, files uploaded and fetched with `sftp` inside
//! the jail's root and disk quota, and every refusal (another tenant's key,
//! an unknown jail, a stopped jail, a suspended tenant, a bad key). Needs
//! root; without it the tests return.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::agent::{Node, is_root, wait_node, wait_observed};
use common::{TestApp, hidden_field, new_client};
use secrecy::ExposeSecret;
use stockade_domain::{DesiredState, JailKind, JailName, Limits, ObservedState, Role, TenantSlug};
use stockade_store::jails::{self, NewJail};
use stockade_store::tokens::{self, Scope};
use stockade_store::{plans, tenants};

fn idle_jail(name: &str) -> NewJail {
    NewJail {
        name: JailName::parse(name).unwrap(),
        image: "busybox".into(),
        kind: JailKind::System,
        command: vec![
            "sh".into(),
            "-c".into(),
            "while true; do sleep 1; done".into(),
        ],
        limits: Limits {
            cpu_millicores: 500,
            memory_bytes: 64 << 20,
            pids: 32,
            disk_bytes: 32 << 20,
            ..Limits::default()
        },
    }
}

/// A key pair made with `ssh-keygen`, in `dir`.
fn keygen(dir: &Path, name: &str) -> (PathBuf, String) {
    let path = dir.join(name);
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C"])
        .arg(format!("{name}@laptop"))
        .arg("-f")
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let public = std::fs::read_to_string(path.with_extension("pub")).unwrap();
    (path, public.trim().to_owned())
}

/// The OpenSSH client, set to trust only `known_hosts`, offer only `key`
/// and never ask anything.
struct Client {
    host: String,
    port: String,
    known_hosts: PathBuf,
}

impl Client {
    fn options(&self, key: &Path) -> Vec<String> {
        [
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "LogLevel=ERROR",
            "-F",
            "/dev/null",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .chain([
            "-o".to_owned(),
            format!("UserKnownHostsFile={}", self.known_hosts.display()),
            "-i".to_owned(),
            key.display().to_string(),
        ])
        .collect()
    }

    /// The client for the SSH gateway of node `node`, which trusts the host
    /// key the node recorded (kept in `dir`); with the gateway's address
    /// and the key's fingerprint.
    async fn of_node(pool: &sqlx::PgPool, node: &str, dir: &Path) -> (Client, String, String) {
        let (endpoint, host_key, fingerprint): (String, String, String) = sqlx::query_as(
            "SELECT ssh_endpoint, ssh_host_key, ssh_host_fingerprint FROM nodes WHERE name = $1",
        )
        .bind(node)
        .fetch_one(pool)
        .await
        .unwrap();
        let (host, port) = endpoint.rsplit_once(':').unwrap();
        let known_hosts = dir.join("known_hosts");
        std::fs::write(&known_hosts, format!("[{host}]:{port} {host_key}\n")).unwrap();
        let client = Client {
            host: host.to_owned(),
            port: port.to_owned(),
            known_hosts,
        };
        (client, endpoint, fingerprint)
    }

    async fn ssh(&self, key: &Path, login: &str, command: &str) -> Output {
        self.ssh_typed(key, false, login, Some(command), b"").await
    }

    /// `ssh` with `input` typed, on a terminal (forced) when `tty`, running
    /// `command` or a shell.
    async fn ssh_typed(
        &self,
        key: &Path,
        tty: bool,
        login: &str,
        command: Option<&str>,
        input: &[u8],
    ) -> Output {
        let mut c = Command::new("ssh");
        c.args(self.options(key))
            .args(tty.then_some("-tt"))
            .args(["-p", &self.port])
            .arg(format!("{login}@{}", self.host))
            .args(command)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let input = input.to_vec();
        tokio::task::spawn_blocking(move || {
            let mut child = c.spawn().unwrap();
            std::io::Write::write_all(&mut child.stdin.take().unwrap(), &input).unwrap();
            child.wait_with_output().unwrap()
        })
        .await
        .unwrap()
    }

    async fn scp(&self, key: &Path, local: &Path, remote: &str) -> Output {
        let mut c = Command::new("scp");
        c.args(self.options(key))
            .args(["-q", "-P", &self.port])
            .arg(local)
            .arg(remote);
        tokio::task::spawn_blocking(move || c.output().unwrap())
            .await
            .unwrap()
    }

    async fn sftp(&self, key: &Path, login: &str, batch: &str) -> Output {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("batch");
        std::fs::write(&file, batch).unwrap();
        let mut c = Command::new("sftp");
        c.args(self.options(key))
            .args(["-P", &self.port, "-b"])
            .arg(&file)
            .arg(format!("{login}@{}", self.host));
        tokio::task::spawn_blocking(move || c.output().unwrap())
            .await
            .unwrap()
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The text of the page at `url`.
async fn page_text(client: &reqwest::Client, url: &str) -> String {
    client.get(url).send().await.unwrap().text().await.unwrap()
}

#[tokio::test]
async fn a_customer_logs_in_with_a_key_runs_commands_and_moves_files_with_sftp() {
    if !is_root() {
        eprintln!("SKIPPED: a jail for SSH needs root");
        return;
    }
    let app = TestApp::spawn().await;
    let node = Node::new(&app.db_url);
    wait_node(&app.pool, &node.name).await;
    let plan = plans::by_name(&app.pool, "starter").await.unwrap();
    let mut ids = Vec::new();
    for slug in ["sshy", "nosy"] {
        let t = tenants::create(&app.pool, &TenantSlug::parse(slug).unwrap(), slug, plan.id)
            .await
            .unwrap();
        ids.push(t.id);
    }
    let (tenant, other) = (ids[0], ids[1]);
    let jail = jails::create(&app.pool, tenant, &idle_jail("web"))
        .await
        .unwrap();
    let theirs = jails::create(&app.pool, other, &idle_jail("web"))
        .await
        .unwrap();
    wait_observed(&app.pool, tenant, jail.id, ObservedState::Running).await;
    wait_observed(&app.pool, other, theirs.id, ObservedState::Running).await;
    let keys = tempfile::tempdir().unwrap();
    let (own_key, own_public) = keygen(keys.path(), "own");
    let (their_key, their_public) = keygen(keys.path(), "theirs");

    // The customer adds their key in the panel; a bad one is refused with
    // why, and what was typed is kept.
    let password = app
        .create_user("c@sshy.test", Role::Customer, Some(tenant))
        .await;
    let customer = new_client();
    app.sign_in(&customer, "c@sshy.test", &password).await;
    let page = page_text(&customer, &app.url("/ssh-keys")).await;
    let csrf = hidden_field(&page, "csrf_token").unwrap();
    let res = customer
        .post(app.url("/ssh-keys"))
        .form(&[
            ("csrf_token", csrf.as_str()),
            ("name", "old laptop"),
            ("public_key", "ssh-dss AAAAB3NzaC1kc3MAAACBAP"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 422);
    let body = res.text().await.unwrap();
    assert!(body.contains("not a key type the node accepts"), "{body}");
    assert!(
        body.contains("ssh-dss AAAAB3NzaC1kc3MAAACBAP</textarea>"),
        "kept: {body}"
    );
    let res = customer
        .post(app.url("/ssh-keys"))
        .form(&[
            ("csrf_token", csrf.as_str()),
            ("name", ""),
            ("public_key", own_public.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 303, "back to the list");
    let body = page_text(&customer, &app.url("/ssh-keys")).await;
    let fingerprint = stockade_domain::SshPublicKey::parse(&own_public)
        .unwrap()
        .fingerprint();
    assert!(body.contains(&fingerprint), "listed: {body}");
    assert!(body.contains("own@laptop"), "named by its comment: {body}");
    // The same key twice is refused, naming the first.
    let res = customer
        .post(app.url("/ssh-keys"))
        .form(&[
            ("csrf_token", csrf.as_str()),
            ("name", "again"),
            ("public_key", own_public.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 422);
    assert!(res.text().await.unwrap().contains("already registered"));

    // The other tenant registers theirs through the API.
    let (_, token) = tokens::create(&app.pool, "nosy", &[Scope::JailsWrite], Some(other))
        .await
        .unwrap();
    let api = reqwest::Client::new();
    let res = api
        .post(app.url(&format!("/api/v1/tenants/{other}/ssh-keys")))
        .bearer_auth(token.expose_secret())
        .json(&serde_json::json!({"public_key": "ssh-ed25519 !!!"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 422);
    let err: serde_json::Value = res.json().await.unwrap();
    assert_eq!(err["error"]["details"]["field"], "public_key", "{err}");
    let res = api
        .post(app.url(&format!("/api/v1/tenants/{other}/ssh-keys")))
        .bearer_auth(token.expose_secret())
        .json(&serde_json::json!({"public_key": their_public, "name": "ci"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    // Their token sees only their keys: the other tenant is not found.
    let res = api
        .get(app.url(&format!("/api/v1/tenants/{tenant}/ssh-keys")))
        .bearer_auth(token.expose_secret())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    let res = api
        .get(app.url(&format!("/api/v1/tenants/{other}/ssh-keys")))
        .bearer_auth(token.expose_secret())
        .send()
        .await
        .unwrap();
    let listed: serde_json::Value = res.json().await.unwrap();
    assert_eq!(listed["data"][0]["name"], "ci", "{listed}");

    // The jail page says how to log in, and the host key to expect.
    let page = page_text(&customer, &app.url(&format!("/jails/{}", jail.id))).await;
    let (client, endpoint, host_fp) = Client::of_node(&app.pool, &node.name, keys.path()).await;
    let (host, port) = (client.host.clone(), client.port.clone());
    assert!(
        page.contains(&format!("ssh -p {port} web+sshy@{host}")),
        "the login command: {page}"
    );
    assert!(
        page.contains(&host_fp),
        "the host key's fingerprint: {page}"
    );
    // Staff see each node's gateway and host key.
    let staff_password = app
        .create_user("ops@provider.test", Role::Operator, None)
        .await;
    let staff = new_client();
    app.sign_in(&staff, "ops@provider.test", &staff_password)
        .await;
    let nodes_page = page_text(&staff, &app.url("/staff/nodes")).await;
    assert!(
        nodes_page.contains(&format!("{endpoint} ({host_fp})")),
        "{nodes_page}"
    );

    // A command runs in the jail, as its root, and its exit code comes back.
    let out = client
        .ssh(
            &own_key,
            "web+sshy",
            "hostname; id -u; echo $((6 * 7)); exit 3",
        )
        .await;
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    // The jail's hostname is its name.
    assert_eq!(text(&out.stdout), "web\n0\n42\n", "{out:?}");
    // Asked for, a terminal: the command runs on one of the jail's.
    let out = client
        .ssh_typed(
            &own_key,
            true,
            "web+sshy",
            Some("test -t 0 && stty size; exit 4"),
            b"",
        )
        .await;
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    assert_eq!(text(&out.stdout), "24 80\r\n", "{out:?}");
    // A login without a command: a shell on a terminal, reading what is
    // typed.
    let out = client
        .ssh_typed(
            &own_key,
            true,
            "web+sshy",
            None,
            b"echo in-$((1 + 1))-shell; exit 5\n",
        )
        .await;
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    assert!(text(&out.stdout).contains("in-2-shell"), "{out:?}");
    // Input reaches it, and stderr is kept apart.
    let out = client
        .ssh_typed(
            &own_key,
            false,
            "web+sshy",
            Some("tr a-z A-Z; echo oops >&2"),
            b"shout\n",
        )
        .await;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(text(&out.stdout), "SHOUT\n");
    assert_eq!(text(&out.stderr), "oops\n");

    // Files: put, list, get back, rename; a path climbing out of the root
    // stays in the jail.
    let local = keys.path().join("site.bin");
    let content: Vec<u8> = (0..5u32 << 20).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&local, &content).unwrap();
    let back = keys.path().join("back.bin");
    let escape = format!("escape-{}", uuid::Uuid::new_v4().simple());
    let batch = format!(
        "mkdir /srv/site\nput {} /srv/site/site.bin\nls -l /srv/site\nget /srv/site/site.bin {}\n\
         rename /srv/site/site.bin /srv/site/index.bin\nput {} ../../../../../tmp/{escape}\n",
        local.display(),
        back.display(),
        local.display(),
    );
    let out = client.sftp(&own_key, "web+sshy", &batch).await;
    assert!(out.status.success(), "{out:?}");
    assert!(text(&out.stdout).contains("site.bin"), "{out:?}");
    assert_eq!(
        std::fs::read(&back).unwrap(),
        content,
        "fetched as uploaded"
    );
    assert!(
        !Path::new("/tmp").join(&escape).exists(),
        "nothing is written outside the jail"
    );
    let out = client
        .ssh(
            &own_key,
            "web+sshy",
            &format!(
                "sha256sum /srv/site/index.bin; stat -c %u /srv/site/index.bin; ls /tmp/{escape}"
            ),
        )
        .await;
    assert!(out.status.success(), "{out:?}");
    let seen = text(&out.stdout);
    let expected = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&content))
    };
    assert!(seen.starts_with(&expected), "{seen}");
    assert!(seen.contains("\n0\n"), "owned by the jail's root: {seen}");
    assert!(seen.contains(&format!("/tmp/{escape}")), "{seen}");

    // scp (which speaks SFTP) copies into the jail as well.
    let out = client
        .scp(
            &own_key,
            &local,
            &format!("web+sshy@{host}:/srv/site/by-scp.bin"),
        )
        .await;
    assert!(out.status.success(), "{out:?}");
    let out = client
        .ssh(&own_key, "web+sshy", "wc -c < /srv/site/by-scp.bin")
        .await;
    assert_eq!(
        text(&out.stdout).trim(),
        (5u32 << 20).to_string(),
        "{out:?}"
    );

    // The jail's disk quota holds for SFTP too: 40 MiB do not fit in 32.
    let big = keys.path().join("big.bin");
    std::fs::write(&big, vec![7u8; 40 << 20]).unwrap();
    let out = client
        .sftp(
            &own_key,
            "web+sshy",
            &format!("put {} /srv/site/big.bin\n", big.display()),
        )
        .await;
    assert!(!out.status.success(), "over quota: {out:?}");

    // Refusals: another tenant's key, an unknown jail, a malformed login.
    for (key, login) in [
        (&their_key, "web+sshy"),
        (&own_key, "nope+sshy"),
        (&own_key, "web+nosy"),
        (&own_key, "web"),
    ] {
        let out = client.ssh(key, login, "true").await;
        assert_eq!(out.status.code(), Some(255), "{login}: {out:?}");
        assert!(
            text(&out.stderr).contains("Permission denied"),
            "{login}: {out:?}"
        );
    }
    // Their own key opens their own jail.
    let out = client.ssh(&their_key, "web+nosy", "echo theirs").await;
    assert_eq!(text(&out.stdout), "theirs\n", "{out:?}");

    // Each session is in the tenant's audit log, with the key's name.
    let opened: Vec<(String, serde_json::Value)> = sqlx::query_as(
        "SELECT action, details FROM audit_log WHERE tenant_id = $1 AND action LIKE 'ssh.%'",
    )
    .bind(tenant)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert!(
        opened
            .iter()
            .any(|(a, d)| a == "ssh.open" && d["session"] == "sftp" && d["key"] == "own@laptop"),
        "{opened:?}"
    );
    assert!(
        opened
            .iter()
            .any(|(a, d)| a == "ssh.close" && d["exit_code"] == 3),
        "{opened:?}"
    );

    // A stopped jail says so; a suspended tenant is refused.
    jails::set_desired(&app.pool, tenant, jail.id, DesiredState::Stopped)
        .await
        .unwrap();
    wait_observed(&app.pool, tenant, jail.id, ObservedState::Stopped).await;
    let out = client.ssh(&own_key, "web+sshy", "true").await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(text(&out.stderr).contains("does not run"), "{out:?}");
    tenants::suspend(&app.pool, other, None).await.unwrap();
    let out = client.ssh(&their_key, "web+nosy", "true").await;
    assert_eq!(out.status.code(), Some(255), "{out:?}");

    // A removed key opens nothing.
    let page = page_text(&customer, &app.url("/ssh-keys")).await;
    let action = page
        .split("action=\"/ssh-keys/")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap()
        .to_owned();
    let res = customer
        .post(app.url(&format!("/ssh-keys/{action}")))
        .form(&[("csrf_token", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 303);
    let page = page_text(&customer, &app.url("/ssh-keys")).await;
    assert!(page.contains("No key yet"), "{page}");
    jails::set_desired(&app.pool, tenant, jail.id, DesiredState::Running)
        .await
        .unwrap();
    wait_observed(&app.pool, tenant, jail.id, ObservedState::Running).await;
    let out = client.ssh(&own_key, "web+sshy", "true").await;
    assert_eq!(out.status.code(), Some(255), "{out:?}");
    drop(node);
}

#[tokio::test]
async fn a_customer_moves_a_jail_to_another_image_keeping_its_files() {
    if !is_root() {
        eprintln!("SKIPPED: a jail needs root");
        return;
    }
    let app = TestApp::spawn().await;
    let node = Node::new(&app.db_url);
    wait_node(&app.pool, &node.name).await;
    let plan = plans::by_name(&app.pool, "starter").await.unwrap();
    let tenant = tenants::create(
        &app.pool,
        &TenantSlug::parse("imagy").unwrap(),
        "imagy",
        plan.id,
    )
    .await
    .unwrap()
    .id;
    let jail = jails::create(&app.pool, tenant, &idle_jail("web"))
        .await
        .unwrap();
    wait_observed(&app.pool, tenant, jail.id, ObservedState::Running).await;
    // The provider adds an image to the node: busybox with a mark of its own.
    let images = node.engine().config().image_dir.clone();
    let status = Command::new("cp")
        .arg("-a")
        .arg(images.join("busybox"))
        .arg(images.join("busybox-marked"))
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::write(images.join("busybox-marked/etc/marker"), "marked image\n").unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !jails::images_for(&app.pool, tenant, jail.id)
        .await
        .unwrap()
        .contains(&"busybox-marked".to_owned())
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the node reports its new image"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    // Staff offer the image they put on the node by hand.
    stockade_store::images::add(&app.pool, "busybox-marked", None, None, true)
        .await
        .unwrap();
    let keys = tempfile::tempdir().unwrap();
    let (key, public) = keygen(keys.path(), "laptop");
    stockade_store::ssh_keys::add(
        &app.pool,
        tenant,
        "",
        &stockade_domain::SshPublicKey::parse(&public).unwrap(),
        None,
    )
    .await
    .unwrap();
    let (client, _, _) = Client::of_node(&app.pool, &node.name, keys.path()).await;
    let out = client
        .ssh(&key, "web+imagy", "echo kept > /srv/mine; cat /etc/marker")
        .await;
    assert_eq!(out.status.code(), Some(1), "no mark yet: {out:?}");

    // Through the API: an image the node does not offer is refused by name.
    let (_, token) = tokens::create(&app.pool, "imagy", &[Scope::JailsWrite], Some(tenant))
        .await
        .unwrap();
    let url = app.url(&format!("/api/v1/tenants/{tenant}/jails/{}", jail.id));
    let api = reqwest::Client::new();
    let res = api
        .patch(&url)
        .bearer_auth(token.expose_secret())
        .json(&serde_json::json!({"image": "debian"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 422);
    let err: serde_json::Value = res.json().await.unwrap();
    assert_eq!(err["error"]["details"]["field"], "image", "{err}");
    assert!(
        err.to_string().contains("busybox-marked"),
        "offered ones named: {err}"
    );
    let res = api
        .patch(&url)
        .bearer_auth(token.expose_secret())
        .json(&serde_json::json!({"image": "busybox-marked"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let changed: serde_json::Value = res.json().await.unwrap();
    assert_eq!(changed["image"], "busybox-marked");
    // It restarts on the new image, with the files it wrote.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let out = client
            .ssh(&key, "web+imagy", "cat /etc/marker /srv/mine")
            .await;
        if out.status.success() {
            assert_eq!(text(&out.stdout), "marked image\nkept\n");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{out:?}");
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    // The settings page offers the node's images, the jail's chosen.
    let password = app
        .create_user("c@imagy.test", Role::Customer, Some(tenant))
        .await;
    let customer = new_client();
    app.sign_in(&customer, "c@imagy.test", &password).await;
    let page = page_text(&customer, &app.url(&format!("/jails/{}/settings", jail.id))).await;
    assert!(
        page.contains("<option selected>busybox-marked</option>"),
        "{page}"
    );
    assert!(page.contains("<option>busybox</option>"), "{page}");
    drop(node);
}
