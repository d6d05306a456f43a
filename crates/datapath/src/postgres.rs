//! PostgreSQL → PostgreSQL imports over binary COPY.

use std::time::Instant;

use futures_util::StreamExt;
use sqlx::postgres::PgConnection;
use sqlx::{Connection, Row};
use tokio::sync::mpsc;

pub use crate::types::TableName;
use crate::types::{db, ident as quote_ident, invalid, literal as quote_literal};
use crate::{ledger, ImportError, ImportReport, ImportSpec, Mode, Progress, Result};

/// Bytes gathered before one write to the destination.
const BATCH_BYTES: usize = 1 << 20;
/// Batches in flight between the two connections.
const BATCHES_IN_FLIGHT: usize = 4;

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

    let all = columns(&mut src, &source).await?;
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
        |c: &Column| c.name.as_str(),
        |c| (!orderable(&c.sql_type)).then(|| c.sql_type.clone()),
        &mut ledger::Conn::Postgres(&mut dst),
        &target,
        &job,
    )
    .await?;
    let cols_sql = column_list(&cols);
    let mut select = format!("SELECT {cols_sql} FROM {}", source.quoted());
    let mut replace = None;
    let mut window_key = format!("full:{:016x}", rand::random::<u64>());
    let mut boundary_rows = None;
    if let (Some(c), true) = (&change, spec.mode.windowed()) {
        let mut w = PgWindow {
            conn: &mut src,
            table: source.quoted(),
            col: c.clone(),
        };
        let plan = crate::window::plan(&mut w, watermark.clone(), &spec.window, shape).await?;
        let Some(plan) = report.take_window(plan, watermark, progress) else {
            report.elapsed = started.elapsed();
            return Ok(report);
        };
        select = format!("{select} WHERE {}", plan.condition);
        window_key = plan.ledger_key;
        boundary_rows = plan.boundary_rows;
        replace = crate::replaced(spec, plan.replace, &quote_ident(&c.name), |v| {
            format!("{}::{}", quote_literal(v), c.sql_type)
        });
    }
    let estimate = estimate(&mut src, &source).await;

    // Rows at the watermark loaded before and read again: not new rows.
    let mut reread = 0;
    let mut tx = dst.begin().await.map_err(db("beginning the load"))?;
    let claimed = ledger::claim(
        &mut ledger::Conn::Postgres(&mut tx),
        &job,
        &owned.name,
        &verdict,
        &window_key,
        report.window_end.as_deref(),
        boundary_rows,
    )
    .await?;
    if !claimed {
        tx.rollback().await.map_err(db("ending the load"))?;
        report.already_loaded = true;
        return Ok(report.ended(started, progress));
    }

    let load_into = match spec.mode {
        Mode::Incremental | Mode::Merge => {
            let changes = prepare_target(&mut tx, &target, &cols, !verdict.foreign).await?;
            progress.stage(crate::StageEvent::Consolidated {
                columns: cols
                    .iter()
                    .map(|c| format!("{} {}", c.name, c.sql_type))
                    .collect(),
                changes,
            });
            if let Some((cond, boundary)) = &replace {
                // A window run again, or the watermark's rows read again,
                // replace what the target holds there.
                let gone = sqlx::query(&format!("DELETE FROM {} WHERE {cond}", target.quoted()))
                    .execute(&mut *tx)
                    .await
                    .map_err(db(format!("clearing the window in {}", target.quoted())))?
                    .rows_affected();
                if *boundary {
                    reread = gone;
                }
            }
            if spec.mode == Mode::Merge {
                let stage = TableName {
                    schema: None,
                    table: format!("sluice_stage_{:08x}", rand::random::<u32>()),
                };
                sqlx::query(&format!(
                    "CREATE TEMP TABLE {} (LIKE {}) ON COMMIT DROP",
                    stage.quoted(),
                    target.quoted()
                ))
                .execute(&mut *tx)
                .await
                .map_err(db("creating the merge's stage table"))?;
                stage
            } else {
                target.clone()
            }
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
            progress.stage(crate::StageEvent::Consolidated {
                columns: cols
                    .iter()
                    .map(|c| format!("{} {}", c.name, c.sql_type))
                    .collect(),
                changes: vec![format!("{} is replaced by a new table", target.quoted())],
            });
            fresh
        }
    };

    let rows = stream_rows(
        src, &mut tx, &select, &load_into, &cols, estimate, spec, progress,
    )
    .await?
    .saturating_sub(reread);
    spec.check_cancel()?;

    if let Some(key) = &key {
        for stmt in crate::merge_sql(
            true,
            &target.quoted(),
            &load_into.quoted(),
            &column_list(&cols),
            &quote_ident(key),
        ) {
            sqlx::query(&stmt)
                .execute(&mut *tx)
                .await
                .map_err(db(format!("merging into {}", target.quoted())))?;
        }
    }
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
    ledger::record(
        &mut ledger::Conn::Postgres(&mut tx),
        &job,
        &window_key,
        rows,
    )
    .await?;
    progress.stage(crate::StageEvent::Loaded { rows });
    spec.check_cancel()?;
    tx.commit().await.map_err(db("committing the load"))?;
    report.rows = rows;
    Ok(report.ended(started, progress))
}

