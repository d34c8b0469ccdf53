//! The `pgtenant serve` binary's log output, read from its stderr: JSON
//! lines with the client span on every session line, PgBouncer's
//! log_connections / log_disconnections / log_pooler_errors, and no
//! password, startup setting value or query parameter anywhere, even at
//! debug level; and text output with log_connections off.

mod common;

use std::process::Stdio;
use std::time::Duration;

use pgtenant::config::Config;
use pgtenant::provision;
use pgtenant::tenant::{role_password, AccessLevel, TenantId};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio_postgres::NoTls;

/// Far longer than a start ever takes; only stops a broken run from hanging.
const START_LIMIT: Duration = Duration::from_secs(60);

/// A `pgtenant serve` process and the lines of its stderr.
struct Server {
    child: Child,
    port: u16,
    lines: mpsc::UnboundedReceiver<String>,
    seen: Vec<String>,
}

impl Server {
    /// Writes a config (`extra` appended) for the test PostgreSQL, starts the
    /// binary, and waits for its "accepting clients" line.
    async fn start(dir: &std::path::Path, config: &Config, extra: &str) -> Server {
        let port = common::free_port();
        let toml = common::serve_toml(config, port, "", extra);
        let file = dir.join("pgtenant.toml");
        std::fs::write(&file, toml).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_pgtenant"))
            .arg("--config")
            .arg(&file)
            .arg("serve")
            .env_remove("RUST_LOG")
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut server = Server {
            child,
            port,
            lines,
            seen: Vec::new(),
        };
        let ready = tokio::time::timeout(START_LIMIT, async {
            while let Some(line) = server.lines.recv().await {
                let up = line.contains("pgtenant is accepting clients");
                server.seen.push(line);
                if up {
                    return true;
                }
            }
            false
        })
        .await;
        assert!(
            matches!(ready, Ok(true)),
            "the proxy did not start:\n{}",
            server.seen.join("\n")
        );
        server
    }

    /// Connects through the proxy; the connection task's handle comes back
    /// so the test can wait until the client has really gone.
    async fn connect(
        &self,
        user: &str,
        password: &str,
        extra: &str,
    ) -> Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>), tokio_postgres::Error> {
        let conninfo = format!(
            "host=127.0.0.1 port={} user={user} password={password} dbname=crm_db {extra}",
            self.port
        );
        let (client, connection) = tokio_postgres::connect(&conninfo, NoTls).await?;
        let task = tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok((client, task))
    }

    /// SIGTERM, then every line it wrote. Sessions whose clients have left
    /// are finished (and logged) before the process exits.
    async fn stop(mut self) -> Vec<String> {
        let pid = self.child.id().unwrap().to_string();
        let status = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .unwrap();
        assert!(status.success());
        let exit = self.child.wait().await.unwrap();
        while let Some(line) = self.lines.recv().await {
            self.seen.push(line);
        }
        assert!(exit.success(), "{exit}\n{}", self.seen.join("\n"));
        self.seen
    }
}

/// A tenant with one user whose password is `password`.
async fn tenant_with_user(config: &Config, id: &str, password: &str) -> TenantId {
    let id = TenantId::parse(id).unwrap();
    provision::create_tenant(config, &id, id.as_str())
        .await
        .unwrap();
    provision::add_user(config, &id, "alice", password, AccessLevel::ReadWrite)
        .await
        .unwrap();
    id
}

/// Closes a client and waits until its connection has ended.
async fn close(client: tokio_postgres::Client, task: tokio::task::JoinHandle<()>) {
    drop(client);
    task.await.unwrap();
}

