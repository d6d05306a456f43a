//! [`SqlStore`]: the metadata store over SQLite or PostgreSQL.
//!
//! Both dialects share the SQL text (numbered `$n` parameters work on both);
//! where they differ — row locks, how a write transaction begins, the
//! scheduler's advisory lock — [`Dialect`] says what to write.

use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;
use sluice_domain::time::{self, Timestamp};
use sluice_domain::*;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{Any, AnyPool, Executor, Row, Transaction};

use crate::{LogQuery, MetadataStore, Result, StoreError};

mod accounts;
mod actions;
mod api_sources;
mod datalake;
mod deployments;
mod imports;
mod lease;
mod named;
mod runs;
mod spaces;

use lease::{Leased, LEASED};

/// Runs, as leased work.
const RUNS: Leased = Leased {
    table: "runs",
    columns: RUN_COLUMNS,
    modified_at: true,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    /// Row locks for a claim: other claimers skip what one has taken.
    fn skip_locked(self) -> &'static str {
        match self {
            Dialect::Postgres => " FOR UPDATE SKIP LOCKED",
            Dialect::Sqlite => "",
        }
    }

    fn for_update(self) -> &'static str {
        match self {
            Dialect::Postgres => " FOR UPDATE",
            Dialect::Sqlite => "",
        }
    }

    fn for_share(self) -> &'static str {
        match self {
            Dialect::Postgres => " FOR SHARE",
            Dialect::Sqlite => "",
        }
    }

    fn migrations(self) -> &'static [(i64, &'static str)] {
        match self {
            Dialect::Sqlite => &[
                (1, include_str!("../migrations/sqlite/0001_core.sql")),
                (2, include_str!("../migrations/sqlite/0002_datalake.sql")),
                (3, include_str!("../migrations/sqlite/0003_imports.sql")),
                (4, include_str!("../migrations/sqlite/0004_spaces.sql")),
                (5, include_str!("../migrations/sqlite/0005_job_tables.sql")),
                (
                    6,
                    include_str!("../migrations/sqlite/0006_server_secrets.sql"),
                ),
                (
                    7,
                    include_str!("../migrations/sqlite/0007_token_generations.sql"),
                ),
                (8, include_str!("../migrations/sqlite/0008_sources.sql")),
                (
                    9,
                    include_str!("../migrations/sqlite/0009_deployment_limits.sql"),
                ),
                (10, include_str!("../migrations/sqlite/0010_actions.sql")),
                (
                    11,
                    include_str!("../migrations/sqlite/0011_api_sources.sql"),
                ),
                (
                    12,
                    include_str!("../migrations/sqlite/0012_api_run_messages.sql"),
                ),
                (
                    13,
                    include_str!("../migrations/sqlite/0013_lease_indexes.sql"),
                ),
                (
                    14,
                    include_str!("../migrations/sqlite/0014_attempt_triggers.sql"),
                ),
                (
                    15,
                    include_str!("../migrations/sqlite/0015_claim_records_attempt.sql"),
                ),
            ],
            Dialect::Postgres => &[
                (1, include_str!("../migrations/postgres/0001_core.sql")),
                (2, include_str!("../migrations/postgres/0002_datalake.sql")),
                (3, include_str!("../migrations/postgres/0003_imports.sql")),
                (4, include_str!("../migrations/postgres/0004_spaces.sql")),
                (
                    5,
                    include_str!("../migrations/postgres/0005_job_tables.sql"),
                ),
                (
                    6,
                    include_str!("../migrations/postgres/0006_server_secrets.sql"),
                ),
                (
                    7,
                    include_str!("../migrations/postgres/0007_token_generations.sql"),
                ),
                (8, include_str!("../migrations/postgres/0008_sources.sql")),
                (
                    9,
                    include_str!("../migrations/postgres/0009_deployment_limits.sql"),
                ),
                (10, include_str!("../migrations/postgres/0010_actions.sql")),
                (
                    11,
                    include_str!("../migrations/postgres/0011_api_sources.sql"),
                ),
                (
                    12,
                    include_str!("../migrations/postgres/0012_api_run_messages.sql"),
                ),
                (
                    13,
                    include_str!("../migrations/postgres/0013_lease_indexes.sql"),
                ),
            ],
        }
    }
}

