//! [`ApiSourceStore`] over SQL: HTTP API sources, their runs (leased work,
//! one active run per source held by a unique index), tasks, tables and
//! data loads.

use sluice_domain::api_source::{
    status_label, ApiRun, ApiRunTable, ApiSource, ApiTask, DataLoad, RunSort, RunType,
    REJECTED_MESSAGE,
};

use super::lease::Leased;
use super::*;
use crate::{ApiOutcome, ApiRunPage, ApiRunRow, ApiSourceStore};

/// How many times a run whose worker was lost is tried in all.
const RUN_ATTEMPTS: i32 = 3;

const SOURCE_COLUMNS: &str = "organization_id, name, config_sealed, config_shown, destination, \
     dataset, created_at, modified_at";

const RUN_COLUMNS: &str = "seq, id, organization_id, source_name, run_type, status, error, \
     retry_of, records, tables, attempt, lease_owner, lease_token, lease_expires_at, created_at, \
     started_at, finished_at";

/// The groups a sort by status or type reads one after another, in the
/// page's order: (rank, column, the column's values of that rank) — the
/// values left by the page's filters. None for the other sorts.
fn enumerated(page: &ApiRunPage) -> Option<Vec<(i64, &'static str, Vec<&'static str>)>> {
    let mut groups: Vec<(i64, &'static str, Vec<&'static str>)> = match page.sort {
        RunSort::Status => {
            let mut labels: Vec<&str> = RunStatus::ALL.iter().map(|s| status_label(*s)).collect();
            labels.sort_unstable();
            labels.dedup();
            labels
                .iter()
                .enumerate()
                .map(|(rank, label)| {
                    let values = RunStatus::ALL
                        .into_iter()
                        .filter(|s| status_label(*s) == *label)
                        .filter(|s| page.statuses.is_empty() || page.statuses.contains(s))
                        .map(RunStatus::as_str)
                        .collect();
                    (rank as i64, "status", values)
                })
                .collect()
        }
        RunSort::Type => [RunType::Destructive, RunType::Incremental]
            .into_iter()
            .enumerate()
            .map(|(rank, t)| {
                let keep = page.run_type.is_none_or(|want| want == t);
                (
                    rank as i64,
                    "run_type",
                    if keep { vec![t.as_str()] } else { vec![] },
                )
            })
            .collect(),
        _ => return None,
    };
    groups.retain(|(_, _, values)| !values.is_empty());
    if !page.ascending {
        groups.reverse();
    }
    Some(groups)
}

/// A run's messages: its tasks' and its error.
const MESSAGES: &str = "(messages + CASE WHEN error IS NULL THEN 0 ELSE 1 END)";

/// The integer a sort orders runs by: times in microseconds (-1 when
/// there is none). Sorts by status and type read their groups one after
/// another instead ([`enumerated`]).
fn sort_key(sort: RunSort) -> &'static str {
    match sort {
        RunSort::Created => "created_at",
        RunSort::Started => "COALESCE(started_at, -1)",
        RunSort::Finished => "COALESCE(finished_at, -1)",
        RunSort::Duration => "COALESCE(COALESCE(finished_at, $now) - started_at, -1)",
        RunSort::Records => "records",
        RunSort::Tables => "tables",
        RunSort::Messages => MESSAGES,
        RunSort::Id | RunSort::Status | RunSort::Type => "seq",
    }
}

const RUNS: Leased = Leased {
    table: "api_runs",
    columns: RUN_COLUMNS,
    modified_at: true,
};

fn source_from_row(row: &AnyRow) -> Result<ApiSource> {
    Ok(ApiSource {
        organization_id: OrganizationId::parse(&row.try_get::<String, _>("organization_id")?)?,
        name: row.try_get("name")?,
        config_sealed: row.try_get("config_sealed")?,
        config_shown: parse_json(row, "config_shown")?,
        destination: row.try_get("destination")?,
        dataset: row.try_get("dataset")?,
        created_at: ts(row, "created_at")?,
        modified_at: ts(row, "modified_at")?,
    })
}

