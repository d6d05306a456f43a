//! Destinations: PostgreSQL and SQLite (the embedded warehouse). What the
//! load does to one — its transaction, its table made or brought to the
//! source's shape, a window's rows cleared, a merge, a swap — and its
//! writer, which takes the reader's batches: binary COPY from a PostgreSQL
//! source, text COPY from any other, multi-row INSERTs into SQLite.

use sqlx::postgres::{PgConnection, PgCopyIn};
use sqlx::sqlite::SqliteConnection;
use sqlx::{Connection, Row};

use crate::encode::{bind_sqlite, sqlite_time, tsv};
use crate::source::{Batch, ReadAs};
use crate::types::{db, ident, invalid, literal, Col, Kind, TableName};
use crate::Result;

pub(crate) enum Dest {
    Postgres(PgConnection),
    Sqlite(SqliteConnection),
}

fn sqlite_url(url: &str) -> String {
    if url.contains('?') {
        url.to_owned()
    } else {
        format!("{url}?mode=rwc")
    }
}

impl Dest {
    pub(crate) async fn open(url: &str) -> Result<Dest> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Dest::Postgres(
                crate::source::connect_postgres(url, "destination").await?,
            ))
        } else if url.starts_with("sqlite:") {
            let what = || db("cannot connect to the destination database");
            let mut c = SqliteConnection::connect(&sqlite_url(url))
                .await
                .map_err(what())?;
            // The wait first: switching a new file to WAL takes its lock,
            // which a racing first load may hold.
            sqlx::raw_sql("PRAGMA busy_timeout = 30000; PRAGMA journal_mode = WAL;")
                .execute(&mut c)
                .await
                .map_err(what())?;
            Ok(Dest::Sqlite(c))
        } else {
            Err(invalid(
                "unsupported destination: expected postgres:// or sqlite://",
            ))
        }
    }

    pub(crate) fn postgres(&self) -> bool {
        matches!(self, Dest::Postgres(_))
    }

    /// Begins the load's one transaction (SQLite: taking the write lock at
    /// once, so that two loads do not both read and then fail to write).
    pub(crate) async fn begin(&mut self) -> Result<()> {
        let begin = match self {
            Dest::Postgres(_) => "BEGIN",
            Dest::Sqlite(_) => "BEGIN IMMEDIATE",
        };
        self.raw(begin).await.map_err(db("beginning the load"))
    }

    /// Ends the load's transaction: commits it, or rolls it back.
    pub(crate) async fn end(&mut self, commit: bool) -> Result<()> {
        let end = if commit { "COMMIT" } else { "ROLLBACK" };
        self.raw(end).await.map_err(db("committing the load"))
    }

    /// Runs `sql` (one statement or several).
    pub(crate) async fn raw(&mut self, sql: &str) -> Result<(), sqlx::Error> {
        match self {
            Dest::Postgres(c) => sqlx::raw_sql(sql).execute(c).await.map(|_| ()),
            Dest::Sqlite(c) => sqlx::raw_sql(sql).execute(c).await.map(|_| ()),
        }
    }

    /// The columns of `t` and their types as the destination spells them
    /// (none: it does not exist).
    pub(crate) async fn columns(&mut self, t: &TableName) -> Result<Vec<(String, String)>> {
        match self {
            Dest::Postgres(c) => Ok(crate::source::postgres_columns(c, t)
                .await?
                .into_iter()
                .map(|c| {
                    let ty = c.postgres_type();
                    (c.name, ty)
                })
                .collect()),
            Dest::Sqlite(c) => {
                let what = || db(format!("reading the columns of {}", t.quoted()));
                let rows = sqlx::query("SELECT name, type FROM pragma_table_info(?)")
                    .bind(&t.table)
                    .fetch_all(&mut *c)
                    .await
                    .map_err(what())?;
                rows.iter()
                    .map(|r| Ok((r.try_get(0).map_err(what())?, r.try_get(1).map_err(what())?)))
                    .collect()
            }
        }
    }

    /// The type a source column gets here.
    pub(crate) fn column_type(&self, c: &Col) -> String {
        match self {
            Dest::Postgres(_) => c.postgres_type(),
            Dest::Sqlite(_) => c.kind.sqlite().to_owned(),
        }
    }

    /// `value` of column `c` as a literal the destination compares with
    /// the column's values.
    pub(crate) fn literal(&self, c: &Col, value: &str) -> String {
        match self {
            Dest::Postgres(_) => format!("{}::{}", literal(value), c.postgres_type()),
            // The warehouse keeps times in one spelling (see `bind_sqlite`).
            Dest::Sqlite(_) => literal(&match c.kind {
                Kind::Timestamp | Kind::TimestampTz => sqlite_time(value),
                _ => value.to_owned(),
            }),
        }
    }

    fn create_sql(&self, table: &TableName, cols: &[Col], if_not_exists: bool) -> String {
        let defs = cols
            .iter()
            .map(|c| {
                format!(
                    "{} {}{}",
                    ident(&c.name),
                    self.column_type(c),
                    if c.not_null { " NOT NULL" } else { "" }
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "CREATE TABLE {}{} ({defs})",
            if if_not_exists { "IF NOT EXISTS " } else { "" },
            table.quoted()
        )
    }

    /// Makes `table` with the source's columns.
    pub(crate) async fn create(&mut self, table: &TableName, cols: &[Col]) -> Result<()> {
        let create = self.create_sql(table, cols, false);
        self.raw(&create)
            .await
            .map_err(db(format!("creating {}", table.quoted())))
    }

    /// Makes the target when it is missing, or brings it to the source's
    /// shape, and answers the schema changes. One rule for every pair:
    ///
    /// - a source column the target lacks is added;
    /// - a column whose type differs is widened when the new type holds
    ///   every old value (`integer` → `bigint`, `real` → `double
    ///   precision`, a longer `varchar` or `text`, a larger `numeric`), and
    ///   refused otherwise — where the source's type is exact (PostgreSQL to
    ///   PostgreSQL). Values of a mapped kind arrive as text, which the
    ///   destination casts into the column as it is; SQLite's columns hold
    ///   any value;
    /// - a target column the source lacks stays, NULL in new rows.
    ///
    /// A table sluice did not make (`may_change` false) is never changed:
    /// the load is refused, saying what it would have changed.
    pub(crate) async fn consolidate(
        &mut self,
        target: &TableName,
        cols: &[Col],
        may_change: bool,
    ) -> Result<Vec<String>> {
        let live = target.quoted();
        let existing = self.columns(target).await?;
        if existing.is_empty() {
            let create = self.create_sql(target, cols, true);
            self.raw(&create)
                .await
                .map_err(db(format!("creating {live}")))?;
            return Ok(vec![format!("created {live}")]);
        }
        let mut changes = Vec::new();
        let mut ddl = Vec::new();
        for c in cols {
            let ty = self.column_type(c);
            let typed = self.postgres() && c.exact.is_some();
            match existing.iter().find(|(name, _)| *name == c.name) {
                None => {
                    ddl.push(format!(
                        "ALTER TABLE {live} ADD COLUMN {} {ty}",
                        ident(&c.name)
                    ));
                    changes.push(format!("new column {} {ty}", c.name));
                }
                Some((_, had)) if *had == ty || !typed => {}
                Some((_, had)) if widens(had, &ty) => {
                    ddl.push(format!(
                        "ALTER TABLE {live} ALTER COLUMN {} TYPE {ty}",
                        ident(&c.name)
                    ));
                    changes.push(format!("column {} widened from {had} to {ty}", c.name));
                }
                Some((_, had)) => {
                    return Err(invalid(format!(
                        "column {} of {live} is {had} but the source's is {ty}: not a widening \
                         sluice makes; load into a new target or use --mode destructive",
                        c.name
                    )))
                }
            }
        }
        for (name, _) in &existing {
            if !cols.iter().any(|c| c.name == *name) {
                changes.push(format!(
                    "column {name} is not in the source: its new rows hold NULL"
                ));
            }
        }
        if !may_change && !ddl.is_empty() {
            return Err(invalid(format!(
                "{live} exists and sluice did not make it: loading would change it ({}), and \
                 sluice changes only tables it made; nothing was written",
                changes.join("; ")
            )));
        }
        for stmt in ddl {
            self.raw(&stmt)
                .await
                .map_err(db(format!("changing {live}")))?;
        }
        Ok(changes)
    }

    /// Makes `stage`, a table of the transaction's own shaped like `live`,
    /// gone when the transaction ends.
    pub(crate) async fn stage_table(&mut self, stage: &TableName, live: &TableName) -> Result<()> {
        let (stage, live) = (stage.quoted(), live.quoted());
        let sql = match self {
            Dest::Postgres(_) => format!("CREATE TEMP TABLE {stage} (LIKE {live}) ON COMMIT DROP"),
            Dest::Sqlite(_) => format!("CREATE TEMP TABLE {stage} AS SELECT * FROM {live} WHERE 0"),
        };
        self.raw(&sql)
            .await
            .map_err(db("creating the merge's stage table"))
    }

    /// Deletes the rows of `table` where `condition` holds; answers how many.
    pub(crate) async fn delete(&mut self, table: &TableName, condition: &str) -> Result<u64> {
        let sql = format!("DELETE FROM {} WHERE {condition}", table.quoted());
        let gone = match self {
            Dest::Postgres(c) => sqlx::query(&sql)
                .execute(c)
                .await
                .map(|r| r.rows_affected()),
            Dest::Sqlite(c) => sqlx::query(&sql)
                .execute(c)
                .await
                .map(|r| r.rows_affected()),
        };
        gone.map_err(db(format!("clearing the window in {}", table.quoted())))
    }

    /// Merges `stage` into `target` by `key` (see [`crate::merge_sql`]).
    pub(crate) async fn merge(
        &mut self,
        target: &TableName,
        stage: &TableName,
        cols: &[Col],
        key: &str,
    ) -> Result<()> {
        let names = column_list(cols);
        let (live, staged) = (target.quoted(), stage.quoted());
        let postgres = self.postgres();
        let mut statements = crate::merge_sql(postgres, &live, &staged, &names, &ident(key));
        if !postgres {
            // SQLite's temporary tables outlive the transaction.
            statements.push(format!("DROP TABLE {staged}"));
        }
        for stmt in statements {
            self.raw(&stmt)
                .await
                .map_err(db(format!("merging into {live}")))?;
        }
        Ok(())
    }

    /// Puts `fresh` in the place of `target`.
    pub(crate) async fn swap(&mut self, fresh: &TableName, target: &TableName) -> Result<()> {
        let swap = format!(
            "DROP TABLE IF EXISTS {}; ALTER TABLE {} RENAME TO {}",
            target.quoted(),
            fresh.quoted(),
            ident(&target.table)
        );
        self.raw(&swap)
            .await
            .map_err(db(format!("replacing {}", target.quoted())))
    }

    /// The writer of `cols` into `into`, taking batches read `read`.
    pub(crate) async fn writer<'a>(
        &'a mut self,
        into: &TableName,
        cols: &'a [Col],
        read: ReadAs,
        from_mysql: bool,
    ) -> Result<Writer<'a>> {
        let into_sql = into.quoted();
        let names = column_list(cols);
        match self {
            Dest::Postgres(c) => {
                let format = match read {
                    ReadAs::BinaryCopy => " (FORMAT binary)",
                    ReadAs::Values => "",
                };
                let copy = c
                    .copy_in_raw(&format!("COPY {into_sql} ({names}) FROM STDIN{format}"))
                    .await
                    .map_err(db(format!("loading {into_sql}")))?;
                Ok(Writer::Copy {
                    copy,
                    into: into_sql,
                    cols,
                    from_mysql,
                })
            }
            Dest::Sqlite(_) if read != ReadAs::Values => Err(invalid(
                "PostgreSQL's COPY data cannot be written to SQLite",
            )),
            Dest::Sqlite(conn) => Ok(Writer::Insert {
                conn,
                into: into_sql,
                names,
                cols,
                rows: 0,
            }),
        }
    }
}

