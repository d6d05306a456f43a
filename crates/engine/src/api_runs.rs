//! The API runner: runs of HTTP API sources, claimed under leases as
//! action runs and import queries are, each through the tasks the API Run
//! page shows:
//!
//! 1. **extraction** — one task per endpoint (named after its resource),
//!    split into parts every [`PAGES_PER_TASK`] pages; pages are flattened
//!    and staged as batch files with a manifest per part;
//! 2. **metadata consolidation** — per table, the batches' columns merged
//!    into one blueprint (widenings reported);
//! 3. **table consolidation** — per table, the batches joined into one
//!    file the ingestion reads with the blueprint's columns;
//! 4. **ingestion** — per table, the load pipeline into the warehouse, all
//!    tables in one destination transaction: rows land in that transaction
//!    (a destructive load into a new table, a merge into a stage table), and
//!    each table's ledger row is written in it;
//! 5. **complete ingestion** — the commit: every table goes live at once.
//!
//! A worker lost during extraction leaves a stage the next attempt throws
//! away (nothing was loaded); one lost during ingestion leaves a complete
//! stage the next attempt loads again — its ledger keys make a table the
//! lost attempt did commit load nothing twice. A cancel stops the run
//! between pages or rolls the ingestion back: every live table stays as
//! it was.

use crate::lease::Backoff;
use crate::metrics::{self, METRICS};
use crate::shutdown::Shutdown;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

use sluice_datapath::api::{self, Http, ParentRef, Stage, Walk};
use sluice_datapath::{BatchLoad, ImportSpec, LoadSession, Mode, Progress, StageEvent};
use sluice_domain::api_source::{
    self as domain, ApiRun, ApiRunTable, ApiSourceConfig, ApiTask, RunType, WriteDisposition,
};
use sluice_domain::time;
use sluice_domain::RunStatus;
use sluice_store::{ApiOutcome, MetadataStore, StoreError};
use tokio::sync::Semaphore;

use crate::lease::{Every, KeepAlive};
use crate::secrets::Sealer;
use crate::Wakers;

/// Pages an extraction task fetches before the next part starts.
pub const PAGES_PER_TASK: u64 = 100;

/// Task positions: extraction parts by resource, then each later step by
/// table, so a task keeps its place however many parts came before.
const METADATA_AT: i64 = 100_000;
const TABLE_AT: i64 = 200_000;
const INGESTION_AT: i64 = 300_000;
const COMPLETE_AT: i64 = 400_000;

pub struct ApiRunner {
    store: Arc<dyn MetadataStore>,
    sealer: Sealer,
    /// The embedded warehouse's folder (None: none on this server).
    warehouse_root: Option<PathBuf>,
    /// Where runs stage their pages.
    stage_root: PathBuf,
    name: String,
    slots: usize,
    lease_ttl: Duration,
    heartbeat: Duration,
    poll: Duration,
    wakers: Arc<Wakers>,
    /// Lost leases are looked for every 250 ms at most.
    reap: Every,
}

/// Where a run's tables land.
struct Destination {
    /// The load's destination URL.
    url: String,
    /// Whether it is PostgreSQL (tables as `dataset.table`); else SQLite,
    /// the dataset's own file.
    postgres: bool,
    dataset: String,
}

impl Destination {
    fn target(&self, table: &str) -> String {
        if self.postgres {
            format!("{}.{table}", self.dataset)
        } else {
            table.to_owned()
        }
    }
}

/// Something that went wrong in a run, said once.
type Failure = String;

impl ApiRunner {
    pub fn new(
        store: Arc<dyn MetadataStore>,
        sealer: Sealer,
        config: &crate::EngineConfig,
        warehouse_root: Option<PathBuf>,
        name: String,
        wakers: Arc<Wakers>,
    ) -> ApiRunner {
        ApiRunner {
            store,
            sealer,
            warehouse_root,
            stage_root: config.data_dir.join("api-runs"),
            name,
            slots: config.action_slots.max(1),
            lease_ttl: config.lease_ttl,
            heartbeat: config.heartbeat,
            poll: config.poll.max(Duration::from_millis(200)),
            wakers,
            reap: Every::new(Duration::from_millis(250)),
        }
    }

