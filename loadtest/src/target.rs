//! Requests against the service: one HTTP client with a connection pool sized to the
//! concurrency (connections are reused), and the request maker for each mode.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use serde::Deserialize;

use super::runner::{Shoot, Shot};

/// The client every request of a run goes through.
pub fn http_client(concurrency: usize, timeout: Duration) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency.max(1))
        .tcp_nodelay(true)
        .timeout(timeout)
        .no_proxy()
        .build()
}

/// The fields of a `/sync` or `/async` answer the load tester reads.
#[derive(Deserialize)]
struct Answer {
    request_id: Option<String>,
    execution_time_ms: Option<f64>,
    /// An error answer's problem type: it tells a full queue from a rate limit.
    #[serde(rename = "type")]
    problem_type: Option<String>,
}

/// POSTs `body` (already serialised JSON) to `url` once per call.
pub fn post_json(client: reqwest::Client, url: String, body: Bytes) -> Shoot {
    let url: Arc<str> = url.into();
    Arc::new(move || {
        let (client, url, body) = (client.clone(), url.clone(), body.clone());
        Box::pin(async move {
            let response = client
                .post(&*url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await;
            match response {
                Ok(response) => {
                    let status = response.status().as_u16();
                    let answer = response
                        .bytes()
                        .await
                        .ok()
                        .and_then(|b| serde_json::from_slice::<Answer>(&b).ok());
                    Shot {
                        status: Some(status),
                        error_kind: None,
                        request_id: answer.as_ref().and_then(|a| a.request_id.clone()),
                        server_ms: answer.as_ref().and_then(|a| a.execution_time_ms),
                        problem_type: answer.and_then(|a| a.problem_type),
                    }
                }
                Err(e) => Shot {
                    error_kind: Some(error_kind(&e)),
                    ..Shot::default()
                },
            }
        })
    })
}

/// GETs `url` once per call (for measuring the tool itself against any endpoint).
pub fn get(client: reqwest::Client, url: String) -> Shoot {
    let url: Arc<str> = url.into();
    Arc::new(move || {
        let (client, url) = (client.clone(), url.clone());
        Box::pin(async move {
            match client.get(&*url).send().await {
                Ok(response) => {
                    let status = response.status().as_u16();
                    let _ = response.bytes().await;
                    Shot {
                        status: Some(status),
                        ..Shot::default()
                    }
                }
                Err(e) => Shot {
                    error_kind: Some(error_kind(&e)),
                    ..Shot::default()
                },
            }
        })
    })
}

fn error_kind(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else {
        "other"
    }
}
