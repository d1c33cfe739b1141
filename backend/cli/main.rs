//! `stockade`: the one binary of the control plane.

mod cluster;
mod config;
mod doctor;
mod jail;
mod privileges;
mod token;
mod up;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use secrecy::ExposeSecret;
use stockade_domain::{Email, Role};

use crate::config::Config;

#[derive(Parser)]
#[command(
    name = "stockade",
    version,
    about = "Multi-tenant jail hosting control plane"
)]
struct Cli {
    /// Configuration file (TOML); also STOCKADE_CONFIG.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run everything on this machine: database (managed unless DATABASE_URL is set),
    /// migrations, first admin, agent and web server.
    Up,
    /// Run the web server only (drops root privileges when started as root).
    Serve {
        /// Exit when the parent process dies (used by `up`).
        #[arg(long, hide = true)]
        exit_with_parent: bool,
    },
    /// Run the node agent only (needs root for jails).
    Agent,
    /// Apply pending database migrations.
    Migrate,
    /// Manage provider staff accounts.
    Staff {
        #[command(subcommand)]
        command: StaffCommand,
    },
    /// Manage API tokens for billing systems.
    Token {
        #[command(subcommand)]
        command: token::TokenCommand,
    },
    /// Show what this host offers and what is missing.
    Doctor,
    /// Jails on this host, without the database (root).
    Jail {
        #[command(subcommand)]
        command: jail::JailCommand,
    },
    /// Root filesystem images on this host (root).
    Image {
        #[command(subcommand)]
        command: jail::ImageCommand,
    },
    /// Run a managed PostgreSQL cluster in the foreground, print its URL, and
    /// stop it when standard input closes (for tests and development).
    #[command(hide = true)]
    DbCluster {
        /// Data folder of the cluster.
        #[arg(long)]
        data_dir: PathBuf,
        /// Fast and non-durable; the folder is removed when the cluster stops.
        #[arg(long)]
        ephemeral: bool,
    },
}

#[derive(Subcommand)]
enum StaffCommand {
    /// Create a staff account; prints a generated password unless one is given
    /// in STOCKADE_STAFF_PASSWORD.
    Create {
        /// Sign-in email.
        #[arg(long)]
        email: String,
        /// `admin` or `operator`.
        #[arg(long, default_value = "admin")]
        role: String,
    },
}

fn main() -> ExitCode {
    // Two TLS providers are built in (ring, which the ACME client and the
    // proxy's checks use, and aws-lc-rs, which the S3 client of backups
    // brings): the process says which one TLS uses where nothing chooses.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("stockade: {}", describe(&e));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes on one line, each cause once: errors that name
/// their cause in their own message are not followed by it again.
fn describe(e: &anyhow::Error) -> String {
    let mut out = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !out.ends_with(&cause) {
            out.push_str(": ");
            out.push_str(&cause);
        }
    }
    out
}

