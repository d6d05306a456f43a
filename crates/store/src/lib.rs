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
/// organization, one smaller contract per subject.
#[async_trait]
pub trait MetadataStore:
    AccountStore
    + DeploymentStore
    + RunStore
    + DatalakeStore
    + ImportStore
    + SpaceStore
    + ActionStore
    + ApiSourceStore
{
    /// Which SQL dialect this store speaks (for messages and tests).
    fn dialect(&self) -> Dialect;

    /// Whether the store answers: one round trip on each pool.
    async fn ping(&self) -> Result<()>;

    /// The work not yet ended, for the metrics: how much of each kind is
    /// in each status, runs waiting per queue, trigger events pending.
    async fn open_work(&self) -> Result<OpenWork>;

    /// The connections the store holds: (open, idle).
    fn pool_use(&self) -> (u32, u32);

    /// Where processes sharing this store hear each other's wake-ups
    /// (PostgreSQL: `LISTEN` there, see [`WakeListener`]); `None` for a
    /// store one process owns (SQLite), where waking in-process is enough.
    fn wake_url(&self) -> Option<&str>;

    /// Sends the wake-up `what` (the engine's: the loops' name and the
    /// sending process) to every process listening (PostgreSQL: `NOTIFY`);
    /// nothing elsewhere.
    async fn wake(&self, what: &str) -> Result<()>;
}

/// The channel wake-ups travel on.
pub const WAKE_CHANNEL: &str = "sluice_wake";

/// Hears the wake-ups other processes send through a PostgreSQL store.
pub struct WakeListener(sqlx::postgres::PgListener);

impl WakeListener {
    pub async fn connect(url: &str) -> Result<WakeListener> {
        let mut l = sqlx::postgres::PgListener::connect(url).await?;
        l.listen(WAKE_CHANNEL).await?;
        Ok(WakeListener(l))
    }

    /// The next wake-up, as [`MetadataStore::wake`] sent it.
    pub async fn next(&mut self) -> Result<String> {
        Ok(self.0.recv().await?.payload().to_owned())
    }
}

/// See [`MetadataStore::open_work`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OpenWork {
    /// (kind — run, query, action_run, api_run —, status, how many).
    pub by_status: Vec<(String, String, i64)>,
    /// (queue — `default` for none —, runs waiting to start).
    pub queued: Vec<(String, i64)>,
    pub events_pending: i64,
}

/// The server's secrets, organizations and their users.
#[async_trait]
pub trait AccountStore: Send + Sync + 'static {
    /// The server secret `name`: the stored one, or `candidate`, stored
    /// now when there was none (the first of racing processes wins; all
    /// answer the same).
    async fn server_secret(&self, name: &str, candidate: &str) -> Result<String>;

    // Organizations and users.
    async fn create_organization(&self, org: &Organization) -> Result<()>;
    async fn get_organization(&self, id: &OrganizationId) -> Result<Organization>;
    /// Whether any organization exists (a new store has none).
    async fn any_organization(&self) -> Result<bool>;
    async fn create_user(&self, user: &User) -> Result<()>;
    async fn get_user(&self, id: &UserId) -> Result<User>;
    /// Moves the user's token generation on (every token signed before stops
    /// working); answers the new generation.
    async fn revoke_tokens(&self, id: &UserId) -> Result<i64>;
    /// Every user of an organization, by creation.
    async fn users_of(&self, org: &OrganizationId) -> Result<Vec<User>>;
    /// The first user of an organization, by creation.
    async fn first_user(&self, org: &OrganizationId) -> Result<Option<User>>;
}

