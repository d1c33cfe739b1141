//! A console in a running jail, for the web tier, on a ticket: `GET
//! /console?cols=&rows=` upgraded to a WebSocket, with `Authorization:
//! Ticket <token>` minted for a console in one jail of this node. The
//! agent opens a pseudo-terminal, runs `/bin/sh` on it inside the jail
//! exactly as an `exec` would (the jail's namespaces, cgroup, system call
//! filter, capabilities and user), and relays: binary messages are what
//! the terminal shows (down) and what is typed (up); a text message
//! `{"cols": C, "rows": R}` resizes the terminal. Closing the socket hangs
//! the shell up; the shell ending closes the socket.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Empty, combinators::BoxBody};
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use stockade_jail::{Engine, JailName};
use stockade_store::PgPool;
use stockade_store::logs::TicketKind;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, frame::coding::CloseCode};
use uuid::Uuid;

use crate::permits::Permits;
use crate::pty::{Fd, open_terminal, resize, session_of};

type Body = BoxBody<Bytes, Infallible>;

/// The shell a console runs.
const SHELL: &str = "/bin/sh";
/// Consoles open at once: 4 in one jail, 64 on the node.
static CONSOLES: Permits = Permits::new(4, 64);

fn refuse(status: StatusCode, text: &str) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain; charset=utf-8")
        .body(
            http_body_util::Full::new(Bytes::from(text.to_owned()))
                .map_err(|e| match e {})
                .boxed(),
        )
        .unwrap_or_default()
}

/// `cols` and `rows` of the query, 80×24 unless given (1 to 1000 each).
fn size(query: &str) -> (u16, u16) {
    let mut cols = 80;
    let mut rows = 24;
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = v.parse::<u16>().ok().filter(|n| (1..=1000).contains(n));
        match (k, v) {
            ("cols", Some(n)) => cols = n,
            ("rows", Some(n)) => rows = n,
            _ => {}
        }
    }
    (cols, rows)
}

pub(crate) async fn answer(
    pool: &PgPool,
    node_id: Uuid,
    engine: Arc<Engine>,
    mut req: Request<hyper::body::Incoming>,
) -> Response<Body> {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let upgrade = header("upgrade").is_some_and(|u| u.eq_ignore_ascii_case("websocket"));
    let Some(key) = header("sec-websocket-key").filter(|_| upgrade) else {
        return refuse(StatusCode::BAD_REQUEST, "a WebSocket upgrade is needed\n");
    };
    let Some(ticket) =
        header("authorization").and_then(|v| v.strip_prefix("Ticket ").map(str::to_owned))
    else {
        return refuse(StatusCode::UNAUTHORIZED, "a ticket is needed\n");
    };
    let jail = match stockade_store::logs::redeem(pool, node_id, &ticket, TicketKind::Console).await
    {
        Ok(Some(jail)) => jail,
        Ok(None) => {
            return refuse(
                StatusCode::UNAUTHORIZED,
                "the ticket is unknown, used or expired\n",
            );
        }
        Err(e) => {
            tracing::warn!(error = %e, "redeeming a console ticket failed");
            return refuse(StatusCode::SERVICE_UNAVAILABLE, "try again\n");
        }
    };
    let name = stockade_store::jails::host_name(jail);
    // Read-only: reaping and recording an ended init is the reconciler's.
    if !matches!(engine.watch_init(&name), Ok(Some(_))) {
        return refuse(StatusCode::CONFLICT, "the jail does not run\n");
    }
    let Some(permit) = CONSOLES.take(jail) else {
        return refuse(
            StatusCode::TOO_MANY_REQUESTS,
            "too many consoles are open in this jail or on this node\n",
        );
    };
    let (cols, rows) = size(req.uri().query().unwrap_or(""));
    let upgrading = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match upgrading.await {
            Ok(upgraded) => {
                let ws =
                    WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None)
                        .await;
                session(ws, engine, name, cols, rows).await;
                drop(permit);
            }
            Err(e) => tracing::debug!(error = %e, "a console upgrade failed"),
        }
    });
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("upgrade", "websocket")
        .header("connection", "Upgrade")
        .header("sec-websocket-accept", accept)
        .body(Empty::new().map_err(|e| match e {}).boxed())
        .unwrap_or_default()
}

async fn session<S>(
    ws: WebSocketStream<S>,
    engine: Arc<Engine>,
    name: JailName,
    cols: u16,
    rows: u16,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut down, mut up) = ws.split();
    let close = |text: &str| {
        Message::Close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: text.to_owned().into(),
        }))
    };
    let (master, slave) = match open_terminal(cols, rows) {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(error = %e, "cannot open a terminal for a console");
            let _ = down.send(close("no terminal")).await;
            return;
        }
    };
    let mut master = match Fd::new(master) {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch a console's terminal");
            return;
        }
    };
    let shell = {
        let (engine, name) = (engine.clone(), name.clone());
        tokio::task::spawn_blocking(move || {
            engine.exec_on_terminal(&name, &[SHELL.to_owned()], slave, "xterm-256color")
        })
    };
    tracing::info!(jail = %name, "console opened");
    let mut buf = vec![0u8; 16 << 10];
    let ended = loop {
        tokio::select! {
            read = master.read(&mut buf) => match read {
                Ok(0) | Err(_) => break "the shell ended",
                Ok(n) => {
                    if down.send(Message::Binary(Bytes::copy_from_slice(&buf[..n]))).await.is_err() {
                        break "the caller left";
                    }
                }
            },
            message = up.next() => match message {
                Some(Ok(Message::Binary(input))) => {
                    if master.write_all(&input).await.is_err() {
                        break "the terminal failed";
                    }
                }
                Some(Ok(Message::Text(control))) => {
                    if let Ok(v) = serde_json::from_str::<serde_json::Value>(control.as_str()) {
                        let dim = |k: &str| v[k].as_u64().and_then(|n| u16::try_from(n).ok()).filter(|n| (1..=1000).contains(n));
                        if let (Some(c), Some(r)) = (dim("cols"), dim("rows")) {
                            resize(master.get_ref(), c, r);
                        }
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break "the caller left",
                Some(Ok(_)) => {}
            },
        }
    };
    // The terminal's session (the shell's), in case it ignores the hang-up.
    let sid = session_of(master.get_ref());
    // Our end closed: the shell is hung up, and its command ends.
    drop(master);
    let _ = down.send(close(ended)).await;
    let mut shell = shell;
    let code = match tokio::time::timeout(Duration::from_secs(10), &mut shell).await {
        Ok(code) => Some(code),
        Err(_) if sid.is_some() => {
            // Still there: its whole session is ended.
            if let Some(sid) = sid {
                let _ = nix::sys::signal::killpg(sid, nix::sys::signal::Signal::SIGKILL);
            }
            tokio::time::timeout(Duration::from_secs(10), shell)
                .await
                .ok()
        }
        Err(_) => None,
    };
    tracing::info!(jail = %name, ended, ?code, "console closed");
}

#[cfg(test)]
mod tests {
    use super::size;

    #[test]
    fn a_terminal_size_is_taken_within_bounds() {
        assert_eq!(size("cols=120&rows=40"), (120, 40));
        assert_eq!(size(""), (80, 24));
        assert_eq!(size("cols=0&rows=99999"), (80, 24));
    }
}
