//! `POST /async`: acknowledgement, polling, the queue limit, idempotency, the URL policy.

use serde_json::{Value, json};
use sync_async::config::LoopbackCallbacks;

use super::helpers::{
    BACKEND, Backend, TestReceiver, own_replica_row, problem, quick_payload, slow_payload, spawn_app, spawn_app_with,
    trust_loopback_proxy, wait_until,
};

#[tokio::test]
async fn a_job_without_callback_is_acknowledged_then_polled_to_its_result() {
    let Some(app) = spawn_app().await else { return };

    let response = app
        .post_json(
            "/async",
            &json!({"payload": {"operation": "prime", "complexity": 2, "data": {"n": 1000}}}),
        )
        .await;

    assert_eq!(response.status(), 202);
    let location = response.headers()["location"].to_str().expect("ascii").to_owned();
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("integer");
    assert!(retry_after >= 1);
    let body: Value = response.json().await.expect("json");
    let id = body["request_id"].as_str().expect("id");
    assert_eq!(body["status"], "pending");
    assert_eq!(body["status_url"], format!("/requests/{id}"));
    assert_eq!(location, format!("/requests/{id}"));
    let done = app.wait_for(id, "/status", "done").await;
    assert_eq!(done["result"], json!({"n": 1000, "prime": 7919}));
    assert_eq!(done["mode"], "async");
    assert_eq!(done["delivery"], Value::Null, "no callback, no delivery");
    let metrics = app.metrics().await;
    assert_eq!(
        (
            metrics["queue"]["enqueued"].clone(),
            metrics["queue"]["processed"].clone()
        ),
        (json!(1), json!(1))
    );
}

#[tokio::test]
async fn a_full_queue_returns_429_and_stores_nothing() {
    let Some(app) = spawn_app_with(|c| {
        c.num_workers = 1;
        c.max_queue_size = 2;
    })
    .await
    else {
        return;
    };
    let (status, running) = app.submit_async(&json!({"payload": slow_payload()})).await;
    assert_eq!(status, 202);
    wait_until("the only worker is busy", || async {
        app.metrics().await["workers"]["busy"] == 1
    })
    .await;
    for _ in 0..2 {
        assert_eq!(app.submit_async(&json!({"payload": quick_payload()})).await.0, 202);
    }

    let response = app.post_json("/async", &json!({"payload": quick_payload()})).await;

    let retry_after = response.headers().get("retry-after").cloned();
    let (status, body) = problem(response).await;
    assert_eq!(status, 429);
    assert_eq!(body["type"], "urn:sync-async:problem:queue-full");
    assert!(retry_after.is_some());
    let metrics = app.metrics().await;
    assert_eq!(metrics["total_requests"], 3, "the refused job left no row");
    assert_eq!(metrics["by_status"]["pending"], 2);
    assert_eq!(metrics["queue"]["size"], 2);
    assert_eq!(metrics["queue"]["rejected"], 1);
    assert_eq!(
        app.get_json(&format!("/requests/{}", running["request_id"].as_str().expect("id")))
            .await["status"],
        "processing"
    );
}

#[tokio::test]
async fn busy_workers_and_queue_depth_show_in_metrics() {
    let Some(app) = spawn_app_with(|c| c.num_workers = 2).await else {
        return;
    };
    for _ in 0..3 {
        assert_eq!(app.submit_async(&json!({"payload": slow_payload()})).await.0, 202);
    }

    wait_until("both workers are busy", || async {
        app.metrics().await["workers"]["busy"] == 2
    })
    .await;

    let metrics = app.metrics().await;
    assert_eq!(
        metrics["workers"],
        json!({"total": 2, "alive": 2, "busy": 2, "claimed_ahead": 0}),
        "slow jobs are not claimed ahead"
    );
    assert_eq!(metrics["queue"]["size"], 1);
    assert_eq!(metrics["by_status"]["processing"], 2);
    // The heartbeat that wrote this replica's row ran at start, with no worker busy: the
    // cluster's figures show this replica as it is now, not as its row was written.
    assert_eq!(metrics["cluster"]["workers_busy"], 2, "{}", metrics["cluster"]);
    let own = own_replica_row(&metrics);
    assert_eq!(own["workers_busy"], 2, "{own}");
    let text = app.get("/metrics/prometheus").await.text().await.expect("text");
    assert!(text.contains("sync_async_workers_busy 2"), "{text}");
}