/// Deployments and their versions.
#[async_trait]
pub trait DeploymentStore: Send + Sync + 'static {
    async fn create_deployment(&self, dep: &Deployment) -> Result<()>;
    async fn get_deployment(&self, org: &OrganizationId, id: &DeploymentId) -> Result<Deployment>;
    async fn list_deployments(&self, org: &OrganizationId) -> Result<Vec<Deployment>>;
    /// Saves a deployment's name, description and environment.
    async fn update_deployment(&self, dep: &Deployment) -> Result<()>;
    /// Sets a deployment's run limits (apart from its other fields, so an
    /// edit made at the same time through the API cannot undo them).
    async fn set_deployment_limits(
        &self,
        org: &OrganizationId,
        id: &DeploymentId,
        limits: &RunLimits,
        now: Timestamp,
    ) -> Result<()>;
    /// Deletes a deployment and its versions. Its runs stay readable by id.
    async fn delete_deployment(&self, org: &OrganizationId, id: &DeploymentId) -> Result<()>;
    async fn create_version(&self, ver: &Version) -> Result<()>;
    /// A deployment and one of its versions in one read (every run's way
    /// in and out takes both): the version is None when the deployment
    /// has no such version; a missing deployment is [`StoreError::NotFound`].
    async fn get_deployment_version(
        &self,
        org: &OrganizationId,
        dep: &DeploymentId,
        ver: &VersionId,
    ) -> Result<(Deployment, Option<Version>)>;
    async fn get_version(
        &self,
        org: &OrganizationId,
        dep: &DeploymentId,
        id: &VersionId,
    ) -> Result<Version>;
    async fn list_versions(&self, org: &OrganizationId, dep: &DeploymentId)
        -> Result<Vec<Version>>;
    /// Records where a version's uploaded code lives, once: a version that
    /// has code already is a [`StoreError::Conflict`] (code is immutable).
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
}

/// Runs, the run engine's steps (schedule, claim under a lease, renew,
/// finish, reap, cancel) and runs' logs.
#[async_trait]
pub trait RunStore: Send + Sync + 'static {
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
    /// Ends an attempt; retries, fails, succeeds or cancels the run. The
    /// attempt's last log lines, `tail`, are stored with its end (one
    /// transaction fewer for a short run than writing them first).
    async fn finish(
        &self,
        run: &RunId,
        token: i64,
        outcome: &AttemptOutcome,
        retry: RetryPolicy,
        now: Timestamp,
        tail: &[(Timestamp, String)],
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

/// Which files of a channel to list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileQuery {
    pub page: PageRequest,
    /// Files uploaded at or after this time …
    pub from: Option<Timestamp>,
    /// … and before this one.
    pub to: Option<Timestamp>,
}

