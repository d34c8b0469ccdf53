//! Stored password secrets: parsing the forms PostgreSQL (`pg_authid.rolpassword`)
//! and PgBouncer (`auth_file`) store — SCRAM-SHA-256 verifiers, md5 hashes and
//! plain text — plus deriving SCRAM verifiers (real and mock) and the small
//! cryptographic helpers (PBKDF2 `Hi()`, HMAC, constant-time compare) the rest
//! of the `auth` module shares.

use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use md5::{Digest as _, Md5};
use sha2::Sha256;

/// Prefix of a SCRAM-SHA-256 verifier as stored in `pg_authid`.
pub const SCRAM_PREFIX: &str = "SCRAM-SHA-256$";

/// Iteration count used for mock verifiers and for verifiers derived from
/// plain-text secrets (PostgreSQL's default `scram_iterations`).
pub const DEFAULT_ITERATIONS: u32 = 4096;

/// Length in bytes of the salts this crate generates or derives.
pub const SALT_LEN: usize = 16;

/// Why a stored secret could not be parsed.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum SecretError {
    /// The string starts like a SCRAM-SHA-256 verifier but is not a valid one.
    #[error("malformed SCRAM-SHA-256 verifier: {0}")]
    MalformedScram(&'static str),
}

/// A stored password secret, in any of the forms PostgreSQL / PgBouncer store.
#[derive(Clone, PartialEq, Eq)]
pub enum Secret {
    /// A SCRAM-SHA-256 verifier (`SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>`).
    Scram(ScramVerifier),
    /// An md5 hash: `"md5"` followed by 32 lowercase hex digits of `md5(password || user)`.
    Md5(String),
    /// A plain-text password. May be empty; callers should refuse empty passwords.
    Plain(String),
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print secret material in logs.
        match self {
            Secret::Scram(v) => f.debug_tuple("Scram").field(v).finish(),
            Secret::Md5(_) => f.write_str("Md5(<redacted>)"),
            Secret::Plain(_) => f.write_str("Plain(<redacted>)"),
        }
    }
}

impl Secret {
    /// Classifies a stored secret string.
    ///
    /// A string starting with `SCRAM-SHA-256$` must be a well-formed verifier
    /// (otherwise an error is returned rather than silently treating it as a
    /// password); `md5` followed by exactly 32 lowercase hex digits is an md5
    /// hash; anything else is a plain-text password.
    pub fn parse(stored: &str) -> Result<Secret, SecretError> {
        if stored.starts_with(SCRAM_PREFIX) {
            return ScramVerifier::parse(stored).map(Secret::Scram);
        }
        if is_md5_hash(stored) {
            return Ok(Secret::Md5(stored.to_owned()));
        }
        Ok(Secret::Plain(stored.to_owned()))
    }

    /// The SCRAM verifier to run a SCRAM-SHA-256 exchange against, if one can be had.
    ///
    /// A `Scram` secret yields its verifier. A `Plain` secret yields a verifier
    /// derived from the password with a salt deterministically derived from
    /// `server_secret` and `username` (so repeated attempts see the same salt,
    /// just like a stored verifier or [`ScramVerifier::mock`]); this costs one
    /// PBKDF2 run, so callers may want to cache it. An `Md5` secret yields
    /// `None`: SCRAM cannot be checked against an md5 hash.
    pub fn scram_verifier(&self, username: &str, server_secret: &[u8]) -> Option<ScramVerifier> {
        match self {
            Secret::Scram(v) => Some(v.clone()),
            Secret::Plain(pw) => {
                let salt = derive(server_secret, b"plain-salt", username);
                Some(ScramVerifier::from_password(
                    pw,
                    &salt[..SALT_LEN],
                    DEFAULT_ITERATIONS,
                ))
            }
            Secret::Md5(_) => None,
        }
    }

    /// Checks a cleartext password (as sent in a `PasswordMessage` after
    /// `AuthenticationCleartextPassword`) against this secret, in constant time
    /// with respect to the secret's contents. `user` is needed for md5 secrets.
    pub fn verify_password(&self, user: &str, password: &[u8]) -> bool {
        match self {
            Secret::Plain(pw) => ct_eq(pw.as_bytes(), password),
            Secret::Md5(stored) => {
                let mut h = Md5::new();
                h.update(password);
                h.update(user.as_bytes());
                let computed = format!("md5{}", hex(&h.finalize()));
                ct_eq(stored.as_bytes(), computed.as_bytes())
            }
            Secret::Scram(v) => {
                // No SASLprep, as in ScramVerifier::from_password.
                let candidate =
                    ScramVerifier::from_password_bytes(password, &v.salt, v.iterations.max(1));
                let a = ct_eq(&candidate.stored_key, &v.stored_key);
                let b = ct_eq(&candidate.server_key, &v.server_key);
                a & b
            }
        }
    }
}

