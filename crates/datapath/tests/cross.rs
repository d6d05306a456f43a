//! Imports between unlike databases on the local servers: MariaDB
//! (`SLUICE_TEST_MYSQL_URL`, default mysql://root@127.0.0.1:3306), PostgreSQL
//! (`SLUICE_TEST_POSTGRES_URL`) and SQLite files. Each test makes fresh
//! databases and compares every column of every row, source against
//! destination, after normalizing each database's spelling of the value.

use sluice_datapath::{import, ImportSpec, Mode};
use sqlx::{AnyConnection, Connection, Row};

fn suffix() -> String {
    format!("{:012x}", rand::random::<u64>() >> 16)
}

async fn any(url: &str) -> AnyConnection {
    sqlx::any::install_default_drivers();
    AnyConnection::connect(url)
        .await
        .unwrap_or_else(|e| panic!("the database at {url} must answer: {e}"))
}

async fn exec(url: &str, sql: &str) {
    let mut c = any(url).await;
    sqlx::raw_sql(sql).execute(&mut c).await.unwrap();
}

async fn fresh_pg() -> sluice_testkit::TempDb {
    sluice_testkit::TempDb::postgres("sluice_x").await
}

async fn fresh_mysql() -> sluice_testkit::TempDb {
    sluice_testkit::TempDb::mysql("sluice_x").await
}

fn fresh_sqlite() -> String {
    let dir = std::env::temp_dir().join(format!("sluice-x-{}", suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    format!("sqlite://{}/warehouse.db?mode=rwc", dir.display())
}

/// Every row, every column as text, ordered by the first column.
async fn rows(url: &str, sql: &str) -> Vec<Vec<Option<String>>> {
    let mut c = any(url).await;
    let rows = sqlx::query(sql).fetch_all(&mut c).await.unwrap();
    rows.iter()
        .map(|r| {
            (0..r.len())
                .map(|i| r.try_get::<Option<String>, _>(i).unwrap())
                .collect()
        })
        .collect()
}

/// One value in one spelling for all three databases; `kind` says how to read it.
fn norm(kind: char, v: &Option<String>) -> Option<String> {
    let v = v.as_deref()?;
    Some(match kind {
        'f' => format!("{}", v.parse::<f64>().unwrap()),
        // A FLOAT (f32) column, however widened on the way.
        'g' => format!("{}", v.parse::<f64>().unwrap() as f32),
        'd' if v.contains('.') => v.trim_end_matches('0').trim_end_matches('.').to_owned(),
        'b' => match v {
            "1" | "t" | "true" => "true".into(),
            _ => "false".into(),
        },
        't' => {
            let v = v
                .trim_end_matches("+00")
                .trim_end_matches('Z')
                .replace('T', " ");
            chrono::NaiveDateTime::parse_from_str(&v, "%Y-%m-%d %H:%M:%S%.f")
                .unwrap_or_else(|e| panic!("`{v}`: {e}"))
                .to_string()
        }
        'j' => {
            let bytes: Vec<u8> = (0..v.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&v[i..i + 2], 16).unwrap())
                .collect();
            serde_json::from_slice::<serde_json::Value>(&bytes)
                .unwrap()
                .to_string()
        }
        'x' => v.to_ascii_lowercase(),
        _ => v.to_owned(),
    })
}

fn assert_same(kinds: &str, src: &[Vec<Option<String>>], dst: &[Vec<Option<String>>]) {
    assert_eq!(src.len(), dst.len(), "row counts differ");
    for (a, b) in src.iter().zip(dst) {
        for (i, k) in kinds.chars().enumerate() {
            assert_eq!(
                norm(k, &a[i]),
                norm(k, &b[i]),
                "column {i} of row {:?}",
                a[0]
            );
        }
    }
}

const MYSQL_TABLE: &str = "CREATE TABLE orders (
    id BIGINT PRIMARY KEY, at DATETIME(6) NOT NULL, ts TIMESTAMP(6) NULL, name VARCHAR(100),
    n INT, score DOUBLE, ok TINYINT(1), doc JSON, note TEXT, amount DECIMAL(12,2),
    day DATE, bin VARBINARY(16), f FLOAT, big BIGINT UNSIGNED)";