/// Advisory lock keys (PostgreSQL).
const MIGRATION_LOCK: i64 = 0x0073_6c75_6963_6501;
const SCHEDULER_LOCK: i64 = 0x0073_6c75_6963_6502;

#[derive(Clone)]
pub struct SqlStore {
    dialect: Dialect,
    /// SQLite: the one writer connection. PostgreSQL: the pool.
    write: AnyPool,
    /// SQLite: readers beside the writer (WAL). PostgreSQL: the same pool.
    read: AnyPool,
    /// PostgreSQL: where wake-ups are listened for.
    wake_url: Option<String>,
}

/// A migration's checksum, as recorded beside it.
fn checksum(sql: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(sql.as_bytes()))
}

/// How a locked step's commit waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Commit {
    /// For the WAL to reach the disk (PostgreSQL's default).
    Flushed,
    /// Not for the flush: the step's writes are recomputed from the rows
    /// they change (the scheduler's SUBMITTED → PENDING → RUNNABLE). A
    /// database crash that loses such a commit only means the step is
    /// taken again; a later commit that builds on it (a claim of a run it
    /// made RUNNABLE) flushes the WAL up to its own record, this one's
    /// included. A run's submit, claim and end still wait for theirs.
    Recomputable,
}

/// A pooled PostgreSQL connection idle this long is pinged before use.
const PING_WHEN_IDLE: Duration = Duration::from_secs(30);

