//! The action runner: the Tailer-style action API's runs, scheduled,
//! queued and executed under leases, as import queries are.
//!
//! Each turn it gives back the runs of lost workers (tried again: a task an
//! earlier attempt finished is found in the warehouse's ledger and not done
//! twice), makes the runs of configurations whose schedule is due, queues
//! PENDING runs while their configuration has room (`max_active_runs`),
//! and claims RUNNABLE runs into its free slots.
//!
//! A run executes its configuration's tasks in the order
//! `task_dependencies` gives, up to `task_concurrency` at once, each in its
//! warehouse in one transaction. A failed task follows its criticality:
//! `critical` fails the run; `warning` lets it go on and end WARNING;
//! `transparent` lets it go on; `break` and `stop` skip its dependents.

use crate::lease::Backoff;
use crate::metrics::{self, METRICS};
use crate::shutdown::Shutdown;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

use futures_util::stream::{FuturesUnordered, StreamExt};
use sluice_datapath::warehouse::{Done, Role, Warehouse as Wh};
use sluice_domain::action::{
    self, ActionRun, ActionTask, Criticality, NaiveDate, TableRef, TableToTable, TaskKind,
    Warehouse,
};
use sluice_domain::time::{self, Timestamp};
use sluice_domain::RunStatus;
use sluice_store::{ActionOutcome, MetadataStore, StoreError};
use tokio::sync::{mpsc, Semaphore};

use crate::lease::{Every, KeepAlive};
use crate::secrets::Sealer;
use crate::Wakers;

pub struct ActionRunner {
    store: Arc<dyn MetadataStore>,
    sealer: Sealer,
    /// The embedded warehouse's folder (None: none on this server).
    warehouse_root: Option<PathBuf>,
    name: String,
    slots: usize,
    lease_ttl: Duration,
    heartbeat: Duration,
    poll: Duration,
    wakers: Arc<Wakers>,
    /// Lost leases, schedules and sources are looked at every 250 ms at
    /// most: a wake-up per finished run must not redo them.
    watch: Every,
}

/// The URL warehouse `w` stands for: `embedded` is the organization's own
/// folder of the embedded warehouse.
fn warehouse_url(
    sealer: &Sealer,
    root: Option<&std::path::Path>,
    w: &Warehouse,
) -> Result<String, String> {
    let url = sealer.open(&w.url_sealed)?;
    if url != crate::control::EMBEDDED_WAREHOUSE {
        return Ok(url);
    }
    let root = root.ok_or("this server has no embedded warehouse")?;
    Ok(format!(
        "{}{}",
        sluice_datapath::warehouse::EMBEDDED,
        root.join("actions")
            .join(w.organization_id.as_str())
            .display()
    ))
}

impl ActionRunner {
    pub fn new(
        store: Arc<dyn MetadataStore>,
        sealer: Sealer,
        config: &crate::EngineConfig,
        warehouse_root: Option<PathBuf>,
        name: String,
        wakers: Arc<Wakers>,
    ) -> ActionRunner {
        ActionRunner {
            store,
            sealer,
            warehouse_root,
            name,
            slots: config.action_slots.max(1),
            lease_ttl: config.lease_ttl,
            heartbeat: config.heartbeat,
            poll: config.poll.max(Duration::from_millis(200)),
            wakers,
            watch: Every::new(Duration::from_millis(250)),
        }
    }

    /// Runs until the process ends.
    /// Claims and runs action runs until `shutdown` stops it; then waits for
    /// those under way. A table-to-table run the grace period cuts short
    /// commits nothing and is handed back (RUNNABLE at once); the other
    /// kinds cannot be stopped mid-way: their leases expire if the grace
    /// period ends first, and another process takes them over.
    pub async fn run(self: Arc<Self>, shutdown: Shutdown) {
        let slots = Arc::new(Semaphore::new(self.slots));
        let mut backoff = Backoff::new(self.poll);
        while !shutdown.is_stopping() {
            let wait = backoff.after(self.turn(&slots, &shutdown).await);
            tokio::select! {
                _ = self.wakers.actions.notified() => {}
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.stopping() => {}
            }
        }
        shutdown.drained(&slots, self.slots).await;
    }

