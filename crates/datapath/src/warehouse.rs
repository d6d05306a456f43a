//! Warehouses the action API's table-to-table tasks run in: a PostgreSQL
//! database (a BigQuery dataset is a schema), or sluice's embedded
//! warehouse — an organization's own folder of SQLite files, one file a
//! dataset, attached under the dataset's name (so `sales.orders` names the
//! table `orders` of dataset `sales`, as in BigQuery).
//!
//! A task's work and its row in the warehouse's `sluice_action_ledger`
//! commit in one transaction: a task an earlier attempt of the run
//! finished is found there and not done again, so a run taken over from a
//! lost worker appends nothing twice.
//!
//! User SQL on the embedded warehouse cannot reach past its organization's
//! folder: once the datasets are attached, the connection refuses `ATTACH`,
//! `DETACH`, `PRAGMA`, `VACUUM` and `load_extension` (an authorizer), and the
//! number of attached files is capped at those attached.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use sluice_domain::action::{bq_type, DdlColumn, TableRef, WriteDisposition};
use sqlx::postgres::PgConnection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::{ConnectOptions, Row};

use crate::types::{db, ident, invalid};
use crate::Result;

/// The scheme of the embedded warehouse's URLs: `sluice-warehouse:///folder`.
pub const EMBEDDED: &str = "sluice-warehouse://";

pub struct Warehouse {
    conn: Conn,
    /// The task ledger, qualified.
    ledger: String,
}

/// The PostgreSQL role an organization's SQL runs as: it logs in with its
/// own password, owns the organization's schemas and reaches nothing else
/// (another organization's schemas are another role's).
#[derive(Debug, Clone)]
pub struct Role {
    pub name: String,
    pub password: String,
}

enum Conn {
    Postgres(PgConnection),
    /// The embedded warehouse: `main` is the folder's `_sluice.db` (the
    /// ledger), each dataset a file attached by name.
    Sqlite(SqliteConnection),
}

/// What a task wrote.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Done {
    pub rows: u64,
    /// Whether an earlier attempt of the run had done it already.
    pub earlier: bool,
    pub messages: Vec<String>,
}

fn dataset_name(d: &str) -> Result<&str> {
    let ok = !d.is_empty()
        && d.len() <= 128
        && d.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !d.starts_with('_');
    if ok {
        Ok(d)
    } else {
        Err(invalid(format!(
            "dataset `{d}`: expected letters, digits and `_` (not first), at most 128"
        )))
    }
}

fn table_sql(t: &TableRef) -> Result<String> {
    Ok(format!(
        "{}.{}",
        ident(dataset_name(&t.dataset)?),
        ident(&t.table)
    ))
}

