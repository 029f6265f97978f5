//! `/metrics`, `/metrics/prometheus`, `/healthz`, `/`, request ids and CORS.

use serde_json::json;

use super::helpers::{quick_payload, spawn_app, spawn_app_with};

#[tokio::test]
async fn metrics_count_requests_by_mode_and_status_with_real_figures() {
    let Some(app) = spawn_app().await else { return };
    for _ in 0..2 {
        let response = app.post_json("/sync", &json!({"payload": quick_payload()})).await;
        assert_eq!(response.status(), 200);
    }

    let m = app.metrics().await;

    assert_eq!(m["total_requests"], 2);
    assert_eq!(m["by_mode"], json!({"sync": 2, "async": 0}));
    assert_eq!(
        m["by_status"],
        json!({"pending": 0, "processing": 0, "done": 2, "failed": 0})
    );
    assert!(m["avg_execution_time_ms"].as_f64().is_some_and(|ms| ms >= 0.0), "{m}");
    assert_eq!(m["sync"], json!({"in_flight": 0, "max": 10, "rejected": 0}));
    assert_eq!(
        m["workers"],
        json!({"total": 5, "alive": 5, "busy": 0, "claimed_ahead": 0}),
        "no async job has run: none is claimed ahead"
    );
    assert_eq!(m["queue"]["size"], 0);
    assert_eq!(m["queue"]["max_size"], 100);
    assert!(m["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')));
}

#[tokio::test]
async fn prometheus_text_carries_counts_and_latency_histograms() {
    let Some(app) = spawn_app().await else { return };
    assert_eq!(
        app.post_json("/sync", &json!({"payload": quick_payload()}))
            .await
            .status(),
        200
    );

    let response = app.get("/metrics/prometheus").await;

    assert!(
        response.headers()["content-type"]
            .to_str()
            .expect("ascii")
            .starts_with("application/openmetrics-text")
    );
    let text = response.text().await.expect("text");
    for expected in [
        r#"sync_async_http_requests_total{method="POST",route="/sync",status="200"} 1"#,
        r#"sync_async_http_request_duration_seconds_bucket{le="+Inf",method="POST",route="/sync",status="200"} 1"#,
        r#"sync_async_engine_duration_seconds_count{mode="sync",operation="prime"} 1"#,
        r#"sync_async_stored_requests{mode="sync",status="done"} 1"#,
        "sync_async_workers_busy 0",
        "# EOF",
    ] {
        assert!(text.contains(expected), "missing {expected}\n{text}");
    }
}

#[tokio::test]
async fn health_is_ok_then_503_problem_when_the_database_is_gone() {
    let Some(app) = spawn_app().await else { return };
    let ok = app.get_json("/healthz").await;
    assert_eq!(ok["status"], "ok");
    assert_eq!(ok["database"], "ok");
    assert_eq!(ok["workers"], json!({"alive": 5, "total": 5}));
    assert_eq!(ok["queue_size"], 0);

    app.state.db.close().await;

    let response = app.get("/healthz").await;
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["content-type"], "application/problem+json");
    let body: serde_json::Value = response.json().await.expect("json");
    assert_eq!(body["database"], "unavailable");
    assert_eq!(body["status"], 503);
}

#[tokio::test]
async fn every_response_has_a_request_id_and_a_given_one_is_kept() {
    let Some(app) = spawn_app().await else { return };
    let generated = app.get("/").await;
    assert!(
        generated.headers()["x-request-id"]
            .to_str()
            .is_ok_and(|v| !v.is_empty())
    );
    let not_found = app.get("/missing").await;
    assert!(not_found.headers().contains_key("x-request-id"));
    let given = app
        .client
        .get(app.url("/"))
        .header("x-request-id", "trace-me-42")
        .send()
        .await
        .expect("sent");
    assert_eq!(given.headers()["x-request-id"], "trace-me-42");
}

#[tokio::test]
async fn the_index_maps_the_service() {
    let Some(app) = spawn_app_with(|c| c.app_name = "Demo under test".into()).await else {
        return;
    };
    let index = app.get_json("/").await;
    assert_eq!(index["name"], "Demo under test");
    assert_eq!(index["docs"], "/docs");
    assert!(
        index["endpoints"]
            .as_array()
            .is_some_and(|e| e.iter().any(|x| x["path"] == "/sync"))
    );
}

#[tokio::test]
async fn cors_follows_the_configured_origins() {
    let Some(app) =
        spawn_app_with(|c| c.cors_origins = sync_async::config::CorsOrigins::List(vec!["http://good.example".into()]))
            .await
    else {
        return;
    };
    let preflight = |origin: &'static str| {
        app.client
            .request(reqwest::Method::OPTIONS, app.url("/sync"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .send()
    };
    let allowed = preflight("http://good.example").await.expect("sent");
    assert_eq!(allowed.headers()["access-control-allow-origin"], "http://good.example");
    let refused = preflight("http://evil.example").await.expect("sent");
    assert!(!refused.headers().contains_key("access-control-allow-origin"));
}
