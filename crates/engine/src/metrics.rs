//! What a sluice process counts, for `GET /metrics` (Prometheus' text
//! format): work claimed, finished, lost and reaped per kind, how long it
//! took, rows imported, HTTP requests by route and status class — counted
//! where they happen — and, read from the store at each scrape, the work
//! still open per status, the runs waiting per queue, the trigger events
//! pending and the store's connections.

use std::sync::LazyLock;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};
use sluice_store::MetadataStore;

/// The kinds of leased work.
pub const RUN: &str = "run";
pub const QUERY: &str = "query";
pub const ACTION_RUN: &str = "action_run";
pub const API_RUN: &str = "api_run";
/// The outcome of work given back to the queue at shutdown.
pub const HANDED_BACK: &str = "handed_back";

pub struct Metrics {
    registry: Registry,
    pub claimed: IntCounterVec,
    pub finished: IntCounterVec,
    pub lease_losses: IntCounterVec,
    pub reaped: IntCounterVec,
    pub duration: HistogramVec,
    pub task_duration: HistogramVec,
    pub rows_imported: IntCounter,
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    open: IntGaugeVec,
    queued: IntGaugeVec,
    events_pending: IntGaugeVec,
    connections: IntGaugeVec,
}

/// The process's metrics.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("a valid metric");
    r.register(Box::new(c.clone())).expect("registered once");
    c
}

fn gauge(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("a valid metric");
    r.register(Box::new(g.clone())).expect("registered once");
    g
}

fn histogram(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: Vec<f64>,
) -> HistogramVec {
    let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
        .expect("a valid metric");
    r.register(Box::new(h.clone())).expect("registered once");
    h
}

/// From a tenth of a second to an hour.
fn work_buckets() -> Vec<f64> {
    vec![
        0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
    ]
}

impl Metrics {
    fn new() -> Metrics {
        let r = Registry::new();
        let rows_imported = IntCounter::new(
            "sluice_import_rows_total",
            "Rows loaded by table import queries that committed.",
        )
        .expect("a valid metric");
        r.register(Box::new(rows_imported.clone()))
            .expect("registered once");
        Metrics {
            claimed: counter(
                &r,
                "sluice_claims_total",
                "Work claimed under a lease, by kind.",
                &["kind"],
            ),
            finished: counter(
                &r,
                "sluice_finished_total",
                "Work that ended, by kind and outcome (succeeded, failed, cancelled, handed_back).",
                &["kind", "outcome"],
            ),
            lease_losses: counter(
                &r,
                "sluice_lease_losses_total",
                "Leases this process lost while working (another process owns the work now).",
                &["kind"],
            ),
            reaped: counter(
                &r,
                "sluice_reaped_total",
                "Work whose holder was lost, given back or failed by this process.",
                &["kind"],
            ),
            duration: histogram(
                &r,
                "sluice_work_duration_seconds",
                "How long work took from its claim to its end, by kind and outcome.",
                &["kind", "outcome"],
                work_buckets(),
            ),
            task_duration: histogram(
                &r,
                "sluice_task_duration_seconds",
                "How long a table import query's tasks took, by task.",
                &["task"],
                work_buckets(),
            ),
            rows_imported,
            requests: counter(
                &r,
                "sluice_http_requests_total",
                "HTTP requests answered, by route and status class (2xx, 4xx, 5xx).",
                &["route", "class"],
            ),
            request_duration: histogram(
                &r,
                "sluice_http_request_duration_seconds",
                "How long HTTP requests took to answer, by route and status class.",
                &["route", "class"],
                vec![
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
                ],
            ),
            open: gauge(
                &r,
                "sluice_open_work",
                "Work not yet ended in the store, by kind and status (all processes).",
                &["kind", "status"],
            ),
            queued: gauge(
                &r,
                "sluice_queue_depth",
                "Runs waiting to start, by queue (all processes).",
                &["queue"],
            ),
            events_pending: gauge(
                &r,
                "sluice_trigger_events_pending",
                "Files arrived whose trigger has not yet started their run.",
                &[],
            ),
            connections: gauge(
                &r,
                "sluice_store_connections",
                "This process's connections to the metadata store, by state (in_use, idle).",
                &["state"],
            ),
            registry: r,
        }
    }

    /// Work of `kind` ended with `outcome` after `secs`.
    pub fn ended(&self, kind: &str, outcome: &str, secs: f64) {
        self.finished.with_label_values(&[kind, outcome]).inc();
        self.duration
            .with_label_values(&[kind, outcome])
            .observe(secs.max(0.0));
    }

    /// Lost work of `kind` this process took back (`ids`), counted and
    /// logged once.
    pub fn took_back<T: std::fmt::Debug>(&self, kind: &str, ids: &[T]) {
        if ids.is_empty() {
            return;
        }
        self.reaped
            .with_label_values(&[kind])
            .inc_by(ids.len() as u64);
        tracing::warn!(kind, count = ids.len(), ids = ?ids, "took back work whose holder stopped");
    }

    /// The text a scrape answers: the counters, and the store's open work
    /// read now.
    pub async fn render(
        &self,
        store: &dyn MetadataStore,
    ) -> Result<String, sluice_store::StoreError> {
        let open = store.open_work().await?;
        self.open.reset();
        for (kind, status, n) in &open.by_status {
            self.open.with_label_values(&[kind, status]).set(*n);
        }
        self.queued.reset();
        for (queue, n) in &open.queued {
            self.queued.with_label_values(&[queue]).set(*n);
        }
        self.events_pending
            .with_label_values::<&str>(&[])
            .set(open.events_pending);
        let (total, idle) = store.pool_use();
        self.connections
            .with_label_values(&["in_use"])
            .set(i64::from(total.saturating_sub(idle)));
        self.connections
            .with_label_values(&["idle"])
            .set(i64::from(idle));
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .map_err(|e| sluice_store::StoreError::Corrupt(format!("metrics: {e}")))?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }
}

/// How ended work is counted: `succeeded`, `cancelled` or `failed`.
pub fn outcome(status: sluice_domain::RunStatus) -> &'static str {
    match status {
        sluice_domain::RunStatus::Succeeded => "succeeded",
        sluice_domain::RunStatus::Cancelled => "cancelled",
        _ => "failed",
    }
}

/// A status code's class: `2xx`, `4xx`, `5xx`.
pub fn class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}
