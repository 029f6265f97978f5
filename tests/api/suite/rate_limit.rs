//! The per-IP rate limit: burst, 429 shape, exemption.

use super::helpers::{problem, spawn_app_with, trust_loopback_proxy};

#[tokio::test]
async fn the_burst_passes_and_one_more_request_gets_exactly_one_429() {
    let Some(app) = spawn_app_with(|c| {
        c.rate_limit_requests = 5;
        trust_loopback_proxy(c);
    })
    .await
    else {
        return;
    };

    let mut remaining = Vec::new();
    for _ in 0..5 {
        let response = app.get("/requests").await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["x-ratelimit-limit"], "5");
        remaining.push(
            response.headers()["x-ratelimit-remaining"]
                .to_str()
                .expect("ascii")
                .to_owned(),
        );
    }
    let refused = app.get("/requests").await;

    assert_eq!(remaining, ["4", "3", "2", "1", "0"]);
    let headers = refused.headers().clone();
    let (status, body) = problem(refused).await;
    assert_eq!(status, 429);
    assert_eq!(body["type"], "urn:sync-async:problem:rate-limited");
    let retry_after: u64 = headers["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("integer");
    assert!(retry_after >= 1);
    assert_eq!(headers["x-ratelimit-limit"], "5");
    assert_eq!(headers["x-ratelimit-remaining"], "0");
    // Read as another client: this one has used its budget.
    let metrics: serde_json::Value = app
        .client
        .get(app.url("/metrics"))
        .header("x-forwarded-for", "192.0.2.1")
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    assert_eq!(metrics["rate_limited"], 1);
}

#[tokio::test]
async fn health_checks_are_never_rate_limited() {
    let Some(app) = spawn_app_with(|c| c.rate_limit_requests = 2).await else {
        return;
    };
    for _ in 0..10 {
        assert_eq!(app.get("/healthz").await.status(), 200);
    }
    assert_eq!(app.get("/").await.status(), 200, "health checks did not use the burst");
}

#[tokio::test]
async fn forwarded_for_is_ignored_unless_the_peer_is_a_trusted_proxy() {
    let Some(app) = spawn_app_with(|c| c.rate_limit_requests = 1).await else {
        return;
    };
    let send = |ip: &'static str| app.client.get(app.url("/")).header("x-forwarded-for", ip).send();
    assert_eq!(send("198.51.100.1").await.expect("sent").status(), 200);
    assert_eq!(
        send("198.51.100.2").await.expect("sent").status(),
        429,
        "a spoofed header must not reset the limit"
    );

    let Some(trusting) = spawn_app_with(|c| {
        c.rate_limit_requests = 1;
        trust_loopback_proxy(c);
    })
    .await
    else {
        return;
    };
    let send = |ip: &'static str| {
        trusting
            .client
            .get(trusting.url("/"))
            .header("x-forwarded-for", ip)
            .send()
    };
    assert_eq!(send("198.51.100.1").await.expect("sent").status(), 200);
    assert_eq!(send("198.51.100.2").await.expect("sent").status(), 200);
    assert_eq!(send("198.51.100.1").await.expect("sent").status(), 429);
}
