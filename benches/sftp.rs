//! SFTP upload throughput into a jail through its node's SSH gateway,
//! against `scp` to this host's own `sshd` in the same run: the same
//! OpenSSH client, key and 100 MiB file, on loopback, rounds alternating.
//! (`scp` speaks SFTP since OpenSSH 9, to the host's `sftp-server`.)
//!
//! Run as root with Debian's `openssh-server` installed (only its `sshd`
//! program is used; the bench starts its own on a free loopback port):
//! `cargo bench --bench sftp`. It starts its own throw-away PostgreSQL
//! cluster and agent, and removes what it made.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{node, panel};
use stockade_domain::{JailKind, JailName, Limits, SshPublicKey, TenantSlug};
use stockade_store::jails::{self, NewJail};

const NODE: &str = "bench-sftp";
/// Bytes uploaded: 100 MiB.
const MIB: u32 = 100;
const SIZE: usize = (MIB as usize) << 20;
const ROUNDS: usize = 5;
const SSHD: &str = "/usr/sbin/sshd";

/// This host's `sshd` on `port`, for the comparison; ended on drop.
struct Sshd(std::process::Child, Option<&'static str>);
impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        if let Some(dir) = self.1 {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn run(cmd: &mut Command) -> Duration {
    let start = Instant::now();
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    let took = start.elapsed();
    assert!(out.status.success(), "{cmd:?}: {out:?}");
    took
}

fn client(cmd: &str, key: &Path, known_hosts: &Path) -> Command {
    let mut c = Command::new(cmd);
    c.args([
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "IdentitiesOnly=yes",
        "-F",
        "/dev/null",
    ])
    .arg("-o")
    .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
    .arg("-i")
    .arg(key);
    c
}

fn mib_per_s(d: Duration) -> f64 {
    f64::from(MIB) / d.as_secs_f64()
}

fn main() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("sftp bench: needs root; skipped");
        return;
    }
    if !Path::new(SSHD).exists() {
        eprintln!("sftp bench: needs {SSHD} (apt-get install openssh-server); skipped");
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let keygen = |path: &Path| {
        let ok = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", ""])
            .arg("-f")
            .arg(path)
            .status()
            .unwrap()
            .success();
        assert!(ok);
        std::fs::read_to_string(path.with_extension("pub")).unwrap()
    };
    let key = w.join("id");
    let public = keygen(&key);
    let file = w.join("upload.bin");
    let data: Vec<u8> = (0..SIZE)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13).to_le_bytes()[0])
        .collect();
    std::fs::write(&file, &data).unwrap();

    // The host's sshd, with a configuration of its own.
    let host_key = w.join("host");
    keygen(&host_key);
    std::fs::write(w.join("authorized_keys"), &public).unwrap();
    let sshd_port = free_port();
    std::fs::write(
        w.join("sshd_config"),
        format!(
            "Port {sshd_port}\nListenAddress 127.0.0.1\nHostKey {}\nAuthorizedKeysFile {}\n\
             PidFile none\nUsePAM no\nPermitRootLogin prohibit-password\nStrictModes no\n\
             Subsystem sftp /usr/lib/openssh/sftp-server\n",
            host_key.display(),
            w.join("authorized_keys").display()
        ),
    )
    .unwrap();
    let made_run_dir = !Path::new("/run/sshd").exists();
    if made_run_dir {
        std::fs::create_dir("/run/sshd").unwrap();
    }
    let sshd = Sshd(
        Command::new(SSHD)
            .args(["-D", "-e", "-f"])
            .arg(w.join("sshd_config"))
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
        made_run_dir.then_some("/run/sshd"),
    );
    let host_public = std::fs::read_to_string(host_key.with_extension("pub")).unwrap();
    let host_dir = w.join("received");
    std::fs::create_dir(&host_dir).unwrap();

    let rt = tokio::runtime::Runtime::new().unwrap();
    let db = panel::seeded(&rt, 0);
    rt.block_on(sqlx::query("DELETE FROM nodes").execute(&db.pool))
        .unwrap();
    let _agent = node::Agent::start(&db.url, NODE, &[("STOCKADE_AGENT_SSH", "127.0.0.1:0")]);
    let (endpoint, gateway_key) = rt.block_on(async {
        let pool = &db.pool;
        let deadline = Instant::now() + Duration::from_secs(60);
        let gateway = loop {
            if let Some(g) = sqlx::query_as::<_, (String, String)>(
                "SELECT ssh_endpoint, ssh_host_key FROM nodes WHERE ssh_endpoint IS NOT NULL",
            )
            .fetch_optional(pool)
            .await
            .unwrap()
            {
                break g;
            }
            assert!(Instant::now() < deadline, "the agent never registered");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let plan = stockade_store::plans::by_name(pool, "business")
            .await
            .unwrap();
        let tenant = stockade_store::tenants::create(
            pool,
            &TenantSlug::parse("movers").unwrap(),
            "Movers",
            plan.id,
        )
        .await
        .unwrap()
        .id;
        stockade_store::ssh_keys::add(
            pool,
            tenant,
            "bench",
            &SshPublicKey::parse(&public).unwrap(),
            None,
        )
        .await
        .unwrap();
        let jail = jails::create(
            pool,
            tenant,
            &NewJail {
                name: JailName::parse("site").unwrap(),
                image: "busybox".into(),
                kind: JailKind::System,
                command: vec!["sleep".into(), "1000000".into()],
                limits: Limits {
                    cpu_millicores: 1000,
                    memory_bytes: 256 << 20,
                    pids: 64,
                    disk_bytes: 512 << 20,
                    ..Limits::default()
                },
            },
        )
        .await
        .unwrap();
        node::wait_running(pool, tenant, jail.id).await;
        gateway
    });
    let (gw_host, gw_port) = endpoint.rsplit_once(':').unwrap();
    let known_hosts = w.join("known_hosts");
    std::fs::write(
        &known_hosts,
        format!("[{gw_host}]:{gw_port} {gateway_key}\n[127.0.0.1]:{sshd_port} {host_public}\n"),
    )
    .unwrap();
    let batch = w.join("batch");
    std::fs::write(&batch, format!("put {} /srv/upload.bin\n", file.display())).unwrap();
    // The host's sshd takes a moment to listen.
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", sshd_port)).is_err() {
        assert!(Instant::now() < deadline, "sshd never listened");
        std::thread::sleep(Duration::from_millis(50));
    }

    let mut jail = Vec::new();
    let mut host = Vec::new();
    for _ in 0..ROUNDS {
        host.push(run(client("scp", &key, &known_hosts)
            .args(["-q", "-P", &sshd_port.to_string()])
            .arg(&file)
            .arg(format!(
                "root@127.0.0.1:{}",
                host_dir.join("upload.bin").display()
            ))));
        jail.push(run(client("sftp", &key, &known_hosts)
            .args(["-q", "-P", gw_port, "-b"])
            .arg(&batch)
            .arg(format!("site+movers@{gw_host}"))));
    }
    assert_eq!(
        std::fs::read(host_dir.join("upload.bin")).unwrap().len(),
        SIZE,
        "the host copy arrived whole"
    );
    jail.sort();
    host.sort();
    let (j, h) = (jail[ROUNDS / 2], host[ROUNDS / 2]);
    println!(
        "100 MiB upload, median of {ROUNDS}: SFTP into a jail {:.0} MiB/s ({:.2} s), scp to the host's sshd {:.0} MiB/s ({:.2} s): {:.0} %",
        mib_per_s(j),
        j.as_secs_f64(),
        mib_per_s(h),
        h.as_secs_f64(),
        100.0 * h.as_secs_f64() / j.as_secs_f64()
    );
    println!(
        "all rounds, jail: {:?}",
        jail.iter()
            .map(|d| format!("{:.0}", mib_per_s(*d)))
            .collect::<Vec<_>>()
    );
    println!(
        "all rounds, host: {:?}",
        host.iter()
            .map(|d| format!("{:.0}", mib_per_s(*d)))
            .collect::<Vec<_>>()
    );
    drop(sshd);
}
