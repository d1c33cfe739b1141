//! Layered configuration: defaults, then an optional TOML file, then
//! `STOCKADE_*` variables (and `DATABASE_URL`). An unknown key in any layer is
//! an error naming it, so a typo never silently falls back to a default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use secrecy::SecretString;
use stockade_domain::Email;

/// Every setting of Stockade.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address and port the web server listens on.
    pub listen: SocketAddr,
    /// The URL users reach the panel at (printed by `up`; `https` makes cookies Secure).
    pub public_url: String,
    /// An external PostgreSQL; when unset, `up` runs a managed local cluster.
    pub database_url: Option<SecretString>,
    /// Data folder of the managed PostgreSQL cluster.
    pub pg_data: PathBuf,
    /// Folder where the agent keeps node state (jail records, volumes).
    pub state_dir: PathBuf,
    /// Unprivileged OS user the web server runs as when started as root.
    pub run_as: String,
    /// Unprivileged OS user the managed PostgreSQL runs as (another one).
    pub db_run_as: String,
    /// The web tier's own role on an external PostgreSQL (unset: `database_url`).
    pub web_database_url: Option<SecretString>,
    /// The agent's own role on an external PostgreSQL (unset: `database_url`).
    pub agent_database_url: Option<SecretString>,
    /// Email of the first admin account that `up` makes sure exists.
    pub admin_email: Email,
    /// Password of that account; when unset, `up` generates and prints one.
    pub admin_password: Option<SecretString>,
    /// The password `staff create` gives its account.
    pub staff_password: Option<SecretString>,
    /// Internal networks webhook deliveries may reach all the same.
    pub webhook_allow: Vec<ipnet::IpNet>,
    /// Reverse proxies whose forwarding headers name the client.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Name of this node (defaults to the host name).
    pub node_name: String,
    /// Time between two agent heartbeats.
    pub heartbeat: Duration,
    /// Log filter, e.g. `info` or `stockade=debug`.
    pub log: String,
    /// Minutes of inactivity after which a session ends.
    pub session_idle_minutes: u32,
    /// Hours after sign-in after which a session ends.
    pub session_max_hours: u32,
    /// Web worker threads (0 = one per CPU).
    pub web_workers: usize,
    /// How long the web tier keeps page data between changes (0 = none).
    pub page_cache: Duration,
    /// Time between two full re-reads of the node's jails by the agent.
    pub resync: Duration,
    /// Time between two usage samples.
    pub sample_interval: Duration,
    /// Hours raw usage samples are kept.
    pub sample_retention_hours: u32,
    /// Loopback address of the agent's metrics, or none.
    pub agent_metrics: Option<SocketAddr>,
    /// Seconds a stopping jail gets between SIGTERM and SIGKILL.
    pub stop_grace: Duration,
    /// KiB of a started jail's newest output kept on the node.
    pub console_kib: u64,
    /// Longest the agent waits for one engine step of a jail.
    pub step_deadline: Duration,
    /// Jails the agent works on at the same time.
    pub jail_parallelism: usize,
    /// The plan self sign-up puts new tenants on; unset = sign-up off.
    pub signup_plan: Option<String>,
    /// The node's jail bridge.
    pub bridge: String,
    /// The bridge's gateway address with the prefix of the node's jail
    /// address pool; `None` = jails of this node get loopback only.
    pub jail_network: Option<ipnet::Ipv4Net>,
    /// The nftables table (family inet) the node's firewall lives in.
    pub firewall_table: String,
    /// The cgroup holding the groups of jails made with `stockade jail`.
    pub cgroup_parent: String,
}

/// A PostgreSQL URL, or none when empty; never echoed (it may hold a
/// password).
fn database_url(key: &str, value: &str) -> anyhow::Result<Option<SecretString>> {
    let v = value.trim();
    if v.is_empty() {
        Ok(None)
    } else if v.starts_with("postgres://") || v.starts_with("postgresql://") {
        Ok(Some(SecretString::from(v.to_owned())))
    } else {
        bail!("{key}: must start with postgres:// (the value is not shown)");
    }
}