    /// Runs until the process ends.
    /// Claims and runs API runs until `shutdown` stops it; then waits for
    /// those under way. A run the grace period cuts short stops (what it
    /// staged stays for the next attempt; no load committed) and is handed
    /// back: RUNNABLE at once, for any process to go on with.
    pub async fn run(self: Arc<Self>, shutdown: Shutdown) {
        let slots = Arc::new(Semaphore::new(self.slots));
        let mut backoff = Backoff::new(self.poll);
        while !shutdown.is_stopping() {
            let wait = backoff.after(self.turn(&slots, &shutdown).await);
            tokio::select! {
                _ = self.wakers.api.notified() => {}
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.stopping() => {}
            }
        }
        shutdown.drained(&slots, self.slots).await;
    }

    /// One turn: reap, claim. False when the store did not answer.
    async fn turn(self: &Arc<Self>, slots: &Arc<Semaphore>, shutdown: &Shutdown) -> bool {
        let mut ok = true;
        if self.reap.due() {
            match self.store.reap_api_runs(time::now()).await {
                Ok(ids) => METRICS.took_back(metrics::API_RUN, &ids),
                Err(e) => {
                    ok = false;
                    tracing::warn!("reaping lost API runs: {e}")
                }
            }
        }
        let free = slots.available_permits();
        if free == 0 {
            return ok;
        }
        match self
            .store
            .claim_api_runs(&self.name, free as u32, self.lease_ttl, time::now())
            .await
        {
            Ok(claimed) => {
                for run in claimed {
                    let Ok(permit) = slots.clone().acquire_owned().await else {
                        return ok;
                    };
                    let (me, shutdown) = (self.clone(), shutdown.clone());
                    let span = tracing::info_span!("api_run", api_run_id = %run.id, org = %run.organization_id, worker = %self.name);
                    tokio::spawn(
                        async move {
                            me.execute(run, Some(shutdown)).await;
                            drop(permit);
                            me.wakers.api.notify_one();
                        }
                        .instrument(span),
                    );
                }
            }
            Err(e) => {
                ok = false;
                tracing::warn!("claiming API runs: {e}")
            }
        }
        ok
    }

