//! API keys with tenants: 401s, the open paths, and what each tenant and the admin see, count
//! and share.

use serde_json::{Value, json};

use sync_async::config::{ApiKeys, Secret};
use sync_async_loadtest::receiver::ReceiverOptions;

use super::helpers::{TestApp, TestReceiver, problem, quick_payload, spawn_app_with};

const KEY_A: &str = "tenant-a-key-0123456789";
const KEY_B: &str = "tenant-b-key-0123456789";
const ADMIN: &str = "the-admin-key-0123456789";

fn keys() -> ApiKeys {
    ApiKeys {
        tenants: vec![
            ("tenant-a".to_owned(), Secret::new(KEY_A)),
            ("tenant-b".to_owned(), Secret::new(KEY_B)),
        ],
        admin: Some(Secret::new(ADMIN)),
    }
}

/// An app with two tenants and an admin.
async fn app_with_tenants(customise: impl FnOnce(&mut sync_async::Config)) -> Option<TestApp> {
    spawn_app_with(|c| {
        c.api_keys = keys();
        customise(c);
    })
    .await
}

async fn get_as(app: &TestApp, key: &str, path: &str) -> reqwest::Response {
    app.client
        .get(app.url(path))
        .bearer_auth(key)
        .send()
        .await
        .expect("sent")
}

async fn post_as(app: &TestApp, key: &str, path: &str, body: &Value) -> reqwest::Response {
    app.client
        .post(app.url(path))
        .bearer_auth(key)
        .json(body)
        .send()
        .await
        .expect("sent")
}

/// Submits quick async work as `key`'s owner (with `callback_url` if given); returns its id.
async fn submit_as(app: &TestApp, key: &str, callback_url: Option<&str>) -> String {
    let mut body = json!({"payload": quick_payload()});
    if let Some(url) = callback_url {
        body["callback_url"] = json!(url);
    }
    let response = post_as(app, key, "/async", &body).await;
    assert_eq!(response.status(), 202);
    let accepted: Value = response.json().await.expect("JSON body");
    accepted["request_id"].as_str().expect("request_id").to_owned()
}

/// Polls `/requests/{id}` as `key` until `field` equals `expected`.
async fn wait_for_as(app: &TestApp, key: &str, id: &str, field: &str, expected: &str) {
    let path = format!("/requests/{id}");
    super::helpers::wait_until(&format!("{path} has {field} = {expected}"), || async {
        let record: Value = get_as(app, key, &path).await.json().await.expect("JSON body");
        record.pointer(field).and_then(Value::as_str) == Some(expected)
    })
    .await;
}

fn listed_ids(page: &Value) -> Vec<&str> {
    page["requests"]
        .as_array()
        .expect("requests")
        .iter()
        .map(|r| r["request_id"].as_str().expect("id"))
        .collect()
}

/// The 404 body of `id` with the id taken out, to compare with another id's.
async fn not_found_shape(response: reqwest::Response, id: &str) -> Value {
    let (status, mut body) = problem(response).await;
    assert_eq!(status, 404, "{body}");
    let detail = body["detail"].as_str().expect("detail").replace(id, "<id>");
    body["detail"] = json!(detail);
    body
}

#[tokio::test]
async fn a_missing_or_wrong_key_gets_401_with_a_bearer_challenge() {
    let Some(app) = app_with_tenants(|_| {}).await else {
        return;
    };
    let wrong = "not-a-key-of-this-server";
    let answers = [
        ("no header", app.get("/requests").await),
        ("wrong key", get_as(&app, wrong, "/requests").await),
        (
            "another scheme",
            app.client
                .get(app.url("/requests"))
                .header("authorization", format!("Basic {KEY_A}"))
                .send()
                .await
                .expect("sent"),
        ),
        ("an unknown route", app.get("/no-such-route").await),
        (
            "a submission",
            app.post_json("/async", &json!({"payload": quick_payload()})).await,
        ),
    ];
    for (case, response) in answers {
        assert_eq!(response.headers()["www-authenticate"], "Bearer", "{case}");
        let (status, body) = problem(response).await;
        assert_eq!(status, 401, "{case}: {body}");
        assert_eq!(body["type"], "urn:sync-async:problem:unauthorized", "{case}");
        assert!(
            !body.to_string().contains(wrong) && !body.to_string().contains(KEY_A),
            "{body}"
        );
    }
    let listed: Value = get_as(&app, ADMIN, "/requests").await.json().await.expect("JSON body");
    assert_eq!(listed["total"], 0, "a refused submission stored nothing");
}

#[tokio::test]
async fn health_docs_and_the_spec_need_no_key() {
    let Some(app) = app_with_tenants(|_| {}).await else {
        return;
    };
    for path in ["/healthz", "/docs/", "/docs/swagger-ui.css", "/openapi.json"] {
        assert_eq!(app.get(path).await.status(), 200, "{path}");
    }
    let spec = app.get_json("/openapi.json").await;
    assert_eq!(spec["components"]["securitySchemes"]["api_key"]["scheme"], "bearer");
    assert_eq!(app.get("/metrics").await.status(), 401, "everything else needs a key");
    assert_eq!(get_as(&app, KEY_A, "/metrics").await.status(), 200);
}

