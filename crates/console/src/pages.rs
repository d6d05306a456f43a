//! The pages of HTTP API sources and their runs (the API Run page among
//! them), and the forms that start, cancel and retry runs.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use maud::{html, Markup};
use serde::Deserialize;
use sluice_domain::api_source::{status_label, RunType};
use sluice_domain::RunStatus;
use sluice_engine::control::{duration_secs, ApiRunView, ApiRunsQuery, Control};

use crate::view::{human, page, status, when};
use crate::{failed, stale_form, Posted, Session};

pub(crate) fn shell(s: &Session, title: &str, refresh: Option<u32>, content: Markup) -> Response {
    page(title, Some((&s.org, &s.csrf)), refresh, content).into_response()
}

/// The data sources: each with the status of its latest run.
pub async fn sources(State(control): State<Arc<Control>>, s: Session) -> Response {
    let list = match control.api_sources(&s.org).await {
        Ok(l) => l,
        Err(e) => return failed(e),
    };
    let mut rows = Vec::new();
    for src in &list {
        let latest = match control.latest_api_run(&s.org, &src.name).await {
            Ok(r) => r,
            Err(e) => return failed(e),
        };
        rows.push((src, latest));
    }
    shell(
        &s,
        "Data sources",
        None,
        html! {
            h1 { "Data sources" }
            @if rows.is_empty() {
                p.empty {
                    "No HTTP API source yet. Make one from a dlt rest_api configuration with "
                    code { "sluice source create --file source.json --org " (s.org) }
                    "."
                }
            } @else {
                table {
                    thead { tr { th { "Source" } th { "Dataset" } th { "Destination" } th { "Latest run" } th { "Status" } } }
                    tbody {
                        @for (src, latest) in &rows {
                            tr {
                                td { a href={ "/sources/" (src.name) } { (src.name) } }
                                td { (src.dataset) }
                                td { (src.destination.as_deref().unwrap_or("embedded")) }
                                @match latest {
                                    Some(run) => {
                                        td { a href={ "/runs/" (run.id) } { (run.id) } }
                                        td { (status(run.status)) }
                                    }
                                    None => {
                                        td.none { "no run yet" }
                                        td.none { "—" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        },
    )
}

#[derive(Debug, Default, Deserialize)]
pub struct RunsParams {
    sort: Option<String>,
    order: Option<String>,
    #[serde(rename = "type")]
    run_type: Option<String>,
    after: Option<String>,
}

/// Rows on a page of a list.
pub(crate) const PAGE: u32 = 50;

/// The columns of a source's runs table: (label, sort key).
const COLUMNS: [(&str, &str); 8] = [
    ("Run", "id"),
    ("Type", "type"),
    ("Status", "status"),
    ("Started", "started"),
    ("Duration", "duration"),
    ("Records", "records"),
    ("Tables", "tables"),
    ("Messages", "messages"),
];

/// A source's runs: sortable by any column (a click on its header),
/// filterable by type, with typical durations per type.
pub async fn source(
    State(control): State<Arc<Control>>,
    s: Session,
    Path(name): Path<String>,
    Query(q): Query<RunsParams>,
) -> Response {
    let src = match control.api_source(&s.org, &name).await {
        Ok(x) => x,
        Err(e) => return failed(e),
    };
    let sort = q.sort.clone().unwrap_or_else(|| "id".into());
    let ascending = q.order.as_deref() == Some("asc");
    let run_type = q.run_type.clone().filter(|t| !t.is_empty());
    let query = ApiRunsQuery {
        run_type: run_type.clone(),
        status: None,
        sort: Some(sort.clone()),
        ascending,
        limit: Some(PAGE),
        after: q.after.clone(),
    };
    let (runs, next) = match control.api_runs(&s.org, &name, &query).await {
        Ok(p) => (p.runs, p.next_page_token),
        Err(e) => return failed(e),
    };
    let durations = control
        .api_run_durations(&s.org, &name, 20)
        .await
        .unwrap_or_default();
    let active = runs.iter().any(|v| !v.run.status.is_final());
    // A click sorts by the column; a second click turns the order.
    let link = |key: &str| link_with(&name, key, sort == key && !ascending, run_type.as_deref());
    shell(
        &s,
        &name,
        active.then_some(3),
        html! {
            p.crumbs { a href="/sources" { "Data sources" } " / " (name) }
            h1 { (name) }
            p { "Dataset " code { (src.dataset) } " in " (src.destination.as_deref().unwrap_or("the embedded warehouse")) "." }
            div.actions {
                @for (label, kind) in [("Start an incremental run", "incremental"), ("Start a destructive run", "destructive")] {
                    form.inline method="post" action={ "/sources/" (name) "/runs" } {
                        input type="hidden" name="csrf" value=(s.csrf);
                        input type="hidden" name="type" value=(kind);
                        button type="submit" { (label) }
                    }
                }
            }
            h2 { "Typical durations" }
            table.compact {
                thead { tr { th { "Type" } th { "Completed runs" } th { "p50" } th { "p95" } th { "Last completed" } } }
                tbody {
                    @for d in &durations {
                        tr {
                            td { (d.run_type.to_lowercase()) }
                            td { (d.runs) }
                            td { (human(d.p50_secs)) }
                            td { (human(d.p95_secs)) }
                            td { (human(d.last_completed_secs)) }
                        }
                    }
                }
            }
            h2 { "Runs" }
            form.filters method="get" action={ "/sources/" (name) } {
                input type="hidden" name="sort" value=(sort);
                input type="hidden" name="order" value=(if ascending { "asc" } else { "desc" });
                label for="type" { "Type" }
                select #type name="type" {
                    option value="" selected[run_type.is_none()] { "all" }
                    option value="incremental" selected[run_type.as_deref() == Some("incremental")] { "incremental" }
                    option value="destructive" selected[run_type.as_deref() == Some("destructive")] { "destructive" }
                }
                button type="submit" { "Filter" }
            }
            @if runs.is_empty() {
                p.empty { "No run yet: start one above, or with " code { "sluice source run " (name) } "." }
            } @else {
                table #runs {
                    thead {
                        tr {
                            @for (label, key) in COLUMNS {
                                th aria-sort=(if sort == key { if ascending { "ascending" } else { "descending" } } else { "none" }) {
                                    a href=(link(key)) { (label) @if sort == key { (if ascending { " ▲" } else { " ▼" }) } }
                                }
                            }
                        }
                    }
                    tbody {
                        @for v in &runs {
                            (run_row(v))
                        }
                    }
                }
                (more(next.as_deref(), &format!("{}&after=", link_with(&name, &sort, ascending, run_type.as_deref()))))
            }
        },
    )
}

/// The address of a source's runs in an order (and of a type).
fn link_with(name: &str, sort: &str, ascending: bool, run_type: Option<&str>) -> String {
    let order = if ascending { "asc" } else { "desc" };
    let mut href = format!("/sources/{name}?sort={sort}&order={order}");
    if let Some(t) = run_type {
        href.push_str(&format!("&type={t}"));
    }
    href
}

/// The link to a list's next page (none on its last page). `base` ends
/// where the cursor goes.
pub(crate) fn more(next: Option<&str>, base: &str) -> Markup {
    html! {
        @if let Some(token) = next {
            p.pager { a rel="next" href={ (base) (token) } { "Next page →" } }
        }
    }
}

fn run_row(v: &ApiRunView) -> Markup {
    let r = &v.run;
    html! {
        tr {
            td { a href={ "/runs/" (r.id) } { (r.id) } }
            td { (r.run_type.as_str().to_lowercase()) }
            td { (status(r.status)) }
            td { (when(r.started_at)) }
            td { (human(duration_secs(r))) }
            td.num { (r.records) }
            td.num { (r.tables) }
            td.num { (v.messages) }
        }
    }
}

#[derive(Deserialize)]
pub struct StartForm {
    csrf: String,
    #[serde(rename = "type")]
    run_type: String,
}

pub async fn start_run(
    State(control): State<Arc<Control>>,
    s: Session,
    Path(name): Path<String>,
    Form(f): Form<StartForm>,
) -> Response {
    if !s.check(&control, &f.csrf) {
        return stale_form();
    }
    let Some(run_type) = RunType::parse(&f.run_type) else {
        return failed(sluice_engine::control::ControlError::BadRequest(format!(
            "type `{}`: expected incremental or destructive",
            f.run_type
        )));
    };
    match control.start_api_run(&s.org, &name, run_type).await {
        Ok(run) => Redirect::to(&format!("/runs/{}", run.id)).into_response(),
        Err(e) => failed(e),
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct RunParams {
    q: Option<String>,
}

/// The API Run page: the run's tasks (searched), its tables and messages,
/// Cancel and Retry.
pub async fn run(
    State(control): State<Arc<Control>>,
    s: Session,
    Path(id): Path<String>,
    Query(p): Query<RunParams>,
) -> Response {
    let d = match control.api_run(&s.org, &id).await {
        Ok(d) => d,
        Err(e) => return failed(e),
    };
    let q = p.q.unwrap_or_default();
    let tasks = if q.trim().is_empty() {
        d.tasks.clone()
    } else {
        match control.search_api_run(&s.org, &id, &q).await {
            Ok(t) => t,
            Err(e) => return failed(e),
        }
    };
    let r = &d.run;
    let retryable = d.retryable;
    let cancellable = !r.status.is_final();
    let messages = d.messages();
    shell(
        &s,
        &format!("Run {}", r.id),
        cancellable.then_some(2),
        html! {
            p.crumbs { a href="/sources" { "Data sources" } " / " a href={ "/sources/" (r.source) } { (r.source) } " / run " (r.id) }
            h1 { "API run " (r.id) " " (status(r.status)) }
            dl.facts {
                dt { "Type" } dd { (r.run_type.as_str().to_lowercase()) }
                dt { "Started" } dd { (when(r.started_at)) }
                dt { "Finished" } dd { (when(r.finished_at)) }
                dt { "Duration" } dd { (human(duration_secs(r))) }
                dt { "Records" } dd { (r.records) }
                @if let Some(of) = &r.retry_of {
                    dt { "Retries" } dd { a href={ "/runs/" (of) } { "run " (of) } }
                }
                @if let Some(load) = &d.data_load {
                    dt { "Data load" } dd { (load.tables) " tables, " (load.records) " rows" }
                }
            }
            @if r.status == RunStatus::Rejected {
                p.error role="status" { (status_label(r.status)) ": wait for the run under way to end, then start another." }
            } @else if let Some(e) = &r.error {
                p.error role="alert" { (e) }
            }
            div.actions {
                @if r.status == RunStatus::Canceling {
                    button #cancel type="button" disabled { "Canceling …" }
                } @else if cancellable {
                    form.inline method="post" action={ "/runs/" (r.id) "/cancel" } {
                        input type="hidden" name="csrf" value=(s.csrf);
                        button #cancel type="submit" { "Cancel" }
                    }
                }
                @if retryable {
                    form.inline method="post" action={ "/runs/" (r.id) "/retry" } {
                        input type="hidden" name="csrf" value=(s.csrf);
                        button #retry type="submit" { "Retry" }
                    }
                }
            }
            details #tables {
                summary { "Tables: " (d.tables.len()) }
                @for t in &d.tables {
                    h3 { (t.table) " — " (t.records) " records" }
                    table.compact {
                        thead { tr { th { "Column" } th { "Type" } } }
                        tbody { @for (c, ty) in &t.columns { tr { td { (c) } td { (ty) } } } }
                    }
                }
            }
            details #messages {
                summary { "Messages: " (messages.len()) }
                ul {
                    @for m in &messages {
                        li {
                            strong { (m.task.as_deref().unwrap_or("run")) }
                            @if let Some(t) = &m.table { " (" (t) ")" }
                            ": " (m.text)
                        }
                    }
                }
            }
            h2 { "Tasks" }
            form.filters method="get" action={ "/runs/" (r.id) } role="search" {
                label for="q" { "Search" }
                input #q name="q" type="search" value=(q) placeholder="mc, Waiting, a table, a message";
                button type="submit" { "Search" }
            }
            @if tasks.is_empty() {
                p.empty { @if q.is_empty() { "No task yet: the run is waiting to start." } @else { "No task matches “" (q) "”." } }
            } @else {
                table #tasks {
                    thead { tr { th { "Task" } th { "Table" } th { "Status" } th { "Records" } th { "Started" } th { "Duration" } th { "Messages" } } }
                    tbody {
                        @for t in &tasks {
                            tr {
                                td { (t.name) }
                                td { (t.table.as_deref().unwrap_or("")) }
                                td { (status(t.status)) }
                                td.num { (t.records) }
                                td { (when(t.started_at)) }
                                td { (human(t.started_at.zip(t.finished_at).map(|(a, b)| (b - a).num_milliseconds() as f64 / 1000.0))) }
                                td { (t.messages.join(" · ")) }
                            }
                        }
                    }
                }
            }
        },
    )
}

pub async fn cancel_run(
    State(control): State<Arc<Control>>,
    Path(id): Path<String>,
    Posted(s): Posted,
) -> Response {
    match control.cancel_api_run(&s.org, &id).await {
        Ok(_) => Redirect::to(&format!("/runs/{id}")).into_response(),
        Err(e) => failed(e),
    }
}

pub async fn retry_run(
    State(control): State<Arc<Control>>,
    Path(id): Path<String>,
    Posted(s): Posted,
) -> Response {
    match control.retry_api_run(&s.org, &id).await {
        Ok(run) => Redirect::to(&format!("/runs/{}", run.id)).into_response(),
        Err(e) => failed(e),
    }
}