/// Makes the target when it is missing, or brings an existing one to the
/// source's shape: a new source column is added, a column whose source type
/// grew is widened (`integer` → `bigint`, `real` → `double precision`, a
/// longer `varchar` or `text`, a larger `numeric`). Answers those schema
/// changes; refuses any other difference.
async fn prepare_target(
    conn: &mut PgConnection,
    target: &TableName,
    cols: &[Column],
    may_change: bool,
) -> Result<Vec<String>> {
    let existing = columns(conn, target).await?;
    if existing.is_empty() {
        sqlx::query(&create_table(target, cols, false))
            .execute(&mut *conn)
            .await
            .map_err(db(format!("creating {}", target.quoted())))?;
        return Ok(vec![format!("created {}", target.quoted())]);
    }
    let mut changes = Vec::new();
    let mut ddl = Vec::new();
    for c in cols {
        match existing.iter().find(|e| e.name == c.name) {
            None => {
                ddl.push(format!(
                    "ALTER TABLE {} ADD COLUMN {} {}",
                    target.quoted(),
                    quote_ident(&c.name),
                    c.sql_type
                ));
                changes.push(format!("new column {} {}", c.name, c.sql_type));
            }
            Some(e) if e.sql_type == c.sql_type => {}
            Some(e) if widens(&e.sql_type, &c.sql_type) => {
                ddl.push(format!(
                    "ALTER TABLE {} ALTER COLUMN {} TYPE {}",
                    target.quoted(),
                    quote_ident(&c.name),
                    c.sql_type
                ));
                changes.push(format!(
                    "column {} widened from {} to {}",
                    c.name, e.sql_type, c.sql_type
                ));
            }
            Some(e) => {
                return Err(invalid(format!(
                    "column {} of {} is {} but the source's is {}: not a widening sluice \
                     makes; load into a new target or use --mode destructive",
                    c.name,
                    target.quoted(),
                    e.sql_type,
                    c.sql_type
                )))
            }
        }
    }
    for e in &existing {
        if !cols.iter().any(|c| c.name == e.name) {
            changes.push(format!(
                "column {} is not in the source: its new rows hold NULL",
                e.name
            ));
        }
    }
    if !may_change && !ddl.is_empty() {
        return Err(invalid(format!(
            "{} exists and sluice did not make it: loading would change it ({}), and sluice \
             changes only tables it made; nothing was written",
            target.quoted(),
            changes.join("; ")
        )));
    }
    for stmt in ddl {
        sqlx::query(&stmt)
            .execute(&mut *conn)
            .await
            .map_err(db(format!("changing {}", target.quoted())))?;
    }
    Ok(changes)
}