    /// One turn: reap, schedule, queue, claim. False when the store did
    /// not answer.
    async fn turn(self: &Arc<Self>, slots: &Arc<Semaphore>, shutdown: &Shutdown) -> bool {
        let mut ok = true;
        let now = time::now();
        if self.watch.due() {
            match self.store.reap_action_runs(now).await {
                Ok(lost) => METRICS.took_back(metrics::ACTION_RUN, &lost),
                Err(e) => {
                    ok = false;
                    tracing::warn!("reaping lost action runs: {e}")
                }
            }
            if let Err(e) = self.schedule(now).await {
                ok = false;
                tracing::warn!("scheduling action runs: {e}");
            }
            if let Err(e) = self.watch(now).await {
                ok = false;
                tracing::warn!("watching storage-to-storage sources: {e}");
            }
        }
        if let Err(e) = self.store.queue_action_runs(now).await {
            ok = false;
            tracing::warn!("queueing action runs: {e}");
        }
        let free = slots.available_permits();
        if free == 0 {
            return ok;
        }
        match self
            .store
            .claim_action_runs(&self.name, free as u32, self.lease_ttl, time::now())
            .await
        {
            Ok(claimed) => {
                for run in claimed {
                    let Ok(permit) = slots.clone().acquire_owned().await else {
                        return ok;
                    };
                    let (me, shutdown) = (self.clone(), shutdown.clone());
                    let span = tracing::info_span!("action_run", action_run_id = %run.id, org = %run.organization_id, worker = %self.name);
                    tokio::spawn(
                        async move {
                            me.execute(run, Some(shutdown)).await;
                            drop(permit);
                            me.wakers.actions.notify_one();
                        }
                        .instrument(span),
                    );
                }
            }
            Err(e) => {
                ok = false;
                tracing::warn!("claiming action runs: {e}")
            }
        }
        ok
    }

    /// Makes the runs of configurations whose schedule is due (each once,
    /// however many runners share the store).
    async fn schedule(&self, now: Timestamp) -> Result<(), StoreError> {
        for c in self.store.due_configurations(now).await? {
            let (Some(due), Some(cron)) = (c.next_run_at, crate::control::schedule_of(&c.body))
            else {
                continue;
            };
            let next = crate::control::next_time(cron, now).ok();
            if c.configuration_type == action::WORKFLOW {
                // A workflow's schedule resets what it awaits.
                if self
                    .store
                    .reset_workflow_at(&c.organization_id, &c.api_id, due, next)
                    .await?
                {
                    tracing::info!("workflow {} reset on its schedule", c.api_id);
                }
                continue;
            }
            let run = ActionRun::new(&c, due.date_naive(), now);
            if self.store.schedule_action_run(&run, due, next).await? {
                tracing::info!("scheduled run {} of {}", run.id, c.api_id);
            }
        }
        Ok(())
    }

