//! sluice's data path: moving a table from a source database into a
//! destination, loaded exactly once.
//!
//! One load pipeline ([`load`]) for every pair: between two PostgreSQL
//! databases the rows stream out with `COPY … TO STDOUT (FORMAT binary)`
//! and in with `COPY … FROM STDIN (FORMAT binary)` — no parsing, no row
//! objects, batches of about 1 MiB in flight — with the source's column
//! types kept exactly (`numeric(12,2)` stays `numeric(12,2)`); other
//! sources are read as values. HTTP API sources ([`api`]) stage their
//! pages as files the same pipeline loads ([`LoadSession`]).
//!
//! ## Exactly once
//!
//! Every load writes a row to the destination's `sluice_load_ledger` in the
//! same transaction that loads the rows, keyed by the job and the window's
//! start. A window starts where the job's last loaded window ended (the
//! watermark), so a retried, duplicated or resumed attempt of the same
//! window collides on the ledger's key and loads nothing; a killed or
//! failed attempt commits nothing and leaves the live table as it was.

pub mod api;
mod dest;
mod encode;
pub mod files;
pub mod inspect;
mod ledger;
mod load;
pub mod parts;
mod source;
pub mod stage;
pub mod types;
pub mod warehouse;
pub mod window;

pub use load::LoadSession;
pub use stage::{Stage, StageHandle};
pub use window::{NullChange, WindowRequest};

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{0}")]
    Invalid(String),
    #[error("cancelled: nothing of this window was loaded")]
    Cancelled,
    #[error("staging a batch: {0}")]
    Stage(#[source] std::io::Error),
    /// The import's own thread could not start or did not end normally
    /// (a bug or the process's limits, not the import's input).
    #[error("the import stopped: {0}")]
    Stopped(#[source] std::io::Error),
    #[error("{what}: {source}")]
    Database {
        what: String,
        #[source]
        source: sqlx::Error,
    },
}

pub type Result<T, E = ImportError> = std::result::Result<T, E>;

/// How a run treats the destination table: the domain's load mode, the
/// one every face and the engine use.
pub use sluice_domain::LoadMode as Mode;

/// One import: where from, where to, how.
#[derive(Debug, Clone)]
pub struct ImportSpec {
    pub source_url: String,
    /// `schema.table` or `table`.
    pub source_table: String,
    pub dest_url: String,
    /// `schema.table` or `table`.
    pub target: String,
    pub mode: Mode,
    /// The column whose growth marks new rows (incremental).
    pub change_column: Option<String>,
    /// The ledger's name for this import (default: `<source> -> <target>`).
    pub job: Option<String>,
    /// Which window of the change column to load (incremental).
    pub window: WindowRequest,
    /// The source columns to load, in the source's order (None: all).
    pub columns: Option<Vec<String>>,
    /// A job's column mapping (the Arize-style importer's `schema`), resolved against the
    /// source's columns as the import reads them (None: every column).
    pub mapping: Option<sluice_domain::Mapping>,
    /// Where extracted batches and their manifest are written (None: the
    /// rows stream straight from source to destination).
    pub stage: Option<StageHandle>,
    /// Set to stop the import: it rolls back and answers [`ImportError::Cancelled`].
    pub cancel: Option<Arc<AtomicBool>>,
    /// Filled with the PostgreSQL destination session's backend pid once
    /// the load connected: a holder that must be sure the load is gone (a
    /// process stopping while a COMMIT runs) ends it with [`end_session`].
    pub session: Option<Arc<AtomicI32>>,
    /// The column whose value identifies a row (merge).
    pub key: Option<String>,
    /// What to do with rows whose change value is NULL.
    pub null_change: NullChange,
    /// Read this long before the watermark again (merge only).
    pub lookback: Option<Duration>,
    /// Let a destructive load replace a table sluice did not make for it.
    pub replace_existing: bool,
    /// A load of a whole staged batch (an API run's table): loaded once
    /// under this ledger key, however often it is tried, with no change
    /// column.
    pub batch: Option<BatchLoad>,
    /// The source's columns as declared (a staged API table's blueprint):
    /// the file is not read for them.
    pub declared: Option<Vec<types::Col>>,
    /// How many parts a full PostgreSQL → PostgreSQL copy is read and
    /// loaded in, over as many pairs of connections (None: chosen from the
    /// table's size and the cores; `Some(1)`: one stream). See [`parts`].
    pub parallel: Option<usize>,
}

/// The ledger's key of a staged batch, and where its source's cursor
/// ended (recorded as the window's end: the next run starts there).
#[derive(Debug, Clone)]
pub struct BatchLoad {
    pub key: String,
    pub end: Option<String>,
}

impl ImportSpec {
    /// A spec with no window request, column selection, staging or cancel.
    pub fn new(source_url: &str, source_table: &str, dest_url: &str, target: &str) -> ImportSpec {
        ImportSpec {
            source_url: source_url.to_owned(),
            source_table: source_table.to_owned(),
            dest_url: dest_url.to_owned(),
            target: target.to_owned(),
            mode: Mode::Destructive,
            change_column: None,
            job: None,
            window: WindowRequest::default(),
            columns: None,
            mapping: None,
            stage: None,
            cancel: None,
            session: None,
            key: None,
            null_change: NullChange::Fail,
            lookback: None,
            replace_existing: false,
            batch: None,
            declared: None,
            parallel: None,
        }
    }

    /// The window's shape, checked: a lookback reads rows again, and
    /// included NULL rows come with every window, so both need a merge.
    pub(crate) fn shape(&self) -> Result<window::Shape> {
        if self.lookback.is_some() && self.mode != Mode::Merge {
            return Err(ImportError::Invalid(
                "a lookback reads rows that were loaded already: it needs --mode merge with a \
                 --key, so that they replace themselves"
                    .into(),
            ));
        }
        if self.null_change == NullChange::Include && self.mode != Mode::Merge {
            return Err(ImportError::Invalid(
                "rows with no change value included come with every window: that needs \
                 --mode merge with a --key, so that they replace themselves"
                    .into(),
            ));
        }
        Ok(window::Shape {
            nulls: self.null_change,
            lookback: self.lookback,
        })
    }

    /// The merge key, checked against the loaded columns' names.
    pub(crate) fn merge_key(&self, loaded: &[&str]) -> Result<Option<String>> {
        if self.mode != Mode::Merge {
            return Ok(None);
        }
        match &self.key {
            Some(k) if loaded.contains(&k.as_str()) => Ok(Some(k.clone())),
            Some(k) => Err(ImportError::Invalid(format!(
                "merge key `{k}` is not a loaded column of {}: it has {}",
                self.source_table,
                loaded.join(", ")
            ))),
            None => Err(ImportError::Invalid(
                "a merge import needs --key, the column that identifies a row".into(),
            )),
        }
    }

    /// Errs when the import was asked to stop.
    pub(crate) fn check_cancel(&self) -> Result<()> {
        match &self.cancel {
            Some(flag) if flag.load(Ordering::Relaxed) => Err(ImportError::Cancelled),
            _ => Ok(()),
        }
    }

    /// The columns to load of `all`, checked: every selected column must
    /// be one of the source's.
    pub(crate) fn select<C: Clone>(&self, all: &[C], name: impl Fn(&C) -> &str) -> Result<Vec<C>> {
        let mapped;
        let wanted = match (&self.columns, &self.mapping) {
            (Some(w), _) => w,
            (None, Some(m)) => {
                let names: Vec<String> = all.iter().map(|c| name(c).to_owned()).collect();
                mapped = m.select(&names).map_err(|problems| {
                    ImportError::Invalid(
                        problems
                            .into_iter()
                            .map(|d| d.message)
                            .collect::<Vec<_>>()
                            .join("; "),
                    )
                })?;
                &mapped
            }
            (None, None) => return Ok(all.to_vec()),
        };
        if let Some(missing) = wanted.iter().find(|w| !all.iter().any(|c| name(c) == *w)) {
            return Err(ImportError::Invalid(format!(
                "column `{missing}` is not a column of {}",
                self.source_table
            )));
        }
        Ok(all
            .iter()
            .filter(|c| wanted.iter().any(|w| w == name(c)))
            .cloned()
            .collect())
    }
}

/// The change column a spec names, checked against the source's columns:
/// it must exist and be able to order windows (`unorderable` answers the
/// column's type when it cannot). An incremental import needs one.
pub(crate) fn change_column<'a, C>(
    spec: &ImportSpec,
    cols: &'a [C],
    name: impl Fn(&C) -> &str,
    unorderable: impl Fn(&C) -> Option<String>,
) -> Result<Option<&'a C>> {
    let Some(wanted) = &spec.change_column else {
        if spec.batch.is_some() {
            return Ok(None);
        }
        return match spec.mode {
            Mode::Incremental | Mode::Merge => Err(ImportError::Invalid(
                "an incremental or merge import needs --change-column (or use --mode destructive)"
                    .into(),
            )),
            Mode::Destructive => Ok(None),
        };
    };
    let c = cols.iter().find(|c| name(c) == wanted).ok_or_else(|| {
        ImportError::Invalid(format!(
            "change column `{wanted}` is not a column of {}: it has {}",
            spec.source_table,
            cols.iter().map(&name).collect::<Vec<_>>().join(", ")
        ))
    })?;
    if let Some(ty) = unorderable(c) {
        return Err(ImportError::Invalid(format!(
            "change column `{wanted}` is {ty}: it must be a timestamp, date or number"
        )));
    }
    Ok(Some(c))
}