async fn mysql_rows(url: &str, first: u64, last: u64) {
    exec(
        url,
        &format!(
            "INSERT INTO orders SELECT seq, TIMESTAMP('2026-01-01') + INTERVAL seq SECOND, \
         TIMESTAMP('2026-02-01 00:00:00.250000') + INTERVAL seq SECOND, \
         CONCAT('name ''', seq, '\\t\\\\'), seq % 1000, seq / 7.0, seq % 2, \
         JSON_OBJECT('k', seq, 'a', JSON_ARRAY(1, 2)), IF(seq % 5 = 0, NULL, 'note'), \
         (seq % 100000) / 100, DATE('2020-01-01') + INTERVAL (seq % 3000) DAY, \
         UNHEX(LPAD(HEX(seq), 8, '0')), seq / 3, 18446744073709551000 + seq % 600 \
         FROM seq_{first}_to_{last}"
        ),
    )
    .await;
}

const MYSQL_SELECT: &str = "SELECT CAST(id AS CHAR), CAST(at AS CHAR), CAST(ts AS CHAR), name, \
    CAST(n AS CHAR), CAST(score AS CHAR), CAST(ok AS CHAR), CAST(HEX(doc) AS CHAR(4000)), CAST(note AS CHAR(4000)), \
    CAST(amount AS CHAR), CAST(day AS CHAR), HEX(bin), CAST(CAST(f AS DOUBLE) AS CHAR), CAST(big AS CHAR) \
    FROM orders ORDER BY id";
const PG_SELECT: &str = "SELECT id::text, at::text, (ts AT TIME ZONE 'UTC')::text, name, n::text, \
    score::text, ok::text, encode(convert_to(doc::text, 'UTF8'), 'hex'), note, amount::text, day::text, encode(bin, 'hex'), \
    f::text, big::text FROM orders ORDER BY orders.id";
const KINDS: &str = "sttssfbjsssxgs";

#[tokio::test]
async fn mariadb_to_postgres_full_then_incremental() {
    let (src, dst) = (fresh_mysql().await, fresh_pg().await);
    exec(&src, MYSQL_TABLE).await;
    mysql_rows(&src, 1, 3000).await;
    let spec = ImportSpec {
        source_url: src.replacen("mysql://", "mariadb://", 1),
        source_table: "orders".into(),
        dest_url: dst.to_string(),
        target: "orders".into(),
        mode: Mode::Incremental,
        change_column: Some("at".into()),
        job: None,
        window: Default::default(),
        columns: None,
        mapping: None,
        stage: None,
        cancel: None,
        session: None,
        key: None,
        ..ImportSpec::new("", "", "", "")
    };
    let first = import(&spec, &mut ()).await.unwrap();
    assert_eq!(first.rows, 3000);
    let kinds = KINDS;
    assert_same(
        kinds,
        &rows(&src, MYSQL_SELECT).await,
        &rows(&dst, PG_SELECT).await,
    );
    let types = rows(
        &dst,
        "SELECT string_agg(format_type(atttypid, atttypmod), ', ' ORDER BY attnum) \
        FROM pg_attribute WHERE attrelid = 'orders'::regclass AND attnum > 0",
    )
    .await;
    assert_eq!(
        types[0][0].as_deref(),
        Some("bigint, timestamp without time zone, timestamp with time zone, text, integer, \
              double precision, boolean, text, text, numeric(12,2), date, bytea, real, numeric(20,0)")
    );
    mysql_rows(&src, 3001, 3500).await;
    let second = import(&spec, &mut ()).await.unwrap();
    assert_eq!(
        (second.rows, second.window_start.clone()),
        (500, first.window_end.clone())
    );
    assert_eq!(import(&spec, &mut ()).await.unwrap().rows, 0);
    assert_same(
        kinds,
        &rows(&src, MYSQL_SELECT).await,
        &rows(&dst, PG_SELECT).await,
    );
}

