//! End-to-end TLS tests with certificates made at test time (rcgen): psql and
//! tokio-postgres (rustls) clients through the proxy (SCRAM-SHA-256-PLUS
//! included), `require` and
//! `disable` refusals, the tenant from the server name, client certificates,
//! certificate reload, direct TLS, and TLS from the proxy to a PostgreSQL of
//! this file's own that has `ssl = on`.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;

use common::*;
use pgtenant::config::{Config, SslMode, TenantSource};
use pgtenant::provision::{self, ClusterOptions, LocalCluster};
use pgtenant::server::Proxy;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{pem::PemObject, CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_postgres::NoTls;

/// A CA and what it signed, as PEM files in a temp dir.
struct Certs {
    dir: tempfile::TempDir,
}

impl Certs {
    /// A CA, a server certificate for `localhost`, `*.db.example.test` and
    /// 127.0.0.1, and a client certificate for `alice`.
    fn new() -> Certs {
        let dir = tempfile::tempdir().unwrap();
        let certs = Certs { dir };
        certs.issue("");
        certs
    }

    /// Writes `{prefix}ca.pem`, `{prefix}server.pem`/`-key.pem` and
    /// `{prefix}client.pem`/`-key.pem`, from a fresh CA.
    fn issue(&self, prefix: &str) {
        self.issue_for(prefix, &["localhost", "*.db.example.test", "127.0.0.1"]);
    }

    /// As `issue`, with a server certificate for `names` only.
    fn issue_for(&self, prefix: &str, names: &[&str]) {
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "pgtenant test CA");
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = KeyPair::generate().unwrap();
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        self.write(&format!("{prefix}ca.pem"), &ca_cert.pem());

        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut server = CertificateParams::new(names.clone()).unwrap();
        server
            .distinguished_name
            .push(DnType::CommonName, &names[0]);
        let key = KeyPair::generate().unwrap();
        let cert = server.signed_by(&key, &ca_cert, &ca_key).unwrap();
        self.write(&format!("{prefix}server.pem"), &cert.pem());
        self.write(&format!("{prefix}server-key.pem"), &key.serialize_pem());

        let mut client = CertificateParams::new(Vec::<String>::new()).unwrap();
        client.distinguished_name.push(DnType::CommonName, "alice");
        let key = KeyPair::generate().unwrap();
        let cert = client.signed_by(&key, &ca_cert, &ca_key).unwrap();
        self.write(&format!("{prefix}client.pem"), &cert.pem());
        self.write(&format!("{prefix}client-key.pem"), &key.serialize_pem());
    }

    fn write(&self, name: &str, pem: &str) {
        let path = self.path(name);
        std::fs::write(&path, pem).unwrap();
        // libpq and PostgreSQL refuse key files others can read.
        let mode = if name.ends_with("-key.pem") {
            0o600
        } else {
            0o644
        };
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(mode))
            .unwrap();
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// `config` with client TLS in `mode` using these files.
    fn client_side(&self, config: &mut Config, mode: SslMode) {
        config.tls.client_tls_sslmode = mode;
        config.tls.client_tls_cert_file = self.path("server.pem");
        config.tls.client_tls_key_file = self.path("server-key.pem");
        config.tls.client_tls_ca_file = self.path("ca.pem");
    }

    /// A rustls client config trusting `ca`, for tokio-postgres and raw clients.
    fn rustls_client(&self, ca: &str, alpn: bool) -> rustls::ClientConfig {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(self.path(ca)).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        if alpn {
            config.alpn_protocols = vec![b"postgresql".to_vec()];
        }
        config
    }
}

/// Runs psql with `conninfo` and one command; returns (success, stdout, stderr).
async fn psql(conninfo: &str, password: &str, command: &str) -> (bool, String, String) {
    let out = tokio::process::Command::new("psql")
        .args(["-X", "-A", "-t", "-d", conninfo, "-c", command])
        .env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .await
        .expect("psql runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).trim().to_string(),
    )
}

fn port(proxy: &Proxy) -> u16 {
    proxy.local_addr().port()
}

