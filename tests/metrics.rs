//! The HTTP listener: `/metrics` reports queries, clients, pools, errors and
//! the registry with the configured tenant label, in a format promtool
//! accepts; `/healthz` and `/readyz` answer as a load balancer expects.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use pgtenant::config::{Config, PoolMode, TenantLabel};
use pgtenant::server::Proxy;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A GET over a fresh connection: (status, body).
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    common::http_get(addr, path).await
}

/// Samples keyed by name and sorted labels.
type Samples = BTreeMap<(String, Vec<(String, String)>), f64>;

fn parse(text: &str) -> Samples {
    let mut samples = Samples::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("name value");
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (name, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        let mut pairs: Vec<(String, String)> = labels
            .split("\",")
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').expect("label pair");
                (k.to_string(), v.trim_matches('"').to_string())
            })
            .collect();
        pairs.sort();
        samples.insert((name.to_string(), pairs), value.parse().expect("value"));
    }
    samples
}

fn value(samples: &Samples, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut pairs: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    pairs.sort();
    samples.get(&(name.to_string(), pairs)).copied()
}

async fn scrape(proxy: &Proxy) -> (String, Samples) {
    let (status, body) = get(proxy.http_addr().expect("http listener"), "/metrics").await;
    assert_eq!(status, 200, "{body}");
    let samples = parse(&body);
    (body, samples)
}

/// Runs `promtool check metrics` on `text` when promtool is installed.
fn promtool_check(text: &str) {
    let mut child = match std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(_) => {
            eprintln!(
                "SKIPPED: promtool check metrics (promtool not on PATH; \
                 install Debian's prometheus package)"
            );
            return;
        }
    };
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n--- scraped ---\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn http_config(label: TenantLabel) -> Config {
    let mut config = config();
    config.http.listen_addr = "127.0.0.1:0".into();
    config.http.metrics_tenant_label = label;
    config.pool.default_pool_size = 3;
    config
}

async fn run_queries(proxy: &Proxy, tenant: &str, n: usize) -> tokio_postgres::Client {
    let client = connect(proxy, &format!("alice@{tenant}"), "alice-pw", "")
        .await
        .unwrap();
    for _ in 0..n {
        client.simple_query("SELECT 1").await.unwrap();
    }
    client
}

