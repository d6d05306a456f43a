//! Imports between unlike databases, row by row: sources PostgreSQL,
//! MariaDB/MySQL and SQLite; destinations PostgreSQL (rows sent with text
//! COPY) and SQLite (the embedded warehouse; batched INSERTs). Types follow
//! one documented mapping ([`Kind`]); windows and the load ledger work as in
//! [`crate::postgres`].

use std::time::Instant;

use futures_util::TryStreamExt;
use sqlx::postgres::PgConnection;
use sqlx::sqlite::SqliteConnection;
use sqlx::Row;

use crate::types::{db, invalid, literal as lit, q, TableName, Val};

mod conn;
mod encode;
mod schema;

pub use crate::types::{Col, Kind};
use crate::{ledger, ImportError, ImportReport, ImportSpec, Mode, Progress, Result};
pub(crate) use conn::{open_dest, open_source, Dest, Source};
use conn::{row_values, RowRef, RowsWindow};
use encode::*;
use schema::*;

/// Rows per write to the destination.
const BATCH_ROWS: usize = 2000;

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
