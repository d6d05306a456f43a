//! The OpenAPI 3.1 document of the REST faces, built from the same route
//! table the router is built from: a route cannot be served without an
//! [`Op`] saying what it takes and answers, so the document cannot forget
//! one. The shapes an operation answers are the wire shapes of
//! [`crate::wire`] and [`crate::api_runs`], written down in
//! [`components`]; the fuzz test (schemathesis) checks every answer against
//! them and fails on a difference.

use std::sync::OnceLock;

use serde_json::{json, Map, Value};

use crate::rest::Route;

/// What one route takes and answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    pub id: &'static str,
    pub summary: &'static str,
    /// Optional query parameters, all strings on the wire.
    pub query: &'static [&'static str],
    /// Optional request headers.
    pub headers: &'static [&'static str],
    pub body: Body,
    pub answer: Answer,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    None,
    /// A JSON object of the named component (an empty body is taken as
    /// `{}`).
    Json(&'static str),
    /// Raw bytes of any content type.
    Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The named component, with this status.
    Json(u16, &'static str),
    /// Raw bytes (a download).
    Bytes,
    /// Prometheus' text format.
    Text,
}

/// An operation taking no body and answering `component` with 200.
pub const fn op(id: &'static str, summary: &'static str, component: &'static str) -> Op {
    Op {
        id,
        summary,
        query: &[],
        headers: &[],
        body: Body::None,
        answer: Answer::Json(200, component),
    }
}

impl Op {
    pub const fn query(mut self, names: &'static [&'static str]) -> Op {
        self.query = names;
        self
    }

    pub const fn headers(mut self, names: &'static [&'static str]) -> Op {
        self.headers = names;
        self
    }

    pub const fn json(mut self, component: &'static str) -> Op {
        self.body = Body::Json(component);
        self
    }

    pub const fn bytes_in(mut self) -> Op {
        self.body = Body::Bytes;
        self
    }

    pub const fn created(mut self) -> Op {
        if let Answer::Json(_, c) = self.answer {
            self.answer = Answer::Json(201, c);
        }
        self
    }

    pub const fn bytes_out(mut self) -> Op {
        self.answer = Answer::Bytes;
        self
    }

    pub const fn text_out(mut self) -> Op {
        self.answer = Answer::Text;
        self
    }
}

/// The document, built once.
pub fn document() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(|| build(&crate::rest::table().routes))
}

fn build(routes: &[Route]) -> Value {
    let mut paths = Map::new();
    for r in routes {
        let Some(op) = &r.op else { continue };
        let item = paths
            .entry(r.path.clone())
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .expect("a path item");
        item.insert(r.method.as_str().to_ascii_lowercase(), operation(r, op));
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "sluice",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The REST faces of sluice: the ABEJA-style Run/Deployment API \
                (deployments, versions, runs, logs), its datalake (channels, files, triggers), \
                the API sources and their runs (the API Run page), and the Tailer-style action \
                API. The GraphQL face describes itself at /graphql (introspection).",
        },
        "paths": paths,
        "components": {
            "securitySchemes": {
                "basic": {
                    "type": "http",
                    "scheme": "basic",
                    "description": "A user's id and personal access token (`sluice user create` prints them), as abeja-sdk sends them.",
                },
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "A JWT from `sluice auth get-token`; the action API takes only this.",
                },
            },
            "schemas": components(),
        },
    })
}

fn tag(path: &str) -> &'static str {
    if path.starts_with("/v1/") {
        "Tailer-style actions"
    } else if path.contains("/sources") || path.contains("/api-runs") {
        "API sources"
    } else if path.contains("/channels") || path.contains("/triggers") || path.starts_with("/files")
    {
        "Datalake"
    } else if path.contains("/deployments")
        || path.starts_with("/uploads")
        || path.starts_with("/downloads")
    {
        "ABEJA-style runs"
    } else {
        "Operations"
    }
}

