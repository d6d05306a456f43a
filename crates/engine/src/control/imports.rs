//! Table import jobs: create (with a dry run that writes nothing), list,
//! change, pause, resume, delete, run now or for a window, and read their
//! queries and tasks. Every face (CLI, GraphQL) calls these.

use sluice_datapath::inspect::{self, Class};
use sluice_store::JobFilter;

use super::*;
use crate::secrets::redact;

/// A job as a client asks for it.
#[derive(Debug, Clone, Default)]
pub struct NewJob {
    pub name: String,
    /// Empty: the organization's default space.
    pub space: String,
    /// The source's URL (postgres://, mysql:// or mariadb://, sqlite://,
    /// or file:///folder for CSV and JSONL files).
    pub source: String,
    /// The destination's URL; None: the embedded warehouse.
    pub destination: Option<String>,
    pub spec: JobSpec,
    /// When another job loads the target already, load `<target>_2` (or
    /// the first free number) instead of refusing: for faces whose jobs
    /// name a model, not a table (several jobs may feed one model).
    pub number_taken_target: bool,
}

/// What a dry run (and every create) found.
#[derive(Debug, Clone, PartialEq)]
pub struct Validation {
    pub diagnostics: Vec<Diagnostic>,
    /// The source columns the mapping loads.
    pub columns: Vec<String>,
}

/// Findings that do not stop a job from being stored: a job on a
/// warehouse sluice cannot read yet is accepted as it is (its shape was
/// checked) and says so when it runs.
const NOT_BLOCKING: [&str; 1] = ["table_store_not_supported"];

impl Validation {
    /// Nothing at all was found.
    pub fn ok(&self) -> bool {
        self.diagnostics.is_empty()
    }

    /// The findings that keep a job (or a change to one) from being stored.
    pub fn blocking(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics
            .iter()
            .filter(|d| !NOT_BLOCKING.contains(&d.code.as_str()))
    }

    /// Whether the job (or the change) may be stored.
    pub fn accepts(&self) -> bool {
        self.blocking().next().is_none()
    }
}

/// A change to a job; what is None stays.
#[derive(Debug, Clone, Default)]
pub struct JobChange {
    pub name: Option<String>,
    pub mapping: Option<Mapping>,
    pub ingestion: Option<IngestionParams>,
    pub mode: Option<LoadMode>,
    pub labels: Option<std::collections::BTreeMap<String, Value>>,
}

fn diagnostic(code: &str, message: impl Into<String>) -> Diagnostic {
    Diagnostic::new(code, message, None)
}

fn check_url(field: &str, url: &str, destination: bool) -> Option<Diagnostic> {
    let ok = if destination {
        ["postgres://", "postgresql://", "sqlite:"]
            .iter()
            .any(|p| url.starts_with(p))
    } else {
        [
            "postgres://",
            "postgresql://",
            "mysql://",
            "mariadb://",
            "sqlite:",
            "file://",
        ]
        .iter()
        .any(|p| url.starts_with(p))
            || warehouse_of(url).is_some()
    };
    (!ok).then(|| {
        diagnostic(
            "unsupported_connection",
            format!(
                "{field} `{}` is not a connection sluice can use: expected {}",
                redact(url),
                if destination {
                    "postgres:// or sqlite://"
                } else {
                    "postgres://, mysql:// (mariadb://), sqlite:// or file:// (CSV, JSONL)"
                }
            ),
        )
    })
}

impl Control {
    fn job_id(&self, id: &str) -> Result<JobId> {
        JobId::parse(id).map_err(|e| ControlError::NotFound(e.to_string()))
    }

    /// A job of `org` (deleted ones too).
    pub async fn get_job(&self, org: &OrganizationId, id: &str) -> Result<ImportJob> {
        let id = self.job_id(id)?;
        let job = self.store.find_job(&id).await?;
        if &job.organization_id != org {
            return Err(ControlError::NotFound(format!("job `{id}` not found")));
        }
        Ok(job)
    }

