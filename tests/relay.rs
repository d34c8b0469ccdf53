//! The relay under real traffic: extended protocol, COPY both ways, notices,
//! LISTEN/NOTIFY, large results, cancel, clients and backends that vanish
//! mid-query, and many clients sharing a small pool.

mod common;

use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio_postgres::{AsyncMessage, NoTls};

#[tokio::test]
async fn extended_protocol_and_large_results() {
    let config = config();
    tenant(&config, "r_ext").await;
    let proxy = start_proxy(config).await;
    let c = connect(&proxy, "alice@r_ext", "alice-pw", "")
        .await
        .unwrap();
    let insert = c
        .prepare("INSERT INTO contacts(name, email) VALUES ($1, $2) RETURNING id")
        .await
        .unwrap();
    for i in 0..50 {
        let row = c
            .query_one(&insert, &[&format!("n{i}"), &format!("{i}@x")])
            .await
            .unwrap();
        assert!(row.get::<_, i64>(0) > 0);
    }
    let n: i64 = c
        .query_one("SELECT count(*) FROM contacts WHERE name LIKE $1", &[&"n%"])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 50);
    // An error inside the extended protocol leaves the session usable.
    let e = c.query("SELECT 1/$1::int", &[&0i32]).await.unwrap_err();
    assert_eq!(sqlstate(&e), "22012");
    // Large results cross many relay buffers intact.
    let rows = c
        .query(
            "SELECT i, repeat('x', 1000) FROM generate_series(1, 20000) i",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 20000);
    assert_eq!(rows[19999].get::<_, i32>(0), 20000);
    let big: String = c
        .query_one("SELECT repeat('y', 5000000)", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(big.len(), 5_000_000);
    // A transaction keeps its backend.
    c.batch_execute("BEGIN; INSERT INTO contacts(name) VALUES ('tx')")
        .await
        .unwrap();
    c.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(
        one_value(&c, "SELECT count(*) FROM contacts WHERE name = 'tx'").await,
        "0"
    );
}

#[tokio::test]
async fn copy_in_and_out() {
    let config = config();
    tenant(&config, "r_copy").await;
    let proxy = start_proxy(config).await;
    let c = connect(&proxy, "alice@r_copy", "alice-pw", "")
        .await
        .unwrap();
    let sink = c
        .copy_in("COPY contacts(name, email) FROM STDIN")
        .await
        .unwrap();
    futures_util::pin_mut!(sink);
    let mut data = String::new();
    for i in 0..10_000 {
        data.push_str(&format!("name{i}\tmail{i}@example.com\n"));
    }
    sink.send(bytes::Bytes::from(data)).await.unwrap();
    assert_eq!(sink.finish().await.unwrap(), 10_000);

    let stream = c
        .copy_out("COPY (SELECT name FROM contacts ORDER BY id) TO STDOUT")
        .await
        .unwrap();
    let chunks: Vec<bytes::Bytes> = stream.map(|r| r.unwrap()).collect().await;
    let text: Vec<u8> = chunks.concat();
    assert_eq!(text.iter().filter(|&&b| b == b'\n').count(), 10_000);
    assert!(text.starts_with(b"name0\n"));
}

#[tokio::test]
async fn notices_and_notifications_are_relayed() {
    let config = config();
    tenant(&config, "r_notify").await;
    let proxy = start_proxy(config).await;
    let (listener, mut rx) = listen(&proxy, "alice@r_notify").await;
    listener.batch_execute("LISTEN events").await.unwrap();
    listener
        .batch_execute("DO $$ BEGIN RAISE NOTICE 'hello from the tenant'; END $$")
        .await
        .unwrap();
    let talker = connect(&proxy, "alice@r_notify", "alice-pw", "")
        .await
        .unwrap();
    talker.batch_execute("NOTIFY events, 'ping'").await.unwrap();

    let mut saw_notice = false;
    let mut saw_notify = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !(saw_notice && saw_notify) {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(AsyncMessage::Notice(n))) => {
                saw_notice |= n.message() == "hello from the tenant"
            }
            Ok(Some(AsyncMessage::Notification(n))) => {
                saw_notify |= n.channel() == "events" && n.payload() == "ping"
            }
            Ok(Some(_)) => {}
            _ => break,
        }
    }
    assert!(saw_notice, "notice not relayed");
    assert!(saw_notify, "notification not relayed");
}

