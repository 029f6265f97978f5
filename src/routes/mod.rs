//! The HTTP surface: one module per resource, each with its `router()`. Handlers only extract,
//! call the layer below, and shape the answer.

mod asynchronous;
mod health;
mod index;
pub(crate) mod metrics;
mod records;
pub(crate) mod requests;
mod sync;

use axum::Router;
use axum::http::Uri;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_swagger_ui::SwaggerUi;

use crate::error::ApiError;
use crate::openapi::ApiDoc;
use crate::state::AppState;

/// Every route, the Swagger UI at `/docs`, the spec at `/openapi.json`, and problem+json
/// answers for unknown paths (404) and methods (405).
pub fn router() -> Router<AppState> {
    router_under("")
}

/// The same, for an app served under `base_path` (BASE_PATH, such as `/ops`): the routes stay
/// as they are (the caller nests them), while the Swagger UI fetches its spec, and "Try it out"
/// sends its requests, under the prefix.
pub fn router_under(base_path: &str) -> Router<AppState> {
    let (routes, api) = api_router().split_for_parts();
    let mut api = crate::openapi::complete(api);
    let mut docs = SwaggerUi::new("/docs");
    if !base_path.is_empty() {
        api.servers = Some(vec![utoipa::openapi::Server::new(base_path)]);
        docs = docs.config(utoipa_swagger_ui::Config::new([format!("{base_path}/openapi.json")]));
    }
    routes
        .merge(docs.url("/openapi.json", api))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
}

/// The documented routes and the OpenAPI document they make up.
pub fn api_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(index::router())
        .merge(sync::router())
        .merge(asynchronous::router())
        .merge(requests::router())
        .merge(metrics::router())
        .merge(health::router())
}

/// The OpenAPI document, as `/openapi.json` serves it.
pub fn openapi() -> utoipa::openapi::OpenApi {
    crate::openapi::complete(api_router().into_openapi())
}

/// The 404 of an unknown path (also outside BASE_PATH).
pub(crate) async fn not_found(uri: Uri) -> ApiError {
    ApiError::NotFound(format!("no route for {}", uri.path()))
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}
