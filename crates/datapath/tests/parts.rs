//! Full PostgreSQL → PostgreSQL copies in parts (`ImportSpec::parallel`),
//! against the local server: a fresh source and destination database per
//! test (`SLUICE_TEST_POSTGRES_URL`, default
//! postgres://postgres@127.0.0.1:5432/postgres). Fails loudly without it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use sluice_datapath::{import, ImportError, ImportSpec, Mode, Progress, StageEvent};
use sluice_testkit::{pg_exec as exec, pg_scalar as scalar};

mod folder;
use folder::Folder;

async fn fresh_db() -> sluice_testkit::TempDb {
    sluice_testkit::TempDb::postgres("sluice_parts").await
}

/// Row count, distinct ids and a checksum over every column, in id order.
async fn fingerprint(url: &str, table: &str) -> String {
    scalar(
        url,
        &format!(
            "SELECT count(*) || ':' || count(DISTINCT id) || ':' || \
             coalesce(md5(string_agg(md5(x::text), '' ORDER BY id)), '') FROM {table} x"
        ),
    )
    .await
    .unwrap()
}

async fn tables_like(url: &str, pattern: &str) -> String {
    scalar(
        url,
        &format!(
            "SELECT coalesce(string_agg(tablename, ',' ORDER BY tablename), '') FROM pg_tables \
             WHERE tablename LIKE '{pattern}'"
        ),
    )
    .await
    .unwrap()
}

const SOURCE: &str = "CREATE TABLE orders (
    id bigint PRIMARY KEY, at timestamptz NOT NULL, name text, n int,
    score double precision, doc jsonb, note text, amount numeric(12,2), day date);";

async fn add_rows(url: &str, first: i64, last: i64) {
    exec(
        url,
        &format!(
            "INSERT INTO orders SELECT g, timestamptz '2026-01-01' + g * interval '1 second', \
             'name ''' || g, g % 1000, g / 7.0, jsonb_build_object('k', g), \
             CASE WHEN g % 5 = 0 THEN NULL ELSE repeat('note ', 20) END, (g % 100000) / 100.0, \
             date '2020-01-01' + (g % 3000) FROM generate_series({first}, {last}) g"
        ),
    )
    .await;
}

fn spec(src: &str, dst: &str, parallel: Option<usize>) -> ImportSpec {
    ImportSpec {
        mode: Mode::Destructive,
        parallel,
        ..ImportSpec::new(src, "orders", dst, "orders")
    }
}

#[tokio::test]
async fn a_full_copy_in_parts_loads_every_row_once_with_one_ledger_row() {
    let (src, dst) = (fresh_db().await, fresh_db().await);
    exec(&src, SOURCE).await;
    add_rows(&src, 1, 30_000).await;
    let report = import(&spec(&src, &dst, Some(3)), &mut ()).await.unwrap();
    assert_eq!(report.parts, 3);
    assert_eq!(report.rows, 30_000);
    assert_eq!(
        fingerprint(&dst, "orders").await,
        fingerprint(&src, "orders").await
    );
    let ledger = "SELECT count(*) || ':' || sum(rows) FROM sluice_load_ledger";
    assert_eq!(scalar(&dst, ledger).await.unwrap(), "1:30000");
    // The table swapped in carries no mark a later load would sweep.
    let comment = "SELECT coalesce(obj_description('orders'::regclass, 'pg_class'), '')";
    assert_eq!(scalar(&dst, comment).await.unwrap(), "");
    assert_eq!(tables_like(&dst, "orders\\_\\_sluice%").await, "");

    // Again, with rows deleted and added: the new table replaces the old.
    exec(&src, "DELETE FROM orders WHERE id % 7 = 0").await;
    add_rows(&src, 30_001, 31_000).await;
    let again = import(&spec(&src, &dst, Some(2)), &mut ()).await.unwrap();
    // Deleted: the multiples of 7 up to 30,000.
    let now = 31_000 - 30_000 / 7;
    assert_eq!((again.parts, again.rows), (2, now));
    assert_eq!(
        fingerprint(&dst, "orders").await,
        fingerprint(&src, "orders").await
    );
    assert_eq!(
        scalar(&dst, ledger).await.unwrap(),
        format!("2:{}", 30_000 + now)
    );
}