#[tokio::test]
async fn mariadb_to_the_sqlite_warehouse() {
    let (src, dst) = (fresh_mysql().await, fresh_sqlite());
    exec(&src, MYSQL_TABLE).await;
    mysql_rows(&src, 1, 1000).await;
    let spec = ImportSpec {
        source_url: src.to_string(),
        source_table: "orders".into(),
        dest_url: dst.to_string(),
        target: "orders".into(),
        mode: Mode::Destructive,
        change_column: None,
        job: None,
        window: Default::default(),
        columns: None,
        mapping: None,
        stage: None,
        cancel: None,
        session: None,
        key: None,
        ..ImportSpec::new("", "", "", "")
    };
    assert_eq!(import(&spec, &mut ()).await.unwrap().rows, 1000);
    assert_eq!(
        import(&spec, &mut ()).await.unwrap().rows,
        1000,
        "a full load replaces"
    );
    let lite = rows(&dst, "SELECT CAST(id AS TEXT), CAST(at AS TEXT), CAST(ts AS TEXT), name, CAST(n AS TEXT), \
        printf('%!.17g', score), CAST(ok AS TEXT), hex(doc), note, amount, CAST(day AS TEXT), hex(bin), \
        printf('%!.17g', f), big FROM orders ORDER BY id").await;
    let kinds = KINDS;
    assert_same(kinds, &rows(&src, MYSQL_SELECT).await, &lite);
}

#[tokio::test]
async fn sqlite_to_postgres_and_back_keeps_values() {
    let (lite, pg, back) = (fresh_sqlite(), fresh_pg().await, fresh_sqlite());
    exec(
        &lite,
        "CREATE TABLE readings (id INTEGER PRIMARY KEY, at DATETIME NOT NULL, \
        v DOUBLE, ok BOOLEAN, label TEXT, raw BLOB, price DECIMAL(10,3));
        WITH RECURSIVE g(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM g WHERE x < 2000)
        INSERT INTO readings SELECT x, datetime('2026-01-01', '+' || x || ' seconds'),
        x / 3.0, x % 2, CASE WHEN x % 7 = 0 THEN NULL ELSE 'tab' || char(9) || x END,
        randomblob(4), printf('%.3f', x / 8.0) FROM g",
    )
    .await;
    let to_pg = ImportSpec {
        source_url: lite.clone(),
        source_table: "readings".into(),
        dest_url: pg.to_string(),
        target: "readings".into(),
        mode: Mode::Incremental,
        change_column: Some("at".into()),
        job: None,
        window: Default::default(),
        columns: None,
        mapping: None,
        stage: None,
        cancel: None,
        session: None,
        key: None,
        ..ImportSpec::new("", "", "", "")
    };
    assert_eq!(import(&to_pg, &mut ()).await.unwrap().rows, 2000);
    let src = rows(
        &lite,
        "SELECT CAST(id AS TEXT), CAST(at AS TEXT), printf('%!.17g', v), \
        CAST(ok AS TEXT), label, hex(raw), CAST(price AS TEXT) FROM readings ORDER BY id",
    )
    .await;
    let dst = rows(
        &pg,
        "SELECT id::text, at::text, v::text, ok::text, label, \
        encode(raw, 'hex'), price::text FROM readings ORDER BY readings.id",
    )
    .await;
    assert_same("itfbsxd", &src, &dst);

    let to_lite = ImportSpec {
        source_url: pg.to_string(),
        source_table: "readings".into(),
        dest_url: back.clone(),
        target: "readings".into(),
        mode: Mode::Incremental,
        change_column: Some("at".into()),
        job: None,
        window: Default::default(),
        columns: None,
        mapping: None,
        stage: None,
        cancel: None,
        session: None,
        key: None,
        ..ImportSpec::new("", "", "", "")
    };
    assert_eq!(import(&to_lite, &mut ()).await.unwrap().rows, 2000);
    assert_eq!(import(&to_lite, &mut ()).await.unwrap().rows, 0);
    let again = rows(
        &back,
        "SELECT CAST(id AS TEXT), CAST(at AS TEXT), printf('%!.17g', v), \
        CAST(ok AS TEXT), label, hex(raw), CAST(price AS TEXT) FROM readings ORDER BY id",
    )
    .await;
    assert_same("itfbsxd", &dst, &again);
}

