//! The node's reverse proxy: HAProxy, run by the agent in master-worker mode
//! and configured from the routes PostgreSQL holds for this node.
//!
//! Level-triggered like the jails: on every notification and every second
//! the agent renders the configuration the rows ask for; when it differs
//! from what runs, the new file is checked by `haproxy -c` first, then put
//! in place and the master reloaded (`SIGUSR2`): new workers take the
//! listening sockets over and old ones finish their connections, so a
//! reload drops none. A configuration HAProxy refuses is never put in
//! place: the proxy keeps serving every route as before, and the agent says
//! why in its log and retries at the next change.
//!
//! The master daemonizes and outlives the agent (sites stay up while the
//! agent restarts); a new agent finds it by its pid file and reloads it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crypto_box::SecretKey;
use stockade_store::PgPool;
use stockade_store::certificates;
use stockade_store::domains::{self, Route, Target};
use uuid::Uuid;

use crate::acme::Challenges;

/// Where and how the node's proxy runs.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// The address plain HTTP is served on (e.g. `0.0.0.0:80`).
    pub http: SocketAddr,
    /// The address HTTPS is served on (e.g. `0.0.0.0:443`), if anywhere.
    pub https: Option<SocketAddr>,
    /// The folder of its configuration, pid file and sockets.
    pub dir: PathBuf,
    /// The `haproxy` program.
    pub program: PathBuf,
}

/// How often the proxy's per-domain counters are summed into the store.
const COUNT_EVERY: Duration = Duration::from_secs(5);

/// The page of a name whose tenant is suspended.
const SUSPENDED: &str = "<!doctype html><title>Suspended</title><h1>This site is suspended</h1><p>Its owner's account is suspended by the hosting provider.</p>";
/// The page of a name whose jail does not run.
const UNAVAILABLE: &str = "<!doctype html><title>Not running</title><h1>This site is not running right now</h1><p>Its owner has stopped it, or it is starting.</p>";
/// The page of a name no jail of this node has.
const UNKNOWN: &str =
    "<!doctype html><title>No site</title><h1>No site is configured for this name</h1>";

/// The names the proxy routes, each with its backend: one line per name,
/// read by HAProxy as a map (a tree lookup per request, however many
/// domains the node serves).
fn routes_map(routes: &[Route]) -> String {
    let mut map = String::new();
    for r in routes {
        let backend = backend_of(r);
        for name in &r.names {
            let _ = writeln!(map, "{name} {backend}");
        }
    }
    map
}

/// The file [`routes_map`] is kept in: named after its contents, so a new
/// configuration and its map are checked and put in force together while
/// the old pair keeps serving.
fn routes_map_path(dir: &Path, map: &str) -> PathBuf {
    dir.join("routes").join(format!("{:016x}.map", fnv(map)))
}

