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

mod datalake;
mod imports;
mod lease;
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
}

impl SqlStore {
    /// Connects without migrating; [`crate::open`] does both.
    pub async fn connect(url: &str) -> Result<SqlStore> {
        sqlx::any::install_default_drivers();
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let pool = AnyPoolOptions::new()
                .max_connections(16)
                .acquire_timeout(Duration::from_secs(30))
                .connect(url)
                .await?;
            return Ok(SqlStore {
                dialect: Dialect::Postgres,
                write: pool.clone(),
                read: pool,
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
        let write = AnyPoolOptions::new()
            .max_connections(1)
            .after_connect(sqlite_pragmas)
            .connect(&url)
            .await?;
        sqlx::query("PRAGMA journal_mode = WAL")
            .execute(&write)
            .await?;
        let read = AnyPoolOptions::new()
            .max_connections(4)
            .after_connect(sqlite_reader_pragmas)
            .connect(&url)
            .await?;
        Ok(SqlStore {
            dialect: Dialect::Sqlite,
            write,
            read,
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
        // Under the migration lock: two first starts racing to create the
        // table would otherwise collide in PostgreSQL's catalog.
        let mut tx = self.begin().await?;
        if self.dialect == Dialect::Postgres {
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(MIGRATION_LOCK)
                .execute(&mut *tx)
                .await?;
        }
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
            if self.dialect == Dialect::Postgres {
                sqlx::query("SELECT pg_advisory_xact_lock($1)")
                    .bind(MIGRATION_LOCK)
                    .execute(&mut *tx)
                    .await?;
            }
            let checksum = {
                use sha2::Digest;
                hex::encode(sha2::Sha256::digest(sql.as_bytes()))
            };
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

    /// A write transaction. SQLite takes the write lock at once (`BEGIN
    /// IMMEDIATE`), so a transaction that reads and then writes never fails
    /// on a lock upgrade.
    async fn begin(&self) -> Result<Transaction<'static, Any>> {
        Ok(match self.dialect {
            Dialect::Sqlite => self.write.begin_with("BEGIN IMMEDIATE").await?,
            Dialect::Postgres => self.write.begin().await?,
        })
    }

    /// Ends the attempt holding `token` inside `tx`; answers the run's next status.
    async fn finish_in(
        &self,
        tx: &mut Transaction<'static, Any>,
        run: &RunId,
        token: i64,
        outcome: &AttemptOutcome,
        retry: RetryPolicy,
        now: Timestamp,
    ) -> Result<RunStatus> {
        let current = self.lock_run(tx, run).await?;
        if current.lease_token != token || !current.status.is_leased() {
            return Err(StoreError::LeaseLost(run.to_string()));
        }
        let (end, error) = match outcome {
            AttemptOutcome::Succeeded => (AttemptEnd::Succeeded, None),
            AttemptOutcome::Failed { error } => (AttemptEnd::Failed, Some(error.clone())),
            AttemptOutcome::Invalid { error } => (AttemptEnd::Invalid, Some(error.clone())),
        };
        let next = current
            .status
            .after_attempt(end, current.attempt, current.retry_count);
        current.status.transition(next)?;
        end_attempt(tx, &current, next, end, error, retry, micros(now)).await?;
        Ok(next)
    }

    /// Reads one run under a row lock (PostgreSQL) inside `tx`.
    async fn lock_run(&self, tx: &mut Transaction<'static, Any>, id: &RunId) -> Result<Run> {
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE id = $1{}",
            self.dialect.for_update()
        );
        let row = sqlx::query(&sql)
            .bind(id.as_str())
            .fetch_optional(&mut **tx)
            .await?;
        row.as_ref()
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
    Ok(Version {
        id: VersionId::parse(&row.try_get::<String, _>("id")?)?,
        organization_id: OrganizationId::parse(&row.try_get::<String, _>("organization_id")?)?,
        deployment_id: DeploymentId::parse(&row.try_get::<String, _>("deployment_id")?)?,
        version: row.try_get("version")?,
        handler: row.try_get("handler")?,
        image: row.try_get("image")?,
        user_parameters: parse_env(row, "user_parameters")?,
        archive: row.try_get("archive")?,
        created_at: ts(row, "created_at")?,
        modified_at: ts(row, "modified_at")?,
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

    async fn server_secret(&self, name: &str, candidate: &str) -> Result<String> {
        sqlx::query(
            "INSERT INTO server_secrets (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(candidate)
        .execute(&self.write)
        .await?;
        Ok(
            sqlx::query_scalar("SELECT value FROM server_secrets WHERE name = $1")
                .bind(name)
                .fetch_one(&self.write)
                .await?,
        )
    }

    async fn create_organization(&self, org: &Organization) -> Result<()> {
        sqlx::query("INSERT INTO organizations (id, name, created_at) VALUES ($1, $2, $3)")
            .bind(org.id.as_str())
            .bind(&org.name)
            .bind(micros(org.created_at))
            .execute(&self.write)
            .await?;
        Ok(())
    }

    async fn get_organization(&self, id: &OrganizationId) -> Result<Organization> {
        let row = sqlx::query("SELECT id, name, created_at FROM organizations WHERE id = $1")
            .bind(id.as_str())
            .fetch_optional(&self.read)
            .await?
            .ok_or_else(|| not_found("organization", id))?;
        Ok(Organization {
            id: OrganizationId::parse(&row.try_get::<String, _>("id")?)?,
            name: row.try_get("name")?,
            created_at: ts(&row, "created_at")?,
        })
    }

    async fn create_user(&self, user: &User) -> Result<()> {
        sqlx::query(
            "INSERT INTO users (id, organization_id, email, token_hash, created_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(user.id.as_str())
        .bind(user.organization_id.as_str())
        .bind(&user.email)
        .bind(&user.token_hash)
        .bind(micros(user.created_at))
        .execute(&self.write)
        .await?;
        Ok(())
    }

    async fn get_user(&self, id: &UserId) -> Result<User> {
        let row = sqlx::query(
            "SELECT id, organization_id, email, token_hash, created_at, token_generation FROM users WHERE id = $1",
        )
        .bind(id.as_str())
        .fetch_optional(&self.read)
        .await?
        .ok_or_else(|| not_found("user", id))?;
        user_from_row(&row)
    }

    async fn revoke_tokens(&self, id: &UserId) -> Result<i64> {
        let row = sqlx::query(
            "UPDATE users SET token_generation = token_generation + 1 WHERE id = $1 \
             RETURNING token_generation",
        )
        .bind(id.as_str())
        .fetch_optional(&self.write)
        .await?
        .ok_or_else(|| not_found("user", id))?;
        Ok(row.try_get(0)?)
    }

    async fn users_of(&self, org: &OrganizationId) -> Result<Vec<User>> {
        let rows = sqlx::query(
            "SELECT id, organization_id, email, token_hash, created_at, token_generation FROM users \
             WHERE organization_id = $1 ORDER BY created_at, id",
        )
        .bind(org.as_str())
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(user_from_row).collect()
    }

    async fn first_user(&self, org: &OrganizationId) -> Result<Option<User>> {
        let row = sqlx::query(
            "SELECT id, organization_id, email, token_hash, created_at, token_generation FROM users \
             WHERE organization_id = $1 ORDER BY created_at, id LIMIT 1",
        )
        .bind(org.as_str())
        .fetch_optional(&self.read)
        .await?;
        row.as_ref().map(user_from_row).transpose()
    }

    async fn create_deployment(&self, dep: &Deployment) -> Result<()> {
        sqlx::query(
            "INSERT INTO deployments (id, organization_id, name, description, \
             default_environment, creator, created_at, modified_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(dep.id.as_str())
        .bind(dep.organization_id.as_str())
        .bind(&dep.name)
        .bind(&dep.description)
        .bind(env_text(&dep.default_environment))
        .bind(dep.creator.as_ref().map(|u| u.as_str().to_owned()))
        .bind(micros(dep.created_at))
        .bind(micros(dep.modified_at))
        .execute(&self.write)
        .await?;
        Ok(())
    }

    async fn get_deployment(&self, org: &OrganizationId, id: &DeploymentId) -> Result<Deployment> {
        let sql = format!(
            "SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE organization_id = $1 AND id = $2"
        );
        let row = sqlx::query(&sql)
            .bind(org.as_str())
            .bind(id.as_str())
            .fetch_optional(&self.read)
            .await?
            .ok_or_else(|| not_found("deployment", id))?;
        deployment_from_row(&row)
    }

    async fn list_deployments(&self, org: &OrganizationId) -> Result<Vec<Deployment>> {
        let sql = format!(
            "SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE organization_id = $1 \
             ORDER BY seq DESC"
        );
        let rows = sqlx::query(&sql)
            .bind(org.as_str())
            .fetch_all(&self.read)
            .await?;
        rows.iter().map(deployment_from_row).collect()
    }

    async fn update_deployment(&self, dep: &Deployment) -> Result<()> {
        let done = sqlx::query(
            "UPDATE deployments SET name = $1, description = $2, default_environment = $3, \
             modified_at = $4, limits = $7 WHERE organization_id = $5 AND id = $6",
        )
        .bind(&dep.name)
        .bind(&dep.description)
        .bind(env_text(&dep.default_environment))
        .bind(micros(dep.modified_at))
        .bind(dep.organization_id.as_str())
        .bind(dep.id.as_str())
        .bind(serde_json::to_string(&dep.limits).unwrap_or_else(|_| "{}".into()))
        .execute(&self.write)
        .await?;
        if done.rows_affected() == 0 {
            return Err(not_found("deployment", &dep.id));
        }
        Ok(())
    }

    async fn delete_deployment(&self, org: &OrganizationId, id: &DeploymentId) -> Result<()> {
        let mut tx = self.begin().await?;
        let done = sqlx::query("DELETE FROM deployments WHERE organization_id = $1 AND id = $2")
            .bind(org.as_str())
            .bind(id.as_str())
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(not_found("deployment", id));
        }
        sqlx::query("DELETE FROM versions WHERE deployment_id = $1")
            .bind(id.as_str())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn create_version(&self, ver: &Version) -> Result<()> {
        sqlx::query(
            "INSERT INTO versions (id, organization_id, deployment_id, version, handler, image, \
             user_parameters, archive, created_at, modified_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(ver.id.as_str())
        .bind(ver.organization_id.as_str())
        .bind(ver.deployment_id.as_str())
        .bind(&ver.version)
        .bind(&ver.handler)
        .bind(&ver.image)
        .bind(env_text(&ver.user_parameters))
        .bind(ver.archive.clone())
        .bind(micros(ver.created_at))
        .bind(micros(ver.modified_at))
        .execute(&self.write)
        .await
        .map_err(|e| match StoreError::from(e) {
            StoreError::Conflict(_) => StoreError::Conflict(format!(
                "version `{}` already exists in deployment {}",
                ver.version, ver.deployment_id
            )),
            other => other,
        })?;
        Ok(())
    }

    async fn get_version(
        &self,
        org: &OrganizationId,
        dep: &DeploymentId,
        id: &VersionId,
    ) -> Result<Version> {
        let sql = format!(
            "SELECT {VERSION_COLUMNS} FROM versions \
             WHERE organization_id = $1 AND deployment_id = $2 AND id = $3"
        );
        let row = sqlx::query(&sql)
            .bind(org.as_str())
            .bind(dep.as_str())
            .bind(id.as_str())
            .fetch_optional(&self.read)
            .await?
            .ok_or_else(|| not_found("version", id))?;
        version_from_row(&row)
    }

    async fn list_versions(
        &self,
        org: &OrganizationId,
        dep: &DeploymentId,
    ) -> Result<Vec<Version>> {
        let sql = format!(
            "SELECT {VERSION_COLUMNS} FROM versions \
             WHERE organization_id = $1 AND deployment_id = $2 ORDER BY seq DESC"
        );
        let rows = sqlx::query(&sql)
            .bind(org.as_str())
            .bind(dep.as_str())
            .fetch_all(&self.read)
            .await?;
        rows.iter().map(version_from_row).collect()
    }

    async fn set_version_archive(
        &self,
        id: &VersionId,
        archive: &str,
        now: Timestamp,
    ) -> Result<()> {
        let done = sqlx::query(
            "UPDATE versions SET archive = $1, modified_at = $2 WHERE id = $3 AND archive IS NULL",
        )
        .bind(archive)
        .bind(micros(now))
        .bind(id.as_str())
        .execute(&self.write)
        .await?;
        if done.rows_affected() == 0 {
            let exists: Option<String> =
                sqlx::query_scalar("SELECT id FROM versions WHERE id = $1")
                    .bind(id.as_str())
                    .fetch_optional(&self.read)
                    .await?;
            return Err(match exists {
                Some(_) => StoreError::Conflict(format!(
                    "version {id} has its code already: a version's code never changes; \
                     make a new version for new code"
                )),
                None => not_found("version", id),
            });
        }
        Ok(())
    }

    async fn delete_version(
        &self,
        org: &OrganizationId,
        dep: &DeploymentId,
        id: &VersionId,
    ) -> Result<()> {
        let done = sqlx::query(
            "DELETE FROM versions WHERE organization_id = $1 AND deployment_id = $2 AND id = $3",
        )
        .bind(org.as_str())
        .bind(dep.as_str())
        .bind(id.as_str())
        .execute(&self.write)
        .await?;
        if done.rows_affected() == 0 {
            return Err(not_found("version", id));
        }
        Ok(())
    }

    async fn create_run(&self, run: &NewRun, queue: Option<&str>) -> Result<(Run, bool)> {
        let mut tx = self.begin().await?;
        if let Some(key) = &run.idempotency_key {
            if let Some(earlier) = run_by_idempotency_key(&mut *tx, &run.deployment_id, key).await?
            {
                return Ok((earlier, false));
            }
        }
        let row = insert_run(&mut tx, run, queue).await;
        match row {
            Ok(run) => {
                tx.commit().await?;
                Ok((run, true))
            }
            // Two submits with one key raced: the other one won; answer it.
            Err(e) => match (e, &run.idempotency_key) {
                (StoreError::Conflict(_), Some(key)) => {
                    drop(tx);
                    let earlier =
                        run_by_idempotency_key(&self.write, &run.deployment_id, key).await?;
                    Ok((
                        earlier.ok_or_else(|| not_found("run with idempotency key", key))?,
                        false,
                    ))
                }
                (e, _) => Err(e),
            },
        }
    }

    async fn get_run(&self, org: &OrganizationId, id: &RunId) -> Result<Run> {
        let sql = format!("SELECT {RUN_COLUMNS} FROM runs WHERE organization_id = $1 AND id = $2");
        let row = sqlx::query(&sql)
            .bind(org.as_str())
            .bind(id.as_str())
            .fetch_optional(&self.read)
            .await?
            .ok_or_else(|| not_found("run", id))?;
        run_from_row(&row)
    }

    async fn list_runs(
        &self,
        org: &OrganizationId,
        dep: &DeploymentId,
        trigger: Option<&TriggerId>,
        page: PageRequest,
    ) -> Result<Page<Run>> {
        let (cmp, order) = if page.forward {
            (">", "ASC")
        } else {
            ("<", "DESC")
        };
        let after = page
            .after
            .unwrap_or(if page.forward { 0 } else { i64::MAX });
        let trigger_clause = if trigger.is_some() {
            " AND trigger_id = $5"
        } else {
            ""
        };
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE organization_id = $1 AND deployment_id = $2 \
             AND seq {cmp} $3{trigger_clause} ORDER BY seq {order} LIMIT $4"
        );
        let mut query = sqlx::query(&sql)
            .bind(org.as_str())
            .bind(dep.as_str())
            .bind(after)
            .bind(page.limit as i64 + 1);
        if let Some(t) = trigger {
            query = query.bind(t.as_str());
        }
        let rows = query.fetch_all(&self.read).await?;
        let mut items = rows.iter().map(run_from_row).collect::<Result<Vec<_>>>()?;
        let more = items.len() > page.limit as usize;
        items.truncate(page.limit as usize);
        let next = if more {
            items.last().map(|r| r.seq)
        } else {
            None
        };
        Ok(Page { items, next })
    }

    async fn list_attempts(&self, run: &RunId) -> Result<Vec<RunAttempt>> {
        let rows = sqlx::query(
            "SELECT run_id, attempt, worker, started_at, running_at, finished_at, outcome, error \
             FROM run_attempts WHERE run_id = $1 ORDER BY attempt",
        )
        .bind(run.as_str())
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(RunAttempt {
                    run_id: RunId::parse(&row.try_get::<String, _>("run_id")?)?,
                    attempt: row.try_get::<i64, _>("attempt")? as i32,
                    worker: row.try_get("worker")?,
                    started_at: ts(row, "started_at")?,
                    running_at: opt_ts(row, "running_at")?,
                    finished_at: opt_ts(row, "finished_at")?,
                    outcome: row.try_get("outcome")?,
                    error: row.try_get("error")?,
                })
            })
            .collect()
    }

    async fn schedule(&self, now: Timestamp) -> Result<u64> {
        use RunStatus::*;
        Submitted.transition(Rejected)?;
        Submitted.transition(Pending)?;
        Pending.transition(Runnable)?;
        let now = micros(now);
        let mut tx = self.begin().await?;
        if self.dialect == Dialect::Postgres {
            // One scheduler at a time, so two never free the same queue twice.
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(SCHEDULER_LOCK)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query(
            "UPDATE runs SET status = 'REJECTED', modified_at = $1, finished_at = $1, \
             error = 'the run''s version was deleted or its code was never uploaded' \
             WHERE status = 'SUBMITTED' AND NOT EXISTS (SELECT 1 FROM versions v \
             WHERE v.id = runs.version_id AND v.archive IS NOT NULL)",
        )
        .bind(now)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE runs SET status = 'PENDING', modified_at = $1 WHERE status = 'SUBMITTED'",
        )
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let free = sqlx::query(
            "UPDATE runs SET status = 'RUNNABLE', modified_at = $1 \
             WHERE status = 'PENDING' AND queue IS NULL AND not_before <= $1",
        )
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        // A distributed queue runs one run at a time, in submission order:
        // only its oldest PENDING run may start, and only when none is active.
        let queued = sqlx::query(&format!(
            "UPDATE runs SET status = 'RUNNABLE', modified_at = $1 WHERE not_before <= $1 \
             AND seq IN (SELECT MIN(p.seq) FROM runs p WHERE p.status = 'PENDING' \
             AND p.queue IS NOT NULL AND NOT EXISTS (SELECT 1 FROM runs a \
             WHERE a.queue = p.queue AND (a.status = 'RUNNABLE' OR a.status IN {LEASED})) \
             GROUP BY p.queue)"
        ))
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(free + queued)
    }

    async fn claim(
        &self,
        worker: &str,
        limit: u32,
        ttl: Duration,
        now: Timestamp,
    ) -> Result<Vec<Lease>> {
        let mut tx = self.begin().await?;
        let rows = RUNS
            .claim(&mut tx, self.dialect, worker, limit, ttl, now)
            .await?;
        let now = micros(now);
        let mut leases = Vec::with_capacity(rows.len());
        for row in &rows {
            let run = run_from_row(row)?;
            sqlx::query(
                "INSERT INTO run_attempts (run_id, attempt, worker, started_at, outcome) \
                 VALUES ($1, $2, $3, $4, 'RUNNING')",
            )
            .bind(run.id.as_str())
            .bind(run.attempt as i64)
            .bind(worker)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            leases.push(Lease {
                attempt: run.attempt,
                token: run.lease_token,
                run,
            });
        }
        tx.commit().await?;
        leases.sort_by_key(|l| l.run.seq);
        Ok(leases)
    }

    async fn mark_running(&self, run: &RunId, token: i64, now: Timestamp) -> Result<RunStatus> {
        let mut tx = self.begin().await?;
        let moved = RUNS.mark_running(&mut tx, run.as_str(), token, now).await?;
        if let Some(attempt) = moved {
            sqlx::query(
                "UPDATE run_attempts SET running_at = $1 WHERE run_id = $2 AND attempt = $3",
            )
            .bind(micros(now))
            .bind(run.as_str())
            .bind(attempt)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            return Ok(RunStatus::Running);
        }
        let current = self.lock_run(&mut tx, run).await?;
        if current.lease_token != token || !current.status.is_leased() {
            return Err(StoreError::LeaseLost(run.to_string()));
        }
        Ok(current.status)
    }

    async fn heartbeat(
        &self,
        run: &RunId,
        token: i64,
        ttl: Duration,
        now: Timestamp,
    ) -> Result<RunStatus> {
        RUNS.heartbeat(&self.write, run.as_str(), token, ttl, now)
            .await
    }

    async fn finish(
        &self,
        run: &RunId,
        token: i64,
        outcome: &AttemptOutcome,
        retry: RetryPolicy,
        now: Timestamp,
    ) -> Result<RunStatus> {
        let mut tx = self.begin().await?;
        let next = self
            .finish_in(&mut tx, run, token, outcome, retry, now)
            .await?;
        tx.commit().await?;
        Ok(next)
    }

    async fn reap(&self, retry: RetryPolicy, now: Timestamp) -> Result<Vec<RunId>> {
        let mut tx = self.begin().await?;
        let rows = RUNS.expired(&mut tx, self.dialect, now).await?;
        let now = micros(now);
        let mut reaped = Vec::with_capacity(rows.len());
        for row in &rows {
            let run = run_from_row(row)?;
            let next = run
                .status
                .after_attempt(AttemptEnd::Lost, run.attempt, run.retry_count);
            run.status.transition(next)?;
            let error = lease::lost(run.attempt, run.lease_owner.as_deref());
            end_attempt(
                &mut tx,
                &run,
                next,
                AttemptEnd::Lost,
                Some(error),
                retry,
                now,
            )
            .await?;
            reaped.push(run.id);
        }
        tx.commit().await?;
        Ok(reaped)
    }

    async fn request_cancel(
        &self,
        org: &OrganizationId,
        id: &RunId,
        now: Timestamp,
    ) -> Result<Run> {
        let mut tx = self.begin().await?;
        let run = self.lock_run(&mut tx, id).await?;
        if &run.organization_id != org {
            return Err(not_found("run", id));
        }
        let Some(next) = run.status.on_cancel() else {
            return Ok(run);
        };
        run.status.transition(next)?;
        let finished = next.is_final().then_some(micros(now));
        let sql = format!(
            "UPDATE runs SET status = $1, modified_at = $2, finished_at = $3 \
             WHERE id = $4 AND status = $5 RETURNING {RUN_COLUMNS}"
        );
        let row = sqlx::query(&sql)
            .bind(next.as_str())
            .bind(micros(now))
            .bind(finished)
            .bind(id.as_str())
            .bind(run.status.as_str())
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        run_from_row(&row)
    }

    async fn append_logs(
        &self,
        run: &RunId,
        token: i64,
        attempt: i32,
        events: &[(Timestamp, String)],
    ) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin().await?;
        let sql = format!(
            "SELECT lease_token FROM runs WHERE id = $1{}",
            self.dialect.for_share()
        );
        let held: Option<i64> = sqlx::query_scalar(&sql)
            .bind(run.as_str())
            .fetch_optional(&mut *tx)
            .await?;
        if held != Some(token) {
            return Err(StoreError::LeaseLost(run.to_string()));
        }
        for chunk in events.chunks(200) {
            let mut sql =
                String::from("INSERT INTO log_events (run_id, attempt, ts, message) VALUES ");
            for i in 0..chunk.len() {
                let b = i * 2 + 3;
                if i > 0 {
                    sql.push_str(", ");
                }
                sql.push_str(&format!("($1, $2, ${b}, ${})", b + 1));
            }
            let mut query = sqlx::query(&sql).bind(run.as_str()).bind(attempt as i64);
            for (ts, message) in chunk {
                query = query.bind(micros(*ts)).bind(message.as_str());
            }
            query.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn read_logs(&self, run: &RunId, q: LogQuery) -> Result<Vec<LogEvent>> {
        let mut sql = String::from("SELECT seq, ts, message FROM log_events WHERE run_id = $1");
        let mut binds: Vec<i64> = Vec::new();
        let mut clause = |sql: &mut String, cond: &str, v: i64| {
            binds.push(v);
            sql.push_str(&format!(" AND {cond} ${}", binds.len() + 1));
        };
        if let Some(after) = q.after {
            clause(&mut sql, "seq >", after);
        }
        if let Some(before) = q.before {
            clause(&mut sql, "seq <", before);
        }
        if let Some(t) = q.start_time {
            clause(&mut sql, "ts >=", micros(t));
        }
        if let Some(t) = q.end_time {
            clause(&mut sql, "ts <=", micros(t));
        }
        sql.push_str(if q.descending {
            " ORDER BY seq DESC"
        } else {
            " ORDER BY seq ASC"
        });
        sql.push_str(&format!(" LIMIT {}", q.limit));
        let mut query = sqlx::query(&sql).bind(run.as_str());
        for b in binds {
            query = query.bind(b);
        }
        let rows = query.fetch_all(&self.read).await?;
        rows.iter()
            .map(|row| {
                Ok(LogEvent {
                    seq: row.try_get("seq")?,
                    timestamp: ts(row, "ts")?,
                    message: row.try_get("message")?,
                })
            })
            .collect()
    }
}

/// Inserts a SUBMITTED run inside `tx`.
async fn insert_run(
    tx: &mut Transaction<'static, Any>,
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
        .fetch_one(&mut **tx)
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
async fn end_attempt(
    tx: &mut Transaction<'static, Any>,
    run: &Run,
    next: RunStatus,
    end: AttemptEnd,
    error: Option<String>,
    retry: RetryPolicy,
    now: i64,
) -> Result<()> {
    let not_before = if next == RunStatus::Pending {
        now + retry.backoff(run.attempt).as_micros() as i64
    } else {
        now
    };
    let finished = next.is_final().then_some(now);
    sqlx::query(
        "UPDATE runs SET status = $1, lease_owner = NULL, lease_expires_at = NULL, \
         lease_token = lease_token + 1, not_before = $2, error = $3, modified_at = $4, \
         finished_at = $5 WHERE id = $6 AND lease_token = $7",
    )
    .bind(next.as_str())
    .bind(not_before)
    .bind(error.clone())
    .bind(now)
    .bind(finished)
    .bind(run.id.as_str())
    .bind(run.lease_token)
    .execute(&mut **tx)
    .await?;
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
