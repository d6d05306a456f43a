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
            ControlError::Internal(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "internal_server_error")
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, kind) = self.status();
        if status.is_server_error() {
            tracing::error!("{}", self.0);
        }
        (
            status,
            Json(json!({"error": kind, "error_description": self.0.to_string()})),
        )
            .into_response()
    }
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