#[tokio::test]
async fn metrics_report_queries_clients_pools_and_errors() {
    let config = http_config(TenantLabel::All);
    tenant(&config, "mt_one").await;
    tenant(&config, "mt_two").await;
    let proxy = start_proxy(config).await;
    let one = run_queries(&proxy, "mt_one", 3).await;
    let two = run_queries(&proxy, "mt_two", 1).await;
    let bad = connect(&proxy, "alice@mt_one", "wrong", "")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&bad), "28P01");
    let unknown = connect(&proxy, "alice@mt_nobody", "x", "")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&unknown), "3D000");

    let (text, m) = scrape(&proxy).await;
    let pool = |t: &'static str| [("tenant", t), ("database", "crm_db"), ("user", "rw")];
    assert_eq!(
        value(&m, "pgtenant_queries_total", &pool("mt_one")),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        value(&m, "pgtenant_queries_total", &pool("mt_two")),
        Some(1.0)
    );
    assert_eq!(
        value(&m, "pgtenant_transactions_total", &pool("mt_one")),
        Some(3.0)
    );
    assert_eq!(value(&m, "pgtenant_pool_size", &pool("mt_one")), Some(3.0));
    let server = |t, state| {
        [
            ("tenant", t),
            ("database", "crm_db"),
            ("user", "rw"),
            ("state", state),
        ]
    };
    // Session pooling: each client holds its server connection.
    assert_eq!(
        value(&m, "pgtenant_servers", &server("mt_one", "active")),
        Some(1.0)
    );
    assert_eq!(
        value(&m, "pgtenant_servers", &server("mt_one", "idle")),
        Some(0.0)
    );
    let clients = |t, state| [("tenant", t), ("state", state)];
    assert_eq!(
        value(&m, "pgtenant_clients", &clients("mt_one", "active")),
        Some(1.0)
    );
    assert_eq!(
        value(&m, "pgtenant_clients", &clients("mt_two", "active")),
        Some(1.0)
    );
    assert_eq!(
        value(&m, "pgtenant_clients", &clients("mt_one", "waiting")),
        Some(0.0)
    );
    assert_eq!(
        value(&m, "pgtenant_clients", &[("state", "login")]),
        Some(0.0)
    );
    let bytes_in = value(
        &m,
        "pgtenant_bytes_total",
        &[
            ("direction", "in"),
            ("tenant", "mt_one"),
            ("database", "crm_db"),
            ("user", "rw"),
        ],
    );
    let bytes_out = value(
        &m,
        "pgtenant_bytes_total",
        &[
            ("direction", "out"),
            ("tenant", "mt_one"),
            ("database", "crm_db"),
            ("user", "rw"),
        ],
    );
    assert!(
        bytes_in.unwrap() > 0.0 && bytes_out.unwrap() > bytes_in.unwrap(),
        "{text}"
    );
    assert!(value(&m, "pgtenant_query_seconds_total", &pool("mt_one")).unwrap() > 0.0);
    // Histograms: per database and user, never per tenant.
    let rw = [("database", "crm_db"), ("user", "rw")];
    assert_eq!(
        value(&m, "pgtenant_query_duration_seconds_count", &rw),
        Some(4.0),
        "{text}"
    );
    assert_eq!(
        value(
            &m,
            "pgtenant_query_duration_seconds_bucket",
            &[("database", "crm_db"), ("user", "rw"), ("le", "+Inf")]
        ),
        Some(4.0)
    );
    assert_eq!(
        value(&m, "pgtenant_client_wait_seconds_count", &rw),
        Some(2.0)
    );
    // Errors the proxy sent, by class, and the refused password.
    assert_eq!(
        value(&m, "pgtenant_auth_failures_total", &[]),
        Some(1.0),
        "{text}"
    );
    let errors = |class| [("source", "proxy"), ("sqlstate_class", class)];
    assert_eq!(value(&m, "pgtenant_errors_total", &errors("28")), Some(1.0));
    assert_eq!(value(&m, "pgtenant_errors_total", &errors("3D")), Some(1.0));
    assert_eq!(
        value(
            &m,
            "pgtenant_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0)
    );
    assert!(value(&m, "pgtenant_registry_tenants", &[]).unwrap() >= 2.0);
    assert_eq!(value(&m, "pgtenant_registry_up", &[]), Some(1.0));
    assert_eq!(value(&m, "pgtenant_server_connections", &[]), Some(2.0));
    promtool_check(&text);

    // A NOTIFY (a tenant suspended) is seen and timed.
    let registry = admin("tenant_db").await;
    registry
        .execute(
            "UPDATE commons.tenants SET status = 'suspended' WHERE id = 'mt_two'",
            &[],
        )
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async {
            let (_, m) = scrape(&proxy).await;
            value(&m, "pgtenant_registry_last_notify_age_seconds", &[]).is_some()
        })
        .await,
        "the registry NOTIFY is reported"
    );
    drop((one, two));
    proxy.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn transaction_pooling_shows_idle_servers_and_waits() {
    let mut config = http_config(TenantLabel::All);
    config.pool.pool_mode = PoolMode::Transaction;
    tenant(&config, "mt_txn").await;
    let proxy = start_proxy(config).await;
    let client = run_queries(&proxy, "mt_txn", 2).await;
    client
        .batch_execute("BEGIN; SELECT 1; COMMIT")
        .await
        .unwrap();
    let (text, m) = scrape(&proxy).await;
    let pool = [("tenant", "mt_txn"), ("database", "crm_db"), ("user", "rw")];
    let server = |state| {
        [
            ("tenant", "mt_txn"),
            ("database", "crm_db"),
            ("user", "rw"),
            ("state", state),
        ]
    };
    assert_eq!(
        value(&m, "pgtenant_servers", &server("idle")),
        Some(1.0),
        "{text}"
    );
    assert_eq!(value(&m, "pgtenant_servers", &server("active")), Some(0.0));
    assert_eq!(value(&m, "pgtenant_transactions_total", &pool), Some(3.0));
    let rw = [("database", "crm_db"), ("user", "rw")];
    assert_eq!(
        value(&m, "pgtenant_transaction_duration_seconds_count", &rw),
        Some(3.0)
    );
    // Login checkout plus one per transaction.
    assert_eq!(
        value(&m, "pgtenant_client_wait_seconds_count", &rw),
        Some(4.0)
    );
    promtool_check(&text);
    drop(client);
    proxy.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn tenant_label_modes_bound_the_series() {
    let mut config = http_config(TenantLabel::TopN);
    config.http.metrics_top_n = 1;
    for t in ["mt_big", "mt_mid", "mt_low"] {
        tenant(&config, t).await;
    }
    let proxy = start_proxy(config.clone()).await;
    let _big = run_queries(&proxy, "mt_big", 3).await;
    let _mid = run_queries(&proxy, "mt_mid", 2).await;
    let _low = run_queries(&proxy, "mt_low", 1).await;
    let queries = |m: &Samples, tenant: Option<&'static str>| {
        let mut labels = vec![("database", "crm_db"), ("user", "rw")];
        labels.extend(tenant.map(|t| ("tenant", t)));
        value(m, "pgtenant_queries_total", &labels)
    };

    // top_n = 1: the busiest tenant keeps its label, the rest are summed.
    let (text, m) = scrape(&proxy).await;
    assert_eq!(queries(&m, Some("mt_big")), Some(3.0), "{text}");
    assert_eq!(queries(&m, Some("_other")), Some(3.0), "{text}");
    assert_eq!(queries(&m, Some("mt_mid")), None);
    let clients = |t| [("tenant", t), ("state", "active")];
    assert_eq!(value(&m, "pgtenant_clients", &clients("_other")), Some(2.0));
    promtool_check(&text);

    // none: summed per database and user; no series has a tenant label.
    let mut none = config.clone();
    none.http.metrics_tenant_label = TenantLabel::None;
    pgtenant::reload::apply(proxy.context(), none).unwrap();
    let (text, m) = scrape(&proxy).await;
    assert_eq!(queries(&m, None), Some(6.0), "{text}");
    assert!(!text.contains("tenant=\""), "{text}");
    assert_eq!(
        value(&m, "pgtenant_clients", &[("state", "active")]),
        Some(3.0)
    );
    promtool_check(&text);

    // all: one series per tenant.
    let mut all = config.clone();
    all.http.metrics_tenant_label = TenantLabel::All;
    pgtenant::reload::apply(proxy.context(), all).unwrap();
    let (text, m) = scrape(&proxy).await;
    assert_eq!(queries(&m, Some("mt_big")), Some(3.0), "{text}");
    assert_eq!(queries(&m, Some("mt_mid")), Some(2.0));
    assert_eq!(queries(&m, Some("mt_low")), Some(1.0));
    assert!(!text.contains("_other"), "{text}");
    promtool_check(&text);
    proxy.shutdown(Duration::from_secs(1)).await;
}

