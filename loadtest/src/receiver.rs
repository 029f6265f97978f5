//! The demo callback receiver: `POST /callback` records a callback, `GET /stats` reports totals
//! and recent callbacks, `GET /healthz` answers. It verifies Standard Webhooks signatures when
//! given the secret, and can play an unreliable receiver (failures, a chosen status, delays).
//! One module, used by the `callback-server` binary, the load tester and the integration tests.
//! Its memory is bounded: the last `keep_recent` callbacks, and what it knows of the last
//! `remember_ids` ids (for `fail_first` and de-duplication); the totals are counters.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use sync_async::error::ApiError;
use sync_async::signing::SigningKey;

use crate::recent_ids::RecentIds;

/// How far a `webhook-timestamp` may be from now before the callback is refused as a replay
/// (the Standard Webhooks recommendation).
pub const DEFAULT_TIMESTAMP_TOLERANCE: Duration = Duration::from_secs(300);

/// How the receiver behaves.
#[derive(Debug, Clone)]
pub struct ReceiverOptions {
    /// Verify `webhook-signature` and `webhook-timestamp`; refuse with 401 when they are wrong.
    pub secret: Option<SigningKey>,
    pub timestamp_tolerance: Duration,
    /// The chance that any callback is answered with `fail_status` instead of 200.
    pub fail_rate: f64,
    /// The first this-many deliveries of each callback (by `webhook-id`) fail.
    pub fail_first: u32,
    /// The status of a simulated failure. A 3xx comes with `Location: /callback`.
    pub fail_status: u16,
    /// Sent as `Retry-After` with a simulated failure.
    pub retry_after_secs: Option<u64>,
    /// Wait this long before answering.
    pub delay: Duration,
    /// Print nothing per callback.
    pub quiet: bool,
    /// How many recent callbacks `/stats` shows (a ring: the oldest is dropped).
    pub keep_recent: usize,
    /// How many `webhook-id`s are remembered for `fail_first` and de-duplication. Past that,
    /// the oldest is forgotten, and a redelivery of it counts as new.
    pub remember_ids: usize,
}

impl Default for ReceiverOptions {
    fn default() -> Self {
        Self {
            secret: None,
            timestamp_tolerance: DEFAULT_TIMESTAMP_TOLERANCE,
            fail_rate: 0.0,
            fail_first: 0,
            fail_status: 500,
            retry_after_secs: None,
            delay: Duration::ZERO,
            quiet: true,
            keep_recent: 20,
            remember_ids: 100_000,
        }
    }
}

/// One accepted callback.
#[derive(Debug, Clone, Serialize)]
pub struct Received {
    /// The `webhook-id` header (the request id).
    pub webhook_id: String,
    pub status: Option<String>,
    pub body: Value,
    /// The body exactly as it arrived (what a signature covers).
    #[serde(skip)]
    pub raw_body: Bytes,
    /// Lower-case header names and values.
    pub headers: HashMap<String, String>,
    /// True when a secret is set and the signature matched.
    pub verified: bool,
    /// The `webhook-id` had been accepted before: a redelivery.
    pub duplicate: bool,
    /// RFC 3339 UTC.
    pub received_at: String,
    /// When it arrived, for latency measurements in-process.
    #[serde(skip)]
    pub arrived: Instant,
}

/// Totals since start.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReceiverTotals {
    /// Every `POST /callback`, whatever the answer.
    pub requests: u64,
    /// Callbacks accepted with 200.
    pub accepted: u64,
    /// Distinct `webhook-id`s accepted.
    pub unique: u64,
    /// Accepted callbacks whose `webhook-id` had been accepted before.
    pub duplicates: u64,
    /// Refused with 401: bad or missing signature, or a stale timestamp.
    pub rejected_signature: u64,
    /// Answered with a simulated failure.
    pub simulated_failures: u64,
}

/// `GET /stats`.
#[derive(Debug, Clone, Serialize)]
pub struct ReceiverStats {
    #[serde(flatten)]
    pub totals: ReceiverTotals,
    /// Ids held for de-duplication now (at most `remember_ids`).
    pub remembered_ids: usize,
    /// The most recent accepted callbacks, newest first.
    pub recent: Vec<Value>,
}

