//! One conformance suite for the metadata store, run against SQLite and
//! PostgreSQL. Every test is written once, as `async fn name(store)`, and
//! the `suite!` macro instantiates it per backend.
//!
//! PostgreSQL tests make a fresh database per test on the server named by
//! `SLUICE_TEST_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`)
//! and fail, loudly, when it does not answer.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use sluice_domain::time::{self, Timestamp};
use sluice_domain::*;
use sluice_store::{
    AccountStore, ActionOutcome, ActionRunFilter, ActionStore, ApiOutcome, ApiSourceStore,
    DatalakeStore, DeploymentStore, FileQuery, ImportStore, JobFilter, LogQuery, MetadataStore,
    QueryOutcome, RunStore, SpaceStore, SqlStore, StoreError,
};

/// A store, and what must live as long as it (removed after the test).
async fn sqlite_store() -> (SqlStore, Box<dyn std::any::Any>) {
    let dir = tempdir::Dir::new();
    let url = format!("sqlite://{}/meta.db", dir.path());
    (
        sluice_store::open(&url).await.expect("open sqlite"),
        Box::new(dir),
    )
}

async fn postgres_store() -> (SqlStore, Box<dyn std::any::Any>) {
    let db = sluice_testkit::TempDb::postgres("sluice_test").await;
    (
        sluice_store::open(&db).await.expect("open postgres"),
        Box::new(db),
    )
}

mod tempdir {

    /// A directory removed when dropped.
    pub struct Dir(std::path::PathBuf);

    impl Dir {
        pub fn new() -> Dir {
            let p = std::env::temp_dir().join(format!("sluice-store-test-{}", rand_suffix()));
            std::fs::create_dir_all(&p).unwrap();
            Dir(p)
        }
        pub fn path(&self) -> String {
            self.0.display().to_string()
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn rand_suffix() -> String {
        use rand::Rng;
        format!("{:016x}", rand::thread_rng().gen::<u64>())
    }
}

macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let (store, _dir) = super::sqlite_store().await;
                    super::$name(std::sync::Arc::new(store)).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let (store, _dir) = super::postgres_store().await;
                    super::$name(std::sync::Arc::new(store)).await;
                }
            )*
        }
    };
}

suite!(
    tenants_see_only_their_own_deployments,
    a_deployment_and_its_version_are_read_together,
    versions_are_unique_per_deployment,
    idempotent_submit_creates_one_run,
    runs_page_by_keyset_in_both_directions,
    a_run_goes_from_submitted_to_succeeded,
    an_attempts_end_keeps_its_lines_in_order_and_no_nul,
    concurrent_starts_and_successes_are_each_answered_for_their_own_run,
    one_claim_of_many_runs_records_each_attempt,
    failed_attempts_are_retried_after_backoff_then_fail,
    a_lost_lease_is_reaped_and_the_stale_worker_is_fenced,
    cancel_stops_waiting_runs_at_once_and_running_ones_through_canceling,
    a_distributed_queue_runs_one_at_a_time_in_order,
    runs_of_a_version_without_code_are_rejected,
    logs_page_forward_and_backward_with_time_bounds,
    concurrent_claimers_never_share_a_run,
    a_file_makes_one_event_per_trigger_that_existed_when_it_arrived,
    racing_dispatchers_make_one_run_per_event,
    deleting_a_trigger_skips_its_pending_events_at_once,
    files_page_by_keyset_and_channels_archive,
    a_run_output_is_stored_exactly_when_the_run_succeeds,
    racing_schedulers_make_one_query_per_due_job,
    paused_jobs_make_no_queries_and_cancel_waiting_ones,
    a_lost_query_is_given_back_and_the_stale_worker_is_fenced,
    a_query_handed_back_is_claimed_at_once_and_its_holder_fenced,
    jobs_page_by_keyset_with_search_and_count,
    a_destination_table_belongs_to_one_live_job,
    a_server_secret_is_made_once,
    an_organization_has_one_default_space_and_models_are_made_once,
    configurations_keep_every_version_and_accounts_are_unique,
    action_runs_queue_under_max_active_runs_and_a_lost_one_is_fenced,
    racing_schedulers_make_one_action_run_per_due_time,
    a_workflow_fires_once_when_every_awaited_job_succeeded,
    one_api_run_of_a_source_is_active_even_when_runs_start_at_once,
    api_runs_cancel_once_and_a_lost_one_is_fenced,
);

const TTL: Duration = Duration::from_secs(30);
const RETRY: RetryPolicy = RetryPolicy {
    base: Duration::from_secs(10),
    cap: Duration::from_secs(60),
};

struct Fixture {
    org: OrganizationId,
    dep: DeploymentId,
    ver: VersionId,
}

async fn fixture(store: &dyn MetadataStore) -> Fixture {
    let now = time::now();
    let org = Organization {
        id: OrganizationId::generate(),
        name: "acme".into(),
        created_at: now,
    };
    store.create_organization(&org).await.unwrap();
    let dep = Deployment {
        id: DeploymentId::generate(),
        organization_id: org.id.clone(),
        name: "scorer".into(),
        description: String::new(),
        default_environment: Default::default(),
        creator: None,
        created_at: now,
        modified_at: now,
        limits: RunLimits::default(),
    };
    store.create_deployment(&dep).await.unwrap();
    let ver = new_version(&org.id, &dep.id, "0.0.1");
    store.create_version(&ver).await.unwrap();
    store
        .set_version_archive(&ver.id, "code/x.tar.gz", now)
        .await
        .unwrap();
    Fixture {
        org: org.id,
        dep: dep.id,
        ver: ver.id,
    }
}

fn new_version(org: &OrganizationId, dep: &DeploymentId, version: &str) -> Version {
    let now = time::now();
    Version {
        id: VersionId::generate(),
        organization_id: org.clone(),
        deployment_id: dep.clone(),
        version: version.into(),
        handler: "main:handler".into(),
        image: "abeja-inc/all-cpu:19.10".into(),
        user_parameters: Default::default(),
        archive: None,
        created_at: now,
        modified_at: now,
    }
}

fn new_run(f: &Fixture) -> NewRun {
    NewRun {
        id: RunId::generate(),
        organization_id: f.org.clone(),
        deployment_id: f.dep.clone(),
        version_id: f.ver.clone(),
        trigger_id: None,
        input_data: json!({"$datalake:1": "2222222222222/20180101T112233-x"}),
        models: json!({}),
        output_template: json!(null),
        environment: json!({"EXAMPLE_ENV": "example"})
            .as_object()
            .unwrap()
            .clone(),
        retry_count: 0,
        distribution: None,
        idempotency_key: None,
        created_at: time::now(),
    }
}

async fn submit(store: &dyn MetadataStore, f: &Fixture) -> Run {
    store.create_run(&new_run(f), None).await.unwrap().0
}

fn later(secs: i64) -> Timestamp {
    time::now() + chrono::Duration::seconds(secs)
}

async fn tenants_see_only_their_own_deployments(store: Arc<SqlStore>) {
    let a = fixture(&*store).await;
    let b = fixture(&*store).await;
    assert_eq!(
        store.get_deployment(&a.org, &a.dep).await.unwrap().name,
        "scorer"
    );
    let err = store.get_deployment(&b.org, &a.dep).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err}");
    assert_eq!(store.list_deployments(&a.org).await.unwrap().len(), 1);
    let run = submit(&*store, &a).await;
    assert!(matches!(
        store.get_run(&b.org, &run.id).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store.request_cancel(&b.org, &run.id, time::now()).await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(
        store.get_run(&a.org, &run.id).await.unwrap().status,
        RunStatus::Submitted
    );

    let mut dep = store.get_deployment(&a.org, &a.dep).await.unwrap();
    dep.name = "renamed".into();
    dep.default_environment = json!({"K": "V"}).as_object().unwrap().clone();
    store.update_deployment(&dep).await.unwrap();
    let got = store.get_deployment(&a.org, &a.dep).await.unwrap();
    assert_eq!(got.name, "renamed");
    assert_eq!(got.default_environment["K"], "V");
    store.delete_deployment(&a.org, &a.dep).await.unwrap();
    assert!(matches!(
        store.get_deployment(&a.org, &a.dep).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store.get_version(&a.org, &a.dep, &a.ver).await,
        Err(StoreError::NotFound(_))
    ));
}

async fn a_deployment_and_its_version_are_read_together(store: Arc<SqlStore>) {
    let a = fixture(&*store).await;
    let b = fixture(&*store).await;
    let (dep, ver) = store
        .get_deployment_version(&a.org, &a.dep, &a.ver)
        .await
        .unwrap();
    let ver = ver.expect("the version");
    assert_eq!(dep, store.get_deployment(&a.org, &a.dep).await.unwrap());
    assert_eq!(
        ver,
        store.get_version(&a.org, &a.dep, &a.ver).await.unwrap()
    );
    assert_eq!(ver.archive.as_deref(), Some("code/x.tar.gz"));
    // Another deployment's version is none of this one's.
    let (dep, none) = store
        .get_deployment_version(&a.org, &a.dep, &b.ver)
        .await
        .unwrap();
    assert_eq!((dep.id, none), (a.dep.clone(), None));
    // Another organization's deployment is not found.
    let err = store
        .get_deployment_version(&b.org, &a.dep, &a.ver)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err}");
}

async fn versions_are_unique_per_deployment(store: Arc<SqlStore>) {
    let f = fixture(&*store).await;
    let err = store
        .create_version(&new_version(&f.org, &f.dep, "0.0.1"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Conflict(m) if m.contains("0.0.1")),
        "{err}"
    );
    store
        .create_version(&new_version(&f.org, &f.dep, "0.0.2"))
        .await
        .unwrap();
    let versions = store.list_versions(&f.org, &f.dep).await.unwrap();
    assert_eq!(
        versions
            .iter()
            .map(|v| v.version.as_str())
            .collect::<Vec<_>>(),
        ["0.0.2", "0.0.1"]
    );
    store.delete_version(&f.org, &f.dep, &f.ver).await.unwrap();
    assert_eq!(store.list_versions(&f.org, &f.dep).await.unwrap().len(), 1);
}

