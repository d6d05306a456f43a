//! Handlers of the Run/Deployment API.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::handler::Handler;
use axum::http::Method;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{on, MethodFilter};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use sluice_engine::auth::Principal;
use sluice_engine::control::{
    DeploymentChange, LogsRequest, NewVersionRequest, RecentLogsRequest, SubmitRun,
};

use crate::error::{self, ApiError};
use crate::openapi::{op, Op};
use crate::{wire, ApiState};

type Result<T> = std::result::Result<T, ApiError>;

mod actions;
mod api_sources;
mod datalake;

/// A route of the HTTP API: what the router serves, and what `sluice
/// routes` prints and the isolation test walks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub method: Method,
    pub path: String,
    /// Reached without credentials: a pre-signed URL's token, or a page.
    pub public: bool,
    /// A page of the web console (a session cookie, not an Authorization
    /// header; HTML answers).
    pub page: bool,
    /// What a REST route takes and answers (the OpenAPI document's
    /// operation); GraphQL and the console's pages describe themselves.
    pub op: Option<Op>,
}

/// The router and the list of its routes, built together so neither can
/// forget one.
pub(crate) struct Table {
    router: Router<ApiState>,
    pub(crate) routes: Vec<Route>,
}

impl Table {
    fn new() -> Table {
        Table {
            router: Router::new(),
            routes: Vec::new(),
        }
    }

    /// `handler` answers `method` on `path`; it checks the caller's
    /// credentials itself (every handler starts with [`principal`]).
    fn at<H, T>(self, method: Method, path: &str, op: Op, handler: H) -> Table
    where
        H: Handler<T, ApiState>,
        T: 'static,
    {
        self.add(method, path, op, handler, false)
    }

    /// `handler` answers `method` on `path` without credentials.
    fn public<H, T>(self, method: Method, path: &str, op: Op, handler: H) -> Table
    where
        H: Handler<T, ApiState>,
        T: 'static,
    {
        self.add(method, path, op, handler, true)
    }

    fn add<H, T>(mut self, method: Method, path: &str, op: Op, handler: H, public: bool) -> Table
    where
        H: Handler<T, ApiState>,
        T: 'static,
    {
        let filter = MethodFilter::try_from(method.clone()).expect("a method axum routes");
        self.router = self.router.route(path, on(filter, handler));
        self.routes.push(Route {
            method,
            path: path.to_owned(),
            public,
            page: false,
            op: Some(op),
        });
        self
    }
}

