//! Working inside jails and on the whole node: `exec`, `run`, strays and
//! discovery of what is on the host.

use std::ffi::CString;
use std::fs::{self, File};
use std::os::fd::{AsRawFd, OwnedFd};

use nix::sched::CloneFlags;
use stockade_domain::JailName;

use crate::discover::{self, Discovered, Observed};
use crate::error::JailError;
use crate::launch::{self, ExecPlan, JAIL_PATH, JoinStdio, Outcome, Stdio};
use crate::net;
use crate::spec::JailSpec;
use crate::state::{self, JailPaths, Upper};
use crate::teardown;
use crate::terminal::Terminal;
use crate::{hostinfo, uids};

use super::*;

/// The name the init program answers to as an SFTP server.
const SFTP_NAME: &str = "stockade-sftp";

/// What a caller runs in a jail.
#[derive(Clone, Copy)]
enum Program<'a> {
    /// A command of the jail's, looked up in its root.
    Command(&'a [String]),
    /// The SFTP server (see [`Engine::serve_sftp`]).
    Sftp,
}

impl Engine {
    /// Runs `argv` inside the running jail (its namespaces, cgroup, root
    /// and capability limits) with the caller's stdio; returns its exit
    /// code, or 128 + the signal that ended it.
    pub fn exec(&self, name: &JailName, argv: &[String]) -> Result<i32, JailError> {
        let term = std::env::var("TERM").unwrap_or_else(|_| "xterm".into());
        let mut terminal = Terminal::for_caller()?;
        let stdio = match terminal.as_mut().and_then(Terminal::slave) {
            Some(tty) => JoinStdio::Terminal(tty),
            None => JoinStdio::Caller,
        };
        let code = self.exec_joined(name, Program::Command(argv), stdio, &term);
        if let Some(t) = terminal {
            t.finish();
        }
        code
    }

    /// Runs `argv` inside the running jail as [`Engine::exec`] does, on a
    /// terminal the caller made (`tty`, the slave end of a pseudo-terminal
    /// whose master end the caller relays, e.g. to a browser's console);
    /// blocks until it ends and returns its exit code. Closing the master
    /// end hangs the command up.
    pub fn exec_on_terminal(
        &self,
        name: &JailName,
        argv: &[String],
        tty: OwnedFd,
        term: &str,
    ) -> Result<i32, JailError> {
        self.exec_joined(name, Program::Command(argv), JoinStdio::Terminal(tty), term)
    }

    /// Runs `argv` inside the running jail as [`Engine::exec`] does, with
    /// `streams` (pipes the caller relays) as its stdin, stdout and stderr,
    /// in a session of its own; blocks until it ends and returns its exit
    /// code.
    pub fn exec_on_streams(
        &self,
        name: &JailName,
        argv: &[String],
        streams: [OwnedFd; 3],
    ) -> Result<i32, JailError> {
        self.exec_joined(
            name,
            Program::Command(argv),
            JoinStdio::Streams(streams),
            "dumb",
        )
    }

    /// Serves one SFTP session inside the running jail on `streams` (the
    /// requests on the first, the answers on the second, its complaints on
    /// the third) until the requests end; returns its exit code.
    ///
    /// The server is the node's init program (in its SFTP mode), exec'd
    /// from the engine's descriptor exactly as any command in the jail is
    /// run: its namespaces, cgroup, system call filter, capabilities and
    /// user. Every path it is asked for is resolved by the kernel inside
    /// the jail's root, so no request can name a file of the node or of
    /// another jail, and what it writes is the jail's, against its quota.
    pub fn serve_sftp(&self, name: &JailName, streams: [OwnedFd; 3]) -> Result<i32, JailError> {
        self.exec_joined(name, Program::Sftp, JoinStdio::Streams(streams), "dumb")
    }