#[tokio::test]
async fn psql_verify_full_and_tokio_postgres_over_tls() {
    let certs = Certs::new();
    let mut config = config();
    tenant(&config, "tls_full").await;
    certs.client_side(&mut config, SslMode::Require);
    let proxy = start_proxy(config).await;

    let conninfo = format!(
        "host=localhost hostaddr=127.0.0.1 port={} user=alice@tls_full dbname=crm_db \
         sslmode=verify-full sslrootcert={}",
        port(&proxy),
        certs.path("ca.pem")
    );
    let (ok, out, err) = psql(&conninfo, "alice-pw", "\\conninfo").await;
    assert!(ok, "{err}");
    assert!(out.contains("SSL connection"), "{out}");
    // channel_binding=require: libpq insists on SCRAM-SHA-256-PLUS.
    let (ok, out, err) = psql(
        &format!("{conninfo} channel_binding=require"),
        "alice-pw",
        "SELECT current_setting('app.current_tenant')",
    )
    .await;
    assert!(ok, "{err}");
    assert_eq!(out, "tls_full");

    // tokio-postgres over rustls, relaying a few round trips.
    let tls = tokio_postgres_rustls::MakeRustlsConnect::new(certs.rustls_client("ca.pem", false));
    let (client, conn) = tokio_postgres::connect(
        &format!(
            "host=localhost port={} user=alice@tls_full password=alice-pw dbname=crm_db \
             sslmode=require channel_binding=require",
            port(&proxy)
        ),
        tls,
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    for i in 0..20i32 {
        let row = client.query_one("SELECT $1::int + 1", &[&i]).await.unwrap();
        assert_eq!(row.get::<_, i32>(0), i + 1);
    }
    let big = client
        .query_one("SELECT repeat('x', 200000)", &[])
        .await
        .unwrap();
    assert_eq!(big.get::<_, String>(0).len(), 200_000);
}

#[tokio::test]
async fn plain_client_against_require_gets_28000() {
    let certs = Certs::new();
    let mut config = config();
    tenant(&config, "tls_req").await;
    certs.client_side(&mut config, SslMode::Require);
    let proxy = start_proxy(config).await;
    let e = connect(&proxy, "alice@tls_req", "alice-pw", "sslmode=disable")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "28000");
    let message = e.as_db_error().map(|d| d.message().to_string());
    assert_eq!(message.as_deref(), Some("SSL required"));

    // A handshake that goes wrong ends that connection only.
    let mut raw = tokio::net::TcpStream::connect(proxy.local_addr())
        .await
        .unwrap();
    raw.write_all(&[0, 0, 0, 8, 4, 210, 22, 47]).await.unwrap();
    assert_eq!(raw.read_u8().await.unwrap(), b'S');
    raw.write_all(b"this is not a ClientHello at all")
        .await
        .unwrap();
    let mut rest = Vec::new();
    let _ = raw.read_to_end(&mut rest).await;
    let conninfo = format!(
        "host=localhost port={} user=alice@tls_req dbname=crm_db sslmode=verify-full sslrootcert={}",
        port(&proxy),
        certs.path("ca.pem")
    );
    let (ok, out, err) = psql(&conninfo, "alice-pw", "SELECT 1").await;
    assert!(ok && out == "1", "{out} {err}");
}

#[tokio::test]
async fn unix_socket_clients_are_not_asked_for_tls() {
    let certs = Certs::new();
    let sockets = tempfile::tempdir().unwrap();
    let mut config = config();
    tenant(&config, "tls_unix").await;
    certs.client_side(&mut config, SslMode::Require);
    config.listen.unix_socket_dir = sockets.path().display().to_string();
    let proxy = start_proxy(config).await;
    let conninfo = format!(
        "host={} port={} user=alice@tls_unix dbname=crm_db",
        sockets.path().display(),
        port(&proxy)
    );
    let (ok, out, err) = psql(&conninfo, "alice-pw", "SELECT 1").await;
    assert!(ok && out == "1", "{out} {err}");
}

