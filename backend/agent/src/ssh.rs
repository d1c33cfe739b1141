//! The node's SSH gateway: customers log in to their running jails as
//! `<jail>+<tenant>` with a key the tenant registered (panel or API), and
//! get what `sshd` would give them, inside the jail:
//!
//! - a shell, or a command (`ssh … 'cmd'`), on a terminal when the client
//!   asks for one and on pipes otherwise, run exactly as the console's and
//!   `exec`'s are (the jail's namespaces, cgroup, system call filter,
//!   capabilities and user);
//! - the `sftp` subsystem, served by the node's init program in its SFTP
//!   mode, run the same way: every path is the jail's, resolved by the
//!   kernel in the jail's root, and what is written is the jail's, against
//!   its disk quota (see [`Engine::serve_sftp`]).
//!
//! Only public keys are accepted. The key must be one of the tenant's, the
//! jail live and placed on this node, the tenant active; a refused login
//! learns nothing of which of these failed. The host key is made once per
//! node and kept in the agent's state folder; its fingerprint is recorded
//! with the node, and the panel shows it for customers to check.
//!
//! Sessions open and close in the audit log (never what is typed).

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use russh::keys::ssh_key::LineEnding;
use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::{HashAlg, PrivateKey};
use russh::server::{
    Auth, ChannelOpenHandle, Handler, Msg, PublicKeyOffer, Session, VerifiedPublicKey,
};
use russh::{Channel, ChannelId, ChannelMsg, MethodKind, MethodSet};
use stockade_jail::{Engine, JailName};
use stockade_store::PgPool;
use stockade_store::ssh_keys::{self, Gateway, Login};
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;
use uuid::Uuid;

use crate::permits::Permits;
use crate::pty::{Fd, open_terminal, resize, session_of};

/// Where the gateway listens, and the file of the node's host key (made
/// there if missing).
#[derive(Debug, Clone)]
pub struct SshConfig {
    pub listen: SocketAddr,
    pub host_key: PathBuf,
}

/// Sessions open at once: 8 in one jail, 128 on the node (each holds a
/// thread of the blocking pool while its command runs).
static SESSIONS: Permits = Permits::new(8, 128);

/// The shell of a login without a command.
const SHELL: &str = "/bin/sh";

/// What the gateway shares between connections.
struct Shared {
    pool: PgPool,
    node_id: Uuid,
    engine: Arc<Engine>,
}

/// Starts the gateway; returns what customers are told about it.
pub(crate) async fn serve(
    cfg: &SshConfig,
    node_name: &str,
    pool: PgPool,
    node_id: Uuid,
    engine: Arc<Engine>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<Gateway> {
    let path = cfg.host_key.clone();
    let key = tokio::task::spawn_blocking(move || host_key(&path)).await??;
    let public = key.public_key();
    let host_key = public.to_openssh()?;
    let host_fingerprint = public.fingerprint(HashAlg::Sha256).to_string();
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("listening for SSH on {}", cfg.listen))?;
    let local = listener.local_addr()?;
    let mut methods = MethodSet::empty();
    methods.push(MethodKind::PublicKey);
    let config = Arc::new(russh::server::Config {
        server_id: russh::SshId::Standard("SSH-2.0-Stockade".into()),
        methods,
        // A refused key is answered after the same second whether or not
        // the login names a jail; the first probe ("none") at once.
        auth_rejection_time: Duration::from_secs(1),
        auth_rejection_time_initial: Some(Duration::ZERO),
        keys: vec![key],
        max_auth_attempts: 6,
        inactivity_timeout: Some(Duration::from_secs(3600)),
        keepalive_interval: Some(Duration::from_secs(30)),
        keepalive_max: 4,
        nodelay: true,
        // Room for a pipelined SFTP upload in flight.
        window_size: 8 << 20,
        ..Default::default()
    });
    let shared = Arc::new(Shared {
        pool,
        node_id,
        engine,
    });
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = shutdown.changed() => if *shutdown.borrow() { return } else { continue },
            };
            let (stream, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting an SSH connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let connection = Connection {
                shared: shared.clone(),
                peer,
                login: None,
            };
            let config = config.clone();
            tokio::spawn(async move {
                match russh::server::run_stream(config, stream, connection).await {
                    Ok(session) => {
                        if let Err(e) = session.await {
                            tracing::debug!(error = %e, %peer, "an SSH connection ended");
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, %peer, "an SSH handshake failed"),
                }
            });
        }
    });
    let endpoint = if local.ip().is_unspecified() {
        format!("{node_name}:{}", local.port())
    } else {
        local.to_string()
    };
    tracing::info!(%endpoint, fingerprint = %host_fingerprint, "SSH gateway listening");
    Ok(Gateway {
        endpoint,
        host_key,
        host_fingerprint,
    })
}

