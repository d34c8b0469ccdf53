//! What a passthrough client's server connections log in with, derived from
//! its `auth_file` secret and what it proved at login, as PgBouncer does: a
//! plain password answers any method; an md5 hash answers md5; a SCRAM
//! verifier answers SCRAM with the ClientKey the client proved (SCRAM
//! pass-through). Tenant roles log in with a [`Credential::Password`].
//! The exchange with the server is `pool::backend`'s; nothing here is ever
//! printed.

use std::fmt;

use super::scram::ClientKey;
use super::secret::{ScramVerifier, Secret};

/// A server login's secret material.
#[derive(Clone, PartialEq, Eq, Default)]
pub enum Credential {
    /// Nothing: only a server that asks no password (trust, peer) lets it in.
    #[default]
    None,
    /// A clear-text password: answers cleartext, md5 and SCRAM.
    Password(String),
    /// `md5` + hex(md5(password + user)): answers md5 only.
    Md5(String),
    /// A proved SCRAM ClientKey and the verifier it belongs to: answers
    /// SCRAM when the server's salt and iterations are the verifier's.
    Scram {
        /// ClientProof XOR ClientSignature of the client's own exchange.
        client_key: ClientKey,
        /// The `auth_file` verifier (salt, iterations, ServerKey).
        verifier: ScramVerifier,
    },
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Credential::None => "Credential::None",
            Credential::Password(_) => "Credential::Password(<redacted>)",
            Credential::Md5(_) => "Credential::Md5(<redacted>)",
            Credential::Scram { .. } => "Credential::Scram(<redacted>)",
        })
    }
}

impl Credential {
    /// The credential a client authenticated against `secret` brings;
    /// `proved` is the ClientKey of its SCRAM exchange, if it had one.
    pub fn from_client(secret: &Secret, proved: Option<ClientKey>) -> Credential {
        match (secret, proved) {
            (Secret::Plain(pw), _) => Credential::Password(pw.clone()),
            (Secret::Md5(hash), _) => Credential::Md5(hash.clone()),
            (Secret::Scram(verifier), Some(client_key)) => Credential::Scram {
                client_key,
                verifier: verifier.clone(),
            },
            // Logged in without SCRAM (trust): nothing to answer with.
            (Secret::Scram(_), None) => Credential::None,
        }
    }

    /// What the credential is, for error messages (no secret material).
    pub fn kind(&self) -> &'static str {
        match self {
            Credential::None => "no password",
            Credential::Password(_) => "a plain password",
            Credential::Md5(_) => "an md5 hash",
            Credential::Scram { .. } => "a SCRAM verifier",
        }
    }
}

/// Why a server login could not be answered with the credential in hand.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    /// The server asks for a method this credential cannot answer.
    #[error("the server asks for {asked}, which {held} cannot answer")]
    Unanswerable {
        /// The method the server asked for.
        asked: &'static str,
        /// [`Credential::kind`].
        held: &'static str,
    },
    /// The server's SCRAM salt or iteration count is not the verifier's.
    #[error(
        "the server's SCRAM salt or iteration count differs from the auth_file verifier's \
         (copy the verifier from the server's pg_authid)"
    )]
    VerifierMismatch,
    /// The server's SCRAM signature does not match the verifier's ServerKey.
    #[error("the server's SCRAM signature is wrong")]
    ServerSignature,
    /// The server's SCRAM message did not follow the grammar.
    #[error("malformed SCRAM message from the server: {0}")]
    Malformed(&'static str),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_secrets() {
        let c = Credential::Password("hunter2".into());
        assert!(!format!("{c:?}").contains("hunter2"));
        let c = Credential::Md5("md5abc".into());
        assert!(!format!("{c:?}").contains("abc"));
    }

    #[test]
    fn from_client_follows_the_secret() {
        let v = ScramVerifier::from_password("pw", b"0123456789abcdef", 4096);
        let key = ClientKey([7; 32]);
        assert_eq!(
            Credential::from_client(&Secret::Plain("pw".into()), Some(key.clone())),
            Credential::Password("pw".into())
        );
        assert!(matches!(
            Credential::from_client(&Secret::Scram(v.clone()), Some(key)),
            Credential::Scram { .. }
        ));
        assert_eq!(
            Credential::from_client(&Secret::Scram(v), None),
            Credential::None
        );
    }
}
