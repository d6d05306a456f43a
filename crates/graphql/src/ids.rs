//! Opaque global ids (`base64("Space:spc-…")`) and page cursors.

use base64::Engine as _;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// The global id of a node of `kind`.
pub fn global(kind: &str, id: &str) -> String {
    B64.encode(format!("{kind}:{id}"))
}

/// A global id's kind and id; None when it is not one.
pub fn parse(global: &str) -> Option<(String, String)> {
    let raw = String::from_utf8(B64.decode(global.trim()).ok()?).ok()?;
    let (kind, id) = raw.split_once(':')?;
    Some((kind.to_owned(), id.to_owned()))
}

/// A page cursor: the store's keyset key, opaque.
pub fn cursor(seq: i64) -> String {
    B64.encode(format!("cursor:{seq}"))
}

pub fn parse_cursor(c: &str) -> Option<i64> {
    let raw = String::from_utf8(B64.decode(c.trim()).ok()?).ok()?;
    raw.strip_prefix("cursor:")?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_cursors_round_trip() {
        let g = global("Space", "spc-1234567890123456");
        assert_eq!(
            parse(&g),
            Some(("Space".into(), "spc-1234567890123456".into()))
        );
        assert_eq!(parse("not base64!"), None);
        assert_eq!(parse_cursor(&cursor(42)), Some(42));
        assert_eq!(parse_cursor(&global("Space", "x")), None);
    }
}