    /// Looks at every storage-to-storage source: each file there (by name,
    /// size and time) is recorded once, with the run that copies it — the
    /// run of the first template it matches, or one that ends NO_MATCH.
    async fn watch(&self, now: Timestamp) -> Result<(), String> {
        let configs = self
            .store
            .active_configurations(action::STORAGE_TO_STORAGE)
            .await
            .map_err(|e| e.to_string())?;
        for c in configs {
            let Ok(sts) = serde_json::from_value::<action::StorageToStorage>(c.body.clone()) else {
                continue;
            };
            let buckets = self
                .store
                .buckets_of(&c.organization_id)
                .await
                .map_err(|e| e.to_string())?;
            let Some(bucket) = buckets.iter().find(|b| b.name == sts.source.bucket) else {
                continue;
            };
            let blobs = crate::blob::Blobs::open(&self.sealer.open(&bucket.url_sealed)?)
                .map_err(|e| e.to_string())?;
            let prefix = &sts.source.prefix;
            let entries = match blobs.entries(prefix).await {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!("listing {} of {}: {e}", sts.source.bucket, c.api_id);
                    continue;
                }
            };
            let known = self
                .store
                .arrivals_of(&c.organization_id, &c.api_id)
                .await
                .map_err(|e| e.to_string())?;
            let mut arrivals = Vec::new();
            for e in entries {
                let name = if prefix.is_empty() {
                    e.key.as_str()
                } else {
                    match e
                        .key
                        .strip_prefix(prefix.as_str())
                        .and_then(|r| r.strip_prefix('/'))
                    {
                        Some(n) => n,
                        None => continue,
                    }
                };
                // Files in the source's own folder, not below it.
                if name.contains('/') {
                    continue;
                }
                let fingerprint = format!("{}:{}", e.size, e.changed);
                if known.contains(&(e.key.clone(), fingerprint.clone())) {
                    continue;
                }
                let (job, date) = match sts.matching(name) {
                    Some((template, date)) => (sts.job_id(template), date),
                    None => (sts.job_id("NO_MATCH"), None),
                };
                let mut run = ActionRun::new(&c, date.unwrap_or_else(|| now.date_naive()), now);
                run.job_id = job;
                run.input = Some(e.key.clone());
                arrivals.push((run, e.key, fingerprint));
            }
            // One transaction for the scan's new files (another process's
            // scan at once records each file once all the same).
            let fresh = self
                .store
                .record_arrivals(&arrivals)
                .await
                .map_err(|e| e.to_string())?;
            if fresh > 0 {
                tracing::info!("{fresh} files arrived for {}", c.api_id);
                self.wakers.actions.notify_one();
            }
        }
        Ok(())
    }

    /// Runs one claimed run to its end; answers its final status.
    /// Runs one claimed run to its end; at the end of `shutdown`'s grace
    /// period a table-to-table run stops and is handed back.
    pub async fn execute(&self, run: ActionRun, shutdown: Option<Shutdown>) -> RunStatus {
        METRICS
            .claimed
            .with_label_values(&[metrics::ACTION_RUN])
            .inc();
        tracing::info!(action_run_id = %run.id, configuration = %run.api_id, org = %run.organization_id, attempt = run.attempt, "action run started");
        let token = run.lease_token;
        match self
            .store
            .action_run_running(&run.id, token, time::now())
            .await
        {
            Ok(RunStatus::Canceling) => {
                return self
                    .finish(
                        &run,
                        ActionOutcome::Failed {
                            error: "cancelled before it started".into(),
                        },
                    )
                    .await
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!("action run {} could not start: {e}", run.id);
                return run.status;
            }
        }
        let plan = match self.plan(&run).await {
            Ok(plan) => plan,
            Err(error) => return self.finish(&run, ActionOutcome::Failed { error }).await,
        };
        let lease = {
            let (store, id, ttl) = (self.store.clone(), run.id.clone(), self.lease_ttl);
            KeepAlive::start(
                format!("action run {}", run.id),
                self.heartbeat,
                shutdown,
                move || {
                    let (store, id) = (store.clone(), id.clone());
                    async move {
                        store
                            .heartbeat_action_run(&id, token, ttl, time::now())
                            .await
                    }
                },
            )
        };
        // Task states go to the store from this runtime; the tasks run on a
        // thread of their own (their database futures are not Send).
        let (tx, mut rx) = mpsc::unbounded_channel::<ActionTask>();
        let writer = {
            let store = self.store.clone();
            tokio::spawn(async move {
                while let Some(task) = rx.recv().await {
                    if let Err(e) = store.put_action_task(&task, token).await {
                        tracing::warn!("recording task {} of {}: {e}", task.task_id, task.run_id);
                    }
                }
            })
        };
        let outcome = {
            let (run, cancel) = (run.clone(), lease.cancel.clone());
            tokio::task::spawn_blocking(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| format!("the run could not start: {e}"))?;
                rt.block_on(async move {
                    match &plan.work {
                        Work::Tables(c) => run_tasks(c, &plan, run, cancel, tx).await,
                        Work::Exports(c) => run_exports(c, &plan, run, tx)
                            .await
                            .map(|()| (false, false)),
                        Work::Transfer(c) => run_transfer(c, &plan, run, tx).await,
                    }
                })
            })
            .await
            .unwrap_or_else(|e| Err(format!("the run stopped: {e}")))
        };
        let (lost, handing_back) = (lease.lost(), lease.handing_back());
        drop(lease);
        let _ = writer.await;
        if handing_back && outcome.is_err() {
            return self.hand_back(&run).await;
        }
        if lost {
            tracing::warn!(
                "action run {} lost its lease; another worker has it",
                run.id
            );
            return run.status;
        }
        let outcome = match outcome {
            Ok((warned, stopped)) => ActionOutcome::Succeeded { warned, stopped },
            Err(error) => match error.strip_prefix(NO_MATCH) {
                Some(error) => ActionOutcome::NoMatch {
                    error: error.to_owned(),
                },
                None => ActionOutcome::Failed { error },
            },
        };
        self.finish(&run, outcome).await
    }

    /// What a run needs: its configuration's version, and the URL of each
    /// warehouse it names.
    async fn plan(&self, run: &ActionRun) -> Result<Plan, String> {
        let body = self
            .store
            .configuration_version(
                &run.organization_id,
                &run.configuration_type,
                &run.api_id,
                run.version,
            )
            .await
            .map_err(|e| e.to_string())?;
        let unreadable = |e: serde_json::Error| {
            format!(
                "the configuration's version {} cannot be read: {e}",
                run.version
            )
        };
        let work = if run.configuration_type == action::TABLE_TO_STORAGE {
            Work::Exports(serde_json::from_value(body).map_err(unreadable)?)
        } else if run.configuration_type == action::STORAGE_TO_STORAGE {
            Work::Transfer(serde_json::from_value(body).map_err(unreadable)?)
        } else {
            Work::Tables(serde_json::from_value(body).map_err(unreadable)?)
        };
        let mut buckets = BTreeMap::new();
        for b in self
            .store
            .buckets_of(&run.organization_id)
            .await
            .map_err(|e| e.to_string())?
        {
            buckets.insert(b.name.clone(), self.sealer.open(&b.url_sealed)?);
        }
        let mut urls = BTreeMap::new();
        for w in self
            .store
            .warehouses_of(&run.organization_id)
            .await
            .map_err(|e| e.to_string())?
        {
            let url = warehouse_url(&self.sealer, self.warehouse_root.as_deref(), &w)?;
            urls.insert(w.name.clone(), url);
        }
        let name = format!("sluice_org_{}", run.organization_id);
        let role = Role {
            password: self.sealer.derive(&format!("warehouse role {name}")),
            name,
        };
        Ok(Plan {
            work,
            urls,
            buckets,
            role,
        })
    }

    /// Gives a run the grace period cut short back to the queue.
    async fn hand_back(&self, run: &ActionRun) -> RunStatus {
        let answer = self
            .store
            .hand_back_action_run(&run.id, run.lease_token, time::now())
            .await;
        let secs = crate::lease::seconds_since(run.started_at);
        if crate::lease::handed_back(metrics::ACTION_RUN, &run.id, answer, secs) {
            RunStatus::Runnable
        } else {
            run.status
        }
    }

    async fn finish(&self, run: &ActionRun, outcome: ActionOutcome) -> RunStatus {
        let now = time::now();
        match self
            .store
            .finish_action_run(&run.id, run.lease_token, &outcome, now)
            .await
        {
            Ok(status) => {
                let secs = crate::lease::seconds_since(run.started_at);
                let ended = metrics::outcome(status);
                METRICS.ended(metrics::ACTION_RUN, ended, secs);
                tracing::info!(
                    action_run_id = %run.id,
                    configuration = %run.api_id,
                    org = %run.organization_id,
                    outcome = ended,
                    duration_ms = (secs * 1000.0) as u64,
                    "action run ended"
                );
                status
            }
            Err(e) => {
                tracing::warn!("ending action run {}: {e}", run.id);
                run.status
            }
        }
    }
}

