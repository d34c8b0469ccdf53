//! The `pgtenant` command line: parses arguments and calls into the library.

use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};
use pgtenant::config::{seconds, Config};
use pgtenant::pgbouncer_ini;
use pgtenant::provision;
use pgtenant::reload::ConfigSource;
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
    Serve {
        /// A PgBouncer configuration whose settings replace the TOML's
        /// (--config still gives the tenant registry, admin role and tenant
        /// resolution, which the ini cannot say).
        #[arg(long, value_name = "FILE")]
        pgbouncer_ini: Option<PathBuf>,
    },
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        action: ConfigCommand,
    },
    /// Ask a running proxy's HTTP endpoint for /healthz: exit 0 on 200, 1 otherwise.
    Healthcheck {
        /// HOST:PORT of the proxy's HTTP endpoint.
        #[arg(long, default_value = pgtenant::healthcheck::DEFAULT_ADDR)]
        addr: String,
    },
    /// Create the registry, the service databases and their shared functions (idempotent).
    Init,
    /// Manage tenants.
    Tenant {
        #[command(subcommand)]
        action: TenantCommand,
    },
    /// Apply pending migrations to every tenant schema and the template (or see `migrate status`).
    #[command(args_conflicts_with_subcommands = true)]
    Migrate {
        #[command(subcommand)]
        action: Option<MigrateCommand>,
        #[command(flatten)]
        args: MigrateArgs,
    },
    /// Back a tenant up: pg_dump of its schema in every service database, its registry rows, a manifest.
    Backup {
        /// Tenant id.
        id: String,
        /// Directory to write (created; must be empty). Default: pgtenant-backup-<id>-<time> in provision.backup_dir.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Restore a backup directory, under its own tenant id or as a new one.
    Restore {
        /// The backup directory.
        dir: PathBuf,
        /// Restore as this tenant id (schema and roles renamed).
        #[arg(long = "as", value_name = "NEW_ID")]
        as_id: Option<String>,
    },
    /// Compare every tenant schema with tenant_template: tables, columns, indexes, constraints.
    Drift {
        /// Only this tenant.
        #[arg(long = "tenant", value_name = "ID")]
        tenant: Option<String>,
    },
    /// Rebuild the cross-tenant admin views (admin.all_<table>) in every service database.
    AdminViews,
    /// Start a local demo: a PostgreSQL (private if none is configured), tenants acme and globex, and the proxy.
    Quickstart,
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the pgtenant TOML equivalent of a PgBouncer ini (--config is not
    /// read); what does not carry over is listed on stderr and at the end.
    Convert {
        /// The pgbouncer.ini.
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum MigrateCommand {
    /// Per service database, how many tenants are at each migration version.
    Status,
}

#[derive(clap::Args)]
struct MigrateArgs {
    /// Only this tenant (repeatable); the tenant_template schema is then left alone.
    #[arg(long = "tenant", value_name = "ID")]
    tenants: Vec<String>,
    /// Only this service database (repeatable).
    #[arg(long = "database", value_name = "DB")]
    databases: Vec<String>,
    /// Show what would be applied; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Tenants migrated at a time.
    #[arg(long, short, default_value_t = 4)]
    jobs: usize,
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
        /// Tenant settings as JSON, e.g. '{"pool_size": 5, "pool_mode": "transaction"}'
        /// (keys: pool_size, pool_mode, statement_timeout, max_clients).
        #[arg(long, value_name = "JSON", visible_alias = "config")]
        settings: Option<String>,
        /// shared (the [backend] cluster, default) or dedicated (a cluster of its own).
        #[arg(long, value_parser = ["shared", "dedicated"])]
        tier: Option<String>,
        /// A dedicated tenant's cluster: a [backends.NAME] of the configuration.
        #[arg(long, value_name = "NAME")]
        backend: Option<String>,
    },
    /// Change a tenant's settings (JSON merged into its config; null removes a key); running proxies apply them at once.
    Configure {
        /// Tenant id.
        id: String,
        /// E.g. '{"pool_size": 10}' or '{"pool_mode": null}'.
        settings: String,
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
    /// List tenants: id, name, status, tier, creation time.
    List,
    /// Show a tenant: status, tier, config, schemas and sizes, migrations per database.
    Show {
        /// Tenant id.
        id: String,
    },
    /// Suspend a tenant: running proxies refuse its new connections at once
    /// and close its connected clients when their transaction ends.
    Suspend {
        /// Tenant id.
        id: String,
        /// Also close its connected clients and server connections now, in every proxy.
        #[arg(long)]
        now: bool,
    },
    /// Resume a suspended tenant.
    Resume {
        /// Tenant id.
        id: String,
    },
    /// Drop a tenant: backup (unless --no-backup), then its schemas, roles and registry rows.
    Drop {
        /// Tenant id.
        id: String,
        /// Confirm: the tenant's data is removed.
        #[arg(long)]
        yes: bool,
        /// Do not take a backup first.
        #[arg(long)]
        no_backup: bool,
        /// Directory for the backup (default: a new one in provision.backup_dir, else the current directory).
        #[arg(long)]
        backup_dir: Option<PathBuf>,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if let Command::Healthcheck { addr } = &cli.command {
        // A probe: no config file, no log setup.
        return healthcheck(addr);
    }
    // The config says how to log, so it is read first; its errors go to
    // stderr through `main`'s error return.
    let config = load_config(cli.config.as_deref())?;
    pgtenant::logging::init(&config.log)?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(run(cli.command, cli.config, config))
}

async fn run(command: Command, config_file: Option<PathBuf>, mut config: Config) -> Result<()> {
    match command {
        Command::Config {
            action: ConfigCommand::Convert { file },
        } => convert(&file),
        Command::Serve {
            pgbouncer_ini: Some(ini),
        } => serve_pgbouncer_ini(config_path(config_file.as_deref()), ini).await,
        Command::Serve {
            pgbouncer_ini: None,
        } => {
            let source: ConfigSource =
                Arc::new(move || load_config(config_file.as_deref()).map_err(|e| format!("{e:#}")));
            serve(config, Some(source)).await
        }
        Command::Healthcheck { .. } => bail!("healthcheck is run before the config is read"),
        Command::Init => {
            provision::init(&config).await?;
            println!("registry and service databases are ready");
            Ok(())
        }
        Command::Tenant { action } => tenant_command(&config, action).await,
        Command::Migrate {
            action: Some(MigrateCommand::Status),
            ..
        } => migrate_status(&config).await,
        Command::Migrate { action: None, args } => migrate(&config, args).await,
        Command::Backup { id, out } => {
            let id = TenantId::parse(&id)?;
            let dir = provision::backup_tenant(&config, &id, out.as_deref()).await?;
            println!("backup of tenant {id} in {}", dir.display());
            Ok(())
        }
        Command::Restore { dir, as_id } => {
            let as_id = as_id.map(|a| TenantId::parse(&a)).transpose()?;
            let id = provision::restore_tenant(&config, &dir, as_id.as_ref()).await?;
            println!("tenant {id} restored from {}", dir.display());
            Ok(())
        }
        Command::Drift { tenant } => drift(&config, tenant.as_deref()).await,
        Command::AdminViews => {
            for report in provision::rebuild_admin_views(&config).await? {
                println!("{}: {}", report.database, report.views.join(", "));
                for (view, tenant, why) in report.skipped {
                    println!("  {view}: tenant {tenant} left out: {why}");
                }
            }
            Ok(())
        }
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
            // The quickstart's config is made here, not read from a file.
            serve(config, None).await
        }
    }
}

/// `pgtenant healthcheck`: one line on stdout and exit status 0 when
/// healthy; one line on stderr and exit status 1 otherwise.
fn healthcheck(addr: &str) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    match runtime.block_on(pgtenant::healthcheck::check(addr)) {
        Ok(status) => {
            println!("healthy: {status}");
            Ok(())
        }
        Err(e) => {
            eprintln!("unhealthy: {e}");
            std::process::exit(1);
        }
    }
}

/// `pgtenant tenant ...`.
async fn tenant_command(config: &Config, action: TenantCommand) -> Result<()> {
    match action {
        TenantCommand::Create {
            id,
            name,
            settings,
            tier,
            backend,
        } => {
            let id = TenantId::parse(&id)?;
            // Checked before anything is created.
            let settings = settings.as_deref().map(parse_settings).transpose()?;
            let tier = provision::Tier::requested(tier.as_deref(), backend.as_deref())?;
            provision::create_tenant_on(config, &id, &name, tier).await?;
            if let Some(settings) = settings {
                provision::lifecycle::set_tenant_config(config, &id, &settings).await?;
            }
            println!("tenant {id} is active");
            Ok(())
        }
        TenantCommand::Configure { id, settings } => {
            let id = TenantId::parse(&id)?;
            let settings = parse_settings(&settings)?;
            let now = provision::lifecycle::set_tenant_config(config, &id, &settings).await?;
            println!("tenant {id} config: {now}");
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
            provision::add_user(config, &id, &user, &password, access).await?;
            println!("user {user}@{id} saved");
            Ok(())
        }
        TenantCommand::List => {
            let tenants = provision::list_tenants(config).await?;
            print_table(
                &["id", "name", "status", "tier", "created"],
                tenants
                    .iter()
                    .map(|t| {
                        vec![
                            t.id.clone(),
                            t.name.clone(),
                            t.status.clone(),
                            t.tier.clone(),
                            t.created.clone(),
                        ]
                    })
                    .collect(),
            );
            Ok(())
        }
        TenantCommand::Show { id } => {
            let id = TenantId::parse(&id)?;
            let t = provision::show_tenant(config, &id).await?;
            println!("tenant   {}", t.summary.id);
            println!("name     {}", t.summary.name);
            println!("status   {}", t.summary.status);
            match &t.backend {
                Some(backend) => println!("tier     {} (backend {backend})", t.summary.tier),
                None => println!("tier     {}", t.summary.tier),
            }
            println!("config   {}", t.config);
            println!("users    {}", t.users);
            println!("created  {} UTC", t.summary.created);
            println!("updated  {} UTC", t.updated);
            println!();
            print_table(
                &[
                    "database",
                    "schema",
                    "tables",
                    "size",
                    "migrations",
                    "latest",
                ],
                t.schemas
                    .iter()
                    .map(|s| {
                        vec![
                            s.database.clone(),
                            if s.exists {
                                s.schema.clone()
                            } else {
                                format!("{} (missing)", s.schema)
                            },
                            s.tables.to_string(),
                            human_size(s.size_bytes),
                            s.migrations.len().to_string(),
                            s.migrations.last().cloned().unwrap_or_else(|| "-".into()),
                        ]
                    })
                    .collect(),
            );
            println!();
            if t.server_connections.is_empty() {
                println!("no server connections");
            } else {
                print_table(
                    &["database", "role", "state", "connections"],
                    t.server_connections
                        .iter()
                        .map(|c| {
                            vec![
                                c.database.clone(),
                                c.role.clone(),
                                c.state.clone(),
                                c.count.to_string(),
                            ]
                        })
                        .collect(),
                );
            }
            Ok(())
        }
        TenantCommand::Suspend { id, now } => {
            let id = TenantId::parse(&id)?;
            if now {
                provision::suspend_tenant_now(config, &id).await?;
                println!("tenant {id} is suspended; proxies close its connections");
            } else {
                provision::suspend_tenant(config, &id).await?;
                println!("tenant {id} is suspended");
            }
            Ok(())
        }
        TenantCommand::Resume { id } => {
            let id = TenantId::parse(&id)?;
            provision::resume_tenant(config, &id).await?;
            println!("tenant {id} is active");
            Ok(())
        }
        TenantCommand::Drop {
            id,
            yes,
            no_backup,
            backup_dir,
        } => {
            let id = TenantId::parse(&id)?;
            if !yes {
                bail!("dropping tenant {id} removes its schemas, roles and registry rows; pass --yes to confirm");
            }
            let options = provision::lifecycle::DropOptions {
                backup: !no_backup,
                backup_dir,
            };
            let report = provision::drop_tenant(config, &id, &options).await?;
            if let Some(dir) = report.backup {
                println!("backup of tenant {id} in {}", dir.display());
            }
            println!("tenant {id} dropped");
            Ok(())
        }
    }
}

/// `pgtenant migrate`: progress on stderr (a bar on a terminal, lines
/// otherwise), a summary on stdout, an error exit when any target failed.
async fn migrate(config: &Config, args: MigrateArgs) -> Result<()> {
    let options = provision::MigrateOptions {
        template: args.tenants.is_empty(),
        tenants: args
            .tenants
            .iter()
            .map(|t| TenantId::parse(t))
            .collect::<Result<_, _>>()?,
        databases: args.databases,
        dry_run: args.dry_run,
        jobs: args.jobs.max(1),
    };
    let verb = if options.dry_run {
        "would apply"
    } else {
        "applied"
    };
    let mut bar: Option<indicatif::ProgressBar> = None;
    let terminal = std::io::stderr().is_terminal();
    let mut on_event = |event: provision::MigrateEvent<'_>| match event {
        provision::MigrateEvent::Started { targets } => {
            if terminal {
                let b = indicatif::ProgressBar::new(targets as u64);
                if let Ok(style) = indicatif::ProgressStyle::with_template(
                    "migrating {bar:40} {pos}/{len} {elapsed} {msg}",
                ) {
                    b.set_style(style);
                }
                bar = Some(b);
            } else {
                eprintln!("migrate: {targets} target(s)");
            }
        }
        provision::MigrateEvent::Finished(outcome) => {
            let line = outcome_line(outcome, verb);
            match &bar {
                Some(b) => {
                    if outcome.error.is_some() {
                        b.println(line);
                    }
                    b.set_message(outcome.target.clone());
                    b.inc(1);
                }
                None => eprintln!("migrate: {line}"),
            }
        }
    };
    let outcomes = provision::migrate(config, &options, &mut on_event).await?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let failed = provision::migrate::failed(&outcomes);
    let changed = outcomes
        .iter()
        .filter(|o| o.error.is_none() && !o.applied.is_empty())
        .count();
    for o in outcomes
        .iter()
        .filter(|o| o.error.is_none() && !o.applied.is_empty())
    {
        println!("{}", outcome_line(o, verb));
    }
    println!(
        "{} target(s): {changed} {}, {} up to date, {failed} failed",
        outcomes.len(),
        if options.dry_run {
            "with pending migrations"
        } else {
            "migrated"
        },
        outcomes.len() - changed - failed
    );
    if failed > 0 {
        for o in &outcomes {
            if let Some(e) = &o.error {
                eprintln!("FAILED {}: {e}", o.target);
            }
        }
        bail!("{failed} of {} target(s) failed", outcomes.len());
    }
    Ok(())
}

/// One line about one target: what was applied, or why it failed.
fn outcome_line(outcome: &provision::TargetOutcome, verb: &str) -> String {
    if let Some(e) = &outcome.error {
        return format!("{}: FAILED: {e}", outcome.target);
    }
    if outcome.applied.is_empty() {
        return format!("{}: up to date", outcome.target);
    }
    let list: Vec<String> = outcome
        .applied
        .iter()
        .map(|(db, v)| format!("{db}/{v}"))
        .collect();
    format!("{}: {verb} {}", outcome.target, list.join(", "))
}

/// `pgtenant migrate status`.
async fn migrate_status(config: &Config) -> Result<()> {
    for db in provision::migration_status(config).await? {
        println!(
            "{}: {} migration file(s), latest {}; template at {}",
            db.database,
            db.files.len(),
            db.files.last().map(String::as_str).unwrap_or("-"),
            db.template.as_deref().unwrap_or("-")
        );
        print_table(
            &["  version", "tenants", "pending"],
            db.versions
                .iter()
                .map(|v| {
                    vec![
                        format!("  {}", v.version.as_deref().unwrap_or("(none)")),
                        v.tenants.to_string(),
                        v.pending.to_string(),
                    ]
                })
                .collect(),
        );
    }
    Ok(())
}

/// Prints rows under a header, columns padded to their widest cell.
fn print_table(header: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row);
    }
}

