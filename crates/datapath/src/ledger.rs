//! The destination's bookkeeping, written once for both load paths: the
//! load ledger (which windows a job loaded, in the load's transaction) and
//! the table owners (which job's imports made a destination table).
//!
//! Before a load the [`Target`] is inspected and checked against the
//! ledger ([`Target::check`]):
//!
//! - a table that another job's imports made is never written;
//! - a table sluice did not make (no owner, no ledger row of this job) is
//!   loaded into only when its columns are exactly the import's, and is
//!   replaced by a destructive load only when the import says so
//!   (`replace_existing`);
//! - a table the ledger says was loaded but that is now missing, or empty
//!   though rows were loaded, is not trusted to the ledger: the job's
//!   ledger rows are cleared in the load's transaction and the load starts
//!   from the beginning, saying why.

use futures_util::future::BoxFuture;
use sqlx::Row;

use crate::dest::Dest;
use crate::types::{db, TableName};
use crate::window::Watermark;
use crate::{ImportError, ImportSpec, Mode, Result};

const POSTGRES_DDL: &str = "CREATE TABLE IF NOT EXISTS sluice_load_ledger (
    seq           BIGSERIAL,
    job           TEXT NOT NULL,
    window_start  TEXT NOT NULL,
    window_end    TEXT,
    rows          BIGINT NOT NULL,
    loaded_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    boundary_rows BIGINT,
    PRIMARY KEY (job, window_start));
CREATE TABLE IF NOT EXISTS sluice_table_owners (
    target      TEXT PRIMARY KEY,
    job         TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now())";

const SQLITE_DDL: &str = "CREATE TABLE IF NOT EXISTS sluice_load_ledger (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, job TEXT NOT NULL, window_start TEXT NOT NULL,
    window_end TEXT, rows INTEGER NOT NULL,
    loaded_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    boundary_rows INTEGER,
    UNIQUE (job, window_start));
CREATE TABLE IF NOT EXISTS sluice_table_owners (
    target TEXT PRIMARY KEY, job TEXT NOT NULL,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')))";

/// The watermark: where the job's last regular window ended. Windows asked
/// for by hand (`explicit:`) and full loads do not move it.
const WATERMARK: &str = "SELECT window_end, boundary_rows FROM sluice_load_ledger WHERE job = $1 \
     AND window_end IS NOT NULL AND window_start NOT LIKE 'explicit:%' \
     ORDER BY seq DESC LIMIT 1";

/// A value bound to a bookkeeping statement.
pub(crate) enum Bind<'a> {
    Text(Option<&'a str>),
    Int(Option<i64>),
}

macro_rules! bound {
    ($sql:expr, $binds:expr) => {{
        let mut q = sqlx::query($sql);
        for b in $binds {
            q = match b {
                Bind::Text(t) => q.bind(t.map(str::to_owned)),
                Bind::Int(i) => q.bind(*i),
            };
        }
        q
    }};
}

impl Dest {
    // Boxed as Send: the PostgreSQL path's future must be Send, and rustc
    // cannot prove it through sqlx's generic executors in an async fn.
    fn exec<'a>(
        &'a mut self,
        sql: &'a str,
        binds: &'a [Bind<'a>],
    ) -> BoxFuture<'a, Result<u64, sqlx::Error>> {
        match self {
            Dest::Postgres(c) => Box::pin(async move {
                bound!(sql, binds)
                    .execute(&mut *c)
                    .await
                    .map(|r| r.rows_affected())
            }),
            Dest::Sqlite(c) => Box::pin(async move {
                bound!(sql, binds)
                    .execute(&mut *c)
                    .await
                    .map(|r| r.rows_affected())
            }),
        }
    }

    /// The first row of `sql` as texts (SQL NULL: None), if any.
    fn row<'a>(
        &'a mut self,
        sql: &'a str,
        binds: &'a [Bind<'a>],
    ) -> BoxFuture<'a, Result<Option<Vec<Option<String>>>>> {
        fn texts<R: Row>(r: &R) -> Result<Vec<Option<String>>>
        where
            for<'r> Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
            usize: sqlx::ColumnIndex<R>,
        {
            (0..r.len())
                .map(|i| r.try_get::<Option<String>, _>(i))
                .collect::<Result<Vec<_>, _>>()
                .map_err(db("reading the destination's bookkeeping"))
        }
        let what = db("reading the destination's bookkeeping");
        match self {
            Dest::Postgres(c) => Box::pin(async move {
                let row = bound!(sql, binds)
                    .fetch_optional(&mut *c)
                    .await
                    .map_err(what)?;
                row.as_ref().map(texts).transpose()
            }),
            Dest::Sqlite(c) => Box::pin(async move {
                let row = bound!(sql, binds)
                    .fetch_optional(&mut *c)
                    .await
                    .map_err(what)?;
                row.as_ref().map(texts).transpose()
            }),
        }
    }
}

