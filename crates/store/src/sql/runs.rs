//! [`RunStore`] over SQL: runs, the engine's steps on them (their leases
//! through [`super::lease`]) and their logs.

use super::*;
use crate::RunStore;

#[async_trait]
impl RunStore for SqlStore {
    async fn create_run(&self, run: &NewRun, queue: Option<&str>) -> Result<(Run, bool)> {
        // Without an idempotency key, one statement (its own transaction).
        if run.idempotency_key.is_none() {
            return Ok((insert_run(&self.write, run, queue).await?, true));
        }
        let mut tx = self.begin().await?;
        if let Some(key) = &run.idempotency_key {
            if let Some(earlier) = run_by_idempotency_key(&mut *tx, &run.deployment_id, key).await?
            {
                return Ok((earlier, false));
            }
        }
        let row = insert_run(&mut *tx, run, queue).await;
        match row {
            Ok(run) => {
                tx.commit().await?;
                Ok((run, true))
            }
            // Two submits with one key raced: the other one won; answer it.
            Err(e) => match (e, &run.idempotency_key) {
                (StoreError::Conflict(_), Some(key)) => {
                    drop(tx);
                    let earlier =
                        run_by_idempotency_key(&self.write, &run.deployment_id, key).await?;
                    Ok((
                        earlier.ok_or_else(|| not_found("run with idempotency key", key))?,
                        false,
                    ))
                }
                (e, _) => Err(e),
            },
        }
    }

    async fn get_run(&self, org: &OrganizationId, id: &RunId) -> Result<Run> {
        let sql = format!("SELECT {RUN_COLUMNS} FROM runs WHERE organization_id = $1 AND id = $2");
        let row = sqlx::query(&sql)
            .bind(org.as_str())
            .bind(id.as_str())
            .fetch_optional(&self.read)
            .await?
            .ok_or_else(|| not_found("run", id))?;
        run_from_row(&row)
    }

