//! The admin HTTP API against a real proxy and PostgreSQL: the tenant
//! lifecycle over HTTP, errors and their statuses, the bearer token and the
//! loopback rule; and what a running proxy does when a tenant is suspended
//! `now`, dropped or reconfigured: connected clients and pooled server
//! connections go, or the new pool size applies.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use pgtenant::config::{Config, PoolMode};
use pgtenant::server::Proxy;
use serde_json::{json, Value};
use tokio::task::JoinHandle;

/// Upper bound for things that happen at once, so a broken build fails
/// instead of hanging; never a measure of speed.
const LIMIT: Duration = Duration::from_secs(15);

/// An HTTP response.
struct Reply {
    status: u16,
    head: String,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    fn error(&self) -> String {
        self.json()["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no \"error\" member: {}", self.body))
            .to_string()
    }

    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }
}

/// One HTTP/1.1 request over a fresh connection.
async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> Reply {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = bearer
        .as_deref()
        .map(|b| ("Authorization", b))
        .into_iter()
        .collect();
    let r = http_request(addr, method, path, &headers, body).await;
    Reply {
        status: r.status,
        head: r.head,
        body: r.body,
    }
}

/// The proxy's HTTP address, on loopback even when it listens on all addresses.
fn http(proxy: &Proxy) -> SocketAddr {
    let addr = proxy.http_addr().expect("http listener");
    SocketAddr::from(([127, 0, 0, 1], addr.port()))
}

async fn api(proxy: &Proxy, method: &str, path: &str, body: Option<&str>) -> Reply {
    call(http(proxy), method, path, None, body).await
}

/// A client through the proxy whose connection task can be watched: the
/// handle finishes when the proxy closes the connection.
async fn watched_client(proxy: &Proxy, tenant: &str) -> (tokio_postgres::Client, JoinHandle<()>) {
    let info = conninfo(proxy, &format!("alice@{tenant}"), "alice-pw", "");
    let (client, connection) = tokio_postgres::connect(&info, tokio_postgres::NoTls)
        .await
        .expect("client connects");
    let handle = tokio::spawn(async move {
        let _ = connection.await;
    });
    (client, handle)
}

/// Waits for a watched connection to be closed by the proxy.
async fn closed_by_proxy(handle: JoinHandle<()>) -> bool {
    tokio::time::timeout(LIMIT, handle).await.is_ok()
}

