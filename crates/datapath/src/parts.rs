//! A full PostgreSQL → PostgreSQL copy in parts: the source table split
//! into ranges of its pages (`ctid`), each read with binary COPY and
//! loaded over a pair of connections of its own, every part reading the
//! one snapshot the load exported.
//!
//! ## Exactly once
//!
//! A destructive load changes the live table only when it swaps the new
//! table in. Loaded in parts, the new table (the target's name with a
//! `__sluice_` suffix, where no reader looks) is made and filled outside
//! the load's transaction — each part commits its own rows into it — and
//! then one transaction claims the ledger row, swaps the table in and
//! records the rows, as a one-stream load does. An attempt that dies
//! midway leaves the live table and the ledger as they were, and a table of
//! parts nobody will swap in: the next load in parts of the same target
//! drops it, under an advisory lock every living load in parts holds.
//!
//! Windows (incremental and merge loads) stay one stream in one
//! transaction: their rows go into the live table, which must see all of a
//! window or none of it.
//!
//! A staged load (a job's query) stages each part's batches under
//! `part-NN/` beside its load, as read: each part's batches, in order, are
//! one binary COPY stream; one manifest lists them all, each with its part.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sqlx::postgres::PgConnection;
use sqlx::Row;

use crate::dest::Dest;
use crate::load::Prepared;
use crate::source::{connect_postgres, Batch, ReadAs, Source};
use crate::stage::{Format, Manifest, StageHandle, Staged, Stager};
use crate::types::{db, literal, Col, TableName};
use crate::{ledger, ImportError, ImportReport, ImportSpec, Mode, Progress, Result, StageEvent};

/// The most parts a load is split into.
pub const MAX_PARTS: usize = 32;
/// Table bytes per part when the degree is chosen: below two of these a
/// table is one stream (the parts' connections and snapshot cost more
/// than they bring).
const BYTES_PER_PART: u64 = 64 << 20;
/// Marks a table of parts (its comment): only such tables are swept.
const MARK: &str = "sluice: a table loaded in parts";

/// How many parts a load of a table of `bytes` in `pages` pages is split
/// into: `asked`, or one per 64 MiB of table, at most one per core; never
/// more parts than pages.
pub fn degree(asked: Option<usize>, bytes: u64, pages: u64, cores: usize) -> usize {
    let n = match asked {
        Some(n) => n,
        None => usize::try_from(bytes / BYTES_PER_PART)
            .unwrap_or(usize::MAX)
            .clamp(1, cores.max(1)),
    };
    n.clamp(1, MAX_PARTS)
        .min(usize::try_from(pages).unwrap_or(usize::MAX).max(1))
}

/// The `ctid` conditions of `n` parts of a table of `pages` pages: equal
/// ranges of pages, the last open (pages added since hold no row the
/// snapshot sees, but nothing is left to that).
pub(crate) fn ranges(pages: u64, n: usize) -> Vec<String> {
    let n = n.max(1) as u64;
    let bound = |i: u64| pages * i / n;
    (0..n)
        .map(|i| {
            let lower = (i > 0).then(|| format!("ctid >= '({},0)'::tid", bound(i)));
            let upper = (i + 1 < n).then(|| format!("ctid < '({},0)'::tid", bound(i + 1)));
            match (lower, upper) {
                (Some(l), Some(u)) => format!("{l} AND {u}"),
                (Some(c), None) | (None, Some(c)) => c,
                (None, None) => "true".to_owned(),
            }
        })
        .collect()
}

/// What [`try_load`] did.
pub(crate) enum Tried {
    /// Loaded in parts: the report.
    Done(ImportReport),
    /// Not a load to split (or one part): load it as one stream.
    OneStream(Box<Prepared>),
}

