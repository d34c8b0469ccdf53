//! PostgreSQL's md5 password authentication (`AuthenticationMD5Password`):
//! computing the response a client must send for a given secret, user and
//! salt, and checking the client's response in constant time.

use md5::{Digest as _, Md5};

use super::secret::{ct_eq, hex, Secret};

/// What the client must send for `user` with this secret and salt:
/// `"md5" + hex(md5(hex(md5(password + user)) + salt))`.
///
/// Works for `Plain` and `Md5` secrets (the latter already hold the inner
/// hash). `None` for a `Scram` secret: md5 cannot be checked against a SCRAM
/// verifier.
pub fn expected_response(secret: &Secret, user: &str, salt: [u8; 4]) -> Option<String> {
    let inner = match secret {
        Secret::Plain(pw) => {
            let mut h = Md5::new();
            h.update(pw.as_bytes());
            h.update(user.as_bytes());
            hex(&h.finalize())
        }
        // Secret::parse only builds Md5 from "md5" + 32 hex digits, but be
        // defensive rather than index.
        Secret::Md5(stored) => stored.strip_prefix("md5").unwrap_or(stored).to_owned(),
        Secret::Scram(_) => return None,
    };
    let mut h = Md5::new();
    h.update(inner.as_bytes());
    h.update(salt);
    Some(format!("md5{}", hex(&h.finalize())))
}

/// Constant-time comparison of the client's response (the string from its
/// `PasswordMessage`, with or without the trailing NUL terminator) with the
/// expected one from [`expected_response`].
pub fn verify(expected: &str, got: &[u8]) -> bool {
    let got = got.strip_suffix(b"\0").unwrap_or(got);
    ct_eq(expected.as_bytes(), got)
}

/// Generates a random 4-byte salt for `AuthenticationMD5Password`.
pub fn random_salt() -> [u8; 4] {
    use rand::RngCore as _;
    let mut salt = [0u8; 4];
    rand::rngs::OsRng.fill_bytes(&mut salt);
    salt
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::secret::ScramVerifier;
    use postgres_protocol::authentication::md5_hash;

    #[test]
    fn plain_matches_postgres_protocol() {
        let salt = [1, 2, 3, 250];
        let s = Secret::Plain("hunter2".into());
        let exp = expected_response(&s, "alice", salt).unwrap();
        assert_eq!(exp, md5_hash(b"alice", b"hunter2", salt));
        assert!(verify(&exp, exp.as_bytes()));
        let mut with_nul = exp.clone().into_bytes();
        with_nul.push(0);
        assert!(verify(&exp, &with_nul));
        assert!(!verify(
            &exp,
            md5_hash(b"alice", b"hunter3", salt).as_bytes()
        ));
        assert!(!verify(&exp, md5_hash(b"bob", b"hunter2", salt).as_bytes()));
        assert!(!verify(&exp, b""));
        assert!(!verify(&exp, &exp.as_bytes()[..10]));
    }

    #[test]
    fn md5_secret_matches_postgres_protocol() {
        let salt = random_salt();
        let stored = postgres_protocol::password::md5(b"pa$$word", "bob");
        let s = Secret::parse(&stored).unwrap();
        assert!(matches!(s, Secret::Md5(_)));
        let exp = expected_response(&s, "bob", salt).unwrap();
        assert_eq!(exp, md5_hash(b"bob", b"pa$$word", salt));
        // Same as from the plain password.
        assert_eq!(
            Some(exp),
            expected_response(&Secret::Plain("pa$$word".into()), "bob", salt)
        );
    }

    #[test]
    fn scram_secret_has_no_md5_response() {
        let v = ScramVerifier::from_password("pw", b"salt", 1);
        assert_eq!(expected_response(&Secret::Scram(v), "bob", [0; 4]), None);
    }
}
