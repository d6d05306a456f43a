//! Values in a destination's words: PostgreSQL text and COPY fields.

use super::*;

/// Text in PostgreSQL's words for a value of `kind`.
pub(super) fn pg_text(kind: Kind, v: &Val, from_mysql: bool) -> Option<String> {
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

pub(super) fn float_text(f: f64) -> String {
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
pub(super) fn copy_field(out: &mut String, v: Option<&str>) {
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

pub(super) fn decode_hex(s: &str) -> Option<Vec<u8>> {
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect()
}

/// A batch in PostgreSQL's text COPY format (the staged files' format).
pub(super) fn tsv(batch: &[Vec<Val>], cols: &[Col], from_mysql: bool) -> Vec<u8> {
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
