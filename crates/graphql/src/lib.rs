//! sluice's GraphQL face: the Arize-style table importer API.
//!
//! `POST /graphql` (and GraphiQL on `GET /graphql`), authenticated with an
//! `x-api-key` or the core's `Authorization` (Bearer JWT or user token). This face holds no business rules: every field and
//! mutation translates onto `engine::control`.
//!
//! `account { organizations }`, `node(id:)` for organizations, spaces,
//! models and table import jobs, with Relay connections (`edges { node }`,
//! `pageInfo { hasNextPage endCursor }`, `first`/`after`, `totalCount`,
//! `search`), and the Arize-style importer's mutations.

mod ids;
mod mutations;
mod objects;

use std::sync::Arc;

use async_graphql::{EmptySubscription, Schema};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use sluice_engine::control::{Control, ControlError, KeyHolder};

pub use mutations::MutationRoot;
pub use objects::QueryRoot;

pub type SluiceSchema = Schema<QueryRoot, MutationRoot, EmptySubscription>;

/// Queries deeper than this, or costlier, are refused before they run.
/// Deep enough for the standard introspection query of GraphQL tools
/// (graphql-js' and graphql-core's `getIntrospectionQuery`: a type
/// reference's `ofType` nested nine times, 15 levels in all).
const MAX_DEPTH: usize = 20;
const MAX_COMPLEXITY: usize = 5_000;

pub fn schema() -> SluiceSchema {
    Schema::build(QueryRoot, MutationRoot, EmptySubscription)
        .limit_depth(MAX_DEPTH)
        .limit_complexity(MAX_COMPLEXITY)
        .finish()
}

#[derive(Clone)]
struct Face {
    control: Arc<Control>,
    schema: SluiceSchema,
}

/// The `/graphql` routes.
/// The routes [`router`] serves: (method, path, reached without credentials).
pub const ROUTES: [(&str, &str, bool); 3] = [
    ("GET", "/graphql", true),
    ("POST", "/graphql", false),
    ("GET", "/graphql/assets/{name}", true),
];

pub fn router(control: Arc<Control>) -> Router {
    Router::new()
        .route("/graphql", get(graphiql).post(execute))
        .route("/graphql/assets/{name}", get(asset))
        .with_state(Face {
            control,
            schema: schema(),
        })
}

/// GraphiQL's scripts and styles, served from the binary (gzipped as
/// built): the page works offline, with no CDN. See `assets/NOTICE`.
const ASSETS: [(&str, &str, &[u8]); 4] = [
    (
        "graphiql.min.js",
        "text/javascript",
        include_bytes!("../assets/graphiql.min.js.gz"),
    ),
    (
        "graphiql.min.css",
        "text/css",
        include_bytes!("../assets/graphiql.min.css.gz"),
    ),
    (
        "react.production.min.js",
        "text/javascript",
        include_bytes!("../assets/react.production.min.js.gz"),
    ),
    (
        "react-dom.production.min.js",
        "text/javascript",
        include_bytes!("../assets/react-dom.production.min.js.gz"),
    ),
];

const GRAPHIQL_PAGE: &str = r#"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>sluice · GraphQL</title>
<link rel="stylesheet" href="/graphql/assets/graphiql.min.css">
<style>body { margin: 0; } #graphiql { height: 100vh; }</style>
</head>
<body>
<div id="graphiql">Loading GraphiQL…</div>
<script src="/graphql/assets/react.production.min.js"></script>
<script src="/graphql/assets/react-dom.production.min.js"></script>
<script src="/graphql/assets/graphiql.min.js"></script>
<script>
  // Add {"x-api-key": "ak-…"} in the Headers pane below the editor.
  const fetcher = GraphiQL.createFetcher({ url: "/graphql" });
  ReactDOM.createRoot(document.getElementById("graphiql")).render(
    React.createElement(GraphiQL, {
      fetcher,
      defaultEditorToolsVisibility: "headers",
      shouldPersistHeaders: true,
    })
  );
