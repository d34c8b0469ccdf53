//! Server-side timeouts with PgBouncer's names: `server_connect_timeout`
//! (a server that accepts the TCP connection and never answers),
//! `server_lifetime` (connections older than it are closed once idle and
//! replaced), and `reserve_pool_timeout` (a client waiting that long may
//! use one of `reserve_pool_size` extra connections).

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use pgtenant::config::PoolMode;
use tokio::net::{TcpListener, TcpStream};

/// A TCP relay to PostgreSQL that, once stalled, accepts new connections
/// and never forwards them (a server that hangs at login); connections
/// made before keep working.
struct Stallable {
    addr: SocketAddr,
    stalled: Arc<AtomicBool>,
}

impl Stallable {
    async fn start(target: SocketAddr) -> Stallable {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stalled = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stalled);
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let stall = flag.load(Ordering::SeqCst);
                tokio::spawn(async move {
                    if stall {
                        // Hold the socket open, answer nothing.
                        tokio::time::sleep(Duration::from_secs(60)).await;
                        drop(inbound);
                    } else if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Stallable { addr, stalled }
    }

    fn stall(&self, on: bool) {
        self.stalled.store(on, Ordering::SeqCst);
    }
}

#[tokio::test]
async fn a_server_that_never_answers_hits_server_connect_timeout() {
    let mut config = config();
    tenant(&config, "to_connect").await;
    let b = backend();
    let relay = Stallable::start(format!("{}:{}", b.host, b.port).parse().unwrap()).await;
    config.backend.port = relay.addr.port();
    config.pool.server_connect_timeout = 1.0;
    config.pool.query_wait_timeout = 30.0;
    // The registry connects through the relay before it stalls.
    let proxy = start_proxy(config).await;

    relay.stall(true);
    let Err(err) = connect(&proxy, "alice@to_connect", "alice-pw", "").await else {
        panic!("no server connection can be opened");
    };
    assert_eq!(sqlstate(&err), "08001", "{err}");

    // The failed attempt gave its slot back: once the server answers, clients get in.
    relay.stall(false);
    let client = connect(&proxy, "alice@to_connect", "alice-pw", "")
        .await
        .unwrap();
    assert_eq!(one_value(&client, "SELECT 1").await, "1");
}

#[tokio::test]
async fn connections_older_than_server_lifetime_are_replaced() {
    let mut config = config();
    config.pool.pool_mode = PoolMode::Transaction;
    config.pool.default_pool_size = 1;
    config.pool.server_lifetime = 1.0;
    tenant(&config, "to_lifetime").await;
    let proxy = start_proxy(config).await;
    let client = connect(&proxy, "alice@to_lifetime", "alice-pw", "")
        .await
        .unwrap();
    let first = one_value(&client, "SELECT pg_backend_pid()").await;
    // The reaper runs once a second; the connection is idle between queries.
    let replaced = eventually(Duration::from_secs(10), || async {
        one_value(&client, "SELECT pg_backend_pid()").await != first
    })
    .await;
    assert!(
        replaced,
        "a connection past server_lifetime is closed and replaced"
    );
    let admin = admin("crm_db").await;
    let gone: bool = admin
        .query_one(
            "SELECT NOT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid::text = $1)",
            &[&first],
        )
        .await
        .unwrap()
        .get(0);
    assert!(gone, "the old server connection was closed, not leaked");
}

#[tokio::test]
async fn a_client_waiting_past_reserve_pool_timeout_gets_a_reserve_connection() {
    let mut config = config();
    config.pool.pool_mode = PoolMode::Transaction;
    config.pool.default_pool_size = 1;
    config.pool.reserve_pool_size = 1;
    config.pool.reserve_pool_timeout = 0.3;
    config.pool.query_wait_timeout = 30.0;
    tenant(&config, "to_reserve").await;
    let proxy = start_proxy(config).await;
    let holder = connect(&proxy, "alice@to_reserve", "alice-pw", "")
        .await
        .unwrap();
    let waiter = connect(&proxy, "alice@to_reserve", "alice-pw", "")
        .await
        .unwrap();
    holder.batch_execute("BEGIN").await.unwrap();
    let held = one_value(&holder, "SELECT pg_backend_pid()").await;
    // The pool's one connection stays in the holder's transaction; the
    // waiter is served by a reserve connection, not after the COMMIT.
    let reserve = one_value(&waiter, "SELECT pg_backend_pid()").await;
    assert_ne!(reserve, held);
    let open = |p: &pgtenant::server::Proxy| {
        p.context()
            .pools
            .views()
            .into_iter()
            .find(|v| v.key.tenant().is_some_and(|t| t.as_str() == "to_reserve"))
            .map(|v| v.open)
    };
    // Released with nobody waiting, the reserve connection closes again.
    assert!(
        eventually(Duration::from_secs(5), || async { open(&proxy) == Some(1) }).await,
        "back to the pool's size: {:?}",
        open(&proxy)
    );
    holder.batch_execute("COMMIT").await.unwrap();
}

#[tokio::test]
async fn min_pool_size_opens_connections_and_keeps_them_when_idle() {
    let mut config = config();
    config.pool.pool_mode = PoolMode::Transaction;
    config.pool.default_pool_size = 4;
    config.pool.min_pool_size = 2;
    config.pool.server_idle_timeout = 0.5;
    tenant(&config, "to_min").await;
    let proxy = start_proxy(config).await;
    let admin = admin("crm_db").await;
    let servers = || async {
        let n: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE usename = 'tenant_to_min_rw'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        n
    };
    let client = connect(&proxy, "alice@to_min", "alice-pw", "")
        .await
        .unwrap();
    assert_eq!(one_value(&client, "SELECT 1").await, "1");
    // One client used one connection; the pool is topped up to two.
    assert!(
        eventually(Duration::from_secs(10), || async { servers().await == 2 }).await,
        "min_pool_size connections opened"
    );
    drop(client);
    // Several reaper rounds past server_idle_timeout: still two, not none.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(servers().await, 2, "kept at min_pool_size while idle");
}

/// A client whose connection task reports how the proxy closed it.
async fn watched(
    proxy: &pgtenant::server::Proxy,
    user: &str,
) -> (
    tokio_postgres::Client,
    tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
) {
    let info = conninfo(proxy, user, "alice-pw", "");
    let (client, connection) = tokio_postgres::connect(&info, tokio_postgres::NoTls)
        .await
        .unwrap();
    (client, tokio::spawn(connection))
}

#[tokio::test]
async fn idle_transaction_timeout_closes_a_session_pooled_client_idle_in_a_transaction() {
    let mut config = config();
    config.pool.pool_mode = PoolMode::Session;
    config.pool.default_pool_size = 2;
    config.pool.idle_transaction_timeout = 0.5;
    tenant(&config, "to_idle_sess").await;
    let proxy = start_proxy(config).await;
    let user = "alice@to_idle_sess";
    let (idle_outside, _outside) = watched(&proxy, user).await;
    assert_eq!(one_value(&idle_outside, "SELECT 1").await, "1");
    let (in_txn, connection) = watched(&proxy, user).await;
    in_txn.batch_execute("BEGIN").await.unwrap();
    let pid = one_value(&in_txn, "SELECT pg_backend_pid()").await;
    // A statement that runs longer than the timeout is not idleness.
    in_txn.batch_execute("SELECT pg_sleep(1)").await.unwrap();

    let closed = tokio::time::timeout(Duration::from_secs(15), connection)
        .await
        .expect("the client idle inside its transaction is closed")
        .unwrap();
    let e = closed.expect_err("closed with an error");
    assert_eq!(sqlstate(&e), "25P03", "{e}");
    assert!(in_txn.simple_query("SELECT 1").await.is_err());

    // Its server connection was closed, not given back...
    let admin = admin("crm_db").await;
    let gone = eventually(Duration::from_secs(10), || async {
        let n: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE pid::text = $1",
                &[&pid],
            )
            .await
            .unwrap()
            .get(0);
        n == 0
    })
    .await;
    assert!(gone, "the server connection of the closed client is gone");
    // ... and its slot is free for the next client.
    let next = connect(&proxy, user, "alice-pw", "").await.unwrap();
    assert_eq!(one_value(&next, "SELECT 3").await, "3");
    // The client idle outside a transaction all along is still served.
    assert_eq!(one_value(&idle_outside, "SELECT 2").await, "2");
}

