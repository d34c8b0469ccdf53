//! SHOW POOLS, DATABASES, USERS, LISTS, VERSION, STATE, HELP and TENANTS:
//! the pools' and the registry's state in PgBouncer's columns.
//!
//! The mapping: PgBouncer's pool (database, user) is pgtenant's pool
//! (service database, tenant role `tenant_<id>_rw|ro`); its databases are
//! the service databases (plus the console's own `pgbouncer`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use super::rows::{int4, num, text, ResultSet, Type};
use super::CONSOLE_DATABASE;
use crate::config::PoolMode;
use crate::pool::PoolKey;
use crate::session::clients::ClientState;
use crate::session::Context;

/// Clients of one pool, by state.
#[derive(Debug, Default, Clone, Copy)]
pub struct ClientCounts {
    /// Active or idle (PgBouncer counts idle clients as active).
    pub active: u64,
    /// Waiting for a server connection.
    pub waiting: u64,
    /// The longest current wait.
    pub max_wait: Duration,
}

/// Client counts per pool, from the client list.
pub fn clients_per_pool(ctx: &Context) -> HashMap<PoolKey, ClientCounts> {
    let mut counts: HashMap<PoolKey, ClientCounts> = HashMap::new();
    for c in ctx.client_list.all() {
        let Some(pool) = &c.pool else { continue };
        let e = counts.entry(PoolKey::clone(pool)).or_default();
        match c.state() {
            ClientState::Waiting => {
                e.waiting += 1;
                let waited = c.in_state_for();
                e.max_wait = e.max_wait.max(waited);
            }
            ClientState::Active | ClientState::Idle => e.active += 1,
        }
    }
    counts
}

/// Console clients connected now.
fn console_clients(ctx: &Context) -> u64 {
    ctx.client_list
        .all()
        .iter()
        .filter(|c| c.pool.is_none())
        .count() as u64
}

/// The pool mode a pool's clients get.
pub fn pool_mode(ctx: &Context, key: &PoolKey) -> PoolMode {
    let config = ctx.config();
    key.tenant()
        .and_then(|id| ctx.registry.tenant(id.as_str()))
        .and_then(|t| t.pool_mode)
        .or_else(|| config.pool.database_pool_modes.get(&key.database).copied())
        .unwrap_or(config.pool.pool_mode)
}

/// A pool mode's name.
pub fn mode_name(mode: PoolMode) -> &'static str {
    match mode {
        PoolMode::Session => "session",
        PoolMode::Transaction => "transaction",
        PoolMode::Statement => "statement",
    }
}

const POOLS: &[(&str, Type)] = &[
    ("database", Type::Text),
    ("user", Type::Text),
    ("cl_active", Type::Int4),
    ("cl_waiting", Type::Int4),
    ("cl_active_cancel_req", Type::Int4),
    ("cl_waiting_cancel_req", Type::Int4),
    ("sv_active", Type::Int4),
    ("sv_active_cancel", Type::Int4),
    ("sv_being_canceled", Type::Int4),
    ("sv_idle", Type::Int4),
    ("sv_used", Type::Int4),
    ("sv_tested", Type::Int4),
    ("sv_login", Type::Int4),
    ("maxwait", Type::Int4),
    ("maxwait_us", Type::Int4),
    ("pool_mode", Type::Text),
];

/// SHOW POOLS: one row per pool, plus the console's.
pub fn pools(ctx: &Context) -> ResultSet {
    let mut rs = ResultSet::new(POOLS);
    let clients = clients_per_pool(ctx);
    let mut registered: HashMap<PoolKey, u64> = HashMap::new();
    for s in ctx.pools.controls().servers() {
        *registered.entry(s.pool).or_default() += 1;
    }
    let mut views = ctx.pools.views();
    views.sort_by_cached_key(|v| (v.key.database.clone(), v.key.user()));
    for v in views {
        let c = clients.get(&v.key).copied().unwrap_or_default();
        let logged_in = registered.get(&v.key).copied().unwrap_or(0) as usize;
        let active = logged_in.saturating_sub(v.idle);
        let login = v.open.saturating_sub(logged_in.max(v.idle));
        rs.push(vec![
            text(&v.key.database),
            text(v.key.user()),
            int4(c.active),
            int4(c.waiting),
            int4(0),
            int4(0),
            int4(active as u64),
            int4(0),
            int4(0),
            int4(v.idle as u64),
            int4(0),
            int4(0),
            int4(login as u64),
            int4(c.max_wait.as_secs()),
            int4(u64::from(c.max_wait.subsec_micros())),
            text(mode_name(pool_mode(ctx, &v.key))),
        ]);
    }
    rs.push(vec![
        text(CONSOLE_DATABASE),
        text(CONSOLE_DATABASE),
        int4(console_clients(ctx)),
        int4(0),
        int4(0),
        int4(0),
        int4(0),
        int4(0),
        int4(0),
        int4(0),
        int4(0),
        int4(0),
        int4(0),
        int4(0),
        int4(0),
        text("statement"),
    ]);
    rs
}

