//! The worker: claims RUNNABLE runs under a lease and runs each attempt's
//! code in its own process.
//!
//! One attempt, step by step:
//! 1. unpack the version's code once per worker (`<data>/code/<version>/`);
//! 2. make a fresh working folder;
//! 3. fork the run's process from the version's warm interpreter (the run's
//!    request and context in the fork's message), or start
//!    `python3 runner.py` there (it reads `request.json` and `context.json`
//!    from the folder), in its own process group, with the run's
//!    environment (deployment defaults < version parameters < run);
//! 4. mark the run RUNNING; stream stdout and stderr, line by line, into the
//!    run's log; renew the lease every heartbeat, and stop the process when
//!    the run is being cancelled, the lease is lost or the timeout passes;
//! 5. report the outcome with the lease's fencing token.
//!
//! A worker killed outright leaves its leases to expire: the scheduler takes
//! the runs back and another worker retries them. Its children die with it
//! (`PR_SET_PDEATHSIG`), so no orphan keeps running a run that moved on.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use sluice_domain::time::{self, Timestamp};
use sluice_domain::*;
use sluice_store::{MetadataStore, StoreError};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;
use tokio::sync::{mpsc, Mutex, Semaphore};

use crate::blob::Blobs;
use crate::code::{self, ArchiveFormat};
use crate::metrics::{self, METRICS};
use crate::shutdown::Shutdown;
use crate::{forkserver, sandbox, EngineConfig, UserCode, Wakers};
use tracing::Instrument;

const RUNNER: &str = include_str!("runner.py");

/// How long a claim under load waits for more free slots (see `run`).
const CLAIM_GATHER: Duration = Duration::from_millis(2);

/// Log lines longer than this are cut (the rest is noted as cut).
const MAX_LINE: usize = 64 * 1024;

pub struct Worker {
    id: String,
    store: Arc<dyn MetadataStore>,
    blobs: Blobs,
    config: EngineConfig,
    wakers: Arc<Wakers>,
    /// Serializes unpacking so one version is unpacked once.
    unpacking: Mutex<()>,
    /// The interpreter's real path and the folders it reads, found once: a
    /// launcher such as a pyenv shim costs a shell start per run, as much
    /// again as Python itself.
    python: tokio::sync::OnceCell<Interpreter>,
    /// What this kernel and process can sandbox runs with.
    support: sandbox::Support,
    /// The warm interpreters runs are forked from, one per code version.
    forks: forkserver::Pool,
}

/// A version and its deployment as the runs of one claim read them (once,
/// by the first of them to need them).
type Code = tokio::sync::OnceCell<(Deployment, Option<Version>)>;

/// The interpreter that runs user code, and what of the host it reads.
#[derive(Debug, Clone)]
struct Interpreter {
    path: String,
    /// Its prefixes, site-packages and `PYTHONPATH`: read-only in a run.
    reads: Vec<PathBuf>,
    /// The user runs become (the server runs as root, and that user can
    /// reach the interpreter and the data dir).
    run_as: Option<u32>,
}

/// Asks the interpreter where it is and what it reads.
const PROBE: &str = "import json, os, site, sys
paths = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix]
paths += site.getsitepackages() + [site.getusersitepackages()]
paths += [p for p in os.environ.get('PYTHONPATH', '').split(os.pathsep) if p]
print(json.dumps({'executable': sys.executable, 'reads': paths}))";

