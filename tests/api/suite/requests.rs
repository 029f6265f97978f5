//! `GET /requests` filters and pagination, `GET /requests/{id}`.

use serde_json::{Value, json};
use std::time::Duration;

use sync_async::model::{Mode, Status};

use super::helpers::{TestApp, problem, quick_payload, slow_payload, spawn_app, spawn_app_with, wait_until};

/// A request made through the API, finished: `done` with quick work, `failed` with work that
/// passes the test app's 300 ms work timeout.
async fn finished(app: &TestApp, mode: Mode, status: Status) -> String {
    let payload = match status {
        Status::Done => quick_payload(),
        _ => slow_payload(),
    };
    let path = match mode {
        Mode::Sync => "/sync",
        Mode::Async => "/async",
    };
    let response = app.post_json(path, &json!({"payload": payload})).await;
    let body: Value = response.json().await.expect("JSON body");
    let id = body["request_id"].as_str().expect("request_id").to_owned();
    app.wait_for(&id, "/status", status.as_str()).await;
    id
}

/// An app whose slow work fails fast.
async fn app_with_short_timeout() -> Option<TestApp> {
    spawn_app_with(|c| c.work_timeout = Duration::from_millis(300)).await
}

fn ids(page: &Value) -> Vec<String> {
    page["requests"]
        .as_array()
        .expect("list")
        .iter()
        .map(|r| r["request_id"].as_str().expect("id").to_owned())
        .collect()
}

#[tokio::test]
async fn requests_are_listed_newest_first_with_filters_and_pages() {
    let Some(app) = app_with_short_timeout().await else {
        return;
    };
    let a = finished(&app, Mode::Sync, Status::Done).await;
    let b = finished(&app, Mode::Async, Status::Failed).await;
    let c = finished(&app, Mode::Async, Status::Done).await;
    let d = finished(&app, Mode::Sync, Status::Failed).await;

    let all = app.get_json("/requests").await;
    assert_eq!(all["total"], 4);
    assert_eq!((all["limit"].clone(), all["offset"].clone()), (json!(50), json!(0)));
    assert_eq!(ids(&all), vec![d.clone(), c.clone(), b.clone(), a.clone()]);

    let asyncs = app.get_json("/requests?mode=async").await;
    assert_eq!(
        (asyncs["total"].clone(), ids(&asyncs)),
        (json!(2), vec![c.clone(), b.clone()])
    );
    let done = app.get_json("/requests?status=done").await;
    assert_eq!(ids(&done), vec![c.clone(), a.clone()]);
    let async_failed = app.get_json("/requests?mode=async&status=failed").await;
    assert_eq!(ids(&async_failed), vec![b.clone()]);
    let sync_failed = app.get_json("/requests?mode=sync&status=failed").await;
    assert_eq!(ids(&sync_failed), vec![d.clone()]);

    // Pages that end past the rows matching: the page holds the rows left, no more and no fewer.
    let done_tail = app.get_json("/requests?status=done&limit=5&offset=1").await;
    assert_eq!(
        (done_tail["total"].clone(), ids(&done_tail)),
        (json!(2), vec![a.clone()])
    );
    let sync_tail = app.get_json("/requests?mode=sync&limit=50&offset=1").await;
    assert_eq!(
        (sync_tail["total"].clone(), ids(&sync_tail)),
        (json!(2), vec![a.clone()])
    );
    let tail = app.get_json("/requests?limit=3&offset=2").await;
    assert_eq!(ids(&tail), vec![b.clone(), a.clone()]);
    let none = app.get_json("/requests?status=pending").await;
    assert_eq!((none["total"].clone(), ids(&none).len()), (json!(0), 0));

    let page2 = app.get_json("/requests?limit=2&offset=2").await;
    assert_eq!(page2["total"], 4);
    assert_eq!(ids(&page2), vec![b, a]);
    let past_end = app.get_json("/requests?limit=2&offset=10").await;
    assert_eq!((past_end["total"].clone(), ids(&past_end).len()), (json!(4), 0));
}

#[tokio::test]
async fn bad_filters_are_422() {
    let Some(app) = spawn_app().await else { return };
    for query in [
        "mode=batch",
        "status=running",
        "limit=0",
        "limit=101",
        "limit=ten",
        "offset=-1",
        "offset=1000001",
        "offset=3000000000",
        "page=2",
    ] {
        let (status, body) = problem(app.get(&format!("/requests?{query}")).await).await;
        assert_eq!(status, 422, "{query}: {body}");
    }
}

#[tokio::test]
async fn a_request_record_has_every_field_and_never_the_client_ip() {
    let Some(app) = spawn_app().await else { return };
    let id = finished(&app, Mode::Sync, Status::Done).await;
    let record = app.get_json(&format!("/requests/{id}")).await;
    for field in [
        "request_id",
        "mode",
        "status",
        "payload",
        "result",
        "error",
        "callback_url",
        "created_at",
        "started_at",
        "completed_at",
        "execution_time_ms",
        "attempts",
        "last_error",
    ] {
        assert!(record.get(field).is_some(), "{field} missing from {record}");
    }
    assert!(record.get("client_ip").is_none());
    assert_eq!(record["payload"], quick_payload());
}

#[tokio::test]
async fn metrics_totals_follow_requests_and_their_status_changes() {
    let Some(app) = app_with_short_timeout().await else {
        return;
    };
    let done = finished(&app, Mode::Async, Status::Done).await;
    finished(&app, Mode::Sync, Status::Failed).await;

    let after = app.metrics().await;
    assert_eq!(after["total_requests"], 2);
    assert_eq!(
        after["by_status"],
        json!({"pending": 0, "processing": 0, "done": 1, "failed": 1})
    );
    assert_eq!(after["by_mode"], json!({"sync": 1, "async": 1}));
    let done_ms = app.get_json(&format!("/requests/{done}")).await["execution_time_ms"].clone();
    assert_eq!(after["avg_execution_time_ms"], done_ms, "only the done row counts");
}

#[tokio::test]
async fn finished_requests_are_deleted_after_the_retention_period() {
    // Purged about a second after they finish (the purge runs every second at this setting).
    let Some(app) = spawn_app_with(|c| c.retention = Some(Duration::from_millis(500))).await else {
        return;
    };
    let (status, accepted) = app.submit_async(&json!({"payload": quick_payload()})).await;
    assert_eq!(status, 202, "{accepted}");
    let id = accepted["request_id"].as_str().expect("id").to_owned();
    app.wait_for(&id, "/status", "done").await;

    wait_until("the finished request is purged", || async {
        app.get(&format!("/requests/{id}")).await.status() == 404
    })
    .await;

    let metrics = app.metrics().await;
    assert!(
        metrics["replica"]["purged"].as_u64().is_some_and(|n| n >= 1),
        "{metrics}"
    );
    assert_eq!(metrics["total_requests"], 0, "{metrics}");
}
