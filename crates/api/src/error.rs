//! The one place a failure becomes an HTTP answer:
//! `{"error": "<kind>", "error_description": "<what was wrong and where>"}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use sluice_engine::control::ControlError;

#[derive(Debug)]
pub struct ApiError(pub ControlError);

impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> Self {
        ApiError(e)
    }
}

impl ApiError {
    pub fn bad_request(msg: impl Into<String>) -> ApiError {
        ApiError(ControlError::BadRequest(msg.into()))
    }

    fn status(&self) -> (StatusCode, &'static str) {
        match &self.0 {
            ControlError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ControlError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ControlError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ControlError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ControlError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ControlError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ControlError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ControlError::Internal(_) | ControlError::Store(_) | ControlError::Io(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "internal_server_error")
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, kind) = self.status();
        let description = if self.0.is_internal() {
            // A database's own words stay in the server's log.
            tracing::error!(error = %self.0, "a request failed");
            "internal error (the server's log has it)".to_owned()
        } else {
            self.0.to_string()
        };
        (
            status,
            Json(json!({"error": kind, "error_description": description})),
        )
            .into_response()
    }
}

/// The answer to a request whose body stopped arriving.
pub fn body_timeout(idle: std::time::Duration) -> Response {
    (
        StatusCode::REQUEST_TIMEOUT,
        Json(json!({
            "error": "request_timeout",
            "error_description": format!(
                "the request body stopped arriving for {} ms", idle.as_millis()
            ),
        })),
    )
        .into_response()
}

/// Answers for paths and methods that do not exist, in the same shape.
pub async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({"error": "not_found", "error_description": "no such resource"})),
    )
        .into_response()
}

pub async fn method_not_allowed() -> Response {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        Json(json!({"error": "method_not_allowed", "error_description": "this resource does not accept that method"})),
    )
        .into_response()
}

/// Any error answer not already in the envelope (axum's own rejections of
/// a path segment, a query string or a body) is put in it, its text kept.
pub async fn envelope(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let body = axum::body::to_bytes(response.into_body(), 64 * 1024)
        .await
        .unwrap_or_default();
    let kind = match status {
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        s if s.is_server_error() => "internal_server_error",
        _ => "bad_request",
    };
    let text = String::from_utf8_lossy(&body).trim().to_owned();
    (
        status,
        Json(json!({
            "error": kind,
            "error_description": if text.is_empty() { status.to_string() } else { text },
        })),
    )
        .into_response()
}