impl SqlStore {
    /// Connects without migrating; [`crate::open`] does both.
    pub async fn connect(url: &str) -> Result<SqlStore> {
        sqlx::any::install_default_drivers();
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let pool = AnyPoolOptions::new()
                .max_connections(16)
                .acquire_timeout(Duration::from_secs(30))
                .test_before_acquire(false)
                .before_acquire(|conn, meta| {
                    Box::pin(async move {
                        // A connection in steady use answers its next
                        // statement; only one idle a while (the server may
                        // have restarted since) is asked first — not every
                        // statement paying a round trip more.
                        if meta.idle_for > PING_WHEN_IDLE {
                            sqlx::Connection::ping(conn).await?;
                        }
                        Ok(true)
                    })
                })
                .connect(url)
                .await?;
            return Ok(SqlStore {
                dialect: Dialect::Postgres,
                write: pool.clone(),
                read: pool,
                wake_url: Some(url.to_owned()),
            });
        }
        if !url.starts_with("sqlite:") {
            return Err(StoreError::UnsupportedUrl(url.to_owned()));
        }
        let url = if url.contains('?') {
            url.to_owned()
        } else {
            format!("{url}?mode=rwc")
        };
        // A SQLite connection is a file this process holds: nothing to
        // test before each use (sqlx would pass a ping through the
        // connection's thread each time).
        let write = AnyPoolOptions::new()
            .max_connections(1)
            .test_before_acquire(false)
            .after_connect(sqlite_pragmas)
            .connect(&url)
            .await?;
        sqlx::query("PRAGMA journal_mode = WAL")
            .execute(&write)
            .await?;
        let read = AnyPoolOptions::new()
            .max_connections(4)
            .test_before_acquire(false)
            .after_connect(sqlite_reader_pragmas)
            .connect(&url)
            .await?;
        Ok(SqlStore {
            dialect: Dialect::Sqlite,
            write,
            read,
            wake_url: None,
        })
    }

    /// Whether sluice's schema was ever made here.
    pub async fn is_initialized(&self) -> Result<bool> {
        let sql = match self.dialect {
            Dialect::Sqlite => {
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'"
            }
            Dialect::Postgres => {
                "SELECT count(*) FROM pg_catalog.pg_tables WHERE tablename = 'schema_migrations' \
                 AND schemaname = current_schema()"
            }
        };
        let n: i64 = sqlx::query_scalar(sql).fetch_one(&self.read).await?;
        Ok(n > 0)
    }

    /// Applies the dialect's migrations that are not yet applied, and
    /// checks those that are against this build's: a database whose applied
    /// migration differs (changed by hand, or by another build) is refused,
    /// since this build's SQL would not fit it.
    pub async fn migrate(&self) -> Result<()> {
        if self.up_to_date().await {
            return Ok(());
        }
        // Under the migration lock: two first starts racing to create the
        // table would otherwise collide in PostgreSQL's catalog.
        let mut tx = self.begin().await?;
        self.lock_exclusively(&mut tx, MIGRATION_LOCK, Commit::Flushed)
            .await?;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS schema_migrations \
             (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
        )
        .execute(&mut *tx)
        .await?;
        // Kept apart: a store made before checksums were recorded has its
        // first checksums written on its next start.
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS schema_migration_checksums \
             (version BIGINT PRIMARY KEY, checksum TEXT NOT NULL)",
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        for &(version, sql) in self.dialect.migrations() {
            let mut tx = self.begin().await?;
            self.lock_exclusively(&mut tx, MIGRATION_LOCK, Commit::Flushed)
                .await?;
            let checksum = checksum(sql);
            let done = sqlx::query("SELECT version FROM schema_migrations WHERE version = $1")
                .bind(version)
                .fetch_optional(&mut *tx)
                .await?;
            let recorded: Option<String> = sqlx::query_scalar(
                "SELECT checksum FROM schema_migration_checksums WHERE version = $1",
            )
            .bind(version)
            .fetch_optional(&mut *tx)
            .await?;
            match (done, recorded) {
                (Some(_), Some(r)) if r != checksum => {
                    return Err(StoreError::Corrupt(format!(
                        "migration {version} applied to this database differs from this \
                         build's (checksum {r}, this build {checksum}): the database was \
                         changed by hand or by another build of sluice; refusing to start"
                    )));
                }
                (Some(_), Some(_)) => {}
                (done, _) => {
                    if done.is_none() {
                        sqlx::raw_sql(sql).execute(&mut *tx).await?;
                        sqlx::query(
                            "INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)",
                        )
                        .bind(version)
                        .bind(time::now().timestamp_micros())
                        .execute(&mut *tx)
                        .await?;
                    }
                    sqlx::query(
                        "INSERT INTO schema_migration_checksums (version, checksum) VALUES ($1, $2)",
                    )
                    .bind(version)
                    .bind(&checksum)
                    .execute(&mut *tx)
                    .await?;
                }
            }
            tx.commit().await?;
        }
        Ok(())
    }

    /// Whether every migration of this build is applied, with this build's
    /// checksum, as one read shows: then opening takes no write lock (an
    /// admin command beside a busy `sluice serve` would otherwise queue
    /// for SQLite's one writer once per migration). Anything else — a new
    /// store, a migration missing, a checksum that differs, a read that
    /// fails — is [`Self::migrate`]'s locked path to apply or to refuse.
    async fn up_to_date(&self) -> bool {
        let applied: Vec<(i64, String)> = match sqlx::query_as(
            "SELECT m.version, c.checksum FROM schema_migrations m \
             JOIN schema_migration_checksums c ON c.version = m.version",
        )
        .fetch_all(&self.read)
        .await
        {
            Ok(rows) => rows,
            Err(_) => return false,
        };
        self.dialect.migrations().iter().all(|(version, sql)| {
            let sum = checksum(sql);
            applied.iter().any(|(v, s)| v == version && *s == sum)
        })
    }

    /// Holds the advisory lock `key` until `tx` ends (PostgreSQL; on SQLite
    /// the write transaction is exclusive already), `tx` committing as
    /// `commit` says.
    async fn lock_exclusively(
        &self,
        tx: &mut Transaction<'static, Any>,
        key: i64,
        commit: Commit,
    ) -> Result<()> {
        if self.dialect == Dialect::Postgres {
            let sql = match commit {
                Commit::Flushed => "SELECT pg_advisory_xact_lock($1)",
                Commit::Recomputable => {
                    "SELECT pg_advisory_xact_lock($1), set_config('synchronous_commit', 'off', true)"
                }
            };
            sqlx::query(sql).bind(key).execute(&mut **tx).await?;
        }
        Ok(())
    }

    /// A write transaction. SQLite takes the write lock at once (`BEGIN
    /// IMMEDIATE`), so a transaction that reads and then writes never fails
    /// on a lock upgrade.
    async fn begin(&self) -> Result<Transaction<'static, Any>> {
        Ok(match self.dialect {
            Dialect::Sqlite => self.write.begin_with("BEGIN IMMEDIATE").await?,
            Dialect::Postgres => self.write.begin().await?,
        })
    }

    /// Ends the attempt holding `token` inside `tx`, its last log lines
    /// `tail` with it; answers the run's next status.
    #[allow(clippy::too_many_arguments)]
    async fn finish_in(
        &self,
        tx: &mut Transaction<'static, Any>,
        run: &RunId,
        token: i64,
        outcome: &AttemptOutcome,
        retry: RetryPolicy,
        now: Timestamp,
        tail: &[(Timestamp, String)],
    ) -> Result<RunStatus> {
        let current = self.lock_run(tx, run).await?;
        if current.lease_token != token || !current.status.is_leased() {
            return Err(StoreError::LeaseLost(run.to_string()));
        }
        runs::insert_logs(tx, run, current.attempt, tail).await?;
        let (end, error) = match outcome {
            AttemptOutcome::Succeeded => (AttemptEnd::Succeeded, None),
            AttemptOutcome::Failed { error } => (AttemptEnd::Failed, Some(error.clone())),
            AttemptOutcome::Invalid { error } => (AttemptEnd::Invalid, Some(error.clone())),
            AttemptOutcome::HandedBack { why } => (AttemptEnd::HandedBack, Some(why.clone())),
        };
        let next = current
            .status
            .after_attempt(end, current.attempt, current.retry_count);
        current.status.transition(next)?;
        end_attempt(
            tx,
            self.dialect,
            &current,
            next,
            end,
            error,
            retry,
            micros(now),
        )
        .await?;
        Ok(next)
    }

    /// Reads one run under a row lock (PostgreSQL) inside `tx`.
    async fn lock_run(&self, tx: &mut Transaction<'static, Any>, id: &RunId) -> Result<Run> {
        RUNS.lock(tx, self.dialect, id.as_str())
            .await?
            .as_ref()
            .map(run_from_row)
            .transpose()?
            .ok_or_else(|| not_found("run", id))
    }
}

