//! The PostgreSQL wire protocol, as far as the proxy needs it: framing of the
//! startup phase, the few messages the proxy writes itself, SQLSTATE codes,
//! and the responses a server connection owes in transaction pooling.
//!
//! Bodies of relayed messages are never decoded here; see `session::relay`.
//! This module depends on nothing else in the crate.

pub mod error;
pub mod expect;
pub mod framing;
pub mod messages;
pub mod reader;
pub mod startup;

pub use error::{ErrorFields, Severity, SqlState};
pub use framing::{read_message, Message, ProtocolError};
pub use reader::FrameReader;
pub use startup::{read_startup, StartupPacket, StartupParams};

/// Message type bytes the proxy looks at.
pub mod tag {
    /// Backend: authentication request.
    pub const AUTHENTICATION: u8 = b'R';
    /// Backend: run-time parameter report.
    pub const PARAMETER_STATUS: u8 = b'S';
    /// Backend: cancellation key.
    pub const BACKEND_KEY_DATA: u8 = b'K';
    /// Backend: ready for a new query; body is the transaction status.
    pub const READY_FOR_QUERY: u8 = b'Z';
    /// Backend: error.
    pub const ERROR_RESPONSE: u8 = b'E';
    /// Backend: notice.
    pub const NOTICE_RESPONSE: u8 = b'N';
    /// Backend: asynchronous notification (LISTEN/NOTIFY).
    pub const NOTIFICATION_RESPONSE: u8 = b'A';
    /// Backend: command complete.
    pub const COMMAND_COMPLETE: u8 = b'C';
    /// Frontend: password / SASL response.
    pub const PASSWORD_MESSAGE: u8 = b'p';
    /// Frontend: simple query.
    pub const QUERY: u8 = b'Q';
    /// Frontend: end of session.
    pub const TERMINATE: u8 = b'X';
}
