//! Values in a destination's words: PostgreSQL text and COPY fields, and
//! SQLite's bound values.

use crate::types::{Col, Kind, Val};

/// Text in PostgreSQL's words for a value of `kind`.
pub(crate) fn pg_text(kind: Kind, v: &Val, from_mysql: bool) -> Option<String> {
    Some(match v {
        Val::Null => return None,
        Val::Text(s) if kind == Kind::TimestampTz && from_mysql => format!("{s}+00"),
        Val::Text(s) if kind == Kind::Bytes => format!("\\x{s}"),
        Val::Text(s) => s.clone(),
        Val::Int(i) if kind == Kind::Bool => (if *i != 0 { "t" } else { "f" }).into(),
        Val::Int(i) => i.to_string(),
        Val::Float(f) => float_text(*f),
        Val::Bytes(b) => {
            let mut s = String::from("\\x");
            for x in b {
                s.push_str(&format!("{x:02x}"));
            }
            s
        }
    })
}

pub(crate) fn float_text(f: f64) -> String {
    if f.is_nan() {
        "NaN".into()
    } else if f.is_infinite() {
        if f > 0.0 { "Infinity" } else { "-Infinity" }.into()
    } else {
        // Rust prints the shortest text that reads back as the same float.
        format!("{f}")
    }
}

/// A field of text COPY: backslash, tab, newline and CR escaped; NULL `\N`.
pub(crate) fn copy_field(out: &mut String, v: Option<&str>) {
    match v {
        None => out.push_str("\\N"),
        Some(s) => {
            for ch in s.chars() {
                match ch {
                    '\\' => out.push_str("\\\\"),
                    '\t' => out.push_str("\\t"),
                    '\n' => out.push_str("\\n"),
                    '\r' => out.push_str("\\r"),
                    c => out.push(c),
                }
            }
        }
    }
}

pub(crate) fn decode_hex(s: &str) -> Option<Vec<u8>> {
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect()
}

/// A batch in PostgreSQL's text COPY format (the staged files' format).
pub(crate) fn tsv(batch: &[Vec<Val>], cols: &[Col], from_mysql: bool) -> Vec<u8> {
    let mut text = String::with_capacity(batch.len() * 64);
    for row in batch {
        for (i, (v, c)) in row.iter().zip(cols).enumerate() {
            if i > 0 {
                text.push('\t');
            }
            copy_field(&mut text, pg_text(c.kind, v, from_mysql).as_deref());
        }
        text.push('\n');
    }
    text.into_bytes()
}

/// Binds `v`, a value of `kind`, as the SQLite warehouse keeps it.
pub(crate) fn bind_sqlite<'q>(
    query: sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>>,
    v: &Val,
    kind: Kind,
) -> sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>> {
    match (v, kind) {
        (Val::Null, _) => query.bind(None::<String>),
        (Val::Int(i), Kind::Double | Kind::Real) => query.bind(*i as f64),
        (Val::Int(i), _) => query.bind(*i),
        (Val::Float(f), _) => query.bind(*f),
        (Val::Bytes(b), _) => query.bind(b.clone()),
        (Val::Text(s), Kind::Bytes) => query.bind(decode_hex(s).unwrap_or_default()),
        (Val::Text(s), Kind::Bool) => query.bind(match s.as_str() {
            "t" | "true" | "1" => 1i64,
            _ => 0,
        }),
        (Val::Text(s), Kind::SmallInt | Kind::Int | Kind::BigInt) => match s.parse::<i64>() {
            Ok(i) => query.bind(i),
            Err(_) => query.bind(s.clone()),
        },
        (Val::Text(s), Kind::Real | Kind::Double) => match s.parse::<f64>() {
            Ok(f) => query.bind(f),
            Err(_) => query.bind(s.clone()),
        },
        // One spelling of times, so that the warehouse compares them as
        // text correctly (windows run again by hand).
        (Val::Text(s), Kind::Timestamp | Kind::TimestampTz) => query.bind(sqlite_time(s)),
        (Val::Text(s), _) => query.bind(s.clone()),
    }
}

/// A time as the SQLite warehouse spells it (any spelling it cannot read
/// is kept as it is).
pub(crate) fn sqlite_time(v: &str) -> String {
    crate::window::parse_time(v)
        .map(crate::window::format_time)
        .unwrap_or_else(|| v.to_owned())
}

/// Bytes as lowercase hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
