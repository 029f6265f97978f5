//! `POST /dashboard/api/burst`: the server fires N sync and/or N async requests at itself,
//! through its own listener and real HTTP, all at once, so the sync slots (503), the queue
//! limit and the rate limit (429) act as they would for real clients (a browser holds only six
//! connections per host and could never fill ten sync slots). One burst at a time; N at most
//! 200. Async requests go without a callback; their completion is read from their records.
//! With API keys set, the requests carry the key of whoever fired the burst: a tenant's burst
//! is that tenant's requests, under its rate limit, and the admin's belong to no tenant.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Extension, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::task::JoinSet;

use super::Dashboard;
use super::access::Visitor;
use super::rates::Percentiles;
use crate::auth;
use crate::config::Secret;
use crate::engine::Operation;
use crate::error::ApiError;
use crate::extract::ApiJson;
use crate::model::Status;
use crate::state::AppState;

/// The largest burst: enough to fill any sensible MAX_SYNC_CONCURRENCY many times over, small
/// enough that a click cannot turn the server into its own load test.
pub(crate) const MAX_BURST: u32 = 200;
/// How often the completion of a burst's async jobs is read from their records.
const COMPLETION_POLL: Duration = Duration::from_millis(250);
/// The longest a burst's async jobs are followed.
const COMPLETION_PATIENCE: Duration = Duration::from_secs(600);

/// Which API a burst exercises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum BurstMode {
    Sync,
    Async,
    /// N of each, at the same moment.
    Both,
}

/// What to fire.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BurstOrder {
    pub mode: BurstMode,
    /// Requests per mode, 1 to 200 (the page offers 10, 50 and 200).
    pub n: u32,
    pub operation: Operation,
    /// 1 (about 100 ms) to 10 (about 5 s).
    pub complexity: u8,
}

/// The bursts of this server: how to reach itself, and the one that runs or ran last.
#[derive(Debug)]
pub(crate) struct Bursts {
    client: reqwest::Client,
    /// `http://127.0.0.1:PORT{BASE_PATH}`: this server's own listener.
    base_url: String,
    running: AtomicBool,
    next_id: AtomicU64,
    last: Mutex<Option<Arc<Mutex<BurstReport>>>>,
}

impl Bursts {
    pub(crate) fn new(base_url: String, request_timeout: Duration) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(request_timeout)
            .pool_max_idle_per_host(usize::try_from(MAX_BURST * 2).unwrap_or(usize::MAX))
            .build()?;
        Ok(Self {
            client,
            base_url,
            running: AtomicBool::new(false),
            next_id: AtomicU64::new(1),
            last: Mutex::new(None),
        })
    }

    /// The burst that runs, or the last one, as the snapshot shows it.
    pub(crate) fn last(&self) -> Option<BurstReport> {
        let last = self.last.lock().unwrap_or_else(|p| p.into_inner()).clone()?;
        let report = last.lock().unwrap_or_else(|p| p.into_inner()).clone();
        Some(report)
    }
}

/// One burst, as it goes.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct BurstReport {
    pub id: u64,
    pub mode: BurstMode,
    pub n: u32,
    pub operation: &'static str,
    pub complexity: u8,
    /// False until every answer is back.
    pub finished: bool,
    /// How long until the last answer, in milliseconds.
    pub took_ms: Option<f64>,
    pub sync: Tally,
    #[serde(rename = "async")]
    pub asynchronous: Tally,
}

/// The answers of one mode.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Tally {
    pub sent: u32,
    pub answered: u32,
    /// Answers by HTTP status (`"200"`, `"503"`...).
    pub by_status: BTreeMap<u16, u32>,
    /// Requests that got no HTTP answer (connection refused, timeout).
    pub transport_errors: u32,
    /// Latency of the successful answers (200 or 202).
    pub latency: Percentiles,
    /// Async only: jobs accepted and, of those, finished so far.
    pub accepted: u32,
    pub completed: u32,
    /// Async only: acceptance to end, of the finished jobs.
    pub completion: Percentiles,
    #[serde(skip)]
    ok_us: Vec<u32>,
    #[serde(skip)]
    completion_us: Vec<u32>,
}

