//! Durability: the real server binary is killed with SIGKILL mid-work, restarted on the same
//! database, and every accepted job still completes and is delivered (at least once).

use std::collections::HashSet;

use serde_json::{Value, json};
use sync_async::receiver::ReceiverOptions;

use crate::helpers::{TestReceiver, kill_hard, start_server, terminate, wait_until};

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

async fn record(client: &reqwest::Client, addr: &str, id: &str) -> Value {
    client
        .get(format!("http://{addr}/requests/{id}"))
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("json")
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
    assert!(delivered.len() < ids.len(), "the kill came while work was left");

    let (second, addr) = start_server(&env);
    while delivered.len() < ids.len() {
        delivered.insert(receiver.next().await.webhook_id);
    }
    assert_eq!(delivered, ids.iter().cloned().collect::<HashSet<_>>());
    for id in &ids {
        let stored = record(&client, &addr, id).await;
        assert_eq!(stored["status"], "done", "{stored}");
    }
    let metrics: Value = client
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    assert!(
        metrics["queue"]["recovered"].as_u64().is_some_and(|n| n >= 1),
        "{metrics}"
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

    kill_hard(&mut first);
    let (second, addr) = start_server(&[("DATABASE_PATH", db), ("CALLBACK_RETRY_UNIT_MS", "1".to_owned())]);

    assert_eq!(receiver.next().await.webhook_id, id);
    wait_until("the resumed delivery is recorded", || async {
        record(&client, &addr, &id).await["delivery"]["status"] == "delivered"
    })
    .await;
    let stored = record(&client, &addr, &id).await;
    assert_eq!(stored["delivery"]["attempts"], 2);
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
