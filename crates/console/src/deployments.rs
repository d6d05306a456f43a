//! The pages of deployments (ABEJA-style runs): an organization's
//! deployments, a deployment's versions, triggers and runs, a run's
//! attempts and its log (followed live while the run is under way), and a
//! trigger's events — which file started which run.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Json;
use maud::html;
use serde::Deserialize;
use serde_json::json;
use sluice_domain::datalake::EventState;
use sluice_domain::time;
use sluice_engine::control::{Control, LogsRequest};

use crate::jobs::urlencode;
use crate::pages::{more, shell};
use crate::view::{human, status, when, word};
use crate::{failed, Posted, Session};

/// An organization's deployments.
pub async fn deployments(State(control): State<Arc<Control>>, s: Session) -> Response {
    let list = match control.list_deployments(&s.who, &s.org).await {
        Ok(l) => l,
        Err(e) => return failed(e),
    };
    shell(
        &s,
        "Deployments",
        None,
        html! {
            h1 { "Deployments" }
            @if list.is_empty() {
                p.empty {
                    "No deployment yet. Make one through the ABEJA-style Run API ("
                    code { "POST /organizations/" (s.org) "/deployments" }
                    ", or abeja-sdk's " code { "create_deployment" } "), upload a version of your code and submit a run."
                }
            } @else {
                table #deployments {
                    thead { tr { th { "Deployment" } th { "Description" } th { "Created" } } }
                    tbody {
                        @for d in &list {
                            tr {
                                td { a href={ "/deployments/" (d.id) } { (d.name) } }
                                td { (d.description) }
                                td { (when(Some(d.created_at))) }
                            }
                        }
                    }
                }
            }
        },
    )
}

#[derive(Debug, Default, Deserialize)]
pub struct PageParams {
    after: Option<String>,
}

/// A deployment: its versions, its triggers and its runs (newest first, a
/// page at a time, with the API's cursors).
pub async fn deployment(
    State(control): State<Arc<Control>>,
    s: Session,
    Path(dep): Path<String>,
    Query(p): Query<PageParams>,
) -> Response {
    let d = match control.get_deployment(&s.who, &s.org, &dep).await {
        Ok(d) => d,
        Err(e) => return failed(e),
    };
    let versions = match control.list_versions(&s.who, &s.org, &dep).await {
        Ok(v) => v,
        Err(e) => return failed(e),
    };
    let triggers = match control.list_triggers(&s.who, &s.org, &dep).await {
        Ok(t) => t,
        Err(e) => return failed(e),
    };
    let runs = match control
        .list_runs(&s.who, &s.org, &dep, None, false, p.after.as_deref())
        .await
    {
        Ok(r) => r,
        Err(e) => return failed(e),
    };
    let active = runs.runs.iter().any(|r| !r.run.status.is_final());
    shell(
        &s,
        &d.name,
        active.then_some(3),
        html! {
            p.crumbs { a href="/deployments" { "Deployments" } " / " (d.name) }
            h1 { (d.name) }
            @if !d.description.is_empty() { p { (d.description) } }
            h2 { "Versions" }
            @if versions.is_empty() {
                p.empty { "No version yet: make one with " code { "POST /organizations/" (s.org) "/deployments/" (d.id) "/versions" } " and upload your code to the address it answers." }
            } @else {
                table.compact #versions {
                    thead { tr { th { "Version" } th { "Handler" } th { "Code" } th { "Made" } } }
                    tbody {
                        @for v in &versions {
                            tr {
                                td { (v.version) }
                                td { code { (v.handler) } }
                                td { @if v.archive.is_some() { "uploaded" } @else { span.none { "waiting for its upload" } } }
                                td { (when(Some(v.created_at))) }
                            }
                        }
                    }
                }
            }
            h2 { "Triggers" }
            @if triggers.is_empty() {
                p.empty { "No trigger: runs start by hand. A trigger starts a run for every file that arrives in a datalake channel." }
            } @else {
                table.compact #triggers {
                    thead { tr { th { "Trigger" } th { "Version" } th { "Input channel" } th { "Output channel" } th { "Made" } } }
                    tbody {
                        @for t in &triggers {
                            tr {
                                td { a href={ "/deployments/" (d.id) "/triggers/" (t.trigger.id) } { (t.trigger.id) } }
                                td { (t.model_version.as_deref().unwrap_or("")) }
                                td { a href={ "/datalake/" (t.trigger.input_channel_id) } { (t.trigger.input_channel_id) } }
                                td {
                                    @match &t.trigger.output_channel_id {
                                        Some(c) => a href={ "/datalake/" (c) } { (c) },
                                        None => span.none { "—" },
                                    }
                                }
                                td { (when(Some(t.trigger.created_at))) }
                            }
                        }
                    }
                }
            }
            h2 { "Runs" }
            @if runs.runs.is_empty() {
                p.empty { "No run yet: submit one with " code { "POST /organizations/" (s.org) "/deployments/" (d.id) "/runs" } " (abeja-sdk's " code { "create_run" } ")." }
            } @else {
                table #runs {
                    thead { tr { th { "Run" } th { "Version" } th { "Status" } th { "Attempt" } th { "Started" } th { "Duration" } th { "Trigger" } } }
                    tbody {
                        @for v in &runs.runs {
                            @let r = &v.run;
                            tr {
                                td { a href={ "/deployments/" (d.id) "/runs/" (r.id) } { (r.id) } }
                                td { (v.model_version.as_deref().unwrap_or("")) }
                                td { (status(r.status)) }
                                td.num { (r.attempt) }
                                td { (when(r.started_at)) }
                                td { (human(r.started_at.map(|a| (r.finished_at.unwrap_or_else(time::now) - a).num_milliseconds() as f64 / 1000.0))) }
                                td {
                                    @if let Some(t) = &r.trigger_id {
                                        a href={ "/deployments/" (d.id) "/triggers/" (t) } { (t) }
                                    }
                                }
                            }
                        }
                    }
                }
                (more(runs.next_page_token.as_deref(), &format!("/deployments/{}?after=", d.id)))
            }
        },
    )
}