async fn idempotent_submit_creates_one_run(store: Arc<SqlStore>) {
    let f = fixture(&*store).await;
    let mut run = new_run(&f);
    run.idempotency_key = Some("key-1".into());
    let (first, created) = store.create_run(&run, None).await.unwrap();
    assert!(created);
    run.id = RunId::generate();
    let (second, created) = store.create_run(&run, None).await.unwrap();
    assert!(!created);
    assert_eq!(first.id, second.id);
    let page = store
        .list_runs(
            &f.org,
            &f.dep,
            None,
            PageRequest {
                after: None,
                forward: true,
                limit: 10,
            },
        )
        .await
        .unwrap();
    assert_eq!(page.items.len(), 1);
}

async fn runs_page_by_keyset_in_both_directions(store: Arc<SqlStore>) {
    let f = fixture(&*store).await;
    let mut ids = Vec::new();
    for _ in 0..25 {
        ids.push(submit(&*store, &f).await.id);
    }
    for forward in [true, false] {
        let mut seen = Vec::new();
        let mut after = None;
        let mut pages = 0;
        loop {
            let page = store
                .list_runs(
                    &f.org,
                    &f.dep,
                    None,
                    PageRequest {
                        after,
                        forward,
                        limit: 10,
                    },
                )
                .await
                .unwrap();
            pages += 1;
            seen.extend(page.items.iter().map(|r| r.id.clone()));
            match page.next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        assert_eq!(pages, 3);
        let mut expected = ids.clone();
        if !forward {
            expected.reverse();
        }
        assert_eq!(seen, expected, "forward={forward}");
    }
    let tri = TriggerId::generate();
    let mut run = new_run(&f);
    run.trigger_id = Some(tri.clone());
    store.create_run(&run, None).await.unwrap();
    let page = store
        .list_runs(
            &f.org,
            &f.dep,
            Some(&tri),
            PageRequest {
                after: None,
                forward: false,
                limit: 10,
            },
        )
        .await
        .unwrap();
    assert_eq!(page.items.len(), 1);
    assert_eq!(page.items[0].trigger_id.as_ref(), Some(&tri));
}

async fn one_claim_of_many_runs_records_each_attempt(store: Arc<SqlStore>) {
    let f = fixture(&*store).await;
    let mut runs = Vec::new();
    for _ in 0..7 {
        runs.push(submit(&*store, &f).await.id);
    }
    assert_eq!(store.schedule(time::now()).await.unwrap(), 7);
    let leases = store.claim("w1", 5, TTL, time::now()).await.unwrap();
    let rest = store.claim("w2", 5, TTL, time::now()).await.unwrap();
    assert_eq!((leases.len(), rest.len()), (5, 2));
    for (lease, worker) in leases
        .iter()
        .map(|l| (l, "w1"))
        .chain(rest.iter().map(|l| (l, "w2")))
    {
        let attempts = store.list_attempts(&lease.run.id).await.unwrap();
        assert_eq!(attempts.len(), 1, "run {}", lease.run.id);
        assert_eq!(
            (attempts[0].attempt, attempts[0].worker.as_str()),
            (1, worker),
            "run {}",
            lease.run.id
        );
    }
    let mut claimed: Vec<_> = leases
        .iter()
        .chain(&rest)
        .map(|l| l.run.id.clone())
        .collect();
    claimed.sort();
    runs.sort();
    assert_eq!(claimed, runs);
}

/// Every log line of a run (up to 1,000), oldest first.
async fn all_logs(store: &SqlStore, run: &RunId) -> Vec<LogEvent> {
    let q = LogQuery {
        after: None,
        before: None,
        start_time: None,
        end_time: None,
        limit: 1000,
        descending: false,
    };
    store.read_logs(run, q).await.unwrap()
}

async fn messages(store: &SqlStore, run: &RunId) -> Vec<String> {
    all_logs(store, run)
        .await
        .into_iter()
        .map(|e| e.message)
        .collect()
}

async fn a_run_goes_from_submitted_to_succeeded(store: Arc<SqlStore>) {
    let f = fixture(&*store).await;
    let run = submit(&*store, &f).await;
    assert!(store
        .claim("w1", 10, TTL, time::now())
        .await
        .unwrap()
        .is_empty());
    assert_eq!(store.schedule(time::now()).await.unwrap(), 1);
    assert_eq!(
        store.get_run(&f.org, &run.id).await.unwrap().status,
        RunStatus::Runnable
    );
    let leases = store.claim("w1", 10, TTL, time::now()).await.unwrap();
    assert_eq!(leases.len(), 1);
    let lease = &leases[0];
    assert_eq!(
        (lease.run.id.clone(), lease.attempt, lease.run.status),
        (run.id.clone(), 1, RunStatus::Starting)
    );
    assert_eq!(
        store
            .mark_running(&run.id, lease.token, time::now())
            .await
            .unwrap(),
        RunStatus::Running
    );
    assert_eq!(
        store
            .heartbeat(&run.id, lease.token, TTL, time::now())
            .await
            .unwrap(),
        RunStatus::Running
    );
    // The attempt's last lines are stored with its end.
    let tail = [
        (time::now(), "last line".to_owned()),
        (time::now(), "[sluice] attempt succeeded".to_owned()),
    ];
    let next = store
        .finish(
            &run.id,
            lease.token,
            &AttemptOutcome::Succeeded,
            RETRY,
            time::now(),
            &tail,
        )
        .await
        .unwrap();
    assert_eq!(next, RunStatus::Succeeded);
    assert_eq!(
        messages(&store, &run.id).await,
        ["last line", "[sluice] attempt succeeded"]
    );
    let done = store.get_run(&f.org, &run.id).await.unwrap();
    assert_eq!(done.status, RunStatus::Succeeded);
    assert!(done.finished_at.is_some() && done.started_at.is_some());
    let attempts = store.list_attempts(&run.id).await.unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(
        (attempts[0].worker.as_str(), attempts[0].outcome.as_str()),
        ("w1", "SUCCEEDED")
    );
    // A finished run cannot be finished again, nor its log written to.
    let again = store
        .finish(
            &run.id,
            lease.token,
            &AttemptOutcome::Succeeded,
            RETRY,
            time::now(),
            &tail,
        )
        .await;
    assert!(matches!(again, Err(StoreError::LeaseLost(_))));
    assert_eq!(messages(&store, &run.id).await.len(), 2);
}

/// Claims a submitted run and marks it RUNNING: its lease's token.
async fn running(store: &SqlStore, f: &Fixture) -> (RunId, i64) {
    let run = submit(store, f).await;
    store.schedule(time::now()).await.unwrap();
    let lease = store
        .claim("w", 1, TTL, time::now())
        .await
        .unwrap()
        .remove(0);
    assert_eq!(lease.run.id, run.id);
    store
        .mark_running(&run.id, lease.token, time::now())
        .await
        .unwrap();
    (run.id, lease.token)
}

async fn an_attempts_end_keeps_its_lines_in_order_and_no_nul(store: Arc<SqlStore>) {
    let f = fixture(&*store).await;
    // 300 lines (text any JSON or SQL would have to escape among them, and
    // a NUL, which PostgreSQL's text cannot hold), each with its own time.
    let t0 = time::now();
    let mut tail: Vec<(Timestamp, String)> = (0..300)
        .map(|i| {
            (
                t0 + chrono::Duration::microseconds(i * 7),
                format!("line {i}"),
            )
        })
        .collect();
    tail[10].1 = "quote \" back\\slash ' it's é \u{1F600} $1 %s".into();
    tail[20].1 = "nul:\0:end".into();
    let (id, token) = running(&store, &f).await;
    let next = store
        .finish(
            &id,
            token,
            &AttemptOutcome::Succeeded,
            RETRY,
            time::now(),
            &tail,
        )
        .await
        .unwrap();
    assert_eq!(next, RunStatus::Succeeded);
    let logged = all_logs(&store, &id).await;
    assert_eq!(logged.len(), 300);
    for (i, (event, (ts, message))) in logged.iter().zip(&tail).enumerate() {
        assert_eq!(event.timestamp, *ts, "line {i}'s time");
        if i == 20 {
            assert_eq!(event.message, "nul:\u{FFFD}:end");
        } else {
            assert_eq!(event.message, *message, "line {i}");
        }
    }
    assert!(logged.windows(2).all(|w| w[0].seq < w[1].seq));
    assert_eq!(
        store.list_attempts(&id).await.unwrap()[0].outcome,
        "SUCCEEDED"
    );

    // A run whose cancel came after its code succeeded ends SUCCEEDED.
    let (id, token) = running(&store, &f).await;
    store
        .request_cancel(&f.org, &id, time::now())
        .await
        .unwrap();
    let next = store
        .finish(
            &id,
            token,
            &AttemptOutcome::Succeeded,
            RETRY,
            time::now(),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(next, RunStatus::Succeeded);
    let done = store.get_run(&f.org, &id).await.unwrap();
    assert_eq!((done.status, done.error), (RunStatus::Succeeded, None));
    assert!(done.finished_at.is_some());
    // Its holder can write nothing more: the token moved on.
    let late = store.append_logs(&id, token, 1, &tail[..1]).await;
    assert!(matches!(late, Err(StoreError::LeaseLost(_))), "{late:?}");

    // An error with a NUL in it (a handler's exception) is kept, not lost
    // with the run's end.
    let (id, token) = running(&store, &f).await;
    let failed = AttemptOutcome::Failed {
        error: "ValueError: a\0b".into(),
    };
    let line = [(time::now(), "printed \0".to_owned())];
    let next = store
        .finish(&id, token, &failed, RETRY, time::now(), &line)
        .await
        .unwrap();
    assert_eq!(next, RunStatus::Failed);
    let done = store.get_run(&f.org, &id).await.unwrap();
    assert_eq!(done.error.as_deref(), Some("ValueError: a\u{FFFD}b"));
    assert_eq!(all_logs(&store, &id).await[0].message, "printed \u{FFFD}");
    assert_eq!(
        store.list_attempts(&id).await.unwrap()[0].error.as_deref(),
        Some("ValueError: a\u{FFFD}b")
    );
}

/// Many runs started and ended at once, as a busy worker does: each call is
/// answered for its own run — moved, already cancelling, or not its lease —
/// and each run keeps its own lines.
async fn concurrent_starts_and_successes_are_each_answered_for_their_own_run(store: Arc<SqlStore>) {
    let f = fixture(&*store).await;
    for _ in 0..60 {
        submit(&*store, &f).await;
    }
    store.schedule(time::now()).await.unwrap();
    let leases = store.claim("w", 60, TTL, time::now()).await.unwrap();
    assert_eq!(leases.len(), 60);
    // Every 7th run is being cancelled before it starts; every 11th is
    // started and ended with a token that is not its lease's.
    let cancelled = |i: usize| i % 7 == 3;
    let stale = |i: usize| i % 11 == 5;
    for (i, l) in leases.iter().enumerate() {
        if cancelled(i) {
            store
                .request_cancel(&f.org, &l.run.id, time::now())
                .await
                .unwrap();
        }
    }
    let token = |i: usize, l: &Lease| if stale(i) { l.token + 100 } else { l.token };
    let starts: Vec<_> = leases
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let (store, id, token) = (store.clone(), l.run.id.clone(), token(i, l));
            tokio::spawn(async move { store.mark_running(&id, token, time::now()).await })
        })
        .collect();
    for (i, started) in starts.into_iter().enumerate() {
        let started = started.await.unwrap();
        match (stale(i), cancelled(i)) {
            (true, _) => assert!(
                matches!(started, Err(StoreError::LeaseLost(_))),
                "run {i}: {started:?}"
            ),
            (false, true) => assert_eq!(started.unwrap(), RunStatus::Canceling, "run {i}"),
            (false, false) => assert_eq!(started.unwrap(), RunStatus::Running, "run {i}"),
        }
    }
    let ends: Vec<_> = leases
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let (store, id, token) = (store.clone(), l.run.id.clone(), token(i, l));
            let t0 = time::now();
            let tail: Vec<(Timestamp, String)> = (0..3)
                .map(|k| {
                    (
                        t0 + chrono::Duration::microseconds(k),
                        format!("{id} line {k}"),
                    )
                })
                .collect();
            tokio::spawn(async move {
                store
                    .finish(
                        &id,
                        token,
                        &AttemptOutcome::Succeeded,
                        RETRY,
                        time::now(),
                        &tail,
                    )
                    .await
            })
        })
        .collect();
    for (i, ended) in ends.into_iter().enumerate() {
        let ended = ended.await.unwrap();
        let id = &leases[i].run.id;
        let run = store.get_run(&f.org, id).await.unwrap();
        let attempt = store.list_attempts(id).await.unwrap().remove(0);
        if stale(i) {
            assert!(
                matches!(ended, Err(StoreError::LeaseLost(_))),
                "run {i}: {ended:?}"
            );
            let left = if cancelled(i) {
                RunStatus::Canceling
            } else {
                RunStatus::Starting
            };
            assert_eq!(run.status, left, "run {i}");
            assert!(attempt.finished_at.is_none(), "run {i}");
            assert!(messages(&store, id).await.is_empty(), "run {i}");
            continue;
        }
        // A run cancelled before it started still ends SUCCEEDED once its
        // code did (it never stopped); its attempt was never RUNNING.
        assert_eq!(ended.unwrap(), RunStatus::Succeeded, "run {i}");
        assert_eq!(run.status, RunStatus::Succeeded, "run {i}");
        assert_eq!(attempt.outcome, "SUCCEEDED", "run {i}");
        assert_eq!(attempt.running_at.is_some(), !cancelled(i), "run {i}");
        assert_eq!(attempt.finished_at, run.finished_at, "run {i}");
        let expected: Vec<String> = (0..3).map(|k| format!("{id} line {k}")).collect();
        assert_eq!(messages(&store, id).await, expected, "run {i}");
    }
}