/// Sessions logged in as the tenant's roles, as PostgreSQL sees them.
async fn tenant_sessions(tenant: &str) -> i64 {
    admin("tenant_db")
        .await
        .query_one(
            "SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE usename = ANY($1)",
            &[&vec![
                format!("tenant_{tenant}_rw"),
                format!("tenant_{tenant}_ro"),
            ]],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn tenant_lifecycle_over_http() {
    let backups = tempfile::tempdir().unwrap();
    let mut config = common::config();
    config.provision.backup_dir = backups.path().join("nested").display().to_string();
    let proxy = start_proxy(config).await;

    let created = api(
        &proxy,
        "POST",
        "/tenants",
        Some(r#"{"id": "api_crud", "name": "Acme", "settings": {"pool_size": 3}}"#),
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.body);
    assert_eq!(
        created.header("location").as_deref(),
        Some("/tenants/api_crud")
    );
    assert_eq!(
        created.header("content-type").as_deref(),
        Some("application/json")
    );
    let t = created.json();
    assert_eq!(
        (t["id"].clone(), t["name"].clone()),
        (json!("api_crud"), json!("Acme"))
    );
    assert_eq!(t["status"], "active");
    assert_eq!(t["config"], json!({"pool_size": 3}));
    assert_eq!(t["schemas"][0]["database"], "crm_db");
    assert_eq!(t["schemas"][0]["exists"], true);

    let again = api(&proxy, "POST", "/tenants", Some(r#"{"id": "api_crud"}"#)).await;
    assert_eq!(again.status, 409, "{}", again.body);
    assert!(again.error().contains("already exists"), "{}", again.body);

    let list = api(&proxy, "GET", "/tenants", None).await;
    assert_eq!(list.status, 200);
    let listed = list.json();
    let row = listed
        .as_array()
        .expect("an array")
        .iter()
        .find(|t| t["id"] == "api_crud")
        .expect("listed");
    assert_eq!(row["status"], "active");

    let patched = api(
        &proxy,
        "PATCH",
        "/tenants/api_crud",
        Some(
            r#"{"name": "Acme Inc", "settings": {"pool_size": null, "pool_mode": "transaction"}}"#,
        ),
    )
    .await;
    assert_eq!(patched.status, 200, "{}", patched.body);
    let t = patched.json();
    assert_eq!(t["name"], "Acme Inc");
    assert_eq!(t["config"], json!({"pool_mode": "transaction"}));
    let shown = api(&proxy, "GET", "/tenants/api_crud", None).await;
    assert_eq!(shown.status, 200);
    assert_eq!(shown.json()["name"], "Acme Inc");

    let migrations = api(&proxy, "GET", "/tenants/api_crud/migrations", None).await;
    assert_eq!(migrations.status, 200, "{}", migrations.body);
    let m = migrations.json();
    assert_eq!(m[0]["database"], "crm_db");
    assert_eq!(m[0]["applied"][0]["version"], "001_contacts.sql");
    assert_eq!(m[0]["pending"], json!([]));

    let suspended = api(&proxy, "POST", "/tenants/api_crud/suspend", None).await;
    assert_eq!(suspended.status, 200, "{}", suspended.body);
    assert_eq!(
        suspended.json(),
        json!({"id": "api_crud", "status": "suspended", "disconnect_clients": false})
    );
    // It answers once this proxy knows.
    let info = proxy.context().registry.tenant("api_crud").unwrap();
    assert_eq!(info.status, pgtenant::tenant::TenantStatus::Suspended);
    let resumed = api(&proxy, "POST", "/tenants/api_crud/resume", None).await;
    assert_eq!(resumed.status, 200, "{}", resumed.body);
    assert_eq!(resumed.json()["status"], "active");

    // DELETE backs up first, under provision.backup_dir.
    let dropped = api(&proxy, "DELETE", "/tenants/api_crud", None).await;
    assert_eq!(dropped.status, 200, "{}", dropped.body);
    let d = dropped.json();
    assert_eq!(d["dropped"], true);
    let dir = std::path::PathBuf::from(d["backup"].as_str().expect("a backup path"));
    assert!(
        dir.starts_with(backups.path().join("nested")),
        "{}",
        dir.display()
    );
    assert!(dir.join("manifest.json").is_file());
    let gone = api(&proxy, "GET", "/tenants/api_crud", None).await;
    assert_eq!(gone.status, 404, "{}", gone.body);
    assert!(proxy.context().registry.tenant("api_crud").is_none());
    proxy.shutdown(Duration::ZERO).await;
}

#[tokio::test]
async fn errors_come_with_their_statuses() {
    let config = common::config();
    tenant(&config, "api_err").await;
    let proxy = start_proxy(config.clone()).await;
    let cases: &[(&str, &str, Option<&str>, u16, &str)] = &[
        ("GET", "/tenants/Not-An-Id", None, 400, "Not-An-Id"),
        ("GET", "/tenants/api_nobody", None, 404, "api_nobody"),
        ("GET", "/tenants?limit=3", None, 400, "no query parameters"),
        ("POST", "/tenants", None, 400, "JSON object"),
        (
            "POST",
            "/tenants",
            Some("{not json"),
            400,
            "invalid request body",
        ),
        ("POST", "/tenants", Some(r#"{"name": "x"}"#), 400, "id"),
        (
            "POST",
            "/tenants",
            Some(r#"{"id": "a", "nmae": "x"}"#),
            400,
            "nmae",
        ),
        (
            "POST",
            "/tenants",
            Some(r#"{"id": "select"}"#),
            400,
            "select",
        ),
        (
            "POST",
            "/tenants",
            Some(r#"{"id": "api_err_new", "settings": {"pool_sise": 1}}"#),
            400,
            "pool_sise",
        ),
        (
            "PATCH",
            "/tenants/api_err",
            Some(r#"{"settings": {"pool_size": 0}}"#),
            400,
            "pool_size",
        ),
        (
            "PATCH",
            "/tenants/api_err",
            Some(r#"{"settings": [1]}"#),
            400,
            "JSON object",
        ),
        (
            "PATCH",
            "/tenants/api_nobody",
            Some(r#"{"name": "x"}"#),
            404,
            "api_nobody",
        ),
        (
            "POST",
            "/tenants/api_nobody/suspend",
            None,
            404,
            "api_nobody",
        ),
        (
            "POST",
            "/tenants/api_err/suspend?now=maybe",
            None,
            400,
            "now",
        ),
        (
            "DELETE",
            "/tenants/api_err?backup=perhaps",
            None,
            400,
            "backup",
        ),
        (
            "DELETE",
            "/tenants/api_nobody?backup=false",
            None,
            404,
            "api_nobody",
        ),
        (
            "GET",
            "/tenants/api_nobody/migrations",
            None,
            404,
            "api_nobody",
        ),
    ];
    for (method, path, body, status, says) in cases {
        let reply = api(&proxy, method, path, *body).await;
        assert_eq!(reply.status, *status, "{method} {path}: {}", reply.body);
        assert!(
            reply.error().contains(says),
            "{method} {path}: {:?} should mention {says:?}",
            reply.error()
        );
    }
    // A bad settings body changed nothing.
    assert!(!proxy.context().registry.is_registered("api_err_new"));
    assert_eq!(api(&proxy, "PUT", "/tenants", None).await.status, 405);

    // A tenant being dropped: what would need it active is a conflict.
    admin("tenant_db")
        .await
        .execute(
            "UPDATE commons.tenants SET status = 'dropping' WHERE id = 'api_err'",
            &[],
        )
        .await
        .unwrap();
    for (method, path, body) in [
        ("POST", "/tenants/api_err/suspend", None),
        ("POST", "/tenants/api_err/resume", None),
        ("POST", "/tenants", Some(r#"{"id": "api_err"}"#)),
    ] {
        let reply = api(&proxy, method, path, body).await;
        assert_eq!(reply.status, 409, "{method} {path}: {}", reply.body);
        assert!(reply.error().contains("being dropped"), "{}", reply.body);
    }
    let dropped = api(&proxy, "DELETE", "/tenants/api_err?backup=false", None).await;
    assert_eq!(dropped.status, 200, "{}", dropped.body);
    assert_eq!(dropped.json()["backup"], Value::Null);

    // PostgreSQL out of reach: 503 with the reason.
    let mut unreachable: Config = config.clone();
    unreachable.backend.port = 1;
    proxy.context().config.store(Arc::new(unreachable));
    let reply = api(&proxy, "GET", "/tenants", None).await;
    assert_eq!(reply.status, 503, "{}", reply.body);
    assert!(reply.error().contains("connecting"), "{}", reply.body);
    proxy.shutdown(Duration::ZERO).await;
}

#[tokio::test]
async fn the_token_is_required_when_set() {
    let mut config = common::config();
    config.http.api_token = "s3cret-token".into();
    let proxy = start_proxy(config).await;
    let addr = http(&proxy);

    let none = call(addr, "GET", "/tenants", None, None).await;
    assert_eq!(none.status, 401, "{}", none.body);
    assert!(none.error().contains("Authorization"), "{}", none.body);
    assert!(none
        .header("www-authenticate")
        .is_some_and(|v| v.starts_with("Bearer")));
    let wrong = call(addr, "GET", "/tenants", Some("guess"), None).await;
    assert_eq!(wrong.status, 401, "{}", wrong.body);
    // Refused before the handler runs: nothing is created.
    let wrong_post = call(
        addr,
        "POST",
        "/tenants",
        Some("guess"),
        Some(r#"{"id": "api_tok"}"#),
    )
    .await;
    assert_eq!(wrong_post.status, 401);
    assert!(!proxy.context().registry.is_registered("api_tok"));

    let right = call(addr, "GET", "/tenants", Some("s3cret-token"), None).await;
    assert_eq!(right.status, 200, "{}", right.body);
    for open in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(
            call(addr, "GET", open, None, None).await.status,
            200,
            "{open}"
        );
    }
    proxy.shutdown(Duration::ZERO).await;
}

#[tokio::test]
async fn no_token_on_a_network_address_refuses_the_api() {
    let mut config = common::config();
    config.http.listen_addr = "0.0.0.0:0".into();
    let proxy = start_proxy(config.clone()).await;
    let refused = api(&proxy, "GET", "/tenants", None).await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert!(
        refused.error().contains("http.api_token"),
        "{}",
        refused.body
    );
    let refused = api(&proxy, "POST", "/tenants", Some(r#"{"id": "api_net"}"#)).await;
    assert_eq!(refused.status, 403);
    assert_eq!(api(&proxy, "GET", "/healthz", None).await.status, 200);
    assert_eq!(api(&proxy, "GET", "/metrics", None).await.status, 200);
    proxy.shutdown(Duration::ZERO).await;

    // With a token, the same listener serves it.
    config.http.api_token = "net-token".into();
    let proxy = start_proxy(config).await;
    let ok = call(http(&proxy), "GET", "/tenants", Some("net-token"), None).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    proxy.shutdown(Duration::ZERO).await;
}

/// Suspend without `now` lets a client inside a transaction go on until it
/// ends; with it, the client is closed at once, mid-transaction (in
/// session pooling and transaction pooling alike), and nothing stays
/// logged in as the tenant.
async fn suspend_now_closes_clients(tenant_id: &str, mode: PoolMode) {
    let mut config = common::config();
    config.pool.pool_mode = mode;
    tenant(&config, tenant_id).await;
    let proxy = start_proxy(config).await;
    let (client, handle) = watched_client(&proxy, tenant_id).await;
    assert_eq!(one_value(&client, "SELECT 1").await, "1");
    client.batch_execute("BEGIN").await.unwrap();

    let path = format!("/tenants/{tenant_id}/suspend");
    let reply = api(&proxy, "POST", &path, None).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(
        one_value(&client, "SELECT 2").await,
        "2",
        "a plain suspend lets an open transaction go on"
    );
    match connect(&proxy, &format!("alice@{tenant_id}"), "alice-pw", "").await {
        Ok(_) => panic!("a suspended tenant's new login was accepted"),
        Err(e) => assert_eq!(sqlstate(&e), "57P03"),
    }

    let reply = api(&proxy, "POST", &format!("{path}?now=true"), None).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["disconnect_clients"], true);
    assert!(
        closed_by_proxy(handle).await,
        "the client was not disconnected"
    );
    assert!(client.simple_query("SELECT 3").await.is_err());
    assert!(
        eventually(LIMIT, || async { tenant_sessions(tenant_id).await == 0 }).await,
        "server connections of {tenant_id} stay open"
    );

    // Resumed, it is served again.
    let reply = api(
        &proxy,
        "POST",
        &format!("/tenants/{tenant_id}/resume"),
        None,
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let (client, _handle) = watched_client(&proxy, tenant_id).await;
    assert_eq!(one_value(&client, "SELECT 4").await, "4");
    proxy.shutdown(Duration::ZERO).await;
}

#[tokio::test]
async fn suspend_now_closes_transaction_pooled_clients() {
    suspend_now_closes_clients("api_susp_tx", PoolMode::Transaction).await;
}

#[tokio::test]
async fn suspend_now_closes_session_pooled_clients() {
    suspend_now_closes_clients("api_susp_sess", PoolMode::Session).await;
}

#[tokio::test]
async fn a_dropping_tenant_loses_its_clients_and_server_connections() {
    let mut config = common::config();
    config.pool.pool_mode = PoolMode::Transaction;
    tenant(&config, "api_drop").await;
    let proxy = start_proxy(config).await;
    // One client inside a transaction (holding a server connection), one
    // idle between transactions (its server connection idle in the pool).
    let (busy, busy_handle) = watched_client(&proxy, "api_drop").await;
    busy.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let (idle, idle_handle) = watched_client(&proxy, "api_drop").await;
    assert_eq!(one_value(&idle, "SELECT 1").await, "1");
    assert_eq!(tenant_sessions("api_drop").await, 2);

    // What `tenant drop` does first; the proxy must react on its own,
    // before the drop terminates anything.
    admin("tenant_db")
        .await
        .execute(
            "UPDATE commons.tenants SET status = 'dropping' WHERE id = 'api_drop'",
            &[],
        )
        .await
        .unwrap();
    assert!(closed_by_proxy(idle_handle).await, "idle client stays");
    assert!(
        closed_by_proxy(busy_handle).await,
        "client in a transaction stays"
    );
    assert!(
        eventually(LIMIT, || async { tenant_sessions("api_drop").await == 0 }).await,
        "the pool's server connections stay open"
    );
    assert!(proxy
        .context()
        .pools
        .views()
        .iter()
        .all(|p| p.key.tenant().is_none_or(|t| t.as_str() != "api_drop")));

    let dropped = api(&proxy, "DELETE", "/tenants/api_drop?backup=false", None).await;
    assert_eq!(dropped.status, 200, "{}", dropped.body);
    assert_eq!(dropped.json()["terminated_sessions"], 0);
    proxy.shutdown(Duration::ZERO).await;
}

#[tokio::test]
async fn a_deleted_tenant_loses_its_clients() {
    let config = common::config();
    tenant(&config, "api_del").await;
    let proxy = start_proxy(config).await;
    let (client, handle) = watched_client(&proxy, "api_del").await;
    assert_eq!(one_value(&client, "SELECT 1").await, "1");
    let dropped = api(&proxy, "DELETE", "/tenants/api_del?backup=false", None).await;
    assert_eq!(dropped.status, 200, "{}", dropped.body);
    assert!(
        closed_by_proxy(handle).await,
        "client of a dropped tenant stays"
    );
    assert_eq!(tenant_sessions("api_del").await, 0);
    proxy.shutdown(Duration::ZERO).await;
}

#[tokio::test]
async fn a_new_pool_size_applies_to_connected_clients() {
    let mut config = common::config();
    config.pool.pool_mode = PoolMode::Transaction;
    tenant(&config, "api_size").await;
    let proxy = start_proxy(config).await;
    let (client, _handle) = watched_client(&proxy, "api_size").await;
    let size = || {
        proxy
            .context()
            .pools
            .views()
            .iter()
            .find(|p| p.key.tenant().is_some_and(|t| t.as_str() == "api_size"))
            .map(|p| p.size)
    };
    assert_eq!(one_value(&client, "SELECT 1").await, "1");
    assert_eq!(size(), Some(20));
    for wanted in [2, 7] {
        let body = format!(r#"{{"settings": {{"pool_size": {wanted}}}}}"#);
        let reply = api(&proxy, "PATCH", "/tenants/api_size", Some(&body)).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        let heard = eventually(LIMIT, || async {
            proxy
                .context()
                .registry
                .tenant("api_size")
                .is_some_and(|t| t.pool_size == Some(wanted))
        })
        .await;
        assert!(heard, "the proxy did not hear of pool_size {wanted}");
        // The same client, logged in before the change, checks out again.
        assert_eq!(one_value(&client, "SELECT 2").await, "2");
        assert_eq!(size(), Some(wanted));
    }
    proxy.shutdown(Duration::ZERO).await;
}

#[tokio::test]
async fn show_has_the_pools_and_server_connections() {
    let config = common::config();
    tenant(&config, "api_pools").await;
    let proxy = start_proxy(config).await;
    let shown = api(&proxy, "GET", "/tenants/api_pools", None).await;
    assert_eq!(shown.status, 200, "{}", shown.body);
    assert_eq!(shown.json()["pools"], json!([]), "{}", shown.body);
    assert_eq!(
        shown.json()["server_connections"],
        json!([]),
        "{}",
        shown.body
    );

    // Session pooling: the client holds one server connection.
    let (client, _handle) = watched_client(&proxy, "api_pools").await;
    assert_eq!(one_value(&client, "SELECT 1").await, "1");
    let shown = api(&proxy, "GET", "/tenants/api_pools", None).await.json();
    assert_eq!(
        shown["pools"],
        json!([{"database": "crm_db", "access": "rw", "size": 20,
                "server_connections": 1, "idle": 0, "waiting": 0, "clients": 1}]),
        "{shown}"
    );
    let sessions = &shown["server_connections"];
    assert_eq!(sessions.as_array().map(Vec::len), Some(1), "{shown}");
    assert_eq!(sessions[0]["database"], "crm_db", "{shown}");
    assert_eq!(sessions[0]["role"], "tenant_api_pools_rw", "{shown}");
    assert_eq!(sessions[0]["count"], 1, "{shown}");
    proxy.shutdown(Duration::ZERO).await;
}

/// Paths of `docs/openapi.yaml`, with their methods, through PyYAML.
fn openapi_paths() -> Vec<(String, String)> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.yaml");
    let script = "import json, sys, yaml\n\
                  with open(sys.argv[1]) as f:\n    json.dump(yaml.safe_load(f), sys.stdout)\n";
    let out = std::process::Command::new("python3")
        .args(["-c", script, path])
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "docs/openapi.yaml is not valid YAML (or PyYAML is missing: Debian python3-yaml):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: Value = serde_json::from_slice(&out.stdout).expect("JSON from python");
    assert!(
        doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")),
        "not an OpenAPI 3 document"
    );
    assert!(
        doc["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer",
        "no bearer security scheme"
    );
    let mut found = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            if ["get", "post", "patch", "put", "delete"].contains(&method.as_str()) {
                found.push((method.to_uppercase(), path.clone()));
            }
        }
    }
    found
}

#[test]
fn openapi_documents_every_route() {
    let documented = openapi_paths();
    let routed: Vec<(String, String)> = pgtenant::http::routes::paths()
        .into_iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    for route in &routed {
        assert!(
            documented.contains(route),
            "{} {} is routed but not in docs/openapi.yaml",
            route.0,
            route.1
        );
    }
    for doc in &documented {
        assert!(
            routed.contains(doc),
            "{} {} is in docs/openapi.yaml but not routed",
            doc.0,
            doc.1
        );
    }
}