impl Worker {
    pub fn new(
        store: Arc<dyn MetadataStore>,
        config: EngineConfig,
        wakers: Arc<Wakers>,
    ) -> std::io::Result<Arc<Worker>> {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "host".into());
        let id = format!(
            "{host}-{}-{:04x}",
            std::process::id(),
            rand::random::<u16>()
        );
        std::fs::create_dir_all(config.data_dir.join("runs"))?;
        std::fs::create_dir_all(config.data_dir.join("code"))?;
        std::fs::write(config.data_dir.join("runner.py"), RUNNER)?;
        Ok(Arc::new(Worker {
            id,
            blobs: config.blobs.clone(),
            store,
            wakers,
            unpacking: Mutex::new(()),
            python: tokio::sync::OnceCell::new(),
            support: sandbox::Support::probe(),
            forks: forkserver::Pool::new(config.warm_versions.max(1), config.warm_idle),
            config,
        }))
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    async fn python(&self) -> &Interpreter {
        self.python
            .get_or_init(|| async {
                let configured = self.config.python.clone();
                let probe = Command::new(&configured)
                    .args(["-c", PROBE])
                    .stdin(Stdio::null())
                    .output()
                    .await;
                let found = probe
                    .ok()
                    .filter(|out| out.status.success())
                    .and_then(|out| serde_json::from_slice::<Value>(&out.stdout).ok());
                let Some(found) = found else {
                    tracing::warn!("could not ask `{configured}` where it lives; runs may fail");
                    return Interpreter {
                        path: configured,
                        reads: vec![],
                        run_as: None,
                    };
                };
                let text = |v: &Value| v.as_str().map(str::to_owned);
                let path = text(&found["executable"])
                    .filter(|p| !p.is_empty())
                    .unwrap_or(configured);
                let mut reads: Vec<PathBuf> = found["reads"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(text)
                    .map(PathBuf::from)
                    .collect();
                reads.push(PathBuf::from(&path));
                reads.sort();
                reads.dedup();
                for r in &reads {
                    if self.config.data_dir.starts_with(r) {
                        tracing::warn!(
                            "the interpreter reads {}, which holds the data dir {}: the sandbox \
                             cannot hide the data dir from user code; keep them apart",
                            r.display(),
                            self.config.data_dir.display()
                        );
                    }
                }
                let run_as = self.support.run_as.filter(|_| {
                    let blocked: Vec<&Path> = [Path::new(&path), self.config.data_dir.as_path()]
                        .into_iter()
                        .filter(|p| !sandbox::others_can_reach(p))
                        .collect();
                    for p in &blocked {
                        tracing::warn!(
                            "running as root, but an unprivileged user cannot reach {}: runs \
                             keep root (confined by Landlock only); make it reachable (o+x on \
                             each folder) to have runs drop to `nobody`",
                            p.display()
                        );
                    }
                    blocked.is_empty()
                });
                Interpreter {
                    path,
                    reads,
                    run_as,
                }
            })
            .await
    }

    /// Claims and runs work until `shutdown` stops it; then lets the runs
    /// under way finish, handing back those still running when the grace
    /// period ends (their runs are queued again at once, not left to a
    /// lease's expiry).
    pub async fn run(self: Arc<Self>, shutdown: Shutdown) {
        let python = self.python().await;
        tracing::debug!("user code runs with {}", python.path);
        let slots = Arc::new(Semaphore::new(self.config.worker_slots));
        let sweeper = tokio::spawn({
            let (me, shutdown) = (self.clone(), shutdown.clone());
            async move {
                let every = me.config.warm_idle.min(Duration::from_secs(30));
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(every) => me.sweep_servers().await,
                        _ = shutdown.stopping() => return,
                    }
                }
            }
        });
        let mut backoff = crate::lease::Backoff::new(self.config.poll);
        tracing::info!(
            "worker {} ready with {} slots",
            self.id,
            self.config.worker_slots
        );
        // Whether the last claim took as many runs as it asked for: then
        // more are likely waiting, and the next claim waits a moment for a
        // few slots to free, so that one statement claims several runs.
        let mut saturated = false;
        loop {
            let mut first = tokio::select! {
                p = slots.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => return,
                },
                _ = shutdown.stopping() => break,
            };
            if shutdown.is_stopping() {
                break;
            }
            let batch = (self.config.worker_slots / 4).max(1) as u32;
            if saturated && batch > 1 {
                let more = slots.clone().acquire_many_owned(batch - 1);
                if let Ok(Ok(more)) = tokio::time::timeout(CLAIM_GATHER, more).await {
                    first.merge(more);
                }
            }
            let free = first.num_permits() as u32 + slots.available_permits() as u32;
            let leases = match self
                .store
                .claim(&self.id, free, self.config.lease_ttl, time::now())
                .await
            {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!("claiming work failed: {e}");
                    drop(first);
                    tokio::select! {
                        _ = tokio::time::sleep(backoff.after(false)) => {}
                        _ = shutdown.stopping() => {}
                    }
                    continue;
                }
            };
            backoff.after(true);
            saturated = leases.len() as u32 == free;
            if leases.is_empty() {
                drop(first);
                tokio::select! {
                    _ = self.wakers.workers.notified() => {}
                    _ = tokio::time::sleep(self.config.poll) => {}
                    _ = shutdown.stopping() => {}
                }
                continue;
            }
            // The runs of one claim read each of their versions (and its
            // deployment) once: a claim under load takes several runs of
            // a version, each of which read them again.
            let mut codes: std::collections::HashMap<VersionId, Arc<Code>> = Default::default();
            let mut held = Some(first);
            for lease in leases {
                let code = codes
                    .entry(lease.run.version_id.clone())
                    .or_default()
                    .clone();
                let permit = match held.take() {
                    Some(mut p) if p.num_permits() > 1 => {
                        let one = p.split(1).expect("more than one permit held");
                        held = Some(p);
                        one
                    }
                    Some(p) => p,
                    None => match slots.clone().try_acquire_owned() {
                        Ok(p) => p,
                        // Cannot happen: we claimed no more than were free.
                        Err(_) => slots.clone().acquire_owned().await.expect("semaphore open"),
                    },
                };
                let (me, shutdown) = (self.clone(), shutdown.clone());
                // Every line logged for the attempt — the store's
                // statements included — carries its run, organization and
                // worker.
                let span = tracing::info_span!("run", run_id = %lease.run.id, org = %lease.run.organization_id, attempt = lease.attempt, worker = %self.id);
                tokio::spawn(
                    async move {
                        let wake = me.attempt(lease, &code, &shutdown).await;
                        drop(permit);
                        if wake {
                            me.wakers.scheduler.notify_one();
                        }
                    }
                    .instrument(span),
                );
            }
        }
        let busy = self.config.worker_slots - slots.available_permits();
        if busy > 0 {
            tracing::info!("worker {}: waiting for {busy} runs under way", self.id);
        }
        // Every attempt ends, its run finished or (once the grace period
        // is over) handed back, before the slots are all free again. An
        // attempt still setting up (fetching its code) is given a little
        // longer, then left to its lease's expiry: the process must end.
        let all = self.config.worker_slots as u32;
        let ended = tokio::select! {
            done = slots.acquire_many(all) => done.is_ok(),
            _ = async {
                shutdown.over().await;
                tokio::time::sleep(Duration::from_secs(10)).await;
            } => false,
        };
        sweeper.abort();
        self.forks.clear();
        if ended {
            tracing::info!("worker {} stopped", self.id);
        } else {
            tracing::warn!(
                "worker {} stopped with {} attempts still setting up; their runs are taken back when their leases expire",
                self.id,
                all as usize - slots.available_permits()
            );
        }
    }

    /// Stops the warm interpreters idle too long or of deleted versions.
    async fn sweep_servers(&self) {
        let mut gone = Vec::new();
        for o in self.forks.owners() {
            if let Err(StoreError::NotFound(_)) = self
                .store
                .get_version(&o.org, &o.deployment, &o.version)
                .await
            {
                gone.push(o.version);
            }
        }
        let stopped = self.forks.sweep(&|o| gone.contains(&o.version));
        if stopped > 0 {
            tracing::debug!(
                "worker {}: stopped {stopped} warm interpreter(s), {} left",
                self.id,
                self.forks.len()
            );
        }
    }

    /// Awaits `work`, renewing the attempt's lease meanwhile.
    async fn renewing<T>(
        &self,
        lease: &Lease,
        work: impl std::future::Future<Output = T>,
    ) -> Result<T, AttemptError> {
        tokio::pin!(work);
        let mut beat = tokio::time::interval(self.config.heartbeat);
        beat.tick().await;
        loop {
            tokio::select! {
                done = &mut work => return Ok(done),
                _ = beat.tick() => {
                    let now = time::now();
                    let renewed = self.store.heartbeat(&lease.run.id, lease.token, self.config.lease_ttl, now).await;
                    if let Err(StoreError::LeaseLost(_)) = renewed {
                        return Err(AttemptError::LeaseLost);
                    }
                }
            }
        }
    }

    /// Runs one attempt and reports how it ended; answers whether the
    /// scheduler has work from it (the run is to be tried again, or the
    /// next run of its queue may start).
    async fn attempt(&self, lease: Lease, code: &Code, shutdown: &Shutdown) -> bool {
        let run_id = lease.run.id.clone();
        let org = lease.run.organization_id.clone();
        let started = std::time::Instant::now();
        METRICS.claimed.with_label_values(&[metrics::RUN]).inc();
        tracing::info!(run_id = %run_id, org = %org, attempt = lease.attempt, worker = %self.id, "run attempt started");
        let (outcome, output, tail) = match self.execute(&lease, code, shutdown).await {
            Ok(Ended {
                outcome,
                output,
                tail,
            }) => (outcome, output, tail),
            Err(AttemptError::LeaseLost) => {
                METRICS
                    .lease_losses
                    .with_label_values(&[metrics::RUN])
                    .inc();
                tracing::warn!(run_id = %run_id, org = %org, "run lease lost; another worker owns the run now");
                return true;
            }
            Err(AttemptError::Setup(error)) => (AttemptOutcome::Failed { error }, None, vec![]),
            Err(AttemptError::Invalid(error)) => (AttemptOutcome::Invalid { error }, None, vec![]),
        };
        let (outcome, output) = match output {
            Some(out) => match self.store_output(&lease.run, out).await {
                Ok(file) => (outcome, Some(file)),
                Err(e) => (
                    AttemptOutcome::Failed {
                        error: format!("could not store the run's output: {e}"),
                    },
                    None,
                ),
            },
            None => (outcome, None),
        };
        let now = time::now();
        let retry = self.config.retry;
        let finished = match &output {
            Some(file) => {
                self.store
                    .finish_with_output(&run_id, lease.token, &outcome, retry, now, &tail, file)
                    .await
            }
            None => {
                self.store
                    .finish(&run_id, lease.token, &outcome, retry, now, &tail)
                    .await
            }
        };
        if let (Some(file), Err(_)) = (&output, &finished) {
            // The output was not recorded: its bytes must not linger.
            let _ = self.blobs.delete(&file.object).await;
        }
        if let Ok(RunStatus::Succeeded) = finished {
            if output.is_some() {
                self.wakers.dispatcher.notify_one();
            }
        }
        let secs = started.elapsed().as_secs_f64();
        let ended = match &outcome {
            AttemptOutcome::Succeeded => "succeeded",
            AttemptOutcome::HandedBack { .. } => metrics::HANDED_BACK,
            _ => "failed",
        };
        let queued = lease.run.distribution.is_some();
        match finished {
            Ok(status) => {
                let ended = if status == RunStatus::Cancelled {
                    "cancelled"
                } else {
                    ended
                };
                METRICS.ended(metrics::RUN, ended, secs);
                tracing::info!(
                    run_id = %run_id,
                    org = %org,
                    attempt = lease.attempt,
                    outcome = ended,
                    run_status = %status.as_str(),
                    duration_ms = (secs * 1000.0) as u64,
                    "run attempt ended"
                );
                status == RunStatus::Pending || queued
            }
            Err(StoreError::LeaseLost(_)) => {
                tracing::warn!("{run_id}: finished after losing the lease");
                true
            }
            Err(e) => {
                tracing::error!("{run_id}: could not record the outcome: {e}");
                true
            }
        }
    }

    /// Writes a run's output as a file of its trigger's output channel,
    /// bytes first; the file is recorded with the run's success.
    async fn store_output(&self, run: &Run, out: Output) -> std::io::Result<DatalakeFile> {
        let now = time::now();
        let id = FileId::generate(now);
        let object = format!("datalake/{}/{}", out.channel, id);
        self.blobs.put(&object, &out.bytes).await?;
        let mut metadata = std::collections::BTreeMap::new();
        metadata.insert(format!("{META_PREFIX}run_id"), run.id.to_string());
        if let Some(t) = &run.trigger_id {
            metadata.insert(format!("{META_PREFIX}trigger_id"), t.to_string());
        }
        if let Some(Value::String(src)) = run.input_data.get(DATALAKE_INPUT) {
            metadata.insert(format!("{META_PREFIX}source"), src.clone());
        }
        Ok(DatalakeFile {
            seq: 0,
            channel_id: out.channel,
            file_id: id,
            organization_id: run.organization_id.clone(),
            content_type: out.content_type.into(),
            metadata,
            size: out.bytes.len() as i64,
            object,
            lifetime: None,
            source_run_id: Some(run.id.clone()),
            uploaded_at: now,
        })
    }

    async fn execute(
        &self,
        lease: &Lease,
        code: &Code,
        shutdown: &Shutdown,
    ) -> Result<Ended, AttemptError> {
        let run = &lease.run;
        let setup =
            |what: &str, e: &dyn std::fmt::Display| AttemptError::Setup(format!("{what}: {e}"));
        let work = self
            .config
            .data_dir
            .join("runs")
            .join(run.version_id.as_str())
            .join(format!("{}-{}", run.id, lease.attempt));
        // The (empty) working folder is made while the run's records are
        // read: both are on the way from claim to RUNNING. When runs run as
        // another user (the server is root), the folder is that user's from
        // the start, in the same trip to a blocking thread.
        let python = self.python().await;
        let run_as = python.run_as;
        let made = {
            let dir = work.clone();
            async move {
                tokio::task::spawn_blocking(move || {
                    empty_dir(&dir)?;
                    match run_as {
                        Some(id) => std::os::unix::fs::chown(&dir, Some(id), Some(id)),
                        None => Ok(()),
                    }
                })
                .await
                .map_err(std::io::Error::other)?
            }
        };
        let (code, trigger, files, made) = tokio::join!(
            code.get_or_try_init(|| self.store.get_deployment_version(
                &run.organization_id,
                &run.deployment_id,
                &run.version_id
            )),
            async {
                match &run.trigger_id {
                    Some(t) => self.store.find_trigger(t).await.map(Some),
                    None => Ok(None),
                }
            },
            crate::control::datalake_inputs(
                self.store.as_ref(),
                &run.organization_id,
                &run.input_data
            ),
            made,
        );
        made.map_err(|e| setup("could not make the working folder", &e))?;
        let read = async {
            let (dep, ver) = code
                .cloned()
                .map_err(|e| setup("the deployment is gone", &e))?;
            let ver = ver.ok_or_else(|| {
                let gone = StoreError::NotFound(format!("version `{}`", run.version_id));
                setup("the version is gone", &gone)
            })?;
            let output_channel = trigger
                .map_err(|e| setup("the trigger is gone", &e))?
                .and_then(|t| t.output_channel_id);
            let files = files.map_err(|e| match e {
                crate::control::InputError::Invalid(why)
                | crate::control::InputError::Missing(why) => AttemptError::Invalid(why),
                crate::control::InputError::Store(e) => setup("could not read the run's input", &e),
            })?;
            let code_dir = self
                .code_dir(&ver)
                .await
                .map_err(|e| setup("could not unpack the code", &e))?;
            Ok::<_, AttemptError>((dep, ver, output_channel, files, code_dir))
        };
        // A run whose records or code cannot be read leaves no folder.
        let (dep, ver, output_channel, files, code_dir) = match read.await {
            Ok(read) => read,
            Err(e) => {
                let _ = tokio::fs::remove_dir_all(&work).await;
                return Err(e);
            }
        };
        let contents: Vec<Value> = files
            .iter()
            .map(|(key, f)| content(key, f, &work.join("inputs").join(f.file_id.as_str())))
            .collect();
        let inputs = inputs(lease, &ver, &work, contents);
        let with_inputs = !files.is_empty();
        let version_env = version_environment(&dep, &ver);
        let fresh = self.config.user_code == UserCode::Fresh || asks_fresh(&version_env);
        // A forked run gets its request and context in the fork's message
        // (no files to make: on a busy worker, making and removing files
        // is much of a run's cost); a fresh interpreter, or a request too
        // large for one message, reads them from files. They are written
        // while the run's sandbox is prepared.
        let inline = !fresh && inputs.size() <= INLINE_INPUTS;
        let written = {
            let (dir, files) = (work.clone(), (!inline).then(|| inputs.files()));
            (files.is_some() || with_inputs).then(|| {
                tokio::task::spawn_blocking(move || write_inputs(&dir, files, with_inputs))
            })
        };
        let runner = self.config.data_dir.join("runner.py");
        let support = sandbox::Support {
            run_as: python.run_as,
            ..self.support
        };
        let limits = self.config.limits.with(dep.limits);
        let prepared = sandbox::Policy::for_run(&python.reads, &code_dir, &runner, &work)
            .prepare(support, limits);
        if let Some(written) = written {
            written
                .await
                .map_err(std::io::Error::other)
                .and_then(|written| written)
                .map_err(|e| setup("could not make the working folder", &e))?;
        }
        let prepared = prepared.map_err(|e| setup("could not prepare the sandbox", &e))?;
        for (key, f) in &files {
            let dest = work.join("inputs").join(f.file_id.as_str());
            self.blobs
                .copy_to(&f.object, &dest)
                .await
                .map_err(|e| setup(&format!("could not fetch input_data.{key}"), &e))?;
        }

        // What was written into the folder since it was made (the input
        // files, a request too large for the fork's message) is the run's
        // user's too.
        if let (Some(id), true) = (run_as, with_inputs || !inline) {
            let dir = work.clone();
            tokio::task::spawn_blocking(move || hand_over(&dir, id))
                .await
                .map_err(|e| setup("could not hand the working folder over", &e))?
                .map_err(|e| setup("could not hand the working folder over", &e))?;
        }
        let code_env = [
            ("SLUICE_CODE_DIR".to_owned(), code_dir.display().to_string()),
            ("SLUICE_HANDLER".to_owned(), ver.handler.clone()),
        ];
        let at = |dir: &Path| {
            let dir = dir.display().to_string();
            [("HOME".to_owned(), dir.clone()), ("TMPDIR".to_owned(), dir)]
        };
        let mut env = base_environment();
        env.extend(at(&work));
        env.extend(version_env.iter().cloned());
        env.extend(run_environment(lease));
        env.extend(code_env.iter().cloned());

        let (log_tx, log_rx) = mpsc::channel::<(Timestamp, String)>(4096);
        let writer = tokio::spawn(write_logs(
            self.store.clone(),
            lease.run.id.clone(),
            lease.token,
            lease.attempt,
            log_rx,
        ));
        let _ = log_tx
            .send((
                time::now(),
                format!(
                    "[sluice] attempt {} on worker {} runs {} in {}",
                    lease.attempt,
                    self.id,
                    ver.handler,
                    if fresh {
                        "a fresh interpreter"
                    } else {
                        "a process forked from the version's warm interpreter"
                    }
                ),
            ))
            .await;

        // The run's process: forked from the version's server (started,
        // and its module imported, on the version's first run), or a fresh
        // interpreter. Its lease is renewed meanwhile: an import may be slow.
        let launch = async {
            if !fresh {
                let runs_dir = work.parent().unwrap_or(&work).to_owned();
                let owner = forkserver::Owner {
                    org: run.organization_id.clone(),
                    deployment: run.deployment_id.clone(),
                    version: ver.id.clone(),
                };
                let key = forkserver::key(&ver.id, &version_env, limits);
                let warm = self
                    .forks
                    .server(key, owner, || {
                        let mut env = base_environment();
                        env.extend(at(&runs_dir));
                        env.extend(version_env.iter().cloned());
                        env.extend(code_env.iter().cloned());
                        // CPU seconds are each run's, set in the child: the
                        // server's own time is not a run's.
                        let server_limits = sandbox::Limits {
                            cpu_seconds: None,
                            ..limits
                        };
                        let sandbox =
                            sandbox::Policy::for_run(&python.reads, &code_dir, &runner, &runs_dir)
                                .prepare(support, server_limits)
                                .map_err(|e| forkserver::Failed {
                                    error: format!("could not prepare the sandbox: {e}"),
                                    log: vec![],
                                })?;
                        Ok(forkserver::Launch {
                            python: python.path.clone(),
                            runner: runner.clone(),
                            dir: runs_dir.clone(),
                            env,
                            sandbox,
                        })
                    })
                    .await;
                match warm {
                    forkserver::Warm::Ready(server, printed) => {
                        for line in printed.into_iter().flatten() {
                            let _ = log_tx.send(line).await;
                        }
                        let pipes = || -> std::io::Result<_> {
                            let (out_tx, out_rx) = tokio::net::unix::pipe::pipe()?;
                            let (err_tx, err_rx) = tokio::net::unix::pipe::pipe()?;
                            Ok((
                                out_tx.into_blocking_fd()?,
                                err_tx.into_blocking_fd()?,
                                out_rx,
                                err_rx,
                            ))
                        };
                        let (out, err, out_rx, err_rx) =
                            pipes().map_err(|e| format!("could not make the run's pipes: {e}"))?;
                        let forked = server
                            .fork(
                                &work,
                                &env,
                                out,
                                err,
                                prepared.ruleset(),
                                limits.cpu_seconds,
                                inline.then_some((&inputs.request, &inputs.context)),
                            )
                            .await
                            .map_err(|e| format!("could not start the run: {e}"))?;
                        let pumps = [
                            tokio::spawn(pump(Some(out_rx), log_tx.clone())),
                            tokio::spawn(pump(Some(err_rx), log_tx.clone())),
                        ];
                        return Ok((Process::Forked(forked), pumps));
                    }
                    forkserver::Warm::Failed(failed) => {
                        for line in failed.log {
                            let _ = log_tx.send(line).await;
                        }
                        return Err(failed.error);
                    }
                    forkserver::Warm::Full => {
                        let line = "[sluice] every warm interpreter of this worker is busy with \
                                    other versions: this run starts a fresh one";
                        let _ = log_tx.send((time::now(), line.to_owned())).await;
                        if inline {
                            let (dir, files) = (work.clone(), Some(inputs.files()));
                            tokio::task::spawn_blocking(move || write_inputs(&dir, files, false))
                                .await
                                .map_err(std::io::Error::other)
                                .and_then(|written| written)
                                .map_err(|e| format!("could not write the run's request: {e}"))?;
                        }
                    }
                }
            }
            let mut cmd = Command::new(&python.path);
            cmd.arg("-u")
                .arg(&runner)
                .current_dir(&work)
                .env_clear()
                .envs(env.iter().cloned())
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true)
                .process_group(0);
            #[cfg(target_os = "linux")]
            unsafe {
                // The child enters its sandbox before the interpreter starts
                // (and dies with its worker: see `sandbox`).
                cmd.pre_exec(move || prepared.enter());
            }
            let mut child = cmd
                .spawn()
                .map_err(|e| format!("could not start `{}`: {e}", self.python_name()))?;
            let pumps = [
                tokio::spawn(pump(child.stdout.take(), log_tx.clone())),
                tokio::spawn(pump(child.stderr.take(), log_tx.clone())),
            ];
            Ok((Process::Fresh(child), pumps))
        };
        // An import that never ends is bound by the run's timeout too.
        let timeout = self.config.run_timeout;
        let launch = async {
            tokio::time::timeout(timeout, launch)
                .await
                .unwrap_or_else(|_| {
                    Err(format!(
                        "stopped: the code's import exceeded the run's timeout of {} s",
                        timeout.as_secs()
                    ))
                })
        };
        // The run is RUNNING from when its process is asked for, as a fresh
        // interpreter's is from its spawn (before its imports): marked while
        // the fork goes on, not after.
        let (launched, marked) = tokio::join!(
            self.renewing(lease, launch),
            self.store.mark_running(&run.id, lease.token, time::now())
        );
        let (mut process, pumps) = match launched {
            Ok(Ok(started)) => started,
            Ok(Err(error)) => {
                let _ = log_tx
                    .send((time::now(), format!("[sluice] attempt failed: {error}")))
                    .await;
                drop(log_tx);
                let tail = writer.await.ok().flatten();
                let _ = tokio::fs::remove_dir_all(&work).await;
                let Some(tail) = tail else {
                    return Err(AttemptError::LeaseLost);
                };
                return Ok(Ended {
                    outcome: AttemptOutcome::Failed { error },
                    output: None,
                    tail,
                });
            }
            Err(lost) => {
                drop(log_tx);
                let _ = writer.await;
                let _ = tokio::fs::remove_dir_all(&work).await;
                return Err(lost);
            }
        };
        let pid = process.pid();
        let mut stop: Option<String> = None;
        let mut handed_back = false;
        let mut lease_lost = false;
        match marked {
            Ok(RunStatus::Canceling) => stop = Some("stopped: the run was cancelled".into()),
            Ok(_) => {}
            Err(StoreError::LeaseLost(_)) => lease_lost = true,
            Err(e) => stop = Some(format!("stopped: could not mark the run running: {e}")),
        }
        let deadline = tokio::time::Instant::now() + self.config.run_timeout;
        let mut beat = tokio::time::interval(self.config.heartbeat);
        beat.tick().await;
        let status = loop {
            if stop.is_some() || lease_lost {
                kill_group(pid);
            }
            tokio::select! {
                status = process.wait() => break status,
                _ = beat.tick() => {
                    match self.store.heartbeat(&run.id, lease.token, self.config.lease_ttl, time::now()).await {
                        Ok(RunStatus::Canceling) if stop.is_none() => stop = Some("stopped: the run was cancelled".into()),
                        Ok(_) => {}
                        Err(StoreError::LeaseLost(_)) => lease_lost = true,
                        Err(e) => tracing::warn!("{}: heartbeat failed: {e}", run.id),
                    }
                }
                _ = tokio::time::sleep_until(deadline), if stop.is_none() => {
                    stop = Some(format!("stopped: the run exceeded its timeout of {} s", self.config.run_timeout.as_secs()));
                }
                _ = shutdown.over(), if stop.is_none() => {
                    handed_back = true;
                    stop = Some(format!("stopped: worker {} shut down; the run goes back to the queue", self.id));
                }
            }
        };
        for p in pumps {
            let _ = p.await;
        }
        let end_line = match (&status, &stop) {
            (_, Some(why)) => format!("[sluice] {why}"),
            (Ok(s), None) if s.success() => "[sluice] attempt succeeded".to_owned(),
            (Ok(s), None) => format!("[sluice] attempt failed: {}", describe_exit(s)),
            (Err(e), None) => format!("[sluice] attempt failed: {e}"),
        };
        let _ = log_tx.send((time::now(), end_line)).await;
        drop(log_tx);
        let tail = writer.await.ok().flatten();
        let succeeded = stop.is_none() && matches!(&status, Ok(s) if s.success());
        // What the code wrote of its failure (a trip to a blocking thread:
        // not taken by a run that succeeded).
        let error_file = if succeeded {
            None
        } else {
            tokio::fs::read_to_string(work.join("error.txt")).await.ok()
        };
        let output = match output_channel {
            Some(channel) if succeeded => {
                read_result(&work)
                    .await
                    .map(|(content_type, bytes)| Output {
                        channel,
                        content_type,
                        bytes,
                    })
            }
            _ => None,
        };
        let _ = tokio::fs::remove_dir_all(&work).await;
        let tail = match tail {
            Some(tail) if !lease_lost => tail,
            _ => return Err(AttemptError::LeaseLost),
        };
        let outcome = match (status, stop) {
            (_, Some(why)) if handed_back => AttemptOutcome::HandedBack { why },
            (_, Some(why)) => AttemptOutcome::Failed { error: why },
            (Ok(s), None) if s.success() => AttemptOutcome::Succeeded,
            (Ok(s), None) => AttemptOutcome::Failed {
                error: error_file
                    .filter(|e| !e.is_empty())
                    .unwrap_or_else(|| describe_exit(&s)),
            },
            (Err(e), None) => AttemptOutcome::Failed {
                error: format!("lost the code's process: {e}"),
            },
        };
        Ok(Ended {
            outcome,
            output,
            tail,
        })
    }

    fn python_name(&self) -> &str {
        self.python
            .get()
            .map(|i| i.path.as_str())
            .unwrap_or(&self.config.python)
    }

    /// The version's code, unpacked once into `<data>/code/<version>/`.
    async fn code_dir(&self, ver: &Version) -> std::io::Result<PathBuf> {
        let dir = self.config.data_dir.join("code").join(ver.id.as_str());
        if dir.exists() {
            return Ok(dir);
        }
        let _guard = self.unpacking.lock().await;
        if dir.exists() {
            return Ok(dir);
        }
        let key = ver.archive.as_deref().ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "the version has no uploaded code",
            )
        })?;
        let bytes = self.blobs.get(key).await?;
        let dest = dir.clone();
        let format = ArchiveFormat::from_key(key);
        tokio::task::spawn_blocking(move || code::unpack(format, &bytes, &dest))
            .await
            .map_err(std::io::Error::other)??;
        Ok(dir)
    }
}