impl Warehouse {
    /// Connects to `url`, with `datasets` reachable (on the embedded
    /// warehouse: made and attached; on PostgreSQL: schemas made). On
    /// PostgreSQL with a `role`, `url` is the administrator's connection:
    /// the role is made (or its password set), given the dataset schemas
    /// and a ledger schema of its own, and the SQL runs logged in as it.
    pub async fn open(
        url: &str,
        datasets: &BTreeSet<String>,
        role: Option<&Role>,
    ) -> Result<Warehouse> {
        for d in datasets {
            dataset_name(d)?;
        }
        if let Some(folder) = url.strip_prefix(EMBEDDED) {
            return open_embedded(Path::new(folder), datasets).await;
        }
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(invalid(
                "a warehouse is `embedded` or a postgres:// database",
            ));
        }
        let mut admin = crate::source::connect_postgres(url, "warehouse").await?;
        let (owner, ledger_schema) = match role {
            Some(r) => (
                format!(" AUTHORIZATION {}", ident(&r.name)),
                format!("{}_ledger", r.name),
            ),
            None => (String::new(), "public".to_owned()),
        };
        let mut ddl = String::new();
        if let Some(r) = role {
            let db_name: String = sqlx::query_scalar("SELECT current_database()::text")
                .fetch_one(&mut admin)
                .await
                .map_err(db("preparing the warehouse"))?;
            // Made or brought up to date under the lock below, so two
            // first tasks at once do not both make it.
            let settings = format!(
                "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT PASSWORD {}",
                crate::types::literal(&r.password)
            );
            ddl.push_str(&format!(
                "DO $sluice$ BEGIN IF EXISTS (SELECT FROM pg_roles WHERE rolname = {name}) \
                 THEN ALTER ROLE {role} {settings}; ELSE CREATE ROLE {role} {settings}; END IF; \
                 END $sluice$; GRANT CONNECT ON DATABASE {db} TO {role};",
                name = crate::types::literal(&r.name),
                role = ident(&r.name),
                db = ident(&db_name),
            ));
            ddl.push_str(&format!(
                "CREATE SCHEMA IF NOT EXISTS {}{owner};",
                ident(&ledger_schema)
            ));
        }
        for d in datasets {
            ddl.push_str(&format!("CREATE SCHEMA IF NOT EXISTS {}{owner};", ident(d)));
        }
        let ledger = format!("{}.sluice_action_ledger", ident(&ledger_schema));
        ddl.push_str(&format!(
            "CREATE TABLE IF NOT EXISTS {ledger} (run_id TEXT NOT NULL, \
             task_id TEXT NOT NULL, row_count BIGINT NOT NULL, \
             done_at TIMESTAMPTZ NOT NULL DEFAULT now(), PRIMARY KEY (run_id, task_id));"
        ));
        if let Some(r) = role {
            ddl.push_str(&format!(
                "ALTER TABLE {ledger} OWNER TO {};",
                ident(&r.name)
            ));
        }
        // Two tasks making the same role, schema or ledger at once: one
        // waits for the other.
        sqlx::raw_sql(&format!(
            "BEGIN; SELECT pg_advisory_xact_lock(7330115913); {ddl} COMMIT;"
        ))
        .execute(&mut admin)
        .await
        .map_err(db("preparing the warehouse"))?;
        let c = match role {
            Some(r) => {
                drop(admin);
                let options: sqlx::postgres::PgConnectOptions =
                    url.parse().map_err(db("reading the warehouse's URL"))?;
                let mut c = options
                    .username(&r.name)
                    .password(&r.password)
                    .connect()
                    .await
                    .map_err(db(format!("logging in to the warehouse as {}", r.name)))?;
                sqlx::query("SET TIME ZONE 'UTC'")
                    .execute(&mut c)
                    .await
                    .map_err(db("preparing the warehouse connection"))?;
                c
            }
            None => admin,
        };
        Ok(Warehouse {
            conn: Conn::Postgres(c),
            ledger,
        })
    }

    fn postgres(&self) -> bool {
        matches!(self.conn, Conn::Postgres(_))
    }

    async fn raw(&mut self, sql: &str) -> Result<u64, sqlx::Error> {
        match &mut self.conn {
            Conn::Postgres(c) => sqlx::raw_sql(sql)
                .execute(c)
                .await
                .map(|r| r.rows_affected()),
            Conn::Sqlite(c) => sqlx::raw_sql(sql)
                .execute(c)
                .await
                .map(|r| r.rows_affected()),
        }
    }

    async fn scalar_i64(&mut self, sql: &str) -> Result<Option<i64>, sqlx::Error> {
        match &mut self.conn {
            Conn::Postgres(c) => sqlx::query_scalar::<_, i64>(sql).fetch_optional(c).await,
            Conn::Sqlite(c) => sqlx::query_scalar::<_, i64>(sql).fetch_optional(c).await,
        }
    }

    async fn exists(&mut self, t: &TableRef) -> Result<bool> {
        dataset_name(&t.dataset)?;
        let sql = match &self.conn {
            Conn::Postgres(_) => format!(
                "SELECT 1::bigint FROM pg_tables WHERE schemaname = {} AND tablename = {}",
                crate::types::literal(&t.dataset),
                crate::types::literal(&t.table)
            ),
            Conn::Sqlite(_) => format!(
                "SELECT 1 FROM {}.sqlite_master WHERE type = 'table' AND name = {}",
                ident(&t.dataset),
                crate::types::literal(&t.table)
            ),
        };
        Ok(self
            .scalar_i64(&sql)
            .await
            .map_err(db(format!("looking for {}.{}", t.dataset, t.table)))?
            .is_some())
    }

    async fn count(&mut self, t: &TableRef) -> Result<u64> {
        let sql = format!("SELECT COUNT(*) FROM {}", table_sql(t)?);
        Ok(self
            .scalar_i64(&sql)
            .await
            .map_err(db(format!("counting {}.{}", t.dataset, t.table)))?
            .unwrap_or(0) as u64)
    }

    fn ledger(&self) -> &str {
        &self.ledger
    }

    /// Begins task `task_id` of run `run_id`: its transaction opens, unless
    /// the ledger holds the task already — then answers what an earlier
    /// attempt did, with no transaction open. The task's work follows,
    /// then [`Warehouse::end_task`].
    pub async fn begin_task(&mut self, run_id: &str, task_id: &str) -> Result<Option<Done>> {
        let begin = if self.postgres() {
            "BEGIN"
        } else {
            "BEGIN IMMEDIATE"
        };
        self.raw(begin).await.map_err(db("beginning the task"))?;
        let sql = format!(
            "SELECT row_count FROM {} WHERE run_id = {} AND task_id = {}",
            self.ledger(),
            crate::types::literal(run_id),
            crate::types::literal(task_id)
        );
        let found = self.scalar_i64(&sql).await;
        match found {
            Ok(None) => Ok(None),
            Ok(Some(rows)) => {
                self.raw("ROLLBACK").await.map_err(db("ending the task"))?;
                Ok(Some(Done {
                    rows: rows as u64,
                    earlier: true,
                    messages: vec!["done by an earlier attempt of this run".into()],
                }))
            }
            Err(e) => {
                let _ = self.raw("ROLLBACK").await;
                Err(db("reading the task ledger")(e))
            }
        }
    }

    /// Ends the task [`Warehouse::begin_task`] began: its ledger row and
    /// its work commit together when `work` succeeded; otherwise nothing of
    /// it stays.
    pub async fn end_task(
        &mut self,
        run_id: &str,
        task_id: &str,
        work: Result<Done>,
    ) -> Result<Done> {
        let done = match work {
            Ok(done) => done,
            Err(e) => {
                let _ = self.raw("ROLLBACK").await;
                return Err(e);
            }
        };
        let sql = format!(
            "INSERT INTO {} (run_id, task_id, row_count) VALUES ({}, {}, {})",
            self.ledger(),
            crate::types::literal(run_id),
            crate::types::literal(task_id),
            done.rows as i64
        );
        if let Err(e) = self.raw(&sql).await {
            let _ = self.raw("ROLLBACK").await;
            return Err(db("writing the task ledger")(e));
        }
        self.raw("COMMIT")
            .await
            .map_err(db("committing the task"))?;
        Ok(done)
    }

    /// A query whose rows go to `table` as `write` says; answers the rows
    /// written.
    pub async fn query_into(
        &mut self,
        sql: &str,
        table: &TableRef,
        write: WriteDisposition,
    ) -> Result<Done> {
        let target = table_sql(table)?;
        let query = sql.trim().trim_end_matches(';');
        let exists = self.exists(table).await?;
        let what = format!("writing {}.{}", table.dataset, table.table);
        if !exists {
            self.raw(&format!("CREATE TABLE {target} AS {query}"))
                .await
                .map_err(db(what))?;
            let rows = self.count(table).await?;
            return Ok(Done {
                rows,
                messages: vec![format!("created {}.{}", table.dataset, table.table)],
                ..Done::default()
            });
        }
        let mut messages = Vec::new();
        match write {
            WriteDisposition::Truncate => {
                let gone = self
                    .raw(&format!("DELETE FROM {target}"))
                    .await
                    .map_err(db(what.clone()))?;
                messages.push(format!("{gone} rows replaced"));
            }
            WriteDisposition::Empty if self.count(table).await? > 0 => {
                return Err(invalid(format!(
                    "{}.{} is not empty, and the task writes WRITE_EMPTY",
                    table.dataset, table.table
                )))
            }
            WriteDisposition::Empty | WriteDisposition::Append => {}
        }
        let rows = self
            .raw(&format!("INSERT INTO {target} {query}"))
            .await
            .map_err(db(what))?;
        Ok(Done {
            rows,
            messages,
            ..Done::default()
        })
    }

    /// A script: its statements in order; answers the rows they changed.
    pub async fn script(&mut self, sql: &str) -> Result<Done> {
        let rows = self.raw(sql).await.map_err(db("running the script"))?;
        Ok(Done {
            rows,
            ..Done::default()
        })
    }

    /// Makes `table` with a DDL file's columns (BigQuery types mapped, see
    /// [`bq_type`]), dropping it first when `force_delete`.
    pub async fn create_table(
        &mut self,
        table: &TableRef,
        columns: &[DdlColumn],
        force_delete: bool,
    ) -> Result<Done> {
        let target = table_sql(table)?;
        let pg = self.postgres();
        let defs = columns
            .iter()
            .map(|c| {
                let (p, s) = bq_type(&c.bq_type)
                    .ok_or_else(|| invalid(format!("`{}` is not a BigQuery type", c.bq_type)))?;
                Ok(format!(
                    "{} {}{}",
                    ident(&c.name),
                    if pg { p } else { s },
                    if c.required { " NOT NULL" } else { "" }
                ))
            })
            .collect::<Result<Vec<_>>>()?
            .join(", ");
        let mut messages = Vec::new();
        if force_delete && self.exists(table).await? {
            self.raw(&format!("DROP TABLE {target}"))
                .await
                .map_err(db(format!("dropping {target}")))?;
            messages.push(format!("dropped {}.{}", table.dataset, table.table));
        }
        let made = !self.exists(table).await?;
        self.raw(&format!("CREATE TABLE IF NOT EXISTS {target} ({defs})"))
            .await
            .map_err(db(format!("creating {target}")))?;
        messages.push(if made {
            format!("created {}.{}", table.dataset, table.table)
        } else {
            format!("{}.{} exists: kept", table.dataset, table.table)
        });
        Ok(Done {
            messages,
            ..Done::default()
        })
    }

    /// Copies `source` to `destination` (replacing it).
    pub async fn copy_table(&mut self, source: &TableRef, destination: &TableRef) -> Result<Done> {
        let (from, to) = (table_sql(source)?, table_sql(destination)?);
        if !self.exists(source).await? {
            return Err(invalid(format!(
                "{}.{} does not exist",
                source.dataset, source.table
            )));
        }
        self.raw(&format!(
            "DROP TABLE IF EXISTS {to}; CREATE TABLE {to} AS SELECT * FROM {from}"
        ))
        .await
        .map_err(db(format!("copying {from} to {to}")))?;
        let rows = self.count(destination).await?;
        Ok(Done {
            rows,
            ..Done::default()
        })
    }

    /// Drops `table` when it exists.
    pub async fn delete_table(&mut self, table: &TableRef) -> Result<Done> {
        let existed = self.exists(table).await?;
        self.raw(&format!("DROP TABLE IF EXISTS {}", table_sql(table)?))
            .await
            .map_err(db(format!("dropping {}.{}", table.dataset, table.table)))?;
        Ok(Done {
            messages: vec![if existed {
                format!("dropped {}.{}", table.dataset, table.table)
            } else {
                format!("{}.{} did not exist", table.dataset, table.table)
            }],
            ..Done::default()
        })
    }

    /// The rows of a SELECT as a file of `format` (uncompressed): CSV (with
    /// its header when asked, the delimiter given), or JSON a row a line.
    /// Answers the bytes and the rows.
    pub async fn export(
        &mut self,
        sql: &str,
        format: &sluice_domain::action::FileFormat,
    ) -> Result<(Vec<u8>, u64)> {
        let query = sql.trim().trim_end_matches(';');
        let (names, rows) = self.rows(query).await?;
        let mut out = Vec::new();
        if format.csv {
            let delimiter = format.delimiter.bytes().next().unwrap_or(b',');
            let mut w = csv::WriterBuilder::new()
                .delimiter(delimiter)
                .from_writer(&mut out);
            let fail = |e: csv::Error| invalid(format!("writing the file: {e}"));
            if format.header {
                w.write_record(&names).map_err(fail)?;
            }
            for row in &rows {
                w.write_record(row.iter().map(|v| match v {
                    serde_json::Value::Null => String::new(),
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                }))
                .map_err(fail)?;
            }
            w.flush()
                .map_err(|e| invalid(format!("writing the file: {e}")))?;
        } else {
            for row in &rows {
                let object: serde_json::Map<String, serde_json::Value> =
                    names.iter().cloned().zip(row.iter().cloned()).collect();
                out.extend_from_slice(serde_json::Value::Object(object).to_string().as_bytes());
                out.push(b'\n');
            }
        }
        Ok((out, rows.len() as u64))
    }

    /// The rows of `query`, each value as JSON, with the column names in
    /// the query's order.
    async fn rows(&mut self, query: &str) -> Result<(Vec<String>, Vec<Vec<serde_json::Value>>)> {
        use sqlx::{Column, Executor, ValueRef};
        let what = || db("running the export's query");
        match &mut self.conn {
            Conn::Postgres(c) => {
                let names: Vec<String> = c
                    .describe(query)
                    .await
                    .map_err(what())?
                    .columns()
                    .iter()
                    .map(|col| col.name().to_owned())
                    .collect();
                let texts: Vec<String> =
                    sqlx::query_scalar(&format!("SELECT row_to_json(q)::text FROM ({query}) q"))
                        .fetch_all(&mut *c)
                        .await
                        .map_err(what())?;
                let rows = texts
                    .iter()
                    .map(|t| {
                        let object: serde_json::Value = serde_json::from_str(t)
                            .map_err(|e| invalid(format!("reading a row: {e}")))?;
                        Ok(names
                            .iter()
                            .map(|n| object.get(n).cloned().unwrap_or(serde_json::Value::Null))
                            .collect())
                    })
                    .collect::<Result<Vec<_>>>()?;
                Ok((names, rows))
            }
            Conn::Sqlite(c) => {
                let fetched = sqlx::query(query)
                    .fetch_all(&mut *c)
                    .await
                    .map_err(what())?;
                let names = match fetched.first() {
                    Some(r) => r
                        .columns()
                        .iter()
                        .map(|col| col.name().to_owned())
                        .collect(),
                    None => c
                        .describe(query)
                        .await
                        .map_err(what())?
                        .columns()
                        .iter()
                        .map(|col| col.name().to_owned())
                        .collect(),
                };
                let rows = fetched
                    .iter()
                    .map(|r| {
                        (0..r.len())
                            .map(|i| {
                                let raw = r.try_get_raw(i).map_err(what())?;
                                if raw.is_null() {
                                    return Ok(serde_json::Value::Null);
                                }
                                let kind = raw.type_info().to_string();
                                Ok(match kind.as_str() {
                                    "INTEGER" => {
                                        serde_json::json!(r.try_get::<i64, _>(i).map_err(what())?)
                                    }
                                    "REAL" => {
                                        serde_json::json!(r.try_get::<f64, _>(i).map_err(what())?)
                                    }
                                    "BLOB" => serde_json::json!(crate::encode::hex(
                                        &r.try_get::<Vec<u8>, _>(i).map_err(what())?
                                    )),
                                    _ => serde_json::json!(r
                                        .try_get::<String, _>(i)
                                        .map_err(what())?),
                                })
                            })
                            .collect::<Result<Vec<_>>>()
                    })
                    .collect::<Result<Vec<_>>>()?;
                Ok((names, rows))
            }
        }
    }

    /// An expectation: each `;`-separated statement answers one row whose
    /// first column is true (or 1) when it holds. Answers the statements
    /// that did not hold, each with its text.
    pub async fn expect(&mut self, sql: &str) -> Result<Vec<String>> {
        let mut failed = Vec::new();
        for stmt in sql.split(';').map(str::trim).filter(|s| !s.is_empty()) {
            let held = match &mut self.conn {
                Conn::Postgres(c) => sqlx::query(stmt)
                    .fetch_optional(c)
                    .await
                    .map_err(db("running an expectation"))?
                    .map(|r| {
                        r.try_get::<bool, _>(0)
                            .or_else(|_| r.try_get::<i64, _>(0).map(|n| n != 0))
                            .or_else(|_| r.try_get::<i32, _>(0).map(|n| n != 0))
                    })
                    .transpose()
                    .map_err(db("reading an expectation's answer"))?,
                Conn::Sqlite(c) => sqlx::query(stmt)
                    .fetch_optional(c)
                    .await
                    .map_err(db("running an expectation"))?
                    .map(|r| r.try_get::<i64, _>(0).map(|n| n != 0))
                    .transpose()
                    .map_err(db("reading an expectation's answer"))?,
            };
            if held != Some(true) {
                failed.push(stmt.to_owned());
            }
        }
        Ok(failed)
    }
}