#[tokio::test]
async fn cancel_reaches_the_right_backend_only() {
    let config = config();
    tenant(&config, "r_cancel").await;
    let proxy = start_proxy(config).await;
    let victim = connect(&proxy, "alice@r_cancel", "alice-pw", "")
        .await
        .unwrap();
    let bystander = connect(&proxy, "alice@r_cancel", "alice-pw", "")
        .await
        .unwrap();
    let token = victim.cancel_token();
    let slow = tokio::spawn(async move { victim.batch_execute("SELECT pg_sleep(30)").await });
    let other = tokio::spawn(async move {
        bystander
            .query_one("SELECT pg_sleep(1.5), 'done'", &[])
            .await
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    let started = std::time::Instant::now();
    token.cancel_query(NoTls).await.unwrap();
    let e = slow.await.unwrap().unwrap_err();
    assert_eq!(sqlstate(&e), "57014");
    assert!(started.elapsed() < Duration::from_secs(20));
    let row = other
        .await
        .unwrap()
        .expect("the other client's query was not canceled");
    assert_eq!(row.get::<_, &str>(1), "done");
}

/// Backends of a tenant role that are running a query right now.
async fn active_queries(role: &str) -> i64 {
    let admin = admin("postgres").await;
    admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = $1 AND state = 'active'",
            &[&role],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn a_client_killed_mid_query_frees_its_backend() {
    let mut config = config();
    config.pool.default_pool_size = 1;
    tenant(&config, "r_kill").await;
    let proxy = start_proxy(config).await;
    let addr = proxy.local_addr();
    let (client, conn) = tokio_postgres::connect(
        &format!(
            "host={} port={} user=alice@r_kill password=alice-pw dbname=crm_db",
            addr.ip(),
            addr.port()
        ),
        NoTls,
    )
    .await
    .unwrap();
    let conn_task = tokio::spawn(conn);
    let query = tokio::spawn(async move { client.batch_execute("SELECT pg_sleep(60)").await });
    assert!(
        eventually(Duration::from_secs(5), || async {
            active_queries("tenant_r_kill_rw").await == 1
        })
        .await
    );
    // Kill the client's socket without a Terminate.
    conn_task.abort();
    query.abort();
    assert!(
        eventually(Duration::from_secs(10), || async {
            active_queries("tenant_r_kill_rw").await == 0
        })
        .await,
        "the abandoned query kept running"
    );
    // The pool of one serves the next client (no broken backend handed out).
    let next = connect(&proxy, "alice@r_kill", "alice-pw", "")
        .await
        .unwrap();
    assert_eq!(one_value(&next, "SELECT 42").await, "42");
}

#[tokio::test]
async fn a_terminated_backend_is_reported_and_never_reused() {
    let mut config = config();
    config.pool.default_pool_size = 1;
    tenant(&config, "r_term").await;
    let proxy = start_proxy(config).await;
    let c = connect(&proxy, "alice@r_term", "alice-pw", "")
        .await
        .unwrap();
    let pid = one_value(&c, "SELECT pg_backend_pid()").await;
    let admin = admin("postgres").await;
    admin
        .execute(&format!("SELECT pg_terminate_backend({pid})"), &[])
        .await
        .unwrap();
    let e = c.batch_execute("SELECT 1").await.unwrap_err();
    assert!(
        e.is_closed() || ["57P01", "08006"].contains(&sqlstate(&e).as_str()),
        "{e}"
    );
    drop(c);
    let c2 = connect(&proxy, "alice@r_term", "alice-pw", "")
        .await
        .unwrap();
    let pid2 = one_value(&c2, "SELECT pg_backend_pid()").await;
    assert_ne!(pid, pid2);

    // An idle pooled backend terminated behind the pool's back is skipped too.
    drop(c2);
    tokio::time::sleep(Duration::from_millis(200)).await;
    admin
        .execute(&format!("SELECT pg_terminate_backend({pid2})"), &[])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let c3 = connect(&proxy, "alice@r_term", "alice-pw", "")
        .await
        .unwrap();
    assert_eq!(one_value(&c3, "SELECT 7").await, "7");
}

#[tokio::test]
async fn backends_are_reused_clean() {
    let mut config = config();
    config.pool.default_pool_size = 1;
    tenant(&config, "r_reuse").await;
    let proxy = start_proxy(config).await;
    let c1 = connect(&proxy, "alice@r_reuse", "alice-pw", "")
        .await
        .unwrap();
    let pid1 = one_value(&c1, "SELECT pg_backend_pid()").await;
    c1.batch_execute(
        "SET work_mem = '7MB'; CREATE TEMP TABLE scratch(x int); PREPARE p AS SELECT 1",
    )
    .await
    .unwrap();
    drop(c1);
    let c2 = connect(
        &proxy,
        "alice@r_reuse",
        "alice-pw",
        "options='-c application_name=second'",
    )
    .await
    .unwrap();
    assert_eq!(
        one_value(&c2, "SELECT pg_backend_pid()").await,
        pid1,
        "backend was not reused"
    );
    assert_ne!(one_value(&c2, "SHOW work_mem").await, "7MB");
    assert_eq!(one_value(&c2, "SHOW application_name").await, "second");
    assert_eq!(
        one_value(&c2, "SELECT count(*) FROM pg_prepared_statements").await,
        "0"
    );
    assert_eq!(
        one_value(
            &c2,
            "SELECT count(*) FROM pg_class WHERE relname = 'scratch'"
        )
        .await,
        "0"
    );
}

#[tokio::test]
async fn two_hundred_clients_share_a_pool_of_ten() {
    let mut config = config();
    config.pool.default_pool_size = 10;
    config.pool.query_wait_timeout = 60.0;
    tenant(&config, "r_many").await;
    let proxy = std::sync::Arc::new(start_proxy(config).await);
    let mut tasks = Vec::new();
    for i in 0..200 {
        let proxy = std::sync::Arc::clone(&proxy);
        tasks.push(tokio::spawn(async move {
            let c = connect(&proxy, "alice@r_many", "alice-pw", "").await?;
            let row = c
                .query_one("SELECT $1::int + 1, pg_sleep(0.01)", &[&i])
                .await?;
            Ok::<i32, tokio_postgres::Error>(row.get(0))
        }));
    }
    let mut sum = 0;
    for (i, t) in tasks.into_iter().enumerate() {
        let v = t
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("client {i}: {e}"));
        assert_eq!(v, i as i32 + 1);
        sum += 1;
    }
    assert_eq!(sum, 200);
    let admin = admin("postgres").await;
    let n: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = 'tenant_r_many_rw'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(n <= 10, "{n} backends for a pool of 10");
}

#[tokio::test]
async fn waiting_past_query_wait_timeout_is_an_error() {
    let mut config = config();
    config.pool.default_pool_size = 1;
    config.pool.query_wait_timeout = 0.3;
    tenant(&config, "r_wait").await;
    let proxy = start_proxy(config).await;
    let holder = connect(&proxy, "alice@r_wait", "alice-pw", "")
        .await
        .unwrap();
    let e = connect(&proxy, "alice@r_wait", "alice-pw", "")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "53300");
    drop(holder);
    assert!(
        eventually(Duration::from_secs(5), || async {
            connect(&proxy, "alice@r_wait", "alice-pw", "")
                .await
                .is_ok()
        })
        .await
    );
}

#[tokio::test]
async fn a_tenants_pool_size_override_applies_live() {
    let mut config = config();
    config.pool.default_pool_size = 5;
    config.pool.query_wait_timeout = 0.3;
    tenant(&config, "r_size").await;
    let proxy = start_proxy(config).await;
    let registry = admin("tenant_db").await;
    registry
        .execute(
            "UPDATE commons.tenants SET config = '{\"pool_size\": 2}' WHERE id = 'r_size'",
            &[],
        )
        .await
        .unwrap();
    // Within a second the third concurrent client has to wait, and times out.
    let first = connect(&proxy, "alice@r_size", "alice-pw", "")
        .await
        .unwrap();
    let second = connect(&proxy, "alice@r_size", "alice-pw", "")
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(1), || async {
            matches!(connect(&proxy, "alice@r_size", "alice-pw", "").await, Err(e) if sqlstate(&e) == "53300")
        })
        .await,
        "pool_size override not applied"
    );
    drop((first, second));
}