/// Bytes as `12 kB`, `3.4 MB`, ...
fn human_size(bytes: i64) -> String {
    let mut value = bytes as f64;
    for unit in ["bytes", "kB", "MB", "GB"] {
        if value < 1024.0 {
            return if unit == "bytes" {
                format!("{bytes} {unit}")
            } else {
                format!("{value:.1} {unit}")
            };
        }
        value /= 1024.0;
    }
    format!("{value:.1} TB")
}

/// Prints each tenant's differences from the template; fails when any differ.
async fn drift(config: &Config, tenant: Option<&str>) -> Result<()> {
    let only = tenant.map(TenantId::parse).transpose()?;
    let report = provision::drift(config, only.as_ref()).await?;
    let mut drifted = 0;
    for t in &report {
        if t.differences.is_empty() {
            continue;
        }
        drifted += 1;
        println!("{} in {}:", t.tenant, t.database);
        for d in &t.differences {
            println!("  {d}");
        }
    }
    let checked = report.len();
    if drifted > 0 {
        bail!("{drifted} of {checked} tenant schemas differ from tenant_template");
    }
    println!("{checked} tenant schemas match tenant_template");
    Ok(())
}

/// Parses and checks tenant settings given on the command line.
fn parse_settings(text: &str) -> Result<serde_json::Value> {
    let value: serde_json::Value =
        serde_json::from_str(text).with_context(|| format!("--settings is not JSON: {text}"))?;
    provision::lifecycle::check_settings_change(&value).map_err(anyhow::Error::msg)?;
    Ok(value)
}