/// Datalake channels and files, triggers, and the trigger event ledger.
///
/// A file's arrival is written as one PENDING [`TriggerEvent`] per live
/// trigger on its channel in the transaction that stores the file, so no
/// acknowledged file is ever without its events. The dispatcher then turns
/// each event into its run with [`dispatch_event`](DatalakeStore::dispatch_event),
/// which moves the event and creates the run in one transaction: whoever
/// does it first wins, any other dispatcher finds the event taken.
#[async_trait]
pub trait DatalakeStore: Send + Sync + 'static {
    async fn create_channel(&self, channel: &Channel) -> Result<()>;
    /// A channel by id alone: file paths (`/channels/{id}/…`) name no organization.
    async fn get_channel(&self, id: &ChannelId) -> Result<Channel>;
    /// An organization's channels, oldest first; answers whether more follow.
    async fn list_channels(
        &self,
        org: &OrganizationId,
        include_archived: bool,
        offset: u32,
        limit: u32,
    ) -> Result<(Vec<Channel>, bool)>;
    /// Saves name, description, archived and updated_at.
    async fn update_channel(&self, channel: &Channel) -> Result<()>;

    /// Stores a file's metadata and its trigger events, in one transaction.
    /// Answers how many events (runs to come) the file made.
    async fn put_file(&self, file: &DatalakeFile) -> Result<u64>;
    async fn get_file(&self, channel: &ChannelId, id: &FileId) -> Result<DatalakeFile>;
    async fn list_files(&self, channel: &ChannelId, query: FileQuery)
        -> Result<Page<DatalakeFile>>;
    /// Removes a file's metadata and answers it (its bytes are the caller's).
    async fn delete_file(&self, channel: &ChannelId, id: &FileId) -> Result<DatalakeFile>;
    async fn set_file_metadata(
        &self,
        channel: &ChannelId,
        id: &FileId,
        metadata: &std::collections::BTreeMap<String, String>,
    ) -> Result<DatalakeFile>;

    async fn create_trigger(&self, trigger: &Trigger) -> Result<()>;
    /// A live trigger of a deployment.
    async fn get_trigger(
        &self,
        org: &OrganizationId,
        dep: &DeploymentId,
        id: &TriggerId,
    ) -> Result<Trigger>;
    /// A trigger by id, deleted or not (the engine's view).
    async fn find_trigger(&self, id: &TriggerId) -> Result<Trigger>;
    async fn list_triggers(&self, org: &OrganizationId, dep: &DeploymentId)
        -> Result<Vec<Trigger>>;
    /// Marks a trigger deleted and its PENDING events SKIPPED, in one transaction.
    async fn delete_trigger(
        &self,
        org: &OrganizationId,
        dep: &DeploymentId,
        id: &TriggerId,
        now: Timestamp,
    ) -> Result<()>;

    /// A trigger's events, keyset-paged like runs.
    async fn list_trigger_events(
        &self,
        trigger: &TriggerId,
        page: PageRequest,
    ) -> Result<Page<TriggerEvent>>;
    /// PENDING events, oldest first: the dispatcher's work.
    async fn pending_events(&self, limit: u32) -> Result<Vec<TriggerEvent>>;
    /// Turns a PENDING event into `run`, in one transaction. Answers false,
    /// creating nothing, when the event is no longer PENDING (another
    /// dispatcher took it, or its trigger was deleted).
    async fn dispatch_event(
        &self,
        event: i64,
        run: &NewRun,
        queue: Option<&str>,
        now: Timestamp,
    ) -> Result<bool>;
    /// Marks a PENDING event SKIPPED, saying why.
    async fn skip_event(&self, event: i64, note: &str, now: Timestamp) -> Result<bool>;

    /// [`MetadataStore::finish`], and when the run SUCCEEDS, `output` stored
    /// as a new file (with its own trigger events) in the same transaction:
    /// a run's output exists exactly when its success does.
    #[allow(clippy::too_many_arguments)]
    async fn finish_with_output(
        &self,
        run: &RunId,
        token: i64,
        outcome: &AttemptOutcome,
        retry: RetryPolicy,
        now: Timestamp,
        tail: &[(Timestamp, String)],
        output: &DatalakeFile,
    ) -> Result<RunStatus>;
}

/// Which import jobs to list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobFilter {
    pub organization: OrganizationId,
    /// Only this space's jobs.
    pub space: Option<String>,
    /// Jobs whose name or id contains this (any case).
    pub search: Option<String>,
    pub include_deleted: bool,
}

/// What a page of a source's API runs holds: its filters, its order, and
/// where the previous page ended.
#[derive(Debug, Clone)]
pub struct ApiRunPage {
    pub run_type: Option<api_source::RunType>,
    /// Any of these (empty: any status).
    pub statuses: Vec<RunStatus>,
    pub sort: api_source::RunSort,
    pub ascending: bool,
    /// The previous page's last row: (sort key, seq).
    pub after: Option<(i64, i64)>,
    pub limit: u32,
    /// Runs under way last until now (sorting by duration).
    pub now: Timestamp,
}

/// A run of a page: with its count of messages (its tasks' and its
/// error) and its sort key (for the next page's cursor).
#[derive(Debug, Clone, PartialEq)]
pub struct ApiRunRow {
    pub run: api_source::ApiRun,
    pub messages: i64,
    pub key: i64,
}

/// How a query's attempt ended.
#[derive(Debug, Clone, PartialEq)]
pub enum QueryOutcome {
    Succeeded {
        records: i64,
        window_start: Option<String>,
        window_end: Option<String>,
    },
    /// Failed, or stopped after a cancel (the query then ends CANCELLED).
    Failed { error: String },
}