/// Makes the ledger and the owners' table (and brings an older ledger up
/// to date). Two first loads may race to create them; the loser finds them
/// made.
pub(crate) fn ensure<'a>(conn: &'a mut Dest) -> BoxFuture<'a, Result<()>> {
    Box::pin(async move {
        // Made already (every load but the first): one look, no DDL.
        let made = match conn {
            Dest::Postgres(_) => {
                "SELECT 'made' WHERE to_regclass('sluice_table_owners') IS NOT NULL AND EXISTS \
                 (SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass('sluice_load_ledger') \
                 AND attname = 'boundary_rows' AND NOT attisdropped)"
            }
            Dest::Sqlite(_) => {
                "SELECT 'made' WHERE EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' \
                 AND name = 'sluice_table_owners') AND EXISTS (SELECT 1 FROM \
                 pragma_table_info('sluice_load_ledger') WHERE name = 'boundary_rows')"
            }
        };
        if conn.row(made, &[]).await?.is_some() {
            return Ok(());
        }
        let ddl = match conn {
            Dest::Postgres(_) => POSTGRES_DDL,
            Dest::Sqlite(_) => SQLITE_DDL,
        };
        // One maker at a time: concurrent first loads would collide in
        // PostgreSQL's catalog (SQLite's writers queue on its lock anyway).
        let (begin, lock) = match conn {
            Dest::Postgres(_) => ("BEGIN", "SELECT pg_advisory_xact_lock(7330115912)"),
            Dest::Sqlite(_) => ("BEGIN IMMEDIATE", "SELECT 1"),
        };
        let made = async {
            conn.exec(begin, &[]).await?;
            conn.exec(lock, &[]).await?;
            for stmt in ddl.split(';') {
                conn.exec(stmt, &[]).await?;
            }
            conn.exec("COMMIT", &[]).await
        }
        .await;
        if let Err(e) = made {
            let _ = conn.exec("ROLLBACK", &[]).await;
            return Err(db("creating the load ledger")(e));
        }
        // A ledger from before sluice counted boundary rows. (Looked up
        // first: an ALTER would wait on every load in flight.)
        let (has_column, add_column) = match conn {
            Dest::Postgres(_) => (
                "SELECT attname::text FROM pg_attribute WHERE attrelid = \
                 to_regclass('sluice_load_ledger') AND attname = 'boundary_rows' \
                 AND NOT attisdropped",
                "ALTER TABLE sluice_load_ledger ADD COLUMN IF NOT EXISTS boundary_rows BIGINT",
            ),
            Dest::Sqlite(_) => (
                "SELECT name FROM pragma_table_info('sluice_load_ledger') \
                 WHERE name = 'boundary_rows'",
                "ALTER TABLE sluice_load_ledger ADD COLUMN boundary_rows INTEGER",
            ),
        };
        if conn.row(has_column, &[]).await?.is_none() {
            conn.exec(add_column, &[])
                .await
                .map_err(db("updating the load ledger"))?;
        }
        Ok(())
    })
}

