//! What a table import must never get wrong about its destination and its
//! windows, on both load paths: PostgreSQL → PostgreSQL (binary COPY) and
//! SQLite → SQLite (the row path, as into the embedded warehouse).
//!
//! - rows that arrive with the watermark's own change value load, once;
//! - rows with no change value are never skipped without a word;
//! - a dropped or emptied target is loaded again from the start;
//! - a table another import made is never written;
//! - a lookback reads late rows again, merged by key.
//!
//! PostgreSQL from `SLUICE_TEST_POSTGRES_URL` (default
//! postgres://postgres@127.0.0.1:5432/postgres); fails loudly without it.

use sluice_datapath::{import, ImportReport, ImportSpec, Mode, NullChange};
use sqlx::{Connection, PgConnection, SqliteConnection};

/// A source and a destination of one kind, each empty.
struct Ends {
    src: String,
    dst: String,
    pg: bool,
    /// The databases, dropped with the ends.
    _keep: Vec<sluice_testkit::TempDb>,
    _dir: Option<std::path::PathBuf>,
}

async fn postgres() -> Ends {
    let (src, dst) = (
        sluice_testkit::TempDb::postgres("sluice_win").await,
        sluice_testkit::TempDb::postgres("sluice_win").await,
    );
    Ends {
        src: src.to_string(),
        dst: dst.to_string(),
        pg: true,
        _keep: vec![src, dst],
        _dir: None,
    }
}

fn sqlite() -> Ends {
    let dir = std::env::temp_dir().join(format!("sluice-win-{:016x}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    Ends {
        src: format!("sqlite://{}/src.db?mode=rwc", dir.display()),
        dst: format!("sqlite://{}/dst.db", dir.display()),
        pg: false,
        _keep: vec![],
        _dir: Some(dir),
    }
}

impl Ends {
    async fn exec(&self, url: &str, sql: &str) {
        if self.pg {
            let mut c = PgConnection::connect(url).await.unwrap();
            sqlx::raw_sql(sql).execute(&mut c).await.unwrap();
        } else {
            let mut c = SqliteConnection::connect(url).await.unwrap();
            sqlx::raw_sql(sql).execute(&mut c).await.unwrap();
        }
    }

    async fn source(&self, sql: &str) {
        self.exec(&self.src, sql).await
    }

    async fn dest(&self, sql: &str) {
        self.exec(&self.dst, sql).await
    }

    /// `SELECT count(*), count(DISTINCT id)` of a destination table.
    async fn counts(&self, table: &str) -> (i64, i64) {
        let sql = format!("SELECT count(*), count(DISTINCT id) FROM {table}");
        if self.pg {
            let mut c = PgConnection::connect(&self.dst).await.unwrap();
            sqlx::query_as(&sql).fetch_one(&mut c).await.unwrap()
        } else {
            let mut c = SqliteConnection::connect(&self.dst).await.unwrap();
            sqlx::query_as(&sql).fetch_one(&mut c).await.unwrap()
        }
    }

    fn events_table(&self) -> &'static str {
        if self.pg {
            "CREATE TABLE events (id bigint, at timestamptz, v text)"
        } else {
            "CREATE TABLE events (id INTEGER, at TIMESTAMP, v TEXT)"
        }
    }

    fn spec(&self, target: &str) -> ImportSpec {
        ImportSpec {
            mode: Mode::Incremental,
            change_column: Some("at".into()),
            ..ImportSpec::new(&self.src, "events", &self.dst, target)
        }
    }
}

async fn both() -> Vec<Ends> {
    vec![postgres().await, sqlite()]
}

async fn run(spec: &ImportSpec) -> ImportReport {
    import(spec, &mut ()).await.unwrap()
}

#[tokio::test]
async fn rows_at_the_watermark_that_arrive_later_load_once() {
    for e in both().await {
        e.source(e.events_table()).await;
        // A batch insert shares one change value.
        e.source(
            "INSERT INTO events VALUES (1, '2026-01-01 10:00:00', 'a'), \
             (2, '2026-01-01 10:00:00', 'b')",
        )
        .await;
        let spec = e.spec("events");
        assert_eq!(run(&spec).await.rows, 2);
        // Two more rows with the same value, committed after the load.
        e.source(
            "INSERT INTO events VALUES (3, '2026-01-01 10:00:00', 'c'), \
             (4, '2026-01-01 10:00:00', 'd')",
        )
        .await;
        let second = run(&spec).await;
        assert_eq!(second.rows, 2, "pg={}: the two late rows are new", e.pg);
        assert_eq!(e.counts("events").await, (4, 4), "pg={}", e.pg);
        // Nothing new: nothing loaded, nothing doubled.
        let third = run(&spec).await;
        assert!(
            third.nothing_new && third.rows == 0,
            "pg={}: {third:?}",
            e.pg
        );
        // Past the watermark and at it at once.
        e.source(
            "INSERT INTO events VALUES (5, '2026-01-01 10:00:00', 'e'), \
             (6, '2026-01-01 11:00:00', 'f')",
        )
        .await;
        assert_eq!(run(&spec).await.rows, 2, "pg={}", e.pg);
        assert_eq!(e.counts("events").await, (6, 6), "pg={}", e.pg);
    }
}