/// Every route of the REST face.
pub(crate) fn table() -> Table {
    let dep = "/organizations/{org}/deployments/{dep}";
    let deps = "/organizations/{org}/deployments";
    let ver = &format!("{dep}/versions/{{ver}}");
    let run = &format!("{dep}/runs/{{run}}");
    const LOGS: &[&str] = &["next_token", "start_time", "end_time"];
    const RECENT: &[&str] = &[
        "next_forward_token",
        "next_backward_token",
        "start_time",
        "end_time",
    ];
    let table = Table::new()
        .public(
            Method::GET,
            "/healthz",
            op("health", "Liveness: the process serves", "Health"),
            || async { Json(json!({"status": "ok"})) },
        )
        .public(
            Method::GET,
            "/readyz",
            op(
                "ready",
                "Readiness: 503 while the metadata store does not answer",
                "Health",
            ),
            ready,
        )
        .public(
            Method::GET,
            "/metrics",
            op(
                "metrics",
                "Prometheus metrics of this process and the store's open work",
                "",
            )
            .text_out(),
            metrics,
        )
        .public(
            Method::GET,
            "/openapi.json",
            op("openapi", "This document", "OpenApi"),
            openapi,
        )
        .at(
            Method::GET,
            deps,
            op(
                "listDeployments",
                "The organization's deployments",
                "Deployments",
            ),
            list_deployments,
        )
        .at(
            Method::POST,
            deps,
            op("createDeployment", "Create a deployment", "Deployment").json("DeploymentBody"),
            create_deployment,
        )
        .at(
            Method::GET,
            dep,
            op("getDeployment", "A deployment", "Deployment"),
            get_deployment,
        )
        .at(
            Method::PATCH,
            dep,
            op(
                "updateDeployment",
                "Change a deployment's name, description or default environment",
                "Deployment",
            )
            .json("DeploymentBody"),
            patch_deployment,
        )
        .at(
            Method::DELETE,
            dep,
            op("deleteDeployment", "Delete a deployment", "Message"),
            delete_deployment,
        )
        .at(
            Method::GET,
            &format!("{dep}/versions"),
            op("listVersions", "A deployment's code versions", "Versions"),
            list_versions,
        )
        .at(
            Method::POST,
            &format!("{dep}/versions"),
            op(
                "createVersion",
                "Create a code version; its upload_url takes the code archive",
                "NewVersion",
            )
            .json("VersionBody"),
            create_version,
        )
        .at(
            Method::GET,
            ver,
            op("getVersion", "A code version", "Version"),
            get_version,
        )
        .at(
            Method::DELETE,
            ver,
            op("deleteVersion", "Delete a code version", "Message"),
            delete_version,
        )
        .at(
            Method::GET,
            &format!("{ver}/download"),
            op(
                "downloadVersion",
                "A pre-signed URL of a version's code archive",
                "DownloadUri",
            ),
            download_version,
        )
        .at(
            Method::GET,
            &format!("{dep}/runs"),
            op(
                "listRuns",
                "A deployment's runs, newest first, a page at a time",
                "Runs",
            )
            .query(&["scan_forward", "next_page_token"]),
            list_runs,
        )
        .at(
            Method::POST,
            &format!("{dep}/runs"),
            op(
                "submitRun",
                "Submit a run of a version (an Idempotency-Key submits once)",
                "Run",
            )
            .json("RunBody")
            .headers(&["Idempotency-Key"]),
            submit_run,
        )
        .at(Method::GET, run, op("getRun", "A run", "Run"), get_run)
        .at(
            Method::GET,
            &format!("{run}/logs"),
            op("runLogs", "A run's log lines, oldest first", "Logs").query(LOGS),
            run_logs,
        )
        .at(
            Method::GET,
            &format!("{run}/recentlogs"),
            op(
                "runRecentLogs",
                "A run's latest log lines, with tokens to page both ways",
                "RecentLogs",
            )
            .query(RECENT),
            run_recent_logs,
        )
        .at(
            Method::POST,
            &format!("{run}/cancel"),
            op("cancelRun", "Cancel a run", "Run"),
            cancel_run,
        )
        .at(
            Method::GET,
            &format!("{run}/attempts"),
            op(
                "runAttempts",
                "A run's attempts: worker, outcome, error",
                "Attempts",
            ),
            run_attempts,
        )
        .public(
            Method::PUT,
            "/uploads/{token}",
            op(
                "uploadVersion",
                "Upload a version's code archive to its pre-signed URL",
                "Uploaded",
            )
            .bytes_in(),
            upload,
        )
        .public(
            Method::GET,
            "/downloads/{token}",
            op(
                "downloadArchive",
                "A version's code archive, by its pre-signed URL",
                "",
            )
            .bytes_out(),
            download,
        );
    api_sources::routes(actions::routes(datalake::routes(table)))
}

async fn openapi() -> Json<Value> {
    Json(crate::openapi::document().clone())
}

pub fn routes(state: ApiState) -> Router {
    table()
        .router
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        // Uploads may be large; Control enforces the configured limit with a 413.
        .layer(axum::extract::DefaultBodyLimit::max(
            state.control.settings().max_upload_bytes + 1,
        ))
        .with_state(state)
}

/// The caller, from the request's `Authorization` header: every handler
/// that takes credentials has it among its arguments (before its body, so
/// a request without credentials is refused before its body is read).
pub(crate) struct Caller(pub Principal);

