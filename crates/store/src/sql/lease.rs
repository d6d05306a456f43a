//! Leased work, written once: runs and import queries (and whatever else
//! workers come to claim) are picked, kept alive, moved to RUNNING and
//! reaped the same way.
//!
//! A table of leased work has `seq` (claim order), `id`, `status` (the run
//! states), `attempt`, `lease_token` (the fencing token: every claim and
//! every reap moves it on, so a write carrying an older token is refused),
//! `lease_owner`, `lease_expires_at`, `started_at` and `error`.

use std::time::Duration;

use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};

use super::{micros, Dialect, SqlStore};
use crate::{Result, StoreError};
use sluice_domain::time::Timestamp;
use sluice_domain::{AttemptEnd, RunStatus};

/// The statuses a lease is held in, as an SQL list.
pub(crate) const LEASED: &str = "('STARTING', 'RUNNING', 'CANCELING')";

/// One table of leased work.
pub(crate) struct Leased {
    pub table: &'static str,
    /// The columns a claim or a reap reads back.
    pub columns: &'static str,
    /// Whether the table keeps a `modified_at`, set by a claim and by the
    /// move to RUNNING.
    pub modified_at: bool,
}

impl Leased {
    /// What a claim and a move to RUNNING set besides the status (`$3`
    /// is now in both statements).
    fn stamp(&self) -> &'static str {
        if self.modified_at {
            ", modified_at = $3"
        } else {
            ""
        }
    }

    /// Moves up to `limit` RUNNABLE rows, oldest first, to STARTING under
    /// a new lease of `worker` until `now + ttl`; answers them. One
    /// statement (its own transaction when `db` is a pool). `record` is a
    /// statement over the claimed rows (`claimed`, with `$1` the worker and
    /// `$3` now) written in the same one, as a data-modifying WITH: on
    /// PostgreSQL only — a run's claim records its attempt so.
    ///
    /// The pick is a MATERIALIZED CTE: evaluated once. As an `IN
    /// (subquery)` PostgreSQL may rescan it, and with SKIP LOCKED each
    /// rescan picks other rows, so one claim could take more than `limit`.
    #[allow(clippy::too_many_arguments)]
    pub async fn claim<'c>(
        &self,
        db: impl sqlx::Executor<'c, Database = Any>,
        dialect: Dialect,
        worker: &str,
        limit: u32,
        ttl: Duration,
        now: Timestamp,
        record: Option<&str>,
    ) -> Result<Vec<AnyRow>> {
        RunStatus::Runnable.transition(RunStatus::Starting)?;
        let now = micros(now);
        let (table, columns) = (self.table, self.columns);
        let stamp = self.stamp();
        let pick = format!(
            "picked AS MATERIALIZED (SELECT seq FROM {table} WHERE status = 'RUNNABLE' \
             ORDER BY seq LIMIT $4{})",
            dialect.skip_locked()
        );
        let update = format!(
            "UPDATE {table} SET status = 'STARTING', attempt = attempt + 1, \
             lease_token = lease_token + 1, lease_owner = $1, lease_expires_at = $2, \
             started_at = COALESCE(started_at, $3), error = NULL{stamp} \
             WHERE status = 'RUNNABLE' AND seq IN (SELECT seq FROM picked) RETURNING {columns}"
        );
        let sql = match record {
            Some(record) => format!(
                "WITH {pick}, claimed AS ({update}), recorded AS ({record}) SELECT * FROM claimed"
            ),
            None => format!("WITH {pick} {update}"),
        };
        Ok(sqlx::query(&sql)
            .bind(worker)
            .bind(now + ttl.as_micros() as i64)
            .bind(now)
            .bind(limit as i64)
            .fetch_all(db)
            .await?)
    }

    /// Moves the lease of `id` holding `token` from STARTING to RUNNING;
    /// answers the attempt it moved, or None when it was not STARTING (the
    /// caller then checks the lease is still its own).
    pub async fn mark_running(
        &self,
        tx: &mut Transaction<'static, Any>,
        id: &str,
        token: i64,
        now: Timestamp,
    ) -> Result<Option<i64>> {
        RunStatus::Starting.transition(RunStatus::Running)?;
        let stamp = self.stamp();
        let sql = format!(
            "UPDATE {} SET status = 'RUNNING'{stamp} \
             WHERE id = $1 AND lease_token = $2 AND status = 'STARTING' RETURNING attempt",
            self.table
        );
        let mut query = sqlx::query(&sql).bind(id).bind(token);
        if self.modified_at {
            query = query.bind(micros(now));
        }
        let row = query.fetch_optional(&mut **tx).await?;
        row.map(|r| r.try_get::<i64, _>("attempt").map_err(StoreError::from))
            .transpose()
    }

    /// The row `id`, under a row lock (PostgreSQL) inside `tx`: what a
    /// step reads before it decides on a status move.
    pub async fn lock(
        &self,
        tx: &mut Transaction<'static, Any>,
        dialect: Dialect,
        id: &str,
    ) -> Result<Option<AnyRow>> {
        let sql = format!(
            "SELECT {} FROM {} WHERE id = $1{}",
            self.columns,
            self.table,
            dialect.for_update()
        );
        Ok(sqlx::query(&sql).bind(id).fetch_optional(&mut **tx).await?)
    }

    /// Renews the lease of `id` holding `token` until `now + ttl`; answers
    /// the status (CANCELING tells the holder to stop), or
    /// [`StoreError::LeaseLost`].
    pub async fn heartbeat(
        &self,
        pool: &sqlx::AnyPool,
        id: &str,
        token: i64,
        ttl: Duration,
        now: Timestamp,
    ) -> Result<RunStatus> {
        let status: Option<String> = sqlx::query_scalar(&format!(
            "UPDATE {} SET lease_expires_at = $1 \
             WHERE id = $2 AND lease_token = $3 AND status IN {LEASED} RETURNING status",
            self.table
        ))
        .bind(micros(now) + ttl.as_micros() as i64)
        .bind(id)
        .bind(token)
        .fetch_optional(pool)
        .await?;
        status
            .ok_or_else(|| StoreError::LeaseLost(id.to_owned()))?
            .parse()
            .map_err(|e| StoreError::Corrupt(format!("{e}")))
    }

    /// Gives the lease of `id` holding `token` back before it expires (its
    /// holder is shutting down and stopped the work, which committed
    /// nothing): RUNNABLE again at once for any process to claim, the token
    /// moved on so the holder's late writes are refused. A hand-back is
    /// not a failure: no error is recorded and no retry is spent. Answers
    /// whether it still held the lease (a run being cancelled is not
    /// handed back: its lease expires and the reaper ends it).
    pub async fn hand_back(
        &self,
        pool: &sqlx::AnyPool,
        id: &str,
        token: i64,
        now: Timestamp,
    ) -> Result<bool> {
        RunStatus::Running
            .after_attempt(AttemptEnd::HandedBack, 1, 0)
            .transition(RunStatus::Runnable)?;
        let stamp = if self.modified_at {
            ", modified_at = $3"
        } else {
            ""
        };
        let sql = format!(
            "UPDATE {} SET status = 'RUNNABLE', lease_token = lease_token + 1, \
             lease_expires_at = NULL{stamp} \
             WHERE id = $1 AND lease_token = $2 AND status IN ('STARTING', 'RUNNING')",
            self.table
        );
        let mut query = sqlx::query(&sql).bind(id).bind(token);
        if self.modified_at {
            query = query.bind(micros(now));
        }
        Ok(query.execute(pool).await?.rows_affected() == 1)
    }

    /// Up to 100 leases that expired before `now`, the longest expired
    /// first, locked in `tx` (others reaping at once skip them); the caller
    /// ends each. Read through the table's index on `lease_expires_at`
    /// (only leased rows have one): ordered by `seq`, SQLite walked a
    /// million-run table instead, 170 ms on the writer's connection.
    pub async fn expired(
        &self,
        tx: &mut Transaction<'static, Any>,
        dialect: Dialect,
        now: Timestamp,
    ) -> Result<Vec<AnyRow>> {
        let sql = format!(
            "SELECT {} FROM {} WHERE lease_expires_at < $1 AND status IN {LEASED} \
             ORDER BY lease_expires_at LIMIT 100{}",
            self.columns,
            self.table,
            dialect.skip_locked()
        );
        Ok(sqlx::query(&sql)
            .bind(micros(now))
            .fetch_all(&mut **tx)
            .await?)
    }
}

