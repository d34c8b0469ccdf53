//! The list of logged-in clients, for the admin console's SHOW CLIENTS and
//! SHOW POOLS and its KILL. One small entry per client, written at login,
//! at checkout and at release only, never per message; removed when the
//! client leaves.

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::clock;

use dashmap::DashMap;

use super::bell::Bell;
use crate::intern::{self, Interner};
use crate::pool::PoolKey;

/// What a client is doing, as PgBouncer's SHOW CLIENTS says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientState {
    /// Holds a server connection (or is an admin console client).
    Active,
    /// Waits for a server connection (also while its database is paused).
    Waiting,
    /// Between transactions, holding no server connection (transaction
    /// and statement pooling).
    Idle,
}

impl ClientState {
    /// The state's name in SHOW CLIENTS.
    pub fn as_str(self) -> &'static str {
        match self {
            ClientState::Active => "active",
            ClientState::Waiting => "waiting",
            ClientState::Idle => "idle",
        }
    }

    fn from_u8(v: u8) -> ClientState {
        match v {
            1 => ClientState::Waiting,
            2 => ClientState::Idle,
            _ => ClientState::Active,
        }
    }
}

/// One logged-in client.
#[derive(Debug)]
pub struct ClientEntry {
    /// Unique per process; SHOW CLIENTS' `ptr`.
    pub id: u64,
    /// Where it connected from.
    pub peer: Peer,
    /// The pool it draws from (a copy shared by the pool's clients);
    /// `None` for admin console clients.
    pub pool: Option<Arc<PoolKey>>,
    /// The name it logged in with (a copy shared by the clients that
    /// logged in with it).
    pub user: Arc<str>,
    /// `clock` reading when it logged in.
    connected_us: u64,
    /// Whether it came over TLS.
    pub tls: bool,
    /// Pulled by KILL: its session ends at once.
    pub kill: Kill,
    /// Woken when the client may have to leave at its next transaction
    /// boundary (its tenant was suspended); it then asks the registry.
    pub boundary: Bell,
    state: AtomicU8,
    /// [`PARKED`] and [`PARK_REQUESTED`].
    park: AtomicU8,
    /// `clock` reading at its last state change.
    since_us: AtomicU64,
}

/// A client's kill switch (KILL, an eviction): a [`Bell`] that stays rung.
/// Its one waiter is the task serving the client, which polls it each time
/// it runs: a flag and a waker cost no lock there (a `CancellationToken`
/// takes two) and 24 bytes in the entry (a token's node is 128 more on the
/// heap).
#[derive(Debug, Default)]
pub struct Kill(Bell);

impl Kill {
    /// Ends the client's session; its task is woken.
    pub fn pull(&self) {
        self.0.ring();
    }

    /// Whether it was pulled.
    pub fn is_pulled(&self) -> bool {
        self.0.is_rung()
    }

    /// Resolves once it is pulled. One task at a time may wait: the last to
    /// poll is the one woken.
    pub async fn pulled(&self) {
        self.0.stays_rung().await
    }
}

/// The client waits in the parking lot, without a task.
const PARKED: u8 = 1;
/// The client was asked to park at its next chance.
const PARK_REQUESTED: u8 = 2;

impl ClientEntry {
    /// The database it named: its pool's (`pgbouncer` for the console).
    pub fn database(&self) -> &str {
        self.pool
            .as_ref()
            .map_or(crate::admin::CONSOLE_DATABASE, |p| p.database.as_str())
    }

    /// The tenant of its pool; `None` for passthrough and console clients.
    pub fn tenant(&self) -> Option<&crate::tenant::TenantId> {
        self.pool.as_deref().and_then(PoolKey::tenant)
    }

    /// When it logged in (wall clock, for display).
    pub fn connected(&self) -> SystemTime {
        clock::system(self.connected_us)
    }

    /// Its state now.
    pub fn state(&self) -> ClientState {
        ClientState::from_u8(self.state.load(Relaxed))
    }

    /// When it entered its current state (wall clock, for display).
    pub fn since(&self) -> SystemTime {
        clock::system(self.since_us.load(Relaxed))
    }

    /// How long it has been in its current state.
    pub fn in_state_for(&self) -> Duration {
        clock::age(self.since_us.load(Relaxed))
    }

    /// When it entered its current state, for deadlines.
    pub fn since_instant(&self) -> Instant {
        clock::instant(self.since_us.load(Relaxed))
    }

    /// Whether the client has been idle at least `idle` and could wait
    /// parked: it draws from a pool over a plain socket (TLS state cannot
    /// leave its task) and is neither parked nor asked to park already.
    pub fn may_park(&self, idle: Duration) -> bool {
        self.pool.is_some()
            && !self.tls
            && self.state() == ClientState::Idle
            && self.park.load(Relaxed) == 0
            && self.in_state_for() >= idle
    }

