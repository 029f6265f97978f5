//! `ApiError`, the one error type of the HTTP layer, and its `application/problem+json` form
//! (RFC 9457). Handlers return `Result<_, ApiError>`; extractor rejections are converted here so
//! that every error, even a malformed body, gets the same shape. Internal causes are logged once
//! and never sent to the client.

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::engine::InvalidWork;

/// The media type of every error body.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// Every way a request can fail. Each variant documents its status.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the body is not JSON, or a header is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// 400: the callback URL is refused by the SSRF policy.
    #[error("callback_url refused: {0}")]
    CallbackRefused(String),
    /// 401: an API key is missing or wrong, or a signature did not verify (the demo callback
    /// receiver). Answered with `WWW-Authenticate: Bearer`, as RFC 9110 asks of every 401.
    #[error("{0}")]
    Unauthorized(String),
    /// 403: the caller is known but may not do this (a read-only dashboard visitor acting).
    #[error("{0}")]
    Forbidden(String),
    /// 404: no such resource.
    #[error("{0}")]
    NotFound(String),
    /// 405: the path exists, the method does not.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// 409: the resource is not in a state that allows this.
    #[error("{0}")]
    Conflict(String),
    /// 413: the body is larger than MAX_PAYLOAD_SIZE_KB.
    #[error("request body is larger than {limit_kb} KB")]
    PayloadTooLarge { limit_kb: usize },
    /// 415: the body is not declared as JSON.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// 422: the JSON is well formed but does not describe valid work.
    #[error("{detail}")]
    Validation { detail: String, errors: Vec<FieldError> },
    /// 429: this client has used its request budget.
    #[error("rate limit exceeded: retry in {retry_after_secs} s")]
    RateLimited { retry_after_secs: u64, limit: u32 },
    /// 429: MAX_QUEUE_SIZE async jobs are already waiting; nothing was stored.
    #[error("the job queue is full ({capacity} jobs waiting); nothing was stored")]
    QueueFull { capacity: usize, retry_after_secs: u64 },
    /// 503: every sync slot is busy; nothing was stored.
    #[error("all {max} sync slots are busy; try again, or use POST /async")]
    SyncSaturated { max: usize, retry_after_secs: u64 },
    /// 503: a dependency (the database, a worker) is down.
    #[error("{0}")]
    Unavailable(String),
    /// 503: the database does not answer; nothing was stored. It resumes by itself.
    #[error("the database is unavailable; nothing was stored, retry shortly")]
    StorageUnavailable,
    /// 503: the server is shutting down and takes no new work.
    #[error("the server is shutting down and takes no new work; retry on another replica or shortly")]
    ShuttingDown,
    /// 504: the work passed WORK_TIMEOUT_SECONDS and was cancelled.
    #[error("the work did not finish within {timeout_secs} s and was cancelled")]
    Timeout { request_id: String, timeout_secs: f64 },
    /// 500: a bug or an unexpected failure; details go to the log only.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

/// One invalid field of a 422, located by a JSON pointer into the request body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct FieldError {
    /// JSON pointer (RFC 6901) into the request body, such as `/payload/complexity`.
    #[schema(example = "/payload/complexity")]
    pub pointer: String,
    #[schema(example = "must be between 1 and 10, got 11")]
    pub detail: String,
}

