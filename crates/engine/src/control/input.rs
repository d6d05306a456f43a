//! What every request's text must be, whatever the route: no NUL
//! characters (a database would refuse them with its own words) and no
//! string longer than [`MAX_STRING`]. Names are held shorter by the use
//! cases themselves.

use serde_json::Value;
use sluice_domain::Invalid;

/// The longest string a JSON body may hold, in bytes.
pub const MAX_STRING: usize = 64 * 1024;

/// Checks every string (and key) of `value`; `at` names where it is, for
/// the message (`body.environment.KEY`).
pub fn check_json(value: &Value, at: &str) -> Result<(), Invalid> {
    match value {
        Value::String(s) => check_text(s, at),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .try_for_each(|(i, v)| check_json(v, &format!("{at}[{i}]"))),
        Value::Object(map) => map.iter().try_for_each(|(k, v)| {
            let here = format!("{at}.{}", k.chars().take(64).collect::<String>());
            check_text(k, &here)?;
            check_json(v, &here)
        }),
        _ => Ok(()),
    }
}

/// A text is refused when it holds a NUL or is longer than [`MAX_STRING`].
pub fn check_text(s: &str, at: &str) -> Result<(), Invalid> {
    if s.contains('\0') {
        return Err(format!("`{at}` contains a NUL character").into());
    }
    if s.len() > MAX_STRING {
        return Err(format!(
            "`{at}` is {} bytes long; at most {MAX_STRING} are taken",
            s.len()
        )
        .into());
    }
    Ok(())
}

/// The longest name (of an organization, a deployment, a version, a
/// channel, a space, a job), in characters.
pub const MAX_NAME: usize = 255;

/// A name as the use cases take it: not empty, at most [`MAX_NAME`]
/// characters, no control characters (NUL among them).
pub fn check_name(field: &str, name: &str) -> Result<(), Invalid> {
    if name.trim().is_empty() {
        return Err(format!("\"{field}\" must not be empty").into());
    }
    if name.chars().count() > MAX_NAME {
        return Err(format!(
            "\"{field}\" is {} characters long; at most {MAX_NAME} are taken",
            name.chars().count()
        )
        .into());
    }
    if name.chars().any(char::is_control) {
        return Err(format!("\"{field}\" contains a control character").into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_are_short_printable_and_present() {
        assert!(check_name("name", "scorer v2").is_ok());
        assert!(check_name("name", " ").unwrap_err().contains("empty"));
        assert!(check_name("name", &"n".repeat(256))
            .unwrap_err()
            .contains("256 characters"));
        assert!(check_name("name", "a\0b").unwrap_err().contains("control"));
    }

    #[test]
    fn nul_and_oversize_are_refused_where_they_are() {
        assert!(check_json(&json!({"name": "ok", "tags": ["a", "b"]}), "body").is_ok());
        let e = check_json(&json!({"environment": {"K": "a\u{0}b"}}), "body").unwrap_err();
        assert_eq!(e, "`body.environment.K` contains a NUL character");
        let e =
            check_json(&json!({"list": ["x", "y".repeat(MAX_STRING + 1)]}), "body").unwrap_err();
        assert!(e.starts_with("`body.list[1]` is 65537 bytes"), "{e}");
        let e = check_json(&json!({"a\u{0}": 1}), "body").unwrap_err();
        assert!(e.contains("NUL"), "{e}");
    }
}