async fn failed_attempts_are_retried_after_backoff_then_fail(store: Arc<SqlStore>) {
    let f = fixture(&*store).await;
    let mut new = new_run(&f);
    new.retry_count = 1;
    let (run, _) = store.create_run(&new, None).await.unwrap();
    store.schedule(time::now()).await.unwrap();
    let lease = store
        .claim("w1", 1, TTL, time::now())
        .await
        .unwrap()
        .remove(0);
    store
        .mark_running(&run.id, lease.token, time::now())
        .await
        .unwrap();
    let failed = AttemptOutcome::Failed {
        error: "boom".into(),
    };
    let next = store
        .finish(&run.id, lease.token, &failed, RETRY, time::now(), &[])
        .await
        .unwrap();
    assert_eq!(next, RunStatus::Pending);
    // Not before the backoff (10 s) has passed.
    assert_eq!(store.schedule(time::now()).await.unwrap(), 0);
    assert_eq!(store.schedule(later(11)).await.unwrap(), 1);
    let lease = store
        .claim("w2", 1, TTL, later(11))
        .await
        .unwrap()
        .remove(0);
    assert_eq!(lease.attempt, 2);
    let second_start = later(11);
    store
        .mark_running(&run.id, lease.token, second_start)
        .await
        .unwrap();
    let next = store
        .finish(&run.id, lease.token, &failed, RETRY, later(12), &[])
        .await
        .unwrap();
    assert_eq!(next, RunStatus::Failed);
    let done = store.get_run(&f.org, &run.id).await.unwrap();
    assert_eq!(done.error.as_deref(), Some("boom"));
    let attempts = store.list_attempts(&run.id).await.unwrap();
    let seen: Vec<_> = attempts
        .iter()
        .map(|a| (a.worker.as_str(), a.outcome.as_str()))
        .collect();
    assert_eq!(seen, [("w1", "FAILED"), ("w2", "FAILED")]);
    // Each start stamped its own attempt (one statement on both stores).
    let started: Vec<_> = attempts
        .iter()
        .map(|a| a.running_at.map(|t| t.timestamp_micros()))
        .collect();
    assert!(started[0].is_some(), "{attempts:?}");
    assert_eq!(started[1], Some(second_start.timestamp_micros()));
}

async fn a_lost_lease_is_reaped_and_the_stale_worker_is_fenced(store: Arc<SqlStore>) {
    let f = fixture(&*store).await;
    let run = submit(&*store, &f).await;
    let mut new = new_run(&f);
    new.retry_count = 3;
    let (retried, _) = store.create_run(&new, None).await.unwrap();
    store.schedule(time::now()).await.unwrap();
    let leases = store
        .claim("dead", 10, Duration::from_secs(1), time::now())
        .await
        .unwrap();
    assert_eq!(leases.len(), 2);
    for l in &leases {
        store
            .mark_running(&l.run.id, l.token, time::now())
            .await
            .unwrap();
    }
    assert!(
        store.reap(RETRY, time::now()).await.unwrap().is_empty(),
        "leases still valid"
    );
    let reaped = store.reap(RETRY, later(2)).await.unwrap();
    assert_eq!(reaped.len(), 2);
    // retry_count 0: lost means failed; retry_count 3: lost means retried.
    let failed = store.get_run(&f.org, &run.id).await.unwrap();
    assert_eq!(failed.status, RunStatus::Failed);
    assert!(failed.error.unwrap().contains("dead"));
    assert_eq!(
        store.get_run(&f.org, &retried.id).await.unwrap().status,
        RunStatus::Pending
    );
    // The dead worker wakes up: every write it tries is refused.
    let stale = leases.iter().find(|l| l.run.id == retried.id).unwrap();
    let now = time::now();
    assert!(matches!(
        store.heartbeat(&retried.id, stale.token, TTL, now).await,
        Err(StoreError::LeaseLost(_))
    ));
    assert!(matches!(
        store.mark_running(&retried.id, stale.token, now).await,
        Err(StoreError::LeaseLost(_))
    ));
    let logs = store
        .append_logs(&retried.id, stale.token, 1, &[(now, "late".into())])
        .await;
    assert!(matches!(logs, Err(StoreError::LeaseLost(_))));
    let fin = store
        .finish(
            &retried.id,
            stale.token,
            &AttemptOutcome::Succeeded,
            RETRY,
            now,
            &[],
        )
        .await;
    assert!(matches!(fin, Err(StoreError::LeaseLost(_))));
    // A new worker takes it after the backoff (10 s from the reap at +2 s).
    assert_eq!(store.schedule(later(11)).await.unwrap(), 0);
    assert_eq!(store.schedule(later(13)).await.unwrap(), 1);
    let lease = store
        .claim("alive", 1, TTL, later(13))
        .await
        .unwrap()
        .remove(0);
    assert_eq!(lease.attempt, 2);
    assert!(lease.token > stale.token);
    let attempts = store.list_attempts(&retried.id).await.unwrap();
    let seen: Vec<_> = attempts
        .iter()
        .map(|a| (a.worker.as_str(), a.outcome.as_str()))
        .collect();
    assert_eq!(seen, [("dead", "LOST"), ("alive", "RUNNING")]);
}

async fn cancel_stops_waiting_runs_at_once_and_running_ones_through_canceling(
    store: Arc<SqlStore>,
) {
    let f = fixture(&*store).await;
    let waiting = submit(&*store, &f).await;
    let cancelled = store
        .request_cancel(&f.org, &waiting.id, time::now())
        .await
        .unwrap();
    assert_eq!(cancelled.status, RunStatus::Cancelled);
    let running = submit(&*store, &f).await;
    store.schedule(time::now()).await.unwrap();
    let lease = store
        .claim("w", 1, TTL, time::now())
        .await
        .unwrap()
        .remove(0);
    store
        .mark_running(&running.id, lease.token, time::now())
        .await
        .unwrap();
    for _ in 0..3 {
        let r = store
            .request_cancel(&f.org, &running.id, time::now())
            .await
            .unwrap();
        assert_eq!(
            r.status,
            RunStatus::Canceling,
            "repeated cancels are harmless"
        );
    }
    assert_eq!(
        store
            .heartbeat(&running.id, lease.token, TTL, time::now())
            .await
            .unwrap(),
        RunStatus::Canceling
    );
    let killed = AttemptOutcome::Failed {
        error: "stopped by cancel".into(),
    };
    let next = store
        .finish(&running.id, lease.token, &killed, RETRY, time::now(), &[])
        .await
        .unwrap();
    assert_eq!(next, RunStatus::Cancelled);
    let r = store
        .request_cancel(&f.org, &running.id, time::now())
        .await
        .unwrap();
    assert_eq!(r.status, RunStatus::Cancelled);
    assert_eq!(
        store.list_attempts(&running.id).await.unwrap()[0].outcome,
        "CANCELLED"
    );
}

