//! [`ImportStore`] over SQL: table import jobs, their queries and tasks.

use super::datalake::{into_page, keyset};
use super::lease::{Leased, LEASED};
use super::named::SOURCES;
use super::*;
use crate::{ImportStore, JobFilter, QueryOutcome};

const JOB_COLUMNS: &str = "seq, id, organization_id, space, name, status, spec, source_sealed, \
     destination_sealed, source_shown, destination_shown, destination_key, next_query_at, \
     created_at, modified_at";

fn job_from_row(row: &AnyRow) -> Result<ImportJob> {
    let status: String = row.try_get("status")?;
    let spec: String = row.try_get("spec")?;
    Ok(ImportJob {
        seq: row.try_get("seq")?,
        id: JobId::parse(&row.try_get::<String, _>("id")?)?,
        organization_id: OrganizationId::parse(&row.try_get::<String, _>("organization_id")?)?,
        space: row.try_get("space")?,
        name: row.try_get("name")?,
        status: JobStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown job status `{status}`")))?,
        spec: serde_json::from_str(&spec)?,
        source_sealed: row.try_get("source_sealed")?,
        destination_sealed: row.try_get("destination_sealed")?,
        source_shown: row.try_get("source_shown")?,
        destination_shown: row.try_get("destination_shown")?,
        destination_key: row.try_get("destination_key")?,
        next_query_at: opt_ts(row, "next_query_at")?,
        created_at: ts(row, "created_at")?,
        modified_at: ts(row, "modified_at")?,
    })
}

const QUERY_COLUMNS: &str = "seq, id, job_id, organization_id, status, trigger_kind, \
     requested_start, requested_end, window_start, window_end, records, error, attempt, \
     lease_owner, lease_token, created_at, started_at, finished_at";

fn query_from_row(row: &AnyRow) -> Result<Query> {
    let status: String = row.try_get("status")?;
    let trigger: String = row.try_get("trigger_kind")?;
    let requested = match (
        row.try_get::<Option<String>, _>("requested_start")?,
        row.try_get::<Option<String>, _>("requested_end")?,
    ) {
        (Some(a), Some(b)) => Some((a, b)),
        _ => None,
    };
    Ok(Query {
        seq: row.try_get("seq")?,
        id: QueryId::parse(&row.try_get::<String, _>("id")?)?,
        job_id: JobId::parse(&row.try_get::<String, _>("job_id")?)?,
        organization_id: OrganizationId::parse(&row.try_get::<String, _>("organization_id")?)?,
        status: status
            .parse()
            .map_err(|e| StoreError::Corrupt(format!("{e}")))?,
        trigger: QueryTrigger::parse(&trigger)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown query trigger `{trigger}`")))?,
        requested,
        window_start: row.try_get("window_start")?,
        window_end: row.try_get("window_end")?,
        records: row.try_get("records")?,
        error: row.try_get("error")?,
        attempt: row.try_get::<i64, _>("attempt")? as i32,
        lease_owner: row.try_get("lease_owner")?,
        lease_token: row.try_get("lease_token")?,
        created_at: ts(row, "created_at")?,
        started_at: opt_ts(row, "started_at")?,
        finished_at: opt_ts(row, "finished_at")?,
    })
}

fn task_from_row(row: &AnyRow) -> Result<QueryTask> {
    let messages: String = row.try_get("messages")?;
    Ok(QueryTask {
        query_id: QueryId::parse(&row.try_get::<String, _>("query_id")?)?,
        seq: row.try_get::<i64, _>("seq")? as i32,
        name: row.try_get("name")?,
        status: row.try_get("status")?,
        table: row.try_get("table_name")?,
        records: row.try_get("records")?,
        messages: serde_json::from_str(&messages)?,
        started_at: ts(row, "started_at")?,
        finished_at: opt_ts(row, "finished_at")?,
    })
}

