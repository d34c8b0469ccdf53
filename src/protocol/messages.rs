//! Builders for the messages the proxy writes itself, on either side. Each
//! appends one complete message to a buffer the caller reuses.

use bytes::{BufMut, BytesMut};

pub(crate) use super::error::put_cstr;
use super::startup::PROTOCOL_3;

/// Starts a typed message; finish it with [`finish`].
pub(crate) fn begin(buf: &mut BytesMut, tag: u8) -> usize {
    buf.put_u8(tag);
    let at = buf.len();
    buf.put_u32(0);
    at
}

/// Patches the length word written by [`begin`].
pub(crate) fn finish(buf: &mut BytesMut, at: usize) {
    let len = (buf.len() - at) as u32;
    buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

/// AuthenticationOk.
pub fn auth_ok(buf: &mut BytesMut) {
    auth(buf, 0, &[]);
}

/// AuthenticationMD5Password with its salt.
pub fn auth_md5(buf: &mut BytesMut, salt: [u8; 4]) {
    auth(buf, 5, &salt);
}

/// AuthenticationSASL offering SCRAM-SHA-256.
pub fn auth_sasl_scram(buf: &mut BytesMut) {
    auth(buf, 10, b"SCRAM-SHA-256\0\0");
}

/// AuthenticationSASL offering SCRAM-SHA-256-PLUS first, then SCRAM-SHA-256 (over TLS).
pub fn auth_sasl_scram_plus(buf: &mut BytesMut) {
    auth(buf, 10, b"SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0");
}

/// AuthenticationSASLContinue.
pub fn auth_sasl_continue(buf: &mut BytesMut, data: &[u8]) {
    auth(buf, 11, data);
}

/// AuthenticationSASLFinal.
pub fn auth_sasl_final(buf: &mut BytesMut, data: &[u8]) {
    auth(buf, 12, data);
}

fn auth(buf: &mut BytesMut, kind: i32, data: &[u8]) {
    let at = begin(buf, b'R');
    buf.put_i32(kind);
    buf.put_slice(data);
    finish(buf, at);
}

/// ParameterStatus.
pub fn parameter_status(buf: &mut BytesMut, name: &str, value: &str) {
    let at = begin(buf, b'S');
    put_cstr(buf, name);
    put_cstr(buf, value);
    finish(buf, at);
}

/// BackendKeyData.
pub fn backend_key_data(buf: &mut BytesMut, pid: i32, secret: i32) {
    let at = begin(buf, b'K');
    buf.put_i32(pid);
    buf.put_i32(secret);
    finish(buf, at);
}

/// ReadyForQuery with a transaction status (`I`, `T` or `E`).
pub fn ready_for_query(buf: &mut BytesMut, status: u8) {
    let at = begin(buf, b'Z');
    buf.put_u8(status);
    finish(buf, at);
}

/// NegotiateProtocolVersion: the newest minor version served (0) and the
/// protocol options (`_pq_.*`) that were not recognised.
pub fn negotiate_protocol_version(buf: &mut BytesMut, unrecognised: &[&str]) {
    let at = begin(buf, b'v');
    buf.put_i32(0);
    buf.put_i32(unrecognised.len() as i32);
    for name in unrecognised {
        put_cstr(buf, name);
    }
    finish(buf, at);
}

/// CommandComplete with `tag`.
pub fn command_complete(buf: &mut BytesMut, tag: &str) {
    let at = begin(buf, b'C');
    put_cstr(buf, tag);
    finish(buf, at);
}

/// EmptyQueryResponse.
pub fn empty_query(buf: &mut BytesMut) {
    let at = begin(buf, b'I');
    finish(buf, at);
}

/// A simple Query.
pub fn query(buf: &mut BytesMut, sql: &str) {
    let at = begin(buf, b'Q');
    put_cstr(buf, sql);
    finish(buf, at);
}

/// Terminate.
pub fn terminate(buf: &mut BytesMut) {
    let at = begin(buf, b'X');
    finish(buf, at);
}

/// PasswordMessage (cleartext or md5 response).
pub fn password(buf: &mut BytesMut, password: &str) {
    let at = begin(buf, b'p');
    put_cstr(buf, password);
    finish(buf, at);
}

/// SASLInitialResponse for `mechanism` with the client-first message.
pub fn sasl_initial_response(buf: &mut BytesMut, mechanism: &str, data: &[u8]) {
    let at = begin(buf, b'p');
    put_cstr(buf, mechanism);
    buf.put_i32(data.len() as i32);
    buf.put_slice(data);
    finish(buf, at);
}

/// SASLResponse with the client-final message.
pub fn sasl_response(buf: &mut BytesMut, data: &[u8]) {
    let at = begin(buf, b'p');
    buf.put_slice(data);
    finish(buf, at);
}

/// StartupMessage (protocol 3.0) with the given parameters.
pub fn startup_message(buf: &mut BytesMut, params: &[(&str, &str)]) {
    let at = buf.len();
    buf.put_u32(0);
    buf.put_i32(PROTOCOL_3);
    for (k, v) in params {
        put_cstr(buf, k);
        put_cstr(buf, v);
    }
    buf.put_u8(0);
    finish(buf, at);
}

/// CancelRequest for a backend key.
pub fn cancel_request(buf: &mut BytesMut, pid: i32, secret: i32) {
    buf.put_u32(16);
    buf.put_i32(80_877_102);
    buf.put_i32(pid);
    buf.put_i32(secret);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::startup::{parse_startup, StartupPacket};

    #[test]
    fn lengths_are_right() {
        let mut buf = BytesMut::new();
        ready_for_query(&mut buf, b'I');
        assert_eq!(&buf[..], b"Z\0\0\0\x05I");
        buf.clear();
        parameter_status(&mut buf, "a", "b");
        assert_eq!(&buf[..], b"S\0\0\0\x08a\0b\0");
        buf.clear();
        startup_message(&mut buf, &[("user", "u")]);
        let StartupPacket::Startup { params, .. } = parse_startup(&buf[4..]).unwrap() else {
            panic!("not a startup")
        };
        assert_eq!(params.get("user"), Some("u"));
        buf.clear();
        cancel_request(&mut buf, 1, 2);
        assert_eq!(
            parse_startup(&buf[4..]).unwrap(),
            StartupPacket::CancelRequest { pid: 1, secret: 2 }
        );
    }
}