async fn a_distributed_queue_runs_one_at_a_time_in_order(store: Arc<SqlStore>) {
    let f = fixture(&*store).await;
    let queue = format!("{}:1", f.dep);
    let mut queued = Vec::new();
    for _ in 0..3 {
        let mut new = new_run(&f);
        new.distribution = Some(1);
        queued.push(store.create_run(&new, Some(&queue)).await.unwrap().0.id);
    }
    let free = submit(&*store, &f).await;
    assert_eq!(
        store.schedule(time::now()).await.unwrap(),
        2,
        "the free run and the queue's head"
    );
    for expected in &queued {
        let leases = store.claim("w", 10, TTL, time::now()).await.unwrap();
        let claimed: Vec<_> = leases.iter().map(|l| l.run.id.clone()).collect();
        assert!(claimed.contains(expected), "{claimed:?} lacks {expected}");
        assert_eq!(store.schedule(time::now()).await.unwrap(), 0, "queue busy");
        for l in &leases {
            store
                .mark_running(&l.run.id, l.token, time::now())
                .await
                .unwrap();
            store
                .finish(
                    &l.run.id,
                    l.token,
                    &AttemptOutcome::Succeeded,
                    RETRY,
                    time::now(),
                    &[],
                )
                .await
                .unwrap();
        }
        store.schedule(time::now()).await.unwrap();
    }
    assert_eq!(
        store.get_run(&f.org, &free.id).await.unwrap().status,
        RunStatus::Succeeded
    );
}

async fn runs_of_a_version_without_code_are_rejected(store: Arc<SqlStore>) {
    let f = fixture(&*store).await;
    let bare = new_version(&f.org, &f.dep, "9.9.9");
    store.create_version(&bare).await.unwrap();
    let mut new = new_run(&f);
    new.version_id = bare.id.clone();
    let (run, _) = store.create_run(&new, None).await.unwrap();
    store.schedule(time::now()).await.unwrap();
    let got = store.get_run(&f.org, &run.id).await.unwrap();
    assert_eq!(got.status, RunStatus::Rejected);
    assert!(got.error.unwrap().contains("never uploaded"));
}

async fn logs_page_forward_and_backward_with_time_bounds(store: Arc<SqlStore>) {
    let f = fixture(&*store).await;
    let run = submit(&*store, &f).await;
    store.schedule(time::now()).await.unwrap();
    let lease = store
        .claim("w", 1, TTL, time::now())
        .await
        .unwrap()
        .remove(0);
    let t0 = time::now();
    let events: Vec<_> = (0..450)
        .map(|i| (t0 + chrono::Duration::seconds(i), format!("line {i}")))
        .collect();
    store
        .append_logs(&run.id, lease.token, 1, &events)
        .await
        .unwrap();
    let q = LogQuery {
        after: None,
        before: None,
        descending: false,
        start_time: None,
        end_time: None,
        limit: 100,
    };
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .read_logs(&run.id, LogQuery { after, ..q })
            .await
            .unwrap();
        if page.is_empty() {
            break;
        }
        after = page.last().map(|e| e.seq);
        seen.extend(page.into_iter().map(|e| e.message));
    }
    assert_eq!(seen.len(), 450);
    assert_eq!(seen[0], "line 0");
    assert_eq!(seen[449], "line 449");
    let newest = store
        .read_logs(
            &run.id,
            LogQuery {
                descending: true,
                limit: 3,
                ..q
            },
        )
        .await
        .unwrap();
    let msgs: Vec<_> = newest.iter().map(|e| e.message.as_str()).collect();
    assert_eq!(msgs, ["line 449", "line 448", "line 447"]);
    let older = store
        .read_logs(
            &run.id,
            LogQuery {
                before: Some(newest[2].seq),
                descending: true,
                limit: 2,
                ..q
            },
        )
        .await
        .unwrap();
    assert_eq!(older[0].message, "line 446");
    let bounded = store
        .read_logs(
            &run.id,
            LogQuery {
                start_time: Some(t0 + chrono::Duration::seconds(10)),
                end_time: Some(t0 + chrono::Duration::seconds(19)),
                limit: 100,
                ..q
            },
        )
        .await
        .unwrap();
    assert_eq!(bounded.len(), 10);
    assert_eq!(bounded[0].message, "line 10");
}

async fn concurrent_claimers_never_share_a_run(store: Arc<SqlStore>) {
    let f = fixture(&*store).await;
    for _ in 0..200 {
        submit(&*store, &f).await;
    }
    store.schedule(time::now()).await.unwrap();
    let mut claimers = Vec::new();
    for w in 0..4 {
        let store = store.clone();
        claimers.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let leases = store
                    .claim(&format!("w{w}"), 7, TTL, time::now())
                    .await
                    .unwrap();
                if leases.is_empty() {
                    break mine;
                }
                assert!(
                    leases.len() <= 7,
                    "claimed {} runs, asked for 7",
                    leases.len()
                );
                mine.extend(leases.into_iter().map(|l| l.run.id));
            }
        }));
    }
    let mut all = Vec::new();
    for c in claimers {
        all.extend(c.await.unwrap());
    }
    let unique: HashSet<_> = all.iter().cloned().collect();
    assert_eq!(all.len(), 200, "every run claimed once");
    assert_eq!(unique.len(), 200, "no run claimed twice");
}

// ---- datalake and triggers ------------------------------------------------

async fn channel(store: &dyn MetadataStore, org: &OrganizationId) -> ChannelId {
    let now = time::now();
    let c = Channel {
        id: ChannelId::generate(),
        organization_id: org.clone(),
        name: "arrivals".into(),
        description: String::new(),
        storage_type: "datalake".into(),
        archived: false,
        created_at: now,
        updated_at: now,
    };
    store.create_channel(&c).await.unwrap();
    c.id
}

async fn trigger(
    store: &dyn MetadataStore,
    f: &Fixture,
    input: &ChannelId,
    output: Option<&ChannelId>,
) -> TriggerId {
    let now = time::now();
    let t = Trigger {
        id: TriggerId::generate(),
        organization_id: f.org.clone(),
        deployment_id: f.dep.clone(),
        version_id: f.ver.clone(),
        input_channel_id: input.clone(),
        output_channel_id: output.cloned(),
        models: json!({}),
        environment: Default::default(),
        retry_count: 0,
        distribution: None,
        created_at: now,
        modified_at: now,
        deleted_at: None,
    };
    store.create_trigger(&t).await.unwrap();
    t.id
}

fn file(org: &OrganizationId, channel: &ChannelId) -> DatalakeFile {
    let now = time::now();
    let id = FileId::generate(now);
    DatalakeFile {
        seq: 0,
        channel_id: channel.clone(),
        file_id: id.clone(),
        organization_id: org.clone(),
        content_type: "text/plain".into(),
        metadata: [("x-abeja-meta-filename".to_owned(), "a.txt".to_owned())].into(),
        size: 3,
        object: format!("datalake/{channel}/{id}"),
        lifetime: None,
        source_run_id: None,
        uploaded_at: now,
    }
}

fn trigger_run(f: &Fixture, t: &TriggerId, e: &TriggerEvent) -> NewRun {
    NewRun {
        trigger_id: Some(t.clone()),
        input_data: json!({DATALAKE_INPUT: format!("{}/{}", e.channel_id, e.file_id)}),
        idempotency_key: Some(format!("{t}/{}", e.file_id)),
        ..new_run(f)
    }
}

fn forward(limit: u32) -> PageRequest {
    PageRequest {
        after: None,
        forward: true,
        limit,
    }
}