/// Whether a column of type `from` can hold every value of type `to`
/// after `ALTER COLUMN … TYPE to` without loss.
fn widens(from: &str, to: &str) -> bool {
    let rank = |t: &str| match t {
        "smallint" => Some(1),
        "integer" => Some(2),
        "bigint" => Some(3),
        _ => None,
    };
    if let (Some(a), Some(b)) = (rank(from), rank(to)) {
        return a < b;
    }
    let varchar = |t: &str| {
        t.strip_prefix("character varying(")
            .and_then(|r| r.strip_suffix(')'))
            .and_then(|n| n.parse::<u32>().ok())
    };
    let numeric = |t: &str| {
        t.strip_prefix("numeric(")
            .and_then(|r| r.strip_suffix(')'))
            .and_then(|r| r.split_once(','))
            .and_then(|(p, s)| Some((p.trim().parse::<u32>().ok()?, s.trim().parse::<u32>().ok()?)))
    };
    match (from, to) {
        ("real", "double precision") => true,
        (f, "text") if varchar(f).is_some() => true,
        (f, t) if varchar(f).is_some() && varchar(t).is_some() => varchar(f) < varchar(t),
        (f, t) => match (numeric(f), numeric(t)) {
            // More digits before and after the point: every value fits.
            (Some((p1, s1)), Some((p2, s2))) => s2 >= s1 && p2 - s2 >= p1 - s1,
            (Some(_), None) => t == "numeric",
            _ => false,
        },
    }
}

/// One batch on its way from the reader to the loader.
struct Batch {
    bytes: Vec<u8>,
    rows: u64,
    object: Option<String>,
}