/// Statuses of a query that is not over.
const OPEN: &str = "('SUBMITTED', 'PENDING', 'RUNNABLE', 'STARTING', 'RUNNING', 'CANCELING')";
/// Import queries, as leased work.
const QUERIES: Leased = Leased {
    table: "import_queries",
    columns: QUERY_COLUMNS,
    modified_at: false,
};

/// How many times a query whose worker was lost is tried in all.
const QUERY_ATTEMPTS: i32 = 3;

impl SqlStore {
    async fn lock_query(&self, tx: &mut Transaction<'static, Any>, id: &QueryId) -> Result<Query> {
        QUERIES
            .lock(tx, self.dialect, id.as_str())
            .await?
            .as_ref()
            .map(query_from_row)
            .transpose()?
            .ok_or_else(|| not_found("query", id))
    }

    async fn insert_query(
        &self,
        tx: &mut Transaction<'static, Any>,
        q: &Query,
        lease_expires_at: Option<i64>,
    ) -> Result<Query> {
        let (rs, re) = match &q.requested {
            Some((a, b)) => (Some(a.as_str()), Some(b.as_str())),
            None => (None, None),
        };
        let sql = format!(
            "INSERT INTO import_queries (id, job_id, organization_id, status, trigger_kind, \
             requested_start, requested_end, attempt, lease_owner, lease_token, \
             lease_expires_at, created_at, started_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
             RETURNING {QUERY_COLUMNS}"
        );
        let row = sqlx::query(&sql)
            .bind(q.id.as_str())
            .bind(q.job_id.as_str())
            .bind(q.organization_id.as_str())
            .bind(q.status.as_str())
            .bind(q.trigger.as_str())
            .bind(rs)
            .bind(re)
            .bind(q.attempt as i64)
            .bind(q.lease_owner.as_deref())
            .bind(q.lease_token)
            .bind(lease_expires_at)
            .bind(micros(q.created_at))
            .bind(q.started_at.map(micros))
            .fetch_one(&mut **tx)
            .await?;
        query_from_row(&row)
    }
}

#[async_trait]
impl ImportStore for SqlStore {
    async fn create_job(&self, job: &ImportJob) -> Result<()> {
        let made = sqlx::query(
            "INSERT INTO import_jobs (id, organization_id, space, name, status, spec, \
             source_sealed, destination_sealed, source_shown, destination_shown, next_query_at, \
             created_at, modified_at, destination_key) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
        )
        .bind(job.id.as_str())
        .bind(job.organization_id.as_str())
        .bind(&job.space)
        .bind(&job.name)
        .bind(job.status.as_str())
        .bind(serde_json::to_string(&job.spec)?)
        .bind(&job.source_sealed)
        .bind(&job.destination_sealed)
        .bind(&job.source_shown)
        .bind(&job.destination_shown)
        .bind(job.next_query_at.map(micros))
        .bind(micros(job.created_at))
        .bind(micros(job.modified_at))
        .bind(job.destination_key.as_deref())
        .execute(&self.write)
        .await
        .map_err(StoreError::from);
        match made {
            // Raced by another job for the same table: name it.
            Err(StoreError::Conflict(m)) => match &job.destination_key {
                Some(key) => match self.job_loading(key).await? {
                    Some(owner) => Err(StoreError::Conflict(format!(
                        "the destination table is loaded by job {} already",
                        owner.id
                    ))),
                    None => Err(StoreError::Conflict(m)),
                },
                None => Err(StoreError::Conflict(m)),
            },
            other => other.map(|_| ()),
        }
    }

    async fn add_source(&self, grant: &SourceGrant) -> Result<()> {
        SOURCES.put(self, grant, false).await
    }

    async fn sources_of(&self, org: &OrganizationId) -> Result<Vec<SourceGrant>> {
        SOURCES.of(self, org).await
    }

    async fn remove_source(&self, org: &OrganizationId, name: &str) -> Result<()> {
        SOURCES.remove(self, org, name).await
    }