/// What a run returned, bound for its trigger's output channel.
struct Output {
    channel: ChannelId,
    content_type: &'static str,
    bytes: Vec<u8>,
}

/// The handler's return value as the runner wrote it: bytes as they are,
/// a string as UTF-8 text, anything else as JSON. `None` when it returned
/// nothing.
async fn read_result(work: &Path) -> Option<(&'static str, Vec<u8>)> {
    for (name, content_type) in [
        ("result.bin", "application/octet-stream"),
        ("result.txt", "text/plain; charset=utf-8"),
        ("result.json", "application/json"),
    ] {
        if let Ok(bytes) = tokio::fs::read(work.join(name)).await {
            return Some((content_type, bytes));
        }
    }
    None
}

/// How the runner describes one input file to the handler.
fn content(key: &str, f: &DatalakeFile, path: &Path) -> Value {
    json!({
        "key": key,
        "channel_id": f.channel_id,
        "file_id": f.file_id,
        "content_type": f.content_type,
        "metadata": f.metadata,
        "size": f.size,
        "uploaded_at": time::format(&f.uploaded_at),
        "path": path.display().to_string(),
    })
}

/// A run's process: a fresh interpreter or a child of a fork server.
enum Process {
    Fresh(tokio::process::Child),
    Forked(forkserver::Forked),
}

