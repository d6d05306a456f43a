//! [`ActionStore`] over SQL: the Tailer-style action API's account codes,
//! warehouses, configurations (every version kept), runs and tasks.

use sluice_domain::action::{
    self, ActionRun, ActionStatus, ActionTask, Deployed, NaiveDate, Warehouse,
};

use super::lease::{Leased, LEASED};
use super::named::{BUCKETS, WAREHOUSES};
use super::*;
use crate::{ActionOutcome, ActionRunFilter, ActionStore};

/// How many times a run whose worker was lost is tried in all.
const RUN_ATTEMPTS: i32 = 3;

/// The advisory lock of the action runs' queue step (PostgreSQL).
const QUEUE_LOCK: i64 = 7_330_115_914;

const CONFIG_COLUMNS: &str = "c.organization_id, c.configuration_type, c.api_id, \
     c.configuration_id, c.account, c.environment, c.version, c.activated, c.archived, \
     c.max_active_runs, c.next_run_at, c.created_at, c.modified_at, v.body";

const CONFIG_FROM: &str = "action_configurations c JOIN action_configuration_versions v \
     ON v.organization_id = c.organization_id AND v.configuration_type = c.configuration_type \
     AND v.api_id = c.api_id AND v.version = c.version";

fn config_from_row(row: &AnyRow) -> Result<Deployed> {
    Ok(Deployed {
        organization_id: OrganizationId::parse(&row.try_get::<String, _>("organization_id")?)?,
        configuration_type: row.try_get("configuration_type")?,
        api_id: row.try_get("api_id")?,
        configuration_id: row.try_get("configuration_id")?,
        account: row.try_get("account")?,
        environment: row.try_get("environment")?,
        version: row.try_get("version")?,
        activated: row.try_get::<i64, _>("activated")? != 0,
        archived: row.try_get::<i64, _>("archived")? != 0,
        max_active_runs: row.try_get::<i64, _>("max_active_runs")? as u32,
        body: parse_json(row, "body")?,
        next_run_at: opt_ts(row, "next_run_at")?,
        created_at: ts(row, "created_at")?,
        modified_at: ts(row, "modified_at")?,
    })
}

const RUN_COLUMNS: &str = "seq, id, organization_id, configuration_type, api_id, version, \
     job_id, execution_date, input, status, reported, warned, stopped, error, attempt, lease_owner, \
     lease_token, \
     created_at, started_at, finished_at, modified_at";

fn run_from_row(row: &AnyRow) -> Result<ActionRun> {
    let status: String = row.try_get("status")?;
    let reported: Option<String> = row.try_get("reported")?;
    let date: String = row.try_get("execution_date")?;
    Ok(ActionRun {
        seq: row.try_get("seq")?,
        id: row.try_get("id")?,
        organization_id: OrganizationId::parse(&row.try_get::<String, _>("organization_id")?)?,
        configuration_type: row.try_get("configuration_type")?,
        api_id: row.try_get("api_id")?,
        version: row.try_get("version")?,
        job_id: row.try_get("job_id")?,
        execution_date: NaiveDate::parse_from_str(&date, "%Y-%m-%d")
            .map_err(|e| StoreError::Corrupt(format!("execution date `{date}`: {e}")))?,
        input: row.try_get("input")?,
        status: status
            .parse()
            .map_err(|e| StoreError::Corrupt(format!("{e}")))?,
        reported: reported
            .map(|r| {
                ActionStatus::parse(&r)
                    .ok_or_else(|| StoreError::Corrupt(format!("unknown action status `{r}`")))
            })
            .transpose()?,
        warned: row.try_get::<i64, _>("warned")? != 0,
        stopped: row.try_get::<i64, _>("stopped")? != 0,
        error: row.try_get("error")?,
        attempt: row.try_get::<i64, _>("attempt")? as i32,
        lease_owner: row.try_get("lease_owner")?,
        lease_token: row.try_get("lease_token")?,
        created_at: ts(row, "created_at")?,
        started_at: opt_ts(row, "started_at")?,
        finished_at: opt_ts(row, "finished_at")?,
        modified_at: ts(row, "modified_at")?,
    })
}

