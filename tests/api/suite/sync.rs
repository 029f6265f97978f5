//! `POST /sync`: results, saturation, timeouts, disconnects.

use std::time::Duration;

use serde_json::{Value, json};

use super::helpers::{own_replica_row, problem, quick_payload, slow_payload, spawn_app, spawn_app_with, wait_until};

#[tokio::test]
async fn sync_returns_the_result_and_stores_a_done_row() {
    let Some(app) = spawn_app().await else { return };

    let response = app
        .post_json(
            "/sync",
            &json!({"payload": {"operation": "prime", "complexity": 3, "data": {"n": 1000}}}),
        )
        .await;

    assert_eq!(response.status(), 200);
    assert!(response.headers().contains_key("x-request-id"));
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["status"], "done");
    assert_eq!(body["result"], json!({"n": 1000, "prime": 7919}));
    assert_eq!(body["error"], Value::Null);
    assert!(body["execution_time_ms"].as_f64().is_some_and(|ms| ms >= 0.0));
    let id = body["request_id"].as_str().expect("id");
    let stored = app.get_json(&format!("/requests/{id}")).await;
    assert_eq!(stored["status"], "done");
    assert_eq!(stored["mode"], "sync");
    assert_eq!(stored["result"], body["result"]);
    assert!(stored["completed_at"].is_string() && stored["started_at"].is_string());
}

#[tokio::test]
async fn the_same_payload_always_gives_the_same_result() {
    let Some(app) = spawn_app().await else { return };
    let payloads = [
        json!({"operation": "hash", "complexity": 1, "data": {"input": "abc"}}),
        json!({"operation": "matrix", "complexity": 1, "data": {"size": 3}}),
        json!({"operation": "transform", "complexity": 1, "data": {"items": [1, "ab", {"k": true}, [null, 2]]}}),
    ];
    for payload in payloads {
        let body = json!({"payload": payload});
        let first: Value = app.post_json("/sync", &body).await.json().await.expect("json");
        let second: Value = app.post_json("/sync", &body).await.json().await.expect("json");
        assert_eq!(first["status"], "done", "{first}");
        assert_eq!(first["result"], second["result"]);
        assert_ne!(first["request_id"], second["request_id"]);
    }
}

#[tokio::test]
async fn a_busy_server_answers_503_at_once_and_stores_nothing() {
    let Some(app) = spawn_app_with(|c| c.max_sync_concurrency = 1).await else {
        return;
    };
    let holder = {
        let (client, url) = (app.client.clone(), app.url("/sync"));
        tokio::spawn(async move { client.post(url).json(&json!({"payload": slow_payload()})).send().await })
    };
    wait_until("the slow request holds the only slot and is stored", || async {
        app.state.sync_in_flight() == 1 && app.metrics().await["total_requests"] == 1
    })
    .await;

    let response = app.post_json("/sync", &json!({"payload": quick_payload()})).await;

    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().expect("ascii").to_owned());
    let (status, body) = problem(response).await;
    assert_eq!(status, 503);
    assert_eq!(body["type"], "urn:sync-async:problem:sync-saturated");
    assert!(retry_after.and_then(|v| v.parse::<u64>().ok()).is_some_and(|s| s >= 1));
    let metrics = app.metrics().await;
    assert_eq!(metrics["sync"]["rejected"], 1);
    assert_eq!(metrics["sync"]["in_flight"], 1);
    let own = own_replica_row(&metrics);
    assert_eq!(
        own["sync_in_flight"], 1,
        "this replica's row is live, not its last heartbeat: {own}"
    );
    assert_eq!(metrics["total_requests"], 1, "only the slow request is stored");
    holder.abort();
}

#[tokio::test]
async fn a_client_that_disconnects_cancels_its_work_and_the_row_ends_failed() {
    let Some(app) = spawn_app_with(|c| c.max_sync_concurrency = 1).await else {
        return;
    };
    let holder = {
        let (client, url) = (app.client.clone(), app.url("/sync"));
        tokio::spawn(async move { client.post(url).json(&json!({"payload": slow_payload()})).send().await })
    };
    wait_until("the slow request is running", || async {
        app.state.sync_in_flight() == 1
    })
    .await;

    holder.abort();

    wait_until("the slot is free again", || async { app.state.sync_in_flight() == 0 }).await;
    wait_until("the row is failed", || async {
        let page = app.get_json("/requests?mode=sync").await;
        page["requests"][0]["status"] == "failed"
    })
    .await;
    let page = app.get_json("/requests").await;
    assert!(
        page["requests"][0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("cancelled")),
        "{page}"
    );
}

#[tokio::test]
async fn work_past_the_timeout_gets_504_and_its_cpu_is_already_free() {
    let Some(app) = spawn_app_with(|c| c.work_timeout = Duration::from_millis(300)).await else {
        return;
    };

    let response = app.post_json("/sync", &json!({"payload": slow_payload()})).await;

    let (status, body) = problem(response).await;
    assert_eq!(status, 504);
    let id = body["request_id"].as_str().expect("504 names the request").to_owned();
    // The engine is awaited before the 504 is sent: nothing is left running or holding a slot.
    assert_eq!(app.prometheus("sync_async_engine_running").await, 0.0);
    assert_eq!(app.state.sync_in_flight(), 0);
    let stored = app.get_json(&format!("/requests/{id}")).await;
    assert_eq!(stored["status"], "failed");
    assert!(
        stored["error"].as_str().is_some_and(|e| e.contains("timed out")),
        "{stored}"
    );
    let text = app.get("/metrics/prometheus").await.text().await.expect("text");
    assert!(
        text.contains(r#"sync_async_engine_runs_total{mode="sync",outcome="timeout"} 1"#),
        "{text}"
    );
    assert!(
        text.contains("sync_async_engine_cancel_latency_seconds_count 1"),
        "{text}"
    );
}

#[tokio::test]
async fn a_graceful_stop_lets_an_in_flight_sync_request_finish() {
    let Some(app) = spawn_app().await else { return };
    let in_flight = {
        let (client, url) = (app.client.clone(), app.url("/sync"));
        let body = json!({"payload": {"operation": "prime", "complexity": 2}});
        tokio::spawn(async move { client.post(url).json(&body).send().await })
    };
    wait_until("the request is running", || async { app.state.sync_in_flight() == 1 }).await;
    let (base_url, config, _dir, _database) = (
        app.base_url.clone(),
        app.config.clone(),
        app.dir.clone(),
        app.database.clone(),
    );

    app.stop().await;

    let response = in_flight
        .await
        .expect("joined")
        .expect("answered before the server stopped");
    assert_eq!(response.status(), 200);
    let refused = reqwest::get(format!("{base_url}/healthz")).await;
    assert!(refused.is_err(), "the listener is closed after a stop");
    let store = super::helpers::open_store(&config).await;
    let summary = store.summary().await.expect("summary");
    assert_eq!(summary.count(None, Some(sync_async::model::Status::Done)), 1);
    store.close().await;
}
