//! The pages of table import jobs: an organization's jobs (by space) with
//! their status, schedule and last query, and a job's queries (window,
//! records, status, error, tasks) with pause, resume and "query now".

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;
use serde::Deserialize;
use sluice_domain::{ImportJob, JobStatus, PageRequest};
use sluice_engine::control::Control;
use sluice_store::JobFilter;

use crate::pages::{more, shell, PAGE};
use crate::view::{human, status, when, word};
use crate::{failed, Posted, Session};

#[derive(Debug, Default, Deserialize)]
pub struct JobsParams {
    space: Option<String>,
    after: Option<String>,
}

/// A cursor of a list paged by `seq`, as the address carries it.
pub(crate) fn seq_cursor(after: Option<&str>) -> Option<i64> {
    after.and_then(|a| a.parse().ok())
}

/// How often a job queries, in words.
fn schedule(job: &ImportJob) -> String {
    if job.spec.triggered() {
        return "when a window is asked for".into();
    }
    match job.spec.ingestion.refresh_interval_minutes {
        Some(m) => format!("every {}", human(Some(m as f64 * 60.0))),
        None => "on request".into(),
    }
}

/// An organization's table import jobs, oldest first, a page at a time.
pub async fn jobs(
    State(control): State<Arc<Control>>,
    s: Session,
    Query(p): Query<JobsParams>,
) -> Response {
    let space = p.space.clone().filter(|x| !x.is_empty());
    let filter = JobFilter {
        organization: s.who.organization.clone(),
        space: space.clone(),
        search: None,
        include_deleted: false,
    };
    let page = match control
        .list_jobs(
            &filter,
            PageRequest {
                after: seq_cursor(p.after.as_deref()),
                forward: true,
                limit: PAGE,
            },
        )
        .await
    {
        Ok(x) => x,
        Err(e) => return failed(e),
    };
    let mut rows = Vec::new();
    for job in &page.items {
        let last = match control
            .list_queries(
                &job.organization_id,
                job.id.as_str(),
                PageRequest {
                    after: None,
                    forward: false,
                    limit: 1,
                },
            )
            .await
        {
            Ok(q) => q.items.into_iter().next(),
            Err(e) => return failed(e),
        };
        rows.push((job, last));
    }
    let base = match &space {
        Some(sp) => format!("/jobs?space={}&after=", urlencode(sp)),
        None => "/jobs?after=".to_owned(),
    };
    shell(
        &s,
        "Table import jobs",
        None,
        html! {
            h1 { "Table import jobs" }
            @if let Some(sp) = &space {
                p { "Space " code { (sp) } " · " a href="/jobs" { "every space" } }
            }
            @if rows.is_empty() {
                p.empty {
                    "No table import job yet. Make one with "
                    code { "sluice job create --org " (s.org) " --file job.toml" }
                    " or through the Arize-style table importer's GraphQL API."
                }
            } @else {
                table #jobs {
                    thead { tr { th { "Job" } th { "Space" } th { "Status" } th { "Table" } th { "Schedule" } th { "Next query" } th { "Last query" } } }
                    tbody {
                        @for (job, last) in &rows {
                            tr {
                                td { a href={ "/jobs/" (job.id) } { (job.name) } }
                                td {
                                    @if job.space.is_empty() { span.none { "default" } }
                                    @else { a href={ "/jobs?space=" (urlencode(&job.space)) } { (job.space) } }
                                }
                                td { (job_status(job.status)) }
                                td { code { (job.spec.table) } " → " code { (job.spec.target) } }
                                td { (schedule(job)) }
                                td { (when(job.next_query_at)) }
                                td {
                                    @match last {
                                        Some(q) => { (status(q.status)) " " (q.records) " records, " (when(q.finished_at.or(q.started_at).or(Some(q.created_at)))) }
                                        None => span.none { "none yet" }
                                    }
                                }
                            }
                        }
                    }
                }
                (more(page.next.map(|n| n.to_string()).as_deref(), &base))
            }
        },
    )
}

fn job_status(s: JobStatus) -> maud::Markup {
    match s {
        JobStatus::Active => word("active", "st-completed"),
        JobStatus::Paused => word("paused", "st-waiting"),
        JobStatus::Deleted => word("deleted", "st-cancelled"),
    }
}

