//! The one load every import runs, whatever its source and destination:
//!
//! 1. read the source's columns and decide what to load ([`crate::decide`]:
//!    columns, change column, merge key, the destination's bookkeeping);
//! 2. plan the window past the watermark;
//! 3. in one destination transaction: claim the window in the ledger,
//!    bring the target to the source's shape (or make the new table a
//!    destructive load swaps in, or the stage a merge merges from), clear
//!    the rows a window run again replaces, stream the rows from the
//!    source's reader to the destination's writer, merge or swap, record
//!    the load — and commit.
//!
//! What differs between pairs is only the reader ([`crate::source`]: binary
//! COPY between two PostgreSQL databases, values otherwise) and the writer
//! ([`crate::dest`]: COPY into PostgreSQL, INSERTs into SQLite).

use std::time::Instant;

use crate::dest::{Dest, Writer};
use crate::source::{Batch, ReadAs, Reader, Source};
use crate::types::{ident, invalid, Col, TableName};
use crate::{ledger, ImportError, ImportReport, ImportSpec, Mode, Progress, Result, StageEvent};

pub(crate) async fn import(spec: &ImportSpec, progress: &mut dyn Progress) -> Result<ImportReport> {
    let started = Instant::now();
    let (src, dst) = tokio::join!(open_source(spec), Dest::open(&spec.dest_url));
    let (src, mut dst) = (src?, dst?);
    let prepared = match prepare(spec, src, &mut dst, progress).await? {
        Ok(p) => p,
        Err(mut report) => {
            report.elapsed = started.elapsed();
            return Ok(report);
        }
    };
    if let (Some(session), Dest::Postgres(c)) = (&spec.session, &mut dst) {
        let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&mut *c)
            .await
            .map_err(crate::types::db("reading the destination session"))?;
        session.store(pid, std::sync::atomic::Ordering::Relaxed);
    }
    // A big full copy between PostgreSQL databases goes in parts.
    let prepared =
        match crate::parts::try_load(spec, Box::new(prepared), &mut dst, progress).await? {
            crate::parts::Tried::Done(report) => return Ok(report.ended(started, progress)),
            crate::parts::Tried::OneStream(p) => *p,
        };
    // One destination transaction: the ledger row, the rows, the swap.
    dst.begin().await?;
    let outcome = prepared.apply(spec, &mut dst, progress).await;
    let ended = dst.end(matches!(outcome, Ok((_, Some(_))))).await;
    let (mut report, rows) = outcome?;
    match rows {
        Some(rows) => {
            ended?;
            report.rows = rows;
        }
        None => report.already_loaded = true,
    }
    Ok(report.ended(started, progress))
}

/// Several loads into one destination in one transaction — an API run's
/// tables, which go live together: each is the load [`import`] makes
/// (ledger row, consolidation, rows, merge or swap), and nothing of any is
/// seen before [`LoadSession::commit`]. The session lives on a thread of
/// its own (as every import does), driven through this handle.
pub struct LoadSession {
    orders: std::sync::mpsc::Sender<Order>,
    thread: Option<std::thread::JoinHandle<()>>,
}

enum Order {
    Schema(String, tokio::sync::oneshot::Sender<Result<()>>),
    Load(
        Box<ImportSpec>,
        tokio::sync::oneshot::Sender<(Result<ImportReport>, Vec<StageEvent>)>,
    ),
    End(bool, tokio::sync::oneshot::Sender<Result<()>>),
}

/// Collects a load's stage events for the handle.
struct Events(Vec<StageEvent>);

impl Progress for Events {
    fn rows(&mut self, _: u64, _: Option<u64>) {}
    fn stage(&mut self, event: StageEvent) {
        self.0.push(event);
    }
}

