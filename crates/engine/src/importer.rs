//! The importer: table import jobs' scheduler and worker.
//!
//! Each turn it gives back the queries of lost workers, makes the queries
//! of the jobs that are due (the store makes each once, however many
//! importers share it), and claims RUNNABLE queries into its free slots.
//! A query runs the data path with its window, the job's column mapping,
//! its batches staged in object storage, and its four tasks — extract,
//! consolidate, load, complete — written as they go. A heartbeat renews the
//! lease; a cancel (CANCELING) or a lost lease stops the load, which then
//! rolls back: the destination holds the window entirely or not at all.

use crate::lease::{seconds_since, Backoff};
use crate::metrics::{self, METRICS};
use crate::shutdown::Shutdown;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

use futures_util::future::BoxFuture;
use sluice_datapath::{ImportError, ImportReport, ImportSpec, Progress, StageEvent, StageHandle};
use sluice_domain::time::{self, Timestamp};
use sluice_domain::NullChange;
use sluice_domain::*;
use sluice_store::{MetadataStore, QueryOutcome};
use tokio::sync::{mpsc, Semaphore};

use crate::blob::Blobs;
use crate::lease::KeepAlive;
use crate::secrets::Sealer;
use crate::Wakers;

pub struct Importer {
    store: Arc<dyn MetadataStore>,
    sealer: Sealer,
    blobs: Blobs,
    name: String,
    slots: usize,
    lease_ttl: Duration,
    heartbeat: Duration,
    poll: Duration,
    wakers: Arc<Wakers>,
}

/// A stage over the engine's object storage, under one attempt's prefix.
struct BlobStage {
    blobs: Blobs,
    prefix: String,
}

impl sluice_datapath::Stage for BlobStage {
    fn put(&self, name: String, bytes: bytes::Bytes) -> BoxFuture<'_, std::io::Result<String>> {
        Box::pin(async move {
            let key = format!("{}/{name}", self.prefix);
            self.blobs
                .put_owned(&key, bytes, crate::blob::Cache::Drop)
                .await
                .map_err(|e| std::io::Error::other(format!("writing {key}: {e}")))?;
            Ok(key)
        })
    }
}

