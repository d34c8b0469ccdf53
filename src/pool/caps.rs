//! The limits on server connections beyond each pool's own size: in all
//! (`max_server_connections`), per database across every tenant's pools of
//! it (`max_db_connections`) and per PostgreSQL role across databases
//! (`max_user_connections`), and the counts they are checked against.
//! Plain data, kept under the budget's lock; who gets a freed connection
//! is decided in `budget`.

use std::collections::HashMap;

use crate::config::PoolConfig;

/// The limits in force; 0 means none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Server connections in all (`max_server_connections`).
    pub total: usize,
    /// Server connections of one database (`max_db_connections`).
    pub per_database: usize,
    /// Server connections of one role (`max_user_connections`).
    pub per_user: usize,
}

impl Limits {
    /// The limits a pool configuration sets.
    pub fn of(config: &PoolConfig) -> Limits {
        Limits {
            total: config.max_server_connections,
            per_database: config.max_db_connections,
            per_user: config.max_user_connections,
        }
    }
}

/// What a pool's connections count against: its database and its role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Holder<'a> {
    /// The database clients asked for.
    pub database: &'a str,
    /// The PostgreSQL role its connections log in as.
    pub user: &'a str,
}

/// Which limits keep a pool from opening one more connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Blocked {
    /// `max_server_connections` is reached.
    pub total: bool,
    /// The pool's database is at `max_db_connections`.
    pub database: bool,
    /// The pool's role is at `max_user_connections`.
    pub user: bool,
}

impl Blocked {
    /// Whether any limit is reached.
    pub fn any(self) -> bool {
        self.total || self.database || self.user
    }

    /// Whether closing a connection of `donor` lifts every limit that
    /// holds `taker` back (one step, when a reload left it above a limit).
    pub fn relieved_by(self, taker: Holder<'_>, donor: Holder<'_>) -> bool {
        self.any()
            && (!self.database || donor.database == taker.database)
            && (!self.user || donor.user == taker.user)
    }
}

/// Server connections open or opening: in all, per database, per role.
#[derive(Debug, Default)]
pub struct Counts {
    total: usize,
    by_database: ByName,
    by_user: ByName,
}

/// Counts by name; looked up at every release, hence the fast hash.
type ByName = HashMap<String, usize, foldhash::fast::RandomState>;

/// Whether `limit` is set and `count` (only counted then) reached it.
fn reached(limit: usize, count: impl FnOnce() -> usize) -> bool {
    limit > 0 && count() >= limit
}

/// Whether `limit` is set and `count` (only counted then) is above it.
fn above(limit: usize, count: impl FnOnce() -> usize) -> bool {
    limit > 0 && count() > limit
}

fn count(map: &ByName, key: &str) -> usize {
    map.get(key).copied().unwrap_or(0)
}

fn add(map: &mut ByName, key: &str) {
    match map.get_mut(key) {
        Some(n) => *n += 1,
        None => {
            map.insert(key.to_string(), 1);
        }
    }
}

fn remove(map: &mut ByName, key: &str) {
    if let Some(n) = map.get_mut(key) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            map.remove(key);
        }
    }
}

impl Counts {
    /// Connections in all.
    pub fn total(&self) -> usize {
        self.total
    }

    /// Connections of `database`.
    pub fn of_database(&self, database: &str) -> usize {
        count(&self.by_database, database)
    }

    /// Connections logged in as `user`.
    pub fn of_user(&self, user: &str) -> usize {
        count(&self.by_user, user)
    }

    /// Which of `limits` keep `who` from one more connection.
    pub fn blocked(&self, who: Holder<'_>, limits: Limits) -> Blocked {
        Blocked {
            total: reached(limits.total, || self.total),
            database: reached(limits.per_database, || self.of_database(who.database)),
            user: reached(limits.per_user, || self.of_user(who.user)),
        }
    }

    /// Whether `who` holds more than a limit allows (it was lowered).
    pub fn over(&self, who: Holder<'_>, limits: Limits) -> bool {
        above(limits.total, || self.total)
            || above(limits.per_database, || self.of_database(who.database))
            || above(limits.per_user, || self.of_user(who.user))
    }

    /// Counts one more connection of `who`.
    pub fn add(&mut self, who: Holder<'_>) {
        self.total += 1;
        add(&mut self.by_database, who.database);
        add(&mut self.by_user, who.user);
    }

    /// Counts one connection of `who` fewer.
    pub fn remove(&mut self, who: Holder<'_>) {
        self.total = self.total.saturating_sub(1);
        remove(&mut self.by_database, who.database);
        remove(&mut self.by_user, who.user);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CRM_A: Holder = Holder {
        database: "crm_db",
        user: "tenant_a_rw",
    };
    const CRM_B: Holder = Holder {
        database: "crm_db",
        user: "tenant_b_rw",
    };
    const PRODUCT_A: Holder = Holder {
        database: "product_db",
        user: "tenant_a_rw",
    };

    #[test]
    fn each_limit_counts_its_own_group() {
        let limits = Limits {
            total: 0,
            per_database: 2,
            per_user: 2,
        };
        let mut c = Counts::default();
        c.add(CRM_A);
        assert!(!c.blocked(CRM_B, limits).any());
        c.add(CRM_B);
        let crm = c.blocked(CRM_B, limits);
        assert!(crm.database && !crm.user && !crm.total);
        // Another database is not held back by crm_db's limit.
        assert!(!c.blocked(PRODUCT_A, limits).any());
        c.add(PRODUCT_A);
        let user = c.blocked(PRODUCT_A, limits);
        assert!(user.user && !user.database);
        assert_eq!((c.total(), c.of_user("tenant_a_rw")), (3, 2));
        c.remove(PRODUCT_A);
        assert!(!c.blocked(PRODUCT_A, limits).any());
        c.remove(CRM_A);
        c.remove(CRM_B);
        assert_eq!(c.total(), 0);
        assert!(c.by_database.is_empty() && c.by_user.is_empty());
    }

    #[test]
    fn only_a_pool_sharing_the_limit_relieves_it() {
        let limits = Limits {
            total: 0,
            per_database: 1,
            per_user: 0,
        };
        let mut c = Counts::default();
        c.add(CRM_A);
        let blocked = c.blocked(CRM_B, limits);
        assert!(blocked.relieved_by(CRM_B, CRM_A));
        assert!(!blocked.relieved_by(CRM_B, PRODUCT_A));
        assert!(!Blocked::default().relieved_by(CRM_B, CRM_A));
        let total = Blocked {
            total: true,
            ..Blocked::default()
        };
        assert!(total.relieved_by(CRM_B, PRODUCT_A));
    }

    #[test]
    fn above_a_lowered_limit_is_over() {
        let mut c = Counts::default();
        c.add(CRM_A);
        c.add(CRM_B);
        let lowered = Limits {
            per_database: 1,
            ..Limits::default()
        };
        assert!(c.over(CRM_A, lowered));
        assert!(!c.over(PRODUCT_A, lowered));
        assert!(!c.over(CRM_A, Limits::default()));
    }
}