#[tokio::test]
async fn row_path_windows_by_limit_and_by_hand() {
    use sluice_datapath::WindowRequest;
    let (src, dst) = (fresh_mysql().await, fresh_sqlite());
    exec(&src, MYSQL_TABLE).await;
    mysql_rows(&src, 1, 2500).await;
    let mut spec = ImportSpec {
        source_url: src.to_string(),
        source_table: "orders".into(),
        dest_url: dst.to_string(),
        target: "orders".into(),
        mode: Mode::Incremental,
        change_column: Some("at".into()),
        job: None,
        window: WindowRequest::Next {
            size: None,
            row_limit: Some(1000),
        },
        columns: None,
        mapping: None,
        stage: None,
        cancel: None,
        session: None,
        key: None,
        ..ImportSpec::new("", "", "", "")
    };
    let mut loads = Vec::new();
    loop {
        let r = import(&spec, &mut ()).await.unwrap();
        if r.rows == 0 {
            break;
        }
        loads.push(r.rows);
    }
    assert_eq!(loads, vec![1000, 1000, 500]);
    exec(
        &src,
        "UPDATE orders SET name = 'fixed' WHERE id BETWEEN 100 AND 199",
    )
    .await;
    spec.window = WindowRequest::Explicit {
        start: "2026-01-01 00:01:40".into(),
        end: "2026-01-01 00:03:20".into(),
        key: "q1".into(),
    };
    assert_eq!(import(&spec, &mut ()).await.unwrap().rows, 100);
    let lite = rows(
        &dst,
        "SELECT CAST(id AS TEXT), name FROM orders ORDER BY id",
    )
    .await;
    let mine = rows(
        &src,
        "SELECT CAST(id AS CHAR), name FROM orders ORDER BY id",
    )
    .await;
    assert_eq!(lite, mine, "the window's rows replaced, none doubled");
}

