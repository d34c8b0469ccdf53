//! Limits on server connections beyond each pool's own size, with
//! PgBouncer's names: `max_db_connections` (one database, all tenants'
//! pools of it) and `max_user_connections` (one role, all databases),
//! checked against what PostgreSQL itself shows in `pg_stat_activity`.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use pgtenant::config::{Config, PoolMode};
use pgtenant::server::Proxy;

const LIMIT: Duration = Duration::from_secs(15);

fn rw(tenant: &str) -> String {
    format!("tenant_{tenant}_rw")
}

/// Server sessions of `roles` (to `database`, or to any database).
async fn sessions(roles: &[String], database: Option<&str>) -> i64 {
    admin("postgres")
        .await
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = ANY($1) \
             AND ($2::text IS NULL OR datname = $2)",
            &[&roles, &database],
        )
        .await
        .unwrap()
        .get(0)
}

/// Sessions of `roles` (to `database`, or to any) that PostgreSQL shows
/// and the proxy still holds open after looking: a session the proxy has
/// just closed may linger in `pg_stat_activity` while its process exits,
/// and is not one the proxy holds.
async fn held(proxy: &Proxy, roles: &[String], database: Option<&str>) -> i64 {
    let pids: Vec<i32> = admin("postgres")
        .await
        .query(
            "SELECT pid FROM pg_stat_activity WHERE usename = ANY($1) \
             AND ($2::text IS NULL OR datname = $2)",
            &[&roles, &database],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let open: std::collections::HashSet<i32> = proxy
        .context()
        .pools
        .controls()
        .servers()
        .iter()
        .map(|s| s.pid)
        .collect();
    pids.iter().filter(|p| open.contains(p)).count() as i64
}

/// Waits (bounded) until PostgreSQL shows at most `most` sessions of
/// `roles` (those the proxy closed last have exited).
async fn settles_at_most(roles: &[String], database: Option<&str>, most: i64) -> bool {
    eventually(LIMIT, || async { sessions(roles, database).await <= most }).await
}

fn limited(database: usize, user: usize) -> Config {
    let mut config = config();
    config.pool.pool_mode = PoolMode::Transaction;
    config.pool.default_pool_size = 5;
    config.pool.max_db_connections = database;
    config.pool.max_user_connections = user;
    config
}

/// A client of `tenant` on `database`.
async fn client(proxy: &Proxy, tenant: &str, database: &str) -> tokio_postgres::Client {
    connect(
        proxy,
        &format!("alice@{tenant}"),
        "alice-pw",
        &format!("dbname={database}"),
    )
    .await
    .unwrap_or_else(|e| panic!("{tenant} logs in to {database}: {e}"))
}

/// A client of `tenant` on `database` that holds a server connection
/// inside an open transaction.
async fn holder(proxy: &Proxy, tenant: &str, database: &str) -> tokio_postgres::Client {
    let c = client(proxy, tenant, database).await;
    c.batch_execute("BEGIN; SELECT 1").await.unwrap();
    c
}

/// Clients waiting in `tenant`'s pools, as the proxy counts them.
fn waiting(proxy: &Proxy, tenant: &str) -> usize {
    proxy
        .context()
        .pools
        .views()
        .iter()
        .filter(|v| v.key.tenant().is_some_and(|t| t.as_str() == tenant))
        .map(|v| v.waiting)
        .sum()
}

/// `clients` clients per (tenant, database) run `rounds` short queries
/// each; returns the errors, as "SQLSTATE message".
async fn hammer(
    proxy: &Arc<Proxy>,
    who: &[(&str, &str)],
    clients: usize,
    rounds: usize,
) -> Vec<String> {
    let mut tasks = Vec::new();
    for &(tenant, database) in who {
        for _ in 0..clients {
            let proxy = Arc::clone(proxy);
            let (tenant, database) = (tenant.to_string(), database.to_string());
            tasks.push(tokio::spawn(async move {
                let c = client(&proxy, &tenant, &database).await;
                for _ in 0..rounds {
                    c.batch_execute("SELECT pg_sleep(0.005)").await?;
                }
                Ok::<(), tokio_postgres::Error>(())
            }));
        }
    }
    let mut failed = Vec::new();
    for t in tasks {
        if let Err(e) = t.await.unwrap() {
            failed.push(format!("{} {e}", sqlstate(&e)));
        }
    }
    failed
}

/// Samples `count` until `stop`; returns the largest value seen.
fn sample<F, Fut>(stop: Arc<AtomicBool>, count: F) -> tokio::task::JoinHandle<i64>
where
    F: Fn() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = i64> + Send,
{
    tokio::spawn(async move {
        let mut peak = 0;
        while !stop.load(Ordering::Relaxed) {
            peak = peak.max(count().await);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        peak
    })
}

#[tokio::test]
async fn max_db_connections_caps_one_database_across_tenants() {
    let config = limited(2, 0);
    tenant(&config, "lim_db_a").await;
    tenant(&config, "lim_db_b").await;
    let proxy = Arc::new(start_proxy(config).await);
    let roles = vec![rw("lim_db_a"), rw("lim_db_b")];

    let stop = Arc::new(AtomicBool::new(false));
    let in_postgres = sample(Arc::clone(&stop), {
        let (roles, proxy) = (roles.clone(), Arc::clone(&proxy));
        move || {
            let (roles, proxy) = (roles.clone(), Arc::clone(&proxy));
            async move { held(&proxy, &roles, Some("crm_db")).await }
        }
    });
    let in_proxy = sample(Arc::clone(&stop), {
        let proxy = Arc::clone(&proxy);
        move || {
            let n = proxy.context().pools.server_connections_of("crm_db", "").0;
            async move { n as i64 }
        }
    });
    let crm = [("lim_db_a", "crm_db"), ("lim_db_b", "crm_db")];
    // Meanwhile the cap of crm_db does not hold product_db back.
    let product = async {
        let held = holder(&proxy, "lim_db_a", "product_db").await;
        let other = client(&proxy, "lim_db_b", "product_db").await;
        assert_eq!(one_value(&other, "SELECT 1").await, "1");
        (held, other)
    };
    let (failed, _product) = tokio::join!(hammer(&proxy, &crm, 4, 25), product);
    stop.store(true, Ordering::Relaxed);
    let (peak_pg, peak_proxy) = (in_postgres.await.unwrap(), in_proxy.await.unwrap());

    assert!(failed.is_empty(), "clients were not served: {failed:?}");
    assert!(
        peak_pg <= 2,
        "PostgreSQL saw {peak_pg} tenant sessions on crm_db"
    );
    assert!(peak_proxy <= 2, "the proxy held {peak_proxy} on crm_db");
    assert_eq!(peak_proxy, 2, "the load reached the cap");
    assert_eq!(sessions(&roles, Some("product_db")).await, 2);
}

#[tokio::test]
async fn a_client_held_back_by_max_db_connections_is_served_at_release() {
    let config = limited(2, 0);
    tenant(&config, "lim_wait_a").await;
    tenant(&config, "lim_wait_b").await;
    let proxy = Arc::new(start_proxy(config).await);
    // Logged in first: a login takes a server connection too.
    let waiter = client(&proxy, "lim_wait_b", "crm_db").await;
    let product = client(&proxy, "lim_wait_b", "product_db").await;
    let first = holder(&proxy, "lim_wait_a", "crm_db").await;
    let _second = holder(&proxy, "lim_wait_a", "crm_db").await;

    let query = tokio::spawn(async move {
        let pid = one_value(&waiter, "SELECT pg_backend_pid()").await;
        (waiter, pid)
    });
    assert!(
        eventually(LIMIT, || async { waiting(&proxy, "lim_wait_b") == 1 }).await,
        "the other tenant's client waits at the cap"
    );
    assert!(!query.is_finished(), "served beyond max_db_connections");
    // Another database is not held back by crm_db's limit.
    assert_eq!(one_value(&product, "SELECT 1").await, "1");

    first.batch_execute("COMMIT").await.unwrap();
    let (waiter, _) = tokio::time::timeout(LIMIT, query)
        .await
        .expect("the waiter is served once a connection is released")
        .unwrap();
    let roles = vec![rw("lim_wait_a"), rw("lim_wait_b")];
    assert!(settles_at_most(&roles, Some("crm_db"), 2).await);
    assert_eq!(one_value(&waiter, "SELECT 2").await, "2");
}

#[tokio::test]
async fn max_db_connections_held_gives_53300_after_query_wait_timeout() {
    let mut config = limited(1, 0);
    config.pool.query_wait_timeout = 1.0;
    tenant(&config, "lim_to_a").await;
    tenant(&config, "lim_to_b").await;
    let proxy = start_proxy(config).await;
    let waiter = client(&proxy, "lim_to_b", "crm_db").await;
    let held = holder(&proxy, "lim_to_a", "crm_db").await;
    let e = waiter.batch_execute("SELECT 1").await.unwrap_err();
    assert_eq!(sqlstate(&e), "53300", "{e}");
    held.batch_execute("COMMIT").await.unwrap();
    // Free again, the other tenant gets in.
    let again = client(&proxy, "lim_to_b", "crm_db").await;
    assert_eq!(one_value(&again, "SELECT 1").await, "1");
}

#[tokio::test]
async fn an_idle_connection_moves_to_a_tenant_held_back_by_the_cap() {
    let mut config = limited(2, 0);
    config.pool.query_wait_timeout = 3.0;
    tenant(&config, "lim_idle_a").await;
    tenant(&config, "lim_idle_b").await;
    let proxy = start_proxy(config).await;
    // Two transactions at once leave two idle connections in a's pool.
    let one = holder(&proxy, "lim_idle_a", "crm_db").await;
    let two = holder(&proxy, "lim_idle_a", "crm_db").await;
    one.batch_execute("COMMIT").await.unwrap();
    two.batch_execute("COMMIT").await.unwrap();
    assert_eq!(sessions(&[rw("lim_idle_a")], Some("crm_db")).await, 2);

    let taker = client(&proxy, "lim_idle_b", "crm_db").await;
    assert_eq!(one_value(&taker, "SELECT 1").await, "1");
    let roles = vec![rw("lim_idle_a"), rw("lim_idle_b")];
    assert!(settles_at_most(&roles, Some("crm_db"), 2).await);
}

#[tokio::test]
async fn min_pool_size_and_reserve_pool_stay_within_max_db_connections() {
    let mut config = limited(1, 0);
    config.pool.default_pool_size = 1;
    config.pool.min_pool_size = 1;
    config.pool.reserve_pool_size = 1;
    config.pool.reserve_pool_timeout = 0.2;
    config.pool.query_wait_timeout = 1.5;
    tenant(&config, "lim_warm_a").await;
    tenant(&config, "lim_warm_b").await;
    let proxy = start_proxy(config).await;
    let roles = vec![rw("lim_warm_a"), rw("lim_warm_b")];
    let a = client(&proxy, "lim_warm_a", "crm_db").await;
    assert_eq!(one_value(&a, "SELECT 1").await, "1");
    let b = client(&proxy, "lim_warm_b", "crm_db").await;
    assert_eq!(one_value(&b, "SELECT 1").await, "1");
    // Both pools want one warm connection; the database allows one. Several
    // rounds of the warmer later, still one.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(settles_at_most(&roles, Some("crm_db"), 1).await);

    // A client past reserve_pool_timeout gets no reserve connection beyond the cap.
    a.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let e = b.batch_execute("SELECT 1").await.unwrap_err();
    assert_eq!(sqlstate(&e), "53300", "{e}");
    assert!(settles_at_most(&roles, Some("crm_db"), 1).await);
    a.batch_execute("COMMIT").await.unwrap();
}

#[tokio::test]
async fn a_raised_max_db_connections_serves_waiting_clients_at_once() {
    let config = limited(1, 0);
    tenant(&config, "lim_raise_a").await;
    tenant(&config, "lim_raise_b").await;
    let proxy = Arc::new(start_proxy(config).await);
    let waiter = client(&proxy, "lim_raise_b", "crm_db").await;
    let _held = holder(&proxy, "lim_raise_a", "crm_db").await;
    let query = tokio::spawn(async move { one_value(&waiter, "SELECT 3").await });
    assert!(eventually(LIMIT, || async { waiting(&proxy, "lim_raise_b") == 1 }).await);

    let mut raised = (*proxy.context().config()).clone();
    raised.pool.max_db_connections = 2;
    pgtenant::reload::apply(proxy.context(), raised).unwrap();
    let got = tokio::time::timeout(LIMIT, query).await;
    assert_eq!(got.expect("served after the reload").unwrap(), "3");
}

#[tokio::test]
async fn max_user_connections_caps_one_role_across_databases() {
    let config = limited(0, 2);
    tenant(&config, "lim_user_a").await;
    tenant(&config, "lim_user_b").await;
    let proxy = Arc::new(start_proxy(config).await);
    let role = vec![rw("lim_user_a")];

    let stop = Arc::new(AtomicBool::new(false));
    let in_postgres = sample(Arc::clone(&stop), {
        let (role, proxy) = (role.clone(), Arc::clone(&proxy));
        move || {
            let (role, proxy) = (role.clone(), Arc::clone(&proxy));
            async move { held(&proxy, &role, None).await }
        }
    });
    let in_proxy = sample(Arc::clone(&stop), {
        let proxy = Arc::clone(&proxy);
        move || {
            let n = proxy
                .context()
                .pools
                .server_connections_of("", &rw("lim_user_a"));
            async move { n.1 as i64 }
        }
    });
    let both = [("lim_user_a", "crm_db"), ("lim_user_a", "product_db")];
    // Meanwhile another tenant's role has its own two.
    let others = async {
        let crm = holder(&proxy, "lim_user_b", "crm_db").await;
        let product = holder(&proxy, "lim_user_b", "product_db").await;
        (crm, product)
    };
    let (failed, _others) = tokio::join!(hammer(&proxy, &both, 3, 25), others);
    stop.store(true, Ordering::Relaxed);
    let (peak, peak_proxy) = (in_postgres.await.unwrap(), in_proxy.await.unwrap());
    assert!(failed.is_empty(), "clients were not served: {failed:?}");
    assert!(peak <= 2, "PostgreSQL saw {peak} sessions of {role:?}");
    assert_eq!(peak_proxy, 2, "the load reached the cap");
    assert_eq!(sessions(&[rw("lim_user_b")], None).await, 2);
}

#[tokio::test]
async fn max_user_connections_held_in_another_database_gives_53300_then_serves() {
    let mut config = limited(0, 2);
    config.pool.query_wait_timeout = 1.0;
    tenant(&config, "lim_uto").await;
    let proxy = start_proxy(config).await;
    let third = client(&proxy, "lim_uto", "crm_db").await;
    let crm = holder(&proxy, "lim_uto", "crm_db").await;
    let _product = holder(&proxy, "lim_uto", "product_db").await;
    let e = third.batch_execute("SELECT 1").await.unwrap_err();
    assert_eq!(sqlstate(&e), "53300", "{e}");
    assert_eq!(sessions(&[rw("lim_uto")], None).await, 2);

    // Released in crm_db, the room serves a client in product_db.
    crm.batch_execute("COMMIT").await.unwrap();
    let product = client(&proxy, "lim_uto", "product_db").await;
    assert_eq!(one_value(&product, "SELECT 4").await, "4");
    assert!(settles_at_most(&[rw("lim_uto")], None, 2).await);
}
