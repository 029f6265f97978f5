//! The HTTP stack around the routes: request ids, tracing, CORS, HTTP metrics, API keys, the
//! rate limit, a panic guard and the body limit, in the order each must see a request.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRef, MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue, Method, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnRequest, DefaultOnResponse, TraceLayer};
use tracing::Level;

use crate::auth;
use crate::client_ip::ClientIpSource;
use crate::config::{Config, CorsOrigins};
use crate::dashboard::{self, Dashboard, Rates};
use crate::error::ApiError;
use crate::metrics::{Metrics, RouteLabels};
use crate::rate_limit::{self, RateLimit};
use crate::routes;
use crate::state::AppState;

/// The routes with every cross-cutting layer: request id, tracing, CORS, HTTP metrics, API keys,
/// rate limit (the API's routes; the dashboard's pages and its event stream are not counted, so a
/// burst the demo fires cannot lock its own page out), a panic guard and body limit; all under
/// BASE_PATH. The keys are checked before the rate limit, which counts per tenant; with keys set,
/// the dashboard needs a key too (or the session cookie its sign-in form sets).
pub(crate) fn router(state: AppState, dashboard: Dashboard) -> Router {
    let base_path = state.config.base_path.clone();
    let tracking = HttpTracking {
        metrics: state.metrics.clone(),
        rates: dashboard.rates.clone(),
    };
    let api = routes::router_under(&base_path).layer(middleware::from_fn_with_state(
        RateLimit {
            limiter: state.rate_limiter.clone(),
            client_ip: ClientIpSource::from_ref(&state),
            refused: state.metrics.rate_limited.clone(),
            db: state.db.clone(),
        },
        rate_limit::enforce,
    ));
    let app = api.merge(dashboard::router(dashboard.clone())).layer(
        ServiceBuilder::new()
            // Outside the keys: a dashboard page refused for want of a key shows the sign-in form.
            .layer(middleware::map_response_with_state(dashboard, dashboard::offer_sign_in))
            .layer(middleware::from_fn_with_state(state.auth.clone(), auth::authenticate)),
    );
    let app = if base_path.is_empty() {
        app
    } else {
        Router::new().nest(&base_path, app).fallback(routes::not_found)
    };
    with_layers(app, &state, tracking).with_state(state)
}

/// Wraps `routes` in the layer stack; the tests put a route that panics under the same stack.
/// One `ServiceBuilder` (outermost first) is one layer on the router: each layer given to
/// `Router::layer` on its own boxes the route again, a clone and two allocations per request.
fn with_layers(routes: Router<AppState>, state: &AppState, tracking: HttpTracking) -> Router<AppState> {
    let x_request_id = HeaderName::from_static("x-request-id");
    routes.layer(
        ServiceBuilder::new()
            .layer(SetRequestIdLayer::new(x_request_id.clone(), MakeRequestUuid))
            .layer(
                TraceLayer::new_for_http()
                    .make_span_with(|req: &Request| {
                        let x_request_id = req
                            .headers()
                            .get("x-request-id")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("");
                        tracing::info_span!(
                            "http",
                            method = %req.method(),
                            path = %req.uri().path(),
                            x_request_id,
                            request_id = tracing::field::Empty,
                        )
                    })
                    .on_request(DefaultOnRequest::new().level(Level::DEBUG))
                    .on_response(DefaultOnResponse::new().level(Level::DEBUG))
                    // Failures are logged once where they happen (ApiError), not again here.
                    .on_failure(()),
            )
            .layer(PropagateRequestIdLayer::new(x_request_id))
            .layer(cors(&state.config))
            .layer(middleware::from_fn_with_state(tracking, track_http))
            // Inside the metrics and the request id, so a panic is counted and answered like any
            // 500; around the rate limiter and the handlers, where a bug could panic.
            .layer(CatchPanicLayer::custom(answer_panic))
            .layer(DefaultBodyLimit::max(state.config.max_payload_bytes())),
    )
}

/// A panic in a handler or a middleware becomes a problem+json 500, logged once with its
/// message; the connection and the server go on.
fn answer_panic(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic with a non-text payload".to_owned());
    ApiError::internal(anyhow::anyhow!("panicked: {message}")).into_response()
}