    /// Connects to the source and the destination and checks a job's
    /// table, mapping and parameters, writing nothing anywhere.
    pub async fn validate_job(
        &self,
        source: &str,
        destination: &str,
        spec: &JobSpec,
    ) -> Validation {
        let mut found = Vec::new();
        if let Err(m) = spec.ingestion.check() {
            found.push(diagnostic("invalid_parameter", m));
        }
        if spec.table.trim().is_empty() {
            found.push(diagnostic("missing_table", "the job names no source table"));
        }
        if spec.target.trim().is_empty() {
            found.push(diagnostic(
                "missing_target",
                "the job names no destination table",
            ));
        }
        found.extend(check_url("source", source, false));
        found.extend(check_url("destination", destination, true));
        if let Some(store) = warehouse_of(source) {
            found.push(diagnostic(
                "table_store_not_supported",
                format!(
                    "sluice cannot read {store} tables yet: the job can be stored, but its \
                     queries will fail until a {store} connector exists"
                ),
            ));
        }
        if !found.is_empty() {
            return Validation {
                diagnostics: found,
                columns: vec![],
            };
        }
        if let Err(e) = inspect::destination(destination).await {
            found.push(diagnostic(
                "destination_unreachable",
                format!("destination {}: {e}", redact(destination)),
            ));
        }
        let columns = match inspect::columns(source, &spec.table).await {
            Ok(c) if c.is_empty() => {
                found.push(diagnostic(
                    "table_not_found",
                    format!(
                        "table `{}` does not exist in {} (or has no columns)",
                        spec.table,
                        redact(source)
                    ),
                ));
                return Validation {
                    diagnostics: found,
                    columns: vec![],
                };
            }
            Ok(c) => c,
            Err(e) => {
                found.push(diagnostic(
                    "source_unreachable",
                    format!("source {}: {e}", redact(source)),
                ));
                return Validation {
                    diagnostics: found,
                    columns: vec![],
                };
            }
        };
        let names: Vec<String> = columns.iter().map(|c| c.name.clone()).collect();
        let selected = match spec.mapping.select(&names) {
            Ok(s) => s,
            Err(problems) => {
                found.extend(problems);
                vec![]
            }
        };
        // Types: the change column orders windows by time; a timestamp
        // field holds times (or epoch numbers).
        let typed = |field: &str, col: Option<&str>, allowed: &[Class], what: &str| {
            let col = col?;
            let c = columns.iter().find(|c| c.name == col)?;
            (!allowed.contains(&c.class)).then(|| {
                Diagnostic::new(
                    if field == "changeTimestamp" {
                        "change_column_not_timestamp"
                    } else {
                        "column_type_unusable"
                    },
                    format!(
                        "schema.{field}: column `{col}` is {} but must be {what}",
                        c.sql_type
                    ),
                    Some(col),
                )
            })
        };
        let mut typed_problems = Vec::new();
        if spec.mapping.change_timestamp.is_some() {
            typed_problems.extend(typed(
                "changeTimestamp",
                spec.mapping.change_timestamp.as_deref(),
                &[Class::Time],
                "a timestamp or a date",
            ));
        } else if spec.mode != LoadMode::Destructive {
            typed_problems.extend(typed(
                "changeColumn",
                spec.change_column.as_deref(),
                &[Class::Time, Class::Number],
                "a timestamp, a date or a number",
            ));
        }
        typed_problems.extend(typed(
            "timestamp",
            spec.mapping.timestamp.as_deref(),
            &[Class::Time, Class::Number],
            "a timestamp or a number of seconds",
        ));
        for mut d in typed_problems {
            d.sample = match &d.column {
                Some(col) => inspect::sample(source, &spec.table, col)
                    .await
                    .ok()
                    .flatten(),
                None => None,
            };
            found.push(d);
        }
        if spec.mode == LoadMode::Merge {
            match spec.key() {
                None => found.push(diagnostic(
                    "missing_key",
                    "a merge job needs `key` (or schema.predictionId): the column that \
                     identifies a row",
                )),
                Some(k) if !selected.is_empty() && !selected.iter().any(|s| s == k) => {
                    found.push(Diagnostic::new(
                        "column_not_found",
                        format!("key: column `{k}` is not a loaded column of the source table"),
                        Some(k),
                    ))
                }
                _ => {}
            }
        }
        if spec.mode != LoadMode::Destructive && spec.change_column().is_none() {
            found.push(diagnostic(
                "missing_change_column",
                "an incremental job needs schema.changeTimestamp (or change_column); \
                 use mode destructive to reload the whole table each time",
            ));
        } else if let Some(c) = spec.change_column() {
            if !names.iter().any(|n| n == c) {
                if spec.mapping.change_timestamp.is_none() {
                    found.push(Diagnostic::new(
                        "column_not_found",
                        format!("change_column: column `{c}` is not in the source table"),
                        Some(c),
                    ));
                }
            } else if !selected.is_empty() && !selected.iter().any(|s| s == c) {
                found.push(Diagnostic::new(
                    "change_column_excluded",
                    format!(
                        "the change column `{c}` is excluded by the mapping: it must be loaded"
                    ),
                    Some(c),
                ));
            }
        }
        Validation {
            diagnostics: found,
            columns: selected,
        }
    }

