//! `stockade up` as a provider runs it: no DATABASE_URL, a managed cluster,
//! the first admin, the panel, a clean stop; and one clear line for bad input.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::new_client;
use common::ports::free_port;

const ADMIN_PASSWORD: &str = "first admin password";

/// A folder the unprivileged database user can reach.
fn workdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

fn stockade(dir: &Path, port: u16) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_stockade"));
    cmd.current_dir(dir)
        .env_remove("DATABASE_URL")
        .env_remove("STOCKADE_CONFIG")
        .env("STOCKADE_LISTEN", format!("127.0.0.1:{port}"))
        .env("STOCKADE_ADMIN_PASSWORD", ADMIN_PASSWORD)
        .env("STOCKADE_NODE_NAME", format!("up-test-{port}"))
        // No jails here: leave the host's bridge, firewall and metrics port alone.
        .env("STOCKADE_JAIL_NETWORK", "off")
        .env("STOCKADE_AGENT_METRICS", "off")
        .env("STOCKADE_PROXY_HTTP", "off")
        .env("STOCKADE_LOG", "warn");
    cmd
}

/// Kills the process on drop if a test failed half-way.
struct Running(Child);
impl Drop for Running {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            terminate(&self.0);
            let _ = self.0.wait();
        }
    }
}

fn terminate(child: &Child) {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
}

fn start_up(dir: &Path, port: u16) -> (Running, Vec<String>) {
    spawn_up(stockade(dir, port), port)
}

/// Runs `cmd up` and reads its output until it announces the panel.
fn spawn_up(mut cmd: Command, port: u16) -> (Running, Vec<String>) {
    let mut child = cmd
        .arg("up")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let mut lines = Vec::new();
    for line in stdout.lines() {
        let line = line.unwrap();
        let done = line.starts_with("Stockade is up:");
        lines.push(line);
        if done {
            break;
        }
    }
    let mut running = Running(child);
    if !lines.iter().any(|l| l.starts_with("Stockade is up:")) {
        let status = running.0.wait().unwrap();
        panic!("up did not start ({status}): {lines:?}");
    }
    assert!(
        lines
            .last()
            .is_some_and(|l| l == &format!("Stockade is up: http://127.0.0.1:{port}")),
        "up did not announce the panel: {lines:?}"
    );
    (running, lines)
}

fn wait_exit(running: &mut Running, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = running.0.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "stockade did not stop in time");
        std::thread::sleep(Duration::from_millis(50));
    }
}

