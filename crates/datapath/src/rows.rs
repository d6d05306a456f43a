//! Imports between unlike databases, row by row: sources PostgreSQL,
//! MariaDB/MySQL and SQLite; destinations PostgreSQL (rows sent with text
//! COPY) and SQLite (the embedded warehouse; batched INSERTs). Types follow
//! one documented mapping ([`Kind`]); windows and the load ledger work as in
//! [`crate::postgres`].

use std::time::Instant;

use futures_util::TryStreamExt;
use sqlx::mysql::MySqlConnection;
use sqlx::postgres::PgConnection;
use sqlx::sqlite::SqliteConnection;
use sqlx::{Connection, Row, ValueRef};

use crate::types::{db, invalid, literal as lit, q, TableName, Val};
pub use crate::types::{Col, Kind};
use crate::{ledger, ImportError, ImportReport, ImportSpec, Mode, Progress, Result};

/// Rows per write to the destination.
const BATCH_ROWS: usize = 2000;

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
    fn bookkeeping(&mut self) -> ledger::Conn<'_> {
        match self {
            Dest::Postgres(c) => ledger::Conn::Postgres(c),
            Dest::Sqlite(c) => ledger::Conn::Sqlite(c),
        }
    }

    /// Runs a DELETE; answers how many rows it took.
    async fn delete(&mut self, sql: &str) -> Result<u64, sqlx::Error> {
        match self {
            Dest::Postgres(c) => sqlx::query(sql).execute(c).await.map(|r| r.rows_affected()),
            Dest::Sqlite(c) => sqlx::query(sql).execute(c).await.map(|r| r.rows_affected()),
        }
    }

    async fn raw(&mut self, sql: &str) -> Result<(), sqlx::Error> {
        match self {
            Dest::Postgres(c) => sqlx::raw_sql(sql).execute(c).await.map(|_| ()),
            Dest::Sqlite(c) => sqlx::raw_sql(sql).execute(c).await.map(|_| ()),
        }
    }
}