/// On SQLite, `/metrics` counts the writer's turns and the time they held it; PostgreSQL has no
/// single writer, and shows nulls.
#[tokio::test]
async fn the_sqlite_writer_shows_its_turns_in_metrics() {
    let Some(app) = spawn_app().await else { return };
    let before = app.metrics().await["storage"].clone();
    let mut ids = Vec::new();
    for _ in 0..5 {
        let (status, body) = app.submit_async(&json!({"payload": quick_payload()})).await;
        assert_eq!(status, 202);
        ids.push(body["request_id"].as_str().expect("id").to_owned());
    }
    for id in &ids {
        app.wait_for(id, "/status", "done").await;
    }

    let after = app.metrics().await["storage"].clone();
    let text = app.get("/metrics/prometheus").await.text().await.expect("text");
    if BACKEND == Backend::Postgres {
        for field in ["writer_turns", "writer_held_seconds", "writer_waited_seconds"] {
            assert_eq!(after[field], Value::Null, "{after}");
        }
        return;
    }
    let turns_before = before["writer_turns"].as_u64().expect("turns before");
    let turns = after["writer_turns"].as_u64().expect("turns");
    // Five acknowledgements, and their jobs claimed and finished: at least one turn each way.
    assert!(turns >= turns_before + 2, "{before} then {after}");
    let held = after["writer_held_seconds"].as_f64().expect("held");
    assert!(
        held > before["writer_held_seconds"].as_f64().expect("held before"),
        "{after}"
    );
    assert!(after["writer_waited_seconds"].as_f64().is_some(), "{after}");
    let line = text
        .lines()
        .find(|l| l.starts_with("sync_async_sqlite_writer_turns "))
        .unwrap_or_else(|| panic!("no writer turns in\n{text}"));
    let shown: u64 = line.rsplit(' ').next().and_then(|n| n.parse().ok()).expect("a count");
    assert!(shown >= turns, "{line}");
    assert!(text.contains("sync_async_sqlite_writer_held_seconds "), "{text}");
}

/// On SQLite, tiny jobs open places for jobs claimed ahead of the workers (CLAIM_AHEAD, by
/// default eight per worker), and a job that runs for longer closes them; a PostgreSQL replica
/// claims only for free workers.
#[tokio::test]
async fn tiny_jobs_are_claimed_ahead_of_the_workers_on_sqlite_only() {
    let Some(app) = spawn_app_with(|c| c.num_workers = 2).await else {
        return;
    };
    let places = if BACKEND == Backend::Sqlite { 16 } else { 0 };
    let tiny = json!({"payload": {"operation": "prime", "complexity": 1, "data": {"n": 1}}});
    let mut ids = Vec::new();
    for _ in 0..3 {
        let (status, body) = app.submit_async(&tiny).await;
        assert_eq!(status, 202);
        ids.push(body["request_id"].as_str().expect("id").to_owned());
    }
    for id in &ids {
        app.wait_for(id, "/status", "done").await;
    }
    assert_eq!(app.metrics().await["workers"]["claimed_ahead"], places);

    let (_, longer) = app
        .submit_async(&json!({"payload": {"operation": "hash", "complexity": 1}}))
        .await;
    let done = app
        .wait_for(longer["request_id"].as_str().expect("id"), "/status", "done")
        .await;

    assert!(done["execution_time_ms"].as_f64().expect("ms") >= 5.0, "{done}");
    assert_eq!(app.metrics().await["workers"]["claimed_ahead"], 0);
    let text = app.get("/metrics/prometheus").await.text().await.expect("text");
    assert!(text.contains("sync_async_claimed_ahead_places 0"), "{text}");
}

#[tokio::test]
async fn the_same_idempotency_key_and_body_replay_the_first_acceptance() {
    let Some(app) = spawn_app().await else { return };
    let body = json!({"payload": quick_payload()});
    let send = || {
        app.client
            .post(app.url("/async"))
            .header("idempotency-key", "order-42")
            .json(&body)
            .send()
    };

    let first = send().await.expect("sent");
    let second = send().await.expect("sent");

    assert_eq!((first.status().as_u16(), second.status().as_u16()), (202, 202));
    assert!(!first.headers().contains_key("idempotent-replayed"));
    assert_eq!(second.headers()["idempotent-replayed"], "true");
    let (a, b): (Value, Value) = (first.json().await.expect("json"), second.json().await.expect("json"));
    assert_eq!(a["request_id"], b["request_id"]);
    assert_eq!(app.metrics().await["total_requests"], 1);
    // Formatting is not part of the body's identity.
    let reformatted = app
        .client
        .post(app.url("/async"))
        .header("idempotency-key", "order-42")
        .header("content-type", "application/json")
        .body(serde_json::to_string_pretty(&body).expect("json"))
        .send()
        .await
        .expect("sent");
    assert_eq!(reformatted.status(), 202);
}

#[tokio::test]
async fn the_same_idempotency_key_with_another_body_is_a_422() {
    let Some(app) = spawn_app().await else { return };
    let send = |payload: Value| {
        app.client
            .post(app.url("/async"))
            .header("idempotency-key", "order-43")
            .json(&json!({"payload": payload}))
            .send()
    };
    assert_eq!(send(quick_payload()).await.expect("sent").status(), 202);

    let (status, body) = problem(send(json!({"operation": "hash", "complexity": 1})).await.expect("sent")).await;

    assert_eq!(status, 422);
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("different request body")),
        "{body}"
    );
    assert_eq!(app.metrics().await["total_requests"], 1);
}

