//! Cancel keys: the proxy gives each client a key of its own and maps it to
//! the backend serving that client right now, so a CancelRequest reaches
//! exactly that backend and nothing else.

use std::sync::Arc;

use rand::Rng;

use crate::pool::{send_cancel, BackendAddr};

/// Where a client's cancel goes.
#[derive(Debug, Clone)]
struct Target {
    addr: Arc<BackendAddr>,
    key: (i32, i32),
}

/// Proxy-issued keys and their current backends.
#[derive(Default)]
pub struct CancelMap {
    keys: crate::HotMap<(i32, i32), Option<Target>>,
}

impl CancelMap {
    /// Issues a fresh key for a new client session.
    pub fn issue(&self) -> (i32, i32) {
        let mut rng = rand::thread_rng();
        loop {
            let key = (rng.gen_range(1..i32::MAX), rng.gen());
            if let dashmap::Entry::Vacant(slot) = self.keys.entry(key) {
                slot.insert(None);
                return key;
            }
        }
    }

    /// Points a key at the backend now serving its client.
    pub fn attach(&self, key: (i32, i32), addr: &Arc<BackendAddr>, backend_key: (i32, i32)) {
        if let Some(mut slot) = self.keys.get_mut(&key) {
            *slot = Some(Target {
                addr: Arc::clone(addr),
                key: backend_key,
            });
        }
    }

    /// Unpoints a key while its client holds no backend (transaction pooling):
    /// a cancel then has nothing to cancel.
    pub fn detach(&self, key: (i32, i32)) {
        if let Some(mut slot) = self.keys.get_mut(&key) {
            *slot = None;
        }
    }

    /// Forgets a key when its session ends.
    pub fn remove(&self, key: (i32, i32)) {
        self.keys.remove(&key);
    }

    /// Forwards a cancel for `key`; unknown keys are ignored, as PostgreSQL does.
    pub async fn cancel(&self, key: (i32, i32)) {
        let target = self.keys.get(&key).and_then(|t| t.clone());
        if let Some(t) = target {
            if let Err(e) = send_cancel(&t.addr, t.key).await {
                tracing::warn!(error = %e, "forwarding cancel request failed");
            }
        }
    }

    /// Number of live sessions holding keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True when no session holds a key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}