#[tokio::test]
async fn tls_client_against_disable_is_refused_and_prefer_takes_both() {
    let certs = Certs::new();
    let config = config();
    tenant(&config, "tls_dis").await;
    let proxy = start_proxy(config.clone()).await;
    let base = format!(
        "host=127.0.0.1 port={} user=alice@tls_dis dbname=crm_db",
        port(&proxy)
    );
    let (ok, _, err) = psql(&format!("{base} sslmode=require"), "alice-pw", "SELECT 1").await;
    assert!(!ok);
    assert!(err.contains("SSL"), "{err}");
    let (ok, _, err) = psql(&format!("{base} sslmode=disable"), "alice-pw", "SELECT 1").await;
    assert!(ok, "{err}");

    let mut config = config;
    certs.client_side(&mut config, SslMode::Prefer);
    let proxy = start_proxy(config).await;
    let base = format!(
        "host=127.0.0.1 port={} user=alice@tls_dis dbname=crm_db",
        port(&proxy)
    );
    for (mode, ssl) in [("disable", false), ("require", true)] {
        let (ok, out, err) =
            psql(&format!("{base} sslmode={mode}"), "alice-pw", "\\conninfo").await;
        assert!(ok, "{mode}: {err}");
        assert_eq!(out.contains("SSL connection"), ssl, "{mode}: {out}");
    }
}

#[tokio::test]
async fn the_server_name_names_the_tenant() {
    let certs = Certs::new();
    let mut config = config();
    tenant(&config, "tlssni").await;
    tenant(&config, "tlssni_other").await;
    certs.client_side(&mut config, SslMode::Require);
    config.tenants.sources = vec![
        TenantSource::Sni,
        TenantSource::User,
        TenantSource::Options,
        TenantSource::Database,
    ];
    config.tenants.sni_suffix = ".db.example.test".into();
    let proxy = start_proxy(config).await;
    let conninfo = |host: &str, user: &str| {
        format!(
            "host={host} hostaddr=127.0.0.1 port={} user={user} dbname=crm_db \
             sslmode=verify-full sslrootcert={}",
            port(&proxy),
            certs.path("ca.pem")
        )
    };
    let sql = "SELECT current_setting('app.current_tenant') || ' ' || current_user";
    let (ok, out, err) = psql(
        &conninfo("tlssni.db.example.test", "alice"),
        "alice-pw",
        sql,
    )
    .await;
    assert!(ok, "{err}");
    assert_eq!(out, "tlssni tenant_tlssni_rw");
    // Agreeing with user@tenant is fine; disagreeing is refused.
    let (ok, out, err) = psql(
        &conninfo("tlssni.db.example.test", "alice@tlssni"),
        "alice-pw",
        sql,
    )
    .await;
    assert!(ok, "{err}");
    assert_eq!(out, "tlssni tenant_tlssni_rw");
    let (ok, _, err) = psql(
        &conninfo("tlssni.db.example.test", "alice@tlssni_other"),
        "alice-pw",
        sql,
    )
    .await;
    assert!(!ok);
    assert!(err.contains("names two tenants"), "{err}");
    // A name without the suffix names no tenant; another source still can.
    let (ok, _, err) = psql(&conninfo("localhost", "alice"), "alice-pw", sql).await;
    assert!(!ok);
    assert!(err.contains("no tenant given"), "{err}");
    let (ok, out, err) = psql(
        &conninfo("localhost", "alice@tlssni_other"),
        "alice-pw",
        sql,
    )
    .await;
    assert!(ok, "{err}");
    assert_eq!(out, "tlssni_other tenant_tlssni_other_rw");
}

#[tokio::test]
async fn verify_ca_wants_a_client_certificate() {
    let certs = Certs::new();
    let mut config = config();
    tenant(&config, "tls_cc").await;
    certs.client_side(&mut config, SslMode::VerifyCa);
    let proxy = start_proxy(config).await;
    let base = format!(
        "host=localhost port={} user=alice@tls_cc dbname=crm_db sslmode=verify-full sslrootcert={}",
        port(&proxy),
        certs.path("ca.pem")
    );
    let with_cert = format!(
        "{base} sslcert={} sslkey={}",
        certs.path("client.pem"),
        certs.path("client-key.pem")
    );
    let (ok, out, err) = psql(&with_cert, "alice-pw", "SELECT 1").await;
    assert!(ok && out == "1", "{out} {err}");
    let (ok, _, _) = psql(&base, "alice-pw", "SELECT 1").await;
    assert!(!ok, "no client certificate must be refused");
    // A certificate from another CA is refused too.
    certs.issue("other-");
    let foreign = format!(
        "{base} sslcert={} sslkey={}",
        certs.path("other-client.pem"),
        certs.path("other-client-key.pem")
    );
    let (ok, _, _) = psql(&foreign, "alice-pw", "SELECT 1").await;
    assert!(!ok, "a foreign client certificate must be refused");
}

