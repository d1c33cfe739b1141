//! The node's log endpoint: a jail's output, for the web tier, on a ticket
//! (and, at `/console`, a console in it: see [`crate::console`]).
//!
//! `GET /log?tail=N&follow=1` with `Authorization: Ticket <token>`, where the
//! token is one the web tier minted in PostgreSQL for one jail of this node
//! (see `stockade_store::logs`): redeemed once here, it names the jail. The
//! answer is the jail's last `tail` lines (at most [`MAX_TAIL`]), then, with
//! `follow`, what it prints from then on, as plain text, until the caller
//! leaves or [`MAX_FOLLOW`] has passed.
//!
//! The output file is a ring its init rewrites when full (the newest half
//! moved to its start): a follower that sees the file shrink finds the last
//! bytes it sent in the new content and goes on after them.
//!
//! `GET /backup` with a ticket of a backup (minted for its tenant) streams
//! that backup's compressed volume from the backup target.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Bytes, Frame};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use stockade_jail::Engine;
use stockade_store::PgPool;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::watch;
use uuid::Uuid;

/// The most lines a tail may ask for.
pub const MAX_TAIL: usize = 10_000;
/// How long one follower is served.
const MAX_FOLLOW: Duration = Duration::from_secs(3600);
/// How often a follower looks for new output.
const POLL: Duration = Duration::from_millis(100);
/// The most bytes sent at once.
const CHUNK: u64 = 64 << 10;
/// How many of the last bytes sent are remembered to find the place again
/// after the ring was rewritten.
const MARK: usize = 256;

type Body = BoxBody<Bytes, Infallible>;

fn plain(status: StatusCode, text: &str) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(text.to_owned())).boxed())
        .unwrap_or_default()
}

/// Starts serving on `addr`; the address it listens on.
pub(crate) async fn serve(
    addr: SocketAddr,
    pool: PgPool,
    node_id: Uuid,
    engine: Arc<Engine>,
    target: Option<stockade_backup::Target>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen for jail output on {addr}: {e}"))?;
    let local = listener.local_addr()?;
    tracing::info!(addr = %local, "jail output served");
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.changed() => if *shutdown.borrow() { return },
                conn = listener.accept() => {
                    let Ok((stream, _)) = conn else { continue };
                    let (pool, engine, target) = (pool.clone(), engine.clone(), target.clone());
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                            let (pool, engine, target) = (pool.clone(), engine.clone(), target.clone());
                            async move {
                                Ok::<_, Infallible>(match req.uri().path() {
                                    "/console" => crate::console::answer(&pool, node_id, engine, req).await,
                                    "/backup" => backup(&pool, node_id, target.as_ref(), &req).await,
                                    _ => answer(&pool, node_id, &engine, req).await,
                                })
                            }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .with_upgrades()
                            .await;
                    });
                }
            }
        }
    });
    Ok(local)
}

/// `tail` and `follow` from a query string.
fn params(query: &str) -> Result<(usize, bool), String> {
    let mut tail = 100;
    let mut follow = false;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "tail" => {
                tail = v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| *n <= MAX_TAIL)
                    .ok_or(format!("tail: a number of lines from 0 to {MAX_TAIL}"))?;
            }
            "follow" => follow = matches!(v, "1" | "true"),
            _ => return Err(format!("{k}: not a parameter (tail, follow)")),
        }
    }
    Ok((tail, follow))
}

async fn answer(
    pool: &PgPool,
    node_id: Uuid,
    engine: &Engine,
    req: Request<hyper::body::Incoming>,
) -> Response<Body> {
    if req.method() != hyper::Method::GET || req.uri().path() != "/log" {
        return plain(StatusCode::NOT_FOUND, "not found\n");
    }
    let (tail, follow) = match params(req.uri().query().unwrap_or("")) {
        Ok(p) => p,
        Err(e) => return plain(StatusCode::BAD_REQUEST, &format!("{e}\n")),
    };
    let ticket = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Ticket "));
    let Some(ticket) = ticket else {
        return plain(StatusCode::UNAUTHORIZED, "a ticket is needed\n");
    };
    let jail = match stockade_store::logs::redeem(
        pool,
        node_id,
        ticket,
        stockade_store::logs::TicketKind::Output,
    )
    .await
    {
        Ok(Some(jail)) => jail,
        Ok(None) => {
            return plain(
                StatusCode::UNAUTHORIZED,
                "the ticket is unknown, used or expired\n",
            );
        }
        Err(e) => {
            tracing::warn!(error = %e, "redeeming a log ticket failed");
            return plain(StatusCode::SERVICE_UNAVAILABLE, "try again\n");
        }
    };
    let path = engine.console_log(&stockade_store::jails::host_name(jail));
    let mut reader = match Follower::open(path, engine.console_bytes(), tail).await {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(error = %e, "no output to read");
            return plain(
                StatusCode::NOT_FOUND,
                "the jail has no output on this node\n",
            );
        }
    };
    let first = std::mem::take(&mut reader.first);
    let deadline = Instant::now() + MAX_FOLLOW;
    let stream =
        futures_util::stream::unfold((reader, Some(first)), move |(mut r, first)| async move {
            if let Some(first) = first {
                return Some((Ok(Frame::data(Bytes::from(first))), (r, None)));
            }
            if !follow {
                return None;
            }
            loop {
                if Instant::now() > deadline {
                    return None;
                }
                match r.next().await {
                    Ok(Some(bytes)) => {
                        return Some((Ok(Frame::data(Bytes::from(bytes))), (r, None)));
                    }
                    Ok(None) => tokio::time::sleep(POLL).await,
                    Err(_) => return None,
                }
            }
        });
    Response::builder()
        .header("content-type", "text/plain; charset=utf-8")
        .header("cache-control", "no-store")
        .body(StreamBody::new(stream).boxed())
        .unwrap_or_default()
}