#[tokio::test]
async fn a_small_table_is_one_stream_unless_parts_are_asked_for() {
    let (src, dst) = (fresh_db().await, fresh_db().await);
    exec(&src, SOURCE).await;
    add_rows(&src, 1, 2_000).await;
    let chosen = import(&spec(&src, &dst, None), &mut ()).await.unwrap();
    assert_eq!((chosen.parts, chosen.rows), (0, 2_000));
    let asked = import(&spec(&src, &dst, Some(2)), &mut ()).await.unwrap();
    assert_eq!((asked.parts, asked.rows), (2, 2_000));
    assert_eq!(
        fingerprint(&dst, "orders").await,
        fingerprint(&src, "orders").await
    );
}

/// Cancels the load once `after` batches were loaded (the load answering
/// Cancelled then proves it was stopped mid-flight).
struct CancelAfter {
    flag: Arc<AtomicBool>,
    after: u64,
    seen: u64,
    mid_flight: bool,
}

impl Progress for CancelAfter {
    fn rows(&mut self, _: u64, _: Option<u64>) {}
    fn stage(&mut self, event: StageEvent) {
        if let StageEvent::Extracted { .. } = event {
            self.seen += 1;
            if self.seen == self.after {
                self.flag.store(true, Ordering::Relaxed);
                self.mid_flight = true;
            }
        }
    }
}

#[tokio::test]
async fn a_cancelled_load_in_parts_leaves_the_live_table_the_ledger_and_no_table_of_parts() {
    let (src, dst) = (fresh_db().await, fresh_db().await);
    exec(&src, SOURCE).await;
    add_rows(&src, 1, 1_000).await;
    import(&spec(&src, &dst, Some(1)), &mut ()).await.unwrap();
    let before = fingerprint(&dst, "orders").await;
    add_rows(&src, 1_001, 150_000).await;
    let flag = Arc::new(AtomicBool::new(false));
    let mut progress = CancelAfter {
        flag: flag.clone(),
        after: 2,
        seen: 0,
        mid_flight: false,
    };
    let cancelled = ImportSpec {
        cancel: Some(flag),
        ..spec(&src, &dst, Some(3))
    };
    let outcome = import(&cancelled, &mut progress).await;
    assert!(
        progress.mid_flight,
        "the load was cancelled after its rows were in"
    );
    assert!(
        matches!(outcome, Err(ImportError::Cancelled)),
        "{outcome:?}"
    );
    assert_eq!(fingerprint(&dst, "orders").await, before);
    assert_eq!(
        scalar(&dst, "SELECT count(*)::text FROM sluice_load_ledger")
            .await
            .unwrap(),
        "1"
    );
    assert_eq!(tables_like(&dst, "orders\\_\\_sluice%").await, "");
}

#[tokio::test]
async fn tables_of_parts_dead_loads_left_are_swept_and_no_other_table() {
    let (src, dst) = (fresh_db().await, fresh_db().await);
    exec(&src, SOURCE).await;
    add_rows(&src, 1, 5_000).await;
    // What a load in parts that died leaves: its marked table; and a
    // table of the user's whose name only looks like one.
    exec(
        &dst,
        "CREATE TABLE orders__sluice_0badf00d (id bigint);
         COMMENT ON TABLE orders__sluice_0badf00d IS 'sluice: a table loaded in parts into orders';
         CREATE TABLE orders__sluice_mine (id bigint);
         CREATE TABLE other__sluice_0badf00d (id bigint);
         COMMENT ON TABLE other__sluice_0badf00d IS 'sluice: a table loaded in parts into other';",
    )
    .await;
    let report = import(&spec(&src, &dst, Some(2)), &mut ()).await.unwrap();
    assert_eq!(report.parts, 2);
    assert_eq!(
        tables_like(&dst, "%\\_\\_sluice%").await,
        "orders__sluice_mine,other__sluice_0badf00d"
    );
}