/// An OS account name.
fn user_name(key: &str, value: &str) -> anyhow::Result<String> {
    let v = value.trim();
    if v.is_empty()
        || v.len() > 32
        || !v
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        bail!("{key}: {value:?} is not a user name");
    }
    Ok(v.to_owned())
}

/// Each key, its meaning and default, for the README and `--help`.
pub const KEYS: &[(&str, &str)] = &[
    ("listen", "address:port of the web server (127.0.0.1:8080)"),
    (
        "public_url",
        "URL users reach the panel at (http://<listen>)",
    ),
    (
        "database_url",
        "external PostgreSQL URL; unset = managed local cluster (also DATABASE_URL)",
    ),
    (
        "pg_data",
        "data folder of the managed PostgreSQL cluster (./var/pg)",
    ),
    ("state_dir", "node state folder of the agent (./var/state)"),
    (
        "web_database_url",
        "external PostgreSQL URL of the web tier's own role (database_url)",
    ),
    (
        "agent_database_url",
        "external PostgreSQL URL of the agent's own role (database_url)",
    ),
    (
        "run_as",
        "unprivileged user the web server runs as when started as root (stockade)",
    ),
    (
        "db_run_as",
        "another unprivileged user, that the managed PostgreSQL runs as (stockade-db)",
    ),
    ("admin_email", "first admin account (admin@localhost)"),
    (
        "admin_password",
        "its password; unset = generated and printed once",
    ),
    (
        "trusted_proxies",
        "reverse proxies (CIDR or addresses, comma-separated) whose X-Forwarded-For is believed (none)",
    ),
    (
        "webhook_allow",
        "networks webhooks may reach although internal, comma-separated (none)",
    ),
    (
        "staff_password",
        "password of the account `staff create` makes; unset = generated and printed once",
    ),
    ("node_name", "this node's name (host name)"),
    ("heartbeat_secs", "seconds between agent heartbeats (5)"),
    ("log", "log filter (info)"),
    ("session_idle_minutes", "idle session expiry (60)"),
    ("session_max_hours", "absolute session expiry (12)"),
    ("web_workers", "web worker threads, 0 = one per CPU (0)"),
    (
        "page_cache_secs",
        "seconds the panel keeps page data between changes, 0 = none (5)",
    ),
    (
        "resync_secs",
        "seconds between full reconciles of the node's jails (30)",
    ),
    ("sample_secs", "seconds between usage samples (10)"),
    (
        "sample_retention_hours",
        "hours raw usage samples are kept (48)",
    ),
    (
        "agent_metrics",
        "loopback address:port of the agent's metrics, or off (127.0.0.1:9464)",
    ),
    (
        "stop_grace_secs",
        "seconds between SIGTERM and SIGKILL when a jail stops (10)",
    ),
    (
        "console_kib",
        "KiB of each jail's newest output kept on the node, at least 16 (4096)",
    ),
    (
        "step_deadline_secs",
        "seconds the agent waits for one step of a jail before giving up on it (120)",
    ),
    (
        "jail_parallelism",
        "jails the agent works on at the same time, at least 1 (8)",
    ),
    (
        "signup_plan",
        "plan self sign-up puts new tenants on; unset = sign-up off",
    ),
    ("bridge", "the node's jail bridge (stk0)"),
    (
        "jail_network",
        "gateway/prefix of the node's jail addresses, or off (10.77.0.1/16)",
    ),
    (
        "firewall_table",
        "nftables table (inet) of the node's firewall (stockade)",
    ),
    (
        "cgroup_parent",
        "cgroup holding the node's jails (stockade)",
    ),
];

