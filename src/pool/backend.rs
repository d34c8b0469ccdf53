//! One server connection: opening it, logging in as PostgreSQL asks
//! (SCRAM-SHA-256, md5 or cleartext, with a password, an md5 hash or a
//! proved SCRAM ClientKey), and the few queries the proxy runs on
//! it itself (settings at checkout, the reset query at release).

use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpStream, UnixStream};

use super::statements::PreparedSet;
use crate::auth::scram_client::ScramKeyClient;
use crate::auth::{md5, Credential, CredentialError, Secret};
use crate::net::Stream;
use crate::protocol::error::parse_error_body;
use crate::protocol::framing::{read_message, ProtocolError};
use crate::protocol::{messages, tag, FrameReader};

/// Largest message the proxy reads itself from a server during login and reset.
const MAX_SERVER_MESSAGE: usize = 1 << 20;

/// Where a server listens.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BackendAddr {
    /// Host name or IP, or a directory holding the Unix socket.
    pub host: String,
    /// Port.
    pub port: u16,
}

impl BackendAddr {
    /// Opens a socket to the server.
    pub async fn connect(&self) -> std::io::Result<Stream> {
        if self.host.starts_with('/') {
            let path = format!("{}/.s.PGSQL.{}", self.host, self.port);
            Ok(Stream::Unix(UnixStream::connect(path).await?))
        } else {
            let stream = Stream::Tcp(TcpStream::connect((self.host.as_str(), self.port)).await?);
            stream.set_nodelay()?;
            Ok(stream)
        }
    }
}