impl Process {
    /// Its pid, which is also its process group's.
    fn pid(&self) -> Option<u32> {
        match self {
            Process::Fresh(child) => child.id(),
            Process::Forked(forked) => Some(forked.pid()),
        }
    }

    async fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        match self {
            Process::Fresh(child) => child.wait().await,
            Process::Forked(forked) => forked.wait().await,
        }
    }
}

enum AttemptError {
    /// The lease moved on: this worker must write nothing more.
    LeaseLost,
    /// The attempt could not start; it fails like any other attempt.
    Setup(String),
    /// The run's input cannot be used; the run fails without a retry.
    Invalid(String),
}

/// How an attempt's code ended: its outcome, its output, and its last log
/// lines (stored with the outcome).
struct Ended {
    outcome: AttemptOutcome,
    output: Option<Output>,
    tail: Vec<(Timestamp, String)>,
}

pub(crate) fn describe_exit(s: &std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (s.code(), s.signal()) {
        (Some(code), _) => format!("the code exited with status {code}"),
        (None, Some(sig)) => format!("the code was killed by signal {sig}"),
        _ => "the code ended abnormally".into(),
    }
}

fn kill_group(pid: Option<u32>) {
    if let Some(pid) = pid {
        // SAFETY: kill(2) with a negative pid signals the child's own group.
        unsafe {
            libc::kill(-(pid as i32), libc::SIGKILL);
        }
    }
}