/// Table import jobs, their queries (runs of a job) and the queries' tasks.
///
/// Queries move through the one run state machine. The scheduler makes a
/// query for each active job whose `next_query_at` has come, moving that
/// time on in the same transaction (whoever moves it makes the query); a
/// worker claims RUNNABLE queries under a lease with a fencing token, like
/// runs; [`reap_queries`](ImportStore::reap_queries) gives a lost worker's
/// query back to the workers (at most three attempts in all). Loading a
/// window twice is prevented in the destination (its load ledger), not
/// here.
#[async_trait]
pub trait ImportStore: Send + Sync + 'static {
    /// Stores a job; another live job with its `destination_key` is a
    /// [`StoreError::Conflict`] naming that job.
    async fn create_job(&self, job: &ImportJob) -> Result<()>;
    /// The live (not deleted) job that loads the table `destination_key`
    /// names, if any.
    async fn job_loading(&self, destination_key: &str) -> Result<Option<ImportJob>>;
    /// Declares a source for an organization's jobs; a taken name is a
    /// [`StoreError::Conflict`].
    async fn add_source(&self, grant: &SourceGrant) -> Result<()>;
    /// The sources declared for an organization, by name.
    async fn sources_of(&self, org: &OrganizationId) -> Result<Vec<SourceGrant>>;
    /// Takes a source back (jobs made with it keep their connection).
    async fn remove_source(&self, org: &OrganizationId, name: &str) -> Result<()>;
    /// A job by id, deleted or not; the caller checks its organization.
    async fn find_job(&self, id: &JobId) -> Result<ImportJob>;
    async fn list_jobs(&self, filter: &JobFilter, page: PageRequest) -> Result<Page<ImportJob>>;
    async fn count_jobs(&self, filter: &JobFilter) -> Result<i64>;
    /// Saves a job; a job no longer active has its waiting queries CANCELLED
    /// in the same transaction.
    async fn update_job(&self, job: &ImportJob) -> Result<()>;
    /// Makes the queries of the active jobs that are due (and have none
    /// open), RUNNABLE, and moves each job's next query time on.
    async fn schedule_queries(&self, now: Timestamp) -> Result<Vec<Query>>;
    /// Stores a new query of an active job (refused with Conflict when the
    /// job is paused or deleted). With `lease`, the query is made already
    /// claimed by its `lease_owner` (status STARTING) for that long.
    async fn create_query(&self, query: &Query, lease: Option<Duration>) -> Result<Query>;
    async fn get_query(&self, org: &OrganizationId, id: &QueryId) -> Result<Query>;
    async fn list_queries(&self, job: &JobId, page: PageRequest) -> Result<Page<Query>>;
    /// (succeeded, failed, not yet ended) queries of a job.
    async fn query_counts(&self, job: &JobId) -> Result<(i64, i64, i64)> {
        let mut counts = self.query_counts_of(std::slice::from_ref(job)).await?;
        Ok(counts.remove(job).unwrap_or_default())
    }
    /// The same for several jobs in one look (a page of a list); a job
    /// without queries is absent.
    async fn query_counts_of(
        &self,
        jobs: &[JobId],
    ) -> Result<std::collections::HashMap<JobId, (i64, i64, i64)>>;
    async fn claim_queries(
        &self,
        worker: &str,
        limit: u32,
        ttl: Duration,
        now: Timestamp,
    ) -> Result<Vec<Query>>;
    /// STARTING → RUNNING; answers the status (CANCELING when cancel was asked).
    async fn query_running(&self, id: &QueryId, token: i64, now: Timestamp) -> Result<RunStatus>;
    /// Renews the lease; answers the status (CANCELING asks the worker to stop).
    async fn heartbeat_query(
        &self,
        id: &QueryId,
        token: i64,
        ttl: Duration,
        now: Timestamp,
    ) -> Result<RunStatus>;
    /// Records the window a query is loading, while it runs.
    async fn set_query_window(
        &self,
        id: &QueryId,
        token: i64,
        start: Option<&str>,
        end: Option<&str>,
    ) -> Result<()>;
    async fn finish_query(
        &self,
        id: &QueryId,
        token: i64,
        outcome: &QueryOutcome,
        now: Timestamp,
    ) -> Result<RunStatus>;
    async fn cancel_query(
        &self,
        org: &OrganizationId,
        id: &QueryId,
        now: Timestamp,
    ) -> Result<Query>;
    async fn reap_queries(&self, now: Timestamp) -> Result<Vec<QueryId>>;
    /// Gives a query's lease back at shutdown (RUNNABLE at once); answers
    /// whether it still held it.
    async fn hand_back_query(&self, id: &QueryId, token: i64, now: Timestamp) -> Result<bool>;
    /// Writes (or rewrites) one task of a leased query.
    async fn put_task(&self, task: &QueryTask, token: i64) -> Result<()>;
    async fn list_tasks(&self, query: &QueryId) -> Result<Vec<QueryTask>>;
}