    async fn job_loading(&self, destination_key: &str) -> Result<Option<ImportJob>> {
        let sql = format!(
            "SELECT {JOB_COLUMNS} FROM import_jobs WHERE destination_key = $1 \
             AND status <> 'deleted'"
        );
        let row = sqlx::query(&sql)
            .bind(destination_key)
            .fetch_optional(&self.read)
            .await?;
        row.as_ref().map(job_from_row).transpose()
    }

    async fn find_job(&self, id: &JobId) -> Result<ImportJob> {
        let sql = format!("SELECT {JOB_COLUMNS} FROM import_jobs WHERE id = $1");
        let row = sqlx::query(&sql)
            .bind(id.as_str())
            .fetch_optional(&self.read)
            .await?;
        row.as_ref()
            .map(job_from_row)
            .transpose()?
            .ok_or_else(|| not_found("job", id))
    }

    async fn list_jobs(&self, filter: &JobFilter, page: PageRequest) -> Result<Page<ImportJob>> {
        let (cmp, order, after) = keyset(page);
        let sql = format!(
            "SELECT {JOB_COLUMNS} FROM import_jobs WHERE organization_id = $1 \
             AND ($2 IS NULL OR space = $2) AND ($3 = 1 OR status <> 'deleted') \
             AND ($4 IS NULL OR lower(name) LIKE $4 OR id LIKE $4) \
             AND seq {cmp} $5 ORDER BY seq {order} LIMIT $6"
        );
        let search = filter
            .search
            .as_ref()
            .filter(|s| !s.is_empty())
            .map(|s| format!("%{}%", s.to_lowercase()));
        let rows = sqlx::query(&sql)
            .bind(filter.organization.as_str())
            .bind(filter.space.as_deref())
            .bind(filter.include_deleted as i64)
            .bind(search)
            .bind(after)
            .bind(page.limit as i64 + 1)
            .fetch_all(&self.read)
            .await?;
        let items = rows.iter().map(job_from_row).collect::<Result<Vec<_>>>()?;
        Ok(into_page(items, page.limit, |j| j.seq))
    }

    async fn count_jobs(&self, filter: &JobFilter) -> Result<i64> {
        let search = filter
            .search
            .as_ref()
            .filter(|s| !s.is_empty())
            .map(|s| format!("%{}%", s.to_lowercase()));
        Ok(sqlx::query_scalar(
            "SELECT COUNT(*) FROM import_jobs WHERE organization_id = $1 \
             AND ($2 IS NULL OR space = $2) AND ($3 = 1 OR status <> 'deleted') \
             AND ($4 IS NULL OR lower(name) LIKE $4 OR id LIKE $4)",
        )
        .bind(filter.organization.as_str())
        .bind(filter.space.as_deref())
        .bind(filter.include_deleted as i64)
        .bind(search)
        .fetch_one(&self.read)
        .await?)
    }