/// What the code gets from the worker's own environment: enough to find
/// Python and a home, nothing of sluice's secrets.
fn base_environment() -> Vec<(String, String)> {
    ["PATH", "LANG", "LC_ALL", "TZ", "VIRTUAL_ENV", "PYTHONPATH"]
        .iter()
        .filter_map(|k| std::env::var(k).ok().map(|v| (k.to_string(), v)))
        .collect()
}

fn env_value(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The version's variables: its identity as `ABEJA_*` variables, the
/// deployment's defaults, then the version's parameters, each overriding
/// the last. A fork server imports the module with these; a run adds its
/// own ([`run_environment`]).
fn version_environment(dep: &Deployment, ver: &Version) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = vec![
        (
            "ABEJA_ORGANIZATION_ID".into(),
            dep.organization_id.to_string(),
        ),
        ("ABEJA_DEPLOYMENT_ID".into(), dep.id.to_string()),
        ("ABEJA_DEPLOYMENT_VERSION_ID".into(), ver.id.to_string()),
        ("ABEJA_DEPLOYMENT_VERSION".into(), ver.version.clone()),
    ];
    for layer in [&dep.default_environment, &ver.user_parameters] {
        env.extend(layer.iter().map(|(k, v)| (k.clone(), env_value(v))));
    }
    env
}