fn column_list(cols: &[Col]) -> String {
    cols.iter()
        .map(|c| ident(&c.name))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Where the reader's batches go.
pub(crate) enum Writer<'a> {
    /// PostgreSQL's `COPY … FROM STDIN`: COPY data as it came, rows as
    /// values in text COPY.
    Copy {
        copy: PgCopyIn<&'a mut PgConnection>,
        into: String,
        cols: &'a [Col],
        from_mysql: bool,
    },
    /// SQLite: multi-row INSERTs.
    Insert {
        conn: &'a mut SqliteConnection,
        into: String,
        names: String,
        cols: &'a [Col],
        rows: u64,
    },
}

impl Writer<'_> {
    /// The batch in the form this writer sends: a COPY writer takes rows
    /// as text COPY data.
    pub(crate) fn shape(&self, batch: Batch) -> Batch {
        match (self, batch) {
            (
                Writer::Copy {
                    cols, from_mysql, ..
                },
                Batch::Rows(rows),
            ) => Batch::Copy {
                bytes: tsv(&rows, cols, *from_mysql).into(),
                rows: rows.len() as u64,
            },
            (_, batch) => batch,
        }
    }

    /// Writes one batch; answers the bytes sent (0 when rows are bound).
    pub(crate) async fn write(&mut self, batch: Batch) -> Result<u64> {
        let batch = self.shape(batch);
        match (self, batch) {
            (Writer::Copy { copy, into, .. }, Batch::Copy { bytes, .. }) => {
                let n = bytes.len() as u64;
                copy.send(bytes)
                    .await
                    .map_err(db(format!("loading {into}")))?;
                Ok(n)
            }
            (
                Writer::Insert {
                    conn,
                    into,
                    names,
                    cols,
                    rows,
                },
                Batch::Rows(batch),
            ) => {
                // SQLite binds at most 32766 parameters a statement.
                let per = (32000 / cols.len().max(1)).max(1);
                for chunk in batch.chunks(per) {
                    let row = format!("({})", vec!["?"; cols.len()].join(", "));
                    let sql = format!(
                        "INSERT INTO {into} ({names}) VALUES {}",
                        vec![row; chunk.len()].join(", ")
                    );
                    let mut query = sqlx::query(&sql);
                    for r in chunk {
                        for (v, c) in r.iter().zip(cols.iter()) {
                            query = bind_sqlite(query, v, c.kind);
                        }
                    }
                    query
                        .execute(&mut **conn)
                        .await
                        .map_err(db(format!("loading {into}")))?;
                }
                *rows += batch.len() as u64;
                Ok(0)
            }
            (Writer::Insert { .. }, Batch::Copy { .. }) => Err(invalid(
                "PostgreSQL's COPY data cannot be written to SQLite",
            )),
            (Writer::Copy { .. }, Batch::Rows(_)) => unreachable!("shaped above"),
        }
    }

    /// Ends the writing; answers the rows the destination took.
    pub(crate) async fn finish(self) -> Result<u64> {
        match self {
            Writer::Copy { copy, into, .. } => {
                copy.finish().await.map_err(db(format!("loading {into}")))
            }
            Writer::Insert { rows, .. } => Ok(rows),
        }
    }

    /// Stops the writing (the transaction rolls back after it).
    pub(crate) async fn abort(self, why: &str) {
        if let Writer::Copy { copy, .. } = self {
            let _ = copy.abort(why).await;
        }
    }
}