    /// Asks the client to park: it is woken through `boundary` and parks if
    /// it is still idle then.
    pub fn request_park(&self) {
        self.park.fetch_or(PARK_REQUESTED, Relaxed);
        self.boundary.ring();
    }

    /// Whether the client was asked to park; the request is used up.
    pub fn take_park_request(&self) -> bool {
        self.park.fetch_and(!PARK_REQUESTED, Relaxed) & PARK_REQUESTED != 0
    }

    /// Records that the client is parked (or no longer is).
    pub fn set_parked(&self, parked: bool) {
        if parked {
            self.park.fetch_or(PARKED, Relaxed);
        } else {
            self.park.fetch_and(!PARKED, Relaxed);
        }
    }

    /// Records a state change (at login, checkout and release).
    pub fn set_state(&self, state: ClientState) {
        self.set_state_at(state, clock::now_us());
    }

    /// Records a state change that happened at `clock` reading `at` (one
    /// taken already, so the change reads no clock of its own).
    pub fn set_state_at(&self, state: ClientState, at: u64) {
        self.since_us.store(at, Relaxed);
        self.state.store(state as u8, Relaxed);
    }
}

/// What a new entry says.
pub struct NewClient<'a> {
    /// See [`ClientEntry::peer`].
    pub peer: Peer,
    /// See [`ClientEntry::pool`].
    pub pool: Option<&'a PoolKey>,
    /// See [`ClientEntry::user`].
    pub user: &'a str,
    /// See [`ClientEntry::tls`].
    pub tls: bool,
    /// Its first state.
    pub state: ClientState,
}

/// Where a client connected from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// TCP, from this address.
    Tcp(SocketAddr),
    /// A Unix-domain socket.
    Unix,
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Tcp(addr) => addr.fmt(f),
            Peer::Unix => f.write_str("unix"),
        }
    }
}

/// The user names of listed clients, one copy each.
static USERS: Interner<str> = Interner::new();

/// Every logged-in client.
#[derive(Default)]
pub struct ClientList {
    next: AtomicU64,
    clients: DashMap<u64, Arc<ClientEntry>>,
}

/// Keeps a client in the list; dropping it takes the client out.
pub struct Listed<'a> {
    list: &'a ClientList,
    /// The entry.
    pub entry: Arc<ClientEntry>,
}

impl Drop for Listed<'_> {
    fn drop(&mut self) {
        self.list.clients.remove(&self.entry.id);
    }
}

impl ClientList {
    /// Adds a client until the returned guard drops.
    pub fn add(&self, new: NewClient<'_>) -> Listed<'_> {
        let entry = self.insert(new);
        Listed { list: self, entry }
    }

    /// Adds a client until [`ClientList::remove`] takes it out (for owners
    /// that outlive a borrow of the list, as parked clients do).
    pub fn insert(&self, new: NewClient<'_>) -> Arc<ClientEntry> {
        let id = self.next.fetch_add(1, Relaxed) + 1;
        let now = clock::now_us();
        let entry = Arc::new(ClientEntry {
            id,
            peer: new.peer,
            pool: new.pool.map(PoolKey::shared),
            user: intern::str(&USERS, new.user),
            connected_us: now,
            tls: new.tls,
            kill: Kill::default(),
            boundary: Default::default(),
            state: AtomicU8::new(new.state as u8),
            park: AtomicU8::new(0),
            since_us: AtomicU64::new(now),
        });
        self.clients.insert(id, Arc::clone(&entry));
        entry
    }

    /// Takes client `id` out of the list.
    pub fn remove(&self, id: u64) {
        self.clients.remove(&id);
    }

    /// Every client now.
    pub fn all(&self) -> Vec<Arc<ClientEntry>> {
        self.clients.iter().map(|c| Arc::clone(c.value())).collect()
    }

    /// Number of clients listed.
    pub fn len(&self) -> usize {
        self.clients.len()
    }

    /// True when no client is listed.
    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listed_while_held() {
        let list = ClientList::default();
        let listed = list.add(NewClient {
            peer: Peer::Unix,
            pool: None,
            user: "admin",
            tls: false,
            state: ClientState::Waiting,
        });
        assert_eq!(list.len(), 1);
        assert_eq!(listed.entry.state(), ClientState::Waiting);
        listed.entry.set_state(ClientState::Idle);
        assert_eq!(list.all()[0].state(), ClientState::Idle);
        drop(listed);
        assert!(list.is_empty());
    }
}
