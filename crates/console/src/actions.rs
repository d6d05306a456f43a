//! The pages of the Tailer-style action API's configurations: an
//! organization's deployed configurations, and one configuration's runs
//! (newest first, a page at a time) — for a workflow, its fan-in state
//! (which awaited jobs succeeded since it last fired) and its reset.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;
use serde::Deserialize;
use sluice_domain::action::{self, ActionStatus};
use sluice_engine::control::{ConfigurationRef, Control};

use crate::jobs::{seq_cursor, urlencode};
use crate::pages::{more, shell, PAGE};
use crate::view::{human, when, word};
use crate::{failed, Posted, Session};

/// A run's status as the action API reports it, in words and colour.
fn action_status(s: ActionStatus) -> maud::Markup {
    let class = match s {
        ActionStatus::Running => "st-running",
        ActionStatus::Success => "st-completed",
        ActionStatus::Warning => "st-canceling",
        ActionStatus::Failed => "st-failed",
        ActionStatus::Checked | ActionStatus::NoMatch => "st-cancelled",
    };
    word(s.as_str(), class)
}

/// An organization's configurations.
pub async fn configurations(State(control): State<Arc<Control>>, s: Session) -> Response {
    let list = match control.list_configurations(&s.org).await {
        Ok(l) => l,
        Err(e) => return failed(e),
    };
    shell(
        &s,
        "Configurations",
        None,
        html! {
            h1 { "Configurations" }
            @if list.is_empty() {
                p.empty {
                    "No configuration deployed yet. Deploy one with "
                    code { "sluice config deploy --org " (s.org) " FILE.json" }
                    " or through the Tailer-style action API."
                }
            } @else {
                table #configurations {
                    thead { tr { th { "Configuration" } th { "Type" } th { "Environment" } th { "Version" } th { "State" } th { "Next run" } } }
                    tbody {
                        @for c in &list {
                            tr {
                                td { a href={ "/configurations/" (urlencode(&c.api_id)) } { (c.api_id) } }
                                td { (c.configuration_type) }
                                td { (c.environment) }
                                td.num { (c.version) }
                                td {
                                    @if c.archived { (word("archived", "st-cancelled")) }
                                    @else if c.activated { (word("active", "st-completed")) }
                                    @else { (word("deactivated", "st-waiting")) }
                                }
                                td { (when(c.next_run_at)) }
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
    after: Option<String>,
}

/// A configuration: its runs, and a workflow's fan-in state with Reset.
pub async fn configuration(
    State(control): State<Arc<Control>>,
    s: Session,
    Path(api_id): Path<String>,
    Query(p): Query<RunsParams>,
) -> Response {
    let c = match control.configuration_named(&s.org, &api_id).await {
        Ok(c) => c,
        Err(e) => return failed(e),
    };
    let runs = match control
        .runs_of(&c, PAGE + 1, seq_cursor(p.after.as_deref()))
        .await
    {
        Ok(r) => r,
        Err(e) => return failed(e),
    };
    let next = (runs.len() > PAGE as usize).then(|| runs[PAGE as usize - 1].seq.to_string());
    let runs = &runs[..runs.len().min(PAGE as usize)];
    let workflow = if c.configuration_type == action::WORKFLOW {
        match control.workflow_of(&c).await {
            Ok(w) => Some(w),
            Err(e) => return failed(e),
        }
    } else {
        None
    };
    let active = runs.iter().any(|r| !r.status.is_final());
    let href = format!("/configurations/{}", urlencode(&c.api_id));
    shell(
        &s,
        &c.api_id,
        active.then_some(3),
        html! {
            p.crumbs { a href="/configurations" { "Configurations" } " / " (c.api_id) }
            h1 { (c.api_id) }
            dl.facts {
                dt { "Type" } dd { (c.configuration_type) }
                dt { "Account" } dd { (c.account) }
                dt { "Environment" } dd { (c.environment) }
                dt { "Version" } dd { (c.version) }
                dt { "Next run" } dd { (when(c.next_run_at)) }
            }
            @if let Some(w) = &workflow {
                h2 { "Fan-in" }
                p {
                    "Starts " code { (w.workflow.target_type) " " (w.workflow.target_id) }
                    " once every job below has succeeded since it last fired."
                }
                table.compact #fan-in {
                    thead { tr { th { "Awaited job" } th { "State" } th { "Run" } } }
                    tbody {
                        @for (job, run) in &w.awaited {
                            tr {
                                td { code { (job) } }
                                td { @if run.is_some() { (word("succeeded", "st-completed")) } @else { (word("waiting", "st-waiting")) } }
                                td { (run.as_deref().unwrap_or("")) }
                            }
                        }
                    }
                }
                form.inline method="post" action={ (href) "/reset" } {
                    input type="hidden" name="csrf" value=(s.csrf);
                    button #reset type="submit" { "Reset" }
                }
            }
            h2 { "Runs" }
            @if runs.is_empty() {
                p.empty { "No run yet: launch one with the action API (" code { "POST /v1/dag/launch" } ", action " code { "launch_job" } "), or wait for its schedule." }
            } @else {
                table #runs {
                    thead { tr { th { "Run" } th { "Execution date" } th { "Status" } th { "Attempt" } th { "Started" } th { "Duration" } th { "Error" } } }
                    tbody {
                        @for r in runs {
                            tr {
                                td { code { (r.id) } }
                                td { (r.execution_date) }
                                td { (action_status(r.action_status())) }
                                td.num { (r.attempt) }
                                td { (when(r.started_at)) }
                                td { (human(r.started_at.zip(r.finished_at).map(|(a, b)| (b - a).num_milliseconds() as f64 / 1000.0))) }
                                td { (r.error.as_deref().unwrap_or("")) }
                            }
                        }
                    }
                }
                (more(next.as_deref(), &format!("{href}?after=")))
            }
        },
    )
}

/// Resets a workflow: it forgets which awaited jobs succeeded.
pub async fn reset(
    State(control): State<Arc<Control>>,
    Path(api_id): Path<String>,
    Posted(s): Posted,
) -> Response {
    let c = match control.configuration_named(&s.org, &api_id).await {
        Ok(c) => c,
        Err(e) => return failed(e),
    };
    let r = ConfigurationRef {
        account: c.account.clone(),
        environment: c.environment.clone(),
        configuration_type: c.configuration_type.clone(),
        configuration_id: c.configuration_id.clone(),
    };
    match control.reset_workflow(&s.who, &r).await {
        Ok(()) => {
            Redirect::to(&format!("/configurations/{}", urlencode(&c.api_id))).into_response()
        }
        Err(e) => failed(e),
    }
}
