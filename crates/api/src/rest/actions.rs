//! Handlers of the Tailer-style action API: `POST /v1/dag/launch`,
//! `POST /v1/dag/status`, `POST /v1/configuration/status` and
//! `POST /v1/workflow/status`, each a JSON
//! body naming its `action`, answered as Tailer's API answers. Bearer JWT
//! only (`sluice auth get-token`).

use sluice_domain::action::{duration_text, ActionRun, Deployed, TABLE_TO_TABLE};
use sluice_domain::time;
use sluice_engine::control::{ConfigurationRef, ControlError};

use super::*;

pub(super) fn routes(table: Table) -> Table {
    table
        .at(
            Method::POST,
            "/v1/dag/launch",
            op(
                "launch",
                "launch_job: run a deployed configuration now",
                "Launched",
            )
            .json("ActionRequest"),
            launch,
        )
        .at(
            Method::POST,
            "/v1/dag/status",
            op(
                "runStatus",
                "check_run_status, get_last_status, get_by_status, set_run_status",
                "ActionResults",
            )
            .json("ActionRequest"),
            status,
        )
        .at(
            Method::POST,
            "/v1/configuration/status",
            op(
                "configurationStatus",
                "set_configuration_status: activate, archive",
                "ActionOk",
            )
            .json("ActionRequest"),
            configuration_status,
        )
        .at(
            Method::POST,
            "/v1/workflow/status",
            op(
                "workflowStatus",
                "reset_workflow_status, get_workflow_status",
                "ActionOk",
            )
            .json("ActionRequest"),
            workflow_status,
        )
}

/// The caller, from a Bearer JWT (the action API takes nothing else).
pub(crate) struct Bearer(pub Principal);

impl axum::extract::FromRequestParts<ApiState> for Bearer {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &ApiState,
    ) -> std::result::Result<Bearer, ApiError> {
        let header = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok());
        match header {
            Some(h) if h.len() > 7 && h[..7].eq_ignore_ascii_case("bearer ") => {
                Ok(Bearer(state.control.authenticate(Some(h)).await?))
            }
            _ => Err(ApiError(ControlError::Unauthorized(
                "the action API takes a JWT: send `Authorization: Bearer <token>` (`sluice auth \
                 get-token` prints one)"
                    .into(),
            ))),
        }
    }
}

/// A request of the action API: the action and what it names.
#[derive(Debug, Default, Deserialize)]
struct ActionRequest {
    action: Option<String>,
    #[serde(default)]
    account: String,
    #[serde(default)]
    environment: String,
    #[serde(default)]
    configuration_type: String,
    #[serde(default)]
    configuration_id: String,
    execution_date: Option<String>,
    job_id: Option<String>,
    run_id: Option<String>,
    status: Option<String>,
    limit: Option<u32>,
    activated: Option<bool>,
    archived: Option<bool>,
}

impl ActionRequest {
    fn configuration(&self) -> ConfigurationRef {
        ConfigurationRef {
            account: self.account.clone(),
            environment: self.environment.clone(),
            configuration_type: self.configuration_type.clone(),
            configuration_id: self.configuration_id.clone(),
        }
    }

    /// The action, which must be one of `expected`.
    fn action(&self, expected: &[&str]) -> Result<String> {
        match self.action.as_deref() {
            Some(a) if expected.contains(&a) => Ok(a.to_owned()),
            Some(a) => Err(ApiError::bad_request(format!(
                "action `{a}`: this route takes {}",
                expected.join(", ")
            ))),
            None => Err(ApiError::bad_request(format!(
                "action is required: one of {}",
                expected.join(", ")
            ))),
        }
    }

    fn run_id(&self) -> Result<&str> {
        self.run_id
            .as_deref()
            .filter(|r| !r.is_empty())
            .ok_or_else(|| ApiError::bad_request("run_id is required"))
    }
}

/// A run as the action API shows it. `configuration_type` is the one the
/// request named (`check_run_status`), or, in lists, the job's type
/// (`gbq-to-gbq` for table-to-table), as Tailer's API answers.
fn result(run: &ActionRun, c: &Deployed, configuration_type: &str) -> Value {
    let start = run.started_at.unwrap_or(run.created_at);
    let end = run.finished_at.unwrap_or_else(time::now);
    let duration = match run.started_at {
        Some(_) => (end - start).num_microseconds().unwrap_or(0),
        None => 0,
    };
    json!({
        "account": c.account,
        "configuration_id": run.api_id,
        "configuration_type": configuration_type,
        "duration": duration_text(duration),
        "environment": c.environment,
        "job_id": run.job_id,
        "last_update_date": wire::iso_micros(&run.modified_at),
        "run_id": run.id,
        "start_execution_date": wire::iso_micros(&start),
        "status": run.action_status().as_str(),
    })
}