impl Tally {
    fn answer(&mut self, status: Option<u16>, took: Duration) {
        self.answered += 1;
        match status {
            Some(code) => {
                *self.by_status.entry(code).or_default() += 1;
                if (200..300).contains(&code) {
                    self.ok_us.push(micros(took));
                    self.latency = Percentiles::of(&self.ok_us);
                }
            }
            None => self.transport_errors += 1,
        }
    }

    fn completed(&mut self, took: Duration) {
        self.completed += 1;
        self.completion_us.push(micros(took));
        self.completion = Percentiles::of(&self.completion_us);
    }
}

fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

/// Starts a burst
///
/// 202 with the burst as it starts; 403 for a read-only visitor, 409 while another burst runs,
/// 422 for a mode, N, operation or complexity out of range.
pub(crate) async fn start(
    State(state): State<AppState>,
    Extension(dashboard): Extension<Dashboard>,
    visitor: Visitor,
    ApiJson(order): ApiJson<BurstOrder>,
) -> Result<(StatusCode, Json<BurstReport>), ApiError> {
    visitor.require_act()?;
    validate(&order)?;
    let key = auth::key_of(&state.config.api_keys, &visitor.caller).map(|key| Arc::new(key.clone()));
    let bursts = dashboard.bursts.clone();
    if bursts
        .running
        .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
        .is_err()
    {
        return Err(ApiError::Conflict(
            "a burst is already running; wait for its last answer, then fire again".to_owned(),
        ));
    }
    let running = Running(bursts.clone());
    let report = Arc::new(Mutex::new(BurstReport {
        id: bursts.next_id.fetch_add(1, Ordering::Relaxed),
        mode: order.mode,
        n: order.n,
        operation: order.operation.as_str(),
        complexity: order.complexity,
        finished: false,
        took_ms: None,
        sync: Tally::default(),
        asynchronous: Tally::default(),
    }));
    *bursts.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(report.clone());
    let first = lock(&report).clone();
    tokio::spawn(fire(state, order, key, report, running));
    Ok((StatusCode::ACCEPTED, Json(first)))
}

fn validate(order: &BurstOrder) -> Result<(), ApiError> {
    if !(1..=MAX_BURST).contains(&order.n) {
        return Err(ApiError::unprocessable(format!(
            "n must be between 1 and {MAX_BURST}, got {}",
            order.n
        )));
    }
    if !(1..=10).contains(&order.complexity) {
        return Err(ApiError::unprocessable(format!(
            "complexity must be between 1 and 10, got {}",
            order.complexity
        )));
    }
    Ok(())
}

/// Frees the one-burst slot when the burst's answers are in, or if its task dies.
struct Running(Arc<Bursts>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.store(false, Ordering::Release);
    }
}

fn lock(report: &Mutex<BurstReport>) -> std::sync::MutexGuard<'_, BurstReport> {
    report.lock().unwrap_or_else(|p| p.into_inner())
}

async fn fire(
    state: AppState,
    order: BurstOrder,
    key: Option<Arc<Secret>>,
    report: Arc<Mutex<BurstReport>>,
    running: Running,
) {
    let started = Instant::now();
    let payload = json!({"payload": {"operation": order.operation, "complexity": order.complexity}});
    let modes: &[&str] = match order.mode {
        BurstMode::Sync => &["sync"],
        BurstMode::Async => &["async"],
        BurstMode::Both => &["sync", "async"],
    };
    let mut requests = JoinSet::new();
    for &mode in modes {
        for _ in 0..order.n {
            let (client, url, body, key) = (
                running.0.client.clone(),
                format!("{}/{mode}", running.0.base_url),
                payload.clone(),
                key.clone(),
            );
            requests.spawn(async move {
                let mut request = client.post(url).json(&body);
                if let Some(key) = key {
                    request = request.bearer_auth(key.expose());
                }
                let sent = Instant::now();
                let answer = request.send().await;
                let took = sent.elapsed();
                let status = answer.as_ref().ok().map(|r| r.status().as_u16());
                let id = match answer {
                    Ok(r) if mode == "async" && r.status() == StatusCode::ACCEPTED => r
                        .json::<serde_json::Value>()
                        .await
                        .ok()
                        .and_then(|v| v["request_id"].as_str().map(str::to_owned)),
                    _ => None,
                };
                (mode, status, took, id)
            });
        }
        let mut r = lock(&report);
        let tally = if mode == "sync" {
            &mut r.sync
        } else {
            &mut r.asynchronous
        };
        tally.sent = order.n;
    }
    let mut accepted = Vec::new();
    while let Some(joined) = requests.join_next().await {
        let Ok((mode, status, took, id)) = joined else { continue };
        let mut r = lock(&report);
        let tally = if mode == "sync" {
            &mut r.sync
        } else {
            &mut r.asynchronous
        };
        tally.answer(status, took);
        if let Some(id) = id {
            tally.accepted += 1;
            accepted.push(id);
        }
    }
    {
        let mut r = lock(&report);
        r.finished = true;
        r.took_ms = Some(started.elapsed().as_secs_f64() * 1000.0);
    }
    drop(running);
    follow_completion(&state, &report, accepted).await;
}