fn init_tracing(filter: &str) {
    let builder = tracing_subscriber::fmt().with_writer(std::io::stderr);
    // A bare level needs no directive parsing (a short-lived `jail run`
    // notices the difference).
    if let Ok(level) = filter
        .trim()
        .parse::<tracing_subscriber::filter::LevelFilter>()
    {
        let _ = builder.with_max_level(level).try_init();
        return;
    }
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = builder.with_env_filter(filter).try_init();
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let cfg = Config::load(cli.config.as_deref())?;
    init_tracing(&cfg.log);
    match cli.command {
        Command::Up => up::run(cfg),
        Command::Serve { exit_with_parent } => serve(cfg, exit_with_parent),
        Command::Agent => {
            let url = require_database(&cfg)?.agent;
            let rt = runtime()?;
            let done = rt.block_on(async {
                let pool = up::agent_pool(&url).await?;
                let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
                let mut agent = tokio::spawn(up::agent_task(pool, cfg.clone(), stop_rx));
                let mut term =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                    done = &mut agent => return done?.map(|()| ExitCode::SUCCESS),
                }
                let _ = stop_tx.send(true);
                agent.await??;
                Ok(ExitCode::SUCCESS)
            });
            // An engine step stuck past its deadline still holds a blocking
            // thread; the agent exits without waiting for it.
            rt.shutdown_background();
            done
        }
        Command::Migrate => {
            let url = require_database(&cfg)?.owner;
            runtime()?.block_on(async {
                let pool = stockade_store::connect(&url, 1, Duration::from_secs(10)).await?;
                let granted = stockade_store::migrate(&pool).await?;
                println!("database is up to date");
                if !granted {
                    print_grants(&pool).await?;
                }
                Ok(ExitCode::SUCCESS)
            })
        }
        Command::Staff {
            command: StaffCommand::Create { email, role },
        } => {
            let email = Email::parse(&email)?;
            let role: Role = role.parse()?;
            if !role.is_staff() {
                anyhow::bail!(
                    "role: staff accounts are admin or operator; customers are created with their tenant"
                );
            }
            let url = require_database(&cfg)?.owner;
            // Checked for strength when the configuration was read.
            let (password, generated) = match &cfg.staff_password {
                Some(p) => (p.clone(), false),
                None => (stockade_store::password::generate(), true),
            };
            runtime()?.block_on(async {
                let pool = stockade_store::connect(&url, 1, Duration::from_secs(10)).await?;
                let hash = stockade_store::password::hash(&password)?;
                stockade_store::users::create(&pool, &email, &hash, role, None).await?;
                println!("created {role} {email}");
                if generated {
                    println!("password: {}", password.expose_secret());
                }
                Ok(ExitCode::SUCCESS)
            })
        }
        Command::Token { command } => token::run(&cfg, command),
        Command::Doctor => Ok(doctor::run(&cfg)),
        Command::Jail { command } => jail::run(&cfg, command),
        Command::Image { command } => jail::image(&cfg, command),
        Command::DbCluster {
            data_dir,
            ephemeral,
        } => db_cluster(&cfg, &data_dir, ephemeral),
    }
}

/// The database: `database_url` when set, else the managed cluster that
/// `stockade up` runs in `pg_data` (so commands run beside it need no URL);
/// as the owner, the web role and the agent role.
fn require_database(cfg: &Config) -> anyhow::Result<up::Urls> {
    if let Some(url) = &cfg.database_url {
        return Ok(up::Urls::external(cfg, url));
    }
    let owner = cluster::running_url(&cfg.pg_data).with_context(|| {
        format!(
            "no database: DATABASE_URL is not set and no managed cluster runs in {}; start one with `stockade up` (or set pg_data to its folder), or set DATABASE_URL to your PostgreSQL server",
            cfg.pg_data.display()
        )
    })?;
    up::Urls::managed(&owner)
}

/// Tells the DBA of an external server how to give the web tier and the
/// agent roles of their own.
async fn print_grants(pool: &stockade_store::PgPool) -> anyhow::Result<()> {
    use stockade_store::roles::{AGENT, WEB, grant_statements};
    let database: String = sqlx::query_scalar("SELECT current_database()::text")
        .fetch_one(pool)
        .await?;
    println!(
        "\nThe web tier and the agent should each connect as a role of its own, with\n\
         only the rights it uses. As a superuser (or the database's owner, with\n\
         CREATEROLE for the first two lines), run:\n\n\
         CREATE ROLE {WEB} LOGIN PASSWORD '...';\n\
         CREATE ROLE {AGENT} LOGIN PASSWORD '...';\n{}\n\
         then set web_database_url and agent_database_url to their URLs; `stockade\n\
         migrate` keeps their grants current from then on.",
        grant_statements(&database, WEB, AGENT)?
    );
    Ok(())
}

