//! sluice's web console, served by `sluice serve` at `/`: pages rendered
//! on the server (usable without JavaScript; a page of a run under way
//! refreshes itself), its stylesheet and script inside the binary.
//!
//! A person signs in with their user id and personal access token
//! ([`Control::sign_in`]); the session is an HttpOnly, SameSite=Strict
//! cookie holding a 12-hour token, and every form that changes something
//! carries the session's CSRF token. Pages call the same use cases as the
//! APIs, scoped by the session's organization: another organization's
//! source or run is "not found" (404).
//!
//! Pages: the HTTP API sources, a source's runs and the API Run page
//! (`/runs/{id}`); table import jobs and their queries; deployments, their
//! runs (attempts, the log followed live) and triggers (which file started
//! which run); datalake channels and their files; the action API's
//! configurations and a workflow's fan-in.

mod actions;
mod datalake;
mod deployments;
mod jobs;
mod pages;
mod view;

use std::sync::Arc;

use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::{header, request::Parts, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use serde::Deserialize;
use sluice_engine::auth::Principal;
use sluice_engine::control::{Control, ControlError};

/// The session cookie's name.
const COOKIE: &str = "sluice_session";

/// Every route of the console: (method, path). `sluice routes` lists them
/// with the APIs', and the isolation test tries each.
pub const ROUTES: [(&str, &str); 30] = [
    ("GET", "/"),
    ("GET", "/signin"),
    ("POST", "/signin"),
    ("POST", "/signout"),
    ("GET", "/sources"),
    ("GET", "/sources/{source}"),
    ("POST", "/sources/{source}/runs"),
    ("GET", "/runs/{api_run}"),
    ("POST", "/runs/{api_run}/cancel"),
    ("POST", "/runs/{api_run}/retry"),
    ("GET", "/jobs"),
    ("GET", "/jobs/{job}"),
    ("POST", "/jobs/{job}/pause"),
    ("POST", "/jobs/{job}/resume"),
    ("POST", "/jobs/{job}/run"),
    ("GET", "/queries/{query}"),
    ("POST", "/queries/{query}/cancel"),
    ("GET", "/deployments"),
    ("GET", "/deployments/{dep}"),
    ("GET", "/deployments/{dep}/runs/{run}"),
    ("GET", "/deployments/{dep}/runs/{run}/log"),
    ("POST", "/deployments/{dep}/runs/{run}/cancel"),
    ("GET", "/deployments/{dep}/triggers/{tri}"),
    ("GET", "/datalake"),
    ("GET", "/datalake/{channel}"),
    ("GET", "/configurations"),
    ("GET", "/configurations/{configuration}"),
    ("POST", "/configurations/{configuration}/reset"),
    ("GET", "/assets/console.css"),
    ("GET", "/assets/console.js"),
];

/// The routes answered without a session.
pub const PUBLIC: [&str; 4] = ["/signin", "/assets/console.css", "/assets/console.js", "/"];

pub fn router(control: Arc<Control>) -> Router {
    Router::new()
        .route("/", get(home))
        .route("/signin", get(signin_page).post(signin))
        .route("/signout", post(signout))
        .route("/sources", get(pages::sources))
        .route("/sources/{source}", get(pages::source))
        .route("/sources/{source}/runs", post(pages::start_run))
        .route("/runs/{api_run}", get(pages::run))
        .route("/runs/{api_run}/cancel", post(pages::cancel_run))
        .route("/runs/{api_run}/retry", post(pages::retry_run))
        .route("/jobs", get(jobs::jobs))
        .route("/jobs/{job}", get(jobs::job))
        .route("/jobs/{job}/pause", post(jobs::pause))
        .route("/jobs/{job}/resume", post(jobs::resume))
        .route("/jobs/{job}/run", post(jobs::run))
        .route("/queries/{query}", get(jobs::query))
        .route("/queries/{query}/cancel", post(jobs::cancel_query))
        .route("/deployments", get(deployments::deployments))
        .route("/deployments/{dep}", get(deployments::deployment))
        .route("/deployments/{dep}/runs/{run}", get(deployments::run))
        .route(
            "/deployments/{dep}/runs/{run}/log",
            get(deployments::follow),
        )
        .route(
            "/deployments/{dep}/runs/{run}/cancel",
            post(deployments::cancel),
        )
        .route(
            "/deployments/{dep}/triggers/{tri}",
            get(deployments::trigger),
        )
        .route("/datalake", get(datalake::channels))
        .route("/datalake/{channel}", get(datalake::channel))
        .route("/configurations", get(actions::configurations))
        .route(
            "/configurations/{configuration}",
            get(actions::configuration),
        )
        .route(
            "/configurations/{configuration}/reset",
            post(actions::reset),
        )
        .route("/assets/console.css", get(css))
        .route("/assets/console.js", get(js))
        .layer(axum::middleware::map_response(guarded))
        .layer(axum::middleware::from_fn(timed))
        .with_state(control)
}

/// How long the server took to make a page (its store reads and its
/// markup), as `Server-Timing: render;dur=MS` — what the browser's
/// developer tools show, and what the console benchmark reads.
async fn timed(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let started = std::time::Instant::now();
    let mut response = next.run(request).await;
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    if let Ok(v) = header::HeaderValue::from_str(&format!("render;dur={ms:.3}")) {
        response.headers_mut().insert("server-timing", v);
    }
    response
}

/// Every answer of the console: never framed (clickjacking), scripts and
/// styles from sluice itself only, no referrer sent elsewhere.
async fn guarded(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(
        header::X_FRAME_OPTIONS,
        header::HeaderValue::from_static("DENY"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        header::HeaderValue::from_static(
            "default-src 'self'; frame-ancestors 'none'; form-action 'self'",
        ),
    );
    h.insert(
        header::REFERRER_POLICY,
        header::HeaderValue::from_static("same-origin"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    response
}

/// A signed-in person: who, their session token and its CSRF token.
pub(crate) struct Session {
    pub org: String,
    pub who: Principal,
    pub csrf: String,
    token: String,
}

impl Session {
    /// Whether a form's CSRF token is this session's.
    pub fn check(&self, control: &Control, csrf: &str) -> bool {
        control.csrf_ok(&self.token, csrf)
    }
}

/// A form posted from one of the console's own pages by a signed-in
/// person: the session, once the form's CSRF token is that session's
/// (403 otherwise; 401 without a session). Every action that changes
/// something takes it, so none can forget the check.
pub(crate) struct Posted(pub Session);

impl FromRequest<Arc<Control>> for Posted {
    type Rejection = Response;

    async fn from_request(req: Request, control: &Arc<Control>) -> Result<Posted, Response> {
        let (mut parts, body) = req.into_parts();
        let session = Session::from_request_parts(&mut parts, control).await?;
        let Form(f) = Form::<CsrfForm>::from_request(Request::from_parts(parts, body), control)
            .await
            .map_err(IntoResponse::into_response)?;
        if !session.check(control, &f.csrf) {
            return Err(stale_form());
        }
        Ok(Posted(session))
    }
}

/// What a form without this session's CSRF token gets.
pub(crate) fn stale_form() -> Response {
    view::error_page(
        StatusCode::FORBIDDEN,
        "This form is out of date or was not sent from sluice's own page: reload the page and try again.",
    )
}

fn cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_owned())
}

impl FromRequestParts<Arc<Control>> for Session {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        control: &Arc<Control>,
    ) -> Result<Session, Response> {
        let Some(token) = cookie(&parts.headers) else {
            return Err(view::signin(StatusCode::UNAUTHORIZED, None));
        };
        match control.session(&token).await {
            Ok(who) => Ok(Session {
                org: who.organization.to_string(),
                who,
                csrf: control.csrf_token(&token),
                token,
            }),
            Err(_) => Err(view::signin(
                StatusCode::UNAUTHORIZED,
                Some("Your session has ended: sign in again."),
            )),
        }
    }
}

/// A use case's failure as a page.
pub(crate) fn failed(e: ControlError) -> Response {
    let status = match &e {
        ControlError::BadRequest(_) => StatusCode::BAD_REQUEST,
        ControlError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
        ControlError::Forbidden(_) => StatusCode::FORBIDDEN,
        ControlError::NotFound(_) => StatusCode::NOT_FOUND,
        ControlError::Conflict(_) => StatusCode::CONFLICT,
        ControlError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        ControlError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let text = if e.is_internal() {
        "Something went wrong on the server; its log says what.".to_owned()
    } else {
        e.to_string()
    };
    view::error_page(status, &text)
}

async fn home(headers: HeaderMap, State(control): State<Arc<Control>>) -> Response {
    match cookie(&headers) {
        Some(t) if control.session(&t).await.is_ok() => Redirect::to("/sources").into_response(),
        _ => Redirect::to("/signin").into_response(),
    }
}

async fn signin_page() -> Response {
    view::signin(StatusCode::OK, None)
}

#[derive(Deserialize)]
struct SignIn {
    user: String,
    token: String,
}

async fn signin(State(control): State<Arc<Control>>, Form(f): Form<SignIn>) -> Response {
    match control.sign_in(f.user.trim(), f.token.trim()).await {
        Ok((_, session)) => {
            let cookie = format!(
                "{COOKIE}={session}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
                sluice_engine::control::SESSION_SECS
            );
            ([(header::SET_COOKIE, cookie)], Redirect::to("/sources")).into_response()
        }
        Err(ControlError::Unauthorized(m)) => view::signin(StatusCode::UNAUTHORIZED, Some(&m)),
        Err(e) => failed(e),
    }
}

#[derive(Deserialize)]
pub(crate) struct CsrfForm {
    pub csrf: String,
}

async fn signout(Posted(_): Posted) -> Response {
    let gone = format!("{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0");
    ([(header::SET_COOKIE, gone)], Redirect::to("/signin")).into_response()
}

async fn css() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        include_str!("../assets/console.css"),
    )
        .into_response()
}

async fn js() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        include_str!("../assets/console.js"),
    )
        .into_response()
}
