//! SQLSTATE codes and `ErrorResponse` construction: every error the proxy
//! itself reports to a client is built here, with its own code.

use bytes::{BufMut, BytesMut};

/// A five-character SQLSTATE code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SqlState(pub &'static str);

impl SqlState {
    /// 08P01: the client broke the protocol.
    pub const PROTOCOL_VIOLATION: SqlState = SqlState("08P01");
    /// 08006: the connection to the server failed.
    pub const CONNECTION_FAILURE: SqlState = SqlState("08006");
    /// 08001: the proxy could not open a server connection.
    pub const SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION: SqlState = SqlState("08001");
    /// 0A000: not supported.
    pub const FEATURE_NOT_SUPPORTED: SqlState = SqlState("0A000");
    /// 28000: who the client is cannot be established.
    pub const INVALID_AUTHORIZATION_SPECIFICATION: SqlState = SqlState("28000");
    /// 28P01: wrong password.
    pub const INVALID_PASSWORD: SqlState = SqlState("28P01");
    /// 3D000: unknown database or tenant.
    pub const INVALID_CATALOG_NAME: SqlState = SqlState("3D000");
    /// 42501: not allowed.
    pub const INSUFFICIENT_PRIVILEGE: SqlState = SqlState("42501");
    /// 22023: a parameter's value is wrong.
    pub const INVALID_PARAMETER_VALUE: SqlState = SqlState("22023");
    /// 25P03: the client sat inside a transaction too long without a word.
    pub const IDLE_IN_TRANSACTION_SESSION_TIMEOUT: SqlState = SqlState("25P03");
    /// 53300: too many connections / no server connection in time.
    pub const TOO_MANY_CONNECTIONS: SqlState = SqlState("53300");
    /// 57P01: the proxy is shutting down.
    pub const ADMIN_SHUTDOWN: SqlState = SqlState("57P01");
    /// 57P03: the tenant cannot be connected to now (suspended, provisioning).
    pub const CANNOT_CONNECT_NOW: SqlState = SqlState("57P03");
    /// 57014: query canceled (timeouts).
    pub const QUERY_CANCELED: SqlState = SqlState("57014");
    /// XX000: the proxy failed.
    pub const INTERNAL_ERROR: SqlState = SqlState("XX000");

    /// The code as text.
    pub fn code(self) -> &'static str {
        self.0
    }
}

/// Severity of an error the proxy sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The session ends after this message.
    Fatal,
    /// The statement failed; the session goes on.
    Error,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Severity::Fatal => "FATAL",
            Severity::Error => "ERROR",
        }
    }
}

/// What an error looks like to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorFields {
    /// FATAL or ERROR.
    pub severity: Severity,
    /// The SQLSTATE.
    pub code: SqlState,
    /// The primary message, safe to show the client.
    pub message: String,
}

impl ErrorFields {
    /// A FATAL error: the connection closes after it.
    pub fn fatal(code: SqlState, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Fatal,
            code,
            message: message.into(),
        }
    }

    /// What a client idle inside a transaction past
    /// `idle_transaction_timeout` is told, whatever its pool mode.
    pub fn idle_transaction_timeout() -> Self {
        Self::fatal(
            SqlState::IDLE_IN_TRANSACTION_SESSION_TIMEOUT,
            "idle_transaction_timeout: closing a connection idle inside a transaction",
        )
    }

    /// What a client idle between transactions past `client_idle_timeout`
    /// is told, whatever its pool mode.
    pub fn client_idle_timeout() -> Self {
        Self::fatal(
            SqlState("57P05"),
            "client_idle_timeout: closing an idle connection",
        )
    }

    /// An ERROR: the statement failed, the session goes on.
    pub fn error(code: SqlState, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Error,
            code,
            message: message.into(),
        }
    }

    /// Appends the `ErrorResponse` message to `buf`.
    pub fn encode(&self, buf: &mut BytesMut) {
        let sev = self.severity.as_str();
        let start = buf.len();
        buf.put_u8(b'E');
        buf.put_u32(0);
        for (field, value) in [
            (b'S', sev),
            (b'V', sev),
            (b'C', self.code.code()),
            (b'M', self.message.as_str()),
        ] {
            buf.put_u8(field);
            put_cstr(buf, value);
        }
        buf.put_u8(0);
        let len = (buf.len() - start - 1) as u32;
        buf[start + 1..start + 5].copy_from_slice(&len.to_be_bytes());
    }
}

/// Writes `s` as a C string; interior NUL bytes are dropped, as they cannot be sent.
pub(crate) fn put_cstr(buf: &mut BytesMut, s: &str) {
    buf.extend(s.bytes().filter(|&b| b != 0));
    buf.put_u8(0);
}

/// Reads the SQLSTATE and message out of an `ErrorResponse` body (for logs and errors).
pub fn parse_error_body(body: &[u8]) -> (String, String) {
    let mut code = String::new();
    let mut message = String::new();
    let mut rest = body;
    while let Some((&field, tail)) = rest.split_first() {
        if field == 0 {
            break;
        }
        let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
        let value = String::from_utf8_lossy(&tail[..end]).into_owned();
        match field {
            b'C' => code = value,
            b'M' => message = value,
            _ => {}
        }
        rest = tail.get(end + 1..).unwrap_or(&[]);
    }
    (code, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_and_parses_error() {
        let mut buf = BytesMut::new();
        ErrorFields::fatal(SqlState::INVALID_PASSWORD, "bad\0 password").encode(&mut buf);
        assert_eq!(buf[0], b'E');
        let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
        assert_eq!(len + 1, buf.len());
        let (code, msg) = parse_error_body(&buf[5..]);
        assert_eq!(code, "28P01");
        assert_eq!(msg, "bad password");
    }

    #[test]
    fn parse_error_body_survives_garbage() {
        for body in [&b""[..], b"C", b"C123", b"\xff\xff", b"M\0C\0\0extra"] {
            let _ = parse_error_body(body);
        }
    }
}