    fn destination_of(&self, org: &OrganizationId, asked: Option<&str>) -> Result<String> {
        match (
            asked.filter(|d| !d.trim().is_empty()),
            &self.settings.warehouse,
        ) {
            (Some(d), _) => Ok(d.to_owned()),
            (None, Some(folder)) => {
                std::fs::create_dir_all(folder).map_err(|e| {
                    ControlError::Internal(format!("cannot make the embedded warehouse: {e}"))
                })?;
                Ok(format!(
                    "sqlite://{}",
                    folder.join(format!("{}.db", org.as_str())).display()
                ))
            }
            (None, None) => Err(bad(
                "the job names no destination and this server has no embedded warehouse",
            )),
        }
    }

    /// `target`, or the first of `target_2`, `target_3`, … that no live
    /// job loads.
    async fn free_target(&self, destination: &str, target: &str) -> Result<String> {
        for n in 1..1000 {
            let candidate = match n {
                1 => target.to_owned(),
                n => format!("{target}_{n}"),
            };
            let key = destination_key(destination, &candidate);
            if self.store.job_loading(&key).await?.is_none() {
                return Ok(candidate);
            }
        }
        Err(ControlError::Conflict(format!(
            "{target} and its 998 numbered siblings are all loaded by other jobs"
        )))
    }

    /// Refuses a job whose destination table another live job loads: a
    /// table belongs to one job (two would load the same rows twice).
    async fn check_table_free(
        &self,
        org: &OrganizationId,
        destination: &str,
        target: &str,
    ) -> Result<String> {
        let key = destination_key(destination, target);
        if let Some(owner) = self.store.job_loading(&key).await? {
            return Err(ControlError::Conflict(if &owner.organization_id == org {
                format!(
                    "table {target} of {} is loaded by job {} ({}) already: a destination \
                     table belongs to one job; choose another target, or delete that job",
                    redact(destination),
                    owner.id,
                    owner.name
                )
            } else {
                format!(
                    "table {target} of {} is loaded by a job of another organization: \
                     choose another target",
                    redact(destination)
                )
            }));
        }
        Ok(key)
    }

    /// Validates a job and, unless `dry_run`, stores it (active, its first
    /// query due now). A job that does not validate is never stored.
    pub async fn create_job(
        &self,
        org: &OrganizationId,
        new: NewJob,
        dry_run: bool,
    ) -> Result<(Option<ImportJob>, Validation)> {
        let destination = self.destination_of(org, new.destination.as_deref())?;
        let mut new = new;
        if new.number_taken_target {
            new.spec.target = self.free_target(&destination, &new.spec.target).await?;
        }
        let destination_key = self
            .check_table_free(org, &destination, &new.spec.target)
            .await?;
        let name = if new.name.trim().is_empty() {
            format!("{} -> {}", new.spec.table, new.spec.target)
        } else {
            new.name.trim().to_owned()
        };
        // Checked before anything is read, dry runs too.
        new.source = self
            .allowed_source(org, &new.source, &new.spec.table)
            .await?;
        let validation = self
            .validate_job(&new.source, &destination, &new.spec)
            .await;
        if dry_run || !validation.accepts() {
            return Ok((None, validation));
        }
        if new.spec.labels.contains_key("modelName") {
            // The model the job feeds, made with the job (not on a read).
            let model = self
                .model_for_job(org, &new.space, &name, &new.spec)
                .await?;
            new.spec
                .labels
                .insert("modelId".into(), Value::String(model.id.to_string()));
        }
        let now = time::now();
        let scheduled = !new.spec.triggered();
        let job = ImportJob {
            seq: 0,
            id: JobId::generate(),
            organization_id: org.clone(),
            space: new.space,
            name,
            status: JobStatus::Active,
            spec: new.spec,
            source_sealed: self.sealer.seal(&new.source),
            destination_sealed: self.sealer.seal(&destination),
            source_shown: redact(&new.source),
            destination_shown: redact(&destination),
            destination_key: Some(destination_key),
            next_query_at: scheduled.then_some(now),
            created_at: now,
            modified_at: now,
        };
        self.store.create_job(&job).await?;
        crate::bus::wake(&*self.store, &self.wakers, crate::bus::IMPORTER).await;
        Ok((Some(job), validation))
    }