impl Importer {
    pub fn new(
        store: Arc<dyn MetadataStore>,
        sealer: Sealer,
        config: &crate::EngineConfig,
        name: String,
        wakers: Arc<Wakers>,
    ) -> Importer {
        Importer {
            store,
            sealer,
            blobs: config.blobs.clone(),
            name,
            slots: config.import_slots.max(1),
            lease_ttl: config.lease_ttl,
            heartbeat: config.heartbeat,
            poll: config.poll.max(Duration::from_millis(500)),
            wakers,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn lease_ttl(&self) -> Duration {
        self.lease_ttl
    }

    /// Runs until the process ends.
    /// Claims and runs queries until `shutdown` stops it; then waits for
    /// those under way. A query the grace period cuts short loads nothing
    /// (its transaction never commits) and is handed back: RUNNABLE at
    /// once, for any process to run its window again.
    pub async fn run(self: Arc<Self>, shutdown: Shutdown) {
        let slots = Arc::new(Semaphore::new(self.slots));
        let mut backoff = Backoff::new(self.poll);
        while !shutdown.is_stopping() {
            let mut ok = true;
            let now = time::now();
            match self.store.reap_queries(now).await {
                Ok(lost) => METRICS.took_back(metrics::QUERY, &lost),
                Err(e) => {
                    ok = false;
                    tracing::warn!("reaping lost queries: {e}")
                }
            }
            match self.store.schedule_queries(now).await {
                Ok(made) if !made.is_empty() => tracing::debug!("{} queries due", made.len()),
                Ok(_) => {}
                Err(e) => {
                    ok = false;
                    tracing::warn!("scheduling queries: {e}")
                }
            }
            let free = slots.available_permits();
            if free > 0 {
                match self
                    .store
                    .claim_queries(&self.name, free as u32, self.lease_ttl, time::now())
                    .await
                {
                    Ok(claimed) => {
                        for q in claimed {
                            let Ok(permit) = slots.clone().acquire_owned().await else {
                                return;
                            };
                            let (me, shutdown) = (self.clone(), shutdown.clone());
                            let span = tracing::info_span!("query", query_id = %q.id, job_id = %q.job_id, org = %q.organization_id, worker = %self.name);
                            tokio::spawn(
                                async move {
                                    me.execute_within(q, &mut (), Some(shutdown)).await;
                                    drop(permit);
                                    me.wakers.importer.notify_one();
                                }
                                .instrument(span),
                            );
                        }
                    }
                    Err(e) => {
                        ok = false;
                        tracing::warn!("claiming queries: {e}")
                    }
                }
            }
            tokio::select! {
                _ = self.wakers.importer.notified() => {}
                _ = tokio::time::sleep(backoff.after(ok)) => {}
                _ = shutdown.stopping() => {}
            }
        }
        shutdown.drained(&slots, self.slots).await;
    }

    /// Runs one claimed query to its end; answers its final status.
    /// `rows` hears the row counts as they grow (a progress bar).
    pub async fn execute(&self, q: Query, rows: &mut dyn Progress) -> RunStatus {
        self.execute_within(q, rows, None).await
    }

    /// [`Importer::execute`] within a process that may stop: at the end of
    /// `shutdown`'s grace period the load stops and the query is handed
    /// back.
    async fn execute_within(
        &self,
        q: Query,
        rows: &mut dyn Progress,
        shutdown: Option<Shutdown>,
    ) -> RunStatus {
        let token = q.lease_token;
        METRICS.claimed.with_label_values(&[metrics::QUERY]).inc();
        tracing::info!(query_id = %q.id, job_id = %q.job_id, org = %q.organization_id, attempt = q.attempt, "import query started");
        match self.store.query_running(&q.id, token, time::now()).await {
            Ok(RunStatus::Canceling) => {
                return self
                    .finish(
                        &q,
                        QueryOutcome::Failed {
                            error: "cancelled before it started".into(),
                        },
                    )
                    .await
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!("query {} could not start: {e}", q.id);
                return q.status;
            }
        }
        // The job is read once: the load and the task writer share it.
        let job = match self.store.find_job(&q.job_id).await {
            Ok(job) => job,
            Err(e) => {
                let error = e.to_string();
                return self.finish(&q, QueryOutcome::Failed { error }).await;
            }
        };
        let lease = {
            let (store, id, ttl) = (self.store.clone(), q.id.clone(), self.lease_ttl);
            KeepAlive::start(
                format!("query {}", q.id),
                self.heartbeat,
                shutdown.clone(),
                move || {
                    let (store, id) = (store.clone(), id.clone());
                    async move { store.heartbeat_query(&id, token, ttl, time::now()).await }
                },
            )
        };

        let (tx, rx) = mpsc::unbounded_channel();
        let writer = tokio::spawn(write_tasks(
            self.store.clone(),
            q.clone(),
            (job.spec.table.clone(), job.spec.target.clone()),
            rx,
        ));
        let mut recorder = Recorder {
            tx: tx.clone(),
            rows,
        };
        let session = Arc::new(AtomicI32::new(0));
        let result = Shutdown::unless_cut_short(
            shutdown.as_ref(),
            self.load(
                &job,
                &q,
                lease.cancel.clone(),
                session.clone(),
                &mut recorder,
            ),
        )
        .await;
        let Some(result) = result else {
            // The grace period ended and the load did not stop in time (a
            // COMMIT under way): its session is ended, so its transaction
            // is rolled back before the window is handed to anyone else.
            drop((recorder, tx));
            writer.abort();
            drop(lease);
            self.end_load_session(&job, &session).await;
            return self.hand_back(&q).await;
        };
        let _ = tx.send(Note::Done(
            result.as_ref().map(Clone::clone).map_err(|e| e.to_string()),
        ));
        drop(recorder);
        drop(tx);
        let _ = writer.await;
        if lease.lost() {
            tracing::warn!("query {} lost its lease; another worker has it", q.id);
            return q.status;
        }
        if lease.handing_back() && result.is_err() {
            drop(lease);
            return self.hand_back(&q).await;
        }
        let outcome = match result {
            Ok(report) => QueryOutcome::Succeeded {
                records: report.rows as i64,
                window_start: report.window_start,
                window_end: report.window_end,
            },
            Err(e) => QueryOutcome::Failed {
                error: e.to_string(),
            },
        };
        self.finish(&q, outcome).await
    }

    /// Ends the destination session of a load that did not stop.
    async fn end_load_session(&self, job: &ImportJob, session: &AtomicI32) {
        let pid = session.load(Ordering::Relaxed);
        if pid == 0 {
            return;
        }
        let Ok(dest) = self.sealer.open(&job.destination_sealed) else {
            return;
        };
        let ended = tokio::time::timeout(
            Duration::from_secs(5),
            sluice_datapath::end_session(&dest, pid),
        )
        .await;
        match ended {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!("ending the load session {pid}: {e}"),
            Err(_) => tracing::warn!("ending the load session {pid}: no answer within 5 s"),
        }
    }

    /// Gives a query the grace period cut short back to the queue.
    async fn hand_back(&self, q: &Query) -> RunStatus {
        let answer = self
            .store
            .hand_back_query(&q.id, q.lease_token, time::now())
            .await;
        let secs = seconds_since(q.started_at);
        if crate::lease::handed_back(metrics::QUERY, q.id.as_str(), answer, secs) {
            RunStatus::Runnable
        } else {
            q.status
        }
    }

    async fn finish(&self, q: &Query, outcome: QueryOutcome) -> RunStatus {
        let now = time::now();
        match self
            .store
            .finish_query(&q.id, q.lease_token, &outcome, now)
            .await
        {
            Ok(status) => {
                let secs = seconds_since(q.started_at);
                let ended = metrics::outcome(status);
                METRICS.ended(metrics::QUERY, ended, secs);
                if let QueryOutcome::Succeeded { records, .. } = &outcome {
                    METRICS.rows_imported.inc_by((*records).max(0) as u64);
                }
                tracing::info!(
                    query_id = %q.id,
                    job_id = %q.job_id,
                    org = %q.organization_id,
                    outcome = ended,
                    records = match &outcome { QueryOutcome::Succeeded { records, .. } => *records, _ => 0 },
                    duration_ms = (secs * 1000.0) as u64,
                    "import query ended"
                );
                status
            }
            Err(e) => {
                tracing::warn!("ending query {}: {e}", q.id);
                q.status
            }
        }
    }

    async fn load(
        &self,
        job: &ImportJob,
        q: &Query,
        cancel: Arc<AtomicBool>,
        session: Arc<AtomicI32>,
        progress: &mut dyn Progress,
    ) -> Result<ImportReport, ImportError> {
        let source = self
            .sealer
            .open(&job.source_sealed)
            .map_err(ImportError::Invalid)?;
        if let Some(warehouse) = warehouse_of(&source) {
            return Err(ImportError::Invalid(format!(
                "sluice has no {warehouse} connector yet: the job is stored, but its queries \
                 cannot read {warehouse}"
            )));
        }
        let dest = self
            .sealer
            .open(&job.destination_sealed)
            .map_err(ImportError::Invalid)?;
        let spec = &job.spec;
        let window = match &q.requested {
            Some((start, end)) => sluice_datapath::WindowRequest::Explicit {
                start: start.clone(),
                end: end.clone(),
                key: q.id.to_string(),
            },
            None => sluice_datapath::WindowRequest::Next {
                size: spec
                    .ingestion
                    .query_window_size_hours
                    .filter(|h| *h > 0.0)
                    .map(|h| Duration::from_secs_f64(h * 3600.0)),
                row_limit: spec.ingestion.row_limit.filter(|n| *n > 0),
            },
        };
        let import = ImportSpec {
            source_url: source,
            source_table: spec.table.clone(),
            dest_url: dest,
            target: spec.target.clone(),
            mode: spec.mode,
            change_column: spec.change_column().map(str::to_owned),
            job: Some(job.id.to_string()),
            window,
            columns: None,
            // Resolved against the columns the import reads anyway: no
            // second look at the source.
            mapping: Some(spec.mapping.clone()),
            stage: Some(StageHandle(Arc::new(BlobStage {
                blobs: self.blobs.clone(),
                prefix: format!("staging/{}/{}/attempt-{}", job.id, q.id, q.attempt),
            }))),
            cancel: Some(cancel),
            session: Some(session),
            key: spec.key().map(str::to_owned),
            null_change: match spec.ingestion.null_change.unwrap_or_default() {
                NullChange::Fail => sluice_datapath::NullChange::Fail,
                NullChange::Exclude => sluice_datapath::NullChange::Exclude,
                NullChange::Include => sluice_datapath::NullChange::Include,
            },
            lookback: spec
                .ingestion
                .lookback_minutes
                .filter(|m| *m > 0)
                .map(|m| Duration::from_secs(m * 60)),
            // A job's destination table is its own (the job is refused
            // when another job names it).
            replace_existing: false,
            batch: None,
            declared: None,
            // A big whole-table load between PostgreSQL databases goes
            // in parts, as `sluice import` does; windows are one stream.
            parallel: None,
        };
        sluice_datapath::import(&import, progress).await
    }
}

/// What the recorder tells the task writer.
enum Note {
    Event(StageEvent),
    Done(Result<ImportReport, String>),
}

struct Recorder<'a> {
    tx: mpsc::UnboundedSender<Note>,
    rows: &'a mut dyn Progress,
}

impl Progress for Recorder<'_> {
    fn rows(&mut self, done: u64, estimate: Option<u64>) {
        self.rows.rows(done, estimate);
    }
    fn stage(&mut self, event: StageEvent) {
        let _ = self.tx.send(Note::Event(event));
    }
}