/// A receiver; cheap to clone.
#[derive(Clone)]
pub struct Receiver {
    shared: Arc<Shared>,
}

struct Shared {
    options: ReceiverOptions,
    book: Mutex<Book>,
}

struct Book {
    totals: ReceiverTotals,
    /// What is known of each recent `webhook-id`.
    ids: RecentIds<IdRecord>,
    recent: VecDeque<Value>,
    subscribers: Vec<mpsc::UnboundedSender<Received>>,
}

/// What the receiver knows of one `webhook-id`.
#[derive(Debug, Default)]
struct IdRecord {
    /// Deliveries seen, whatever the answer (for `fail_first`).
    deliveries: u32,
    /// Accepted with 200 before (the next one is a duplicate).
    accepted: bool,
}

/// A receiver serving on a bound port.
pub struct RunningReceiver {
    pub receiver: Receiver,
    pub addr: SocketAddr,
    /// Stops serving; fired on `stop` and on drop.
    stop: CancellationToken,
}

impl RunningReceiver {
    /// `http://addr/callback`.
    pub fn callback_url(&self) -> String {
        format!("http://{}/callback", self.addr)
    }

    pub fn stop(self) {
        self.stop.cancel();
    }
}

impl Drop for RunningReceiver {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Receiver {
    pub fn new(options: ReceiverOptions) -> Self {
        Self {
            shared: Arc::new(Shared {
                book: Mutex::new(Book {
                    totals: ReceiverTotals::default(),
                    ids: RecentIds::new(options.remember_ids),
                    recent: VecDeque::with_capacity(options.keep_recent.min(1024)),
                    subscribers: Vec::new(),
                }),
                options,
            }),
        }
    }

    pub fn router(&self) -> Router {
        Router::new()
            .route("/callback", post(receive))
            .route("/stats", get(stats))
            .route("/healthz", get(|| async { axum::Json(json!({"status": "ok"})) }))
            .with_state(self.clone())
    }

    /// Serves on `addr` (port 0 picks one) in a background task.
    pub async fn spawn(self, addr: SocketAddr) -> std::io::Result<RunningReceiver> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        tokio::spawn(serve(listener, self.router(), stop.clone()));
        Ok(RunningReceiver {
            receiver: self,
            addr,
            stop,
        })
    }

    /// Like `spawn`, on a thread and runtime of its own: the load tester's sending runs on one
    /// thread, and receiving callbacks must not take turns with it.
    pub fn spawn_on_own_thread(self, addr: SocketAddr) -> std::io::Result<RunningReceiver> {
        let listener = std::net::TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let (router, stop) = (self.router(), CancellationToken::new());
        let stopped = stop.clone();
        std::thread::Builder::new()
            .name("callback-receiver".into())
            .spawn(move || {
                runtime.block_on(async move {
                    if let Ok(listener) = TcpListener::from_std(listener) {
                        serve(listener, router, stopped).await;
                    }
                });
            })?;
        Ok(RunningReceiver {
            receiver: self,
            addr,
            stop,
        })
    }

    /// Every callback accepted from now on is also sent here.
    pub fn subscribe(&self) -> mpsc::UnboundedReceiver<Received> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.book().subscribers.push(tx);
        rx
    }

    pub fn totals(&self) -> ReceiverTotals {
        self.book().totals.clone()
    }

    pub fn stats(&self) -> ReceiverStats {
        let book = self.book();
        ReceiverStats {
            totals: book.totals.clone(),
            remembered_ids: book.ids.len(),
            recent: book.recent.iter().cloned().collect(),
        }
    }

    fn book(&self) -> std::sync::MutexGuard<'_, Book> {
        // A panic while holding the lock cannot leave the counters inconsistent enough to matter.
        self.shared.book.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Checks `webhook-timestamp` and `webhook-signature` against the secret.
    fn verify(&self, key: &SigningKey, headers: &HeaderMap, id: &str, body: &[u8]) -> Result<(), &'static str> {
        let timestamp: i64 = header_str(headers, "webhook-timestamp")
            .and_then(|t| t.parse().ok())
            .ok_or("missing or malformed webhook-timestamp")?;
        let skew = chrono::Utc::now().timestamp().abs_diff(timestamp);
        if skew > self.shared.options.timestamp_tolerance.as_secs() {
            return Err("webhook-timestamp is too far from now");
        }
        let signature = header_str(headers, "webhook-signature").ok_or("missing webhook-signature")?;
        if key.verify(id, timestamp, body, signature) {
            Ok(())
        } else {
            Err("signature does not match")
        }
    }
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

