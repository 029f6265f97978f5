//! The dashboard without a browser: pages over real HTTP, the event stream, bursts, access
//! rules, redaction, the requests list and BASE_PATH; with API keys, the sign-in form, its
//! cookie, and what a tenant and the admin see.

use serde_json::{Value, json};
use sync_async::config::{ApiKeys, Secret};
use sync_async_loadtest::receiver::ReceiverOptions;

use crate::helpers::{
    TestApp, TestReceiver, problem, quick_payload, spawn_app, spawn_app_with, trust_loopback_proxy, wait_until,
};

/// A client that does not follow redirects, to see them.
fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

async fn page(app: &TestApp, path: &str) -> (u16, String) {
    let response = app.get(path).await;
    let status = response.status().as_u16();
    (status, response.text().await.expect("html"))
}

async fn snapshot(app: &TestApp, base: &str) -> Value {
    app.get_json(&format!("{base}/dashboard/api/snapshot")).await
}

async fn fire(app: &TestApp, base: &str, order: &Value) -> reqwest::Response {
    app.post_json(&format!("{base}/dashboard/api/burst"), order).await
}

/// Waits until the last burst has every answer back, and returns the snapshot.
async fn burst_finished(app: &TestApp, base: &str) -> Value {
    wait_until("the burst has every answer back", || async {
        snapshot(app, base).await["burst"]["finished"] == true
    })
    .await;
    snapshot(app, base).await
}

fn count(html: &str, needle: &str) -> usize {
    html.matches(needle).count()
}

#[tokio::test]
async fn every_page_is_html_with_a_csp_that_forbids_inline_script() {
    let app = spawn_app().await;

    for path in ["/dashboard", "/dashboard/requests", "/dashboard/demo"] {
        let response = app.get(path).await;
        assert_eq!(response.status(), 200, "{path}");
        let csp = response.headers()["content-security-policy"]
            .to_str()
            .expect("csp")
            .to_owned();
        assert!(
            csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
            "{csp}"
        );
        assert_eq!(response.headers()["x-content-type-options"], "nosniff");
        let html = response.text().await.expect("html");
        assert_eq!(count(&html, "<script"), 1, "one script, by URL: {path}");
        assert!(html.contains("<script src=\"/dashboard/assets/app-"), "{path}");
        for handler in [" onclick=", " onload=", " onerror=", " onchange=", " onsubmit="] {
            assert!(!html.contains(handler), "inline handler {handler} in {path}");
        }
        assert!(html.contains("<label for="), "controls have labels: {path}");
    }
}