/// A run: its facts, attempts and log. While it is under way the page's
/// script follows the log (without the script, the page reloads itself).
pub async fn run(
    State(control): State<Arc<Control>>,
    s: Session,
    Path((dep, run)): Path<(String, String)>,
    Query(p): Query<PageParams>,
) -> Response {
    let v = match control.get_run(&s.who, &s.org, &dep, &run).await {
        Ok(v) => v,
        Err(e) => return failed(e),
    };
    let attempts = match control.run_attempts(&s.who, &s.org, &dep, &run).await {
        Ok(a) => a,
        Err(e) => return failed(e),
    };
    let logs = match control
        .logs(
            &s.who,
            &s.org,
            &dep,
            &run,
            LogsRequest {
                next_token: p.after.clone(),
                ..Default::default()
            },
        )
        .await
    {
        Ok(l) => l,
        Err(e) => return failed(e),
    };
    let r = &v.run;
    let under_way = !r.status.is_final();
    let last_seq = logs.events.last().map(|e| e.seq).unwrap_or_else(|| {
        p.after
            .as_deref()
            .and_then(|a| a.trim_start_matches('n').parse().ok())
            .unwrap_or(0)
    });
    // The script follows from the last line shown, once every page of
    // the log so far is on screen.
    let follow = under_way && logs.next_token.is_none();
    let base = format!("/deployments/{}/runs/{}", r.deployment_id, r.id);
    let content = html! {
        p.crumbs { a href="/deployments" { "Deployments" } " / " a href={ "/deployments/" (r.deployment_id) } { "deployment " (r.deployment_id) } " / run " (r.id) }
        h1 { "Run " (r.id) " " span #run-status { (status(r.status)) } }
        dl.facts {
            dt { "Version" } dd { (v.model_version.as_deref().unwrap_or("")) }
            dt { "Submitted" } dd { (when(Some(r.created_at))) }
            dt { "Started" } dd { (when(r.started_at)) }
            dt { "Finished" } dd { (when(r.finished_at)) }
            dt { "Attempts" } dd { (r.attempt) " (retries allowed: " (r.retry_count) ")" }
            @if let Some(t) = &r.trigger_id {
                dt { "Trigger" } dd { a href={ "/deployments/" (r.deployment_id) "/triggers/" (t) } { (t) } }
            }
        }
        @if let Some(e) = &r.error { p.error role="alert" { (e) } }
        @if under_way {
            form.inline method="post" action={ (base) "/cancel" } {
                input type="hidden" name="csrf" value=(s.csrf);
                @if r.status == sluice_domain::RunStatus::Canceling {
                    button #cancel type="button" disabled { "Canceling …" }
                } @else {
                    button #cancel type="submit" { "Cancel" }
                }
            }
        }
        h2 { "Attempts" }
        @if attempts.is_empty() {
            p.empty { "No attempt yet: the run waits for a worker (" code { "sluice serve" } " runs one)." }
        } @else {
            table.compact #attempts {
                thead { tr { th { "Attempt" } th { "Worker" } th { "Started" } th { "Duration" } th { "Outcome" } th { "Error" } } }
                tbody {
                    @for a in &attempts {
                        tr {
                            td.num { (a.attempt) }
                            td { code { (a.worker) } }
                            td { (when(Some(a.started_at))) }
                            td { (human(a.finished_at.map(|f| (f - a.started_at).num_milliseconds() as f64 / 1000.0))) }
                            td { (outcome(&a.outcome)) }
                            td { (a.error.as_deref().unwrap_or("")) }
                        }
                    }
                }
            }
        }
        h2 { "Log" }
        ol #log.log data-follow=[follow.then(|| format!("{base}/log"))] data-after=(last_seq) aria-live="polite" {
            @for e in &logs.events {
                li { (when(Some(e.timestamp))) " " span.msg { (e.message) } }
            }
        }
        @if logs.events.is_empty() && !under_way { p.empty { "The run wrote nothing to its log." } }
        (more(logs.next_token.as_deref(), &format!("{base}?after=")))
    };
    // Without the script a page under way reloads itself; with it, the
    // log follows and the page reloads once the run ends.
    shell(
        &s,
        &format!("Run {}", r.id),
        under_way.then_some(3),
        content,
    )
}