async fn receive(State(receiver): State<Receiver>, headers: HeaderMap, body: Bytes) -> Response {
    let options = &receiver.shared.options;
    if !options.delay.is_zero() {
        tokio::time::sleep(options.delay).await;
    }
    let id = header_str(&headers, "webhook-id").unwrap_or("").to_owned();
    receiver.book().totals.requests += 1;
    if let Some(key) = &options.secret
        && let Err(why) = receiver.verify(key, &headers, &id, &body)
    {
        receiver.book().totals.rejected_signature += 1;
        if !options.quiet {
            println!("REJECTED {id}: {why}");
        }
        return ApiError::Unauthorized(why.to_owned()).into_response();
    }
    let seen_before = {
        let mut book = receiver.book();
        let record = book.ids.entry(&id);
        record.deliveries = record.deliveries.saturating_add(1);
        record.deliveries - 1
    };
    if seen_before < options.fail_first || (options.fail_rate > 0.0 && rand::random::<f64>() < options.fail_rate) {
        receiver.book().totals.simulated_failures += 1;
        if !options.quiet {
            println!("FAILED   {id} (simulated {})", options.fail_status);
        }
        return simulated_failure(options);
    }
    let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let received = Received {
        webhook_id: id.clone(),
        status: parsed.get("status").and_then(Value::as_str).map(str::to_owned),
        headers: headers
            .iter()
            .filter_map(|(k, v)| v.to_str().ok().map(|v| (k.as_str().to_owned(), v.to_owned())))
            .collect(),
        verified: options.secret.is_some(),
        duplicate: false,
        received_at: sync_async::db::timestamp(chrono::Utc::now()),
        arrived: Instant::now(),
        body: parsed,
        raw_body: body,
    };
    let received = record(&receiver, received);
    if !options.quiet {
        println!("{}", summary_line(&received));
    }
    axum::Json(json!({"received": true, "duplicate": received.duplicate})).into_response()
}

/// Counts an accepted callback and tells the subscribers.
fn record(receiver: &Receiver, mut received: Received) -> Received {
    let mut book = receiver.book();
    received.duplicate = std::mem::replace(&mut book.ids.entry(&received.webhook_id).accepted, true);
    book.totals.accepted += 1;
    if received.duplicate {
        book.totals.duplicates += 1;
    } else {
        book.totals.unique += 1;
    }
    book.recent.push_front(json!({
        "request_id": received.webhook_id,
        "status": received.status,
        "received_at": received.received_at,
        "duplicate": received.duplicate,
    }));
    book.recent.truncate(receiver.shared.options.keep_recent);
    book.subscribers.retain(|s| s.send(received.clone()).is_ok());
    received
}

fn simulated_failure(options: &ReceiverOptions) -> Response {
    let status = StatusCode::from_u16(options.fail_status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, "simulated failure").into_response();
    if let Some(secs) = options.retry_after_secs {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    if status.is_redirection() {
        response
            .headers_mut()
            .insert(header::LOCATION, HeaderValue::from_static("/callback"));
    }
    response
}

/// Serves until `stop` fires, then stops accepting at once (no graceful drain: a stopped
/// receiver is one that went away).
async fn serve(listener: TcpListener, router: Router, stop: CancellationToken) {
    tokio::select! {
        _ = axum::serve(listener, router) => {}
        () = stop.cancelled() => {}
    }
}

/// `<id> <status> <short result>`: one line per callback.
pub fn summary_line(received: &Received) -> String {
    let detail = match received.body.get("result") {
        Some(result) if !result.is_null() => result.to_string(),
        _ => received
            .body
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned(),
    };
    let short: String = detail.chars().take(60).collect();
    let marker = if received.duplicate { " (duplicate)" } else { "" };
    format!(
        "{} {}{} {}",
        received.webhook_id,
        received.status.as_deref().unwrap_or("?"),
        marker,
        short
    )
}

async fn stats(State(receiver): State<Receiver>) -> axum::Json<ReceiverStats> {
    axum::Json(receiver.stats())
}