const DATABASES: &[(&str, Type)] = &[
    ("name", Type::Text),
    ("host", Type::Text),
    ("port", Type::Int4),
    ("database", Type::Text),
    ("force_user", Type::Text),
    ("pool_size", Type::Int4),
    ("min_pool_size", Type::Int4),
    ("reserve_pool", Type::Int4),
    ("pool_mode", Type::Text),
    ("max_connections", Type::Int4),
    ("current_connections", Type::Int4),
    ("paused", Type::Int4),
    ("disabled", Type::Int4),
];

/// SHOW DATABASES: one row per service database, plus `pgbouncer`.
pub fn databases(ctx: &Context) -> ResultSet {
    let config = ctx.config();
    let mut open: HashMap<String, u64> = HashMap::new();
    for v in ctx.pools.views() {
        *open.entry(v.key.database).or_default() += v.open as u64;
    }
    let controls = ctx.pools.controls();
    let mut rs = ResultSet::new(DATABASES);
    for db in &config.backend.databases {
        let mode = config.pool.database_pool_modes.get(db).copied();
        rs.push(vec![
            text(db),
            text(&config.backend.host),
            num(config.backend.port),
            text(db),
            None,
            int4(config.pool.default_pool_size as u64),
            int4(0),
            int4(0),
            mode.map(|m| mode_name(m).to_string()),
            int4(config.pool.max_db_connections as u64),
            int4(open.get(db).copied().unwrap_or(0)),
            int4(u64::from(controls.is_paused(db))),
            int4(u64::from(controls.is_disabled(db))),
        ]);
    }
    rs.push(vec![
        text(CONSOLE_DATABASE),
        None,
        num(config.listen.addr.port()),
        text(CONSOLE_DATABASE),
        text(CONSOLE_DATABASE),
        int4(2),
        int4(0),
        int4(0),
        text("statement"),
        int4(0),
        int4(0),
        int4(0),
        int4(0),
    ]);
    rs.rows.sort_by(|a, b| a[0].cmp(&b[0]));
    rs
}

/// The users SHOW USERS lists: console users, then the roles of the pools,
/// with the tenant's own pool mode when it sets one.
fn users(ctx: &Context) -> BTreeMap<String, Option<PoolMode>> {
    let config = ctx.config();
    let mut users: BTreeMap<String, Option<PoolMode>> = BTreeMap::new();
    for name in config
        .admin
        .admin_users
        .iter()
        .chain(&config.admin.stats_users)
    {
        users.insert(name.clone(), None);
    }
    for v in ctx.pools.views() {
        let mode = v
            .key
            .tenant()
            .and_then(|id| ctx.registry.tenant(id.as_str()))
            .and_then(|t| t.pool_mode);
        users.insert(v.key.user(), mode);
    }
    users
}

/// SHOW USERS.
pub fn show_users(ctx: &Context) -> ResultSet {
    let mut rs = ResultSet::new(&[("name", Type::Text), ("pool_mode", Type::Text)]);
    for (name, mode) in users(ctx) {
        rs.push(vec![text(name), mode.map(|m| mode_name(m).to_string())]);
    }
    rs
}

/// SHOW LISTS: how many of each thing exist.
pub fn lists(ctx: &Context) -> ResultSet {
    let config = ctx.config();
    let mut rs = ResultSet::new(&[("list", Type::Text), ("items", Type::Int4)]);
    let logged_in = ctx.client_list.len() as u64;
    let connected = ctx.clients.load(std::sync::atomic::Ordering::Relaxed) as u64;
    let servers = ctx.pools.server_connections() as u64;
    for (list, items) in [
        ("databases", config.backend.databases.len() as u64 + 1),
        ("users", users(ctx).len() as u64),
        ("pools", ctx.pools.len() as u64 + 1),
        ("free_clients", 0),
        ("used_clients", logged_in),
        ("login_clients", connected.saturating_sub(logged_in)),
        ("free_servers", 0),
        ("used_servers", servers),
        ("dns_names", 0),
        ("dns_zones", 0),
        ("dns_queries", 0),
        ("dns_pending", 0),
    ] {
        rs.push(vec![text(list), int4(items)]);
    }
    rs
}