</script>
</body>
</html>
"#;

async fn graphiql() -> Html<&'static str> {
    Html(GRAPHIQL_PAGE)
}

async fn asset(Path(name): Path<String>) -> Response {
    match ASSETS.iter().find(|(n, _, _)| *n == name) {
        Some((_, kind, body)) => (
            [
                (axum::http::header::CONTENT_TYPE, *kind),
                (axum::http::header::CONTENT_ENCODING, "gzip"),
                (axum::http::header::CACHE_CONTROL, "public, max-age=86400"),
            ],
            *body,
        )
            .into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            format!("no GraphiQL asset `{name}`"),
            "NOT_FOUND",
        ),
    }
}

fn error(status: StatusCode, message: String, code: &str) -> Response {
    (
        status,
        Json(json!({"errors": [{"message": message, "extensions": {"code": code}}]})),
    )
        .into_response()
}

async fn execute(
    State(face): State<Face>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let key = headers.get("x-api-key").and_then(|v| v.to_str().ok());
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .filter(|_| key.is_none());
    let who = match bearer {
        // The core's credentials (a JWT or a user's token) act for their
        // organization, every space of it.
        Some(header) => face
            .control
            .authenticate(Some(header))
            .await
            .map(|p| KeyHolder {
                organization: p.organization,
                space: None,
            }),
        None => face.control.authenticate_api_key(key).await,
    };
    let holder = match who {
        Ok(h) => h,
        Err(ControlError::Unauthorized(m)) => {
            return error(StatusCode::UNAUTHORIZED, m, "UNAUTHENTICATED")
        }
        Err(e) => {
            tracing::error!(error = %e, "authenticating a GraphQL request");
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal error (the server's log has it)".into(),
                "INTERNAL",
            );
        }
    };
    let body: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("the request body is not JSON: {e}"),
                "BAD_REQUEST",
            )
        }
    };
    let Some(query) = body.get("query").and_then(Value::as_str) else {
        return error(
            StatusCode::BAD_REQUEST,
            "the request body has no `query` string".into(),
            "BAD_REQUEST",
        );
    };
    // The same text rules as every face (no NUL, no oversized string); a
    // NUL inside the query's own literals is refused too.
    let text = sluice_engine::control::input::check_json(
        body.get("variables").unwrap_or(&Value::Null),
        "variables",
    )
    .and_then(|()| {
        if query.contains('\0') || query.contains("\\u0000") {
            Err("the query contains a NUL character".into())
        } else {
            Ok(())
        }
    });
    if let Err(m) = text {
        return error(StatusCode::BAD_REQUEST, m.0, "BAD_USER_INPUT");
    }
    let mut request = async_graphql::Request::new(fill_empty_selections(query));
    if let Some(vars) = body.get("variables").filter(|v| v.is_object()) {
        request = request.variables(async_graphql::Variables::from_json(lift_input(vars)));
    }
    if let Some(op) = body.get("operationName").and_then(Value::as_str) {
        request = request.operation_name(op);
    }
    let request = request.data(face.control.clone()).data(holder);
    let response = face.schema.execute(request).await;
    let mut out = serde_json::to_value(&response).unwrap_or(Value::Null);
    // Every error carries a code: the schema's own (a parse or validation
    // error, a wrong type or enum value) say GRAPHQL_VALIDATION_FAILED.
    if let Some(Value::Array(errors)) = out.get_mut("errors") {
        for e in errors.iter_mut().filter_map(Value::as_object_mut) {
            let ext = e.entry("extensions").or_insert_with(|| json!({}));
            if let Some(ext) = ext.as_object_mut() {
                ext.entry("code")
                    .or_insert_with(|| json!("GRAPHQL_VALIDATION_FAILED"));
            }
        }
    }
    Json(out).into_response()
}

