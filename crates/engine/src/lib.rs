//! sluice's engine: the control service every face calls, and the run engine
//! that moves runs from SUBMITTED to a final status.
//!
//! - [`control`]: the use cases (deploy, submit, cancel, read logs, …).
//! - [`dispatcher`]: turns each file arrival a trigger watches into its run.
//! - [`scheduler`]: admits submitted runs, frees queues, reaps lost leases.
//! - [`worker`]: claims runnable runs under a lease and runs their code.
//! - [`importer`]: makes table import jobs' queries when they are due,
//!   claims them under a lease and runs the data path.
//! - [`api_runs`]: runs HTTP API sources' runs (extraction, consolidation,
//!   ingestion) under leases.
//! - [`secrets`]: connection URLs sealed at rest.
//! - [`code`], [`blob`], [`auth`]: archives, object storage, credentials.
//!
//! In `sluice serve` the scheduler and a worker run beside the API in one
//! process, woken at once through [`Wakers`]; `sluice worker` runs only a
//! worker, which polls a shared PostgreSQL store.

pub mod actions;
pub mod api_runs;
pub mod auth;
pub mod blob;
pub mod bus;
pub mod code;
pub mod control;
pub mod dispatcher;
pub mod forkserver;
pub mod importer;
mod lease;
pub mod memory;
pub mod metrics;
pub mod sandbox;
pub mod scheduler;
pub mod secrets;
pub mod shutdown;
pub mod worker;

use std::path::PathBuf;
use std::time::Duration;

use sluice_domain::{DeploymentId, RetryPolicy};
use tokio::sync::Notify;

/// In-process wake-ups: a submit wakes the scheduler at once, a scheduled
/// run wakes the worker, a finished run wakes the scheduler (its queue may
/// be free). Processes sharing a PostgreSQL store wake each other too
/// (`NOTIFY`, relayed by [`bus::relay`]); polling stays the fallback.
pub struct Wakers {
    pub scheduler: Notify,
    pub workers: Notify,
    pub dispatcher: Notify,
    pub importer: Notify,
    pub actions: Notify,
    pub api: Notify,
    /// Names this process's wake-ups to the others, so that it does not
    /// relay its own back to itself (its loops were woken directly).
    pub origin: String,
    /// The wake-ups sent to the other processes, per loop.
    sent: [bus::Coalesced; bus::LOOPS.len()],
    /// The loops running in this process, per loop (see [`Wakers::serving`]).
    here: [std::sync::atomic::AtomicBool; bus::LOOPS.len()],
}

impl Default for Wakers {
    fn default() -> Wakers {
        Wakers {
            scheduler: Notify::new(),
            workers: Notify::new(),
            dispatcher: Notify::new(),
            importer: Notify::new(),
            actions: Notify::new(),
            api: Notify::new(),
            origin: hex::encode(auth::random_bytes(8)),
            sent: Default::default(),
            here: Default::default(),
        }
    }
}

impl Wakers {
    /// The loops named `what` (as [`bus`] names them), if any.
    pub fn named(&self, what: &str) -> Option<&Notify> {
        Some(match what {
            bus::SCHEDULER => &self.scheduler,
            bus::WORKERS => &self.workers,
            bus::DISPATCHER => &self.dispatcher,
            bus::IMPORTER => &self.importer,
            bus::ACTIONS => &self.actions,
            bus::API => &self.api,
            _ => return None,
        })
    }

    /// What was sent to the other processes to wake the loops named `what`.
    fn sent(&self, what: &str) -> Option<&bus::Coalesced> {
        Some(&self.sent[slot(what)?])
    }

    /// Records that the loop named `what` runs in this process (called
    /// when the loop is made, before it is spawned: a wake-up asked for
    /// meanwhile finds it).
    pub fn serving(&self, what: &str) {
        if let Some(i) = slot(what) {
            self.here[i].store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// Whether the loop named `what` runs in this process.
    pub fn serves(&self, what: &str) -> bool {
        slot(what).is_some_and(|i| self.here[i].load(std::sync::atomic::Ordering::SeqCst))
    }
}

/// Where the loop named `what` is kept in [`Wakers`]' per-loop arrays.
fn slot(what: &str) -> Option<usize> {
    bus::LOOPS.iter().position(|l| *l == what)
}

/// The queue of a run with a `distribution`: runs whose values share a
/// remainder modulo `queues` share a queue of their deployment and run one
/// at a time, in order. Without one, runs go round-robin (no queue).
pub fn queue_name(dep: &DeploymentId, distribution: Option<i64>, queues: u32) -> Option<String> {
    distribution.map(|n| format!("{dep}:{}", n.rem_euclid(queues.max(1) as i64)))
}

/// How the run engine behaves.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub data_dir: PathBuf,
    /// Runs one worker process executes at once.
    pub worker_slots: usize,
    /// A lease not renewed for this long is taken back.
    pub lease_ttl: Duration,
    /// How often a worker renews its leases.
    pub heartbeat: Duration,
    /// How often the scheduler and workers look at the store without a wake-up.
    pub poll: Duration,
    pub retry: RetryPolicy,
    /// An attempt running longer than this is killed and fails.
    pub run_timeout: Duration,
    /// The Python interpreter that runs user code.
    pub python: String,
    /// How many queues `distribution` values are spread over, per deployment.
    pub queues: u32,
    /// Where code archives and datalake files live.
    pub blobs: blob::Blobs,
    /// Table import queries one process runs at once.
    pub import_slots: usize,
    /// Action API runs one process executes at once.
    pub action_slots: usize,
    /// Resource limits of each run's process.
    pub limits: sandbox::Limits,
    /// How a run's process starts.
    pub user_code: UserCode,
    /// Warm fork servers (versions) one worker keeps at most.
    pub warm_versions: usize,
    /// A fork server without a run for this long is stopped.
    pub warm_idle: Duration,
}

/// How a run's process starts (docs/user-code.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserCode {
    /// Forked from a warm server per code version that imported the
    /// handler's module once (a version can still ask for a fresh one).
    Fork,
    /// A fresh interpreter per run, importing the module each time.
    Fresh,
}

impl EngineConfig {
    pub fn new(data_dir: PathBuf) -> EngineConfig {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        EngineConfig {
            data_dir: data_dir.clone(),
            // Forked runs start in milliseconds: slots are for runs waiting
            // on I/O as much as for CPU.
            worker_slots: (cores * 8).max(16),
            lease_ttl: Duration::from_secs(15),
            heartbeat: Duration::from_secs(3),
            poll: Duration::from_millis(200),
            retry: RetryPolicy::default(),
            run_timeout: Duration::from_secs(3600),
            python: "python3".into(),
            queues: 8,
            blobs: blob::Blobs::local(data_dir.join("objects")),
            import_slots: 2,
            action_slots: 8,
            limits: sandbox::Limits::default(),
            user_code: UserCode::Fork,
            warm_versions: 16,
            warm_idle: Duration::from_secs(600),
        }
    }
}
