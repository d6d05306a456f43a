//! Sources: PostgreSQL, MySQL/MariaDB, SQLite and files (CSV, JSONL) —
//! their columns, how the window planner asks them, and their reader, which
//! sends the rows to the destination's writer in batches.

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use sqlx::mysql::MySqlConnection;
use sqlx::postgres::PgConnection;
use sqlx::sqlite::SqliteConnection;
use sqlx::{Connection, Row, ValueRef};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::types::{db, invalid, literal as lit, q, Col, Kind, TableName, Val};
use crate::Result;

/// Bytes of COPY data gathered into one batch.
const BATCH_BYTES: usize = 1 << 20;
/// Rows gathered into one batch when they are read as values.
const BATCH_ROWS: usize = 2000;
/// Batches in flight between the reader and the writer.
const BATCHES_IN_FLIGHT: usize = 4;

pub(crate) enum Source {
    Postgres(PgConnection),
    MySql(MySqlConnection),
    Sqlite(SqliteConnection),
    /// A CSV or JSONL file (`file:///folder`, the file as the table).
    File(crate::files::FileSource),
}

/// One batch on its way from the source's reader to the destination's
/// writer.
pub(crate) enum Batch {
    /// PostgreSQL binary COPY data, `rows` rows.
    Copy { bytes: Bytes, rows: u64 },
    /// Rows as values.
    Rows(Vec<Vec<Val>>),
}

impl Batch {
    pub(crate) fn rows(&self) -> u64 {
        match self {
            Batch::Copy { rows, .. } => *rows,
            Batch::Rows(r) => r.len() as u64,
        }
    }
}

/// How the reader sends the rows: PostgreSQL's own COPY format (only to a
/// PostgreSQL destination), or values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReadAs {
    /// `COPY … (FORMAT binary)`: no parsing at either end.
    BinaryCopy,
    Values,
}

/// A reader on its own task, and its batches.
pub(crate) struct Reader {
    pub batches: mpsc::Receiver<Batch>,
    pub task: JoinHandle<Result<()>>,
}

/// Connects to PostgreSQL; times print and read in UTC, whatever the
/// server's zone.
pub(crate) async fn connect_postgres(url: &str, side: &str) -> Result<PgConnection> {
    let mut c = PgConnection::connect(url)
        .await
        .map_err(db(format!("cannot connect to the {side} database")))?;
    sqlx::query("SET TIME ZONE 'UTC'")
        .execute(&mut c)
        .await
        .map_err(db(format!("cannot set up the {side} connection")))?;
    Ok(c)
}

/// The columns of a PostgreSQL table with their exact types (none: it does
/// not exist).
pub(crate) async fn postgres_columns(conn: &mut PgConnection, t: &TableName) -> Result<Vec<Col>> {
    let what = || db(format!("reading the columns of {}", t.quoted()));
    let rows = sqlx::query(
        "SELECT a.attname::text AS name, format_type(a.atttypid, a.atttypmod) AS sql_type, \
         a.attnotnull AS not_null FROM pg_attribute a \
         WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped \
         ORDER BY a.attnum",
    )
    .bind(t.quoted())
    .fetch_all(&mut *conn)
    .await
    .map_err(what())?;
    rows.iter()
        .map(|r| {
            let sql_type: String = r.try_get("sql_type").map_err(what())?;
            Ok(Col {
                name: r.try_get("name").map_err(what())?,
                kind: Kind::of_postgres(&sql_type),
                not_null: r.try_get("not_null").map_err(what())?,
                exact: Some(sql_type),
            })
        })
        .collect()
}

/// Reads `select` row by row as values, in batches of [`BATCH_ROWS`].
macro_rules! read_values {
    ($conn:expr, $select:expr, $cols:expr, $tx:expr, $row:ident) => {{
        let mut batch = Vec::with_capacity(BATCH_ROWS);
        let mut stream = sqlx::query(&$select).fetch($conn);
        let mut open = true;
        while let Some(row) = stream.try_next().await.map_err(db("reading the source"))? {
            batch.push(row_values(&$cols, RowRef::$row(&row))?);
            if batch.len() >= BATCH_ROWS {
                let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH_ROWS));
                if $tx.send(Batch::Rows(full)).await.is_err() {
                    open = false;
                    break;
                }
            }
        }
        if open && !batch.is_empty() {
            let _ = $tx.send(Batch::Rows(batch)).await;
        }
        Ok(())
    }};
}