impl Default for Config {
    fn default() -> Self {
        let listen: SocketAddr = "127.0.0.1:8080".parse().expect("valid default address");
        Self {
            listen,
            public_url: String::new(),
            database_url: None,
            pg_data: PathBuf::from("var/pg"),
            state_dir: PathBuf::from("var/state"),
            run_as: "stockade".into(),
            db_run_as: "stockade-db".into(),
            web_database_url: None,
            agent_database_url: None,
            admin_email: Email::parse("admin@localhost").expect("valid default email"),
            admin_password: None,
            staff_password: None,
            webhook_allow: Vec::new(),
            trusted_proxies: Vec::new(),
            node_name: default_node_name(),
            heartbeat: Duration::from_secs(5),
            log: "info".into(),
            session_idle_minutes: 60,
            session_max_hours: 12,
            web_workers: 0,
            page_cache: Duration::from_secs(5),
            resync: Duration::from_secs(30),
            sample_interval: Duration::from_secs(10),
            sample_retention_hours: 48,
            agent_metrics: Some("127.0.0.1:9464".parse().expect("valid default address")),
            stop_grace: Duration::from_secs(10),
            console_kib: 4096,
            step_deadline: Duration::from_secs(120),
            jail_parallelism: 8,
            signup_plan: None,
            bridge: "stk0".into(),
            jail_network: Some("10.77.0.1/16".parse().expect("valid default network")),
            firewall_table: "stockade".into(),
            cgroup_parent: "stockade".into(),
        }
    }
}

fn default_node_name() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .map(|h| h.to_ascii_lowercase())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node".into())
}

fn parse_num<T>(key: &str, value: &str, min: T) -> anyhow::Result<T>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display,
{
    let v: T = value
        .trim()
        .parse()
        .map_err(|_| anyhow::anyhow!("{key}: {value:?} is not a whole number"))?;
    if v < min {
        bail!("{key}: must be at least {min}");
    }
    Ok(v)
}