fn serve(cfg: Config, exit_with_parent: bool) -> anyhow::Result<ExitCode> {
    if cfg.database_url.is_some() && cfg.web_database_url.is_none() {
        tracing::warn!(
            "web_database_url is not set: the web server connects with database_url's rights; `stockade migrate` prints the grants of a role of its own"
        );
    }
    let url = require_database(&cfg)?.web;
    let listener = std::net::TcpListener::bind(cfg.listen).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            anyhow::anyhow!(
                "{} is already in use; stop what listens there or set STOCKADE_LISTEN",
                cfg.listen
            )
        } else {
            anyhow::anyhow!("cannot listen on {}: {e}", cfg.listen)
        }
    })?;
    // The port is bound first (it may be privileged), then root is given up
    // before any thread exists, so no request is ever handled as root.
    if nix::unistd::Uid::effective().is_root() {
        let who = cluster::resolve_run_as(&cfg.run_as)?;
        privileges::drop_to(&who)?;
        tracing::info!(user = %who.name, "web server dropped root privileges");
    }
    if exit_with_parent {
        privileges::exit_with_parent()?;
    }
    runtime()?.block_on(async {
        // A request waits at most a second for a connection: while the
        // database is away the panel and API say so (503) at once.
        let pool = stockade_store::connect_serving(
            &url,
            16,
            Duration::from_secs(10),
            Duration::from_secs(1),
        )
        .await?;
        let settings = stockade_web::Settings {
            public_url: cfg.public_url.clone(),
            session_expiry: cfg.session_expiry(),
            workers: cfg.web_workers,
            signup_plan: cfg.signup_plan.clone(),
            page_cache: cfg.page_cache,
            trusted_proxies: cfg.trusted_proxies.clone(),
            domain_proof: cfg.domain_proof,
        };
        let mut api = stockade_web::ApiSettings::default();
        api.delivery.egress.allow = cfg.webhook_allow.clone();
        let app = stockade_web::Application::build_with(listener, pool, settings, api)?;
        tracing::info!(port = app.port(), "web server listening");
        app.run_until_stopped().await?;
        Ok(ExitCode::SUCCESS)
    })
}

fn db_cluster(
    cfg: &Config,
    data_dir: &std::path::Path,
    ephemeral: bool,
) -> anyhow::Result<ExitCode> {
    use std::io::{Read, Write};
    let (db, web) = cluster::accounts(cfg)?;
    let cluster =
        cluster::Cluster::start(data_dir, &db, Some(&web), cluster::Tuning { ephemeral })?;
    let dir = cluster.data_dir().to_path_buf();
    let url = cluster.url("postgres");
    runtime()?.block_on(async {
        let pool = stockade_store::connect(&url, 1, Duration::from_secs(10)).await?;
        stockade_store::roles::create_roles(&pool).await?;
        pool.close().await;
        anyhow::Ok(())
    })?;
    println!("DATABASE_URL={}", url.expose_secret());
    std::io::stdout().flush()?;
    // Wait until whoever started us closes our stdin (or dies).
    let mut sink = [0u8; 64];
    let mut stdin = std::io::stdin();
    while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
    cluster.stop()?;
    if ephemeral {
        std::fs::remove_dir_all(&dir)
            .with_context(|| format!("cannot remove {}", dir.display()))?;
        let _ = std::fs::remove_dir_all(cluster::socket_dir(&dir));
        let mut lock = dir.into_os_string();
        lock.push(".lock");
        let _ = std::fs::remove_file(lock);
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::describe;

    #[test]
    fn each_cause_is_said_once() {
        /// An error that names its cause in its own message.
        #[derive(Debug)]
        struct Named(std::io::Error);
        impl std::fmt::Display for Named {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "mount /x: {}", self.0)
            }
        }
        impl std::error::Error for Named {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let e = anyhow::Error::new(Named(std::io::Error::other("busy")));
        assert_eq!(describe(&e), "mount /x: busy");
        let e = anyhow::Error::new(std::io::Error::other("busy")).context("cannot start");
        assert_eq!(describe(&e), "cannot start: busy");
    }
}
