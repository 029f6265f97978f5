//! `GET /requests` filters and pagination, `GET /requests/{id}`.

use serde_json::{Value, json};
use sync_async::db::requests::{self, NewRequest};
use sync_async::model::{Mode, Status};

use crate::helpers::{TestApp, problem, quick_payload, spawn_app};

/// Stores rows straight through the store's own insert: the same code the API uses.
async fn seed(app: &TestApp, mode: Mode, status: Status, created_at: &str) -> String {
    let id = sync_async::submission::new_request_id();
    let payload = quick_payload();
    let row = NewRequest {
        id: &id,
        mode,
        payload: &payload,
        status,
        callback_url: None,
        created_at,
        started_at: None,
        client_ip: "127.0.0.1",
    };
    requests::insert(&app.state.db, &row).await.expect("insert");
    id
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
    let app = spawn_app().await;
    let a = seed(&app, Mode::Sync, Status::Done, "2026-01-01T00:00:01.000Z").await;
    let b = seed(&app, Mode::Async, Status::Pending, "2026-01-01T00:00:02.000Z").await;
    let c = seed(&app, Mode::Async, Status::Done, "2026-01-01T00:00:03.000Z").await;
    let d = seed(&app, Mode::Sync, Status::Failed, "2026-01-01T00:00:04.000Z").await;

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
    let sync_failed = app.get_json("/requests?mode=sync&status=failed").await;
    assert_eq!(ids(&sync_failed), vec![d.clone()]);

    let page2 = app.get_json("/requests?limit=2&offset=2").await;
    assert_eq!(page2["total"], 4);
    assert_eq!(ids(&page2), vec![b, a]);
    let past_end = app.get_json("/requests?limit=2&offset=10").await;
    assert_eq!((past_end["total"].clone(), ids(&past_end).len()), (json!(4), 0));
}

#[tokio::test]
async fn bad_filters_are_422() {
    let app = spawn_app().await;
    for query in [
        "mode=batch",
        "status=running",
        "limit=0",
        "limit=101",
        "limit=ten",
        "offset=-1",
        "page=2",
    ] {
        let (status, body) = problem(app.get(&format!("/requests?{query}")).await).await;
        assert_eq!(status, 422, "{query}: {body}");
    }
}

#[tokio::test]
async fn a_request_record_has_every_field_and_never_the_client_ip() {
    let app = spawn_app().await;
    let id = seed(&app, Mode::Sync, Status::Done, "2026-01-01T00:00:01.000Z").await;
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
async fn metrics_totals_follow_inserts_and_status_changes() {
    let app = spawn_app().await;
    let id = seed(&app, Mode::Async, Status::Processing, "2026-01-01T00:00:01.000Z").await;
    seed(&app, Mode::Sync, Status::Done, "2026-01-01T00:00:02.000Z").await;
    let before = app.metrics().await;
    assert_eq!(before["by_status"]["processing"], 1);

    let outcome = serde_json::json!({"n": 1});
    let done = requests::Completion {
        status: Status::Done,
        result: Some(&outcome),
        error: None,
        completed_at: "2026-01-01T00:00:03.000Z",
        execution_time_ms: Some(40.0),
    };
    requests::complete(&app.state.db, &id, &done).await.expect("complete");

    let after = app.metrics().await;
    assert_eq!(after["total_requests"], 2);
    assert_eq!(
        after["by_status"],
        json!({"pending": 0, "processing": 0, "done": 2, "failed": 0})
    );
    assert_eq!(after["by_mode"], json!({"sync": 1, "async": 1}));
    assert_eq!(after["avg_execution_time_ms"], 40.0, "only the timed done row counts");
}