async fn a_file_makes_one_event_per_trigger_that_existed_when_it_arrived(store: Arc<SqlStore>) {
    let f = fixture(&*store).await;
    let ch = channel(&*store, &f.org).await;
    let other = channel(&*store, &f.org).await;
    let first = trigger(&*store, &f, &ch, None).await;
    trigger(&*store, &f, &other, None).await;
    let early = file(&f.org, &ch);
    assert_eq!(store.put_file(&early).await.unwrap(), 1);
    let second = trigger(&*store, &f, &ch, None).await;
    let late = file(&f.org, &ch);
    assert_eq!(store.put_file(&late).await.unwrap(), 2);

    let of_first = store
        .list_trigger_events(&first, forward(10))
        .await
        .unwrap();
    let files: Vec<_> = of_first.items.iter().map(|e| e.file_id.clone()).collect();
    assert_eq!(files, vec![early.file_id.clone(), late.file_id.clone()]);
    let of_second = store
        .list_trigger_events(&second, forward(10))
        .await
        .unwrap();
    assert_eq!(
        of_second
            .items
            .iter()
            .map(|e| &e.file_id)
            .collect::<Vec<_>>(),
        vec![&late.file_id],
        "a file that arrived before the trigger existed starts nothing"
    );
    let pending = store.pending_events(100).await.unwrap();
    assert_eq!(pending.len(), 3);
    assert!(pending
        .iter()
        .all(|e| e.state == EventState::Pending && e.run_id.is_none()));
    assert!(
        pending.windows(2).all(|w| w[0].seq < w[1].seq),
        "oldest first"
    );
    // The same file cannot be stored twice in a channel.
    assert!(matches!(
        store.put_file(&late).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(
        store.pending_events(100).await.unwrap().len(),
        3,
        "nothing half-stored"
    );
}

async fn racing_dispatchers_make_one_run_per_event(store: Arc<SqlStore>) {
    let f = fixture(&*store).await;
    let ch = channel(&*store, &f.org).await;
    let t = trigger(&*store, &f, &ch, None).await;
    for _ in 0..20 {
        store.put_file(&file(&f.org, &ch)).await.unwrap();
    }
    let events = store.pending_events(100).await.unwrap();
    assert_eq!(events.len(), 20);
    // Four dispatchers each try every event, with runs of their own ids.
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let store = store.clone();
        let events = events.clone();
        let f = Fixture {
            org: f.org.clone(),
            dep: f.dep.clone(),
            ver: f.ver.clone(),
        };
        let t = t.clone();
        tasks.push(tokio::spawn(async move {
            let mut won = 0;
            for e in &events {
                let run = NewRun {
                    idempotency_key: None,
                    ..trigger_run(&f, &t, e)
                };
                if store
                    .dispatch_event(e.seq, &run, None, time::now())
                    .await
                    .unwrap()
                {
                    won += 1;
                }
            }
            won
        }));
    }
    let mut won = 0;
    for task in tasks {
        won += task.await.unwrap();
    }
    assert_eq!(won, 20, "every event dispatched exactly once");
    let runs = store
        .list_runs(&f.org, &f.dep, Some(&t), forward(100))
        .await
        .unwrap();
    assert_eq!(runs.items.len(), 20);
    let dispatched = store.list_trigger_events(&t, forward(100)).await.unwrap();
    assert_eq!(dispatched.items.len(), 20, "one event per file");
    for e in &dispatched.items {
        assert_eq!(e.state, EventState::Dispatched);
        let run = store
            .get_run(&f.org, e.run_id.as_ref().unwrap())
            .await
            .unwrap();
        assert_eq!(run.trigger_id.as_ref(), Some(&t));
        assert_eq!(
            run.input_data[DATALAKE_INPUT],
            json!(format!("{}/{}", e.channel_id, e.file_id)),
            "each run reads its own file"
        );
    }
    assert!(store.pending_events(100).await.unwrap().is_empty());
}

async fn deleting_a_trigger_skips_its_pending_events_at_once(store: Arc<SqlStore>) {
    let f = fixture(&*store).await;
    let ch = channel(&*store, &f.org).await;
    let t = trigger(&*store, &f, &ch, None).await;
    store.put_file(&file(&f.org, &ch)).await.unwrap();
    let event = store.pending_events(10).await.unwrap().remove(0);
    store
        .delete_trigger(&f.org, &f.dep, &t, time::now())
        .await
        .unwrap();
    assert!(!store
        .dispatch_event(event.seq, &trigger_run(&f, &t, &event), None, time::now())
        .await
        .unwrap());
    let events = store.list_trigger_events(&t, forward(10)).await.unwrap();
    assert_eq!(events.items[0].state, EventState::Skipped);
    assert!(events.items[0].note.as_deref().unwrap().contains("deleted"));
    assert_eq!(store.put_file(&file(&f.org, &ch)).await.unwrap(), 0);
    assert!(matches!(
        store.get_trigger(&f.org, &f.dep, &t).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(store.find_trigger(&t).await.unwrap().deleted_at.is_some());
    assert!(store
        .list_triggers(&f.org, &f.dep)
        .await
        .unwrap()
        .is_empty());
    assert!(store
        .list_runs(&f.org, &f.dep, Some(&t), forward(10))
        .await
        .unwrap()
        .items
        .is_empty());
}

async fn files_page_by_keyset_and_channels_archive(store: Arc<SqlStore>) {
    let f = fixture(&*store).await;
    let ch = channel(&*store, &f.org).await;
    let mut ids = Vec::new();
    for _ in 0..7 {
        let file = file(&f.org, &ch);
        ids.push(file.file_id.clone());
        store.put_file(&file).await.unwrap();
    }
    let mut seen = Vec::new();
    let mut page = FileQuery {
        page: forward(3),
        from: None,
        to: None,
    };
    loop {
        let got = store.list_files(&ch, page).await.unwrap();
        seen.extend(got.items.iter().map(|f| f.file_id.clone()));
        match got.next {
            Some(next) => page.page.after = Some(next),
            None => break,
        }
    }
    assert_eq!(seen, ids);
    let newest = store
        .list_files(
            &ch,
            FileQuery {
                page: PageRequest {
                    after: None,
                    forward: false,
                    limit: 2,
                },
                from: None,
                to: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(newest.items[0].file_id, ids[6]);
    let none_yet = store
        .list_files(
            &ch,
            FileQuery {
                page: forward(10),
                from: Some(later(60)),
                to: None,
            },
        )
        .await
        .unwrap();
    assert!(none_yet.items.is_empty());

    let got = store.get_file(&ch, &ids[0]).await.unwrap();
    assert_eq!(got.metadata["x-abeja-meta-filename"], "a.txt");
    let meta = [("x-abeja-meta-label".to_owned(), "cat".to_owned())].into();
    let changed = store.set_file_metadata(&ch, &ids[0], &meta).await.unwrap();
    assert_eq!(changed.metadata, meta);
    store.delete_file(&ch, &ids[0]).await.unwrap();
    assert!(matches!(
        store.get_file(&ch, &ids[0]).await,
        Err(StoreError::NotFound(_))
    ));

    let mut c = store.get_channel(&ch).await.unwrap();
    c.archived = true;
    store.update_channel(&c).await.unwrap();
    let (live, _) = store.list_channels(&f.org, false, 0, 10).await.unwrap();
    assert!(live.is_empty());
    let (all, more) = store.list_channels(&f.org, true, 0, 10).await.unwrap();
    assert_eq!((all.len(), more), (1, false));
    assert!(all[0].archived);
}

async fn a_run_output_is_stored_exactly_when_the_run_succeeds(store: Arc<SqlStore>) {
    let f = fixture(&*store).await;
    let input = channel(&*store, &f.org).await;
    let output = channel(&*store, &f.org).await;
    trigger(&*store, &f, &input, Some(&output)).await;
    // A trigger on the output channel: outputs chain into further runs.
    let next = trigger(&*store, &f, &output, None).await;
    let run = submit(&*store, &f).await;
    store.schedule(time::now()).await.unwrap();
    let lease = store
        .claim("w", 1, TTL, time::now())
        .await
        .unwrap()
        .remove(0);
    store
        .mark_running(&run.id, lease.token, time::now())
        .await
        .unwrap();
    let out = DatalakeFile {
        source_run_id: Some(run.id.clone()),
        ..file(&f.org, &output)
    };
    let failed = AttemptOutcome::Failed {
        error: "boom".into(),
    };
    // With retries left a failure stores nothing.
    let mut retried = new_run(&f);
    retried.retry_count = 1;
    let (retried, _) = store.create_run(&retried, None).await.unwrap();
    store.schedule(time::now()).await.unwrap();
    let retry_lease = store
        .claim("w", 1, TTL, time::now())
        .await
        .unwrap()
        .remove(0);
    assert_eq!(retry_lease.run.id, retried.id);
    let out2 = DatalakeFile {
        source_run_id: Some(retried.id.clone()),
        ..file(&f.org, &output)
    };
    assert_eq!(
        store
            .finish_with_output(
                &retried.id,
                retry_lease.token,
                &failed,
                RETRY,
                time::now(),
                &[],
                &out2
            )
            .await
            .unwrap(),
        RunStatus::Pending
    );
    assert!(matches!(
        store.get_file(&output, &out2.file_id).await,
        Err(StoreError::NotFound(_))
    ));

    assert_eq!(
        store
            .finish_with_output(
                &run.id,
                lease.token,
                &AttemptOutcome::Succeeded,
                RETRY,
                time::now(),
                &[],
                &out
            )
            .await
            .unwrap(),
        RunStatus::Succeeded
    );
    let stored = store.get_file(&output, &out.file_id).await.unwrap();
    assert_eq!(stored.source_run_id.as_ref(), Some(&run.id));
    let chained = store.list_trigger_events(&next, forward(10)).await.unwrap();
    assert_eq!(
        chained.items.len(),
        1,
        "the output starts the next trigger's run"
    );
    // A stale worker's output is refused, and nothing is stored.
    let stale = DatalakeFile {
        source_run_id: Some(run.id.clone()),
        ..file(&f.org, &output)
    };
    assert!(matches!(
        store
            .finish_with_output(
                &run.id,
                lease.token,
                &AttemptOutcome::Succeeded,
                RETRY,
                time::now(),
                &[],
                &stale
            )
            .await,
        Err(StoreError::LeaseLost(_))
    ));
    assert!(matches!(
        store.get_file(&output, &stale.file_id).await,
        Err(StoreError::NotFound(_))
    ));
}

fn import_job(org: &OrganizationId, name: &str, due: Option<Timestamp>) -> ImportJob {
    let now = time::now();
    ImportJob {
        seq: 0,
        id: JobId::generate(),
        organization_id: org.clone(),
        space: String::new(),
        name: name.into(),
        status: JobStatus::Active,
        spec: JobSpec {
            table: "orders".into(),
            target: "orders".into(),
            ..JobSpec::default()
        },
        source_sealed: "v1:x".into(),
        destination_sealed: "v1:y".into(),
        source_shown: "postgres://db/a".into(),
        destination_shown: "postgres://db/b".into(),
        // Each its own table, unless a test says otherwise.
        destination_key: Some(format!("table-{}", rand_suffix())),
        next_query_at: due,
        created_at: now,
        modified_at: now,
    }
}

fn manual_query(job: &ImportJob) -> Query {
    Query::new(
        job.id.clone(),
        job.organization_id.clone(),
        QueryTrigger::Manual,
        None,
        time::now(),
    )
}

async fn racing_schedulers_make_one_query_per_due_job(store: Arc<SqlStore>) {
    let f = fixture(store.as_ref()).await;
    let now = time::now();
    let mut jobs = Vec::new();
    for i in 0..20 {
        let j = import_job(&f.org, &format!("job {i}"), Some(now));
        store.create_job(&j).await.unwrap();
        jobs.push(j);
    }
    let not_due = import_job(&f.org, "later", Some(later(3600)));
    store.create_job(&not_due).await.unwrap();
    let mut racers = Vec::new();
    for _ in 0..4 {
        let s = store.clone();
        racers.push(tokio::spawn(async move {
            s.schedule_queries(time::now()).await.unwrap()
        }));
    }
    let mut made = Vec::new();
    for r in racers {
        made.extend(r.await.unwrap());
    }
    assert_eq!(
        made.len(),
        20,
        "one query per due job, however many schedulers"
    );
    let jobs_with_query: HashSet<_> = made.iter().map(|q| q.job_id.clone()).collect();
    assert_eq!(jobs_with_query.len(), 20);
    assert!(!jobs_with_query.contains(&not_due.id));
    // A job with an open query gets no second one, even when due again
    // (only the job that was not due yet gets its first).
    let next: Vec<_> = store
        .schedule_queries(later(7200))
        .await
        .unwrap()
        .into_iter()
        .map(|q| q.job_id)
        .collect();
    assert_eq!(next, vec![not_due.id.clone()]);
    // Each job's next query moved on by its refresh interval.
    let j = store.find_job(&jobs[0].id).await.unwrap();
    assert!(j.next_query_at.unwrap() > now + chrono::Duration::minutes(59));
}

async fn paused_jobs_make_no_queries_and_cancel_waiting_ones(store: Arc<SqlStore>) {
    let f = fixture(store.as_ref()).await;
    let mut job = import_job(&f.org, "paused", None);
    store.create_job(&job).await.unwrap();
    let waiting = store.create_query(&manual_query(&job), None).await.unwrap();
    job.status = JobStatus::Paused;
    job.next_query_at = Some(time::now());
    store.update_job(&job).await.unwrap();
    let q = store.get_query(&f.org, &waiting.id).await.unwrap();
    assert_eq!(q.status, RunStatus::Cancelled);
    assert!(store.schedule_queries(later(10)).await.unwrap().is_empty());
    let refused = store
        .create_query(&manual_query(&job), None)
        .await
        .unwrap_err();
    assert!(
        matches!(refused, StoreError::Conflict(ref m) if m.contains("paused")),
        "{refused}"
    );
    assert_eq!(store.query_counts(&job.id).await.unwrap(), (0, 0, 0));
}

async fn a_lost_query_is_given_back_and_the_stale_worker_is_fenced(store: Arc<SqlStore>) {
    let f = fixture(store.as_ref()).await;
    let job = import_job(&f.org, "lost", None);
    store.create_job(&job).await.unwrap();
    let q = store.create_query(&manual_query(&job), None).await.unwrap();
    let now = time::now();
    let mine = store.claim_queries("a", 10, TTL, now).await.unwrap();
    assert_eq!(mine.len(), 1);
    assert!(store
        .claim_queries("b", 10, TTL, now)
        .await
        .unwrap()
        .is_empty());
    let first = &mine[0];
    assert_eq!(
        store
            .query_running(&first.id, first.lease_token, now)
            .await
            .unwrap(),
        RunStatus::Running
    );
    // Its lease runs out: the query goes back to the workers.
    assert_eq!(
        store.reap_queries(later(60)).await.unwrap(),
        vec![q.id.clone()]
    );
    let again = store.claim_queries("b", 10, TTL, later(61)).await.unwrap();
    assert_eq!((again.len(), again[0].attempt), (1, 2));
    // The first worker's late writes are refused.
    let late = store
        .finish_query(
            &q.id,
            first.lease_token,
            &QueryOutcome::Failed { error: "x".into() },
            later(62),
        )
        .await
        .unwrap_err();
    assert!(matches!(late, StoreError::LeaseLost(_)), "{late}");
    let task = QueryTask {
        query_id: q.id.clone(),
        seq: 1,
        name: "extract".into(),
        status: "RUNNING".into(),
        table: "orders".into(),
        records: 0,
        messages: vec![],
        started_at: later(62),
        finished_at: None,
    };
    assert!(matches!(
        store.put_task(&task, first.lease_token).await,
        Err(StoreError::LeaseLost(_))
    ));
    store.put_task(&task, again[0].lease_token).await.unwrap();
    let done = store
        .finish_query(
            &q.id,
            again[0].lease_token,
            &QueryOutcome::Succeeded {
                records: 5,
                window_start: None,
                window_end: Some("2026-01-01".into()),
            },
            later(63),
        )
        .await
        .unwrap();
    assert_eq!(done, RunStatus::Succeeded);
    let q = store.get_query(&f.org, &q.id).await.unwrap();
    assert_eq!(
        (q.records, q.window_end.as_deref()),
        (5, Some("2026-01-01"))
    );
    assert_eq!(store.list_tasks(&q.id).await.unwrap().len(), 1);
    assert_eq!(store.query_counts(&job.id).await.unwrap(), (1, 0, 0));
}

async fn a_query_handed_back_is_claimed_at_once_and_its_holder_fenced(store: Arc<SqlStore>) {
    let f = fixture(store.as_ref()).await;
    let job = import_job(&f.org, "handed", None);
    store.create_job(&job).await.unwrap();
    let q = store.create_query(&manual_query(&job), None).await.unwrap();
    let now = time::now();
    let first = store
        .claim_queries("a", 10, TTL, now)
        .await
        .unwrap()
        .remove(0);
    store
        .query_running(&first.id, first.lease_token, now)
        .await
        .unwrap();
    // A token that is not the lease's hands nothing back.
    assert!(!store
        .hand_back_query(&q.id, first.lease_token + 7, now)
        .await
        .unwrap());
    assert!(store
        .hand_back_query(&q.id, first.lease_token, now)
        .await
        .unwrap());
    // Claimable at once, long before the lease would have run out; no
    // error recorded, nothing to reap.
    assert!(store.reap_queries(later(60)).await.unwrap().is_empty());
    let again = store.claim_queries("b", 10, TTL, now).await.unwrap();
    assert_eq!(again.len(), 1);
    assert!(again[0].lease_token > first.lease_token);
    assert_eq!(store.get_query(&f.org, &q.id).await.unwrap().error, None);
    // The holder that handed it back can neither hand back again nor end it.
    assert!(!store
        .hand_back_query(&q.id, first.lease_token, now)
        .await
        .unwrap());
    let late = store
        .finish_query(
            &q.id,
            first.lease_token,
            &QueryOutcome::Failed { error: "x".into() },
            now,
        )
        .await
        .unwrap_err();
    assert!(matches!(late, StoreError::LeaseLost(_)), "{late}");
}

async fn jobs_page_by_keyset_with_search_and_count(store: Arc<SqlStore>) {
    let f = fixture(store.as_ref()).await;
    let other = fixture(store.as_ref()).await;
    for i in 0..25 {
        store
            .create_job(&import_job(&f.org, &format!("Orders {i}"), None))
            .await
            .unwrap();
    }
    store
        .create_job(&import_job(&f.org, "customers", None))
        .await
        .unwrap();
    store
        .create_job(&import_job(&other.org, "orders elsewhere", None))
        .await
        .unwrap();
    let filter = JobFilter {
        organization: f.org.clone(),
        space: None,
        search: Some("ORDERS".into()),
        include_deleted: false,
    };
    assert_eq!(store.count_jobs(&filter).await.unwrap(), 25);
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .list_jobs(
                &filter,
                PageRequest {
                    after,
                    forward: true,
                    limit: 10,
                },
            )
            .await
            .unwrap();
        seen.extend(page.items.into_iter().map(|j| j.name));
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    assert_eq!(seen.len(), 25);
    assert_eq!(seen[0], "Orders 0");
    assert_eq!(seen.iter().collect::<HashSet<_>>().len(), 25);
}

/// Processes opening one new PostgreSQL database at once all get it,
/// migrated once.
#[test]
fn many_openers_of_a_new_postgres_database_all_succeed() {
    let db = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(sluice_testkit::TempDb::postgres("sluice_test"));
    let url = db.to_string();
    let openers: Vec<_> = (0..6)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async { sluice_store::open(&url).await.map(|s| s.dialect()) })
            })
        })
        .collect();
    for o in openers {
        let dialect = o.join().unwrap().expect("every opener gets the store");
        assert_eq!(dialect, sluice_store::Dialect::Postgres);
    }
}