#[tokio::test]
async fn certificates_reload_without_dropping_connections() {
    let certs = Certs::new();
    let mut config = config();
    tenant(&config, "tls_rl").await;
    certs.client_side(&mut config, SslMode::Require);
    let proxy = start_proxy(config).await;
    let dsn = format!(
        "host=localhost port={} user=alice@tls_rl password=alice-pw dbname=crm_db sslmode=require",
        port(&proxy)
    );
    let tls = tokio_postgres_rustls::MakeRustlsConnect::new(certs.rustls_client("ca.pem", false));
    let (open, conn) = tokio_postgres::connect(&dsn, tls).await.unwrap();
    tokio::spawn(conn);
    std::fs::copy(certs.path("ca.pem"), certs.path("first-ca.pem")).unwrap();

    // New files from a new CA: bad ones first, which keep the old in force.
    std::fs::write(certs.path("server.pem"), "garbage").unwrap();
    let err = proxy.reload_tls().unwrap_err().to_string();
    assert!(err.contains("client_tls_cert_file"), "{err}");
    open.simple_query("SELECT 1").await.unwrap();
    certs.issue("");
    proxy.reload_tls().unwrap();

    open.simple_query("SELECT 1").await.unwrap();
    let conninfo = format!(
        "host=localhost port={} user=alice@tls_rl dbname=crm_db sslmode=verify-full sslrootcert={}",
        port(&proxy),
        certs.path("ca.pem")
    );
    let (ok, out, err) = psql(&conninfo, "alice-pw", "SELECT 1").await;
    assert!(ok && out == "1", "{out} {err}");
    // The first CA no longer vouches for the proxy.
    let stale =
        tokio_postgres_rustls::MakeRustlsConnect::new(certs.rustls_client("first-ca.pem", false));
    assert!(tokio_postgres::connect(&dsn, stale).await.is_err());
}

/// A StartupMessage for `user` / `crm_db`.
fn startup(user: &str) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&196_608i32.to_be_bytes());
    for (k, v) in [("user", user), ("database", "crm_db")] {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut msg = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    msg.extend_from_slice(&body);
    msg
}

#[tokio::test]
async fn direct_tls_needs_alpn() {
    let certs = Certs::new();
    let mut config = config();
    tenant(&config, "tls_direct").await;
    certs.client_side(&mut config, SslMode::Require);
    let proxy = start_proxy(config).await;
    let name = ServerName::try_from("localhost").unwrap();

    let connector = tokio_rustls::TlsConnector::from(Arc::new(certs.rustls_client("ca.pem", true)));
    let tcp = tokio::net::TcpStream::connect(proxy.local_addr())
        .await
        .unwrap();
    let mut tls = connector.connect(name.clone(), tcp).await.unwrap();
    tls.write_all(&startup("alice@tls_direct")).await.unwrap();
    // AuthenticationSASL: the login goes on over TLS.
    assert_eq!(tls.read_u8().await.unwrap(), b'R');

    let connector =
        tokio_rustls::TlsConnector::from(Arc::new(certs.rustls_client("ca.pem", false)));
    let tcp = tokio::net::TcpStream::connect(proxy.local_addr())
        .await
        .unwrap();
    let refused = match connector.connect(name, tcp).await {
        Err(_) => true,
        Ok(mut tls) => {
            let _ = tls.write_all(&startup("alice@tls_direct")).await;
            let mut rest = Vec::new();
            matches!(tls.read_to_end(&mut rest).await, Err(_) | Ok(0))
        }
    };
    assert!(refused, "direct TLS without ALPN must be closed");
}

