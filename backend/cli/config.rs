//! Layered configuration: defaults, then an optional TOML file, then
//! `STOCKADE_*` variables (and `DATABASE_URL`), merged with `figment`. An unknown key in any layer is
//! an error naming it, so a typo never silently falls back to a default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use std::collections::BTreeMap;

use anyhow::{Context, bail};
use figment::Figment;
use figment::providers::{Format, Toml};
use secrecy::SecretString;

pub use keys::KEYS;
use keys::known_keys;
use layers::{Text, Variables, layer_name};

mod keys;
mod layers;
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
    /// Where the agent serves its jails' output to the web tier (on
    /// tickets), or none.
    pub agent_logs: Option<SocketAddr>,
    /// Where the node's SSH gateway to its jails listens, or none.
    pub agent_ssh: Option<SocketAddr>,
    /// Where backups go (a folder or `s3://…`); `None`: `<state_dir>/backups`;
    /// `Some(None)`: off.
    pub backup_target: Option<Option<String>>,
    /// Where the node's reverse proxy serves its jails' domains over plain
    /// HTTP; `None` = the node runs no proxy.
    pub proxy_http: Option<SocketAddr>,
    /// Where it serves them over HTTPS; `None` = plain HTTP only.
    pub proxy_https: Option<SocketAddr>,
    /// The ACME directory certificates are ordered from; `None` = none.
    pub acme_directory: Option<String>,
    /// A PEM root for the ACME directory's own TLS (a test CA).
    pub acme_root: Option<PathBuf>,
    /// The ACME account's contact address.
    pub acme_email: Option<String>,
    /// The file of the provider's certificate key.
    pub certificate_key_file: Option<PathBuf>,
    /// Domains must be proven by a TXT record before they route.
    pub domain_proof: Option<stockade_web::DomainProof>,
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
    /// The node's ports that jails' ports are published on.
    pub published_ports: std::ops::RangeInclusive<u16>,
    /// The nftables table (family inet) the node's firewall lives in.
    pub firewall_table: String,
    /// The cgroup holding the groups of jails made with `stockade jail`.
    pub cgroup_parent: String,
    /// Where the agent puts its jails' groups: `cgroupfs` (a group of its
    /// own at the cgroup root) or `systemd` (the subtree systemd delegated
    /// to the agent's unit).
    pub cgroup_manager: CgroupManager,
}

