//! Transaction and statement pooling: a client holds a server connection
//! only while it has a transaction (or, in statement mode, a statement)
//! under way; between them the connection serves other clients of the same
//! pool. Everything a client relies on across those switches is kept here:
//!
//! - named prepared statements: renamed to the pool's shared server names,
//!   prepared just before use on connections that lack them, closed by the
//!   proxy itself (see `pool::statements`, `protocol::expect`);
//! - reported parameters (`application_name`, `TimeZone`, ...): recorded from
//!   ParameterStatus and set again on the next connection when they differ;
//! - other session state (SET, LISTEN, temp tables, ...): the connection is
//!   cleaned with `server_reset_query` before anyone else gets it (`state`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::relay::NotificationGate;
use super::state::leaves_session_state;
use crate::config::PoolMode;
use crate::pool::{Backend, PreparedSet, Statement, StatementCache};
use crate::protocol::expect::{Expect, Expectations, Request, CLOSE_COMPLETE, PARSE_COMPLETE};
use crate::protocol::FrameReader;
use crate::stats::Meter;

/// Parameters that follow a client from connection to connection.
pub const TRACKED_PARAMS: &[&str] = &[
    "application_name",
    "client_encoding",
    "DateStyle",
    "IntervalStyle",
    "TimeZone",
    "standard_conforming_strings",
];

/// Largest Parse, Describe or Close message held whole; Bind is streamed.
const MAX_WHOLE_MESSAGE: usize = 16 * 1024 * 1024;
/// Largest buffer kept by a client between transactions.
const KEEP_BUFFER: usize = 16 * 1024;
/// Flush collected output once it is this large.
const FLUSH_AT: usize = 64 * 1024;

/// Why an active period ended.
#[derive(Debug, PartialEq, Eq)]
pub enum TxnEnd {
    /// The transaction is over and nothing is owed: the connection may go back.
    Idle,
    /// The client sent Terminate while the connection still owed it something.
    ClientTerminated,
    /// The client went away.
    ClientGone,
    /// The client sent something malformed.
    ClientCorrupt,
    /// The server went away.
    BackendGone,
    /// The server sent something malformed.
    BackendCorrupt,
    /// Statement mode and the client opened a transaction block.
    TransactionInStatementMode,
    /// The client sat inside a transaction longer than `idle_transaction_timeout`.
    IdleTransactionTimeout,
}

/// What one client keeps across connections.
pub struct ClientState {
    /// The client's named statements.
    pub statements: ClientStatements,
    /// The client's values of [`TRACKED_PARAMS`].
    pub params: super::settings::Settings,
    /// The client ran something that leaves session state on the connection.
    pub dirty: bool,
}

/// A client's named statements, by its names. The map is boxed and made
/// when the client first names one (a write through `DerefMut`; reads of
/// an unmade map see an empty one): most clients name none, and a parked
/// client's map then costs a pointer, not an empty map's 48 bytes.
#[allow(clippy::box_collection)]
#[derive(Default)]
pub struct ClientStatements(Option<Box<HashMap<String, Arc<Statement>>>>);

/// What a client that named no statement reads.
static NO_STATEMENTS: std::sync::LazyLock<HashMap<String, Arc<Statement>>> =
    std::sync::LazyLock::new(HashMap::new);

impl ClientStatements {
    /// Gives back what the map grew; an empty map goes altogether (a
    /// client about to wait parked).
    pub fn trim(&mut self) {
        match &mut self.0 {
            Some(map) if map.is_empty() => self.0 = None,
            Some(map) => map.shrink_to_fit(),
            None => {}
        }
    }
}

impl std::ops::Deref for ClientStatements {
    type Target = HashMap<String, Arc<Statement>>;

    fn deref(&self) -> &Self::Target {
        self.0.as_deref().unwrap_or(&NO_STATEMENTS)
    }
}

impl std::ops::DerefMut for ClientStatements {
    fn deref_mut(&mut self) -> &mut Self::Target {
        self.0.get_or_insert_with(Default::default)
    }
}

