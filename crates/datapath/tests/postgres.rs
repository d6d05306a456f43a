//! PostgreSQL → PostgreSQL imports against the local server: a fresh source
//! and destination database per test (`SLUICE_TEST_POSTGRES_URL`, default
//! postgres://postgres@127.0.0.1:5432/postgres). Fails loudly without it.

use sluice_datapath::{import, ImportError, ImportSpec, Mode};
use sluice_testkit::{pg_exec as exec, pg_scalar as scalar};
use sqlx::{Connection, PgConnection};

mod folder;
use folder::Folder;

async fn fresh_db() -> sluice_testkit::TempDb {
    sluice_testkit::TempDb::postgres("sluice_dp").await
}

/// Row count and a checksum over every column, in id order.
async fn fingerprint(url: &str, table: &str) -> String {
    scalar(
        url,
        &format!(
            "SELECT count(*) || ':' || coalesce(md5(string_agg(md5(x::text), '' ORDER BY id)), '') \
             FROM {table} x"
        ),
    )
    .await
    .unwrap()
}

async fn types(url: &str, table: &str) -> String {
    scalar(
        url,
        &format!(
            "SELECT string_agg(attname || ' ' || format_type(atttypid, atttypmod) || \
             CASE WHEN attnotnull THEN ' not null' ELSE '' END, ', ' ORDER BY attnum) \
             FROM pg_attribute WHERE attrelid = '{table}'::regclass AND attnum > 0 \
             AND NOT attisdropped"
        ),
    )
    .await
    .unwrap()
}

const SOURCE: &str = "CREATE SCHEMA sales;
CREATE TABLE sales.orders (
    id bigint PRIMARY KEY, at timestamptz NOT NULL, name text, n int,
    score double precision, ok boolean, doc jsonb, note text,
    amount numeric(12,2), day date, tiny smallint, stamp timestamp, tags text[]);";

async fn add_rows(url: &str, first: i64, last: i64) {
    exec(
        url,
        &format!(
            "INSERT INTO sales.orders SELECT g, timestamptz '2026-01-01' + g * interval '1 second', \
             'name ''' || g, g % 1000, g / 7.0, g % 2 = 0, jsonb_build_object('k', g), \
             CASE WHEN g % 5 = 0 THEN NULL ELSE E'tab\\there' END, (g % 100000) / 100.0, \
             date '2020-01-01' + (g % 3000), (g % 100)::smallint, \
             timestamp '2026-01-01 00:00:00.123456' + g * interval '1 ms', ARRAY['a', g::text] \
             FROM generate_series({first}, {last}) g"
        ),
    )
    .await;
}

fn spec(src: &str, dst: &str, target: &str, mode: Mode, change: Option<&str>) -> ImportSpec {
    ImportSpec {
        source_url: src.into(),
        source_table: "sales.orders".into(),
        dest_url: dst.into(),
        target: target.into(),
        mode,
        change_column: change.map(str::to_owned),
        job: None,
        window: Default::default(),
        columns: None,
        mapping: None,
        stage: None,
        cancel: None,
        key: None,
        ..ImportSpec::new("", "", "", "")
    }
}

#[tokio::test]
async fn a_full_import_keeps_every_type_and_value() {
    let (src, dst) = (fresh_db().await, fresh_db().await);
    exec(&src, SOURCE).await;
    add_rows(&src, 1, 5000).await;
    let report = import(
        &spec(&src, &dst, "orders", Mode::Destructive, None),
        &mut (),
    )
    .await
    .unwrap();
    assert_eq!(report.rows, 5000);
    assert_eq!(
        types(&dst, "orders").await,
        types(&src, "sales.orders").await
    );
    assert!(types(&dst, "orders").await.contains("amount numeric(12,2)"));
    assert_eq!(
        fingerprint(&dst, "orders").await,
        fingerprint(&src, "sales.orders").await
    );
    // A second full load replaces the table: the same rows, once.
    add_rows(&src, 5001, 5100).await;
    let again = import(
        &spec(&src, &dst, "orders", Mode::Destructive, None),
        &mut (),
    )
    .await
    .unwrap();
    assert_eq!(again.rows, 5100);
    assert_eq!(
        fingerprint(&dst, "orders").await,
        fingerprint(&src, "sales.orders").await
    );
    let leftovers = scalar(
        &dst,
        "SELECT count(*)::text FROM pg_tables WHERE tablename LIKE 'orders__sluice_%'",
    )
    .await;
    assert_eq!(leftovers.as_deref(), Some("0"));
}

