//! The client side of SCRAM-SHA-256 towards a server, answering with a
//! ClientKey instead of a password (SCRAM pass-through): the key a client
//! proved to the proxy, with the `auth_file` verifier's salt, iterations and
//! ServerKey, which must be the server's own (the verifier was copied from
//! its `pg_authid`). A pure state machine; no I/O. Logins with a password
//! use `postgres_protocol`'s client instead.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use rand::RngCore as _;

use super::credential::CredentialError;
use super::scram::ClientKey;
use super::secret::{ct_eq, hmac_sha256, sha256, ScramVerifier};

/// Random bytes in the client nonce (before base64).
const NONCE_LEN: usize = 18;

/// One SCRAM-SHA-256 exchange answered with a ClientKey.
pub struct ScramKeyClient {
    client_key: [u8; 32],
    verifier: ScramVerifier,
    nonce: String,
    /// The AuthMessage, once the server-first message has been answered.
    auth_message: Option<String>,
}

impl ScramKeyClient {
    /// Starts an exchange.
    pub fn new(client_key: &ClientKey, verifier: &ScramVerifier) -> Self {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        Self::with_nonce(client_key, verifier, STANDARD.encode(nonce))
    }

    fn with_nonce(client_key: &ClientKey, verifier: &ScramVerifier, nonce: String) -> Self {
        ScramKeyClient {
            client_key: client_key.0,
            verifier: verifier.clone(),
            nonce,
            auth_message: None,
        }
    }

    /// The client-first-message (no channel binding; the user name is left
    /// empty, as PostgreSQL takes it from the startup packet).
    pub fn client_first(&self) -> Vec<u8> {
        format!("n,,{}", self.client_first_bare()).into_bytes()
    }

    fn client_first_bare(&self) -> String {
        format!("n=,r={}", self.nonce)
    }

    /// Answers the server-first-message with the client-final-message.
    pub fn server_first(&mut self, msg: &[u8]) -> Result<Vec<u8>, CredentialError> {
        use CredentialError::Malformed as M;
        let server_first = std::str::from_utf8(msg).map_err(|_| M("not UTF-8"))?;
        let mut attrs = server_first.split(',');
        let nonce = attrs
            .next()
            .and_then(|a| a.strip_prefix("r="))
            .ok_or(M("expected nonce"))?;
        let salt = attrs
            .next()
            .and_then(|a| a.strip_prefix("s="))
            .ok_or(M("expected salt"))?;
        let iterations = attrs
            .next()
            .and_then(|a| a.strip_prefix("i="))
            .ok_or(M("expected iteration count"))?;
        if !nonce.starts_with(&self.nonce) || nonce.len() == self.nonce.len() {
            return Err(M("server nonce does not extend the client's"));
        }
        let salt = STANDARD.decode(salt).map_err(|_| M("salt is not base64"))?;
        let iterations: u32 = iterations
            .parse()
            .map_err(|_| M("iteration count is not a number"))?;
        if salt != self.verifier.salt || iterations != self.verifier.iterations {
            return Err(CredentialError::VerifierMismatch);
        }
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!(
            "{},{server_first},{without_proof}",
            self.client_first_bare()
        );
        let stored_key = sha256(&self.client_key);
        let signature = hmac_sha256(&stored_key, &[auth_message.as_bytes()]);
        let mut proof = [0u8; 32];
        for ((p, k), s) in proof.iter_mut().zip(&self.client_key).zip(&signature) {
            *p = k ^ s;
        }
        self.auth_message = Some(auth_message);
        Ok(format!("{without_proof},p={}", STANDARD.encode(proof)).into_bytes())
    }

    /// Checks the server-final-message's signature against the verifier's ServerKey.
    pub fn server_final(&self, msg: &[u8]) -> Result<(), CredentialError> {
        use CredentialError::Malformed as M;
        let auth_message = self.auth_message.as_ref().ok_or(M("final before first"))?;
        let msg = std::str::from_utf8(msg).map_err(|_| M("not UTF-8"))?;
        let signature = msg
            .split(',')
            .next()
            .and_then(|a| a.strip_prefix("v="))
            .ok_or(M("expected server signature"))?;
        let signature = STANDARD
            .decode(signature)
            .map_err(|_| M("signature is not base64"))?;
        let expected = hmac_sha256(&self.verifier.server_key, &[auth_message.as_bytes()]);
        if ct_eq(&signature, &expected) {
            Ok(())
        } else {
            Err(CredentialError::ServerSignature)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::scram::ScramServer;
    use crate::auth::secret::hi;

    const SALT: &[u8] = b"0123456789abcdef";

    fn key_of(password: &str) -> ClientKey {
        ClientKey(hmac_sha256(
            &hi(password.as_bytes(), SALT, 4096),
            &[b"Client Key"],
        ))
    }

    /// Runs the key client against the proxy's own SCRAM server.
    fn exchange(
        key: &ClientKey,
        held: &ScramVerifier,
        server: &ScramVerifier,
    ) -> Result<(), String> {
        let mut client = ScramKeyClient::with_nonce(key, held, "cnonce".into());
        let mut srv = ScramServer::new(server.clone(), true);
        let first = client.client_first();
        let sf = srv.client_first(&first).map_err(|e| e.to_string())?;
        let fin = client.server_first(&sf).map_err(|e| e.to_string())?;
        let sfin = srv.client_final(&fin).map_err(|e| e.to_string())?;
        client.server_final(&sfin).map_err(|e| e.to_string())
    }

    #[test]
    fn a_proved_key_logs_in() {
        let v = ScramVerifier::from_password("app-pw", SALT, 4096);
        exchange(&key_of("app-pw"), &v, &v).unwrap();
    }

    #[test]
    fn the_server_key_proves_by_round_trip() {
        // The proxy's server side recovers the same ClientKey the client used.
        let v = ScramVerifier::from_password("app-pw", SALT, 4096);
        let key = key_of("app-pw");
        let mut client = ScramKeyClient::with_nonce(&key, &v, "n1".into());
        let mut srv = ScramServer::new(v, true);
        let sf = srv.client_first(&client.client_first()).unwrap();
        let fin = client.server_first(&sf).unwrap();
        srv.client_final(&fin).unwrap();
        assert_eq!(srv.client_key(), Some(&key));
    }

    #[test]
    fn wrong_key_or_other_salt_fails() {
        let v = ScramVerifier::from_password("app-pw", SALT, 4096);
        assert!(exchange(&key_of("other"), &v, &v).is_err());
        let resalted = ScramVerifier::from_password("app-pw", b"another-salt-16b", 4096);
        let err = exchange(&key_of("app-pw"), &v, &resalted).unwrap_err();
        assert!(err.contains("salt or iteration"), "{err}");
    }

    #[test]
    fn a_forged_server_signature_is_refused() {
        let v = ScramVerifier::from_password("app-pw", SALT, 4096);
        let mut client = ScramKeyClient::with_nonce(&key_of("app-pw"), &v, "n2".into());
        let mut srv = ScramServer::new(v, true);
        let sf = srv.client_first(&client.client_first()).unwrap();
        client.server_first(&sf).unwrap();
        let forged = format!("v={}", STANDARD.encode([0u8; 32]));
        assert_eq!(
            client.server_final(forged.as_bytes()),
            Err(CredentialError::ServerSignature)
        );
        assert!(client.server_final(b"garbage").is_err());
    }
}