/// State both directions share during one active period.
struct Shared {
    expect: Mutex<Expectations>,
    prepared: Mutex<PreparedSet>,
    /// The client side is in the middle of a message or has unsent output.
    client_busy: AtomicBool,
    /// Wakes the server side to emit the proxy's own responses or re-check idleness.
    wake: super::bell::Bell,
    dirty: AtomicBool,
    params: Mutex<Vec<(String, String)>>,
    /// Statements whose Parse went to the server this period, by id.
    issued: Mutex<HashMap<u64, Arc<Statement>>>,
    /// The last ReadyForQuery said the connection is inside a transaction.
    in_transaction: AtomicBool,
    /// A synthetic response may be queued in `expect`: set under its lock
    /// with the push, cleared under it once none is, so the server side
    /// takes that lock for them only when there may be one.
    synthetic: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// Settings for one active period.
pub struct Period<'a, G> {
    /// Transaction or statement.
    pub mode: PoolMode,
    /// The pool's statement cache.
    pub cache: &'a StatementCache,
    /// `pool.max_prepared_statements`.
    pub max_prepared: usize,
    /// Filters notifications from other tenants.
    pub gate: &'a G,
    /// `pool.idle_transaction_timeout`, if set.
    pub idle_transaction_timeout: Option<std::time::Duration>,
    /// The pool's counters.
    pub meter: &'a Meter<'a>,
}

/// Relays from the client's next message until the connection is idle again.
/// `creader` holds at least that message's header.
pub async fn active<CR, CW, G>(
    crx: &mut CR,
    ctx: &mut CW,
    creader: &mut FrameReader,
    backend: &mut Backend,
    client: &mut ClientState,
    period: &Period<'_, G>,
) -> TxnEnd
where
    CR: AsyncRead + Unpin,
    CW: AsyncWrite + Unpin,
    G: NotificationGate,
{
    let Backend {
        stream,
        reader: breader,
        up,
        down,
        prepared,
        params: server_params,
        settled_for,
        owed,
        ..
    } = backend;
    let shared = Shared {
        expect: Mutex::new(std::mem::take(owed)),
        prepared: Mutex::new(std::mem::take(prepared)),
        client_busy: AtomicBool::new(true),
        wake: Default::default(),
        dirty: AtomicBool::new(false),
        params: Mutex::new(Vec::new()),
        issued: Mutex::new(HashMap::new()),
        in_transaction: AtomicBool::new(false),
        synthetic: AtomicBool::new(false),
    };
    let end = {
        let statements = &mut client.statements;
        let (mut brx, mut btx) = stream.split();
        up.clear();
        down.clear();
        tokio::select! {
            // Polled in this order: no random draw per poll.
            biased;
            end = client_side(crx, &mut btx, creader, up, &shared, statements, period) => end,
            end = server_side(&mut brx, ctx, breader, down, &shared, period) => end,
        }
    };
    // Buffers that a large transaction grew are given back.
    for buf in [&mut *up, &mut *down] {
        if buf.capacity() > KEEP_BUFFER {
            *buf = BytesMut::new();
        }
    }
    creader.shrink_to(1024);
    breader.shrink_to(KEEP_BUFFER);
    let mut expect = shared
        .expect
        .into_inner()
        .unwrap_or_else(|p| p.into_inner());
    if end != TxnEnd::Idle {
        expect.clear();
    }
    *owed = expect;
    *prepared = shared
        .prepared
        .into_inner()
        .unwrap_or_else(|p| p.into_inner());
    client.dirty |= shared.dirty.load(Ordering::Acquire);
    for (name, value) in shared
        .params
        .into_inner()
        .unwrap_or_else(|p| p.into_inner())
    {
        // The connection holds what it reported, whoever it serves next.
        if let Some(slot) = server_params.iter_mut().find(|(n, _)| *n == name) {
            value.clone_into(&mut slot.1);
            *settled_for = None;
        }
        client.params.set(&name, &value);
    }
    end
}