/// Every SQLite connection waits for the file lock instead of failing, and
/// syncs at checkpoints (WAL makes that crash-safe).
fn sqlite_pragmas(
    conn: &mut sqlx::AnyConnection,
    _meta: sqlx::pool::PoolConnectionMetadata,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), sqlx::Error>> + Send + '_>> {
    Box::pin(async move {
        conn.execute("PRAGMA busy_timeout = 30000").await?;
        conn.execute("PRAGMA synchronous = NORMAL").await?;
        Ok(())
    })
}

/// A reader's pragmas: besides the writer's, a page cache of 256 KiB
/// instead of 2 MiB. Four readers each filled their 2 MiB cache with the
/// pages of large records and kept them: after a burst of list requests
/// the server stayed 12 MiB above its start. The file's pages stay in the
/// system's cache, which every reader shares.
fn sqlite_reader_pragmas(
    conn: &mut sqlx::AnyConnection,
    meta: sqlx::pool::PoolConnectionMetadata,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), sqlx::Error>> + Send + '_>> {
    Box::pin(async move {
        sqlite_pragmas(conn, meta).await?;
        conn.execute("PRAGMA cache_size = -256").await?;
        Ok(())
    })
}

/// Text from user code (a log line, an error it wrote) as stored: a NUL
/// character becomes U+FFFD on both backends (PostgreSQL's text holds none;
/// a line printed with one must not lose its run's logs and end).
fn no_nul(text: &str) -> std::borrow::Cow<'_, str> {
    if text.contains('\0') {
        text.replace('\0', "\u{FFFD}").into()
    } else {
        text.into()
    }
}

