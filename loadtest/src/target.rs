//! Requests against the service: one HTTP client with a connection pool sized to the
//! concurrency (connections are reused), the servers to send to in turn, and the request maker
//! for each mode. Each request does as little as it can: URLs are parsed once, and an answer's
//! body is only parsed when the run uses a field of it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::Bytes;
use reqwest::header::{CONTENT_TYPE, HeaderValue};
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

/// The servers a run sends to, in turn: one, or the replicas of a cluster (`--url` repeated).
/// URLs are parsed once here, not once per request.
#[derive(Debug, Clone)]
pub struct Targets {
    urls: Arc<[reqwest::Url]>,
    next: Arc<AtomicUsize>,
}

impl Targets {
    /// `path` (such as `/async`) on every base URL.
    pub fn new(base_urls: &[String], path: &str) -> Result<Self, url::ParseError> {
        let urls = base_urls
            .iter()
            .map(|base| reqwest::Url::parse(&format!("{}{path}", base.trim_end_matches('/'))))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            urls: urls.into(),
            next: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// The next URL, round robin.
    fn pick(&self) -> reqwest::Url {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        self.urls[n % self.urls.len()].clone()
    }
}

/// Which fields of a 2xx answer a run uses; the body is only parsed when one is asked for.
/// Error answers are always read for their problem `type`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reads {
    /// To match callbacks to acknowledgements.
    pub request_id: bool,
    /// The sync run's server-reported engine time.
    pub execution_time: bool,
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

/// POSTs `body` (already serialised JSON) to the targets, one per call.
pub fn post_json(client: reqwest::Client, targets: Targets, body: Bytes, reads: Reads) -> Shoot {
    Arc::new(move || {
        let (client, url, body) = (client.clone(), targets.pick(), body.clone());
        Box::pin(async move {
            let response = client
                .post(url)
                .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
                .body(body)
                .send()
                .await;
            match response {
                Ok(response) => {
                    let status = response.status();
                    let wanted = !status.is_success() || reads.request_id || reads.execution_time;
                    let body = response.bytes().await;
                    let answer = body
                        .ok()
                        .filter(|_| wanted)
                        .and_then(|b| serde_json::from_slice::<Answer>(&b).ok());
                    Shot {
                        status: Some(status.as_u16()),
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

/// GETs the targets once per call (for measuring the tool itself against any endpoint).
pub fn get(client: reqwest::Client, targets: Targets) -> Shoot {
    Arc::new(move || {
        let (client, url) = (client.clone(), targets.pick());
        Box::pin(async move {
            match client.get(url).send().await {
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
