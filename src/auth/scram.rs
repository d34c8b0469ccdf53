//! The server side of SCRAM-SHA-256 (RFC 5802 / RFC 7677) as PostgreSQL
//! speaks it, as a pure state machine: it consumes the client's messages
//! (already unwrapped from `SASLInitialResponse` / `SASLResponse`) and produces
//! the bodies of `AuthenticationSASLContinue` / `AuthenticationSASLFinal`.
//! Over TLS it also does SCRAM-SHA-256-PLUS with `tls-server-end-point`
//! channel binding (RFC 5929), given the binding data by the caller.
//! No I/O happens here.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use rand::RngCore as _;

use super::secret::{ct_eq, hmac_sha256, sha256, ScramVerifier};

/// Number of random bytes in the server's part of the nonce (before base64).
const SERVER_NONCE_LEN: usize = 18;

/// Why a SCRAM exchange failed.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum ScramError {
    /// A client message did not follow the SCRAM grammar (or was not UTF-8).
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    /// The client asked for channel binding (`p=` gs2 flag) that is not
    /// offered: no TLS, or a type other than `tls-server-end-point`.
    #[error("SCRAM channel binding is not supported")]
    ChannelBindingUnsupported,
    /// The gs2 flag contradicts the mechanism or what the server offered:
    /// `y` when SCRAM-SHA-256-PLUS was offered (a downgrade), `p=` without
    /// choosing PLUS, or PLUS without `p=`.
    #[error("SCRAM channel binding negotiation error")]
    ChannelBindingNegotiation,
    /// The client-final `c=` attribute does not match the client-first gs2 header.
    #[error("SCRAM channel binding data does not match")]
    ChannelBindingMismatch,
    /// The client-final nonce is not the combined nonce the server sent.
    #[error("SCRAM nonce does not match")]
    NonceMismatch,
    /// The client proof is wrong (or the user does not exist).
    #[error("password authentication failed")]
    WrongPassword,
    /// A message arrived in the wrong state (e.g. client-final before client-first).
    #[error("unexpected SCRAM message in this state")]
    OutOfOrder,
}

enum State {
    /// Waiting for client-first-message.
    Initial,
    /// Server-first sent; waiting for client-final-message.
    SentFirst {
        /// What `c=` must decode to: the gs2 header, plus the binding data under `p=`.
        cbind_expected: Vec<u8>,
        client_first_bare: String,
        server_first: String,
        nonce: String,
    },
    /// Finished (successfully or not); no more messages are accepted.
    Done,
}

/// Server side of one SCRAM-SHA-256 exchange.
pub struct ScramServer {
    verifier: ScramVerifier,
    known: bool,
    state: State,
    /// `tls-server-end-point` data when the connection is TLS (PLUS offered).
    binding: Option<Vec<u8>>,
    /// Whether the client chose SCRAM-SHA-256-PLUS.
    plus: bool,
    /// The ClientKey the client proved, once its proof checked out.
    client_key: Option<ClientKey>,
}

/// The SCRAM ClientKey a client proved it holds (ClientProof XOR
/// ClientSignature): with the verifier's salt and iteration count it
/// answers another server's SCRAM exchange for the same verifier, without
/// the password. Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientKey(pub [u8; 32]);

impl std::fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientKey(<redacted>)")
    }
}

impl ScramServer {
    /// Starts an exchange.
    ///
    /// `verifier`: the user's verifier (or [`ScramVerifier::mock`]); `known`:
    /// false for a mock, so the final check always fails with
    /// [`ScramError::WrongPassword`] after doing the same work as a real check.
    pub fn new(verifier: ScramVerifier, known: bool) -> Self {
        ScramServer {
            verifier,
            known,
            state: State::Initial,
            binding: None,
            plus: false,
            client_key: None,
        }
    }

    /// Says what channel binding this exchange has: `binding` is the
    /// `tls-server-end-point` data when SCRAM-SHA-256-PLUS was offered (the
    /// connection is TLS), `plus` whether the client chose it.
    pub fn channel_binding(&mut self, binding: Option<Vec<u8>>, plus: bool) {
        self.binding = binding;
        self.plus = plus;
    }

    /// Handles the client-first-message, i.e. the body of the client's
    /// `SASLInitialResponse` after the mechanism name and length have been
    /// parsed off by the caller (`n,,n=,r=<nonce>`). Returns the
    /// server-first-message (`r=<client nonce+server nonce>,s=<b64 salt>,i=<iter>`).
    ///
    /// The user name in the message is ignored (PostgreSQL clients send it
    /// empty; the user comes from the startup packet).
    pub fn client_first(&mut self, msg: &[u8]) -> Result<Vec<u8>, ScramError> {
        let mut nonce_bytes = [0u8; SERVER_NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce_bytes);
        self.client_first_with_nonce(msg, &STANDARD.encode(nonce_bytes))
    }