fn not_found(kind: &str, id: impl std::fmt::Display) -> StoreError {
    StoreError::NotFound(format!("{kind} `{id}`"))
}

fn micros(t: Timestamp) -> i64 {
    t.timestamp_micros()
}

fn json_text(v: &Value) -> String {
    v.to_string()
}

fn env_text(e: &Environment) -> String {
    Value::Object(e.clone()).to_string()
}

fn parse_json(row: &AnyRow, col: &str) -> Result<Value> {
    let text: String = row.try_get(col)?;
    Ok(serde_json::from_str(&text)?)
}

fn parse_env(row: &AnyRow, col: &str) -> Result<Environment> {
    match parse_json(row, col)? {
        Value::Object(map) => Ok(map),
        other => Err(StoreError::Corrupt(format!(
            "{col} is not an object: {other}"
        ))),
    }
}

fn ts(row: &AnyRow, col: &str) -> Result<Timestamp> {
    Ok(time::from_micros(row.try_get::<i64, _>(col)?))
}

fn opt_ts(row: &AnyRow, col: &str) -> Result<Option<Timestamp>> {
    Ok(row.try_get::<Option<i64>, _>(col)?.map(time::from_micros))
}

const RUN_COLUMNS: &str = "seq, id, organization_id, deployment_id, version_id, trigger_id, \
    status, input_data, models, output_template, environment, retry_count, distribution, \
    attempt, lease_token, lease_owner, error, created_at, modified_at, started_at, finished_at";

fn run_from_row(row: &AnyRow) -> Result<Run> {
    let status: String = row.try_get("status")?;
    Ok(Run {
        seq: row.try_get("seq")?,
        id: RunId::parse(&row.try_get::<String, _>("id")?)?,
        organization_id: OrganizationId::parse(&row.try_get::<String, _>("organization_id")?)?,
        deployment_id: DeploymentId::parse(&row.try_get::<String, _>("deployment_id")?)?,
        version_id: VersionId::parse(&row.try_get::<String, _>("version_id")?)?,
        trigger_id: row
            .try_get::<Option<String>, _>("trigger_id")?
            .map(|t| TriggerId::parse(&t))
            .transpose()?,
        status: status
            .parse()
            .map_err(|e| StoreError::Corrupt(format!("{e}")))?,
        input_data: parse_json(row, "input_data")?,
        models: parse_json(row, "models")?,
        output_template: parse_json(row, "output_template")?,
        environment: parse_env(row, "environment")?,
        retry_count: row.try_get::<i64, _>("retry_count")? as i32,
        distribution: row.try_get("distribution")?,
        attempt: row.try_get::<i64, _>("attempt")? as i32,
        lease_token: row.try_get("lease_token")?,
        lease_owner: row.try_get("lease_owner")?,
        error: row.try_get("error")?,
        created_at: ts(row, "created_at")?,
        modified_at: ts(row, "modified_at")?,
        started_at: opt_ts(row, "started_at")?,
        finished_at: opt_ts(row, "finished_at")?,
    })
}

const DEPLOYMENT_COLUMNS: &str =
    "id, organization_id, name, description, default_environment, creator, created_at, modified_at, limits";

fn deployment_from_row(row: &AnyRow) -> Result<Deployment> {
    Ok(Deployment {
        id: DeploymentId::parse(&row.try_get::<String, _>("id")?)?,
        organization_id: OrganizationId::parse(&row.try_get::<String, _>("organization_id")?)?,
        name: row.try_get("name")?,
        description: row.try_get("description")?,
        default_environment: parse_env(row, "default_environment")?,
        creator: row
            .try_get::<Option<String>, _>("creator")?
            .map(|u| UserId::parse(&u))
            .transpose()?,
        created_at: ts(row, "created_at")?,
        modified_at: ts(row, "modified_at")?,
        limits: serde_json::from_str(&row.try_get::<String, _>("limits")?)
            .map_err(|e| StoreError::Corrupt(format!("deployment limits: {e}")))?,
    })
}