#[tokio::test]
async fn waiting_clients_are_served_first_come_first_served() {
    let mut config = config();
    config.pool.default_pool_size = 1;
    tenant(&config, "r_fifo").await;
    let proxy = std::sync::Arc::new(start_proxy(config).await);
    let holder = connect(&proxy, "alice@r_fifo", "alice-pw", "")
        .await
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut waiters = Vec::new();
    for i in 0..5 {
        let (proxy, tx) = (std::sync::Arc::clone(&proxy), tx.clone());
        waiters.push(tokio::spawn(async move {
            let c = connect(&proxy, "alice@r_fifo", "alice-pw", "")
                .await
                .unwrap();
            tx.send(i).unwrap();
            drop(c);
        }));
        // Each waiter is queued before the next one starts.
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    drop(holder);
    for w in waiters {
        w.await.unwrap();
    }
    let order: Vec<i32> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
    assert_eq!(order, vec![0, 1, 2, 3, 4]);
}

#[tokio::test]
async fn notifications_never_cross_tenants() {
    let config = config();
    tenant(&config, "r_chan_a").await;
    tenant(&config, "r_chan_b").await;
    let proxy = start_proxy(config).await;
    let (listener, mut messages) = listen(&proxy, "alice@r_chan_a").await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(m) = messages.recv().await {
            if let AsyncMessage::Notification(n) = m {
                let _ = tx.send(n.payload().to_string());
            }
        }
    });
    listener
        .batch_execute("LISTEN shared_channel")
        .await
        .unwrap();
    // Same database, same channel name, another tenant: must not arrive.
    let other = connect(&proxy, "alice@r_chan_b", "alice-pw", "")
        .await
        .unwrap();
    other
        .batch_execute("NOTIFY shared_channel, 'from b'")
        .await
        .unwrap();
    other
        .batch_execute("SELECT pg_notify('shared_channel', 'from b again')")
        .await
        .unwrap();
    // The listener's own tenant and the admin role get through.
    let same = connect(&proxy, "alice@r_chan_a", "alice-pw", "")
        .await
        .unwrap();
    same.batch_execute("NOTIFY shared_channel, 'from a'")
        .await
        .unwrap();
    let admin = admin("crm_db").await;
    admin
        .batch_execute("NOTIFY shared_channel, 'from admin'")
        .await
        .unwrap();
    // A tenant-b session that has already disconnected is still not let through.
    let gone = connect(&proxy, "alice@r_chan_b", "alice-pw", "")
        .await
        .unwrap();
    gone.batch_execute("NOTIFY shared_channel, 'from b, gone'")
        .await
        .unwrap();
    drop(gone);
    listener
        .batch_execute("NOTIFY shared_channel, 'from myself'")
        .await
        .unwrap();

    let mut got = Vec::new();
    while got.len() < 3 {
        match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
            Ok(Some(p)) => got.push(p),
            _ => break,
        }
    }
    // Anything still in flight from b would have arrived by now.
    listener.batch_execute("SELECT 1").await.unwrap();
    while let Ok(p) = rx.try_recv() {
        got.push(p);
    }
    got.sort();
    assert_eq!(got, vec!["from a", "from admin", "from myself"]);
}

/// A client of `user` through the proxy whose notices and notifications
/// arrive on the returned channel.
async fn listen(
    proxy: &pgtenant::server::Proxy,
    user: &str,
) -> (
    tokio_postgres::Client,
    tokio::sync::mpsc::UnboundedReceiver<AsyncMessage>,
) {
    let addr = proxy.local_addr();
    let (client, mut conn) = tokio_postgres::connect(
        &format!(
            "host={} port={} user={user} password=alice-pw dbname=crm_db",
            addr.ip(),
            addr.port()
        ),
        NoTls,
    )
    .await
    .unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(Ok(m)) = messages.next().await {
            let _ = tx.send(m);
        }
    });
    (client, rx)
}