    fn client_first_with_nonce(
        &mut self,
        msg: &[u8],
        server_nonce: &str,
    ) -> Result<Vec<u8>, ScramError> {
        if !matches!(self.state, State::Initial) {
            self.state = State::Done;
            return Err(ScramError::OutOfOrder);
        }
        // Any failure leaves the exchange finished.
        self.state = State::Done;
        let msg = std::str::from_utf8(msg).map_err(|_| ScramError::Malformed("not UTF-8"))?;

        // gs2-header = gs2-cbind-flag "," [ authzid ] ","
        let (flag, rest) = msg
            .split_once(',')
            .ok_or(ScramError::Malformed("missing gs2 header"))?;
        let bound = match (flag, self.plus, &self.binding) {
            ("n", false, _) | ("y", false, None) => None,
            // The client saw no PLUS although it was offered: a downgrade.
            ("y", false, Some(_)) => return Err(ScramError::ChannelBindingNegotiation),
            ("p=tls-server-end-point", true, Some(data)) => Some(data.clone()),
            (f, true, Some(_)) if f.starts_with("p=") => {
                return Err(ScramError::ChannelBindingUnsupported)
            }
            (f, false, None) if f.starts_with("p=") => {
                return Err(ScramError::ChannelBindingUnsupported)
            }
            (f, false, Some(_)) if f.starts_with("p=") => {
                return Err(ScramError::ChannelBindingNegotiation)
            }
            ("n" | "y", true, _) => return Err(ScramError::ChannelBindingNegotiation),
            (_, true, None) => return Err(ScramError::ChannelBindingUnsupported),
            _ => return Err(ScramError::Malformed("invalid channel binding flag")),
        };
        let (authzid, bare) = rest
            .split_once(',')
            .ok_or(ScramError::Malformed("missing gs2 header"))?;
        if !authzid.is_empty() {
            // PostgreSQL does not support authorization identities either.
            return Err(ScramError::Malformed(
                "authorization identity not supported",
            ));
        }
        let gs2_len = flag.len() + 1 + authzid.len() + 1;
        let gs2_header = msg
            .get(..gs2_len)
            .ok_or(ScramError::Malformed("missing gs2 header"))?;

        // client-first-message-bare = [reserved-mext ","] username "," nonce ["," extensions]
        let mut attrs = bare.split(',');
        let user = attrs
            .next()
            .ok_or(ScramError::Malformed("missing user name"))?;
        if user.starts_with("m=") {
            return Err(ScramError::Malformed("mandatory extensions not supported"));
        }
        if !user.starts_with("n=") {
            return Err(ScramError::Malformed("expected user name attribute"));
        }
        let client_nonce = attrs
            .next()
            .and_then(|a| a.strip_prefix("r="))
            .ok_or(ScramError::Malformed("expected nonce attribute"))?;
        if client_nonce.is_empty() || !client_nonce.bytes().all(is_printable) {
            return Err(ScramError::Malformed("invalid client nonce"));
        }
        for ext in attrs {
            if !is_attr(ext) {
                return Err(ScramError::Malformed("invalid attribute"));
            }
        }

        let nonce = format!("{client_nonce}{server_nonce}");
        let server_first = format!(
            "r={nonce},s={},i={}",
            STANDARD.encode(&self.verifier.salt),
            self.verifier.iterations
        );
        let out = server_first.clone().into_bytes();
        let mut cbind_expected = gs2_header.as_bytes().to_vec();
        cbind_expected.extend(bound.unwrap_or_default());
        self.state = State::SentFirst {
            cbind_expected,
            client_first_bare: bare.to_owned(),
            server_first,
            nonce,
        };
        Ok(out)
    }