/// Where the job's last regular window ended.
pub(crate) async fn watermark(conn: &mut Dest, job: &str) -> Result<Option<Watermark>> {
    let sql = "SELECT CAST(window_end AS TEXT), CAST(boundary_rows AS TEXT) FROM (".to_owned()
        + WATERMARK
        + ") w";
    let Some(row) = conn.row(&sql, &[Bind::Text(Some(job))]).await? else {
        return Ok(None);
    };
    Ok(row.first().cloned().flatten().map(|end| Watermark {
        end,
        boundary_rows: row.get(1).cloned().flatten().and_then(|n| n.parse().ok()),
    }))
}

/// What the destination holds of a target before a load.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Target {
    /// How the owners' table names it.
    pub name: String,
    pub columns: Vec<String>,
    pub has_rows: bool,
    /// The job whose imports made it, when sluice made it.
    pub owner: Option<String>,
    /// The job's ledger rows, and the rows they say were loaded.
    pub loads: i64,
    pub loaded_rows: i64,
}

/// What a load must do before its rows go in.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct Verdict {
    /// Why the job's ledger is not trusted: cleared, loaded from the start.
    pub reload: Option<String>,
    /// The table exists and sluice did not make it: its columns may not be
    /// changed (no column added, no type widened).
    pub foreign: bool,
}

impl Target {
    pub(crate) async fn inspect(conn: &mut Dest, t: &TableName, job: &str) -> Result<Target> {
        let name = t.quoted();
        let columns: Vec<String> = conn
            .columns(t)
            .await?
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        let has_rows = !columns.is_empty()
            && conn
                .row(&format!("SELECT 'x' FROM {name} LIMIT 1"), &[])
                .await?
                .is_some();
        let owner = conn
            .row(
                "SELECT job FROM sluice_table_owners WHERE target = $1",
                &[Bind::Text(Some(&name))],
            )
            .await?
            .and_then(|r| r.into_iter().next().flatten());
        let ledger = conn
            .row(
                "SELECT CAST(count(*) AS TEXT), CAST(coalesce(sum(rows), 0) AS TEXT) \
                 FROM sluice_load_ledger WHERE job = $1",
                &[Bind::Text(Some(job))],
            )
            .await?
            .unwrap_or_default();
        let num = |i: usize| {
            ledger
                .get(i)
                .cloned()
                .flatten()
                .and_then(|n| n.parse::<i64>().ok())
                .unwrap_or(0)
        };
        Ok(Target {
            name,
            columns,
            has_rows,
            owner,
            loads: num(0),
            loaded_rows: num(1),
        })
    }

    /// Whether `spec`'s job may load into this table loading `loaded`
    /// (column names), and whether its ledger is still to be trusted.
    pub(crate) fn check(&self, spec: &ImportSpec, job: &str, loaded: &[&str]) -> Result<Verdict> {
        let exists = !self.columns.is_empty();
        if let Some(owner) = self.owner.as_deref().filter(|o| *o != job) {
            return Err(ImportError::Invalid(format!(
                "{} belongs to another import (`{owner}`): a destination table is loaded by \
                 one job only; choose another target",
                self.name
            )));
        }
        let ours = self.owner.is_some() || self.loads > 0;
        if exists && !ours {
            if spec.mode == Mode::Destructive && !spec.replace_existing {
                return Err(ImportError::Invalid(format!(
                    "{} exists and sluice did not make it for this import: a destructive load \
                     replaces only its own tables (pass --replace-existing to replace it)",
                    self.name
                )));
            }
            let mut have: Vec<&str> = self.columns.iter().map(String::as_str).collect();
            let mut want = loaded.to_vec();
            have.sort_unstable();
            want.sort_unstable();
            if spec.mode != Mode::Destructive && have != want {
                return Err(ImportError::Invalid(format!(
                    "{} exists with other columns than this import loads; sluice loads into a \
                     table it did not make only when the columns are the same, and nothing \
                     was written. The table has: {}. The import loads: {}",
                    self.name,
                    self.columns.join(", "),
                    loaded.join(", ")
                )));
            }
        }
        let windowed = spec.mode.windowed();
        let reload = if !windowed || self.loads == 0 {
            None
        } else if !exists {
            Some(format!(
                "{} is missing, though the ledger holds {} load(s) of this import: loading \
                 from the start",
                self.name, self.loads
            ))
        } else if !self.has_rows && self.loaded_rows > 0 {
            Some(format!(
                "{} is empty, though the ledger says {} rows were loaded: loading from the start",
                self.name, self.loaded_rows
            ))
        } else {
            None
        };
        Ok(Verdict {
            reload,
            foreign: exists && !ours,
        })
    }
}

