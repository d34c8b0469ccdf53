//! Client authentication: the exchange with the client (SCRAM-SHA-256, md5,
//! trust) against a stored secret, plus the secret formats and the
//! PgBouncer-style `auth_file`, and what a server login needs from them
//! ([`Credential`], SCRAM with a proved ClientKey in `scram_client`).
//! Where secrets come from is the session's business; the server login
//! exchange itself is `pool::backend`'s.
//!
//! An unknown user goes through the same exchange as a known one, against a
//! mock secret derived from the proxy's key, and fails only at its end with
//! the same error, so a client cannot probe which users exist.

pub mod auth_file;
pub mod credential;
pub mod md5;
pub mod scram;
pub mod scram_client;
pub mod secret;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::config::AuthMethod;
use crate::protocol::framing::{read_message, take_cstr, take_i32, ProtocolError};
use crate::protocol::{messages, tag, SqlState};

pub use auth_file::AuthFileError;
pub use credential::{Credential, CredentialError};
pub use scram::{ClientKey, ScramError, ScramServer};
pub use secret::{ScramVerifier, Secret, SecretError};

/// Largest password or SASL message accepted from a client.
const MAX_AUTH_MESSAGE: usize = 8 * 1024;

/// Why a client was not let in.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Wrong password, or unknown user (indistinguishable on purpose).
    #[error("password authentication failed for user \"{0}\"")]
    Failed(String),
    /// The client broke the exchange.
    #[error("authentication protocol error: {0}")]
    Protocol(#[from] ProtocolError),
    /// The client asked for something not offered (e.g. SCRAM-SHA-256-PLUS).
    #[error("unsupported SASL mechanism {0:?}")]
    Mechanism(String),
}

impl AuthError {
    /// The SQLSTATE the client gets.
    pub fn sqlstate(&self) -> SqlState {
        match self {
            AuthError::Failed(_) => SqlState::INVALID_PASSWORD,
            AuthError::Protocol(_) => SqlState::PROTOCOL_VIOLATION,
            AuthError::Mechanism(_) => SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
        }
    }
}

/// Runs the authentication exchange for `user` (shown in errors) with the
/// stored `secret` (`None`: unknown user). `server_key` keys the mock secrets.
/// `channel_binding`: the TLS connection's `tls-server-end-point` data, which
/// makes SCRAM-SHA-256-PLUS offered; `None` on plain connections.
/// Sends nothing on success: the caller sends AuthenticationOk once the rest
/// of the login is done. Returns the SCRAM ClientKey the client proved, when
/// it went through SCRAM (for SCRAM pass-through to the server).
pub async fn authenticate<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    method: AuthMethod,
    user: &str,
    secret: Option<&Secret>,
    server_key: &[u8],
    channel_binding: Option<&[u8]>,
) -> Result<Option<ClientKey>, AuthError> {
    let mut buf = BytesMut::with_capacity(256);
    match method {
        AuthMethod::Trust => Ok(None),
        AuthMethod::Md5 => {
            let salt = md5::random_salt();
            messages::auth_md5(&mut buf, salt);
            stream.write_all(&buf).await.map_err(ProtocolError::from)?;
            let reply = read_password_message(stream).await?;
            let expected = secret.and_then(|s| md5::expected_response(s, user, salt));
            // Unknown users (and SCRAM-only secrets) compare against a value no client can produce.
            let expected = expected.unwrap_or_else(|| "md5-unknown-user".to_string());
            if md5::verify(&expected, &reply) {
                Ok(None)
            } else {
                Err(AuthError::Failed(user.to_string()))
            }
        }
        AuthMethod::ScramSha256 => {
            let verifier = secret.and_then(|s| s.scram_verifier(user, server_key));
            let known = verifier.is_some();
            let verifier = verifier.unwrap_or_else(|| ScramVerifier::mock(user, server_key));
            let mut server = ScramServer::new(verifier, known);

            match channel_binding {
                Some(_) => messages::auth_sasl_scram_plus(&mut buf),
                None => messages::auth_sasl_scram(&mut buf),
            }
            stream.write_all(&buf).await.map_err(ProtocolError::from)?;
            let initial = read_password_message(stream).await?;
            let mut body = &initial[..];
            let mechanism = take_cstr(&mut body)?;
            let plus = match mechanism.as_str() {
                "SCRAM-SHA-256" => false,
                "SCRAM-SHA-256-PLUS" if channel_binding.is_some() => true,
                _ => return Err(AuthError::Mechanism(mechanism)),
            };
            server.channel_binding(channel_binding.map(<[u8]>::to_vec), plus);
            let len = take_i32(&mut body)?;
            if usize::try_from(len).ok() != Some(body.len()) {
                return Err(
                    ProtocolError::Malformed("SASL initial response length mismatch").into(),
                );
            }
            let server_first = server
                .client_first(body)
                .map_err(|e| scram_failure(e, user))?;
            buf.clear();
            messages::auth_sasl_continue(&mut buf, &server_first);
            stream.write_all(&buf).await.map_err(ProtocolError::from)?;

            let fin = read_password_message(stream).await?;
            let server_final = server
                .client_final(&fin)
                .map_err(|e| scram_failure(e, user))?;
            buf.clear();
            messages::auth_sasl_final(&mut buf, &server_final);
            stream.write_all(&buf).await.map_err(ProtocolError::from)?;
            Ok(server.client_key().cloned())
        }
    }
}

fn scram_failure(e: ScramError, user: &str) -> AuthError {
    match e {
        ScramError::WrongPassword => AuthError::Failed(user.to_string()),
        ScramError::ChannelBindingUnsupported => AuthError::Mechanism("SCRAM-SHA-256-PLUS".into()),
        ScramError::ChannelBindingNegotiation => AuthError::Protocol(ProtocolError::Malformed(
            "SCRAM channel binding negotiation error",
        )),
        _ => AuthError::Protocol(ProtocolError::Malformed("invalid SCRAM message")),
    }
}

async fn read_password_message<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<BytesMut, AuthError> {
    let msg = read_message(stream, MAX_AUTH_MESSAGE).await?;
    if msg.tag != tag::PASSWORD_MESSAGE {
        return Err(ProtocolError::Malformed("expected a password message").into());
    }
    Ok(msg.body)
}
