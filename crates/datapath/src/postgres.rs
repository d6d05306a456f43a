//! PostgreSQL → PostgreSQL imports over binary COPY.

use std::time::Instant;

use futures_util::StreamExt;
use sqlx::postgres::PgConnection;
use sqlx::{Connection, Row};
use tokio::sync::mpsc;

use crate::{ImportError, ImportReport, ImportSpec, Mode, Progress, Result};

/// Bytes gathered before one write to the destination.
const BATCH_BYTES: usize = 1 << 20;
/// Batches in flight between the two connections.
const BATCHES_IN_FLIGHT: usize = 4;

const LEDGER: &str = "CREATE TABLE IF NOT EXISTS sluice_load_ledger (
    seq           BIGSERIAL,
    job           TEXT NOT NULL,
    window_start  TEXT NOT NULL,
    window_end    TEXT,
    rows          BIGINT NOT NULL,
    loaded_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (job, window_start)
)";

fn db(what: impl Into<String>) -> impl FnOnce(sqlx::Error) -> ImportError {
    let what = what.into();
    move |source| ImportError::Database { what, source }
}

fn invalid(msg: impl Into<String>) -> ImportError {
    ImportError::Invalid(msg.into())
}

/// A table name, `schema.table` or `table`, quoted for SQL.
#[derive(Debug, Clone, PartialEq)]
pub struct TableName {
    pub schema: Option<String>,
    pub table: String,
}

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

fn quote_literal(s: &str) -> String {
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
            Some(s) => format!("{}.{}", quote_ident(s), quote_ident(&self.table)),
            None => quote_ident(&self.table),
        }
    }

    /// The same schema, another table name.
    fn sibling(&self, table: String) -> TableName {
        TableName {
            schema: self.schema.clone(),
            table,
        }
    }
}

/// A column as the source declares it.
#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    pub name: String,
    /// `format_type` text: `numeric(12,2)`, `timestamp with time zone`, …
    pub sql_type: String,
    pub not_null: bool,
}

pub async fn columns(conn: &mut PgConnection, table: &TableName) -> Result<Vec<Column>> {
    let rows = sqlx::query(
        "SELECT a.attname::text AS name, format_type(a.atttypid, a.atttypmod) AS sql_type, \
         a.attnotnull AS not_null FROM pg_attribute a \
         WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped \
         ORDER BY a.attnum",
    )
    .bind(table.quoted())
    .fetch_all(&mut *conn)
    .await
    .map_err(db(format!("reading the columns of {}", table.quoted())))?;
    rows.iter()
        .map(|r| {
            Ok(Column {
                name: r.try_get("name").map_err(db("reading a column"))?,
                sql_type: r.try_get("sql_type").map_err(db("reading a column"))?,
                not_null: r.try_get("not_null").map_err(db("reading a column"))?,
            })
        })
        .collect()
}

/// Types whose values only grow with time or sequence: usable as a change column.
fn orderable(sql_type: &str) -> bool {
    [
        "timestamp",
        "date",
        "integer",
        "bigint",
        "smallint",
        "numeric",
        "double precision",
        "real",
    ]
    .iter()
    .any(|t| sql_type.starts_with(t))
}

fn column_list(cols: &[Column]) -> String {
    cols.iter()
        .map(|c| quote_ident(&c.name))
        .collect::<Vec<_>>()
        .join(", ")
}

fn create_table(table: &TableName, cols: &[Column], if_not_exists: bool) -> String {
    let defs = cols
        .iter()
        .map(|c| {
            format!(
                "{} {}{}",
                quote_ident(&c.name),
                c.sql_type,
                if c.not_null { " NOT NULL" } else { "" }
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "CREATE TABLE {}{} ({defs})",
        if if_not_exists { "IF NOT EXISTS " } else { "" },
        table.quoted()
    )
}

async fn connect(url: &str, side: &str) -> Result<PgConnection> {
    let mut c = PgConnection::connect(url)
        .await
        .map_err(db(format!("cannot connect to the {side} database")))?;
    // Times print and read in UTC, whatever the server's zone.
    sqlx::query("SET TIME ZONE 'UTC'")
        .execute(&mut c)
        .await
        .map_err(db(format!("cannot set up the {side} connection")))?;
    Ok(c)
}

/// The window planner's view of a PostgreSQL source.
struct PgWindow<'a> {
    conn: &'a mut PgConnection,
    table: String,
    col: Column,
}

impl crate::window::WindowSql for PgWindow<'_> {
    fn column(&self) -> String {
        quote_ident(&self.col.name)
    }
    fn literal(&self, value: &str) -> String {
        format!("{}::{}", quote_literal(value), self.col.sql_type)
    }
    fn table(&self) -> String {
        self.table.clone()
    }
    fn is_time(&self) -> bool {
        self.col.sql_type.starts_with("timestamp") || self.col.sql_type == "date"
    }
    async fn text(&mut self, sql: String) -> Result<Option<String>> {
        sqlx::query_scalar::<_, Option<String>>(&sql)
            .fetch_optional(&mut *self.conn)
            .await
            .map(Option::flatten)
            .map_err(db("planning the window"))
    }
    fn as_text(&self, expr: &str) -> String {
        format!("({expr})::text")
    }
}

