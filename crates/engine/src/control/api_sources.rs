//! HTTP API sources' use cases: making a source from dlt's `rest_api`
//! configuration (secrets sealed), starting, cancelling and retrying its
//! runs under the API Run page's rules, and reading what that page shows —
//! runs filtered and sorted, a run's tasks, tables and messages, typical
//! durations, and the search over a run's tasks.
//!
//! Every read and write is scoped by the caller's organization: another
//! organization's source or run is "not found".

use sluice_domain::api_source::{
    self as domain, status_label, ApiRun, ApiRunTable, ApiSource, ApiTask, DataLoad, RunSort,
    RunType, Searched,
};

use super::*;

/// A run as the page lists it.
#[derive(Debug, Clone)]
pub struct ApiRunView {
    pub run: ApiRun,
    /// How many messages its tasks (and its end) hold.
    pub messages: i64,
}

/// A run with everything its page shows.
#[derive(Debug, Clone)]
pub struct ApiRunDetail {
    pub run: ApiRun,
    pub tasks: Vec<ApiTask>,
    pub tables: Vec<ApiRunTable>,
    pub data_load: Option<DataLoad>,
    /// Whether the retry rules allow retrying it now.
    pub retryable: bool,
}

/// One message of a run: its task's (None: the run's own end) and table.
#[derive(Debug, Clone)]
pub struct RunMessage {
    pub task: Option<String>,
    pub table: Option<String>,
    pub text: String,
}

impl ApiRunDetail {
    /// Every message of the run: its tasks', in their order, then how it
    /// ended.
    pub fn messages(&self) -> Vec<RunMessage> {
        self.tasks
            .iter()
            .flat_map(|t| {
                t.messages.iter().map(move |m| RunMessage {
                    task: Some(t.name.clone()),
                    table: t.table.clone(),
                    text: m.clone(),
                })
            })
            .chain(self.run.error.iter().map(|e| RunMessage {
                task: None,
                table: None,
                text: e.clone(),
            }))
            .collect()
    }
}

/// Which runs of a source to list, and in which order.
#[derive(Debug, Clone, Default)]
pub struct ApiRunsQuery {
    pub run_type: Option<String>,
    pub status: Option<String>,
    /// id, type, status, created, started, finished, duration, records,
    /// tables or messages (default: id).
    pub sort: Option<String>,
    /// Ascending (default: descending, newest first).
    pub ascending: bool,
    pub limit: Option<u32>,
    /// The previous page's `next_page_token`.
    pub after: Option<String>,
}

/// A page of a source's runs; `next_page_token` while more remain.
#[derive(Debug, Clone)]
pub struct ApiRunsPage {
    pub runs: Vec<ApiRunView>,
    pub next_page_token: Option<String>,
}

/// A page's cursor: the sort it belongs to, the last row's key and seq.
fn cursor(sort: RunSort, key: i64, seq: i64) -> String {
    format!("{}.{key}.{seq}", sort.as_str())
}

fn parse_cursor(token: &str, sort: RunSort) -> Option<(i64, i64)> {
    let mut parts = token.splitn(3, '.');
    if parts.next()? != sort.as_str() {
        return None;
    }
    let key = parts.next()?.parse().ok()?;
    let seq = parts.next()?.parse().ok()?;
    Some((key, seq))
}

/// The typical duration of a kind of run.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Durations {
    pub run_type: String,
    /// Completed runs looked at.
    pub runs: usize,
    pub p50_secs: Option<f64>,
    pub p95_secs: Option<f64>,
    pub last_completed_secs: Option<f64>,
}

/// A run's duration in seconds, once it ended.
pub fn duration_secs(run: &ApiRun) -> Option<f64> {
    let (a, b) = (run.started_at?, run.finished_at?);
    Some((b - a).num_milliseconds() as f64 / 1000.0)
}

fn org_id(org: &str) -> Result<OrganizationId> {
    OrganizationId::parse(org).map_err(|e| bad(e.to_string()))
}