/// The TOML file in use: `--config`, else the default file when present.
fn config_path(given: Option<&Path>) -> Option<PathBuf> {
    match given {
        Some(p) => Some(p.to_path_buf()),
        None if Path::new(DEFAULT_CONFIG).exists() => Some(PathBuf::from(DEFAULT_CONFIG)),
        None => None,
    }
}

fn load_config(path: Option<&Path>) -> Result<Config> {
    match config_path(path) {
        Some(p) => Ok(Config::load(&p)?),
        None => Ok(Config::parse("", "built-in defaults")?),
    }
}

/// `pgtenant config convert FILE`: the TOML on stdout, warnings on stderr.
fn convert(ini: &Path) -> Result<()> {
    let (text, warnings) = pgbouncer_ini::convert(ini)?;
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    print!("{text}");
    Ok(())
}

/// `pgtenant serve --pgbouncer-ini FILE`: the TOML with the ini on top, each
/// key not carried over logged; SIGHUP reads both files again.
async fn serve_pgbouncer_ini(toml: Option<PathBuf>, ini: PathBuf) -> Result<()> {
    let sources = pgbouncer_ini::Sources {
        toml,
        pgbouncer_ini: Some(ini),
    };
    let read = move || -> Result<Config, pgbouncer_ini::LoadError> {
        let loaded = pgbouncer_ini::load(&sources)?;
        for w in &loaded.warnings {
            tracing::warn!(at = %w.origin, key = %w.key, "pgbouncer.ini: {}", w.message);
        }
        Ok(loaded.config)
    };
    let config = read()?;
    let source: ConfigSource = Arc::new(move || read().map_err(|e| e.to_string()));
    serve(config, Some(source)).await
}