/// The job type lists name a configuration's runs by.
fn job_type(c: &Deployed) -> &str {
    if c.configuration_type == TABLE_TO_TABLE {
        "gbq-to-gbq"
    } else {
        &c.configuration_type
    }
}

fn ok(data: Value) -> Json<Value> {
    Json(json!({"code": 200, "data": data, "message": "ok"}))
}

async fn launch(State(s): State<ApiState>, Bearer(who): Bearer, raw: Bytes) -> Result<Response> {
    let req: ActionRequest = body(&raw)?;
    req.action(&["launch_job"])?;
    let run = s
        .control
        .launch(&who, &req.configuration(), req.execution_date.as_deref())
        .await?;
    Ok(Json(json!({"run_id": run.id})).into_response())
}

async fn status(State(s): State<ApiState>, Bearer(who): Bearer, raw: Bytes) -> Result<Response> {
    let req: ActionRequest = body(&raw)?;
    let action = req.action(&[
        "check_run_status",
        "get_last_status",
        "get_by_status",
        "set_run_status",
    ])?;
    let c = &s.control;
    let results = match action.as_str() {
        "check_run_status" => {
            let conf = req.configuration();
            let (deployed, run) = c
                .action_run(&who, &conf, req.job_id.as_deref(), req.run_id()?)
                .await?;
            vec![result(&run, &deployed, &req.configuration_type)]
        }
        "get_last_status" => {
            let (deployed, runs) = c
                .last_runs(
                    &who,
                    &req.configuration(),
                    req.execution_date.as_deref(),
                    req.status.as_deref(),
                    req.limit,
                )
                .await?;
            runs.iter()
                .map(|r| result(r, &deployed, job_type(&deployed)))
                .collect()
        }
        "get_by_status" => {
            let status = req
                .status
                .as_deref()
                .ok_or_else(|| ApiError::bad_request("status is required"))?;
            c.runs_in(&who, &req.account, status, req.limit)
                .await?
                .iter()
                .map(|(deployed, r)| result(r, deployed, job_type(deployed)))
                .collect()
        }
        _ => {
            let status = req
                .status
                .as_deref()
                .ok_or_else(|| ApiError::bad_request("status is required"))?;
            let (deployed, run) = c
                .set_run_status(
                    &who,
                    &req.configuration(),
                    req.job_id.as_deref(),
                    req.run_id()?,
                    status,
                )
                .await?;
            vec![result(&run, &deployed, &req.configuration_type)]
        }
    };
    Ok(Json(json!({ "results": results })).into_response())
}

async fn configuration_status(
    State(s): State<ApiState>,
    Bearer(who): Bearer,
    raw: Bytes,
) -> Result<Response> {
    let req: ActionRequest = body(&raw)?;
    req.action(&["set_configuration_status"])?;
    let (Some(activated), Some(archived)) = (req.activated, req.archived) else {
        return Err(ApiError::bad_request(
            "set_configuration_status needs both `activated` and `archived` (true or false)",
        ));
    };
    s.control
        .set_configuration_status(&who, &req.configuration(), activated, archived)
        .await?;
    Ok(ok(json!({})).into_response())
}

/// A workflow's state: `reset_workflow_status` forgets which awaited jobs
/// succeeded; `get_workflow_status` (sluice's own) shows each awaited job
/// with 1 when it succeeded since the workflow last fired, else 0.
async fn workflow_status(
    State(s): State<ApiState>,
    Bearer(who): Bearer,
    raw: Bytes,
) -> Result<Response> {
    let req: ActionRequest = body(&raw)?;
    let action = req.action(&["reset_workflow_status", "get_workflow_status"])?;
    let conf = req.configuration();
    if action == "reset_workflow_status" {
        s.control.reset_workflow(&who, &conf).await?;
        return Ok(ok(json!({})).into_response());
    }
    let (c, state) = s.control.workflow_state(&who, &conf).await?;
    let jobs: serde_json::Map<String, Value> = state
        .awaited
        .iter()
        .map(|(job, run)| (job.clone(), json!(u8::from(run.is_some()))))
        .collect();
    let runs: serde_json::Map<String, Value> = state
        .awaited
        .iter()
        .filter_map(|(job, run)| run.as_ref().map(|r| (job.clone(), json!(r))))
        .collect();
    Ok(ok(json!({
        "configuration_id": c.api_id,
        "authorized_job_ids": jobs,
        "runs": runs,
        "target_dag": {
            "configuration_type": state.workflow.target_type,
            "configuration_id": state.workflow.target_id,
        },
    }))
    .into_response())
}
