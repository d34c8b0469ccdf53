//! Shared copies of values that many clients hold alike: their settings,
//! the name they logged in with, the pool they draw from. An idle client
//! keeps such values for its whole session and idle clients are the many;
//! one copy per distinct value, instead of one allocation per client, is
//! most of what a client costs beyond its socket.

use std::borrow::Borrow;
use std::collections::HashSet;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

/// A set of shared values. Those no holder keeps any more are swept out
/// when the set has doubled since the last sweep, so it stays about as
/// large as the number of distinct values in use.
pub struct Interner<T: ?Sized> {
    shared: Mutex<Option<Shared<T>>>,
}

struct Shared<T: ?Sized> {
    values: HashSet<Arc<T>, foldhash::fast::RandomState>,
    sweep_at: usize,
}

/// Sets at most this large are never swept.
const FIRST_SWEEP: usize = 64;

impl<T: ?Sized + Hash + Eq> Interner<T> {
    /// An empty set, usable as a `static`.
    pub const fn new() -> Interner<T> {
        Interner {
            shared: Mutex::new(None),
        }
    }

    /// The shared copy of `value`, made with `make` if there is none.
    pub fn get<Q>(&self, value: &Q, make: impl FnOnce() -> Arc<T>) -> Arc<T>
    where
        Arc<T>: Borrow<Q>,
        Q: ?Sized + Hash + Eq,
    {
        let mut guard = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        let set = guard.get_or_insert_with(|| Shared {
            values: HashSet::default(),
            sweep_at: FIRST_SWEEP,
        });
        if let Some(existing) = set.values.get(value) {
            return Arc::clone(existing);
        }
        if set.values.len() >= set.sweep_at {
            set.values.retain(|v| Arc::strong_count(v) > 1);
            set.sweep_at = (2 * set.values.len()).max(FIRST_SWEEP);
        }
        let made = make();
        set.values.insert(Arc::clone(&made));
        made
    }

    /// Distinct values in the set now (some perhaps held by nobody).
    pub fn len(&self) -> usize {
        let guard = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        guard.as_ref().map_or(0, |s| s.values.len())
    }

    /// True when the set holds no value.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<T: Hash + Eq + Clone> Interner<T> {
    /// The shared copy of `value`, cloned into the set if there is none.
    pub fn of(&self, value: &T) -> Arc<T> {
        self.get(value, || Arc::new(value.clone()))
    }
}

impl<T: ?Sized + Hash + Eq> Default for Interner<T> {
    fn default() -> Self {
        Interner::new()
    }
}

/// The shared copy of a string.
pub fn str(interner: &Interner<str>, value: &str) -> Arc<str> {
    interner.get(value, || Arc::from(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_values_share_one_copy() {
        let names = Interner::<str>::new();
        let a = str(&names, "alice");
        let b = str(&names, &String::from("alice"));
        let c = str(&names, "bob");
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &c));
        assert_eq!(names.len(), 2);
    }

    #[test]
    fn values_nobody_holds_are_swept() {
        let names = Interner::<str>::new();
        let kept = str(&names, "kept");
        for i in 0..2 * FIRST_SWEEP {
            drop(str(&names, &format!("gone-{i}")));
        }
        let new = str(&names, "new");
        let left = names.len();
        assert!(
            left <= FIRST_SWEEP + 2,
            "{left} kept of {}",
            2 * FIRST_SWEEP + 2
        );
        assert!(Arc::ptr_eq(&kept, &str(&names, "kept")));
        assert_eq!(&*new, "new");
    }
}