impl axum::extract::FromRequestParts<ApiState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &ApiState,
    ) -> std::result::Result<Caller, ApiError> {
        let header = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok());
        Ok(Caller(state.control.authenticate(header).await?))
    }
}

/// The largest JSON request body (uploads of code and files have their own
/// limits); more is a 413.
pub(crate) const MAX_JSON_BODY: usize = 1 << 20;

/// Parses a JSON body, saying where it went wrong: larger than
/// [`MAX_JSON_BODY`] is a 413; a string holding a NUL character or longer
/// than [`sluice_engine::control::input::MAX_STRING`] a 400 naming the field.
fn body<T: DeserializeOwned + Default>(bytes: &Bytes) -> Result<T> {
    if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(T::default());
    }
    if bytes.len() > MAX_JSON_BODY {
        return Err(ApiError(sluice_engine::control::ControlError::TooLarge(
            format!(
                "the request body is {} bytes; a JSON body may have {MAX_JSON_BODY}",
                bytes.len()
            ),
        )));
    }
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request(format!("the request body is not valid: {e}")))?;
    sluice_engine::control::input::check_json(&value, "body").map_err(ApiError::bad_request)?;
    serde_json::from_value(value)
        .map_err(|e| ApiError::bad_request(format!("the request body is not valid: {e}")))
}

