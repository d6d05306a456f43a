//! The Tailer-style action API's use cases: deploying configuration files
//! (with a context's constants), the warehouses their Google Cloud project
//! names stand for, launching runs, reading and setting their statuses, and
//! switching configurations on, off or into the archive.
//!
//! A configuration belongs to the organization whose account code it
//! carries; every read and write is scoped by the caller's organization,
//! so another organization's configuration or run is "not found" and one of
//! another account is refused.

use std::collections::{BTreeMap, BTreeSet};

use sluice_domain::action::{
    self, ActionRun, ActionStatus, Context, Deployed, NaiveDate, Problem, TableToTable, TaskKind,
    Warehouse,
};
use sluice_store::ActionRunFilter;

use super::*;

/// What the warehouse name `embedded` stands for: the organization's own
/// folder of the embedded warehouse.
pub const EMBEDDED: &str = "embedded";

/// A configuration file as the deployer read it: its text and the text of
/// each file it names (by the name it uses).
#[derive(Debug, Clone, Default)]
pub struct ConfigurationFiles {
    pub text: String,
    pub files: BTreeMap<String, String>,
}

/// A workflow and, for each job it awaits, the run that counted for it
/// since it last fired (None: not yet).
#[derive(Debug, Clone)]
pub struct WorkflowState {
    pub workflow: action::Workflow,
    pub awaited: Vec<(String, Option<String>)>,
}

/// What a caller names a configuration by, as the action API's requests
/// carry it.
#[derive(Debug, Clone, Default)]
pub struct ConfigurationRef {
    pub account: String,
    pub environment: String,
    pub configuration_type: String,
    pub configuration_id: String,
}