fn status_of(row: &AnyRow) -> Result<RunStatus> {
    row.try_get::<String, _>("status")?
        .parse()
        .map_err(|e| StoreError::Corrupt(format!("{e}")))
}

fn run_from_row(row: &AnyRow) -> Result<ApiRun> {
    let run_type: String = row.try_get("run_type")?;
    Ok(ApiRun {
        seq: row.try_get("seq")?,
        id: row.try_get("id")?,
        organization_id: OrganizationId::parse(&row.try_get::<String, _>("organization_id")?)?,
        source: row.try_get("source_name")?,
        run_type: RunType::parse(&run_type)
            .ok_or_else(|| StoreError::Corrupt(format!("run type `{run_type}`")))?,
        status: status_of(row)?,
        error: row.try_get("error")?,
        retry_of: row.try_get("retry_of")?,
        records: row.try_get("records")?,
        tables: row.try_get("tables")?,
        attempt: row.try_get("attempt")?,
        lease_token: row.try_get("lease_token")?,
        created_at: ts(row, "created_at")?,
        started_at: opt_ts(row, "started_at")?,
        finished_at: opt_ts(row, "finished_at")?,
    })
}

fn task_from_row(row: &AnyRow) -> Result<ApiTask> {
    Ok(ApiTask {
        run_id: row.try_get("run_id")?,
        position: row.try_get("position")?,
        name: row.try_get("name")?,
        kind: row.try_get("kind")?,
        table: row.try_get("table_name")?,
        status: status_of(row)?,
        records: row.try_get("records")?,
        messages: serde_json::from_value(parse_json(row, "messages")?)?,
        started_at: opt_ts(row, "started_at")?,
        finished_at: opt_ts(row, "finished_at")?,
    })
}

impl SqlStore {
    /// Whether `run_id`'s lease is `token`'s (a task write is fenced).
    async fn holds(
        &self,
        tx: &mut Transaction<'static, Any>,
        run_id: &str,
        token: i64,
    ) -> Result<()> {
        let held: Option<i64> =
            sqlx::query_scalar("SELECT lease_token FROM api_runs WHERE id = $1")
                .bind(run_id)
                .fetch_optional(&mut **tx)
                .await?;
        match held {
            Some(t) if t == token => Ok(()),
            Some(_) => Err(StoreError::LeaseLost(run_id.to_owned())),
            None => Err(not_found("API run", run_id)),
        }
    }
}

