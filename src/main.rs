//! The `pgtenant` command line: parses arguments and calls into the library.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};
use pgtenant::config::Config;
use pgtenant::provision;
use pgtenant::server::Proxy;
use pgtenant::tenant::{AccessLevel, TenantId};

/// Default configuration file, used when it exists and no --config is given.
const DEFAULT_CONFIG: &str = "config/pgtenant.toml";

#[derive(Parser)]
#[command(
    name = "pgtenant",
    version,
    about = "PostgreSQL proxy for schema-per-tenant databases"
)]
struct Cli {
    /// Configuration file (default: config/pgtenant.toml when present, else built-in defaults).
    #[arg(long, short, global = true, env = "PGTENANT_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Serve,
    /// Create the registry, the service databases and their shared functions (idempotent).
    Init,
    /// Manage tenants.
    Tenant {
        #[command(subcommand)]
        action: TenantCommand,
    },
    /// Start a local demo: a PostgreSQL (private if none is configured), tenants acme and globex, and the proxy.
    Quickstart,
}

#[derive(Subcommand)]
enum TenantCommand {
    /// Create a tenant: registry row, roles, schemas and tables in every service database (idempotent).
    Create {
        /// Tenant id: lowercase letters, digits, '_'.
        id: String,
        /// Display name.
        #[arg(long, default_value = "")]
        name: String,
    },
    /// Add or update a tenant user that clients log in as (`user@tenant`).
    AddUser {
        /// Tenant id.
        id: String,
        /// User name.
        user: String,
        /// Password (stored as a SCRAM-SHA-256 verifier).
        #[arg(long, env = "PGTENANT_USER_PASSWORD")]
        password: String,
        /// Read-only access.
        #[arg(long)]
        read_only: bool,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> Result<()> {
    let mut config = load_config(cli.config.as_deref())?;
    match cli.command {
        Command::Serve => serve(config).await,
        Command::Init => {
            provision::init(&config).await?;
            println!("registry and service databases are ready");
            Ok(())
        }
        Command::Tenant { action } => match action {
            TenantCommand::Create { id, name } => {
                let id = TenantId::parse(&id)?;
                provision::create_tenant(&config, &id, &name).await?;
                println!("tenant {id} is active");
                Ok(())
            }
            TenantCommand::AddUser {
                id,
                user,
                password,
                read_only,
            } => {
                let id = TenantId::parse(&id)?;
                let access = if read_only {
                    AccessLevel::ReadOnly
                } else {
                    AccessLevel::ReadWrite
                };
                provision::add_user(&config, &id, &user, &password, access).await?;
                println!("user {user}@{id} saved");
                Ok(())
            }
        },
        Command::Quickstart => {
            let state_dir = Path::new(".pgtenant");
            let _cluster = provision::quickstart::prepare(&mut config, state_dir).await?;
            let port = config.listen.addr.port();
            let host = config.listen.addr.ip();
            println!();
            println!("pgtenant quickstart: tenants acme and globex, each with user alice (demo password: alice)");
            println!("  psql \"host={host} port={port} dbname=crm_db user=alice@acme\"");
            println!("  psql \"host={host} port={port} dbname=crm_db user=alice options=-ctenant=globex\"");
            println!("  => SHOW search_path;  SELECT current_setting('app.current_tenant');  SELECT * FROM contacts;");
            println!();
            serve(config).await
        }
    }
}

fn load_config(path: Option<&Path>) -> Result<Config> {
    match path {
        Some(p) => Ok(Config::load(p)?),
        None if Path::new(DEFAULT_CONFIG).exists() => Ok(Config::load(Path::new(DEFAULT_CONFIG))?),
        None => Ok(Config::parse("", "built-in defaults")?),
    }
}

async fn serve(config: Config) -> Result<()> {
    if config.listen.addr.port() == 0 {
        bail!("listen.addr needs a port");
    }
    let proxy = Proxy::start(config).await?;
    wait_for_signal().await?;
    proxy.shutdown(Duration::from_secs(10)).await;
    Ok(())
}

async fn wait_for_signal() -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
    Ok(())
}