#[tokio::test]
async fn incremental_imports_load_each_window_once() {
    let (src, dst) = (fresh_db().await, fresh_db().await);
    exec(&src, SOURCE).await;
    add_rows(&src, 1, 1000).await;
    let s = spec(
        &src,
        &dst,
        "public.orders_inc",
        Mode::Incremental,
        Some("at"),
    );
    let first = import(&s, &mut ()).await.unwrap();
    assert_eq!((first.rows, first.window_start.as_deref()), (1000, None));
    assert!(first.window_end.is_some());

    let nothing = import(&s, &mut ()).await.unwrap();
    assert_eq!(nothing.rows, 0);
    assert!(!nothing.already_loaded);

    add_rows(&src, 1001, 1250).await;
    let second = import(&s, &mut ()).await.unwrap();
    assert_eq!(second.rows, 250);
    assert_eq!(second.window_start, first.window_end);
    assert_eq!(
        fingerprint(&dst, "orders_inc").await,
        fingerprint(&src, "sales.orders").await
    );
    let ledger = scalar(
        &dst,
        "SELECT string_agg(rows::text, ',' ORDER BY seq) FROM sluice_load_ledger",
    )
    .await;
    assert_eq!(ledger.as_deref(), Some("1000,250"));
}

#[tokio::test]
async fn racing_attempts_at_one_window_load_it_once() {
    let (src, dst) = (fresh_db().await, fresh_db().await);
    exec(&src, SOURCE).await;
    add_rows(&src, 1, 20_000).await;
    let s = spec(&src, &dst, "orders", Mode::Incremental, Some("at"));
    let attempts: Vec<_> = (0..4)
        .map(|_| {
            let s = s.clone();
            tokio::spawn(async move { import(&s, &mut ()).await })
        })
        .collect();
    let mut loaded = 0;
    for a in attempts {
        let r = a.await.unwrap().unwrap();
        loaded += r.rows;
    }
    assert_eq!(
        loaded, 20_000,
        "the window was loaded by exactly one attempt"
    );
    assert_eq!(
        fingerprint(&dst, "orders").await,
        fingerprint(&src, "sales.orders").await
    );
}

#[tokio::test]
async fn bad_imports_say_what_is_wrong_and_write_nothing() {
    let (src, dst) = (fresh_db().await, fresh_db().await);
    exec(&src, SOURCE).await;
    add_rows(&src, 1, 10).await;

    let mut missing = spec(&src, &dst, "orders", Mode::Incremental, Some("changed_at"));
    let err = import(&missing, &mut ()).await.unwrap_err().to_string();
    assert!(
        err.contains("changed_at") && err.contains("at, name"),
        "{err}"
    );
    missing.change_column = Some("name".into());
    let err = import(&missing, &mut ()).await.unwrap_err().to_string();
    assert!(err.contains("must be a timestamp"), "{err}");
    missing.change_column = None;
    assert!(matches!(
        import(&missing, &mut ()).await,
        Err(ImportError::Invalid(m)) if m.contains("--change-column")
    ));
    let mut no_table = spec(&src, &dst, "orders", Mode::Destructive, None);
    no_table.source_table = "sales.nope".into();
    let err = import(&no_table, &mut ()).await.unwrap_err().to_string();
    assert!(
        err.contains("sales.nope") && err.contains("does not exist"),
        "{err}"
    );
    assert_eq!(
        scalar(
            &dst,
            "SELECT count(*)::text FROM pg_tables WHERE schemaname = 'public'"
        )
        .await,
        Some("0".into()),
        "nothing written"
    );

    // A table sluice did not make, with other columns, is refused with
    // both lists, and left as it was; a destructive load does not replace
    // it either unless told to.
    exec(
        &dst,
        "CREATE TABLE orders (id bigint, at text); INSERT INTO orders VALUES (1, 'x')",
    )
    .await;
    let err = import(
        &spec(&src, &dst, "orders", Mode::Incremental, Some("at")),
        &mut (),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("The table has: id, at.") && err.contains("The import loads: id, at, name"),
        "{err}"
    );
    let err = import(
        &spec(&src, &dst, "orders", Mode::Destructive, None),
        &mut (),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("--replace-existing"), "{err}");
    assert_eq!(
        scalar(
            &dst,
            "SELECT count(*)::text || ' ' || string_agg(at, ',') FROM orders"
        )
        .await,
        Some("1 x".into())
    );
    assert_eq!(
        scalar(&dst, "SELECT count(*)::text FROM sluice_load_ledger").await,
        Some("0".into())
    );

    // sluice's own table whose column type was changed by hand (not a
    // widening) is refused, and left as it was.
    let mine = spec(&src, &dst, "mine", Mode::Incremental, Some("at"));
    assert_eq!(import(&mine, &mut ()).await.unwrap().rows, 10);
    exec(&dst, "ALTER TABLE mine ALTER COLUMN at TYPE text").await;
    add_rows(&src, 11, 20).await;
    let err = import(&mine, &mut ()).await.unwrap_err().to_string();
    assert!(
        err.contains("column at of \"mine\" is text but the source's is timestamp with time zone"),
        "{err}"
    );
    assert_eq!(
        scalar(&dst, "SELECT count(*)::text FROM mine").await,
        Some("10".into())
    );
}