impl LoadSession {
    /// Opens `dest_url` and begins the transaction.
    pub async fn open(dest_url: &str) -> Result<LoadSession> {
        let url = dest_url.to_owned();
        let (orders, inbox) = std::sync::mpsc::channel::<Order>();
        let (ready_tx, ready) = tokio::sync::oneshot::channel::<Result<()>>();
        let thread = std::thread::Builder::new()
            .name("sluice-load".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(ImportError::Stopped(e)));
                        return;
                    }
                };
                rt.block_on(async move {
                    let opened = async {
                        let mut dst = Dest::open(&url).await?;
                        // The bookkeeping is made in a transaction of its
                        // own, before the session's.
                        ledger::ensure(&mut dst).await?;
                        dst.begin().await?;
                        Ok::<_, ImportError>(dst)
                    }
                    .await;
                    let mut dst = match opened {
                        Ok(d) => {
                            let _ = ready_tx.send(Ok(()));
                            d
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    // Orders until End (or the handle is dropped: roll back).
                    while let Ok(order) = inbox.recv() {
                        match order {
                            Order::Schema(schema, reply) => {
                                let done = if dst.postgres() {
                                    dst.raw(&format!(
                                        "CREATE SCHEMA IF NOT EXISTS {}",
                                        ident(&schema)
                                    ))
                                    .await
                                    .map_err(crate::types::db(format!("making schema {schema}")))
                                } else {
                                    Ok(())
                                };
                                let _ = reply.send(done);
                            }
                            Order::Load(spec, reply) => {
                                let mut events = Events(Vec::new());
                                let report = load_in(&spec, &mut dst, &mut events).await;
                                let _ = reply.send((report, events.0));
                            }
                            Order::End(commit, reply) => {
                                let _ = reply.send(dst.end(commit).await);
                                return;
                            }
                        }
                    }
                    let _ = dst.end(false).await;
                });
            })
            .map_err(ImportError::Stopped)?;
        let session = LoadSession {
            orders,
            thread: Some(thread),
        };
        ready
            .await
            .map_err(|_| invalid("the load thread stopped"))??;
        Ok(session)
    }

    /// Makes `schema` when it is missing (PostgreSQL; SQLite has none).
    pub async fn ensure_schema(&mut self, schema: &str) -> Result<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.send(Order::Schema(schema.to_owned(), tx))?;
        rx.await.map_err(|_| invalid("the load thread stopped"))?
    }

    /// One load in the session's transaction; its stage events go to
    /// `progress` once it ended.
    pub async fn load(
        &mut self,
        spec: &ImportSpec,
        progress: &mut dyn Progress,
    ) -> Result<ImportReport> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.send(Order::Load(Box::new(spec.clone()), tx))?;
        let (report, events) = rx.await.map_err(|_| invalid("the load thread stopped"))?;
        for e in events {
            progress.stage(e);
        }
        report
    }

    /// Makes every load of the session live.
    pub async fn commit(mut self) -> Result<()> {
        self.end(true).await
    }

    /// Undoes every load of the session.
    pub async fn rollback(mut self) {
        let _ = self.end(false).await;
    }

    async fn end(&mut self, commit: bool) -> Result<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.send(Order::End(commit, tx))?;
        let done = rx.await.map_err(|_| invalid("the load thread stopped"))?;
        if let Some(t) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
        done
    }

    fn send(&self, order: Order) -> Result<()> {
        self.orders
            .send(order)
            .map_err(|_| invalid("the load thread stopped"))
    }
}

/// One load in `dst`'s open transaction.
async fn load_in(
    spec: &ImportSpec,
    dst: &mut Dest,
    progress: &mut dyn Progress,
) -> Result<ImportReport> {
    let started = Instant::now();
    let src = open_source(spec).await?;
    let prepared = match prepare(spec, src, dst, progress).await? {
        Ok(p) => p,
        Err(mut report) => {
            report.elapsed = started.elapsed();
            return Ok(report);
        }
    };
    let (mut report, rows) = prepared.apply(spec, dst, progress).await?;
    match rows {
        Some(rows) => report.rows = rows,
        None => report.already_loaded = true,
    }
    Ok(report.ended(started, progress))
}

/// The source a spec names: a file whose columns the spec declares is not
/// read for them.
async fn open_source(spec: &ImportSpec) -> Result<Source> {
    match &spec.declared {
        Some(cols) => Ok(Source::File(crate::files::FileSource::declared(
            &spec.source_url,
            &spec.source_table,
            cols.clone(),
        )?)),
        None => Source::open(&spec.source_url, &spec.source_table).await,
    }
}

/// What is decided before the transaction.
pub(crate) struct Prepared {
    pub(crate) src: Source,
    pub(crate) target: TableName,
    pub(crate) job: String,
    pub(crate) cols: Vec<Col>,
    pub(crate) key: Option<String>,
    pub(crate) owned: String,
    pub(crate) verdict: ledger::Verdict,
    pub(crate) select: String,
    pub(crate) window_key: String,
    pub(crate) boundary_rows: Option<i64>,
    pub(crate) replace: Option<(String, bool)>,
    pub(crate) read: ReadAs,
    pub(crate) estimate: Option<u64>,
    pub(crate) report: ImportReport,
}