    /// Handles the client-final-message (`c=biws,r=...,p=<proof>`). On success
    /// returns the server-final-message (`v=<b64 ServerSignature>`).
    ///
    /// Checks that `c=` is the base64 of the client-first gs2 header, that the
    /// nonce matches exactly, and the proof (in constant time). A wrong proof,
    /// or any proof for an unknown user, gives [`ScramError::WrongPassword`].
    pub fn client_final(&mut self, msg: &[u8]) -> Result<Vec<u8>, ScramError> {
        let (cbind_expected, client_first_bare, server_first, nonce) =
            match std::mem::replace(&mut self.state, State::Done) {
                State::SentFirst {
                    cbind_expected,
                    client_first_bare,
                    server_first,
                    nonce,
                } => (cbind_expected, client_first_bare, server_first, nonce),
                _ => return Err(ScramError::OutOfOrder),
            };
        let msg = std::str::from_utf8(msg).map_err(|_| ScramError::Malformed("not UTF-8"))?;

        // client-final-message = channel-binding "," nonce ["," extensions] "," proof
        let (without_proof, proof) = msg
            .rsplit_once(",p=")
            .ok_or(ScramError::Malformed("missing proof"))?;
        let mut attrs = without_proof.split(',');
        let cbind = attrs
            .next()
            .and_then(|a| a.strip_prefix("c="))
            .ok_or(ScramError::Malformed("expected channel binding attribute"))?;
        let got_nonce = attrs
            .next()
            .and_then(|a| a.strip_prefix("r="))
            .ok_or(ScramError::Malformed("expected nonce attribute"))?;
        for ext in attrs {
            if !is_attr(ext) {
                return Err(ScramError::Malformed("invalid attribute"));
            }
        }
        let cbind = STANDARD
            .decode(cbind)
            .map_err(|_| ScramError::Malformed("channel binding is not base64"))?;
        if !ct_eq(&cbind, &cbind_expected) {
            return Err(ScramError::ChannelBindingMismatch);
        }
        if got_nonce != nonce {
            return Err(ScramError::NonceMismatch);
        }
        let proof = STANDARD
            .decode(proof)
            .map_err(|_| ScramError::Malformed("proof is not base64"))?;
        if proof.len() != 32 {
            return Err(ScramError::Malformed("proof has wrong length"));
        }

        let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
        let client_signature = hmac_sha256(&self.verifier.stored_key, &[auth_message.as_bytes()]);
        let mut client_key = [0u8; 32];
        for ((k, p), s) in client_key
            .iter_mut()
            .zip(proof.iter())
            .zip(client_signature.iter())
        {
            *k = p ^ s;
        }
        let matches = ct_eq(&sha256(&client_key), &self.verifier.stored_key);
        if !(matches & self.known) {
            return Err(ScramError::WrongPassword);
        }
        self.client_key = Some(ClientKey(client_key));
        let server_signature = hmac_sha256(&self.verifier.server_key, &[auth_message.as_bytes()]);
        Ok(format!("v={}", STANDARD.encode(server_signature)).into_bytes())
    }
}

impl ScramServer {
    /// The ClientKey the client proved, after a successful
    /// [`ScramServer::client_final`]; `None` before or after a failure.
    pub fn client_key(&self) -> Option<&ClientKey> {
        self.client_key.as_ref()
    }
}

/// RFC 5802 `printable`: %x21-2B / %x2D-7E (no comma).
fn is_printable(b: u8) -> bool {
    (0x21..=0x7e).contains(&b) && b != b','
}

/// `attr-val = ALPHA "=" value`.
fn is_attr(s: &str) -> bool {
    let b = s.as_bytes();
    matches!(b, [a, b'=', ..] if a.is_ascii_alphabetic())
}

#[cfg(test)]
mod tests {
    use super::*;
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
    use rand::Rng as _;

    fn pg_verifier(password: &str) -> ScramVerifier {
        ScramVerifier::parse(&postgres_protocol::password::scram_sha_256(
            password.as_bytes(),
        ))
        .unwrap()
    }

    /// Runs a full exchange: client with `client_pw` against `verifier`.
    fn exchange(
        verifier: ScramVerifier,
        known: bool,
        client_pw: &str,
        cb: ChannelBinding,
    ) -> Result<(), ScramError> {
        let mut client = ScramSha256::new(client_pw.as_bytes(), cb);
        let mut server = ScramServer::new(verifier, known);
        let first = server.client_first(client.message())?;
        client.update(&first).unwrap();
        let fin = server.client_final(client.message())?;
        client.finish(&fin).expect("client accepts server-final");
        Ok(())
    }

    #[test]
    fn exchange_with_postgres_protocol_client() {
        let v = pg_verifier("correct horse");
        assert_eq!(
            exchange(
                v.clone(),
                true,
                "correct horse",
                ChannelBinding::unsupported()
            ),
            Ok(())
        );
        // "y,," (client supports channel binding, thinks server does not).
        assert_eq!(
            exchange(
                v.clone(),
                true,
                "correct horse",
                ChannelBinding::unrequested()
            ),
            Ok(())
        );
        assert_eq!(
            exchange(v, true, "wrong horse", ChannelBinding::unsupported()),
            Err(ScramError::WrongPassword)
        );
    }