/// A backup's compressed volume, streamed from the backup target.
async fn backup(
    pool: &PgPool,
    node_id: Uuid,
    target: Option<&stockade_backup::Target>,
    req: &Request<hyper::body::Incoming>,
) -> Response<Body> {
    if req.method() != hyper::Method::GET {
        return plain(StatusCode::NOT_FOUND, "not found\n");
    }
    let Some(ticket) = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Ticket "))
    else {
        return plain(StatusCode::UNAUTHORIZED, "a ticket is needed\n");
    };
    let (tenant, backup) = match stockade_store::logs::redeem_backup(pool, node_id, ticket).await {
        Ok(Some(b)) => b,
        Ok(None) => {
            return plain(
                StatusCode::UNAUTHORIZED,
                "the ticket is unknown, used or expired\n",
            );
        }
        Err(e) => {
            tracing::warn!(error = %e, "redeeming a backup ticket failed");
            return plain(StatusCode::SERVICE_UNAVAILABLE, "try again\n");
        }
    };
    let Some(target) = target else {
        return plain(StatusCode::NOT_FOUND, "this node has no backup target\n");
    };
    match target
        .volume_stream(&stockade_backup::prefix(tenant, backup))
        .await
    {
        Ok((size, stream)) => {
            // A read that fails ends the stream short of the length
            // promised: the client sees a truncated download, never a
            // wrong file.
            let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
            tokio::spawn(async move {
                let mut stream = stream;
                while let Some(Ok(chunk)) = futures_util::StreamExt::next(&mut stream).await {
                    if tx.send(chunk).await.is_err() {
                        break;
                    }
                }
            });
            let body = futures_util::stream::unfold(rx, |mut rx| async move {
                let chunk = rx.recv().await?;
                Some((Ok::<_, Infallible>(Frame::data(Bytes::from(chunk))), rx))
            });
            Response::builder()
                .header("content-type", "application/zstd")
                .header("content-length", size)
                .header("cache-control", "no-store")
                .body(BodyExt::boxed(StreamBody::new(body)))
                .unwrap_or_default()
        }
        Err(e) => {
            tracing::warn!(%backup, error = format!("{e:#}"), "a backup to download is missing");
            plain(
                StatusCode::NOT_FOUND,
                "the backup is not in the backup target\n",
            )
        }
    }
}

/// Reads a jail's output file from a place on, across rewrites of the ring.
struct Follower {
    path: PathBuf,
    limit: u64,
    offset: u64,
    /// The last bytes handed out.
    mark: Vec<u8>,
    /// The tail asked for, handed out first.
    first: Vec<u8>,
}

impl Follower {
    async fn open(path: PathBuf, limit: u64, lines: usize) -> std::io::Result<Self> {
        let content = read_at_most(&path, limit).await?;
        let offset = content.len() as u64;
        let first = last_lines(&content, lines).to_vec();
        let mut f = Follower {
            path,
            limit,
            offset,
            mark: Vec::new(),
            first: Vec::new(),
        };
        f.remember(&content);
        f.first = first;
        Ok(f)
    }

    fn remember(&mut self, sent: &[u8]) {
        self.mark.extend_from_slice(sent);
        if self.mark.len() > MARK {
            self.mark.drain(..self.mark.len() - MARK);
        }
    }