/// What an import decides before its transaction, the same way on both
/// load paths: the columns it loads (of `all`, the source's), the change
/// column and merge key, the window's shape, and the destination's
/// bookkeeping (the target inspected and checked, the watermark read).
pub(crate) struct Decided<C> {
    pub cols: Vec<C>,
    pub change: Option<C>,
    pub key: Option<String>,
    pub shape: window::Shape,
    pub before: ledger::Before,
    pub report: ImportReport,
}

pub(crate) async fn decide(
    spec: &ImportSpec,
    all: &[types::Col],
    dst: &mut dest::Dest,
    target: &types::TableName,
    job: &str,
) -> Result<Decided<types::Col>> {
    if all.is_empty() {
        return Err(ImportError::Invalid(format!(
            "source table {} does not exist (or has no columns)",
            spec.source_table
        )));
    }
    fn name(c: &types::Col) -> &str {
        &c.name
    }
    let cols = spec.select(all, name)?;
    let unorderable = |c: &types::Col| (!c.kind.orderable()).then(|| c.postgres_type());
    let change = change_column(spec, &cols, name, unorderable)?.cloned();
    let names: Vec<&str> = cols.iter().map(name).collect();
    let key = spec.merge_key(&names)?;
    let shape = spec.shape()?;
    let windowed = change.is_some() && spec.mode.windowed();
    let before = ledger::before_load(dst, spec, target, job, &names, windowed).await?;
    let report = ImportReport {
        reloaded: before.verdict.reload.clone(),
        ..ImportReport::default()
    };
    Ok(Decided {
        cols,
        change,
        key,
        shape,
        before,
        report,
    })
}