    async fn list_runs(
        &self,
        org: &OrganizationId,
        dep: &DeploymentId,
        trigger: Option<&TriggerId>,
        page: PageRequest,
    ) -> Result<Page<Run>> {
        let (cmp, order) = if page.forward {
            (">", "ASC")
        } else {
            ("<", "DESC")
        };
        let after = page
            .after
            .unwrap_or(if page.forward { 0 } else { i64::MAX });
        let trigger_clause = if trigger.is_some() {
            " AND trigger_id = $5"
        } else {
            ""
        };
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE organization_id = $1 AND deployment_id = $2 \
             AND seq {cmp} $3{trigger_clause} ORDER BY seq {order} LIMIT $4"
        );
        let mut query = sqlx::query(&sql)
            .bind(org.as_str())
            .bind(dep.as_str())
            .bind(after)
            .bind(page.limit as i64 + 1);
        if let Some(t) = trigger {
            query = query.bind(t.as_str());
        }
        let rows = query.fetch_all(&self.read).await?;
        let mut items = rows.iter().map(run_from_row).collect::<Result<Vec<_>>>()?;
        let more = items.len() > page.limit as usize;
        items.truncate(page.limit as usize);
        let next = if more {
            items.last().map(|r| r.seq)
        } else {
            None
        };
        Ok(Page { items, next })
    }

    async fn list_attempts(&self, run: &RunId) -> Result<Vec<RunAttempt>> {
        let rows = sqlx::query(
            "SELECT run_id, attempt, worker, started_at, running_at, finished_at, outcome, error \
             FROM run_attempts WHERE run_id = $1 ORDER BY attempt",
        )
        .bind(run.as_str())
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(RunAttempt {
                    run_id: RunId::parse(&row.try_get::<String, _>("run_id")?)?,
                    attempt: row.try_get::<i64, _>("attempt")? as i32,
                    worker: row.try_get("worker")?,
                    started_at: ts(row, "started_at")?,
                    running_at: opt_ts(row, "running_at")?,
                    finished_at: opt_ts(row, "finished_at")?,
                    outcome: row.try_get("outcome")?,
                    error: row.try_get("error")?,
                })
            })
            .collect()
    }

    async fn schedule(&self, now: Timestamp) -> Result<u64> {
        use RunStatus::*;
        Submitted.transition(Rejected)?;
        Submitted.transition(Pending)?;
        Pending.transition(Runnable)?;
        let now = micros(now);
        let mut tx = self.begin().await?;
        // One scheduler at a time, so two never free the same queue twice;
        // what it writes here is recomputed if a database crash loses it.
        self.lock_exclusively(&mut tx, SCHEDULER_LOCK, Commit::Recomputable)
            .await?;
        // Admission: a SUBMITTED run whose code is missing is REJECTED,
        // one outside any queue (and due) becomes RUNNABLE at once (PENDING
        // and then RUNNABLE within this transaction), one of a queue
        // PENDING. Each statement names one status: PostgreSQL then scans
        // the status index itself (a bitmap scan over two statuses would
        // not mark the entries of rows updated since as dead, and would
        // read them again on every step).
        const MISSING: &str = "NOT EXISTS (SELECT 1 FROM versions v \
             WHERE v.id = runs.version_id AND v.archive IS NOT NULL)";
        let admitted: Vec<String> = sqlx::query_scalar(&format!(
            "UPDATE runs SET status = CASE WHEN {MISSING} THEN 'REJECTED' \
             WHEN queue IS NULL AND not_before <= $1 THEN 'RUNNABLE' ELSE 'PENDING' END, \
             finished_at = CASE WHEN {MISSING} THEN $1 ELSE finished_at END, \
             error = CASE WHEN {MISSING} THEN 'the run''s version was deleted or its code was never uploaded' \
             ELSE error END, modified_at = $1 \
             WHERE status = 'SUBMITTED' RETURNING status"
        ))
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
        let admitted = admitted.iter().filter(|s| s.as_str() == "RUNNABLE").count() as u64;
        // A PENDING run outside any queue whose time has come (a retry's).
        let due = sqlx::query(
            "UPDATE runs SET status = 'RUNNABLE', modified_at = $1 \
             WHERE status = 'PENDING' AND queue IS NULL AND not_before <= $1",
        )
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let free = admitted + due;
        // A distributed queue runs one run at a time, in submission order:
        // only its oldest PENDING run may start, and only when none is active.
        let queued = sqlx::query(&format!(
            "UPDATE runs SET status = 'RUNNABLE', modified_at = $1 WHERE not_before <= $1 \
             AND seq IN (SELECT MIN(p.seq) FROM runs p WHERE p.status = 'PENDING' \
             AND p.queue IS NOT NULL AND NOT EXISTS (SELECT 1 FROM runs a \
             WHERE a.queue = p.queue AND (a.status = 'RUNNABLE' OR a.status IN {LEASED})) \
             GROUP BY p.queue)"
        ))
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(free + queued)
    }

    async fn claim(
        &self,
        worker: &str,
        limit: u32,
        ttl: Duration,
        now: Timestamp,
    ) -> Result<Vec<Lease>> {
        // Each claimed run's attempt is recorded by the claim's statement:
        // on PostgreSQL a data-modifying WITH, on SQLite a trigger
        // (migration 15).
        let rows = RUNS
            .claim(
                &self.write,
                self.dialect,
                worker,
                limit,
                ttl,
                now,
                (self.dialect == Dialect::Postgres).then_some(
                    "INSERT INTO run_attempts (run_id, attempt, worker, started_at, outcome) \
                     SELECT id, attempt, $1, $3, 'RUNNING' FROM claimed",
                ),
            )
            .await?;
        let mut leases = Vec::with_capacity(rows.len());
        for row in &rows {
            let run = run_from_row(row)?;
            leases.push(Lease {
                attempt: run.attempt,
                token: run.lease_token,
                run,
            });
        }
        leases.sort_by_key(|l| l.run.seq);
        Ok(leases)
    }

    async fn mark_running(&self, run: &RunId, token: i64, now: Timestamp) -> Result<RunStatus> {
        // The run and its attempt in one statement (one round trip and one
        // commit instead of four): PostgreSQL with a data-modifying WITH,
        // SQLite with a trigger (migration 14). A run that did not move is
        // answered below.
        RunStatus::Starting.transition(RunStatus::Running)?;
        let moved = sqlx::query(match self.dialect {
            Dialect::Postgres => {
                "WITH moved AS (UPDATE runs SET status = 'RUNNING', modified_at = $3 \
                 WHERE id = $1 AND lease_token = $2 AND status = 'STARTING' RETURNING id, attempt) \
                 UPDATE run_attempts a SET running_at = $3 FROM moved \
                 WHERE a.run_id = moved.id AND a.attempt = moved.attempt RETURNING a.attempt"
            }
            Dialect::Sqlite => {
                "UPDATE runs SET status = 'RUNNING', modified_at = $3 \
                 WHERE id = $1 AND lease_token = $2 AND status = 'STARTING' RETURNING attempt"
            }
        })
        .bind(run.as_str())
        .bind(token)
        .bind(micros(now))
        .fetch_optional(&self.write)
        .await?;
        if moved.is_some() {
            return Ok(RunStatus::Running);
        }
        let mut tx = self.begin().await?;
        let moved = RUNS.mark_running(&mut tx, run.as_str(), token, now).await?;
        if let Some(attempt) = moved {
            sqlx::query(
                "UPDATE run_attempts SET running_at = $1 WHERE run_id = $2 AND attempt = $3",
            )
            .bind(micros(now))
            .bind(run.as_str())
            .bind(attempt)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            return Ok(RunStatus::Running);
        }
        let current = self.lock_run(&mut tx, run).await?;
        if current.lease_token != token || !current.status.is_leased() {
            return Err(StoreError::LeaseLost(run.to_string()));
        }
        Ok(current.status)
    }

    async fn heartbeat(
        &self,
        run: &RunId,
        token: i64,
        ttl: Duration,
        now: Timestamp,
    ) -> Result<RunStatus> {
        RUNS.heartbeat(&self.write, run.as_str(), token, ttl, now)
            .await
    }

    async fn finish(
        &self,
        run: &RunId,
        token: i64,
        outcome: &AttemptOutcome,
        retry: RetryPolicy,
        now: Timestamp,
        tail: &[(Timestamp, String)],
    ) -> Result<RunStatus> {
        if *outcome == AttemptOutcome::Succeeded {
            if let Some(ended) = succeed(&self.write, self.dialect, run, token, now, tail).await? {
                return Ok(ended);
            }
        }
        let mut tx = self.begin().await?;
        let next = self
            .finish_in(&mut tx, run, token, outcome, retry, now, tail)
            .await?;
        tx.commit().await?;
        Ok(next)
    }

    async fn reap(&self, retry: RetryPolicy, now: Timestamp) -> Result<Vec<RunId>> {
        let mut tx = self.begin().await?;
        let rows = RUNS.expired(&mut tx, self.dialect, now).await?;
        let now = micros(now);
        let mut reaped = Vec::with_capacity(rows.len());
        for row in &rows {
            let run = run_from_row(row)?;
            let next = run
                .status
                .after_attempt(AttemptEnd::Lost, run.attempt, run.retry_count);
            run.status.transition(next)?;
            let error = lease::lost(run.attempt, run.lease_owner.as_deref());
            end_attempt(
                &mut tx,
                self.dialect,
                &run,
                next,
                AttemptEnd::Lost,
                Some(error),
                retry,
                now,
            )
            .await?;
            reaped.push(run.id);
        }
        tx.commit().await?;
        Ok(reaped)
    }

    async fn request_cancel(
        &self,
        org: &OrganizationId,
        id: &RunId,
        now: Timestamp,
    ) -> Result<Run> {
        let mut tx = self.begin().await?;
        let run = self.lock_run(&mut tx, id).await?;
        if &run.organization_id != org {
            return Err(not_found("run", id));
        }
        let Some(next) = run.status.on_cancel() else {
            return Ok(run);
        };
        run.status.transition(next)?;
        let finished = next.is_final().then_some(micros(now));
        let sql = format!(
            "UPDATE runs SET status = $1, modified_at = $2, finished_at = $3 \
             WHERE id = $4 AND status = $5 RETURNING {RUN_COLUMNS}"
        );
        let row = sqlx::query(&sql)
            .bind(next.as_str())
            .bind(micros(now))
            .bind(finished)
            .bind(id.as_str())
            .bind(run.status.as_str())
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        run_from_row(&row)
    }

    async fn append_logs(
        &self,
        run: &RunId,
        token: i64,
        attempt: i32,
        events: &[(Timestamp, String)],
    ) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin().await?;
        let sql = format!(
            "SELECT lease_token FROM runs WHERE id = $1{}",
            self.dialect.for_share()
        );
        let held: Option<i64> = sqlx::query_scalar(&sql)
            .bind(run.as_str())
            .fetch_optional(&mut *tx)
            .await?;
        if held != Some(token) {
            return Err(StoreError::LeaseLost(run.to_string()));
        }
        insert_logs(&mut tx, run, attempt, events).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn read_logs(&self, run: &RunId, q: LogQuery) -> Result<Vec<LogEvent>> {
        let mut sql = String::from("SELECT seq, ts, message FROM log_events WHERE run_id = $1");
        let mut binds: Vec<i64> = Vec::new();
        let mut clause = |sql: &mut String, cond: &str, v: i64| {
            binds.push(v);
            sql.push_str(&format!(" AND {cond} ${}", binds.len() + 1));
        };
        if let Some(after) = q.after {
            clause(&mut sql, "seq >", after);
        }
        if let Some(before) = q.before {
            clause(&mut sql, "seq <", before);
        }
        if let Some(t) = q.start_time {
            clause(&mut sql, "ts >=", micros(t));
        }
        if let Some(t) = q.end_time {
            clause(&mut sql, "ts <=", micros(t));
        }
        sql.push_str(if q.descending {
            " ORDER BY seq DESC"
        } else {
            " ORDER BY seq ASC"
        });
        sql.push_str(&format!(" LIMIT {}", q.limit));
        let mut query = sqlx::query(&sql).bind(run.as_str());
        for b in binds {
            query = query.bind(b);
        }
        let rows = query.fetch_all(&self.read).await?;
        rows.iter()
            .map(|row| {
                Ok(LogEvent {
                    seq: row.try_get("seq")?,
                    timestamp: ts(row, "ts")?,
                    message: row.try_get("message")?,
                })
            })
            .collect()
    }
}