/// Client to server: rewrites statement names, adds Parses the connection
/// lacks, answers Close itself, and queues what the server will owe.
async fn client_side<R, W, G>(
    rx: &mut R,
    tx: &mut W,
    reader: &mut FrameReader,
    out: &mut BytesMut,
    shared: &Shared,
    statements: &mut ClientStatements,
    period: &Period<'_, G>,
) -> TxnEnd
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    // Counted locally, handed to the meter before each wait for the client.
    let mut received = 0;
    let mut requests = 0;
    loop {
        if reader.header().is_none() {
            if !out.is_empty() {
                if tx.write_all(out).await.is_err() {
                    return TxnEnd::BackendGone;
                }
                out.clear();
            }
            period.meter.received(std::mem::take(&mut received));
            period.meter.requested(std::mem::take(&mut requests));
            shared.client_busy.store(false, Ordering::Release);
            shared.wake.ring();
            // Only a client inside a transaction can be waited on here (an
            // idle one ends the period); it gets idle_transaction_timeout.
            let got = loop {
                let Some(limit) = period.idle_transaction_timeout else {
                    break reader.ensure(rx, 5).await;
                };
                match tokio::time::timeout(limit, reader.ensure(rx, 5)).await {
                    Ok(r) => break r,
                    // Idle inside a transaction, with nothing owed by the server.
                    Err(_)
                        if shared.in_transaction.load(Ordering::Acquire)
                            && lock(&shared.expect).is_idle() =>
                    {
                        return TxnEnd::IdleTransactionTimeout
                    }
                    Err(_) => {}
                }
            };
            match got {
                Ok(true) => {}
                _ => return TxnEnd::ClientGone,
            }
            shared.client_busy.store(true, Ordering::Release);
            continue;
        }
        let Some((tag, len)) = reader.header() else {
            continue;
        };
        if len < 4 {
            return TxnEnd::ClientCorrupt;
        }
        let total = len + 1;
        received += total;
        match tag {
            b'X' => {
                if !out.is_empty() && tx.write_all(out).await.is_err() {
                    return TxnEnd::BackendGone;
                }
                return TxnEnd::ClientTerminated;
            }
            b'P' | b'D' | b'C' => {
                if total > MAX_WHOLE_MESSAGE {
                    return TxnEnd::ClientCorrupt;
                }
                match reader.ensure(rx, total).await {
                    Ok(true) => {}
                    _ => return TxnEnd::ClientGone,
                }
                let msg = &reader.buffered()[..total];
                let ok = match tag {
                    b'P' => on_parse(msg, out, shared, statements, period),
                    b'D' => on_describe(msg, out, shared, statements, period),
                    _ => on_close(msg, out, shared, statements),
                };
                if !ok {
                    return TxnEnd::ClientCorrupt;
                }
                reader.consume(total);
            }
            b'B' => {
                // Portal and statement names come first; the parameters are streamed.
                let head = total.min(5 + 2048);
                match reader.ensure(rx, head).await {
                    Ok(true) => {}
                    _ => return TxnEnd::ClientGone,
                }
                let Some(used) = on_bind_head(
                    &reader.buffered()[..head],
                    total,
                    out,
                    shared,
                    statements,
                    period,
                ) else {
                    return TxnEnd::ClientCorrupt;
                };
                reader.consume(used);
                if let Err(end) = stream_body(rx, tx, reader, out, total - used).await {
                    return end;
                }
            }
            _ => {
                let request = match tag {
                    b'E' => Some(Request::Execute),
                    b'S' => Some(Request::Sync),
                    b'Q' => Some(Request::Query),
                    b'F' => Some(Request::FunctionCall),
                    _ => None,
                };
                if tag == b'Q' {
                    // The whole query text is needed to judge it; queries are held whole.
                    if total > MAX_WHOLE_MESSAGE {
                        return TxnEnd::ClientCorrupt;
                    }
                    match reader.ensure(rx, total).await {
                        Ok(true) => {}
                        _ => return TxnEnd::ClientGone,
                    }
                    let sql = &reader.buffered()[5..total];
                    if leaves_session_state(sql) {
                        shared.dirty.store(true, Ordering::Release);
                        if discards_statements(sql) {
                            statements.clear();
                        }
                    }
                }
                if let Some(r) = request {
                    lock(&shared.expect).push(Expect::Pass(r));
                    requests += u64::from(r != Request::Execute);
                }
                if let Err(end) = stream_body(rx, tx, reader, out, total).await {
                    return end;
                }
            }
        }
        forget(&mut lock(&shared.expect), shared);
        if out.len() >= FLUSH_AT {
            if tx.write_all(out).await.is_err() {
                return TxnEnd::BackendGone;
            }
            out.clear();
        }
    }
}

