//! Server-side prepared statements for transaction pooling: one server
//! statement per distinct (query text, parameter types) within a pool, shared
//! by every client of the pool, and the per-connection record of which of
//! them a server connection has prepared (bounded, least recently used first
//! out). The cache is per pool because the same text means different tables
//! under different tenants' `search_path`s.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{BufMut, Bytes, BytesMut};

/// Names are unique in the process, so a statement id never means two texts.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// One server-side statement.
#[derive(Debug)]
pub struct Statement {
    /// Process-unique id.
    pub id: u64,
    /// The name it has on servers: `pgtenant_<id>`.
    pub server_name: String,
    /// A complete Parse message that prepares it under `server_name`.
    pub parse: Bytes,
    /// Running it leaves session state on the connection (see `session::state`).
    pub stateful: bool,
    /// A server has accepted its Parse at least once, so a client's Parse of
    /// the same text can be answered without a server connection.
    pub validated: AtomicBool,
}

/// The statements of one pool, keyed by query text and parameter types.
#[derive(Default)]
pub struct StatementCache {
    by_text: Mutex<HashMap<(Bytes, Bytes), Arc<Statement>>>,
}

impl StatementCache {
    /// The statement for `query` with `param_types` (the raw Parse fields),
    /// created on first use; `stateful` is recorded then.
    pub fn get_or_create(
        &self,
        query: &[u8],
        param_types: &[u8],
        stateful: bool,
    ) -> Arc<Statement> {
        let mut map = match self.by_text.lock() {
            Ok(map) => map,
            Err(poisoned) => poisoned.into_inner(),
        };
        let key = (
            Bytes::copy_from_slice(query),
            Bytes::copy_from_slice(param_types),
        );
        Arc::clone(map.entry(key).or_insert_with(|| {
            let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
            let server_name = format!("pgtenant_{id}");
            let mut parse = BytesMut::with_capacity(query.len() + param_types.len() + 32);
            parse.put_u8(b'P');
            parse.put_u32((4 + server_name.len() + 1 + query.len() + 1 + param_types.len()) as u32);
            parse.put_slice(server_name.as_bytes());
            parse.put_u8(0);
            parse.put_slice(query);
            parse.put_u8(0);
            parse.put_slice(param_types);
            Arc::new(Statement {
                id,
                server_name,
                parse: parse.freeze(),
                stateful,
                validated: AtomicBool::new(false),
            })
        }))
    }

    /// The statement for this text and types if a server has accepted it.
    pub fn validated(&self, query: &[u8], param_types: &[u8]) -> Option<Arc<Statement>> {
        let map = match self.by_text.lock() {
            Ok(map) => map,
            Err(poisoned) => poisoned.into_inner(),
        };
        // Borrowed lookup without allocating a key.
        let found = map
            .iter()
            .find(|((q, t), _)| q.as_ref() == query && t.as_ref() == param_types)
            .map(|(_, s)| Arc::clone(s))?;
        found.validated.load(Ordering::Acquire).then_some(found)
    }

    /// Number of distinct statements.
    pub fn len(&self) -> usize {
        self.by_text.lock().map(|m| m.len()).unwrap_or(0)
    }

    /// True when no statement was prepared yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Which statements one server connection holds, least recently used first out.
#[derive(Debug, Default)]
pub struct PreparedSet {
    /// Statement id to the tick it was last used.
    used: HashMap<u64, u64>,
    tick: u64,
}

impl PreparedSet {
    /// Whether `id` is prepared; marks it used.
    pub fn touch(&mut self, id: u64) -> bool {
        self.tick += 1;
        match self.used.get_mut(&id) {
            Some(t) => {
                *t = self.tick;
                true
            }
            None => false,
        }
    }

    /// Records `id` as prepared.
    pub fn insert(&mut self, id: u64) {
        self.tick += 1;
        self.used.insert(id, self.tick);
    }

    /// Forgets `id` (its Parse failed or it was closed).
    pub fn remove(&mut self, id: u64) {
        self.used.remove(&id);
    }

    /// Forgets everything (the server dropped all its statements).
    pub fn clear(&mut self) {
        self.used.clear();
    }

    /// When more than `limit` are held, the least recently used one, removed.
    pub fn evict_over(&mut self, limit: usize) -> Option<u64> {
        if self.used.len() <= limit {
            return None;
        }
        let (&oldest, _) = self.used.iter().min_by_key(|(_, &t)| t)?;
        self.used.remove(&oldest);
        Some(oldest)
    }

    /// Number held.
    pub fn len(&self) -> usize {
        self.used.len()
    }

    /// True when none is held.
    pub fn is_empty(&self) -> bool {
        self.used.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_statement_per_text_and_types() {
        let cache = StatementCache::default();
        let a = cache.get_or_create(b"select $1", b"\0\x01\0\0\0\x17", false);
        let b = cache.get_or_create(b"select $1", b"\0\x01\0\0\0\x17", false);
        let c = cache.get_or_create(b"select $1", b"\0\0", false);
        assert_eq!(a.id, b.id);
        assert_ne!(a.id, c.id);
        assert_eq!(cache.len(), 2);
        let len = u32::from_be_bytes([a.parse[1], a.parse[2], a.parse[3], a.parse[4]]) as usize;
        assert_eq!(len + 1, a.parse.len());
        assert!(a.parse[5..].starts_with(a.server_name.as_bytes()));
    }

    #[test]
    fn lru_evicts_the_least_recently_used() {
        let mut set = PreparedSet::default();
        for id in 1..=3 {
            set.insert(id);
        }
        assert!(set.touch(1));
        assert_eq!(set.evict_over(3), None);
        set.insert(4);
        assert_eq!(set.evict_over(3), Some(2));
        assert!(!set.touch(2));
        assert_eq!(set.len(), 3);
    }
}
