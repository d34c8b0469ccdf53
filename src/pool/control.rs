//! What an operator can do to pools while the proxy runs (the admin
//! console's PAUSE, RESUME, RECONNECT, DISABLE, ENABLE and KILL; closing a
//! tenant's pools when it may not be served any more), and the
//! list of open server connections it shows. The pools consult these at
//! checkout and release; the console itself lives in `admin`.
//!
//! Costs on the hot path: one relaxed load at checkout (is anything
//! paused?) and one at release (the pool's generation); a server
//! connection's entry in the list is written when it opens and removed
//! when it closes, never in between.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::SystemTime;

use dashmap::{DashMap, DashSet};
use tokio::sync::watch;

use super::PoolKey;

/// Databases whose pools hand out no connections now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PauseSet {
    /// Every database is paused.
    pub all: bool,
    /// These databases are paused.
    pub databases: BTreeSet<String>,
}

impl PauseSet {
    /// Whether pools of `database` are paused.
    pub fn pauses(&self, database: &str) -> bool {
        self.all || self.databases.contains(database)
    }

    fn is_empty(&self) -> bool {
        !self.all && self.databases.is_empty()
    }
}

/// An open server connection, as the admin console lists it.
#[derive(Debug, Clone)]
pub struct ServerInfo {
    /// The pool it belongs to.
    pub pool: PoolKey,
    /// The server process id.
    pub pid: i32,
    /// Where the server is.
    pub host: String,
    /// Its port.
    pub port: u16,
    /// When it was opened.
    pub connected: SystemTime,
}

/// The pause state, the disabled databases, and the open server connections.
pub struct Controls {
    /// Fast check at checkout: true while anything is paused.
    any_paused: AtomicBool,
    pause: watch::Sender<PauseSet>,
    disabled: DashSet<String>,
    servers: Arc<DashMap<u64, ServerInfo>>,
    next_server: AtomicU64,
}

impl Default for Controls {
    fn default() -> Self {
        Controls {
            any_paused: AtomicBool::new(false),
            pause: watch::Sender::new(PauseSet::default()),
            disabled: DashSet::new(),
            servers: Arc::default(),
            next_server: AtomicU64::new(1),
        }
    }
}

/// Keeps a server connection in the list while it is open; dropping it
/// (the connection closed) takes it out.
#[derive(Debug)]
pub struct ServerRegistration {
    servers: Arc<DashMap<u64, ServerInfo>>,
    id: u64,
}

impl Drop for ServerRegistration {
    fn drop(&mut self) {
        self.servers.remove(&self.id);
    }
}

impl Controls {
    /// Pauses `database`, or every database when `None`.
    pub fn pause(&self, database: Option<&str>) {
        self.pause.send_modify(|p| match database {
            None => p.all = true,
            Some(db) => {
                p.databases.insert(db.to_string());
            }
        });
        self.any_paused.store(true, Relaxed);
    }

    /// Resumes `database`, or everything when `None`; false when it was not paused.
    pub fn resume(&self, database: Option<&str>) -> bool {
        let mut was = false;
        self.pause.send_modify(|p| match database {
            None => {
                was = !p.is_empty();
                *p = PauseSet::default();
            }
            Some(db) => was = p.databases.remove(db),
        });
        self.any_paused
            .store(!self.pause.borrow().is_empty(), Relaxed);
        was
    }

    /// Whether pools of `database` are paused now.
    pub fn is_paused(&self, database: &str) -> bool {
        self.any_paused.load(Relaxed) && self.pause.borrow().pauses(database)
    }

    /// Waits until pools of `database` are not paused. Cancel safe.
    pub async fn wait_resumed(&self, database: &str) {
        if !self.any_paused.load(Relaxed) {
            return;
        }
        let mut rx = self.pause.subscribe();
        // The sender lives as long as `self`, so this only ends resumed.
        let _ = rx.wait_for(|p| !p.pauses(database)).await;
    }

    /// Refuses new logins to `database` from now on.
    pub fn disable(&self, database: &str) {
        self.disabled.insert(database.to_string());
    }

    /// Accepts new logins to `database` again.
    pub fn enable(&self, database: &str) {
        self.disabled.remove(database);
    }

    /// Whether new logins to `database` are refused.
    pub fn is_disabled(&self, database: &str) -> bool {
        !self.disabled.is_empty() && self.disabled.contains(database)
    }

    /// Lists a newly opened server connection until the returned guard drops.
    pub fn register(&self, info: ServerInfo) -> ServerRegistration {
        let id = self.next_server.fetch_add(1, Relaxed);
        self.servers.insert(id, info);
        ServerRegistration {
            servers: Arc::clone(&self.servers),
            id,
        }
    }

