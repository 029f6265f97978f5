//! `GET /`: what this service is and where to go next.

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::openapi::RateLimited;
use crate::state::AppState;

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(index))
}

/// A map of the service.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Index {
    pub name: String,
    pub version: &'static str,
    pub description: &'static str,
    /// Interactive API documentation.
    pub docs: &'static str,
    pub openapi: &'static str,
    /// `METHOD path`: what it does.
    pub endpoints: Vec<EndpointSummary>,
}

#[derive(Debug, Serialize, ToSchema)]
pub(super) struct EndpointSummary {
    pub method: &'static str,
    pub path: &'static str,
    pub description: &'static str,
}

const ENDPOINTS: &[(&str, &str, &str)] = &[
    ("POST", "/sync", "Run work now; the answer carries the result"),
    (
        "POST",
        "/async",
        "Accept work now (202); the result is POSTed to callback_url or polled",
    ),
    (
        "GET",
        "/requests",
        "List stored requests (filters: mode, status, limit, offset)",
    ),
    (
        "GET",
        "/requests/{id}",
        "One stored request, with its callback delivery state",
    ),
    ("GET", "/requests/{id}/attempts", "Callback delivery attempts"),
    ("POST", "/requests/{id}/redeliver", "Deliver a failed callback again"),
    ("GET", "/metrics", "Live figures as JSON"),
    ("GET", "/metrics/prometheus", "The same figures for Prometheus"),
    ("GET", "/healthz", "Health check"),
    ("GET", "/docs", "Swagger UI"),
];

/// Service index
///
/// Name, version and a map of the endpoints.
#[utoipa::path(
    get,
    path = "/",
    tag = "operations",
    responses((status = 200, description = "The index", body = Index), RateLimited)
)]
pub(super) async fn index(State(state): State<AppState>) -> Json<Index> {
    Json(Index {
        name: state.config.app_name.clone(),
        version: env!("CARGO_PKG_VERSION"),
        description: "Compares a synchronous API with an acknowledge-now, deliver-by-callback API under load",
        docs: "/docs",
        openapi: "/openapi.json",
        endpoints: ENDPOINTS
            .iter()
            .map(|&(method, path, description)| EndpointSummary {
                method,
                path,
                description,
            })
            .collect(),
    })
}
