//! The API's view of stored requests: `RequestRecord` with its `Delivery`, `Attempt`, and the
//! `GET /requests` filters, mapped from the rows `db/` returns. These carry the OpenAPI schemas;
//! the rows do not, so storage and the API can change apart.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use crate::db::{AttemptRow, DeliveryRow, RequestRow};
use crate::model::{DeliveryStatus, Mode, Status};

/// The callback side of a request, present when it has a `callback_url`.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub(super) struct Delivery {
    pub status: DeliveryStatus,
    /// Attempts made, over every round.
    pub attempts: i64,
    /// HTTP status of the last attempt, if it got an answer.
    pub last_status_code: Option<i64>,
    pub last_error: Option<String>,
    /// When the next attempt is due (RFC 3339 UTC), while `pending`.
    pub next_attempt_at: Option<String>,
}

/// A stored request as the API shows it (the client IP is kept out on purpose).
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub(super) struct RequestRecord {
    #[schema(example = "0193a1b2-7c3d-7e4f-8a9b-0c1d2e3f4a5b")]
    pub request_id: String,
    pub mode: Mode,
    pub status: Status,
    /// The work payload as submitted.
    #[schema(value_type = Object, example = json!({"operation": "hash", "complexity": 5}))]
    pub payload: Value,
    /// The engine's result, once `done`.
    #[schema(value_type = Option<Object>)]
    pub result: Option<Value>,
    /// Why the work failed, once `failed`.
    pub error: Option<String>,
    pub callback_url: Option<String>,
    /// RFC 3339 UTC.
    #[schema(example = "2026-11-27T10:11:54.123Z")]
    pub created_at: String,
    pub started_at: Option<String>,
    pub completed_at: Option<String>,
    /// Engine time only, without time spent queued.
    pub execution_time_ms: Option<f64>,
    /// Callback delivery attempts made so far (also in `delivery`).
    pub attempts: i64,
    /// The last callback delivery error (also in `delivery`).
    pub last_error: Option<String>,
    /// The callback delivery; null when the request has no `callback_url`.
    pub delivery: Option<Delivery>,
}

impl From<DeliveryRow> for Delivery {
    fn from(row: DeliveryRow) -> Self {
        Self {
            status: row.status,
            attempts: row.attempts,
            last_status_code: row.last_status_code,
            last_error: row.last_error,
            next_attempt_at: row.next_attempt_at,
        }
    }
}

impl From<RequestRow> for RequestRecord {
    fn from(row: RequestRow) -> Self {
        let delivery = row.delivery.map(Delivery::from);
        Self {
            request_id: row.id,
            mode: row.mode,
            status: row.status,
            payload: row.payload,
            result: row.result,
            error: row.error,
            callback_url: row.callback_url,
            created_at: row.created_at,
            started_at: row.started_at,
            completed_at: row.completed_at,
            execution_time_ms: row.execution_time_ms,
            attempts: delivery.as_ref().map_or(0, |d| d.attempts),
            last_error: delivery.as_ref().and_then(|d| d.last_error.clone()),
            delivery,
        }
    }
}

/// One attempt, as stored and as `GET /requests/{id}/attempts` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub(super) struct Attempt {
    /// 1, 2, 3... across every round.
    pub number: i64,
    /// RFC 3339 UTC.
    pub attempted_at: String,
    pub duration_ms: f64,
    /// The receiver's HTTP status; null when no answer came back.
    pub status_code: Option<i64>,
    /// Null on success; otherwise `timeout`, `connect`, `http_status`, `redirect` or `refused`.
    pub error_class: Option<String>,
    /// A short description of the failure.
    pub error: Option<String>,
}

impl From<AttemptRow> for Attempt {
    fn from(row: AttemptRow) -> Self {
        Self {
            number: row.number,
            attempted_at: row.attempted_at,
            duration_ms: row.duration_ms,
            status_code: row.status_code,
            error_class: row.error_class,
            error: row.error,
        }
    }
}

/// `GET /requests` filters.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct ListFilter {
    /// Only requests of this mode.
    pub mode: Option<Mode>,
    /// Only requests in this status.
    pub status: Option<Status>,
    /// Page size, 1 to 100 (default 50).
    #[param(minimum = 1, maximum = 100, default = 50)]
    pub limit: Option<u32>,
    /// Rows to skip, 0 to 1 000 000 (default 0).
    #[param(minimum = 0, maximum = 1_000_000, default = 0)]
    pub offset: Option<u32>,
}
