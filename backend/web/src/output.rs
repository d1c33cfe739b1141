//! A jail's output, read from the agent of its node: the web tier mints a
//! single-use ticket in PostgreSQL for the jail and asks the node's log
//! endpoint with it (see `stockade_store::logs`); the text is passed through
//! as it comes, so a follower sees each line as the jail prints it.

use std::time::Duration;

use actix_web::HttpResponse;
use uuid::Uuid;

use crate::AppState;

/// The client the web tier reaches nodes with.
pub(crate) fn client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(2))
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()?)
}

/// Why a jail's output cannot be read.
#[derive(Debug)]
pub(crate) enum OutputError {
    /// No such jail for this tenant.
    NotFound,
    /// The jail is on no node yet, or its node serves no output: the reason.
    NotServed(String),
    /// The jail's node does not answer or refused: the reason.
    Unavailable(String),
    /// The request was refused: the reason (a bad `tail`).
    Invalid(String),
    /// The database failed.
    Store(stockade_store::StoreError),
}

impl OutputError {
    /// The panel's answer: not found, a store error, or a plain text
    /// saying why the output cannot be shown now.
    pub(crate) fn page_answer(self) -> Result<HttpResponse, crate::WebError> {
        match self {
            OutputError::NotFound => Err(crate::WebError::NotFound),
            OutputError::Store(e) => Err(e.into()),
            OutputError::Unavailable(m) | OutputError::NotServed(m) | OutputError::Invalid(m) => {
                Ok(HttpResponse::ServiceUnavailable()
                    .content_type("text/plain; charset=utf-8")
                    .insert_header(("cache-control", "no-store"))
                    .body(format!("The output cannot be shown now: {m}.\n")))
            }
        }
    }
}

/// What is asked of a jail's output.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ask {
    /// The last lines to send first.
    pub tail: usize,
    /// Go on sending what it prints.
    pub follow: bool,
}

/// The jail's output as an answer to stream to the caller; `download`
/// names it as a file to save.
pub(crate) async fn open(
    state: &AppState,
    tenant_id: Uuid,
    jail_id: Uuid,
    ask: Ask,
    download: Option<&str>,
) -> Result<HttpResponse, OutputError> {
    let (endpoint, ticket) = match stockade_store::logs::mint(
        &state.pool,
        tenant_id,
        jail_id,
        stockade_store::logs::TicketKind::Output,
    )
    .await
    {
        Ok(Some(t)) => t,
        Ok(None) => {
            return Err(OutputError::NotServed(
                "the jail is on no node yet, or its node does not serve output".into(),
            ));
        }
        Err(stockade_store::StoreError::NotFound) => return Err(OutputError::NotFound),
        Err(e) => return Err(OutputError::Store(e)),
    };
    let url = format!(
        "http://{endpoint}/log?tail={}&follow={}",
        ask.tail,
        u8::from(ask.follow)
    );
    let res = state
        .nodes
        .get(&url)
        .header("authorization", format!("Ticket {ticket}"))
        .send()
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, %endpoint, "a node's log endpoint did not answer");
            OutputError::Unavailable("the jail's node does not answer".into())
        })?;
    match res.status().as_u16() {
        200 => {}
        400 => {
            return Err(OutputError::Invalid(
                res.text().await.unwrap_or_default().trim().to_owned(),
            ));
        }
        status => {
            let text = res.text().await.unwrap_or_default();
            tracing::warn!(status, text = text.trim(), %endpoint, "a node refused a log ticket");
            return Err(OutputError::Unavailable(
                "the jail's node refused to send its output".into(),
            ));
        }
    }
    let mut answer = HttpResponse::Ok();
    answer
        .content_type("text/plain; charset=utf-8")
        .insert_header(("cache-control", "no-store"))
        .insert_header(("x-content-type-options", "nosniff"));
    if let Some(name) = download {
        answer.insert_header((
            "content-disposition",
            format!("attachment; filename=\"{name}.log\""),
        ));
    }
    Ok(answer.streaming(res.bytes_stream()))
}

/// A finished backup's compressed volume, streamed from a node that reads
/// the backup target, as a file to save named `name`.
pub(crate) async fn backup_download(
    state: &AppState,
    tenant_id: Uuid,
    backup_id: Uuid,
    name: &str,
) -> Result<HttpResponse, OutputError> {
    let (endpoint, ticket) =
        match stockade_store::logs::mint_backup(&state.pool, tenant_id, backup_id).await {
            Ok(Some(t)) => t,
            Ok(None) => {
                return Err(OutputError::NotServed(
                    "no node that reads the backups is up".into(),
                ));
            }
            Err(stockade_store::StoreError::NotFound) => return Err(OutputError::NotFound),
            Err(stockade_store::StoreError::InvalidState(m)) => {
                return Err(OutputError::Invalid(m));
            }
            Err(e) => return Err(OutputError::Store(e)),
        };
    let res = state
        .nodes
        .get(format!("http://{endpoint}/backup"))
        .header("authorization", format!("Ticket {ticket}"))
        .send()
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, %endpoint, "a node did not answer for a backup");
            OutputError::Unavailable("the node does not answer".into())
        })?;
    if res.status() != reqwest::StatusCode::OK {
        let text = res.text().await.unwrap_or_default();
        tracing::warn!(text = text.trim(), %endpoint, "a node refused a backup download");
        return Err(OutputError::Unavailable(
            text.trim().trim_end_matches('.').to_owned(),
        ));
    }
    let mut answer = HttpResponse::Ok();
    answer
        .content_type("application/zstd")
        .insert_header(("cache-control", "no-store"))
        .insert_header((
            "content-disposition",
            format!("attachment; filename=\"{name}.img.zst\""),
        ));
    if let Some(len) = res.content_length() {
        answer.no_chunking(len);
    }
    Ok(answer.streaming(res.bytes_stream()))
}
