//! `GET /requests` and `GET /requests/{id}`: what was asked and what came of it.

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::db;
use crate::db::requests::{ListFilter, RequestRecord};
use crate::error::{ApiError, Problem};
use crate::extract::{ApiPath, ApiQuery};
use crate::openapi::RateLimited;
use crate::state::AppState;

/// The default and the largest page size.
const DEFAULT_LIMIT: u32 = 50;
const MAX_LIMIT: u32 = 100;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_requests))
        .routes(routes!(get_request))
}

/// One page of requests, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct RequestPage {
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
        (status = 422, description = "A filter value is not allowed (unknown mode or status, limit outside 1 to 100)",
            body = Problem, content_type = "application/problem+json"),
        RateLimited,
    )
)]
pub async fn list_requests(
    State(state): State<AppState>,
    ApiQuery(filter): ApiQuery<ListFilter>,
) -> Result<Json<RequestPage>, ApiError> {
    let limit = filter.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::unprocessable(format!(
            "limit must be between 1 and {MAX_LIMIT}, got {limit}"
        )));
    }
    let offset = filter.offset.unwrap_or(0);
    let (total, requests) = db::requests::list(&state.db, &filter, limit, offset).await?;
    Ok(Json(RequestPage {
        total,
        limit,
        offset,
        requests,
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
pub async fn get_request(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<RequestRecord>, ApiError> {
    db::requests::get(&state.db, &id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("no request with id {id}")))
}
