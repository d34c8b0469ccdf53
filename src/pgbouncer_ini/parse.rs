//! The ini format as PgBouncer reads it:
//!
//! - `[section]` headers; `key = value` lines, the value running to the end
//!   of the line with surrounding blanks trimmed (no quoting, no trailing
//!   comments: `;` and `#` only start a comment at the beginning of a line);
//! - `%include FILE`, whose lines join the section in force; a relative FILE
//!   is taken from the including file's directory (PgBouncer takes it from
//!   its working directory; both agree for absolute paths);
//! - `[databases]` keys may be double-quoted (`"my db" = ...`, `""` for a
//!   quote), and their values are connection strings, see [`parse_connstr`].
//!
//! Every entry keeps its file and line. What the keys mean is left to `map`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::Origin;

/// How deep `%include`s may nest; deeper is taken for a loop.
const MAX_INCLUDE_DEPTH: usize = 16;

/// Why an ini file could not be read; each names the file and line.
#[derive(Debug, thiserror::Error)]
pub enum IniError {
    /// The file (or an included one) could not be read.
    #[error("{}{path}: {source}", at.as_ref().map(|o| format!("{o}: %include ")).unwrap_or_default())]
    Io {
        /// The file that could not be read.
        path: String,
        /// The `%include` line that named it, if it was included.
        at: Option<Origin>,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A line is not valid ini syntax.
    #[error("{origin}: {message}")]
    Syntax {
        /// Where.
        origin: Origin,
        /// What is wrong.
        message: String,
    },
    /// A key's value is wrong (a bad number, an unknown mode, ...), or two
    /// entries contradict each other.
    #[error("{origin}: key \"{key}\": {message}")]
    Value {
        /// Where.
        origin: Origin,
        /// The key as written.
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// One `key = value` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The section it sits in, lowercased; empty before the first header.
    pub section: String,
    /// The key as written (quotes of a `[databases]` name removed).
    pub key: String,
    /// The value, trimmed.
    pub value: String,
    /// Where it was written.
    pub origin: Origin,
}

/// A parsed ini file with its includes, entries in reading order.
#[derive(Debug, Clone)]
pub struct IniFile {
    /// The top file, as given.
    pub path: PathBuf,
    /// Every `key = value`, includes expanded in place.
    pub entries: Vec<Entry>,
    /// Section headers as read, for warnings about whole sections.
    pub sections: Vec<(String, Origin)>,
}

/// Reads and parses `path` and the files it includes.
pub fn parse_file(path: &Path) -> Result<IniFile, IniError> {
    let mut ini = IniFile {
        path: path.to_path_buf(),
        entries: Vec::new(),
        sections: Vec::new(),
    };
    let mut section = String::new();
    read_into(&mut ini, path, None, &mut section, 0)?;
    Ok(ini)
}

/// Parses ini `text` as though read from `path` (includes are read from disk).
pub fn parse_text(text: &str, path: &Path) -> Result<IniFile, IniError> {
    let mut ini = IniFile {
        path: path.to_path_buf(),
        entries: Vec::new(),
        sections: Vec::new(),
    };
    let mut section = String::new();
    parse_into(&mut ini, text, path, &mut section, 0)?;
    Ok(ini)
}

fn read_into(
    ini: &mut IniFile,
    path: &Path,
    at: Option<&Origin>,
    section: &mut String,
    depth: usize,
) -> Result<(), IniError> {
    let text = std::fs::read_to_string(path).map_err(|source| IniError::Io {
        path: path.display().to_string(),
        at: at.cloned(),
        source,
    })?;
    parse_into(ini, &text, path, section, depth)
}

fn parse_into(
    ini: &mut IniFile,
    text: &str,
    path: &Path,
    section: &mut String,
    depth: usize,
) -> Result<(), IniError> {
    let file = Arc::new(path.to_path_buf());
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    for (idx, raw) in text.lines().enumerate() {
        let origin = Origin {
            file: Arc::clone(&file),
            line: idx + 1,
        };
        let syntax = |message: String| IniError::Syntax {
            origin: origin.clone(),
            message,
        };
        let line = raw.trim();
        if line.is_empty() || line.starts_with(';') || line.starts_with('#') {
            continue;
        }
        if let Some(directive) = line.strip_prefix('%') {
            let (name, arg) = directive
                .split_once(char::is_whitespace)
                .unwrap_or((directive, ""));
            let arg = arg.trim();
            if name != "include" {
                return Err(syntax(format!("unknown directive %{name}")));
            }
            if arg.is_empty() {
                return Err(syntax("%include needs a file name".into()));
            }
            if depth + 1 >= MAX_INCLUDE_DEPTH {
                return Err(syntax(format!(
                    "%include nested more than {MAX_INCLUDE_DEPTH} deep (does a file include itself?)"
                )));
            }
            let target = match path.parent() {
                Some(dir) if Path::new(arg).is_relative() => dir.join(arg),
                _ => PathBuf::from(arg),
            };
            read_into(ini, &target, Some(&origin), section, depth + 1)?;
            continue;
        }
        if let Some(rest) = line.strip_prefix('[') {
            let name = rest
                .strip_suffix(']')
                .ok_or_else(|| syntax("section header without a closing ']'".into()))?;
            *section = name.trim().to_ascii_lowercase();
            ini.sections.push((section.clone(), origin));
            continue;
        }
        let (key, rest) = split_key(line, section == "databases").map_err(syntax)?;
        let value = rest
            .trim_start()
            .strip_prefix('=')
            .ok_or_else(|| syntax(format!("expected \"{key} = value\"")))?;
        ini.entries.push(Entry {
            section: section.clone(),
            key,
            value: value.trim().to_string(),
            origin,
        });
    }
    Ok(())
}

/// Splits the key off a `key = value` line; a `[databases]` key may be
/// double-quoted with `""` standing for a quote.
fn split_key(line: &str, quoted_allowed: bool) -> Result<(String, &str), String> {
    if let Some(body) = line.strip_prefix('"').filter(|_| quoted_allowed) {
        let mut key = String::new();
        let mut chars = body.char_indices();
        while let Some((i, c)) = chars.next() {
            if c != '"' {
                key.push(c);
                continue;
            }
            let after = body.get(i + 1..).unwrap_or("");
            if after.starts_with('"') {
                key.push('"');
                chars.next();
            } else if key.is_empty() {
                return Err("empty database name".into());
            } else {
                return Ok((key, after));
            }
        }
        return Err("unterminated quoted name".into());
    }
    let end = line
        .find(|c: char| c == '=' || c.is_whitespace())
        .unwrap_or(line.len());
    if end == 0 {
        return Err("expected a key before '='".into());
    }
    let (key, rest) = line.split_at(end);
    Ok((key.to_string(), rest))
}

/// Splits a `[databases]` connection string into `key=value` pairs, as libpq
/// writes them: blanks between pairs (and around `=`), a value either bare
/// or in single quotes, `\` escaping the next character in both.
pub fn parse_connstr(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut pairs = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(pairs);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(format!("expected \"{key}=value\""));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    None => return Err(format!("unterminated quoted value of {key}")),
                    Some('\'') => break,
                    Some('\\') => value.extend(chars.next()),
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.extend(chars.next());
                } else {
                    value.push(c);
                }
            }
        }
        pairs.push((key.to_ascii_lowercase(), value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> IniFile {
        parse_text(text, Path::new("pgbouncer.ini")).unwrap()
    }

    fn triples(ini: &IniFile) -> Vec<(String, String, String, usize)> {
        ini.entries
            .iter()
            .map(|e| {
                (
                    e.section.clone(),
                    e.key.clone(),
                    e.value.clone(),
                    e.origin.line,
                )
            })
            .collect()
    }

    #[test]
    fn sections_keys_comments() {
        let ini = parse(
            "\u{feff};; header\n\
             # hash comment\n\
             \n\
             [Databases]\n\
             crm_db = host=127.0.0.1 dbname=crm_db\n\
             [pgbouncer]\n\
             \x20 listen_port=6433\n\
             auth_query = SELECT usename, passwd FROM pg_shadow WHERE usename=$1 ; not a comment\n\
             unix_socket_dir =\n\
             \t; indented comment\n",
        );
        assert_eq!(
            triples(&ini),
            vec![
                (
                    "databases".into(),
                    "crm_db".into(),
                    "host=127.0.0.1 dbname=crm_db".into(),
                    5
                ),
                ("pgbouncer".into(), "listen_port".into(), "6433".into(), 7),
                (
                    "pgbouncer".into(),
                    "auth_query".into(),
                    "SELECT usename, passwd FROM pg_shadow WHERE usename=$1 ; not a comment".into(),
                    8
                ),
                ("pgbouncer".into(), "unix_socket_dir".into(), "".into(), 9),
            ]
        );
        assert_eq!(ini.sections.len(), 2);
    }

    #[test]
    fn values_keep_their_quotes() {
        // PgBouncer takes the value literally: `"6432"` is not a number.
        let ini = parse("[pgbouncer]\nlisten_port = \"6432\"\n");
        assert_eq!(ini.entries[0].value, "\"6432\"");
    }

    #[test]
    fn quoted_database_names() {
        let ini = parse("[databases]\n\"my \"\"db\"\"\" = dbname=x\n* = host=h\n");
        assert_eq!(ini.entries[0].key, "my \"db\"");
        assert_eq!(ini.entries[0].value, "dbname=x");
        assert_eq!(ini.entries[1].key, "*");
        let err = parse_text("[databases]\n\"open = x\n", Path::new("p.ini"))
            .unwrap_err()
            .to_string();
        assert_eq!(err, "p.ini:2: unterminated quoted name");
    }

    #[test]
    fn syntax_errors_name_file_and_line() {
        let err = |text: &str| {
            parse_text(text, Path::new("p.ini"))
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            err("[pgbouncer]\nlisten_port 6432\n"),
            "p.ini:2: expected \"listen_port = value\""
        );
        assert_eq!(
            err("\n[pgbouncer\n"),
            "p.ini:2: section header without a closing ']'"
        );
        assert_eq!(err("= 1\n"), "p.ini:1: expected a key before '='");
        assert_eq!(err("%inclde x\n"), "p.ini:1: unknown directive %inclde");
        assert_eq!(err("%include\n"), "p.ini:1: %include needs a file name");
    }

    #[test]
    fn include_is_relative_to_the_including_file_and_keeps_the_section() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("conf.d")).unwrap();
        std::fs::write(
            dir.path().join("pgbouncer.ini"),
            "[pgbouncer]\nlisten_port = 1\n%include conf.d/more.ini\nmax_client_conn = 3\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("conf.d/more.ini"),
            "; included\npool_mode = transaction\n%include deeper.ini\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("conf.d/deeper.ini"),
            "[databases]\ncrm_db =\n",
        )
        .unwrap();
        let ini = parse_file(&dir.path().join("pgbouncer.ini")).unwrap();
        let got: Vec<(String, String, String)> = ini
            .entries
            .iter()
            .map(|e| {
                let file = e.origin.file.file_name().unwrap().to_string_lossy();
                (
                    e.section.clone(),
                    e.key.clone(),
                    format!("{file}:{}", e.origin.line),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    "pgbouncer".into(),
                    "listen_port".into(),
                    "pgbouncer.ini:2".into()
                ),
                ("pgbouncer".into(), "pool_mode".into(), "more.ini:2".into()),
                ("databases".into(), "crm_db".into(), "deeper.ini:2".into()),
                // The section an include ends in stays in force, as in PgBouncer.
                (
                    "databases".into(),
                    "max_client_conn".into(),
                    "pgbouncer.ini:4".into()
                ),
            ]
        );
    }

    #[test]
    fn missing_include_names_the_including_line() {
        let dir = tempfile::tempdir().unwrap();
        let top = dir.path().join("pgbouncer.ini");
        std::fs::write(&top, "[pgbouncer]\n\n%include nope.ini\n").unwrap();
        let err = parse_file(&top).unwrap_err().to_string();
        let expected = format!(
            "{}:3: %include {}: ",
            top.display(),
            dir.path().join("nope.ini").display()
        );
        assert!(err.starts_with(&expected), "{err}");
        let missing = dir.path().join("absent.ini");
        let err = parse_file(&missing).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("{}: ", missing.display())),
            "{err}"
        );
    }

    #[test]
    fn include_loop_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let top = dir.path().join("a.ini");
        std::fs::write(&top, "%include a.ini\n").unwrap();
        let err = parse_file(&top).unwrap_err().to_string();
        assert!(err.contains("a.ini:1: %include nested"), "{err}");
    }

    #[test]
    fn connection_strings() {
        // libpq's escape is a backslash; a doubled quote ends the value.
        assert!(parse_connstr("password='it''s' user=a").is_err());
        let pairs = parse_connstr(
            " host=db1 port = 5433  dbname=crm_db connect_query='SELECT \\'x\\', 1' user=a\\ b Pool_Mode=transaction ",
        )
        .unwrap();
        assert_eq!(
            pairs,
            vec![
                ("host".into(), "db1".into()),
                ("port".into(), "5433".into()),
                ("dbname".into(), "crm_db".into()),
                ("connect_query".into(), "SELECT 'x', 1".into()),
                ("user".into(), "a b".into()),
                ("pool_mode".into(), "transaction".into()),
            ]
        );
        assert_eq!(parse_connstr("").unwrap(), vec![]);
        assert_eq!(
            parse_connstr("host=''").unwrap(),
            vec![("host".into(), String::new())]
        );
        assert!(parse_connstr("host='open").is_err());
        assert!(parse_connstr("host").is_err());
    }
}
