//! What both load paths share: the kinds of column values and their
//! mapping to each database's types, table names, quoting, and the two
//! ways an import fails on its input or on a database.

use crate::{ImportError, Result};

pub(crate) fn db(what: impl Into<String>) -> impl FnOnce(sqlx::Error) -> ImportError {
    let what = what.into();
    move |source| ImportError::Database { what, source }
}

pub(crate) fn invalid(msg: impl Into<String>) -> ImportError {
    ImportError::Invalid(msg.into())
}

/// A table name, `schema.table` or `table`, quoted for SQL.
#[derive(Debug, Clone, PartialEq)]
pub struct TableName {
    pub schema: Option<String>,
    pub table: String,
}

/// `s` as an SQL identifier (PostgreSQL, SQLite: double quotes).
pub(crate) fn ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// `s` as an identifier of MySQL (`mysql`: backquotes) or of the others.
pub(crate) fn q(name: &str, mysql: bool) -> String {
    if mysql {
        format!("`{}`", name.replace('`', "``"))
    } else {
        ident(name)
    }
}

/// `s` as an SQL string literal.
pub(crate) fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

impl TableName {
    pub fn parse(name: &str) -> Result<TableName> {
        let parts: Vec<&str> = name.split('.').collect();
        let ok = |p: &&str| !p.is_empty() && !p.contains('\0');
        match parts.as_slice() {
            [t] if ok(t) => Ok(TableName {
                schema: None,
                table: t.to_string(),
            }),
            [s, t] if ok(s) && ok(t) => Ok(TableName {
                schema: Some(s.to_string()),
                table: t.to_string(),
            }),
            _ => Err(invalid(format!(
                "`{name}` is not a table name: expected table or schema.table"
            ))),
        }
    }

    pub fn quoted(&self) -> String {
        match &self.schema {
            Some(s) => format!("{}.{}", ident(s), ident(&self.table)),
            None => ident(&self.table),
        }
    }

    /// The same schema, another table name.
    pub(crate) fn sibling(&self, table: String) -> TableName {
        TableName {
            schema: self.schema.clone(),
            table,
        }
    }
}

/// What a column holds, whatever the database calls it. The destination
/// type follows from it:
///
/// | kind | PostgreSQL | SQLite |
/// |---|---|---|
/// | Bool | boolean | INTEGER (0/1) |
/// | SmallInt, Int, BigInt | smallint, integer, bigint | INTEGER |
/// | Real, Double | real, double precision | REAL |
/// | Numeric(p, s) | numeric(p,s) | TEXT (every digit kept) |
/// | Text | text | TEXT |
/// | Date, Time | date, time | TEXT (ISO 8601) |
/// | Timestamp | timestamp | TEXT (`2026-01-01 09:30:00.000000`) |
/// | TimestampTz | timestamptz | TEXT (`2026-01-01 09:30:00.000000`, UTC) |
/// | Json | jsonb | TEXT |
/// | Bytes | bytea | BLOB |
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Bool,
    SmallInt,
    Int,
    BigInt,
    Real,
    Double,
    Numeric(Option<(u32, u32)>),
    Text,
    Date,
    Time,
    Timestamp,
    TimestampTz,
    Json,
    Bytes,
}

impl Kind {
    pub fn postgres(self) -> String {
        match self {
            Kind::Bool => "boolean".into(),
            Kind::SmallInt => "smallint".into(),
            Kind::Int => "integer".into(),
            Kind::BigInt => "bigint".into(),
            Kind::Real => "real".into(),
            Kind::Double => "double precision".into(),
            Kind::Numeric(Some((p, s))) => format!("numeric({p},{s})"),
            Kind::Numeric(None) => "numeric".into(),
            Kind::Text => "text".into(),
            Kind::Date => "date".into(),
            Kind::Time => "time".into(),
            Kind::Timestamp => "timestamp".into(),
            Kind::TimestampTz => "timestamptz".into(),
            Kind::Json => "jsonb".into(),
            Kind::Bytes => "bytea".into(),
        }
    }

