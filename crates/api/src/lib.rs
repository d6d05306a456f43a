//! sluice's HTTP face for the Run/Deployment API of ABEJA Platform.
//!
//! Handlers parse the wire format, call one [`Control`] function and map the
//! result; [`error`] turns every failure into `{"error", "error_description"}`
//! with the right status. Every 2xx answer has a JSON body.
//!
//! Routes (P = `/organizations/{org}/deployments/{dep}`):
//!
//! | method | path | |
//! |---|---|---|
//! | GET | `/healthz` | ready |
//! | GET, POST | `/organizations/{org}/deployments` | list, create |
//! | GET, PATCH, DELETE | P | |
//! | GET, POST | P`/versions` | create answers `upload_url` |
//! | GET, DELETE | P`/versions/{ver}` | |
//! | GET | P`/versions/{ver}/download` | `{"download_uri"}` |
//! | GET, POST | P`/runs` | list (`scan_forward`, `next_page_token`), submit |
//! | GET | P`/runs/{run}` | |
//! | GET | P`/runs/{run}/logs`, P`/runs/{run}/recentlogs` | |
//! | POST | P`/runs/{run}/cancel` | sluice: cancel a run |
//! | GET | P`/runs/{run}/attempts` | sluice: every attempt of a run |
//! | PUT | `/uploads/{token}` | pre-signed: the version's code, no credentials |
//! | GET | `/downloads/{token}` | pre-signed: the version's code |
//! | POST, GET | `/graphql` | the Arize-style importer's GraphQL face (`sluice-graphql`; GET: GraphiQL) |

pub mod error;
mod rest;
pub mod wire;

use std::sync::Arc;

use axum::extract::Request;
use axum::Router;
use sluice_engine::control::Control;

pub use error::ApiError;

/// Where the API is reached from outside, for the pre-signed URLs it hands
/// out; `None` takes the request's `Host`.
#[derive(Clone)]
pub struct ApiState {
    pub control: Arc<Control>,
    pub public_url: Option<String>,
}

/// The whole HTTP API, with trailing slashes ignored (`/runs/` is `/runs`).
pub fn app(state: ApiState) -> tower::util::MapRequest<Router, fn(Request) -> Request> {
    let graphql = sluice_graphql::router(state.control.clone());
    let router: Router = rest::routes(state)
        .merge(graphql)
        .layer(axum::middleware::map_response(error::envelope));
    tower::util::MapRequest::new(router, trim_trailing_slash as fn(Request) -> Request)
}

fn trim_trailing_slash(mut req: Request) -> Request {
    let path = req.uri().path();
    if path.len() > 1 && path.ends_with('/') {
        let trimmed = path.trim_end_matches('/');
        let trimmed = if trimmed.is_empty() { "/" } else { trimmed };
        let pq = match req.uri().query() {
            Some(q) => format!("{trimmed}?{q}"),
            None => trimmed.to_owned(),
        };
        if let Ok(uri) = pq.parse() {
            *req.uri_mut() = uri;
        }
    }
    req
}

/// Serves the API on `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, state: ApiState) -> std::io::Result<()> {
    use axum::ServiceExt;
    axum::serve(listener, app(state).into_make_service()).await
}