/// Processes opening one new SQLite file at once (`serve` and an admin
/// command) all get it, migrated once.
#[test]
fn many_openers_of_a_new_sqlite_file_all_succeed() {
    let dir = tempdir::Dir::new();
    let url = format!("sqlite://{}/meta.db", dir.path());
    // Each opener on a thread and runtime of its own, as separate processes.
    let openers: Vec<_> = (0..8)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async { sluice_store::open(&url).await.map(|s| s.dialect()) })
            })
        })
        .collect();
    for o in openers {
        let dialect = o.join().unwrap().expect("every opener gets the store");
        assert_eq!(dialect, sluice_store::Dialect::Sqlite);
    }
}

async fn an_organization_has_one_default_space_and_models_are_made_once(store: Arc<SqlStore>) {
    let f = fixture(store.as_ref()).await;
    let mut racers = Vec::new();
    for _ in 0..6 {
        let (s, org) = (store.clone(), f.org.clone());
        racers.push(tokio::spawn(async move {
            s.default_space(&org, time::now()).await.unwrap().id
        }));
    }
    let mut ids = HashSet::new();
    for r in racers {
        ids.insert(r.await.unwrap());
    }
    assert_eq!(ids.len(), 1, "one default space however many ask at once");
    let default = store.get_space(ids.iter().next().unwrap()).await.unwrap();
    assert!(default.is_default);
    let other = Space {
        seq: 0,
        id: SpaceId::generate(),
        organization_id: f.org.clone(),
        name: "Fraud team".into(),
        description: String::new(),
        private: true,
        is_default: false,
        created_at: time::now(),
    };
    store.create_space(&other).await.unwrap();
    let again = Space {
        id: SpaceId::generate(),
        ..other.clone()
    };
    assert!(matches!(
        store.create_space(&again).await,
        Err(StoreError::Conflict(_))
    ));
    let page = store
        .list_spaces(&f.org, Some("FRAUD"), forward(10))
        .await
        .unwrap();
    assert_eq!(page.items.len(), 1);
    assert_eq!(page.items[0].name, "Fraud team");

    let a = store
        .model_for(&f.org, &other.id, "churn", "score_categorical", time::now())
        .await
        .unwrap();
    let b = store
        .model_for(&f.org, &other.id, "churn", "numeric", time::now())
        .await
        .unwrap();
    assert_eq!(a, b, "a model is made once; its type is its first");
    assert_eq!(
        store.get_model(&a.id).await.unwrap().model_type,
        "score_categorical"
    );
    let models = store
        .list_models(&other.id, None, forward(10))
        .await
        .unwrap();
    assert_eq!(models.items.len(), 1);

    let key = ApiKey {
        id: ApiKeyId::generate(),
        organization_id: f.org.clone(),
        space_id: Some(other.id.clone()),
        key_hash: "abc".into(),
        created_at: time::now(),
    };
    store.create_api_key(&key).await.unwrap();
    assert_eq!(store.find_api_key("abc").await.unwrap(), Some(key));
    assert_eq!(store.find_api_key("nope").await.unwrap(), None);
}

