//! The lines a session logs about its client, after PgBouncer's
//! `log_connections`, `log_disconnections` and `log_pooler_errors`, and
//! [`Ending`], why a client left. Every line is written inside the session's
//! `client` span, which carries the client's address, tenant, database and
//! user; nothing here adds a password, a startup setting's value or a query
//! parameter. Where the output goes is `logging`'s business.

use std::borrow::Cow;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tracing::{debug, info, warn};

use crate::config::{LogConfig, PoolMode};
use crate::net::Stream;
use crate::protocol::ErrorFields;
use crate::tenant::AccessLevel;

/// Why a client connection ended.
#[derive(Debug)]
pub(crate) enum Ending {
    /// It was a cancel request, not a client: nothing to report.
    CancelRequest,
    /// Refused before or during login; the client was told this.
    Refused(ErrorFields),
    /// Ended after login with this error sent to the client.
    Failed(ErrorFields),
    /// Ended without an error sent, for this reason.
    Closed(&'static str),
}

impl Ending {
    /// The reason as one phrase, for the disconnection line.
    fn reason(&self) -> Cow<'static, str> {
        match self {
            Ending::CancelRequest => "cancel request served".into(),
            Ending::Refused(e) => format!("login refused: {}", e.message).into(),
            Ending::Failed(e) => e.message.clone().into(),
            Ending::Closed(why) => (*why).into(),
        }
    }

    /// The SQLSTATE sent to the client, if any.
    fn sqlstate(&self) -> Option<&'static str> {
        match self {
            Ending::Refused(e) | Ending::Failed(e) => Some(e.code.code()),
            Ending::CancelRequest | Ending::Closed(_) => None,
        }
    }
}

/// `log_connections`: the client has logged in and holds its first server
/// connection.
pub(crate) fn logged_in(config: &LogConfig, tls: bool, access: AccessLevel, mode: PoolMode) {
    if !config.log_connections {
        return;
    }
    let access = match access {
        AccessLevel::ReadWrite => "rw",
        AccessLevel::ReadOnly => "ro",
    };
    let pool_mode = match mode {
        PoolMode::Session => "session",
        PoolMode::Transaction => "transaction",
        PoolMode::Statement => "statement",
    };
    info!(tls, access, pool_mode, "client logged in");
}

/// `log_disconnections`: the client has gone, after `age`. Cancel requests
/// are not clients and go to debug only.
pub(crate) fn closed(config: &LogConfig, age: Duration, ending: &Ending) {
    let duration_ms = u64::try_from(age.as_millis()).unwrap_or(u64::MAX);
    let reason = ending.reason();
    let sqlstate = ending.sqlstate();
    if config.log_disconnections && !matches!(ending, Ending::CancelRequest) {
        info!(duration_ms, %reason, sqlstate, "client closed");
    } else {
        debug!(duration_ms, %reason, sqlstate, "client closed");
    }
}

/// `log_pooler_errors`: logs an error the proxy is about to send a client;
/// the field `error` is the text the client gets.
/// `cause` is the detail the client is not shown (a server or registry
/// failure); such failures are warned about even when pooler errors are not
/// logged, since they are the operator's to fix.
pub(crate) fn pooler_error(config: &LogConfig, error: &ErrorFields, cause: Option<&str>) {
    let sqlstate = error.code.code();
    let error = error.message.as_str();
    if config.log_pooler_errors {
        warn!(sqlstate, error, cause, "pooler error");
    } else if let Some(cause) = cause {
        warn!(sqlstate, cause, "server-side failure");
    } else {
        debug!(sqlstate, error, "pooler error");
    }
}

/// Logs `error` as a pooler error and sends it to the client (which may be
/// gone already: that is not an error here).
pub(crate) async fn send_error(
    client: &mut Stream,
    config: &LogConfig,
    error: &ErrorFields,
    cause: Option<&str>,
) {
    pooler_error(config, error, cause);
    let mut buf = BytesMut::new();
    error.encode(&mut buf);
    let _ = client.write_all(&buf).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::SqlState;

    #[test]
    fn reasons_name_what_the_client_was_told() {
        let refused = Ending::Refused(ErrorFields::fatal(
            SqlState::INVALID_PASSWORD,
            "password authentication failed for user \"alice\"",
        ));
        assert_eq!(
            refused.reason(),
            "login refused: password authentication failed for user \"alice\""
        );
        assert_eq!(refused.sqlstate(), Some("28P01"));
        let closed = Ending::Closed("client close request");
        assert_eq!(closed.reason(), "client close request");
        assert_eq!(closed.sqlstate(), None);
    }
}