/// Two compatibility rules for the Arize-style importer's text, applied outside string
/// literals: it shows a mutation whose payload selects nothing
/// (`tableImportJob { }`), which GraphQL's grammar refuses — an empty
/// selection set is read as `{ __typename }`; and it writes non-null types
/// with a space (`CreateTableImportJobInput ! `), which GraphQL allows but
/// the parser sluice uses does not — the space before `!` is dropped.
fn fill_empty_selections(query: &str) -> String {
    let mut out = String::with_capacity(query.len());
    let mut chars = query.char_indices().peekable();
    let mut in_string = false;
    while let Some((i, c)) = chars.next() {
        if c == '!' && !in_string {
            out.truncate(out.trim_end().len());
        }
        out.push(c);
        match c {
            '"' if !query[..i].ends_with('\\') => in_string = !in_string,
            '{' if !in_string => {
                let rest = &query[i + 1..];
                let body = rest.len() - rest.trim_start().len();
                if rest.trim_start().starts_with('}') {
                    out.push_str(" __typename ");
                    for _ in 0..body {
                        chars.next();
                    }
                }
            }
            _ => {}
        }
    }
    out
}

/// A compatibility rule: `arize-toolkit` sends the variables of its update
/// and delete mutations inside `variables.input`, though the operations
/// declare them at the top (`$jobId`, `$modelSchema`, `$id`). The members
/// of an `input` object are also offered as top-level variables (never
/// replacing one that is there); `input` itself stays for operations that
/// declare `$input`. Variables an operation does not declare are ignored.
fn lift_input(vars: &Value) -> Value {
    let mut out = vars.clone();
    if let (Some(Value::Object(input)), Some(top)) = (vars.get("input"), out.as_object_mut()) {
        for (k, v) in input {
            top.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn empty_selections_select_the_typename() {
        assert_eq!(
            super::fill_empty_selections("mutation { a(x: \"{ }\") { j {\n} } }"),
            "mutation { a(x: \"{ }\") { j { __typename } } }"
        );
        assert_eq!(
            super::fill_empty_selections("query ($a: In ! , $b: [X !] !) { f(s: \"a !\") }"),
            "query ($a: In! , $b: [X!]!) { f(s: \"a !\") }"
        );
    }

    #[test]
    fn input_members_are_lifted_without_replacing() {
        let v = serde_json::json!({"input": {"id": "a", "x": 1}, "x": 2});
        assert_eq!(
            super::lift_input(&v),
            serde_json::json!({"input": {"id": "a", "x": 1}, "x": 2, "id": "a"})
        );
    }

    /// GraphiQL works offline: its page names no outside address, and
    /// every script and style it loads is served from the binary, gzipped.
    #[test]
    fn graphiql_loads_nothing_from_outside() {
        let page = super::GRAPHIQL_PAGE;
        assert!(
            !page.contains("http://") && !page.contains("https://") && !page.contains("//unpkg")
        );
        let wanted: Vec<&str> = page
            .split("/graphql/assets/")
            .skip(1)
            .map(|rest| rest.split('"').next().unwrap())
            .collect();
        assert_eq!(wanted.len(), 4, "{wanted:?}");
        for name in wanted {
            let (_, _, body) = super::ASSETS
                .iter()
                .find(|(n, _, _)| *n == name)
                .unwrap_or_else(|| panic!("{name} is not served"));
            assert_eq!(&body[..2], &[0x1f, 0x8b], "{name} is gzipped");
        }
    }

    /// docs/graphql.sdl is the schema as served; regenerate it with
    /// `SLUICE_WRITE_SDL=1 cargo test -p sluice-graphql`.
    #[test]
    fn the_documented_sdl_is_the_served_schema() {
        let sdl = super::schema().sdl();
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/graphql.sdl");
        if std::env::var_os("SLUICE_WRITE_SDL").is_some() {
            std::fs::write(path, &sdl).unwrap();
        }
        let documented = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            documented == sdl,
            "docs/graphql.sdl is out of date: run SLUICE_WRITE_SDL=1 cargo test -p sluice-graphql"
        );
    }
}