/// Spaces, their models and API keys (the Arize-style importer's GraphQL face).
#[async_trait]
pub trait SpaceStore: Send + Sync + 'static {
    /// Stores a space; a name taken in the organization is a Conflict.
    async fn create_space(&self, space: &Space) -> Result<()>;
    /// The organization's default space, made on first need.
    async fn default_space(&self, org: &OrganizationId, now: Timestamp) -> Result<Space>;
    async fn get_space(&self, id: &SpaceId) -> Result<Space>;
    /// An organization's spaces whose name contains `search` (any case).
    async fn list_spaces(
        &self,
        org: &OrganizationId,
        search: Option<&str>,
        page: PageRequest,
    ) -> Result<Page<Space>>;
    /// The model named `name` in a space, made with `model_type` when new.
    async fn model_for(
        &self,
        org: &OrganizationId,
        space: &SpaceId,
        name: &str,
        model_type: &str,
        now: Timestamp,
    ) -> Result<Model>;
    async fn get_model(&self, id: &ModelId) -> Result<Model>;
    async fn list_models(
        &self,
        space: &SpaceId,
        search: Option<&str>,
        page: PageRequest,
    ) -> Result<Page<Model>>;
    async fn create_api_key(&self, key: &ApiKey) -> Result<()>;
    async fn find_api_key(&self, key_hash: &str) -> Result<Option<ApiKey>>;
}

/// Which runs of a configuration to list (newest first).
#[derive(Debug, Clone, Default)]
pub struct ActionRunFilter {
    pub configuration_type: String,
    pub api_id: String,
    /// Only runs the API reports in this status.
    pub status: Option<action::ActionStatus>,
    /// Only runs whose logical date (or start) is this day.
    pub execution_date: Option<action::NaiveDate>,
    /// Only runs older than this one (its `seq`): the next page.
    pub before: Option<i64>,
    pub limit: u32,
}

/// How a run's attempt ended.
#[derive(Debug, Clone, PartialEq)]
pub enum ActionOutcome {
    /// `warned`: a `warning` task failed; `stopped`: a `stop` task failed
    /// (workflows awaiting the run do not count it).
    Succeeded {
        warned: bool,
        stopped: bool,
    },
    Failed {
        error: String,
    },
    /// A storage-to-storage file no template matched: FAILED, reported
    /// NO_MATCH.
    NoMatch {
        error: String,
    },
}

