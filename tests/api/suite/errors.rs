//! Bad input gets a problem+json 4xx, never a 5xx.

use serde_json::{Value, json};

use super::helpers::{problem, spawn_app, spawn_app_with};

#[tokio::test]
async fn malformed_json_is_a_400() {
    let Some(app) = spawn_app().await else { return };
    for body in [
        "{\"payload\": ",
        "not json",
        "{\"payload\": {\"operation\": \"hash\", \"complexity\": 1}} trailing",
    ] {
        let response = app
            .client
            .post(app.url("/sync"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("sent");
        let (status, body_json) = problem(response).await;
        assert_eq!(status, 400, "{body}: {body_json}");
        assert_eq!(body_json["type"], "urn:sync-async:problem:bad-request");
    }
}

#[tokio::test]
async fn a_body_without_a_json_content_type_is_a_415() {
    let Some(app) = spawn_app().await else { return };
    let response = app.client.post(app.url("/sync")).body("{}").send().await.expect("sent");
    let (status, _) = problem(response).await;
    assert_eq!(status, 415);
}

#[tokio::test]
async fn a_body_over_the_size_limit_is_a_413_and_stores_nothing() {
    let Some(app) = spawn_app_with(|c| c.max_payload_size_kb = 1).await else {
        return;
    };
    let input = "x".repeat(2_000);
    let response = app
        .post_json(
            "/sync",
            &json!({"payload": {"operation": "hash", "complexity": 1, "data": {"input": input}}}),
        )
        .await;
    let (status, body) = problem(response).await;
    assert_eq!(status, 413);
    assert!(body["detail"].as_str().is_some_and(|d| d.contains("1 KB")), "{body}");
    assert_eq!(app.metrics().await["total_requests"], 0);
}

#[tokio::test]
async fn invalid_payloads_are_422_with_a_pointer_to_the_field() {
    let Some(app) = spawn_app().await else { return };
    let cases: [(Value, &str); 13] = [
        (
            json!({"payload": {"operation": "hash", "complexity": 0}}),
            "/payload/complexity",
        ),
        (
            json!({"payload": {"operation": "hash", "complexity": 11}}),
            "/payload/complexity",
        ),
        (
            json!({"payload": {"operation": "hash", "complexity": "high"}}),
            "/payload/complexity",
        ),
        (
            json!({"payload": {"operation": "sort", "complexity": 1}}),
            "/payload/operation",
        ),
        (json!({"payload": {"operation": "hash"}}), "/payload"),
        (
            json!({"payload": {"operation": "prime", "complexity": 1, "data": {"n": 0}}}),
            "/payload/data/n",
        ),
        (
            json!({"payload": {"operation": "prime", "complexity": 1, "data": {"n": 4_000_000_000u64}}}),
            "/payload/data/n",
        ),
        (
            json!({"payload": {"operation": "matrix", "complexity": 1, "data": {"size": 5000}}}),
            "/payload/data/size",
        ),
        (
            json!({"payload": {"operation": "hash", "complexity": 1, "data": {"size": 3}}}),
            "/payload/data/size",
        ),
        // Its cost (size^3) overflows u64: it must be refused before the cost is computed.
        (
            json!({"payload": {"operation": "matrix", "complexity": 1, "data": {"size": 4_000_000}}}),
            "/payload/data/size",
        ),
        // An array is not an object, though a derived struct would read it by position.
        (
            json!({"payload": {"operation": "prime", "complexity": 1, "data": [null, null]}}),
            "/payload/data",
        ),
        (
            json!({"payload": {"operation": "transform", "complexity": 1, "data": {"items": [{"a": [1]}]}}}),
            "/payload/data/items/0",
        ),
        (
            json!({"payload": {"operation": "hash", "complexity": 1, "data": {"input": "é".repeat(1025)}}}),
            "/payload/data/input",
        ),
    ];
    for (body, pointer) in cases {
        let response = app.post_json("/sync", &body).await;
        let (status, problem_body) = problem(response).await;
        assert_eq!(status, 422, "{body}: {problem_body}");
        assert_eq!(problem_body["errors"][0]["pointer"], pointer, "{body}: {problem_body}");
    }
    assert_eq!(app.metrics().await["total_requests"], 0, "no invalid request is stored");
}

#[tokio::test]
async fn unknown_fields_are_refused_rather_than_ignored() {
    let Some(app) = spawn_app().await else { return };
    let response = app
        .post_json("/sync", &json!({"payload": {"operation": "hash", "complexty": 5}}))
        .await;
    let (status, body) = problem(response).await;
    assert_eq!(status, 422);
    assert!(
        body["detail"].as_str().is_some_and(|d| d.contains("complexty")),
        "{body}"
    );
}

#[tokio::test]
async fn unknown_paths_and_methods_get_problem_json() {
    let Some(app) = spawn_app().await else { return };
    let (status, _) = problem(app.get("/nope").await).await;
    assert_eq!(status, 404);
    let (status, _) = problem(app.get("/sync").await).await;
    assert_eq!(status, 405);
    let (status, body) = problem(app.get("/requests/does-not-exist").await).await;
    assert_eq!(status, 404);
    assert!(body["detail"].as_str().is_some_and(|d| d.contains("does-not-exist")));
}