impl Source {
    pub(crate) async fn open(url: &str, table: &str) -> Result<Source> {
        let what = || db("cannot connect to the source database");
        if url.starts_with("file://") {
            let (url, table) = (url.to_owned(), table.to_owned());
            return tokio::task::spawn_blocking(move || {
                crate::files::FileSource::open(&url, &table)
            })
            .await
            .map_err(|e| invalid(format!("reading the file stopped: {e}")))?
            .map(Source::File);
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Source::Postgres(connect_postgres(url, "source").await?))
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

    pub(crate) fn mysql(&self) -> bool {
        matches!(self, Source::MySql(_))
    }

    /// The source table, quoted in the source's words.
    pub(crate) fn table(&self, t: &TableName) -> String {
        if let Source::File(_) = self {
            return t.table.clone();
        }
        let m = self.mysql();
        match &t.schema {
            Some(s) => format!("{}.{}", q(s, m), q(&t.table, m)),
            None => q(&t.table, m),
        }
    }

    /// Schema changes the source itself reports (a file's kinds widened
    /// between its batches).
    pub(crate) fn changes(&self) -> Vec<String> {
        match self {
            Source::File(f) => f.changes.clone(),
            _ => Vec::new(),
        }
    }

    pub(crate) async fn columns(&mut self, t: &TableName) -> Result<Vec<Col>> {
        let what = || db(format!("reading the columns of {}", t.table));
        match self {
            Source::File(f) => Ok(f.cols.clone()),
            Source::Postgres(c) => postgres_columns(c, t).await,
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
                            exact: None,
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
                            exact: None,
                        })
                    })
                    .collect()
            }
        }
    }

    /// The source table's row estimate, when the source keeps one
    /// (PostgreSQL's planner statistics).
    pub(crate) async fn estimate(&mut self, t: &TableName) -> Option<u64> {
        let Source::Postgres(c) = self else {
            return None;
        };
        sqlx::query_scalar::<_, f32>("SELECT reltuples FROM pg_class WHERE oid = to_regclass($1)")
            .bind(t.quoted())
            .fetch_optional(c)
            .await
            .ok()
            .flatten()
            .filter(|n| *n >= 0.0)
            .map(|n| n as u64)
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
        let n = q(column, self.mysql());
        let sql = format!(
            "SELECT {} FROM {} WHERE {n} IS NOT NULL LIMIT 1",
            self.as_text(&n),
            self.table(t)
        );
        self.text(&sql)
            .await
            .map_err(db(format!("reading a value of {column}")))
    }

    /// The first column of the first row of `sql`, as text.
    async fn text(&mut self, sql: &str) -> Result<Option<String>, sqlx::Error> {
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

    /// `expr` as text in the source's dialect.
    fn as_text(&self, expr: &str) -> String {
        match self {
            Source::Postgres(_) => format!("({expr})::text"),
            Source::MySql(_) => format!("CAST({expr} AS CHAR CHARACTER SET utf8mb4)"),
            Source::Sqlite(_) | Source::File(_) => format!("CAST({expr} AS TEXT)"),
        }
    }

    /// How to select one column: as it is for COPY, else so that it
    /// decodes as a [`Val`].
    pub(crate) fn select_expr(&self, c: &Col, read: ReadAs) -> String {
        let m = self.mysql();
        let n = q(&c.name, m);
        match (self, c.kind) {
            (Source::Postgres(_), _) if read != ReadAs::Values => n,
            (Source::Postgres(_), Kind::Bytes) => format!("encode({n}, 'hex')"),
            (Source::Postgres(_), _) => format!("{n}::text"),
            (Source::MySql(_), Kind::Real | Kind::Double) => n,
            (Source::MySql(_), Kind::Bytes) => format!("HEX({n})"),
            (Source::MySql(_), Kind::Bool | Kind::BigInt) => format!("CAST({n} AS SIGNED)"),
            (Source::MySql(_), _) => format!("CAST({n} AS CHAR CHARACTER SET utf8mb4)"),
            (Source::Sqlite(_) | Source::File(_), _) => n,
        }
    }

    /// Plans the window of change column `c` (see [`crate::window::plan`]).
    pub(crate) async fn plan(
        &mut self,
        t: &TableName,
        c: &Col,
        watermark: Option<crate::window::Watermark>,
        request: &crate::WindowRequest,
        shape: crate::window::Shape,
    ) -> Result<Option<crate::window::Plan>> {
        if let Source::File(f) = self {
            return f.plan(c, watermark, request, shape);
        }
        let table = self.table(t);
        let mut w = SourceWindow {
            src: self,
            table,
            col: c.clone(),
        };
        crate::window::plan(&mut w, watermark, request, shape).await
    }

    /// Reads every row of `select` on its own task (which owns the source
    /// connection), sending them in batches read `how`.
    pub(crate) fn spawn_reader(self, select: String, cols: Vec<Col>, how: ReadAs) -> Reader {
        let (tx, batches) = mpsc::channel(BATCHES_IN_FLIGHT);
        let task = tokio::spawn(async move {
            match (self, how) {
                (Source::Postgres(mut c), ReadAs::BinaryCopy) => {
                    read_copy(&mut c, &select, tx).await
                }
                (Source::Postgres(mut c), ReadAs::Values) => {
                    read_values!(&mut c, select, cols, tx, Pg)
                }
                (Source::MySql(mut c), _) => read_values!(&mut c, select, cols, tx, My),
                (Source::Sqlite(mut c), _) => read_values!(&mut c, select, cols, tx, Lite),
                (Source::File(f), _) => tokio::task::spawn_blocking(move || {
                    f.read(&cols, BATCH_ROWS, |b| {
                        tx.blocking_send(Batch::Rows(b)).is_ok()
                    })
                })
                .await
                .map_err(|e| invalid(format!("reading the file stopped: {e}")))?,
            }
        });
        Reader { batches, task }
    }
}