impl Config {
    /// Sets one key from its text form; `source` names where it came from.
    fn set(&mut self, key: &str, value: &str, source: &str) -> anyhow::Result<()> {
        let r: anyhow::Result<()> = (|| {
            match key {
                "listen" => {
                    self.listen = value.trim().parse().map_err(|_| {
                        anyhow::anyhow!(
                            "{key}: {value:?} is not an address:port like 127.0.0.1:8080"
                        )
                    })?;
                }
                "public_url" => {
                    let v = value.trim().trim_end_matches('/');
                    if !(v.starts_with("http://") || v.starts_with("https://")) {
                        bail!("{key}: {value:?} must start with http:// or https://");
                    }
                    self.public_url = v.to_owned();
                }
                "database_url" => self.database_url = database_url(key, value)?,
                "web_database_url" => self.web_database_url = database_url(key, value)?,
                "agent_database_url" => self.agent_database_url = database_url(key, value)?,
                "pg_data" => self.pg_data = non_empty_path(key, value)?,
                "state_dir" => self.state_dir = non_empty_path(key, value)?,
                "run_as" => self.run_as = user_name(key, value)?,
                "db_run_as" => self.db_run_as = user_name(key, value)?,
                "admin_email" => {
                    self.admin_email =
                        Email::parse(value).map_err(|e| anyhow::anyhow!("{key}: {e}"))?
                }
                "webhook_allow" => self.webhook_allow = networks(key, value)?,
                "trusted_proxies" => self.trusted_proxies = networks(key, value)?,
                "admin_password" | "staff_password" => {
                    let secret = SecretString::from(value.to_owned());
                    stockade_store::password::check_strength(&secret)
                        .map_err(|e| anyhow::anyhow!("{key}: {}", e.reason))?;
                    if key == "admin_password" {
                        self.admin_password = Some(secret);
                    } else {
                        self.staff_password = Some(secret);
                    }
                }
                "node_name" => {
                    let v = value.trim();
                    if v.is_empty()
                        || v.len() > 63
                        || !v.bytes().all(|b| {
                            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'
                        })
                    {
                        bail!("{key}: {value:?} may only contain a-z, 0-9, '-' and '.' (1-63)");
                    }
                    self.node_name = v.to_owned();
                }
                "heartbeat_secs" => {
                    self.heartbeat = Duration::from_secs(parse_num(key, value, 1u64)?)
                }
                "log" => self.log = value.trim().to_owned(),
                "session_idle_minutes" => self.session_idle_minutes = parse_num(key, value, 1u32)?,
                "session_max_hours" => self.session_max_hours = parse_num(key, value, 1u32)?,
                "web_workers" => self.web_workers = parse_num(key, value, 0usize)?,
                "page_cache_secs" => {
                    self.page_cache = Duration::from_secs(parse_num(key, value, 0u64)?)
                }
                "resync_secs" => self.resync = Duration::from_secs(parse_num(key, value, 1u64)?),
                "sample_secs" => {
                    self.sample_interval = Duration::from_secs(parse_num(key, value, 1u64)?)
                }
                "sample_retention_hours" => {
                    self.sample_retention_hours = parse_num(key, value, 1u32)?
                }
                "stop_grace_secs" => {
                    self.stop_grace = Duration::from_secs(parse_num(key, value, 0u64)?)
                }
                "console_kib" => self.console_kib = parse_num(key, value, 16u64)?,
                "step_deadline_secs" => {
                    self.step_deadline = Duration::from_secs(parse_num(key, value, 1u64)?)
                }
                "jail_parallelism" => self.jail_parallelism = parse_num(key, value, 1usize)?,
                "signup_plan" => {
                    let v = value.trim();
                    self.signup_plan = if v.is_empty() {
                        None
                    } else {
                        Some(
                            stockade_domain::TenantSlug::parse(v)
                                .map_err(|e| anyhow::anyhow!("{key}: {}", e.reason))?
                                .to_string(),
                        )
                    };
                }
                "cgroup_parent" => {
                    let v = value.trim();
                    if v.is_empty()
                        || v.len() > 63
                        || !v
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
                        || v.starts_with('.')
                    {
                        bail!("{key}: {value:?} must be 1-63 letters, digits, '-', '_' or '.'");
                    }
                    self.cgroup_parent = v.to_owned();
                }
                "bridge" | "firewall_table" => {
                    let v = value.trim();
                    if v.is_empty()
                        || v.len() > 15
                        || !v
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                    {
                        bail!("{key}: {value:?} must be 1-15 letters, digits, '-' or '_'");
                    }
                    if key == "bridge" {
                        self.bridge = v.to_owned();
                    } else {
                        self.firewall_table = v.to_owned();
                    }
                }
                "jail_network" => {
                    let v = value.trim();
                    self.jail_network = if v == "off" {
                        None
                    } else {
                        let net: ipnet::Ipv4Net = v.parse().map_err(|_| {
                            anyhow::anyhow!(
                                "{key}: {value:?} is not a gateway/prefix like 10.77.0.1/16, or off"
                            )
                        })?;
                        if net.prefix_len() > 30 || net.addr() == net.network() {
                            bail!(
                                "{key}: {value:?} must be the gateway's address inside a network of at least 4 addresses"
                            );
                        }
                        Some(net)
                    };
                }
                "agent_metrics" => {
                    let v = value.trim();
                    self.agent_metrics = if v == "off" {
                        None
                    } else {
                        let addr: SocketAddr = v.parse().map_err(|_| {
                            anyhow::anyhow!("{key}: {value:?} is not an address:port like 127.0.0.1:9464, or off")
                        })?;
                        if !addr.ip().is_loopback() {
                            bail!("{key}: must be a loopback address (127.0.0.1 or ::1)");
                        }
                        Some(addr)
                    };
                }
                _ => bail!("unknown setting {key:?}; known settings: {}", known_keys()),
            }
            Ok(())
        })();
        r.with_context(|| format!("in {source}"))
    }

    /// The keys whose values are secrets: never handed to another process
    /// by [`Config::plain_settings`].
    pub const SECRET_KEYS: &[&str] = &[
        "database_url",
        "web_database_url",
        "agent_database_url",
        "admin_password",
        "staff_password",
    ];