/// HAProxy's configuration for `routes`, whose names are looked up in the
/// map file `map` (see [`routes_map`]).
pub(crate) fn render(cfg: &ProxyConfig, routes: &[Route], map: &Path, as_root: bool) -> String {
    let dir = cfg.dir.display();
    let mut s = String::from("global\n    master-worker\n");
    let _ = writeln!(s, "    pidfile {dir}/haproxy.pid");
    let _ = writeln!(s, "    stats socket {dir}/admin.sock mode 600 level admin");
    if as_root {
        // Ports are bound and keys read as root; the workers then run
        // unprivileged.
        s.push_str("    user haproxy\n    group haproxy\n");
    }
    s.push_str(
        "defaults\n    mode http\n    option forwardfor\n    timeout connect 5s\n    \
         timeout client 60s\n    timeout server 60s\n    timeout tunnel 1h\n    \
         timeout http-request 10s\n",
    );
    // What the jail is told of the request (the client's own headers of
    // these names are replaced), then where it goes: one map lookup.
    let routing = |proto: &str| {
        let mut r = format!(
            "    http-request set-header X-Forwarded-Proto {proto}\n    \
             http-request set-header X-Forwarded-Host %[req.hdr(host)]\n"
        );
        // RFC 7239, an IPv6 client in brackets.
        for (v6, cond) in [(false, "unless"), (true, "if")] {
            let (open, close) = if v6 { ("[", "]") } else { ("", "") };
            let _ = writeln!(
                r,
                "    http-request set-header Forwarded \"for=\\\"{open}%[src]{close}\\\";host=\\\"%[req.hdr(host)]\\\";proto={proto}\" {cond} {{ src -m sub : }}"
            );
        }
        r.push_str("    http-request set-var(txn.site) req.hdr(host),field(1,:),lower\n");
        let _ = writeln!(
            r,
            "    use_backend %[var(txn.site),map({},unknown)]",
            map.display()
        );
        r.push_str("    default_backend unknown\n");
        r
    };
    s.push_str("frontend http\n");
    let _ = writeln!(s, "    bind {}", cfg.http);
    // ACME's HTTP-01 challenges, answered from the map the agent writes.
    let _ = writeln!(
        s,
        "    http-request return status 200 content-type text/plain lf-string \"%[path,field(4,/),map({dir}/acme.map)]\" \
         if {{ path_beg /.well-known/acme-challenge/ }} {{ path,field(4,/),map({dir}/acme.map) -m found }}"
    );
    s.push_str(&routing("http"));
    if let Some(https) = cfg.https {
        s.push_str("frontend https\n");
        let _ = writeln!(
            s,
            "    bind {https} ssl crt {dir}/default.pem crt-list {dir}/certs.list alpn h2,http/1.1"
        );
        s.push_str(&routing("https"));
    }
    for r in routes {
        if let Target::Jail { address, port } = &r.target {
            let _ = writeln!(
                s,
                "backend {}\n    server jail {address}:{port}",
                backend_of(r)
            );
        }
    }
    for (name, status, page) in [
        ("suspended", 503, SUSPENDED),
        ("unavailable", 503, UNAVAILABLE),
        ("unknown", 404, UNKNOWN),
    ] {
        let _ = writeln!(
            s,
            "backend {name}\n    http-request return status {status} content-type \"text/html; charset=utf-8\" string \"{page}\""
        );
    }
    s
}

/// A certificate the proxy serves: its names and its chain with its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Served {
    pub(crate) domain_id: Uuid,
    pub(crate) names: Vec<String>,
    /// The chain, leaf first, then the key: one PEM file.
    pub(crate) pem: String,
}

/// Everything the proxy serves besides its configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Extras {
    pub(crate) certs: Vec<Served>,
    pub(crate) challenges: BTreeMap<String, String>,
}

fn backend_of(r: &Route) -> String {
    match r.target {
        Target::Jail { .. } => format!("site_{}", r.domain_id.simple()),
        Target::Suspended => "suspended".into(),
        Target::Unavailable => "unavailable".into(),
    }
}

/// The running proxy, as this agent knows it.
pub(crate) struct Proxy {
    cfg: ProxyConfig,
    /// The configuration in force.
    /// The version in force (see [`Plan`]).
    current: Option<u64>,
}

/// A configuration to bring the proxy to: its text, its routes map and its
/// version, a fingerprint of the text (which names the map by its
/// contents) and of everything served beside it.
pub(crate) struct Plan {
    text: String,
    map: String,
    version: u64,
}

impl Proxy {
    pub(crate) fn new(cfg: ProxyConfig) -> Self {
        Self { cfg, current: None }
    }

    fn pid(&self) -> Option<i32> {
        running_pid(&self.cfg.dir)
    }

    /// What `routes` and `extras` ask the proxy to be.
    pub(crate) fn plan(&self, routes: &[Route], extras: &Extras) -> Plan {
        let map = routes_map(routes);
        let text = render(
            &self.cfg,
            routes,
            &routes_map_path(&self.cfg.dir, &map),
            nix::unistd::Uid::effective().is_root(),
        );
        let version = fnv(&format!("{text}\n{extras:?}"));
        Plan { text, map, version }
    }

    /// Whether [`Proxy::apply`] would start or reload the proxy.
    pub(crate) fn would_change(&self, plan: &Plan) -> bool {
        self.pid().is_none() || self.current != Some(plan.version)
    }

