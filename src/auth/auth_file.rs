//! PgBouncer's `auth_file` (`userlist.txt`) format: one `"username" "secret"`
//! pair per line, double-quoted, `""` escaping a quote inside a field, extra
//! trailing fields ignored, `;`/`#` comment lines and blank lines skipped.
//! Parsing yields a map from user name to [`Secret`]; a later line for the
//! same user replaces an earlier one, as in PgBouncer.

use std::collections::HashMap;
use std::path::Path;

use super::secret::Secret;

/// Why an auth file could not be loaded.
#[derive(thiserror::Error, Debug)]
pub enum AuthFileError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The path that was being read.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A line is not valid `auth_file` syntax (or holds an invalid secret).
    #[error("{path}:{line}: {message}")]
    Syntax {
        /// The path (or name) the text came from.
        path: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
}

/// Parses auth-file `text`; `path` is used only in error messages
/// (e.g. `userlist.txt:3: unterminated quoted string`).
pub fn parse(text: &str, path: &str) -> Result<HashMap<String, Secret>, AuthFileError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut users = HashMap::new();
    for (idx, line) in text.lines().enumerate() {
        let err = |message: String| AuthFileError::Syntax {
            path: path.to_owned(),
            line: idx + 1,
            message,
        };
        let line = line.trim_start();
        if line.is_empty() || line.starts_with(';') || line.starts_with('#') {
            continue;
        }
        let (user, rest) = quoted(line).map_err(|e| err(e.with_field("user name")))?;
        if user.is_empty() {
            return Err(err("empty user name".into()));
        }
        if !rest.is_empty() && !rest.starts_with(char::is_whitespace) {
            return Err(err("expected whitespace after quoted user name".into()));
        }
        let rest = rest.trim_start();
        if rest.is_empty() {
            return Err(err(format!("missing password for user \"{user}\"")));
        }
        let (secret, _trailing) = quoted(rest).map_err(|e| err(e.with_field("password")))?;
        let secret = Secret::parse(&secret)
            .map_err(|e| err(format!("invalid secret for user \"{user}\": {e}")))?;
        users.insert(user, secret);
    }
    Ok(users)
}

/// Reads and parses the auth file at `path`; errors name the path.
pub fn load(path: &Path) -> Result<HashMap<String, Secret>, AuthFileError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| AuthFileError::Io {
        path: shown.clone(),
        source,
    })?;
    parse(&text, &shown)
}

enum QuoteError {
    NotQuoted,
    Unterminated,
}

impl QuoteError {
    fn with_field(self, field: &str) -> String {
        match self {
            QuoteError::NotQuoted => format!("expected quoted {field}"),
            QuoteError::Unterminated => "unterminated quoted string".to_owned(),
        }
    }
}

/// Parses one `"..."` field at the start of `s` (with `""` as an escaped
/// quote), returning its contents and the remainder after the closing quote.
fn quoted(s: &str) -> Result<(String, &str), QuoteError> {
    let body = s.strip_prefix('"').ok_or(QuoteError::NotQuoted)?;
    let mut out = String::new();
    let mut chars = body.char_indices();
    while let Some((i, c)) = chars.next() {
        if c != '"' {
            out.push(c);
            continue;
        }
        let after = body.get(i + 1..).unwrap_or("");
        if after.starts_with('"') {
            out.push('"');
            chars.next();
        } else {
            return Ok((out, after));
        }
    }
    Err(QuoteError::Unterminated)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err_of(text: &str) -> String {
        parse(text, "userlist.txt").unwrap_err().to_string()
    }

    #[test]
    fn parses_users() {
        let scram = postgres_protocol::password::scram_sha_256(b"pw");
        let md5 = postgres_protocol::password::md5(b"pw", "bob");
        let text = format!(
            "; comment\n\
             # another comment\n\
             \n   \n\
             \"alice\" \"plain pw\"\n\
             \"bob\"\t\"{md5}\" \"extra\" field ignored\n\
             \"we\"\"ird user\" \"pa\"\"ss\"\r\n\
             \"carol\" \"{scram}\"\n\
             \"\u{e9}mile\"  \"\"\n"
        );
        let users = parse(&text, "userlist.txt").unwrap();
        assert_eq!(users.len(), 5);
        assert_eq!(users["alice"], Secret::Plain("plain pw".into()));
        assert_eq!(users["bob"], Secret::Md5(md5));
        assert_eq!(users["we\"ird user"], Secret::Plain("pa\"ss".into()));
        assert!(matches!(users["carol"], Secret::Scram(_)));
        assert_eq!(users["\u{e9}mile"], Secret::Plain(String::new()));
    }

    #[test]
    fn later_line_wins() {
        let users = parse("\"a\" \"1\"\n\"a\" \"2\"\n", "f").unwrap();
        assert_eq!(users["a"], Secret::Plain("2".into()));
    }

    #[test]
    fn empty_file() {
        assert!(parse("", "f").unwrap().is_empty());
        assert!(parse("\u{feff}; only comment\n", "f").unwrap().is_empty());
    }

    #[test]
    fn errors_name_line() {
        assert_eq!(
            err_of("\"a\" \"b\"\n; c\n\"bob\" \"pw\n"),
            "userlist.txt:3: unterminated quoted string"
        );
        assert_eq!(
            err_of("\"bob\n"),
            "userlist.txt:1: unterminated quoted string"
        );
        assert_eq!(
            err_of("\n\nbob \"pw\"\n"),
            "userlist.txt:3: expected quoted user name"
        );
        assert_eq!(
            err_of("\"bob\" pw\n"),
            "userlist.txt:1: expected quoted password"
        );
        assert_eq!(
            err_of("\"a\" \"b\"\n\"bob\"\n"),
            "userlist.txt:2: missing password for user \"bob\""
        );
        assert_eq!(
            err_of("\"bob\"   \n"),
            "userlist.txt:1: missing password for user \"bob\""
        );
        assert_eq!(
            err_of("\"bob\"x \"pw\"\n"),
            "userlist.txt:1: expected whitespace after quoted user name"
        );
        assert_eq!(err_of("\"\" \"pw\"\n"), "userlist.txt:1: empty user name");
        let e = err_of("\"a\" \"b\"\n\"bob\" \"SCRAM-SHA-256$4096:zz\"\n");
        assert!(
            e.starts_with("userlist.txt:2: invalid secret for user \"bob\": malformed SCRAM"),
            "{e}"
        );
        assert!(
            !e.contains("4096:zz"),
            "error must not echo the secret: {e}"
        );
    }

    #[test]
    fn load_from_disk() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("userlist.txt");
        std::fs::write(&p, "\"u\" \"p\"\n\"v\"\n").unwrap();
        let e = load(&p).unwrap_err().to_string();
        assert!(e.starts_with(&format!("{}:2: ", p.display())), "{e}");
        std::fs::write(&p, "\"u\" \"p\"\n").unwrap();
        assert_eq!(load(&p).unwrap()["u"], Secret::Plain("p".into()));
        let missing = dir.path().join("nope.txt");
        let e = load(&missing).unwrap_err().to_string();
        assert!(e.starts_with(&missing.display().to_string()), "{e}");
    }
}