fn task_from_row(row: &AnyRow) -> Result<ActionTask> {
    let messages: String = row.try_get("messages")?;
    Ok(ActionTask {
        run_id: row.try_get("run_id")?,
        task_id: row.try_get("task_id")?,
        position: row.try_get::<i64, _>("position")? as i32,
        status: row.try_get("status")?,
        attempt: row.try_get::<i64, _>("attempt")? as i32,
        started_at: opt_ts(row, "started_at")?,
        finished_at: opt_ts(row, "finished_at")?,
        rows: row.try_get("row_count")?,
        messages: serde_json::from_str(&messages)?,
    })
}

const RUNS: Leased = Leased {
    table: "action_runs",
    columns: RUN_COLUMNS,
    modified_at: true,
};

/// The run statuses the API reports as `status`, as an SQL condition.
fn reported_as(status: ActionStatus) -> &'static str {
    match status {
        ActionStatus::Running => {
            "reported IS NULL AND status NOT IN ('SUCCEEDED', 'FAILED', 'CANCELLED', 'REJECTED')"
        }
        ActionStatus::Success => "reported IS NULL AND status = 'SUCCEEDED' AND warned = 0",
        ActionStatus::Warning => "reported IS NULL AND status = 'SUCCEEDED' AND warned <> 0",
        ActionStatus::Failed => {
            "reported IS NULL AND status IN ('FAILED', 'CANCELLED', 'REJECTED')"
        }
        ActionStatus::Checked => "reported = 'CHECKED'",
        ActionStatus::NoMatch => "reported = 'NO_MATCH'",
    }
}

impl SqlStore {
    /// Counts run `run`'s success for the workflows awaiting its job, in
    /// `tx` (see [`ActionStore::finish_action_run`]). Each workflow's row
    /// is locked first, so two successes at once count one after the other.
    async fn count_for_workflows(
        &self,
        tx: &mut Transaction<'static, Any>,
        run: &ActionRun,
        now: Timestamp,
    ) -> Result<()> {
        let rows = sqlx::query(&format!(
            "SELECT {CONFIG_COLUMNS} FROM {CONFIG_FROM} WHERE c.organization_id = $1 \
             AND c.configuration_type = 'workflow' AND c.activated <> 0 AND c.archived = 0 \
             ORDER BY c.api_id{}",
            self.dialect.for_update()
        ))
        .bind(run.organization_id.as_str())
        .fetch_all(&mut **tx)
        .await?;
        for row in &rows {
            let w = config_from_row(row)?;
            let Ok(workflow) = serde_json::from_value::<action::Workflow>(w.body.clone()) else {
                continue;
            };
            let awaited = &workflow.authorized_job_ids;
            if !awaited.contains(&run.job_id) {
                continue;
            }
            sqlx::query(
                "INSERT INTO workflow_successes (organization_id, workflow_id, job_id, run_id, \
                 succeeded_at) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (organization_id, \
                 workflow_id, job_id) DO UPDATE SET run_id = $4, succeeded_at = $5",
            )
            .bind(w.organization_id.as_str())
            .bind(&w.api_id)
            .bind(&run.job_id)
            .bind(&run.id)
            .bind(micros(now))
            .execute(&mut **tx)
            .await?;
            let done: Vec<String> = sqlx::query_scalar(
                "SELECT job_id FROM workflow_successes WHERE organization_id = $1 \
                 AND workflow_id = $2",
            )
            .bind(w.organization_id.as_str())
            .bind(&w.api_id)
            .fetch_all(&mut **tx)
            .await?;
            if !awaited.iter().all(|j| done.contains(j)) {
                continue;
            }
            // Every awaited job succeeded: the workflow fires, and counts
            // again from nothing.
            sqlx::query(
                "DELETE FROM workflow_successes WHERE organization_id = $1 AND workflow_id = $2",
            )
            .bind(w.organization_id.as_str())
            .bind(&w.api_id)
            .execute(&mut **tx)
            .await?;
            let (kind, target) = (&workflow.target_type, &workflow.target_id);
            let found = sqlx::query(&format!(
                "SELECT {CONFIG_COLUMNS} FROM {CONFIG_FROM} WHERE c.organization_id = $1 \
                 AND c.configuration_type = $2 AND c.api_id = $3"
            ))
            .bind(w.organization_id.as_str())
            .bind(kind)
            .bind(target)
            .fetch_optional(&mut **tx)
            .await?;
            let Some(t) = found.as_ref().map(config_from_row).transpose()? else {
                continue;
            };
            // A deactivated or archived target does not run.
            if t.activated && !t.archived {
                self.insert_action_run(tx, &ActionRun::new(&t, run.execution_date, now))
                    .await?;
            }
        }
        Ok(())
    }