    /// Every open server connection.
    pub fn servers(&self) -> Vec<ServerInfo> {
        self.servers.iter().map(|s| s.value().clone()).collect()
    }
}

impl super::Pools {
    /// Pause, disable and the server list.
    pub fn controls(&self) -> &Controls {
        &self.controls
    }

    /// The pools of `database` (all pools when `None`).
    fn pools_of(&self, database: Option<&str>) -> Vec<Arc<super::Pool>> {
        self.pools
            .iter()
            .filter(|p| database.is_none_or(|db| p.key().database == db))
            .map(|p| Arc::clone(p.value()))
            .collect()
    }

    /// Waits until every server connection of `database`'s pools (all pools
    /// when `None`) is idle, then closes them: PAUSE. Checkouts of those
    /// pools must already be paused. Cancel safe.
    pub async fn drain(&self, database: Option<&str>) {
        loop {
            let busy = self.pools_of(database).iter().any(|p| {
                let st = super::budget::lock(&p.state);
                st.open > st.idle.len()
            });
            if !busy {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        self.close_idle(database);
    }

    /// Closes the idle server connections of `database`'s pools (all when
    /// `None`); returns how many.
    pub fn close_idle(&self, database: Option<&str>) -> usize {
        let mut closed = 0;
        for pool in self.pools_of(database) {
            closed += pool.close_idle();
        }
        closed
    }

    /// RECONNECT: every server connection of `database`'s pools (all when
    /// `None`) is closed when next released; idle ones at once.
    pub fn reconnect(&self, database: Option<&str>) {
        for pool in self.pools_of(database) {
            pool.generation.fetch_add(1, Relaxed);
        }
        self.close_idle(database);
    }

    /// Closes the server connections of `tenant`'s pools and forgets the
    /// pools (the tenant may not be served any more): idle connections
    /// close now; those in use close when their client gives them back,
    /// or with their client. Returns how many idle ones were closed.
    pub fn close_tenant(&self, tenant: &crate::tenant::TenantId) -> usize {
        let pools: Vec<Arc<super::Pool>> = self
            .pools
            .iter()
            .filter(|p| p.key().tenant() == Some(tenant))
            .map(|p| Arc::clone(p.value()))
            .collect();
        let mut closed = 0;
        for pool in pools {
            self.pools.remove(&pool.key);
            pool.generation.fetch_add(1, Relaxed);
            closed += pool.close_idle();
        }
        closed
    }

    /// Server process ids of the idle connections, per pool.
    pub fn idle_pids(&self) -> std::collections::HashSet<i32> {
        self.pools
            .iter()
            .flat_map(|p| {
                let st = super::budget::lock(&p.value().state);
                st.idle.iter().map(|i| i.backend.key.0).collect::<Vec<_>>()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pause_and_resume_per_database_and_all() {
        let c = Controls::default();
        assert!(!c.is_paused("a"));
        c.pause(Some("a"));
        assert!(c.is_paused("a") && !c.is_paused("b"));
        assert!(c.resume(Some("a")));
        assert!(!c.is_paused("a"));
        assert!(!c.resume(Some("a")));
        c.pause(None);
        assert!(c.is_paused("b"));
        assert!(c.resume(None));
        assert!(!c.is_paused("b"));
        assert!(!c.resume(None));
    }

    #[tokio::test]
    async fn waiters_go_on_at_resume() {
        let c = Arc::new(Controls::default());
        c.pause(Some("a"));
        let waiter = tokio::spawn({
            let c = Arc::clone(&c);
            async move { c.wait_resumed("a").await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        c.resume(Some("a"));
        waiter.await.unwrap();
        c.wait_resumed("b").await;
    }

    #[test]
    fn registrations_leave_the_list_when_dropped() {
        let c = Controls::default();
        let key = PoolKey::for_tenant(
            crate::tenant::TenantId::parse("acme").unwrap(),
            "crm_db".into(),
            crate::tenant::AccessLevel::ReadWrite,
        );
        let info = ServerInfo {
            pool: key,
            pid: 7,
            host: "h".into(),
            port: 1,
            connected: SystemTime::now(),
        };
        let r = c.register(info);
        assert_eq!(c.servers().len(), 1);
        drop(r);
        assert!(c.servers().is_empty());
        c.disable("x");
        assert!(c.is_disabled("x"));
        c.enable("x");
        assert!(!c.is_disabled("x"));
    }
}