/// The node's host key: read from `path`, or made (ed25519) and written
/// there, readable by root only, the first time.
fn host_key(path: &Path) -> anyhow::Result<PrivateKey> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::read_to_string(path) {
        Ok(text) => {
            return PrivateKey::from_openssh(text.as_bytes())
                .with_context(|| format!("reading the SSH host key {}", path.display()));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    let mut seed = [0u8; 32];
    rand::fill(&mut seed);
    let key = PrivateKey::from(Ed25519Keypair::from_seed(&seed));
    let text = key.to_openssh(LineEnding::LF)?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // Written whole under another name, then renamed: never half a key.
    let tmp = path.with_extension("new");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::io::Write::write_all(&mut file, text.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    tracing::info!(path = %path.display(), "made the node's SSH host key");
    Ok(key)
}

/// A login the gateway accepted.
#[derive(Clone)]
struct Accepted {
    login: Login,
    /// `<jail>+<tenant>`.
    user: String,
    fingerprint: String,
}

/// One client connection.
struct Connection {
    shared: Arc<Shared>,
    peer: SocketAddr,
    login: Option<Accepted>,
}

impl Connection {
    /// Whether `user` may log in with the key of `fingerprint`.
    async fn check(&self, user: &str, fingerprint: &str) -> Option<Login> {
        match ssh_keys::check_login(&self.shared.pool, self.shared.node_id, user, fingerprint).await
        {
            Ok(Ok(login)) => Some(login),
            Ok(Err(why)) => {
                tracing::info!(user, fingerprint, peer = %self.peer, ?why, "SSH login refused");
                None
            }
            Err(e) => {
                tracing::warn!(error = %e, "checking an SSH login failed");
                None
            }
        }
    }
}

impl Handler for Connection {
    type Error = russh::Error;

    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        offer: PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        let fingerprint = offer.public_key.fingerprint(HashAlg::Sha256).to_string();
        Ok(match self.check(user, &fingerprint).await {
            Some(_) => Auth::Accept,
            None => Auth::reject(),
        })
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        let fingerprint = key.public_key.fingerprint(HashAlg::Sha256).to_string();
        let Some(login) = self.check(user, &fingerprint).await else {
            return Ok(Auth::reject());
        };
        if let Err(e) = ssh_keys::touch(&self.shared.pool, login.tenant_id, &fingerprint).await {
            tracing::debug!(error = %e, "noting a key's use failed");
        }
        self.login = Some(Accepted {
            login,
            user: user.to_owned(),
            fingerprint,
        });
        Ok(Auth::Accept)
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        // Dropping the reply refuses the channel.
        let Some(login) = self.login.clone() else {
            return Ok(());
        };
        reply.accept().await;
        tokio::spawn(run_channel(channel, self.shared.clone(), login, self.peer));
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _cols: u32,
        _rows: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        _data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if name == "sftp" {
            session.channel_success(channel)
        } else {
            session.channel_failure(channel)
        }
    }
}

/// What a channel asked to run.
enum Request {
    Shell,
    Exec(String),
    Sftp,
}

impl Request {
    fn kind(&self) -> &'static str {
        match self {
            Request::Shell => "shell",
            Request::Exec(_) => "exec",
            Request::Sftp => "sftp",
        }
    }
}

/// A terminal the client asked for.
struct Pty {
    term: String,
    cols: u16,
    rows: u16,
}