/// At most this many messages a task keeps (batches beyond are summed up).
const MESSAGES: usize = 40;

struct Tasks {
    q: Query,
    tasks: Vec<QueryTask>,
    dirty: [bool; 4],
    /// Whether a task's end was counted in the metrics.
    timed: [bool; 4],
    /// The window, once known, not yet written.
    window: Option<(Option<String>, Option<String>)>,
    /// A status or the window changed since the last write: written at
    /// once, where progress alone (rows, batch messages) waits a little.
    urgent: bool,
}

impl Tasks {
    fn new(q: Query, source: String, target: String, now: Timestamp) -> Tasks {
        let tasks = TASKS
            .iter()
            .enumerate()
            .map(|(i, name)| QueryTask {
                query_id: q.id.clone(),
                seq: i as i32 + 1,
                name: (*name).to_owned(),
                status: if i == 0 { "RUNNING" } else { "PENDING" }.into(),
                table: if i == 0 {
                    source.clone()
                } else {
                    target.clone()
                },
                records: 0,
                messages: vec![],
                started_at: now,
                finished_at: None,
            })
            .collect();
        Tasks {
            q,
            tasks,
            dirty: [true, false, false, false],
            timed: [false; 4],
            window: None,
            urgent: true,
        }
    }

    fn set(&mut self, i: usize, status: &str, now: Timestamp) {
        let t = &mut self.tasks[i];
        if t.status == "PENDING" {
            t.started_at = now;
        }
        if t.status != status {
            self.urgent = true;
            t.status = status.into();
            if matches!(status, "SUCCEEDED" | "FAILED" | "SKIPPED") {
                t.finished_at = Some(now);
            }
        }
        self.dirty[i] = true;
    }