    /// Brings the proxy to `plan`, serving `extras` (which it was made
    /// with): starts it if it does not run, reloads it if anything changes.
    /// Whether anything was done.
    pub(crate) fn apply(&mut self, plan: Plan, extras: &Extras) -> anyhow::Result<bool> {
        let running = self.pid();
        if running.is_some() && self.current == Some(plan.version) {
            return Ok(false);
        }
        // A backend named after this version: the proxy serves it once the
        // version is live, which is how a reload is known to have happened.
        let version = format!("v_{:016x}", plan.version);
        let text = format!("{}backend {version}\n", plan.text);
        write_extras(&self.cfg.dir, extras)?;
        let map = routes_map_path(&self.cfg.dir, &plan.map);
        write_routes_map(&map, &plan.map)?;
        let file = self.cfg.dir.join("haproxy.cfg");
        let next = self.cfg.dir.join("haproxy.cfg.next");
        std::fs::write(&next, &text)?;
        let check = std::process::Command::new(&self.cfg.program)
            .args(["-c", "-q", "-f"])
            .arg(&next)
            .stdin(std::process::Stdio::null())
            .output()?;
        if !check.status.success() {
            anyhow::bail!(
                "the proxy refused its new configuration (the old one keeps serving): {}",
                String::from_utf8_lossy(&check.stderr).trim()
            );
        }
        std::fs::rename(&next, &file)?;
        match running {
            Some(pid) => self.reload(pid, &file, &version)?,
            None => self.start(&file, &version)?,
        }
        self.current = Some(plan.version);
        // The maps of earlier configurations are read by no proxy now.
        forget_routes_maps(&self.cfg.dir, &map);
        Ok(true)
    }

    /// Reloads the master at `pid` until `version` is live: a reload asked
    /// for while the master is still re-executing itself may go unheard. A
    /// master that died meanwhile is started again on `file`.
    fn reload(&self, pid: i32, file: &Path, version: &str) -> anyhow::Result<()> {
        for _ in 0..5 {
            if self.pid() != Some(pid) {
                return self.start(file, version);
            }
            // A master gone since it was seen is started at the next turn.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGUSR2,
            );
            if self.wait_live(version, Duration::from_secs(2)) {
                return Ok(());
            }
        }
        anyhow::bail!("the proxy did not take its new configuration after five reloads")
    }

    /// Starts the master on `file` and waits (a while) for `version`.
    fn start(&self, file: &Path, version: &str) -> anyhow::Result<()> {
        start(&self.cfg.program, file)?;
        self.wait_live(version, Duration::from_secs(5));
        Ok(())
    }

    /// Whether the proxy serves `version` within `limit` (true when it has
    /// no admin socket to tell, as a stand-in program in tests).
    fn wait_live(&self, version: &str, limit: Duration) -> bool {
        let deadline = std::time::Instant::now() + limit;
        loop {
            match backends(&self.cfg.dir) {
                Some(names) if names.iter().any(|n| n == version) => return true,
                None if !self.cfg.dir.join("admin.sock").exists() => return true,
                _ => {}
            }
            if std::time::Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// FNV-1a of `s`: stable across releases, unlike std's hasher.
fn fnv(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The backends the running proxy serves, from its admin socket.
fn backends(dir: &Path) -> Option<Vec<String>> {
    use std::io::{Read as _, Write as _};
    let mut s = std::os::unix::net::UnixStream::connect(dir.join("admin.sock")).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    s.write_all(b"show backend\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    Some(
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.trim().to_owned())
            .collect(),
    )
}

/// Writes the proxy's certificates (readable by root only), their list,
/// the challenge answers and, once, the certificate for names it has none
/// for.
fn write_extras(dir: &Path, extras: &Extras) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    let private = |path: &Path, text: &str| -> anyhow::Result<()> {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text)?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&tmp, path)?;
        Ok(())
    };
    let default = dir.join("default.pem");
    if !default.exists() {
        let key = rcgen::KeyPair::generate()?;
        let cert = rcgen::CertificateParams::new(vec!["stockade.invalid".to_owned()])?
            .self_signed(&key)?;
        private(&default, &format!("{}{}", cert.pem(), key.serialize_pem()))?;
    }
    let certs = dir.join("certs");
    let _ = std::fs::remove_dir_all(&certs);
    std::fs::create_dir_all(&certs)?;
    let mut list = String::new();
    for c in &extras.certs {
        let file = certs.join(format!("{}.pem", c.domain_id.simple()));
        private(&file, &c.pem)?;
        let _ = writeln!(list, "{} {}", file.display(), c.names.join(" "));
    }
    private(&dir.join("certs.list"), &list)?;
    let mut map = String::new();
    for (token, answer) in &extras.challenges {
        let _ = writeln!(map, "{token} {answer}");
    }
    private(&dir.join("acme.map"), &map)?;
    Ok(())
}

