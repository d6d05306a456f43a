//! The row path's connections: sources (PostgreSQL, MySQL/MariaDB, SQLite,
//! files) and destinations (PostgreSQL, SQLite), their columns and rows.

use sqlx::mysql::MySqlConnection;
use sqlx::postgres::PgConnection;
use sqlx::sqlite::SqliteConnection;
use sqlx::{Connection, Row, ValueRef};

use super::*;

pub(crate) enum Source {
    Postgres(PgConnection),
    MySql(MySqlConnection),
    Sqlite(SqliteConnection),
    /// A CSV or JSONL file (`file:///folder`, the file as the table).
    File(crate::files::FileSource),
}

pub(crate) enum Dest {
    Postgres(PgConnection),
    Sqlite(SqliteConnection),
}

impl Dest {
    /// The connection as the ledger and owners' bookkeeping use it.
    pub(super) fn bookkeeping(&mut self) -> ledger::Conn<'_> {
        match self {
            Dest::Postgres(c) => ledger::Conn::Postgres(c),
            Dest::Sqlite(c) => ledger::Conn::Sqlite(c),
        }
    }

    /// Runs a DELETE; answers how many rows it took.
    pub(super) async fn delete(&mut self, sql: &str) -> Result<u64, sqlx::Error> {
        match self {
            Dest::Postgres(c) => sqlx::query(sql).execute(c).await.map(|r| r.rows_affected()),
            Dest::Sqlite(c) => sqlx::query(sql).execute(c).await.map(|r| r.rows_affected()),
        }
    }

    pub(super) async fn raw(&mut self, sql: &str) -> Result<(), sqlx::Error> {
        match self {
            Dest::Postgres(c) => sqlx::raw_sql(sql).execute(c).await.map(|_| ()),
            Dest::Sqlite(c) => sqlx::raw_sql(sql).execute(c).await.map(|_| ()),
        }
    }
}

pub(super) fn sqlite_url(url: &str) -> String {
    if url.contains('?') {
        url.to_owned()
    } else {
        format!("{url}?mode=rwc")
    }
}

pub(crate) async fn open_source(url: &str, table: &str) -> Result<Source> {
    let what = || db("cannot connect to the source database");
    if url.starts_with("file://") {
        let (url, table) = (url.to_owned(), table.to_owned());
        return tokio::task::spawn_blocking(move || crate::files::FileSource::open(&url, &table))
            .await
            .map_err(|e| invalid(format!("reading the file stopped: {e}")))?
            .map(Source::File);
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Source::Postgres(
            PgConnection::connect(url).await.map_err(what())?,
        ))
    } else if url.starts_with("mysql://") || url.starts_with("mariadb://") {
        let url = url.replacen("mariadb://", "mysql://", 1);
        let mut c = MySqlConnection::connect(&url).await.map_err(what())?;
        sqlx::query("SET time_zone = '+00:00'")
            .execute(&mut c)
            .await
            .map_err(what())?;
        Ok(Source::MySql(c))
    } else if url.starts_with("sqlite:") {
        Ok(Source::Sqlite(
            SqliteConnection::connect(url).await.map_err(what())?,
        ))
    } else {
        Err(invalid(format!(
            "unsupported source `{}`: expected postgres://, mysql:// (mariadb://), sqlite:// or file://",
            url.split("://").next().unwrap_or(url)
        )))
    }
}

pub(crate) async fn open_dest(url: &str) -> Result<Dest> {
    let what = || db("cannot connect to the destination database");
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Dest::Postgres(
            PgConnection::connect(url).await.map_err(what())?,
        ))
    } else if url.starts_with("sqlite:") {
        let mut c = SqliteConnection::connect(&sqlite_url(url))
            .await
            .map_err(what())?;
        sqlx::raw_sql("PRAGMA journal_mode = WAL; PRAGMA busy_timeout = 30000;")
            .execute(&mut c)
            .await
            .map_err(what())?;
        Ok(Dest::Sqlite(c))
    } else {
        Err(invalid(
            "unsupported destination: expected postgres:// or sqlite://",
        ))
    }
}

impl Source {
    pub(super) fn mysql(&self) -> bool {
        matches!(self, Source::MySql(_))
    }

    pub(super) fn table(&self, t: &TableName) -> String {
        if let Source::File(_) = self {
            return t.table.clone();
        }
        let m = self.mysql();
        match &t.schema {
            Some(s) => format!("{}.{}", q(s, m), q(&t.table, m)),
            None => q(&t.table, m),
        }
    }

