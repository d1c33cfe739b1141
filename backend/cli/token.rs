//! `stockade token`: API tokens for billing systems.

use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;
use secrecy::ExposeSecret;
use stockade_domain::TenantSlug;
use stockade_store::tokens::{self, Scope};

use crate::config::Config;

#[derive(Subcommand)]
pub(crate) enum TokenCommand {
    /// Create a token; it is printed once and cannot be shown again.
    Create {
        /// What the token is for (e.g. `billing`).
        #[arg(long)]
        name: String,
        /// A scope it holds; repeat for several: tenants:read, tenants:write,
        /// jails:read, jails:write, usage:read, webhooks:write.
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
        /// Bind the token to one tenant: it sees nothing else.
        #[arg(long, value_name = "SLUG")]
        tenant: Option<String>,
    },
    /// List tokens (never their secrets).
    Ls,
    /// Revoke a token by id or prefix.
    Revoke {
        /// The token's id or its prefix (as `token ls` shows).
        token: String,
    },
}

pub(crate) fn run(cfg: &Config, command: TokenCommand) -> anyhow::Result<ExitCode> {
    // Parse everything before touching the database.
    let parsed_create = match &command {
        TokenCommand::Create { scopes, tenant, .. } => {
            let scopes = scopes
                .iter()
                .map(|s| s.parse::<Scope>())
                .collect::<Result<Vec<_>, _>>()?;
            let tenant = tenant.as_deref().map(TenantSlug::parse).transpose()?;
            Some((scopes, tenant))
        }
        _ => None,
    };
    let url = crate::require_database(cfg)?.owner;
    crate::runtime()?.block_on(async {
        let pool = stockade_store::connect(&url, 1, Duration::from_secs(10)).await?;
        match (command, parsed_create) {
            (TokenCommand::Create { name, .. }, Some((scopes, tenant))) => {
                let tenant_id = match tenant {
                    Some(slug) => Some(
                        stockade_store::tenants::by_slug(&pool, &slug)
                            .await
                            .map_err(|_| anyhow::anyhow!("tenant: no tenant {slug}"))?
                            .id,
                    ),
                    None => None,
                };
                let (token, secret) = tokens::create(&pool, &name, &scopes, tenant_id).await?;
                println!(
                    "created token {} ({}) id {}",
                    token.name, token.prefix, token.id
                );
                println!("token: {}", secret.expose_secret());
                println!("store it now: it is not shown again");
            }
            (TokenCommand::Ls, _) => {
                println!(
                    "{:<36}  {:<12}  {:<16}  {:<8}  {:<20}  scopes",
                    "id", "prefix", "name", "status", "last used"
                );
                for t in tokens::list(&pool).await? {
                    let status = if t.revoked_at.is_some() {
                        "revoked"
                    } else {
                        "active"
                    };
                    let last = t
                        .last_used_at
                        .map(|a| a.format("%Y-%m-%d %H:%M").to_string())
                        .unwrap_or_else(|| "never".into());
                    let scopes: Vec<&str> = t.scopes.iter().map(|s| s.as_str()).collect();
                    let bound = t
                        .tenant_id
                        .map(|id| format!(" tenant {id}"))
                        .unwrap_or_default();
                    println!(
                        "{:<36}  {:<12}  {:<16}  {:<8}  {:<20}  {}{bound}",
                        t.id,
                        t.prefix,
                        t.name,
                        status,
                        last,
                        scopes.join(",")
                    );
                }
            }
            (TokenCommand::Revoke { token }, _) => {
                let t = tokens::revoke(&pool, &token)
                    .await
                    .map_err(|_| anyhow::anyhow!("no token with id or prefix {token}"))?;
                println!("revoked token {} ({})", t.name, t.prefix);
            }
            (TokenCommand::Create { .. }, None) => unreachable!("parsed above"),
        }
        Ok(ExitCode::SUCCESS)
    })
}