/// Reads `select` with binary COPY, in batches of about [`BATCH_BYTES`].
async fn read_copy(c: &mut PgConnection, select: &str, tx: mpsc::Sender<Batch>) -> Result<()> {
    let mut stream = c
        .copy_out_raw(&format!("COPY ({select}) TO STDOUT (FORMAT binary)"))
        .await
        .map_err(db("reading the source"))?;
    let buffers = Buffers::new();
    let fresh = || buffers.take();
    let mut bytes = fresh();
    // One COPY message a row (the header rides with the first, the
    // trailer comes alone, or with the header when there is no row).
    let mut rows = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(db("reading the source"))?;
        bytes.extend_from_slice(&chunk);
        rows += u64::from(holds_a_row(&chunk));
        if bytes.len() >= BATCH_BYTES {
            let full = std::mem::replace(&mut bytes, fresh());
            let batch = Batch::Copy {
                bytes: buffers.lend(full),
                rows,
            };
            if tx.send(batch).await.is_err() {
                return Ok(());
            }
            rows = 0;
        }
    }
    if !bytes.is_empty() {
        let _ = tx
            .send(Batch::Copy {
                bytes: bytes.into(),
                rows,
            })
            .await;
    }
    Ok(())
}

/// A read's batch buffers, each given back for the next batch once the
/// load (and the stage) have let go of it: a buffer's pages are touched
/// once per read, not once per batch. (The server keeps glibc's mmap
/// threshold at 128 KiB so that memory goes back to the system after
/// bursts: there, every fresh megabyte buffer was a new mapping, faulted in
/// page by page and unmapped after its batch.) At most
/// [`Buffers::KEPT`] wait for reuse; all are freed with the read.
struct Buffers {
    free: std::sync::Mutex<Vec<Vec<u8>>>,
}

/// A batch's buffer, lent as [`Bytes`]: back to its [`Buffers`] when the
/// last handle is dropped.
struct Lent {
    buf: Vec<u8>,
    home: std::sync::Arc<Buffers>,
}