/// Moves `n` bytes of the current message from the reader (and the socket)
/// to the output, flushing as it fills.
async fn stream_body<R, W>(
    rx: &mut R,
    tx: &mut W,
    reader: &mut FrameReader,
    out: &mut BytesMut,
    mut n: usize,
) -> Result<(), TxnEnd>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    loop {
        let take = n.min(reader.buffered().len());
        out.extend_from_slice(&reader.buffered()[..take]);
        reader.consume(take);
        n -= take;
        if n == 0 {
            return Ok(());
        }
        if out.len() >= FLUSH_AT {
            tx.write_all(out).await.map_err(|_| TxnEnd::BackendGone)?;
            out.clear();
        }
        match reader.fill(rx).await {
            Ok(true) => {}
            _ => return Err(TxnEnd::ClientGone),
        }
    }
}

/// Applies forgotten statements (failed or skipped Parses) to the connection's record.
fn forget(expect: &mut Expectations, shared: &Shared) {
    let mut forgotten = expect.take_forgotten().peekable();
    if forgotten.peek().is_some() {
        let mut prepared = lock(&shared.prepared);
        for id in forgotten {
            prepared.remove(id);
        }
    }
}

/// Marks statements a server accepted as validated in the pool's cache.
fn confirm(expect: &mut Expectations, shared: &Shared) {
    let mut confirmed = expect.take_confirmed().peekable();
    if confirmed.peek().is_some() {
        let issued = lock(&shared.issued);
        for id in confirmed {
            if let Some(st) = issued.get(&id) {
                st.validated.store(true, Ordering::Release);
            }
        }
    }
}

/// Makes sure the connection has `statement`, adding a Parse (and evictions) before the current message.
fn ensure_prepared<G>(
    statement: &Arc<Statement>,
    out: &mut BytesMut,
    shared: &Shared,
    period: &Period<'_, G>,
) {
    if !lock(&shared.prepared).touch(statement.id) {
        prepare_on_server(
            statement,
            out,
            shared,
            period,
            Expect::InjectedParse(statement.id),
        );
    }
}

/// Sends `statement`'s Parse, owing `entry` for it, and closes the least
/// recently used statements beyond `max_prepared_statements`.
fn prepare_on_server<G>(
    statement: &Arc<Statement>,
    out: &mut BytesMut,
    shared: &Shared,
    period: &Period<'_, G>,
    entry: Expect,
) {
    let mut prepared = lock(&shared.prepared);
    prepared.insert(statement.id);
    out.extend_from_slice(&statement.parse);
    lock(&shared.issued).insert(statement.id, Arc::clone(statement));
    let mut expect = lock(&shared.expect);
    expect.push(entry);
    while let Some(old) = prepared.evict_over(period.max_prepared) {
        put_close_statement(out, &format!("pgtenant_{old}"));
        expect.push(Expect::InjectedClose);
    }
}

/// The server statement behind a client's statement name, if it has one.
fn client_statement<'a>(
    statements: &'a ClientStatements,
    name: &[u8],
) -> Option<&'a Arc<Statement>> {
    if name.is_empty() {
        return None;
    }
    std::str::from_utf8(name)
        .ok()
        .and_then(|n| statements.get(n))
}

