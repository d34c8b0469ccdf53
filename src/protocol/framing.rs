//! Reading whole typed messages (`tag`, length, body) during startup and
//! authentication, where the proxy must look at each message. The relay path
//! does not use this; it forwards by header without copying bodies.

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Why a peer's bytes could not be read as protocol messages.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// The socket failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// The peer closed the connection.
    #[error("connection closed by peer")]
    Closed,
    /// A length or field was wrong.
    #[error("malformed message: {0}")]
    Malformed(&'static str),
    /// A message was longer than the limit for its phase.
    #[error("message of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Announced length.
        len: usize,
        /// Limit in force.
        max: usize,
    },
}

/// One typed message: the tag byte and its body (without the length word).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The type byte.
    pub tag: u8,
    /// The body.
    pub body: BytesMut,
}

/// Reads one typed message, refusing bodies longer than `max_len`.
///
/// Not cancel safe: a partly read message is lost if the future is dropped.
pub async fn read_message<R: AsyncRead + Unpin>(
    reader: &mut R,
    max_len: usize,
) -> Result<Message, ProtocolError> {
    let mut header = [0u8; 5];
    read_exact_or_closed(reader, &mut header).await?;
    let tag = header[0];
    let len = (&header[1..]).get_u32() as usize;
    if len < 4 {
        return Err(ProtocolError::Malformed("length below 4"));
    }
    let body_len = len - 4;
    if body_len > max_len {
        return Err(ProtocolError::TooLarge {
            len: body_len,
            max: max_len,
        });
    }
    let mut body = BytesMut::zeroed(body_len);
    read_exact_or_closed(reader, &mut body).await?;
    Ok(Message { tag, body })
}

/// Fills `buf` from `reader`; the peer closing first is `Closed`.
pub(crate) async fn read_exact_or_closed<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut [u8],
) -> Result<(), ProtocolError> {
    match reader.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(ProtocolError::Closed),
        Err(e) => Err(e.into()),
    }
}

/// Splits a NUL-terminated string off the front of `buf`.
pub fn take_cstr(buf: &mut &[u8]) -> Result<String, ProtocolError> {
    let end = buf
        .iter()
        .position(|&b| b == 0)
        .ok_or(ProtocolError::Malformed("missing string terminator"))?;
    let s = std::str::from_utf8(&buf[..end])
        .map_err(|_| ProtocolError::Malformed("string is not UTF-8"))?;
    let s = s.to_string();
    *buf = &buf[end + 1..];
    Ok(s)
}

/// Splits a big-endian i32 off the front of `buf`.
pub fn take_i32(buf: &mut &[u8]) -> Result<i32, ProtocolError> {
    if buf.len() < 4 {
        return Err(ProtocolError::Malformed("truncated integer"));
    }
    Ok(buf.get_i32())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_message_and_rejects_bad_lengths() {
        let mut data: &[u8] = b"Z\0\0\0\x05I";
        let m = read_message(&mut data, 100).await.unwrap();
        assert_eq!((m.tag, &m.body[..]), (b'Z', &b"I"[..]));

        let mut short: &[u8] = b"Z\0\0\0\x02";
        assert!(matches!(
            read_message(&mut short, 100).await,
            Err(ProtocolError::Malformed(_))
        ));

        let mut big: &[u8] = b"p\x7f\0\0\0";
        assert!(matches!(
            read_message(&mut big, 100).await,
            Err(ProtocolError::TooLarge { .. })
        ));

        let mut truncated: &[u8] = b"p\0\0\0\x09ab";
        assert!(matches!(
            read_message(&mut truncated, 100).await,
            Err(ProtocolError::Closed)
        ));
    }

    #[test]
    fn cstr_and_int() {
        let mut b: &[u8] = b"abc\0\0\0\0\x07";
        assert_eq!(take_cstr(&mut b).unwrap(), "abc");
        assert_eq!(take_i32(&mut b).unwrap(), 7);
        assert!(take_i32(&mut b).is_err());
        let mut no_nul: &[u8] = b"abc";
        assert!(take_cstr(&mut no_nul).is_err());
    }
}
