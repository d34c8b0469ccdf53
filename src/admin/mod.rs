//! The admin console: the virtual database `pgbouncer` (alias `pgtenant`)
//! on the normal listener, speaking PgBouncer's commands and column names
//! so tools built for PgBouncer work, plus pgtenant's tenant commands.
//!
//! Login is the session's (`session::login` hands console users here once
//! authenticated); this module owns the command loop, the parser, the
//! result sets and the commands. Simple-query protocol only, as PgBouncer.

mod conns;
mod control;
pub mod parse;
pub mod rows;
mod settings;
mod show;
mod stats;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tracing::debug;

use crate::config::AdminConfig;
use crate::net::Stream;
use crate::protocol::{messages, read_message, ErrorFields, SqlState};
use crate::session::clients::ClientEntry;
use crate::session::Context;
use parse::{Command, Show};
use rows::ResultSet;

pub use stats::record_stats;

/// The console's database name.
pub const CONSOLE_DATABASE: &str = "pgbouncer";

/// Largest query the console reads.
const MAX_QUERY: usize = 64 * 1024;

/// Whether a startup `database` names the console.
pub fn is_console_database(database: &str) -> bool {
    database == CONSOLE_DATABASE || database == "pgtenant"
}

/// What a console user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Every command (`admin.admin_users`).
    Admin,
    /// SHOW commands only (`admin.stats_users`).
    Stats,
}

/// An authenticated console user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleUser {
    /// The name it logged in with.
    pub name: String,
    /// What it may do.
    pub role: Role,
}

impl ConsoleUser {
    /// The user's role under `config`; `Err(name)` when it has none.
    pub fn new(config: &AdminConfig, name: String) -> Result<ConsoleUser, String> {
        let role = if config.admin_users.contains(&name) {
            Role::Admin
        } else if config.stats_users.contains(&name) {
            Role::Stats
        } else {
            return Err(name);
        };
        Ok(ConsoleUser { name, role })
    }
}

/// Why a console command failed; the session goes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminError {
    code: SqlState,
    message: String,
}

impl AdminError {
    fn new(code: SqlState, message: impl Into<String>) -> AdminError {
        AdminError {
            code,
            message: message.into(),
        }
    }

    /// PgBouncer reports console errors as protocol violations (08P01).
    fn protocol(message: impl Into<String>) -> AdminError {
        AdminError::new(SqlState::PROTOCOL_VIOLATION, message)
    }
}