/// Opens the embedded warehouse in `folder`: `_sluice.db` as `main`, each
/// dataset's file attached under its name, then the connection closed to
/// everything else (see the module's documentation).
async fn open_embedded(folder: &Path, datasets: &BTreeSet<String>) -> Result<Warehouse> {
    std::fs::create_dir_all(folder)
        .map_err(|e| invalid(format!("making the warehouse folder: {e}")))?;
    // Rollback journals: a transaction over several attached files commits
    // them together (WAL would commit each file on its own).
    let options = SqliteConnectOptions::new()
        .filename(folder.join("_sluice.db"))
        .create_if_missing(true)
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Delete)
        .busy_timeout(std::time::Duration::from_secs(30));
    let mut c = options
        .connect()
        .await
        .map_err(db("opening the embedded warehouse"))?;
    let mut names: BTreeSet<String> = datasets.clone();
    // Datasets made by earlier runs are reachable too.
    if let Ok(entries) = std::fs::read_dir(folder) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(d) = name.strip_suffix(".db") {
                if dataset_name(d).is_ok() {
                    names.insert(d.to_owned());
                }
            }
        }
    }
    let mut sql = String::from(
        "CREATE TABLE IF NOT EXISTS main.sluice_action_ledger (run_id TEXT NOT NULL, \
         task_id TEXT NOT NULL, row_count INTEGER NOT NULL, \
         done_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')), \
         PRIMARY KEY (run_id, task_id));",
    );
    for d in &names {
        let file: PathBuf = folder.join(format!("{d}.db"));
        sql.push_str(&format!(
            "ATTACH DATABASE {} AS {};",
            crate::types::literal(&file.to_string_lossy()),
            ident(d)
        ));
    }
    sqlx::raw_sql(&sql)
        .execute(&mut c)
        .await
        .map_err(db("attaching the warehouse's datasets"))?;
    seal(&mut c, names.len()).await?;
    Ok(Warehouse {
        conn: Conn::Sqlite(c),
        ledger: "main.sluice_action_ledger".into(),
    })
}