    pub async fn list_jobs(
        &self,
        filter: &JobFilter,
        page: PageRequest,
    ) -> Result<Page<ImportJob>> {
        Ok(self.store.list_jobs(filter, page).await?)
    }

    pub async fn count_jobs(&self, filter: &JobFilter) -> Result<i64> {
        Ok(self.store.count_jobs(filter).await?)
    }

    /// Changes a job's mapping, parameters, mode, name or labels. A new
    /// mapping is validated against the source first; nothing is saved
    /// when it does not validate.
    pub async fn update_job(
        &self,
        org: &OrganizationId,
        id: &str,
        change: JobChange,
    ) -> Result<(ImportJob, Validation)> {
        let mut job = self.get_job(org, id).await?;
        if job.status == JobStatus::Deleted {
            return Err(ControlError::Conflict(format!("job {} is deleted", job.id)));
        }
        let mut spec = job.spec.clone();
        let schema_changed = change.mapping.is_some() || change.mode.is_some();
        if let Some(m) = change.mapping {
            spec.mapping = m;
        }
        if let Some(p) = change.ingestion {
            p.check().map_err(bad)?;
            // A new refresh interval counts from the last query.
            if p.refresh() != spec.ingestion.refresh() {
                if let Some(next) = job.next_query_at {
                    let last = next
                        - chrono::Duration::from_std(spec.ingestion.refresh()).unwrap_or_default();
                    job.next_query_at =
                        Some(last + chrono::Duration::from_std(p.refresh()).unwrap_or_default());
                }
            }
            spec.ingestion = p;
        }
        if let Some(m) = change.mode {
            spec.mode = m;
        }
        if let Some(l) = change.labels {
            spec.labels = l;
        }
        let validation = if schema_changed {
            let source = self
                .sealer
                .open(&job.source_sealed)
                .map_err(ControlError::Internal)?;
            let dest = self
                .sealer
                .open(&job.destination_sealed)
                .map_err(ControlError::Internal)?;
            let v = self.validate_job(&source, &dest, &spec).await;
            if !v.accepts() {
                return Ok((job, v));
            }
            v
        } else {
            Validation {
                diagnostics: vec![],
                columns: vec![],
            }
        };
        if let Some(n) = change.name.filter(|n| !n.trim().is_empty()) {
            job.name = n.trim().to_owned();
        }
        job.spec = spec;
        job.modified_at = time::now();
        self.store.update_job(&job).await?;
        crate::bus::wake(&*self.store, &self.wakers, crate::bus::IMPORTER).await;
        Ok((job, validation))
    }

    /// Pauses (no new queries; waiting ones are cancelled), resumes (the
    /// next query is due at once) or deletes a job.
    pub async fn set_job_status(
        &self,
        org: &OrganizationId,
        id: &str,
        status: JobStatus,
    ) -> Result<ImportJob> {
        let mut job = self.get_job(org, id).await?;
        if job.status == JobStatus::Deleted && status != JobStatus::Deleted {
            return Err(ControlError::Conflict(format!(
                "job {} is deleted: it cannot be {}",
                job.id,
                if status == JobStatus::Active {
                    "resumed"
                } else {
                    "paused"
                }
            )));
        }
        if job.status == status {
            return Ok(job);
        }
        let now = time::now();
        job.next_query_at = (status == JobStatus::Active && !job.spec.triggered()).then_some(now);
        job.status = status;
        job.modified_at = now;
        self.store.update_job(&job).await?;
        crate::bus::wake(&*self.store, &self.wakers, crate::bus::IMPORTER).await;
        Ok(job)
    }