    async fn insert_action_run(
        &self,
        tx: &mut Transaction<'static, Any>,
        run: &ActionRun,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO action_runs (id, organization_id, configuration_type, api_id, version, \
             job_id, execution_date, status, created_at, modified_at, input) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9, $10)",
        )
        .bind(&run.id)
        .bind(run.organization_id.as_str())
        .bind(&run.configuration_type)
        .bind(&run.api_id)
        .bind(run.version)
        .bind(&run.job_id)
        .bind(run.execution_date.format("%Y-%m-%d").to_string())
        .bind(RunStatus::Pending.as_str())
        .bind(micros(run.created_at))
        .bind(run.input.as_deref())
        .execute(&mut **tx)
        .await?;
        Ok(())
    }
}

#[async_trait]
impl ActionStore for SqlStore {
    async fn set_account(&self, org: &OrganizationId, account: &str) -> Result<()> {
        let mut tx = self.begin().await?;
        sqlx::query("DELETE FROM action_accounts WHERE organization_id = $1")
            .bind(org.as_str())
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO action_accounts (account, organization_id) VALUES ($1, $2)")
            .bind(account)
            .bind(org.as_str())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn account_of(&self, org: &OrganizationId) -> Result<Option<String>> {
        Ok(
            sqlx::query_scalar("SELECT account FROM action_accounts WHERE organization_id = $1")
                .bind(org.as_str())
                .fetch_optional(&self.read)
                .await?,
        )
    }

    async fn put_warehouse(&self, w: &Warehouse) -> Result<()> {
        WAREHOUSES.put(self, w, true).await
    }

    async fn warehouses_of(&self, org: &OrganizationId) -> Result<Vec<Warehouse>> {
        WAREHOUSES.of(self, org).await
    }

    async fn remove_warehouse(&self, org: &OrganizationId, name: &str) -> Result<()> {
        WAREHOUSES.remove(self, org, name).await
    }

    async fn put_bucket(&self, b: &Warehouse) -> Result<()> {
        BUCKETS.put(self, b, true).await
    }

    async fn buckets_of(&self, org: &OrganizationId) -> Result<Vec<Warehouse>> {
        BUCKETS.of(self, org).await
    }

    async fn remove_bucket(&self, org: &OrganizationId, name: &str) -> Result<()> {
        BUCKETS.remove(self, org, name).await
    }

    async fn deploy_configuration(&self, c: &Deployed) -> Result<i64> {
        let mut tx = self.begin().await?;
        let current: Option<i64> = sqlx::query_scalar(&format!(
            "SELECT version FROM action_configurations WHERE organization_id = $1 \
             AND configuration_type = $2 AND api_id = $3{}",
            self.dialect.for_update()
        ))
        .bind(c.organization_id.as_str())
        .bind(&c.configuration_type)
        .bind(&c.api_id)
        .fetch_optional(&mut *tx)
        .await?;
        let version = current.unwrap_or(0) + 1;
        let now = micros(c.modified_at);
        sqlx::query(
            "INSERT INTO action_configuration_versions (organization_id, configuration_type, \
             api_id, version, body, deployed_at) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(c.organization_id.as_str())
        .bind(&c.configuration_type)
        .bind(&c.api_id)
        .bind(version)
        .bind(json_text(&c.body))
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let next = c.next_run_at.map(micros);
        if current.is_some() {
            sqlx::query(
                "UPDATE action_configurations SET configuration_id = $4, account = $5, \
                 environment = $6, version = $7, activated = $8, archived = $9, \
                 max_active_runs = $10, next_run_at = $11, modified_at = $12 \
                 WHERE organization_id = $1 AND configuration_type = $2 AND api_id = $3",
            )
        } else {
            sqlx::query(
                "INSERT INTO action_configurations (organization_id, configuration_type, api_id, \
                 configuration_id, account, environment, version, activated, archived, \
                 max_active_runs, next_run_at, modified_at, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $12)",
            )
        }
        .bind(c.organization_id.as_str())
        .bind(&c.configuration_type)
        .bind(&c.api_id)
        .bind(&c.configuration_id)
        .bind(&c.account)
        .bind(&c.environment)
        .bind(version)
        .bind(c.activated as i64)
        .bind(c.archived as i64)
        .bind(c.max_active_runs as i64)
        .bind(next)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(version)
    }

    async fn get_configuration(
        &self,
        org: &OrganizationId,
        configuration_type: &str,
        api_id: &str,
    ) -> Result<Deployed> {
        let row = sqlx::query(&format!(
            "SELECT {CONFIG_COLUMNS} FROM {CONFIG_FROM} WHERE c.organization_id = $1 \
             AND c.configuration_type = $2 AND c.api_id = $3"
        ))
        .bind(org.as_str())
        .bind(configuration_type)
        .bind(api_id)
        .fetch_optional(&self.read)
        .await?;
        row.as_ref()
            .map(config_from_row)
            .transpose()?
            .ok_or_else(|| not_found(configuration_type, api_id))
    }

    async fn configuration_version(
        &self,
        org: &OrganizationId,
        configuration_type: &str,
        api_id: &str,
        version: i64,
    ) -> Result<Value> {
        let body: Option<String> = sqlx::query_scalar(
            "SELECT body FROM action_configuration_versions WHERE organization_id = $1 \
             AND configuration_type = $2 AND api_id = $3 AND version = $4",
        )
        .bind(org.as_str())
        .bind(configuration_type)
        .bind(api_id)
        .bind(version)
        .fetch_optional(&self.read)
        .await?;
        let body =
            body.ok_or_else(|| not_found(configuration_type, format!("{api_id} v{version}")))?;
        Ok(serde_json::from_str(&body)?)
    }

    async fn list_configurations(&self, org: &OrganizationId) -> Result<Vec<Deployed>> {
        let rows = sqlx::query(&format!(
            "SELECT {CONFIG_COLUMNS} FROM {CONFIG_FROM} WHERE c.organization_id = $1 \
             ORDER BY c.configuration_type, c.api_id"
        ))
        .bind(org.as_str())
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(config_from_row).collect()
    }

    async fn set_configuration_status(
        &self,
        org: &OrganizationId,
        configuration_type: &str,
        api_id: &str,
        activated: bool,
        archived: bool,
        now: Timestamp,
    ) -> Result<Deployed> {
        let changed = sqlx::query(
            "UPDATE action_configurations SET activated = $1, archived = $2, modified_at = $3 \
             WHERE organization_id = $4 AND configuration_type = $5 AND api_id = $6",
        )
        .bind(activated as i64)
        .bind(archived as i64)
        .bind(micros(now))
        .bind(org.as_str())
        .bind(configuration_type)
        .bind(api_id)
        .execute(&self.write)
        .await?
        .rows_affected();
        if changed == 0 {
            return Err(not_found(configuration_type, api_id));
        }
        self.get_configuration(org, configuration_type, api_id)
            .await
    }

    async fn active_configurations(&self, configuration_type: &str) -> Result<Vec<Deployed>> {
        let rows = sqlx::query(&format!(
            "SELECT {CONFIG_COLUMNS} FROM {CONFIG_FROM} WHERE c.configuration_type = $1 \
             AND c.activated <> 0 AND c.archived = 0 ORDER BY c.organization_id, c.api_id"
        ))
        .bind(configuration_type)
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(config_from_row).collect()
    }

    async fn due_configurations(&self, now: Timestamp) -> Result<Vec<Deployed>> {
        let rows = sqlx::query(&format!(
            "SELECT {CONFIG_COLUMNS} FROM {CONFIG_FROM} WHERE c.next_run_at IS NOT NULL \
             AND c.next_run_at <= $1 AND c.activated <> 0 AND c.archived = 0 \
             ORDER BY c.next_run_at LIMIT 100"
        ))
        .bind(micros(now))
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(config_from_row).collect()
    }

    async fn schedule_action_run(
        &self,
        run: &ActionRun,
        due: Timestamp,
        next: Option<Timestamp>,
    ) -> Result<bool> {
        let mut tx = self.begin().await?;
        let moved = sqlx::query(
            "UPDATE action_configurations SET next_run_at = $1 WHERE organization_id = $2 \
             AND configuration_type = $3 AND api_id = $4 AND next_run_at = $5",
        )
        .bind(next.map(micros))
        .bind(run.organization_id.as_str())
        .bind(&run.configuration_type)
        .bind(&run.api_id)
        .bind(micros(due))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if moved == 0 {
            return Ok(false);
        }
        self.insert_action_run(&mut tx, run).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn set_next_run(
        &self,
        org: &OrganizationId,
        configuration_type: &str,
        api_id: &str,
        at: Option<Timestamp>,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE action_configurations SET next_run_at = $1 WHERE organization_id = $2 \
             AND configuration_type = $3 AND api_id = $4",
        )
        .bind(at.map(micros))
        .bind(org.as_str())
        .bind(configuration_type)
        .bind(api_id)
        .execute(&self.write)
        .await?;
        Ok(())
    }

    async fn record_arrivals(&self, arrivals: &[(ActionRun, String, String)]) -> Result<usize> {
        if arrivals.is_empty() {
            return Ok(0);
        }
        let mut tx = self.begin().await?;
        let mut fresh = 0;
        for (run, key, fingerprint) in arrivals {
            let inserted = sqlx::query(
                "INSERT INTO action_arrivals (organization_id, api_id, object_key, fingerprint, \
                 run_id, seen_at) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
            )
            .bind(run.organization_id.as_str())
            .bind(&run.api_id)
            .bind(key)
            .bind(fingerprint)
            .bind(&run.id)
            .bind(micros(run.created_at))
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if inserted > 0 {
                self.insert_action_run(&mut tx, run).await?;
                fresh += 1;
            }
        }
        tx.commit().await?;
        Ok(fresh)
    }

    async fn arrivals_of(
        &self,
        org: &OrganizationId,
        api_id: &str,
    ) -> Result<std::collections::HashSet<(String, String)>> {
        let rows = sqlx::query(
            "SELECT object_key, fingerprint FROM action_arrivals WHERE organization_id = $1 \
             AND api_id = $2",
        )
        .bind(org.as_str())
        .bind(api_id)
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    async fn create_action_run(&self, run: &ActionRun) -> Result<()> {
        let mut tx = self.begin().await?;
        self.insert_action_run(&mut tx, run).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn get_action_run(&self, org: &OrganizationId, id: &str) -> Result<ActionRun> {
        let row = sqlx::query(&format!(
            "SELECT {RUN_COLUMNS} FROM action_runs WHERE id = $1 AND organization_id = $2"
        ))
        .bind(id)
        .bind(org.as_str())
        .fetch_optional(&self.read)
        .await?;
        row.as_ref()
            .map(run_from_row)
            .transpose()?
            .ok_or_else(|| not_found("run", id))
    }

    async fn list_action_runs(
        &self,
        org: &OrganizationId,
        f: &ActionRunFilter,
    ) -> Result<Vec<ActionRun>> {
        let status = f
            .status
            .map(|s| format!(" AND {}", reported_as(s)))
            .unwrap_or_default();
        let date = f.execution_date.map(|d| d.format("%Y-%m-%d").to_string());
        let rows = sqlx::query(&format!(
            "SELECT {RUN_COLUMNS} FROM action_runs WHERE organization_id = $1 \
             AND configuration_type = $2 AND api_id = $3{status} \
             AND ($4 IS NULL OR execution_date = $4) AND seq < $5 ORDER BY seq DESC LIMIT $6"
        ))
        .bind(org.as_str())
        .bind(&f.configuration_type)
        .bind(&f.api_id)
        .bind(date)
        .bind(f.before.unwrap_or(i64::MAX))
        .bind(f.limit.max(1) as i64)
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(run_from_row).collect()
    }

    async fn action_runs_in(
        &self,
        org: &OrganizationId,
        status: ActionStatus,
        limit: u32,
    ) -> Result<Vec<ActionRun>> {
        let rows = sqlx::query(&format!(
            "SELECT {RUN_COLUMNS} FROM action_runs WHERE organization_id = $1 AND {} \
             ORDER BY seq DESC LIMIT $2",
            reported_as(status)
        ))
        .bind(org.as_str())
        .bind(limit.max(1) as i64)
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(run_from_row).collect()
    }

    async fn report_action_run(
        &self,
        org: &OrganizationId,
        id: &str,
        status: ActionStatus,
        now: Timestamp,
    ) -> Result<ActionRun> {
        let changed = sqlx::query(
            "UPDATE action_runs SET reported = $1, modified_at = $2 \
             WHERE id = $3 AND organization_id = $4",
        )
        .bind(status.as_str())
        .bind(micros(now))
        .bind(id)
        .bind(org.as_str())
        .execute(&self.write)
        .await?
        .rows_affected();
        if changed == 0 {
            return Err(not_found("run", id));
        }
        self.get_action_run(org, id).await
    }

    async fn queue_action_runs(&self, now: Timestamp) -> Result<u64> {
        RunStatus::Pending.transition(RunStatus::Runnable)?;
        let mut tx = self.begin().await?;
        // One queue step at a time (PostgreSQL; SQLite has one writer):
        // two at once could each see room for the same last slot. What it
        // writes is recomputed if a database crash loses it.
        self.lock_exclusively(&mut tx, QUEUE_LOCK, Commit::Recomputable)
            .await?;
        // Runs under way, by configuration, counted once.
        let rows = sqlx::query(&format!(
            "SELECT organization_id, configuration_type, api_id, COUNT(*) FROM action_runs \
             WHERE status = 'RUNNABLE' OR status IN {LEASED} \
             GROUP BY organization_id, configuration_type, api_id"
        ))
        .fetch_all(&mut *tx)
        .await?;
        let mut active: std::collections::HashMap<(String, String, String), i64> = rows
            .iter()
            .map(|r| Ok(((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?), r.try_get(3)?)))
            .collect::<Result<_>>()?;
        // Oldest first: a PENDING run moves while its configuration has
        // fewer runs under way than it allows.
        let pending = sqlx::query(
            "SELECT r.id, r.organization_id, r.configuration_type, r.api_id, c.max_active_runs \
             FROM action_runs r JOIN action_configurations c \
             ON c.organization_id = r.organization_id \
             AND c.configuration_type = r.configuration_type AND c.api_id = r.api_id \
             WHERE r.status = 'PENDING' ORDER BY r.seq LIMIT 500",
        )
        .fetch_all(&mut *tx)
        .await?;
        let mut moved = 0;
        for row in &pending {
            let id: String = row.try_get(0)?;
            let key = (row.try_get(1)?, row.try_get(2)?, row.try_get(3)?);
            let max: i64 = row.try_get(4)?;
            let under_way = active.entry(key).or_insert(0);
            if *under_way >= max {
                continue;
            }
            let changed = sqlx::query(
                "UPDATE action_runs SET status = 'RUNNABLE', modified_at = $1 \
                 WHERE id = $2 AND status = 'PENDING'",
            )
            .bind(micros(now))
            .bind(&id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            *under_way += changed as i64;
            moved += changed;
        }
        tx.commit().await?;
        Ok(moved)
    }

    async fn claim_action_runs(
        &self,
        worker: &str,
        limit: u32,
        ttl: Duration,
        now: Timestamp,
    ) -> Result<Vec<ActionRun>> {
        let rows = RUNS
            .claim(&self.write, self.dialect, worker, limit, ttl, now, None)
            .await?;
        let mut claimed = rows.iter().map(run_from_row).collect::<Result<Vec<_>>>()?;
        claimed.sort_by_key(|r| r.seq);
        Ok(claimed)
    }

    async fn action_run_running(&self, id: &str, token: i64, now: Timestamp) -> Result<RunStatus> {
        RUNS.start_alone(self, id, token, now).await
    }

    async fn heartbeat_action_run(
        &self,
        id: &str,
        token: i64,
        ttl: Duration,
        now: Timestamp,
    ) -> Result<RunStatus> {
        RUNS.heartbeat(&self.write, id, token, ttl, now).await
    }

    async fn hand_back_action_run(&self, id: &str, token: i64, now: Timestamp) -> Result<bool> {
        RUNS.hand_back(&self.write, id, token, now).await
    }

    async fn finish_action_run(
        &self,
        id: &str,
        token: i64,
        outcome: &ActionOutcome,
        now: Timestamp,
    ) -> Result<RunStatus> {
        let mut tx = self.begin().await?;
        let ended = RUNS.ending(&mut tx, self.dialect, id, token).await;
        let (from, row) = match ended {
            Ok(v) => v,
            Err(e) => {
                // At once: a dropped transaction's row lock would make
                // claimers skip the row until its connection is reused.
                let _ = tx.rollback().await;
                return Err(e);
            }
        };
        let run = run_from_row(&row)?;
        let mut reported = None;
        let (next, error, warned, stopped) = match outcome {
            ActionOutcome::Succeeded { warned, stopped } => {
                (RunStatus::Succeeded, None, *warned, *stopped)
            }
            ActionOutcome::NoMatch { error } => {
                reported = Some(ActionStatus::NoMatch.as_str());
                (RunStatus::Failed, Some(error.clone()), false, false)
            }
            ActionOutcome::Failed { error } if run.status == RunStatus::Canceling => {
                (RunStatus::Cancelled, Some(error.clone()), false, false)
            }
            ActionOutcome::Failed { error } => {
                (RunStatus::Failed, Some(error.clone()), false, false)
            }
        };
        from.transition(next)?;
        sqlx::query(
            "UPDATE action_runs SET status = $1, error = $2, warned = $3, stopped = $4, \
             finished_at = $5, modified_at = $5, lease_expires_at = NULL, \
             reported = COALESCE($7, reported) WHERE id = $6",
        )
        .bind(next.as_str())
        .bind(error)
        .bind(warned as i64)
        .bind(stopped as i64)
        .bind(micros(now))
        .bind(id)
        .bind(reported)
        .execute(&mut *tx)
        .await?;
        if next == RunStatus::Succeeded && !stopped {
            self.count_for_workflows(&mut tx, &run, now).await?;
        }
        tx.commit().await?;
        Ok(next)
    }

    async fn reap_action_runs(&self, now: Timestamp) -> Result<Vec<String>> {
        let mut tx = self.begin().await?;
        let reaped = RUNS
            .give_back(&mut tx, self.dialect, now, RUN_ATTEMPTS)
            .await?;
        tx.commit().await?;
        Ok(reaped)
    }

    async fn reset_workflow(&self, org: &OrganizationId, workflow_id: &str) -> Result<()> {
        sqlx::query(
            "DELETE FROM workflow_successes WHERE organization_id = $1 AND workflow_id = $2",
        )
        .bind(org.as_str())
        .bind(workflow_id)
        .execute(&self.write)
        .await?;
        Ok(())
    }

    async fn reset_workflow_at(
        &self,
        org: &OrganizationId,
        workflow_id: &str,
        due: Timestamp,
        next: Option<Timestamp>,
    ) -> Result<bool> {
        let mut tx = self.begin().await?;
        let moved = sqlx::query(
            "UPDATE action_configurations SET next_run_at = $1 WHERE organization_id = $2 \
             AND configuration_type = 'workflow' AND api_id = $3 AND next_run_at = $4",
        )
        .bind(next.map(micros))
        .bind(org.as_str())
        .bind(workflow_id)
        .bind(micros(due))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if moved == 0 {
            return Ok(false);
        }
        sqlx::query(
            "DELETE FROM workflow_successes WHERE organization_id = $1 AND workflow_id = $2",
        )
        .bind(org.as_str())
        .bind(workflow_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn workflow_successes(
        &self,
        org: &OrganizationId,
        workflow_id: &str,
    ) -> Result<Vec<(String, String, Timestamp)>> {
        let rows = sqlx::query(
            "SELECT job_id, run_id, succeeded_at FROM workflow_successes \
             WHERE organization_id = $1 AND workflow_id = $2 ORDER BY job_id",
        )
        .bind(org.as_str())
        .bind(workflow_id)
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, ts(r, "succeeded_at")?)))
            .collect()
    }

    async fn put_action_task(&self, task: &ActionTask, token: i64) -> Result<()> {
        let mut tx = self.begin().await?;
        let held: Option<i64> = sqlx::query_scalar(&format!(
            "SELECT lease_token FROM action_runs WHERE id = $1 AND status IN {LEASED}{}",
            self.dialect.for_share()
        ))
        .bind(&task.run_id)
        .fetch_optional(&mut *tx)
        .await?;
        if held != Some(token) {
            return Err(StoreError::LeaseLost(task.run_id.clone()));
        }
        sqlx::query("DELETE FROM action_tasks WHERE run_id = $1 AND task_id = $2")
            .bind(&task.run_id)
            .bind(&task.task_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO action_tasks (run_id, task_id, position, status, attempt, started_at, \
             finished_at, row_count, messages) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&task.run_id)
        .bind(&task.task_id)
        .bind(task.position as i64)
        .bind(&task.status)
        .bind(task.attempt as i64)
        .bind(task.started_at.map(micros))
        .bind(task.finished_at.map(micros))
        .bind(task.rows)
        .bind(serde_json::to_string(&task.messages)?)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn list_action_tasks(&self, run_id: &str) -> Result<Vec<ActionTask>> {
        let rows = sqlx::query(
            "SELECT run_id, task_id, position, status, attempt, started_at, finished_at, \
             row_count, messages FROM action_tasks WHERE run_id = $1 ORDER BY position",
        )
        .bind(run_id)
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(task_from_row).collect()
    }
}