/// Why a server connection failed or misbehaved.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The socket failed.
    #[error("server connection failed: {0}")]
    Io(#[from] std::io::Error),
    /// The server spoke something unexpected.
    #[error("server protocol error: {0}")]
    Protocol(#[from] ProtocolError),
    /// The server answered with an ErrorResponse.
    #[error("server error {code}: {message}")]
    Server {
        /// Its SQLSTATE.
        code: String,
        /// Its message.
        message: String,
    },
    /// The server asked for an authentication method the proxy does not speak.
    #[error("server asked for unsupported authentication method {0}")]
    UnsupportedAuth(i32),
    /// The login's credential cannot answer what the server asked.
    #[error(transparent)]
    Credential(#[from] CredentialError),
}

/// A logged-in server connection.
#[derive(Debug)]
pub struct Backend {
    /// The socket.
    pub stream: Stream,
    /// Where it is, for cancel requests (shared: handed to the cancel map
    /// at every checkout).
    pub addr: Arc<BackendAddr>,
    /// The server's process id and cancel secret.
    pub key: (i32, i32),
    /// Current values of the parameters the server reports.
    pub params: Vec<(String, String)>,
    /// When it was opened.
    pub opened: Instant,
    /// Statements of the pool's cache prepared on this connection (transaction pooling).
    pub prepared: PreparedSet,
    /// Read buffer and output buffers of the transaction-pooling relay: they
    /// belong to the connection, not the client, so idle clients hold none.
    pub reader: FrameReader,
    /// Client-to-server output of the transaction-pooling relay.
    pub up: BytesMut,
    /// Server-to-client output of the transaction-pooling relay.
    pub down: BytesMut,
    /// Settings the proxy set for a client that the server does not report
    /// (e.g. `statement_timeout`), so the next client can be given its own.
    pub applied: Vec<(String, String)>,
    /// The (packed) client settings this connection was last found to
    /// have, so the next checkout by a client with the same settings skips
    /// the comparison. Cleared whenever `params` or `applied` change.
    pub settled_for: Option<Arc<str>>,
    /// The responses it owes in transaction pooling, a queue kept with the
    /// connection (empty between transactions) so a transaction allocates
    /// none and an idle client holds none.
    pub owed: crate::protocol::expect::Expectations,
    /// Its pool's generation when it was opened (see `Pool::generation`).
    pub generation: u64,
    /// Its entry in the list of open server connections, removed on close.
    pub registration: Option<super::control::ServerRegistration>,
}

impl Backend {
    /// Opens a connection (over TLS when `tls` is given) and logs in with
    /// `startup` parameters, answering the server with `credential`.
    pub async fn connect(
        addr: &Arc<BackendAddr>,
        tls: Option<&crate::tls::ServerTls>,
        startup: &[(&str, &str)],
        credential: &Credential,
    ) -> Result<Backend, BackendError> {
        let mut stream = addr.connect().await?;
        if let Some(tls) = tls {
            stream = tls.upgrade(stream, &addr.host).await?;
        }
        let mut buf = BytesMut::with_capacity(256);
        messages::startup_message(&mut buf, startup);
        stream.write_all(&buf).await?;
        let user = startup
            .iter()
            .find(|(k, _)| *k == "user")
            .map_or("", |(_, v)| v);
        login(&mut stream, user, credential, &mut buf).await?;

        let mut backend = Backend {
            stream,
            addr: Arc::clone(addr),
            key: (0, 0),
            params: Vec::new(),
            opened: Instant::now(),
            prepared: PreparedSet::default(),
            reader: FrameReader::new(8 * 1024),
            up: BytesMut::new(),
            down: BytesMut::new(),
            applied: Vec::new(),
            settled_for: None,
            owed: Default::default(),
            generation: 0,
            registration: None,
        };
        loop {
            let msg = read_message(&mut backend.stream, MAX_SERVER_MESSAGE).await?;
            match msg.tag {
                tag::BACKEND_KEY_DATA if msg.body.len() == 8 => {
                    let b = &msg.body;
                    backend.key = (
                        i32::from_be_bytes([b[0], b[1], b[2], b[3]]),
                        i32::from_be_bytes([b[4], b[5], b[6], b[7]]),
                    );
                }
                tag::READY_FOR_QUERY => return Ok(backend),
                _ => backend.observe(msg.tag, &msg.body)?,
            }
        }
    }

    /// Runs a simple query the proxy itself issues, discarding its rows, and
    /// fails with the server's error if it reports one. The connection is
    /// back at ReadyForQuery when this returns `Ok` or `Err(Server)`.
    pub async fn simple_query(&mut self, sql: &str) -> Result<u8, BackendError> {
        let mut buf = BytesMut::with_capacity(sql.len() + 8);
        messages::query(&mut buf, sql);
        self.stream.write_all(&buf).await?;
        let mut error = None;
        loop {
            let msg = read_message(&mut self.stream, MAX_SERVER_MESSAGE).await?;
            match msg.tag {
                tag::READY_FOR_QUERY => {
                    let status = msg.body.first().copied().unwrap_or(b'?');
                    return match error {
                        Some(e) => Err(e),
                        None => Ok(status),
                    };
                }
                tag::ERROR_RESPONSE => {
                    let (code, message) = parse_error_body(&msg.body);
                    error = Some(BackendError::Server { code, message });
                }
                _ => self.observe(msg.tag, &msg.body)?,
            }
        }
    }

    /// Records ParameterStatus values; fails on an ErrorResponse.
    fn observe(&mut self, tag: u8, body: &[u8]) -> Result<(), BackendError> {
        match tag {
            tag::PARAMETER_STATUS => {
                let mut parts = body.split(|&b| b == 0);
                if let (Some(k), Some(v)) = (parts.next(), parts.next()) {
                    let (k, v) = (
                        String::from_utf8_lossy(k).into_owned(),
                        String::from_utf8_lossy(v).into_owned(),
                    );
                    self.settled_for = None;
                    match self.params.iter_mut().find(|(name, _)| *name == k) {
                        Some(slot) => slot.1 = v,
                        None => self.params.push((k, v)),
                    }
                }
                Ok(())
            }
            tag::ERROR_RESPONSE => {
                let (code, message) = parse_error_body(body);
                Err(BackendError::Server { code, message })
            }
            _ => Ok(()),
        }
    }

    /// The current value of a reported parameter.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Whether an idle connection is still usable: nothing pending, not closed.
    pub fn is_alive(&self) -> bool {
        let mut probe = [0u8; 1];
        matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }

    /// Says goodbye politely and closes.
    pub async fn close(mut self) {
        let mut buf = BytesMut::with_capacity(5);
        messages::terminate(&mut buf);
        let _ = self.stream.write_all(&buf).await;
    }
}

/// Sends a CancelRequest for `key` to the server at `addr`.
pub async fn send_cancel(addr: &BackendAddr, key: (i32, i32)) -> std::io::Result<()> {
    let mut stream = addr.connect().await?;
    let mut buf = BytesMut::with_capacity(16);
    messages::cancel_request(&mut buf, key.0, key.1);
    stream.write_all(&buf).await?;
    stream.shutdown().await
}

/// A SCRAM exchange in progress, by what it answers with.
enum Sasl {
    /// A password (`postgres_protocol`'s client).
    Password(ScramSha256),
    /// A proved ClientKey (SCRAM pass-through).
    Key(ScramKeyClient),
}

/// Answers the server's authentication requests until AuthenticationOk.
async fn login(
    stream: &mut Stream,
    user: &str,
    credential: &Credential,
    buf: &mut BytesMut,
) -> Result<(), BackendError> {
    let mut scram: Option<Sasl> = None;
    let cannot = |asked: &'static str| CredentialError::Unanswerable {
        asked,
        held: credential.kind(),
    };
    loop {
        let msg = read_message(stream, MAX_SERVER_MESSAGE).await?;
        match msg.tag {
            tag::AUTHENTICATION => {}
            tag::ERROR_RESPONSE => {
                let (code, message) = parse_error_body(&msg.body);
                return Err(BackendError::Server { code, message });
            }
            _ => {
                return Err(
                    ProtocolError::Malformed("unexpected message during server login").into(),
                )
            }
        }
        let body = &msg.body[..];
        let (kind, data) = match body.split_first_chunk::<4>() {
            Some((k, rest)) => (i32::from_be_bytes(*k), rest),
            None => return Err(ProtocolError::Malformed("short authentication request").into()),
        };
        buf.clear();
        match kind {
            0 => return Ok(()),
            3 => match credential {
                Credential::Password(password) => messages::password(buf, password),
                _ => return Err(cannot("a clear-text password").into()),
            },
            5 => {
                let salt: [u8; 4] = data
                    .try_into()
                    .map_err(|_| ProtocolError::Malformed("md5 salt is not 4 bytes"))?;
                let secret = match credential {
                    Credential::Password(pw) => Secret::Plain(pw.clone()),
                    Credential::Md5(hash) => Secret::Md5(hash.clone()),
                    _ => return Err(cannot("md5").into()),
                };
                let Some(hash) = md5::expected_response(&secret, user, salt) else {
                    return Err(cannot("md5").into());
                };
                messages::password(buf, &hash);
            }
            10 => {
                let offers_scram = data.split(|&b| b == 0).any(|m| m == b"SCRAM-SHA-256");
                if !offers_scram {
                    return Err(BackendError::UnsupportedAuth(kind));
                }
                let (first, s) = match credential {
                    Credential::Password(password) => {
                        let s =
                            ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
                        (s.message().to_vec(), Sasl::Password(s))
                    }
                    Credential::Scram {
                        client_key,
                        verifier,
                    } => {
                        let s = ScramKeyClient::new(client_key, verifier);
                        (s.client_first(), Sasl::Key(s))
                    }
                    _ => return Err(cannot("SCRAM-SHA-256").into()),
                };
                messages::sasl_initial_response(buf, "SCRAM-SHA-256", &first);
                scram = Some(s);
            }
            11 => match scram.as_mut() {
                Some(Sasl::Password(s)) => {
                    s.update(data)?;
                    messages::sasl_response(buf, s.message());
                }
                Some(Sasl::Key(s)) => {
                    let fin = s.server_first(data)?;
                    messages::sasl_response(buf, &fin);
                }
                None => return Err(ProtocolError::Malformed("SASL continue before start").into()),
            },
            12 => {
                match scram.as_mut() {
                    Some(Sasl::Password(s)) => s.finish(data)?,
                    Some(Sasl::Key(s)) => s.server_final(data)?,
                    None => return Err(ProtocolError::Malformed("SASL final before start").into()),
                }
                continue;
            }
            other => return Err(BackendError::UnsupportedAuth(other)),
        }
        stream.write_all(buf).await?;
    }
}