/// The Tailer-style action API's records: account codes, warehouses,
/// deployed configurations (every version kept), their runs — leased work,
/// as runs and import queries are — and the runs' tasks.
#[async_trait]
pub trait ActionStore: Send + Sync + 'static {
    /// Gives `org` its account code (unique across organizations).
    async fn set_account(&self, org: &OrganizationId, account: &str) -> Result<()>;
    async fn account_of(&self, org: &OrganizationId) -> Result<Option<String>>;

    /// Adds a warehouse, or replaces the one of that name.
    async fn put_warehouse(&self, warehouse: &action::Warehouse) -> Result<()>;
    async fn warehouses_of(&self, org: &OrganizationId) -> Result<Vec<action::Warehouse>>;
    async fn remove_warehouse(&self, org: &OrganizationId, name: &str) -> Result<()>;

    /// Adds a bucket (what a table-to-storage file's `gcs_dest_bucket`
    /// stands for), or replaces the one of that name.
    async fn put_bucket(&self, bucket: &NamedConnection) -> Result<()>;
    async fn buckets_of(&self, org: &OrganizationId) -> Result<Vec<NamedConnection>>;
    async fn remove_bucket(&self, org: &OrganizationId, name: &str) -> Result<()>;

    /// Stores a configuration's new version (the next number) and makes it
    /// the current one, in one transaction; answers the version.
    async fn deploy_configuration(&self, config: &action::Deployed) -> Result<i64>;
    async fn get_configuration(
        &self,
        org: &OrganizationId,
        configuration_type: &str,
        api_id: &str,
    ) -> Result<action::Deployed>;
    /// The body of one version.
    async fn configuration_version(
        &self,
        org: &OrganizationId,
        configuration_type: &str,
        api_id: &str,
        version: i64,
    ) -> Result<serde_json::Value>;
    async fn list_configurations(&self, org: &OrganizationId) -> Result<Vec<action::Deployed>>;
    async fn set_configuration_status(
        &self,
        org: &OrganizationId,
        configuration_type: &str,
        api_id: &str,
        activated: bool,
        archived: bool,
        now: Timestamp,
    ) -> Result<action::Deployed>;
    /// Every activated, not archived configuration of a type (the
    /// storage-to-storage ones a runner watches).
    async fn active_configurations(
        &self,
        configuration_type: &str,
    ) -> Result<Vec<action::Deployed>>;
    /// Configurations (activated, not archived) whose next scheduled run
    /// is due at `now`.
    async fn due_configurations(&self, now: Timestamp) -> Result<Vec<action::Deployed>>;
    /// Creates a scheduled run and moves its configuration's next time
    /// from `due` to `next`, in one transaction — only when the next time is
    /// still `due` (another scheduler did not take it): answers whether it
    /// did.
    async fn schedule_action_run(
        &self,
        run: &action::ActionRun,
        due: Timestamp,
        next: Option<Timestamp>,
    ) -> Result<bool>;
    /// Makes the first schedule time of a configuration.
    async fn set_next_run(
        &self,
        org: &OrganizationId,
        configuration_type: &str,
        api_id: &str,
        at: Option<Timestamp>,
    ) -> Result<()>;

    /// Stores a new run (PENDING).
    async fn create_action_run(&self, run: &action::ActionRun) -> Result<()>;
    /// Records that a storage-to-storage source holds each file (its key,
    /// and its fingerprint: size and time) and stores each one's run, in
    /// one transaction — but for files recorded already: answers how many
    /// were new.
    async fn record_arrivals(
        &self,
        arrivals: &[(action::ActionRun, String, String)],
    ) -> Result<usize>;
    /// The (key, fingerprint) of every file recorded for a configuration.
    async fn arrivals_of(
        &self,
        org: &OrganizationId,
        api_id: &str,
    ) -> Result<std::collections::HashSet<(String, String)>>;
    async fn get_action_run(&self, org: &OrganizationId, id: &str) -> Result<action::ActionRun>;
    async fn list_action_runs(
        &self,
        org: &OrganizationId,
        filter: &ActionRunFilter,
    ) -> Result<Vec<action::ActionRun>>;
    /// Runs of `org` the API reports in `status`, newest first.
    async fn action_runs_in(
        &self,
        org: &OrganizationId,
        status: action::ActionStatus,
        limit: u32,
    ) -> Result<Vec<action::ActionRun>>;
    /// Sets the status the API reports (`CHECKED` on a failed run).
    async fn report_action_run(
        &self,
        org: &OrganizationId,
        id: &str,
        status: action::ActionStatus,
        now: Timestamp,
    ) -> Result<action::ActionRun>;
    /// Moves PENDING runs to RUNNABLE while their configuration has fewer
    /// than `max_active_runs` runs under way; answers how many moved.
    async fn queue_action_runs(&self, now: Timestamp) -> Result<u64>;
    async fn claim_action_runs(
        &self,
        worker: &str,
        limit: u32,
        ttl: Duration,
        now: Timestamp,
    ) -> Result<Vec<action::ActionRun>>;
    async fn action_run_running(&self, id: &str, token: i64, now: Timestamp) -> Result<RunStatus>;
    async fn heartbeat_action_run(
        &self,
        id: &str,
        token: i64,
        ttl: Duration,
        now: Timestamp,
    ) -> Result<RunStatus>;
    /// Gives an action run's lease back at shutdown (RUNNABLE at once).
    async fn hand_back_action_run(&self, id: &str, token: i64, now: Timestamp) -> Result<bool>;
    /// Ends a run's attempt. A success counts, in the same transaction,
    /// for every workflow (activated, not archived) awaiting its job; a
    /// workflow whose awaited jobs have all succeeded since it last fired
    /// fires: its target's run is made and its count starts again.
    async fn finish_action_run(
        &self,
        id: &str,
        token: i64,
        outcome: &ActionOutcome,
        now: Timestamp,
    ) -> Result<RunStatus>;
    /// Runs whose lease expired: tried again (their tasks start over) or
    /// failed after the last attempt; answers their ids.
    async fn reap_action_runs(&self, now: Timestamp) -> Result<Vec<String>>;
    /// Forgets which of a workflow's awaited jobs succeeded, as when it was
    /// just deployed.
    async fn reset_workflow(&self, org: &OrganizationId, workflow_id: &str) -> Result<()>;
    /// Resets a workflow on its schedule and moves its next reset from
    /// `due` to `next`, in one transaction — only when the next time is
    /// still `due`: answers whether it did.
    async fn reset_workflow_at(
        &self,
        org: &OrganizationId,
        workflow_id: &str,
        due: Timestamp,
        next: Option<Timestamp>,
    ) -> Result<bool>;
    /// The awaited jobs of a workflow that succeeded since it last fired:
    /// (job id, run id, when).
    async fn workflow_successes(
        &self,
        org: &OrganizationId,
        workflow_id: &str,
    ) -> Result<Vec<(String, String, Timestamp)>>;
    /// Writes a task's state, under the run's lease.
    async fn put_action_task(&self, task: &action::ActionTask, token: i64) -> Result<()>;
    async fn list_action_tasks(&self, run_id: &str) -> Result<Vec<action::ActionTask>>;
}