/// True if `s` is `"md5"` followed by exactly 32 lowercase hex digits.
fn is_md5_hash(s: &str) -> bool {
    match s.strip_prefix("md5") {
        Some(rest) => {
            rest.len() == 32
                && rest
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        }
        None => false,
    }
}

/// A SCRAM-SHA-256 verifier: what the server stores instead of the password.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramVerifier {
    /// PBKDF2 iteration count (`i=` in the exchange); always at least 1.
    pub iterations: u32,
    /// Salt (`s=` in the exchange, base64-encoded there).
    pub salt: Vec<u8>,
    /// `SHA-256(HMAC(SaltedPassword, "Client Key"))`.
    pub stored_key: [u8; 32],
    /// `HMAC(SaltedPassword, "Server Key")`.
    pub server_key: [u8; 32],
}

impl fmt::Debug for ScramVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramVerifier")
            .field("iterations", &self.iterations)
            .field("salt", &STANDARD.encode(&self.salt))
            .field("stored_key", &"<redacted>")
            .field("server_key", &"<redacted>")
            .finish()
    }
}

impl ScramVerifier {
    /// Parses `SCRAM-SHA-256$<iter>:<b64 salt>$<b64 StoredKey>:<b64 ServerKey>`
    /// (the `pg_authid.rolpassword` format).
    pub fn parse(s: &str) -> Result<Self, SecretError> {
        use SecretError::MalformedScram as M;
        let rest = s.strip_prefix(SCRAM_PREFIX).ok_or(M("missing prefix"))?;
        let (iter_salt, keys) = rest.split_once('$').ok_or(M("missing '$' before keys"))?;
        let (iter, salt) = iter_salt
            .split_once(':')
            .ok_or(M("missing ':' between iterations and salt"))?;
        let (stored, server) = keys.split_once(':').ok_or(M("missing ':' between keys"))?;
        if !iter.bytes().all(|b| b.is_ascii_digit()) || iter.is_empty() {
            return Err(M("iteration count is not a number"));
        }
        let iterations: u32 = iter
            .parse()
            .map_err(|_| M("iteration count out of range"))?;
        if iterations == 0 {
            return Err(M("iteration count is zero"));
        }
        let salt = STANDARD
            .decode(salt)
            .map_err(|_| M("salt is not valid base64"))?;
        if salt.is_empty() {
            return Err(M("salt is empty"));
        }
        let stored_key = decode_key(stored).ok_or(M("StoredKey is not 32 bytes of base64"))?;
        let server_key = decode_key(server).ok_or(M("ServerKey is not 32 bytes of base64"))?;
        Ok(ScramVerifier {
            iterations,
            salt,
            stored_key,
            server_key,
        })
    }

    /// Derives a verifier from a password per RFC 5802 / RFC 7677:
    /// `SaltedPassword = Hi(password, salt, iterations)` (PBKDF2-HMAC-SHA-256),
    /// `StoredKey = SHA-256(HMAC(SaltedPassword, "Client Key"))`,
    /// `ServerKey = HMAC(SaltedPassword, "Server Key")`.
    ///
    /// SASLprep is not applied: the password is used as-is. PostgreSQL itself
    /// falls back to the raw bytes whenever SASLprep fails, and for plain ASCII
    /// passwords SASLprep is the identity, so this matches PostgreSQL for all
    /// ASCII passwords. An `iterations` of 0 is treated as 1.
    pub fn from_password(password: &str, salt: &[u8], iterations: u32) -> Self {
        Self::from_password_bytes(password.as_bytes(), salt, iterations.max(1))
    }

    fn from_password_bytes(password: &[u8], salt: &[u8], iterations: u32) -> Self {
        let salted = hi(password, salt, iterations);
        let client_key = hmac_sha256(&salted, &[b"Client Key"]);
        let stored_key = sha256(&client_key);
        let server_key = hmac_sha256(&salted, &[b"Server Key"]);
        ScramVerifier {
            iterations,
            salt: salt.to_vec(),
            stored_key,
            server_key,
        }
    }

