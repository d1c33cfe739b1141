//! API tokens: scoped bearer credentials for billing systems.
//!
//! A token is shown once, when created. Only its SHA-256 hash is stored, with
//! its first characters as a lookup prefix, so a leaked database dump holds no
//! usable credential and authentication needs no scan of hashes.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::{PgPool, StoreError, conflict_as};

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// Read tenants and plans.
    TenantsRead,
    /// Create, change, suspend and terminate tenants; manage plans.
    TenantsWrite,
    /// Read jails.
    JailsRead,
    /// Create, change, start, stop and delete jails.
    JailsWrite,
    /// Read metered usage.
    UsageRead,
    /// Manage webhook endpoints and read their delivery log.
    WebhooksWrite,
    /// Read the web tier's `/metrics` (provider tokens only).
    MetricsRead,
    /// Attach and detach domains of jails (reading them is `jails:read`).
    DomainsWrite,
}

impl Scope {
    /// Every scope.
    pub const ALL: [Scope; 8] = [
        Scope::TenantsRead,
        Scope::TenantsWrite,
        Scope::JailsRead,
        Scope::JailsWrite,
        Scope::UsageRead,
        Scope::WebhooksWrite,
        Scope::MetricsRead,
        Scope::DomainsWrite,
    ];

    /// The scope as stored and written on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::TenantsRead => "tenants:read",
            Scope::TenantsWrite => "tenants:write",
            Scope::JailsRead => "jails:read",
            Scope::JailsWrite => "jails:write",
            Scope::UsageRead => "usage:read",
            Scope::WebhooksWrite => "webhooks:write",
            Scope::MetricsRead => "metrics:read",
            Scope::DomainsWrite => "domains:write",
        }
    }

    /// Whether holding `self` grants `wanted` (a write scope grants its read).
    pub fn grants(self, wanted: Scope) -> bool {
        self == wanted
            || matches!(
                (self, wanted),
                (Scope::TenantsWrite, Scope::TenantsRead) | (Scope::JailsWrite, Scope::JailsRead)
            )
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Scope {
    type Err = stockade_domain::ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Scope::ALL
            .into_iter()
            .find(|scope| scope.as_str() == s)
            .ok_or_else(|| stockade_domain::ParseError {
                field: "scope",
                reason: format!(
                    "{s:?} is not one of: {}",
                    Scope::ALL.map(Scope::as_str).join(", ")
                ),
            })
    }
}

/// A token as listed; never its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiToken {
    /// Stable id.
    pub id: Uuid,
    /// What it is for (`billing`).
    pub name: String,
    /// Its first characters, shown in listings to tell tokens apart.
    pub prefix: String,
    /// What it may do.
    pub scopes: Vec<Scope>,
    /// The one tenant it may see, if bound.
    pub tenant_id: Option<Uuid>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it was last used (to the minute).
    pub last_used_at: Option<DateTime<Utc>>,
    /// When it was revoked.
    pub revoked_at: Option<DateTime<Utc>>,
}

impl ApiToken {
    /// Whether the token holds `wanted` (directly or through its write scope).
    pub fn has(&self, wanted: Scope) -> bool {
        self.scopes.iter().any(|s| s.grants(wanted))
    }
}

struct TokenRow {
    id: Uuid,
    name: String,
    prefix: String,
    scopes: Vec<String>,
    tenant_id: Option<Uuid>,
    created_at: DateTime<Utc>,
    last_used_at: Option<DateTime<Utc>>,
    revoked_at: Option<DateTime<Utc>>,
}

impl TryFrom<TokenRow> for ApiToken {
    type Error = StoreError;
    fn try_from(r: TokenRow) -> Result<Self, StoreError> {
        let scopes = r
            .scopes
            .iter()
            .map(|s| s.parse())
            .collect::<Result<Vec<Scope>, _>>()
            .map_err(|e| anyhow::anyhow!("stored scope: {e}"))?;
        Ok(ApiToken {
            id: r.id,
            name: r.name,
            prefix: r.prefix,
            scopes,
            tenant_id: r.tenant_id,
            created_at: r.created_at,
            last_used_at: r.last_used_at,
            revoked_at: r.revoked_at,
        })
    }
}

/// A query with a token's columns: `$before` (up to `SELECT` or
/// `RETURNING`), the columns, `$after`, then the arguments. As `query_as(TokenRow)`
/// it reads [`TokenRow`]s; as `query()` rows with whatever `$after` adds.
macro_rules! token_query {
    ($macro:ident($($row:ident)?), $before:tt, $after:tt $(, $arg:expr)* $(,)?) => {
        sqlx::$macro!(
            $($row,)?
            $before
                + "id, name, prefix, scopes, tenant_id, created_at, last_used_at, revoked_at"
                + $after
            $(, $arg)*
        )
    };
}