#[tokio::test]
async fn windows_follow_size_and_row_limit_and_rerun_by_hand() {
    use sluice_datapath::WindowRequest;
    use std::time::Duration;
    let (src, dst) = (fresh_db().await, fresh_db().await);
    exec(&src, SOURCE).await;
    // Rows one second apart from 2026-01-01 00:00:01: 7200 rows = 2 hours.
    add_rows(&src, 1, 7200).await;
    let mut s = spec(&src, &dst, "orders", Mode::Incremental, Some("at"));
    s.window = WindowRequest::Next {
        size: Some(Duration::from_secs(3600)),
        row_limit: None,
    };
    let first = import(&s, &mut ()).await.unwrap();
    // The first window starts at the first row and spans an hour.
    assert_eq!(first.rows, 3601);
    assert_eq!(
        first.window_end.as_deref(),
        Some("2026-01-01 01:00:01.000000")
    );
    s.window = WindowRequest::Next {
        size: Some(Duration::from_secs(3600)),
        row_limit: Some(1000),
    };
    let second = import(&s, &mut ()).await.unwrap();
    assert_eq!(second.rows, 1000, "the row limit caps one query");
    assert_eq!(second.window_start, first.window_end);
    let mut total = first.rows + second.rows;
    loop {
        let r = import(&s, &mut ()).await.unwrap();
        if r.rows == 0 {
            break;
        }
        assert!(r.rows <= 1000);
        total += r.rows;
    }
    assert_eq!(total, 7200);
    assert_eq!(
        fingerprint(&dst, "orders").await,
        fingerprint(&src, "sales.orders").await
    );

    // A window run again by hand replaces its rows: the source changed
    // there, the target follows, nothing doubles.
    exec(
        &src,
        "UPDATE sales.orders SET name = 'fixed' WHERE at >= '2026-01-01 00:30:00+00' \
                AND at < '2026-01-01 00:40:00+00'",
    )
    .await;
    s.window = WindowRequest::Explicit {
        start: "2026-01-01T00:30:00Z".into(),
        end: "2026-01-01T00:40:00Z".into(),
        key: "by-hand-1".into(),
    };
    let again = import(&s, &mut ()).await.unwrap();
    assert_eq!(again.rows, 600);
    assert_eq!(
        fingerprint(&dst, "orders").await,
        fingerprint(&src, "sales.orders").await
    );
    // The same request twice loads once; a window by hand does not move the watermark.
    assert!(import(&s, &mut ()).await.unwrap().already_loaded);
    s.window = WindowRequest::default();
    assert_eq!(import(&s, &mut ()).await.unwrap().rows, 0);
    s.window = WindowRequest::Explicit {
        start: "2026-01-01T00:40:00Z".into(),
        end: "2026-01-01T00:30:00Z".into(),
        key: "backwards".into(),
    };
    let err = import(&s, &mut ()).await.unwrap_err().to_string();
    assert!(err.contains("the first before the second"), "{err}");
}

