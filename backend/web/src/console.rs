//! A console in a running jail, in the browser: the page's terminal
//! (xterm.js) speaks WebSocket to the web tier, which relays to the jail's
//! node: it mints a single-use console ticket in PostgreSQL and opens the
//! node's `/console` WebSocket with it (see the agent's `console` module).
//! Only the session's start and end are recorded (who, which jail, how long,
//! why it ended), never what is typed. An idle session ends.

use std::time::{Duration, Instant};

use actix_web::{HttpRequest, HttpResponse, web};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message as NodeMessage;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use uuid::Uuid;

use crate::auth::SignedIn;
use crate::pages::record;
use crate::{AppState, WebError};

/// A session with no input for this long ends.
pub(crate) const IDLE: Duration = Duration::from_secs(15 * 60);
/// No session lasts longer.
const LONGEST: Duration = Duration::from_secs(8 * 3600);

#[derive(serde::Deserialize)]
pub(crate) struct Size {
    cols: Option<u16>,
    rows: Option<u16>,
}

/// Whether a WebSocket request comes from a page of this panel: browsers
/// send cookies with cross-site WebSocket requests, so the `Origin` must
/// name the host the request was made to.
fn same_origin(req: &HttpRequest) -> bool {
    let Some(origin) = req.headers().get("origin").and_then(|o| o.to_str().ok()) else {
        return false;
    };
    let host = req.connection_info().host().to_owned();
    origin
        .split_once("://")
        .is_some_and(|(_, rest)| rest.trim_end_matches('/') == host)
}

fn plain(status: actix_web::http::StatusCode, text: &str) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("text/plain; charset=utf-8")
        .body(text.to_owned())
}