    fn exchange_bound(
        binding: Option<&[u8]>,
        plus: bool,
        cb: ChannelBinding,
    ) -> Result<(), ScramError> {
        let mut client = ScramSha256::new(b"pw", cb);
        let mut server = ScramServer::new(pg_verifier("pw"), true);
        server.channel_binding(binding.map(<[u8]>::to_vec), plus);
        let first = server.client_first(client.message())?;
        client.update(&first).unwrap();
        let fin = server.client_final(client.message())?;
        client.finish(&fin).expect("client accepts server-final");
        Ok(())
    }

    #[test]
    fn channel_binding() {
        let data = b"end point hash".to_vec();
        let tsep = || ChannelBinding::tls_server_end_point(data.clone());
        assert_eq!(exchange_bound(Some(&data), true, tsep()), Ok(()));
        // Another connection's certificate hash does not bind.
        assert_eq!(
            exchange_bound(Some(b"another hash"), true, tsep()),
            Err(ScramError::ChannelBindingMismatch)
        );
        // Offered over TLS but not chosen: "n" is fine, "y" is a downgrade.
        let unsupported = ChannelBinding::unsupported;
        assert_eq!(exchange_bound(Some(&data), false, unsupported()), Ok(()));
        assert_eq!(
            exchange_bound(Some(&data), false, ChannelBinding::unrequested()),
            Err(ScramError::ChannelBindingNegotiation)
        );
        // p= without choosing PLUS, PLUS without p=, PLUS without TLS.
        assert_eq!(
            exchange_bound(Some(&data), false, tsep()),
            Err(ScramError::ChannelBindingNegotiation)
        );
        assert_eq!(
            exchange_bound(Some(&data), true, unsupported()),
            Err(ScramError::ChannelBindingNegotiation)
        );
        assert_eq!(
            exchange_bound(None, true, tsep()),
            Err(ScramError::ChannelBindingUnsupported)
        );
        assert_eq!(
            exchange_bound(None, false, tsep()),
            Err(ScramError::ChannelBindingUnsupported)
        );
    }

    #[test]
    fn exchange_with_own_verifier() {
        let v = ScramVerifier::from_password("s3cret", b"some salt bytes!", 4096);
        assert_eq!(
            exchange(v.clone(), true, "s3cret", ChannelBinding::unsupported()),
            Ok(())
        );
        assert_eq!(
            exchange(v, true, "s3cret!", ChannelBinding::unsupported()),
            Err(ScramError::WrongPassword)
        );
    }

    #[test]
    fn known_false_always_fails() {
        let v = pg_verifier("pw");
        assert_eq!(
            exchange(v, false, "pw", ChannelBinding::unsupported()),
            Err(ScramError::WrongPassword)
        );
        for pw in ["", "pw", "alice"] {
            let m = ScramVerifier::mock("alice", b"server secret");
            assert_eq!(
                exchange(m, false, pw, ChannelBinding::unsupported()),
                Err(ScramError::WrongPassword)
            );
        }
    }

    #[test]
    fn server_first_format() {
        let v = ScramVerifier::from_password("pw", b"salt", 4096);
        let mut s = ScramServer::new(v, true);
        let out = s.client_first_with_nonce(b"n,,n=,r=abc", "XYZ").unwrap();
        assert_eq!(out, b"r=abcXYZ,s=c2FsdA==,i=4096");
        let mut s = ScramServer::new(ScramVerifier::mock("u", b"k"), false);
        let out = String::from_utf8(s.client_first(b"n,,n=anything,r=abc").unwrap()).unwrap();
        let nonce = out
            .strip_prefix("r=abc")
            .unwrap()
            .split(',')
            .next()
            .unwrap();
        assert_eq!(nonce.len(), 24);
    }

    /// Drives a real client to produce a client-final, then lets `tamper`
    /// rewrite it before the server sees it.
    fn tampered(tamper: impl Fn(&str) -> String) -> Result<Vec<u8>, ScramError> {
        let v = pg_verifier("pw");
        let mut client = ScramSha256::new(b"pw", ChannelBinding::unsupported());
        let mut server = ScramServer::new(v, true);
        let first = server.client_first(client.message()).unwrap();
        client.update(&first).unwrap();
        let fin = std::str::from_utf8(client.message()).unwrap().to_owned();
        server.client_final(tamper(&fin).as_bytes())
    }