impl Leased {
    /// Claims the RUNNABLE row `id` (the one a command runs itself) under
    /// a new lease of `worker`; None when it is not RUNNABLE (another
    /// worker has it, or it ended).
    pub async fn claim_id(
        &self,
        store: &SqlStore,
        id: &str,
        worker: &str,
        ttl: Duration,
        now: Timestamp,
    ) -> Result<Option<AnyRow>> {
        RunStatus::Runnable.transition(RunStatus::Starting)?;
        let now = micros(now);
        let sql = format!(
            "UPDATE {} SET status = 'STARTING', attempt = attempt + 1, \
             lease_token = lease_token + 1, lease_owner = $1, lease_expires_at = $2, \
             started_at = COALESCE(started_at, $3), error = NULL{} \
             WHERE status = 'RUNNABLE' AND id = $4 RETURNING {}",
            self.table,
            self.stamp(),
            self.columns
        );
        Ok(sqlx::query(&sql)
            .bind(worker)
            .bind(now + ttl.as_micros() as i64)
            .bind(now)
            .bind(id)
            .fetch_optional(&store.write)
            .await?)
    }

    /// Claims up to `limit` RUNNABLE rows (see [`Leased::claim`]); answers
    /// them read by `parse`, in claim order (`seq`).
    pub async fn claim_into<T>(
        &self,
        store: &SqlStore,
        worker: &str,
        limit: u32,
        ttl: Duration,
        now: Timestamp,
        parse: fn(&AnyRow) -> Result<T>,
    ) -> Result<Vec<T>> {
        let rows = self
            .claim(&store.write, store.dialect, worker, limit, ttl, now, None)
            .await?;
        let mut claimed = Vec::with_capacity(rows.len());
        for row in &rows {
            claimed.push((row.try_get::<i64, _>("seq")?, parse(row)?));
        }
        claimed.sort_by_key(|(seq, _)| *seq);
        Ok(claimed.into_iter().map(|(_, t)| t).collect())
    }