const VERSION_COLUMNS: &str = "id, organization_id, deployment_id, version, handler, image, \
    user_parameters, archive, created_at, modified_at";

fn version_from_row(row: &AnyRow) -> Result<Version> {
    version_from(row, "")
}

/// A version from `row`'s columns whose names start with `prefix` (a
/// version read beside its deployment names its columns `v_…`).
fn version_from(row: &AnyRow, prefix: &str) -> Result<Version> {
    let col = |name: &str| format!("{prefix}{name}");
    Ok(Version {
        id: VersionId::parse(&row.try_get::<String, _>(&*col("id"))?)?,
        organization_id: OrganizationId::parse(
            &row.try_get::<String, _>(&*col("organization_id"))?,
        )?,
        deployment_id: DeploymentId::parse(&row.try_get::<String, _>(&*col("deployment_id"))?)?,
        version: row.try_get(&*col("version"))?,
        handler: row.try_get(&*col("handler"))?,
        image: row.try_get(&*col("image"))?,
        user_parameters: parse_env(row, &col("user_parameters"))?,
        archive: row.try_get(&*col("archive"))?,
        created_at: ts(row, &col("created_at"))?,
        modified_at: ts(row, &col("modified_at"))?,
    })
}

fn user_from_row(row: &AnyRow) -> Result<User> {
    Ok(User {
        id: UserId::parse(&row.try_get::<String, _>("id")?)?,
        organization_id: OrganizationId::parse(&row.try_get::<String, _>("organization_id")?)?,
        email: row.try_get("email")?,
        token_hash: row.try_get("token_hash")?,
        created_at: ts(row, "created_at")?,
        token_generation: row.try_get("token_generation")?,
    })
}

#[async_trait]
impl MetadataStore for SqlStore {
    fn dialect(&self) -> Dialect {
        self.dialect
    }

    fn wake_url(&self) -> Option<&str> {
        self.wake_url.as_deref()
    }

    async fn wake(&self, what: &str) -> Result<()> {
        if self.wake_url.is_some() {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(crate::WAKE_CHANNEL)
                .bind(what)
                .execute(&self.write)
                .await?;
        }
        Ok(())
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.write).await?;
        sqlx::query("SELECT 1").execute(&self.read).await?;
        Ok(())
    }

    async fn open_work(&self) -> Result<crate::OpenWork> {
        // Each table's open statuses are read through its index on status.
        let open = "('SUBMITTED', 'PENDING', 'RUNNABLE', 'STARTING', 'RUNNING', 'CANCELING')";
        let rows = sqlx::query(&format!(
            "SELECT 'run' AS kind, status, COUNT(*) AS n FROM runs WHERE status IN {open} \
             GROUP BY status \
             UNION ALL SELECT 'query', status, COUNT(*) FROM import_queries \
             WHERE status IN {open} GROUP BY status \
             UNION ALL SELECT 'action_run', status, COUNT(*) FROM action_runs \
             WHERE status IN {open} GROUP BY status \
             UNION ALL SELECT 'api_run', status, COUNT(*) FROM api_runs \
             WHERE status IN {open} GROUP BY status"
        ))
        .fetch_all(&self.read)
        .await?;
        let by_status = rows
            .iter()
            .map(|r| Ok((r.try_get("kind")?, r.try_get("status")?, r.try_get("n")?)))
            .collect::<Result<Vec<_>>>()?;
        let rows = sqlx::query(
            "SELECT COALESCE(queue, 'default') AS queue, COUNT(*) AS n FROM runs \
             WHERE status IN ('SUBMITTED', 'PENDING', 'RUNNABLE') GROUP BY COALESCE(queue, 'default')",
        )
        .fetch_all(&self.read)
        .await?;
        let queued = rows
            .iter()
            .map(|r| Ok((r.try_get("queue")?, r.try_get("n")?)))
            .collect::<Result<Vec<_>>>()?;
        let events_pending: i64 =
            sqlx::query("SELECT COUNT(*) AS n FROM trigger_events WHERE state = 'PENDING'")
                .fetch_one(&self.read)
                .await?
                .try_get("n")?;
        Ok(crate::OpenWork {
            by_status,
            queued,
            events_pending,
        })
    }

    fn pool_use(&self) -> (u32, u32) {
        let (mut open, mut idle) = (self.write.size(), self.write.num_idle() as u32);
        if self.dialect == Dialect::Sqlite {
            open += self.read.size();
            idle += self.read.num_idle() as u32;
        }
        (open, idle)
    }
}