    /// Runs run `id` in this process when it waits to start; false when
    /// another worker has it (or it ended).
    pub async fn run_one(&self, id: &str) -> Result<bool, StoreError> {
        match self
            .store
            .claim_api_run(id, &self.name, self.lease_ttl, time::now())
            .await?
        {
            Some(run) => {
                self.execute(run, None).await;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    async fn execute(&self, run: ApiRun, shutdown: Option<Shutdown>) {
        let token = run.lease_token;
        let started = std::time::Instant::now();
        METRICS.claimed.with_label_values(&[metrics::API_RUN]).inc();
        tracing::info!(api_run_id = %run.id, source = %run.source, org = %run.organization_id, attempt = run.attempt, "API run started");
        let status = match self
            .store
            .api_run_running(&run.id, token, time::now())
            .await
        {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("API run {}: {e}", run.id);
                return;
            }
        };
        let keep = {
            let (store, id, ttl) = (self.store.clone(), run.id.clone(), self.lease_ttl);
            KeepAlive::start(
                format!("API run {}", run.id),
                self.heartbeat,
                shutdown.clone(),
                move || {
                    let (store, id) = (store.clone(), id.clone());
                    async move { store.heartbeat_api_run(&id, token, ttl, time::now()).await }
                },
            )
        };
        if status == RunStatus::Canceling {
            keep.cancel.store(true, Ordering::Relaxed);
        }
        tracing::info!(
            "API run {} of {} started (attempt {})",
            run.id,
            run.source,
            run.attempt
        );
        let outcome =
            match Shutdown::unless_cut_short(shutdown.as_ref(), self.work(&run, &keep)).await {
                None => {
                    drop(keep);
                    return self.hand_back(&run, started).await;
                }
                Some(Ok((tables, records))) => ApiOutcome::Succeeded { tables, records },
                Some(Err(_)) if keep.handing_back() => {
                    drop(keep);
                    return self.hand_back(&run, started).await;
                }
                Some(Err(error)) => {
                    // The tasks it never ran (or left running) are not waiting
                    // for anything any more.
                    if !keep.lost() {
                        self.abandon(&run).await;
                    }
                    ApiOutcome::Failed { error }
                }
            };
        if keep.lost() {
            METRICS
                .lease_losses
                .with_label_values(&[metrics::API_RUN])
                .inc();
            tracing::warn!(
                "API run {}: the lease was lost; another worker has it",
                run.id
            );
            return;
        }
        drop(keep);
        match self
            .store
            .finish_api_run(&run.id, token, &outcome, time::now())
            .await
        {
            Ok(status) => {
                let secs = started.elapsed().as_secs_f64();
                let ended = metrics::outcome(status);
                METRICS.ended(metrics::API_RUN, ended, secs);
                tracing::info!(
                    api_run_id = %run.id,
                    source = %run.source,
                    org = %run.organization_id,
                    outcome = ended,
                    duration_ms = (secs * 1000.0) as u64,
                    "API run ended"
                );
                // Ended: no attempt reads its stage again (a retry is a
                // run of its own).
                if let Err(e) = Stage::new(self.stage_root.join(&run.id)).clear() {
                    tracing::warn!("API run {}: {e}", run.id);
                }
            }
            Err(e) => tracing::warn!("API run {}: recording its end: {e}", run.id),
        }
    }

    /// Gives a run the grace period cut short back to the queue; its
    /// stage stays for the next attempt.
    async fn hand_back(&self, run: &ApiRun, started: std::time::Instant) {
        let answer = self
            .store
            .hand_back_api_run(&run.id, run.lease_token, time::now())
            .await;
        let secs = started.elapsed().as_secs_f64();
        crate::lease::handed_back(metrics::API_RUN, &run.id, answer, secs);
    }

    /// Marks a failed or cancelled run's tasks that did not end as
    /// cancelled.
    async fn abandon(&self, run: &ApiRun) {
        let tasks = Tasks {
            store: self.store.clone(),
            run_id: run.id.clone(),
            token: run.lease_token,
        };
        let Ok(all) = self.store.api_tasks(&run.id).await else {
            return;
        };
        for t in all.into_iter().filter(|t| !t.status.is_final()) {
            let mut t = t;
            t.messages.push("not run: the run ended first".into());
            if let Err(e) = tasks.end(t, RunStatus::Cancelled).await {
                tracing::warn!("API run {}: {e}", run.id);
                return;
            }
        }
    }

    fn destination(
        &self,
        run: &ApiRun,
        config: &ApiSourceConfig,
        named: Option<String>,
    ) -> Result<Destination, Failure> {
        let url = match named {
            Some(url) => url,
            None => crate::control::EMBEDDED_WAREHOUSE.to_owned(),
        };
        if url == crate::control::EMBEDDED_WAREHOUSE {
            let root = self
                .warehouse_root
                .as_ref()
                .ok_or("this server has no embedded warehouse")?;
            let folder = root.join("actions").join(run.organization_id.as_str());
            std::fs::create_dir_all(&folder)
                .map_err(|e| format!("making {}: {e}", folder.display()))?;
            return Ok(Destination {
                url: format!(
                    "sqlite://{}",
                    folder.join(format!("{}.db", config.dataset)).display()
                ),
                postgres: false,
                dataset: config.dataset.clone(),
            });
        }
        Ok(Destination {
            url,
            postgres: true,
            dataset: config.dataset.clone(),
        })
    }

    /// The run's tasks; answers the tables and records it loaded.
    async fn work(&self, run: &ApiRun, keep: &KeepAlive) -> Result<(i64, i64), Failure> {
        let token = run.lease_token;
        let source = self
            .store
            .get_api_source(&run.organization_id, &run.source)
            .await
            .map_err(|e| e.to_string())?;
        let doc: serde_json::Value =
            serde_json::from_str(&self.sealer.open(&source.config_sealed)?)
                .map_err(|e| format!("the source's stored file: {e}"))?;
        let config = domain::parse(&doc).map_err(|p| {
            p.iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join("; ")
        })?;
        let named = match &config.destination {
            None => None,
            Some(name) => {
                let w = self
                    .store
                    .warehouses_of(&run.organization_id)
                    .await
                    .map_err(|e| e.to_string())?
                    .into_iter()
                    .find(|w| &w.name == name)
                    .ok_or_else(|| {
                        format!("warehouse `{name}` is not declared (sluice warehouse add)")
                    })?;
                Some(self.sealer.open(&w.url_sealed)?)
            }
        };
        let dest = self.destination(run, &config, named)?;
        let stage = Stage::new(self.stage_root.join(&run.id));
        let tasks = Tasks {
            store: self.store.clone(),
            run_id: run.id.clone(),
            token,
        };

        if !api::staged(&stage) {
            // Nothing was loaded: an earlier attempt's stage and tasks go.
            stage.clear().map_err(|e| e.to_string())?;
            self.store
                .clear_api_tasks(&run.id, 0, token)
                .await
                .map_err(|e| e.to_string())?;
            self.extract(run, &config, &dest, &stage, &tasks, &keep.cancel)
                .await?;
        } else {
            self.store
                .clear_api_tasks(&run.id, INGESTION_AT, token)
                .await
                .map_err(|e| e.to_string())?;
        }
        self.ingest(run, &config, &dest, &stage, &tasks, keep).await
    }

    /// Extraction and both consolidations: a complete stage.
    async fn extract(
        &self,
        run: &ApiRun,
        config: &ApiSourceConfig,
        dest: &Destination,
        stage: &Stage,
        tasks: &Tasks,
        cancel: &std::sync::atomic::AtomicBool,
    ) -> Result<(), Failure> {
        let cancelled = || cancel.load(Ordering::Relaxed);
        let mut http = Http::new(&config.client).map_err(|e| e.to_string())?;
        // Waiting to start, each: the first part of every endpoint, and the
        // end.
        for (i, r) in config.resources.iter().enumerate() {
            tasks
                .put(tasks.task(
                    i as i64 * 1000,
                    &r.name,
                    domain::EXTRACTION,
                    Some(api_source_table(&r.name)),
                ))
                .await?;
        }
        tasks
            .put(tasks.task(
                COMPLETE_AT,
                "complete_ingestion",
                domain::COMPLETE_INGESTION,
                None,
            ))
            .await?;
        let mut for_children: BTreeMap<String, Vec<ParentRef>> = BTreeMap::new();
        let mut cursors: BTreeMap<String, String> = BTreeMap::new();
        for (i, resource) in ordered(config) {
            let table = api_source_table(&resource.name);
            let after = match (&resource.endpoint.incremental, run.run_type) {
                (Some(_), RunType::Incremental) => {
                    api::last_cursor(&dest.url, &dest.target(&table), &job(run, &table))
                        .await
                        .map_err(|e| format!("reading the cursor of {}: {e}", resource.name))?
                }
                _ => None,
            };
            let parents = for_children.remove(&resource.name).unwrap_or_default();
            let mut walk = Walk::new(config, resource, stage.clone(), after.clone(), parents);
            let mut part_no = 0i64;
            while walk.more(&http) {
                let mut task = tasks.task(
                    i as i64 * 1000 + part_no,
                    &resource.name,
                    domain::EXTRACTION,
                    Some(table.clone()),
                );
                if part_no > 0 {
                    task.name = format!("{} (part {})", resource.name, part_no + 1);
                }
                let mut task = tasks.start(task).await?;
                match walk.part(&mut http, PAGES_PER_TASK, cancel).await {
                    Ok(Some(part)) => {
                        task.records = part.records as i64;
                        task.messages = part.messages;
                        task.messages.push(format!(
                            "{} page(s), {} record(s)",
                            part.pages, part.records
                        ));
                        tasks.end(task, RunStatus::Succeeded).await?;
                    }
                    Ok(None) => {
                        tasks.end(task, RunStatus::Succeeded).await?;
                        break;
                    }
                    Err(e) => {
                        let status = if cancelled() {
                            RunStatus::Cancelled
                        } else {
                            RunStatus::Failed
                        };
                        task.messages
                            .extend(http.messages.iter().rev().take(5).rev().cloned());
                        let why = if status == RunStatus::Cancelled {
                            "cancelled between two pages: nothing of this run was loaded".to_owned()
                        } else {
                            e.to_string()
                        };
                        task.messages.push(why.clone());
                        tasks.end(task, status).await?;
                        return Err(format!("extracting {}: {why}", resource.name));
                    }
                }
                part_no += 1;
            }
            if part_no == 0 {
                // No pages at all (a child without parents).
                let mut task = tasks.task(
                    i as i64 * 1000,
                    &resource.name,
                    domain::EXTRACTION,
                    Some(table.clone()),
                );
                task.started_at = Some(time::now());
                task.messages
                    .push("no pages to fetch: its parent had no records".into());
                tasks.end(task, RunStatus::Succeeded).await?;
            }
            for (child, refs) in std::mem::take(&mut walk.for_children) {
                for_children.entry(child).or_default().extend(refs);
            }
            if let Some(c) = walk.cursor_max.clone().or(after) {
                cursors.insert(table.clone(), c);
            }
        }
        let tables = stage.tables().map_err(|e| e.to_string())?;
        let mut blueprints = Vec::new();
        for (n, table) in tables.iter().enumerate() {
            let task = tasks.task(
                METADATA_AT + n as i64,
                "metadata_consolidation",
                domain::METADATA_CONSOLIDATION,
                Some(table.clone()),
            );
            let mut task = tasks.start(task).await?;
            let b = api::consolidate_metadata(stage, table).map_err(|e| e.to_string())?;
            task.records = b.rows as i64;
            task.messages = b.changes.clone();
            task.messages.push(format!(
                "{} column(s) from {} batch(es)",
                b.columns.len(),
                b.batches
            ));
            tasks.end(task, RunStatus::Succeeded).await?;
            blueprints.push(b);
        }
        for (n, b) in blueprints.iter().enumerate() {
            if cancelled() {
                return Err(
                    "cancelled before its tables were consolidated: nothing was loaded".into(),
                );
            }
            let task = tasks.task(
                TABLE_AT + n as i64,
                "table_consolidation",
                domain::TABLE_CONSOLIDATION,
                Some(b.table.clone()),
            );
            let mut task = tasks.start(task).await?;
            let rows = api::consolidate_table(stage, b).map_err(|e| e.to_string())?;
            task.records = rows as i64;
            tasks.end(task, RunStatus::Succeeded).await?;
            self.store
                .put_api_run_table(&ApiRunTable {
                    run_id: run.id.clone(),
                    table: b.table.clone(),
                    columns: b
                        .columns
                        .iter()
                        .map(|c| (c.name.clone(), api::warehouse_type(&c.kind)))
                        .collect(),
                    records: rows as i64,
                })
                .await
                .map_err(|e| e.to_string())?;
        }
        let path = stage.dir.join("cursors.json");
        std::fs::File::create(&path)
            .and_then(|mut f| {
                use std::io::Write;
                f.write_all(serde_json::to_string(&cursors).expect("JSON").as_bytes())?;
                f.sync_all()
            })
            .map_err(|e| format!("{}: {e}", path.display()))?;
        api::mark_staged(stage).map_err(|e| e.to_string())
    }

    /// Ingestion of every staged table in one destination transaction, and
    /// complete ingestion: its commit.
    async fn ingest(
        &self,
        run: &ApiRun,
        config: &ApiSourceConfig,
        dest: &Destination,
        stage: &Stage,
        tasks: &Tasks,
        keep: &KeepAlive,
    ) -> Result<(i64, i64), Failure> {
        let tables = stage.tables().map_err(|e| e.to_string())?;
        let cursors: BTreeMap<String, String> =
            std::fs::read_to_string(stage.dir.join("cursors.json"))
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok())
                .unwrap_or_default();
        for (n, table) in tables.iter().enumerate() {
            tasks
                .put(tasks.task(
                    INGESTION_AT + n as i64,
                    "ingestion",
                    domain::INGESTION,
                    Some(table.clone()),
                ))
                .await?;
        }
        let mut session = LoadSession::open(&dest.url)
            .await
            .map_err(|e| e.to_string())?;
        let loaded = async {
            if dest.postgres {
                session
                    .ensure_schema(&dest.dataset)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            let mut records = 0i64;
            for (n, table) in tables.iter().enumerate() {
                let task = tasks.task(
                    INGESTION_AT + n as i64,
                    "ingestion",
                    domain::INGESTION,
                    Some(table.clone()),
                );
                let mut task = tasks.start(task).await?;
                let blueprint = api::blueprint(stage, table).map_err(|e| e.to_string())?;
                let disposition = root_disposition(config, table);
                let mut spec = ImportSpec::new(
                    &stage.tables_url(),
                    &format!("{table}.jsonl"),
                    &dest.url,
                    &dest.target(table),
                );
                spec.mode = match (run.run_type, disposition) {
                    (RunType::Destructive, _) | (_, WriteDisposition::Replace) => Mode::Destructive,
                    (_, WriteDisposition::Merge) => Mode::Merge,
                    (_, WriteDisposition::Append) => Mode::Incremental,
                };
                if spec.mode == Mode::Merge {
                    spec.key = Some(api::flatten::ID.to_owned());
                }
                spec.job = Some(job(run, table));
                spec.batch = Some(BatchLoad {
                    key: format!("api-run:{}", run.id),
                    end: cursors.get(table).cloned(),
                });
                spec.declared = Some(api::declared_columns(&blueprint));
                spec.cancel = Some(keep.cancel.clone());
                spec.replace_existing = false;
                let mut notes = Notes::default();
                match session.load(&spec, &mut notes).await {
                    Ok(report) => {
                        task.records = report.rows as i64;
                        task.messages = notes.0;
                        if report.already_loaded {
                            task.messages
                                .push("loaded already by an earlier attempt of this run".into());
                        } else {
                            task.messages.push(format!(
                                "{} record(s) into {}, live at complete ingestion",
                                report.rows,
                                dest.target(table)
                            ));
                        }
                        records += report.rows as i64;
                        tasks.end(task, RunStatus::Succeeded).await?;
                    }
                    Err(e) => {
                        let cancelled = keep.cancel.load(Ordering::Relaxed);
                        task.messages = notes.0;
                        task.messages.push(e.to_string());
                        tasks
                            .end(
                                task,
                                if cancelled {
                                    RunStatus::Cancelled
                                } else {
                                    RunStatus::Failed
                                },
                            )
                            .await?;
                        return Err(format!("ingesting {table}: {e}"));
                    }
                }
            }
            Ok::<_, Failure>(records)
        }
        .await;
        let records = match loaded {
            Ok(r) => r,
            Err(e) => {
                session.rollback().await;
                return Err(e);
            }
        };
        let task = tasks.task(
            COMPLETE_AT,
            "complete_ingestion",
            domain::COMPLETE_INGESTION,
            None,
        );
        let mut task = tasks.start(task).await?;
        if keep.cancel.load(Ordering::Relaxed) {
            session.rollback().await;
            tasks.end(task, RunStatus::Cancelled).await?;
            return Err("cancelled: nothing was made live".into());
        }
        if let Err(e) = session.commit().await {
            task.messages.push(e.to_string());
            tasks.end(task, RunStatus::Failed).await?;
            return Err(format!("making the tables live: {e}"));
        }
        task.records = records;
        task.messages.push(format!(
            "{} table(s) live in {}",
            tables.len(),
            dest.dataset
        ));
        tasks.end(task, RunStatus::Succeeded).await?;
        Ok((tables.len() as i64, records))
    }
}

/// A resource's table name.
fn api_source_table(resource: &str) -> String {
    api::flatten::normalize(resource)
}

/// The ledger's job of a source's table.
fn job(run: &ApiRun, table: &str) -> String {
    format!("api:{}/{}/{table}", run.organization_id, run.source)
}

/// The write disposition of the resource a table comes from (a child
/// table follows its root's).
fn root_disposition(config: &ApiSourceConfig, table: &str) -> WriteDisposition {
    config
        .resources
        .iter()
        .filter(|r| {
            let root = api_source_table(&r.name);
            table == root || table.starts_with(&format!("{root}__"))
        })
        .max_by_key(|r| r.name.len())
        .map(|r| r.write_disposition)
        .unwrap_or(WriteDisposition::Append)
}

/// Resources with their index, parents before their children.
fn ordered(config: &ApiSourceConfig) -> Vec<(usize, &domain::Resource)> {
    let mut out: Vec<(usize, &domain::Resource)> = Vec::new();
    let mut left: Vec<(usize, &domain::Resource)> = config.resources.iter().enumerate().collect();
    while !left.is_empty() {
        let before = left.len();
        left.retain(|(i, r)| match r.parent() {
            Some((_, p, _)) if !out.iter().any(|(_, o)| o.name == p) => true,
            _ => {
                out.push((*i, r));
                false
            }
        });
        if left.len() == before {
            // Loops are refused when a source is made; never spin.
            out.append(&mut left);
        }
    }
    out
}

/// A run's task writes, fenced by its lease.
struct Tasks {
    store: Arc<dyn MetadataStore>,
    run_id: String,
    token: i64,
}

impl Tasks {
    fn task(&self, position: i64, name: &str, kind: &str, table: Option<String>) -> ApiTask {
        ApiTask {
            run_id: self.run_id.clone(),
            position,
            name: name.to_owned(),
            kind: kind.to_owned(),
            table,
            status: RunStatus::Pending,
            records: 0,
            messages: Vec::new(),
            started_at: None,
            finished_at: None,
        }
    }

    /// Records `task` as running from now.
    async fn start(&self, mut task: ApiTask) -> Result<ApiTask, Failure> {
        task.status = RunStatus::Running;
        task.started_at = Some(time::now());
        self.put(task.clone()).await?;
        Ok(task)
    }

    async fn put(&self, task: ApiTask) -> Result<(), Failure> {
        match self.store.put_api_task(&task, self.token).await {
            Ok(()) => Ok(()),
            Err(StoreError::LeaseLost(_)) => Err("the lease was lost".into()),
            Err(e) => Err(e.to_string()),
        }
    }

    async fn end(&self, mut task: ApiTask, status: RunStatus) -> Result<(), Failure> {
        task.status = status;
        task.finished_at = Some(time::now());
        if task.started_at.is_none() {
            task.started_at = task.finished_at;
        }
        self.put(task).await
    }
}

/// The schema changes and notices of a load, as task messages.
#[derive(Default)]
struct Notes(Vec<String>);

impl Progress for Notes {
    fn rows(&mut self, _: u64, _: Option<u64>) {}
    fn stage(&mut self, event: StageEvent) {
        match event {
            StageEvent::Consolidated { changes, .. } => self.0.extend(changes),
            StageEvent::Notice(n) => self.0.push(n),
            _ => {}
        }
    }
}
