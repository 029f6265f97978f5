//! `GET /requests`, `GET /requests/{id}`: what was asked and what came of it; and the callback
//! side of a request: `GET /requests/{id}/attempts`, `POST /requests/{id}/redeliver`.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::records::{Attempt, ListFilter, RequestRecord};
use crate::auth::Caller;
use crate::db::{ListQuery, RedeliverRefusal, RequestRow};
use crate::error::{ApiError, Problem};
use crate::extract::{ApiPath, ApiQuery};
use crate::model::DeliveryStatus;
use crate::openapi::RateLimited;
use crate::state::AppState;

/// The default and the largest page size.
const DEFAULT_LIMIT: u32 = 50;
const MAX_LIMIT: u32 = 100;
/// The deepest page: an offset scan costs the rows it skips, so it is bounded (the schema says
/// so too, and schemathesis found a larger one accepted when it did not).
const MAX_OFFSET: u32 = 1_000_000;

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_requests))
        .routes(routes!(get_request))
        .routes(routes!(list_attempts))
        .routes(routes!(redeliver))
}

/// One page of requests, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct RequestPage {
    /// How many requests match the filters, over all pages.
    pub total: i64,
    pub limit: u32,
    pub offset: u32,
    pub requests: Vec<RequestRecord>,
}

/// List stored requests
///
/// Newest first, filtered by `mode` and `status`, paged by `limit` (1 to 100) and `offset`.
/// An unknown filter value is a 422.
#[utoipa::path(
    get,
    path = "/requests",
    tag = "requests",
    params(ListFilter),
    responses(
        (status = 200, description = "One page of requests", body = RequestPage),
        (status = 422, description = "A filter value is not allowed (unknown mode or status, limit outside 1 to 100, offset above 1 000 000)",
            body = Problem, content_type = "application/problem+json"),
        RateLimited,
    )
)]
pub(super) async fn list_requests(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(filter): ApiQuery<ListFilter>,
) -> Result<Json<RequestPage>, ApiError> {
    let limit = filter.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::unprocessable(format!(
            "limit must be between 1 and {MAX_LIMIT}, got {limit}"
        )));
    }
    let offset = filter.offset.unwrap_or(0);
    if offset > MAX_OFFSET {
        return Err(ApiError::unprocessable(format!(
            "offset must be between 0 and {MAX_OFFSET}, got {offset}"
        )));
    }
    let query = ListQuery {
        tenant: caller.tenant().map(str::to_owned),
        mode: filter.mode,
        status: filter.status,
        limit,
        offset,
        ..ListQuery::default()
    };
    let (total, rows) = state.db.list(&query).await?;
    Ok(Json(RequestPage {
        total,
        limit,
        offset,
        requests: rows.into_iter().map(RequestRecord::from).collect(),
    }))
}

/// Get one request
///
/// The full record: payload, status, result or error, timings.
#[utoipa::path(
    get,
    path = "/requests/{id}",
    tag = "requests",
    params(("id" = String, Path, description = "The `request_id` from `/sync` or `/async`")),
    responses(
        (status = 200, description = "The request", body = RequestRecord),
        (status = 404, description = "No request has this id", body = Problem, content_type = "application/problem+json"),
        RateLimited,
    )
)]
pub(super) async fn get_request(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<RequestRecord>, ApiError> {
    visible_request(&state, &caller, &id)
        .await
        .map(|row| Json(RequestRecord::from(row)))
}

/// A redelivery that was started.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct RedeliveryStarted {
    pub request_id: String,
    /// `pending`: the first attempt of the new round is due now.
    pub delivery_status: DeliveryStatus,
    pub message: String,
}

/// List callback delivery attempts
///
/// Every attempt to POST this request's result to its `callback_url`, oldest first: when, how
/// long, the HTTP status or the class of error, and a short error text.
#[utoipa::path(
    get,
    path = "/requests/{id}/attempts",
    tag = "requests",
    params(("id" = String, Path, description = "The `request_id` from `/async`")),
    responses(
        (status = 200, description = "The attempts, oldest first (empty before the first)", body = Vec<Attempt>),
        (status = 404, description = "No request has this id", body = Problem, content_type = "application/problem+json"),
        RateLimited,
    )
)]
pub(super) async fn list_attempts(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Vec<Attempt>>, ApiError> {
    visible_request(&state, &caller, &id).await?;
    let rows = state.db.attempts(&id).await?;
    Ok(Json(rows.into_iter().map(Attempt::from).collect()))
}

/// Deliver a failed callback again
///
/// Starts a new delivery round (a fresh retry budget) for a request whose delivery `failed`.
/// Any other delivery state, or a request without a `callback_url`, is a 409.
#[utoipa::path(
    post,
    path = "/requests/{id}/redeliver",
    tag = "requests",
    params(("id" = String, Path, description = "The `request_id` from `/async`")),
    responses(
        (status = 202, description = "A new delivery round has started", body = RedeliveryStarted),
        (status = 404, description = "No request has this id", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The request has no callback, or its delivery has not failed", body = Problem, content_type = "application/problem+json"),
        RateLimited,
    )
)]
pub(super) async fn redeliver(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<(StatusCode, Json<RedeliveryStarted>), ApiError> {
    // A request's tenant never changes, so checking before the redelivery is not a race.
    visible_request(&state, &caller, &id).await?;
    start_redelivery(&state, &id).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(RedeliveryStarted {
            request_id: id,
            delivery_status: DeliveryStatus::Pending,
            message: "A new delivery round has started".to_owned(),
        }),
    ))
}

/// Starts a new delivery round, or says why not (404, 409): the API's redeliver and the
/// dashboard's button.
pub(crate) async fn start_redelivery(state: &AppState, id: &str) -> Result<(), ApiError> {
    match state.deliveries.redeliver(id).await? {
        Ok(()) => Ok(()),
        Err(RedeliverRefusal::NotFound) => Err(not_found(id)),
        Err(RedeliverRefusal::NotFailed(_, false)) => Err(ApiError::Conflict(
            "this request has no callback_url to deliver to".to_owned(),
        )),
        Err(RedeliverRefusal::NotFailed(status, true)) => Err(ApiError::Conflict(format!(
            "only a failed delivery can be redelivered; this one is {}",
            status.map_or("waiting for the job to finish", DeliveryStatus::as_str)
        ))),
    }
}

/// The request `id` if `caller` may see it. Another tenant's request is the same 404 as an id
/// that was never used, so that a tenant cannot even learn that it exists. The dashboard's pages
/// use it too.
pub(crate) async fn visible_request(state: &AppState, caller: &Caller, id: &str) -> Result<RequestRow, ApiError> {
    state
        .db
        .get(id)
        .await?
        .filter(|row| caller.may_see(row.tenant.as_deref()))
        .ok_or_else(|| not_found(id))
}

/// The 404 of every route under `/requests/{id}`.
fn not_found(id: &str) -> ApiError {
    ApiError::NotFound(format!("no request with id {id}"))
}