#[tokio::test]
async fn csv_and_jsonl_files_load_with_kinds_read_from_their_values() {
    use sluice_datapath::WindowRequest;
    let dir = std::env::temp_dir().join(format!("sluice-files-{}", suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    // 25,000 rows: `score` is a whole number in the first batch and a
    // fraction later (widened to double precision); `at` grows.
    let mut csv = String::from("id,at,score,ok,name\n");
    for i in 1..=25_000 {
        let score = if i <= 10_000 {
            format!("{i}")
        } else {
            format!("{i}.5")
        };
        let name = if i % 7 == 0 {
            String::new()
        } else {
            format!("\"n, {i}\"")
        };
        csv.push_str(&format!(
            "{i},2026-01-01T00:00:00Z,{score},{},{name}\n",
            if i % 2 == 0 { "true" } else { "false" }
        ));
    }
    // Every row's time is distinct: one second apart.
    let csv: String = csv
        .lines()
        .enumerate()
        .map(|(n, l)| {
            if n == 0 {
                return format!("{l}\n");
            }
            let t = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z").unwrap()
                + chrono::Duration::seconds(n as i64);
            format!("{}\n", l.replace("2026-01-01T00:00:00Z", &t.to_rfc3339()))
        })
        .collect();
    std::fs::write(dir.join("orders.csv"), &csv).unwrap();
    let src = format!("file://{}", dir.display());
    let pg = fresh_pg().await;
    let spec = ImportSpec {
        change_column: Some("at".into()),
        mode: Mode::Incremental,
        ..ImportSpec::new(&src, "orders.csv", &pg, "orders")
    };
    let r = import(&spec, &mut ()).await.unwrap();
    assert_eq!(r.rows, 25_000);
    let types = rows(
        &pg,
        "SELECT string_agg(column_name || ' ' || data_type, ', ' ORDER BY ordinal_position) \
         FROM information_schema.columns WHERE table_name = 'orders'",
    )
    .await;
    assert_eq!(
        types[0][0].as_deref(),
        Some(
            "id bigint, at timestamp with time zone, score double precision, ok boolean, name text"
        )
    );
    let check = rows(
        &pg,
        "SELECT count(*)::text, sum(score)::text, count(name)::text, \
         count(*) FILTER (WHERE ok)::text FROM orders",
    )
    .await;
    assert_eq!(
        check[0],
        vec![
            Some("25000".into()),
            Some(format!(
                "{}",
                (1..=25_000).sum::<i64>() as f64 + 15_000.0 * 0.5
            )),
            Some(format!("{}", 25_000 - 25_000 / 7)),
            Some("12500".into())
        ]
    );
    // Nothing new: nothing loaded. Rows appended to the file: only they load.
    assert_eq!(import(&spec, &mut ()).await.unwrap().rows, 0);
    let mut more = csv.clone();
    for i in 25_001..=25_010 {
        let t = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z").unwrap()
            + chrono::Duration::seconds(i);
        more.push_str(&format!("{i},{},1.5,true,late\n", t.to_rfc3339()));
    }
    std::fs::write(dir.join("orders.csv"), &more).unwrap();
    assert_eq!(import(&spec, &mut ()).await.unwrap().rows, 10);

    // JSONL into the SQLite warehouse: nested values become JSON, a window
    // by hand loads its rows again, once.
    let mut jsonl = String::new();
    for i in 1..=100 {
        jsonl.push_str(&format!(
            "{{\"id\": {i}, \"at\": \"2026-01-01 00:{:02}:00\", \"doc\": {{\"k\": {i}}}, \"tag\": null}}\n",
            i % 60
        ));
    }
    std::fs::write(dir.join("events.jsonl"), &jsonl).unwrap();
    let lite = fresh_sqlite();
    let mut spec = ImportSpec {
        change_column: Some("at".into()),
        mode: Mode::Incremental,
        ..ImportSpec::new(&src, "events.jsonl", &lite, "events")
    };
    assert_eq!(import(&spec, &mut ()).await.unwrap().rows, 100);
    spec.window = WindowRequest::Explicit {
        start: "2026-01-01T00:10:00Z".into(),
        end: "2026-01-01T00:20:00Z".into(),
        key: "again".into(),
    };
    assert_eq!(import(&spec, &mut ()).await.unwrap().rows, 20);
    let got = rows(
        &lite,
        "SELECT CAST(count(*) AS TEXT), CAST(count(DISTINCT id) AS TEXT), \
         (SELECT doc FROM events WHERE id = 99), CAST(count(tag) AS TEXT) FROM events",
    )
    .await;
    assert_eq!(
        got[0],
        vec![
            Some("100".into()),
            Some("100".into()),
            Some("{\"k\":99}".into()),
            Some("0".into())
        ]
    );
    // A file that is missing, or of no known format, is a clear error.
    let err = import(&ImportSpec::new(&src, "nope.txt", &lite, "x"), &mut ())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("neither .csv nor .jsonl"), "{err}");
}

/// The row path raced: four attempts at one window of a MariaDB table, into
/// the SQLite warehouse and into PostgreSQL (text COPY), load it once.
#[tokio::test]
async fn racing_attempts_on_the_row_path_load_a_window_once() {
    let src = fresh_mysql().await;
    exec(&src, MYSQL_TABLE).await;
    mysql_rows(&src, 1, 10_000).await;
    let pg = fresh_pg().await;
    let lite = fresh_sqlite();
    for dest in [lite.clone(), pg.to_string()] {
        let spec = ImportSpec {
            mode: Mode::Incremental,
            change_column: Some("at".into()),
            ..ImportSpec::new(
                &src.replacen("mysql://", "mariadb://", 1),
                "orders",
                &dest,
                "orders",
            )
        };
        let attempts: Vec<_> = (0..4)
            .map(|_| {
                let s = spec.clone();
                tokio::spawn(async move { import(&s, &mut ()).await })
            })
            .collect();
        let mut loaded = Vec::new();
        for a in attempts {
            loaded.push(a.await.unwrap().unwrap());
        }
        let rows: u64 = loaded.iter().map(|r| r.rows).sum();
        assert_eq!(rows, 10_000, "{dest}: one attempt loaded the window");
        // The others found the window loaded (raced at the ledger) or,
        // starting after it committed, nothing new.
        assert_eq!(
            loaded
                .iter()
                .filter(|r| r.already_loaded || r.nothing_new)
                .count(),
            3,
            "{dest}: {loaded:?}"
        );
        let counted = rows_of(&dest, "SELECT count(*), count(DISTINCT id) FROM orders").await;
        assert_eq!(
            counted,
            vec![vec![Some("10000".to_string()), Some("10000".to_string())]]
        );
    }
}

/// The rows of `sql` as text, on PostgreSQL or SQLite.
async fn rows_of(url: &str, sql: &str) -> Vec<Vec<Option<String>>> {
    let sql = if url.starts_with("sqlite") {
        sql.replace("count(*)", "CAST(count(*) AS TEXT)")
            .replace("count(DISTINCT id)", "CAST(count(DISTINCT id) AS TEXT)")
    } else {
        sql.replace("count(*)", "count(*)::text")
            .replace("count(DISTINCT id)", "count(DISTINCT id)::text")
    };
    rows(url, &sql).await
}