/// The run's own variables, over the version's: its identity and its
/// `environment`.
fn run_environment(lease: &Lease) -> Vec<(String, String)> {
    let run = &lease.run;
    let mut env: Vec<(String, String)> = vec![
        ("ABEJA_RUN_ID".into(), run.id.to_string()),
        ("SLUICE_ATTEMPT".into(), lease.attempt.to_string()),
    ];
    env.extend(
        run.environment
            .iter()
            .map(|(k, v)| (k.clone(), env_value(v))),
    );
    env
}

/// Whether the deployment or the version asks for a fresh interpreter per
/// run (`SLUICE_FRESH_INTERPRETER=1` in its environment).
fn asks_fresh(version_env: &[(String, String)]) -> bool {
    version_env
        .iter()
        .rev()
        .find(|(k, _)| k == "SLUICE_FRESH_INTERPRETER")
        .is_some_and(|(_, v)| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes"))
}

/// The largest request and context (in bytes of JSON) a fork's message
/// carries; larger ones go in files (a `SOCK_SEQPACKET` message must fit
/// the socket's send buffer).
const INLINE_INPUTS: usize = 64 * 1024;

/// What the runner hands the handler: the run's request and context.
struct Inputs {
    request: Value,
    context: Value,
    /// Both as JSON.
    text: [String; 2],
}

impl Inputs {
    fn size(&self) -> usize {
        self.text.iter().map(String::len).sum()
    }

    /// The files a fresh interpreter reads them from.
    fn files(&self) -> [(&'static str, String); 2] {
        let [request, context] = self.text.clone();
        [("request.json", request), ("context.json", context)]
    }
}

/// The run's request and context.
fn inputs(lease: &Lease, ver: &Version, work: &Path, contents: Vec<Value>) -> Inputs {
    let run = &lease.run;
    let request = json!({
        "contents": contents,
        "input_data": run.input_data,
        "models": run.models,
        "output_template": run.output_template,
    });
    let context = json!({
        "organization_id": run.organization_id,
        "deployment_id": run.deployment_id,
        "version_id": ver.id,
        "version": ver.version,
        "run_id": run.id,
        "trigger_id": run.trigger_id,
        "attempt": lease.attempt,
        "retry_count": run.retry_count,
        "working_dir": work.display().to_string(),
        "created_at": time::format(&run.created_at),
    });
    let text = [request.to_string(), context.to_string()];
    Inputs {
        request,
        context,
        text,
    }
}

/// Gives a run's working folder (and all in it) to the user `id` it runs as.
fn hand_over(dir: &Path, id: u32) -> std::io::Result<()> {
    std::os::unix::fs::chown(dir, Some(id), Some(id))?;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            hand_over(&path, id)?;
        } else {
            std::os::unix::fs::chown(&path, Some(id), Some(id))?;
        }
    }
    Ok(())
}