/// What a command produced.
enum Reply {
    Rows(ResultSet),
    Done(&'static str),
    Empty,
}

/// Serves a logged-in console client until it leaves or the proxy stops.
pub async fn serve(mut client: Stream, ctx: &Context, user: ConsoleUser, _entry: &ClientEntry) {
    let mut buf = BytesMut::with_capacity(1024);
    messages::auth_ok(&mut buf);
    for (name, value) in [
        ("server_version", env!("CARGO_PKG_VERSION")),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO"),
        ("TimeZone", "UTC"),
        ("standard_conforming_strings", "on"),
        ("integer_datetimes", "on"),
        ("application_name", ""),
    ] {
        messages::parameter_status(&mut buf, name, value);
    }
    let (pid, secret) = ctx.cancels.issue();
    ctx.cancels.remove((pid, secret));
    messages::backend_key_data(&mut buf, pid, secret);
    messages::ready_for_query(&mut buf, b'I');
    // Extended-protocol messages are refused once, then skipped up to Sync.
    let mut skipping = false;
    loop {
        if !buf.is_empty() {
            if client.write_all(&buf).await.is_err() {
                return;
            }
            buf.clear();
        }
        let msg = tokio::select! {
            m = read_message(&mut client, MAX_QUERY) => m,
            () = ctx.shutdown.cancelled() => break,
        };
        let Ok(msg) = msg else { return };
        match msg.tag {
            b'Q' => {
                let end = msg
                    .body
                    .iter()
                    .position(|&b| b == 0)
                    .unwrap_or(msg.body.len());
                let sql = String::from_utf8_lossy(&msg.body[..end]).into_owned();
                match execute(ctx, &user, &sql).await {
                    Ok(Reply::Rows(rs)) => rs.encode(&mut buf),
                    Ok(Reply::Done(tag)) => rows::command_complete(&mut buf, tag),
                    Ok(Reply::Empty) => rows::empty_query(&mut buf),
                    Err(e) => ErrorFields::error(e.code, e.message).encode(&mut buf),
                }
                messages::ready_for_query(&mut buf, b'I');
            }
            b'X' => break,
            b'S' if skipping => {
                skipping = false;
                messages::ready_for_query(&mut buf, b'I');
            }
            b'P' | b'B' | b'D' | b'E' | b'C' | b'H' | b'S' | b'F' => {
                if !skipping {
                    ErrorFields::error(
                        SqlState::FEATURE_NOT_SUPPORTED,
                        "extended query protocol not supported by admin console",
                    )
                    .encode(&mut buf);
                    skipping = true;
                }
            }
            other => {
                debug!(tag = other, "unexpected message on the admin console");
                ErrorFields::fatal(SqlState::PROTOCOL_VIOLATION, "unexpected message")
                    .encode(&mut buf);
                let _ = client.write_all(&buf).await;
                break;
            }
        }
    }
    let _ = client.shutdown().await;
}

/// Parses, checks and runs one query string.
async fn execute(ctx: &Context, user: &ConsoleUser, sql: &str) -> Result<Reply, AdminError> {
    let command = match parse::parse(sql) {
        Ok(Some(c)) => c,
        Ok(None) => return Ok(Reply::Empty),
        Err(e) => return Err(AdminError::protocol(e.to_string())),
    };
    if user.role == Role::Stats && !command.read_only() {
        return Err(AdminError::new(
            SqlState::INSUFFICIENT_PRIVILEGE,
            "admin access needed",
        ));
    }
    debug!(user = %user.name, ?command, "console command");
    let about_tenants = matches!(
        command,
        Command::Show(Show::Tenants) | Command::SuspendTenant { .. } | Command::ResumeTenant(_)
    );
    if about_tenants && ctx.config().tenants.passthrough() {
        return Err(AdminError::new(
            SqlState::FEATURE_NOT_SUPPORTED,
            "tenant features are off (tenants.mode = \"passthrough\")",
        ));
    }
    Ok(match command {
        Command::Show(what) => Reply::Rows(show(ctx, what)),
        Command::Pause(db) => Reply::Done(control::pause(ctx, db.as_deref()).await?),
        Command::Resume(db) => Reply::Done(control::resume(ctx, db.as_deref())?),
        Command::Reconnect(db) => Reply::Done(control::reconnect(ctx, db.as_deref())?),
        Command::Disable(db) => Reply::Done(control::disable(ctx, &db, true)?),
        Command::Enable(db) => Reply::Done(control::disable(ctx, &db, false)?),
        Command::Kill(db) => Reply::Done(control::kill(ctx, &db)?),
        Command::Reload => Reply::Done(control::reload(ctx)?),
        Command::Set { key, value } => Reply::Done(control::set(ctx, &key, &value)?),
        Command::Shutdown => Reply::Done(control::shutdown(ctx)),
        Command::SuspendTenant { id, now } => {
            Reply::Done(control::suspend_tenant(ctx, &id, now).await?)
        }
        Command::ResumeTenant(id) => Reply::Done(control::resume_tenant(ctx, &id).await?),
    })
}

fn show(ctx: &Context, what: Show) -> ResultSet {
    match what {
        Show::Pools => show::pools(ctx),
        Show::Stats => stats::stats(ctx),
        Show::StatsTotals => stats::stats_totals(ctx),
        Show::StatsAverages => stats::stats_averages(ctx),
        Show::Clients => conns::clients(ctx),
        Show::Servers => conns::servers(ctx),
        Show::Databases => show::databases(ctx),
        Show::Users => show::show_users(ctx),
        Show::Config => settings::show_config(&ctx.config()),
        Show::Lists => show::lists(ctx),
        Show::Version => show::version(),
        Show::State => show::state(ctx),
        Show::Tenants => show::tenants(ctx),
        Show::Help => show::help(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_come_from_the_lists() {
        let config = AdminConfig {
            admin_users: vec!["root".into()],
            stats_users: vec!["watcher".into(), "root".into()],
            stats_period: 15.0,
        };
        assert_eq!(
            ConsoleUser::new(&config, "root".into()).unwrap().role,
            Role::Admin
        );
        assert_eq!(
            ConsoleUser::new(&config, "watcher".into()).unwrap().role,
            Role::Stats
        );
        assert_eq!(ConsoleUser::new(&config, "eve".into()), Err("eve".into()));
        assert!(is_console_database("pgbouncer") && is_console_database("pgtenant"));
        assert!(!is_console_database("crm_db"));
    }
}
