//! Which SQL leaves session state behind on a server connection, for
//! transaction pooling: after such a statement the connection is cleaned
//! with `server_reset_query` before anyone else gets it.
//!
//! The rule is deliberately conservative and cheap: it looks at the first
//! words of each statement in the text (skipping comments and quoted text),
//! plus a few function names anywhere. A false positive costs one reset; a
//! false negative would let state reach another client of the same tenant,
//! so anything doubtful counts as state.

/// Functions that change session state wherever they appear.
const STATEFUL_FUNCTIONS: &[&str] = &[
    "set_config",
    "pg_advisory_lock",
    "pg_try_advisory_lock",
    "dblink_connect",
];

/// Whether running `sql` may leave state that outlives its transaction.
/// Runs on every simple query in transaction pooling, so it allocates nothing.
pub fn leaves_session_state(sql: &[u8]) -> bool {
    calls_stateful_function(sql) || statements_any(sql, stateful)
}

/// Whether one of [`STATEFUL_FUNCTIONS`] appears in `sql`. Each of them has
/// an underscore, and ordinary SQL has few: only the text around each
/// underscore is compared (one vectorised scan instead of one per name).
fn calls_stateful_function(sql: &[u8]) -> bool {
    memchr::memchr_iter(b'_', sql).any(|at| {
        STATEFUL_FUNCTIONS.iter().any(|f| {
            let first = f.find('_').unwrap_or(0);
            at.checked_sub(first)
                .and_then(|start| sql.get(start..start + f.len()))
                .is_some_and(|w| w.eq_ignore_ascii_case(f.as_bytes()))
        })
    })
}

/// The first words of one statement (more are not needed to judge it).
struct Words<'a> {
    words: [&'a [u8]; 8],
    len: usize,
}

impl<'a> Words<'a> {
    fn new() -> Self {
        Words {
            words: [b""; 8],
            len: 0,
        }
    }

    fn push(&mut self, word: &'a [u8]) {
        if self.len < self.words.len() {
            self.words[self.len] = word;
            self.len += 1;
        }
    }

    fn get(&self, i: usize) -> &'a [u8] {
        if i < self.len {
            self.words[i]
        } else {
            b""
        }
    }

    fn contains(&self, word: &str) -> bool {
        self.words[..self.len]
            .iter()
            .any(|w| w.eq_ignore_ascii_case(word.as_bytes()))
    }
}

fn is(word: &[u8], keyword: &str) -> bool {
    word.eq_ignore_ascii_case(keyword.as_bytes())
}

const HARMLESS: &[&str] = &[
    "select",
    "with",
    "insert",
    "update",
    "delete",
    "begin",
    "commit",
    "rollback",
    "end",
    "start",
    "copy",
    "values",
    "table",
    "explain",
    "show",
    "fetch",
    "close",
    "move",
    "execute",
    "savepoint",
    "release",
    "truncate",
    "lock",
    "analyze",
    "vacuum",
    "notify",
    "unlisten",
    "abort",
    "merge",
    "call",
    "alter",
    "drop",
    "grant",
    "revoke",
    "comment",
    "refresh",
    "reindex",
    "cluster",
    "checkpoint",
];

fn stateful(words: &Words<'_>) -> bool {
    let first = words.get(0);
    if first.is_empty() {
        return false;
    }
    if is(first, "set") {
        let second = words.get(1);
        return !(is(second, "local") || is(second, "transaction") || is(second, "constraints"));
    }
    if [
        "reset",
        "listen",
        "prepare",
        "discard",
        "deallocate",
        "load",
    ]
    .iter()
    .any(|k| is(first, k))
    {
        return true;
    }
    if is(first, "declare") {
        return words.contains("hold");
    }
    if is(first, "create") {
        return (1..4).any(|i| is(words.get(i), "temp") || is(words.get(i), "temporary"));
    }
    // `do` blocks and anything unknown may run SET inside.
    !HARMLESS.iter().any(|k| is(first, k))
}