/// Who owns the part of the cgroup tree the agent's jails live in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupManager {
    /// The agent: a group `stockade-<node>` at the cgroup root.
    Cgroupfs,
    /// systemd, which delegated a subtree to the agent's unit
    /// (`Delegate=yes`): jails go under `<unit>/jails`.
    Systemd,
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
            agent_logs: Some("127.0.0.1:0".parse().expect("valid default address")),
            agent_ssh: Some("0.0.0.0:2222".parse().expect("valid default address")),
            backup_target: None,
            proxy_http: Some("0.0.0.0:80".parse().expect("valid default address")),
            proxy_https: Some("0.0.0.0:443".parse().expect("valid default address")),
            acme_directory: Some("https://acme-v02.api.letsencrypt.org/directory".into()),
            acme_root: None,
            acme_email: None,
            certificate_key_file: None,
            domain_proof: None,
            stop_grace: Duration::from_secs(10),
            console_kib: 4096,
            step_deadline: Duration::from_secs(120),
            jail_parallelism: 8,
            signup_plan: None,
            bridge: "stk0".into(),
            jail_network: Some("10.77.0.1/16".parse().expect("valid default network")),
            published_ports: stockade_store::nodes::DEFAULT_PUBLISHED_PORTS,
            firewall_table: "stockade".into(),
            cgroup_parent: "stockade".into(),
            cgroup_manager: CgroupManager::Cgroupfs,
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
                "cgroup_manager" => {
                    self.cgroup_manager = match value.trim() {
                        "cgroupfs" => CgroupManager::Cgroupfs,
                        "systemd" => CgroupManager::Systemd,
                        _ => bail!("{key}: {value:?} must be cgroupfs or systemd"),
                    };
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
                "published_ports" => {
                    let bad = || {
                        anyhow::anyhow!(
                            "{key}: {value:?} is not a range of ports like 20000-29999 (from 1024 up)"
                        )
                    };
                    let (a, b) = value.trim().split_once('-').ok_or_else(bad)?;
                    let a: u16 = a.trim().parse().map_err(|_| bad())?;
                    let b: u16 = b.trim().parse().map_err(|_| bad())?;
                    if a < 1024 || a > b {
                        return Err(bad());
                    }
                    self.published_ports = a..=b;
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
                "proxy_http" | "proxy_https" => {
                    let v = value.trim();
                    let addr = if v == "off" {
                        None
                    } else {
                        Some(v.parse().map_err(|_| {
                            anyhow::anyhow!(
                                "{key}: {value:?} is not an address:port like 0.0.0.0:80, or off"
                            )
                        })?)
                    };
                    if key == "proxy_http" {
                        self.proxy_http = addr;
                    } else {
                        self.proxy_https = addr;
                    }
                }
                "acme_directory" => {
                    let v = value.trim();
                    self.acme_directory = if v == "off" {
                        None
                    } else if v.starts_with("https://") {
                        Some(v.to_owned())
                    } else {
                        bail!("{key}: {value:?} must be an https:// URL, or off");
                    };
                }
                // Empty: unset.
                "acme_root" => {
                    self.acme_root = Some(value.trim())
                        .filter(|v| !v.is_empty())
                        .map(PathBuf::from);
                }
                "acme_email" => {
                    self.acme_email = match value.trim() {
                        "" => None,
                        v => Some(
                            stockade_domain::Email::parse(v)
                                .map_err(|e| anyhow::anyhow!("{key}: {}", e.reason))?
                                .to_string(),
                        ),
                    };
                }
                "domain_proof" => {
                    let v = value.trim();
                    self.domain_proof = match v {
                        "off" => None,
                        "txt" => Some(stockade_web::DomainProof { resolver: None }),
                        _ => match v.strip_prefix("txt@").map(str::parse) {
                            Some(Ok(addr)) => Some(stockade_web::DomainProof {
                                resolver: Some(addr),
                            }),
                            _ => bail!(
                                "{key}: {value:?} is not off, txt, or txt@ADDRESS:PORT (a DNS server to ask)"
                            ),
                        },
                    };
                }
                "certificate_key_file" => {
                    self.certificate_key_file = Some(value.trim())
                        .filter(|v| !v.is_empty())
                        .map(PathBuf::from);
                }
                "agent_logs" => {
                    let v = value.trim();
                    self.agent_logs = if v == "off" {
                        None
                    } else {
                        Some(v.parse().map_err(|_| {
                            anyhow::anyhow!(
                                "{key}: {value:?} is not an address:port like 10.0.0.5:7782, or off"
                            )
                        })?)
                    };
                }
                "backup_target" => {
                    let v = value.trim();
                    self.backup_target = match v {
                        "" => None,
                        "off" => Some(None),
                        _ if v.starts_with("s3://")
                            || v.starts_with('/')
                            || v.starts_with("file:///") =>
                        {
                            Some(Some(v.to_owned()))
                        }
                        _ => bail!(
                            "{key}: {value:?} is not an absolute folder, s3://bucket/prefix?endpoint=URL, or off"
                        ),
                    };
                }
                "agent_ssh" => {
                    let v = value.trim();
                    self.agent_ssh = if v == "off" {
                        None
                    } else {
                        Some(v.parse().map_err(|_| {
                            anyhow::anyhow!(
                                "{key}: {value:?} is not an address:port like 0.0.0.0:2222, or off"
                            )
                        })?)
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
            "proxy_http" => self
                .proxy_http
                .map_or_else(|| "off".to_owned(), |a| a.to_string()),
            "proxy_https" => self
                .proxy_https
                .map_or_else(|| "off".to_owned(), |a| a.to_string()),
            "acme_directory" => self
                .acme_directory
                .clone()
                .unwrap_or_else(|| "off".to_owned()),
            "acme_root" => self
                .acme_root
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            "acme_email" => self.acme_email.clone().unwrap_or_default(),
            "domain_proof" => match self.domain_proof {
                None => "off".to_owned(),
                Some(stockade_web::DomainProof { resolver: None }) => "txt".to_owned(),
                Some(stockade_web::DomainProof {
                    resolver: Some(addr),
                }) => format!("txt@{addr}"),
            },
            "certificate_key_file" => self
                .certificate_key_file
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            "agent_metrics" => self
                .agent_metrics
                .map_or_else(|| "off".to_owned(), |a| a.to_string()),
            "agent_logs" => self
                .agent_logs
                .map_or_else(|| "off".to_owned(), |a| a.to_string()),
            "agent_ssh" => self
                .agent_ssh
                .map_or_else(|| "off".to_owned(), |a| a.to_string()),
            "backup_target" => match &self.backup_target {
                None => String::new(),
                Some(None) => "off".to_owned(),
                Some(Some(t)) => t.clone(),
            },
            "stop_grace_secs" => secs(self.stop_grace),
            "console_kib" => self.console_kib.to_string(),
            "step_deadline_secs" => secs(self.step_deadline),
            "jail_parallelism" => self.jail_parallelism.to_string(),
            "signup_plan" => self.signup_plan.clone().unwrap_or_default(),
            "bridge" => self.bridge.clone(),
            "published_ports" => format!(
                "{}-{}",
                self.published_ports.start(),
                self.published_ports.end()
            ),
            "jail_network" => self
                .jail_network
                .map_or_else(|| "off".to_owned(), |n| n.to_string()),
            "firewall_table" => self.firewall_table.clone(),
            "cgroup_parent" => self.cgroup_parent.clone(),
            "cgroup_manager" => match self.cgroup_manager {
                CgroupManager::Cgroupfs => "cgroupfs".to_owned(),
                CgroupManager::Systemd => "systemd".to_owned(),
            },
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
    ///
    /// The layers are merged by `figment`: the file, then `DATABASE_URL`,
    /// then `STOCKADE_*` (a later layer wins). Each key that any layer
    /// sets is then checked by [`Config::set`], and an error names the
    /// layer the value came from.
    pub fn load_from(file: Option<&Path>, env: &[(String, String)]) -> anyhow::Result<Self> {
        let env_file = env
            .iter()
            .find(|(k, _)| k == "STOCKADE_CONFIG")
            .map(|(_, v)| PathBuf::from(v));
        let mut layers = Figment::new();
        if let Some(path) = file.map(Path::to_path_buf).or(env_file) {
            // A named file that is missing is an error, not an empty layer.
            std::fs::metadata(&path).with_context(|| {
                format!("cannot read the configuration file {}", path.display())
            })?;
            layers = layers.merge(Toml::file_exact(path));
        }
        let layers = layers
            .merge(Variables::one(env, "DATABASE_URL", "database_url"))
            .merge(Variables::prefixed(env, "STOCKADE_", &["CONFIG"]));
        let values: BTreeMap<String, Text> = layers.extract().map_err(|e| {
            // Each error with its key and the layer's own words (the
            // file's path as given, not relative to the working folder).
            let lines: Vec<String> = e
                .into_iter()
                .map(|e| {
                    let key = e.path.join(".");
                    let place = e
                        .metadata
                        .as_ref()
                        .map_or_else(|| "the configuration".to_owned(), |m| layer_name(m, &key));
                    format!("{key}: {} in {place}", e.kind)
                })
                .collect();
            anyhow::anyhow!("{}", lines.join("; "))
        })?;
        let mut cfg = Config::default();
        for (key, Text(value)) in &values {
            let source = layers
                .find_metadata(key)
                .map_or_else(|| "the configuration".to_owned(), |m| layer_name(m, key));
            cfg.set(key, value, &source)?;
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
mod tests;