struct Plan {
    work: Work,
    /// Warehouse name → URL.
    urls: BTreeMap<String, String>,
    /// Bucket name → URL (table-to-storage).
    buckets: BTreeMap<String, String>,
    /// The PostgreSQL role the organization's SQL runs as.
    role: Role,
}

/// What a run does: a table-to-table configuration's tasks, or a
/// table-to-storage configuration's exports.
enum Work {
    Tables(TableToTable),
    Exports(action::TableToStorage),
    Transfer(action::StorageToStorage),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    Waiting,
    Running,
    Succeeded,
    /// Failed, and its criticality let the run go on.
    FailedOn,
    Skipped,
}

/// Runs the configuration's tasks; answers whether a `warning` task
/// failed and whether a `stop` task did, or why the run failed.
async fn run_tasks(
    c: &TableToTable,
    plan: &Plan,
    run: ActionRun,
    cancel: Arc<AtomicBool>,
    tx: mpsc::UnboundedSender<ActionTask>,
) -> Result<(bool, bool), String> {
    let n = c.tasks.len();
    let mut state = vec![State::Waiting; n];
    let mut records: Vec<ActionTask> = c
        .tasks
        .iter()
        .enumerate()
        .map(|(i, t)| ActionTask {
            run_id: run.id.clone(),
            task_id: t.id.clone(),
            position: i as i32,
            status: "WAITING".into(),
            attempt: run.attempt,
            started_at: None,
            finished_at: None,
            rows: 0,
            messages: Vec::new(),
        })
        .collect();
    for r in &records {
        let _ = tx.send(r.clone());
    }
    let datasets = datasets_by_project(c);
    let (mut warned, mut stopped) = (false, false);
    let mut running = FuturesUnordered::new();
    loop {
        if cancel.load(Ordering::Relaxed) {
            return Err("cancelled (or the lease was lost): the running tasks rolled back".into());
        }
        // Skip what hangs below a skipped task or a break/stop.
        for k in 0..n {
            if state[k] == State::Waiting
                && c.parents[k].iter().any(|&p| state[p] == State::Skipped)
            {
                state[k] = State::Skipped;
                records[k].status = "SKIPPED".into();
                records[k]
                    .messages
                    .push("a task it depends on was skipped or broke".into());
                let _ = tx.send(records[k].clone());
            }
        }
        let ready: Vec<usize> = (0..n)
            .filter(|&k| {
                state[k] == State::Waiting
                    && c.parents[k]
                        .iter()
                        .all(|&p| matches!(state[p], State::Succeeded | State::FailedOn))
            })
            .collect();
        for k in ready {
            if running.len() >= c.task_concurrency as usize {
                break;
            }
            state[k] = State::Running;
            records[k].status = "RUNNING".into();
            records[k].started_at = Some(time::now());
            let _ = tx.send(records[k].clone());
            let task = c.tasks[k].clone();
            let (urls, datasets, run_id, date) =
                (&plan.urls, &datasets, run.id.clone(), run.execution_date);
            let (default, role) = (c.default_project.as_str(), &plan.role);
            running.push(async move {
                let done = run_task(
                    &task.kind, &task.id, default, role, urls, datasets, &run_id, date,
                )
                .await;
                (k, done)
            });
        }
        // A cancel, or a lease lost, stops the run at once: the running
        // tasks' connections are dropped with them, so their transactions
        // roll back.
        let next = tokio::select! {
            next = running.next() => next,
            () = stopped_by(&cancel) => {
                return Err("cancelled (or the lease was lost): the running tasks rolled back".into());
            }
        };
        let Some((k, done)) = next else {
            break;
        };
        let t = &c.tasks[k];
        records[k].finished_at = Some(time::now());
        match done {
            Ok(done) => {
                state[k] = State::Succeeded;
                records[k].status = "SUCCEEDED".into();
                records[k].rows = done.rows as i64;
                records[k].messages.extend(done.messages);
                let _ = tx.send(records[k].clone());
            }
            Err(e) => {
                records[k].status = "FAILED".into();
                records[k].messages.push(e.clone());
                let _ = tx.send(records[k].clone());
                match t.criticality {
                    Criticality::Critical => {
                        return Err(format!("task {} failed: {e}", t.id));
                    }
                    Criticality::Warning => {
                        warned = true;
                        state[k] = State::FailedOn;
                    }
                    Criticality::Transparent => state[k] = State::FailedOn,
                    Criticality::Break => state[k] = State::Skipped,
                    Criticality::Stop => {
                        stopped = true;
                        state[k] = State::Skipped;
                    }
                }
            }
        }
    }
    // Temporary tables go when the run ends well.
    for t in &c.tasks {
        if let TaskKind::Sql {
            table: Some(table),
            temporary: true,
            ..
        } = &t.kind
        {
            let table = dated(table, run.execution_date);
            if let Some(url) = plan.urls.get(&table.project) {
                let sets = datasets.get(&table.project).cloned().unwrap_or_default();
                if let Ok(mut w) = Wh::open(url, &sets, Some(&plan.role)).await {
                    let _ = w.delete_table(&table).await;
                }
            }
        }
    }
    Ok((warned, stopped))
}