/// The source table's row estimate from the planner's statistics.
async fn estimate(conn: &mut PgConnection, table: &TableName) -> Option<u64> {
    sqlx::query_scalar::<_, f32>("SELECT reltuples FROM pg_class WHERE oid = to_regclass($1)")
        .bind(table.quoted())
        .fetch_optional(conn)
        .await
        .ok()
        .flatten()
        .filter(|n| *n >= 0.0)
        .map(|n| n as u64)
}

pub async fn import(spec: &ImportSpec, progress: &mut dyn Progress) -> Result<ImportReport> {
    let started = Instant::now();
    let source = TableName::parse(&spec.source_table)?;
    let target = TableName::parse(&spec.target)?;
    let job = spec.job();
    let (src, dst) = tokio::join!(
        connect(&spec.source_url, "source"),
        connect(&spec.dest_url, "destination")
    );
    let (mut src, mut dst) = (src?, dst?);

    let cols = columns(&mut src, &source).await?;
    if cols.is_empty() {
        return Err(invalid(format!(
            "source table {} does not exist (or has no columns)",
            spec.source_table
        )));
    }
    let change = crate::change_column(
        spec,
        &cols,
        |c| c.name.as_str(),
        |c| (!orderable(&c.sql_type)).then(|| c.sql_type.clone()),
    )?
    .cloned();
    ensure_ledger(&mut dst).await?;

    let mut report = ImportReport {
        rows: 0,
        window_start: None,
        window_end: None,
        already_loaded: false,
        elapsed: Default::default(),
    };
    let cols_sql = column_list(&cols);
    let mut select = format!("SELECT {cols_sql} FROM {}", source.quoted());
    let mut replace = None;
    let mut window_key = format!("full:{:016x}", rand::random::<u64>());
    if let (Some(c), Mode::Incremental) = (&change, spec.mode) {
        let watermark: Option<String> = sqlx::query_scalar(crate::WATERMARK)
            .bind(&job)
            .fetch_optional(&mut dst)
            .await
            .map_err(db("reading the load ledger"))?;
        let mut w = PgWindow {
            conn: &mut src,
            table: source.quoted(),
            col: c.clone(),
        };
        let Some(plan) = crate::window::plan(&mut w, watermark.clone(), &spec.window).await? else {
            // Nothing new since the last load.
            report.window_start = watermark.clone();
            report.window_end = watermark;
            report.elapsed = started.elapsed();
            return Ok(report);
        };
        select = format!("{select} WHERE {}", plan.condition);
        report.window_start = plan.start;
        report.window_end = plan.end;
        window_key = plan.ledger_key;
        replace = plan.replace.map(|(a, b)| {
            let col = quote_ident(&c.name);
            let lit = |v: &str| format!("{}::{}", quote_literal(v), c.sql_type);
            format!("{col} >= {} AND {col} < {}", lit(&a), lit(&b))
        });
    }
    let estimate = estimate(&mut src, &source).await;

    let mut tx = dst.begin().await.map_err(db("beginning the load"))?;
    // The ledger row first: a second attempt at this window waits here for
    // the first to end, then finds the key taken.
    let claimed = sqlx::query(
        "INSERT INTO sluice_load_ledger (job, window_start, window_end, rows) \
         VALUES ($1, $2, $3, 0) ON CONFLICT (job, window_start) DO NOTHING",
    )
    .bind(&job)
    .bind(&window_key)
    .bind(&report.window_end)
    .execute(&mut *tx)
    .await
    .map_err(db("writing the load ledger"))?
    .rows_affected();
    if claimed == 0 {
        tx.rollback().await.map_err(db("ending the load"))?;
        report.already_loaded = true;
        report.elapsed = started.elapsed();
        return Ok(report);
    }

    let load_into = match spec.mode {
        Mode::Incremental => {
            prepare_target(&mut tx, &target, &cols).await?;
            if let Some(cond) = &replace {
                // A window run again replaces what the target holds there.
                sqlx::query(&format!("DELETE FROM {} WHERE {cond}", target.quoted()))
                    .execute(&mut *tx)
                    .await
                    .map_err(db(format!("clearing the window in {}", target.quoted())))?;
            }
            target.clone()
        }
        Mode::Destructive => {
            let fresh = target.sibling(format!(
                "{}__sluice_{:08x}",
                target.table,
                rand::random::<u32>()
            ));
            sqlx::query(&create_table(&fresh, &cols, false))
                .execute(&mut *tx)
                .await
                .map_err(db(format!("creating {}", fresh.quoted())))?;
            fresh
        }
    };

    let rows = stream_rows(
        src, &mut tx, &select, &load_into, &cols_sql, estimate, progress,
    )
    .await?;

    if spec.mode == Mode::Destructive {
        sqlx::query(&format!("DROP TABLE IF EXISTS {}", target.quoted()))
            .execute(&mut *tx)
            .await
            .map_err(db(format!("replacing {}", target.quoted())))?;
        sqlx::query(&format!(
            "ALTER TABLE {} RENAME TO {}",
            load_into.quoted(),
            quote_ident(&target.table)
        ))
        .execute(&mut *tx)
        .await
        .map_err(db(format!("replacing {}", target.quoted())))?;
    }
    sqlx::query("UPDATE sluice_load_ledger SET rows = $1 WHERE job = $2 AND window_start = $3")
        .bind(rows as i64)
        .bind(&job)
        .bind(&window_key)
        .execute(&mut *tx)
        .await
        .map_err(db("writing the load ledger"))?;
    tx.commit().await.map_err(db("committing the load"))?;
    report.rows = rows;
    report.elapsed = started.elapsed();
    Ok(report)
}