fn outcome(o: &str) -> maud::Markup {
    match o {
        "SUCCEEDED" => word("Completed", "st-completed"),
        "FAILED" => word("Failed", "st-failed"),
        "CANCELLED" => word("Cancelled", "st-cancelled"),
        "LOST" => word("Lost (worker gone)", "st-failed"),
        "" | "RUNNING" => word("Running", "st-running"),
        other => word(other, "st-waiting"),
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct FollowParams {
    after: Option<i64>,
}

/// What the run page's script asks for while it follows a log: the lines
/// after `after`, and the run's status.
pub async fn follow(
    State(control): State<Arc<Control>>,
    s: Session,
    Path((dep, run)): Path<(String, String)>,
    Query(p): Query<FollowParams>,
) -> Response {
    let v = match control.get_run(&s.who, &s.org, &dep, &run).await {
        Ok(v) => v,
        Err(e) => return failed(e),
    };
    let logs = match control
        .logs(
            &s.who,
            &s.org,
            &dep,
            &run,
            LogsRequest {
                next_token: p.after.map(|a| format!("n{a}")),
                ..Default::default()
            },
        )
        .await
    {
        Ok(l) => l,
        Err(e) => return failed(e),
    };
    let events: Vec<_> = logs
        .events
        .iter()
        .map(|e| {
            json!({
                "seq": e.seq,
                "time": time::format(&e.timestamp),
                "utc": e.timestamp.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
                "message": e.message,
            })
        })
        .collect();
    (
        [(header::CACHE_CONTROL, "no-store")],
        Json(json!({
            "status": sluice_domain::api_source::status_label(v.run.status),
            "final": v.run.status.is_final(),
            "events": events,
            "more": logs.next_token.is_some(),
        })),
    )
        .into_response()
}

pub async fn cancel(
    State(control): State<Arc<Control>>,
    Path((dep, run)): Path<(String, String)>,
    Posted(s): Posted,
) -> Response {
    match control.cancel_run(&s.who, &s.org, &dep, &run).await {
        Ok(v) => Redirect::to(&format!(
            "/deployments/{}/runs/{}",
            v.run.deployment_id, v.run.id
        ))
        .into_response(),
        Err(e) => failed(e),
    }
}

/// A trigger: which file arrived when, and which run it started (or why
/// none), oldest first, a page at a time.
pub async fn trigger(
    State(control): State<Arc<Control>>,
    s: Session,
    Path((dep, tri)): Path<(String, String)>,
    Query(p): Query<PageParams>,
) -> Response {
    let t = match control.get_trigger(&s.who, &s.org, &dep, &tri).await {
        Ok(t) => t,
        Err(e) => return failed(e),
    };
    let events = match control
        .trigger_events(&s.who, &s.org, &dep, &tri, true, p.after.as_deref())
        .await
    {
        Ok(e) => e,
        Err(e) => return failed(e),
    };
    let tr = &t.trigger;
    shell(
        &s,
        &format!("Trigger {}", tr.id),
        None,
        html! {
            p.crumbs { a href="/deployments" { "Deployments" } " / " a href={ "/deployments/" (tr.deployment_id) } { "deployment " (tr.deployment_id) } " / trigger " (tr.id) }
            h1 { "Trigger " (tr.id) }
            p {
                "Every file that arrives in channel "
                a href={ "/datalake/" (tr.input_channel_id) } { (tr.input_channel_id) }
                " starts a run of version " (t.model_version.as_deref().unwrap_or("?")) "."
                @if tr.deleted_at.is_some() { " " strong { "Deleted" } ": it starts no more runs." }
            }
            h2 { "Files and the runs they started" }
            @if events.events.is_empty() {
                p.empty { "No file has arrived since the trigger was made: upload one to the channel." }
            } @else {
                table #events {
                    thead { tr { th { "File" } th { "Arrived" } th { "State" } th { "Run" } th { "Note" } } }
                    tbody {
                        @for e in &events.events {
                            tr {
                                td { code { (e.file_id) } }
                                td { (when(Some(e.created_at))) }
                                td { (event_state(e.state)) }
                                td {
                                    @if let Some(run) = &e.run_id {
                                        a href={ "/deployments/" (tr.deployment_id) "/runs/" (run) } { (run) }
                                    }
                                }
                                td { (e.note.as_deref().unwrap_or("")) }
                            }
                        }
                    }
                }
                (more(events.next_page_token.as_deref(), &format!("/deployments/{}/triggers/{}?after=", tr.deployment_id, urlencode(tr.id.as_str()))))
            }
        },
    )
}

fn event_state(s: EventState) -> maud::Markup {
    match s {
        EventState::Pending => word("Waiting to start a run", "st-waiting"),
        EventState::Dispatched => word("Started a run", "st-completed"),
        EventState::Skipped => word("Skipped", "st-cancelled"),
    }
}