#[tokio::test]
async fn idempotency_keys_are_scoped_per_client() {
    let Some(app) = spawn_app_with(trust_loopback_proxy).await else {
        return;
    };
    let send = |client: &'static str| {
        app.client
            .post(app.url("/async"))
            .header("idempotency-key", "shared-key")
            .header("x-forwarded-for", client)
            .json(&json!({"payload": quick_payload()}))
            .send()
    };
    let a: Value = send("198.51.100.1").await.expect("sent").json().await.expect("json");
    let b: Value = send("198.51.100.2").await.expect("sent").json().await.expect("json");
    assert_ne!(a["request_id"], b["request_id"]);
    let bad = app
        .client
        .post(app.url("/async"))
        .header("idempotency-key", "has space")
        .json(&json!({"payload": quick_payload()}))
        .send();
    assert_eq!(problem(bad.await.expect("sent")).await.0, 400);
}

#[tokio::test]
async fn callback_urls_refused_by_policy_are_a_400_and_store_nothing() {
    let Some(app) = spawn_app_with(|c| c.loopback_callbacks = LoopbackCallbacks::Never).await else {
        return;
    };
    for url in [
        "http://169.254.169.254/latest",
        "ftp://example.com/cb",
        "http://user:pw@example.com/",
        "http://localhost:9000/cb",
        "http://[::ffff:127.0.0.1]/cb",
        "not a url",
    ] {
        let response = app
            .post_json("/async", &json!({"payload": quick_payload(), "callback_url": url}))
            .await;
        let (status, body) = problem(response).await;
        assert_eq!(status, 400, "{url}: {body}");
        assert_eq!(body["type"], "urn:sync-async:problem:callback-url-refused", "{url}");
    }
    assert_eq!(app.metrics().await["total_requests"], 0);
}

#[tokio::test]
async fn async_payloads_are_validated_like_sync_ones() {
    let Some(app) = spawn_app().await else { return };
    let (status, body) = problem(
        app.post_json("/async", &json!({"payload": {"operation": "hash", "complexity": 99}}))
            .await,
    )
    .await;
    assert_eq!(status, 422);
    assert_eq!(body["errors"][0]["pointer"], "/payload/complexity");
    let (status, _) = problem(
        app.post_json("/async", &json!({"payload": quick_payload(), "callback": "typo"}))
            .await,
    )
    .await;
    assert_eq!(status, 422);
    let receiver = TestReceiver::reliable().await;
    assert_eq!(
        app.submit_async(&json!({"payload": quick_payload(), "callback_url": receiver.url()}))
            .await
            .0,
        202
    );
}

#[tokio::test]
async fn concurrent_requests_with_one_idempotency_key_create_one_job() {
    let Some(app) = spawn_app().await else { return };
    let mut sends = tokio::task::JoinSet::new();
    for _ in 0..6 {
        let request = app
            .client
            .post(app.url("/async"))
            .header("idempotency-key", "race")
            .json(&json!({"payload": quick_payload()}));
        sends.spawn(async move { request.send().await });
    }

    let mut ids = std::collections::HashSet::new();
    while let Some(answer) = sends.join_next().await {
        let answer = answer.expect("joined").expect("sent");
        assert_eq!(answer.status(), 202);
        let body: Value = answer.json().await.expect("json");
        ids.insert(body["request_id"].as_str().expect("id").to_owned());
    }

    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_eq!(app.metrics().await["total_requests"], 1);
}

#[tokio::test]
async fn an_expired_idempotency_key_may_be_used_again() {
    let Some(app) = spawn_app_with(|c| c.idempotency_ttl = std::time::Duration::from_millis(10)).await else {
        return;
    };
    let send = || {
        app.client
            .post(app.url("/async"))
            .header("idempotency-key", "short-lived")
            .json(&json!({"payload": quick_payload()}))
            .send()
    };
    let first: Value = send().await.expect("sent").json().await.expect("json");

    // The key's lifetime is what is under test: let it pass.
    tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    let second: Value = send().await.expect("sent").json().await.expect("json");

    assert_ne!(first["request_id"], second["request_id"]);
    assert_eq!(app.metrics().await["total_requests"], 2);
}

#[tokio::test]
async fn an_async_body_over_the_size_limit_is_a_413() {
    let Some(app) = spawn_app_with(|c| c.max_payload_size_kb = 1).await else {
        return;
    };
    let body = json!({"payload": {"operation": "hash", "complexity": 1, "data": {"input": "x".repeat(2_000)}}});
    let (status, _) = problem(app.post_json("/async", &body).await).await;
    assert_eq!(status, 413);
    assert_eq!(app.metrics().await["total_requests"], 0);
}