/// Opens the store a URL names: `sqlite://path/to/file.db` or
/// `postgres://user@host/db`, and brings its schema up to date.
///
/// Two processes opening one new SQLite file at once (say `sluice serve`
/// and an admin command) may find it locked while the other switches it to
/// WAL or migrates it, a moment SQLite's busy wait does not cover: opening
/// tries again for up to ten seconds.
pub async fn open(url: &str) -> Result<SqlStore> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let opened = async {
            let store = SqlStore::connect(url).await?;
            store.migrate().await?;
            Ok::<_, StoreError>(store)
        }
        .await;
        match opened {
            Err(StoreError::Database(e))
                if e.to_string().contains("database is locked")
                    && std::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => return other,
        }
    }
}

/// Opens a store that already exists, as [`open`] does, but never makes a
/// new one: a SQLite file that is not there, or a PostgreSQL database
/// without sluice's tables, is [`StoreError::NoStore`].
pub async fn open_existing(url: &str) -> Result<SqlStore> {
    if let Some(rest) = url
        .strip_prefix("sqlite://")
        .or(url.strip_prefix("sqlite:"))
    {
        let file = rest.split('?').next().unwrap_or_default();
        if file != ":memory:" && !std::path::Path::new(file).exists() {
            return Err(StoreError::NoStore(format!("no sluice store at {file}")));
        }
        return open(url).await;
    }
    let store = SqlStore::connect(url).await?;
    if !store.is_initialized().await? {
        return Err(StoreError::NoStore(
            "no sluice store in this database (it has no sluice tables)".into(),
        ));
    }
    store.migrate().await?;
    Ok(store)
}

/// How an API run's attempt ended.
#[derive(Debug, Clone, PartialEq)]
pub enum ApiOutcome {
    /// Its tables are live: a data load is recorded with it.
    Succeeded { tables: i64, records: i64 },
    /// Failed (or, when a cancel came, cancelled).
    Failed { error: String },
}