/// A fresh, empty working folder for an attempt (what an earlier try of
/// the same attempt left is removed). One `mkdir` when the version's runs
/// folder exists and the attempt's does not, as is usual.
fn empty_dir(work: &Path) -> std::io::Result<()> {
    use std::io::ErrorKind;
    match std::fs::create_dir(work) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => std::fs::create_dir_all(work),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {
            std::fs::remove_dir_all(work)?;
            std::fs::create_dir(work)
        }
        Err(e) => Err(e),
    }
}

/// Writes the run's request and context `files` into its folder, and
/// makes `inputs/` for its datalake files when it has some.
fn write_inputs(
    work: &Path,
    files: Option<[(&str, String); 2]>,
    with_inputs: bool,
) -> std::io::Result<()> {
    if with_inputs {
        std::fs::create_dir(work.join("inputs"))?;
    }
    for (name, body) in files.iter().flatten() {
        std::fs::write(work.join(name), body)?;
    }
    Ok(())
}

/// Reads a pipe line by line into the log channel.
pub(crate) async fn pump(
    pipe: Option<impl AsyncRead + Unpin>,
    tx: mpsc::Sender<(Timestamp, String)>,
) {
    let Some(pipe) = pipe else { return };
    let mut reader = BufReader::new(pipe);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                while buf.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                    buf.pop();
                }
                let mut line = String::from_utf8_lossy(&buf).into_owned();
                if line.len() > MAX_LINE {
                    let mut cut = MAX_LINE;
                    while !line.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    line.truncate(cut);
                    line.push_str(" … [line cut at 64 KiB]");
                }
                if tx.send((time::now(), line)).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Writes log lines to the store in batches (what arrived within ~50 ms)
/// while the attempt runs; answers the lines not yet written when it ended
/// (the caller stores them with the attempt's end), or None when the lease
/// was lost.
async fn write_logs(
    store: Arc<dyn MetadataStore>,
    run: RunId,
    token: i64,
    attempt: i32,
    mut rx: mpsc::Receiver<(Timestamp, String)>,
) -> Option<Vec<(Timestamp, String)>> {
    let mut batch = Vec::new();
    while let Some(first) = rx.recv().await {
        batch.push(first);
        let window = tokio::time::sleep(Duration::from_millis(50));
        tokio::pin!(window);
        while batch.len() < 1000 {
            tokio::select! {
                more = rx.recv() => match more {
                    Some(line) => batch.push(line),
                    // The attempt has ended: its last lines go with its end.
                    None => return Some(batch),
                },
                _ = &mut window => break,
            }
        }
        match store.append_logs(&run, token, attempt, &batch).await {
            Ok(()) => {}
            Err(StoreError::LeaseLost(_)) => return None,
            Err(e) => tracing::warn!("{run}: could not store {} log line(s): {e}", batch.len()),
        }
        batch.clear();
    }
    Some(batch)
}