impl Buffers {
    /// The batches in flight, those the stage holds, and one being filled.
    const KEPT: usize = BATCHES_IN_FLIGHT + 6;

    fn new() -> std::sync::Arc<Buffers> {
        std::sync::Arc::new(Buffers {
            free: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// An empty buffer for a batch: one given back, else a new one.
    fn take(&self) -> Vec<u8> {
        let reused = self.free.lock().ok().and_then(|mut free| free.pop());
        reused.unwrap_or_else(|| Vec::with_capacity(BATCH_BYTES + 64 * 1024))
    }

    /// `buf` as the bytes of a batch, coming back here when done with.
    fn lend(self: &std::sync::Arc<Self>, buf: Vec<u8>) -> Bytes {
        Bytes::from_owner(Lent {
            buf,
            home: self.clone(),
        })
    }
}

impl AsRef<[u8]> for Lent {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        if let Ok(mut free) = self.home.free.lock() {
            if free.len() < Buffers::KEPT {
                free.push(buf);
            }
        }
    }
}

/// Whether a binary COPY message holds a row: not the trailer (a field
/// count of -1), with or without the header before it.
fn holds_a_row(message: &[u8]) -> bool {
    const SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";
    let body = match message.strip_prefix(SIGNATURE) {
        // Flags (4 bytes), then the header extension's length and bytes.
        Some(rest) if rest.len() >= 8 => {
            let ext = u32::from_be_bytes([rest[4], rest[5], rest[6], rest[7]]) as usize;
            rest.get(8 + ext..).unwrap_or_default()
        }
        Some(_) => return false,
        None => message,
    };
    !body.is_empty() && body != [0xff, 0xff]
}

/// The window planner's view of a database source.
struct SourceWindow<'a> {
    src: &'a mut Source,
    table: String,
    col: Col,
}

impl crate::window::WindowSql for SourceWindow<'_> {
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
            Source::Postgres(_) => format!("{}::{}", lit(value), self.col.postgres_type()),
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
        self.src.as_text(expr)
    }
}

/// One source row as values.
fn row_values(cols: &[Col], row: RowRef<'_>) -> Result<Vec<Val>> {
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
enum RowRef<'a> {
    Pg(&'a sqlx::postgres::PgRow),
    My(&'a sqlx::mysql::MySqlRow),
    Lite(&'a sqlx::sqlite::SqliteRow),
}

#[cfg(test)]
mod tests {
    use super::{holds_a_row, Buffers, BATCH_BYTES};

    #[test]
    fn a_batch_buffer_comes_back_for_the_next_batch_once_let_go() {
        let buffers = Buffers::new();
        let mut buf = buffers.take();
        buf.extend_from_slice(b"rows");
        let at = buf.as_ptr();
        let lent = buffers.lend(buf);
        let staged = lent.clone();
        drop(lent);
        // The stage still holds the batch: its buffer is not reused.
        let other = buffers.take();
        assert_ne!(other.as_ptr(), at);
        assert_eq!(&staged[..], b"rows");
        drop(staged);
        let again = buffers.take();
        assert_eq!((again.as_ptr(), again.len()), (at, 0));
        assert!(again.capacity() >= BATCH_BYTES);
        // At most KEPT wait for reuse.
        let many: Vec<_> = (0..Buffers::KEPT + 3)
            .map(|_| buffers.lend(buffers.take()))
            .collect();
        drop(many);
        assert_eq!(buffers.free.lock().unwrap().len(), Buffers::KEPT);
    }

    #[test]
    fn binary_copy_messages_count_rows_not_the_header_or_trailer() {
        let header = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0".to_vec();
        let row = [0u8, 1, 0, 0, 0, 1, 7];
        assert!(holds_a_row(&[header.clone(), row.to_vec()].concat()));
        assert!(holds_a_row(&row));
        assert!(!holds_a_row(&[0xff, 0xff]));
        // No row at all: the header and the trailer in one message.
        assert!(!holds_a_row(&[header, vec![0xff, 0xff]].concat()));
    }
}