fn put_close_statement(out: &mut BytesMut, name: &str) {
    out.put_u8(b'C');
    out.put_u32((4 + 1 + name.len() + 1) as u32);
    out.put_u8(b'S');
    out.put_slice(name.as_bytes());
    out.put_u8(0);
}

/// Answers a batch of named Parses followed by Sync without a server
/// connection, when every statement is one a server already accepted: drivers
/// that prepare synchronously (libpq's PQprepare) must not need a connection
/// for that, or clients waiting for one can deadlock with clients holding one.
/// Returns the bytes used and the reply, or `None` to go to a server.
pub fn answer_cached_parses(
    buffered: &[u8],
    cache: &StatementCache,
    statements: &mut ClientStatements,
) -> Option<(usize, BytesMut)> {
    let mut pos = 0;
    let mut found: Vec<(String, Arc<Statement>)> = Vec::new();
    loop {
        let header = buffered.get(pos..pos + 5)?;
        let total = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize + 1;
        if total < 5 {
            return None;
        }
        let msg = buffered.get(pos..pos + total)?;
        pos += total;
        match msg[0] {
            b'P' => {
                let mut body = &msg[5..];
                let name = cstr(&mut body)?;
                let query = cstr(&mut body)?;
                if name.is_empty() {
                    return None;
                }
                let name = std::str::from_utf8(name).ok()?.to_string();
                found.push((name, cache.validated(query, body)?));
            }
            b'S' if !found.is_empty() => break,
            _ => return None,
        }
    }
    let mut reply = BytesMut::with_capacity(found.len() * 5 + 6);
    for (name, statement) in found {
        statements.insert(name, statement);
        reply.put_u8(PARSE_COMPLETE);
        reply.put_u32(4);
    }
    reply.put_u8(b'Z');
    reply.put_u32(5);
    reply.put_u8(b'I');
    Some((pos, reply))
}

/// Whether a query is `DISCARD ALL` or `DISCARD PLANS`-like, which drops the
/// client's prepared statements.
fn discards_statements(sql: &[u8]) -> bool {
    let text = String::from_utf8_lossy(sql).to_ascii_lowercase();
    let mut words = text
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty());
    words.next() == Some("discard") && matches!(words.next(), Some("all"))
}

/// What a client's `DEALLOCATE` asks for.
#[derive(Debug, PartialEq, Eq)]
enum Deallocate {
    All,
    One(String),
}

/// Recognises a simple query that is exactly one `DEALLOCATE [PREPARE] name|ALL`.
fn parse_deallocate(sql: &[u8]) -> Option<Deallocate> {
    // Every simple query between transactions comes here: most are turned
    // away by their first word, before the text is checked as UTF-8.
    let start = sql.iter().position(|b| !b.is_ascii_whitespace())?;
    if !sql
        .get(start..start + 10)?
        .eq_ignore_ascii_case(b"deallocate")
    {
        return None;
    }
    let text = std::str::from_utf8(sql)
        .ok()?
        .trim()
        .trim_end_matches(';')
        .trim();
    let mut words = text.split_whitespace();
    if !words.next()?.eq_ignore_ascii_case("deallocate") {
        return None;
    }
    let mut name = words.next()?;
    if name.eq_ignore_ascii_case("prepare") {
        name = words.next()?;
    }
    if words.next().is_some() {
        return None;
    }
    if name.eq_ignore_ascii_case("all") {
        return Some(Deallocate::All);
    }
    // PostgreSQL folds unquoted names to lower case.
    match name.strip_prefix('"').and_then(|n| n.strip_suffix('"')) {
        Some(quoted) if !quoted.contains('"') => Some(Deallocate::One(quoted.to_string())),
        Some(_) => None,
        None if name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') => {
            Some(Deallocate::One(name.to_ascii_lowercase()))
        }
        None => None,
    }
}