/// The base of the pre-signed URLs this server hands out.
fn public_url(state: &ApiState, headers: &HeaderMap) -> String {
    if let Some(url) = &state.public_url {
        return url.trim_end_matches('/').to_owned();
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1:8080");
    format!("http://{host}")
}

async fn created_by(state: &ApiState, d: &sluice_domain::Deployment) -> Value {
    let creator = match &d.creator {
        Some(id) => state.control.user(id).await,
        None => None,
    };
    wire::deployment(d, creator.as_ref())
}

/// Readiness: 200 while the metadata store answers, else 503 saying why
/// (`/healthz` stays the liveness probe: the process serves).
/// Prometheus' text format: what this process counted, and the store's
/// open work read now (no organization's data: counts by kind, status,
/// queue and route template only).
async fn metrics(State(s): State<ApiState>) -> Result<axum::response::Response> {
    use axum::response::IntoResponse;
    let text = s.control.metrics().await?;
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

async fn ready(State(s): State<ApiState>) -> Result<Json<Value>> {
    s.control.ready().await?;
    Ok(Json(json!({"status": "ready"})))
}

async fn create_deployment(
    State(s): State<ApiState>,
    Caller(who): Caller,
    Path(org): Path<String>,
    bytes: Bytes,
) -> Result<Json<Value>> {
    let b: wire::DeploymentBody = body(&bytes)?;
    let change = DeploymentChange {
        name: b.name,
        description: b.description,
        default_environment: b.default_environment,
    };
    let d = s.control.create_deployment(&who, &org, change).await?;
    Ok(Json(created_by(&s, &d).await))
}

async fn list_deployments(
    State(s): State<ApiState>,
    Caller(who): Caller,
    Path(org): Path<String>,
) -> Result<Json<Value>> {
    let mut entries = Vec::new();
    for d in s.control.list_deployments(&who, &org).await? {
        entries.push(created_by(&s, &d).await);
    }
    Ok(Json(json!({"entries": entries})))
}

async fn get_deployment(
    State(s): State<ApiState>,
    Caller(who): Caller,
    Path((org, dep)): Path<(String, String)>,
) -> Result<Json<Value>> {
    let d = s.control.get_deployment(&who, &org, &dep).await?;
    Ok(Json(created_by(&s, &d).await))
}

async fn patch_deployment(
    State(s): State<ApiState>,
    Caller(who): Caller,
    Path((org, dep)): Path<(String, String)>,
    bytes: Bytes,
) -> Result<Json<Value>> {
    let b: wire::DeploymentBody = body(&bytes)?;
    let change = DeploymentChange {
        name: b.name,
        description: b.description,
        default_environment: b.default_environment,
    };
    let d = s
        .control
        .update_deployment(&who, &org, &dep, change)
        .await?;
    Ok(Json(created_by(&s, &d).await))
}

async fn delete_deployment(
    State(s): State<ApiState>,
    Caller(who): Caller,
    Path((org, dep)): Path<(String, String)>,
) -> Result<Json<Value>> {
    let id = s.control.delete_deployment(&who, &org, &dep).await?;
    Ok(Json(json!({"message": format!("{id} deleted")})))
}

async fn create_version(
    State(s): State<ApiState>,
    Caller(who): Caller,
    Path((org, dep)): Path<(String, String)>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<Json<Value>> {
    let b: wire::VersionBody = body(&bytes)?;
    let req = NewVersionRequest {
        version: b.version,
        handler: b.handler,
        image: b.image,
        user_parameters: b.user_parameters,
    };
    let v = s.control.create_version(&who, &org, &dep, req).await?;
    let mut out = wire::version(&v);
    out["upload_url"] = json!(format!(
        "{}/uploads/{}",
        public_url(&s, &headers),
        s.control.upload_token(&v)
    ));
    Ok(Json(out))
}

async fn list_versions(
    State(s): State<ApiState>,
    Caller(who): Caller,
    Path((org, dep)): Path<(String, String)>,
) -> Result<Json<Value>> {
    let versions = s.control.list_versions(&who, &org, &dep).await?;
    Ok(Json(
        json!({"entries": versions.iter().map(wire::version).collect::<Vec<_>>()}),
    ))
}

async fn get_version(
    State(s): State<ApiState>,
    Caller(who): Caller,
    Path((org, dep, ver)): Path<(String, String, String)>,
) -> Result<Json<Value>> {
    Ok(Json(wire::version(
        &s.control.get_version(&who, &org, &dep, &ver).await?,
    )))
}

async fn delete_version(
    State(s): State<ApiState>,
    Caller(who): Caller,
    Path((org, dep, ver)): Path<(String, String, String)>,
) -> Result<Json<Value>> {
    let id = s.control.delete_version(&who, &org, &dep, &ver).await?;
    Ok(Json(json!({"message": format!("{id} deleted")})))
}

async fn download_version(
    State(s): State<ApiState>,
    Caller(who): Caller,
    Path((org, dep, ver)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Result<Json<Value>> {
    let v = s.control.get_version(&who, &org, &dep, &ver).await?;
    if v.archive.is_none() {
        return Err(ApiError(sluice_engine::control::ControlError::NotFound(
            format!("version {} has no uploaded code", v.id),
        )));
    }
    let uri = format!(
        "{}/downloads/{}",
        public_url(&s, &headers),
        s.control.download_token(&v)
    );
    Ok(Json(json!({"download_uri": uri})))
}

async fn upload(
    State(s): State<ApiState>,
    Path(token): Path<String>,
    bytes: Bytes,
) -> Result<Json<Value>> {
    let v = s.control.accept_upload(&token, &bytes).await?;
    Ok(Json(
        json!({"version_id": v.id, "size": bytes.len(), "message": "uploaded"}),
    ))
}

async fn download(State(s): State<ApiState>, Path(token): Path<String>) -> Result<Response> {
    let (name, bytes) = s.control.download(&token).await?;
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
        ],
        bytes,
    )
        .into_response())
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    scan_forward: Option<String>,
    next_page_token: Option<String>,
}

/// `scan_forward` as the SDK sends it: `True`/`False` (any case, or 1/0).
fn scan_forward(v: Option<&str>) -> Result<bool> {
    match v.map(|s| s.to_ascii_lowercase()) {
        None => Ok(false),
        Some(s) if s == "true" || s == "1" => Ok(true),
        Some(s) if s == "false" || s == "0" || s.is_empty() => Ok(false),
        Some(s) => Err(ApiError::bad_request(format!(
            "scan_forward must be True or False, got `{s}`"
        ))),
    }
}

async fn submit_run(
    State(s): State<ApiState>,
    Caller(who): Caller,
    Path((org, dep)): Path<(String, String)>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<Json<Value>> {
    let b: wire::RunBody = body(&bytes)?;
    let idempotency_key = headers
        .get("idempotency-key")
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned);
    let req = SubmitRun {
        version_id: b.version_id,
        input_data: b.input_data,
        models: b.models,
        output_template: b.output_template,
        environment: b.environment,
        retry_count: b.retry_count,
        distribution: b.distribution,
        idempotency_key,
    };
    Ok(Json(wire::run(
        &s.control.submit_run(&who, &org, &dep, req).await?,
    )))
}

async fn list_runs(
    State(s): State<ApiState>,
    Caller(who): Caller,
    Path((org, dep)): Path<(String, String)>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>> {
    let forward = scan_forward(q.scan_forward.as_deref())?;
    let page = s
        .control
        .list_runs(
            &who,
            &org,
            &dep,
            None,
            forward,
            q.next_page_token.as_deref(),
        )
        .await?;
    Ok(Json(json!({
        "entries": page.runs.iter().map(wire::run).collect::<Vec<_>>(),
        "next_page_token": page.next_page_token,
    })))
}

async fn get_run(
    State(s): State<ApiState>,
    Caller(who): Caller,
    Path((org, dep, run)): Path<(String, String, String)>,
) -> Result<Json<Value>> {
    Ok(Json(wire::run(
        &s.control.get_run(&who, &org, &dep, &run).await?,
    )))
}

async fn cancel_run(
    State(s): State<ApiState>,
    Caller(who): Caller,
    Path((org, dep, run)): Path<(String, String, String)>,
) -> Result<Json<Value>> {
    Ok(Json(wire::run(
        &s.control.cancel_run(&who, &org, &dep, &run).await?,
    )))
}

async fn run_attempts(
    State(s): State<ApiState>,
    Caller(who): Caller,
    Path((org, dep, run)): Path<(String, String, String)>,
) -> Result<Json<Value>> {
    let attempts = s.control.run_attempts(&who, &org, &dep, &run).await?;
    Ok(Json(
        json!({"entries": attempts.iter().map(wire::attempt).collect::<Vec<_>>()}),
    ))
}

#[derive(Debug, Deserialize)]
struct LogsQuery {
    next_token: Option<String>,
    next_forward_token: Option<String>,
    next_backward_token: Option<String>,
    start_time: Option<String>,
    end_time: Option<String>,
}

async fn run_logs(
    State(s): State<ApiState>,
    Caller(who): Caller,
    Path((org, dep, run)): Path<(String, String, String)>,
    Query(q): Query<LogsQuery>,
) -> Result<Json<Value>> {
    let req = LogsRequest {
        next_token: q.next_token,
        start_time: q.start_time,
        end_time: q.end_time,
    };
    let page = s.control.logs(&who, &org, &dep, &run, req).await?;
    let mut out = json!({"events": page.events.iter().map(wire::log_event).collect::<Vec<_>>()});
    if let Some(t) = page.next_token {
        out["next_token"] = json!(t);
    }
    Ok(Json(out))
}

async fn run_recent_logs(
    State(s): State<ApiState>,
    Caller(who): Caller,
    Path((org, dep, run)): Path<(String, String, String)>,
    Query(q): Query<LogsQuery>,
) -> Result<Json<Value>> {
    let req = RecentLogsRequest {
        next_forward_token: q.next_forward_token,
        next_backward_token: q.next_backward_token,
        start_time: q.start_time,
        end_time: q.end_time,
    };
    let page = s.control.recent_logs(&who, &org, &dep, &run, req).await?;
    Ok(Json(json!({
        "events": page.events.iter().map(wire::log_event).collect::<Vec<_>>(),
        "next_forward_token": page.next_forward_token,
        "next_backward_token": page.next_backward_token,
    })))
}