fn problems(what: &str, p: Vec<Problem>) -> ControlError {
    ControlError::BadRequest(format!(
        "{what}: {}",
        p.iter()
            .map(Problem::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    ))
}

/// The cron expression a configuration's body runs on: a table-to-table
/// configuration's `schedule_interval`, a workflow's
/// `schedule_interval_reset`.
pub fn schedule_of(body: &Value) -> Option<&str> {
    body.get("schedule")
        .or_else(|| body.get("reset_schedule"))
        .and_then(Value::as_str)
}

/// The next time after `now` a cron expression (five fields, UTC) names.
pub fn next_time(cron: &str, now: Timestamp) -> Result<Timestamp> {
    let c: croner::Cron = cron
        .parse()
        .map_err(|e| bad(format!("schedule_interval `{cron}`: {e}")))?;
    c.find_next_occurrence(&now, false)
        .map_err(|e| bad(format!("schedule_interval `{cron}`: {e}")))
}

impl Control {
    /// The account code of `org`, which its configurations must carry.
    pub async fn set_account(&self, org: &str, account: &str) -> Result<()> {
        let org = OrganizationId::parse(org).map_err(|e| bad(e.to_string()))?;
        self.store.get_organization(&org).await?;
        if !action::account_code(account) {
            return Err(bad(format!(
                "account `{account}`: expected a 6-digit account code, like 000099"
            )));
        }
        self.store
            .set_account(&org, account)
            .await
            .map_err(|e| match e {
                StoreError::Conflict(_) => ControlError::Conflict(format!(
                    "account {account} belongs to another organization"
                )),
                e => e.into(),
            })
    }

    pub async fn account_of(&self, org: &OrganizationId) -> Result<Option<String>> {
        Ok(self.store.account_of(org).await?)
    }

    /// Declares (or replaces) warehouse `name` of `org`: `embedded` (the
    /// organization's folder of the embedded warehouse) or a postgres://
    /// URL, sealed.
    pub async fn add_warehouse(&self, org: &str, name: &str, url: &str) -> Result<Warehouse> {
        let org = OrganizationId::parse(org).map_err(|e| bad(e.to_string()))?;
        self.store.get_organization(&org).await?;
        connection_name("warehouse", name)?;
        let url = url.trim();
        let embedded = url == EMBEDDED;
        let postgres = url.starts_with("postgres://") || url.starts_with("postgresql://");
        if !(embedded || postgres) {
            return Err(bad(format!(
                "warehouse `{name}`: expected `embedded` or a postgres:// URL, got `{}`",
                crate::secrets::redact(url)
            )));
        }
        if embedded && self.settings.warehouse.is_none() {
            return Err(bad("this server has no embedded warehouse"));
        }
        let w = Warehouse {
            organization_id: org,
            name: name.to_owned(),
            url_sealed: self.sealer.seal(url),
            url_shown: crate::secrets::redact(url),
            created_at: time::now(),
        };
        self.store.put_warehouse(&w).await?;
        Ok(w)
    }

    /// Declares (or replaces) bucket `name` of `org`, what a
    /// table-to-storage file's `gcs_dest_bucket` stands for: `local` (a
    /// folder of the organization's under the data dir), `file:///folder`
    /// or `s3://bucket/prefix`.
    pub async fn add_bucket(&self, org: &str, name: &str, url: &str) -> Result<Warehouse> {
        let org = OrganizationId::parse(org).map_err(|e| bad(e.to_string()))?;
        self.store.get_organization(&org).await?;
        connection_name("bucket", name)?;
        let url = match url.trim() {
            "local" => {
                let data = self
                    .settings
                    .warehouse
                    .as_ref()
                    .and_then(|w| w.parent())
                    .ok_or_else(|| bad("this server has no data dir for local buckets"))?;
                format!(
                    "file://{}",
                    data.join("buckets").join(org.as_str()).join(name).display()
                )
            }
            u if u.starts_with("file:///") || u.starts_with("s3://") => u.to_owned(),
            u => {
                return Err(bad(format!(
                "bucket `{name}`: expected `local`, file:///FOLDER or s3://BUCKET/PREFIX, got `{}`",
                crate::secrets::redact(u)
            )))
            }
        };
        crate::blob::Blobs::open(&url).map_err(|e| bad(e.to_string()))?;
        let b = Warehouse {
            organization_id: org,
            name: name.to_owned(),
            url_sealed: self.sealer.seal(&url),
            url_shown: crate::secrets::redact(&url),
            created_at: time::now(),
        };
        self.store.put_bucket(&b).await?;
        Ok(b)
    }

    pub async fn buckets(&self, org: &str) -> Result<Vec<Warehouse>> {
        let org = OrganizationId::parse(org).map_err(|e| bad(e.to_string()))?;
        Ok(self.store.buckets_of(&org).await?)
    }

    pub async fn remove_bucket(&self, org: &str, name: &str) -> Result<()> {
        let org = OrganizationId::parse(org).map_err(|e| bad(e.to_string()))?;
        Ok(self.store.remove_bucket(&org, name).await?)
    }

    pub async fn warehouses(&self, org: &str) -> Result<Vec<Warehouse>> {
        let org = OrganizationId::parse(org).map_err(|e| bad(e.to_string()))?;
        Ok(self.store.warehouses_of(&org).await?)
    }

    pub async fn remove_warehouse(&self, org: &str, name: &str) -> Result<()> {
        let org = OrganizationId::parse(org).map_err(|e| bad(e.to_string()))?;
        Ok(self.store.remove_warehouse(&org, name).await?)
    }

    /// Deploys a configuration file of `org` (Tailer's `tailer deploy
    /// configuration`), with the constants of context `context` (deployed
    /// before); answers it as stored. Every problem of the file is named at
    /// once, and nothing is stored when there is one.
    pub async fn deploy_configuration(
        &self,
        org: &str,
        file: &ConfigurationFiles,
        context: Option<&str>,
    ) -> Result<Deployed> {
        let org = OrganizationId::parse(org).map_err(|e| bad(e.to_string()))?;
        self.store.get_organization(&org).await?;
        let account = self.store.account_of(&org).await?.ok_or_else(|| {
            bad(format!(
                "organization {org} has no account code: give it one with \
                 `sluice org account {org} 000099`"
            ))
        })?;
        let raw: Value = serde_json::from_str(&file.text)
            .map_err(|e| bad(format!("the configuration is not JSON: {e}")))?;
        let (kind, id, environment, file_account) =
            action::identity(&raw).map_err(|p| problems("the configuration", p))?;
        if file_account != account {
            return Err(ControlError::Forbidden(format!(
                "the configuration is of account {file_account}; organization {org} is account \
                 {account}"
            )));
        }
        let context = match context.filter(|c| *c != "NO_CONTEXT") {
            Some(c) => {
                let deployed = self.store.get_configuration(&org, action::CONTEXT, c).await;
                let deployed = deployed.map_err(|e| match e {
                    StoreError::NotFound(_) => {
                        bad(format!("context `{c}` is not deployed: deploy it first"))
                    }
                    e => e.into(),
                })?;
                Some(
                    serde_json::from_value::<Context>(deployed.body)
                        .map_err(|e| ControlError::Internal(format!("context {c}: {e}")))?,
                )
            }
            None => None,
        };
        let substitute = |text: &str| {
            action::substitute_constants(text, context.as_ref(), &environment, &account)
        };
        let text = substitute(&file.text).map_err(|p| problems("the configuration", p))?;
        let doc: Value = serde_json::from_str(&text).map_err(|e| {
            bad(format!(
                "the configuration with its constants is not JSON: {e}"
            ))
        })?;
        let now = time::now();
        // What every kind's stored configuration shares.
        let base = Deployed {
            organization_id: org.clone(),
            configuration_type: kind.clone(),
            api_id: id.clone(),
            configuration_id: id.clone(),
            account: account.clone(),
            environment: environment.clone(),
            version: 0,
            activated: true,
            archived: false,
            max_active_runs: 1,
            body: Value::Null,
            next_run_at: None,
            created_at: now,
            modified_at: now,
        };
        let deployed = match kind.as_str() {
            action::CONTEXT => {
                let c = action::parse_context(&doc).map_err(|p| problems("the context", p))?;
                Deployed {
                    body: serde_json::to_value(&c).map_err(|e| bad(e.to_string()))?,
                    ..base
                }
            }
            action::TABLE_TO_TABLE => {
                let (files, mut p) = named_files(&doc, file, &substitute);
                let deployed_id = match &context {
                    Some(c) => format!("{}_{}", c.qualified(), id),
                    None => id.clone(),
                };
                let parsed = action::parse_table_to_table(&doc, &files, &deployed_id);
                let c = match parsed {
                    Ok(c) if p.is_empty() => c,
                    Ok(_) => return Err(problems("the configuration", p)),
                    Err(mut more) => {
                        p.append(&mut more);
                        return Err(problems("the configuration", p));
                    }
                };
                self.check_projects(&org, &c).await?;
                let api_id = match &context {
                    Some(_) => deployed_id.clone(),
                    None => c.api_id(),
                };
                let next_run_at = match (&c.schedule, c.activated && !c.archived) {
                    (Some(cron), true) => Some(next_time(cron, now)?),
                    (Some(cron), false) => {
                        next_time(cron, now)?;
                        None
                    }
                    (None, _) => None,
                };
                Deployed {
                    api_id,
                    configuration_id: deployed_id,
                    activated: c.activated,
                    archived: c.archived,
                    max_active_runs: c.max_active_runs,
                    body: serde_json::to_value(&c).map_err(|e| bad(e.to_string()))?,
                    next_run_at,
                    ..base
                }
            }
            action::TABLE_TO_STORAGE => {
                let (files, mut p) = named_files(&doc, file, &substitute);
                let deployed_id = match &context {
                    Some(c) => format!("{}_{}", c.qualified(), id),
                    None => id.clone(),
                };
                let c = match action::parse_table_to_storage(&doc, &files, &deployed_id) {
                    Ok(c) if p.is_empty() => c,
                    Ok(_) => return Err(problems("the configuration", p)),
                    Err(mut more) => {
                        p.append(&mut more);
                        return Err(problems("the configuration", p));
                    }
                };
                self.check_exports(&org, &c).await?;
                let next_run_at = match (&c.schedule, c.activated && !c.archived) {
                    (Some(cron), true) => Some(next_time(cron, now)?),
                    _ => None,
                };
                Deployed {
                    api_id: deployed_id.clone(),
                    configuration_id: deployed_id,
                    activated: c.activated,
                    archived: c.archived,
                    body: serde_json::to_value(&c).map_err(|e| bad(e.to_string()))?,
                    next_run_at,
                    ..base
                }
            }
            action::STORAGE_TO_STORAGE => {
                let c = action::parse_storage_to_storage(&doc)
                    .map_err(|p| problems("the configuration", p))?;
                let declared: BTreeSet<String> = self
                    .store
                    .buckets_of(&org)
                    .await?
                    .into_iter()
                    .map(|b| b.name)
                    .collect();
                let mut p = Vec::new();
                let places = std::iter::once(("source".to_owned(), &c.source)).chain(
                    c.destinations
                        .iter()
                        .enumerate()
                        .map(|(i, d)| (format!("destinations[{i}]"), d)),
                );
                for (path, place) in places {
                    if !declared.contains(&place.bucket) {
                        p.push(Problem {
                            path,
                            message: format!(
                                "bucket `{}` is not a bucket of this organization: declare it \
                                 with `sluice bucket add {} local --org {org}` (or file:///…, s3://…)",
                                place.bucket, place.bucket
                            ),
                        });
                    }
                }
                if !p.is_empty() {
                    return Err(problems("the configuration", p));
                }
                Deployed {
                    activated: c.activated,
                    archived: c.archived,
                    max_active_runs: c.max_active_runs,
                    body: serde_json::to_value(&c).map_err(|e| bad(e.to_string()))?,
                    ..base
                }
            }
            action::WORKFLOW => {
                let w = action::parse_workflow(&doc).map_err(|p| problems("the workflow", p))?;
                let next_run_at = match (&w.reset_schedule, w.activated && !w.archived) {
                    (Some(cron), true) => Some(next_time(cron, now)?),
                    _ => None,
                };
                Deployed {
                    activated: w.activated,
                    archived: w.archived,
                    body: serde_json::to_value(&w).map_err(|e| bad(e.to_string()))?,
                    next_run_at,
                    ..base
                }
            }
            other => {
                return Err(bad(format!(
                    "configuration_type `{other}`: sluice deploys table-to-table, workflow and \
                     context configurations"
                )))
            }
        };
        let version = self.store.deploy_configuration(&deployed).await?;
        Ok(Deployed {
            version,
            ..deployed
        })
    }

    /// Every project a configuration's tasks name must be a warehouse of
    /// the organization.
    async fn check_projects(&self, org: &OrganizationId, c: &TableToTable) -> Result<()> {
        let declared: BTreeSet<String> = self
            .store
            .warehouses_of(org)
            .await?
            .into_iter()
            .map(|w| w.name)
            .collect();
        let mut p = Vec::new();
        for (i, t) in c.tasks.iter().enumerate() {
            for project in task_projects(&t.kind) {
                if !declared.contains(project) {
                    p.push(Problem {
                        path: format!("workflow[{i}]"),
                        message: format!(
                            "project `{project}` is not a warehouse of this organization: \
                             declare it with `sluice warehouse add {project} embedded --org {org}` \
                             (or a postgres:// URL)"
                        ),
                    });
                }
            }
            if let TaskKind::CopyTable {
                source,
                destination,
                ..
            } = &t.kind
            {
                if source.project != destination.project {
                    p.push(Problem {
                        path: format!("workflow[{i}]"),
                        message: "copy_gbq_table between two warehouses is not supported".into(),
                    });
                }
            }
        }
        if p.is_empty() {
            Ok(())
        } else {
            Err(problems("the configuration", p))
        }
    }

    /// Every warehouse and bucket a table-to-storage configuration names
    /// must be the organization's.
    async fn check_exports(&self, org: &OrganizationId, c: &action::TableToStorage) -> Result<()> {
        let warehouses: BTreeSet<String> = self
            .store
            .warehouses_of(org)
            .await?
            .into_iter()
            .map(|w| w.name)
            .collect();
        let buckets: BTreeSet<String> = self
            .store
            .buckets_of(org)
            .await?
            .into_iter()
            .map(|b| b.name)
            .collect();
        let mut p = Vec::new();
        for (i, t) in c.tasks.iter().enumerate() {
            if !warehouses.contains(&t.project) {
                p.push(Problem {
                    path: format!("tasks[{i}].gcp_project_id"),
                    message: format!(
                        "project `{}` is not a warehouse of this organization: declare it with \
                         `sluice warehouse add {} embedded --org {org}`",
                        t.project, t.project
                    ),
                });
            }
            if !buckets.contains(&t.bucket) {
                p.push(Problem {
                    path: format!("tasks[{i}].gcs_dest_bucket"),
                    message: format!(
                        "bucket `{}` is not a bucket of this organization: declare it with \
                         `sluice bucket add {} local --org {org}` (or file:///…, s3://…)",
                        t.bucket, t.bucket
                    ),
                });
            }
        }
        if p.is_empty() {
            Ok(())
        } else {
            Err(problems("the configuration", p))
        }
    }

    pub async fn list_configurations(&self, org: &str) -> Result<Vec<Deployed>> {
        let org = OrganizationId::parse(org).map_err(|e| bad(e.to_string()))?;
        Ok(self.store.list_configurations(&org).await?)
    }

    /// The configuration a request names, checked: the caller's account,
    /// its environment, not archived (unless `archived_too`).
    async fn configuration(
        &self,
        who: &Principal,
        r: &ConfigurationRef,
        archived_too: bool,
    ) -> Result<Deployed> {
        self.check_account(who, &r.account).await?;
        if r.configuration_id.is_empty() || r.configuration_type.is_empty() {
            return Err(bad(
                "configuration_type and configuration_id are required".to_string()
            ));
        }
        let found = self
            .store
            .get_configuration(
                &who.organization,
                &r.configuration_type,
                &r.configuration_id,
            )
            .await;
        let c = match found {
            Ok(c) if !c.archived || archived_too => c,
            Ok(_) | Err(StoreError::NotFound(_)) => {
                return Err(ControlError::NotFound(format!(
                    "{} configuration `{}` not found in account {}",
                    r.configuration_type, r.configuration_id, r.account
                )))
            }
            Err(e) => return Err(e.into()),
        };
        if !r.environment.is_empty() && r.environment != c.environment {
            return Err(ControlError::NotFound(format!(
                "{} configuration `{}` is not deployed in environment {}",
                r.configuration_type, r.configuration_id, r.environment
            )));
        }
        Ok(c)
    }

    /// The caller's organization must be the account the request names.
    async fn check_account(&self, who: &Principal, account: &str) -> Result<()> {
        if account.is_empty() {
            return Err(bad("account is required"));
        }
        match self.store.account_of(&who.organization).await? {
            Some(a) if a == account => Ok(()),
            Some(a) => Err(ControlError::Forbidden(format!(
                "these credentials are of account {a} and may not act on account {account}"
            ))),
            None => Err(ControlError::Forbidden(format!(
                "these credentials' organization has no account code; account {account} is not \
                 theirs"
            ))),
        }
    }

    /// Launches a run of a configuration (`launch_job`); answers it.
    pub async fn launch(
        &self,
        who: &Principal,
        r: &ConfigurationRef,
        execution_date: Option<&str>,
    ) -> Result<ActionRun> {
        let c = self.configuration(who, r, false).await?;
        let runnable = [action::TABLE_TO_TABLE, action::TABLE_TO_STORAGE];
        if !runnable.contains(&c.configuration_type.as_str()) {
            return Err(bad(format!(
                "{} configurations cannot be launched{}",
                c.configuration_type,
                if c.configuration_type == action::WORKFLOW {
                    ": a workflow fires when the jobs it awaits have succeeded"
                } else {
                    ""
                }
            )));
        }
        if !c.activated {
            return Err(ControlError::Conflict(format!(
                "configuration `{}` is deactivated: activate it with set_configuration_status",
                c.api_id
            )));
        }
        let now = time::now();
        let date = match execution_date {
            Some(d) => parse_day(d)?,
            None => now.date_naive(),
        };
        let run = ActionRun::new(&c, date, now);
        self.store.create_action_run(&run).await?;
        crate::bus::wake(&*self.store, &self.wakers, crate::bus::ACTIONS).await;
        Ok(run)
    }

    /// One run of a configuration (`check_run_status`), with the
    /// configuration.
    pub async fn action_run(
        &self,
        who: &Principal,
        r: &ConfigurationRef,
        job_id: Option<&str>,
        run_id: &str,
    ) -> Result<(Deployed, ActionRun)> {
        let c = self.configuration(who, r, true).await?;
        let not_found = || {
            ControlError::NotFound(format!(
                "run `{run_id}` of configuration `{}` not found",
                c.api_id
            ))
        };
        let run = match self.store.get_action_run(&who.organization, run_id).await {
            Ok(run) => run,
            Err(StoreError::NotFound(_)) => return Err(not_found()),
            Err(e) => return Err(e.into()),
        };
        if run.api_id != c.api_id || run.configuration_type != c.configuration_type {
            return Err(not_found());
        }
        if let Some(j) = job_id.filter(|j| !j.is_empty()) {
            if j != run.job_id {
                return Err(ControlError::NotFound(format!(
                    "run `{run_id}` is not a run of job `{j}` (its job is `{}`)",
                    run.job_id
                )));
            }
        }
        Ok((c, run))
    }

    /// The latest runs of a configuration, newest first
    /// (`get_last_status`).
    pub async fn last_runs(
        &self,
        who: &Principal,
        r: &ConfigurationRef,
        execution_date: Option<&str>,
        status: Option<&str>,
        limit: Option<u32>,
    ) -> Result<(Deployed, Vec<ActionRun>)> {
        let c = self.configuration(who, r, true).await?;
        let filter = ActionRunFilter {
            configuration_type: c.configuration_type.clone(),
            api_id: c.api_id.clone(),
            status: status.map(parse_status).transpose()?,
            execution_date: execution_date.map(parse_day).transpose()?,
            before: None,
            limit: limit.unwrap_or(3).clamp(1, 1000),
        };
        let runs = self
            .store
            .list_action_runs(&who.organization, &filter)
            .await?;
        Ok((c, runs))
    }

    /// The runs of the caller's account in one status (`get_by_status`),
    /// each with its configuration (read once for them all).
    pub async fn runs_in(
        &self,
        who: &Principal,
        account: &str,
        status: &str,
        limit: Option<u32>,
    ) -> Result<Vec<(Deployed, ActionRun)>> {
        self.check_account(who, account).await?;
        let status = parse_status(status)?;
        let runs = self
            .store
            .action_runs_in(
                &who.organization,
                status,
                limit.unwrap_or(100).clamp(1, 1000),
            )
            .await?;
        let configs = self.store.list_configurations(&who.organization).await?;
        Ok(runs
            .into_iter()
            .filter_map(|run| {
                let c = configs.iter().find(|c| {
                    c.api_id == run.api_id && c.configuration_type == run.configuration_type
                })?;
                Some((c.clone(), run))
            })
            .collect())
    }

    /// Sets the status a run reports (`set_run_status`): `CHECKED` marks a
    /// failed run as looked at.
    pub async fn set_run_status(
        &self,
        who: &Principal,
        r: &ConfigurationRef,
        job_id: Option<&str>,
        run_id: &str,
        status: &str,
    ) -> Result<(Deployed, ActionRun)> {
        let (c, run) = self.action_run(who, r, job_id, run_id).await?;
        let wanted = parse_status(status)?;
        match wanted {
            ActionStatus::Checked | ActionStatus::NoMatch => {}
            other => {
                return Err(bad(format!(
                    "status {}: a run's status is set to CHECKED (or NO_MATCH); SUCCESS, \
                     FAILED and RUNNING come from the run itself",
                    other.as_str()
                )))
            }
        }
        if wanted == ActionStatus::Checked && !run.status.is_final() {
            return Err(ControlError::Conflict(format!(
                "run {run_id} is still running: only an ended run can be CHECKED"
            )));
        }
        let run = self
            .store
            .report_action_run(&who.organization, run_id, wanted, time::now())
            .await?;
        Ok((c, run))
    }

    /// Activates, deactivates or archives a configuration
    /// (`set_configuration_status`).
    pub async fn set_configuration_status(
        &self,
        who: &Principal,
        r: &ConfigurationRef,
        activated: bool,
        archived: bool,
    ) -> Result<Deployed> {
        let c = self.configuration(who, r, true).await?;
        let now = time::now();
        let updated = self
            .store
            .set_configuration_status(
                &who.organization,
                &c.configuration_type,
                &c.api_id,
                activated,
                archived,
                now,
            )
            .await?;
        // A schedule runs while the configuration is on and not archived.
        let schedule = schedule_of(&updated.body).map(str::to_owned);
        let next = match (schedule, activated && !archived) {
            (Some(cron), true) if updated.next_run_at.is_none() => Some(next_time(&cron, now)?),
            (_, true) => updated.next_run_at,
            (_, false) => None,
        };
        self.store
            .set_next_run(&who.organization, &c.configuration_type, &c.api_id, next)
            .await?;
        Ok(updated)
    }

    /// Forgets which of a workflow's awaited jobs succeeded
    /// (`reset_workflow_status`), as when it was just deployed.
    pub async fn reset_workflow(&self, who: &Principal, r: &ConfigurationRef) -> Result<()> {
        let c = self.workflow(who, r).await?;
        Ok(self
            .store
            .reset_workflow(&who.organization, &c.api_id)
            .await?)
    }

    /// A workflow, and which of its awaited jobs succeeded since it last
    /// fired (`get_workflow_status`).
    pub async fn workflow_state(
        &self,
        who: &Principal,
        r: &ConfigurationRef,
    ) -> Result<(Deployed, WorkflowState)> {
        let c = self.workflow(who, r).await?;
        let state = self.workflow_of(&c).await?;
        Ok((c, state))
    }

    /// A deployed workflow's state.
    pub async fn workflow_of(&self, c: &Deployed) -> Result<WorkflowState> {
        let workflow: action::Workflow = serde_json::from_value(c.body.clone())
            .map_err(|e| ControlError::Internal(format!("workflow {}: {e}", c.api_id)))?;
        let done = self
            .store
            .workflow_successes(&c.organization_id, &c.api_id)
            .await?;
        let awaited = workflow
            .authorized_job_ids
            .iter()
            .map(|job| {
                let run = done
                    .iter()
                    .find(|(j, _, _)| j == job)
                    .map(|(_, r, _)| r.clone());
                (job.clone(), run)
            })
            .collect();
        Ok(WorkflowState { workflow, awaited })
    }

    async fn workflow(&self, who: &Principal, r: &ConfigurationRef) -> Result<Deployed> {
        if r.configuration_type != action::WORKFLOW {
            return Err(bad(format!(
                "configuration_type `{}`: this action is a workflow's",
                r.configuration_type
            )));
        }
        self.configuration(who, r, true).await
    }

    /// The tasks of a run, for the CLI.
    pub async fn action_tasks(&self, run_id: &str) -> Result<Vec<action::ActionTask>> {
        Ok(self.store.list_action_tasks(run_id).await?)
    }

    /// An organization's configuration by its API id, whatever its type.
    pub async fn configuration_named(&self, org: &str, api_id: &str) -> Result<Deployed> {
        let org = OrganizationId::parse(org).map_err(|e| bad(e.to_string()))?;
        for c in self.store.list_configurations(&org).await? {
            if c.api_id == api_id || c.configuration_id == api_id {
                return Ok(c);
            }
        }
        Err(ControlError::NotFound(format!(
            "configuration `{api_id}` not found"
        )))
    }

    /// The latest runs of a configuration (older than run `before`, by
    /// its seq: the next page), for the CLI and the console.
    pub async fn runs_of(
        &self,
        c: &Deployed,
        limit: u32,
        before: Option<i64>,
    ) -> Result<Vec<ActionRun>> {
        let filter = ActionRunFilter {
            configuration_type: c.configuration_type.clone(),
            api_id: c.api_id.clone(),
            status: None,
            execution_date: None,
            before,
            limit,
        };
        Ok(self
            .store
            .list_action_runs(&c.organization_id, &filter)
            .await?)
    }
}

/// A warehouse's or bucket's name, as Google Cloud's project and bucket
/// names are: letters, digits, `.`, `_` and `-`, a letter or digit first
/// (a bucket's name is a folder's name under the data dir).
fn connection_name(kind: &str, name: &str) -> Result<()> {
    let ok = name.len() <= 128
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(bad(format!(
            "{kind} name `{name}`: letters, digits, `.`, `_` and `-`, a letter or digit first, \
             at most 128"
        )))
    }
}