/// Answers a client's `DEALLOCATE` between transactions: its statements are
/// the client's names for shared server statements, so they are forgotten
/// here and the server's stay for other clients. An unknown name gets the
/// error PostgreSQL gives (26000). Returns the bytes used and the reply.
pub fn answer_deallocate(
    buffered: &[u8],
    statements: &mut ClientStatements,
) -> Option<(usize, BytesMut)> {
    let header = buffered.get(..5)?;
    if header[0] != b'Q' {
        return None;
    }
    let total = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize + 1;
    let sql = buffered.get(5..total)?.strip_suffix(b"\0")?;
    let command = parse_deallocate(sql)?;
    let mut reply = BytesMut::with_capacity(64);
    let known = match &command {
        Deallocate::All => {
            statements.clear();
            true
        }
        Deallocate::One(name) => statements.remove(name).is_some(),
    };
    if known {
        let tag: &[u8] = match command {
            Deallocate::All => b"DEALLOCATE ALL\0",
            Deallocate::One(_) => b"DEALLOCATE\0",
        };
        reply.put_u8(b'C');
        reply.put_u32((4 + tag.len()) as u32);
        reply.put_slice(tag);
    } else {
        let name = match &command {
            Deallocate::One(n) => n.as_str(),
            Deallocate::All => "",
        };
        crate::protocol::ErrorFields {
            severity: crate::protocol::Severity::Error,
            code: crate::protocol::SqlState("26000"),
            message: format!("prepared statement \"{name}\" does not exist"),
        }
        .encode(&mut reply);
    }
    reply.put_u8(b'Z');
    reply.put_u32(5);
    reply.put_u8(b'I');
    Some((total, reply))
}

/// Splits a C string off `buf`.
fn cstr<'a>(buf: &mut &'a [u8]) -> Option<&'a [u8]> {
    let end = buf.iter().position(|&b| b == 0)?;
    let s = &buf[..end];
    *buf = &buf[end + 1..];
    Some(s)
}

fn on_parse<G>(
    msg: &[u8],
    out: &mut BytesMut,
    shared: &Shared,
    statements: &mut ClientStatements,
    period: &Period<'_, G>,
) -> bool {
    let mut body = &msg[5..];
    let (Some(name), Some(query)) = (cstr(&mut body), cstr(&mut body)) else {
        return false;
    };
    let types = body;
    let stateful = leaves_session_state(query);
    if name.is_empty() {
        if stateful {
            shared.dirty.store(true, Ordering::Release);
        }
        out.extend_from_slice(msg);
        lock(&shared.expect).push(Expect::Pass(Request::Parse));
        return true;
    }
    let Ok(name) = std::str::from_utf8(name) else {
        return false;
    };
    let statement = period.cache.get_or_create(query, types, stateful);
    statements.insert(name.to_string(), Arc::clone(&statement));
    if stateful {
        shared.dirty.store(true, Ordering::Release);
    }
    if lock(&shared.prepared).touch(statement.id) {
        push_synthetic(shared, PARSE_COMPLETE);
        return true;
    }
    prepare_on_server(
        &statement,
        out,
        shared,
        period,
        Expect::ClientParse(statement.id),
    );
    true
}

fn on_describe<G>(
    msg: &[u8],
    out: &mut BytesMut,
    shared: &Shared,
    statements: &ClientStatements,
    period: &Period<'_, G>,
) -> bool {
    let Some((&kind, mut rest)) = msg[5..].split_first() else {
        return false;
    };
    let Some(name) = cstr(&mut rest) else {
        return false;
    };
    let statement = if kind == b'S' {
        client_statement(statements, name)
    } else {
        None
    };
    match statement {
        Some(st) => {
            ensure_prepared(st, out, shared, period);
            out.put_u8(b'D');
            out.put_u32((4 + 1 + st.server_name.len() + 1) as u32);
            out.put_u8(b'S');
            out.put_slice(st.server_name.as_bytes());
            out.put_u8(0);
        }
        None => out.extend_from_slice(msg),
    }
    let request = if kind == b'S' {
        Request::DescribeStatement
    } else {
        Request::DescribePortal
    };
    lock(&shared.expect).push(Expect::Pass(request));
    true
}