async fn ensure_ledger(dst: &mut PgConnection) -> Result<()> {
    // Two first loads may race to create it; the loser finds it made.
    for attempt in 0..2 {
        match sqlx::query(LEDGER).execute(&mut *dst).await {
            Ok(_) => return Ok(()),
            Err(e) if attempt == 0 => tracing::debug!("creating the load ledger: {e}; again"),
            Err(e) => return Err(db("creating the load ledger")(e)),
        }
    }
    Ok(())
}

/// Makes the target when it is missing; refuses one whose columns differ.
async fn prepare_target(
    conn: &mut PgConnection,
    target: &TableName,
    cols: &[Column],
) -> Result<()> {
    let existing = columns(conn, target).await?;
    if existing.is_empty() {
        sqlx::query(&create_table(target, cols, false))
            .execute(&mut *conn)
            .await
            .map_err(db(format!("creating {}", target.quoted())))?;
        return Ok(());
    }
    let shape = |cs: &[Column]| {
        cs.iter()
            .map(|c| format!("{} {}", c.name, c.sql_type))
            .collect::<Vec<_>>()
    };
    if shape(&existing) != shape(cols) {
        return Err(invalid(format!(
            "target {} has columns ({}) but the source has ({}): load into a new target \
             or use --mode destructive",
            target.quoted(),
            shape(&existing).join(", "),
            shape(cols).join(", ")
        )));
    }
    Ok(())
}

/// Streams `select` from the source into `into` on the destination inside
/// `tx`: binary COPY out, binary COPY in, batches in flight between them.
async fn stream_rows(
    mut src: PgConnection,
    dst: &mut PgConnection,
    select: &str,
    into: &TableName,
    cols_sql: &str,
    estimate: Option<u64>,
    progress: &mut dyn Progress,
) -> Result<u64> {
    let (tx, mut rx) = mpsc::channel::<(Vec<u8>, u64)>(BATCHES_IN_FLIGHT);
    let copy_out = format!("COPY ({select}) TO STDOUT (FORMAT binary)");
    let reader = tokio::spawn(async move {
        let mut stream = src
            .copy_out_raw(&copy_out)
            .await
            .map_err(db("reading the source"))?;
        let mut batch = Vec::with_capacity(BATCH_BYTES + 64 * 1024);
        let mut messages = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(db("reading the source"))?;
            batch.extend_from_slice(&chunk);
            messages += 1;
            if batch.len() >= BATCH_BYTES {
                let full =
                    std::mem::replace(&mut batch, Vec::with_capacity(BATCH_BYTES + 64 * 1024));
                if tx.send((full, messages)).await.is_err() {
                    return Ok(());
                }
                messages = 0;
            }
        }
        if !batch.is_empty() {
            let _ = tx.send((batch, messages)).await;
        }
        Ok::<(), ImportError>(())
    });

    let mut copy_in = dst
        .copy_in_raw(&format!(
            "COPY {} ({cols_sql}) FROM STDIN (FORMAT binary)",
            into.quoted()
        ))
        .await
        .map_err(db(format!("loading {}", into.quoted())))?;
    let mut seen = 0u64;
    let mut last = Instant::now();
    while let Some((batch, messages)) = rx.recv().await {
        if let Err(e) = copy_in.send(batch).await {
            reader.abort();
            return Err(db(format!("loading {}", into.quoted()))(e));
        }
        // One COPY message a row (the header rides with the first).
        seen += messages;
        if last.elapsed().as_millis() >= 200 {
            progress.rows(seen, estimate);
            last = Instant::now();
        }
    }
    match reader.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            let _ = copy_in.abort("the source failed").await;
            return Err(e);
        }
        Err(e) => {
            let _ = copy_in.abort("the reader stopped").await;
            return Err(invalid(format!("the source reader stopped: {e}")));
        }
    }
    let rows = copy_in
        .finish()
        .await
        .map_err(db(format!("loading {}", into.quoted())))?;
    progress.rows(rows, estimate);
    Ok(rows)
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
        assert_eq!(quote_literal("it's"), "'it''s'");
    }
}