#[tokio::test]
async fn client_idle_timeout_closes_a_session_pooled_client_idle_between_transactions() {
    let mut config = config();
    config.pool.pool_mode = PoolMode::Session;
    config.pool.default_pool_size = 1;
    config.pool.client_idle_timeout = 0.5;
    tenant(&config, "to_cidle_sess").await;
    let proxy = start_proxy(config).await;
    let user = "alice@to_cidle_sess";
    let (sleepy, connection) = watched(&proxy, user).await;
    let pid = one_value(&sleepy, "SELECT pg_backend_pid()").await;
    // Busy for longer than the limit, inside a transaction and out: not idle.
    sleepy.batch_execute("SELECT pg_sleep(1)").await.unwrap();
    sleepy
        .batch_execute("BEGIN; SELECT pg_sleep(0.2)")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    sleepy
        .batch_execute("COMMIT")
        .await
        .expect("idle inside a transaction is not client_idle_timeout");

    let closed = tokio::time::timeout(Duration::from_secs(15), connection)
        .await
        .expect("the idle client is closed")
        .unwrap();
    let e = closed.expect_err("closed with an error");
    assert_eq!(sqlstate(&e), "57P05", "{e}");
    // Its server connection, clean, went back to the pool of one: the next
    // client gets the same server process.
    let next = connect(&proxy, user, "alice-pw", "").await.unwrap();
    assert_eq!(one_value(&next, "SELECT pg_backend_pid()").await, pid);
}