    /// A new query of an active job: its next window, or the window
    /// [start, end) when both are given (the rows there are replaced).
    pub async fn run_job(
        &self,
        org: &OrganizationId,
        id: &str,
        window: Option<(String, String)>,
        claim: Option<(&str, std::time::Duration)>,
    ) -> Result<Query> {
        let job = self.get_job(org, id).await?;
        if let Some((start, end)) = &window {
            match (time::parse(start), time::parse(end)) {
                (Some(a), Some(b)) if a < b => {}
                (Some(_), Some(_)) => {
                    return Err(bad(format!(
                        "window start {start} is not before its end {end}"
                    )))
                }
                _ => {
                    return Err(bad(format!(
                        "window [{start}, {end}) is not two times such as 2024-08-20T01:00:00Z"
                    )))
                }
            }
        }
        let now = time::now();
        let (status, owner, started) = match claim {
            Some((worker, _)) => (RunStatus::Starting, Some(worker.to_owned()), Some(now)),
            None => (RunStatus::Runnable, None, None),
        };
        let trigger = if window.is_some() {
            QueryTrigger::Window
        } else {
            QueryTrigger::Manual
        };
        let q = Query {
            status,
            attempt: i32::from(claim.is_some()),
            lease_owner: owner,
            lease_token: i64::from(claim.is_some()),
            started_at: started,
            ..Query::new(
                job.id.clone(),
                job.organization_id.clone(),
                trigger,
                window,
                now,
            )
        };
        let q = self
            .store
            .create_query(&q, claim.map(|(_, ttl)| ttl))
            .await?;
        if claim.is_none() {
            crate::bus::wake(&*self.store, &self.wakers, crate::bus::IMPORTER).await;
        }
        Ok(q)
    }

    pub async fn list_queries(
        &self,
        org: &OrganizationId,
        id: &str,
        page: PageRequest,
    ) -> Result<Page<Query>> {
        let job = self.get_job(org, id).await?;
        Ok(self.store.list_queries(&job.id, page).await?)
    }

    /// (succeeded, failed, not yet ended) queries of a job.
    pub async fn query_counts(&self, job: &JobId) -> Result<(i64, i64, i64)> {
        Ok(self.store.query_counts(job).await?)
    }

    /// The same for a page of jobs, in one look.
    pub async fn query_counts_of(
        &self,
        jobs: &[JobId],
    ) -> Result<std::collections::HashMap<JobId, (i64, i64, i64)>> {
        Ok(self.store.query_counts_of(jobs).await?)
    }

    pub async fn get_query(&self, org: &OrganizationId, id: &str) -> Result<Query> {
        let id = QueryId::parse(id).map_err(|e| ControlError::NotFound(e.to_string()))?;
        Ok(self.store.get_query(org, &id).await?)
    }

    pub async fn query_tasks(&self, org: &OrganizationId, id: &str) -> Result<Vec<QueryTask>> {
        let q = self.get_query(org, id).await?;
        Ok(self.store.list_tasks(&q.id).await?)
    }

    pub async fn cancel_query(&self, org: &OrganizationId, id: &str) -> Result<Query> {
        let q = self.get_query(org, id).await?;
        Ok(self.store.cancel_query(org, &q.id, time::now()).await?)
    }
}

/// Names a destination table whatever the password in its URL: the
/// URL without its secret, and the table (PostgreSQL's `public.` left out).
fn destination_key(destination: &str, target: &str) -> String {
    use sha2::Digest;
    let target = target.strip_prefix("public.").unwrap_or(target);
    hex::encode(sha2::Sha256::digest(
        format!("{}\n{target}", redact(destination)).as_bytes(),
    ))
}
