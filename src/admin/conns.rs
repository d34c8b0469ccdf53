//! SHOW CLIENTS and SHOW SERVERS: one row per client or server connection,
//! in PgBouncer's columns. A client's `user` is its pool's tenant role, so
//! clients join to SHOW POOLS rows; the name it logged in with is not a
//! PgBouncer column and is shown in `application_name`'s place only for
//! console clients (whose pool is `pgbouncer`).

use super::rows::{int4, num, text, timestamp, Cell, ResultSet, Type};
use crate::session::clients::Peer;
use crate::session::Context;

const CONNS: &[(&str, Type)] = &[
    ("type", Type::Text),
    ("user", Type::Text),
    ("database", Type::Text),
    ("state", Type::Text),
    ("addr", Type::Text),
    ("port", Type::Int4),
    ("local_addr", Type::Text),
    ("local_port", Type::Int4),
    ("connect_time", Type::Text),
    ("request_time", Type::Text),
    ("wait", Type::Int4),
    ("wait_us", Type::Int4),
    ("close_needed", Type::Int4),
    ("ptr", Type::Text),
    ("link", Type::Text),
    ("remote_pid", Type::Int4),
    ("tls", Type::Text),
    ("application_name", Type::Text),
];

/// Address and port; a Unix peer is `unix` with port 0.
fn split_peer(peer: Peer) -> (String, u16) {
    match peer {
        Peer::Tcp(a) => (a.ip().to_string(), a.port()),
        Peer::Unix => ("unix".to_string(), 0),
    }
}

/// SHOW CLIENTS.
pub fn clients(ctx: &Context) -> ResultSet {
    let listen = ctx.config().listen.addr;
    let mut rs = ResultSet::new(CONNS);
    let mut all = ctx.client_list.all();
    all.sort_by_key(|c| c.id);
    for c in all {
        let (addr, port) = split_peer(c.peer);
        let user = match &c.pool {
            Some(pool) => pool.user(),
            None => c.user.to_string(),
        };
        let state = c.state();
        let (wait, wait_us) = match state {
            crate::session::clients::ClientState::Waiting => {
                let waited = c.in_state_for();
                (waited.as_secs(), u64::from(waited.subsec_micros()))
            }
            _ => (0, 0),
        };
        let row: Vec<Cell> = vec![
            text("C"),
            text(user),
            text(c.database()),
            text(state.as_str()),
            text(addr),
            num(port),
            text(listen.ip().to_string()),
            num(listen.port()),
            text(timestamp(c.connected())),
            text(timestamp(c.since())),
            int4(wait),
            int4(wait_us),
            int4(0),
            text(format!("0x{:x}", c.id)),
            text(""),
            int4(0),
            text(if c.tls { "TLS" } else { "" }),
            text(if c.pool.is_none() { &c.user } else { "" }),
        ];
        rs.push(row);
    }
    rs
}

/// SHOW SERVERS: `idle` connections wait in their pool, `active` ones serve a client.
pub fn servers(ctx: &Context) -> ResultSet {
    let idle = ctx.pools.idle_pids();
    let mut rs = ResultSet::new(CONNS);
    let mut all = ctx.pools.controls().servers();
    all.sort_by_key(|s| s.connected);
    for s in all {
        let state = if idle.contains(&s.pid) {
            "idle"
        } else {
            "active"
        };
        let connected = timestamp(s.connected);
        rs.push(vec![
            text("S"),
            text(s.pool.user()),
            text(&s.pool.database),
            text(state),
            text(&s.host),
            num(s.port),
            text(""),
            int4(0),
            text(&connected),
            text(connected),
            int4(0),
            int4(0),
            int4(0),
            text(format!("0x{:x}", s.pid)),
            text(""),
            num(s.pid),
            text(""),
            text(""),
        ]);
    }
    rs
}