/// Loads `prepared` in parts when it is a full load between two
/// PostgreSQL databases of a table big enough (or `spec.parallel` asks
/// for it); else hands it back untouched.
pub(crate) async fn try_load(
    spec: &ImportSpec,
    mut prepared: Box<Prepared>,
    dst: &mut Dest,
    progress: &mut dyn Progress,
) -> Result<Tried> {
    let asked = spec.parallel.filter(|n| *n > 1);
    let one_stream = if spec.parallel == Some(1) {
        Some("")
    } else if spec.mode != Mode::Destructive {
        Some("a window loads into the live table, which sees all of it or none, in one stream")
    } else if spec.batch.is_some() {
        Some("a batch of an API source is one stream")
    } else if prepared.read != ReadAs::BinaryCopy {
        Some("only a copy between two PostgreSQL databases is split")
    } else {
        None
    };
    let refused = |why: &str| {
        Err(ImportError::Invalid(format!(
            "cannot load {} in {} parts: {why}",
            spec.source_table,
            asked.unwrap_or(1)
        )))
    };
    match (one_stream, asked) {
        (None, _) => {}
        (Some(why), Some(_)) => return refused(why),
        (Some(_), None) => return Ok(Tried::OneStream(prepared)),
    }
    let Source::Postgres(src) = &mut prepared.src else {
        unreachable!("read as binary COPY")
    };
    let source = TableName::parse(&spec.source_table)?;
    let Some((bytes, pages)) = size(src, &source).await? else {
        return match asked {
            Some(_) => refused("it is not a plain table (a view or a partitioned table has no pages of its own to split)"),
            None => Ok(Tried::OneStream(prepared)),
        };
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let n = degree(spec.parallel, bytes, pages, cores);
    if n < 2 {
        return Ok(Tried::OneStream(prepared));
    }
    let Source::Postgres(src) = &mut prepared.src else {
        unreachable!("read as binary COPY")
    };
    // The snapshot every part reads: held open until the parts end.
    sqlx::raw_sql("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .execute(&mut *src)
        .await
        .map_err(db("beginning the source's snapshot"))?;
    let row = sqlx::query(
        "SELECT pg_export_snapshot() AS snapshot, \
         pg_relation_size(to_regclass($1)) / current_setting('block_size')::bigint AS pages",
    )
    .bind(source.quoted())
    .fetch_one(&mut *src)
    .await
    .map_err(db("exporting the source's snapshot"))?;
    let snapshot: String = row.try_get("snapshot").map_err(db("the snapshot"))?;
    let pages: i64 = row.try_get("pages").map_err(db("the snapshot"))?;
    let conditions = ranges(pages.max(0) as u64, n);

    let lock = format!("sluice parts of {}", prepared.target.quoted());
    sqlx::query("SELECT pg_advisory_lock(hashtextextended($1, 0))")
        .bind(&lock)
        .execute(pg(dst))
        .await
        .map_err(db("locking the target for a load in parts"))?;
    let loaded = in_parts(spec, &prepared, dst, &snapshot, &conditions, progress).await;
    if let Source::Postgres(src) = &mut prepared.src {
        let _ = sqlx::raw_sql("COMMIT").execute(&mut *src).await;
    }
    let committed = match loaded {
        Ok((fresh, rows)) => {
            let committed = commit(spec, *prepared, dst, &fresh, (rows, n), progress).await;
            if !matches!(committed, Ok(ref r) if !r.already_loaded) {
                let _ = dst
                    .raw(&format!("DROP TABLE IF EXISTS {}", fresh.quoted()))
                    .await;
            }
            committed
        }
        Err(e) => Err(e),
    };
    // Held until the table of parts is swapped in or dropped: a load
    // beginning meanwhile would take it for a dead one's.
    let _ = sqlx::query("SELECT pg_advisory_unlock(hashtextextended($1, 0))")
        .bind(&lock)
        .execute(pg(dst))
        .await;
    committed.map(|mut report| {
        report.parts = n;
        Tried::Done(report)
    })
}

/// The PostgreSQL connection of a destination known to be one.
fn pg(dst: &mut Dest) -> &mut PgConnection {
    match dst {
        Dest::Postgres(c) => c,
        Dest::Sqlite(_) => unreachable!("loads in parts are between PostgreSQL databases"),
    }
}

/// The source table's bytes and pages; None: not a plain table (a view,
/// a partitioned table), which is not split.
async fn size(src: &mut PgConnection, t: &TableName) -> Result<Option<(u64, u64)>> {
    let row = sqlx::query(
        "SELECT c.relkind::text AS kind, pg_relation_size(c.oid) AS bytes, \
         current_setting('block_size')::bigint AS block FROM pg_class c \
         WHERE c.oid = to_regclass($1)",
    )
    .bind(t.quoted())
    .fetch_optional(&mut *src)
    .await
    .map_err(db(format!("reading the size of {}", t.quoted())))?;
    let Some(row) = row else { return Ok(None) };
    let what = || db(format!("reading the size of {}", t.quoted()));
    let kind: String = row.try_get("kind").map_err(what())?;
    let bytes: i64 = row.try_get("bytes").map_err(what())?;
    let block: i64 = row.try_get("block").map_err(what())?;
    if !matches!(kind.as_str(), "r" | "m") || block <= 0 {
        return Ok(None);
    }
    Ok(Some((bytes.max(0) as u64, (bytes / block).max(0) as u64)))
}

/// Sweeps the tables of parts dead loads left, makes the new table and
/// fills it in parts; answers it and its rows. Holding the advisory lock.
async fn in_parts(
    spec: &ImportSpec,
    prepared: &Prepared,
    dst: &mut Dest,
    snapshot: &str,
    conditions: &[String],
    progress: &mut dyn Progress,
) -> Result<(TableName, u64)> {
    let target = &prepared.target;
    sweep(pg(dst), target).await?;
    let fresh = target.sibling(format!(
        "{}__sluice_{:08x}",
        target.table,
        rand::random::<u32>()
    ));
    // Made and marked together: an unmarked table would never be swept.
    dst.begin().await?;
    let made = async {
        dst.create(&fresh, &prepared.cols).await?;
        dst.raw(&format!(
            "COMMENT ON TABLE {} IS {}",
            fresh.quoted(),
            literal(&format!("{MARK} into {}", target.quoted()))
        ))
        .await
        .map_err(db(format!("marking {}", fresh.quoted())))
    }
    .await;
    dst.end(made.is_ok()).await?;
    made?;
    progress.stage(StageEvent::Consolidated {
        columns: prepared
            .cols
            .iter()
            .map(|c| format!("{} {}", c.name, c.postgres_type()))
            .collect(),
        changes: vec![format!(
            "{} is replaced by a new table (loaded in {} parts)",
            target.quoted(),
            conditions.len()
        )],
    });

    let done = AtomicU64::new(0);
    let (batches_tx, mut batches_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut batches = 0u64;
    let extracted = |batches: &mut u64, (rows, bytes, object): Read, p: &mut dyn Progress| {
        *batches += 1;
        p.stage(StageEvent::Extracted {
            batch: *batches,
            rows,
            bytes,
            object,
        });
    };
    // The parts borrow the new table's name: they end in this block.
    let counts = {
        let parts = futures_util::future::try_join_all(conditions.iter().enumerate().map(
            |(i, condition)| {
                part(
                    spec,
                    snapshot,
                    format!("{} WHERE {condition}", prepared.select),
                    &fresh,
                    &prepared.cols,
                    &done,
                    batches_tx.clone(),
                    i + 1,
                )
            },
        ));
        drop(batches_tx);
        tokio::pin!(parts);
        loop {
            tokio::select! {
                ended = &mut parts => break ended,
                Some(batch) = batches_rx.recv() => extracted(&mut batches, batch, progress),
                _ = tick.tick() => progress.rows(done.load(Ordering::Relaxed), prepared.estimate),
            }
        }
    };
    while let Ok(batch) = batches_rx.try_recv() {
        extracted(&mut batches, batch, progress);
    }
    let manifest = match counts {
        Ok(counts) => staged_manifest(spec, prepared, counts).await,
        Err(e) => Err(e),
    };
    let (rows, manifest) = match manifest {
        Ok(m) => m,
        Err(e) => {
            let _ = dst
                .raw(&format!("DROP TABLE IF EXISTS {}", fresh.quoted()))
                .await;
            return Err(e);
        }
    };
    progress.stage(StageEvent::ExtractDone {
        rows,
        batches,
        manifest,
    });
    progress.rows(rows, prepared.estimate);
    Ok((fresh, rows))
}

/// A batch a part read: its rows, its bytes, where it was staged.
type Read = (u64, u64, Option<String>);

/// What a part loaded: its rows, and its staged batches when the load is
/// staged.
type PartDone = (u64, Option<(StageHandle, Vec<Staged>)>);

/// The rows of all parts; when the load is staged, writes the one
/// manifest of every part's batches and answers where it is.
async fn staged_manifest(
    spec: &ImportSpec,
    prepared: &Prepared,
    parts: Vec<PartDone>,
) -> Result<(u64, Option<String>)> {
    let rows = parts.iter().map(|(rows, _)| rows).sum();
    let n = parts.len();
    let mut stage = None;
    let mut batches = Vec::new();
    for (_, staged) in parts {
        if let Some((handle, part)) = staged {
            stage = Some(handle);
            batches.extend(part);
        }
    }
    let Some(stage) = stage else {
        return Ok((rows, None));
    };
    let columns: Vec<(String, String)> = prepared
        .cols
        .iter()
        .map(|c| (c.name.clone(), c.postgres_type()))
        .collect();
    let at = Manifest {
        format: Format::BinaryCopy,
        source: &spec.source_table,
        target: &prepared.target.quoted(),
        columns: &columns,
        batches: &batches,
        parts: Some(n),
    }
    .put(&stage)
    .await?;
    Ok((rows, Some(at)))
}

/// Drops the tables of parts that loads into `target` left when they
/// died (the caller holds the lock a living one would hold).
async fn sweep(main: &mut PgConnection, target: &TableName) -> Result<()> {
    let like = |s: &str| {
        s.replace('\\', "\\\\")
            .replace('_', "\\_")
            .replace('%', "\\%")
    };
    let left: Vec<String> = sqlx::query_scalar(
        "SELECT c.oid::regclass::text FROM pg_class c \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = COALESCE($1, current_schema()) AND c.relkind = 'r' \
         AND c.relname LIKE $2 AND obj_description(c.oid, 'pg_class') LIKE $3",
    )
    .bind(&target.schema)
    .bind(format!("{}\\_\\_sluice\\_%", like(&target.table)))
    .bind(format!("{}%", like(MARK)))
    .fetch_all(&mut *main)
    .await
    .map_err(db("looking for tables dead loads left"))?;
    for table in left {
        sqlx::raw_sql(&format!("DROP TABLE IF EXISTS {table}"))
            .execute(&mut *main)
            .await
            .map_err(db(format!("dropping {table}, which a dead load left")))?;
    }
    Ok(())
}

/// One part (`index`, 1-based): its rows read in the load's snapshot and
/// committed into `into` over connections of its own; its batches staged
/// beside the load when the spec stages. Answers its rows and batches.
#[allow(clippy::too_many_arguments)]
async fn part(
    spec: &ImportSpec,
    snapshot: &str,
    select: String,
    into: &TableName,
    cols: &[Col],
    done: &AtomicU64,
    batches: tokio::sync::mpsc::UnboundedSender<Read>,
    index: usize,
) -> Result<PartDone> {
    let (src, dst) = tokio::join!(
        connect_postgres(&spec.source_url, "source"),
        connect_postgres(&spec.dest_url, "destination")
    );
    let (mut src, mut dst) = (src?, Dest::Postgres(dst?));
    sqlx::raw_sql(&format!(
        "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT {}",
        literal(snapshot)
    ))
    .execute(&mut src)
    .await
    .map_err(db("reading the source's snapshot"))?;
    dst.begin().await?;
    let mut reader = Source::Postgres(src).spawn_reader(select, cols.to_vec(), ReadAs::BinaryCopy);
    let mut writer = dst.writer(into, cols, ReadAs::BinaryCopy, false).await?;
    let mut stager = spec
        .stage
        .as_ref()
        .map(|s| Stager::start(s.clone(), Format::BinaryCopy, Some(index)));
    while let Some(batch) = reader.batches.recv().await {
        let rows = batch.rows();
        let written = async {
            spec.check_cancel()?;
            let object = match (&mut stager, &batch) {
                (Some(stager), Batch::Copy { bytes, .. }) => {
                    Some(stager.put(bytes.clone(), rows).await?)
                }
                _ => None,
            };
            Ok::<_, ImportError>((writer.write(batch).await?, object))
        }
        .await;
        match written {
            Ok((bytes, object)) => {
                done.fetch_add(rows, Ordering::Relaxed);
                let _ = batches.send((rows, bytes, object));
            }
            Err(e) => {
                reader.task.abort();
                writer.abort("the load stopped").await;
                return Err(e);
            }
        }
    }
    let read = reader
        .task
        .await
        .map_err(|e| crate::types::invalid(format!("the source reader stopped: {e}")))
        .and_then(|r| r);
    if let Err(e) = read {
        writer.abort("the source failed").await;
        return Err(e);
    }
    let staged = match stager {
        Some(stager) => match stager.finish_part().await {
            Ok(staged) => Some(staged),
            Err(e) => {
                writer.abort("staging failed").await;
                return Err(e);
            }
        },
        None => None,
    };
    let rows = writer.finish().await?;
    dst.end(true).await?;
    Ok((rows, staged))
}

/// The load's one transaction, after the parts: the ledger row, the swap,
/// the count.
async fn commit(
    spec: &ImportSpec,
    prepared: Prepared,
    dst: &mut Dest,
    fresh: &TableName,
    (rows, parts): (u64, usize),
    progress: &mut dyn Progress,
) -> Result<ImportReport> {
    dst.begin().await?;
    let applied = async {
        if !prepared.claim(dst).await? {
            return Ok(false);
        }
        let target = &prepared.target;
        dst.swap(fresh, target).await?;
        dst.raw(&format!("COMMENT ON TABLE {} IS NULL", target.quoted()))
            .await
            .map_err(db(format!("replacing {}", target.quoted())))?;
        ledger::record(dst, &prepared.job, &prepared.window_key, rows).await?;
        progress.stage(StageEvent::Loaded { rows, parts });
        spec.check_cancel()?;
        Ok::<_, ImportError>(true)
    }
    .await;
    let ended = dst.end(matches!(applied, Ok(true))).await;
    let mut report = prepared.report;
    if applied? {
        ended?;
        report.rows = rows;
    } else {
        report.already_loaded = true;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_degree_follows_the_table_and_the_cores_unless_asked() {
        let gib = 1u64 << 30;
        // Small tables: one stream, however many cores.
        assert_eq!(degree(None, 100 << 20, 12_800, 16), 1);
        // One part per 64 MiB, at most one per core.
        assert_eq!(degree(None, 163 << 20, 20_864, 2), 2);
        assert_eq!(degree(None, 200 << 20, 25_600, 16), 3);
        assert_eq!(degree(None, 10 * gib, 1_310_720, 8), 8);
        assert_eq!(degree(None, 10 * gib, 1_310_720, 1), 1);
        assert_eq!(degree(None, 100 * gib, 13_107_200, 64), MAX_PARTS);
        // Asked: as asked, within the bounds.
        assert_eq!(degree(Some(3), 8192, 1, 2), 1);
        assert_eq!(degree(Some(3), gib, 131_072, 2), 3);
        assert_eq!(degree(Some(1000), gib, 131_072, 2), MAX_PARTS);
    }

    #[test]
    fn ranges_cover_every_page_once_and_the_last_is_open() {
        assert_eq!(
            ranges(10, 3),
            vec![
                "ctid < '(3,0)'::tid",
                "ctid >= '(3,0)'::tid AND ctid < '(6,0)'::tid",
                "ctid >= '(6,0)'::tid",
            ]
        );
        assert_eq!(ranges(0, 1), vec!["true"]);
    }
}