/// Closes the connection to anything past what is attached.
async fn seal(c: &mut SqliteConnection, attached: usize) -> Result<()> {
    use libsqlite3_sys as ffi;
    let mut handle = c
        .lock_handle()
        .await
        .map_err(db("sealing the warehouse connection"))?;
    let raw = handle.as_raw_handle().as_ptr();
    // SAFETY: the handle is locked (no other thread uses it) and valid for
    // the connection's life; the authorizer is a plain function.
    unsafe {
        ffi::sqlite3_limit(raw, ffi::SQLITE_LIMIT_ATTACHED, attached as i32);
        ffi::sqlite3_set_authorizer(raw, Some(authorize), std::ptr::null_mut());
    }
    Ok(())
}

/// Refuses what would reach past the organization's files: ATTACH,
/// DETACH, PRAGMA, VACUUM (`VACUUM INTO` writes a file anywhere) and
/// `load_extension`.
extern "C" fn authorize(
    _: *mut std::ffi::c_void,
    action: std::ffi::c_int,
    arg1: *const std::ffi::c_char,
    arg2: *const std::ffi::c_char,
    _: *const std::ffi::c_char,
    _: *const std::ffi::c_char,
) -> std::ffi::c_int {
    use libsqlite3_sys as ffi;
    let text = |p: *const std::ffi::c_char| {
        if p.is_null() {
            String::new()
        } else {
            // SAFETY: SQLite passes NUL-terminated strings or NULL.
            unsafe { std::ffi::CStr::from_ptr(p) }
                .to_string_lossy()
                .to_ascii_lowercase()
        }
    };
    match action {
        ffi::SQLITE_ATTACH | ffi::SQLITE_DETACH | ffi::SQLITE_PRAGMA => ffi::SQLITE_DENY,
        // VACUUM runs as an ATTACH of its target, or as a statement of its
        // own: refused either way.
        ffi::SQLITE_FUNCTION if text(arg2) == "load_extension" => ffi::SQLITE_DENY,
        ffi::SQLITE_FUNCTION if text(arg2).starts_with("fts3_tokenizer") => ffi::SQLITE_DENY,
        _ => {
            let _ = arg1;
            ffi::SQLITE_OK
        }
    }
}
