//! The tenant's SSH keys: listed, added (pasted as one line of a `.pub`
//! file) and removed. Any of them logs in to the tenant's running jails
//! through the SSH gateway of each jail's node.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use askama::Template;
use serde::Deserialize;
use stockade_domain::SshPublicKey;
use stockade_store::StoreError;
use stockade_store::ssh_keys::{self, SshKey};
use uuid::Uuid;

use super::parse_id;
use super::{ActionForm, Layout, customer_tenant, record, render};
use crate::auth::SignedIn;
use crate::{AppState, WebError, flash};

/// A key as a row of the table.
struct KeyRow {
    id: Uuid,
    name: String,
    algorithm: String,
    fingerprint: String,
    added: String,
    last_used: String,
}

impl From<SshKey> for KeyRow {
    fn from(k: SshKey) -> Self {
        KeyRow {
            id: k.id,
            algorithm: k
                .public_key
                .split(' ')
                .next()
                .unwrap_or_default()
                .to_owned(),
            name: k.name,
            fingerprint: k.fingerprint,
            added: k.created_at.format("%Y-%m-%d %H:%M UTC").to_string(),
            last_used: k.last_used_at.map_or_else(
                || "never".to_owned(),
                |t| t.format("%Y-%m-%d %H:%M UTC").to_string(),
            ),
        }
    }
}

#[derive(Template)]
#[template(path = "ssh_keys.html")]
struct KeysPage {
    layout: Layout,
    keys: Vec<KeyRow>,
    /// What was typed, shown again with `error`.
    name: String,
    public_key: String,
    error: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct AddForm {
    csrf_token: String,
    #[serde(default)]
    name: String,
    public_key: String,
}

async fn page(
    req: &HttpRequest,
    state: &AppState,
    s: &SignedIn,
    tenant_id: Uuid,
    typed: Option<(&AddForm, String)>,
) -> Result<HttpResponse, WebError> {
    let keys = ssh_keys::list(&state.pool, tenant_id)
        .await?
        .into_iter()
        .map(KeyRow::from)
        .collect();
    let layout = Layout::new(req, &s.0);
    let had_flash = layout.flash.is_some();
    let (status, name, public_key, error) = match typed {
        Some((f, e)) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            f.name.clone(),
            f.public_key.clone(),
            Some(e),
        ),
        None => (StatusCode::OK, String::new(), String::new(), None),
    };
    render(
        status,
        &KeysPage {
            layout,
            keys,
            name,
            public_key,
            error,
        },
        had_flash,
    )
}

pub(super) async fn list(
    req: HttpRequest,
    state: web::Data<AppState>,
    s: SignedIn,
) -> Result<HttpResponse, WebError> {
    let tenant_id = customer_tenant(&s)?;
    page(&req, &state, &s, tenant_id, None).await
}

pub(super) async fn add(
    req: HttpRequest,
    state: web::Data<AppState>,
    s: SignedIn,
    form: web::Form<AddForm>,
) -> Result<HttpResponse, WebError> {
    let tenant_id = customer_tenant(&s)?;
    s.check_csrf(&form.csrf_token)?;
    let key = match SshPublicKey::parse(&form.public_key) {
        Ok(k) => k,
        Err(e) => {
            let why = format!("Not added: the key {}.", e.reason);
            return page(&req, &state, &s, tenant_id, Some((&form, why))).await;
        }
    };
    match ssh_keys::add(&state.pool, tenant_id, &form.name, &key, Some(s.0.user.id)).await {
        Ok(k) => {
            record(
                &state,
                &req,
                &s,
                Some(tenant_id),
                "ssh_key.add",
                &k.name,
                serde_json::json!({ "fingerprint": k.fingerprint }),
            )
            .await?;
            Ok(flash::redirect(
                "/ssh-keys",
                "ok",
                &format!("Key {} added: it logs in to your running jails.", k.name),
            ))
        }
        Err(
            StoreError::Invalid { message: m, .. }
            | StoreError::QuotaExceeded(m)
            | StoreError::InvalidState(m),
        ) => {
            let why = format!("Not added: {m}.");
            page(&req, &state, &s, tenant_id, Some((&form, why))).await
        }
        Err(e) => Err(e.into()),
    }
}

pub(super) async fn remove(
    req: HttpRequest,
    state: web::Data<AppState>,
    s: SignedIn,
    path: web::Path<String>,
    form: web::Form<ActionForm>,
) -> Result<HttpResponse, WebError> {
    let tenant_id = customer_tenant(&s)?;
    s.check_csrf(&form.csrf_token)?;
    let id = parse_id(&path)?;
    let k = ssh_keys::remove(&state.pool, tenant_id, id).await?;
    record(
        &state,
        &req,
        &s,
        Some(tenant_id),
        "ssh_key.remove",
        &k.name,
        serde_json::json!({ "fingerprint": k.fingerprint }),
    )
    .await?;
    Ok(flash::redirect(
        "/ssh-keys",
        "ok",
        &format!("Key {} removed: it opens no new session.", k.name),
    ))
}