/// Inserts a SUBMITTED run inside `tx`.
async fn insert_run<'e>(
    db: impl Executor<'e, Database = Any>,
    run: &NewRun,
    queue: Option<&str>,
) -> Result<Run> {
    let now = micros(run.created_at);
    let sql = format!(
            "INSERT INTO runs (id, organization_id, deployment_id, version_id, trigger_id, status, \
             input_data, models, output_template, environment, retry_count, distribution, queue, \
             not_before, idempotency_key, created_at, modified_at) \
             VALUES ($1, $2, $3, $4, $5, 'SUBMITTED', $6, $7, $8, $9, $10, $11, $12, $13, $14, $13, $13) \
             RETURNING {RUN_COLUMNS}"
        );
    let row = sqlx::query(&sql)
        .bind(run.id.as_str())
        .bind(run.organization_id.as_str())
        .bind(run.deployment_id.as_str())
        .bind(run.version_id.as_str())
        .bind(run.trigger_id.as_ref().map(|t| t.as_str().to_owned()))
        .bind(json_text(&run.input_data))
        .bind(json_text(&run.models))
        .bind(json_text(&run.output_template))
        .bind(env_text(&run.environment))
        .bind(run.retry_count as i64)
        .bind(run.distribution)
        .bind(queue.map(str::to_owned))
        .bind(now)
        .bind(run.idempotency_key.clone())
        .fetch_one(db)
        .await?;
    run_from_row(&row)
}

/// The run an idempotency key already created in a deployment, if any.
async fn run_by_idempotency_key<'e>(
    db: impl Executor<'e, Database = Any>,
    dep: &DeploymentId,
    key: &str,
) -> Result<Option<Run>> {
    let sql =
        format!("SELECT {RUN_COLUMNS} FROM runs WHERE deployment_id = $1 AND idempotency_key = $2");
    let row = sqlx::query(&sql)
        .bind(dep.as_str())
        .bind(key)
        .fetch_optional(db)
        .await?;
    row.as_ref().map(run_from_row).transpose()
}