/// SHOW VERSION.
pub fn version() -> ResultSet {
    let mut rs = ResultSet::new(&[("version", Type::Text)]);
    rs.push(vec![text(format!(
        "pgtenant {}",
        env!("CARGO_PKG_VERSION")
    ))]);
    rs
}

/// SHOW STATE: active, paused, suspended (yes/no), as later PgBouncers.
pub fn state(ctx: &Context) -> ResultSet {
    let controls = ctx.pools.controls();
    let config = ctx.config();
    let all_paused = config
        .backend
        .databases
        .iter()
        .all(|db| controls.is_paused(db));
    let yes = |b: bool| text(if b { "yes" } else { "no" });
    let mut rs = ResultSet::new(&[("key", Type::Text), ("value", Type::Text)]);
    rs.push(vec![text("active"), yes(!all_paused)]);
    rs.push(vec![text("paused"), yes(all_paused)]);
    rs.push(vec![text("suspended"), yes(false)]);
    rs
}

/// SHOW HELP: the commands, one per row.
pub fn help() -> ResultSet {
    let mut rs = ResultSet::new(&[("command", Type::Text)]);
    for line in [
        "SHOW HELP|CONFIG|DATABASES|POOLS|CLIENTS|SERVERS|USERS|VERSION|STATE",
        "SHOW STATS|STATS_TOTALS|STATS_AVERAGES|LISTS|TENANTS",
        "SET key = value",
        "RELOAD",
        "PAUSE [<db>]",
        "RESUME [<db>]",
        "RECONNECT [<db>]",
        "DISABLE <db>",
        "ENABLE <db>",
        "KILL <db>",
        "SUSPEND TENANT <id> [NOW]",
        "RESUME TENANT <id>",
        "SHUTDOWN",
    ] {
        rs.push(vec![text(line)]);
    }
    rs
}

/// SHOW TENANTS: one row per registered tenant.
pub fn tenants(ctx: &Context) -> ResultSet {
    let mut rs = ResultSet::new(&[
        ("tenant", Type::Text),
        ("status", Type::Text),
        ("tier", Type::Text),
        ("clients", Type::Int4),
        ("servers", Type::Int4),
        ("waiting", Type::Int4),
        ("queries_per_sec", Type::Numeric),
    ]);
    let mut per: BTreeMap<String, (u64, u64, u64)> = BTreeMap::new();
    for (key, c) in clients_per_pool(ctx) {
        let Some(tenant) = key.tenant() else { continue };
        let e = per.entry(tenant.as_str().to_string()).or_default();
        e.0 += c.active + c.waiting;
        e.2 += c.waiting;
    }
    for v in ctx.pools.views() {
        if let Some(tenant) = v.key.tenant() {
            per.entry(tenant.as_str().to_string()).or_default().1 += v.open as u64;
        }
    }
    let (deltas, secs) = ctx.stats_history.last_period();
    let mut queries: HashMap<String, u64> = HashMap::new();
    for (key, d) in deltas {
        if let Some(tenant) = key.tenant() {
            *queries.entry(tenant.as_str().to_string()).or_default() += d.query_count;
        }
    }
    let known: BTreeSet<String> = ctx
        .registry
        .all()
        .iter()
        .map(|t| t.id.to_string())
        .collect();
    for t in ctx.registry.all() {
        let id = t.id.as_str();
        let (clients, servers, waiting) = per.get(id).copied().unwrap_or_default();
        let qps = super::stats::per_second(queries.get(id).copied().unwrap_or(0), secs);
        rs.push(vec![
            text(id),
            text(status_name(t.status)),
            text(&t.tier),
            int4(clients),
            int4(servers),
            int4(waiting),
            num(qps),
        ]);
    }
    // Tenants gone from the registry whose clients are still connected.
    for (id, (clients, servers, waiting)) in per.into_iter().filter(|(id, _)| !known.contains(id)) {
        rs.push(vec![
            text(id),
            text("unknown"),
            None,
            int4(clients),
            int4(servers),
            int4(waiting),
            num(0),
        ]);
    }
    rs
}

fn status_name(s: crate::tenant::TenantStatus) -> &'static str {
    use crate::tenant::TenantStatus as S;
    match s {
        S::Provisioning => "provisioning",
        S::Active => "active",
        S::Suspended => "suspended",
        S::Dropping => "dropping",
    }
}