/// Percent-encodes a value for an address's query.
pub(crate) fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[derive(Debug, Default, Deserialize)]
pub struct QueriesParams {
    after: Option<String>,
}

/// A job: its mapping at a glance, pause/resume and "query now", and its
/// queries, newest first, a page at a time.
pub async fn job(
    State(control): State<Arc<Control>>,
    s: Session,
    Path(id): Path<String>,
    Query(p): Query<QueriesParams>,
) -> Response {
    let org = &s.who.organization;
    let job = match control.get_job(org, &id).await {
        Ok(j) if j.status != JobStatus::Deleted => j,
        Ok(_) => {
            return failed(sluice_engine::control::ControlError::NotFound(format!(
                "job {id} is deleted"
            )))
        }
        Err(e) => return failed(e),
    };
    let page = match control
        .list_queries(
            org,
            &id,
            PageRequest {
                after: seq_cursor(p.after.as_deref()),
                forward: false,
                limit: PAGE,
            },
        )
        .await
    {
        Ok(x) => x,
        Err(e) => return failed(e),
    };
    let active = page.items.iter().any(|q| !q.status.is_final());
    shell(
        &s,
        &job.name,
        active.then_some(3),
        html! {
            p.crumbs { a href="/jobs" { "Table import jobs" } " / " (job.name) }
            h1 { (job.name) " " (job_status(job.status)) }
            dl.facts {
                dt { "Id" } dd { code { (job.id) } }
                dt { "Reads" } dd { code { (job.spec.table) } " from " code { (job.source_shown) } }
                dt { "Loads" } dd { code { (job.spec.target) } " in " code { (job.destination_shown) } " (" (format!("{:?}", job.spec.mode).to_lowercase()) ")" }
                dt { "Schedule" } dd { (schedule(&job)) }
                dt { "Next query" } dd { (when(job.next_query_at)) }
            }
            div.actions {
                @if job.status == JobStatus::Active {
                    form.inline method="post" action={ "/jobs/" (job.id) "/run" } {
                        input type="hidden" name="csrf" value=(s.csrf);
                        button #query-now type="submit" { "Query now" }
                    }
                    form.inline method="post" action={ "/jobs/" (job.id) "/pause" } {
                        input type="hidden" name="csrf" value=(s.csrf);
                        button #pause type="submit" { "Pause" }
                    }
                } @else {
                    form.inline method="post" action={ "/jobs/" (job.id) "/resume" } {
                        input type="hidden" name="csrf" value=(s.csrf);
                        button #resume type="submit" { "Resume" }
                    }
                }
            }
            h2 { "Queries" }
            @if page.items.is_empty() {
                p.empty { "No query yet: press Query now, or wait for the schedule." }
            } @else {
                table #queries {
                    thead { tr { th { "Query" } th { "Status" } th { "Window" } th { "Records" } th { "Started" } th { "Duration" } th { "Error" } } }
                    tbody {
                        @for q in &page.items {
                            tr {
                                td { a href={ "/queries/" (q.id) } { (q.id) } }
                                td { (status(q.status)) }
                                td { (q.window_start.as_deref().unwrap_or("the first row")) " → " (q.window_end.as_deref().unwrap_or("…")) }
                                td.num { (q.records) }
                                td { (when(q.started_at)) }
                                td { (human(q.started_at.zip(q.finished_at).map(|(a, b)| (b - a).num_milliseconds() as f64 / 1000.0))) }
                                td { (q.error.as_deref().unwrap_or("")) }
                            }
                        }
                    }
                }
                (more(page.next.map(|n| n.to_string()).as_deref(), &format!("/jobs/{}?after=", job.id)))
            }
        },
    )
}