fn rand_suffix() -> String {
    format!("{:016x}", rand::random::<u64>())
}

async fn a_destination_table_belongs_to_one_live_job(store: Arc<SqlStore>) {
    let f = fixture(store.as_ref()).await;
    let mut first = import_job(&f.org, "first", None);
    first.destination_key = Some("shared-table".into());
    store.create_job(&first).await.unwrap();
    let mut second = import_job(&f.org, "second", None);
    second.destination_key = Some("shared-table".into());
    let refused = store.create_job(&second).await.unwrap_err();
    assert!(
        matches!(&refused, StoreError::Conflict(m) if m.contains(first.id.as_str())),
        "the refusal names the owner: {refused}"
    );
    assert_eq!(
        store
            .job_loading("shared-table")
            .await
            .unwrap()
            .map(|j| j.id),
        Some(first.id.clone())
    );
    // A deleted job gives its table up.
    first.status = JobStatus::Deleted;
    store.update_job(&first).await.unwrap();
    assert!(store.job_loading("shared-table").await.unwrap().is_none());
    store.create_job(&second).await.unwrap();
    assert_eq!(
        store
            .job_loading("shared-table")
            .await
            .unwrap()
            .map(|j| j.id),
        Some(second.id)
    );
}

async fn a_server_secret_is_made_once(store: Arc<SqlStore>) {
    let racers: Vec<_> = (0..4)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .server_secret("signing-key", &format!("key-{i}"))
                    .await
            })
        })
        .collect();
    let mut seen = HashSet::new();
    for r in racers {
        seen.insert(r.await.unwrap().unwrap());
    }
    assert_eq!(seen.len(), 1, "every process gets the same key: {seen:?}");
    let kept = seen.into_iter().next().unwrap();
    assert_eq!(
        store.server_secret("signing-key", "other").await.unwrap(),
        kept
    );
}

// ---- the action API --------------------------------------------------------

fn configuration(
    org: &OrganizationId,
    api_id: &str,
    max_active: u32,
    next: Option<Timestamp>,
) -> action::Deployed {
    let now = time::now();
    action::Deployed {
        organization_id: org.clone(),
        configuration_type: "table-to-table".into(),
        api_id: api_id.into(),
        configuration_id: api_id.trim_end_matches("_DEV").into(),
        account: "000099".into(),
        environment: "DEV".into(),
        version: 0,
        activated: true,
        archived: false,
        max_active_runs: max_active,
        body: json!({"schedule": "0 7 * * *", "v": 1}),
        next_run_at: next,
        created_at: now,
        modified_at: now,
    }
}

fn action_run(c: &action::Deployed, version: i64) -> action::ActionRun {
    let now = time::now();
    action::ActionRun {
        seq: 0,
        id: action::new_run_id(now),
        organization_id: c.organization_id.clone(),
        configuration_type: c.configuration_type.clone(),
        api_id: c.api_id.clone(),
        version,
        job_id: format!("gbq-to-gbq|{}", c.api_id),
        execution_date: now.date_naive(),
        input: None,
        status: RunStatus::Pending,
        reported: None,
        warned: false,
        stopped: false,
        error: None,
        attempt: 0,
        lease_owner: None,
        lease_token: 0,
        created_at: now,
        started_at: None,
        finished_at: None,
        modified_at: now,
    }
}

async fn configurations_keep_every_version_and_accounts_are_unique(store: Arc<SqlStore>) {
    let f = fixture(store.as_ref()).await;
    let other = fixture(store.as_ref()).await;
    store.set_account(&f.org, "000099").await.unwrap();
    assert!(matches!(
        store.set_account(&other.org, "000099").await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(
        store.account_of(&f.org).await.unwrap().as_deref(),
        Some("000099")
    );

    let mut c = configuration(&f.org, "x_DEV", 1, None);
    assert_eq!(store.deploy_configuration(&c).await.unwrap(), 1);
    c.body = json!({"v": 2});
    assert_eq!(store.deploy_configuration(&c).await.unwrap(), 2);
    let got = store
        .get_configuration(&f.org, "table-to-table", "x_DEV")
        .await
        .unwrap();
    assert_eq!((got.version, got.body.clone()), (2, json!({"v": 2})));
    assert_eq!(
        store
            .configuration_version(&f.org, "table-to-table", "x_DEV", 1)
            .await
            .unwrap()["v"],
        1
    );
    // Another organization sees none of it.
    assert!(matches!(
        store
            .get_configuration(&other.org, "table-to-table", "x_DEV")
            .await,
        Err(StoreError::NotFound(_))
    ));
    assert!(store
        .list_configurations(&other.org)
        .await
        .unwrap()
        .is_empty());
    let off = store
        .set_configuration_status(&f.org, "table-to-table", "x_DEV", false, true, time::now())
        .await
        .unwrap();
    assert!(!off.activated && off.archived);
}

async fn action_runs_queue_under_max_active_runs_and_a_lost_one_is_fenced(store: Arc<SqlStore>) {
    let f = fixture(store.as_ref()).await;
    let c = configuration(&f.org, "q_DEV", 1, None);
    store.deploy_configuration(&c).await.unwrap();
    let runs: Vec<_> = (0..3).map(|_| action_run(&c, 1)).collect();
    for r in &runs {
        store.create_action_run(r).await.unwrap();
    }
    // One at a time: the first is queued, the others wait.
    assert_eq!(store.queue_action_runs(time::now()).await.unwrap(), 1);
    assert_eq!(store.queue_action_runs(time::now()).await.unwrap(), 0);
    let claimed = store
        .claim_action_runs("w1", 10, TTL, time::now())
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].id, runs[0].id);
    let token = claimed[0].lease_token;
    assert_eq!(
        store
            .action_run_running(&runs[0].id, token, time::now())
            .await
            .unwrap(),
        RunStatus::Running
    );
    assert_eq!(store.queue_action_runs(time::now()).await.unwrap(), 0);
    // Its worker stops renewing: the run is given back and w1 is fenced.
    let reaped = store.reap_action_runs(later(60)).await.unwrap();
    assert_eq!(reaped, vec![runs[0].id.clone()]);
    let task = action::ActionTask {
        run_id: runs[0].id.clone(),
        task_id: "t".into(),
        position: 0,
        status: "SUCCEEDED".into(),
        attempt: 1,
        started_at: None,
        finished_at: None,
        rows: 1,
        messages: vec![],
    };
    assert!(matches!(
        store.put_action_task(&task, token).await,
        Err(StoreError::LeaseLost(_))
    ));
    assert!(matches!(
        store
            .finish_action_run(
                &runs[0].id,
                token,
                &ActionOutcome::Succeeded {
                    warned: false,
                    stopped: false,
                },
                time::now()
            )
            .await,
        Err(StoreError::LeaseLost(_))
    ));
    let again = store
        .claim_action_runs("w2", 10, TTL, time::now())
        .await
        .unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(
        (again[0].id.clone(), again[0].attempt),
        (runs[0].id.clone(), 2)
    );
    store
        .put_action_task(&task, again[0].lease_token)
        .await
        .unwrap();
    assert_eq!(
        store
            .finish_action_run(
                &runs[0].id,
                again[0].lease_token,
                &ActionOutcome::Succeeded {
                    warned: true,
                    stopped: false,
                },
                time::now()
            )
            .await
            .unwrap(),
        RunStatus::Succeeded
    );
    // The next one may start now; the list is newest first and filters.
    assert_eq!(store.queue_action_runs(time::now()).await.unwrap(), 1);
    let filter = ActionRunFilter {
        configuration_type: "table-to-table".into(),
        api_id: "q_DEV".into(),
        status: Some(action::ActionStatus::Warning),
        execution_date: None,
        before: None,
        limit: 10,
    };
    let warned = store.list_action_runs(&f.org, &filter).await.unwrap();
    assert_eq!(
        warned.iter().map(|r| r.id.clone()).collect::<Vec<_>>(),
        vec![runs[0].id.clone()]
    );
    assert_eq!(warned[0].action_status(), action::ActionStatus::Warning);
    let all = store
        .list_action_runs(
            &f.org,
            &ActionRunFilter {
                status: None,
                ..filter
            },
        )
        .await
        .unwrap();
    assert_eq!(
        all.iter().map(|r| r.id.clone()).collect::<Vec<_>>(),
        runs.iter().rev().map(|r| r.id.clone()).collect::<Vec<_>>()
    );
    assert_eq!(
        store.list_action_tasks(&runs[0].id).await.unwrap(),
        vec![task]
    );
}