    /// Whether the bytes just before the offset are still the last ones
    /// sent (a ring rewritten and grown back past the offset is not).
    async fn still_at_mark(&self, len: u64) -> std::io::Result<bool> {
        // As much of the mark as the file holds before the offset.
        let n = (self.mark.len() as u64).min(self.offset);
        if n == 0 || len < self.offset {
            return Ok(true);
        }
        let mut file = match tokio::fs::File::open(&self.path).await {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        };
        file.seek(std::io::SeekFrom::Start(self.offset - n)).await?;
        let mut there = Vec::new();
        file.take(n).read_to_end(&mut there).await?;
        Ok(self.mark.ends_with(&there) && there.len() as u64 == n)
    }

    /// New output since the last call, if any.
    async fn next(&mut self) -> std::io::Result<Option<Vec<u8>>> {
        let len = match tokio::fs::metadata(&self.path).await {
            Ok(m) => m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e),
        };
        let moved = len < self.offset || !self.still_at_mark(len).await?;
        if moved {
            // The ring was rewritten: go on after the last bytes sent.
            // The longest end of what was sent that is still there: the
            // rewrite kept only the newest part of the file.
            let content = read_at_most(&self.path, self.limit).await?;
            let n = self.mark.len();
            self.offset = [n, 128, 64, 32, 16, 8]
                .into_iter()
                .filter(|k| *k <= n && *k > 0)
                .find_map(|k| find(&content, &self.mark[n - k..]).map(|p| p + k))
                .unwrap_or(0) as u64;
        }
        if len <= self.offset {
            return Ok(None);
        }
        let mut file = tokio::fs::File::open(&self.path).await?;
        file.seek(std::io::SeekFrom::Start(self.offset)).await?;
        let mut buf = Vec::new();
        file.take((len - self.offset).min(CHUNK))
            .read_to_end(&mut buf)
            .await?;
        self.offset += buf.len() as u64;
        self.remember(&buf);
        Ok((!buf.is_empty()).then_some(buf))
    }
}

/// The file's first `limit` bytes; none while the jail has printed nothing.
async fn read_at_most(path: &std::path::Path, limit: u64) -> std::io::Result<Vec<u8>> {
    let file = match tokio::fs::File::open(path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut buf = Vec::new();
    file.take(limit).read_to_end(&mut buf).await?;
    Ok(buf)
}

/// The last `n` lines of `text` (a last line without its newline counts).
fn last_lines(text: &[u8], n: usize) -> &[u8] {
    if n == 0 {
        return &[];
    }
    let body = text.strip_suffix(b"\n").unwrap_or(text);
    let start = body
        .iter()
        .enumerate()
        .rev()
        .filter(|(_, b)| **b == b'\n')
        .nth(n - 1)
        .map_or(0, |(i, _)| i + 1);
    &text[start..]
}

/// Where `needle` last occurs in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || needle.len() > hay.len() {
        return None;
    }
    (0..=hay.len() - needle.len())
        .rev()
        .find(|&i| &hay[i..i + needle.len()] == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_lines_are_cut_at_line_ends() {
        assert_eq!(last_lines(b"a\nb\nc\n", 2), b"b\nc\n");
        assert_eq!(last_lines(b"a\nb\nc", 2), b"b\nc");
        assert_eq!(last_lines(b"a\nb\n", 5), b"a\nb\n");
        assert_eq!(last_lines(b"a\nb\n", 0), b"");
    }

    #[test]
    fn parameters_are_checked_by_name() {
        assert_eq!(params("tail=5&follow=1").unwrap(), (5, true));
        assert_eq!(params("").unwrap(), (100, false));
        assert!(params("tail=99999").unwrap_err().starts_with("tail"));
        assert!(params("x=1").unwrap_err().starts_with("x"));
    }

    #[tokio::test]
    async fn a_follower_goes_on_after_the_ring_is_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        std::fs::write(&path, b"one\ntwo\nthree\n").unwrap();
        let mut f = Follower::open(path.clone(), 1 << 20, 2).await.unwrap();
        assert_eq!(f.first, b"two\nthree\n");
        assert_eq!(f.next().await.unwrap(), None);
        std::fs::write(&path, b"one\ntwo\nthree\nfour\n").unwrap();
        assert_eq!(f.next().await.unwrap().unwrap(), b"four\n");
        // The init keeps the newest half and goes on writing after it.
        std::fs::write(&path, b"three\nfour\nfive\n").unwrap();
        assert_eq!(f.next().await.unwrap().unwrap(), b"five\n");
        // Rewritten and grown back past the place, unseen in between: the
        // follower finds its place by what it sent, not by the offset.
        std::fs::write(&path, b"four\nfive\nsix\nseven\neight\n").unwrap();
        assert_eq!(f.next().await.unwrap().unwrap(), b"six\nseven\neight\n");
    }
}