#[tokio::test]
async fn rows_with_no_change_value_fail_or_are_counted() {
    for e in both().await {
        e.source(e.events_table()).await;
        e.source(
            "INSERT INTO events VALUES (1, '2026-01-01 10:00:00', 'a'), (2, NULL, 'b'), \
             (3, NULL, 'c'), (4, '2026-01-01 11:00:00', 'd')",
        )
        .await;
        let mut spec = e.spec("events");
        let err = import(&spec, &mut ()).await.unwrap_err().to_string();
        assert!(
            err.contains("2 source rows have no change value"),
            "pg={}: {err}",
            e.pg
        );
        spec.null_change = NullChange::Exclude;
        let r = run(&spec).await;
        assert_eq!((r.rows, r.null_change_rows), (2, 2), "pg={}", e.pg);
        // Included, they come with every window: only in a merge.
        spec.null_change = NullChange::Include;
        let err = import(&spec, &mut ()).await.unwrap_err().to_string();
        assert!(err.contains("merge"), "{err}");
        let merged = ImportSpec {
            mode: Mode::Merge,
            key: Some("id".into()),
            null_change: NullChange::Include,
            ..e.spec("merged")
        };
        assert_eq!(run(&merged).await.rows, 4, "pg={}", e.pg);
        e.source("INSERT INTO events VALUES (5, '2026-01-01 12:00:00', 'e')")
            .await;
        run(&merged).await;
        assert_eq!(e.counts("merged").await, (5, 5), "pg={}", e.pg);
    }
}

#[tokio::test]
async fn a_dropped_or_emptied_target_is_loaded_again_from_the_start() {
    for e in both().await {
        e.source(e.events_table()).await;
        e.source(
            "INSERT INTO events VALUES (1, '2026-01-01 10:00:00', 'a'), \
             (2, '2026-01-01 11:00:00', 'b')",
        )
        .await;
        let spec = e.spec("events");
        assert_eq!(run(&spec).await.rows, 2);
        e.dest("DROP TABLE events").await;
        let again = run(&spec).await;
        assert_eq!(again.rows, 2, "pg={}", e.pg);
        assert!(
            again
                .reloaded
                .as_deref()
                .is_some_and(|w| w.contains("missing")),
            "pg={}: {again:?}",
            e.pg
        );
        assert_eq!(e.counts("events").await, (2, 2));
        e.dest("DELETE FROM events").await;
        let again = run(&spec).await;
        assert!(
            again
                .reloaded
                .as_deref()
                .is_some_and(|w| w.contains("empty")),
            "pg={}: {again:?}",
            e.pg
        );
        assert_eq!(e.counts("events").await, (2, 2), "pg={}", e.pg);
        // Trusted again afterwards: nothing new, nothing loaded.
        assert!(run(&spec).await.nothing_new);
    }
}

#[tokio::test]
async fn a_table_another_import_made_is_never_written() {
    for e in both().await {
        e.source(e.events_table()).await;
        e.source("INSERT INTO events VALUES (1, '2026-01-01 10:00:00', 'a')")
            .await;
        let first = ImportSpec {
            job: Some("first".into()),
            ..e.spec("events")
        };
        run(&first).await;
        for mode in [Mode::Incremental, Mode::Destructive] {
            let second = ImportSpec {
                job: Some("second".into()),
                mode,
                ..e.spec("events")
            };
            let err = import(&second, &mut ()).await.unwrap_err().to_string();
            assert!(
                err.contains("belongs to another import (`first`)"),
                "pg={}: {err}",
                e.pg
            );
        }
        assert_eq!(e.counts("events").await, (1, 1), "pg={}", e.pg);
    }
}

#[tokio::test]
async fn a_lookback_reads_late_rows_again_merged_by_key() {
    for e in both().await {
        e.source(e.events_table()).await;
        e.source(
            "INSERT INTO events VALUES (1, '2026-01-01 10:00:00', 'a'), \
             (2, '2026-01-01 10:30:00', 'b')",
        )
        .await;
        let plain = e.spec("events");
        let err = import(
            &ImportSpec {
                lookback: Some(std::time::Duration::from_secs(3600)),
                ..plain.clone()
            },
            &mut (),
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(err.contains("merge"), "{err}");
        let spec = ImportSpec {
            mode: Mode::Merge,
            key: Some("id".into()),
            lookback: Some(std::time::Duration::from_secs(3600)),
            ..plain
        };
        run(&spec).await;
        // A row arrives late, older than the watermark, inside the lookback;
        // one row changes in place.
        e.source(
            "INSERT INTO events VALUES (3, '2026-01-01 10:10:00', 'late'); \
             UPDATE events SET v = 'b2' WHERE id = 2",
        )
        .await;
        run(&spec).await;
        assert_eq!(e.counts("events").await, (3, 3), "pg={}", e.pg);
    }
}

/// A table sluice did not make, with the import's column names but a
/// narrower type, is not widened: the import is refused and the table kept.
#[tokio::test]
async fn a_table_sluice_did_not_make_is_never_widened() {
    let e = postgres().await;
    e.source(e.events_table()).await;
    e.source("INSERT INTO events VALUES (1, '2026-01-01 10:00:00', 'a')")
        .await;
    e.dest("CREATE TABLE events (id integer, at timestamptz, v text)")
        .await;
    let err = import(&e.spec("events"), &mut ())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("sluice did not make it") && err.contains("widened from integer to bigint"),
        "{err}"
    );
    let mut c = PgConnection::connect(&e.dst).await.unwrap();
    let ty: String = sqlx::query_scalar(
        "SELECT data_type::text FROM information_schema.columns \
         WHERE table_name = 'events' AND column_name = 'id'",
    )
    .fetch_one(&mut c)
    .await
    .unwrap();
    assert_eq!(ty, "integer");
    assert_eq!(e.counts("events").await, (0, 0));
}