/// Runs one session channel: waits for what it asks to run, runs it in the
/// jail and relays until it ends.
async fn run_channel(
    channel: Channel<Msg>,
    shared: Arc<Shared>,
    login: Accepted,
    peer: SocketAddr,
) {
    let (mut rx, tx) = channel.split();
    let mut pty = None;
    let request = loop {
        match rx.wait().await {
            Some(ChannelMsg::RequestPty {
                term,
                col_width,
                row_height,
                ..
            }) => {
                let dim = |n: u32| u16::try_from(n).ok().filter(|n| (1..=1000).contains(n));
                pty = Some(Pty {
                    term: term
                        .chars()
                        .filter(char::is_ascii_graphic)
                        .take(64)
                        .collect(),
                    cols: dim(col_width).unwrap_or(80),
                    rows: dim(row_height).unwrap_or(24),
                });
            }
            Some(ChannelMsg::RequestShell { .. }) => break Request::Shell,
            Some(ChannelMsg::Exec { command, .. }) => {
                break Request::Exec(String::from_utf8_lossy(&command).into_owned());
            }
            Some(ChannelMsg::RequestSubsystem { name, .. }) if name == "sftp" => {
                break Request::Sftp;
            }
            Some(ChannelMsg::Close) | None => return,
            Some(_) => {}
        }
    };
    let refuse = |text: String| {
        let tx = &tx;
        async move {
            let _ = tx
                .extended_data_bytes(1, format!("{text}\r\n").into_bytes())
                .await;
            let _ = tx.exit_status(1).await;
            let _ = tx.eof().await;
            let _ = tx.close().await;
        }
    };
    let jail_label = login.user.split('+').next().unwrap_or_default().to_owned();
    let name = stockade_store::jails::host_name(login.login.jail_id);
    // Read-only: reaping and recording an ended init is the reconciler's.
    if !matches!(shared.engine.watch_init(&name), Ok(Some(_))) {
        refuse(format!(
            "jail {jail_label} does not run: start it from the panel or the API first"
        ))
        .await;
        return;
    }
    let Some(permit) = SESSIONS.take(login.login.jail_id) else {
        refuse(format!(
            "too many sessions are open in jail {jail_label} or on this node; close one"
        ))
        .await;
        return;
    };
    let kind = request.kind();
    audit(
        &shared.pool,
        &login,
        peer,
        "ssh.open",
        serde_json::json!({"session": kind}),
    )
    .await;
    tracing::info!(jail = %name, user = %login.user, kind, "SSH session opened");
    let code = match relay(&mut rx, &tx, &shared.engine, &name, request, pty).await {
        Ok(code) => code,
        Err(e) => {
            tracing::warn!(error = %e, jail = %name, "an SSH session failed");
            let _ = tx
                .extended_data_bytes(1, format!("the session failed: {e}\r\n").into_bytes())
                .await;
            1
        }
    };
    drop(permit);
    let _ = tx.exit_status(u32::try_from(code).unwrap_or(1)).await;
    let _ = tx.eof().await;
    let _ = tx.close().await;
    audit(
        &shared.pool,
        &login,
        peer,
        "ssh.close",
        serde_json::json!({"session": kind, "exit_code": code}),
    )
    .await;
    tracing::info!(jail = %name, user = %login.user, kind, code, "SSH session closed");
}

async fn audit(
    pool: &PgPool,
    login: &Accepted,
    peer: SocketAddr,
    action: &str,
    mut details: serde_json::Value,
) {
    details["key"] = login.login.key_name.clone().into();
    details["fingerprint"] = login.fingerprint.clone().into();
    let actor = format!("ssh:{}", login.login.key_name);
    let client = peer.ip().to_string();
    let entry = stockade_store::audit::Entry {
        actor_user_id: None,
        actor: &actor,
        tenant_id: Some(login.login.tenant_id),
        action,
        target: login.user.split('+').next().unwrap_or_default(),
        client_addr: Some(&client),
        details,
    };
    if let Err(e) = stockade_store::audit::record(pool, &entry).await {
        tracing::warn!(error = %e, action, "recording an SSH session failed");
    }
}