/// A second throwaway PostgreSQL with `ssl = on` and a certificate for
/// 127.0.0.1 only from `pg-ca.pem`, initialised for pgtenant.
async fn tls_cluster(certs: &Certs) -> (LocalCluster, Config) {
    certs.issue_for("pg-", &["127.0.0.1"]);
    let dir = tempfile::Builder::new()
        .prefix("pgtenant-tls-")
        .tempdir()
        .unwrap()
        .keep();
    let cluster = tokio::task::spawn_blocking(move || {
        LocalCluster::start(ClusterOptions {
            dir,
            port: 0,
            superuser: "marvin".into(),
            password: "marvin-tls".into(),
            remove_on_exit: true,
        })
    })
    .await
    .unwrap()
    .expect("a second throwaway PostgreSQL");
    // The server reads its files as the OS user it runs as, who owns its directory.
    let owner = std::fs::metadata(&cluster.socket_dir).unwrap();
    for name in ["server.pem", "server-key.pem"] {
        let to = cluster.socket_dir.join(name);
        std::fs::copy(certs.path(&format!("pg-{name}")), &to).unwrap();
        std::os::unix::fs::chown(&to, Some(owner.uid()), Some(owner.gid())).unwrap();
    }
    let mut config = config();
    config.backend.host = cluster.host.clone();
    config.backend.port = cluster.port;
    config.backend.admin_password = cluster.password.clone();
    let admin = admin_of(&config, "postgres").await;
    let dir: &Path = &cluster.socket_dir;
    for sql in [
        format!(
            "ALTER SYSTEM SET ssl_cert_file = '{}'",
            dir.join("server.pem").display()
        ),
        format!(
            "ALTER SYSTEM SET ssl_key_file = '{}'",
            dir.join("server-key.pem").display()
        ),
        "ALTER SYSTEM SET ssl = on".into(),
        "SELECT pg_reload_conf()".into(),
    ] {
        admin.batch_execute(&sql).await.unwrap();
    }
    let config2 = config.clone();
    provision::init(&config2).await.unwrap();
    (cluster, config)
}

async fn admin_of(config: &Config, db: &str) -> tokio_postgres::Client {
    let b = &config.backend;
    let (client, conn) = tokio_postgres::connect(
        &format!(
            "host={} port={} user={} password={} dbname={db}",
            b.host, b.port, b.admin_user, b.admin_password
        ),
        NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    client
}

#[tokio::test]
async fn the_proxy_speaks_tls_to_postgresql() {
    let certs = Certs::new();
    let (_cluster, mut config) = tls_cluster(&certs).await;
    tenant(&config, "tls_srv").await;
    config.tls.server_tls_sslmode = SslMode::VerifyFull;
    config.tls.server_tls_ca_file = certs.path("pg-ca.pem");
    let proxy = start_proxy(config.clone()).await;
    let client = connect(&proxy, "alice@tls_srv", "alice-pw", "")
        .await
        .unwrap();
    let pid: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let admin = admin_of(&config, "postgres").await;
    let ssl: bool = admin
        .query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = $1", &[&pid])
        .await
        .unwrap()
        .get(0);
    assert!(ssl, "the proxy's backend connection must use TLS");
    drop(client);
    proxy.shutdown(std::time::Duration::from_secs(5)).await;

    let refused = |config: Config, why: &'static str| async move {
        let proxy = start_proxy(config).await;
        let e = connect(&proxy, "alice@tls_srv", "alice-pw", "")
            .await
            .expect_err(why);
        assert_eq!(sqlstate(&e), "08001", "{why}");
        proxy.shutdown(std::time::Duration::from_secs(5)).await;
    };
    // A CA that did not sign the server's certificate.
    let mut other = config.clone();
    other.tls.server_tls_ca_file = certs.path("ca.pem");
    refused(other, "a foreign CA must not be trusted").await;
    // verify-full: the certificate must name the host connected to.
    config.backend.host = "localhost".into();
    refused(
        config.clone(),
        "a certificate for another name must be refused",
    )
    .await;
    // verify-ca: the chain is enough.
    config.tls.server_tls_sslmode = SslMode::VerifyCa;
    let proxy = start_proxy(config).await;
    let client = connect(&proxy, "alice@tls_srv", "alice-pw", "")
        .await
        .unwrap();
    client.simple_query("SELECT 1").await.unwrap();
}

