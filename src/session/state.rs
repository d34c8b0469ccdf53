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
pub fn leaves_session_state(sql: &[u8]) -> bool {
    let lower: Vec<u8> = sql.iter().map(u8::to_ascii_lowercase).collect();
    if STATEFUL_FUNCTIONS
        .iter()
        .any(|f| lower.windows(f.len()).any(|w| w == f.as_bytes()))
    {
        return true;
    }
    let found = statements(&lower).any(|words| stateful(&words));
    found
}

fn stateful(words: &[&[u8]]) -> bool {
    let word = |i: usize| words.get(i).copied().unwrap_or(b"");
    match word(0) {
        b"set" => !matches!(word(1), b"local" | b"transaction" | b"constraints"),
        b"reset" | b"listen" | b"prepare" | b"discard" | b"deallocate" | b"load" => true,
        b"declare" => words.contains(&&b"hold"[..]),
        b"create" => words
            .iter()
            .take(4)
            .any(|w| *w == b"temp" || *w == b"temporary"),
        b"select" | b"with" | b"insert" | b"update" | b"delete" | b"begin" | b"commit"
        | b"rollback" | b"end" | b"start" | b"copy" | b"values" | b"table" | b"explain"
        | b"show" | b"fetch" | b"close" | b"move" | b"execute" | b"savepoint" | b"release"
        | b"truncate" | b"lock" | b"analyze" | b"vacuum" | b"notify" | b"unlisten" | b"abort"
        | b"merge" | b"call" | b"alter" | b"drop" | b"grant" | b"revoke" | b"comment"
        | b"refresh" | b"reindex" | b"cluster" | b"checkpoint" => false,
        b"" => false,
        // `do` blocks and anything unknown may run SET inside.
        _ => true,
    }
}

/// Splits SQL into statements and returns the first few words of each,
/// skipping comments, quoted strings, quoted identifiers and dollar quotes.
fn statements(sql: &[u8]) -> impl Iterator<Item = Vec<&[u8]>> {
    let mut out: Vec<Vec<&[u8]>> = vec![Vec::new()];
    let mut i = 0;
    while i < sql.len() {
        let c = sql[i];
        match c {
            b';' => {
                out.push(Vec::new());
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
                push_word(&mut out, b"?");
            }
            b'$' => {
                let tag_end = sql[i + 1..]
                    .iter()
                    .position(|b| !(b.is_ascii_alphanumeric() || *b == b'_'));
                match tag_end.map(|p| i + 1 + p) {
                    Some(end) if sql.get(end) == Some(&b'$') => {
                        let tag = &sql[i..=end];
                        i = find(sql, end + 1, tag).map_or(sql.len(), |p| p + tag.len());
                        push_word(&mut out, b"?");
                    }
                    _ => i += 1,
                }
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let len = sql[i..]
                    .iter()
                    .position(|b| !(b.is_ascii_alphanumeric() || *b == b'_'))
                    .unwrap_or(sql.len() - i);
                push_word(&mut out, &sql[i..i + len]);
                i += len;
            }
            _ => i += 1,
        }
    }
    out.into_iter()
}

/// Keeps the first eight words of the current statement.
fn push_word<'a>(out: &mut [Vec<&'a [u8]>], word: &'a [u8]) {
    if let Some(current) = out.last_mut() {
        if current.len() < 8 {
            current.push(word);
        }
    }
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
            "DISCARD ALL",
            "DEALLOCATE ALL",
            "DO $$ BEGIN PERFORM 1; END $$",
            "/* hi */ SET x.y = 1",
        ] {
            assert!(leaves_session_state(sql.as_bytes()), "{sql}");
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