#[tokio::test]
async fn a_tenant_lists_and_reads_only_its_own_requests_and_the_admin_sees_all() {
    let Some(app) = app_with_tenants(|_| {}).await else {
        return;
    };
    let a = submit_as(&app, KEY_A, None).await;
    let b = submit_as(&app, KEY_B, None).await;
    let admins = submit_as(&app, ADMIN, None).await;

    let page_a: Value = get_as(&app, KEY_A, "/requests").await.json().await.expect("JSON body");
    let page_b: Value = get_as(&app, KEY_B, "/requests?mode=async")
        .await
        .json()
        .await
        .expect("JSON body");
    let page_admin: Value = get_as(&app, ADMIN, "/requests").await.json().await.expect("JSON body");

    assert_eq!(
        (page_a["total"].clone(), listed_ids(&page_a)),
        (json!(1), vec![a.as_str()])
    );
    assert_eq!(
        (page_b["total"].clone(), listed_ids(&page_b)),
        (json!(1), vec![b.as_str()])
    );
    assert_eq!(page_admin["total"], 3);
    let mut all = listed_ids(&page_admin);
    all.sort_unstable();
    let mut expected = vec![a.as_str(), b.as_str(), admins.as_str()];
    expected.sort_unstable();
    assert_eq!(all, expected);

    assert_eq!(get_as(&app, KEY_A, &format!("/requests/{a}")).await.status(), 200);
    assert_eq!(get_as(&app, ADMIN, &format!("/requests/{a}")).await.status(), 200);
    let unknown = "00000000-0000-7000-8000-000000000000";
    let truly_unknown = not_found_shape(get_as(&app, KEY_B, &format!("/requests/{unknown}")).await, unknown).await;
    for (key, id) in [(KEY_B, &a), (KEY_A, &b), (KEY_A, &admins)] {
        let response = get_as(&app, key, &format!("/requests/{id}")).await;
        assert_eq!(
            not_found_shape(response, id).await,
            truly_unknown,
            "another's request is answered as if it did not exist"
        );
    }
}

#[tokio::test]
async fn another_tenants_attempts_and_redelivery_are_404_and_change_nothing() {
    let Some(app) = app_with_tenants(|c| c.max_callback_retries = 0).await else {
        return;
    };
    // The first delivery fails and, with no retries, the delivery ends failed.
    let receiver = TestReceiver::start(ReceiverOptions {
        fail_first: 1,
        fail_status: 500,
        ..ReceiverOptions::default()
    })
    .await;
    let id = submit_as(&app, KEY_A, Some(&receiver.url())).await;
    wait_for_as(&app, KEY_A, &id, "/delivery/status", "failed").await;
    let attempts = format!("/requests/{id}/attempts");
    let redeliver = format!("/requests/{id}/redeliver");

    let b_attempts = get_as(&app, KEY_B, &attempts).await;
    let b_redeliver = post_as(&app, KEY_B, &redeliver, &json!({})).await;

    assert_eq!(b_attempts.status(), 404);
    assert_eq!(b_redeliver.status(), 404);
    let record: Value = get_as(&app, ADMIN, &format!("/requests/{id}"))
        .await
        .json()
        .await
        .expect("JSON body");
    assert_eq!(
        record["delivery"]["status"], "failed",
        "tenant B started no round: {record}"
    );
    let own: Value = get_as(&app, KEY_A, &attempts).await.json().await.expect("JSON body");
    assert_eq!(own.as_array().map(Vec::len), Some(1), "{own}");
    assert_eq!(get_as(&app, ADMIN, &attempts).await.status(), 200);
    assert_eq!(post_as(&app, KEY_A, &redeliver, &json!({})).await.status(), 202);
    wait_for_as(&app, KEY_A, &id, "/delivery/status", "delivered").await;
}

#[tokio::test]
async fn the_same_idempotency_key_from_two_tenants_makes_two_jobs() {
    let Some(app) = app_with_tenants(|_| {}).await else {
        return;
    };
    let body = json!({"payload": quick_payload()});
    let submit = |key: &'static str| {
        app.client
            .post(app.url("/async"))
            .bearer_auth(key)
            .header("idempotency-key", "order-42")
            .json(&body)
            .send()
    };
    let id_of = |v: Value| v["request_id"].as_str().expect("request_id").to_owned();

    let a = submit(KEY_A).await.expect("sent");
    let b = submit(KEY_B).await.expect("sent");
    let a_again = submit(KEY_A).await.expect("sent");

    let statuses = [a.status(), b.status(), a_again.status()].map(|s| s.as_u16());
    assert_eq!(statuses, [202, 202, 202]);
    assert!(b.headers().get("idempotent-replayed").is_none(), "B's key is its own");
    assert_eq!(a_again.headers()["idempotent-replayed"], "true");
    let (a, b, a_again) = (
        id_of(a.json().await.expect("JSON")),
        id_of(b.json().await.expect("JSON")),
        id_of(a_again.json().await.expect("JSON")),
    );
    assert_ne!(a, b);
    assert_eq!(a, a_again);
    let listed: Value = get_as(&app, ADMIN, "/requests").await.json().await.expect("JSON body");
    assert_eq!(listed["total"], 2);
}

#[tokio::test]
async fn a_tenant_that_uses_its_budget_does_not_limit_another_from_the_same_address() {
    let Some(app) = app_with_tenants(|c| c.rate_limit_requests = 3).await else {
        return;
    };
    for n in 0..3 {
        assert_eq!(get_as(&app, KEY_A, "/requests").await.status(), 200, "request {n}");
    }

    let a_refused = get_as(&app, KEY_A, "/requests").await;
    let b = get_as(&app, KEY_B, "/requests").await;
    let admin = get_as(&app, ADMIN, "/requests").await;

    assert_eq!(a_refused.status(), 429);
    assert_eq!(b.status(), 200, "tenant B has its own budget");
    assert_eq!(b.headers()["x-ratelimit-remaining"], "2");
    assert_eq!(
        admin.status(),
        200,
        "the admin counts by address, which tenant A did not use"
    );
}