fn cors(config: &Config) -> CorsLayer {
    let origins = match &config.cors_origins {
        CorsOrigins::Any => AllowOrigin::any(),
        CorsOrigins::List(list) => AllowOrigin::list(list.iter().filter_map(|o| HeaderValue::from_str(o).ok())),
    };
    CorsLayer::new()
        .allow_origin(origins)
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([
            header::CONTENT_TYPE,
            header::AUTHORIZATION,
            HeaderName::from_static("idempotency-key"),
        ])
        .expose_headers([
            header::LOCATION,
            header::RETRY_AFTER,
            HeaderName::from_static("x-request-id"),
            HeaderName::from_static("x-ratelimit-limit"),
            HeaderName::from_static("x-ratelimit-remaining"),
        ])
        .allow_credentials(config.cors_allow_credentials)
}

/// What `track_http` feeds.
#[derive(Clone)]
struct HttpTracking {
    metrics: Arc<Metrics>,
    /// The dashboard's per-second answers of `/sync` and `/async`.
    rates: Arc<Rates>,
}

/// Counts every answer and its latency by route template.
async fn track_http(
    State(HttpTracking { metrics, rates }): State<HttpTracking>,
    matched: Option<MatchedPath>,
    req: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    // Only known methods become label values: anything else would let clients grow the
    // metric families without bound.
    let method = match *req.method() {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        _ => "OTHER",
    }
    .to_owned();
    let route = matched.map_or_else(|| "unmatched".to_owned(), |m| m.as_str().to_owned());
    let response = next.run(req).await;
    rates.record_answer(&route, response.status().as_u16(), started.elapsed());
    let labels = RouteLabels {
        method,
        route,
        status: response.status().as_u16(),
    };
    metrics.http_requests.get_or_create(&labels).inc();
    metrics
        .http_latency
        .get_or_create(&labels)
        .observe(started.elapsed().as_secs_f64());
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::App;
    use crate::config::Config;
    use axum::body::Body;
    use axum::routing::get;
    use tower::ServiceExt;

    /// The real layer stack around a route that only exists here: a panic anywhere under the
    /// stack must come back as a problem+json 500 with the request id, not a dropped connection.
    #[tokio::test]
    async fn a_panicking_handler_gets_a_problem_json_500() {
        let dir = tempfile::tempdir().expect("temp dir");
        let app = App::build(Config {
            host: [127, 0, 0, 1].into(),
            port: 0,
            database_path: dir.path().join("requests.db"),
            engine_calibration: crate::config::EngineCalibration::Fixed,
            ..Config::default()
        })
        .await
        .expect("app builds");
        let state = app.state().clone();
        async fn panics() -> &'static str {
            panic!("a bug")
        }
        let routes = Router::new().route("/panics", get(panics));
        let tracking = HttpTracking {
            metrics: state.metrics.clone(),
            rates: Arc::new(Rates::new("")),
        };
        let metrics = state.metrics.clone();
        let service = with_layers(routes, &state, tracking).with_state(state);

        let response = service
            .oneshot(
                Request::get("/panics")
                    .header(header::ORIGIN, "https://app.example")
                    .body(Body::empty())
                    .expect("request"),
            )
            .await
            .expect("an answer, not a panic");

        assert_eq!(response.status(), 500);
        assert_eq!(response.headers()[header::CONTENT_TYPE], crate::error::PROBLEM_JSON);
        assert!(response.headers().contains_key("x-request-id"));
        // The layers' order: the panic guard sits inside the HTTP metrics and CORS, so the 500 is
        // counted under its route and a browser may read it.
        let counted = RouteLabels {
            method: "GET".to_owned(),
            route: "/panics".to_owned(),
            status: 500,
        };
        assert_eq!(metrics.http_requests.get_or_create(&counted).get(), 1);
        assert!(response.headers().contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN));
        let body = axum::body::to_bytes(response.into_body(), 64 * 1024)
            .await
            .expect("body");
        let problem: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
        assert_eq!(problem["type"], "urn:sync-async:problem:internal");
        assert_eq!(problem["status"], 500);
        assert!(
            !problem.to_string().contains("a bug"),
            "the panic message is logged, not sent: {problem}"
        );
    }
}
