//! sluice's metadata store: one contract, [`MetadataStore`], and one SQL
//! implementation, [`SqlStore`], that speaks two dialects.
//!
//! - **SQLite** (the embedded default): WAL journal, one writer connection,
//!   every write transaction opened with `BEGIN IMMEDIATE` so that two
//!   processes (say `sluice serve` and an admin command) queue on the file
//!   lock instead of failing on a lock upgrade.
//! - **PostgreSQL** (scale-out): work is claimed with `FOR UPDATE SKIP
//!   LOCKED`; the scheduler's queue step runs under a transaction-scoped
//!   advisory lock, so several `sluice serve`/`sluice worker` processes share
//!   one store safely.
//!
//! Each dialect has its own migrations under `migrations/<dialect>/`. Every
//! list is keyset-paginated on a `seq` column (no OFFSET), so a page costs the
//! same at row 10 and row 1,000,000.
//!
//! The whole contract is proven by one conformance suite
//! (`tests/conformance.rs`) run against both backends.
//!
//! ## Leases and fencing
//!
//! A worker [`claim`](MetadataStore::claim)s a RUNNABLE run: the run moves to
//! STARTING, its attempt count and its `lease_token` go up by one, and the
//! lease expires unless [`heartbeat`](MetadataStore::heartbeat) renews it.
//! Every later write of that worker (running, logs, finish) presents the
//! token; a write with an old token is refused with [`StoreError::LeaseLost`].
//! [`reap`](MetadataStore::reap) takes back runs whose lease ran out, records
//! the attempt as LOST and retries or fails the run, and bumps the token so
//! the lost worker's late writes are refused.

mod error;
mod sql;

use std::time::Duration;

use async_trait::async_trait;
use sluice_domain::time::Timestamp;
use sluice_domain::*;

pub use error::StoreError;
pub use sql::{Dialect, SqlStore};

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Which log events to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogQuery {
    /// Events strictly after this seq (ascending) …
    pub after: Option<i64>,
    /// … or strictly before this seq (descending).
    pub before: Option<i64>,
    /// Newest first when true.
    pub descending: bool,
    pub start_time: Option<Timestamp>,
    pub end_time: Option<Timestamp>,
    pub limit: u32,
}

/// The metadata store's contract: everything sluice keeps, scoped by
/// organization, and the run engine's claim/lease/finish steps.
#[async_trait]
pub trait MetadataStore: Send + Sync + 'static {
    /// Which SQL dialect this store speaks (for messages and tests).
    fn dialect(&self) -> Dialect;

    // Organizations and users.
    async fn create_organization(&self, org: &Organization) -> Result<()>;
    async fn get_organization(&self, id: &OrganizationId) -> Result<Organization>;
    async fn create_user(&self, user: &User) -> Result<()>;
    async fn get_user(&self, id: &UserId) -> Result<User>;
    /// The first user of an organization, by creation.
    async fn first_user(&self, org: &OrganizationId) -> Result<Option<User>>;

    // Deployments and versions.
    async fn create_deployment(&self, dep: &Deployment) -> Result<()>;
    async fn get_deployment(&self, org: &OrganizationId, id: &DeploymentId) -> Result<Deployment>;
    async fn list_deployments(&self, org: &OrganizationId) -> Result<Vec<Deployment>>;
    async fn update_deployment(&self, dep: &Deployment) -> Result<()>;
    /// Deletes a deployment and its versions. Its runs stay readable by id.
    async fn delete_deployment(&self, org: &OrganizationId, id: &DeploymentId) -> Result<()>;
    async fn create_version(&self, ver: &Version) -> Result<()>;
    async fn get_version(
        &self,
        org: &OrganizationId,
        dep: &DeploymentId,
        id: &VersionId,
    ) -> Result<Version>;
    async fn list_versions(&self, org: &OrganizationId, dep: &DeploymentId)
        -> Result<Vec<Version>>;
    /// Records where a version's uploaded code lives.
    async fn set_version_archive(
        &self,
        id: &VersionId,
        archive: &str,
        now: Timestamp,
    ) -> Result<()>;
    async fn delete_version(
        &self,
        org: &OrganizationId,
        dep: &DeploymentId,
        id: &VersionId,
    ) -> Result<()>;

    // Runs.
    /// Stores a new SUBMITTED run. With an idempotency key already used for
    /// this deployment, stores nothing and answers the earlier run (`false`).
    async fn create_run(&self, run: &NewRun, queue: Option<&str>) -> Result<(Run, bool)>;
    async fn get_run(&self, org: &OrganizationId, id: &RunId) -> Result<Run>;
    async fn list_runs(
        &self,
        org: &OrganizationId,
        dep: &DeploymentId,
        trigger: Option<&TriggerId>,
        page: PageRequest,
    ) -> Result<Page<Run>>;
    async fn list_attempts(&self, run: &RunId) -> Result<Vec<RunAttempt>>;

    // The engine's steps.
    /// Moves SUBMITTED runs to PENDING (or REJECTED when their code is gone)
    /// and PENDING runs whose time has come and whose queue is free to
    /// RUNNABLE. Answers how many runs became RUNNABLE.
    async fn schedule(&self, now: Timestamp) -> Result<u64>;
    /// Claims up to `limit` RUNNABLE runs for `worker`, oldest first.
    async fn claim(
        &self,
        worker: &str,
        limit: u32,
        ttl: Duration,
        now: Timestamp,
    ) -> Result<Vec<Lease>>;
    /// STARTING → RUNNING. Answers the run's status after the call
    /// (CANCELING when a cancel came first).
    async fn mark_running(&self, run: &RunId, token: i64, now: Timestamp) -> Result<RunStatus>;
    /// Renews a lease; answers the run's status (CANCELING asks the worker to stop).
    async fn heartbeat(
        &self,
        run: &RunId,
        token: i64,
        ttl: Duration,
        now: Timestamp,
    ) -> Result<RunStatus>;
    /// Ends an attempt; retries, fails, succeeds or cancels the run.
    async fn finish(
        &self,
        run: &RunId,
        token: i64,
        outcome: &AttemptOutcome,
        retry: RetryPolicy,
        now: Timestamp,
    ) -> Result<RunStatus>;
    /// Takes back runs whose lease expired; answers them.
    async fn reap(&self, retry: RetryPolicy, now: Timestamp) -> Result<Vec<RunId>>;
    /// Cancels a run: waiting runs become CANCELLED at once, running ones
    /// CANCELING; a run already stopping or final is answered unchanged.
    async fn request_cancel(
        &self,
        org: &OrganizationId,
        run: &RunId,
        now: Timestamp,
    ) -> Result<Run>;

    // Logs.
    /// Appends log lines of the attempt holding `token`.
    async fn append_logs(
        &self,
        run: &RunId,
        token: i64,
        attempt: i32,
        events: &[(Timestamp, String)],
    ) -> Result<()>;
    async fn read_logs(&self, run: &RunId, query: LogQuery) -> Result<Vec<LogEvent>>;
}

/// Opens the store a URL names: `sqlite://path/to/file.db` or
/// `postgres://user@host/db`, and brings its schema up to date.
pub async fn open(url: &str) -> Result<SqlStore> {
    let store = SqlStore::connect(url).await?;
    store.migrate().await?;
    Ok(store)
}