    #[test]
    fn tampering_rejected() {
        assert!(tampered(|m| m.to_owned()).is_ok());
        assert_eq!(
            tampered(|m| m.replacen("c=biws", "c=eSws", 1)),
            Err(ScramError::ChannelBindingMismatch)
        );
        assert_eq!(
            tampered(|m| m.replacen(",r=", ",r=x", 1)),
            Err(ScramError::NonceMismatch)
        );
        assert_eq!(
            tampered(|m| {
                // Drop the last character of the nonce.
                let (head, proof) = m.rsplit_once(",p=").unwrap();
                format!("{},p={proof}", &head[..head.len() - 1])
            }),
            Err(ScramError::NonceMismatch)
        );
        assert_eq!(
            tampered(|m| {
                let (head, proof) = m.rsplit_once(",p=").unwrap();
                let mut p = STANDARD.decode(proof).unwrap();
                p[0] ^= 1;
                format!("{head},p={}", STANDARD.encode(p))
            }),
            Err(ScramError::WrongPassword)
        );
        assert!(matches!(
            tampered(|m| m.replacen("c=biws", "c=!!", 1)),
            Err(ScramError::Malformed(_))
        ));
    }

    #[test]
    fn gs2_flags() {
        let v = ScramVerifier::mock("u", b"k");
        let mut s = ScramServer::new(v.clone(), false);
        assert_eq!(
            s.client_first(b"p=tls-server-end-point,,n=,r=abc"),
            Err(ScramError::ChannelBindingUnsupported)
        );
        for bad in [
            &b"x,,n=,r=abc"[..],
            b"n,a=bob,n=,r=abc",
            b"n,,m=ext,n=,r=abc",
            b"n,,n=,r=",
            b"n,,n=,r=a b",
            b"n,,r=abc",
            b"n,,n=",
            b"n,",
            b"",
            b"\xff\xfe",
        ] {
            let mut s = ScramServer::new(v.clone(), false);
            assert!(
                matches!(s.client_first(bad), Err(ScramError::Malformed(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn out_of_order() {
        let v = ScramVerifier::mock("u", b"k");
        let mut s = ScramServer::new(v.clone(), false);
        assert_eq!(
            s.client_final(b"c=biws,r=a,p=x"),
            Err(ScramError::OutOfOrder)
        );
        let mut s = ScramServer::new(v, false);
        s.client_first(b"n,,n=,r=abc").unwrap();
        assert_eq!(s.client_first(b"n,,n=,r=abc"), Err(ScramError::OutOfOrder));
        // After a failure, the exchange is over.
        assert_eq!(
            s.client_final(b"c=biws,r=a,p=x"),
            Err(ScramError::OutOfOrder)
        );
    }

    #[test]
    fn garbage_never_panics() {
        let mut rng = rand::thread_rng();
        let v = pg_verifier("pw");
        let good_first = b"n,,n=,r=abcdef".to_vec();
        let alphabet = b"nyp=,cra\xffbiws01+/";
        for i in 0..3000 {
            let len = rng.gen_range(0..40);
            let msg: Vec<u8> = if i % 2 == 0 {
                (0..len).map(|_| rng.gen()).collect()
            } else {
                (0..len)
                    .map(|_| alphabet[rng.gen_range(0..alphabet.len())])
                    .collect()
            };
            let mut s = ScramServer::new(v.clone(), true);
            let _ = s.client_first(&msg);
            let _ = s.client_final(&msg);
            let mut s = ScramServer::new(v.clone(), true);
            let first = String::from_utf8(s.client_first(&good_first).unwrap()).unwrap();
            let nonce = first.split(',').next().unwrap().to_owned();
            let mut fin = format!("c=biws,{nonce},p=").into_bytes();
            fin.extend_from_slice(&msg);
            let _ = s.client_final(&fin);
        }
        // Truncations of a valid exchange.
        let mut client = ScramSha256::new(b"pw", ChannelBinding::unsupported());
        let cf = client.message().to_vec();
        for n in 0..cf.len() {
            let mut s = ScramServer::new(v.clone(), true);
            let _ = s.client_first(&cf[..n]);
        }
        let mut s = ScramServer::new(v.clone(), true);
        let first = s.client_first(&cf).unwrap();
        client.update(&first).unwrap();
        let fin = client.message().to_vec();
        for n in 0..fin.len() {
            let mut s2 = ScramServer::new(v.clone(), true);
            s2.client_first(&cf).unwrap();
            assert!(s2.client_final(&fin[..n]).is_err());
        }
        assert!(s.client_final(&fin).is_ok());
    }
}
