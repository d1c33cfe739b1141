//! Site files uploaded into a jail.

use actix_web::{HttpRequest, HttpResponse, web};
use stockade_store::StoreError;
use stockade_store::jails::{self};

use super::parse_id;
use super::{customer_tenant, record};
use crate::auth::SignedIn;
use crate::format;
use crate::{AppState, WebError, flash};

/// Largest file accepted by the upload form.
pub(super) const UPLOAD_LIMIT: usize = 8 << 20;

/// Room the form's other fields and boundaries may take beyond the file.
pub(super) const UPLOAD_OVERHEAD: usize = 64 << 10;

/// Reads the upload form: its CSRF token first (the form sends it before the
/// file), checked before any of the file is read, then one file, refusing
/// anything larger than the limit. A body announced larger than the limit is
/// refused before a byte of it is read. The outer error is a refused
/// request (a forged form); the inner one a message for the jail page.
pub(super) async fn read_upload(
    s: &SignedIn,
    req: &HttpRequest,
    mut form: actix_multipart::Multipart,
) -> Result<Result<(String, Vec<u8>), String>, WebError> {
    use futures_util::StreamExt;
    let too_large = || {
        format!(
            "the file is larger than {}",
            format::bytes(UPLOAD_LIMIT as u64)
        )
    };
    let announced = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let mut checked = false;
    let mut file: Option<(String, Vec<u8>)> = None;
    while let Some(field) = form.next().await {
        let Ok(mut field) = field else {
            return Ok(Err("the upload could not be read".into()));
        };
        let name = field.name().unwrap_or_default().to_owned();
        if !checked {
            // Nothing but the token is read before it is checked.
            if name != "csrf_token" {
                return Err(WebError::Csrf);
            }
            let mut token = Vec::new();
            while let Some(chunk) = field.next().await {
                let Ok(chunk) = chunk else {
                    return Ok(Err("the upload could not be read".into()));
                };
                if token.len() + chunk.len() > 256 {
                    return Err(WebError::Csrf);
                }
                token.extend_from_slice(&chunk);
            }
            s.check_csrf(&String::from_utf8_lossy(&token))?;
            checked = true;
            if announced.is_some_and(|n| n > UPLOAD_LIMIT + UPLOAD_OVERHEAD) {
                return Ok(Err(too_large()));
            }
            continue;
        }
        let file_name = field
            .content_disposition()
            .and_then(|d| d.get_filename())
            .map(str::to_owned);
        let mut data = Vec::new();
        while let Some(chunk) = field.next().await {
            let Ok(chunk) = chunk else {
                return Ok(Err("the upload could not be read".into()));
            };
            if data.len() + chunk.len() > UPLOAD_LIMIT {
                return Ok(Err(too_large()));
            }
            data.extend_from_slice(&chunk);
        }
        if name == "file" {
            file = Some((file_name.unwrap_or_default(), data));
        }
    }
    if !checked {
        return Err(WebError::Csrf);
    }
    Ok(file.ok_or_else(|| "choose a file to upload".to_owned()))
}

pub(super) async fn upload(
    req: HttpRequest,
    state: web::Data<AppState>,
    s: SignedIn,
    path: web::Path<String>,
    form: actix_multipart::Multipart,
) -> Result<HttpResponse, WebError> {
    let tenant_id = customer_tenant(&s)?;
    let id = parse_id(&path)?;
    let here = format!("/jails/{id}");
    let (file_name, data) = match read_upload(&s, &req, form).await? {
        Ok(v) => v,
        Err(msg) => {
            return Ok(flash::redirect(
                &here,
                "error",
                &format!("Upload refused: {msg}."),
            ));
        }
    };
    // Browsers send a bare name; older ones a full client path: keep the last part.
    let base = file_name
        .rsplit(['/', '\\'])
        .next()
        .unwrap_or_default()
        .to_owned();
    let base = match stockade_domain::FileName::parse(&base) {
        Ok(n) => n,
        Err(e) => {
            return Ok(flash::redirect(
                &here,
                "error",
                &format!("Upload refused: {e}."),
            ));
        }
    };
    let jail = jails::get(&state.pool, tenant_id, id).await?;
    let up = match stockade_store::uploads::create(
        &state.pool,
        tenant_id,
        jail.id,
        base.as_str(),
        &data,
    )
    .await
    {
        Ok(up) => up,
        Err(StoreError::QuotaExceeded(msg) | StoreError::InvalidState(msg)) => {
            return Ok(flash::redirect(
                &here,
                "error",
                &format!("Upload of {base} refused: {msg}. Nothing was stored."),
            ));
        }
        Err(e) => return Err(e.into()),
    };
    record(
        &state,
        &req,
        &s,
        Some(tenant_id),
        "jail.upload",
        &format!("{}:/srv/www/{}", jail.name, up.file_name),
        serde_json::json!({}),
    )
    .await?;
    let when = if jail.observed_state == stockade_domain::ObservedState::Running {
        "in a moment"
    } else {
        "once the jail runs"
    };
    Ok(flash::redirect(
        &here,
        "ok",
        &format!(
            "{} uploaded; it appears in /srv/www of {} {when}.",
            up.file_name, jail.name
        ),
    ))
}