/// A source's name as a path or a command gives it: one that no source can
/// have (NUL bytes, 1 MB) is not looked for.
fn source_name(name: &str) -> Result<&str> {
    let ok = !name.is_empty()
        && name.len() <= 100
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok {
        Ok(name)
    } else {
        Err(ControlError::NotFound(format!(
            "API source {:?} not found: a source's name is letters, digits, `_` and `-`",
            name.chars().take(100).collect::<String>()
        )))
    }
}

/// A run's id: its number.
fn run_id(id: &str) -> Result<&str> {
    if !id.is_empty() && id.len() <= 19 && id.bytes().all(|b| b.is_ascii_digit()) {
        Ok(id)
    } else {
        Err(ControlError::NotFound(format!(
            "API run {:?} not found: a run's id is its number",
            id.chars().take(100).collect::<String>()
        )))
    }
}

/// A status asked for by its name (FAILED) or its label (Failed, Waiting
/// to start).
fn status_matches(asked: &str, status: RunStatus) -> bool {
    let asked = asked.trim();
    asked.eq_ignore_ascii_case(status.as_str()) || asked.eq_ignore_ascii_case(status_label(status))
}

impl Control {
    /// Makes (or, with `replace`, changes) an API source of `org` from its
    /// file: every problem is named at once and nothing is stored when
    /// there is one.
    pub async fn put_api_source(&self, org: &str, doc: &Value, replace: bool) -> Result<ApiSource> {
        let org = org_id(org)?;
        self.store.get_organization(&org).await?;
        let config = domain::parse(doc).map_err(|p| {
            bad(format!(
                "the source file has {} problem(s): {}",
                p.len(),
                p.iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join("; ")
            ))
        })?;
        match &config.destination {
            Some(name) => {
                let declared = self.store.warehouses_of(&org).await?;
                if !declared.iter().any(|w| &w.name == name) {
                    return Err(bad(format!(
                        "destination: warehouse `{name}` is not declared for this organization \
                         (sluice warehouse add {name} URL --org ORG)"
                    )));
                }
            }
            None if self.settings.warehouse.is_none() => {
                return Err(bad(
                    "destination: this server has no embedded warehouse; name a declared warehouse",
                ));
            }
            None => {}
        }
        let now = time::now();
        let created_at = if replace {
            self.store
                .get_api_source(&org, &config.name)
                .await?
                .created_at
        } else {
            now
        };
        let source = ApiSource {
            organization_id: org,
            name: config.name.clone(),
            config_sealed: self.sealer.seal(&doc.to_string()),
            config_shown: domain::hide_secrets(doc),
            destination: config.destination.clone(),
            dataset: config.dataset.clone(),
            created_at,
            modified_at: now,
        };
        self.store.put_api_source(&source, replace).await?;
        Ok(source)
    }

    pub async fn api_sources(&self, org: &str) -> Result<Vec<ApiSource>> {
        Ok(self.store.list_api_sources(&org_id(org)?).await?)
    }

    pub async fn api_source(&self, org: &str, name: &str) -> Result<ApiSource> {
        Ok(self
            .store
            .get_api_source(&org_id(org)?, source_name(name)?)
            .await?)
    }

    pub async fn delete_api_source(&self, org: &str, name: &str) -> Result<()> {
        Ok(self
            .store
            .delete_api_source(&org_id(org)?, source_name(name)?)
            .await?)
    }

    /// Starts a run of `source`: waiting to start, or REJECTED ("Rejected -
    /// previous load still running") when one of it is active.
    pub async fn start_api_run(
        &self,
        org: &str,
        source: &str,
        run_type: RunType,
    ) -> Result<ApiRun> {
        let run = self
            .store
            .start_api_run(
                &org_id(org)?,
                source_name(source)?,
                run_type,
                None,
                time::now(),
            )
            .await?;
        crate::bus::wake(&*self.store, &self.wakers, crate::bus::API).await;
        Ok(run)
    }

