//! Records into rows: a JSON object becomes one row of its table, its
//! nested objects columns of that row (`address__city`), its lists child
//! tables (`surveys__questions`) whose rows carry the parent's row id and
//! their position — dlt's shapes, with `_sluice_` bookkeeping columns.

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// The row id column.
pub const ID: &str = "_sluice_id";
/// A child row's parent row id.
pub const PARENT_ID: &str = "_sluice_parent_id";
/// A child row's position in its list.
pub const LIST_IDX: &str = "_sluice_list_idx";

/// A column or table name as dlt normalizes it: snake_case, ASCII
/// letters, digits and `_` (`firstName` → `first_name`, `Total $` →
/// `total`).
pub fn normalize(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    let mut prev_lower = false;
    for c in name.chars() {
        if c.is_ascii_uppercase() {
            if prev_lower {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
            prev_lower = false;
        } else if c.is_ascii_alphanumeric() {
            out.push(c);
            prev_lower = c.is_ascii_lowercase() || c.is_ascii_digit();
        } else {
            if !out.ends_with('_') && !out.is_empty() {
                out.push('_');
            }
            prev_lower = false;
        }
    }
    let trimmed = out.trim_matches('_');
    let mut s = if trimmed.is_empty() {
        "_".to_owned()
    } else {
        trimmed.to_owned()
    };
    if s.starts_with(|c: char| c.is_ascii_digit()) {
        s.insert(0, '_');
    }
    s
}

/// A stable id: the first 16 bytes of SHA-256 over `parts`, in hex.
pub fn stable_id(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    let d = h.finalize();
    d[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// One flattened row and the table it belongs to.
pub type Row = (String, Map<String, Value>);

/// Flattens one record of `table` into `out` (its row first, then its
/// children's rows). `id` is the record's row id; `extra` columns are
/// added to its row (`include_from_parent`).
pub fn flatten(
    table: &str,
    record: &Value,
    id: &str,
    extra: &[(String, Value)],
    out: &mut Vec<Row>,
) {
    let mut row = Map::new();
    row.insert(ID.to_owned(), Value::String(id.to_owned()));
    for (k, v) in extra {
        row.insert(k.clone(), v.clone());
    }
    let at = out.len();
    out.push((table.to_owned(), Map::new()));
    match record {
        Value::Object(o) => columns(table, "", o, id, &mut row, out),
        scalar => {
            row.insert("value".to_owned(), scalar.clone());
        }
    }
    out[at].1 = row;
}

fn columns(
    table: &str,
    prefix: &str,
    o: &Map<String, Value>,
    id: &str,
    row: &mut Map<String, Value>,
    out: &mut Vec<Row>,
) {
    for (k, v) in o {
        let name = format!("{prefix}{}", normalize(k));
        match v {
            Value::Null => {}
            Value::Object(inner) => columns(table, &format!("{name}__"), inner, id, row, out),
            Value::Array(items) => {
                let child = format!("{table}__{name}");
                for (i, item) in items.iter().enumerate() {
                    let idx = i.to_string();
                    let child_id = stable_id(&[id, &name, &idx]);
                    let extra = [
                        (PARENT_ID.to_owned(), Value::String(id.to_owned())),
                        (LIST_IDX.to_owned(), Value::from(i as i64)),
                    ];
                    flatten(&child, item, &child_id, &extra, out);
                }
            }
            scalar => {
                row.insert(name, scalar.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_are_snake_case() {
        assert_eq!(normalize("firstName"), "first_name");
        assert_eq!(normalize("Total $"), "total");
        assert_eq!(normalize("HTTPCode"), "httpcode");
        assert_eq!(normalize("2nd"), "_2nd");
        assert_eq!(normalize("a-b.c"), "a_b_c");
    }

    #[test]
    fn objects_become_columns_and_lists_child_tables() {
        let rec = json!({"id": 7, "address": {"city": "Lyon", "geo": {"lat": 1.5}},
                         "tags": ["a", "b"], "questions": [{"q": "why", "options": [{"o": 1}]}],
                         "gone": null});
        let mut out = Vec::new();
        flatten("surveys", &rec, "r1", &[], &mut out);
        let tables: Vec<&str> = out.iter().map(|(t, _)| t.as_str()).collect();
        // Keys in name order (JSON objects are read as sorted maps).
        assert_eq!(
            tables,
            [
                "surveys",
                "surveys__questions",
                "surveys__questions__options",
                "surveys__tags",
                "surveys__tags"
            ]
        );
        let root = &out[0].1;
        assert_eq!(root["address__city"], "Lyon");
        assert_eq!(root["address__geo__lat"], 1.5);
        assert_eq!(root[ID], "r1");
        assert!(!root.contains_key("gone") && !root.contains_key("tags"));
        assert_eq!(out[4].1["value"], "b");
        assert_eq!(out[4].1[LIST_IDX], 1);
        assert_eq!(out[1].1[PARENT_ID], "r1");
        assert_eq!(out[2].1[PARENT_ID], out[1].1[ID]);
        // Ids are stable: the same record flattens the same way again.
        let mut again = Vec::new();
        flatten("surveys", &rec, "r1", &[], &mut again);
        assert_eq!(out, again);
    }
}