fn sqlite_url(url: &str) -> String {
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
    fn mysql(&self) -> bool {
        matches!(self, Source::MySql(_))
    }

    fn table(&self, t: &TableName) -> String {
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

    /// How to select one column so that it decodes as [`Val`].
    fn select_expr(&self, c: &Col) -> String {
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
struct RowsWindow<'a> {
    src: &'a mut Source,
    table: String,
    col: Col,
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

/// Text in PostgreSQL's words for a value of `kind`.
fn pg_text(kind: Kind, v: &Val, from_mysql: bool) -> Option<String> {
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

fn float_text(f: f64) -> String {
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
fn copy_field(out: &mut String, v: Option<&str>) {
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

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect()
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

fn dest_table(t: &TableName) -> String {
    match &t.schema {
        Some(s) => format!("{}.{}", q(s, false), q(&t.table, false)),
        None => q(&t.table, false),
    }
}

fn create_sql(dest: &Dest, table: &str, cols: &[Col]) -> String {
    let defs = cols
        .iter()
        .map(|c| {
            let ty = match dest {
                Dest::Postgres(_) => c.kind.postgres(),
                Dest::Sqlite(_) => c.kind.sqlite().to_owned(),
            };
            format!(
                "{} {ty}{}",
                q(&c.name, false),
                if c.not_null { " NOT NULL" } else { "" }
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    format!("CREATE TABLE IF NOT EXISTS {table} ({defs})")
}

pub async fn import(spec: &ImportSpec, progress: &mut dyn Progress) -> Result<ImportReport> {
    let started = Instant::now();
    let source = TableName::parse(&spec.source_table)?;
    let target = TableName::parse(&spec.target)?;
    let job = spec.job();
    let mut src = open_source(&spec.source_url, &spec.source_table).await?;
    let mut dst = open_dest(&spec.dest_url).await?;
    let all = src.columns(&source).await?;
    let crate::Decided {
        cols,
        change,
        key,
        shape,
        before:
            ledger::Before {
                target: owned,
                verdict,
                watermark,
            },
        mut report,
    } = crate::decide(
        spec,
        &all,
        |c: &Col| c.name.as_str(),
        |c| (!c.kind.orderable()).then(|| format!("{:?}", c.kind)),
        &mut dst.bookkeeping(),
        &target,
        &job,
    )
    .await?;
    let src_table = src.table(&source);
    let exprs = cols
        .iter()
        .map(|c| src.select_expr(c))
        .collect::<Vec<_>>()
        .join(", ");
    let mut select = format!("SELECT {exprs} FROM {src_table}");
    let mut replace = None;
    let mut window_key = format!("full:{:016x}", rand::random::<u64>());
    let mut boundary_rows = None;
    if let (Some(c), true) = (&change, spec.mode.windowed()) {
        let planned = match &mut src {
            Source::File(f) => f.plan(c, watermark.clone(), &spec.window, shape)?,
            other => {
                let mut w = RowsWindow {
                    src: other,
                    table: src_table.clone(),
                    col: c.clone(),
                };
                crate::window::plan(&mut w, watermark.clone(), &spec.window, shape).await?
            }
        };
        let Some(plan) = report.take_window(planned, watermark, progress) else {
            report.elapsed = started.elapsed();
            return Ok(report);
        };
        select = format!("{select} WHERE {}", plan.condition);
        window_key = plan.ledger_key;
        boundary_rows = plan.boundary_rows;
        replace = crate::replaced(spec, plan.replace, &q(&c.name, false), |v| match &dst {
            Dest::Postgres(_) => format!("{}::{}", lit(v), c.kind.postgres()),
            // The warehouse keeps times in one spelling (see write_batch).
            Dest::Sqlite(_) => lit(&match c.kind {
                Kind::Timestamp | Kind::TimestampTz => crate::window::parse_time(v)
                    .map(crate::window::format_time)
                    .unwrap_or_else(|| v.to_owned()),
                _ => v.to_owned(),
            }),
        });
    }
    let live = dest_table(&target);
    let load_into = match spec.mode {
        Mode::Incremental => live.clone(),
        Mode::Merge => q(
            &format!("sluice_stage_{:08x}", rand::random::<u32>()),
            false,
        ),
        Mode::Destructive => dest_table(&TableName {
            schema: target.schema.clone(),
            table: format!("{}__sluice_{:08x}", target.table, rand::random::<u32>()),
        }),
    };
    let from_mysql = src.mysql();

    // One destination transaction: the ledger row, the rows, the swap.
    let begin = match &dst {
        Dest::Postgres(_) => "BEGIN",
        Dest::Sqlite(_) => "BEGIN IMMEDIATE",
    };
    dst.raw(begin).await.map_err(db("beginning the load"))?;
    let claimed = ledger::claim(
        &mut dst.bookkeeping(),
        &job,
        &owned.name,
        &verdict,
        &window_key,
        report.window_end.as_deref(),
        boundary_rows,
    )
    .await;
    let mut source_conn = Some(src);
    let outcome = async {
        if !claimed? {
            return Ok(None);
        }
        let mut changes = match spec.mode {
            Mode::Incremental => consolidate(&mut dst, &target, &load_into, &cols).await?,
            Mode::Merge => {
                let changes = consolidate(&mut dst, &target, &live, &cols).await?;
                let stage = match &dst {
                    Dest::Postgres(_) => {
                        format!("CREATE TEMP TABLE {load_into} (LIKE {live}) ON COMMIT DROP")
                    }
                    Dest::Sqlite(_) => {
                        format!("CREATE TEMP TABLE {load_into} AS SELECT * FROM {live} WHERE 0")
                    }
                };
                dst.raw(&stage)
                    .await
                    .map_err(db("creating the merge's stage table"))?;
                changes
            }
            Mode::Destructive => {
                let create = create_sql(&dst, &load_into, &cols);
                dst.raw(&create)
                    .await
                    .map_err(db(format!("creating {load_into}")))?;
                vec![format!("{live} is replaced by a new table")]
            }
        };
        if let Some(Source::File(f)) = &source_conn {
            changes.extend(f.changes.iter().cloned());
        }
        progress.stage(crate::StageEvent::Consolidated {
            columns: cols
                .iter()
                .map(|c| match &dst {
                    Dest::Postgres(_) => format!("{} {}", c.name, c.kind.postgres()),
                    Dest::Sqlite(_) => format!("{} {}", c.name, c.kind.sqlite()),
                })
                .collect(),
            changes,
        });
        // Rows at the watermark loaded before and read again: not new rows.
        let mut reread = 0;
        if let Some((cond, boundary)) = &replace {
            // A window run again, or the watermark's rows read again,
            // replace what the target holds there.
            let gone = dst
                .delete(&format!("DELETE FROM {live} WHERE {cond}"))
                .await
                .map_err(db(format!("clearing the window in {live}")))?;
            if *boundary {
                reread = gone;
            }
        }
        let rows = copy_rows(
            source_conn
                .take()
                .ok_or_else(|| invalid("the source was already read"))?,
            &mut dst,
            &select,
            &cols,
            &load_into,
            from_mysql,
            spec,
            progress,
        )
        .await?
        .saturating_sub(reread);
        spec.check_cancel()?;
        if let Some(key) = &key {
            let names = cols
                .iter()
                .map(|c| q(&c.name, false))
                .collect::<Vec<_>>()
                .join(", ");
            let pg = matches!(dst, Dest::Postgres(_));
            for stmt in crate::merge_sql(pg, &live, &load_into, &names, &q(key, false)) {
                dst.raw(&stmt)
                    .await
                    .map_err(db(format!("merging into {live}")))?;
            }
            if !pg {
                dst.raw(&format!("DROP TABLE {load_into}"))
                    .await
                    .map_err(db("dropping the merge's stage table"))?;
            }
        }
        if spec.mode == Mode::Destructive {
            let swap = format!(
                "DROP TABLE IF EXISTS {live}; ALTER TABLE {load_into} RENAME TO {}",
                q(&target.table, false)
            );
            dst.raw(&swap)
                .await
                .map_err(db(format!("replacing {live}")))?;
        }
        ledger::record(&mut dst.bookkeeping(), &job, &window_key, rows).await?;
        progress.stage(crate::StageEvent::Loaded { rows });
        spec.check_cancel()?;
        Ok::<_, ImportError>(Some(rows))
    }
    .await;
    let end = if matches!(outcome, Ok(Some(_))) {
        "COMMIT"
    } else {
        "ROLLBACK"
    };
    let ended = dst.raw(end).await;
    match outcome? {
        Some(rows) => {
            ended.map_err(db("committing the load"))?;
            report.rows = rows;
        }
        None => report.already_loaded = true,
    }
    Ok(report.ended(started, progress))
}

/// Reads every row of `select` on its own task (which owns the source
/// connection) and sends them in batches.
fn spawn_reader(
    src: Source,
    select: String,
    cols: Vec<Col>,
) -> (
    tokio::sync::mpsc::Receiver<Vec<Vec<Val>>>,
    tokio::task::JoinHandle<Result<()>>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let task = tokio::spawn(async move {
        let mut batch = Vec::with_capacity(BATCH_ROWS);
        macro_rules! drain {
            ($conn:expr, $wrap:expr) => {{
                let mut stream = sqlx::query(&select).fetch($conn);
                while let Some(row) = stream.try_next().await.map_err(db("reading the source"))? {
                    batch.push(row_values(&cols, $wrap(&row))?);
                    if batch.len() >= BATCH_ROWS {
                        let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH_ROWS));
                        if tx.send(full).await.is_err() {
                            return Ok(());
                        }
                    }
                }
            }};
        }
        match src {
            Source::Postgres(mut c) => drain!(&mut c, RowRef::Pg),
            Source::MySql(mut c) => drain!(&mut c, RowRef::My),
            Source::Sqlite(mut c) => drain!(&mut c, RowRef::Lite),
            Source::File(f) => {
                let tx = tx.clone();
                return tokio::task::spawn_blocking(move || {
                    f.read(&cols, BATCH_ROWS, |b| tx.blocking_send(b).is_ok())
                })
                .await
                .map_err(|e| invalid(format!("reading the file stopped: {e}")))?;
            }
        }
        if !batch.is_empty() {
            let _ = tx.send(batch).await;
        }
        Ok(())
    });
    (rx, task)
}

/// Streams the source's rows into `into`, in batches.
#[allow(clippy::too_many_arguments)]
async fn copy_rows(
    src: Source,
    dst: &mut Dest,
    select: &str,
    cols: &[Col],
    into: &str,
    from_mysql: bool,
    spec: &ImportSpec,
    progress: &mut dyn Progress,
) -> Result<u64> {
    let mut staged = Vec::new();
    let names = cols
        .iter()
        .map(|c| q(&c.name, false))
        .collect::<Vec<_>>()
        .join(", ");
    let mut total = 0u64;
    let (mut pg_copy, mut sqlite) = match dst {
        Dest::Postgres(d) => (
            Some(
                d.copy_in_raw(&format!("COPY {into} ({names}) FROM STDIN"))
                    .await
                    .map_err(db(format!("loading {into}")))?,
            ),
            None,
        ),
        Dest::Sqlite(d) => (None, Some(d)),
    };
    let (mut rx, reader) = spawn_reader(src, select.to_owned(), cols.to_vec());
    while let Some(batch) = rx.recv().await {
        let staging = match (&spec.stage, spec.check_cancel()) {
            (_, Err(e)) => Err(e),
            (Some(stage), Ok(())) => {
                let text = tsv(&batch, cols, from_mysql);
                let bytes = text.len() as u64;
                let n = staged.len() as u64 + 1;
                match stage.0.put(crate::stage::batch_name(n), text).await {
                    Ok(object) => {
                        staged.push(crate::stage::Staged {
                            object,
                            rows: batch.len() as u64,
                            bytes,
                        });
                        Ok(())
                    }
                    Err(e) => Err(ImportError::Stage(e)),
                }
            }
            (None, Ok(())) => Ok(()),
        };
        if let Err(e) = staging {
            reader.abort();
            if let Some(copy) = pg_copy {
                let _ = copy.abort("the load stopped").await;
            }
            return Err(e);
        }
        progress.stage(crate::StageEvent::Extracted {
            batch: staged.len().max(1) as u64,
            rows: batch.len() as u64,
            bytes: staged.last().map_or(0, |s| s.bytes),
            object: staged.last().map(|s| s.object.clone()),
        });
        match write_batch(
            &mut pg_copy,
            &mut sqlite,
            &batch,
            cols,
            into,
            &names,
            from_mysql,
        )
        .await
        {
            Ok(n) => total += n,
            Err(e) => {
                reader.abort();
                if let Some(copy) = pg_copy {
                    let _ = copy.abort("the load failed").await;
                }
                return Err(e);
            }
        }
        progress.rows(total, None);
    }
    let read = reader
        .await
        .map_err(|e| invalid(format!("the source reader stopped: {e}")))
        .and_then(|r| r);
    if let Err(e) = read {
        if let Some(copy) = pg_copy {
            let _ = copy.abort("the source failed").await;
        }
        return Err(e);
    }
    let manifest = match &spec.stage {
        Some(stage) => {
            let columns: Vec<(String, String)> = cols
                .iter()
                .map(|c| (c.name.clone(), c.kind.postgres()))
                .collect();
            let doc = crate::stage::manifest(&spec.source_table, into, &columns, &staged);
            Some(
                stage
                    .0
                    .put("manifest.json".into(), doc)
                    .await
                    .map_err(ImportError::Stage)?,
            )
        }
        None => None,
    };
    progress.stage(crate::StageEvent::ExtractDone {
        rows: total,
        batches: staged.len() as u64,
        manifest,
    });
    if let Some(copy) = pg_copy {
        total = copy.finish().await.map_err(db(format!("loading {into}")))?;
    }
    progress.rows(total, None);
    Ok(total)
}

/// A batch in PostgreSQL's text COPY format (the staged files' format).
fn tsv(batch: &[Vec<Val>], cols: &[Col], from_mysql: bool) -> Vec<u8> {
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

/// Makes the live table when it is missing, or adds the source's new
/// columns to it; answers the schema changes.
async fn consolidate(
    dst: &mut Dest,
    target: &TableName,
    live: &str,
    cols: &[Col],
) -> Result<Vec<String>> {
    let existing: Vec<String> = match dst {
        Dest::Postgres(c) => crate::postgres::columns(c, target)
            .await?
            .into_iter()
            .map(|c| c.name)
            .collect(),
        Dest::Sqlite(c) => {
            let rows = sqlx::query(&format!("PRAGMA table_info({})", q(&target.table, false)))
                .fetch_all(&mut *c)
                .await
                .map_err(db(format!("reading the columns of {live}")))?;
            rows.iter()
                .map(|r| r.try_get::<String, _>("name"))
                .collect::<Result<_, _>>()
                .map_err(db(format!("reading the columns of {live}")))?
        }
    };
    if existing.is_empty() {
        let create = create_sql(dst, live, cols);
        dst.raw(&create)
            .await
            .map_err(db(format!("creating {live}")))?;
        return Ok(vec![format!("created {live}")]);
    }
    let mut changes = Vec::new();
    for c in cols.iter().filter(|c| !existing.contains(&c.name)) {
        let ty = match dst {
            Dest::Postgres(_) => c.kind.postgres(),
            Dest::Sqlite(_) => c.kind.sqlite().to_owned(),
        };
        dst.raw(&format!(
            "ALTER TABLE {live} ADD COLUMN {} {ty}",
            q(&c.name, false)
        ))
        .await
        .map_err(db(format!("adding column {} to {live}", c.name)))?;
        changes.push(format!("new column {} {ty}", c.name));
    }
    for e in existing
        .iter()
        .filter(|e| !cols.iter().any(|c| &c.name == *e))
    {
        changes.push(format!(
            "column {e} is not in the source: its new rows hold NULL"
        ));
    }
    Ok(changes)
}

async fn write_batch(
    pg_copy: &mut Option<sqlx::postgres::PgCopyIn<&mut PgConnection>>,
    sqlite: &mut Option<&mut SqliteConnection>,
    batch: &[Vec<Val>],
    cols: &[Col],
    into: &str,
    names: &str,
    from_mysql: bool,
) -> Result<u64> {
    if let Some(copy) = pg_copy {
        copy.send(tsv(batch, cols, from_mysql))
            .await
            .map_err(db(format!("loading {into}")))?;
        return Ok(batch.len() as u64);
    }
    let Some(conn) = sqlite else { return Ok(0) };
    // SQLite binds at most 32766 parameters a statement.
    let per = (32000 / cols.len().max(1)).max(1);
    for chunk in batch.chunks(per) {
        let row = format!("({})", vec!["?"; cols.len()].join(", "));
        let sql = format!(
            "INSERT INTO {into} ({names}) VALUES {}",
            vec![row; chunk.len()].join(", ")
        );
        let mut query = sqlx::query(&sql);
        for r in chunk {
            for (v, c) in r.iter().zip(cols) {
                query = match (v, c.kind) {
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
                    (Val::Text(s), Kind::SmallInt | Kind::Int | Kind::BigInt) => {
                        match s.parse::<i64>() {
                            Ok(i) => query.bind(i),
                            Err(_) => query.bind(s.clone()),
                        }
                    }
                    (Val::Text(s), Kind::Real | Kind::Double) => match s.parse::<f64>() {
                        Ok(f) => query.bind(f),
                        Err(_) => query.bind(s.clone()),
                    },
                    // One spelling of times, so that the warehouse compares
                    // them as text correctly (windows run again by hand).
                    (Val::Text(s), Kind::Timestamp | Kind::TimestampTz) => query.bind(
                        crate::window::parse_time(s)
                            .map(crate::window::format_time)
                            .unwrap_or_else(|| s.clone()),
                    ),
                    (Val::Text(s), _) => query.bind(s.clone()),
                };
            }
        }
        query
            .execute(&mut **conn)
            .await
            .map_err(db(format!("loading {into}")))?;
    }
    Ok(batch.len() as u64)
}