/// Resolves once `cancel` is set.
async fn stopped_by(cancel: &AtomicBool) {
    while !cancel.load(Ordering::Relaxed) {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Every dataset a configuration names, by project.
fn datasets_by_project(c: &TableToTable) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    out.entry(c.default_project.clone())
        .or_default()
        .insert(c.default_dataset.clone());
    let mut add = |t: &TableRef| {
        out.entry(t.project.clone())
            .or_default()
            .insert(t.dataset.clone());
    };
    for t in &c.tasks {
        match &t.kind {
            TaskKind::Sql { table, .. } => table.iter().for_each(&mut add),
            TaskKind::CreateTable { table, .. } | TaskKind::DeleteTable { table } => add(table),
            TaskKind::CopyTable {
                source,
                destination,
                ..
            } => {
                add(source);
                add(destination);
            }
            TaskKind::Expectation { .. } => {}
        }
    }
    out
}

/// A table's name with the run's date variables substituted.
fn dated(t: &TableRef, date: NaiveDate) -> TableRef {
    TableRef {
        project: t.project.clone(),
        dataset: action::substitute_date(&t.dataset, date),
        table: action::substitute_date(&t.table, date),
    }
}

/// The project a task runs in: its table's; an expectation or a script
/// runs in the configuration's default project.
fn project_of<'a>(kind: &'a TaskKind, default: &'a str) -> &'a str {
    match kind {
        TaskKind::Sql { table: Some(t), .. }
        | TaskKind::CreateTable { table: t, .. }
        | TaskKind::DeleteTable { table: t } => &t.project,
        TaskKind::CopyTable { destination, .. } => &destination.project,
        TaskKind::Sql { table: None, .. } | TaskKind::Expectation { .. } => default,
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_task(
    kind: &TaskKind,
    task_id: &str,
    default_project: &str,
    role: &Role,
    urls: &BTreeMap<String, String>,
    datasets: &BTreeMap<String, BTreeSet<String>>,
    run_id: &str,
    date: NaiveDate,
) -> Result<Done, String> {
    let project = project_of(kind, default_project);
    let url = urls.get(project).ok_or_else(|| {
        format!("project `{project}` is not a warehouse of this organization (any more)")
    })?;
    let sets: BTreeSet<String> = datasets
        .get(project)
        .map(|s| s.iter().map(|d| action::substitute_date(d, date)).collect())
        .unwrap_or_default();
    let mut w = Wh::open(url, &sets, Some(role))
        .await
        .map_err(|e| e.to_string())?;
    if let Some(done) = w
        .begin_task(run_id, task_id)
        .await
        .map_err(|e| e.to_string())?
    {
        return Ok(done);
    }
    let work = match kind {
        TaskKind::Sql {
            sql,
            table: Some(t),
            write,
            ..
        } => {
            w.query_into(&action::substitute_date(sql, date), &dated(t, date), *write)
                .await
        }
        TaskKind::Sql {
            sql, table: None, ..
        } => w.script(&action::substitute_date(sql, date)).await,
        TaskKind::CreateTable {
            table,
            columns,
            force_delete,
        } => {
            w.create_table(&dated(table, date), columns, *force_delete)
                .await
        }
        TaskKind::CopyTable {
            source,
            destination,
            date_suffix,
        } => {
            let mut to = dated(destination, date);
            if let Some(format) = date_suffix {
                to.table = format!("{}{}", to.table, date.format(format));
            }
            w.copy_table(&dated(source, date), &to).await
        }
        TaskKind::DeleteTable { table } => w.delete_table(&dated(table, date)).await,
        TaskKind::Expectation { sql } => {
            match w.expect(&action::substitute_date(sql, date)).await {
                Ok(failed) if failed.is_empty() => Ok(Done {
                    messages: vec!["every expectation held".into()],
                    ..Done::default()
                }),
                Ok(failed) => Err(sluice_datapath::ImportError::Invalid(format!(
                    "expectation did not hold: {}",
                    failed.join("; ")
                ))),
                Err(e) => Err(e),
            }
        }
    };
    w.end_task(run_id, task_id, work)
        .await
        .map_err(|e| e.to_string())
}

/// Runs a table-to-storage configuration's tasks in order: each SELECT's
/// rows written as one file. A file's name is the same on every attempt of
/// the run (its `{{FD_TIME}}` is the run's creation time), so an attempt
/// taken over writes the same objects again, never a second set.
async fn run_exports(
    c: &action::TableToStorage,
    plan: &Plan,
    run: ActionRun,
    tx: mpsc::UnboundedSender<ActionTask>,
) -> Result<(), String> {
    let date = run.execution_date;
    let clock = run.created_at.time();
    let mut cleared = BTreeSet::new();
    for (i, t) in c.tasks.iter().enumerate() {
        let mut record = ActionTask {
            run_id: run.id.clone(),
            task_id: t.task_id.clone(),
            position: i as i32,
            status: "RUNNING".into(),
            attempt: run.attempt,
            started_at: Some(time::now()),
            finished_at: None,
            rows: 0,
            messages: Vec::new(),
        };
        let _ = tx.send(record.clone());
        let done = export(c, t, plan, date, clock, &mut cleared).await;
        record.finished_at = Some(time::now());
        match done {
            Ok((rows, messages)) => {
                record.status = "SUCCEEDED".into();
                record.rows = rows as i64;
                record.messages = messages;
                let _ = tx.send(record);
            }
            Err(e) => {
                record.status = "FAILED".into();
                record.messages.push(e.clone());
                let _ = tx.send(record);
                return Err(format!("task {} failed: {e}", t.task_id));
            }
        }
    }
    Ok(())
}

/// One export: the query's rows as a file in its bucket; answers the rows
/// and what was written.
async fn export(
    c: &action::TableToStorage,
    t: &action::ExportTask,
    plan: &Plan,
    date: NaiveDate,
    clock: chrono::NaiveTime,
    cleared: &mut BTreeSet<(String, String)>,
) -> Result<(u64, Vec<String>), String> {
    let url = plan.urls.get(&t.project).ok_or_else(|| {
        format!(
            "project `{}` is not a warehouse of this organization (any more)",
            t.project
        )
    })?;
    let bucket = plan.buckets.get(&t.bucket).ok_or_else(|| {
        format!(
            "bucket `{}` is not a bucket of this organization (any more)",
            t.bucket
        )
    })?;
    let mut w = Wh::open(url, &BTreeSet::new(), Some(&plan.role))
        .await
        .map_err(|e| e.to_string())?;
    let (bytes, rows) = w
        .export(&action::substitute_date(&t.sql, date), &t.format)
        .await
        .map_err(|e| e.to_string())?;
    let blobs = crate::blob::Blobs::open(bucket).map_err(|e| e.to_string())?;
    let prefix = action::substitute_date(&t.prefix, date);
    let mut messages = Vec::new();
    if c.delete_dest_bucket_content && cleared.insert((t.bucket.clone(), prefix.clone())) {
        let old = blobs.list(&prefix).await.map_err(|e| e.to_string())?;
        for key in &old {
            blobs.delete(key).await.map_err(|e| e.to_string())?;
        }
        messages.push(format!("{} objects cleared under {prefix}", old.len()));
    }
    let name = action::substitute_time(&action::substitute_date(&t.output_filename, date), clock);
    // Tailer's shard number, before the extension.
    let (stem, ext) = match name.rsplit_once('.') {
        Some((stem, ext)) => (stem.to_owned(), format!(".{ext}")),
        None => (name.clone(), String::new()),
    };
    let mut file = format!("{stem}-000000000000{ext}");
    let body = if t.format.gzip {
        use std::io::Write;
        file.push_str(".gz");
        let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(&bytes).map_err(|e| e.to_string())?;
        z.finish().map_err(|e| e.to_string())?
    } else {
        bytes
    };
    let key = if prefix.is_empty() {
        file
    } else {
        format!("{prefix}/{file}")
    };
    blobs.put(&key, &body).await.map_err(|e| e.to_string())?;
    messages.push(format!("wrote {key} ({} bytes)", body.len()));
    if c.generate_top_file {
        let top = if prefix.is_empty() {
            format!("{stem}.top")
        } else {
            format!("{prefix}/{stem}.top")
        };
        blobs.put(&top, b"").await.map_err(|e| e.to_string())?;
        messages.push(format!("wrote {top}"));
    }
    Ok((rows, messages))
}

/// How a transfer's error says no template matched its file.
const NO_MATCH: &str = "NO_MATCH: ";

/// Copies a storage-to-storage run's file to every destination, checks
/// each copy (size and SHA-256 read back), archives it, then removes it
/// from the source. Run again after a crash, it finds what is done: copies
/// are written to the same keys, and a source already removed means an
/// earlier attempt checked every copy first.
async fn run_transfer(
    c: &action::StorageToStorage,
    plan: &Plan,
    run: ActionRun,
    tx: mpsc::UnboundedSender<ActionTask>,
) -> Result<(bool, bool), String> {
    use sha2::Digest;
    let key = run.input.clone().ok_or("the run names no file")?;
    let name = key.rsplit('/').next().unwrap_or(&key).to_owned();
    let mut record = ActionTask {
        run_id: run.id.clone(),
        task_id: "transfer".into(),
        position: 0,
        status: "RUNNING".into(),
        attempt: run.attempt,
        started_at: Some(time::now()),
        finished_at: None,
        rows: 0,
        messages: vec![format!("file {key}")],
    };
    let _ = tx.send(record.clone());
    let open = |bucket: &str| -> Result<crate::blob::Blobs, String> {
        let url = plan.buckets.get(bucket).ok_or_else(|| {
            format!("bucket `{bucket}` is not a bucket of this organization (any more)")
        })?;
        crate::blob::Blobs::open(url).map_err(|e| e.to_string())
    };
    let result =
        async {
            let Some((_, date)) = c.matching(&name) else {
                return Err(format!("{NO_MATCH}no filename template matches {name}"));
            };
            let source = open(&c.source.bucket)?;
            let join = |prefix: &str, n: &str| {
                if prefix.is_empty() {
                    n.to_owned()
                } else {
                    format!("{prefix}/{n}")
                }
            };
            let bytes = match source.get(&key).await {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    // An earlier attempt checked every copy, then removed it.
                    for d in &c.destinations {
                        let there = open(&d.bucket)?.get(&join(&d.prefix, &name)).await;
                        if there.is_err() {
                            return Err(format!(
                                "{key} is gone from the source and not in {}",
                                d.bucket
                            ));
                        }
                    }
                    return Ok(vec!["copied and removed by an earlier attempt".to_owned()]);
                }
                Err(e) => return Err(format!("reading {key}: {e}")),
            };
            let mut said = Vec::new();
            if bytes.is_empty() {
                match c.empty_file_policy.as_str() {
                    "PROCESS" => {}
                    "TRIGGER_FAILED_STATUS" => return Err(format!("{key} is empty")),
                    "TRIGGER_SUCCESS_STATUS" => {
                        return Ok(vec![format!("{key} is empty: nothing copied")]);
                    }
                    _ => {
                        return Ok(vec![format!(
                            "{key} is empty: ignored (empty_file_policy NONE)"
                        )])
                    }
                }
            }
            let sum = hex::encode(sha2::Sha256::digest(&bytes));
            let put_checked =
                |blobs: crate::blob::Blobs, to: String, bytes: Vec<u8>, sum: String| async move {
                    blobs
                        .put(&to, &bytes)
                        .await
                        .map_err(|e| format!("writing {to}: {e}"))?;
                    let back = blobs
                        .get(&to)
                        .await
                        .map_err(|e| format!("reading {to} back: {e}"))?;
                    if back.len() != bytes.len() || hex::encode(sha2::Sha256::digest(&back)) != sum
                    {
                        return Err(format!("{to} differs from the source once written"));
                    }
                    Ok::<_, String>(to)
                };
            for d in &c.destinations {
                let to = put_checked(
                    open(&d.bucket)?,
                    join(&d.prefix, &name),
                    bytes.clone(),
                    sum.clone(),
                )
                .await?;
                said.push(format!(
                    "copied to {}:{to} ({} bytes, sha256 {})",
                    d.bucket,
                    bytes.len(),
                    &sum[..12]
                ));
            }
            if let Some(archive) = &c.archive_prefix {
                let day = date.map_or("ALL".to_owned(), |d| d.format("%Y%m%d").to_string());
                let to = put_checked(
                    open(&c.source.bucket)?,
                    format!("{archive}/{day}/{name}"),
                    bytes.clone(),
                    sum.clone(),
                )
                .await?;
                said.push(format!("archived to {to}"));
            }
            source
                .delete(&key)
                .await
                .map_err(|e| format!("removing {key}: {e}"))?;
            said.push(format!("removed {key} from the source"));
            Ok(said)
        }
        .await;
    record.finished_at = Some(time::now());
    match result {
        Ok(messages) => {
            record.status = "SUCCEEDED".into();
            record.rows = 1;
            record.messages.extend(messages);
            let _ = tx.send(record);
            Ok((false, false))
        }
        Err(e) => {
            record.status = "FAILED".into();
            record
                .messages
                .push(e.trim_start_matches(NO_MATCH).to_owned());
            let _ = tx.send(record);
            Err(e)
        }
    }
}