    /// Retries run `id`: only the most recent run of its source (rejected
    /// runs, which never ran, aside), only when it FAILED or was CANCELLED.
    /// The new run records which run it retries.
    pub async fn retry_api_run(&self, org: &str, id: &str) -> Result<ApiRun> {
        let org = org_id(org)?;
        let run = self.store.get_api_run(&org, run_id(id)?).await?;
        if let Some(why) = self.retry_refused(&run).await? {
            return Err(ControlError::Conflict(why));
        }
        let new = self
            .store
            .start_api_run(&org, &run.source, run.run_type, Some(id), time::now())
            .await?;
        crate::bus::wake(&*self.store, &self.wakers, crate::bus::API).await;
        Ok(new)
    }

    /// Why `run` may not be retried (None: it may): it must be the most
    /// recent run of its source, rejected runs aside, and have failed or
    /// been cancelled.
    async fn retry_refused(&self, run: &ApiRun) -> Result<Option<String>> {
        let latest = self
            .store
            .page_api_runs(
                &run.organization_id,
                &run.source,
                &sluice_store::ApiRunPage {
                    run_type: None,
                    statuses: RunStatus::ALL
                        .into_iter()
                        .filter(|s| *s != RunStatus::Rejected)
                        .collect(),
                    sort: RunSort::Id,
                    ascending: false,
                    after: None,
                    limit: 1,
                    now: time::now(),
                },
            )
            .await?
            .into_iter()
            .next()
            .map(|r| r.run);
        if let Some(latest) = latest.filter(|l| l.id != run.id) {
            return Ok(Some(format!(
                "only the most recent run of source `{}` may be retried: that is run {} ({}), not run {}",
                run.source,
                latest.id,
                status_label(latest.status),
                run.id
            )));
        }
        if !matches!(run.status, RunStatus::Failed | RunStatus::Cancelled) {
            return Ok(Some(format!(
                "run {} is {}: only a Failed or Cancelled run may be retried",
                run.id,
                status_label(run.status)
            )));
        }
        Ok(None)
    }

    /// Cancels run `id`: CANCELLED at once while it waits to start,
    /// CANCELING until its work has stopped while it runs. A second cancel
    /// changes nothing and says so (409).
    pub async fn cancel_api_run(&self, org: &str, id: &str) -> Result<RunStatus> {
        let status = self
            .store
            .cancel_api_run(&org_id(org)?, run_id(id)?, time::now())
            .await?;
        Ok(status)
    }

    /// A page of the runs of `source`, filtered by type and status, sorted
    /// by any column, in the store (keyset paging: an organization with
    /// 100,000 runs reads one page).
    pub async fn api_runs(&self, org: &str, source: &str, q: &ApiRunsQuery) -> Result<ApiRunsPage> {
        let org = org_id(org)?;
        let source = source_name(source)?;
        self.store.get_api_source(&org, source).await?;
        let run_type =
            match &q.run_type {
                None => None,
                Some(t) => Some(RunType::parse(t).ok_or_else(|| {
                    bad(format!("type `{t}`: expected incremental or destructive"))
                })?),
            };
        let statuses = match &q.status {
            None => Vec::new(),
            Some(s) => {
                let all: Vec<RunStatus> = RunStatus::ALL
                    .into_iter()
                    .filter(|st| status_matches(s, *st))
                    .collect();
                if all.is_empty() {
                    return Err(bad(format!(
                        "status `{s}`: expected one of Waiting to start, Running, Completed, \
                         Failed, Canceling …, Cancelled, Rejected - previous load still running \
                         (or their names: RUNNABLE, RUNNING, SUCCEEDED, FAILED, CANCELING, \
                         CANCELLED, REJECTED)"
                    )));
                }
                all
            }
        };
        let sort_name = q.sort.as_deref().unwrap_or("id");
        let sort = RunSort::parse(sort_name).ok_or_else(|| {
            bad(format!(
                "sort `{sort_name}`: expected one of {}",
                RunSort::NAMES.join(", ")
            ))
        })?;
        let after = match q.after.as_deref().filter(|t| !t.is_empty()) {
            None => None,
            Some(t) => Some(parse_cursor(t, sort).ok_or_else(|| {
                bad(format!(
                    "next_page_token `{t}` is not a token this server gave out for sort {}",
                    sort.as_str()
                ))
            })?),
        };
        let limit = q.limit.unwrap_or(100).clamp(1, 1000);
        let mut rows = self
            .store
            .page_api_runs(
                &org,
                source,
                &sluice_store::ApiRunPage {
                    run_type,
                    statuses,
                    sort,
                    ascending: q.ascending,
                    after,
                    limit: limit + 1,
                    now: time::now(),
                },
            )
            .await?;
        let more = rows.len() > limit as usize;
        rows.truncate(limit as usize);
        let next = more
            .then(|| rows.last().map(|r| cursor(sort, r.key, r.run.seq)))
            .flatten();
        Ok(ApiRunsPage {
            runs: rows
                .into_iter()
                .map(|r| ApiRunView {
                    run: r.run,
                    messages: r.messages,
                })
                .collect(),
            next_page_token: next,
        })
    }