/// A query: its window, records, status, error and tasks.
pub async fn query(
    State(control): State<Arc<Control>>,
    s: Session,
    Path(id): Path<String>,
) -> Response {
    let org = &s.who.organization;
    let q = match control.get_query(org, &id).await {
        Ok(q) => q,
        Err(e) => return failed(e),
    };
    let tasks = match control.query_tasks(org, &id).await {
        Ok(t) => t,
        Err(e) => return failed(e),
    };
    let job = match control.get_job(org, q.job_id.as_str()).await {
        Ok(j) => j,
        Err(e) => return failed(e),
    };
    shell(
        &s,
        &format!("Query {}", q.id),
        (!q.status.is_final()).then_some(2),
        html! {
            p.crumbs { a href="/jobs" { "Table import jobs" } " / " a href={ "/jobs/" (job.id) } { (job.name) } " / query" }
            h1 { "Query " code { (q.id) } " " (status(q.status)) }
            dl.facts {
                dt { "Window" } dd { (q.window_start.as_deref().unwrap_or("the first row")) " → " (q.window_end.as_deref().unwrap_or("…")) }
                dt { "Records" } dd { (q.records) }
                dt { "Started" } dd { (when(q.started_at)) }
                dt { "Finished" } dd { (when(q.finished_at)) }
                dt { "Attempt" } dd { (q.attempt) }
            }
            @if let Some(e) = &q.error { p.error role="alert" { (e) } }
            @if !q.status.is_final() {
                form.inline method="post" action={ "/queries/" (q.id) "/cancel" } {
                    input type="hidden" name="csrf" value=(s.csrf);
                    button #cancel type="submit" { "Cancel" }
                }
            }
            h2 { "Tasks" }
            @if tasks.is_empty() {
                p.empty { "No task yet: the query waits for an importer." }
            } @else {
                table #tasks {
                    thead { tr { th { "Task" } th { "Table" } th { "Status" } th { "Records" } th { "Started" } th { "Duration" } th { "Messages" } } }
                    tbody {
                        @for t in &tasks {
                            tr {
                                td { (t.name) }
                                td { (t.table) }
                                td { (task_status(&t.status)) }
                                td.num { (t.records) }
                                td { (when(Some(t.started_at))) }
                                td { (human(t.finished_at.map(|b| (b - t.started_at).num_milliseconds() as f64 / 1000.0))) }
                                td { (t.messages.join(" · ")) }
                            }
                        }
                    }
                }
            }
        },
    )
}

/// A task's status word (RUNNING, SUCCEEDED, FAILED, SKIPPED) in words and colour.
pub(crate) fn task_status(s: &str) -> maud::Markup {
    match s {
        "RUNNING" => word("Running", "st-running"),
        "SUCCEEDED" => word("Completed", "st-completed"),
        "FAILED" => word("Failed", "st-failed"),
        "SKIPPED" => word("Skipped", "st-cancelled"),
        "CANCELLED" => word("Cancelled", "st-cancelled"),
        other => word(other, "st-waiting"),
    }
}

async fn set_status(control: &Control, s: &Session, id: &str, to: JobStatus) -> Response {
    match control.set_job_status(&s.who.organization, id, to).await {
        Ok(j) => Redirect::to(&format!("/jobs/{}", j.id)).into_response(),
        Err(e) => failed(e),
    }
}

pub async fn pause(
    State(control): State<Arc<Control>>,
    Path(id): Path<String>,
    Posted(s): Posted,
) -> Response {
    set_status(&control, &s, &id, JobStatus::Paused).await
}

pub async fn resume(
    State(control): State<Arc<Control>>,
    Path(id): Path<String>,
    Posted(s): Posted,
) -> Response {
    set_status(&control, &s, &id, JobStatus::Active).await
}

/// "Query now": the job's next window, picked up by an importer.
pub async fn run(
    State(control): State<Arc<Control>>,
    Path(id): Path<String>,
    Posted(s): Posted,
) -> Response {
    match control.run_job(&s.who.organization, &id, None, None).await {
        Ok(q) => Redirect::to(&format!("/queries/{}", q.id)).into_response(),
        Err(e) => failed(e),
    }
}

pub async fn cancel_query(
    State(control): State<Arc<Control>>,
    Path(id): Path<String>,
    Posted(s): Posted,
) -> Response {
    match control.cancel_query(&s.who.organization, &id).await {
        Ok(q) => Redirect::to(&format!("/queries/{}", q.id)).into_response(),
        Err(e) => failed(e),
    }
}