    pub(crate) async fn columns(&mut self, t: &TableName) -> Result<Vec<Col>> {
        let what = || db(format!("reading the columns of {}", t.table));
        match self {
            Source::File(f) => Ok(f.cols.clone()),
            Source::Postgres(c) => Ok(crate::postgres::columns(c, t)
                .await?
                .into_iter()
                .map(|c| Col {
                    kind: Kind::of_postgres(&c.sql_type),
                    name: c.name,
                    not_null: c.not_null,
                })
                .collect()),
            Source::MySql(c) => {
                let rows = sqlx::query(
                    "SELECT CAST(COLUMN_NAME AS CHAR) AS name, CAST(DATA_TYPE AS CHAR) AS dt, \
                     CAST(COLUMN_TYPE AS CHAR) AS ct, CAST(NUMERIC_PRECISION AS UNSIGNED) AS p, \
                     CAST(NUMERIC_SCALE AS UNSIGNED) AS s, CAST(IS_NULLABLE AS CHAR) AS nullable \
                     FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = COALESCE(?, DATABASE()) \
                     AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION",
                )
                .bind(t.schema.clone())
                .bind(&t.table)
                .fetch_all(&mut *c)
                .await
                .map_err(what())?;
                rows.iter()
                    .map(|r| {
                        let dt: String = r.try_get("dt").map_err(what())?;
                        let ct: String = r.try_get("ct").map_err(what())?;
                        Ok(Col {
                            name: r.try_get("name").map_err(what())?,
                            kind: Kind::of_mysql(
                                &dt.to_ascii_lowercase(),
                                &ct.to_ascii_lowercase(),
                                r.try_get("p").map_err(what())?,
                                r.try_get("s").map_err(what())?,
                            ),
                            not_null: r.try_get::<String, _>("nullable").map_err(what())? == "NO",
                        })
                    })
                    .collect()
            }
            Source::Sqlite(c) => {
                let rows = sqlx::query(&format!("PRAGMA table_info({})", q(&t.table, false)))
                    .fetch_all(&mut *c)
                    .await
                    .map_err(what())?;
                rows.iter()
                    .map(|r| {
                        Ok(Col {
                            name: r.try_get("name").map_err(what())?,
                            kind: Kind::of_sqlite(&r.try_get::<String, _>("type").map_err(what())?),
                            not_null: r.try_get::<i64, _>("notnull").map_err(what())? != 0,
                        })
                    })
                    .collect()
            }
        }
    }

    /// The first non-NULL value of `column`, as text.
    pub(crate) async fn sample(&mut self, t: &TableName, column: &str) -> Result<Option<String>> {
        if let Source::File(f) = self {
            let col: Vec<Col> = f
                .cols
                .iter()
                .filter(|c| c.name == column)
                .cloned()
                .collect();
            let mut first = None;
            f.read(&col, 1, |b| {
                first = b.into_iter().find_map(|r| match r.into_iter().next() {
                    Some(Val::Text(s)) => Some(s),
                    _ => None,
                });
                first.is_none()
            })?;
            return Ok(first);
        }
        let m = self.mysql();
        let n = q(column, m);
        let expr = match self {
            Source::File(_) => n.clone(),
            Source::Postgres(_) => format!("{n}::text"),
            Source::MySql(_) => format!("CAST({n} AS CHAR CHARACTER SET utf8mb4)"),
            Source::Sqlite(_) => format!("CAST({n} AS TEXT)"),
        };
        let sql = format!(
            "SELECT {expr} FROM {} WHERE {n} IS NOT NULL LIMIT 1",
            self.table(t)
        );
        self.text(&sql)
            .await
            .map_err(db(format!("reading a value of {column}")))
    }

    /// The first column of the first row of `sql`, as text.
    pub(super) async fn text(&mut self, sql: &str) -> Result<Option<String>, sqlx::Error> {
        match self {
            Source::Postgres(c) => sqlx::query_scalar::<_, Option<String>>(sql)
                .fetch_optional(c)
                .await
                .map(Option::flatten),
            Source::MySql(c) => sqlx::query_scalar::<_, Option<String>>(sql)
                .fetch_optional(c)
                .await
                .map(Option::flatten),
            Source::Sqlite(c) => sqlx::query_scalar::<_, Option<String>>(sql)
                .fetch_optional(c)
                .await
                .map(Option::flatten),
            Source::File(_) => Err(sqlx::Error::Protocol("a file answers no SQL".into())),
        }
    }

