//! Hostile and unusual clients at startup, spoken to with raw sockets: every
//! one gets an ErrorResponse with a SQLSTATE or a closed connection, never a
//! hang, and the proxy keeps serving everyone else. Also psql, the Unix
//! socket, and registry changes made with plain SQL taking effect live.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads until the peer closes (or 5 s pass) and returns the SQLSTATE of the
/// first ErrorResponse, if any.
async fn error_code(stream: &mut TcpStream) -> Option<String> {
    let mut data = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut data)).await;
    let at = data.iter().position(|&b| b == b'E')?;
    let body = data.get(at + 5..)?;
    let c = body.windows(6).position(|w| w[0] == b'C')?;
    Some(String::from_utf8_lossy(&body[c + 1..c + 6]).into_owned())
}

fn startup_packet(pairs: &[(&str, &str)]) -> Vec<u8> {
    let mut body = 196_608i32.to_be_bytes().to_vec();
    for (k, v) in pairs {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut p = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    p.extend(body);
    p
}

#[tokio::test]
async fn malformed_oversized_and_silent_clients() {
    let mut config = config();
    config.listen.client_login_timeout = 0.5;
    tenant(&config, "s_bad").await;
    let proxy = start_proxy(config).await;
    let addr = proxy.local_addr();

    // SSLRequest and GSSENCRequest are answered 'N'; the startup may follow.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&[0, 0, 0, 8, 4, 210, 22, 47]).await.unwrap();
    let mut answer = [0u8; 1];
    s.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"N");
    s.write_all(&[0, 0, 0, 8, 4, 210, 22, 48]).await.unwrap();
    s.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"N");
    s.write_all(&startup_packet(&[("user", "x@s_nope")]))
        .await
        .unwrap();
    assert_eq!(error_code(&mut s).await.as_deref(), Some("3D000"));

    // Oversized startup length.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&[0, 0x10, 0, 0, 0, 3, 0, 0]).await.unwrap();
    assert_eq!(error_code(&mut s).await.as_deref(), Some("08P01"));
    // Too short a length.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&[0, 0, 0, 2]).await.unwrap();
    assert_eq!(error_code(&mut s).await.as_deref(), Some("08P01"));
    // Missing terminators.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&[0, 0, 0, 12, 0, 3, 0, 0, b'u', b's', b'e', b'r'])
        .await
        .unwrap();
    assert_eq!(error_code(&mut s).await.as_deref(), Some("08P01"));
    // Protocol 2.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&[0, 0, 0, 9, 0, 2, 0, 0, 0]).await.unwrap();
    assert_eq!(error_code(&mut s).await.as_deref(), Some("0A000"));
    // Silent after connecting, and silent half-way through a packet.
    let mut s = TcpStream::connect(addr).await.unwrap();
    assert_eq!(error_code(&mut s).await.as_deref(), Some("08P01"));
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&[0, 0, 0, 40, 0, 3]).await.unwrap();
    assert_eq!(error_code(&mut s).await.as_deref(), Some("08P01"));
    // Garbage instead of a SASL response.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&startup_packet(&[
        ("user", "alice@s_bad"),
        ("database", "crm_db"),
    ]))
    .await
    .unwrap();
    let mut first = [0u8; 1];
    s.read_exact(&mut first).await.unwrap();
    assert_eq!(&first, b"R");
    s.write_all(b"p\0\0\0\x08junk").await.unwrap();
    assert_eq!(error_code(&mut s).await.as_deref(), Some("08P01"));
    // A cancel request with an unknown key is ignored and closed.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&[0, 0, 0, 16, 4, 210, 22, 46, 0, 0, 0, 1, 0, 0, 0, 2])
        .await
        .unwrap();
    let mut rest = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, 0);

    // After all that, a real client is served.
    let c = connect(&proxy, "alice@s_bad", "alice-pw", "")
        .await
        .unwrap();
    assert_eq!(
        c.query_one("SELECT 1::int", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        1
    );
}

#[tokio::test]
async fn registry_changes_with_plain_sql_apply_live() {
    let config = config();
    tenant(&config, "s_live").await;
    let proxy = start_proxy(config.clone()).await;
    let registry = admin("tenant_db").await;
    assert!(connect(&proxy, "alice@s_live", "alice-pw", "")
        .await
        .is_ok());

    registry
        .execute(
            "UPDATE commons.tenants SET status = 'suspended' WHERE id = 's_live'",
            &[],
        )
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(1), || async {
            matches!(connect(&proxy, "alice@s_live", "alice-pw", "").await, Err(e) if sqlstate(&e) == "57P03")
        })
        .await,
        "suspension not seen within a second"
    );
    registry
        .execute(
            "UPDATE commons.tenants SET status = 'active' WHERE id = 's_live'",
            &[],
        )
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(1), || async {
            connect(&proxy, "alice@s_live", "alice-pw", "")
                .await
                .is_ok()
        })
        .await
    );

    // A tenant row inserted by hand (its schema made by provisioning) appears live.
    let id = pgtenant::tenant::TenantId::parse("s_live2").unwrap();
    pgtenant::provision::create_tenant(&config, &id, "")
        .await
        .unwrap();
    registry
        .execute(
            "UPDATE commons.tenants SET status = 'provisioning' WHERE id = 's_live2'",
            &[],
        )
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(1), || async {
            matches!(connect(&proxy, "alice@s_live2", "x", "").await, Err(e) if sqlstate(&e) == "57P03")
        })
        .await
    );

    registry
        .execute("DELETE FROM commons.tenants WHERE id = 's_live'", &[])
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(1), || async {
            matches!(connect(&proxy, "alice@s_live", "alice-pw", "").await, Err(e) if sqlstate(&e) == "3D000")
        })
        .await,
        "drop not seen within a second"
    );
}

#[tokio::test]
async fn psql_over_tcp_and_the_unix_socket() {
    let mut config = config();
    let dir = tempfile::tempdir().unwrap();
    config.listen.unix_socket_dir = dir.path().display().to_string();
    tenant(&config, "s_psql").await;
    let proxy = start_proxy(config).await;
    let port = proxy.local_addr().port();
    let tcp =
        tokio::task::spawn_blocking(move || psql("127.0.0.1".into(), port, "alice@s_psql", ""));
    assert_eq!(
        tcp.await.unwrap(),
        "tenant_s_psql, commons, public\ns_psql\n"
    );
    let unix_dir = dir.path().display().to_string();
    let unix =
        tokio::task::spawn_blocking(move || psql(unix_dir, port, "alice", "-c tenant=s_psql"));
    assert_eq!(
        unix.await.unwrap(),
        "tenant_s_psql, commons, public\ns_psql\n"
    );
}

/// Runs psql against the proxy and returns its unaligned output.
fn psql(host: String, port: u16, user: &str, options: &str) -> String {
    let out = Command::new("psql")
        .args([
            "-X",
            "-A",
            "-t",
            "-h",
            &host,
            "-p",
            &port.to_string(),
            "-U",
            user,
            "-d",
            "crm_db",
        ])
        .args([
            "-c",
            "SHOW search_path",
            "-c",
            "SELECT current_setting('app.current_tenant')",
        ])
        .env("PGPASSWORD", "alice-pw")
        .env("PGOPTIONS", options)
        .output()
        .expect("psql runs");
    assert!(
        out.status.success(),
        "psql failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
