//! The managed local PostgreSQL cluster: `initdb` once, then `postgres` as a
//! child of ours, listening on a unix socket only (no TCP).
//!
//! postgres refuses to run as root, so when we are root it runs as an
//! unprivileged account of its own (`db_run_as`), which owns the data
//! folder; the web server runs as another (`run_as`), so a flaw in the web
//! tier never owns the database's files. The socket lives in a folder of its
//! own next to the data folder (`<pg_data>.sock`), which the web server's
//! account can reach.
//!
//! Every connection is authenticated by `peer`: the kernel names the
//! connecting OS account, and a map written at every start says which
//! database roles each account may use. Root (the agent, `up`, the CLI) may
//! use all three; the database's account the owner role; the web server's
//! account only the web role (see `stockade_store::roles`). No `trust`.

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::{Signal, kill};
use nix::unistd::{Pid, Uid, User};
use secrecy::SecretString;

mod setup;
use setup::{hand_over, init, log_tail, make_socket_dir, take_lock, write_auth};

/// The role the cluster is created with: it owns Stockade's database and
/// runs migrations. The web tier and the agent connect as roles of their own.
pub const DB_USER: &str = "stockade";
const INSTALL_HINT: &str = "install them with `apt-get install postgresql` \
     (or point DATABASE_URL at an existing PostgreSQL server)";

/// Finds the folder holding `initdb` and `postgres`: `pg_config --bindir`,
/// then PATH, then the newest `/usr/lib/postgresql/*/bin`.
pub fn find_bindir() -> anyhow::Result<PathBuf> {
    let has_both = |d: &Path| d.join("initdb").is_file() && d.join("postgres").is_file();
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && has_both(&dir) {
            return Ok(dir);
        }
    }
    if let Some(path) = std::env::var_os("PATH")
        && let Some(dir) = std::env::split_paths(&path).find(|d| has_both(d))
    {
        return Ok(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            has_both(&bin).then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, d)| d).ok_or_else(|| {
        anyhow::anyhow!(
            "PostgreSQL server programs (initdb, postgres) were not found; {INSTALL_HINT}"
        )
    })
}

/// The OS account PostgreSQL runs as.
#[derive(Debug, Clone)]
pub struct RunAs {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Account name.
    pub name: String,
}

/// Resolves who unprivileged children run as: ourselves when not root;
/// otherwise `name`, created as a system account when missing.
pub fn resolve_run_as(name: &str) -> anyhow::Result<RunAs> {
    if !Uid::effective().is_root() {
        let me =
            User::from_uid(Uid::effective())?.context("the current user has no account entry")?;
        return Ok(RunAs {
            uid: me.uid.as_raw(),
            gid: me.gid.as_raw(),
            name: me.name,
        });
    }
    if User::from_name(name)?.is_none() {
        let status = Command::new("useradd")
            .args([
                "--system",
                "--user-group",
                "--no-create-home",
                "--home-dir",
                "/nonexistent",
            ])
            .args(["--shell", "/usr/sbin/nologin", name])
            .status()
            .with_context(|| format!("cannot run useradd to create the user {name:?}"))?;
        if !status.success() && User::from_name(name)?.is_none() {
            bail!(
                "creating the system user {name:?} failed; create it, or set STOCKADE_RUN_AS to an existing unprivileged user"
            );
        }
    }
    let user =
        User::from_name(name)?.with_context(|| format!("the user {name:?} does not exist"))?;
    if user.uid.is_root() {
        bail!("run_as must be an unprivileged user, not {name:?}");
    }
    Ok(RunAs {
        uid: user.uid.as_raw(),
        gid: user.gid.as_raw(),
        name: user.name,
    })
}

/// The accounts of the managed cluster and of the web server, created when
/// missing; as root they must differ, so the web server never owns the
/// database's files.
pub fn accounts(cfg: &crate::config::Config) -> anyhow::Result<(RunAs, RunAs)> {
    let db = resolve_run_as(&cfg.db_run_as)?;
    let web = resolve_run_as(&cfg.run_as)?;
    if Uid::effective().is_root() && db.uid == web.uid {
        bail!(
            "db_run_as and run_as are the same account ({}); PostgreSQL and the web server need one each",
            db.name
        );
    }
    Ok((db, web))
}

/// Refuses a folder that `who` could not reach (an ancestor without the
/// search bit for them), naming the ancestor.
fn check_reachable(dir: &Path, who: &RunAs) -> anyhow::Result<()> {
    for anc in dir.ancestors().skip(1) {
        let Ok(meta) = fs::metadata(anc) else {
            continue;
        };
        let mode = meta.mode();
        let ok = if meta.uid() == who.uid {
            mode & 0o100 != 0
        } else if meta.gid() == who.gid {
            mode & 0o010 != 0
        } else {
            mode & 0o001 != 0
        };
        if !ok {
            bail!(
                "the user {:?} cannot reach {} (mode {:o}); choose a PostgreSQL data folder it can reach with STOCKADE_PG_DATA",
                who.name,
                anc.display(),
                mode & 0o7777
            );
        }
    }
    Ok(())
}

/// Options that tune the cluster for its use.
#[derive(Debug, Clone, Copy, Default)]
pub struct Tuning {
    /// Trade durability for speed (a throw-away cluster for tests).
    pub ephemeral: bool,
}

/// The database Stockade keeps its data in on a managed cluster.
pub const DATABASE: &str = "stockade";

/// The folder of the socket of the cluster in `data_dir`.
pub fn socket_dir(data_dir: &Path) -> PathBuf {
    let mut dir = data_dir.as_os_str().to_owned();
    dir.push(".sock");
    PathBuf::from(dir)
}