/// Reads the source's columns, decides, plans the window; Err(report):
/// nothing to load.
async fn prepare(
    spec: &ImportSpec,
    mut src: Source,
    dst: &mut Dest,
    progress: &mut dyn Progress,
) -> Result<std::result::Result<Prepared, ImportReport>> {
    let source = TableName::parse(&spec.source_table)?;
    let target = TableName::parse(&spec.target)?;
    let job = spec.job();
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
    } = crate::decide(spec, &all, dst, &target, &job).await?;

    // Between two PostgreSQL databases the rows pass as binary COPY data,
    // never parsed — staged batches too, as they are.
    let read = match (&src, &*dst) {
        (Source::Postgres(_), Dest::Postgres(_)) => ReadAs::BinaryCopy,
        _ => ReadAs::Values,
    };
    let exprs = cols
        .iter()
        .map(|c| src.select_expr(c, read))
        .collect::<Vec<_>>()
        .join(", ");
    let mut select = format!("SELECT {exprs} FROM {}", src.table(&source));
    let mut replace = None;
    // A staged batch loads under its own key (once, however often it is
    // tried); any other full load under a fresh one.
    let mut window_key = match &spec.batch {
        Some(b) => format!("batch:{}", b.key),
        None => format!("full:{:016x}", rand::random::<u64>()),
    };
    if let Some(b) = &spec.batch {
        report.window_end = b.end.clone();
    }
    let mut boundary_rows = None;
    if let (Some(c), true) = (&change, spec.mode.windowed()) {
        let planned = src
            .plan(&source, c, watermark.clone(), &spec.window, shape)
            .await?;
        let Some(plan) = report.take_window(planned, watermark, progress) else {
            return Ok(Err(report));
        };
        select = format!("{select} WHERE {}", plan.condition);
        window_key = plan.ledger_key;
        boundary_rows = plan.boundary_rows;
        replace = crate::replaced(spec, plan.replace, &ident(&c.name), |v| dst.literal(c, v));
    }
    let estimate = src.estimate(&source).await;
    Ok(Ok(Prepared {
        src,
        target,
        job,
        cols,
        key,
        owned: owned.name,
        verdict,
        select,
        window_key,
        boundary_rows,
        replace,
        read,
        estimate,
        report,
    }))
}

impl Prepared {
    /// Claims the window's ledger row in the destination's open
    /// transaction (see [`ledger::claim`]); false: another attempt loaded
    /// it.
    pub(crate) async fn claim(&self, dst: &mut Dest) -> Result<bool> {
        ledger::claim(
            dst,
            &self.job,
            &self.owned,
            &self.verdict,
            &self.window_key,
            self.report.window_end.as_deref(),
            self.boundary_rows,
        )
        .await
    }

    /// In the destination's open transaction: claims the window, loads,
    /// records. None: another attempt loaded it.
    async fn apply(
        self,
        spec: &ImportSpec,
        dst: &mut Dest,
        progress: &mut dyn Progress,
    ) -> Result<(ImportReport, Option<u64>)> {
        let claimed = self.claim(dst).await?;
        let Prepared {
            src,
            target,
            job,
            cols,
            key,
            verdict,
            select,
            window_key,
            replace,
            read,
            estimate,
            report,
            ..
        } = self;
        let load = Load {
            spec,
            target: &target,
            cols: &cols,
            key: key.as_deref(),
            replace,
            read,
            from_mysql: src.mysql(),
            source_changes: src.changes(),
            estimate,
        };
        if !claimed {
            return Ok((report, None));
        }
        let rows = load
            .rows(src, dst, &select, !verdict.foreign, progress)
            .await?;
        ledger::record(dst, &job, &window_key, rows).await?;
        progress.stage(StageEvent::Loaded { rows, parts: 0 });
        spec.check_cancel()?;
        Ok((report, Some(rows)))
    }
}

/// What the load inside the transaction needs to know.
struct Load<'a> {
    spec: &'a ImportSpec,
    target: &'a TableName,
    cols: &'a [Col],
    key: Option<&'a str>,
    /// The rows a window run again replaces, and whether they are the
    /// watermark's rows read again.
    replace: Option<(String, bool)>,
    read: ReadAs,
    from_mysql: bool,
    source_changes: Vec<String>,
    estimate: Option<u64>,
}

