//! Result sets as the console sends them: a RowDescription with PgBouncer's
//! column types (text, int4, numeric, as PgBouncer 1.18 declares them),
//! DataRows in text format, and the CommandComplete tag.

use bytes::{BufMut, BytesMut};

use crate::protocol::messages::{begin, finish, put_cstr};
pub use crate::protocol::messages::{command_complete, empty_query};

/// A column's declared type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Type {
    /// `text` (OID 25).
    Text,
    /// `int4` (OID 23).
    Int4,
    /// `numeric` (OID 1700), PgBouncer's type for 64-bit counters.
    Numeric,
}

impl Type {
    fn oid(self) -> u32 {
        match self {
            Type::Text => 25,
            Type::Int4 => 23,
            Type::Numeric => 1700,
        }
    }

    fn len(self) -> i16 {
        match self {
            Type::Int4 => 4,
            Type::Text | Type::Numeric => -1,
        }
    }
}

/// One value; `None` is SQL NULL.
pub type Cell = Option<String>;

/// A text cell.
pub fn text(s: impl Into<String>) -> Cell {
    Some(s.into())
}

/// A number cell (int4 or numeric).
pub fn num(n: impl std::fmt::Display) -> Cell {
    Some(n.to_string())
}

/// An int4 cell, clamped to int4's range as PgBouncer's are.
pub fn int4(n: u64) -> Cell {
    Some(n.min(i32::MAX as u64).to_string())
}

/// A result set: columns and rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultSet {
    /// Column names and types, in order.
    pub columns: &'static [(&'static str, Type)],
    /// Rows; each has one cell per column.
    pub rows: Vec<Vec<Cell>>,
}

impl ResultSet {
    /// An empty result set with these columns.
    pub fn new(columns: &'static [(&'static str, Type)]) -> ResultSet {
        ResultSet {
            columns,
            rows: Vec::new(),
        }
    }

    /// Appends a row (missing cells are NULL, extra ones dropped).
    pub fn push(&mut self, mut row: Vec<Cell>) {
        row.resize(self.columns.len(), None);
        self.rows.push(row);
    }

    /// Writes RowDescription, the DataRows and `CommandComplete SHOW`.
    pub fn encode(&self, buf: &mut BytesMut) {
        let at = begin(buf, b'T');
        buf.put_i16(self.columns.len() as i16);
        for (name, ty) in self.columns {
            put_cstr(buf, name);
            buf.put_u32(0); // table
            buf.put_i16(0); // column
            buf.put_u32(ty.oid());
            buf.put_i16(ty.len());
            buf.put_i32(-1); // typmod
            buf.put_i16(0); // text format
        }
        finish(buf, at);
        for row in &self.rows {
            let at = begin(buf, b'D');
            buf.put_i16(row.len() as i16);
            for cell in row {
                match cell {
                    Some(v) => {
                        buf.put_i32(v.len() as i32);
                        buf.put_slice(v.as_bytes());
                    }
                    None => buf.put_i32(-1),
                }
            }
            finish(buf, at);
        }
        command_complete(buf, "SHOW");
    }
}

/// A time as PgBouncer prints it: `2026-01-31 23:59:59 UTC`.
pub fn timestamp(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_709_251_199);
        assert_eq!(timestamp(t), "2024-02-29 23:59:59 UTC");
        assert_eq!(timestamp(std::time::UNIX_EPOCH), "1970-01-01 00:00:00 UTC");
    }

    #[test]
    fn encodes_a_result_set() {
        let mut rs = ResultSet::new(&[("a", Type::Text), ("n", Type::Int4)]);
        rs.push(vec![text("x"), None]);
        rs.push(vec![text("y")]);
        let mut buf = BytesMut::new();
        rs.encode(&mut buf);
        assert_eq!(buf[0], b'T');
        let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
        assert_eq!(buf[1 + len], b'D');
        assert!(buf.ends_with(b"C\0\0\0\x09SHOW\0"));
        assert_eq!(rs.rows[1], vec![text("y"), None]);
        assert_eq!(int4(u64::MAX), num(i32::MAX));
    }
}