    /// How to select one column so that it decodes as [`Val`].
    pub(super) fn select_expr(&self, c: &Col) -> String {
        let m = self.mysql();
        let n = q(&c.name, m);
        match (self, c.kind) {
            (Source::Postgres(_), Kind::Bytes) => format!("encode({n}, 'hex')"),
            (Source::Postgres(_), _) => format!("{n}::text"),
            (Source::MySql(_), Kind::Real | Kind::Double) => n,
            (Source::MySql(_), Kind::Bytes) => format!("HEX({n})"),
            (Source::MySql(_), Kind::Bool | Kind::BigInt) => format!("CAST({n} AS SIGNED)"),
            (Source::MySql(_), _) => format!("CAST({n} AS CHAR CHARACTER SET utf8mb4)"),
            (Source::Sqlite(_) | Source::File(_), _) => n,
        }
    }
}

/// The window planner's view of a source.
pub(super) struct RowsWindow<'a> {
    pub src: &'a mut Source,
    pub table: String,
    pub col: Col,
}

impl crate::window::WindowSql for RowsWindow<'_> {
    fn column(&self) -> String {
        q(&self.col.name, self.src.mysql())
    }
    fn compared(&self) -> String {
        match self.src {
            Source::Sqlite(_) if self.is_time() => format!("julianday({})", self.column()),
            _ => self.column(),
        }
    }
    fn literal(&self, value: &str) -> String {
        match self.src {
            Source::Postgres(_) => format!("{}::{}", lit(value), self.col.kind.postgres()),
            // SQLite keeps times as text in any spelling: compared as days.
            Source::Sqlite(_) if self.is_time() => format!("julianday({})", lit(value)),
            _ => lit(value),
        }
    }
    fn table(&self) -> String {
        self.table.clone()
    }
    fn is_time(&self) -> bool {
        matches!(
            self.col.kind,
            Kind::Date | Kind::Timestamp | Kind::TimestampTz
        )
    }
    async fn text(&mut self, sql: String) -> Result<Option<String>> {
        self.src.text(&sql).await.map_err(db("planning the window"))
    }
    fn as_text(&self, expr: &str) -> String {
        match self.src {
            Source::Postgres(_) => format!("({expr})::text"),
            Source::MySql(_) => format!("CAST({expr} AS CHAR CHARACTER SET utf8mb4)"),
            Source::Sqlite(_) | Source::File(_) => format!("CAST({expr} AS TEXT)"),
        }
    }
}

/// One source row as values.
pub(super) fn row_values(cols: &[Col], row: RowRef<'_>) -> Result<Vec<Val>> {
    let what = || db("reading a source row");
    cols.iter()
        .enumerate()
        .map(|(i, c)| -> Result<Val> {
            Ok(match row {
                RowRef::Pg(r) => r
                    .try_get::<Option<String>, _>(i)
                    .map_err(what())?
                    .map_or(Val::Null, Val::Text),
                RowRef::My(r) => match c.kind {
                    Kind::Real => r
                        .try_get::<Option<f32>, _>(i)
                        .map_err(what())?
                        .map_or(Val::Null, |f| Val::Float(f as f64)),
                    Kind::Double => r
                        .try_get::<Option<f64>, _>(i)
                        .map_err(what())?
                        .map_or(Val::Null, Val::Float),
                    Kind::Bool | Kind::BigInt => r
                        .try_get::<Option<i64>, _>(i)
                        .map_err(what())?
                        .map_or(Val::Null, Val::Int),
                    _ => r
                        .try_get::<Option<String>, _>(i)
                        .map_err(what())?
                        .map_or(Val::Null, Val::Text),
                },
                RowRef::Lite(r) => {
                    let raw = r.try_get_raw(i).map_err(what())?;
                    if raw.is_null() {
                        Val::Null
                    } else {
                        let storage = raw.type_info().to_string();
                        match storage.as_str() {
                            "INTEGER" => Val::Int(r.try_get(i).map_err(what())?),
                            "REAL" => Val::Float(r.try_get(i).map_err(what())?),
                            "BLOB" => Val::Bytes(r.try_get(i).map_err(what())?),
                            _ => Val::Text(r.try_get(i).map_err(what())?),
                        }
                    }
                }
            })
        })
        .collect()
}

#[derive(Clone, Copy)]
pub(super) enum RowRef<'a> {
    Pg(&'a sqlx::postgres::PgRow),
    My(&'a sqlx::mysql::MySqlRow),
    Lite(&'a sqlx::sqlite::SqliteRow),
}