    fn exec_joined(
        &self,
        name: &JailName,
        program: Program<'_>,
        stdio: JoinStdio,
        term: &str,
    ) -> Result<i32, JailError> {
        let (_, rec) = self.record(name)?;
        let init = self
            .live_init(&rec)
            .ok_or_else(|| JailError::NotRunning(name.to_string()))?;
        let ns_dir = self.cfg.proc_root.join(init.pid.to_string()).join("ns");
        let mut namespaces = Vec::new();
        let user = rec.uid_base.map(|_| ("user", CloneFlags::CLONE_NEWUSER));
        for (file, flag) in user.into_iter().chain([
            ("cgroup", CloneFlags::CLONE_NEWCGROUP),
            ("ipc", CloneFlags::CLONE_NEWIPC),
            ("uts", CloneFlags::CLONE_NEWUTS),
            ("net", CloneFlags::CLONE_NEWNET),
            ("pid", CloneFlags::CLONE_NEWPID),
            ("mnt", CloneFlags::CLONE_NEWNS),
        ]) {
            let p = ns_dir.join(file);
            let f = File::open(&p).map_err(JailError::io("open", &p))?;
            namespaces.push((OwnedFd::from(f), flag, p));
        }
        // The namespace files are open: if the init was replaced meanwhile
        // by another process with the same pid, refuse.
        if self.live_init(&rec).is_none() {
            return Err(JailError::NotRunning(name.to_string()));
        }
        let env = [
            ("PATH", JAIL_PATH),
            ("HOME", "/root"),
            ("HOSTNAME", rec.spec.hostname.as_str()),
            ("TERM", term),
        ];
        let command = match program {
            Program::Command(argv) => ExecPlan::new(argv, &env)?,
            Program::Sftp => ExecPlan::new(&[SFTP_NAME.to_owned()], &env[..3])?.exec_join_program(),
        };
        let join_files: Vec<CString> = self
            .cgroups
            .join_files(name.as_str())
            .iter()
            .map(|p| c_path(p))
            .collect();
        // Like the jail's own command: the OOM killer prefers it to the init.
        let init_adj = fs::read_to_string(
            self.cfg
                .proc_root
                .join(init.pid.to_string())
                .join("oom_score_adj"),
        );
        let oom_score_adj: &'static [u8] = if init_adj.is_ok_and(|a| a.trim() == "-1000") {
            b"0"
        } else {
            b"500"
        };
        launch::join(&launch::Join {
            namespaces,
            cgroup_files: &join_files,
            command: &command,
            seccomp: self.seccomp.program(),
            oom_score_adj,
            stdio,
            program: matches!(program, Program::Sftp).then(|| self.init_program.as_raw_fd()),
        })
    }

    /// Runs a transient app jail: creates it, runs `argv` (or the spec's
    /// command) with the caller's stdin, stdout and stderr, removes every
    /// trace of it, and returns the command's exit code (128 + signal if
    /// killed). Without a disk quota its writable layer is a tmpfs.
    pub fn run(&self, spec: &JailSpec, argv: &[String]) -> Result<i32, JailError> {
        let paths = self.paths(spec.name.as_str());
        if paths.record.exists() {
            return Err(JailError::AlreadyExists(spec.name.to_string()));
        }
        // An OCI image's entrypoint comes first, as for a started jail.
        let argv = if argv.is_empty() {
            self.command_of(spec)?
        } else {
            self.command_of(&JailSpec {
                command: argv.to_vec(),
                ..spec.clone()
            })?
        };
        let mut simple = false;
        let mut terminal = Terminal::for_caller()?;
        let tty = terminal.as_mut().and_then(Terminal::slave);
        let result = self.prepare(spec, true, false).and_then(|(paths, rec)| {
            simple = rec.upper != Upper::Volume && rec.spec.network.is_none();
            self.launch(&paths, &rec, &argv, Stdio::Inherit { tty })
        });
        if let Some(t) = terminal {
            t.finish();
        }
        let cleanup = match result {
            // The init has been reaped, and with it went every process of
            // its PID namespace and every mount of its mount namespace: of a
            // jail without volume or network, only its cgroup and folder are
            // left on the node.
            Ok(Outcome::Exited { .. }) if simple => self.remove_leftovers(&spec.name, &paths),
            _ => self.destroy(&spec.name),
        };
        let code = match result? {
            Outcome::Exited { code } => code,
            Outcome::Started { .. } => 0,
        };
        cleanup?;
        Ok(code)
    }

    /// Removes the cgroup and folder of a jail that has nothing else left.
    /// A jail with a user namespace still has its id-mapped image mounted
    /// in the folder: it is unmounted before anything is removed.
    pub(super) fn remove_leftovers(
        &self,
        name: &JailName,
        paths: &JailPaths,
    ) -> Result<(), JailError> {
        let _lock = self.lock_jail(name.as_str())?;
        self.cgroups.remove(name.as_str())?;
        teardown::remove_jail_dir(self.host.as_ref(), &self.cfg.proc_root, &paths.dir)?;
        uids::release(&uids::dir(&self.cfg.state_dir), name.as_str())?;
        super::lock::forget(&super::lock::dir(&self.cfg.state_dir), name.as_str())
    }

    /// Removes a port of the node's bridge that [`Engine::discover`] found
    /// belonging to no jail. Refuses anything else.
    pub fn remove_stray_link(&self, link: &str) -> Result<(), JailError> {
        if !net::bridge_ports(&self.cfg.sys_root, &self.cfg.bridge)
            .iter()
            .any(|p| p == link)
            || !link.starts_with("sk")
        {
            return Err(JailError::Invalid {
                what: "link",
                reason: format!("{link} is not a jail port of bridge {}", self.cfg.bridge),
            });
        }
        self.net.del_link(link)
    }

    /// Every jail-related object on the node, grouped by jail name.
    pub fn discover(&self) -> Result<Discovered, JailError> {
        let jails_dir = state::jails_dir(&self.cfg.state_dir);
        let state_dirs = discover::state_dirs(&jails_dir);
        let live_inits = state_dirs
            .iter()
            .filter_map(|(name, _, rec)| Some((name.clone(), self.live_init(rec.as_ref()?)?.pid)))
            .collect();
        let cgroups = self.cgroups.list();
        let mut names: Vec<&String> = cgroups.iter().map(|(n, _)| n).collect();
        names.sort();
        names.dedup();
        let cgroup_pids = names
            .into_iter()
            .map(|n| (n.clone(), self.cgroups.pids(n)))
            .collect();
        // The kernel names mount points and loop backing files by their
        // real path: a state folder reached through a symlink must match.
        let host_jails_dir = fs::canonicalize(&jails_dir).unwrap_or(jails_dir);
        Ok(discover::group(
            &host_jails_dir,
            Observed {
                state_dirs,
                cgroups,
                cgroup_pids,
                mounts: hostinfo::mounts(&self.cfg.proc_root),
                loops: hostinfo::loop_devices(&self.cfg.sys_root),
                live_inits,
                bridge_ports: net::bridge_ports(&self.cfg.sys_root, &self.cfg.bridge),
            },
        ))
    }
}