/// Runs `request` in the jail and relays between it and the channel until
/// it ends; returns its exit code (128 + signal when killed).
async fn relay(
    rx: &mut russh::ChannelReadHalf,
    tx: &russh::ChannelWriteHalf<Msg>,
    engine: &Arc<Engine>,
    name: &JailName,
    request: Request,
    pty: Option<Pty>,
) -> anyhow::Result<i32> {
    let argv = |command: Option<String>| match command {
        None => vec![SHELL.to_owned()],
        Some(c) => vec![SHELL.to_owned(), "-c".to_owned(), c],
    };
    // SFTP speaks its protocol on pipes, whatever the client asked.
    let pty = if matches!(request, Request::Sftp) {
        None
    } else {
        pty
    };
    let (run, mut input, outputs, terminal) = match pty {
        None => {
            let (stdin_r, stdin_w) = pipe()?;
            let (stdout_r, stdout_w) = pipe()?;
            let (stderr_r, stderr_w) = pipe()?;
            let streams = [stdin_r, stdout_w, stderr_w];
            let (engine, name) = (engine.clone(), name.clone());
            let run = match request {
                Request::Sftp => {
                    tokio::task::spawn_blocking(move || engine.serve_sftp(&name, streams))
                }
                Request::Exec(c) => tokio::task::spawn_blocking(move || {
                    engine.exec_on_streams(&name, &argv(Some(c)), streams)
                }),
                Request::Shell => tokio::task::spawn_blocking(move || {
                    engine.exec_on_streams(&name, &argv(None), streams)
                }),
            };
            let outputs = vec![(Fd::new(stdout_r)?, None), (Fd::new(stderr_r)?, Some(1))];
            (run, Some(Fd::new(stdin_w)?), outputs, None)
        }
        Some(pty) => {
            let (master, slave) = open_terminal(pty.cols, pty.rows)?;
            let command = match request {
                Request::Exec(c) => Some(c),
                _ => None,
            };
            let term = if pty.term.is_empty() {
                "xterm".to_owned()
            } else {
                pty.term
            };
            let (engine, name) = (engine.clone(), name.clone());
            let run = tokio::task::spawn_blocking(move || {
                engine.exec_on_terminal(&name, &argv(command), slave, &term)
            });
            let reader = master.try_clone()?;
            let sid_probe = master.try_clone()?;
            (
                run,
                Some(Fd::new(master)?),
                vec![(Fd::new(reader)?, None)],
                Some(sid_probe),
            )
        }
    };
    // The command's output, to the client, each stream by a task of its own.
    let pumps: Vec<_> = outputs
        .into_iter()
        .map(|(mut out, ext)| {
            let mut writer = tx.make_writer_ext(ext);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 256 << 10];
                loop {
                    match tokio::io::AsyncReadExt::read(&mut out, &mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if writer.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
                let _ = writer.flush().await;
            })
        })
        .collect();
    let mut run = run;
    let mut client_left = false;
    let code = loop {
        tokio::select! {
            code = &mut run => break code,
            message = rx.wait(), if !client_left => match message {
                Some(ChannelMsg::Data { data }) => {
                    if let Some(i) = input.as_mut() && i.write_all(&data).await.is_err() {
                        input = None;
                    }
                }
                Some(ChannelMsg::Eof) => {
                    // The end of input: a pipe is closed; a terminal has no
                    // end of its own (the client sends ^D when it means it).
                    if terminal.is_none() {
                        input = None;
                    }
                }
                Some(ChannelMsg::WindowChange { col_width, row_height, .. }) => {
                    let dim = |n: u32| u16::try_from(n).ok().filter(|n| (1..=1000).contains(n));
                    if let (Some(t), Some(c), Some(r)) = (&terminal, dim(col_width), dim(row_height)) {
                        resize(t, c, r);
                    }
                }
                Some(ChannelMsg::Close) | None => {
                    // The client is gone: its input ends and a terminal
                    // hangs up (a shell ignoring that has its session ended).
                    client_left = true;
                    input = None;
                    if let Some(sid) = terminal.as_ref().and_then(session_of) {
                        let _ = nix::sys::signal::killpg(sid, nix::sys::signal::Signal::SIGHUP);
                    }
                }
                Some(_) => {}
            },
        }
    };
    drop(input);
    // What is left of the output, for a moment (a process left behind may
    // hold the streams open).
    for pump in pumps {
        let _ = tokio::time::timeout(Duration::from_secs(2), pump).await;
    }
    Ok(code??)
}

/// A pipe, both ends closed on exec, with room for 1 MiB in flight (where
/// the node allows it): an upload is not stalled by a 64 KiB pipe.
fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let _ = nix::fcntl::fcntl(&w, nix::fcntl::FcntlArg::F_SETPIPE_SZ(1 << 20));
    Ok((r, w))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn the_host_key_is_made_once_readable_by_root_only_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ssh/host_ed25519_key");
        let made = host_key(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = host_key(&path).unwrap();
        assert_eq!(
            made.public_key(),
            again.public_key(),
            "the same key each start"
        );
        // A damaged file is an error, never silently a new key.
        std::fs::write(&path, "not a key").unwrap();
        assert!(host_key(&path).is_err());
    }
}