    /// A deterministic fake verifier for a user that does not exist, so that
    /// the exchange for an unknown user looks and costs the same as for a known
    /// one and fails only at the end.
    ///
    /// The salt is derived from `HMAC(server_secret, username)` (so it is stable
    /// across attempts for the same user and unpredictable without the secret);
    /// iterations are [`DEFAULT_ITERATIONS`]; the keys are likewise derived
    /// HMAC outputs, which do not correspond to any password. Pair it with
    /// `known = false` in [`crate::auth::scram::ScramServer::new`] so the final
    /// check fails regardless.
    pub fn mock(username: &str, server_secret: &[u8]) -> Self {
        let salt = derive(server_secret, b"mock-salt", username);
        ScramVerifier {
            iterations: DEFAULT_ITERATIONS,
            salt: salt[..SALT_LEN].to_vec(),
            stored_key: derive(server_secret, b"mock-stored-key", username),
            server_key: derive(server_secret, b"mock-server-key", username),
        }
    }
}

impl fmt::Display for ScramVerifier {
    /// Formats in the `pg_authid` form accepted by [`ScramVerifier::parse`].
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}{}:{}${}:{}",
            SCRAM_PREFIX,
            self.iterations,
            STANDARD.encode(&self.salt),
            STANDARD.encode(self.stored_key),
            STANDARD.encode(self.server_key)
        )
    }
}

fn decode_key(s: &str) -> Option<[u8; 32]> {
    let v = STANDARD.decode(s).ok()?;
    v.try_into().ok()
}

/// Domain-separated keyed derivation: `HMAC(secret, label || 0x00 || username)`.
fn derive(secret: &[u8], label: &[u8], username: &str) -> [u8; 32] {
    hmac_sha256(secret, &[label, b"\0", username.as_bytes()])
}

/// `HMAC-SHA-256(key, concat(parts))`.
pub(crate) fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC accepts keys of any length, so this cannot fail; fall back to an
    // empty-key MAC rather than panicking just in case.
    let mut mac = match Hmac::<Sha256>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => return [0u8; 32],
    };
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

/// `SHA-256(data)`.
pub(crate) fn sha256(data: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    Sha256::digest(data).into()
}

/// RFC 5802 `Hi()`: PBKDF2 with HMAC-SHA-256 and a single output block.
pub(crate) fn hi(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut u = hmac_sha256(password, &[salt, &1u32.to_be_bytes()]);
    let mut out = u;
    for _ in 1..iterations {
        u = hmac_sha256(password, &[&u]);
        for (o, x) in out.iter_mut().zip(u.iter()) {
            *o ^= x;
        }
    }
    out
}