/// Closes an attempt and moves its run to `next`, releasing the lease. The
/// token goes up too, so whoever held the lease can write nothing more.
/// On PostgreSQL both rows change in one statement (one round trip less
/// on every run's way out).
#[allow(clippy::too_many_arguments)]
async fn end_attempt(
    tx: &mut Transaction<'static, Any>,
    dialect: Dialect,
    run: &Run,
    next: RunStatus,
    end: AttemptEnd,
    error: Option<String>,
    retry: RetryPolicy,
    now: i64,
) -> Result<()> {
    // A handed-back run waits for no backoff: its code did not fail.
    let not_before = if next == RunStatus::Pending && end != AttemptEnd::HandedBack {
        now + retry.backoff(run.attempt).as_micros() as i64
    } else {
        now
    };
    let finished = next.is_final().then_some(now);
    let error = error.map(|e| no_nul(&e).into_owned());
    // A handed-back run did not go wrong: the reason is the attempt's.
    let run_error = if end == AttemptEnd::HandedBack {
        None
    } else {
        error.clone()
    };
    // The run's row: one statement with the attempt's on PostgreSQL
    // (fixed text, so the prepared statement is reused).
    macro_rules! run_update {
        () => {
            "UPDATE runs SET status = $1, lease_owner = NULL, lease_expires_at = NULL, \
             lease_token = lease_token + 1, not_before = $2, error = $3, modified_at = $4, \
             finished_at = $5 WHERE id = $6 AND lease_token = $7"
        };
    }
    let sql = match dialect {
        Dialect::Postgres => concat!(
            "WITH moved AS (",
            run_update!(),
            " RETURNING id) UPDATE run_attempts SET finished_at = $4, outcome = $8, \
             error = $9 WHERE run_id = $6 AND attempt = $10"
        ),
        Dialect::Sqlite => run_update!(),
    };
    let mut query = sqlx::query(sql)
        .bind(next.as_str())
        .bind(not_before)
        .bind(run_error)
        .bind(now)
        .bind(finished)
        .bind(run.id.as_str())
        .bind(run.lease_token);
    if dialect == Dialect::Postgres {
        query = query
            .bind(end.outcome(next))
            .bind(error.clone())
            .bind(run.attempt as i64);
    }
    query.execute(&mut **tx).await?;
    if dialect == Dialect::Sqlite {
        sqlx::query(
            "UPDATE run_attempts SET finished_at = $1, outcome = $2, error = $3 \
             WHERE run_id = $4 AND attempt = $5",
        )
        .bind(now)
        .bind(end.outcome(next))
        .bind(error)
        .bind(run.id.as_str())
        .bind(run.attempt as i64)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    async fn a_changed_migration_is_refused(url: &str) {
        let store = crate::open(url).await.unwrap();
        // A store made before checksums were kept gets them on its next start.
        sqlx::query("DELETE FROM schema_migration_checksums")
            .execute(&store.write)
            .await
            .unwrap();
        store.migrate().await.unwrap();
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM schema_migration_checksums")
            .fetch_one(&store.write)
            .await
            .unwrap();
        assert_eq!(n as usize, store.dialect.migrations().len());
        // One applied migration that is not this build's.
        sqlx::query("UPDATE schema_migration_checksums SET checksum = 'other' WHERE version = 3")
            .execute(&store.write)
            .await
            .unwrap();
        let err = store.migrate().await.unwrap_err().to_string();
        assert!(
            err.contains("migration 3") && err.contains("refusing to start"),
            "{err}"
        );
        assert!(crate::open(url).await.is_err());
    }

    /// An admin command opening the store beside a busy server: the
    /// schema is this build's, so the open reads it and takes no write lock
    /// (it waited for the writer once per migration, and with the writer
    /// held throughout, failed with "database is locked").
    #[tokio::test]
    async fn opening_an_up_to_date_sqlite_store_takes_no_write_lock() {
        use sqlx::Connection;
        let dir = std::env::temp_dir().join(format!("sluice-open-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let url = format!("sqlite://{}/meta.db", dir.display());
        drop(crate::open(&url).await.unwrap());
        let mut writer = sqlx::SqliteConnection::connect(&url).await.unwrap();
        sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut writer)
            .await
            .unwrap();
        let opened =
            tokio::time::timeout(std::time::Duration::from_secs(8), crate::open(&url)).await;
        assert!(
            matches!(opened, Ok(Ok(_))),
            "opening beside a writer: {:?}",
            opened.map(|o| o.err())
        );
        sqlx::query("ROLLBACK").execute(&mut writer).await.unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_changed_migration_is_refused_on_sqlite() {
        let dir = std::env::temp_dir().join(format!("sluice-migrations-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        a_changed_migration_is_refused(&format!("sqlite://{}/meta.db", dir.display())).await;
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_changed_migration_is_refused_on_postgres() {
        let db = sluice_testkit::TempDb::postgres("sluice_migrations").await;
        a_changed_migration_is_refused(&db).await;
    }
}