/// What a load knows of its destination before its rows go in.
pub(crate) struct Before {
    pub target: Target,
    pub verdict: Verdict,
    /// Where the job's next regular window starts (None: at the first row,
    /// also when the ledger is not trusted or the load is not windowed).
    pub watermark: Option<Watermark>,
}

/// Makes the bookkeeping, inspects and checks the target `t` for `job`
/// loading the columns `loaded`, and reads the watermark of a `windowed`
/// load: the steps both load paths take before their transaction.
pub(crate) async fn before_load(
    conn: &mut Dest,
    spec: &ImportSpec,
    t: &TableName,
    job: &str,
    loaded: &[&str],
    windowed: bool,
) -> Result<Before> {
    ensure(conn).await?;
    let target = Target::inspect(conn, t, job).await?;
    let verdict = target.check(spec, job, loaded)?;
    let watermark = match (&verdict.reload, windowed) {
        (None, true) => watermark(conn, job).await?,
        _ => None,
    };
    Ok(Before {
        target,
        verdict,
        watermark,
    })
}

/// In the load's transaction, before its rows: clears the job's ledger
/// when it is not trusted, records the job as the target's owner, and
/// claims the window's ledger row. False: another attempt loaded it.
pub(crate) async fn claim(
    conn: &mut Dest,
    job: &str,
    target: &str,
    verdict: &Verdict,
    window_key: &str,
    window_end: Option<&str>,
    boundary_rows: Option<i64>,
) -> Result<bool> {
    if verdict.reload.is_some() {
        conn.exec(
            "DELETE FROM sluice_load_ledger WHERE job = $1",
            &[Bind::Text(Some(job))],
        )
        .await
        .map_err(db("clearing the load ledger"))?;
    }
    conn.exec(
        "INSERT INTO sluice_table_owners (target, job) VALUES ($1, $2) \
         ON CONFLICT (target) DO NOTHING",
        &[Bind::Text(Some(target)), Bind::Text(Some(job))],
    )
    .await
    .map_err(db("recording the table's owner"))?;
    // The ledger row first: a second attempt at this window waits here for
    // the first to end, then finds the key taken.
    let claimed = conn
        .exec(
            "INSERT INTO sluice_load_ledger (job, window_start, window_end, rows, boundary_rows) \
             VALUES ($1, $2, $3, 0, $4) ON CONFLICT (job, window_start) DO NOTHING",
            &[
                Bind::Text(Some(job)),
                Bind::Text(Some(window_key)),
                Bind::Text(window_end),
                Bind::Int(boundary_rows),
            ],
        )
        .await
        .map_err(db("writing the load ledger"))?;
    Ok(claimed > 0)
}

/// In the load's transaction, after its rows: the count the window loaded.
pub(crate) async fn record(conn: &mut Dest, job: &str, window_key: &str, rows: u64) -> Result<()> {
    conn.exec(
        "UPDATE sluice_load_ledger SET rows = $1 WHERE job = $2 AND window_start = $3",
        &[
            Bind::Int(Some(rows as i64)),
            Bind::Text(Some(job)),
            Bind::Text(Some(window_key)),
        ],
    )
    .await
    .map_err(db("writing the load ledger"))?;
    Ok(())
}