/// HTTP API sources and their runs (leased work, as action runs are), the
/// runs' tasks, tables and data loads.
#[async_trait]
pub trait ApiSourceStore: Send + Sync + 'static {
    /// Stores a source; `replace`: it must exist (an update), else it must
    /// not ([`StoreError::Conflict`]).
    async fn put_api_source(&self, source: &api_source::ApiSource, replace: bool) -> Result<()>;
    async fn get_api_source(
        &self,
        org: &OrganizationId,
        name: &str,
    ) -> Result<api_source::ApiSource>;
    async fn list_api_sources(&self, org: &OrganizationId) -> Result<Vec<api_source::ApiSource>>;
    /// Deletes a source and its runs' records; refused while a run of it
    /// is active.
    async fn delete_api_source(&self, org: &OrganizationId, name: &str) -> Result<()>;

    /// Makes a run of `source`: waiting to start, or REJECTED with
    /// [`api_source::REJECTED_MESSAGE`] when another run of it is active —
    /// decided by the store's unique index, however many processes start
    /// runs at once.
    async fn start_api_run(
        &self,
        org: &OrganizationId,
        source: &str,
        run_type: api_source::RunType,
        retry_of: Option<&str>,
        now: Timestamp,
    ) -> Result<api_source::ApiRun>;
    async fn get_api_run(&self, org: &OrganizationId, id: &str) -> Result<api_source::ApiRun>;
    /// A source's runs, newest first (at most `limit`).
    async fn list_api_runs(
        &self,
        org: &OrganizationId,
        source: &str,
        limit: u32,
    ) -> Result<Vec<api_source::ApiRun>>;
    /// A page of a source's runs, filtered, sorted and paged in the store
    /// (a keyset cursor: the previous page's last sort key and seq).
    async fn page_api_runs(
        &self,
        org: &OrganizationId,
        source: &str,
        page: &ApiRunPage,
    ) -> Result<Vec<ApiRunRow>>;
    /// Cancels a run: one waiting to start is CANCELLED at once, a running
    /// one goes CANCELING until its worker stops. Answers the new status;
    /// [`StoreError::Conflict`] when it is already canceling or ended.
    async fn cancel_api_run(
        &self,
        org: &OrganizationId,
        id: &str,
        now: Timestamp,
    ) -> Result<RunStatus>;

    async fn claim_api_runs(
        &self,
        worker: &str,
        limit: u32,
        ttl: Duration,
        now: Timestamp,
    ) -> Result<Vec<api_source::ApiRun>>;
    /// Claims run `id` itself when it waits to start (None: it does not).
    async fn claim_api_run(
        &self,
        id: &str,
        worker: &str,
        ttl: Duration,
        now: Timestamp,
    ) -> Result<Option<api_source::ApiRun>>;
    async fn api_run_running(&self, id: &str, token: i64, now: Timestamp) -> Result<RunStatus>;
    async fn heartbeat_api_run(
        &self,
        id: &str,
        token: i64,
        ttl: Duration,
        now: Timestamp,
    ) -> Result<RunStatus>;
    /// Gives an API run's lease back at shutdown (RUNNABLE at once).
    async fn hand_back_api_run(&self, id: &str, token: i64, now: Timestamp) -> Result<bool>;
    async fn finish_api_run(
        &self,
        id: &str,
        token: i64,
        outcome: &ApiOutcome,
        now: Timestamp,
    ) -> Result<RunStatus>;
    /// Gives back the runs of lost workers (tried again up to three times).
    async fn reap_api_runs(&self, now: Timestamp) -> Result<Vec<String>>;

    /// Writes a task (by run and position) while the lease is `token`'s.
    async fn put_api_task(&self, task: &api_source::ApiTask, token: i64) -> Result<()>;
    /// Removes a run's tasks from `from_position` on (an extraction
    /// starting again), while the lease is `token`'s.
    async fn clear_api_tasks(&self, run_id: &str, from_position: i64, token: i64) -> Result<()>;
    async fn api_tasks(&self, run_id: &str) -> Result<Vec<api_source::ApiTask>>;
    async fn put_api_run_table(&self, table: &api_source::ApiRunTable) -> Result<()>;
    async fn api_run_tables(&self, run_id: &str) -> Result<Vec<api_source::ApiRunTable>>;
    async fn api_data_load(&self, run_id: &str) -> Result<Option<api_source::DataLoad>>;
}
