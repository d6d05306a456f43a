//! sluice's data path: moving a table from a source database into a
//! destination, loaded exactly once.
//!
//! PostgreSQL → PostgreSQL today ([`postgres`]): the source table's rows
//! stream out with `COPY … TO STDOUT (FORMAT binary)` and into the
//! destination with `COPY … FROM STDIN (FORMAT binary)` — no parsing, no row
//! objects, batches of about 1 MiB in flight — while the destination table
//! is made with the source's column types exactly (`numeric(12,2)` stays
//! `numeric(12,2)`).
//!
//! ## Exactly once
//!
//! Every load writes a row to the destination's `sluice_load_ledger` in the
//! same transaction that loads the rows, keyed by the job and the window's
//! start. A window starts where the job's last loaded window ended (the
//! watermark), so a retried, duplicated or resumed attempt of the same
//! window collides on the ledger's key and loads nothing; a killed or
//! failed attempt commits nothing and leaves the live table as it was.

pub mod files;
pub mod inspect;
pub mod postgres;
pub mod rows;
pub mod stage;
pub mod window;

pub use stage::{Stage, StageHandle};
pub use window::WindowRequest;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{0}")]
    Invalid(String),
    #[error("cancelled: nothing of this window was loaded")]
    Cancelled,
    #[error("staging a batch: {0}")]
    Stage(String),
    #[error("{what}: {source}")]
    Database {
        what: String,
        #[source]
        source: sqlx::Error,
    },
}

pub type Result<T, E = ImportError> = std::result::Result<T, E>;

/// How a run treats the destination table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Append the rows whose change column passed the watermark.
    Incremental,
    /// Load the whole table into a new table and swap it in.
    Destructive,
    /// Like incremental, but each row replaces the target's row with the
    /// same key (`ImportSpec::key`): the window lands in a stage table,
    /// then the target's rows with those keys are deleted and the stage's
    /// rows inserted (the last of a key wins), in the load's transaction.
    Merge,
}

impl Mode {
    /// Whether runs of this mode load windows of the change column.
    pub fn windowed(self) -> bool {
        self != Mode::Destructive
    }
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Mode, String> {
        match s {
            "incremental" => Ok(Mode::Incremental),
            "destructive" | "full" => Ok(Mode::Destructive),
            "merge" => Ok(Mode::Merge),
            other => Err(format!(
                "mode must be incremental, merge or destructive, got `{other}`"
            )),
        }
    }
}

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
    /// A job's column mapping (seed 000's `schema`), resolved against the
    /// source's columns as the import reads them (None: every column).
    pub mapping: Option<sluice_domain::Mapping>,
    /// Where extracted batches and their manifest are written (None: the
    /// rows stream straight from source to destination).
    pub stage: Option<StageHandle>,
    /// Set to stop the import: it rolls back and answers [`ImportError::Cancelled`].
    pub cancel: Option<Arc<AtomicBool>>,
    /// The column whose value identifies a row (merge).
    pub key: Option<String>,
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
            key: None,
        }
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

/// The watermark: where the job's last regular window ended. Windows asked
/// for by hand (`explicit:`) and full loads do not move it.
pub(crate) const WATERMARK: &str = "SELECT window_end FROM sluice_load_ledger WHERE job = $1 \
     AND window_end IS NOT NULL AND window_start NOT LIKE 'explicit:%' \
     ORDER BY seq DESC LIMIT 1";

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
    /// The window loaded: after `window_start` (exclusive; `None`: from the
    /// beginning) up to `window_end` (inclusive), as the source prints them.
    pub window_start: Option<String>,
    pub window_end: Option<String>,
    /// True when another attempt had loaded this window already.
    pub already_loaded: bool,
    pub elapsed: Duration,
}

impl ImportReport {
    /// Records a run's planned window (telling `progress`) and hands it
    /// back. Without a plan (nothing new since the watermark) the report
    /// says so and the run is over: None.
    pub(crate) fn take_window(
        &mut self,
        plan: Option<window::Plan>,
        watermark: Option<String>,
        progress: &mut dyn Progress,
    ) -> Option<window::Plan> {
        let Some(plan) = plan else {
            self.window_start = watermark.clone();
            self.window_end = watermark;
            return None;
        };
        self.window_start = plan.start.clone();
        self.window_end = plan.end.clone();
        progress.stage(StageEvent::Window {
            start: self.window_start.clone(),
            end: self.window_end.clone(),
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
    /// The window this run loads.
    Window {
        start: Option<String>,
        end: Option<String>,
    },
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
    /// The rows are in the destination's transaction; it commits next.
    Loaded { rows: u64 },
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

/// Runs one import: PostgreSQL → PostgreSQL over binary COPY; any other
/// pair (sources postgres://, mysql:// or mariadb://, sqlite://;
/// destinations postgres://, sqlite://) row by row.
pub async fn import(spec: &ImportSpec, progress: &mut dyn Progress) -> Result<ImportReport> {
    let pg = |u: &str| u.starts_with("postgres://") || u.starts_with("postgresql://");
    if pg(&spec.source_url) && pg(&spec.dest_url) {
        postgres::import(spec, progress).await
    } else {
        rows_on_own_thread(spec, progress).await
    }
}

/// Counts and stage events sent from the row path's thread.
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

/// Runs the row path on a thread of its own, with its own single-threaded
/// runtime: it converts every value, so it is CPU work that should not hold
/// a worker of the caller's runtime (and rustc cannot prove its future Send
/// across its database-generic code, which `block_on` does not need).
async fn rows_on_own_thread(
    spec: &ImportSpec,
    progress: &mut dyn Progress,
) -> Result<ImportReport> {
    let spec = spec.clone();
    let (tx, mut rx) = tokio::sync::watch::channel((0u64, None));
    let (events_tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    let work = tokio::task::spawn_blocking(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ImportError::Invalid(format!("cannot start the import: {e}")))?;
        rt.block_on(rows::import(&spec, &mut Forward(tx, events_tx)))
    });
    tokio::pin!(work);
    let mut counting = true;
    loop {
        tokio::select! {
            done = &mut work => {
                while let Ok(event) = events.try_recv() {
                    progress.stage(event);
                }
                return done.map_err(|e| ImportError::Invalid(format!("the import stopped: {e}")))?;
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