    pub fn sqlite(self) -> &'static str {
        match self {
            Kind::Bool | Kind::SmallInt | Kind::Int | Kind::BigInt => "INTEGER",
            Kind::Real | Kind::Double => "REAL",
            Kind::Bytes => "BLOB",
            _ => "TEXT",
        }
    }

    pub(crate) fn orderable(self) -> bool {
        !matches!(self, Kind::Bool | Kind::Text | Kind::Json | Kind::Bytes)
    }

    /// The kind of a PostgreSQL `format_type`.
    pub(crate) fn of_postgres(t: &str) -> Kind {
        let numeric = |t: &str| {
            t.strip_prefix("numeric(")
                .and_then(|r| r.strip_suffix(')'))
                .and_then(|r| r.split_once(','))
                .and_then(|(p, s)| Some((p.trim().parse().ok()?, s.trim().parse().ok()?)))
        };
        match t {
            "boolean" => Kind::Bool,
            "smallint" => Kind::SmallInt,
            "integer" => Kind::Int,
            "bigint" => Kind::BigInt,
            "real" => Kind::Real,
            "double precision" => Kind::Double,
            "date" => Kind::Date,
            "json" | "jsonb" => Kind::Json,
            "bytea" => Kind::Bytes,
            t if t.starts_with("numeric") => Kind::Numeric(numeric(t)),
            t if t.starts_with("timestamp") && t.ends_with("with time zone") => Kind::TimestampTz,
            t if t.starts_with("timestamp") => Kind::Timestamp,
            t if t.starts_with("time") => Kind::Time,
            _ => Kind::Text,
        }
    }

    /// The kind of a MySQL/MariaDB column (`DATA_TYPE`, `COLUMN_TYPE`).
    pub(crate) fn of_mysql(
        data_type: &str,
        column_type: &str,
        p: Option<u64>,
        s: Option<u64>,
    ) -> Kind {
        let unsigned = column_type.contains("unsigned");
        match data_type {
            "tinyint" if column_type.starts_with("tinyint(1)") => Kind::Bool,
            "tinyint" | "smallint" | "year" if !unsigned => Kind::SmallInt,
            "tinyint" | "year" => Kind::SmallInt,
            "smallint" | "mediumint" | "int" | "integer" if !unsigned => Kind::Int,
            "smallint" | "mediumint" => Kind::Int,
            "int" | "integer" => Kind::BigInt,
            "bigint" if !unsigned => Kind::BigInt,
            "bigint" => Kind::Numeric(Some((20, 0))),
            "bit" => Kind::BigInt,
            "decimal" | "numeric" => Kind::Numeric(p.zip(s).map(|(p, s)| (p as u32, s as u32))),
            "float" => Kind::Real,
            "double" | "real" => Kind::Double,
            "date" => Kind::Date,
            "time" => Kind::Time,
            "datetime" => Kind::Timestamp,
            "timestamp" => Kind::TimestampTz,
            "json" => Kind::Json,
            "blob" | "tinyblob" | "mediumblob" | "longblob" | "binary" | "varbinary" => Kind::Bytes,
            _ => Kind::Text,
        }
    }

    /// The kind of a SQLite declared type (its affinity, refined by name).
    pub(crate) fn of_sqlite(declared: &str) -> Kind {
        let t = declared.to_ascii_uppercase();
        if t.starts_with("BOOL") {
            Kind::Bool
        } else if t.contains("INT") {
            Kind::BigInt
        } else if t.contains("REAL") || t.contains("FLOA") || t.contains("DOUB") {
            Kind::Double
        } else if t.starts_with("DECIMAL") || t.starts_with("NUMERIC") {
            let ps = t
                .split_once('(')
                .and_then(|(_, r)| r.strip_suffix(')'))
                .and_then(|r| r.split_once(','))
                .and_then(|(p, s)| Some((p.trim().parse().ok()?, s.trim().parse().ok()?)));
            Kind::Numeric(ps)
        } else if t == "DATE" {
            Kind::Date
        } else if t.starts_with("DATETIME") || t.starts_with("TIMESTAMP") {
            Kind::Timestamp
        } else if t.starts_with("JSON") {
            Kind::Json
        } else if t.contains("BLOB") {
            Kind::Bytes
        } else {
            Kind::Text
        }
    }
}

/// A source column: its name, what it holds, and — from a PostgreSQL
/// source — its type exactly as PostgreSQL spells it (`numeric(12,2)`,
/// `character varying(40)`), which a PostgreSQL destination keeps.
#[derive(Debug, Clone)]
pub struct Col {
    pub name: String,
    pub kind: Kind,
    pub not_null: bool,
    /// `format_type` of a PostgreSQL source's column (None: another source,
    /// whose type follows from `kind`).
    pub exact: Option<String>,
}

impl Col {
    /// The column's type in a PostgreSQL destination.
    pub fn postgres_type(&self) -> String {
        self.exact.clone().unwrap_or_else(|| self.kind.postgres())
    }
}

/// One value on its way: as text (already in the destination's words), an
/// integer, a float, or bytes.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Val {
    Null,
    Text(String),
    Int(i64),
    Float(f64),
    Bytes(Vec<u8>),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_quote_and_refuse_nonsense() {
        assert_eq!(TableName::parse("t").unwrap().quoted(), "\"t\"");
        assert_eq!(
            TableName::parse("s.We\"ird").unwrap().quoted(),
            "\"s\".\"We\"\"ird\""
        );
        assert!(TableName::parse("a.b.c").is_err());
        assert!(TableName::parse("").is_err());
        assert!(TableName::parse(".t").is_err());
    }

    #[test]
    fn literals_double_their_quotes() {
        assert_eq!(literal("it's"), "'it''s'");
    }
}