/// The URL of database `db` on the managed cluster whose data folder is
/// `data_dir`, an absolute path, for the owner role.
fn url_in(data_dir: &Path, db: &str) -> SecretString {
    let host: String = socket_dir(data_dir)
        .to_string_lossy()
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    SecretString::from(format!("postgres://{DB_USER}@{host}/{db}"))
}

/// The URL of Stockade's database on a managed cluster that runs in
/// `data_dir` (the `pg_data` setting), for commands run beside `stockade
/// up`; `None` when none runs there.
pub fn running_url(data_dir: &Path) -> Option<SecretString> {
    let dir = std::path::absolute(data_dir).ok()?;
    (accepting(&dir) && socket_dir(&dir).join(".s.PGSQL.5432").exists())
        .then(|| url_in(&dir, DATABASE))
}

/// Whether the server of `data_dir` accepts connections: line 8 of its
/// `postmaster.pid` reads "ready" then.
fn accepting(data_dir: &Path) -> bool {
    read_own_file(&data_dir.join("postmaster.pid"))
        .is_some_and(|s| s.lines().nth(7).is_some_and(|l| l.trim() == "ready"))
}

/// Reads a file of the database's account as root: never through a link it
/// planted, never blocking on a FIFO, only a regular file.
fn read_own_file(path: &Path) -> Option<String> {
    let mut file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .ok()?;
    if !file.metadata().ok()?.is_file() {
        return None;
    }
    let mut text = String::new();
    file.read_to_string(&mut text).ok()?;
    Some(text)
}

/// A running managed cluster. Dropping it without [`Cluster::stop`] leaves
/// the server to stop itself when this process dies.
pub struct Cluster {
    child: Child,
    data_dir: PathBuf,
    _lock: Flock<File>,
}

impl Cluster {
    /// Initialises `data_dir` if needed and starts the server as `who`,
    /// waiting until it accepts connections; `web` is the account of the web
    /// server, which may connect as the web role. Refuses when another
    /// process holds the folder.
    pub fn start(
        data_dir: &Path,
        who: &RunAs,
        web: Option<&RunAs>,
        tuning: Tuning,
    ) -> anyhow::Result<Self> {
        let bindir = find_bindir()?;
        let data_dir = std::path::absolute(data_dir)
            .with_context(|| format!("cannot resolve {}", data_dir.display()))?;
        let parent = data_dir
            .parent()
            .context("the data folder needs a parent folder")?;
        fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
        let lock = take_lock(&data_dir)?;
        // The socket path has a hard limit of 107 bytes in the kernel.
        let sockets = socket_dir(&data_dir);
        if sockets.join(".s.PGSQL.5432").as_os_str().len() > 100 {
            bail!(
                "the PostgreSQL data folder path {} is too long for a unix socket; set STOCKADE_PG_DATA to a shorter path",
                data_dir.display()
            );
        }
        check_reachable(&data_dir, who)?;
        if let Some(web) = web {
            check_reachable(&sockets, web)?;
        }
        if !data_dir.join("PG_VERSION").is_file() {
            init(&bindir, &data_dir, who)?;
        } else {
            hand_over(&data_dir, who)?;
        }
        make_socket_dir(&sockets, who)?;
        write_auth(&data_dir, who, web)?;
        let log_path = data_dir.join("server.log");
        // The data folder is the database account's: a link it planted
        // there must not make root write elsewhere.
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&log_path)
            .with_context(|| format!("cannot open {}", log_path.display()))?;
        let log_size = log.metadata().map(|m| m.len()).unwrap_or(0);
        let mut cmd = Command::new(bindir.join("postgres"));
        cmd.arg("-D")
            .arg(&data_dir)
            .args(["-c", "listen_addresses="])
            .arg("-c")
            .arg(format!("unix_socket_directories={}", sockets.display()))
            .args([
                "-c",
                // Anyone may knock; peer authentication decides who enters.
                "unix_socket_permissions=0777",
                "-c",
                "max_connections=300",
            ]);
        if tuning.ephemeral {
            cmd.args([
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
            ]);
        }
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // Its own process group: a Ctrl-C in the terminal reaches us, and we
            // stop the web server and agent before the database.
            .process_group(0);
        if Uid::effective().is_root() {
            cmd.uid(who.uid).gid(who.gid); // std clears supplementary groups when root sets a uid
        }
        // SAFETY: the closure only calls prctl, which is async-signal-safe; it
        // runs after the uid change, which would otherwise clear the setting.
        unsafe {
            cmd.pre_exec(|| {
                // If we die without stopping it (SIGKILL), the server shuts down fast.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGINT) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", bindir.join("postgres").display()))?;
        let mut cluster = Cluster {
            child,
            data_dir,
            _lock: lock,
        };
        cluster.wait_ready(&log_path, log_size)?;
        Ok(cluster)
    }

    fn wait_ready(&mut self, log_path: &Path, log_from: u64) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "PostgreSQL exited during start-up ({status}); its log ({}) says:\n{}",
                    log_path.display(),
                    log_tail(log_path, log_from)
                );
            }
            if accepting(&self.data_dir) {
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!(
                    "PostgreSQL did not become ready within 60 s; see {}",
                    log_path.display()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The URL of database `db` on this cluster.
    pub fn url(&self, db: &str) -> SecretString {
        url_in(&self.data_dir, db)
    }

    /// The cluster's data folder.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Stops the server with a fast shutdown (open transactions roll back,
    /// everything committed is on disk), escalating after 30 s.
    pub fn stop(mut self) -> anyhow::Result<()> {
        let pid = Pid::from_raw(i32::try_from(self.child.id()).context("pid out of range")?);
        let _ = kill(pid, Signal::SIGINT);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = kill(pid, Signal::SIGQUIT);
        self.child.wait()?;
        Ok(())
    }
}
