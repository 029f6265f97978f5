//! `POST /async`: acknowledge now, deliver the result by callback (or let the client poll).

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Caller;
use crate::client_ip::ClientIp;
use crate::error::{ApiError, Problem};
use crate::extract::ApiJson;
use crate::openapi::PayloadErrors;
use crate::state::AppState;
use crate::submission::{self, AsyncAccepted, AsyncRequest, IdempotencyKey};

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(submit_async))
}

/// Accept work now; deliver the result later
///
/// The job is committed to SQLite before the 202 is sent, so it survives a crash: at the next
/// start every unfinished job is run and every undelivered result is sent. Five workers (by
/// default) drain the queue. With `callback_url`, the result is POSTed there with Standard
/// Webhooks headers (`webhook-id`, `webhook-timestamp`, and `webhook-signature` when
/// CALLBACK_SIGNING_SECRET is set) and retried with backoff; without it, poll `status_url`.
///
/// When MAX_QUEUE_SIZE jobs are already waiting the answer is an immediate 429 and nothing is
/// stored. An `Idempotency-Key` (per client, kept 24 h) makes retries safe: the same key with the
/// same body replays the first 202; with a different body it is a 422.
#[utoipa::path(
    post,
    path = "/async",
    tag = "async",
    params(("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,255}$",
        description = "1 to 255 visible ASCII characters; makes a retried submission safe")),
    request_body(content = AsyncRequest, examples(
        ("callback" = (summary = "Deliver to the demo receiver", value = json!({"payload": {"operation": "prime", "complexity": 7}, "callback_url": "http://localhost:9000/callback"}))),
        ("poll" = (summary = "No callback: poll status_url", value = json!({"payload": {"operation": "hash", "complexity": 5}}))),
    )),
    responses(
        (status = 202, description = "Stored and queued", body = AsyncAccepted, headers(
            ("Location" = String, description = "Where to poll: /requests/{request_id}"),
            ("Retry-After" = u64, description = "Estimated seconds until the result exists"),
            ("Idempotent-Replayed" = bool, description = "Present (true) when an Idempotency-Key replayed an earlier 202"),
        )),
        (status = 400, description = "Malformed JSON, a malformed Idempotency-Key, or a callback_url the URL policy refuses (the detail says why)",
            body = Problem, content_type = "application/problem+json"),
        PayloadErrors,
        (status = 409, description = "Another request with the same Idempotency-Key is being accepted at this moment; retry",
            body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "MAX_QUEUE_SIZE jobs are waiting (nothing was stored), or this client passed its rate limit. Retry after `Retry-After` seconds.",
            body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait (at least 1)"))),
    )
)]
pub(super) async fn submit_async(
    State(state): State<AppState>,
    client: ClientIp,
    caller: Caller,
    key: IdempotencyKey,
    ApiJson(request): ApiJson<AsyncRequest>,
) -> Result<Response, ApiError> {
    let accepted = submission::accept_async(&state, request, client, &caller, key).await?;
    let location = HeaderValue::from_str(&accepted.body.status_url).map_err(ApiError::internal)?;
    let mut response = (StatusCode::ACCEPTED, Json(accepted.body)).into_response();
    let headers = response.headers_mut();
    headers.insert(header::LOCATION, location);
    headers.insert(header::RETRY_AFTER, HeaderValue::from(accepted.retry_after_secs));
    if accepted.replayed {
        headers.insert(
            HeaderName::from_static("idempotent-replayed"),
            HeaderValue::from_static("true"),
        );
    }
    Ok(response)
}
