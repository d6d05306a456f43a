//! Handlers of the API sources and their runs (the API Run page's data).

use sluice_domain::api_source::{status_label, RunType};
use sluice_engine::control::ApiRunsQuery;

use super::*;
use crate::api_runs::{detail_json, durations_json, run_json, source_json, task_json};

pub(super) fn routes(table: Table) -> Table {
    let sources = "/organizations/{org}/sources";
    let source = "/organizations/{org}/sources/{source}";
    let run = "/organizations/{org}/api-runs/{api_run}";
    table
        .at(
            Method::GET,
            sources,
            op("listSources", "The organization's API sources", "Sources"),
            list_sources,
        )
        .at(
            Method::POST,
            sources,
            op(
                "createSource",
                "Add an API source from its source file",
                "Source",
            )
            .json("SourceFile")
            .created(),
            create_source,
        )
        .at(
            Method::GET,
            source,
            op(
                "getSource",
                "An API source (secrets shown sealed)",
                "Source",
            ),
            get_source,
        )
        .at(
            Method::PUT,
            source,
            op("updateSource", "Replace an API source's file", "Source").json("SourceFile"),
            update_source,
        )
        .at(
            Method::DELETE,
            source,
            op("deleteSource", "Delete an API source", "Message"),
            delete_source,
        )
        .at(
            Method::GET,
            &format!("{source}/runs"),
            op(
                "listApiRuns",
                "A source's runs: filter, sort, a page at a time",
                "ApiRuns",
            )
            .query(&[
                "type",
                "status",
                "sort",
                "order",
                "limit",
                "next_page_token",
            ]),
            list_runs,
        )
        .at(
            Method::POST,
            &format!("{source}/runs"),
            op(
                "startApiRun",
                "Start an incremental or destructive run",
                "ApiRun",
            )
            .json("StartBody")
            .created(),
            start_run,
        )
        .at(
            Method::GET,
            &format!("{source}/durations"),
            op(
                "apiRunDurations",
                "Typical durations of a source's runs by type",
                "Durations",
            )
            .query(&["last"]),
            durations,
        )
        .at(
            Method::GET,
            run,
            op(
                "getApiRun",
                "An API run: tasks, tables, messages, its data load",
                "ApiRunDetail",
            ),
            get_run,
        )
        .at(
            Method::POST,
            &format!("{run}/cancel"),
            op("cancelApiRun", "Cancel an API run", "ApiRunCancelled"),
            cancel_run,
        )
        .at(
            Method::POST,
            &format!("{run}/retry"),
            op(
                "retryApiRun",
                "Retry a failed API run as a new run",
                "ApiRun",
            )
            .created(),
            retry_run,
        )
        .at(
            Method::GET,
            &format!("{run}/search"),
            op(
                "searchApiRun",
                "An API run's tasks whose name, table or messages hold a text",
                "ApiTasks",
            )
            .query(&["q"]),
            search_run,
        )
}

/// A source file in a request body: its JSON object (the `name` inside
/// names the source).
fn source_body(bytes: &Bytes) -> Result<Value> {
    let doc: Value = body(bytes)?;
    if !doc.is_object() {
        return Err(ApiError::bad_request(
            "the request body must be a source file: a JSON object with name, client and resources",
        ));
    }
    Ok(doc)
}

async fn list_sources(
    State(s): State<ApiState>,
    Caller(who): Caller,
    Path(org): Path<String>,
) -> Result<Json<Value>> {
    s.control.authorize(&who, &org)?;
    let list = s.control.api_sources(&org).await?;
    Ok(Json(
        json!({"entries": list.iter().map(source_json).collect::<Vec<_>>()}),
    ))
}

async fn create_source(
    State(s): State<ApiState>,
    Caller(who): Caller,
    Path(org): Path<String>,
    bytes: Bytes,
) -> Result<Response> {
    s.control.authorize(&who, &org)?;
    let doc = source_body(&bytes)?;
    let made = s.control.put_api_source(&org, &doc, false).await?;
    Ok((StatusCode::CREATED, Json(source_json(&made))).into_response())
}

async fn get_source(
    State(s): State<ApiState>,
    Caller(who): Caller,
    Path((org, source)): Path<(String, String)>,
) -> Result<Json<Value>> {
    s.control.authorize(&who, &org)?;
    Ok(Json(source_json(
        &s.control.api_source(&org, &source).await?,
    )))
}

async fn update_source(
    State(s): State<ApiState>,
    Caller(who): Caller,
    Path((org, source)): Path<(String, String)>,
    bytes: Bytes,
) -> Result<Json<Value>> {
    s.control.authorize(&who, &org)?;
    let doc = source_body(&bytes)?;
    if doc.get("name").and_then(Value::as_str) != Some(source.as_str()) {
        return Err(ApiError::bad_request(format!(
            "name: the file names another source than `{source}` (a source is renamed by making a new one)"
        )));
    }
    Ok(Json(source_json(
        &s.control.put_api_source(&org, &doc, true).await?,
    )))
}

