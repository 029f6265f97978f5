//! Durability: the real server binary is killed with SIGKILL mid-work, restarted on the same
//! database, and every accepted job still completes and is delivered (at least once).

use std::collections::HashSet;

use serde_json::{Value, json};
use sync_async::model::{Mode, Status};
use sync_async_loadtest::receiver::ReceiverOptions;

use crate::helpers::{TestReceiver, fetch_json, kill_hard, start_server, terminate, wait_until};

async fn submit(client: &reqwest::Client, addr: &str, body: &Value) -> String {
    let response = client
        .post(format!("http://{addr}/async"))
        .json(body)
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 202);
    let accepted: Value = response.json().await.expect("json");
    accepted["request_id"].as_str().expect("id").to_owned()
}

/// Async rows still `processing`, read straight from the database file.
async fn processing_rows(db: &std::path::Path) -> u64 {
    let config = sync_async::Config {
        database_path: db.to_owned(),
        ..sync_async::Config::default()
    };
    let store = crate::helpers::open_store(&config).await;
    let summary = store.summary().await.expect("summary");
    store.close().await;
    summary.count(Some(Mode::Async), Some(Status::Processing)) as u64
}

/// Async rows not yet `done` or `failed`, read straight from the database file.
async fn unfinished_rows(db: &std::path::Path) -> i64 {
    let config = sync_async::Config {
        database_path: db.to_owned(),
        ..sync_async::Config::default()
    };
    let store = crate::helpers::open_store(&config).await;
    let summary = store.summary().await.expect("summary");
    store.close().await;
    summary.count(Some(Mode::Async), Some(Status::Pending)) + summary.count(Some(Mode::Async), Some(Status::Processing))
}

async fn record(client: &reqwest::Client, addr: &str, id: &str) -> Value {
    fetch_json(client, &format!("http://{addr}/requests/{id}")).await
}

#[tokio::test]
async fn a_kill_9_mid_work_loses_no_accepted_job_and_no_callback() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("requests.db").display().to_string();
    let mut receiver = TestReceiver::reliable().await;
    let env = [
        ("DATABASE_PATH", db),
        ("NUM_WORKERS", "1".to_owned()),
        ("CALLBACK_RETRY_UNIT_MS", "1".to_owned()),
    ];
    let (mut first, addr) = start_server(&env);
    let client = reqwest::Client::new();
    let body = json!({"payload": {"operation": "hash", "complexity": 2}, "callback_url": receiver.url()});
    let mut ids = Vec::new();
    for _ in 0..6 {
        ids.push(submit(&client, &addr, &body).await);
    }
    let first_delivered = receiver.next().await.webhook_id;
    let mut delivered: HashSet<String> = HashSet::from([first_delivered]);

    kill_hard(&mut first);
    let unfinished = unfinished_rows(&dir.path().join("requests.db")).await;
    assert!(unfinished >= 1, "the kill came while jobs were pending or processing");
    // A job the dead server held is rescued at the next start; one still pending needs no rescue.
    let held = processing_rows(&dir.path().join("requests.db")).await;

    let (second, addr) = start_server(&env);
    while delivered.len() < ids.len() {
        delivered.insert(receiver.next().await.webhook_id);
    }
    assert_eq!(delivered, ids.iter().cloned().collect::<HashSet<_>>());
    for id in &ids {
        let stored = record(&client, &addr, id).await;
        assert_eq!(stored["status"], "done", "{stored}");
    }
    let metrics: Value = fetch_json(&client, &format!("http://{addr}/metrics")).await;
    assert!(
        metrics["queue"]["recovered"].as_u64().is_some_and(|n| n >= held),
        "{held} held at the kill: {metrics}"
    );
    terminate(&second);
}

#[tokio::test]
async fn a_kill_9_while_a_retry_is_waiting_resumes_the_delivery_after_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("requests.db").display().to_string();
    let mut receiver = TestReceiver::start(ReceiverOptions {
        fail_first: 1,
        ..ReceiverOptions::default()
    })
    .await;
    // A 300 ms unit puts the first retry 450 to 750 ms after the failed attempt.
    let slow_retry = [
        ("DATABASE_PATH", db.clone()),
        ("CALLBACK_RETRY_UNIT_MS", "300".to_owned()),
    ];
    let (mut first, addr) = start_server(&slow_retry);
    let client = reqwest::Client::new();
    let id = submit(
        &client,
        &addr,
        &json!({"payload": {"operation": "prime", "complexity": 1, "data": {"n": 10}}, "callback_url": receiver.url()}),
    )
    .await;
    wait_until("the first attempt failed and a retry is scheduled", || async {
        let stored = record(&client, &addr, &id).await;
        stored["delivery"]["attempts"] == 1 && stored["delivery"]["status"] == "pending"
    })
    .await;
    let waiting = record(&client, &addr, &id).await;
    assert!(
        waiting["delivery"]["next_attempt_at"].is_string(),
        "a pending retry shows when it is due: {waiting}"
    );
    assert_eq!(
        waiting["delivery"]["last_status_code"], 500,
        "the receiver's simulated failure"
    );

    kill_hard(&mut first);
    let (second, addr) = start_server(&[("DATABASE_PATH", db), ("CALLBACK_RETRY_UNIT_MS", "1".to_owned())]);

    assert_eq!(receiver.next().await.webhook_id, id);
    wait_until("the resumed delivery is recorded", || async {
        record(&client, &addr, &id).await["delivery"]["status"] == "delivered"
    })
    .await;
    let stored = record(&client, &addr, &id).await;
    assert_eq!(stored["delivery"]["attempts"], 2);
    assert_eq!(
        stored["delivery"]["next_attempt_at"],
        Value::Null,
        "nothing is due once delivered"
    );
    terminate(&second);
}