    /// [`Leased::start`] in a transaction of its own.
    pub async fn start_alone(
        &self,
        store: &SqlStore,
        id: &str,
        token: i64,
        now: Timestamp,
    ) -> Result<RunStatus> {
        let mut tx = store.begin().await?;
        match self.start(&mut tx, store.dialect, id, token, now).await {
            Ok(status) => {
                tx.commit().await?;
                Ok(status)
            }
            Err(e) => {
                // At once: a dropped transaction's row lock would make
                // claimers skip the row until its connection is reused.
                let _ = tx.rollback().await;
                Err(e)
            }
        }
    }

    /// The status an attempt of `id` holding `token` ends from, locked in
    /// `tx`: a STARTING one ends through RUNNING. [`StoreError::LeaseLost`]
    /// when the lease is not `token`'s any more.
    pub async fn ending(
        &self,
        tx: &mut Transaction<'static, Any>,
        dialect: Dialect,
        id: &str,
        token: i64,
    ) -> Result<(RunStatus, AnyRow)> {
        let row = self
            .lock(tx, dialect, id)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("`{id}`")))?;
        let status: RunStatus = row
            .try_get::<String, _>("status")?
            .parse()
            .map_err(|e| StoreError::Corrupt(format!("{e}")))?;
        if row.try_get::<i64, _>("lease_token")? != token || !status.is_leased() {
            return Err(StoreError::LeaseLost(id.to_owned()));
        }
        let from = if status == RunStatus::Starting {
            RunStatus::Starting.transition(RunStatus::Running)?
        } else {
            status
        };
        Ok((from, row))
    }

    /// Moves the lease of `id` holding `token` to RUNNING (a STARTING one)
    /// and answers its status — RUNNING, or CANCELING when a cancel came
    /// first — or [`StoreError::LeaseLost`] when the lease is not `token`'s.
    /// The caller commits `tx`.
    pub async fn start(
        &self,
        tx: &mut Transaction<'static, Any>,
        dialect: Dialect,
        id: &str,
        token: i64,
        now: Timestamp,
    ) -> Result<RunStatus> {
        if self.mark_running(tx, id, token, now).await?.is_some() {
            return Ok(RunStatus::Running);
        }
        let row = self
            .lock(tx, dialect, id)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("`{id}`")))?;
        let status: RunStatus = row
            .try_get::<String, _>("status")?
            .parse()
            .map_err(|e| StoreError::Corrupt(format!("{e}")))?;
        if row.try_get::<i64, _>("lease_token")? != token || !status.is_leased() {
            return Err(StoreError::LeaseLost(id.to_owned()));
        }
        Ok(status)
    }

    /// Gives back the leases that expired before `now` (up to 100): each is
    /// tried again — straight back to RUNNABLE — while `attempts` allows,
    /// else fails; its error says which attempt was lost, and its token
    /// moves on so the lost worker's late writes are refused. Answers their
    /// ids.
    pub async fn give_back(
        &self,
        tx: &mut Transaction<'static, Any>,
        dialect: Dialect,
        now: Timestamp,
        attempts: i32,
    ) -> Result<Vec<String>> {
        let rows = self.expired(tx, dialect, now).await?;
        let at = micros(now);
        let mut reaped = Vec::new();
        for row in &rows {
            let id: String = row.try_get("id")?;
            let status: RunStatus = row
                .try_get::<String, _>("status")?
                .parse()
                .map_err(|e| StoreError::Corrupt(format!("{e}")))?;
            let attempt = row.try_get::<i64, _>("attempt")? as i32;
            let owner: Option<String> = row.try_get("lease_owner")?;
            let next = status.after_attempt(AttemptEnd::Lost, attempt, attempts - 1);
            status.transition(next)?;
            let (status, finished) = if next == RunStatus::Pending {
                (next.transition(RunStatus::Runnable)?, None)
            } else {
                (next, Some(at))
            };
            let stamp = if self.modified_at {
                ", modified_at = $5"
            } else {
                ""
            };
            let sql = format!(
                "UPDATE {} SET status = $1, error = $2, finished_at = $3, \
                 lease_token = lease_token + 1, lease_expires_at = NULL{stamp} WHERE id = $4",
                self.table
            );
            let mut query = sqlx::query(&sql)
                .bind(status.as_str())
                .bind(lost(attempt, owner.as_deref()))
                .bind(finished)
                .bind(&id);
            if self.modified_at {
                query = query.bind(at);
            }
            query.execute(&mut **tx).await?;
            reaped.push(id);
        }
        Ok(reaped)
    }
}

/// Why an attempt whose lease expired ended, as its error says.
pub(crate) fn lost(attempt: i32, owner: Option<&str>) -> String {
    format!(
        "attempt {attempt} lost: worker {} stopped renewing its lease",
        owner.unwrap_or("?")
    )
}