/// The files a configuration names, read beside it, with the constants
/// substituted; a file's own problems are named with its name. (A missing
/// file is named by the configuration's parser.)
fn named_files(
    doc: &Value,
    file: &ConfigurationFiles,
    substitute: &dyn Fn(&str) -> std::result::Result<String, Vec<Problem>>,
) -> (BTreeMap<String, String>, Vec<Problem>) {
    let mut files = BTreeMap::new();
    let mut p = Vec::new();
    for name in action::files_named(doc) {
        let Some(text) = file.files.get(&name) else {
            continue;
        };
        match substitute(text) {
            Ok(t) => {
                files.insert(name, t);
            }
            Err(mut more) => {
                for x in &mut more {
                    x.path = format!("{name}: {}", x.path);
                }
                p.append(&mut more);
            }
        }
    }
    (files, p)
}

/// The projects (warehouses) a task names.
fn task_projects(kind: &TaskKind) -> Vec<&str> {
    match kind {
        TaskKind::Sql { table, .. } => table.iter().map(|t| t.project.as_str()).collect(),
        TaskKind::CreateTable { table, .. } | TaskKind::DeleteTable { table } => {
            vec![table.project.as_str()]
        }
        TaskKind::CopyTable {
            source,
            destination,
            ..
        } => vec![source.project.as_str(), destination.project.as_str()],
        TaskKind::Expectation { .. } => Vec::new(),
    }
}

fn parse_day(d: &str) -> Result<NaiveDate> {
    let day = d.get(..10).unwrap_or(d);
    NaiveDate::parse_from_str(day, "%Y-%m-%d").map_err(|_| {
        bad(format!(
            "execution_date `{d}`: expected a day, YYYY-MM-DD (a time after it is ignored)"
        ))
    })
}

fn parse_status(s: &str) -> Result<ActionStatus> {
    ActionStatus::parse(s).ok_or_else(|| {
        bad(format!(
            "status `{s}`: expected SUCCESS, FAILED, RUNNING, WARNING, CHECKED or NO_MATCH"
        ))
    })
}