/// A TCP relay to PostgreSQL that can be cut (listener closed, every
/// connection dropped) and restored on the same port.
struct Cuttable {
    addr: SocketAddr,
    target: SocketAddr,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Cuttable {
    async fn start(target: SocketAddr) -> Cuttable {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let c = Cuttable {
            addr,
            target,
            tasks: Arc::default(),
        };
        c.serve(listener);
        c
    }

    fn serve(&self, listener: TcpListener) {
        let (target, tasks) = (self.target, Arc::clone(&self.tasks));
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let relay = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                tasks.lock().unwrap().push(relay);
            }
        });
        self.tasks.lock().unwrap().push(accept);
    }

    fn cut(&self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    async fn restore(&self) {
        let listener = TcpListener::bind(self.addr)
            .await
            .expect("rebind the same port");
        self.serve(listener);
    }
}

#[tokio::test]
async fn health_and_readiness() {
    let config = http_config(TenantLabel::All);
    let b = backend();
    let relay = Cuttable::start(format!("{}:{}", b.host, b.port).parse().unwrap()).await;
    let mut proxied = config.clone();
    proxied.backend.port = relay.addr.port();
    let proxy = start_proxy(proxied).await;
    let http = proxy.http_addr().unwrap();
    assert_eq!(get(http, "/healthz").await.0, 200);
    assert_eq!(get(http, "/readyz").await.0, 200);
    assert_eq!(get(http, "/nowhere").await.0, 404);

    // The registry connection is cut and cannot come back: not ready, but alive.
    relay.cut();
    assert!(
        eventually(Duration::from_secs(10), || async {
            get(http, "/readyz").await.0 == 503
        })
        .await,
        "/readyz turns 503 without the registry"
    );
    assert_eq!(get(http, "/healthz").await.0, 200);
    let (_, m) = scrape(&proxy).await;
    assert_eq!(value(&m, "pgtenant_registry_up", &[]), Some(0.0));

    // Back: the proxy reconnects (with backoff) and is ready again.
    relay.restore().await;
    assert!(
        eventually(Duration::from_secs(30), || async {
            get(http, "/readyz").await.0 == 200
        })
        .await,
        "/readyz turns 200 again once the registry is back"
    );
    proxy.shutdown(Duration::from_secs(1)).await;
    relay.cut();
}

#[tokio::test]
async fn listener_can_be_disabled_and_bind_errors_name_the_address() {
    let mut off = config();
    off.http.listen_addr = String::new();
    let proxy = start_proxy(off).await;
    assert_eq!(proxy.http_addr(), None);

    let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let mut clash = config();
    clash.http.listen_addr = addr.clone();
    let err = Proxy::start(clash)
        .await
        .err()
        .expect("bind fails")
        .to_string();
    assert!(
        err.contains(&addr) && err.contains("http.listen_addr"),
        "{err}"
    );
    proxy.shutdown(Duration::from_secs(1)).await;
}