    fn say(&mut self, i: usize, message: String) {
        let t = &mut self.tasks[i];
        if t.messages.len() < MESSAGES {
            t.messages.push(message);
        } else if t.messages.len() == MESSAGES {
            t.messages.push("… (more batches: see the manifest)".into());
        }
        self.dirty[i] = true;
    }

    /// A message kept whatever the cap (a task's summary).
    fn say_always(&mut self, i: usize, message: String) {
        self.tasks[i].messages.push(message);
        self.dirty[i] = true;
    }

    fn apply(&mut self, event: StageEvent, now: Timestamp) {
        match event {
            StageEvent::Notice(text) => self.say(0, text),
            StageEvent::Window {
                start,
                end,
                end_exclusive,
                start_exclusive,
            } => {
                let close = if end_exclusive { ')' } else { ']' };
                let open = if start_exclusive { '(' } else { '[' };
                let text = match (&start, &end) {
                    (Some(a), Some(b)) => format!("window {open}{a}, {b}{close}"),
                    (None, Some(b)) => format!("window from the first row up to {b}"),
                    _ => "the whole table".into(),
                };
                self.say(0, text);
                self.window = Some((start, end));
                self.urgent = true;
            }
            StageEvent::Consolidated { columns, changes } => {
                self.set(1, "RUNNING", now);
                self.say(
                    1,
                    format!("{} columns: {}", columns.len(), columns.join(", ")),
                );
                for c in changes {
                    self.say(1, format!("schema change: {c}"));
                }
                self.set(1, "SUCCEEDED", now);
                // Loading starts with the first batch: the stages overlap.
                self.set(2, "RUNNING", now);
            }
            StageEvent::Extracted {
                batch,
                rows,
                bytes,
                object,
            } => {
                self.tasks[0].records += rows as i64;
                let at = object.map(|o| format!(" → {o}")).unwrap_or_default();
                self.say(0, format!("batch {batch}: {rows} rows, {bytes} bytes{at}"));
                self.tasks[2].records = self.tasks[0].records;
                self.dirty[2] = true;
            }
            StageEvent::ExtractDone {
                rows,
                batches,
                manifest,
            } => {
                self.tasks[0].records = rows as i64;
                let at = manifest
                    .map(|m| format!("; manifest {m}"))
                    .unwrap_or_default();
                // Said even past the cap on messages: it names the manifest.
                self.say_always(0, format!("{rows} rows in {batches} batches{at}"));
                self.set(0, "SUCCEEDED", now);
            }
            StageEvent::Loaded { rows, parts } => {
                self.tasks[2].records = rows as i64;
                self.say(
                    2,
                    match parts {
                        0 => format!("{rows} rows in the load's transaction"),
                        n => format!(
                            "{rows} rows loaded in {n} parts into a new table, swapped in by \
                             the load's transaction"
                        ),
                    },
                );
                self.set(2, "SUCCEEDED", now);
                self.set(3, "RUNNING", now);
            }
            StageEvent::Committed {
                rows,
                already_loaded,
            } => {
                self.tasks[3].records = rows as i64;
                if already_loaded {
                    self.say(
                        3,
                        "another attempt loaded this window already (the load ledger \
                         says so): nothing loaded twice"
                            .into(),
                    );
                } else {
                    self.say(
                        3,
                        format!(
                            "committed {rows} rows with the load-ledger row, in one transaction"
                        ),
                    );
                }
                self.set(3, "SUCCEEDED", now);
            }
        }
    }