fn on_close(
    msg: &[u8],
    out: &mut BytesMut,
    shared: &Shared,
    statements: &mut ClientStatements,
) -> bool {
    let Some((&kind, mut rest)) = msg[5..].split_first() else {
        return false;
    };
    let Some(name) = cstr(&mut rest) else {
        return false;
    };
    if kind == b'S' && !name.is_empty() {
        // The server statement stays for other clients; the client's name goes.
        if let Ok(name) = std::str::from_utf8(name) {
            statements.remove(name);
        }
        push_synthetic(shared, CLOSE_COMPLETE);
        return true;
    }
    out.extend_from_slice(msg);
    lock(&shared.expect).push(Expect::Pass(Request::Close));
    true
}

/// Handles a Bind's names; returns how many bytes of the message it used.
fn on_bind_head<G>(
    head: &[u8],
    total: usize,
    out: &mut BytesMut,
    shared: &Shared,
    statements: &ClientStatements,
    period: &Period<'_, G>,
) -> Option<usize> {
    let mut body = &head[5..];
    let portal = cstr(&mut body)?;
    let name = cstr(&mut body)?;
    let used = 5 + portal.len() + 1 + name.len() + 1;
    let statement = client_statement(statements, name);
    match statement {
        Some(st) => {
            ensure_prepared(st, out, shared, period);
            if st.stateful {
                shared.dirty.store(true, Ordering::Release);
            }
            let new_len = 4 + portal.len() + 1 + st.server_name.len() + 1 + (total - used);
            out.put_u8(b'B');
            out.put_u32(new_len as u32);
            out.put_slice(portal);
            out.put_u8(0);
            out.put_slice(st.server_name.as_bytes());
            out.put_u8(0);
        }
        // The unnamed statement, or a name the client never prepared: as sent
        // (the server reports the latter).
        None => out.extend_from_slice(&head[..used]),
    }
    lock(&shared.expect).push(Expect::Pass(Request::Bind));
    Some(used)
}

/// Server to client: drops responses to the proxy's own messages, inserts
/// its own answers in order, filters notifications, records parameters, and
/// ends the period when the connection owes nothing.
async fn server_side<R, W, G>(
    rx: &mut R,
    tx: &mut W,
    reader: &mut FrameReader,
    out: &mut BytesMut,
    shared: &Shared,
    period: &Period<'_, G>,
) -> TxnEnd
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
    G: NotificationGate,
{
    let mut last_status = b'I';
    loop {
        emit_synthetic(shared, out);
        let Some((tag, len)) = reader.header() else {
            if !out.is_empty() {
                period.meter.sent(out.len());
                if tx.write_all(out).await.is_err() {
                    return TxnEnd::ClientGone;
                }
                out.clear();
            }
            let idle = reader.buffered().is_empty()
                && lock(&shared.expect).is_idle()
                && !shared.client_busy.load(Ordering::Acquire);
            match (idle, period.mode, last_status) {
                (true, _, b'I') => return TxnEnd::Idle,
                (true, PoolMode::Statement, _) => return TxnEnd::TransactionInStatementMode,
                // Owed something, or inside a transaction: wait for either side.
                _ => {}
            }
            tokio::select! {
                // Polled in this order: no random draw per poll.
                biased;
                r = reader.fill(rx) => if !matches!(r, Ok(true)) { return TxnEnd::BackendGone },
                () = shared.wake.rung() => {}
            }
            continue;
        };
        if len < 4 {
            return TxnEnd::BackendCorrupt;
        }
        let total = len + 1;
        // One lock per server message: account for it, then apply what it settled.
        let forward = {
            let mut expect = lock(&shared.expect);
            let forward = expect.on_response(tag);
            forget(&mut expect, shared);
            confirm(&mut expect, shared);
            forward
        };
        match tag {
            b'Z' | b'S' | b'A' => {
                if total > 64 * 1024 {
                    return TxnEnd::BackendCorrupt;
                }
                match reader.ensure(rx, total).await {
                    Ok(true) => {}
                    _ => return TxnEnd::BackendGone,
                }
                let msg = &reader.buffered()[..total];
                let deliver = match tag {
                    b'Z' => {
                        last_status = msg.get(5).copied().unwrap_or(b'?');
                        shared
                            .in_transaction
                            .store(last_status != b'I', Ordering::Release);
                        true
                    }
                    b'S' => {
                        record_param(shared, &msg[5..]);
                        true
                    }
                    _ => match msg.get(5..9) {
                        // Boxed: notifications are rare and the gate's future
                        // large; inline, every period's future would be as large.
                        Some(pid) => {
                            let pid = i32::from_be_bytes([pid[0], pid[1], pid[2], pid[3]]);
                            Box::pin(period.gate.allows(pid)).await
                        }
                        None => false,
                    },
                };
                if forward && deliver {
                    out.extend_from_slice(&reader.buffered()[..total]);
                    if tag == b'Z' {
                        period.meter.ready(1, last_status);
                    }
                }
                reader.consume(total);
            }
            _ => {
                let mut n = total;
                loop {
                    let take = n.min(reader.buffered().len());
                    if forward {
                        out.extend_from_slice(&reader.buffered()[..take]);
                    }
                    reader.consume(take);
                    n -= take;
                    if n == 0 {
                        break;
                    }
                    if out.len() >= FLUSH_AT {
                        period.meter.sent(out.len());
                        if tx.write_all(out).await.is_err() {
                            return TxnEnd::ClientGone;
                        }
                        out.clear();
                    }
                    match reader.fill(rx).await {
                        Ok(true) => {}
                        _ => return TxnEnd::BackendGone,
                    }
                }
            }
        }
        if out.len() >= FLUSH_AT {
            period.meter.sent(out.len());
            if tx.write_all(out).await.is_err() {
                return TxnEnd::ClientGone;
            }
            out.clear();
        }
    }
}