/// Every token starts with this, so secret scanners can recognise one.
pub const TOKEN_MARK: &str = "stk_";
/// Length of the lookup prefix: the mark and 8 hex digits.
const PREFIX_LEN: usize = TOKEN_MARK.len() + 8;

fn hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// Creates a token and returns it with its secret, which is never shown again.
pub async fn create(
    pool: &PgPool,
    name: &str,
    scopes: &[Scope],
    tenant_id: Option<Uuid>,
) -> Result<(ApiToken, SecretString), StoreError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 100 {
        return Err(StoreError::InvalidState(
            "name: must be 1 to 100 characters".into(),
        ));
    }
    if scopes.is_empty() {
        return Err(StoreError::InvalidState(
            "scope: give at least one scope".into(),
        ));
    }
    let mut bytes = [0u8; 28];
    rand::rng().fill_bytes(&mut bytes);
    let secret = hex::encode(bytes);
    let token = format!("{TOKEN_MARK}{}_{}", &secret[..8], &secret[8..]);
    let prefix = &token[..PREFIX_LEN];
    let mut scope_names: Vec<String> = scopes.iter().map(|s| s.as_str().to_owned()).collect();
    scope_names.sort_unstable();
    scope_names.dedup();
    let row = token_query!(
        query_as(TokenRow),
        "INSERT INTO api_tokens (name, prefix, token_hash, scopes, tenant_id)
         VALUES ($1, $2, $3, $4, $5) RETURNING ",
        "",
        name,
        prefix,
        hash(&token),
        scope_names.as_slice(),
        tenant_id
    )
    .fetch_one(pool)
    .await
    .map_err(|e| match &e {
        sqlx::Error::Database(db) if db.is_foreign_key_violation() => StoreError::NotFound,
        _ => conflict_as("a token with this prefix")(e),
    })?;
    Ok((row.try_into()?, SecretString::from(token)))
}

/// The live token a bearer string stands for, recording its use. `None` for
/// anything unknown, malformed or revoked, or bound to a terminated tenant.
pub async fn authenticate(
    pool: &PgPool,
    bearer: &SecretString,
) -> Result<Option<ApiToken>, StoreError> {
    let raw = bearer.expose_secret();
    if raw.len() < PREFIX_LEN || !raw.starts_with(TOKEN_MARK) || !raw.is_char_boundary(PREFIX_LEN) {
        return Ok(None);
    }
    let row = token_query!(
        query(),
        "SELECT ",
        ", token_hash FROM api_tokens WHERE prefix = $1 AND revoked_at IS NULL
           AND (tenant_id IS NULL
                OR NOT EXISTS (SELECT 1 FROM tenants t
                               WHERE t.id = api_tokens.tenant_id AND t.status = 'terminated'))",
        &raw[..PREFIX_LEN]
    )
    .fetch_optional(pool)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let given = hash(raw);
    let same = given.len() == row.token_hash.len()
        && given
            .iter()
            .zip(&row.token_hash)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if !same {
        return Ok(None);
    }
    // Recorded to the minute: one write per token and minute, not per request.
    sqlx::query!(
        "UPDATE api_tokens SET last_used_at = now()
         WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute')",
        row.id
    )
    .execute(pool)
    .await?;
    let token = TokenRow {
        id: row.id,
        name: row.name,
        prefix: row.prefix,
        scopes: row.scopes,
        tenant_id: row.tenant_id,
        created_at: row.created_at,
        last_used_at: row.last_used_at,
        revoked_at: row.revoked_at,
    };
    token.try_into().map(Some)
}

/// Every token, newest first.
pub async fn list(pool: &PgPool) -> Result<Vec<ApiToken>, StoreError> {
    let rows = token_query!(
        query_as(TokenRow),
        "SELECT ",
        " FROM api_tokens ORDER BY created_at DESC, id"
    )
    .fetch_all(pool)
    .await?;
    rows.into_iter().map(ApiToken::try_from).collect()
}

/// Revokes the token with this id or prefix; revoking twice is harmless.
pub async fn revoke(pool: &PgPool, id_or_prefix: &str) -> Result<ApiToken, StoreError> {
    let id = Uuid::parse_str(id_or_prefix).ok();
    let row = token_query!(
        query_as(TokenRow),
        "UPDATE api_tokens SET revoked_at = COALESCE(revoked_at, now())
         WHERE id = $1 OR prefix = $2 RETURNING ",
        "",
        id,
        id_or_prefix
    )
    .fetch_optional(pool)
    .await?;
    row.ok_or(StoreError::NotFound)?.try_into()
}