/// Opens a console in the tenant's jail for the signed-in user (its
/// customer, or staff) and relays it until either side ends.
pub(crate) async fn open(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
    s: SignedIn,
    tenant_id: Uuid,
    jail_id: Uuid,
    size: Size,
) -> Result<HttpResponse, WebError> {
    use actix_web::http::StatusCode;
    if !same_origin(&req) {
        return Ok(plain(
            StatusCode::FORBIDDEN,
            "a console opens from the panel's own pages\n",
        ));
    }
    let Ok((response, mut browser, mut typed)) = actix_ws::handle(&req, body) else {
        return Ok(plain(StatusCode::BAD_REQUEST, "a console is a WebSocket\n"));
    };
    let jail = stockade_store::jails::get(&state.pool, tenant_id, jail_id).await?;
    let tenant = stockade_store::tenants::get(&state.pool, tenant_id).await?;
    if tenant.status != stockade_domain::TenantStatus::Active {
        return Ok(plain(
            StatusCode::CONFLICT,
            "the account is not active: its jails do not run\n",
        ));
    }
    if jail.desired_state == stockade_domain::DesiredState::Deleted {
        return Err(WebError::NotFound);
    }
    if !matches!(
        jail.observed_state,
        stockade_domain::ObservedState::Running | stockade_domain::ObservedState::CrashLooping
    ) {
        return Ok(plain(
            StatusCode::CONFLICT,
            "the jail does not run: start it first\n",
        ));
    }
    let kind = stockade_store::logs::TicketKind::Console;
    let Some((endpoint, ticket)) =
        stockade_store::logs::mint(&state.pool, tenant_id, jail_id, kind).await?
    else {
        return Ok(plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "the jail's node does not serve consoles\n",
        ));
    };
    let cols = size.cols.filter(|c| (1..=1000).contains(c)).unwrap_or(80);
    let rows = size.rows.filter(|r| (1..=1000).contains(r)).unwrap_or(24);
    let mut node_req = format!("ws://{endpoint}/console?cols={cols}&rows={rows}")
        .into_client_request()
        .map_err(anyhow::Error::from)?;
    node_req.headers_mut().insert(
        "authorization",
        format!("Ticket {ticket}")
            .parse()
            .map_err(anyhow::Error::from)?,
    );
    let node = match tokio::time::timeout(
        Duration::from_secs(5),
        tokio_tungstenite::connect_async(node_req),
    )
    .await
    {
        Ok(Ok((ws, _))) => ws,
        Ok(Err(tokio_tungstenite::tungstenite::Error::Http(refused)))
            if refused.status().as_u16() == 429 =>
        {
            return Ok(plain(
                StatusCode::TOO_MANY_REQUESTS,
                "too many consoles are open in this jail or on its node: close one first\n",
            ));
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, %endpoint, "a node refused a console");
            return Ok(plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "the jail's node refused the console\n",
            ));
        }
        Err(_) => {
            return Ok(plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "the jail's node does not answer\n",
            ));
        }
    };
    let staff = s.0.user.role.is_staff();
    record(
        &state,
        &req,
        &s,
        Some(tenant_id),
        "console.open",
        jail.name.as_str(),
        serde_json::json!({ "jail_id": jail_id, "by_staff": staff }),
    )
    .await?;
    let (state, req_for_audit, who) = (state.clone(), req.clone(), s);
    let jail_name = jail.name.to_string();
    actix_web::rt::spawn(async move {
        let started = Instant::now();
        let (mut to_node, mut from_node) = node.split();
        let mut last_input = Instant::now();
        let mut idle = tokio::time::interval(Duration::from_secs(30));
        let reason = loop {
            tokio::select! {
                down = from_node.next() => match down {
                    Some(Ok(NodeMessage::Binary(b))) => {
                        if browser.binary(b).await.is_err() {
                            break "the browser left";
                        }
                    }
                    Some(Ok(NodeMessage::Close(frame))) => {
                        break if frame.is_some_and(|f| f.reason.as_str() == "the shell ended") {
                            "the shell ended"
                        } else {
                            "the node ended it"
                        };
                    }
                    None | Some(Err(_)) => break "the node ended it",
                    Some(Ok(_)) => {}
                },
                up = typed.recv() => match up {
                    Some(Ok(actix_ws::Message::Binary(b))) => {
                        last_input = Instant::now();
                        if to_node.send(NodeMessage::Binary(b)).await.is_err() {
                            break "the node ended it";
                        }
                    }
                    Some(Ok(actix_ws::Message::Text(t))) => {
                        // Input typed as text, or a resize ({"cols", "rows"}).
                        let text = t.to_string();
                        let message = if text.starts_with('{') {
                            NodeMessage::Text(text.into())
                        } else {
                            last_input = Instant::now();
                            NodeMessage::Binary(text.into_bytes().into())
                        };
                        if to_node.send(message).await.is_err() {
                            break "the node ended it";
                        }
                    }
                    Some(Ok(actix_ws::Message::Ping(p))) => {
                        let _ = browser.pong(&p).await;
                    }
                    Some(Ok(actix_ws::Message::Close(_))) | None | Some(Err(_)) => break "the browser left",
                    Some(Ok(_)) => {}
                },
                _ = idle.tick() => {
                    if last_input.elapsed() >= IDLE {
                        break "idle for 15 minutes";
                    }
                    if started.elapsed() >= LONGEST {
                        break "open for 8 hours";
                    }
                }
            }
        };
        let _ = to_node.send(NodeMessage::Close(None)).await;
        let _ = browser
            .close(Some(actix_ws::CloseReason {
                code: actix_ws::CloseCode::Normal,
                description: Some(reason.to_owned()),
            }))
            .await;
        let _ = record(
            &state,
            &req_for_audit,
            &who,
            Some(tenant_id),
            "console.close",
            &jail_name,
            serde_json::json!({
                "jail_id": jail_id,
                "seconds": started.elapsed().as_secs(),
                "ended": reason,
                "by_staff": staff,
            }),
        )
        .await;
    });
    Ok(response)
}