#[tokio::test]
async fn sigterm_finishes_the_job_in_hand_and_leaves_queued_jobs_for_the_next_start() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("requests.db").display().to_string();
    let env = [("DATABASE_PATH", db), ("NUM_WORKERS", "1".to_owned())];
    let (mut first, addr) = start_server(&env);
    let client = reqwest::Client::new();
    let body = json!({"payload": {"operation": "hash", "complexity": 3}});
    let ids = [
        submit(&client, &addr, &body).await,
        submit(&client, &addr, &body).await,
        submit(&client, &addr, &body).await,
    ];
    wait_until("the first job is running", || async {
        record(&client, &addr, &ids[0]).await["status"] == "processing"
    })
    .await;

    terminate(&first);
    let status = tokio::task::spawn_blocking(move || first.wait())
        .await
        .expect("joined")
        .expect("exit status");
    assert!(status.success(), "{status:?}");

    let (second, addr) = start_server(&env);
    assert_eq!(
        record(&client, &addr, &ids[0]).await["status"],
        "done",
        "the job in hand was finished before exit"
    );
    for id in &ids[1..] {
        wait_until("a queued job runs after the restart", || async {
            record(&client, &addr, id).await["status"] == "done"
        })
        .await;
    }
    terminate(&second);
}

#[tokio::test]
async fn sigterm_releases_a_job_that_outlives_the_grace_and_the_next_start_runs_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("requests.db").display().to_string();
    let env = [
        ("DATABASE_PATH", db.clone()),
        ("NUM_WORKERS", "1".to_owned()),
        ("SHUTDOWN_GRACE_SECONDS", "0.05".to_owned()),
    ];
    let (first, addr) = start_server(&env);
    let client = reqwest::Client::new();
    let id = submit(
        &client,
        &addr,
        &json!({"payload": {"operation": "hash", "complexity": 6}}),
    )
    .await;
    wait_until("the job is running", || async {
        record(&client, &addr, &id).await["status"] == "processing"
    })
    .await;

    terminate(&first);
    let status = tokio::task::spawn_blocking(move || {
        let mut first = first;
        first.wait()
    })
    .await
    .expect("joined")
    .expect("exit status");
    assert!(status.success(), "{status:?}");
    assert_eq!(
        unfinished_rows(std::path::Path::new(&db)).await,
        1,
        "released, not finished and not lost"
    );

    let (second, addr) = start_server(&env);
    wait_until("the released job runs after the restart", || async {
        record(&client, &addr, &id).await["status"] == "done"
    })
    .await;
    terminate(&second);
}

#[tokio::test]
async fn a_second_server_on_the_same_database_refuses_to_start() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("requests.db").display().to_string();
    let (first, _) = start_server(&[("DATABASE_PATH", db.clone())]);

    let output = std::process::Command::new(crate::helpers::BIN)
        // Away from the project root: a developer's .env must not change what is tested.
        .current_dir(std::env::temp_dir())
        .env_clear()
        .env("PORT", "0")
        .env("HOST", "127.0.0.1")
        .env("DATABASE_PATH", &db)
        .output()
        .expect("runs");
    terminate(&first);

    // Like any database it cannot use: exit code 2 and one line.
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("another sync-async server is already using"),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_backlog_larger_than_the_queue_drains_completely_after_a_start() {
    let dir = std::sync::Arc::new(tempfile::tempdir().expect("temp dir"));
    let config = sync_async::Config {
        max_queue_size: 2,
        num_workers: 1,
        ..crate::helpers::test_config(&dir)
    };
    let store = crate::helpers::open_store(&config).await;
    let payload = json!({"operation": "prime", "complexity": 1, "data": {"n": 10}});
    for _ in 0..10 {
        let job = sync_async::db::NewJob {
            id: sync_async::submission::new_request_id(),
            payload: payload.clone(),
            callback_url: None,
            client_ip: "127.0.0.1".to_owned(),
            tenant: None,
            created_at: sync_async::db::timestamp(chrono::Utc::now()),
        };
        let accepted = store.accept_job(&job, None, 100).await.expect("accept");
        assert_eq!(accepted, sync_async::db::Accepted::Stored);
    }
    store.close().await;

    let app = crate::helpers::spawn_app_in(dir.clone(), config).await;

    wait_until("all ten waiting jobs are done", || async {
        app.metrics().await["by_status"]["done"] == 10
    })
    .await;
    // They were waiting, not held: nothing needed rescuing.
    assert_eq!(app.metrics().await["queue"]["recovered"], 0);
}