/// An RFC 9457 problem document.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({
    "type": "urn:sync-async:problem:validation",
    "title": "Unprocessable Content",
    "status": 422,
    "detail": "the payload does not describe valid work",
    "errors": [{"pointer": "/payload/complexity", "detail": "must be between 1 and 10, got 11"}]
}))]
pub struct Problem {
    /// A URN naming the kind of problem; stable, so clients may match on it.
    #[serde(rename = "type")]
    #[schema(example = "urn:sync-async:problem:queue-full")]
    pub kind: String,
    /// The HTTP reason phrase.
    pub title: String,
    pub status: u16,
    /// What went wrong for this request, in words.
    pub detail: String,
    /// The request this error belongs to, when a record exists (504).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// Seconds to wait before retrying (also in the `Retry-After` header).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u64>,
    /// Every invalid field (422).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) | Self::CallbackRefused(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Validation { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::RateLimited { .. } | Self::QueueFull { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::SyncSaturated { .. } | Self::Unavailable(_) | Self::StorageUnavailable | Self::ShuttingDown => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable last segment of the problem `type`.
    fn slug(&self) -> &'static str {
        match self {
            Self::BadRequest(_) => "bad-request",
            Self::CallbackRefused(_) => "callback-url-refused",
            Self::Unauthorized(_) => "unauthorized",
            Self::Forbidden(_) => "forbidden",
            Self::NotFound(_) => "not-found",
            Self::MethodNotAllowed => "method-not-allowed",
            Self::Conflict(_) => "conflict",
            Self::PayloadTooLarge { .. } => "payload-too-large",
            Self::UnsupportedMediaType(_) => "unsupported-media-type",
            Self::Validation { .. } => "validation",
            Self::RateLimited { .. } => "rate-limited",
            Self::QueueFull { .. } => "queue-full",
            Self::SyncSaturated { .. } => "sync-saturated",
            Self::Unavailable(_) => "unavailable",
            Self::StorageUnavailable => "storage-unavailable",
            Self::ShuttingDown => "shutting-down",
            Self::Timeout { .. } => "timeout",
            Self::Internal(_) => "internal",
        }
    }

    fn retry_after_secs(&self) -> Option<u64> {
        match self {
            Self::RateLimited { retry_after_secs, .. }
            | Self::QueueFull { retry_after_secs, .. }
            | Self::SyncSaturated { retry_after_secs, .. } => Some((*retry_after_secs).max(1)),
            Self::Unavailable(_) => Some(1),
            Self::StorageUnavailable => Some(2),
            Self::ShuttingDown => Some(5),
            _ => None,
        }
    }

    /// A 422 for a payload the engine refused; pointers are prefixed with where the payload sits.
    pub fn invalid_work(errors: Vec<InvalidWork>, prefix: &str) -> Self {
        let errors: Vec<FieldError> = errors
            .into_iter()
            .map(|e| FieldError {
                pointer: format!("{prefix}{}", e.pointer),
                detail: e.message,
            })
            .collect();
        let detail = match errors.as_slice() {
            [one] => format!("{} {}", one.pointer, one.detail),
            _ => format!("{} fields are invalid", errors.len()),
        };
        Self::Validation { detail, errors }
    }

    /// A 422 with a message only.
    pub fn unprocessable(detail: impl Into<String>) -> Self {
        Self::Validation {
            detail: detail.into(),
            errors: Vec::new(),
        }
    }

    pub fn internal(err: impl Into<anyhow::Error>) -> Self {
        Self::Internal(err.into())
    }

    pub fn problem(&self) -> Problem {
        let status = self.status();
        Problem {
            kind: format!("urn:sync-async:problem:{}", self.slug()),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail: self.to_string(),
            request_id: match self {
                Self::Timeout { request_id, .. } => Some(request_id.clone()),
                _ => None,
            },
            retry_after: self.retry_after_secs(),
            errors: match self {
                Self::Validation { errors, .. } => errors.clone(),
                _ => Vec::new(),
            },
        }
    }

    fn headers(&self) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let Some(secs) = self.retry_after_secs() {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Self::Unauthorized(_) = self {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Self::RateLimited { limit, .. } = self {
            headers.insert(HeaderName::from_static("x-ratelimit-limit"), HeaderValue::from(*limit));
            headers.insert(HeaderName::from_static("x-ratelimit-remaining"), HeaderValue::from(0));
        }
        headers
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let Self::Internal(cause) = &self {
            // The only place internal causes are logged; the client sees a generic message.
            tracing::error!(error = format!("{cause:#}"), "request failed");
        }
        let body = Json(self.problem());
        let mut response = (self.status(), body).into_response();
        response.headers_mut().extend(self.headers());
        response
    }
}

impl From<QueryRejection> for ApiError {
    /// A query string that does not parse (an unknown `mode`, a `limit` of `x`) is a 422.
    fn from(rejection: QueryRejection) -> Self {
        Self::unprocessable(rejection.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        Self::NotFound(rejection.body_text())
    }
}

impl From<sqlx::Error> for ApiError {
    /// A database that is out of reach or busy for a moment is a 503 with `Retry-After`, never a
    /// 500: it is logged once here, and the client is told to retry.
    fn from(err: sqlx::Error) -> Self {
        if crate::db::is_transient(&err) {
            tracing::warn!(error = %err, "the database did not answer a request");
            return Self::StorageUnavailable;
        }
        Self::Internal(err.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_at_least_one_second() {
        let err = ApiError::RateLimited {
            retry_after_secs: 0,
            limit: 5,
        };
        assert_eq!(err.headers()[header::RETRY_AFTER], "1");
        assert_eq!(err.problem().retry_after, Some(1));
    }

    #[test]
    fn internal_errors_do_not_leak_their_cause() {
        let err = ApiError::internal(anyhow::anyhow!("secret database path /etc/x"));
        let problem = err.problem();
        assert_eq!(problem.status, 500);
        assert!(!problem.detail.contains("secret"));
    }

    #[test]
    fn invalid_work_prefixes_pointers() {
        let err = ApiError::invalid_work(
            vec![InvalidWork {
                pointer: "/complexity".into(),
                message: "too big".into(),
            }],
            "/payload",
        );
        let problem = err.problem();
        assert_eq!(problem.errors[0].pointer, "/payload/complexity");
        assert_eq!(problem.detail, "/payload/complexity too big");
        assert_eq!(problem.kind, "urn:sync-async:problem:validation");
    }
}