/// Splits SQL into statements (skipping comments, quoted strings, quoted
/// identifiers and dollar quotes) and asks `judge` about each one's first words.
fn statements_any(sql: &[u8], judge: fn(&Words<'_>) -> bool) -> bool {
    let mut words = Words::new();
    let mut i = 0;
    while i < sql.len() {
        let c = sql[i];
        match c {
            b';' => {
                if judge(&words) {
                    return true;
                }
                words = Words::new();
                i += 1;
            }
            b'-' if sql.get(i + 1) == Some(&b'-') => {
                i = sql[i..]
                    .iter()
                    .position(|&b| b == b'\n')
                    .map_or(sql.len(), |p| i + p + 1);
            }
            b'/' if sql.get(i + 1) == Some(&b'*') => {
                i = find(sql, i + 2, b"*/").map_or(sql.len(), |p| p + 2);
            }
            b'\'' | b'"' => {
                i = skip_quoted(sql, i, c);
                words.push(b"?");
            }
            b'$' => {
                let tag_end = sql[i + 1..]
                    .iter()
                    .position(|b| !(b.is_ascii_alphanumeric() || *b == b'_'));
                match tag_end.map(|p| i + 1 + p) {
                    Some(end) if sql.get(end) == Some(&b'$') => {
                        let tag = &sql[i..=end];
                        i = find(sql, end + 1, tag).map_or(sql.len(), |p| p + tag.len());
                        words.push(b"?");
                    }
                    _ => i += 1,
                }
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let len = sql[i..]
                    .iter()
                    .position(|b| !(b.is_ascii_alphanumeric() || *b == b'_'))
                    .unwrap_or(sql.len() - i);
                words.push(&sql[i..i + len]);
                i += len;
            }
            _ => i += 1,
        }
    }
    judge(&words)
}

fn skip_quoted(sql: &[u8], start: usize, quote: u8) -> usize {
    let mut i = start + 1;
    while i < sql.len() {
        if sql[i] == quote {
            if sql.get(i + 1) == Some(&quote) {
                i += 2;
                continue;
            }
            return i + 1;
        }
        i += 1;
    }
    sql.len()
}

fn find(haystack: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    haystack
        .get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| from + p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_state_is_recognised() {
        for sql in [
            "SET work_mem = '64MB'",
            "set search_path to x",
            "select 1; SET TimeZone = 'UTC'",
            "RESET ALL",
            "LISTEN jobs",
            "PREPARE p AS SELECT 1",
            "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
            "CREATE TEMP TABLE t (x int)",
            "create temporary table t (x int)",
            "SELECT set_config('work_mem', '1MB', false)",
            "SELECT pg_advisory_lock(1)",
            "select PG_TRY_ADVISORY_LOCK(1)",
            "select x, dblink_connect('c')",
            "SELECT set_config",
            "DISCARD ALL",
            "DEALLOCATE ALL",
            "DO $$ BEGIN PERFORM 1; END $$",
            "/* hi */ SET x.y = 1",
        ] {
            assert!(leaves_session_state(sql.as_bytes()), "{sql}");
        }
    }

    #[test]
    fn every_stateful_function_has_an_underscore() {
        // `calls_stateful_function` finds names by their first underscore.
        for f in STATEFUL_FUNCTIONS {
            assert!(f.contains('_'), "{f}");
        }
    }

    #[test]
    fn ordinary_statements_are_not_state() {
        for sql in [
            "SELECT 1",
            "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = 3",
            "BEGIN; SET LOCAL work_mem = '1MB'; SELECT 1; COMMIT",
            "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
            "INSERT INTO t VALUES ('SET x = 1; LISTEN y')",
            "select $tag$ ; set x = 1 $tag$",
            "-- SET x = 1\nSELECT 2",
            "WITH a AS (SELECT 1) SELECT * FROM a",
            "DECLARE c CURSOR FOR SELECT 1",
            "SELECT pg_advisory_xact_lock(1)",
            "",
        ] {
            assert!(!leaves_session_state(sql.as_bytes()), "{sql}");
        }
    }

    #[test]
    fn garbage_never_panics() {
        for sql in [
            "'",
            "\"",
            "$",
            "$a",
            "$a$",
            "/*",
            "--",
            "$$ unterminated",
            "'''",
            ";;;",
        ] {
            let _ = leaves_session_state(sql.as_bytes());
        }
    }
}
