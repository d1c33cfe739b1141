//! Shared fixture of the root-only jail tests: temporary state and image
//! folders, a cgroup parent of its own, and a check that nothing is left.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use stockade_jail::{Engine, EngineConfig, Ipv4Net, JailKind, JailName, JailSpec, Limits};

/// Whether the tests can run; prints one loud line when they cannot.
pub fn root_or_skip(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    eprintln!("SKIPPED {test}: the jail tests need root");
    false
}

/// How long one of these test programs may run: each takes seconds to a
/// minute, so a jail start that hangs fails the run here, naming itself,
/// instead of stalling the whole suite.
const HANG_LIMIT: Duration = Duration::from_secs(600);

/// Starts, once per test program, a thread that aborts the program if it
/// is still running after [`HANG_LIMIT`].
fn watchdog() {
    static STARTED: std::sync::Once = std::sync::Once::new();
    STARTED.call_once(|| {
        std::thread::spawn(|| {
            std::thread::sleep(HANG_LIMIT);
            eprintln!("HUNG: this jail test program ran past {HANG_LIMIT:?}; aborting");
            std::process::abort();
        });
    });
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A unique jail name for this test process.
pub fn unique(prefix: &str) -> JailName {
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    JailName::parse(&format!("{prefix}-{}-{n}", std::process::id())).unwrap()
}

/// An engine on temporary folders; checks on drop that everything it made
/// is gone.
pub struct Fixture {
    pub engine: Engine,
    pub dir: tempfile::TempDir,
    pub cgroup_parent: String,
    /// The bridge, gateway and firewall table of a network fixture.
    pub net: Option<TestNet>,
    names: std::sync::Mutex<Vec<JailName>>,
}

/// A network of the fixture's own: removed with it.
#[derive(Debug, Clone)]
pub struct TestNet {
    pub bridge: String,
    pub gateway: Ipv4Net,
    pub table: String,
}

impl Fixture {
    pub fn new() -> Self {
        Self::build(None, |_| {})
    }

    /// A fixture whose engine configuration `edit` changes first.
    pub fn with_config(edit: impl FnOnce(&mut EngineConfig)) -> Self {
        Self::build(None, edit)
    }

    /// A fixture whose jails may have networks: a bridge, address pool and
    /// firewall table of its own, all removed on drop.
    pub fn with_network() -> Self {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id() % 100_000;
        let third = u8::try_from((pid + n * 7) % 200 + 20).unwrap();
        Self::build(
            Some(TestNet {
                bridge: format!("skt{pid}x{n}"),
                gateway: format!("10.213.{third}.1/24").parse().unwrap(),
                table: format!("stt{pid}x{n}"),
            }),
            |_| {},
        )
    }

    fn build(net: Option<TestNet>, edit: impl FnOnce(&mut EngineConfig)) -> Self {
        watchdog();
        // Jails started here outlive their launcher; as subreaper this test
        // process inherits and reaps their inits (the machine's PID 1 may not).
        nix::sys::prctl::set_child_subreaper(true).unwrap();
        let dir = tempfile::Builder::new()
            .prefix("stockade-jail-test")
            .tempdir()
            .unwrap();
        // Jails with a user namespace reach their layers as an unprivileged
        // host uid: the folders above must be searchable.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let cgroup_parent = format!("stockade-test-{}", unique("p"));
        let mut cfg = EngineConfig::new(dir.path().join("state"), dir.path().join("images"));
        cfg.cgroup_parent = cgroup_parent.clone();
        cfg.tmpfs_upper_bytes = 64 << 20;
        if let Some(n) = &net {
            cfg.bridge = n.bridge.clone();
            cfg.gateway = n.gateway;
            cfg.firewall_table = n.table.clone();
            // Tests publish to the host itself only: no host-wide switch.
            cfg.forwarding = false;
        }
        edit(&mut cfg);
        let engine = Engine::new(cfg).unwrap();
        engine.ensure_busybox().unwrap();
        Self {
            engine,
            dir,
            cgroup_parent,
            net,
            names: Default::default(),
        }
    }

    /// A spec for the busybox image, remembered for cleanup.
    pub fn spec(&self, prefix: &str, kind: JailKind, command: &[&str], limits: Limits) -> JailSpec {
        let name = unique(prefix);
        self.names.lock().unwrap().push(name.clone());
        JailSpec {
            hostname: name.clone(),
            name,
            image: "busybox".into(),
            kind,
            command: command.iter().map(|s| s.to_string()).collect(),
            limits,
            network: None,
            user_namespace: false,
            env: Vec::new(),
        }
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Every kernel object under this fixture's folders or cgroup parent.
    pub fn leftovers(&self) -> Vec<String> {
        let mut out = Vec::new();
        let root = self.dir.path();
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        for l in mountinfo.lines() {
            if l.contains(root.to_str().unwrap()) {
                out.push(format!("mount: {l}"));
            }
        }
        // Loop devices detach asynchronously after the last close: allow a moment.
        for _ in 0..200 {
            let busy = loops_under(root);
            if busy.is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        out.extend(loops_under(root).into_iter().map(|l| format!("loop: {l}")));
        for c in ["cpu", "cpuacct", "memory", "pids", "blkio", "devices", ""] {
            let p = Path::new("/sys/fs/cgroup")
                .join(c)
                .join(&self.cgroup_parent);
            if let Ok(rd) = std::fs::read_dir(&p) {
                for e in rd.flatten() {
                    if e.file_type().unwrap().is_dir() {
                        out.push(format!("cgroup: {}", e.path().display()));
                    }
                }
            }
        }
        if let Ok(rd) = std::fs::read_dir(self.state_dir().join("jails")) {
            for e in rd.flatten() {
                out.push(format!("state: {}", e.path().display()));
            }
        }
        for (base, jail) in self.engine.uid_ranges().unwrap() {
            out.push(format!("uid range: {base} of {jail}"));
        }
        // Host veths (with their qdiscs), bridge ports, firewall elements.
        // The kernel removes a stopped jail's pair with its namespace, in
        // the background: allow it a moment.
        for name in self.names.lock().unwrap().iter() {
            let link = stockade_jail::host_link(name.as_str());
            if !link_gone(&link) {
                out.push(format!("veth: {link} of {name}"));
            }
        }
        if let Some(n) = &self.net {
            let brif = Path::new("/sys/class/net").join(&n.bridge).join("brif");
            if let Ok(rd) = std::fs::read_dir(&brif) {
                for e in rd.flatten() {
                    out.push(format!("bridge port: {}", e.path().display()));
                }
            }
            let list = Command::new("nft")
                .args(["list", "table", "inet", &n.table])
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&list.stdout);
            if text.contains("elements") {
                out.push(format!("firewall elements: {text}"));
            }
        }
        out
    }
}

/// Waits up to two seconds for a network link to disappear.
pub fn link_gone(link: &str) -> bool {
    let path = Path::new("/sys/class/net").join(link);
    for _ in 0..400 {
        if !path.exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

fn loops_under(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/sys/block").unwrap().flatten() {
        if let Ok(b) = std::fs::read_to_string(e.path().join("loop/backing_file"))
            && b.contains(root.to_str().unwrap())
        {
            out.push(format!("{} {}", e.file_name().to_string_lossy(), b.trim()));
        }
    }
    out
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for name in self.names.lock().unwrap().iter() {
            if let Err(e) = self.engine.destroy(name) {
                eprintln!("cleanup of {name} failed: {e}");
            }
        }
        let left = self.leftovers();
        for c in ["cpu", "cpuacct", "memory", "pids", "blkio", "devices", ""] {
            let _ = std::fs::remove_dir(
                Path::new("/sys/fs/cgroup")
                    .join(c)
                    .join(&self.cgroup_parent),
            );
        }
        if let Some(n) = &self.net {
            // The node's objects: the bridge and the firewall table. The
            // bridge is deleted until it is gone (a deletion can fail while
            // the kernel still tears down a jail's link on a loaded host).
            let bridge = Path::new("/sys/class/net").join(&n.bridge);
            for _ in 0..50 {
                let _ = Command::new("ip")
                    .args(["link", "del", &n.bridge])
                    .stderr(std::process::Stdio::null())
                    .status();
                if !bridge.exists() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            if bridge.exists() {
                eprintln!("the test bridge {} could not be removed", n.bridge);
            }
            let _ = Command::new("nft")
                .args(["delete", "table", "inet", &n.table])
                .stderr(std::process::Stdio::null())
                .status();
        }
        if !std::thread::panicking() {
            assert!(left.is_empty(), "left over: {left:#?}");
        }
    }
}

impl Fixture {
    /// A spec with a network: the next free address of the fixture's pool.
    pub fn net_spec(
        &self,
        prefix: &str,
        kind: JailKind,
        command: &[&str],
        limits: Limits,
    ) -> JailSpec {
        let mut spec = self.spec(prefix, kind, command, limits);
        let address = self.engine.allocate_address().unwrap();
        spec.network = Some(stockade_jail::NetSpec::new(address));
        spec
    }
}

/// Limits used by most tests.
pub fn small_limits() -> Limits {
    Limits {
        cpu_millicores: 1000,
        memory_bytes: 128 << 20,
        pids: 64,
        ..Limits::default()
    }
}