#[async_trait]
impl ApiSourceStore for SqlStore {
    async fn put_api_source(&self, s: &ApiSource, replace: bool) -> Result<()> {
        let sql = if replace {
            "UPDATE api_sources SET config_sealed = $3, config_shown = $4, destination = $5, \
             dataset = $6, modified_at = $8 WHERE organization_id = $1 AND name = $2 AND $7 = $7"
        } else {
            "INSERT INTO api_sources (organization_id, name, config_sealed, config_shown, \
             destination, dataset, created_at, modified_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        };
        let done = sqlx::query(sql)
            .bind(s.organization_id.as_str())
            .bind(&s.name)
            .bind(&s.config_sealed)
            .bind(json_text(&s.config_shown))
            .bind(s.destination.as_deref())
            .bind(&s.dataset)
            .bind(micros(s.created_at))
            .bind(micros(s.modified_at))
            .execute(&self.write)
            .await;
        match done {
            Ok(r) if replace && r.rows_affected() == 0 => Err(not_found("API source", &s.name)),
            Ok(_) => Ok(()),
            Err(e) => match StoreError::from(e) {
                StoreError::Conflict(_) => Err(StoreError::Conflict(format!(
                    "an API source `{}` exists already: use `sluice source update`",
                    s.name
                ))),
                other => Err(other),
            },
        }
    }

    async fn get_api_source(&self, org: &OrganizationId, name: &str) -> Result<ApiSource> {
        let row = sqlx::query(&format!(
            "SELECT {SOURCE_COLUMNS} FROM api_sources WHERE organization_id = $1 AND name = $2"
        ))
        .bind(org.as_str())
        .bind(name)
        .fetch_optional(&self.read)
        .await?
        .ok_or_else(|| not_found("API source", name))?;
        source_from_row(&row)
    }

    async fn list_api_sources(&self, org: &OrganizationId) -> Result<Vec<ApiSource>> {
        let rows = sqlx::query(&format!(
            "SELECT {SOURCE_COLUMNS} FROM api_sources WHERE organization_id = $1 ORDER BY name"
        ))
        .bind(org.as_str())
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(source_from_row).collect()
    }

    async fn delete_api_source(&self, org: &OrganizationId, name: &str) -> Result<()> {
        let mut tx = self.begin().await?;
        let active: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM api_runs WHERE organization_id = $1 AND source_name = $2 \
             AND status IN ('SUBMITTED', 'PENDING', 'RUNNABLE', 'STARTING', 'RUNNING', 'CANCELING')",
        )
        .bind(org.as_str())
        .bind(name)
        .fetch_one(&mut *tx)
        .await?;
        if active > 0 {
            let _ = tx.rollback().await;
            return Err(StoreError::Conflict(format!(
                "API source `{name}` has an active run: cancel it first"
            )));
        }
        let gone = sqlx::query("DELETE FROM api_sources WHERE organization_id = $1 AND name = $2")
            .bind(org.as_str())
            .bind(name)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if gone == 0 {
            let _ = tx.rollback().await;
            return Err(not_found("API source", name));
        }
        for sql in [
            "DELETE FROM api_tasks WHERE run_id IN (SELECT id FROM api_runs WHERE organization_id = $1 AND source_name = $2)",
            "DELETE FROM api_run_tables WHERE run_id IN (SELECT id FROM api_runs WHERE organization_id = $1 AND source_name = $2)",
            "DELETE FROM api_data_loads WHERE organization_id = $1 AND source_name = $2",
            "DELETE FROM api_runs WHERE organization_id = $1 AND source_name = $2",
        ] {
            sqlx::query(sql).bind(org.as_str()).bind(name).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn start_api_run(
        &self,
        org: &OrganizationId,
        source: &str,
        run_type: RunType,
        retry_of: Option<&str>,
        now: Timestamp,
    ) -> Result<ApiRun> {
        let mut tx = self.begin().await?;
        let exists: Option<String> = sqlx::query_scalar(
            "SELECT name FROM api_sources WHERE organization_id = $1 AND name = $2",
        )
        .bind(org.as_str())
        .bind(source)
        .fetch_optional(&mut *tx)
        .await?;
        if exists.is_none() {
            let _ = tx.rollback().await;
            return Err(not_found("API source", source));
        }
        let insert = |status: &'static str, error: Option<&'static str>| {
            // The id is the run's number (its seq), set right after; a
            // placeholder holds its place until then.
            sqlx::query(
                "INSERT INTO api_runs (id, organization_id, source_name, run_type, status, error, \
                 retry_of, created_at, modified_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8) \
                 ON CONFLICT DO NOTHING RETURNING seq",
            )
            .bind(format!("new-{:032x}", rand::random::<u128>()))
            .bind(org.as_str())
            .bind(source)
            .bind(run_type.as_str())
            .bind(status)
            .bind(error)
            .bind(retry_of)
            .bind(micros(now))
        };
        // Waiting to start unless the unique index over active runs holds
        // another run of this source: then REJECTED.
        let mut seq: Option<i64> = insert("RUNNABLE", None)
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| r.try_get("seq"))
            .transpose()?;
        if seq.is_none() {
            let rejected = insert("REJECTED", Some(REJECTED_MESSAGE))
                .fetch_one(&mut *tx)
                .await?;
            seq = Some(rejected.try_get("seq")?);
            sqlx::query("UPDATE api_runs SET finished_at = $1 WHERE seq = $2")
                .bind(micros(now))
                .bind(seq)
                .execute(&mut *tx)
                .await?;
        }
        let seq = seq.expect("inserted");
        let row = sqlx::query(&format!(
            "UPDATE api_runs SET id = CAST(seq AS TEXT) WHERE seq = $1 RETURNING {RUN_COLUMNS}"
        ))
        .bind(seq)
        .fetch_one(&mut *tx)
        .await?;
        let run = run_from_row(&row)?;
        tx.commit().await?;
        Ok(run)
    }

    async fn get_api_run(&self, org: &OrganizationId, id: &str) -> Result<ApiRun> {
        let row = sqlx::query(&format!(
            "SELECT {RUN_COLUMNS} FROM api_runs WHERE organization_id = $1 AND id = $2"
        ))
        .bind(org.as_str())
        .bind(id)
        .fetch_optional(&self.read)
        .await?
        .ok_or_else(|| not_found("API run", id))?;
        run_from_row(&row)
    }

    async fn list_api_runs(
        &self,
        org: &OrganizationId,
        source: &str,
        limit: u32,
    ) -> Result<Vec<ApiRun>> {
        let rows = sqlx::query(&format!(
            "SELECT {RUN_COLUMNS} FROM api_runs WHERE organization_id = $1 AND source_name = $2 \
             ORDER BY seq DESC LIMIT $3"
        ))
        .bind(org.as_str())
        .bind(source)
        .bind(limit as i64)
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(run_from_row).collect()
    }

    async fn page_api_runs(
        &self,
        org: &OrganizationId,
        source: &str,
        page: &ApiRunPage,
    ) -> Result<Vec<ApiRunRow>> {
        if let Some(groups) = enumerated(page) {
            return self.page_by_groups(org, source, page, groups).await;
        }
        let key = sort_key(page.sort);
        let mut sql = format!(
            "SELECT {RUN_COLUMNS}, {MESSAGES} AS message_total, {key} AS sort_key FROM api_runs \
             WHERE organization_id = $1 AND source_name = $2"
        );
        let mut n = 3;
        if page.run_type.is_some() {
            sql.push_str(&format!(" AND run_type = ${n}"));
            n += 1;
        }
        if !page.statuses.is_empty() {
            let marks: Vec<String> = (0..page.statuses.len())
                .map(|i| format!("${}", n + i))
                .collect();
            sql.push_str(&format!(" AND status IN ({})", marks.join(", ")));
            n += page.statuses.len();
        }
        let (cmp, order) = if page.ascending {
            (">", "ASC")
        } else {
            ("<", "DESC")
        };
        if page.after.is_some() {
            sql.push_str(&format!(
                " AND ({key} {cmp} ${n} OR ({key} = ${n} AND seq {cmp} ${}))",
                n + 1
            ));
            n += 2;
        }
        sql.push_str(&format!(
            " ORDER BY sort_key {order}, seq {order} LIMIT ${n}"
        ));
        let now = micros(page.now);
        // The duration's key reads `now` as a literal: a bound value in a
        // computed column is not typed alike by both databases.
        let sql = sql.replace("$now", &now.to_string());
        let mut q = sqlx::query(&sql).bind(org.as_str()).bind(source);
        if let Some(t) = page.run_type {
            q = q.bind(t.as_str());
        }
        for st in &page.statuses {
            q = q.bind(st.as_str());
        }
        if let Some((k, seq)) = page.after {
            q = q.bind(k).bind(seq);
        }
        let rows = q.bind(page.limit as i64).fetch_all(&self.read).await?;
        rows.iter()
            .map(|row| {
                Ok(ApiRunRow {
                    run: run_from_row(row)?,
                    messages: row.try_get("message_total")?,
                    key: row.try_get("sort_key")?,
                })
            })
            .collect()
    }

    async fn cancel_api_run(
        &self,
        org: &OrganizationId,
        id: &str,
        now: Timestamp,
    ) -> Result<RunStatus> {
        let mut tx = self.begin().await?;
        let row = sqlx::query(&format!(
            "SELECT {RUN_COLUMNS} FROM api_runs WHERE organization_id = $1 AND id = $2{}",
            self.dialect.for_update()
        ))
        .bind(org.as_str())
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            let _ = tx.rollback().await;
            return Err(not_found("API run", id));
        };
        let status = status_of(&row)?;
        let next = match status {
            RunStatus::Submitted | RunStatus::Pending | RunStatus::Runnable => RunStatus::Cancelled,
            RunStatus::Starting | RunStatus::Running => RunStatus::Canceling,
            RunStatus::Canceling => {
                let _ = tx.rollback().await;
                return Err(StoreError::Conflict(format!(
                    "API run {id} is already Canceling …: its work is stopping; nothing changed"
                )));
            }
            ended => {
                let _ = tx.rollback().await;
                return Err(StoreError::Conflict(format!(
                    "API run {id} is {}: there is nothing to cancel",
                    sluice_domain::api_source::status_label(ended)
                )));
            }
        };
        status.transition(next)?;
        let finished = (next == RunStatus::Cancelled).then_some(micros(now));
        sqlx::query(
            "UPDATE api_runs SET status = $1, finished_at = COALESCE($2, finished_at), \
             error = CASE WHEN $1 = 'CANCELLED' THEN 'cancelled before it started' ELSE error END, \
             modified_at = $3 WHERE id = $4",
        )
        .bind(next.as_str())
        .bind(finished)
        .bind(micros(now))
        .bind(id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(next)
    }

    async fn claim_api_runs(
        &self,
        worker: &str,
        limit: u32,
        ttl: Duration,
        now: Timestamp,
    ) -> Result<Vec<ApiRun>> {
        RUNS.claim_into(self, worker, limit, ttl, now, run_from_row)
            .await
    }

    async fn claim_api_run(
        &self,
        id: &str,
        worker: &str,
        ttl: Duration,
        now: Timestamp,
    ) -> Result<Option<ApiRun>> {
        RUNS.claim_id(self, id, worker, ttl, now)
            .await?
            .as_ref()
            .map(run_from_row)
            .transpose()
    }

    async fn api_run_running(&self, id: &str, token: i64, now: Timestamp) -> Result<RunStatus> {
        RUNS.start_alone(self, id, token, now).await
    }

    async fn heartbeat_api_run(
        &self,
        id: &str,
        token: i64,
        ttl: Duration,
        now: Timestamp,
    ) -> Result<RunStatus> {
        RUNS.heartbeat(&self.write, id, token, ttl, now).await
    }

    async fn hand_back_api_run(&self, id: &str, token: i64, now: Timestamp) -> Result<bool> {
        RUNS.hand_back(&self.write, id, token, now).await
    }

    async fn finish_api_run(
        &self,
        id: &str,
        token: i64,
        outcome: &ApiOutcome,
        now: Timestamp,
    ) -> Result<RunStatus> {
        let mut tx = self.begin().await?;
        let (from, row) = match RUNS.ending(&mut tx, self.dialect, id, token).await {
            Ok(v) => v,
            Err(e) => {
                // At once: a dropped transaction's row lock would make
                // claimers skip the row until its connection is reused.
                let _ = tx.rollback().await;
                return Err(e);
            }
        };
        let run = run_from_row(&row)?;
        let (next, error, tables, records) = match outcome {
            // The run's records stay those it extracted; the data load
            // counts the rows loaded (child rows among them).
            ApiOutcome::Succeeded { tables, .. } => {
                (RunStatus::Succeeded, None, *tables, run.records)
            }
            ApiOutcome::Failed { error } if run.status == RunStatus::Canceling => {
                (RunStatus::Cancelled, Some(error.clone()), 0, run.records)
            }
            ApiOutcome::Failed { error } => {
                (RunStatus::Failed, Some(error.clone()), 0, run.records)
            }
        };
        if let Err(e) = from.transition(next) {
            let _ = tx.rollback().await;
            return Err(e.into());
        }
        sqlx::query(
            "UPDATE api_runs SET status = $1, error = $2, tables = $3, records = $4, \
             finished_at = $5, modified_at = $5, lease_expires_at = NULL WHERE id = $6",
        )
        .bind(next.as_str())
        .bind(error)
        .bind(tables)
        .bind(records)
        .bind(micros(now))
        .bind(id)
        .execute(&mut *tx)
        .await?;
        if let (RunStatus::Succeeded, ApiOutcome::Succeeded { records, .. }) = (next, outcome) {
            sqlx::query(
                "INSERT INTO api_data_loads (run_id, organization_id, source_name, tables, records, \
                 created_at) VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(id)
            .bind(run.organization_id.as_str())
            .bind(&run.source)
            .bind(tables)
            .bind(*records)
            .bind(micros(now))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(next)
    }

    async fn reap_api_runs(&self, now: Timestamp) -> Result<Vec<String>> {
        let mut tx = self.begin().await?;
        let reaped = RUNS
            .give_back(&mut tx, self.dialect, now, RUN_ATTEMPTS)
            .await?;
        tx.commit().await?;
        Ok(reaped)
    }

    async fn put_api_task(&self, t: &ApiTask, token: i64) -> Result<()> {
        let mut tx = self.begin().await?;
        if let Err(e) = self.holds(&mut tx, &t.run_id, token).await {
            let _ = tx.rollback().await;
            return Err(e);
        }
        sqlx::query(
            "INSERT INTO api_tasks (run_id, position, name, kind, table_name, status, records, \
             messages, started_at, finished_at, message_count) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
             ON CONFLICT (run_id, position) DO UPDATE SET name = excluded.name, kind = excluded.kind, \
             table_name = excluded.table_name, status = excluded.status, records = excluded.records, \
             messages = excluded.messages, started_at = excluded.started_at, \
             finished_at = excluded.finished_at, message_count = excluded.message_count",
        )
        .bind(&t.run_id)
        .bind(t.position)
        .bind(&t.name)
        .bind(&t.kind)
        .bind(t.table.as_deref())
        .bind(t.status.as_str())
        .bind(t.records)
        .bind(serde_json::to_string(&t.messages)?)
        .bind(t.started_at.map(micros))
        .bind(t.finished_at.map(micros))
        .bind(t.messages.len() as i64)
        .execute(&mut *tx)
        .await?;
        // The run's count of records extracted so far, and of its tasks'
        // messages.
        sqlx::query(
            "UPDATE api_runs SET records = (SELECT COALESCE(SUM(records), 0) FROM api_tasks \
             WHERE run_id = $1 AND kind = 'extraction'), \
             messages = (SELECT COALESCE(SUM(message_count), 0) FROM api_tasks WHERE run_id = $1) \
             WHERE id = $1",
        )
        .bind(&t.run_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn clear_api_tasks(&self, run_id: &str, from_position: i64, token: i64) -> Result<()> {
        let mut tx = self.begin().await?;
        if let Err(e) = self.holds(&mut tx, run_id, token).await {
            let _ = tx.rollback().await;
            return Err(e);
        }
        sqlx::query("DELETE FROM api_tasks WHERE run_id = $1 AND position >= $2")
            .bind(run_id)
            .bind(from_position)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM api_run_tables WHERE run_id = $1")
            .bind(run_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn api_tasks(&self, run_id: &str) -> Result<Vec<ApiTask>> {
        let rows = sqlx::query(
            "SELECT run_id, position, name, kind, table_name, status, records, messages, \
             started_at, finished_at FROM api_tasks WHERE run_id = $1 ORDER BY position",
        )
        .bind(run_id)
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(task_from_row).collect()
    }

    async fn put_api_run_table(&self, t: &ApiRunTable) -> Result<()> {
        sqlx::query(
            "INSERT INTO api_run_tables (run_id, table_name, columns, records) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (run_id, table_name) DO UPDATE SET columns = excluded.columns, \
             records = excluded.records",
        )
        .bind(&t.run_id)
        .bind(&t.table)
        .bind(serde_json::to_string(&t.columns)?)
        .bind(t.records)
        .execute(&self.write)
        .await?;
        Ok(())
    }

    async fn api_run_tables(&self, run_id: &str) -> Result<Vec<ApiRunTable>> {
        let rows = sqlx::query(
            "SELECT run_id, table_name, columns, records FROM api_run_tables WHERE run_id = $1 \
             ORDER BY table_name",
        )
        .bind(run_id)
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ApiRunTable {
                    run_id: r.try_get("run_id")?,
                    table: r.try_get("table_name")?,
                    columns: serde_json::from_value(parse_json(r, "columns")?)?,
                    records: r.try_get("records")?,
                })
            })
            .collect()
    }

    async fn api_data_load(&self, run_id: &str) -> Result<Option<DataLoad>> {
        let row = sqlx::query(
            "SELECT run_id, tables, records, created_at FROM api_data_loads WHERE run_id = $1",
        )
        .bind(run_id)
        .fetch_optional(&self.read)
        .await?;
        row.map(|r| {
            Ok(DataLoad {
                run_id: r.try_get("run_id")?,
                tables: r.try_get("tables")?,
                records: r.try_get("records")?,
                created_at: ts(&r, "created_at")?,
            })
        })
        .transpose()
    }
}

impl SqlStore {
    /// A page of runs sorted by status or type: each group (one rank of
    /// the sort) read in seq order through its index, from the cursor's
    /// group on, until the page is full — never the whole history sorted.
    async fn page_by_groups(
        &self,
        org: &OrganizationId,
        source: &str,
        page: &ApiRunPage,
        groups: Vec<(i64, &'static str, Vec<&'static str>)>,
    ) -> Result<Vec<ApiRunRow>> {
        let (cmp, order) = if page.ascending {
            (">", "ASC")
        } else {
            ("<", "DESC")
        };
        let mut out: Vec<ApiRunRow> = Vec::new();
        for (rank, column, values) in groups {
            let seq_after = match page.after {
                // Groups before the cursor's, in the page's order, are done.
                Some((k, _)) if (page.ascending && rank < k) || (!page.ascending && rank > k) => {
                    continue
                }
                Some((k, seq)) if k == rank => Some(seq),
                _ => None,
            };
            let left = page.limit as usize - out.len();
            if left == 0 {
                break;
            }
            let marks: Vec<String> = (0..values.len()).map(|i| format!("${}", 3 + i)).collect();
            let mut n = 3 + values.len();
            let mut sql = format!(
                "SELECT {RUN_COLUMNS}, {MESSAGES} AS message_total FROM api_runs \
                 WHERE organization_id = $1 AND source_name = $2 AND {column} IN ({})",
                marks.join(", ")
            );
            // The other filter (a sort by status keeps a type filter, and
            // the other way round).
            let other_type = (column == "status").then_some(page.run_type).flatten();
            let other_statuses: &[RunStatus] = if column == "run_type" {
                &page.statuses
            } else {
                &[]
            };
            if other_type.is_some() {
                sql.push_str(&format!(" AND run_type = ${n}"));
                n += 1;
            }
            if !other_statuses.is_empty() {
                let m: Vec<String> = (0..other_statuses.len())
                    .map(|i| format!("${}", n + i))
                    .collect();
                sql.push_str(&format!(" AND status IN ({})", m.join(", ")));
                n += other_statuses.len();
            }
            if seq_after.is_some() {
                sql.push_str(&format!(" AND seq {cmp} ${n}"));
                n += 1;
            }
            sql.push_str(&format!(" ORDER BY seq {order} LIMIT ${n}"));
            let mut q = sqlx::query(&sql).bind(org.as_str()).bind(source);
            for v in &values {
                q = q.bind(*v);
            }
            if let Some(t) = other_type {
                q = q.bind(t.as_str());
            }
            for st in other_statuses {
                q = q.bind(st.as_str());
            }
            if let Some(seq) = seq_after {
                q = q.bind(seq);
            }
            let rows = q.bind(left as i64).fetch_all(&self.read).await?;
            for row in &rows {
                out.push(ApiRunRow {
                    run: run_from_row(row)?,
                    messages: row.try_get("message_total")?,
                    key: rank,
                });
            }
        }
        Ok(out)
    }
}