    /// The value of `key` as a setting (what [`Config::set`] reads back
    /// to the same value); `None` for a secret or an unknown key.
    fn plain_value(&self, key: &str) -> Option<String> {
        let secs = |d: Duration| d.as_secs().to_string();
        let nets = |n: &[ipnet::IpNet]| {
            n.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        Some(match key {
            "listen" => self.listen.to_string(),
            "public_url" => self.public_url.clone(),
            "pg_data" => self.pg_data.display().to_string(),
            "state_dir" => self.state_dir.display().to_string(),
            "run_as" => self.run_as.clone(),
            "db_run_as" => self.db_run_as.clone(),
            "admin_email" => self.admin_email.to_string(),
            "webhook_allow" => nets(&self.webhook_allow),
            "trusted_proxies" => nets(&self.trusted_proxies),
            "node_name" => self.node_name.clone(),
            "heartbeat_secs" => secs(self.heartbeat),
            "log" => self.log.clone(),
            "session_idle_minutes" => self.session_idle_minutes.to_string(),
            "session_max_hours" => self.session_max_hours.to_string(),
            "web_workers" => self.web_workers.to_string(),
            "page_cache_secs" => secs(self.page_cache),
            "resync_secs" => secs(self.resync),
            "sample_secs" => secs(self.sample_interval),
            "sample_retention_hours" => self.sample_retention_hours.to_string(),
            "agent_metrics" => self
                .agent_metrics
                .map_or_else(|| "off".to_owned(), |a| a.to_string()),
            "stop_grace_secs" => secs(self.stop_grace),
            "console_kib" => self.console_kib.to_string(),
            "step_deadline_secs" => secs(self.step_deadline),
            "jail_parallelism" => self.jail_parallelism.to_string(),
            "signup_plan" => self.signup_plan.clone().unwrap_or_default(),
            "bridge" => self.bridge.clone(),
            "jail_network" => self
                .jail_network
                .map_or_else(|| "off".to_owned(), |n| n.to_string()),
            "firewall_table" => self.firewall_table.clone(),
            "cgroup_parent" => self.cgroup_parent.clone(),
            _ => return None,
        })
    }

    /// Every setting but the secrets, as `STOCKADE_*` variables: what `up`
    /// hands its web server, which then runs on the same configuration.
    pub fn plain_settings(&self) -> Vec<(String, String)> {
        KEYS.iter()
            .filter(|(key, _)| !Self::SECRET_KEYS.contains(key))
            .filter_map(|(key, _)| {
                let value = self.plain_value(key)?;
                Some((format!("STOCKADE_{}", key.to_ascii_uppercase()), value))
            })
            .collect()
    }

    /// Loads defaults, then `file` (if any), then the environment.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Self> {
        let env: Vec<(String, String)> = std::env::vars().collect();
        Self::load_from(file, &env)
    }

    /// [`Config::load`] with the environment given, for tests.
    pub fn load_from(file: Option<&Path>, env: &[(String, String)]) -> anyhow::Result<Self> {
        let mut cfg = Config::default();
        let env_file = env
            .iter()
            .find(|(k, _)| k == "STOCKADE_CONFIG")
            .map(|(_, v)| PathBuf::from(v));
        if let Some(path) = file.map(Path::to_path_buf).or(env_file) {
            cfg.apply_file(&path)?;
        }
        if let Some((_, url)) = env.iter().find(|(k, _)| k == "DATABASE_URL") {
            cfg.set("database_url", url, "DATABASE_URL")?;
        }
        for (name, value) in env {
            let Some(key) = name.strip_prefix("STOCKADE_") else {
                continue;
            };
            if key == "CONFIG" {
                continue;
            }
            let key = key.to_ascii_lowercase();
            cfg.set(&key, value, &format!("the environment variable {name}"))?;
        }
        if cfg.public_url.is_empty() {
            let host = match cfg.listen.ip() {
                ip if ip.is_unspecified() => "127.0.0.1".to_owned(),
                std::net::IpAddr::V6(ip) => format!("[{ip}]"),
                ip => ip.to_string(),
            };
            cfg.public_url = format!("http://{host}:{}", cfg.listen.port());
        }
        if cfg.session_idle_minutes > cfg.session_max_hours.saturating_mul(60) {
            bail!("session_idle_minutes must not be longer than session_max_hours");
        }
        Ok(cfg)
    }