/// Reads the burst's async jobs until each has ended, recording acceptance-to-end from the
/// stored timestamps (exact, whatever the polling interval) in the burst's own summary. The
/// rolling percentiles hear of these jobs from the completer, like of every other job.
async fn follow_completion(state: &AppState, report: &Mutex<BurstReport>, mut pending: Vec<String>) {
    let deadline = Instant::now() + COMPLETION_PATIENCE;
    while !pending.is_empty() && Instant::now() < deadline && !state.stopping.is_cancelled() {
        tokio::select! {
            () = state.stopping.cancelled() => return,
            () = tokio::time::sleep(COMPLETION_POLL) => {}
        }
        let mut still = Vec::with_capacity(pending.len());
        for id in pending {
            let row = match state.db.get(&id).await {
                Ok(Some(row)) => row,
                // Purged already, or the store is briefly unavailable: try again next round
                // unless it is gone.
                Ok(None) => continue,
                Err(_) => {
                    still.push(id);
                    continue;
                }
            };
            if !matches!(row.status, Status::Done | Status::Failed) {
                still.push(id);
                continue;
            }
            let took = row
                .completed_at
                .as_deref()
                .and_then(|done| between(&row.created_at, done))
                .unwrap_or_default();
            lock(report).asynchronous.completed(took);
        }
        pending = still;
    }
}

/// The time from one RFC 3339 timestamp to another.
fn between(from: &str, to: &str) -> Option<Duration> {
    let from = chrono::DateTime::parse_from_rfc3339(from).ok()?;
    let to = chrono::DateTime::parse_from_rfc3339(to).ok()?;
    (to - from).to_std().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(n: u32, complexity: u8) -> BurstOrder {
        BurstOrder {
            mode: BurstMode::Both,
            n,
            operation: Operation::Hash,
            complexity,
        }
    }

    #[test]
    fn n_and_complexity_are_bounded() {
        assert!(validate(&order(200, 10)).is_ok());
        assert_eq!(validate(&order(201, 1)).expect_err("too many").status(), 422);
        assert_eq!(validate(&order(0, 1)).expect_err("none").status(), 422);
        assert_eq!(validate(&order(10, 11)).expect_err("too complex").status(), 422);
    }

    #[test]
    fn a_tally_times_only_successes() {
        let mut t = Tally::default();
        t.answer(Some(200), Duration::from_millis(10));
        t.answer(Some(503), Duration::from_millis(1));
        t.answer(None, Duration::from_millis(1));
        assert_eq!((t.answered, t.transport_errors), (3, 1));
        assert_eq!(t.by_status.get(&503), Some(&1));
        assert_eq!(t.latency.count, 1);
    }

    #[test]
    fn completion_is_measured_between_stored_timestamps() {
        assert_eq!(
            between("2026-01-01T00:00:00.000Z", "2026-01-01T00:00:01.250Z"),
            Some(Duration::from_millis(1250))
        );
        assert_eq!(between("x", "2026-01-01T00:00:00Z"), None);
    }
}