#[tokio::test]
async fn parts_asked_for_a_window_or_a_view_are_refused_and_nothing_is_loaded() {
    let (src, dst) = (fresh_db().await, fresh_db().await);
    exec(&src, SOURCE).await;
    add_rows(&src, 1, 5_000).await;
    exec(
        &src,
        "CREATE VIEW recent AS SELECT * FROM orders WHERE id > 100",
    )
    .await;
    let window = ImportSpec {
        mode: Mode::Incremental,
        change_column: Some("at".into()),
        ..spec(&src, &dst, Some(2))
    };
    let err = import(&window, &mut ()).await.unwrap_err().to_string();
    assert!(err.contains("cannot load orders in 2 parts"), "{err}");
    assert!(err.contains("one stream"), "{err}");
    let view = ImportSpec {
        source_table: "recent".into(),
        ..spec(&src, &dst, Some(2))
    };
    let err = import(&view, &mut ()).await.unwrap_err().to_string();
    assert!(err.contains("not a plain table"), "{err}");
    assert_eq!(
        scalar(&dst, "SELECT to_regclass('orders')::text").await,
        None
    );
}

#[derive(Default)]
struct Objects(Vec<String>);

impl Progress for Objects {
    fn rows(&mut self, _: u64, _: Option<u64>) {}
    fn stage(&mut self, event: StageEvent) {
        if let StageEvent::Extracted {
            object: Some(o), ..
        } = event
        {
            self.0.push(o);
        }
    }
}

#[tokio::test]
async fn a_staged_load_in_parts_stages_each_parts_batches_as_one_copy_stream() {
    let (src, dst) = (fresh_db().await, fresh_db().await);
    exec(&src, SOURCE).await;
    add_rows(&src, 1, 40_000).await;
    let dir = std::env::temp_dir().join(format!("sluice-parts-{:016x}", rand::random::<u64>()));
    let staged = ImportSpec {
        stage: Some(sluice_datapath::StageHandle(Arc::new(Folder(dir.clone())))),
        ..spec(&src, &dst, Some(3))
    };
    let mut objects = Objects::default();
    let report = import(&staged, &mut objects).await.unwrap();
    assert_eq!((report.parts, report.rows), (3, 40_000));
    assert_eq!(
        fingerprint(&dst, "orders").await,
        fingerprint(&src, "orders").await
    );

    // One manifest lists every part's batches; each part's, in order, is
    // one binary COPY stream: loaded back, the parts are the source.
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["parts"], 3, "{manifest}");
    assert_eq!(manifest["rows"], 40_000, "{manifest}");
    assert_eq!(manifest["format"], "postgresql-binary-copy");
    let batches = manifest["batches"].as_array().unwrap();
    // The extract task names every staged batch (by its name in the
    // stage; the manifest says where it is).
    let mut listed: Vec<String> = batches
        .iter()
        .map(|b| {
            b["object"]
                .as_str()
                .unwrap()
                .replace(&format!("{}/", dir.display()), "")
        })
        .collect();
    listed.sort();
    let mut told = objects.0.clone();
    told.sort();
    assert_eq!(told, listed);
    assert!(told.len() >= 3, "{told:?}");
    exec(&dst, "CREATE TABLE back (LIKE orders)").await;
    let mut c = <sqlx::PgConnection as sqlx::Connection>::connect(&dst)
        .await
        .unwrap();
    for part in 1..=3u64 {
        let mut stream = Vec::new();
        for b in batches.iter().filter(|b| b["part"] == part) {
            let object = b["object"].as_str().unwrap();
            assert!(
                object.contains(&format!("part-{part:02}/batch-")),
                "{object}"
            );
            stream.extend(std::fs::read(object).unwrap());
        }
        let mut copy = c
            .copy_in_raw("COPY back FROM STDIN (FORMAT binary)")
            .await
            .unwrap();
        copy.send(stream).await.unwrap();
        copy.finish().await.unwrap();
    }
    assert_eq!(
        fingerprint(&dst, "back").await,
        fingerprint(&src, "orders").await
    );
    let _ = std::fs::remove_dir_all(&dir);
}