/// Whether a column of type `from` can hold every value of type `to`
/// after `ALTER COLUMN … TYPE to` without loss.
fn widens(from: &str, to: &str) -> bool {
    let rank = |t: &str| match t {
        "smallint" => Some(1),
        "integer" => Some(2),
        "bigint" => Some(3),
        _ => None,
    };
    if let (Some(a), Some(b)) = (rank(from), rank(to)) {
        return a < b;
    }
    let varchar = |t: &str| {
        t.strip_prefix("character varying(")
            .and_then(|r| r.strip_suffix(')'))
            .and_then(|n| n.parse::<u32>().ok())
    };
    let numeric = |t: &str| {
        t.strip_prefix("numeric(")
            .and_then(|r| r.strip_suffix(')'))
            .and_then(|r| r.split_once(','))
            .and_then(|(p, s)| Some((p.trim().parse::<u32>().ok()?, s.trim().parse::<u32>().ok()?)))
    };
    match (from, to) {
        ("real", "double precision") => true,
        (f, "text") if varchar(f).is_some() => true,
        (f, t) if varchar(f).is_some() && varchar(t).is_some() => varchar(f) < varchar(t),
        (f, t) => match (numeric(f), numeric(t)) {
            // More digits before and after the point: every value fits.
            (Some((p1, s1)), Some((p2, s2))) => s2 >= s1 && p2 - s2 >= p1 - s1,
            (Some(_), None) => t == "numeric",
            _ => false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_lossless_type_changes_widen() {
        assert!(widens("integer", "bigint"));
        assert!(widens("real", "double precision"));
        assert!(widens("character varying(10)", "text"));
        assert!(widens("numeric(12,2)", "numeric(14,4)"));
        assert!(!widens("numeric(12,2)", "numeric(12,4)"));
        assert!(!widens("bigint", "integer"));
        assert!(!widens("text", "integer"));
    }
}
