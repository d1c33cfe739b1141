//! An agent of a bench's own on this host: started on a throw-away state
//! folder, and on drop stopped, its jails destroyed and its cgroup group
//! removed, pass or fail.

use std::process::{Command, Stdio};

use secrecy::{ExposeSecret, SecretString};
use stockade_domain::JailName;

/// A running agent named `name` (its cgroup group is `stockade-<name>`).
pub struct Agent {
    name: String,
    engine: stockade_jail::Engine,
    child: std::process::Child,
    _state: tempfile::TempDir,
}

impl Agent {
    /// Starts `stockade agent` without network, proxy or metrics, with
    /// `env` (`STOCKADE_*` settings) on top.
    pub fn start(url: &SecretString, name: &str, env: &[(&str, &str)]) -> Agent {
        let state = tempfile::tempdir().unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_stockade"))
            .arg("agent")
            .env("DATABASE_URL", url.expose_secret())
            .env("STOCKADE_NODE_NAME", name)
            .env("STOCKADE_STATE_DIR", state.path())
            .env("STOCKADE_AGENT_METRICS", "off")
            .env("STOCKADE_AGENT_SSH", "off")
            .env("STOCKADE_JAIL_NETWORK", "off")
            .env("STOCKADE_PROXY_HTTP", "off")
            .env("STOCKADE_ACME_DIRECTORY", "off")
            .env("STOCKADE_LOG", "warn")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let engine = stockade_jail::Engine::new({
            let mut c = stockade_jail::EngineConfig::new(
                state.path().join("node"),
                state.path().join("images"),
            );
            c.cgroup_parent = format!("stockade-{name}");
            c
        })
        .unwrap();
        Agent {
            name: name.to_owned(),
            engine,
            child,
            _state: state,
        }
    }

    /// The engine of the agent's state folder (to look into its jails).
    pub fn engine(&self) -> &stockade_jail::Engine {
        &self.engine
    }
}

/// Waits (a minute at most) until jail `jail` of `tenant` is observed running.
pub async fn wait_running(pool: &sqlx::PgPool, tenant: uuid::Uuid, jail: uuid::Uuid) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let j = stockade_store::jails::get(pool, tenant, jail)
            .await
            .unwrap();
        if j.observed_state == stockade_domain::ObservedState::Running {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the jail never ran: {j:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let _ = self.child.wait();
        if let Ok(found) = self.engine.discover() {
            for name in found.jails.keys() {
                if let Ok(name) = JailName::parse(name) {
                    let _ = self.engine.destroy(&name);
                }
            }
        }
        // The agent's own group, in every hierarchy.
        for entry in std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = std::fs::remove_dir(entry.path().join(format!("stockade-{}", self.name)));
        }
    }
}