/// The target's rows a window replaces, as a condition on `column` (its
/// values written by `literal`), and whether they are the watermark's rows
/// read again (which are not new rows). A merge replaces the watermark's
/// rows by their key anyway: none then.
pub(crate) fn replaced(
    spec: &ImportSpec,
    replace: Option<window::Replace>,
    column: &str,
    literal: impl Fn(&str) -> String,
) -> Option<(String, bool)> {
    use window::Replace;
    let by_key = |r: &Replace| spec.mode == Mode::Merge && matches!(r, Replace::At(_));
    replace.filter(|r| !by_key(r)).map(|r| match r {
        Replace::Range(a, b) => (
            format!("{column} >= {} AND {column} < {}", literal(&a), literal(&b)),
            false,
        ),
        Replace::At(v) => (format!("{column} = {}", literal(&v)), true),
    })
}

/// The statements that merge `stage` into `target` (both quoted), `cols`
/// (quoted, joined) keyed by `key` (quoted): the target's rows with the
/// stage's keys go, then the stage's rows come in — the last row of a key
/// wins; rows without a key are appended.
pub(crate) fn merge_sql(
    postgres: bool,
    target: &str,
    stage: &str,
    cols: &str,
    key: &str,
) -> Vec<String> {
    let (delete, latest) = if postgres {
        (
            format!("DELETE FROM {target} t USING {stage} s WHERE t.{key} = s.{key}"),
            format!(
                "INSERT INTO {target} ({cols}) SELECT DISTINCT ON ({key}) {cols} FROM {stage} \
                 WHERE {key} IS NOT NULL ORDER BY {key}, ctid DESC"
            ),
        )
    } else {
        (
            format!("DELETE FROM {target} WHERE {key} IN (SELECT {key} FROM {stage})"),
            format!(
                "INSERT INTO {target} ({cols}) SELECT {cols} FROM {stage} WHERE rowid IN \
                 (SELECT max(rowid) FROM {stage} WHERE {key} IS NOT NULL GROUP BY {key})"
            ),
        )
    };
    vec![
        delete,
        latest,
        format!("INSERT INTO {target} ({cols}) SELECT {cols} FROM {stage} WHERE {key} IS NULL"),
    ]
}