/// Streams `select` from the source into `into` on the destination inside
/// `tx`, batches in flight between them: binary COPY out and in, or, when
/// the spec stages its batches, text COPY (the staged files' format) with
/// every batch written to the stage as it passes.
#[allow(clippy::too_many_arguments)]
async fn stream_rows(
    mut src: PgConnection,
    dst: &mut PgConnection,
    select: &str,
    into: &TableName,
    cols: &[Column],
    estimate: Option<u64>,
    spec: &ImportSpec,
    progress: &mut dyn Progress,
) -> Result<u64> {
    let cols_sql = column_list(cols);
    let stage = spec.stage.clone();
    let format = if stage.is_some() { "text" } else { "binary" };
    let (tx, mut rx) = mpsc::channel::<Option<Batch>>(BATCHES_IN_FLIGHT);
    let copy_out = format!("COPY ({select}) TO STDOUT (FORMAT {format})");
    let manifest_cols: Vec<(String, String)> = cols
        .iter()
        .map(|c| (c.name.clone(), c.sql_type.clone()))
        .collect();
    let (source_name, target_name) = (spec.source_table.clone(), into.quoted());
    let reader = tokio::spawn(async move {
        let mut stream = src
            .copy_out_raw(&copy_out)
            .await
            .map_err(db("reading the source"))?;
        let mut staged = Vec::new();
        let mut batch = Vec::with_capacity(BATCH_BYTES + 64 * 1024);
        let mut messages = 0u64;
        let send = |bytes: Vec<u8>, messages: u64, staged: &mut Vec<crate::stage::Staged>| {
            let stage = stage.clone();
            let tx = tx.clone();
            let n = staged.len() as u64 + 1;
            let text = stage.is_some();
            async move {
                // Text COPY: one line a row (newlines in values are escaped).
                let rows = if text {
                    bytes.iter().filter(|b| **b == b'\n').count() as u64
                } else {
                    messages
                };
                let object = match &stage {
                    Some(s) => Some(
                        s.0.put(crate::stage::batch_name(n), bytes.clone())
                            .await
                            .map_err(ImportError::Stage)?,
                    ),
                    None => None,
                };
                let b = Batch {
                    bytes,
                    rows,
                    object: object.clone(),
                };
                let len = b.bytes.len() as u64;
                let open = tx.send(Some(b)).await.is_ok();
                Ok::<_, ImportError>((
                    open,
                    object.map(|o| crate::stage::Staged {
                        object: o,
                        rows,
                        bytes: len,
                    }),
                ))
            }
        };
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(db("reading the source"))?;
            batch.extend_from_slice(&chunk);
            messages += 1;
            if batch.len() >= BATCH_BYTES {
                let full =
                    std::mem::replace(&mut batch, Vec::with_capacity(BATCH_BYTES + 64 * 1024));
                let (open, s) = send(full, messages, &mut staged).await?;
                staged.extend(s);
                if !open {
                    return Ok(None);
                }
                messages = 0;
            }
        }
        if !batch.is_empty() {
            let (_, s) = send(batch, messages, &mut staged).await?;
            staged.extend(s);
        }
        let manifest = match &stage {
            Some(st) => Some(
                st.0.put(
                    "manifest.json".into(),
                    crate::stage::manifest(&source_name, &target_name, &manifest_cols, &staged),
                )
                .await
                .map_err(ImportError::Stage)?,
            ),
            None => None,
        };
        // The source is read: the loader hears it before it finishes.
        let _ = tx.send(None).await;
        Ok::<_, ImportError>(Some((staged.len() as u64, manifest)))
    });

    let mut copy_in = dst
        .copy_in_raw(&format!(
            "COPY {} ({cols_sql}) FROM STDIN (FORMAT {format})",
            into.quoted()
        ))
        .await
        .map_err(db(format!("loading {}", into.quoted())))?;
    let mut seen = 0u64;
    let mut batches = 0u64;
    let mut last = Instant::now();
    let mut read_all = false;
    while let Some(batch) = rx.recv().await {
        let Some(batch) = batch else {
            read_all = true;
            break;
        };
        let (rows, bytes, object) = (batch.rows, batch.bytes.len() as u64, batch.object);
        let sent = match spec.check_cancel() {
            Ok(()) => copy_in
                .send(batch.bytes)
                .await
                .map_err(db(format!("loading {}", into.quoted()))),
            Err(e) => Err(e),
        };
        if let Err(e) = sent {
            reader.abort();
            let _ = copy_in.abort("the load stopped").await;
            return Err(e);
        }
        batches += 1;
        // Binary: one COPY message a row (the header rides with the first).
        seen += rows;
        progress.stage(crate::StageEvent::Extracted {
            batch: batches,
            rows,
            bytes,
            object,
        });
        if last.elapsed().as_millis() >= 200 {
            progress.rows(seen, estimate);
            last = Instant::now();
        }
    }
    let manifest = match reader.await {
        Ok(Ok(m)) if read_all => m.and_then(|(_, m)| m),
        Ok(Ok(_)) => {
            let _ = copy_in.abort("the source stopped").await;
            return Err(invalid("the source reader stopped before the end"));
        }
        Ok(Err(e)) => {
            let _ = copy_in.abort("the source failed").await;
            return Err(e);
        }
        Err(e) => {
            let _ = copy_in.abort("the reader stopped").await;
            return Err(invalid(format!("the source reader stopped: {e}")));
        }
    };
    progress.stage(crate::StageEvent::ExtractDone {
        rows: seen,
        batches,
        manifest,
    });
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
    fn only_lossless_type_changes_widen() {
        assert!(widens("integer", "bigint"));
        assert!(widens("real", "double precision"));
        assert!(widens("character varying(10)", "text"));
        assert!(widens("numeric(12,2)", "numeric(14,4)"));
        assert!(!widens("numeric(12,2)", "numeric(12,4)"));
        assert!(!widens("bigint", "integer"));
        assert!(!widens("text", "integer"));
    }

    #[test]
    fn literals_double_their_quotes() {
        assert_eq!(quote_literal("it's"), "'it''s'");
    }
}