    fn take(&mut self, note: Note) {
        match note {
            Note::Event(e) => self.apply(e, time::now()),
            Note::Done(result) => self.end(result, time::now()),
        }
    }

    /// The tasks' end: what never ran is SKIPPED (or, on failure, what ran
    /// FAILED with the error).
    fn end(&mut self, result: Result<ImportReport, String>, now: Timestamp) {
        match result {
            Ok(report) => {
                if self.tasks[0].status == "RUNNING" {
                    self.say(0, "no new rows since the last window".into());
                    self.set(0, "SUCCEEDED", now);
                }
                for i in 1..4 {
                    if self.tasks[i].status == "PENDING" {
                        self.say(i, "nothing to do".into());
                        self.set(i, "SKIPPED", now);
                    }
                }
                if self.tasks[3].status != "SUCCEEDED" && report.rows == 0 {
                    self.set(3, "SUCCEEDED", now);
                }
            }
            Err(error) => {
                for i in 0..4 {
                    match self.tasks[i].status.as_str() {
                        "RUNNING" => {
                            self.say(i, error.clone());
                            self.set(i, "FAILED", now);
                        }
                        "PENDING" => self.set(i, "SKIPPED", now),
                        _ => {}
                    }
                }
            }
        }
    }

    async fn flush(&mut self, store: &dyn MetadataStore) {
        if let Some((start, end)) = self.window.take() {
            if let Err(e) = store
                .set_query_window(
                    &self.q.id,
                    self.q.lease_token,
                    start.as_deref(),
                    end.as_deref(),
                )
                .await
            {
                tracing::debug!("recording the window of query {}: {e}", self.q.id);
            }
        }
        for i in 0..4 {
            if !self.dirty[i] || self.tasks[i].status == "PENDING" {
                continue;
            }
            let t = &self.tasks[i];
            if let (false, Some(end)) = (self.timed[i], t.finished_at) {
                self.timed[i] = true;
                METRICS
                    .task_duration
                    .with_label_values(&[&t.name])
                    .observe((end - t.started_at).num_milliseconds().max(0) as f64 / 1000.0);
            }
            match store.put_task(&self.tasks[i], self.q.lease_token).await {
                Ok(()) => self.dirty[i] = false,
                Err(e) => tracing::debug!("recording a task of query {}: {e}", self.q.id),
            }
        }
    }
}