impl ImportSpec {
    pub fn job(&self) -> String {
        self.job
            .clone()
            .unwrap_or_else(|| format!("{} -> {}", self.source_table, self.target))
    }
}

/// What a run did.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ImportReport {
    pub rows: u64,
    /// The window loaded: from `window_start` (inclusive; `None`: from the
    /// beginning) up to `window_end` — inclusive for a regular window,
    /// exclusive for one asked for by hand (`end_exclusive`) — as the
    /// source prints them.
    pub window_start: Option<String>,
    pub window_end: Option<String>,
    pub end_exclusive: bool,
    /// Whether the start is excluded (`(start, end]`: the watermark's rows
    /// were loaded and none arrived since).
    pub start_exclusive: bool,
    /// Why the ledger was not trusted and the load started from the
    /// beginning (the target was dropped or emptied by hand).
    pub reloaded: Option<String>,
    /// Source rows with no change value (left out, or loaded with the
    /// window, as the import says).
    pub null_change_rows: u64,
    /// True when another attempt had loaded this window already.
    pub already_loaded: bool,
    /// True when the source held nothing past the watermark.
    pub nothing_new: bool,
    /// The parts the rows were loaded in (0 or 1: one stream).
    pub parts: usize,
    pub elapsed: Duration,
}

impl ImportReport {
    /// The window as a reader should see it: `[start, end]` (a regular
    /// window) or `[start, end)` (one asked for by hand).
    pub fn window_text(&self) -> Option<String> {
        if self.nothing_new {
            return None;
        }
        let end = self.window_end.as_deref()?;
        let close = if self.end_exclusive { ')' } else { ']' };
        let open = if self.start_exclusive { '(' } else { '[' };
        Some(match self.window_start.as_deref() {
            Some(start) => format!("{open}{start}, {end}{close}"),
            None => format!("[first row, {end}{close}"),
        })
    }

    /// Ends a run: tells `progress` the load committed (or that another
    /// attempt had loaded the window), and times it from `started`.
    pub(crate) fn ended(
        mut self,
        started: std::time::Instant,
        progress: &mut dyn Progress,
    ) -> ImportReport {
        progress.stage(StageEvent::Committed {
            rows: self.rows,
            already_loaded: self.already_loaded,
        });
        self.elapsed = started.elapsed();
        self
    }

    /// Records a run's planned window (telling `progress`) and hands it
    /// back. Without a plan (nothing new since the watermark) the report
    /// says so and the run is over: None.
    pub(crate) fn take_window(
        &mut self,
        plan: Option<window::Plan>,
        watermark: Option<window::Watermark>,
        progress: &mut dyn Progress,
    ) -> Option<window::Plan> {
        if let Some(why) = &self.reloaded {
            progress.stage(StageEvent::Notice(why.clone()));
        }
        if let Some(n) = plan.as_ref().map(|p| p.null_rows).filter(|n| *n > 0) {
            progress.stage(StageEvent::Notice(format!(
                "{n} source rows have no change value ({})",
                if plan
                    .as_ref()
                    .is_some_and(|p| p.condition.contains("IS NULL"))
                {
                    "loaded with this window"
                } else {
                    "left out"
                }
            )));
        }
        let Some(plan) = plan else {
            self.nothing_new = true;
            self.window_start = watermark.as_ref().map(|w| w.end.clone());
            self.window_end = watermark.map(|w| w.end);
            return None;
        };
        self.window_start = plan.start.clone();
        self.window_end = plan.end.clone();
        self.end_exclusive = plan.end_exclusive;
        self.start_exclusive = plan.start_exclusive;
        self.null_change_rows = plan.null_rows;
        progress.stage(StageEvent::Window {
            start: self.window_start.clone(),
            end: self.window_end.clone(),
            end_exclusive: self.end_exclusive,
            start_exclusive: self.start_exclusive,
        });
        Some(plan)
    }
}

