//! Every HTTP failure, and the one place that turns it into a status and a plain-text body,
//! as Consul answers errors.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::cluster::WriteError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the client sent something we cannot use.
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    /// 401: e.g. `/v1/acl/*` while ACLs are off.
    #[error("{0}")]
    Unauthorized(String),
    /// 403: refused whatever the body (e.g. a cross-site GET that would change state).
    #[error("{0}")]
    Forbidden(String),
    #[error("method {method} not allowed")]
    MethodNotAllowed { method: String },
    #[error("{0}")]
    Conflict(String),
    /// 413 with Consul's wording.
    #[error("Request body({size} bytes) too large, max size: {max} bytes")]
    BodyTooLarge { size: u64, max: u64 },
    #[error("{0}")]
    TooLarge(String),
    /// 429: a configured limit is reached; the client may retry.
    #[error("{0}")]
    TooMany(String),
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error("internal error: {0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) | ApiError::Write(WriteError::PermissionDenied(_)) => StatusCode::FORBIDDEN,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::BodyTooLarge { .. } | ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::TooMany(_) | ApiError::Write(WriteError::QueueFull(_) | WriteError::ForwardsFull(_)) => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ApiError::Write(_) | ApiError::Store(_) | ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!(error = %self, "request failed");
        }
        let mut response = (status, self.to_string()).into_response();
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
        response
    }
}