async fn delete_source(
    State(s): State<ApiState>,
    Caller(who): Caller,
    Path((org, source)): Path<(String, String)>,
) -> Result<Json<Value>> {
    s.control.authorize(&who, &org)?;
    s.control.delete_api_source(&org, &source).await?;
    Ok(Json(
        json!({"message": format!("API source {source} deleted")}),
    ))
}

#[derive(Debug, Default, Deserialize)]
struct RunsParams {
    #[serde(rename = "type")]
    run_type: Option<String>,
    status: Option<String>,
    sort: Option<String>,
    order: Option<String>,
    limit: Option<String>,
    next_page_token: Option<String>,
}

async fn list_runs(
    State(s): State<ApiState>,
    Caller(who): Caller,
    Path((org, source)): Path<(String, String)>,
    Query(q): Query<RunsParams>,
) -> Result<Json<Value>> {
    s.control.authorize(&who, &org)?;
    let ascending = match q.order.as_deref() {
        None | Some("desc") => false,
        Some("asc") => true,
        Some(o) => {
            return Err(ApiError::bad_request(format!(
                "order `{o}`: expected asc or desc"
            )))
        }
    };
    let query = ApiRunsQuery {
        run_type: q.run_type,
        status: q.status,
        sort: q.sort,
        ascending,
        limit: super::datalake::number("limit", q.limit.as_deref())?,
        after: q.next_page_token,
    };
    let page = s.control.api_runs(&org, &source, &query).await?;
    Ok(Json(json!({
        "entries": page.runs.iter().map(run_json).collect::<Vec<_>>(),
        "next_page_token": page.next_page_token,
    })))
}

#[derive(Debug, Default, Deserialize)]
struct StartBody {
    #[serde(rename = "type")]
    run_type: Option<String>,
}

async fn start_run(
    State(s): State<ApiState>,
    Caller(who): Caller,
    Path((org, source)): Path<(String, String)>,
    bytes: Bytes,
) -> Result<Response> {
    s.control.authorize(&who, &org)?;
    let b: StartBody = body(&bytes)?;
    let run_type = match b.run_type.as_deref() {
        None => RunType::Incremental,
        Some(t) => RunType::parse(t).ok_or_else(|| {
            ApiError::bad_request(format!("type `{t}`: expected incremental or destructive"))
        })?,
    };
    let run = s.control.start_api_run(&org, &source, run_type).await?;
    let view = sluice_engine::control::ApiRunView {
        messages: i64::from(run.error.is_some()),
        run,
    };
    Ok((StatusCode::CREATED, Json(run_json(&view))).into_response())
}

#[derive(Debug, Default, Deserialize)]
struct DurationParams {
    last: Option<String>,
}

async fn durations(
    State(s): State<ApiState>,
    Caller(who): Caller,
    Path((org, source)): Path<(String, String)>,
    Query(q): Query<DurationParams>,
) -> Result<Json<Value>> {
    s.control.authorize(&who, &org)?;
    let last = super::datalake::number("last", q.last.as_deref())?.unwrap_or(20) as usize;
    let d = s.control.api_run_durations(&org, &source, last).await?;
    Ok(Json(json!({"entries": durations_json(&d)})))
}

async fn get_run(
    State(s): State<ApiState>,
    Caller(who): Caller,
    Path((org, run)): Path<(String, String)>,
) -> Result<Json<Value>> {
    s.control.authorize(&who, &org)?;
    Ok(Json(detail_json(&s.control.api_run(&org, &run).await?)))
}

async fn cancel_run(
    State(s): State<ApiState>,
    Caller(who): Caller,
    Path((org, run)): Path<(String, String)>,
) -> Result<Json<Value>> {
    s.control.authorize(&who, &org)?;
    let status = s.control.cancel_api_run(&org, &run).await?;
    Ok(Json(json!({
        "id": run,
        "status": status.as_str(),
        "status_label": status_label(status),
        "message": format!("API run {run} is {}", status_label(status)),
    })))
}

async fn retry_run(
    State(s): State<ApiState>,
    Caller(who): Caller,
    Path((org, run)): Path<(String, String)>,
) -> Result<Response> {
    s.control.authorize(&who, &org)?;
    let new = s.control.retry_api_run(&org, &run).await?;
    let view = sluice_engine::control::ApiRunView {
        messages: 0,
        run: new,
    };
    Ok((StatusCode::CREATED, Json(run_json(&view))).into_response())
}

#[derive(Debug, Default, Deserialize)]
struct SearchParams {
    q: Option<String>,
}

async fn search_run(
    State(s): State<ApiState>,
    Caller(who): Caller,
    Path((org, run)): Path<(String, String)>,
    Query(q): Query<SearchParams>,
) -> Result<Json<Value>> {
    s.control.authorize(&who, &org)?;
    let text = q.q.unwrap_or_default();
    sluice_engine::control::input::check_text(&text, "q")
        .map_err(|e| ApiError::bad_request(e.0))?;
    let tasks = s.control.search_api_run(&org, &run, &text).await?;
    Ok(Json(
        json!({"entries": tasks.iter().map(task_json).collect::<Vec<_>>()}),
    ))
}
