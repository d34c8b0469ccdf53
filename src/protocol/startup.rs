//! The untyped first packet of a connection: `StartupMessage`, `SSLRequest`,
//! `GSSENCRequest` or `CancelRequest`.

use bytes::Buf;
use tokio::io::AsyncRead;

use super::framing::{read_exact_or_closed, take_cstr, take_i32, ProtocolError};

/// Protocol 3.0's version code.
pub const PROTOCOL_3: i32 = 196_608;
const SSL_REQUEST: i32 = 80_877_103;
const GSSENC_REQUEST: i32 = 80_877_104;
const CANCEL_REQUEST: i32 = 80_877_102;

/// Parameters of a `StartupMessage`, in the order sent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StartupParams(pub Vec<(String, String)>);

impl StartupParams {
    /// The value of `key`, if sent.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// What a connection's first packet asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket {
    /// Wants TLS.
    SslRequest,
    /// Wants GSSAPI encryption.
    GssEncRequest,
    /// Cancel the query running under this key.
    CancelRequest {
        /// Process id of the key.
        pid: i32,
        /// Secret of the key.
        secret: i32,
    },
    /// A session start.
    Startup {
        /// Major protocol version (3 is the only one served).
        major: u16,
        /// Minor protocol version (answered with NegotiateProtocolVersion when above 0).
        minor: u16,
        /// The parameters.
        params: StartupParams,
    },
}

/// Reads and parses the first packet, refusing more than `max_len` bytes.
///
/// Not cancel safe; run it under a timeout that ends the connection.
pub async fn read_startup<R: AsyncRead + Unpin>(
    reader: &mut R,
    max_len: usize,
) -> Result<StartupPacket, ProtocolError> {
    let mut len_buf = [0u8; 4];
    read_exact_or_closed(reader, &mut len_buf).await?;
    let len = u32::from_be_bytes(len_buf) as usize;
    if len < 8 {
        return Err(ProtocolError::Malformed(
            "startup packet shorter than 8 bytes",
        ));
    }
    if len > max_len {
        return Err(ProtocolError::TooLarge { len, max: max_len });
    }
    let mut body = vec![0u8; len - 4];
    read_exact_or_closed(reader, &mut body).await?;
    parse_startup(&body)
}

/// Parses a first packet's body (after the length word).
pub fn parse_startup(body: &[u8]) -> Result<StartupPacket, ProtocolError> {
    let mut buf = body;
    let code = take_i32(&mut buf)?;
    match code {
        SSL_REQUEST if buf.is_empty() => Ok(StartupPacket::SslRequest),
        GSSENC_REQUEST if buf.is_empty() => Ok(StartupPacket::GssEncRequest),
        CANCEL_REQUEST if buf.len() == 8 => {
            let pid = buf.get_i32();
            let secret = buf.get_i32();
            Ok(StartupPacket::CancelRequest { pid, secret })
        }
        SSL_REQUEST | GSSENC_REQUEST | CANCEL_REQUEST => Err(ProtocolError::Malformed(
            "request packet has the wrong length",
        )),
        _ => {
            let major = (code >> 16) as u16;
            let minor = (code & 0xffff) as u16;
            let mut params = Vec::new();
            loop {
                let key = take_cstr(&mut buf)?;
                if key.is_empty() {
                    break;
                }
                let value = take_cstr(&mut buf)?;
                if params.iter().any(|(k, _)| *k == key) {
                    return Err(ProtocolError::Malformed("startup parameter sent twice"));
                }
                params.push((key, value));
            }
            if !buf.is_empty() {
                return Err(ProtocolError::Malformed(
                    "bytes after the startup parameters",
                ));
            }
            Ok(StartupPacket::Startup {
                major,
                minor,
                params: StartupParams(params),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(code: i32, rest: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&((rest.len() + 8) as u32).to_be_bytes());
        v.extend_from_slice(&code.to_be_bytes());
        v.extend_from_slice(rest);
        v
    }

    #[tokio::test]
    async fn parses_startup_and_requests() {
        let p = packet(PROTOCOL_3, b"user\0alice@acme\0database\0crm_db\0\0");
        let got = read_startup(&mut &p[..], 10_000).await.unwrap();
        let StartupPacket::Startup {
            major,
            minor,
            params,
        } = got
        else {
            panic!("not a startup: {got:?}")
        };
        assert_eq!((major, minor), (3, 0));
        assert_eq!(params.get("user"), Some("alice@acme"));
        assert_eq!(params.get("database"), Some("crm_db"));

        let p = packet(SSL_REQUEST, b"");
        assert_eq!(
            read_startup(&mut &p[..], 10_000).await.unwrap(),
            StartupPacket::SslRequest
        );
        let p = packet(CANCEL_REQUEST, &[0, 0, 0, 7, 0, 0, 0, 9]);
        assert_eq!(
            read_startup(&mut &p[..], 10_000).await.unwrap(),
            StartupPacket::CancelRequest { pid: 7, secret: 9 }
        );
    }

    #[tokio::test]
    async fn rejects_bad_packets() {
        // Oversized, announced before any body arrives.
        let big = 1_000_000u32.to_be_bytes();
        assert!(matches!(
            read_startup(&mut &big[..], 10_000).await,
            Err(ProtocolError::TooLarge { .. })
        ));
        // Too short.
        let short = 4u32.to_be_bytes();
        assert!(matches!(
            read_startup(&mut &short[..], 10_000).await,
            Err(ProtocolError::Malformed(_))
        ));
        // Truncated body.
        let mut p = packet(PROTOCOL_3, b"user\0alice\0\0");
        p.truncate(10);
        assert!(matches!(
            read_startup(&mut &p[..], 10_000).await,
            Err(ProtocolError::Closed)
        ));
        // Missing terminator, duplicate key, trailing bytes, bad cancel length.
        for rest in [
            &b"user\0alice"[..],
            b"user\0a\0user\0b\0\0",
            b"user\0a\0\0junk",
        ] {
            let p = packet(PROTOCOL_3, rest);
            assert!(read_startup(&mut &p[..], 10_000).await.is_err(), "{rest:?}");
        }
        let p = packet(CANCEL_REQUEST, &[0, 0, 0, 7]);
        assert!(read_startup(&mut &p[..], 10_000).await.is_err());
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for n in 0..2000 {
            let mut body = vec![0u8; n % 64];
            for b in body.iter_mut() {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                *b = if seed.is_multiple_of(5) {
                    0
                } else {
                    seed as u8
                };
            }
            let _ = parse_startup(&body);
        }
    }
}