#[tokio::test]
async fn json_lines_carry_the_client_and_no_secrets() {
    const PASSWORD: &str = "Pw-Right-4b1f9e";
    const WRONG: &str = "Pw-Wrong-93ac07";
    const PARAM: &str = "Param-Secret-d27e55";
    const OPTION: &str = "Opt-Token-5e1b08";
    let config = common::config();
    let id = tenant_with_user(&config, "logs_json", PASSWORD).await;
    let dir = tempfile::tempdir().unwrap();
    // Debug level and transaction pooling: the most the proxy ever logs,
    // and the relay that decodes Parse and Bind.
    let server = Server::start(
        dir.path(),
        &config,
        "[pool]\npool_mode = \"transaction\"\n\
         [log]\nformat = \"json\"\nlevel = \"debug\"\n",
    )
    .await;

    let options = format!("options='-c pgtenant_test.token={OPTION}'");
    let (client, task) = server
        .connect("alice@logs_json", PASSWORD, &options)
        .await
        .unwrap();
    let row = client
        .query_one("SELECT $1::text", &[&PARAM])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), PARAM);
    close(client, task).await;
    let refused = server
        .connect("alice@logs_json", WRONG, "")
        .await
        .expect_err("a wrong password is refused");
    assert_eq!(common::sqlstate(&refused), "28P01");

    let lines = server.stop().await;
    let all = lines.join("\n");
    let events: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();

    let role_secret = role_password(
        &config.backend.tenant_role_secret,
        &id.role(AccessLevel::ReadWrite),
    );
    for secret in [
        PASSWORD,
        WRONG,
        PARAM,
        OPTION,
        config.backend.admin_password.as_str(),
        config.backend.tenant_role_secret.as_str(),
        role_secret.as_str(),
    ] {
        assert!(!all.contains(secret), "{secret:?} is in the log:\n{all}");
    }

    let ours = |e: &&Value| e["span"]["tenant"] == "logs_json";
    let with_message = |m: &str| -> Vec<&Value> {
        events
            .iter()
            .filter(ours)
            .filter(|e| e["message"] == m)
            .collect()
    };
    let logged_in = with_message("client logged in");
    assert_eq!(logged_in.len(), 1, "{all}");
    let closed = with_message("client closed");
    assert_eq!(
        closed.len(),
        2,
        "the good client and the refused one:\n{all}"
    );
    for event in logged_in.iter().chain(&closed) {
        let span = &event["span"];
        assert_eq!(span["name"], "client", "{event}");
        assert_eq!(span["db"], "crm_db", "{event}");
        assert_eq!(span["user"], "alice", "{event}");
        let peer = span["peer"].as_str().unwrap_or_default();
        assert!(peer.starts_with("127.0.0.1:"), "{event}");
        assert_eq!(event["level"], "INFO", "{event}");
    }
    assert_eq!(logged_in[0]["tls"], false);
    assert_eq!(logged_in[0]["pool_mode"], "transaction");
    assert!(closed.iter().all(|e| e["duration_ms"].is_u64()), "{all}");
    assert!(
        closed.iter().any(|e| e["reason"] == "client close request"),
        "{all}"
    );
    assert!(
        closed.iter().any(|e| e["sqlstate"] == "28P01"
            && e["reason"]
                .as_str()
                .is_some_and(|r| r.starts_with("login refused"))),
        "{all}"
    );

    let pooler_errors = with_message("pooler error");
    assert_eq!(pooler_errors.len(), 1, "{all}");
    let error = pooler_errors[0];
    assert_eq!(error["level"], "WARN");
    assert_eq!(error["sqlstate"], "28P01");
    assert_eq!(
        error["error"],
        "password authentication failed for user \"alice@logs_json\""
    );

    // Whatever a session logs, at any level, carries its client span; the
    // SQL client's debug lines (statements and their parameters) are dropped.
    for event in &events {
        let target = event["target"].as_str().unwrap_or_default();
        assert!(!target.starts_with("tokio_postgres"), "{event}");
        if target.starts_with("pgtenant::session") || target.starts_with("pgtenant::pool") {
            assert_eq!(event["span"]["name"], "client", "{event}");
        }
    }
}

#[tokio::test]
async fn text_lines_without_log_connections() {
    let config = common::config();
    tenant_with_user(&config, "logs_text", "Pw-Text-61c0d2").await;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        &config,
        "[log]\nformat = \"text\"\nlog_connections = false\n",
    )
    .await;
    let (client, task) = server
        .connect("alice@logs_text", "Pw-Text-61c0d2", "")
        .await
        .unwrap();
    assert_eq!(common::one_value(&client, "SELECT 1").await, "1");
    close(client, task).await;
    let lines = server.stop().await;
    let all = lines.join("\n");
    assert!(!all.contains("client logged in"), "{all}");
    assert!(lines.iter().all(|l| !l.starts_with('{')), "{all}");
    let closed: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("client closed"))
        .collect();
    assert_eq!(closed.len(), 1, "{all}");
    for field in [
        "peer=127.0.0.1:",
        "tenant=logs_text",
        "db=crm_db",
        "user=alice",
    ] {
        assert!(closed[0].contains(field), "{field} missing: {}", closed[0]);
    }
    assert!(!all.contains("Pw-Text-61c0d2"), "{all}");
}
