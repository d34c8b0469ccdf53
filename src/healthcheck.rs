//! `pgtenant healthcheck`: asks a running proxy's HTTP endpoint for
//! `/healthz` with a plain HTTP/1.0 request and reports whether it answered
//! 200. Meant for container and service-manager health checks, so it needs
//! no configuration file and no HTTP library. Serving `/healthz` is the
//! proxy's business, not this module's.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Where the proxy's HTTP endpoint listens by default.
pub const DEFAULT_ADDR: &str = "127.0.0.1:9930";

/// How long the whole check may take.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// The most of the response read; the status line comes first.
const MAX_RESPONSE: usize = 8 * 1024;

/// Why the proxy was not found healthy.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    /// Nothing answered at the address.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The address tried.
        addr: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The connection failed after it was made.
    #[error("{addr}: {source}")]
    Io {
        /// The address asked.
        addr: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// No complete answer within [`TIMEOUT`].
    #[error("{addr} did not answer within {} s", TIMEOUT.as_secs())]
    Timeout {
        /// The address asked.
        addr: String,
    },
    /// The answer is not HTTP.
    #[error("{addr} did not answer with HTTP: {line:?}")]
    NotHttp {
        /// The address asked.
        addr: String,
        /// The first line received (shortened).
        line: String,
    },
    /// The endpoint answered, but not 200.
    #[error("{addr} answered /healthz with {status}")]
    Unhealthy {
        /// The address asked.
        addr: String,
        /// The status line's code and reason, e.g. `503 Service Unavailable`.
        status: String,
    },
}

/// Asks `addr` (`HOST:PORT`, an optional `http://` in front) for
/// `GET /healthz`; `Ok` with the status line's code and reason on a 200.
pub async fn check(addr: &str) -> Result<String, HealthError> {
    let addr = addr.trim_start_matches("http://").trim_end_matches('/');
    match tokio::time::timeout(TIMEOUT, ask(addr)).await {
        Ok(answer) => answer,
        Err(_) => Err(HealthError::Timeout {
            addr: addr.to_string(),
        }),
    }
}

async fn ask(addr: &str) -> Result<String, HealthError> {
    let io = |source| HealthError::Io {
        addr: addr.to_string(),
        source,
    };
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|source| HealthError::Connect {
            addr: addr.to_string(),
            source,
        })?;
    let request = format!(
        "GET /healthz HTTP/1.0\r\nHost: {addr}\r\nUser-Agent: pgtenant-healthcheck\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.map_err(io)?;
    let mut response = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    // HTTP/1.0: the server closes after the response; the status line is all
    // that is needed, so stop as soon as it is complete.
    while !response.contains(&b'\n') && response.len() < MAX_RESPONSE {
        let n = stream.read(&mut chunk).await.map_err(io)?;
        if n == 0 {
            break;
        }
        response.extend_from_slice(&chunk[..n]);
    }
    let status = status_line(&response).map_err(|line| HealthError::NotHttp {
        addr: addr.to_string(),
        line,
    })?;
    if status.starts_with("200") {
        Ok(status)
    } else {
        Err(HealthError::Unhealthy {
            addr: addr.to_string(),
            status,
        })
    }
}

/// The code and reason of an HTTP status line (`HTTP/1.1 503 Service
/// Unavailable` gives `503 Service Unavailable`); `Err` with the first line
/// when it is not one.
fn status_line(response: &[u8]) -> Result<String, String> {
    let first = response.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(first).trim_end().to_string();
    let rest = line
        .strip_prefix("HTTP/1.0 ")
        .or_else(|| line.strip_prefix("HTTP/1.1 "));
    match rest {
        Some(rest)
            if rest
                .get(..3)
                .is_some_and(|code| code.bytes().all(|b| b.is_ascii_digit())) =>
        {
            Ok(rest.to_string())
        }
        _ => Err(line.chars().take(80).collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        assert_eq!(status_line(b"HTTP/1.1 200 OK\r\n\r\nok").unwrap(), "200 OK");
        assert_eq!(
            status_line(b"HTTP/1.0 503 Service Unavailable\r\n").unwrap(),
            "503 Service Unavailable"
        );
        assert_eq!(status_line(b"HTTP/1.1 204").unwrap(), "204");
        assert!(status_line(b"").is_err());
        assert!(status_line(b"SSH-2.0-OpenSSH\r\n").is_err());
        assert!(status_line(b"HTTP/1.1 abc\r\n").is_err());
    }

    #[tokio::test]
    async fn an_empty_answer_is_not_http() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 256];
            let _ = socket.read(&mut request).await.unwrap();
            socket.shutdown().await.unwrap();
        });
        let err = check(&addr).await.unwrap_err();
        assert!(matches!(err, HealthError::NotHttp { .. }), "{err}");
        server.await.unwrap();
    }
}