#[tokio::test]
async fn require_towards_a_server_without_tls_fails_and_prefer_falls_back() {
    let mut config = config();
    tenant(&config, "tls_nosrv").await;
    // Server-side TLS is looked up by backend host and port: use a name the
    // other tests of this file do not, so their proxies do not share it.
    config.backend.host = "localhost".into();
    config.tls.server_tls_sslmode = SslMode::Prefer;
    let proxy = start_proxy(config.clone()).await;
    let client = connect(&proxy, "alice@tls_nosrv", "alice-pw", "")
        .await
        .unwrap();
    client.simple_query("SELECT 1").await.unwrap();
    drop(proxy);

    config.tls.server_tls_sslmode = SslMode::Require;
    let proxy = start_proxy(config).await;
    let e = connect(&proxy, "alice@tls_nosrv", "alice-pw", "")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "08001");
}

#[tokio::test]
async fn a_bad_certificate_file_stops_the_start() {
    let mut config = config();
    config.tls.client_tls_sslmode = SslMode::Require;
    config.tls.client_tls_cert_file = "/nonexistent/server.pem".into();
    config.tls.client_tls_key_file = "/nonexistent/server-key.pem".into();
    let err = match Proxy::start(config).await {
        Ok(_) => panic!("a missing certificate must stop the start"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("tls.client_tls_cert_file"), "{err}");
    assert!(err.contains("/nonexistent/server.pem"), "{err}");
}

#[tokio::test]
async fn a_slow_reader_gets_every_byte() {
    let certs = Certs::new();
    let mut config = config();
    tenant(&config, "tls_slow").await;
    certs.client_side(&mut config, SslMode::Require);
    let proxy = start_proxy(config).await;
    let conninfo = format!(
        "host=localhost port={} user=alice@tls_slow dbname=crm_db sslmode=require",
        port(&proxy)
    );
    // psql stops reading while the program sleeps, so the proxy's writes to
    // it back up; the end of the result must still arrive.
    let copy = "\\copy (SELECT repeat('x', 999) FROM generate_series(1, 20000)) \
                TO PROGRAM 'sleep 2; wc -c'";
    let run = psql(&conninfo, "alice-pw", copy);
    let (ok, out, err) = tokio::time::timeout(std::time::Duration::from_secs(60), run)
        .await
        .expect("the whole result arrives");
    assert!(ok, "{err}");
    assert_eq!(out.lines().last(), Some("20000000"), "{out}");
}

#[tokio::test]
async fn sighup_reloads_the_certificates_of_a_running_server() {
    let certs = Certs::new();
    let config = config();
    tenant(&config, "tls_hup").await;
    let port = free_port();
    let toml = serve_toml(
        &config,
        port,
        "",
        "[tls]\nclient_tls_sslmode = \"require\"\nclient_tls_cert_file = \"server.pem\"\n\
         client_tls_key_file = \"server-key.pem\"\n",
    );
    // Relative file names: taken from the config file's directory.
    std::fs::write(certs.path("pgtenant.toml"), toml).unwrap();
    let mut server = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgtenant"))
        .args(["--config", &certs.path("pgtenant.toml"), "serve"])
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let conninfo = |ca: &str| {
        format!(
            "host=localhost port={port} user=alice@tls_hup dbname=crm_db \
             sslmode=verify-full sslrootcert={}",
            certs.path(ca)
        )
    };
    let limit = std::time::Duration::from_secs(20);
    let up = eventually(limit, || async {
        psql(&conninfo("ca.pem"), "alice-pw", "SELECT 1").await.0
    })
    .await;
    assert!(up, "the server answers over TLS");

    std::fs::copy(certs.path("ca.pem"), certs.path("first-ca.pem")).unwrap();
    certs.issue("");
    let pid = server.id().unwrap().to_string();
    let status = tokio::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .await
        .unwrap();
    assert!(status.success());
    let reloaded = eventually(limit, || async {
        psql(&conninfo("ca.pem"), "alice-pw", "SELECT 1").await.0
    })
    .await;
    assert!(reloaded, "after SIGHUP the new certificate is shown");
    let (ok, _, _) = psql(&conninfo("first-ca.pem"), "alice-pw", "SELECT 1").await;
    assert!(!ok, "the old CA no longer vouches for the server");
    assert!(
        server.try_wait().unwrap().is_none(),
        "SIGHUP must not stop the server"
    );
    server.kill().await.unwrap();
}