impl Load<'_> {
    /// Brings the target to shape, loads the rows, merges or swaps; answers
    /// the new rows.
    async fn rows(
        &self,
        src: Source,
        dst: &mut Dest,
        select: &str,
        may_change: bool,
        progress: &mut dyn Progress,
    ) -> Result<u64> {
        let (spec, target, cols) = (self.spec, self.target, self.cols);
        let (into, mut changes) = match spec.mode {
            Mode::Incremental => (
                target.clone(),
                dst.consolidate(target, cols, may_change).await?,
            ),
            Mode::Merge => {
                let changes = dst.consolidate(target, cols, may_change).await?;
                let stage = TableName {
                    schema: None,
                    table: format!("sluice_stage_{:08x}", rand::random::<u32>()),
                };
                dst.stage_table(&stage, target).await?;
                (stage, changes)
            }
            Mode::Destructive => {
                let fresh = target.sibling(format!(
                    "{}__sluice_{:08x}",
                    target.table,
                    rand::random::<u32>()
                ));
                dst.create(&fresh, cols).await?;
                let replaced = format!("{} is replaced by a new table", target.quoted());
                (fresh, vec![replaced])
            }
        };
        changes.extend(self.source_changes.iter().cloned());
        progress.stage(StageEvent::Consolidated {
            columns: cols
                .iter()
                .map(|c| format!("{} {}", c.name, dst.column_type(c)))
                .collect(),
            changes,
        });
        // Rows at the watermark loaded before and read again: not new rows.
        let mut reread = 0;
        if let Some((condition, boundary)) = &self.replace {
            let gone = dst.delete(target, condition).await?;
            if *boundary {
                reread = gone;
            }
        }
        let reader = src.spawn_reader(select.to_owned(), cols.to_vec(), self.read);
        let writer = dst.writer(&into, cols, self.read, self.from_mysql).await?;
        let rows = self
            .stream(reader, writer, &into, progress)
            .await?
            .saturating_sub(reread);
        spec.check_cancel()?;
        if let Some(key) = self.key {
            dst.merge(target, &into, cols, key).await?;
        }
        if spec.mode == Mode::Destructive {
            dst.swap(&into, target).await?;
        }
        Ok(rows)
    }

    /// Streams the reader's batches into the writer; when the spec stages
    /// them, each batch is also written to the stage beside the load (a
    /// task of its own, a few batches behind at most), as read: binary
    /// COPY data between PostgreSQL databases, else text COPY. Answers the
    /// rows written.
    async fn stream(
        &self,
        mut reader: Reader,
        mut writer: Writer<'_>,
        into: &TableName,
        progress: &mut dyn Progress,
    ) -> Result<u64> {
        let spec = self.spec;
        let format = crate::stage::Format::of(self.read);
        let mut stager = spec
            .stage
            .as_ref()
            .map(|s| crate::stage::Stager::start(s.clone(), format, None));
        let (mut seen, mut batches) = (0u64, 0u64);
        let mut last = Instant::now();
        while let Some(batch) = reader.batches.recv().await {
            let batch = writer.shape(batch);
            let rows = batch.rows();
            let written = async {
                spec.check_cancel()?;
                let staged = match &mut stager {
                    Some(stager) => {
                        let bytes = match &batch {
                            Batch::Copy { bytes, .. } => bytes.clone(),
                            Batch::Rows(r) => {
                                crate::encode::tsv(r, self.cols, self.from_mysql).into()
                            }
                        };
                        let size = bytes.len() as u64;
                        Some((stager.put(bytes, rows).await?, size))
                    }
                    None => None,
                };
                let sent = writer.write(batch).await?;
                Ok::<_, ImportError>(match staged {
                    Some((name, size)) => (Some(name), size),
                    None => (None, sent),
                })
            }
            .await;
            let (object, bytes) = match written {
                Ok(w) => w,
                Err(e) => {
                    reader.task.abort();
                    writer.abort("the load stopped").await;
                    return Err(e);
                }
            };
            batches += 1;
            seen += rows;
            progress.stage(StageEvent::Extracted {
                batch: batches,
                rows,
                bytes,
                object,
            });
            if last.elapsed().as_millis() >= 200 {
                progress.rows(seen, self.estimate);
                last = Instant::now();
            }
        }
        // The reader's channel closed: it read everything, or failed.
        let read = reader
            .task
            .await
            .map_err(|e| invalid(format!("the source reader stopped: {e}")))
            .and_then(|r| r);
        if let Err(e) = read {
            writer.abort("the source failed").await;
            return Err(e);
        }
        let manifest = match stager {
            Some(stager) => {
                let columns: Vec<(String, String)> = self
                    .cols
                    .iter()
                    .map(|c| (c.name.clone(), c.postgres_type()))
                    .collect();
                match stager
                    .finish(&spec.source_table, &into.quoted(), &columns)
                    .await
                {
                    Ok(manifest) => Some(manifest),
                    Err(e) => {
                        writer.abort("staging failed").await;
                        return Err(e);
                    }
                }
            }
            None => None,
        };
        progress.stage(StageEvent::ExtractDone {
            rows: seen,
            batches,
            manifest,
        });
        let rows = writer.finish().await?;
        progress.rows(rows, self.estimate);
        Ok(rows)
    }
}