#[tokio::test]
async fn the_overview_shows_the_figures_the_json_api_computes() {
    let app = spawn_app_with(|c| {
        c.max_sync_concurrency = 7;
        c.max_queue_size = 33;
    })
    .await;
    let response = app.post_json("/sync", &json!({"payload": quick_payload()})).await;
    assert_eq!(response.status(), 200);

    let (status, html) = page(&app, "/dashboard").await;

    assert_eq!(status, 200);
    assert!(
        html.contains(r#"data-field="metrics.by_status.done" data-testid="requests-done">1<"#),
        "one done request"
    );
    assert!(
        html.contains(r#"data-field="metrics.sync.max">7<"#),
        "sync slots out of 7"
    );
    assert!(
        html.contains(r#"data-field="metrics.queue.max_size">33<"#),
        "backlog out of 33"
    );
    assert!(html.contains(r#"data-testid="chart-throughput""#));
    assert!(html.contains("Replicas on this sqlite database"));
}

#[tokio::test]
async fn the_assets_are_compiled_in_and_cached_by_their_hashed_name() {
    let app = spawn_app().await;
    let (_, html) = page(&app, "/dashboard").await;
    let js_path = html
        .split("<script src=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("script url")
        .to_owned();

    let js = app.get(&js_path).await;
    assert_eq!(js.status(), 200);
    assert_eq!(js.headers()["content-type"], "text/javascript; charset=utf-8");
    assert!(
        js.headers()["cache-control"]
            .to_str()
            .expect("cc")
            .contains("immutable")
    );
    assert!(js.text().await.expect("js").contains("EventSource"));

    let unknown = app.get("/dashboard/assets/app-000000.js").await;
    assert_eq!(problem(unknown).await.0, 404);
}

/// Reads the raw event stream until `n` events named `snapshot` arrived.
async fn read_snapshots(response: reqwest::Response, n: usize) -> Vec<Value> {
    let mut response = response;
    let mut text = String::new();
    let mut events = Vec::new();
    while events.len() < n {
        let chunk = tokio::time::timeout(crate::helpers::PATIENCE, response.chunk())
            .await
            .expect("an event in time")
            .expect("stream readable")
            .expect("stream still open");
        text.push_str(std::str::from_utf8(&chunk).expect("utf-8"));
        while let Some(end) = text.find("\n\n") {
            let block: String = text.drain(..end + 2).collect();
            if block.lines().any(|l| l == "event: snapshot") {
                let data: String = block.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
                events.push(serde_json::from_str(&data).expect("snapshot JSON"));
            }
        }
    }
    events
}

#[tokio::test]
async fn the_event_stream_sends_a_snapshot_at_once_and_then_one_per_interval() {
    let app = spawn_app_with(|c| c.max_sync_concurrency = 4).await;

    let response = app.get("/dashboard/events?every_ms=1000").await;

    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let events = read_snapshots(response, 2).await;
    assert_eq!(events[0]["metrics"]["sync"]["max"], 4);
    assert_eq!(events[0]["rates"]["seconds"], 300);
    assert!(events[1]["at_unix_ms"].as_i64() > events[0]["at_unix_ms"].as_i64());
}

#[tokio::test]
async fn an_interval_the_page_does_not_offer_is_a_422() {
    let app = spawn_app().await;
    for query in ["every_ms=10", "every_ms=soon", "every=1000"] {
        let response = app.get(&format!("/dashboard/events?{query}")).await;
        assert_eq!(problem(response).await.0, 422, "{query}");
    }
}

#[tokio::test]
async fn a_sync_burst_larger_than_the_slots_gets_503s_and_the_rates_count_them() {
    let app = spawn_app_with(|c| c.max_sync_concurrency = 1).await;

    let response = fire(
        &app,
        "",
        &json!({"mode": "sync", "n": 10, "operation": "hash", "complexity": 2}),
    )
    .await;

    assert_eq!(response.status(), 202);
    let started: Value = response.json().await.expect("burst");
    assert_eq!(
        (started["n"].as_u64(), started["finished"].as_bool()),
        (Some(10), Some(false))
    );
    let done = burst_finished(&app, "").await;
    let sync = &done["burst"]["sync"];
    assert_eq!(sync["answered"], 10);
    let busy = sync["by_status"]["503"].as_u64().unwrap_or(0);
    let served = sync["by_status"]["200"].as_u64().unwrap_or(0);
    assert!(busy > 0 && served > 0 && busy + served == 10, "{sync}");
    wait_until("the per-second series count the 503s", || async {
        let rates = snapshot(&app, "").await["rates"]["sync"].clone();
        rates
            .as_array()
            .expect("seconds")
            .iter()
            .map(|s| s["busy"].as_u64().unwrap_or(0))
            .sum::<u64>()
            == busy
    })
    .await;
}

#[tokio::test]
async fn an_async_burst_is_accepted_and_its_completion_is_measured() {
    let app = spawn_app_with(|c| c.num_workers = 2).await;

    let response = fire(
        &app,
        "",
        &json!({"mode": "async", "n": 10, "operation": "prime", "complexity": 1}),
    )
    .await;

    assert_eq!(response.status(), 202);
    burst_finished(&app, "").await;
    wait_until("every job of the burst is finished and timed", || async {
        let burst = snapshot(&app, "").await["burst"]["async"].clone();
        burst["by_status"]["202"] == 10 && burst["completed"] == 10
    })
    .await;
    let burst = &snapshot(&app, "").await["burst"]["async"];
    assert!(
        burst["completion"]["p50"].as_f64().is_some_and(|ms| ms > 0.0),
        "{burst}"
    );
    assert!(burst["latency"]["p95"].as_f64().is_some(), "{burst}");
}

#[tokio::test]
async fn a_second_burst_while_one_runs_is_a_409() {
    let app = spawn_app_with(|c| {
        c.max_sync_concurrency = 1;
        c.work_timeout = std::time::Duration::from_millis(1500);
    })
    .await;
    let slow = json!({"mode": "sync", "n": 2, "operation": "hash", "complexity": 10});
    assert_eq!(fire(&app, "", &slow).await.status(), 202);

    let second = fire(&app, "", &slow).await;

    let (status, body) = problem(second).await;
    assert_eq!(status, 409);
    assert!(
        body["detail"].as_str().is_some_and(|d| d.contains("already running")),
        "{body}"
    );
}

#[tokio::test]
async fn burst_orders_out_of_range_are_refused_with_a_problem() {
    let app = spawn_app().await;
    let cases = [
        (
            json!({"mode": "sync", "n": 201, "operation": "hash", "complexity": 1}),
            422,
        ),
        (
            json!({"mode": "sync", "n": 0, "operation": "hash", "complexity": 1}),
            422,
        ),
        (
            json!({"mode": "batch", "n": 10, "operation": "hash", "complexity": 1}),
            422,
        ),
        (
            json!({"mode": "sync", "n": 10, "operation": "sleep", "complexity": 1}),
            422,
        ),
        (
            json!({"mode": "sync", "n": 10, "operation": "hash", "complexity": 11}),
            422,
        ),
        (json!({"mode": "sync", "n": 10, "operation": "hash"}), 422),
    ];
    for (order, expected) in cases {
        assert_eq!(problem(fire(&app, "", &order).await).await.0, expected, "{order}");
    }
    let not_json = app
        .client
        .post(app.url("/dashboard/api/burst"))
        .body("n=10")
        .send()
        .await
        .expect("sent");
    assert_eq!(problem(not_json).await.0, 415);
}

#[tokio::test]
async fn a_remote_client_may_read_but_not_act() {
    let app = spawn_app_with(trust_loopback_proxy).await;
    let remote = |req: reqwest::RequestBuilder| req.header("x-forwarded-for", "203.0.113.5");

    let html = remote(app.client.get(app.url("/dashboard/demo")))
        .send()
        .await
        .expect("sent")
        .text()
        .await
        .expect("html");
    assert!(html.contains(r#"data-testid="read-only""#) && html.contains("203.0.113.5"));
    assert!(html.contains(r#"data-testid="fire-sync" disabled"#));
    assert!(html.contains(r#"data-can-act="false""#));

    let burst = remote(app.client.post(app.url("/dashboard/api/burst")))
        .json(&json!({"mode": "sync", "n": 10, "operation": "hash", "complexity": 1}))
        .send()
        .await
        .expect("sent");
    assert_eq!(problem(burst).await.0, 403);
    let redeliver = remote(app.client.post(app.url("/dashboard/api/requests/any/redeliver")))
        .send()
        .await
        .expect("sent");
    assert_eq!(problem(redeliver).await.0, 403);

    let (_, local) = page(&app, "/dashboard/demo").await;
    assert!(local.contains(r#"data-can-act="true""#) && !local.contains(r#"data-testid="read-only""#));
}

#[tokio::test]
async fn an_action_another_site_makes_a_local_browser_send_is_refused() {
    let app = spawn_app().await;
    let response = app
        .client
        .post(app.url("/dashboard/api/burst"))
        .header("sec-fetch-site", "cross-site")
        .header("origin", "https://evil.example")
        .json(&json!({"mode": "sync", "n": 10, "operation": "hash", "complexity": 1}))
        .send()
        .await
        .expect("sent");
    let (status, body) = problem(response).await;
    assert_eq!(status, 403);
    assert!(
        body["detail"].as_str().is_some_and(|d| d.contains("another site")),
        "{body}"
    );
}

/// Submits `n` quick sync requests and returns their ids, oldest first.
async fn sync_requests(app: &TestApp, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for _ in 0..n {
        let body: Value = app
            .post_json("/sync", &json!({"payload": quick_payload()}))
            .await
            .json()
            .await
            .expect("json");
        ids.push(body["request_id"].as_str().expect("id").to_owned());
    }
    ids
}

#[tokio::test]
async fn the_requests_list_filters_and_pages_by_keyset_newest_first() {
    let app = spawn_app().await;
    let ids = sync_requests(&app, 3).await;
    let (status, _) = app.submit_async(&json!({"payload": quick_payload()})).await;
    assert_eq!(status, 202);

    let (_, all) = page(&app, "/dashboard/requests").await;
    let (_, sync_only) = page(&app, "/dashboard/requests?mode=sync&status=&delivery=").await;
    let (_, older) = page(&app, &format!("/dashboard/requests?mode=sync&before={}", ids[2])).await;

    assert_eq!(count(&all, r#"data-testid="request-row""#), 4);
    assert_eq!(count(&sync_only, r#"data-testid="request-row""#), 3);
    assert!(sync_only.contains("3 matching"));
    assert!(sync_only.find(&ids[2]) < sync_only.find(&ids[0]), "newest first");
    assert_eq!(count(&older, r#"data-testid="request-row""#), 2);
    assert!(
        !older.contains(&format!(">{}<", ids[2])),
        "the cursor row is not repeated"
    );
    assert!(older.contains(r#"data-testid="page-newest""#));
    // The statuses read through indexes of their own, after a cursor too (nothing is in flight
    // or waiting now).
    for status in ["pending", "processing", "failed"] {
        let (code, html) = page(&app, &format!("/dashboard/requests?status={status}&before={}", ids[2])).await;
        assert_eq!(
            (code, count(&html, r#"data-testid="request-row""#)),
            (200, 0),
            "{status}"
        );
    }
}

#[tokio::test]
async fn the_delivery_filter_finds_failed_deliveries() {
    let app = spawn_app_with(|c| c.max_callback_retries = 0).await;
    let receiver = TestReceiver::start(ReceiverOptions {
        fail_first: 1,
        ..ReceiverOptions::default()
    })
    .await;
    let failed = app.submit_with_callback(&receiver.url()).await;
    app.wait_for(&failed, "/delivery/status", "failed").await;
    sync_requests(&app, 1).await;

    let (_, html) = page(&app, "/dashboard/requests?delivery=failed").await;

    assert_eq!(count(&html, r#"data-testid="request-row""#), 1);
    assert!(html.contains(&failed));
    let bad = app.get("/dashboard/requests?delivery=lost").await;
    assert_eq!(problem(bad).await.0, 422);
}

#[tokio::test]
async fn go_to_id_opens_a_known_request_and_says_so_for_an_unknown_one() {
    let app = spawn_app().await;
    let id = sync_requests(&app, 1).await.remove(0);

    let known = no_redirects()
        .get(app.url(&format!("/dashboard/requests?id={id}")))
        .send()
        .await
        .expect("sent");
    assert_eq!(known.status(), 303);
    assert_eq!(known.headers()["location"], format!("/dashboard/requests/{id}"));

    let (status, html) = page(&app, "/dashboard/requests?id=no-such-id").await;
    assert_eq!(status, 404);
    assert!(html.contains("No request has id no-such-id."));
}

#[tokio::test]
async fn the_request_page_shows_the_timeline_and_attempts_and_redacts_the_callback() {
    let app = spawn_app().await;
    let mut receiver = TestReceiver::reliable().await;
    let id = app
        .submit_with_callback(&format!("{}?token=s3cret-value", receiver.url()))
        .await;
    receiver.next().await;
    app.wait_for(&id, "/delivery/status", "delivered").await;

    let (status, html) = page(&app, &format!("/dashboard/requests/{id}")).await;

    assert_eq!(status, 200);
    assert!(!html.contains("s3cret-value"), "the token never reaches the page");
    assert!(html.contains("?…"));
    for step in ["accepted", "queued", "running", "done", "delivering", "delivered"] {
        assert!(
            html.contains(&format!(r#"<li class="done" data-testid="step-{step}">"#)),
            "{step} has happened"
        );
    }
    assert_eq!(count(&html, r#"data-testid="attempt-row""#), 1);
    assert!(html.contains(r#"data-testid="redeliver""#) && html.contains("Only a failed delivery"));
    let unknown = app.get("/dashboard/requests/nope").await;
    assert_eq!(problem(unknown).await.0, 404);
}

#[tokio::test]
async fn redeliver_from_the_dashboard_starts_a_new_round_that_adds_an_attempt() {
    let app = spawn_app_with(|c| c.max_callback_retries = 0).await;
    let mut receiver = TestReceiver::start(ReceiverOptions {
        fail_first: 1,
        ..ReceiverOptions::default()
    })
    .await;
    let id = app.submit_with_callback(&receiver.url()).await;
    app.wait_for(&id, "/delivery/status", "failed").await;
    let (_, html) = page(&app, &format!("/dashboard/requests/{id}")).await;
    assert!(
        html.contains(r#"<li class="done failed" data-testid="step-delivery failed">"#),
        "the failed delivery stands out in the timeline"
    );

    let response = app
        .client
        .post(app.url(&format!("/dashboard/api/requests/{id}/redeliver")))
        .send()
        .await
        .expect("sent");

    assert_eq!(response.status(), 202);
    receiver.next().await;
    wait_until("the second attempt is listed", || async {
        let figures = app.get_json(&format!("/dashboard/api/requests/{id}")).await;
        figures["delivery"] == "delivered" && figures["attempts"].as_array().is_some_and(|a| a.len() == 2)
    })
    .await;
    let again = app
        .client
        .post(app.url(&format!("/dashboard/api/requests/{id}/redeliver")))
        .send()
        .await
        .expect("sent");
    assert_eq!(problem(again).await.0, 409);
}

#[tokio::test]
async fn under_a_base_path_everything_moves_under_the_prefix() {
    let app = spawn_app_with(|c| c.base_path = "/ops".to_owned()).await;

    let (status, html) = page(&app, "/ops/dashboard").await;
    assert_eq!(status, 200);
    assert!(html.contains(r#"<script src="/ops/dashboard/assets/app-"#));
    assert!(html.contains(r#"href="/ops/dashboard/requests""#));
    assert!(html.contains(r#"data-base="/ops""#));
    assert_eq!(problem(app.get("/dashboard").await).await.0, 404);
    assert_eq!(app.get("/ops/healthz").await.status(), 200);
    assert_eq!(app.get("/ops/docs/").await.status(), 200);
    let spec = app.get_json("/ops/openapi.json").await;
    assert_eq!(spec["servers"][0]["url"], "/ops");

    let burst = fire(
        &app,
        "/ops",
        &json!({"mode": "sync", "n": 3, "operation": "prime", "complexity": 1}),
    )
    .await;
    assert_eq!(burst.status(), 202);
    let done = burst_finished(&app, "/ops").await;
    assert_eq!(
        done["burst"]["sync"]["by_status"]["200"], 3,
        "the burst went to /ops/sync"
    );
    wait_until("the prefixed routes are counted in the rates", || async {
        let rates = snapshot(&app, "/ops").await["rates"]["sync"].clone();
        rates
            .as_array()
            .expect("seconds")
            .iter()
            .map(|s| s["ok"].as_u64().unwrap_or(0))
            .sum::<u64>()
            == 3
    })
    .await;
}

// --- with API keys: sign-in, tenants, the admin ------------------------------------------------

const KEY_A: &str = "tenant-a-key-0123456789";
const KEY_B: &str = "tenant-b-key-0123456789";
const ADMIN: &str = "the-admin-key-0123456789";

fn with_keys(config: &mut sync_async::Config) {
    config.api_keys = ApiKeys {
        tenants: vec![
            ("tenant-a".to_owned(), Secret::new(KEY_A)),
            ("tenant-b".to_owned(), Secret::new(KEY_B)),
        ],
        admin: Some(Secret::new(ADMIN)),
    };
}

/// Submits quick async work as `key`'s owner, with `callback_url` if given; returns its id.
async fn submit_as(app: &TestApp, key: &str, callback_url: Option<&str>) -> String {
    let mut body = json!({"payload": quick_payload()});
    if let Some(url) = callback_url {
        body["callback_url"] = json!(url);
    }
    let response = app
        .client
        .post(app.url("/async"))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 202);
    let accepted: Value = response.json().await.expect("JSON body");
    accepted["request_id"].as_str().expect("request_id").to_owned()
}

async fn page_as(app: &TestApp, key: &str, path: &str) -> (u16, String) {
    let response = app
        .client
        .get(app.url(path))
        .bearer_auth(key)
        .send()
        .await
        .expect("sent");
    let status = response.status().as_u16();
    (status, response.text().await.expect("body"))
}

/// Waits until `id`'s delivery has `status`, read with the admin key.
async fn wait_for_delivery(app: &TestApp, id: &str, status: &str) {
    wait_until(&format!("{id}'s delivery is {status}"), || async {
        let record: Value = app
            .client
            .get(app.url(&format!("/requests/{id}")))
            .bearer_auth(ADMIN)
            .send()
            .await
            .expect("sent")
            .json()
            .await
            .expect("JSON body");
        record["delivery"]["status"] == status
    })
    .await;
}

/// Posts the sign-in form with `key`, as the dashboard's own page would.
async fn sign_in(app: &TestApp, base: &str, key: &str, next: &str) -> reqwest::Response {
    no_redirects()
        .post(app.url(&format!("{base}/dashboard/sign-in")))
        .header("sec-fetch-site", "same-origin")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form_body(&[("key", key), ("next", next)]))
        .send()
        .await
        .expect("sent")
}

/// An `application/x-www-form-urlencoded` body, as a browser posts a form.
fn form_body(pairs: &[(&str, &str)]) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

fn set_cookie(response: &reqwest::Response) -> String {
    response.headers()["set-cookie"].to_str().expect("ascii").to_owned()
}

/// `name=value` of a `Set-Cookie` line, as a browser sends it back.
fn cookie_pair(set_cookie: &str) -> String {
    set_cookie.split(';').next().expect("a pair").to_owned()
}

#[tokio::test]
async fn with_keys_a_page_without_a_key_shows_the_sign_in_form_and_json_gets_a_401_problem() {
    let app = spawn_app_with(with_keys).await;

    let response = app.get("/dashboard/requests?mode=sync").await;

    assert_eq!(response.status(), 401);
    assert!(
        response.headers()["content-security-policy"]
            .to_str()
            .is_ok_and(|csp| csp.contains("script-src 'self'"))
    );
    let html = response.text().await.expect("html");
    assert!(html.contains(r#"data-testid="sign-in-form""#), "{html}");
    assert!(html.contains(r#"<label for="sign-in-key">API key</label>"#));
    assert!(html.contains(r#"type="password""#) && html.contains(r#"data-testid="sign-in-submit""#));
    assert!(html.contains(r#"name="next" value="/dashboard/requests?mode=sync""#));
    assert!(
        !html.contains(r#"data-testid="nav-requests""#),
        "no navigation before signing in"
    );
    for path in ["/dashboard/api/snapshot", "/dashboard/events"] {
        assert_eq!(problem(app.get(path).await).await.0, 401, "{path}");
    }
    let css = html
        .split(r#"<link rel="stylesheet" href=""#)
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("stylesheet url")
        .to_owned();
    assert_eq!(
        app.get(&css).await.status(),
        200,
        "the form's own stylesheet needs no key"
    );
}

#[tokio::test]
async fn a_wrong_key_shows_the_form_again_with_an_error_and_a_401() {
    let app = spawn_app_with(with_keys).await;

    let response = sign_in(&app, "", "not-a-key-of-this-server", "/dashboard").await;

    assert_eq!(response.status(), 401);
    assert!(response.headers().get("set-cookie").is_none());
    let html = response.text().await.expect("html");
    assert!(html.contains(r#"data-testid="sign-in-error""#) && html.contains("not valid"));
    assert!(
        !html.contains("not-a-key-of-this-server"),
        "the key typed is not echoed"
    );
    assert!(html.contains(r#"data-testid="sign-in-form""#));
}

#[tokio::test]
async fn signing_in_sets_a_strict_http_only_dashboard_cookie_without_the_key_and_sign_out_clears_it() {
    let app = spawn_app_with(with_keys).await;
    let mine = submit_as(&app, KEY_A, None).await;
    let theirs = submit_as(&app, KEY_B, None).await;

    let signed_in = sign_in(&app, "", KEY_A, "/dashboard/requests").await;

    assert_eq!(signed_in.status(), 303);
    assert_eq!(signed_in.headers()["location"], "/dashboard/requests");
    let cookie = set_cookie(&signed_in);
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/dashboard;", "Max-Age="] {
        assert!(cookie.contains(flag), "{flag} in {cookie}");
    }
    assert!(!cookie.contains("Secure"), "plain http: no Secure flag");
    assert!(!cookie.contains(KEY_A), "the key is not in the cookie");
    let pair = cookie_pair(&cookie);
    let with_cookie = |path: &str| app.client.get(app.url(path)).header("cookie", pair.clone()).send();

    let list = with_cookie("/dashboard/requests").await.expect("sent");
    assert_eq!(list.status(), 200);
    let html = list.text().await.expect("html");
    assert!(html.contains(&mine) && !html.contains(&theirs), "tenant a's rows only");
    assert!(html.contains(r#"data-testid="signed-in-as">tenant tenant-a<"#));
    assert!(with_cookie("/dashboard/api/snapshot").await.expect("sent").status() == 200);
    assert_eq!(
        problem(with_cookie("/requests").await.expect("sent")).await.0,
        401,
        "the cookie opens the dashboard, never the API"
    );

    let signed_out = no_redirects()
        .post(app.url("/dashboard/sign-out"))
        .header("cookie", pair.clone())
        .send()
        .await
        .expect("sent");
    assert_eq!(signed_out.status(), 303);
    assert_eq!(signed_out.headers()["location"], "/dashboard");
    let cleared = set_cookie(&signed_out);
    assert!(
        cleared.starts_with("sync_async_session=;") && cleared.contains("Max-Age=0"),
        "{cleared}"
    );
    assert!(cleared.contains("Path=/dashboard;"), "{cleared}");
    let (status, html) = {
        let r = app
            .client
            .get(app.url("/dashboard"))
            .header("cookie", cookie_pair(&cleared))
            .send()
            .await
            .expect("sent");
        (r.status().as_u16(), r.text().await.expect("html"))
    };
    assert_eq!(status, 401);
    assert!(html.contains(r#"data-testid="sign-in-form""#));
}

#[tokio::test]
async fn behind_a_trusted_https_proxy_and_a_base_path_the_cookie_is_secure_and_scoped_to_the_prefix() {
    let app = spawn_app_with(|c| {
        with_keys(c);
        trust_loopback_proxy(c);
        c.base_path = "/ops".to_owned();
    })
    .await;

    let response = no_redirects()
        .post(app.url("/ops/dashboard/sign-in"))
        .header("x-forwarded-proto", "https")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form_body(&[("key", ADMIN), ("next", "/ops/dashboard/demo")]))
        .send()
        .await
        .expect("sent");

    assert_eq!(response.status(), 303);
    assert_eq!(response.headers()["location"], "/ops/dashboard/demo");
    let cookie = set_cookie(&response);
    assert!(
        cookie.contains("Path=/ops/dashboard;") && cookie.ends_with("; Secure"),
        "{cookie}"
    );
    let demo = app
        .client
        .get(app.url("/ops/dashboard/demo"))
        .header("cookie", cookie_pair(&cookie))
        .send()
        .await
        .expect("sent");
    assert_eq!(demo.status(), 200);
    let html = demo.text().await.expect("html");
    assert!(html.contains(r#"data-testid="signed-in-as">the admin<"#));
    assert!(
        !html.contains(r#"data-testid="global-figures""#),
        "the admin's figures are all of them"
    );
}

#[tokio::test]
async fn a_sign_in_another_site_sends_is_refused() {
    let app = spawn_app_with(with_keys).await;
    let forged = no_redirects()
        .post(app.url("/dashboard/sign-in"))
        .header("sec-fetch-site", "cross-site")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form_body(&[("key", KEY_A), ("next", "/dashboard")]))
        .send()
        .await
        .expect("sent");
    assert_eq!(problem(forged).await.0, 403);
}

#[tokio::test]
async fn a_tenant_sees_only_its_own_requests_and_another_tenants_request_is_a_404() {
    let app = spawn_app_with(with_keys).await;
    let a1 = submit_as(&app, KEY_A, None).await;
    let a2 = submit_as(&app, KEY_A, None).await;
    let b = submit_as(&app, KEY_B, None).await;

    let (status, list) = page_as(&app, KEY_A, "/dashboard/requests").await;

    assert_eq!(status, 200);
    assert_eq!(count(&list, r#"data-testid="request-row""#), 2);
    assert!(list.contains(&a1) && list.contains(&a2) && !list.contains(&b));
    assert!(list.contains("2 matching"));
    let (status, detail) = page_as(&app, KEY_A, &format!("/dashboard/requests/{a1}")).await;
    assert_eq!(status, 200, "{detail}");
    let other = app
        .client
        .get(app.url(&format!("/dashboard/requests/{b}")))
        .bearer_auth(KEY_A)
        .send()
        .await
        .expect("sent");
    let (status, body) = problem(other).await;
    assert_eq!(status, 404);
    assert_eq!(body["detail"], format!("no request with id {b}"), "the API's own 404");
    let figures = app
        .client
        .get(app.url(&format!("/dashboard/api/requests/{b}")))
        .bearer_auth(KEY_A)
        .send()
        .await
        .expect("sent");
    assert_eq!(problem(figures).await.0, 404);
    let (status, go_to) = page_as(&app, KEY_A, &format!("/dashboard/requests?id={b}")).await;
    assert_eq!(status, 404, "go to id does not reveal another tenant's request");
    assert!(go_to.contains(&format!("No request has id {b}.")));
    let (_, overview) = page_as(&app, KEY_A, "/dashboard").await;
    assert!(
        overview.contains(r#"data-testid="global-figures""#),
        "the overview says its figures are global"
    );

    let (_, everything) = page_as(&app, ADMIN, "/dashboard/requests").await;
    assert_eq!(
        count(&everything, r#"data-testid="request-row""#),
        3,
        "the admin sees every tenant"
    );
}

#[tokio::test]
async fn a_tenant_may_redeliver_its_own_request_from_anywhere_but_not_another_tenants() {
    let app = spawn_app_with(|c| {
        with_keys(c);
        trust_loopback_proxy(c);
        c.max_callback_retries = 0;
    })
    .await;
    let mut receiver = TestReceiver::start(ReceiverOptions {
        fail_first: 1,
        ..ReceiverOptions::default()
    })
    .await;
    let mine = submit_as(&app, KEY_A, Some(&receiver.url())).await;
    let theirs = submit_as(&app, KEY_B, Some(&receiver.url())).await;
    wait_for_delivery(&app, &mine, "failed").await;
    wait_for_delivery(&app, &theirs, "failed").await;
    let redeliver = |id: &str| {
        app.client
            .post(app.url(&format!("/dashboard/api/requests/{id}/redeliver")))
            .bearer_auth(KEY_A)
            // From another machine: with keys, the key decides, not the address.
            .header("x-forwarded-for", "203.0.113.5")
            .send()
    };

    let refused = redeliver(&theirs).await.expect("sent");
    let accepted = redeliver(&mine).await.expect("sent");

    assert_eq!(problem(refused).await.0, 404);
    assert_eq!(accepted.status(), 202);
    receiver.next().await;
    wait_for_delivery(&app, &mine, "delivered").await;
    wait_for_delivery(&app, &theirs, "failed").await;
}

#[tokio::test]
async fn a_tenants_burst_is_stored_as_that_tenants_requests() {
    let app = spawn_app_with(with_keys).await;

    let fired = app
        .client
        .post(app.url("/dashboard/api/burst"))
        .bearer_auth(KEY_A)
        .json(&json!({"mode": "sync", "n": 3, "operation": "prime", "complexity": 1}))
        .send()
        .await
        .expect("sent");

    assert_eq!(fired.status(), 202);
    wait_until("the burst has every answer back", || async {
        let (_, body) = page_as(&app, KEY_A, "/dashboard/api/snapshot").await;
        serde_json::from_str::<Value>(&body).expect("json")["burst"]["finished"] == true
    })
    .await;
    let (_, body) = page_as(&app, KEY_A, "/dashboard/api/snapshot").await;
    let snap: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(snap["burst"]["sync"]["by_status"]["200"], 3, "{}", snap["burst"]);
    let total = |key: &'static str| {
        let app = &app;
        async move {
            let (_, body) = page_as(app, key, "/requests").await;
            serde_json::from_str::<Value>(&body).expect("json")["total"].clone()
        }
    };
    assert_eq!(total(KEY_A).await, 3, "the burst's requests are tenant a's");
    assert_eq!(total(KEY_B).await, 0);
}

#[tokio::test]
async fn completion_percentiles_count_plain_async_jobs_not_only_bursts() {
    let app = spawn_app().await;
    for _ in 0..3 {
        let (status, _) = app.submit_async(&json!({"payload": quick_payload()})).await;
        assert_eq!(status, 202);
    }

    wait_until("three plain async jobs are in the completion percentiles", || async {
        let snap = snapshot(&app, "").await;
        snap["rates"]["last_minute"]["completion"]["count"] == 3
    })
    .await;

    let snap = snapshot(&app, "").await;
    assert!(snap["burst"].is_null(), "no burst was fired");
    let completion = &snap["rates"]["last_minute"]["completion"];
    assert!(completion["p99"].as_f64().is_some(), "{completion}");
}