/// Ends an attempt whose code succeeded while its run was RUNNING or
/// CANCELING under `token` (it ends SUCCEEDED from either, whatever its
/// attempt and retries): the run's row, its attempt's and the attempt's last log lines (as
/// JSON, so the text is fixed and its prepared statement reused). On
/// PostgreSQL one statement does all three. On SQLite one statement does
/// the run's row and, by a trigger (migration 14), its attempt's; the lines
/// go in one just before, while the run is still this attempt's (lines of
/// an attempt whose end is then refused stay, as what it printed). None
/// when the run is not in that state under `token`: the caller's
/// transaction reads why.
async fn succeed(
    db: &AnyPool,
    dialect: Dialect,
    run: &RunId,
    token: i64,
    now: Timestamp,
    tail: &[(Timestamp, String)],
) -> Result<Option<RunStatus>> {
    RunStatus::Running.transition(RunStatus::Succeeded)?;
    RunStatus::Canceling.transition(RunStatus::Succeeded)?;
    let lines = Value::Array(
        tail.iter()
            .map(|(ts, message)| serde_json::json!([micros(*ts), no_nul(message)]))
            .collect(),
    )
    .to_string();
    if dialect == Dialect::Sqlite && !tail.is_empty() {
        sqlx::query(
            "INSERT INTO log_events (run_id, attempt, ts, message) \
             SELECT r.id, r.attempt, json_extract(l.value, '$[0]'), json_extract(l.value, '$[1]') \
             FROM runs r, json_each($3) l \
             WHERE r.id = $1 AND r.lease_token = $2 AND r.status IN ('RUNNING', 'CANCELING') \
             ORDER BY l.key",
        )
        .bind(run.as_str())
        .bind(token)
        .bind(&lines)
        .execute(db)
        .await?;
    }
    let ended = match dialect {
        Dialect::Postgres => sqlx::query(
            "WITH moved AS (UPDATE runs SET status = 'SUCCEEDED', lease_owner = NULL, \
             lease_expires_at = NULL, lease_token = lease_token + 1, not_before = $3, error = NULL, \
             modified_at = $3, finished_at = $3 \
             WHERE id = $1 AND lease_token = $2 AND status IN ('RUNNING', 'CANCELING') \
             RETURNING id, attempt), \
             logged AS (INSERT INTO log_events (run_id, attempt, ts, message) \
             SELECT moved.id, moved.attempt, (l.line->>0)::bigint, l.line->>1 \
             FROM moved, json_array_elements($4::json) WITH ORDINALITY AS l(line, n) ORDER BY l.n) \
             UPDATE run_attempts a SET finished_at = $3, outcome = 'SUCCEEDED', error = NULL \
             FROM moved WHERE a.run_id = moved.id AND a.attempt = moved.attempt RETURNING a.attempt",
        )
        .bind(run.as_str())
        .bind(token)
        .bind(micros(now))
        .bind(lines),
        Dialect::Sqlite => sqlx::query(
            "UPDATE runs SET status = 'SUCCEEDED', lease_owner = NULL, lease_expires_at = NULL, \
             lease_token = lease_token + 1, not_before = $3, error = NULL, modified_at = $3, \
             finished_at = $3 \
             WHERE id = $1 AND lease_token = $2 AND status IN ('RUNNING', 'CANCELING') \
             RETURNING attempt",
        )
        .bind(run.as_str())
        .bind(token)
        .bind(micros(now)),
    }
    .fetch_optional(db)
    .await?;
    Ok(ended.map(|_| RunStatus::Succeeded))
}

/// Inserts an attempt's log lines, a few hundred a statement.
pub(super) async fn insert_logs(
    tx: &mut Transaction<'static, Any>,
    run: &RunId,
    attempt: i32,
    events: &[(Timestamp, String)],
) -> Result<()> {
    for chunk in events.chunks(200) {
        let mut sql = String::from("INSERT INTO log_events (run_id, attempt, ts, message) VALUES ");
        for i in 0..chunk.len() {
            let b = i * 2 + 3;
            if i > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&format!("($1, $2, ${b}, ${})", b + 1));
        }
        let mut query = sqlx::query(&sql).bind(run.as_str()).bind(attempt as i64);
        for (ts, message) in chunk {
            query = query.bind(micros(*ts)).bind(no_nul(message).into_owned());
        }
        query.execute(&mut **tx).await?;
    }
    Ok(())
}
