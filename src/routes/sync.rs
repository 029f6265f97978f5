//! `POST /sync`: run work now, answer with the result.

use axum::Json;
use axum::extract::State;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Caller;
use crate::client_ip::ClientIp;
use crate::error::ApiError;
use crate::extract::ApiJson;
use crate::openapi::{MalformedJson, PayloadErrors, RateLimited};
use crate::state::AppState;
use crate::submission::{self, SyncRequest, SyncResponse};

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(submit_sync))
}

/// Run work now and answer with its result
///
/// The request holds one of `MAX_SYNC_CONCURRENCY` slots while the engine runs, so response
/// time grows with the work and with load. When every slot is taken the answer is an immediate
/// 503 with `Retry-After`, and nothing is stored. Work that passes `WORK_TIMEOUT_SECONDS` is
/// cancelled (its CPU is free before the 504 is sent) and the request is stored as `failed`.
#[utoipa::path(
    post,
    path = "/sync",
    tag = "sync",
    request_body(content = SyncRequest, examples(
        ("hash" = (summary = "Chained SHA-256, about 570 ms", value = json!({"payload": {"operation": "hash", "complexity": 5}}))),
        ("prime" = (summary = "The 1000th prime", value = json!({"payload": {"operation": "prime", "complexity": 1, "data": {"n": 1000}}}))),
        ("matrix" = (summary = "64 x 64 matrices", value = json!({"payload": {"operation": "matrix", "complexity": 2, "data": {"size": 64}}}))),
        ("transform" = (summary = "Transform your own items", value = json!({"payload": {"operation": "transform", "complexity": 1, "data": {"items": [1, "two", {"three": 3}]}}}))),
    )),
    responses(
        (status = 200, description = "The work is done; the result is in the body", body = SyncResponse),
        MalformedJson,
        PayloadErrors,
        RateLimited,
        (status = 503, description = "Every sync slot is busy; nothing was stored. Retry after `Retry-After` seconds, or use `POST /async`.",
            body = crate::error::Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 504, description = "The work passed WORK_TIMEOUT_SECONDS and was cancelled; `request_id` names the stored, failed request.",
            body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn submit_sync(
    State(state): State<AppState>,
    client: ClientIp,
    caller: Caller,
    ApiJson(request): ApiJson<SyncRequest>,
) -> Result<Json<SyncResponse>, ApiError> {
    submission::run_sync(&state, request, client, &caller).await.map(Json)
}
