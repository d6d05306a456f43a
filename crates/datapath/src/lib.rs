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

pub mod postgres;
pub mod rows;
pub mod window;

pub use window::WindowRequest;

use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{0}")]
    Invalid(String),
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
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Mode, String> {
        match s {
            "incremental" => Ok(Mode::Incremental),
            "destructive" | "full" => Ok(Mode::Destructive),
            other => Err(format!(
                "mode must be incremental or destructive, got `{other}`"
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
            Mode::Incremental => Err(ImportError::Invalid(
                "an incremental import needs --change-column (or use --mode destructive)".into(),
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
#[derive(Debug, Clone, PartialEq)]
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

/// Progress while rows stream: rows so far and the source's row estimate.
pub trait Progress: Send {
    fn rows(&mut self, done: u64, estimate: Option<u64>);
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

/// Counts sent from the row path's thread.
struct Forward(tokio::sync::watch::Sender<(u64, Option<u64>)>);

impl Progress for Forward {
    fn rows(&mut self, done: u64, estimate: Option<u64>) {
        let _ = self.0.send((done, estimate));
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
    let work = tokio::task::spawn_blocking(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ImportError::Invalid(format!("cannot start the import: {e}")))?;
        rt.block_on(rows::import(&spec, &mut Forward(tx)))
    });
    tokio::pin!(work);
    let mut counting = true;
    loop {
        tokio::select! {
            done = &mut work => {
                return done.map_err(|e| ImportError::Invalid(format!("the import stopped: {e}")))?;
            }
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