/// What an import tells as it goes through its stages.
#[derive(Debug, Clone, PartialEq)]
pub enum StageEvent {
    /// The source's schema was read and merged with the destination's:
    /// `changes` are the schema changes the load makes (new columns, wider
    /// types).
    Consolidated {
        columns: Vec<String>,
        changes: Vec<String>,
    },
    /// The window this run loads: `[start, end]`, or `[start, end)` when
    /// `end_exclusive` (a window asked for by hand), `(start, …` when
    /// `start_exclusive`.
    Window {
        start: Option<String>,
        end: Option<String>,
        end_exclusive: bool,
        start_exclusive: bool,
    },
    /// Something the run's reader should know: why it loads from the
    /// start, how many rows had no change value.
    Notice(String),
    /// One batch read from the source (and staged at `object`).
    Extracted {
        batch: u64,
        rows: u64,
        bytes: u64,
        object: Option<String>,
    },
    /// Every batch is read; the manifest is at `manifest`.
    ExtractDone {
        rows: u64,
        batches: u64,
        manifest: Option<String>,
    },
    /// The rows are in the destination's transaction (loaded in `parts`,
    /// 0 for one stream: then the parts committed them into a new table,
    /// which the load's transaction swaps in); it commits next.
    Loaded { rows: u64, parts: usize },
    /// The load committed (or another attempt had loaded the window).
    Committed { rows: u64, already_loaded: bool },
}

/// Progress while rows stream: rows so far and the source's row estimate,
/// and the stages as they pass.
pub trait Progress: Send {
    fn rows(&mut self, done: u64, estimate: Option<u64>);
    fn stage(&mut self, _event: StageEvent) {}
}

impl Progress for () {
    fn rows(&mut self, _: u64, _: Option<u64>) {}
}

/// Runs one import (see [`load`]): sources postgres://, mysql:// or
/// mariadb://, sqlite://, file://; destinations postgres://, sqlite://.
/// Ends the PostgreSQL session `pid` of a load into `dest_url` (see
/// [`ImportSpec::session`]) and waits until it is gone, so its transaction
/// is rolled back — a COMMIT under way included — before the caller hands
/// the load's window to someone else. Answers whether a session ended.
pub async fn end_session(dest_url: &str, pid: i32) -> Result<bool> {
    let mut c = source::connect_postgres(dest_url, "destination").await?;
    let ended: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .fetch_one(&mut c)
        .await
        .map_err(types::db("ending the load's session"))?;
    for _ in 0..100 {
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE pid = $1")
            .bind(pid)
            .fetch_one(&mut c)
            .await
            .map_err(types::db("ending the load's session"))?;
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(ended)
}

pub async fn import(spec: &ImportSpec, progress: &mut dyn Progress) -> Result<ImportReport> {
    on_own_thread(spec, progress).await
}

/// Counts and stage events sent from the load's thread.
struct Forward(
    tokio::sync::watch::Sender<(u64, Option<u64>)>,
    tokio::sync::mpsc::UnboundedSender<StageEvent>,
);

impl Progress for Forward {
    fn rows(&mut self, done: u64, estimate: Option<u64>) {
        let _ = self.0.send((done, estimate));
    }
    fn stage(&mut self, event: StageEvent) {
        let _ = self.1.send(event);
    }
}

/// Runs the load on a thread of its own, with its own runtime: converting
/// values is CPU work that should not hold a worker of the caller's
/// runtime (and rustc cannot prove the load's future Send across its
/// database-generic code, which `block_on` does not need). The source's
/// reader runs on the runtime's one worker, beside the writer.
async fn on_own_thread(spec: &ImportSpec, progress: &mut dyn Progress) -> Result<ImportReport> {
    let spec = spec.clone();
    let (tx, mut rx) = tokio::sync::watch::channel((0u64, None));
    let (events_tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    let work = tokio::task::spawn_blocking(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("sluice-import")
            .enable_all()
            .build()
            .map_err(ImportError::Stopped)?;
        rt.block_on(load::import(&spec, &mut Forward(tx, events_tx)))
    });
    tokio::pin!(work);
    let mut counting = true;
    loop {
        tokio::select! {
            done = &mut work => {
                while let Ok(event) = events.try_recv() {
                    progress.stage(event);
                }
                return done.map_err(|e| ImportError::Stopped(std::io::Error::other(e)))?;
            }
            Some(event) = events.recv() => progress.stage(event),
            changed = rx.changed(), if counting => match changed {
                Ok(()) => {
                    let (done, estimate) = *rx.borrow_and_update();
                    progress.rows(done, estimate);
                }
                Err(_) => counting = false,
            },
        }
    }
}
