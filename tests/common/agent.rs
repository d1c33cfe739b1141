//! An agent process on a node of its own, for tests that need jails to run.
#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};
use stockade_domain::{JailName, ObservedState};
use stockade_store::PgPool;
use stockade_store::jails::{self, Jail};
use uuid::Uuid;

/// Whether jail tests can run; says loudly when they cannot.
pub fn is_root() -> bool {
    if nix::unistd::Uid::effective().is_root() {
        return true;
    }
    eprintln!("!!! SKIPPED: agent tests need root (they create jails); run the suite as root");
    false
}

/// An agent process on a node of its own, cleaned up (with every jail
/// object it made) when dropped.
pub struct Node {
    /// The node's name.
    pub name: String,
    /// The node's bridge, gateway/prefix and firewall table, when its jails have networks.
    pub network: Option<(String, String)>,
    state: tempfile::TempDir,
    url: SecretString,
    child: Option<Child>,
    /// Settings of this agent that differ from the tests' usual ones.
    env: Vec<(String, String)>,
    /// The group, in every hierarchy, the agent starts in as a systemd unit
    /// with a delegated subtree would (see [`Node::in_unit`]).
    pub unit: Option<String>,
}

impl Node {
    pub fn new(url: &SecretString) -> Node {
        let name = format!("agent-test-{}", &Uuid::new_v4().simple().to_string()[..8]);
        let state = tempfile::tempdir().unwrap();
        std::fs::set_permissions(state.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut node = Node {
            name,
            state,
            url: url.clone(),
            child: None,
            network: None,
            env: Vec::new(),
            unit: None,
        };
        node.start();
        node
    }

    /// An agent started the way systemd starts a unit with `Delegate=yes`:
    /// in a group `<unit>` of every cgroup hierarchy, with
    /// `cgroup_manager = systemd`.
    pub fn in_unit(url: &SecretString) -> Node {
        let name = format!("agent-test-{}", &Uuid::new_v4().simple().to_string()[..8]);
        let state = tempfile::tempdir().unwrap();
        std::fs::set_permissions(state.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut node = Node {
            unit: Some(format!("stockade-test-{name}.service")),
            name,
            state,
            url: url.clone(),
            child: None,
            network: None,
            env: vec![("STOCKADE_CGROUP_MANAGER".into(), "systemd".into())],
        };
        node.start();
        node
    }

    /// The unit's group in each hierarchy of this host.
    fn unit_dirs(&self) -> Vec<PathBuf> {
        let Some(unit) = &self.unit else {
            return Vec::new();
        };
        std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            // A new cpuset group takes no process until given CPUs; jails
            // do not use that controller.
            .filter(|e| e.file_name() != "cpuset")
            .map(|e| e.path().join(unit))
            .collect()
    }

    /// Where this node's jails' groups are, under a hierarchy.
    fn cgroup_parent(&self) -> String {
        match &self.unit {
            Some(unit) => format!("{unit}/jails"),
            None => format!("stockade-{}", self.name),
        }
    }

    /// An agent with some settings (`STOCKADE_*` variables) of its own.
    pub fn with_env(url: &SecretString, env: &[(&str, &str)]) -> Node {
        Self::with_name_and_env(
            url,
            &format!("agent-test-{}", &Uuid::new_v4().simple().to_string()[..8]),
            env,
        )
    }

    /// An agent with the node name `name` (and a state folder of its own).
    pub fn with_name_and_env(url: &SecretString, name: &str, env: &[(&str, &str)]) -> Node {
        let mut node = Node {
            name: name.to_owned(),
            state: tempfile::tempdir().unwrap(),
            url: url.clone(),
            child: None,
            network: None,
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            unit: None,
        };
        std::fs::set_permissions(node.state.path(), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        node.start();
        node
    }

    /// An agent whose jails get addresses from `gateway` (like `10.91.0.1/24`)
    /// on a bridge and firewall table of this test's own.
    pub fn with_network(url: &SecretString, gateway: &str) -> Node {
        Self::with_network_and_env(url, gateway, &[])
    }

    /// [`Node::with_network`] with some settings of its own.
    pub fn with_network_and_env(url: &SecretString, gateway: &str, env: &[(&str, &str)]) -> Node {
        let name = format!("agent-test-{}", &Uuid::new_v4().simple().to_string()[..8]);
        let state = tempfile::tempdir().unwrap();
        std::fs::set_permissions(state.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let bridge = format!("stkt{}", &Uuid::new_v4().simple().to_string()[..6]);
        let mut node = Node {
            name,
            state,
            url: url.clone(),
            child: None,
            network: Some((bridge, gateway.to_owned())),
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            unit: None,
        };
        node.start();
        node
    }

    pub fn start(&mut self) {
        let (bridge, network) = self
            .network
            .clone()
            .unwrap_or_else(|| ("stkunused".into(), "off".into()));
        // As a unit: a shell joins the unit's groups, then becomes the agent.
        let mut joins = Vec::new();
        for dir in self.unit_dirs() {
            std::fs::create_dir_all(&dir).unwrap();
            joins.push(dir.join("cgroup.procs"));
        }
        let mut cmd = if joins.is_empty() {
            Command::new(env!("CARGO_BIN_EXE_stockade"))
        } else {
            let mut sh = Command::new("sh");
            sh.args([
                "-c",
                r#"for f in "$@"; do echo $$ > "$f" || exit 1; done; exec "$0" agent"#,
                env!("CARGO_BIN_EXE_stockade"),
            ])
            .args(&joins);
            sh
        };
        if joins.is_empty() {
            cmd.arg("agent");
        }
        let child = cmd
            .env("STOCKADE_BRIDGE", &bridge)
            .env("STOCKADE_FIREWALL_TABLE", &bridge)
            .env("STOCKADE_JAIL_NETWORK", &network)
            .env_remove("STOCKADE_CONFIG")
            .env("DATABASE_URL", self.url.expose_secret())
            .env(
                "STOCKADE_AGENT_DATABASE_URL",
                super::role_url(&self.url, stockade_store::roles::AGENT).expose_secret(),
            )
            .env("STOCKADE_NODE_NAME", &self.name)
            .env("STOCKADE_STATE_DIR", self.state.path())
            .env("STOCKADE_AGENT_METRICS", "off")
            .env("STOCKADE_AGENT_SSH", "127.0.0.1:0")
            .env("STOCKADE_PROXY_HTTP", "off")
            .env("STOCKADE_PROXY_HTTPS", "off")
            .env("STOCKADE_ACME_DIRECTORY", "off")
            .env("STOCKADE_SAMPLE_SECS", "1")
            .env("STOCKADE_RESYNC_SECS", "2")
            .env("STOCKADE_HEARTBEAT_SECS", "1")
            .env("STOCKADE_STOP_GRACE_SECS", "2")
            .env("STOCKADE_LOG", "warn")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    /// The pid of the node's proxy master, while it runs.
    pub fn proxy_pid(&self) -> Option<i32> {
        let pid: i32 = std::fs::read_to_string(self.state.path().join("proxy/haproxy.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
        (comm.trim() == "haproxy").then_some(pid)
    }

    /// The agent process's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the agent process is still alive.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// Sends SIGTERM and waits at most `limit` for the agent to exit;
    /// whether it did. One that did not is killed.
    pub fn terminate_within(&mut self, limit: Duration) -> bool {
        let Some(mut c) = self.child.take() else {
            return true;
        };
        let pid = nix::unistd::Pid::from_raw(i32::try_from(c.id()).unwrap());
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if c.try_wait().ok().flatten().is_some() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        let _ = c.wait();
        false
    }

    pub fn kill(&mut self, signal: nix::sys::signal::Signal) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(i32::try_from(c.id()).unwrap()),
                signal,
            );
            let _ = c.wait();
        }
    }

    /// The file a started jail's output is kept in on this node.
    pub fn jail_log(&self, jail: &Jail) -> PathBuf {
        self.state
            .path()
            .join("node/jails")
            .join(jail.host_name().as_str())
            .join("console.log")
    }

    pub fn engine(&self) -> stockade_jail::Engine {
        let mut cfg = stockade_jail::EngineConfig::new(
            self.state.path().join("node"),
            self.state.path().join("images"),
        );
        cfg.cgroup_parent = self.cgroup_parent();
        if let Some((bridge, gateway)) = &self.network {
            cfg.bridge = bridge.clone();
            cfg.firewall_table = bridge.clone();
            cfg.gateway = gateway.parse().unwrap();
            cfg.forwarding = false;
        }
        stockade_jail::Engine::new(cfg).unwrap()
    }

    pub fn cgroup_dir(&self, controller: &str, jail: &Jail) -> PathBuf {
        Path::new("/sys/fs/cgroup")
            .join(controller)
            .join(self.cgroup_parent())
            .join(jail.host_name().as_str())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill(nix::sys::signal::Signal::SIGKILL);
        // The node's proxy outlives its agent by design: this test ends it.
        if let Some(pid) = self.proxy_pid() {
            let pid = nix::unistd::Pid::from_raw(pid);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while nix::sys::signal::kill(pid, None).is_ok() && std::time::Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let engine = self.engine();
        if let Ok(found) = engine.discover() {
            for name in found.jails.keys() {
                let _ = engine.destroy(&JailName::parse(name).unwrap());
            }
        }
        for entry in std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = std::fs::remove_dir(entry.path().join(format!("stockade-{}", self.name)));
        }
        // The unit's groups, once the agent and its jails are gone.
        for dir in self.unit_dirs() {
            let _ = std::fs::remove_dir(dir.join("jails"));
            let _ = std::fs::remove_dir(dir.join("agent"));
            let _ = std::fs::remove_dir(&dir);
        }
        // The agent's claims on its host names.
        let claims = Path::new("/run/stockade/agents");
        let _ = std::fs::remove_file(
            claims.join(format!("cgroup-{}", self.cgroup_parent().replace('/', "%"))),
        );
        if let Some((bridge, _)) = &self.network {
            let _ = std::fs::remove_file(claims.join(format!("bridge-{bridge}")));
            let _ = std::fs::remove_file(claims.join(format!("firewall-{bridge}")));
            let _ = Command::new("ip").args(["link", "del", bridge]).status();
            let _ = Command::new("nft")
                .args(["delete", "table", "inet", bridge])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Waits until node `name` has registered.
pub async fn wait_node(pool: &PgPool, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if stockade_store::nodes::list(pool)
            .await
            .unwrap()
            .iter()
            .any(|n| n.name == name)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("node {name} never registered");
}

/// Waits until the agent has converged the jail's current generation to `state`.
pub async fn wait_observed(pool: &PgPool, tenant: Uuid, id: Uuid, state: ObservedState) -> Jail {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let j = jails::get(pool, tenant, id).await.unwrap();
        if j.observed_state == state && j.observed_generation == j.generation {
            return j;
        }
        assert!(
            Instant::now() < deadline,
            "jail never became {state}: {j:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