/// Queues a response the proxy gives itself and wakes the server side to
/// emit it in its turn.
fn push_synthetic(shared: &Shared, tag: u8) {
    let mut expect = lock(&shared.expect);
    expect.push(Expect::Synthetic(tag));
    shared.synthetic.store(true, Ordering::Release);
    drop(expect);
    shared.wake.ring();
}

/// Writes the synthetic responses due now.
fn emit_synthetic(shared: &Shared, out: &mut BytesMut) {
    if !shared.synthetic.load(Ordering::Acquire) {
        return;
    }
    let mut expect = lock(&shared.expect);
    while let Some(tag) = expect.next_synthetic() {
        out.put_u8(tag);
        out.put_u32(4);
    }
    if !expect.owes_synthetic() {
        shared.synthetic.store(false, Ordering::Release);
    }
}

fn record_param(shared: &Shared, body: &[u8]) {
    let mut parts = body.split(|&b| b == 0);
    let (Some(name), Some(value)) = (parts.next(), parts.next()) else {
        return;
    };
    let (Ok(name), Ok(value)) = (std::str::from_utf8(name), std::str::from_utf8(value)) else {
        return;
    };
    if TRACKED_PARAMS.contains(&name) {
        lock(&shared.params).push((name.to_string(), value.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deallocate_forms() {
        assert_eq!(parse_deallocate(b"DEALLOCATE ALL"), Some(Deallocate::All));
        assert_eq!(
            parse_deallocate(b" deallocate prepare all ; "),
            Some(Deallocate::All)
        );
        assert_eq!(
            parse_deallocate(b"DEALLOCATE S_1"),
            Some(Deallocate::One("s_1".into()))
        );
        assert_eq!(
            parse_deallocate(b"DEALLOCATE \"S_1\""),
            Some(Deallocate::One("S_1".into()))
        );
        assert_eq!(parse_deallocate(b"DEALLOCATE a; SELECT 1"), None);
        assert_eq!(parse_deallocate(b"SELECT 1"), None);
        assert!(discards_statements(b"DISCARD ALL"));
        assert!(!discards_statements(b"DISCARD TEMP"));
    }
}