    async fn update_job(&self, job: &ImportJob) -> Result<()> {
        let mut tx = self.begin().await?;
        let changed = sqlx::query(
            "UPDATE import_jobs SET name = $1, status = $2, spec = $3, source_sealed = $4, \
             destination_sealed = $5, source_shown = $6, destination_shown = $7, \
             next_query_at = $8, modified_at = $9 WHERE id = $10 AND organization_id = $11",
        )
        .bind(&job.name)
        .bind(job.status.as_str())
        .bind(serde_json::to_string(&job.spec)?)
        .bind(&job.source_sealed)
        .bind(&job.destination_sealed)
        .bind(&job.source_shown)
        .bind(&job.destination_shown)
        .bind(job.next_query_at.map(micros))
        .bind(micros(job.modified_at))
        .bind(job.id.as_str())
        .bind(job.organization_id.as_str())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if changed == 0 {
            return Err(not_found("job", &job.id));
        }
        if job.status != JobStatus::Active {
            // A paused or deleted job starts nothing more: its waiting
            // queries end CANCELLED (running ones finish their window).
            RunStatus::Runnable.transition(RunStatus::Cancelled)?;
            RunStatus::Pending.transition(RunStatus::Cancelled)?;
            sqlx::query(
                "UPDATE import_queries SET status = 'CANCELLED', finished_at = $1, \
                 error = $2 WHERE job_id = $3 AND status IN ('PENDING', 'RUNNABLE')",
            )
            .bind(micros(job.modified_at))
            .bind(format!("the job was {}", job.status.as_str()))
            .bind(job.id.as_str())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn schedule_queries(&self, now: Timestamp) -> Result<Vec<Query>> {
        RunStatus::Submitted.transition(RunStatus::Pending)?;
        RunStatus::Pending.transition(RunStatus::Runnable)?;
        let sql = format!(
            "SELECT {JOB_COLUMNS} FROM import_jobs j WHERE status = 'active' \
             AND next_query_at IS NOT NULL AND next_query_at <= $1 \
             AND NOT EXISTS (SELECT 1 FROM import_queries q WHERE q.job_id = j.id \
             AND q.status IN {OPEN}) ORDER BY next_query_at LIMIT 100"
        );
        let due = sqlx::query(&sql)
            .bind(micros(now))
            .fetch_all(&self.read)
            .await?;
        let mut made = Vec::new();
        for row in &due {
            let job = job_from_row(row)?;
            let mut tx = self.begin().await?;
            let next = micros(now) + job.spec.ingestion.refresh().as_micros() as i64;
            // Whoever moves `next_query_at` first makes the query.
            let moved = sqlx::query(
                "UPDATE import_jobs SET next_query_at = $1 WHERE id = $2 \
                 AND next_query_at = $3 AND status = 'active'",
            )
            .bind(next)
            .bind(job.id.as_str())
            .bind(job.next_query_at.map(micros))
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if moved == 0 {
                continue;
            }
            let q = Query::new(
                job.id.clone(),
                job.organization_id.clone(),
                QueryTrigger::Schedule,
                None,
                now,
            );
            let q = self.insert_query(&mut tx, &q, None).await?;
            tx.commit().await?;
            made.push(q);
        }
        Ok(made)
    }

    async fn create_query(&self, query: &Query, lease: Option<Duration>) -> Result<Query> {
        let mut tx = self.begin().await?;
        let sql = format!(
            "SELECT status FROM import_jobs WHERE id = $1{}",
            self.dialect.for_share()
        );
        let status: Option<String> = sqlx::query_scalar(&sql)
            .bind(query.job_id.as_str())
            .fetch_optional(&mut *tx)
            .await?;
        match status.as_deref() {
            None => return Err(not_found("job", &query.job_id)),
            Some("active") => {}
            Some("deleted") => {
                return Err(StoreError::Conflict(format!(
                    "job {} is deleted: it starts no query (a deleted job stays deleted; \
                     create a new job for its table)",
                    query.job_id
                )))
            }
            Some(other) => {
                return Err(StoreError::Conflict(format!(
                    "job {} is {other}: it starts no query (resume it first)",
                    query.job_id
                )))
            }
        }
        let expires = lease.map(|ttl| micros(query.created_at) + ttl.as_micros() as i64);
        let q = self.insert_query(&mut tx, query, expires).await?;
        tx.commit().await?;
        Ok(q)
    }

    async fn get_query(&self, org: &OrganizationId, id: &QueryId) -> Result<Query> {
        let sql = format!(
            "SELECT {QUERY_COLUMNS} FROM import_queries WHERE id = $1 AND organization_id = $2"
        );
        let row = sqlx::query(&sql)
            .bind(id.as_str())
            .bind(org.as_str())
            .fetch_optional(&self.read)
            .await?;
        row.as_ref()
            .map(query_from_row)
            .transpose()?
            .ok_or_else(|| not_found("query", id))
    }

    async fn list_queries(&self, job: &JobId, page: PageRequest) -> Result<Page<Query>> {
        let (cmp, order, after) = keyset(page);
        let sql = format!(
            "SELECT {QUERY_COLUMNS} FROM import_queries WHERE job_id = $1 AND seq {cmp} $2 \
             ORDER BY seq {order} LIMIT $3"
        );
        let rows = sqlx::query(&sql)
            .bind(job.as_str())
            .bind(after)
            .bind(page.limit as i64 + 1)
            .fetch_all(&self.read)
            .await?;
        let items = rows
            .iter()
            .map(query_from_row)
            .collect::<Result<Vec<_>>>()?;
        Ok(into_page(items, page.limit, |q| q.seq))
    }

    async fn query_counts_of(
        &self,
        jobs: &[JobId],
    ) -> Result<std::collections::HashMap<JobId, (i64, i64, i64)>> {
        let mut counts = std::collections::HashMap::new();
        if jobs.is_empty() {
            return Ok(counts);
        }
        let marks = (1..=jobs.len())
            .map(|i| format!("${i}"))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "SELECT job_id, status, COUNT(*) AS n FROM import_queries \
             WHERE job_id IN ({marks}) GROUP BY job_id, status"
        );
        let mut query = sqlx::query(&sql);
        for j in jobs {
            query = query.bind(j.as_str());
        }
        for row in &query.fetch_all(&self.read).await? {
            let job = JobId::parse(&row.try_get::<String, _>("job_id")?)?;
            let status: String = row.try_get("status")?;
            let n: i64 = row.try_get("n")?;
            let c: &mut (i64, i64, i64) = counts.entry(job).or_default();
            match status.as_str() {
                "SUCCEEDED" => c.0 += n,
                "FAILED" | "REJECTED" => c.1 += n,
                "CANCELLED" => {}
                _ => c.2 += n,
            }
        }
        Ok(counts)
    }

    async fn claim_queries(
        &self,
        worker: &str,
        limit: u32,
        ttl: Duration,
        now: Timestamp,
    ) -> Result<Vec<Query>> {
        QUERIES
            .claim_into(self, worker, limit, ttl, now, query_from_row)
            .await
    }

    async fn query_running(&self, id: &QueryId, token: i64, now: Timestamp) -> Result<RunStatus> {
        QUERIES.start_alone(self, id.as_str(), token, now).await
    }

    async fn heartbeat_query(
        &self,
        id: &QueryId,
        token: i64,
        ttl: Duration,
        now: Timestamp,
    ) -> Result<RunStatus> {
        QUERIES
            .heartbeat(&self.write, id.as_str(), token, ttl, now)
            .await
    }

    async fn finish_query(
        &self,
        id: &QueryId,
        token: i64,
        outcome: &QueryOutcome,
        now: Timestamp,
    ) -> Result<RunStatus> {
        let mut tx = self.begin().await?;
        let ended = QUERIES
            .ending(&mut tx, self.dialect, id.as_str(), token)
            .await;
        let (from, row) = match ended {
            Ok(v) => v,
            Err(e) => {
                // At once: a dropped transaction's row lock would make
                // claimers skip the row until its connection is reused.
                let _ = tx.rollback().await;
                return Err(e);
            }
        };
        let q = query_from_row(&row)?;
        let (next, error, records, window) = match outcome {
            QueryOutcome::Succeeded {
                records,
                window_start,
                window_end,
            } => (
                RunStatus::Succeeded,
                None,
                *records,
                (window_start.clone(), window_end.clone()),
            ),
            QueryOutcome::Failed { error } if q.status == RunStatus::Canceling => {
                (RunStatus::Cancelled, Some(error.clone()), 0, (None, None))
            }
            QueryOutcome::Failed { error } => {
                (RunStatus::Failed, Some(error.clone()), 0, (None, None))
            }
        };
        // A query started by hand goes STARTING → RUNNING → end; one that
        // never reached RUNNING ends through it.
        from.transition(next)?;
        sqlx::query(
            "UPDATE import_queries SET status = $1, error = $2, records = $3, \
             window_start = COALESCE($4, window_start), window_end = COALESCE($5, window_end), \
             finished_at = $6, lease_expires_at = NULL WHERE id = $7",
        )
        .bind(next.as_str())
        .bind(error)
        .bind(records)
        .bind(window.0)
        .bind(window.1)
        .bind(micros(now))
        .bind(id.as_str())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(next)
    }

    async fn set_query_window(
        &self,
        id: &QueryId,
        token: i64,
        start: Option<&str>,
        end: Option<&str>,
    ) -> Result<()> {
        let changed = sqlx::query(
            "UPDATE import_queries SET window_start = $1, window_end = $2 \
             WHERE id = $3 AND lease_token = $4",
        )
        .bind(start)
        .bind(end)
        .bind(id.as_str())
        .bind(token)
        .execute(&self.write)
        .await?
        .rows_affected();
        if changed == 0 {
            return Err(StoreError::LeaseLost(id.to_string()));
        }
        Ok(())
    }

    async fn cancel_query(
        &self,
        org: &OrganizationId,
        id: &QueryId,
        now: Timestamp,
    ) -> Result<Query> {
        let mut tx = self.begin().await?;
        let q = self.lock_query(&mut tx, id).await?;
        if &q.organization_id != org {
            return Err(not_found("query", id));
        }
        let Some(next) = q.status.on_cancel() else {
            return Ok(q);
        };
        q.status.transition(next)?;
        let finished = next.is_final().then_some(micros(now));
        sqlx::query(
            "UPDATE import_queries SET status = $1, finished_at = COALESCE($2, finished_at), \
             error = COALESCE(error, 'cancelled') WHERE id = $3",
        )
        .bind(next.as_str())
        .bind(finished)
        .bind(id.as_str())
        .execute(&mut *tx)
        .await?;
        let q = self.lock_query(&mut tx, id).await?;
        tx.commit().await?;
        Ok(q)
    }

    async fn hand_back_query(&self, id: &QueryId, token: i64, now: Timestamp) -> Result<bool> {
        QUERIES
            .hand_back(&self.write, id.as_str(), token, now)
            .await
    }

    async fn reap_queries(&self, now: Timestamp) -> Result<Vec<QueryId>> {
        let mut tx = self.begin().await?;
        let reaped = QUERIES
            .give_back(&mut tx, self.dialect, now, QUERY_ATTEMPTS)
            .await?;
        tx.commit().await?;
        reaped.iter().map(|id| Ok(QueryId::parse(id)?)).collect()
    }

    async fn put_task(&self, task: &QueryTask, token: i64) -> Result<()> {
        let mut tx = self.begin().await?;
        let held: Option<i64> = sqlx::query_scalar(&format!(
            "SELECT lease_token FROM import_queries WHERE id = $1 AND status IN {LEASED}"
        ))
        .bind(task.query_id.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        if held != Some(token) {
            return Err(StoreError::LeaseLost(task.query_id.to_string()));
        }
        sqlx::query("DELETE FROM import_tasks WHERE query_id = $1 AND seq = $2")
            .bind(task.query_id.as_str())
            .bind(task.seq as i64)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO import_tasks (query_id, seq, name, status, table_name, records, \
             messages, started_at, finished_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(task.query_id.as_str())
        .bind(task.seq as i64)
        .bind(&task.name)
        .bind(&task.status)
        .bind(&task.table)
        .bind(task.records)
        .bind(serde_json::to_string(&task.messages)?)
        .bind(micros(task.started_at))
        .bind(task.finished_at.map(micros))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn list_tasks(&self, query: &QueryId) -> Result<Vec<QueryTask>> {
        let rows = sqlx::query(
            "SELECT query_id, seq, name, status, table_name, records, messages, started_at, \
             finished_at FROM import_tasks WHERE query_id = $1 ORDER BY seq",
        )
        .bind(query.as_str())
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(task_from_row).collect()
    }
}