async fn serve(config: Config, source: Option<ConfigSource>) -> Result<()> {
    if config.listen.addr.port() == 0 {
        bail!("listen.addr needs a port");
    }
    let proxy = Proxy::start(config).await?;
    if let Some(source) = source {
        proxy.set_config_source(source);
    }
    let grace = match wait_for_signal(&proxy).await? {
        Stop::Drain => {
            let grace = seconds(proxy.context().config().listen.shutdown_timeout);
            tracing::info!(
                ?grace,
                "draining: no new clients; open transactions may finish"
            );
            grace
        }
        Stop::Fast => {
            tracing::info!("SIGINT: closing every connection now");
            Duration::ZERO
        }
    };
    proxy.shutdown(grace).await;
    tracing::info!("pgtenant stopped");
    Ok(())
}

/// How to stop.
enum Stop {
    /// SIGTERM or the console's SHUTDOWN: let transactions finish first.
    Drain,
    /// SIGINT: close everything now.
    Fast,
}

/// Waits for SIGTERM, SIGINT or a console SHUTDOWN; SIGHUP meanwhile
/// reloads the configuration (a bad one is reported and the one in force stays).
async fn wait_for_signal(proxy: &Proxy) -> Result<Stop> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut hup = signal(SignalKind::hangup())?;
    let stopped = proxy.shutdown_token();
    loop {
        tokio::select! {
            r = tokio::signal::ctrl_c() => { r?; return Ok(Stop::Fast); }
            _ = term.recv() => return Ok(Stop::Drain),
            _ = stopped.cancelled() => return Ok(Stop::Drain),
            _ = hup.recv() => match proxy.reload() {
                Ok(_) => tracing::info!("SIGHUP: configuration reloaded"),
                Err(e) => tracing::warn!(error = %e, "SIGHUP: reload failed; keeping the configuration in force"),
            },
        }
    }
}