/// Writes the routes map `text` at `path` (named after its contents, so one
/// that is there is whole).
fn write_routes_map(path: &Path, text: &str) -> anyhow::Result<()> {
    if path.exists() {
        return Ok(());
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// Removes every routes map in `dir` but `keep`.
fn forget_routes_maps(dir: &Path, keep: &Path) {
    let Ok(entries) = std::fs::read_dir(dir.join("routes")) else {
        return;
    };
    for e in entries.flatten() {
        if e.path() != keep {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Stops the proxy whose files are in `dir`, if it runs: `stockade up`
/// stops everything it started. (A node's agent alone leaves it serving
/// when it stops, like the jails.)
pub fn stop_proxy(dir: &Path) {
    let Some(pid) = running_pid(dir) else { return };
    let pid = nix::unistd::Pid::from_raw(pid);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while running_pid(dir).is_some() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The pid of the proxy master whose files are in `dir`, while it runs (a
/// master that died is not running, though not yet reaped).
fn running_pid(dir: &Path) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(dir.join("haproxy.pid"))
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    is_live_haproxy(&stat).then_some(pid)
}

/// Whether `/proc/<pid>/stat` text is HAProxy's, alive: its name, in
/// parentheses, then its state (`Z` once dead, `X` while being reaped).
fn is_live_haproxy(stat: &str) -> bool {
    let Some((name, rest)) = stat.split_once('(').and_then(|(_, r)| r.rsplit_once(')')) else {
        return false;
    };
    let state = rest.trim_start().chars().next();
    name == "haproxy" && !matches!(state, Some('Z' | 'X') | None)
}

/// What each domain's backend carried, from the proxy's counters (since
/// its workers started): `show stat` on its admin socket, backends only
/// (with 2,000 domains, half the text and a third of the time of every
/// frontend, backend and server).
fn read_counters(dir: &Path) -> Option<Vec<(Uuid, domains::Traffic)>> {
    use std::io::{Read as _, Write as _};
    let mut s = std::os::unix::net::UnixStream::connect(dir.join("admin.sock")).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"show stat -1 2 -1\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    Some(parse_counters(&text))
}

/// The per-domain counters of `show stat`'s CSV.
fn parse_counters(csv: &str) -> Vec<(Uuid, domains::Traffic)> {
    let mut lines = csv.lines();
    let Some(header) = lines.next().and_then(|h| h.strip_prefix("# ")) else {
        return Vec::new();
    };
    let names: Vec<&str> = header.split(',').collect();
    let col = |name: &str| names.iter().position(|n| *n == name);
    let (Some(bin), Some(bout)) = (col("bin"), col("bout")) else {
        return Vec::new();
    };
    let responses: Vec<usize> = [
        "hrsp_1xx",
        "hrsp_2xx",
        "hrsp_3xx",
        "hrsp_4xx",
        "hrsp_5xx",
        "hrsp_other",
    ]
    .iter()
    .filter_map(|n| col(n))
    .collect();
    let mut out = Vec::new();
    for line in lines {
        let f: Vec<&str> = line.split(',').collect();
        if f.get(1) != Some(&"BACKEND") {
            continue;
        }
        let Some(id) = f[0]
            .strip_prefix("site_")
            .and_then(|id| Uuid::parse_str(id).ok())
        else {
            continue;
        };
        let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        out.push((
            id,
            domains::Traffic {
                requests: responses.iter().map(|&i| n(i)).sum(),
                bytes_in: n(bin),
                bytes_out: n(bout),
            },
        ));
    }
    out
}

/// The counts since `last` (counters that went down were reset by a
/// reload: all they hold is new), and `last` set to `now`.
fn deltas(
    last: &mut std::collections::HashMap<Uuid, domains::Traffic>,
    now: Vec<(Uuid, domains::Traffic)>,
) -> Vec<(Uuid, domains::Traffic)> {
    let mut out = Vec::new();
    for (id, t) in now {
        let before = last.insert(id, t).unwrap_or_default();
        let reset = t.requests < before.requests
            || t.bytes_in < before.bytes_in
            || t.bytes_out < before.bytes_out;
        let d = if reset {
            t
        } else {
            domains::Traffic {
                requests: t.requests - before.requests,
                bytes_in: t.bytes_in - before.bytes_in,
                bytes_out: t.bytes_out - before.bytes_out,
            }
        };
        if d != domains::Traffic::default() {
            out.push((id, d));
        }
    }
    out
}

/// Starts HAProxy's master, daemonized, on `file`.
fn start(program: &Path, file: &Path) -> anyhow::Result<()> {
    let out = std::process::Command::new(program)
        .args(["-D", "-f"])
        .arg(file)
        .stdin(std::process::Stdio::null())
        .output()?;
    if !out.status.success() {
        anyhow::bail!(
            "the proxy did not start: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Keys opened, by domain, with the sealed bytes they were opened from: a
/// key is opened once, not at every pass.
type Opened = std::collections::HashMap<Uuid, (Vec<u8>, String)>;

/// The certificates of this node's domains, their keys opened.
async fn served(
    pool: &PgPool,
    node_id: Uuid,
    secret: &SecretKey,
    opened: &mut Opened,
) -> Vec<Served> {
    let rows = match certificates::for_node(pool, node_id).await {
        Ok(rows) => rows,
        Err(e) => {
            tracing::warn!(error = %e, "reading the node's certificates failed");
            return Vec::new();
        }
    };
    opened.retain(|id, _| rows.iter().any(|c| c.domain_id == *id));
    rows.into_iter()
        .filter_map(|c| {
            let key = match opened.get(&c.domain_id) {
                Some((sealed, key)) if *sealed == c.key_sealed => key.clone(),
                _ => match certificates::open(secret, &c.key_sealed) {
                    Ok(key) => {
                        opened.insert(c.domain_id, (c.key_sealed.clone(), key.clone()));
                        key
                    }
                    Err(e) => {
                        tracing::warn!(domain = %c.domain_id, error = %e, "a certificate is not served");
                        return None;
                    }
                },
            };
            Some(Served {
                domain_id: c.domain_id,
                names: c.names,
                pem: format!("{}\n{key}", c.chain_pem.trim_end()),
            })
        })
        .collect()
}

/// Keeps the node's proxy at the routes of its jails, their certificates
/// and the ACME challenges under way.
///
/// Routes are read again on every change notification and challenge, and
/// every `resync` as a backstop; a proxy that stopped is seen within a
/// second (by its pid, without reading the store). Reading and rendering
/// every route each second cost the sites' requests: with 2,000 domains
/// on a node, a pass is enough work to show in their p99.
pub(crate) async fn proxy_task(
    pool: PgPool,
    node_id: Uuid,
    cfg: ProxyConfig,
    secret: Arc<SecretKey>,
    challenges: Arc<Challenges>,
    resync: Duration,
) {
    let dir = cfg.dir.clone();
    let mut proxy = Proxy::new(cfg);
    let mut listener = super::connect_listener(&pool).await;
    let mut last_error = String::new();
    let mut counted = std::collections::HashMap::new();
    let mut opened = Opened::new();
    // The counters of a proxy found running are where counting starts.
    if let Some(now) = read_counters(&dir) {
        deltas(&mut counted, now);
    }
    let mut next_count = tokio::time::Instant::now() + COUNT_EVERY;
    let mut count_now = false;
    let mut next_pass = tokio::time::Instant::now();
    let mut why = "start";
    loop {
        let counting = count_now || tokio::time::Instant::now() >= next_count;
        count_now = false;
        if counting {
            next_count = tokio::time::Instant::now() + COUNT_EVERY;
            let dir = dir.clone();
            if let Ok(Some(now)) = tokio::task::spawn_blocking(move || read_counters(&dir)).await {
                let d = deltas(&mut counted, now);
                if !d.is_empty()
                    && let Err(e) = domains::add_traffic(&pool, &d).await
                {
                    tracing::warn!(error = %e, "storing the domains' traffic failed");
                }
            }
        }
        let due = if tokio::time::Instant::now() >= next_pass {
            true
        } else if proxy.pid().is_none() {
            why = "the proxy is not running";
            true
        } else {
            false
        };
        if due {
            tracing::debug!(why, "proxy routes read");
            why = "resync";
            next_pass = tokio::time::Instant::now() + resync;
            match domains::routes_for_node(&pool, node_id).await {
                Ok(routes) => {
                    let count = routes.len();
                    let (generation, answers) = challenges.snapshot();
                    let extras = Extras {
                        certs: served(&pool, node_id, &secret, &mut opened).await,
                        challenges: answers,
                    };
                    let plan = proxy.plan(&routes, &extras);
                    if !counting && proxy.would_change(&plan) {
                        // A reload starts the counters over: count first,
                        // then come back to apply.
                        count_now = true;
                        next_pass = tokio::time::Instant::now();
                        why = "counted before a reload";
                        continue;
                    }
                    let done = tokio::task::spawn_blocking(move || {
                        let r = proxy.apply(plan, &extras);
                        (proxy, r)
                    })
                    .await;
                    let Ok((back, applied)) = done else {
                        tracing::error!("the proxy's step panicked");
                        return;
                    };
                    proxy = back;
                    if applied.is_ok() {
                        challenges.served(generation);
                    }
                    match applied {
                        Ok(true) => {
                            tracing::info!(routes = count, "proxy routes applied");
                            last_error.clear();
                        }
                        Ok(false) => {}
                        Err(e) => {
                            let e = e.to_string();
                            if e != last_error {
                                tracing::warn!(error = %e, "proxy not changed");
                                last_error = e;
                            }
                            // Tried again at the next change, or in a second.
                            next_pass = tokio::time::Instant::now() + Duration::from_secs(1);
                            why = "retry";
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reading the proxy's routes failed");
                    next_pass = tokio::time::Instant::now() + Duration::from_secs(1);
                    why = "retry";
                }
            }
        }
        tokio::select! {
            w = super::recv(&mut listener) => {
                why = "notified";
                if matches!(w, super::Wake::Lost) {
                    listener = super::connect_listener(&pool).await;
                    why = "listening again";
                }
                // Notified, or back after changes it may have missed.
                next_pass = tokio::time::Instant::now();
            }
            () = challenges.changed.notified() => {
                why = "an ACME challenge";
                next_pass = tokio::time::Instant::now();
            }
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_render_to_backends_and_pages() {
        let cfg = ProxyConfig {
            http: "127.0.0.1:8080".parse().unwrap(),
            https: Some("127.0.0.1:8443".parse().unwrap()),
            dir: PathBuf::from("/run/p"),
            program: PathBuf::from("haproxy"),
        };
        let id = Uuid::from_u128(7);
        let routes = [
            Route {
                domain_id: id,
                names: vec!["site.test".into(), "www.site.test".into()],
                target: Target::Jail {
                    address: "10.77.0.2".into(),
                    port: 8080,
                },
            },
            Route {
                domain_id: Uuid::from_u128(8),
                names: vec!["off.test".into()],
                target: Target::Suspended,
            },
        ];
        let map = routes_map(&routes);
        let site = format!("site_{}", id.simple());
        assert_eq!(
            map,
            format!("site.test {site}\nwww.site.test {site}\noff.test suspended\n")
        );
        let path = routes_map_path(&cfg.dir, &map);
        assert!(path.starts_with("/run/p/routes"));
        let text = render(&cfg, &routes, &path, true);
        assert!(text.contains(&format!(
            "use_backend %[var(txn.site),map({},unknown)]",
            path.display()
        )));
        assert!(text.contains(&format!("backend {site}\n    server jail 10.77.0.2:8080")));
        assert!(text.contains("bind 127.0.0.1:8080"));
        assert!(text.contains(
            "bind 127.0.0.1:8443 ssl crt /run/p/default.pem crt-list /run/p/certs.list alpn h2,http/1.1"
        ));
        assert!(text.contains("map(/run/p/acme.map)"));
        assert!(text.contains(
            r#"set-header Forwarded "for=\"[%[src]]\";host=\"%[req.hdr(host)]\";proto=https" if { src -m sub : }"#
        ));
        assert!(text.contains("user haproxy"));
        assert!(!render(&cfg, &routes, &path, false).contains("user haproxy"));
    }

    #[test]
    fn a_dead_master_is_not_running_though_not_reaped() {
        assert!(is_live_haproxy("812 (haproxy) S 1 812 812 0 -1 4194624"));
        assert!(!is_live_haproxy("812 (haproxy) Z 1 812 812 0 -1 4194624"));
        assert!(!is_live_haproxy("812 (haproxy) X 1 812 812 0 -1"));
        assert!(!is_live_haproxy("812 (sleep) S 1 812 812 0 -1"));
        assert!(!is_live_haproxy("812 (hap) roxy) S 1"));
        assert!(!is_live_haproxy(""));
    }

    #[test]
    fn counters_are_summed_per_domain_across_reloads() {
        let id = Uuid::from_u128(9);
        let csv = |req: u64, bin: u64, bout: u64| {
            format!(
                "# pxname,svname,bin,bout,hrsp_1xx,hrsp_2xx,hrsp_3xx,hrsp_4xx,hrsp_5xx,hrsp_other\n\
                 http,FRONTEND,1,1,0,9,0,0,0,0\n\
                 site_{0},jail,{bin},{bout},0,{req},0,0,0,0\n\
                 site_{0},BACKEND,{bin},{bout},0,{req},0,1,0,0\n\
                 unknown,BACKEND,5,5,0,0,0,5,0,0\n",
                id.simple()
            )
        };
        let mut last = std::collections::HashMap::new();
        let first = deltas(&mut last, parse_counters(&csv(10, 1000, 5000)));
        assert_eq!(
            first,
            [(
                id,
                domains::Traffic {
                    requests: 11,
                    bytes_in: 1000,
                    bytes_out: 5000
                }
            )]
        );
        let more = deltas(&mut last, parse_counters(&csv(15, 1500, 7000)));
        assert_eq!(more[0].1.requests, 5);
        assert_eq!(more[0].1.bytes_out, 2000);
        assert!(deltas(&mut last, parse_counters(&csv(15, 1500, 7000))).is_empty());
        // A reload starts the counters over: what they hold is new.
        let after = deltas(&mut last, parse_counters(&csv(2, 100, 300)));
        assert_eq!(after[0].1.requests, 3);
    }

    #[test]
    fn a_configuration_the_proxy_refuses_is_never_put_in_place() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        // A stand-in for haproxy: `-c` refuses while `refuse` exists.
        let program = dir.path().join("haproxy");
        std::fs::write(
            &program,
            format!(
                "#!/bin/sh\nif [ \"$1\" = -c ]; then [ -e {0}/refuse ] && {{ echo 'unknown keyword' >&2; exit 1; }}; exit 0; fi\nexit 0\n",
                dir.path().display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
        let cfg = ProxyConfig {
            http: "127.0.0.1:8080".parse().unwrap(),
            https: None,
            dir: dir.path().join("proxy"),
            program,
        };
        let mut proxy = Proxy::new(cfg.clone());
        let route = |name: &str| Route {
            domain_id: Uuid::new_v4(),
            names: vec![name.to_owned()],
            target: Target::Jail {
                address: "10.77.0.2".into(),
                port: 80,
            },
        };
        let first = [route("a.test")];
        let none = Extras::default();
        assert!(proxy.apply(proxy.plan(&first, &none), &none).unwrap());
        let file = cfg.dir.join("haproxy.cfg");
        let before = std::fs::read_to_string(&file).unwrap();
        // The names the configuration in force routes, from the map it reads.
        let routed = || {
            let text = std::fs::read_to_string(&file).unwrap();
            let path = text
                .split("use_backend %[var(txn.site),map(")
                .nth(1)
                .and_then(|rest| rest.split(',').next())
                .unwrap()
                .to_owned();
            std::fs::read_to_string(path).unwrap()
        };
        assert!(routed().starts_with("a.test site_"));
        std::fs::write(dir.path().join("refuse"), "").unwrap();
        let e = proxy
            .apply(
                proxy.plan(&[route("a.test"), route("b.test")], &none),
                &none,
            )
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(
                "refused its new configuration (the old one keeps serving): unknown keyword"
            ),
            "{e}"
        );
        assert_eq!(std::fs::read_to_string(&file).unwrap(), before);
        assert!(routed().starts_with("a.test site_"));
        // Accepted, the new configuration routes both; the old map goes.
        std::fs::remove_file(dir.path().join("refuse")).unwrap();
        let both = [route("a.test"), route("b.test")];
        assert!(proxy.apply(proxy.plan(&both, &none), &none).unwrap());
        let map = routed();
        assert!(map.contains("a.test ") && map.contains("b.test "), "{map}");
        assert_eq!(
            std::fs::read_dir(cfg.dir.join("routes")).unwrap().count(),
            1
        );
    }
}