fn operation(r: &Route, op: &Op) -> Value {
    let mut params: Vec<Value> = r
        .path
        .split('/')
        .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
        .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
        .collect();
    params.extend(
        op.query
            .iter()
            .map(|name| json!({"name": name, "in": "query", "required": false, "schema": {"type": "string"}})),
    );
    params.extend(
        op.headers
            .iter()
            .map(|name| json!({"name": name, "in": "header", "required": false, "schema": {"type": "string"}})),
    );
    let mut out = json!({
        "operationId": op.id,
        "summary": op.summary,
        "tags": [tag(&r.path)],
        "parameters": params,
        "responses": responses(op),
    });
    match op.body {
        Body::None => {}
        Body::Json(c) => {
            out["requestBody"] = json!({
                "required": false,
                "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{c}")}}},
            })
        }
        Body::Bytes => {
            out["requestBody"] = json!({
                "required": false,
                "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
            })
        }
    }
    if r.public {
        out["security"] = json!([]);
    } else if r.path.starts_with("/v1/") {
        out["security"] = json!([{"bearer": []}]);
    } else {
        out["security"] = json!([{"basic": []}, {"bearer": []}]);
    }
    out
}

fn responses(op: &Op) -> Value {
    let error = json!({
        "description": "What was wrong and where: 400 bad input, 401 no or bad credentials, 403 another \
            organization's resource, 404 not found, 405 method, 408 a body that stopped arriving, \
            409 conflict, 413 too large.",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    });
    let (status, ok) = match op.answer {
        Answer::Json(status, c) => (
            status,
            json!({"description": "OK", "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{c}")}}}}),
        ),
        Answer::Bytes => (
            200,
            json!({"description": "The stored bytes", "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}}}),
        ),
        Answer::Text => (
            200,
            json!({"description": "Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}}),
        ),
    };
    let mut out = json!({ status.to_string(): ok, "4XX": error });
    out["503"] = json!({
        "description": "The metadata store does not answer now.",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    });
    out
}

// ---- schemas --------------------------------------------------------------

fn string() -> Value {
    json!({"type": "string"})
}

fn string_or_null() -> Value {
    json!({"type": ["string", "null"]})
}

fn integer() -> Value {
    json!({"type": "integer"})
}

fn integer_or_null() -> Value {
    json!({"type": ["integer", "null"]})
}

fn boolean() -> Value {
    json!({"type": "boolean"})
}

fn any() -> Value {
    json!({})
}

fn object_map() -> Value {
    json!({"type": "object"})
}

fn array_of(c: &str) -> Value {
    json!({"type": "array", "items": reference(c)})
}

fn reference(c: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{c}")})
}

/// An object whose every listed field is always present.
fn object(fields: &[(&str, Value)]) -> Value {
    let props: Map<String, Value> = fields
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect();
    let required: Vec<&str> = fields.iter().map(|(k, _)| *k).collect();
    json!({"type": "object", "properties": props, "required": required})
}

/// A request body: every field optional, each of the type the handler
/// parses (a wrong type is a 400).
fn body(fields: &[(&str, Value)]) -> Value {
    let props: Map<String, Value> = fields
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect();
    json!({"type": "object", "properties": props})
}

fn with(base: Value, extra: &[(&str, Value)]) -> Value {
    let mut out = base;
    for (k, v) in extra {
        out["properties"][*k] = v.clone();
        out["required"]
            .as_array_mut()
            .expect("required")
            .push(json!(k));
    }
    out
}

fn entries(c: &str) -> Value {
    object(&[("entries", array_of(c))])
}

fn page(c: &str) -> Value {
    object(&[
        ("entries", array_of(c)),
        ("next_page_token", string_or_null()),
    ])
}

/// Every shape the REST faces take and answer.
pub fn components() -> Value {
    let user = json!({"oneOf": [{"type": "null"}, object(&[
        ("id", string()), ("email", string()), ("display_name", any()),
        ("is_registered", boolean()), ("role", string()),
        ("created_at", string()), ("updated_at", string()),
    ])]});
    let deployment = object(&[
        ("deployment_id", string()),
        ("organization_id", string()),
        ("name", string()),
        ("description", string()),
        ("creator", user),
        ("default_environment", object_map()),
        ("runs", json!({"type": "array"})),
        ("services", json!({"type": "array"})),
        ("triggers", json!({"type": "array"})),
        ("created_at", string()),
        ("modified_at", string()),
    ]);
    let version = object(&[
        ("deployment_id", string()),
        ("version", string()),
        ("version_id", string()),
        ("handler", string()),
        ("image", string()),
        ("user_parameters", object_map()),
        ("uploaded", boolean()),
        ("created_at", string()),
        ("modified_at", string()),
    ]);
    let run = object(&[
        ("run_id", string()),
        ("deployment_id", string()),
        ("models", any()),
        ("model_version", string_or_null()),
        ("model_version_id", string()),
        ("input_data", any()),
        ("output_template", any()),
        ("retry_count", integer()),
        ("distribution", integer_or_null()),
        ("status", string()),
        ("user_env_vars", object_map()),
        ("attempt_count", integer()),
        ("error", string_or_null()),
        ("created_at", string()),
        ("modified_at", string()),
        ("started_at", string_or_null()),
        ("finished_at", string_or_null()),
    ]);
    let attempt = object(&[
        ("attempt", integer()),
        ("worker", string()),
        ("outcome", string()),
        ("error", string_or_null()),
        ("started_at", string()),
        ("running_at", string_or_null()),
        ("finished_at", string_or_null()),
    ]);
    let log_event = object(&[("message", string()), ("timestamp", string())]);
    let channel = object(&[
        ("channel_id", string()),
        ("name", string()),
        ("display_name", string()),
        ("description", string()),
        ("storage_type", string()),
        ("archived", boolean()),
        ("created_at", string()),
        ("updated_at", string()),
    ]);
    let organization = [
        ("organization_id", string()),
        ("organization_name", string()),
        ("created_at", string()),
        ("updated_at", string()),
    ];
    let file = object(&[
        ("channel_id", string()),
        ("file_id", string()),
        ("content_type", string()),
        (
            "metadata",
            json!({"type": "object", "additionalProperties": {"type": "string"}}),
        ),
        ("size", integer()),
        ("lifetime", string_or_null()),
        ("uploaded_at", string()),
    ]);
    let file_with_download = with(
        file.clone(),
        &[("download_uri", string()), ("url_expires_on", string())],
    );
    let trigger = object(&[
        ("trigger_id", string()),
        ("organization_id", string()),
        ("deployment_id", string()),
        ("model_version", string_or_null()),
        ("model_version_id", string()),
        ("input_service_name", string()),
        ("input_service_id", string()),
        ("output_service_name", string_or_null()),
        ("output_service_id", string_or_null()),
        ("models", any()),
        ("retry_count", integer()),
        ("distribution", integer_or_null()),
        ("user_env_vars", object_map()),
        ("created_at", string()),
        ("modified_at", string()),
    ]);
    let trigger_event = object(&[
        ("trigger_id", string()),
        ("channel_id", string()),
        ("file_id", string()),
        ("state", string()),
        ("run_id", string_or_null()),
        ("note", string_or_null()),
        ("created_at", string()),
        ("dispatched_at", string_or_null()),
    ]);
    let id = json!({"type": ["integer", "string"]});
    let api_run = object(&[
        ("id", id.clone()),
        ("source", string()),
        ("type", string()),
        ("status", string()),
        ("status_label", string()),
        ("retry_of", json!({"type": ["integer", "string", "null"]})),
        ("records", integer()),
        ("tables", integer()),
        ("messages", integer()),
        ("error", string_or_null()),
        ("attempt", integer()),
        ("created_at", string()),
        ("started_at", string_or_null()),
        ("finished_at", string_or_null()),
        ("duration_secs", json!({"type": ["number", "null"]})),
    ]);
    let api_task = object(&[
        ("position", integer()),
        ("name", string()),
        ("kind", string()),
        ("table", string_or_null()),
        ("status", string()),
        ("status_label", string()),
        ("records", integer()),
        (
            "messages",
            json!({"type": "array", "items": {"type": "string"}}),
        ),
        ("started_at", string_or_null()),
        ("finished_at", string_or_null()),
    ]);
    let api_run_detail = with(
        api_run.clone(),
        &[
            ("tasks", array_of("ApiTask")),
            (
                "table_list",
                json!({"type": "array", "items": object(&[
                    ("name", string()), ("records", integer()),
                    ("columns", json!({"type": "array", "items": object(&[("name", string()), ("type", string())])})),
                ])}),
            ),
            (
                "message_list",
                json!({"type": "array", "items": object(&[
                    ("task", any()), ("table", any()), ("message", string()),
                ])}),
            ),
            ("retryable", boolean()),
            ("data_load", any()),
        ],
    );
    let action_result = object(&[
        ("account", string()),
        ("configuration_id", string()),
        ("configuration_type", string()),
        ("duration", string()),
        ("environment", string()),
        ("job_id", any()),
        ("last_update_date", string()),
        ("run_id", string()),
        ("start_execution_date", string()),
        ("status", string()),
    ]);
    let action_fields = [
        ("action", string()),
        ("account", string()),
        ("environment", string()),
        ("configuration_type", string()),
        ("configuration_id", string()),
        ("execution_date", string_or_null()),
        ("job_id", string_or_null()),
        ("run_id", string_or_null()),
        ("status", string_or_null()),
        (
            "limit",
            json!({"type": ["integer", "null"], "minimum": 0, "maximum": u32::MAX}),
        ),
        ("activated", json!({"type": ["boolean", "null"]})),
        ("archived", json!({"type": ["boolean", "null"]})),
    ];
    let int_or_null =
        json!({"type": ["integer", "null"], "minimum": i64::MIN, "maximum": i64::MAX});
    let mut out = Map::new();
    let mut put = |name: &str, schema: Value| {
        out.insert(name.to_owned(), schema);
    };
    put(
        "Error",
        object(&[("error", string()), ("error_description", string())]),
    );
    put("Message", object(&[("message", string())]));
    put("Health", object(&[("status", string())]));
    put(
        "OpenApi",
        object(&[("openapi", string()), ("paths", object_map())]),
    );
    put(
        "DeploymentBody",
        body(&[
            ("name", string_or_null()),
            ("description", string_or_null()),
            ("default_environment", any()),
        ]),
    );
    put("Deployment", deployment);
    put("Deployments", entries("Deployment"));
    put(
        "VersionBody",
        body(&[
            ("version", string()),
            ("handler", string()),
            ("image", string()),
            ("user_parameters", any()),
        ]),
    );
    put("Version", version.clone());
    put("NewVersion", with(version, &[("upload_url", string())]));
    put("Versions", entries("Version"));
    put("DownloadUri", object(&[("download_uri", string())]));
    put(
        "Uploaded",
        object(&[
            ("version_id", string()),
            ("size", integer()),
            ("message", string()),
        ]),
    );
    put(
        "RunBody",
        body(&[
            ("version_id", string()),
            ("input_data", any()),
            ("models", any()),
            ("output_template", any()),
            ("environment", any()),
            ("retry_count", int_or_null.clone()),
            ("distribution", int_or_null.clone()),
        ]),
    );
    put("Run", run);
    put("Runs", page("Run"));
    put("Attempt", attempt);
    put("Attempts", entries("Attempt"));
    put("LogEvent", log_event);
    put("Logs", object(&[("events", array_of("LogEvent"))]));
    put(
        "RecentLogs",
        object(&[
            ("events", array_of("LogEvent")),
            ("next_forward_token", string_or_null()),
            ("next_backward_token", string_or_null()),
        ]),
    );
    put(
        "ChannelBody",
        body(&[
            ("name", string_or_null()),
            ("description", string_or_null()),
            ("storage_type", string_or_null()),
        ]),
    );
    put("Channel", channel);
    let mut one = organization.to_vec();
    one.push(("channel", reference("Channel")));
    put("ChannelAnswer", object(&one));
    let mut many = organization.to_vec();
    many.extend([
        ("channels", array_of("Channel")),
        ("limit", integer()),
        ("offset", integer()),
        ("has_next", boolean()),
    ]);
    put("Channels", object(&many));
    put("File", file_with_download);
    put("UploadedFile", file);
    put(
        "Files",
        object(&[
            ("files", array_of("File")),
            ("next_page_token", string_or_null()),
        ]),
    );
    put(
        "FileMetadata",
        json!({"type": "object", "additionalProperties": {"type": "string"}}),
    );
    put(
        "TriggerBody",
        body(&[
            ("version_id", string_or_null()),
            ("input_service_name", string_or_null()),
            ("input_service_id", string_or_null()),
            ("output_service_name", string_or_null()),
            ("output_service_id", string_or_null()),
            ("models", any()),
            ("environment", any()),
            ("retry_count", int_or_null.clone()),
            ("distribution", int_or_null),
        ]),
    );
    put("Trigger", trigger);
    put("Triggers", entries("Trigger"));
    put("TriggerEvent", trigger_event);
    put("TriggerEvents", page("TriggerEvent"));
    put(
        "SourceFile",
        json!({"type": "object", "description": "An API source file: name, client, resources (docs/api-sources.md)."}),
    );
    put(
        "Source",
        object(&[
            ("name", string()),
            ("destination", string()),
            ("dataset", string()),
            ("config", any()),
            ("created_at", string()),
            ("updated_at", string()),
        ]),
    );
    put("Sources", entries("Source"));
    put("StartBody", body(&[("type", string_or_null())]));
    put("ApiRun", api_run);
    put("ApiRuns", page("ApiRun"));
    put("ApiRunDetail", api_run_detail);
    put("ApiTask", api_task);
    put("ApiTasks", entries("ApiTask"));
    put(
        "Durations",
        object(&[(
            "entries",
            json!({"type": "array", "items": object(&[
                ("run_type", string()), ("runs", integer()),
                ("p50_secs", json!({"type": ["number", "null"]})),
                ("p95_secs", json!({"type": ["number", "null"]})),
                ("last_completed_secs", json!({"type": ["number", "null"]})),
            ])}),
        )]),
    );
    put(
        "ApiRunCancelled",
        object(&[
            ("id", string()),
            ("status", string()),
            ("status_label", string()),
            ("message", string()),
        ]),
    );
    put("ActionRequest", body(&action_fields));
    put("Launched", object(&[("run_id", string())]));
    put("ActionResult", action_result);
    put(
        "ActionResults",
        object(&[("results", array_of("ActionResult"))]),
    );
    put(
        "ActionOk",
        object(&[("code", integer()), ("data", any()), ("message", string())]),
    );
    Value::Object(out)
}

/// Every route the document describes, as `METHOD path`: what the drift
/// test compares with the router's table.
pub fn operations(doc: &Value) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(paths) = doc["paths"].as_object() {
        for (path, item) in paths {
            for method in item.as_object().into_iter().flat_map(|m| m.keys()) {
                out.push(format!("{} {path}", method.to_ascii_uppercase()));
            }
        }
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rest_route_is_an_operation_and_every_reference_resolves() {
        let doc = document();
        let mut routes: Vec<String> = crate::rest::table()
            .routes
            .iter()
            .map(|r| format!("{} {}", r.method, r.path))
            .collect();
        routes.sort();
        assert_eq!(operations(doc), routes);
        let text = doc.to_string();
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        for part in text.split("#/components/schemas/").skip(1) {
            let name: String = part.chars().take_while(|c| c.is_alphanumeric()).collect();
            assert!(
                schemas.contains_key(&name),
                "{name} is referenced, not defined"
            );
        }
        let ids: std::collections::BTreeSet<_> = crate::rest::table()
            .routes
            .iter()
            .filter_map(|r| r.op.as_ref().map(|o| o.id))
            .collect();
        assert_eq!(ids.len(), routes.len(), "operation ids are unique");
    }

    /// `docs/openapi.json` is the document the code builds; after changing
    /// a route or a shape, `SLUICE_WRITE_OPENAPI=1 cargo test -p sluice-api
    /// openapi` rewrites it.
    #[test]
    fn the_checked_in_document_is_the_built_one() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json");
        let built = serde_json::to_string_pretty(document()).unwrap() + "\n";
        if std::env::var_os("SLUICE_WRITE_OPENAPI").is_some() {
            std::fs::write(&path, &built).unwrap();
        }
        let kept = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            kept == built,
            "docs/openapi.json differs from the routes and shapes in the code: \
             run `SLUICE_WRITE_OPENAPI=1 cargo test -p sluice-api openapi` and commit it"
        );
    }
}
