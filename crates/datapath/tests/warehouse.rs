//! The action API's warehouses: tasks write as their disposition says,
//! each task commits with its ledger row (an attempt taken over does not
//! write twice), and user SQL on the embedded warehouse cannot reach past
//! the organization's folder.
//!
//! PostgreSQL from `SLUICE_TEST_POSTGRES_URL` (default
//! postgres://postgres@127.0.0.1:5432/postgres); fails loudly without it.

use std::collections::BTreeSet;

use sluice_datapath::warehouse::{Done, Role, Warehouse, EMBEDDED};
use sluice_domain::action::{DdlColumn, TableRef, WriteDisposition};

fn t(dataset: &str, table: &str) -> TableRef {
    TableRef {
        project: "dlk".into(),
        dataset: dataset.into(),
        table: table.into(),
    }
}

fn sets(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

async fn dispositions_and_the_ledger(url: &str, role: Option<&Role>) {
    let mut w = Warehouse::open(url, &sets(&["sales", "raw"]), role)
        .await
        .unwrap();
    let cols = vec![
        DdlColumn {
            name: "day".into(),
            bq_type: "DATE".into(),
            required: false,
            description: String::new(),
        },
        DdlColumn {
            name: "total".into(),
            bq_type: "INTEGER".into(),
            required: true,
            description: String::new(),
        },
    ];
    assert!(w.begin_task("r1", "make").await.unwrap().is_none());
    let work = w.create_table(&t("sales", "agg"), &cols, false).await;
    let made = w.end_task("r1", "make", work).await.unwrap();
    assert_eq!(made.messages, vec!["created sales.agg".to_string()]);
    w.script("CREATE TABLE raw.orders (day TEXT, amount INTEGER); INSERT INTO raw.orders VALUES ('2024-01-01', 5), ('2024-01-01', 7), ('2024-01-02', 1)")
        .await
        .unwrap();
    let q = "SELECT day, SUM(amount) FROM raw.orders GROUP BY day";
    let cast_q = if url.starts_with(EMBEDDED) {
        q.to_string()
    } else {
        "SELECT day::date, SUM(amount)::bigint FROM raw.orders GROUP BY day".to_string()
    };
    async fn fill(
        w: &mut Warehouse,
        q: &str,
        run: &str,
        write: WriteDisposition,
    ) -> Result<Done, String> {
        if let Some(done) = w.begin_task(run, "fill").await.map_err(|e| e.to_string())? {
            return Ok(done);
        }
        let work = w.query_into(q, &t("sales", "agg"), write).await;
        w.end_task(run, "fill", work)
            .await
            .map_err(|e| e.to_string())
    }
    let first = fill(&mut w, &cast_q, "r1", WriteDisposition::Truncate)
        .await
        .unwrap();
    assert_eq!(first.rows, 2);
    // The same task of the same run again (a worker taking a run over):
    // found in the ledger, not written twice.
    let again = fill(&mut w, &cast_q, "r1", WriteDisposition::Append)
        .await
        .unwrap();
    assert_eq!(
        again,
        Done {
            rows: 2,
            earlier: true,
            messages: vec!["done by an earlier attempt of this run".into()]
        }
    );
    let appended = fill(&mut w, &cast_q, "r2", WriteDisposition::Append)
        .await
        .unwrap();
    assert_eq!(appended.rows, 2);
    let empty = fill(&mut w, &cast_q, "r3", WriteDisposition::Empty)
        .await
        .unwrap_err();
    assert!(empty.contains("is not empty"), "{empty}");
    let truncated = fill(&mut w, &cast_q, "r4", WriteDisposition::Truncate)
        .await
        .unwrap();
    assert_eq!(truncated.rows, 2);
    assert_eq!(
        w.expect("SELECT COUNT(*) = 2 FROM sales.agg; SELECT COUNT(*) = 5 FROM sales.agg")
            .await
            .unwrap(),
        vec!["SELECT COUNT(*) = 5 FROM sales.agg".to_string()]
    );
    // A failed task writes nothing, its ledger row neither.
    assert!(w.begin_task("r5", "broken").await.unwrap().is_none());
    let insert = w
        .script("INSERT INTO raw.orders VALUES ('2024-01-03', 1)")
        .await;
    assert!(insert.is_ok());
    let broken = w.script("SELECT * FROM raw.nope").await;
    let failed = w.end_task("r5", "broken", broken).await;
    assert!(failed.is_err());
    assert!(w
        .expect("SELECT COUNT(*) = 3 FROM raw.orders")
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn the_embedded_warehouse_writes_each_task_once() {
    let dir = tempdir();
    dispositions_and_the_ledger(&format!("{EMBEDDED}{}", dir.display()), None).await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_postgres_warehouse_writes_each_task_once() {
    let db = sluice_testkit::TempDb::postgres("sluice_wh").await;
    dispositions_and_the_ledger(db.url(), None).await;
    // Logged in as an organization's role, the same.
    let db = sluice_testkit::TempDb::postgres("sluice_wh").await;
    let role = role("w");
    dispositions_and_the_ledger(db.url(), Some(&role)).await;
    drop_role(db.url(), &role).await;
}

/// Roles are the server's, not the database's: dropped after the test.
async fn drop_role(url: &str, r: &Role) {
    use sqlx::Connection;
    let mut admin = sqlx::PgConnection::connect(url).await.unwrap();
    sqlx::raw_sql(&format!(
        "REASSIGN OWNED BY \"{0}\" TO CURRENT_USER; DROP OWNED BY \"{0}\"; DROP ROLE \"{0}\"",
        r.name
    ))
    .execute(&mut admin)
    .await
    .unwrap();
}

fn role(tag: &str) -> Role {
    Role {
        name: format!("sluice_test_{tag}_{:08x}", rand::random::<u32>()),
        password: format!("{:016x}", rand::random::<u64>()),
    }
}

#[tokio::test]
async fn a_postgres_role_reaches_only_its_own_schemas() {
    let db = sluice_testkit::TempDb::postgres("sluice_wh").await;
    let (a, b) = (role("a"), role("b"));
    let mut wa = Warehouse::open(db.url(), &sets(&["sales"]), Some(&a))
        .await
        .unwrap();
    wa.script("CREATE TABLE sales.secret (k TEXT); INSERT INTO sales.secret VALUES ('x')")
        .await
        .unwrap();
    // B names A's schema among its datasets: it exists, and stays A's.
    let mut wb = Warehouse::open(db.url(), &sets(&["mine", "sales"]), Some(&b))
        .await
        .unwrap();
    for sql in [
        "SELECT * FROM sales.secret",
        "RESET ROLE; SELECT * FROM sales.secret",
        "SET ROLE postgres; SELECT * FROM sales.secret",
        "INSERT INTO sales.secret VALUES ('from b')",
        "DROP TABLE sales.secret",
        "CREATE TABLE sales.planted (x INT)",
    ] {
        let err = wb.script(sql).await.unwrap_err().to_string();
        assert!(err.contains("permission denied"), "{sql}: {err}");
    }
    wb.script("CREATE TABLE mine.t (x INT); INSERT INTO mine.t VALUES (1)")
        .await
        .unwrap();
    assert!(wa
        .expect("SELECT COUNT(*) = 1 FROM sales.secret")
        .await
        .unwrap()
        .is_empty());
    drop((wa, wb));
    drop_role(db.url(), &a).await;
    drop_role(db.url(), &b).await;
}

fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("sluice-wh-{:016x}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test]
async fn user_sql_cannot_leave_the_organizations_folder() {
    let mine = tempdir();
    let theirs = tempdir();
    // Another organization's dataset, with a table.
    let mut other = Warehouse::open(
        &format!("{EMBEDDED}{}", theirs.display()),
        &sets(&["secret"]),
        None,
    )
    .await
    .unwrap();
    other
        .script("CREATE TABLE secret.keys (k TEXT); INSERT INTO secret.keys VALUES ('x')")
        .await
        .unwrap();
    let mut w = Warehouse::open(
        &format!("{EMBEDDED}{}", mine.display()),
        &sets(&["sales"]),
        None,
    )
    .await
    .unwrap();
    let their_file = theirs.join("secret.db");
    let escape = mine.join("copy.db");
    let attempts = [
        format!("ATTACH DATABASE '{}' AS s", their_file.display()),
        format!("VACUUM INTO '{}'", escape.display()),
        "PRAGMA writable_schema = ON".to_string(),
        "SELECT load_extension('/lib/x.so')".to_string(),
        "DETACH DATABASE sales".to_string(),
    ];
    for sql in &attempts {
        let err = w.script(sql).await.unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("authoriz") || text.contains("too many attached"),
            "{sql}: {text}"
        );
    }
    assert!(!escape.exists(), "VACUUM INTO wrote a file");
    // Its own datasets work.
    w.script("CREATE TABLE sales.t (x INTEGER); INSERT INTO sales.t VALUES (1)")
        .await
        .unwrap();
    let _ = std::fs::remove_dir_all(mine);
    let _ = std::fs::remove_dir_all(theirs);
}