    fn apply_file(&mut self, path: &Path) -> anyhow::Result<()> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the configuration file {}", path.display()))?;
        let table: toml::Table = text
            .parse()
            .map_err(|e| anyhow::anyhow!("{} is not valid TOML: {e}", path.display()))?;
        let source = format!("the configuration file {}", path.display());
        for (key, value) in table {
            let text = match value {
                toml::Value::String(s) => s,
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                other => bail!(
                    "{key}: {} is not a string or number (in {source})",
                    other.type_str()
                ),
            };
            self.set(&key, &text, &source)?;
        }
        Ok(())
    }

    /// Session lifetimes for the web tier.
    pub fn session_expiry(&self) -> stockade_store::sessions::Expiry {
        stockade_store::sessions::Expiry {
            idle: chrono::Duration::minutes(i64::from(self.session_idle_minutes)),
            absolute: chrono::Duration::hours(i64::from(self.session_max_hours)),
        }
    }
}

fn non_empty_path(key: &str, value: &str) -> anyhow::Result<PathBuf> {
    if value.trim().is_empty() {
        bail!("{key}: must not be empty");
    }
    Ok(PathBuf::from(value.trim()))
}

fn known_keys() -> String {
    KEYS.iter().map(|(k, _)| *k).collect::<Vec<_>>().join(", ")
}

