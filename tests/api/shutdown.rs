//! Shutdown: work submitted once the server has begun to stop gets `503 shutting-down`, not a
//! `429`, and nothing is stored.

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::helpers::{open_store, quick_payload, spawn_app, test_config, wait_until};

/// A request whose handler is running and waiting for its body: its headers asked for
/// `100-continue`, and the server has answered it, which it does when the body is first read.
struct HeldRequest {
    stream: BufReader<TcpStream>,
    body: Vec<u8>,
}

impl HeldRequest {
    async fn start(addr: &str, path: &str, body: &Value) -> Self {
        let body = serde_json::to_vec(body).expect("json");
        let stream = TcpStream::connect(addr).await.expect("connects");
        let mut stream = BufReader::new(stream);
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nexpect: 100-continue\r\n\r\n",
            body.len()
        );
        stream.get_mut().write_all(head.as_bytes()).await.expect("head sent");
        let mut line = String::new();
        stream.read_line(&mut line).await.expect("reads");
        assert!(line.starts_with("HTTP/1.1 100"), "{line}");
        stream.read_line(&mut line).await.expect("reads the blank line");
        Self { stream, body }
    }

    /// Sends the body and reads the whole answer: the status and the problem document.
    async fn finish(mut self) -> (u16, Value) {
        self.stream.get_mut().write_all(&self.body).await.expect("body sent");
        let mut answer = String::new();
        // The server closes the connection after this answer: it is shutting down.
        self.stream.read_to_string(&mut answer).await.expect("reads the answer");
        let status = answer[9..12].parse().expect("a status code");
        let (head, body) = answer.split_once("\r\n\r\n").expect("head and body");
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: application/problem+json"),
            "{head}"
        );
        (status, serde_json::from_str(body).expect("a problem document"))
    }
}

#[tokio::test]
async fn work_submitted_during_shutdown_gets_503_and_nothing_is_stored() {
    let mut app = spawn_app().await;
    let addr = app.base_url.trim_start_matches("http://").to_owned();
    let held_async = HeldRequest::start(&addr, "/async", &json!({"payload": quick_payload()})).await;
    let held_sync = HeldRequest::start(&addr, "/sync", &json!({"payload": quick_payload()})).await;

    app.begin_stop();
    let state = app.state.clone();
    wait_until("shutdown has begun", || {
        let stopping = state.is_stopping();
        async move { stopping }
    })
    .await;
    let (async_status, async_problem) = held_async.finish().await;
    let (sync_status, sync_problem) = held_sync.finish().await;

    for (status, problem) in [(async_status, async_problem), (sync_status, sync_problem)] {
        assert_eq!(status, 503, "{problem}");
        assert_eq!(problem["type"], "urn:sync-async:problem:shutting-down", "{problem}");
        assert_eq!(problem["retry_after"], 5, "{problem}");
    }
    let dir = app.dir.clone();
    app.stop().await;
    let store = open_store(&test_config(&dir)).await;
    assert_eq!(store.summary().await.expect("summary").count(None, None), 0);
    store.close().await;
}