/// How long progress alone waits before it is written: a load of a
/// thousand batches is not a thousand writes to the store beside it.
const PROGRESS_EVERY: Duration = Duration::from_millis(500);

/// Writes a query's tasks as its events arrive: a change of status at
/// once, progress at most every [`PROGRESS_EVERY`].
async fn write_tasks(
    store: Arc<dyn MetadataStore>,
    q: Query,
    (source, target): (String, String),
    rx: mpsc::UnboundedReceiver<Note>,
) {
    let tasks = Tasks::new(q, source, target, time::now());
    paced(tasks, rx, |t| {
        let store = store.clone();
        Box::pin(async move { t.flush(store.as_ref()).await })
    })
    .await;
}

/// Takes `rx`'s notes into `tasks` and has `write` record them: at once
/// when a status or the window changed, progress alone (rows, batch
/// messages) when [`PROGRESS_EVERY`] has passed since the last write, and
/// once more when the notes end.
async fn paced(
    mut tasks: Tasks,
    mut rx: mpsc::UnboundedReceiver<Note>,
    mut write: impl for<'a> FnMut(&'a mut Tasks) -> futures_util::future::BoxFuture<'a, ()> + Send,
) {
    let mut open = true;
    loop {
        write(&mut tasks).await;
        tasks.urgent = false;
        let written = tokio::time::Instant::now();
        if !open {
            return;
        }
        let Some(note) = rx.recv().await else { return };
        tasks.take(note);
        while !tasks.urgent {
            tokio::select! {
                more = rx.recv() => match more {
                    Some(note) => tasks.take(note),
                    None => {
                        open = false;
                        break;
                    }
                },
                _ = tokio::time::sleep_until(written + PROGRESS_EVERY) => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_domain::{JobId, OrganizationId, QueryTrigger};

    fn tasks() -> Tasks {
        let q = Query::new(
            JobId::generate(),
            OrganizationId::generate(),
            QueryTrigger::Manual,
            None,
            time::now(),
        );
        Tasks::new(q, "orders".into(), "orders".into(), time::now())
    }

    #[test]
    fn a_load_of_many_batches_still_says_where_its_manifest_is() {
        let mut t = tasks();
        for batch in 1..=(MESSAGES as u64 * 3) {
            t.apply(
                StageEvent::Extracted {
                    batch,
                    rows: 10,
                    bytes: 100,
                    object: Some(format!("batch-{batch:06}.pgcopy")),
                },
                time::now(),
            );
        }
        t.apply(
            StageEvent::ExtractDone {
                rows: 1200,
                batches: 120,
                manifest: Some("staging/x/manifest.json".into()),
            },
            time::now(),
        );
        let messages = &t.tasks[0].messages;
        assert_eq!(messages.len(), MESSAGES + 2, "{messages:?}");
        assert!(messages[MESSAGES].starts_with("… (more batches"));
        assert_eq!(
            messages.last().unwrap(),
            "1200 rows in 120 batches; manifest staging/x/manifest.json"
        );
        assert_eq!(t.tasks[0].records, 1200);
    }

    /// Progress alone is written at most every 500 ms however fast it
    /// comes, and none of it is left unwritten; a change of status, or the
    /// notes' end, is written at once. (Tokio's paused clock: time moves only as the test
    /// sleeps, so the figures are exact.)
    #[tokio::test(start_paused = true)]
    async fn progress_is_written_at_most_every_half_second_and_a_status_at_once() {
        use tokio::time::{sleep, Instant};
        let (tx, rx) = mpsc::unbounded_channel();
        let writes = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let start = Instant::now();
        let writer = tokio::spawn({
            let writes = writes.clone();
            paced(tasks(), rx, move |t| {
                let ms = start.elapsed().as_millis() as u64;
                let row = (ms, t.tasks[0].records, t.tasks[2].status.clone());
                writes.lock().unwrap().push(row);
                Box::pin(async {})
            })
        });
        let extracted = |batch| {
            Note::Event(StageEvent::Extracted {
                batch,
                rows: 10,
                bytes: 100,
                object: None,
            })
        };
        // 1.2 s of a batch every 10 ms, from 5 ms (no batch comes at the
        // instant a write is due: which of the two went first would be up
        // to the scheduler): progress alone.
        sleep(Duration::from_millis(5)).await;
        for batch in 1..=120 {
            tx.send(extracted(batch)).unwrap();
            sleep(Duration::from_millis(10)).await;
        }
        // The load starts (a status) at 1,205 ms; 100 ms later, one more
        // batch's progress; then nothing more.
        tx.send(Note::Event(StageEvent::Consolidated {
            columns: vec!["id".into()],
            changes: vec![],
        }))
        .unwrap();
        sleep(Duration::from_millis(100)).await;
        tx.send(extracted(121)).unwrap();
        sleep(Duration::from_secs(2)).await;
        let got = writes.lock().unwrap().clone();
        assert_eq!(
            got.iter()
                .map(|(ms, rows, _)| (*ms, *rows))
                .collect::<Vec<_>>(),
            [(0, 0), (500, 500), (1000, 1000), (1205, 1200), (1705, 1210)],
            "{got:?}"
        );
        assert_eq!(got[2].2, "PENDING");
        assert_eq!(got[3].2, "RUNNING", "the load's status, written at once");
        // The notes end at 3,305 ms just after one more batch: it is
        // written at once, and the writer ends.
        tx.send(extracted(122)).unwrap();
        drop(tx);
        writer.await.unwrap();
        let got = writes.lock().unwrap().clone();
        assert_eq!((got.len(), got[5].0, got[5].1), (6, 3305, 1220), "{got:?}");
    }

    #[test]
    fn a_load_in_parts_says_so_where_its_rows_went() {
        let mut t = tasks();
        t.apply(StageEvent::Loaded { rows: 5, parts: 0 }, time::now());
        t.apply(StageEvent::Loaded { rows: 7, parts: 2 }, time::now());
        assert_eq!(
            t.tasks[2].messages,
            [
                "5 rows in the load's transaction",
                "7 rows loaded in 2 parts into a new table, swapped in by the load's transaction"
            ]
        );
    }
}