/// A comma-separated list of networks (`10.0.0.0/8`) or single addresses.
fn networks(key: &str, value: &str) -> anyhow::Result<Vec<ipnet::IpNet>> {
    value
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(|n| {
            n.parse::<ipnet::IpNet>()
                .or_else(|_| n.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| {
                    anyhow::anyhow!(
                        "{key}: {n:?} is not a network such as 10.0.0.0/8 or an address"
                    )
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn environment_overrides_file_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("stockade.toml");
        std::fs::write(
            &file,
            "listen = \"0.0.0.0:9000\"\nheartbeat_secs = 7\nlog = \"debug\"\n",
        )
        .unwrap();
        let cfg = Config::load_from(Some(&file), &env(&[("STOCKADE_LOG", "warn")])).unwrap();
        assert_eq!(cfg.listen.port(), 9000);
        assert_eq!(cfg.heartbeat, Duration::from_secs(7));
        assert_eq!(cfg.log, "warn");
        assert_eq!(cfg.public_url, "http://127.0.0.1:9000");
        assert_eq!(cfg.run_as, "stockade");
    }

    #[test]
    fn every_setting_but_the_secrets_is_handed_on_and_read_back_the_same() {
        let env: Vec<(String, String)> = [
            ("STOCKADE_PAGE_CACHE_SECS", "0"),
            ("STOCKADE_TRUSTED_PROXIES", "10.0.0.0/8,192.0.2.7/32"),
            ("STOCKADE_SIGNUP_PLAN", "starter"),
            ("STOCKADE_JAIL_NETWORK", "off"),
            ("STOCKADE_AGENT_METRICS", "127.0.0.1:9999"),
            ("STOCKADE_RUN_AS", "web-user"),
            ("STOCKADE_ADMIN_PASSWORD", "a long admin secret"),
            ("DATABASE_URL", "postgres://owner:pw@db/stockade"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        let cfg = Config::load_from(None, &env).unwrap();
        let handed = cfg.plain_settings();
        // Every key is either handed on or a secret: a new setting cannot
        // be forgotten on the way to the web server.
        for (key, _) in KEYS {
            let var = format!("STOCKADE_{}", key.to_ascii_uppercase());
            assert!(
                handed.iter().any(|(k, _)| *k == var) != Config::SECRET_KEYS.contains(key),
                "{key} is neither handed on nor a secret"
            );
        }
        assert!(
            !format!("{handed:?}").contains("secret") && !format!("{handed:?}").contains("pw@")
        );
        let again = Config::load_from(None, &handed).unwrap();
        assert!(again.admin_password.is_none() && again.database_url.is_none());
        let show = |c: &Config| {
            KEYS.iter()
                .map(|(k, _)| format!("{k}={:?}", c.plain_value(k)))
                .collect::<Vec<_>>()
        };
        assert_eq!(show(&again), show(&cfg));
        assert_eq!(again.page_cache, Duration::ZERO);
        assert_eq!(again.trusted_proxies.len(), 2);
    }

    #[test]
    fn the_readme_lists_every_setting() {
        let readme = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"));
        for (key, _) in KEYS {
            assert!(
                readme.contains(&format!("| `{key}` |")),
                "the README's configuration table lacks {key}"
            );
            // And each is settable from the environment.
            let var = format!("STOCKADE_{}", key.to_ascii_uppercase());
            let err = Config::load_from(None, &env(&[(var.as_str(), "\u{1}")]));
            if let Err(e) = err {
                assert!(
                    !format!("{e:#}").contains("unknown setting"),
                    "{var}: {e:#}"
                );
            }
        }
    }

    #[test]
    fn the_staff_password_setting_is_known_and_checked() {
        let cfg = Config::load_from(
            None,
            &env(&[("STOCKADE_STAFF_PASSWORD", "correct horse battery")]),
        )
        .unwrap();
        assert_eq!(
            cfg.staff_password.unwrap().expose_secret(),
            "correct horse battery"
        );
        let err =
            Config::load_from(None, &env(&[("STOCKADE_STAFF_PASSWORD", "short")])).unwrap_err();
        let err = format!("{err:#}");
        assert!(err.contains("staff_password: "), "{err}");
    }

    #[test]
    fn unknown_keys_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("stockade.toml");
        std::fs::write(&file, "lisen = \"0.0.0.0:9000\"\n").unwrap();
        let err = format!("{:#}", Config::load_from(Some(&file), &[]).unwrap_err());
        assert!(err.contains("unknown setting \"lisen\""), "{err}");
        let err = format!(
            "{:#}",
            Config::load_from(None, &env(&[("STOCKADE_LSTEN", "x")])).unwrap_err()
        );
        assert!(
            err.contains("\"lsten\"") && err.contains("STOCKADE_LSTEN"),
            "{err}"
        );
    }

    #[test]
    fn bad_values_say_what_and_where() {
        let err = format!(
            "{:#}",
            Config::load_from(None, &env(&[("STOCKADE_LISTEN", "nope")])).unwrap_err()
        );
        assert!(
            err.contains("listen") && err.contains("address:port"),
            "{err}"
        );
        let err = format!(
            "{:#}",
            Config::load_from(None, &env(&[("STOCKADE_HEARTBEAT_SECS", "0")])).unwrap_err()
        );
        assert!(err.contains("at least 1"), "{err}");
        let err = format!(
            "{:#}",
            Config::load_from(None, &env(&[("DATABASE_URL", "mysql://x")])).unwrap_err()
        );
        assert!(
            err.contains("postgres://") && !err.contains("mysql"),
            "{err}"
        );
    }

    #[test]
    fn secrets_never_print() {
        let cfg = Config::load_from(
            None,
            &env(&[
                ("DATABASE_URL", "postgres://u:hunter2hunter2@h/db"),
                ("STOCKADE_ADMIN_PASSWORD", "hunter2hunter2"),
            ]),
        )
        .unwrap();
        let shown = format!("{cfg:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert_eq!(
            cfg.admin_password.unwrap().expose_secret(),
            "hunter2hunter2"
        );
    }
}