async fn racing_schedulers_make_one_action_run_per_due_time(store: Arc<SqlStore>) {
    let f = fixture(store.as_ref()).await;
    let due = time::now();
    let c = configuration(&f.org, "s_DEV", 5, Some(due));
    store.deploy_configuration(&c).await.unwrap();
    let found = store.due_configurations(later(1)).await.unwrap();
    assert_eq!(found.len(), 1);
    let due = found[0].next_run_at.unwrap();
    let racers: Vec<_> = (0..4)
        .map(|_| {
            let (store, c) = (store.clone(), found[0].clone());
            tokio::spawn(async move {
                store
                    .schedule_action_run(&action_run(&c, 1), due, Some(later(3600)))
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut made = 0;
    for r in racers {
        made += r.await.unwrap() as usize;
    }
    assert_eq!(made, 1, "one run per due time");
    assert!(store.due_configurations(later(1)).await.unwrap().is_empty());
}

/// Claims `run` (alone in the queue) and ends it as `outcome`.
async fn run_to_end(store: &SqlStore, run: &action::ActionRun, outcome: ActionOutcome) {
    store.create_action_run(run).await.unwrap();
    store.queue_action_runs(time::now()).await.unwrap();
    let claimed = store
        .claim_action_runs("w", 10, TTL, time::now())
        .await
        .unwrap();
    let mine = claimed.iter().find(|r| r.id == run.id).expect("claimed");
    store
        .finish_action_run(&run.id, mine.lease_token, &outcome, time::now())
        .await
        .unwrap();
}

async fn a_workflow_fires_once_when_every_awaited_job_succeeded(store: Arc<SqlStore>) {
    let f = fixture(store.as_ref()).await;
    let (ja, jb, jt) = (
        configuration(&f.org, "ja_DEV", 5, None),
        configuration(&f.org, "jb_DEV", 5, None),
        configuration(&f.org, "jt_DEV", 5, None),
    );
    for c in [&ja, &jb, &jt] {
        store.deploy_configuration(c).await.unwrap();
    }
    let mut wf = configuration(&f.org, "wf", 1, None);
    wf.configuration_type = "workflow".into();
    wf.body = serde_json::to_value(action::Workflow {
        configuration_id: "wf".into(),
        account: "000099".into(),
        environment: "DEV".into(),
        activated: true,
        archived: false,
        authorized_job_ids: vec!["gbq-to-gbq|ja_DEV".into(), "gbq-to-gbq|jb_DEV".into()],
        target_type: "table-to-table".into(),
        target_id: "jt_DEV".into(),
        reset_schedule: None,
    })
    .unwrap();
    store.deploy_configuration(&wf).await.unwrap();
    let ok = || ActionOutcome::Succeeded {
        warned: false,
        stopped: false,
    };
    let filter = ActionRunFilter {
        configuration_type: "table-to-table".into(),
        api_id: "jt_DEV".into(),
        status: None,
        execution_date: None,
        before: None,
        limit: 100,
    };
    // JA twice, and a stopped JB: not yet.
    run_to_end(&store, &action_run(&ja, 1), ok()).await;
    run_to_end(&store, &action_run(&ja, 1), ok()).await;
    run_to_end(
        &store,
        &action_run(&jb, 1),
        ActionOutcome::Succeeded {
            warned: false,
            stopped: true,
        },
    )
    .await;
    assert_eq!(
        store.list_action_runs(&f.org, &filter).await.unwrap().len(),
        0
    );
    assert_eq!(
        store.workflow_successes(&f.org, "wf").await.unwrap().len(),
        1
    );
    // JB: the workflow fires, once, and counts from nothing again.
    run_to_end(&store, &action_run(&jb, 1), ok()).await;
    assert_eq!(
        store.list_action_runs(&f.org, &filter).await.unwrap().len(),
        1
    );
    assert!(store
        .workflow_successes(&f.org, "wf")
        .await
        .unwrap()
        .is_empty());
    // A reset forgets a success.
    run_to_end(&store, &action_run(&ja, 1), ok()).await;
    store.reset_workflow(&f.org, "wf").await.unwrap();
    run_to_end(&store, &action_run(&jb, 1), ok()).await;
    assert_eq!(
        store.list_action_runs(&f.org, &filter).await.unwrap().len(),
        1
    );
}

async fn api_source(store: &SqlStore, org: &OrganizationId, name: &str) {
    let now = time::now();
    store
        .put_api_source(
            &api_source::ApiSource {
                organization_id: org.clone(),
                name: name.into(),
                config_sealed: "sealed".into(),
                config_shown: json!({"name": name}),
                destination: None,
                dataset: name.into(),
                created_at: now,
                modified_at: now,
            },
            false,
        )
        .await
        .unwrap();
}

async fn one_api_run_of_a_source_is_active_even_when_runs_start_at_once(store: Arc<SqlStore>) {
    use api_source::RunType;
    let org = OrganizationId::generate();
    api_source(&store, &org, "shop").await;
    api_source(&store, &org, "other").await;
    let again = store
        .put_api_source(&store.get_api_source(&org, "shop").await.unwrap(), false)
        .await;
    assert!(matches!(again, Err(StoreError::Conflict(_))), "{again:?}");
    // Ten starts at once: exactly one waits to start, nine are rejected.
    let starts = (0..10).map(|_| {
        let (store, org) = (store.clone(), org.clone());
        tokio::spawn(async move {
            store
                .start_api_run(&org, "shop", RunType::Incremental, None, time::now())
                .await
                .unwrap()
        })
    });
    let runs: Vec<_> = futures_join(starts).await;
    let active: Vec<_> = runs
        .iter()
        .filter(|r| r.status == RunStatus::Runnable)
        .collect();
    assert_eq!(active.len(), 1, "{runs:?}");
    for r in runs.iter().filter(|r| r.status != RunStatus::Runnable) {
        assert_eq!(r.status, RunStatus::Rejected);
        assert_eq!(r.error.as_deref(), Some(api_source::REJECTED_MESSAGE));
    }
    // Ids are the runs' numbers, all different.
    let ids: HashSet<_> = runs.iter().map(|r| r.id.clone()).collect();
    assert_eq!(ids.len(), 10);
    assert!(runs.iter().all(|r| r.id.parse::<i64>().is_ok()), "{ids:?}");
    // Another source is not held back.
    let other = store
        .start_api_run(&org, "other", RunType::Destructive, None, time::now())
        .await
        .unwrap();
    assert_eq!(other.status, RunStatus::Runnable);
    // Once the active one ended, a new one may start.
    let first = active[0];
    assert_eq!(
        store
            .cancel_api_run(&org, &first.id, time::now())
            .await
            .unwrap(),
        RunStatus::Cancelled
    );
    let next = store
        .start_api_run(
            &org,
            "shop",
            RunType::Incremental,
            Some(&first.id),
            time::now(),
        )
        .await
        .unwrap();
    assert_eq!(next.status, RunStatus::Runnable);
    assert_eq!(next.retry_of.as_deref(), Some(first.id.as_str()));
    // Another organization's id is not found.
    let stranger = OrganizationId::generate();
    assert!(matches!(
        store.get_api_run(&stranger, &next.id).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store.cancel_api_run(&stranger, &next.id, time::now()).await,
        Err(StoreError::NotFound(_))
    ));
}

async fn futures_join<T: Send + 'static>(
    handles: impl Iterator<Item = tokio::task::JoinHandle<T>>,
) -> Vec<T> {
    let mut out = Vec::new();
    for h in handles.collect::<Vec<_>>() {
        out.push(h.await.unwrap());
    }
    out
}

async fn api_runs_cancel_once_and_a_lost_one_is_fenced(store: Arc<SqlStore>) {
    use api_source::{ApiTask, RunType};
    let org = OrganizationId::generate();
    api_source(&store, &org, "shop").await;
    let run = store
        .start_api_run(&org, "shop", RunType::Incremental, None, time::now())
        .await
        .unwrap();
    let claimed = store
        .claim_api_runs("w1", 10, Duration::from_millis(1), time::now())
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    let token = claimed[0].lease_token;
    assert_eq!(
        store
            .api_run_running(&run.id, token, time::now())
            .await
            .unwrap(),
        RunStatus::Running
    );
    let task = ApiTask {
        run_id: run.id.clone(),
        position: 0,
        name: "orders".into(),
        kind: api_source::EXTRACTION.into(),
        table: Some("orders".into()),
        status: RunStatus::Succeeded,
        records: 42,
        messages: vec!["HTTP 429".into()],
        started_at: Some(time::now()),
        finished_at: Some(time::now()),
    };
    store.put_api_task(&task, token).await.unwrap();
    assert_eq!(store.api_tasks(&run.id).await.unwrap(), vec![task.clone()]);
    assert_eq!(store.get_api_run(&org, &run.id).await.unwrap().records, 42);
    // The lease runs out: the run is given back, the lost worker fenced.
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(
        store.reap_api_runs(time::now()).await.unwrap(),
        vec![run.id.clone()]
    );
    assert!(matches!(
        store.put_api_task(&task, token).await,
        Err(StoreError::LeaseLost(_))
    ));
    let outcome = ApiOutcome::Succeeded {
        tables: 1,
        records: 42,
    };
    assert!(matches!(
        store
            .finish_api_run(&run.id, token, &outcome, time::now())
            .await,
        Err(StoreError::LeaseLost(_))
    ));
    assert!(store.api_data_load(&run.id).await.unwrap().is_none());
    // Claimed again and running: the first cancel makes it CANCELING, the
    // second changes nothing and says so.
    let again = store
        .claim_api_runs("w2", 10, TTL, time::now())
        .await
        .unwrap();
    let token = again[0].lease_token;
    store
        .api_run_running(&run.id, token, time::now())
        .await
        .unwrap();
    assert_eq!(
        store
            .cancel_api_run(&org, &run.id, time::now())
            .await
            .unwrap(),
        RunStatus::Canceling
    );
    let second = store.cancel_api_run(&org, &run.id, time::now()).await;
    assert!(
        matches!(&second, Err(StoreError::Conflict(m)) if m.contains("already Canceling")),
        "{second:?}"
    );
    assert_eq!(
        store
            .heartbeat_api_run(&run.id, token, TTL, time::now())
            .await
            .unwrap(),
        RunStatus::Canceling
    );
    let failed = ApiOutcome::Failed {
        error: "cancelled".into(),
    };
    assert_eq!(
        store
            .finish_api_run(&run.id, token, &failed, time::now())
            .await
            .unwrap(),
        RunStatus::Cancelled
    );
    assert!(store.api_data_load(&run.id).await.unwrap().is_none());
    // A run that succeeds has its data load.
    let ok = store
        .start_api_run(&org, "shop", RunType::Destructive, None, time::now())
        .await
        .unwrap();
    let c = store
        .claim_api_runs("w3", 10, TTL, time::now())
        .await
        .unwrap();
    store
        .finish_api_run(&ok.id, c[0].lease_token, &outcome, time::now())
        .await
        .unwrap();
    let load = store
        .api_data_load(&ok.id)
        .await
        .unwrap()
        .expect("a data load");
    assert_eq!((load.tables, load.records), (1, 42));
    let ended = store.cancel_api_run(&org, &ok.id, time::now()).await;
    assert!(
        matches!(&ended, Err(StoreError::Conflict(m)) if m.contains("Completed")),
        "{ended:?}"
    );
    // Deleting the source takes its runs' records with it.
    store.delete_api_source(&org, "shop").await.unwrap();
    assert!(store.api_tasks(&run.id).await.unwrap().is_empty());
    assert!(store
        .list_api_runs(&org, "shop", 10)
        .await
        .unwrap()
        .is_empty());
}