/// Compares two byte strings in time independent of their contents (it does
/// depend on their lengths, which are not secret here).
pub(crate) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a
        .iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// Lowercase hex encoding.
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_postgres_protocol_verifier_and_round_trip() {
        let s = postgres_protocol::password::scram_sha_256(b"hunter2");
        let v = ScramVerifier::parse(&s).unwrap();
        assert_eq!(v.iterations, 4096);
        assert_eq!(v.to_string(), s);
        // Recomputing from the password with the same salt gives the same keys.
        let again = ScramVerifier::from_password("hunter2", &v.salt, v.iterations);
        assert_eq!(again, v);
        assert!(matches!(Secret::parse(&s), Ok(Secret::Scram(x)) if x == v));
    }

    #[test]
    fn rfc7677_test_vector() {
        // RFC 7677 section 3: user "user", password "pencil".
        let salt = STANDARD.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let v = ScramVerifier::from_password("pencil", &salt, 4096);
        // ServerSignature in the RFC is HMAC(ServerKey, AuthMessage); check via the
        // known AuthMessage.
        let auth = "n=user,r=rOprNGfwEbeRWgbNEkqO,\
                    r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
                    s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,\
                    c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
        let sig = hmac_sha256(&v.server_key, &[auth.as_bytes()]);
        assert_eq!(
            STANDARD.encode(sig),
            "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
    }

    #[test]
    fn round_trip_to_string() {
        let v = ScramVerifier::from_password("pw", b"0123456789abcdef", 10);
        let s = v.to_string();
        assert!(s.starts_with("SCRAM-SHA-256$10:"));
        assert_eq!(ScramVerifier::parse(&s).unwrap(), v);
    }

    #[test]
    fn malformed_verifiers_rejected() {
        let good = ScramVerifier::from_password("pw", b"salt", 4096).to_string();
        let (head, keys) = good.rsplit_once('$').unwrap();
        let (stored, server) = keys.split_once(':').unwrap();
        let bad = [
            "SCRAM-SHA-256$".to_string(),
            "SCRAM-SHA-256$4096".to_string(),
            format!("SCRAM-SHA-256$4096:c2FsdA=={stored}:{server}"),
            format!("SCRAM-SHA-256$abc:c2FsdA==${stored}:{server}"),
            format!("SCRAM-SHA-256$-1:c2FsdA==${stored}:{server}"),
            format!("SCRAM-SHA-256$0:c2FsdA==${stored}:{server}"),
            format!("SCRAM-SHA-256$99999999999:c2FsdA==${stored}:{server}"),
            format!("SCRAM-SHA-256$4096:${stored}:{server}"),
            format!("SCRAM-SHA-256$4096:!!!${stored}:{server}"),
            format!("{head}${stored}"),
            format!("{head}${stored}:"),
            format!("{head}${stored}:c2FsdA=="),
            format!("{head}$c2FsdA==:{server}"),
        ];
        for b in &bad {
            assert!(ScramVerifier::parse(b).is_err(), "accepted {b:?}");
            assert!(Secret::parse(b).is_err(), "accepted {b:?}");
        }
    }

    #[test]
    fn classify_secrets() {
        let md5 = postgres_protocol::password::md5(b"pw", "bob");
        assert_eq!(Secret::parse(&md5).unwrap(), Secret::Md5(md5.clone()));
        // Uppercase hex or wrong length is a plain password.
        let upper = format!("md5{}", md5[3..].to_uppercase());
        assert_eq!(Secret::parse(&upper).unwrap(), Secret::Plain(upper.clone()));
        assert_eq!(
            Secret::parse("md5abc").unwrap(),
            Secret::Plain("md5abc".into())
        );
        assert_eq!(Secret::parse("").unwrap(), Secret::Plain(String::new()));
        assert_eq!(
            Secret::parse("scram-sha-256$x").unwrap(),
            Secret::Plain("scram-sha-256$x".into())
        );
    }

    #[test]
    fn mock_is_deterministic_per_user() {
        let a1 = ScramVerifier::mock("alice", b"secret");
        let a2 = ScramVerifier::mock("alice", b"secret");
        let b = ScramVerifier::mock("bob", b"secret");
        let a3 = ScramVerifier::mock("alice", b"other secret");
        assert_eq!(a1, a2);
        assert_ne!(a1.salt, b.salt);
        assert_ne!(a1.salt, a3.salt);
        assert_eq!(a1.iterations, 4096);
        assert_eq!(a1.salt.len(), SALT_LEN);
        // Looks like a real verifier on the wire.
        assert_eq!(ScramVerifier::parse(&a1.to_string()).unwrap(), a1);
    }

    #[test]
    fn verify_cleartext_password() {
        let plain = Secret::Plain("pw".into());
        assert!(plain.verify_password("bob", b"pw"));
        assert!(!plain.verify_password("bob", b"pW"));
        assert!(!plain.verify_password("bob", b"pw2"));
        let md5 = Secret::parse(&postgres_protocol::password::md5(b"pw", "bob")).unwrap();
        assert!(md5.verify_password("bob", b"pw"));
        assert!(!md5.verify_password("alice", b"pw"));
        assert!(!md5.verify_password("bob", b"nope"));
        let scram = Secret::parse(&postgres_protocol::password::scram_sha_256(b"pw")).unwrap();
        assert!(scram.verify_password("bob", b"pw"));
        assert!(!scram.verify_password("bob", b"px"));
    }

    #[test]
    fn plain_secret_scram_verifier_is_stable() {
        let s = Secret::Plain("pw".into());
        let v1 = s.scram_verifier("bob", b"k").unwrap();
        let v2 = s.scram_verifier("bob", b"k").unwrap();
        assert_eq!(v1, v2);
        assert_eq!(
            v1,
            ScramVerifier::from_password("pw", &v1.salt, DEFAULT_ITERATIONS)
        );
        assert!(Secret::Md5("md5".to_string() + &"0".repeat(32))
            .scram_verifier("bob", b"k")
            .is_none());
    }

    #[test]
    fn debug_redacts() {
        let s = format!("{:?}", Secret::Plain("hunter2".into()));
        assert!(!s.contains("hunter2"));
        let v = ScramVerifier::from_password("pw", b"salt", 1);
        assert!(!format!("{v:?}").contains(&STANDARD.encode(v.stored_key)));
    }
}
