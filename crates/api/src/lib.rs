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
//! | GET, POST | `/`, `/signin`, `/sources…`, `/runs/{id}…` | the web console (`sluice-console`; HTML pages, a session cookie) |

pub mod api_runs;
pub mod error;
pub mod openapi;
mod rest;
pub mod wire;

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::Request;
use axum::Router;
use hyper::body::{Frame, Incoming};
use sluice_engine::control::Control;
use tower_http::timeout::TimeoutBody;

pub use error::ApiError;
pub use rest::Route;

/// Every route the API serves, REST and GraphQL: `sluice routes` prints
/// them, and the isolation test tries each with another tenant's
/// credentials.
pub fn routes() -> Vec<Route> {
    let mut all = rest::table().routes;
    all.extend(
        sluice_graphql::ROUTES
            .iter()
            .map(|(method, path, public)| Route {
                method: method.parse().expect("a method"),
                path: (*path).to_owned(),
                public: *public,
                page: false,
                op: None,
            }),
    );
    all.extend(sluice_console::ROUTES.iter().map(|(method, path)| Route {
        method: method.parse().expect("a method"),
        path: (*path).to_owned(),
        public: sluice_console::PUBLIC.contains(path),
        page: true,
        op: None,
    }));
    all
}

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
    let console = sluice_console::router(state.control.clone());
    // The console's pages answer HTML, errors too: merged outside the
    // JSON envelope of the APIs.
    let router: Router = rest::routes(state)
        .merge(graphql)
        .layer(axum::middleware::map_response(error::envelope))
        .merge(console)
        .layer(axum::middleware::from_fn(observe));
    tower::util::MapRequest::new(router, trim_trailing_slash as fn(Request) -> Request)
}

/// Every request: a request id (the caller's `X-Request-Id` when it is a
/// plain token, else a new one) sent back in `X-Request-Id` and carried by
/// the request's log lines; its count and duration by route template and
/// status class in the metrics; one log line when it failed (WARN for a
/// 5xx, INFO for a 4xx), naming the route template — never the path,
/// which can hold a token.
async fn observe(mut req: Request, next: axum::middleware::Next) -> axum::response::Response {
    use tracing::Instrument;
    let started = std::time::Instant::now();
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 64
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        })
        .map(str::to_owned)
        .unwrap_or_else(|| format!("req-{:016x}", rand::random::<u64>()));
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = req.method().clone();
    if let Ok(v) = axum::http::HeaderValue::from_str(&id) {
        req.headers_mut().insert("x-request-id", v.clone());
    }
    let span = tracing::info_span!("request", request_id = %id, method = %method, route = %route);
    let mut response = next.run(req).instrument(span).await;
    let status = response.status().as_u16();
    let class = sluice_engine::metrics::class(status);
    let secs = started.elapsed().as_secs_f64();
    let m = &sluice_engine::metrics::METRICS;
    m.requests.with_label_values(&[&route, class]).inc();
    m.request_duration
        .with_label_values(&[&route, class])
        .observe(secs);
    let ms = (secs * 1000.0) as u64;
    if status >= 500 {
        tracing::warn!(request_id = %id, method = %method, route = %route, status, duration_ms = ms, "request failed");
    } else if status >= 400 {
        tracing::info!(request_id = %id, method = %method, route = %route, status, duration_ms = ms, "request refused");
    }
    if let Ok(v) = axum::http::HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", v);
    }
    response
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

/// How long a connection may keep the server waiting.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// From a connection's first byte (or the end of its last request) to
    /// the end of a request's headers; past it the connection is closed.
    pub header_read: Duration,
    /// The longest pause between two pieces of a request's body; past it
    /// the request fails (408 when the handler was reading its body).
    pub body_idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            header_read: Duration::from_secs(30),
            body_idle: Duration::from_secs(60),
        }
    }
}

/// Serves the API on `listener` until the process ends. A half-open or
/// trickling connection is dropped after [`Timeouts`], so it cannot hold a
/// task and its buffers for ever.
/// Serves until `shutdown` stops the process: then the listener closes,
/// each connection is told to end after the request it is answering, and
/// `serve` returns once they have (or the grace period is over).
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: ApiState,
    timeouts: Timeouts,
    shutdown: sluice_engine::shutdown::Shutdown,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use tower::ServiceExt as _;

    let app = app(state);
    // HTTP/1.1, and HTTP/2 with prior knowledge (`curl --http2-prior-knowledge`);
    // an HTTP/1.1 request asking to upgrade to h2c (`curl --http2` on
    // http://) is answered over HTTP/1.1, which the client accepts.
    let mut http = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    http.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(timeouts.header_read);
    http.http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(30)));
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.stopping() => break,
        };
        // Connections that ended are let go of as others come.
        while connections.try_join_next().is_some() {}
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors and the like: wait, do not spin.
                tracing::warn!("cannot accept a connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let body_idle = timeouts.body_idle;
        let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            let stalled = Arc::new(AtomicBool::new(false));
            let (parts, incoming) = req.into_parts();
            let body = IdleBody {
                inner: Box::pin(TimeoutBody::new(body_idle, incoming)),
                stalled: stalled.clone(),
            };
            let req = Request::from_parts(parts, axum::body::Body::new(body));
            let app = app.clone();
            async move {
                let response = app.oneshot(req).await?;
                Ok::<_, std::convert::Infallible>(if stalled.load(Ordering::Relaxed) {
                    error::body_timeout(body_idle)
                } else {
                    response
                })
            }
        });
        let http = http.clone();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let conn = http.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            let ended = tokio::select! {
                r = conn.as_mut() => r,
                _ = shutdown.stopping() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = ended {
                tracing::debug!("connection ended: {e}");
            }
        });
    }
    drop(listener);
    tokio::select! {
        _ = async { while connections.join_next().await.is_some() {} } => {}
        _ = shutdown.over() => {}
    }
    Ok(())
}

/// A request body that remembers when it stopped arriving, so the answer
/// can be a 408 whatever the handler made of the failed read.
struct IdleBody {
    inner: Pin<Box<TimeoutBody<Incoming>>>,
    stalled: Arc<AtomicBool>,
}

impl hyper::body::Body for IdleBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = self.inner.as_mut().poll_frame(cx);
        if let Poll::Ready(Some(Err(e))) = &polled {
            if e.is::<tower_http::timeout::TimeoutError>() {
                self.stalled.store(true, Ordering::Relaxed);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}