#[derive(Default)]
struct Events(Vec<sluice_datapath::StageEvent>);

impl sluice_datapath::Progress for Events {
    fn rows(&mut self, _: u64, _: Option<u64>) {}
    fn stage(&mut self, event: sluice_datapath::StageEvent) {
        self.0.push(event);
    }
}

#[tokio::test]
async fn staged_batches_and_manifest_hold_every_row_and_new_columns_are_added() {
    use sluice_datapath::StageEvent;
    let (src, dst) = (fresh_db().await, fresh_db().await);
    exec(&src, SOURCE).await;
    add_rows(&src, 1, 60_000).await;
    let dir = std::env::temp_dir().join(format!("sluice-stage-{:016x}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut s = spec(&src, &dst, "orders", Mode::Incremental, Some("at"));
    s.columns = Some(vec!["id".into(), "at".into(), "amount".into()]);
    s.stage = Some(sluice_datapath::StageHandle(std::sync::Arc::new(Folder(
        dir.clone(),
    ))));
    let mut events = Events::default();
    let first = import(&s, &mut events).await.unwrap();
    assert_eq!(first.rows, 60_000);
    assert_eq!(
        types(&dst, "orders").await,
        "id bigint not null, at timestamp with time zone not null, amount numeric(12,2)",
        "only the selected columns, their types kept"
    );
    // The staged batches, in order, are one binary COPY stream holding
    // every row once: loaded back, they are exactly the rows loaded.
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["rows"], 60_000);
    assert_eq!(manifest["format"], "postgresql-binary-copy");
    let batches = manifest["batches"].as_array().unwrap();
    assert!(batches.len() > 1, "more than one batch: {manifest}");
    let mut stream = Vec::new();
    for b in batches {
        let object = b["object"].as_str().unwrap();
        assert!(object.ends_with(".pgcopy"), "{object}");
        stream.extend(std::fs::read(object).unwrap());
    }
    exec(
        &dst,
        "CREATE TABLE staged_back (id bigint, at timestamptz, amount numeric(12,2))",
    )
    .await;
    let mut c = PgConnection::connect(&dst).await.unwrap();
    let mut copy = c
        .copy_in_raw("COPY staged_back FROM STDIN (FORMAT binary)")
        .await
        .unwrap();
    copy.send(stream).await.unwrap();
    assert_eq!(copy.finish().await.unwrap(), 60_000);
    let digest =
        "SELECT md5(string_agg(t::text, ',' ORDER BY id)) FROM (SELECT id, at, amount FROM {}) t";
    assert_eq!(
        scalar(&dst, &digest.replace("{}", "staged_back")).await,
        scalar(&dst, &digest.replace("{}", "orders")).await
    );
    let extracted: u64 = events
        .0
        .iter()
        .filter_map(|e| match e {
            StageEvent::Extracted { rows, .. } => Some(*rows),
            _ => None,
        })
        .sum();
    assert_eq!(extracted, 60_000);
    assert!(events.0.iter().any(|e| matches!(
        e,
        StageEvent::Committed {
            rows: 60_000,
            already_loaded: false
        }
    )));

    // The mapping grows a column: the next window adds it to the target
    // and says so.
    add_rows(&src, 60_001, 60_100).await;
    s.columns = Some(vec!["id".into(), "at".into(), "amount".into(), "n".into()]);
    let mut events = Events::default();
    let second = import(&s, &mut events).await.unwrap();
    assert_eq!(second.rows, 100);
    let changes = events
        .0
        .iter()
        .find_map(|e| match e {
            StageEvent::Consolidated { changes, .. } => Some(changes.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(changes, vec!["new column n integer".to_string()]);
    assert_eq!(
        scalar(&dst, "SELECT count(n)::text FROM orders")
            .await
            .as_deref(),
        Some("100")
    );
}

#[tokio::test]
async fn a_cancelled_import_leaves_the_target_as_it_was() {
    let (src, dst) = (fresh_db().await, fresh_db().await);
    exec(&src, SOURCE).await;
    add_rows(&src, 1, 1000).await;
    let s = spec(&src, &dst, "orders", Mode::Incremental, Some("at"));
    import(&s, &mut ()).await.unwrap();
    let before = fingerprint(&dst, "orders").await;
    add_rows(&src, 1001, 200_000).await;

    /// Cancels once the first batch is in the destination's transaction.
    struct CancelMidway(std::sync::Arc<std::sync::atomic::AtomicBool>);
    impl sluice_datapath::Progress for CancelMidway {
        fn rows(&mut self, _: u64, _: Option<u64>) {}
        fn stage(&mut self, e: sluice_datapath::StageEvent) {
            if matches!(e, sluice_datapath::StageEvent::Extracted { .. }) {
                self.0.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }
    let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut s2 = s.clone();
    s2.cancel = Some(flag.clone());
    let err = import(&s2, &mut CancelMidway(flag)).await.unwrap_err();
    assert!(matches!(err, ImportError::Cancelled), "{err}");
    assert_eq!(fingerprint(&dst, "orders").await, before);
    // The window was not taken: the next run loads it.
    let next = import(&s, &mut ()).await.unwrap();
    assert_eq!(next.rows, 199_000);
    assert_eq!(
        fingerprint(&dst, "orders").await,
        fingerprint(&src, "sales.orders").await
    );
}

#[tokio::test]
async fn merge_replaces_changed_rows_by_key_in_postgres_and_sqlite() {
    let (src, dst) = (fresh_db().await, fresh_db().await);
    exec(
        &src,
        "CREATE TABLE items (id bigint PRIMARY KEY, name text, price numeric(8,2), \
         updated_at timestamptz NOT NULL);
         INSERT INTO items SELECT g, 'item ' || g, g / 10.0, \
         timestamptz '2026-01-01' + g * interval '1 s' FROM generate_series(1, 1000) g",
    )
    .await;
    let lite_dir =
        std::env::temp_dir().join(format!("sluice-merge-{:016x}", rand::random::<u64>()));
    std::fs::create_dir_all(&lite_dir).unwrap();
    let lite = format!("sqlite://{}/w.db", lite_dir.display());
    let spec_for = |dest: &str| ImportSpec {
        mode: Mode::Merge,
        change_column: Some("updated_at".into()),
        key: Some("id".into()),
        ..ImportSpec::new(&src, "items", dest, "items")
    };
    for dest in [dst.url(), lite.as_str()] {
        assert_eq!(import(&spec_for(dest), &mut ()).await.unwrap().rows, 1000);
    }
    // 100 rows change (their updated_at moves on), 50 are new.
    exec(
        &src,
        "UPDATE items SET name = name || ' v2', price = price + 1, \
         updated_at = timestamptz '2026-02-01' + id * interval '1 s' WHERE id % 10 = 0;
         INSERT INTO items SELECT g, 'item ' || g, g / 10.0, \
         timestamptz '2026-03-01' + g * interval '1 s' FROM generate_series(1001, 1050) g",
    )
    .await;
    for dest in [dst.url(), lite.as_str()] {
        assert_eq!(import(&spec_for(dest), &mut ()).await.unwrap().rows, 150);
    }
    let want = scalar(
        &src,
        "SELECT count(*) || ':' || md5(string_agg(id || '|' || name || '|' || price, ',' ORDER BY id)) FROM items",
    )
    .await;
    let got = scalar(
        &dst,
        "SELECT count(*) || ':' || md5(string_agg(id || '|' || name || '|' || price, ',' ORDER BY id)) FROM items",
    )
    .await;
    assert_eq!(got, want, "PostgreSQL: every row once, at its latest");
    let mut c = sqlx::SqliteConnection::connect(&lite).await.unwrap();
    let (n, distinct, v2): (i64, i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT id), sum(name LIKE '% v2') FROM items")
            .fetch_one(&mut c)
            .await
            .unwrap();
    assert_eq!(
        (n, distinct, v2),
        (1050, 1050, 100),
        "SQLite: every row once, at its latest"
    );
    // A merge without a key says so.
    let mut no_key = spec_for(&dst);
    no_key.key = None;
    let err = import(&no_key, &mut ()).await.unwrap_err().to_string();
    assert!(err.contains("needs --key"), "{err}");
}
