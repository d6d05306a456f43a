//! sluice's GraphQL face: seed 000's table importer API.
//!
//! `POST /graphql` (and GraphiQL on `GET /graphql`), authenticated with an
//! `x-api-key`. This face holds no business rules: every field and
//! mutation translates onto `engine::control`.
//!
//! Built so far: `account { organizations }`, `node(id:)` for
//! organizations, spaces, models and table import jobs, with Relay
//! connections (`edges { node }`, `pageInfo { hasNextPage endCursor }`,
//! `first`/`after`, `totalCount`, `search`). The mutations are not built yet.

mod ids;
mod objects;

use std::sync::Arc;

use async_graphql::http::GraphiQLSource;
use async_graphql::{EmptyMutation, EmptySubscription, Schema};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use sluice_engine::control::{Control, ControlError};

pub use objects::QueryRoot;

pub type SluiceSchema = Schema<QueryRoot, EmptyMutation, EmptySubscription>;

/// Queries deeper than this, or costlier, are refused before they run.
const MAX_DEPTH: usize = 12;
const MAX_COMPLEXITY: usize = 5_000;

pub fn schema() -> SluiceSchema {
    Schema::build(QueryRoot, EmptyMutation, EmptySubscription)
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
pub fn router(control: Arc<Control>) -> Router {
    Router::new()
        .route("/graphql", get(graphiql).post(execute))
        .with_state(Face {
            control,
            schema: schema(),
        })
}

async fn graphiql() -> Html<String> {
    Html(GraphiQLSource::build().endpoint("/graphql").finish())
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
    let holder = match face.control.authenticate_api_key(key).await {
        Ok(h) => h,
        Err(ControlError::Unauthorized(m)) => {
            return error(StatusCode::UNAUTHORIZED, m, "UNAUTHENTICATED")
        }
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string(), "INTERNAL"),
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
    let mut request = async_graphql::Request::new(query);
    if let Some(vars) = body.get("variables").filter(|v| v.is_object()) {
        request = request.variables(async_graphql::Variables::from_json(vars.clone()));
    }
    if let Some(op) = body.get("operationName").and_then(Value::as_str) {
        request = request.operation_name(op);
    }
    let request = request.data(face.control.clone()).data(holder);
    let response = face.schema.execute(request).await;
    Json(serde_json::to_value(&response).unwrap_or(Value::Null)).into_response()
}

#[cfg(test)]
mod tests {
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