async fn sign_in_as_admin(port: u16) {
    let base = format!("http://127.0.0.1:{port}");
    let ready = reqwest::get(format!("{base}/readyz")).await.unwrap();
    assert_eq!(ready.status(), 200);
    let client = new_client();
    let page = client
        .get(format!("{base}/login"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let csrf = common::hidden_field(&page, "csrf_token").unwrap();
    let r = client
        .post(format!("{base}/login"))
        .form(&[
            ("csrf_token", csrf.as_str()),
            ("email", "admin@localhost"),
            ("password", ADMIN_PASSWORD),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303, "the first admin can sign in");
    let home = client.get(format!("{base}/")).send().await.unwrap();
    assert_eq!(
        home.headers()["location"],
        "/staff/tenants",
        "staff land on the tenants page"
    );
    let home = client
        .get(format!("{base}/staff/tenants"))
        .send()
        .await
        .unwrap();
    assert_eq!(home.status(), 200);
    assert!(home.text().await.unwrap().contains("admin@localhost"));
}

#[tokio::test]
async fn up_runs_the_panel_on_a_managed_cluster_and_stops_cleanly() {
    let dir = workdir();
    let port = free_port();
    let (mut running, lines) = start_up(dir.path(), port);
    assert!(
        lines
            .iter()
            .any(|l| l == "First admin account: admin@localhost"),
        "{lines:?}"
    );
    assert!(
        !lines.iter().any(|l| l.contains(ADMIN_PASSWORD)),
        "a given password is never echoed"
    );
    sign_in_as_admin(port).await;

    // Beside a running `up`, the README's token command finds the managed
    // cluster from the same configuration, with no DATABASE_URL.
    let made = stockade(dir.path(), port)
        .args([
            "token",
            "create",
            "--name",
            "beside-up",
            "--scope",
            "tenants:read",
        ])
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    assert!(String::from_utf8_lossy(&made.stdout).contains("stk_"));

    // A second `up` on the same folder refuses instead of corrupting it.
    let second = stockade(dir.path(), free_port())
        .arg("up")
        .output()
        .unwrap();
    assert!(!second.status.success());
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(err.contains("already running"), "{err}");

    terminate(&running.0);
    let status = wait_exit(&mut running, Duration::from_secs(40));
    assert!(status.success(), "clean stop: {status}");
    assert!(
        !dir.path().join("var/pg/postmaster.pid").exists(),
        "PostgreSQL was stopped"
    );
    // With no cluster running, the command says what it looked for.
    let none = stockade(dir.path(), port)
        .args(["token", "ls"])
        .output()
        .unwrap();
    assert!(!none.status.success());
    let err = String::from_utf8_lossy(&none.stderr);
    assert!(err.contains("no managed cluster runs in var/pg"), "{err}");

    // The folder is reused: the admin already exists, the password still works.
    let (mut again, lines) = start_up(dir.path(), port);
    assert!(
        !lines.iter().any(|l| l.starts_with("First admin")),
        "{lines:?}"
    );
    sign_in_as_admin(port).await;
    terminate(&again.0);
    assert!(wait_exit(&mut again, Duration::from_secs(40)).success());
    assert!(!dir.path().join("var/pg/postmaster.pid").exists());
}

/// An account made for one test, removed again whatever happens.
struct FreshUser(String);
impl Drop for FreshUser {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.0).status();
    }
}

/// The real user id of process `pid`.
fn uid_of(pid: u32) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// The README's first command on a new node: neither the web server's
/// account nor the database's exists yet, and accounts are looked up
/// through the host's own name-service configuration (modules such as
/// systemd's included), which `up` must load without crashing before it has
/// printed anything. Each runs as its own account, and the web server in a
/// session of its own.
#[tokio::test]
async fn up_creates_missing_accounts_and_runs_the_database_and_web_server_apart() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("SKIPPED: creating accounts needs root");
        return;
    }
    let port = free_port();
    let web_user = FreshUser(format!("stk-up-{port}"));
    let db_user = FreshUser(format!("stk-db-{port}"));
    let lookup = |name: &str| {
        nix::unistd::User::from_name(name)
            .unwrap()
            .map(|u| u.uid.as_raw())
    };
    assert!(lookup(&web_user.0).is_none() && lookup(&db_user.0).is_none());
    let dir = workdir();
    let mut cmd = stockade(dir.path(), port);
    cmd.env("STOCKADE_RUN_AS", &web_user.0)
        .env("STOCKADE_DB_RUN_AS", &db_user.0);
    let (mut running, _) = spawn_up(cmd, port);
    let web_uid = lookup(&web_user.0).expect("up created the web server's account");
    let db_uid = lookup(&db_user.0).expect("up created the database's account");
    sign_in_as_admin(port).await;

    let pg = std::fs::read_to_string(dir.path().join("var/pg/postmaster.pid")).unwrap();
    let pg_pid: u32 = pg.lines().next().unwrap().parse().unwrap();
    assert_eq!(uid_of(pg_pid), db_uid, "PostgreSQL runs as its own account");
    assert_eq!(
        std::fs::metadata(dir.path().join("var/pg")).unwrap().uid(),
        db_uid
    );
    let children =
        std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", running.0.id())).unwrap();
    let web_pid = children
        .split_whitespace()
        .map(|p| p.parse::<u32>().unwrap())
        .find(|p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| c.split(|b| *b == 0).any(|a| a == b"serve"))
        })
        .expect("the web server is a child of up");
    assert_eq!(
        uid_of(web_pid),
        web_uid,
        "the web server runs as its own account"
    );
    let sid = |pid: u32| {
        nix::unistd::getsid(Some(nix::unistd::Pid::from_raw(
            i32::try_from(pid).unwrap(),
        )))
        .unwrap()
    };
    assert_ne!(
        sid(web_pid),
        sid(running.0.id()),
        "the web server has a session of its own"
    );
    let hba = std::fs::read_to_string(dir.path().join("var/pg/pg_hba.conf")).unwrap();
    assert!(!hba.contains("trust"), "{hba}");

    terminate(&running.0);
    assert!(wait_exit(&mut running, Duration::from_secs(40)).success());
}

#[test]
fn a_port_in_use_is_one_clear_line_and_leaves_nothing_running() {
    let dir = workdir();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let out = stockade(dir.path(), port).arg("up").output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("127.0.0.1:{port} is already in use")),
        "{err}"
    );
    assert!(
        !dir.path().join("var/pg/postmaster.pid").exists(),
        "the database was stopped again"
    );
}

#[test]
fn bad_configuration_is_one_clear_line() {
    let dir = workdir();
    let out = stockade(dir.path(), 1)
        .env("STOCKADE_LISTEN", "not-an-address")
        .arg("up")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("listen") && err.contains("STOCKADE_LISTEN"),
        "{err}"
    );
    assert!(!dir.path().join("var").exists(), "nothing was created");

    let file = dir.path().join("stockade.toml");
    std::fs::write(&file, "lissten = \"127.0.0.1:1\"\n").unwrap();
    let out = stockade(dir.path(), 1)
        .arg("--config")
        .arg(&file)
        .arg("doctor")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown setting \"lissten\""), "{err}");
}

#[test]
fn an_unreachable_database_is_one_clear_line() {
    let dir = workdir();
    let port = free_port();
    let out = stockade(dir.path(), free_port())
        .env(
            "DATABASE_URL",
            format!("postgres://stockade@127.0.0.1:{port}/stockade"),
        )
        .arg("migrate")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("stockade: cannot reach the database"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

#[test]
fn doctor_prints_what_the_host_offers() {
    let out = Command::new(env!("CARGO_BIN_EXE_stockade"))
        .arg("doctor")
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for row in [
        "cgroups",
        "overlayfs",
        "loop devices",
        "network namespaces",
        "veth",
        "tc",
        "user namespaces",
        "busybox",
        "mkfs.ext4",
        "PostgreSQL binaries",
        "PostgreSQL server",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(row)),
            "doctor lists {row}:\n{text}"
        );
    }
}

#[test]
fn every_verb_has_help() {
    for verb in [
        &["up"][..],
        &["serve"],
        &["agent"],
        &["migrate"],
        &["staff", "create"],
        &["doctor"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_stockade"))
            .args(verb)
            .arg("--help")
            .output()
            .unwrap();
        assert!(out.status.success(), "{verb:?}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Usage:"),
            "{verb:?}"
        );
    }
}