    /// The latest run of `source` (None: it never ran): one row read, where
    /// the runs list reads them all.
    pub async fn latest_api_run(&self, org: &str, source: &str) -> Result<Option<ApiRun>> {
        Ok(self
            .store
            .list_api_runs(&org_id(org)?, source_name(source)?, 1)
            .await?
            .pop())
    }

    /// Run `id` with its tasks, tables and data load.
    pub async fn api_run(&self, org: &str, id: &str) -> Result<ApiRunDetail> {
        let run = self.store.get_api_run(&org_id(org)?, run_id(id)?).await?;
        Ok(ApiRunDetail {
            tasks: self.store.api_tasks(&run.id).await?,
            tables: self.store.api_run_tables(&run.id).await?,
            data_load: self.store.api_data_load(&run.id).await?,
            retryable: self.retry_refused(&run).await?.is_none(),
            run,
        })
    }

    /// How long the last `last` completed runs of `source` took, per type.
    pub async fn api_run_durations(
        &self,
        org: &str,
        source: &str,
        last: usize,
    ) -> Result<Vec<Durations>> {
        let org = org_id(org)?;
        let source = source_name(source)?;
        self.store.get_api_source(&org, source).await?;
        let mut out = Vec::new();
        for t in [RunType::Incremental, RunType::Destructive] {
            // The last completed runs of the type, newest first: one
            // short read however long the source's history.
            let runs = self
                .store
                .page_api_runs(
                    &org,
                    source,
                    &sluice_store::ApiRunPage {
                        run_type: Some(t),
                        statuses: vec![RunStatus::Succeeded],
                        sort: RunSort::Id,
                        ascending: false,
                        after: None,
                        limit: last.clamp(1, 1000) as u32,
                        now: time::now(),
                    },
                )
                .await?;
            let took: Vec<f64> = runs.iter().filter_map(|r| duration_secs(&r.run)).collect();
            out.push(Durations {
                run_type: t.as_str().to_owned(),
                runs: took.len(),
                p50_secs: domain::percentile(&took, 50.0),
                p95_secs: domain::percentile(&took, 95.0),
                last_completed_secs: took.first().copied(),
            });
        }
        Ok(out)
    }

    /// The tasks of run `id` that `text` finds (the page's search rules).
    pub async fn search_api_run(&self, org: &str, id: &str, text: &str) -> Result<Vec<ApiTask>> {
        let run = self.store.get_api_run(&org_id(org)?, run_id(id)?).await?;
        Ok(self
            .store
            .api_tasks(&run.id)
            .await?
            .into_iter()
            .filter(|t| {
                domain::search_matches(
                    text,
                    &Searched {
                        name: &t.name,
                        status: status_label(t.status),
                        table: t.table.as_deref(),
                        messages: &t.messages,
                    },
                )
            })
            .collect())
    }
}
