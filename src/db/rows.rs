//! The commands the store seam takes and the rows it returns: plain data, with the few rules
//! that belong to the data itself (a delivery not yet written is pending, how totals read).
//! Nothing here knows SQL or HTTP.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::model::{DeliveryStatus, Mode, Status};

/// An async job to store.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub id: String,
    pub payload: Value,
    pub callback_url: Option<String>,
    pub client_ip: String,
    /// The tenant whose API key submitted it; `None` for the admin or an open API.
    pub tenant: Option<String>,
    /// RFC 3339 UTC.
    pub created_at: String,
}

/// A sync request to store as it starts.
#[derive(Debug, Clone)]
pub struct NewSync {
    pub id: String,
    pub payload: Value,
    pub client_ip: String,
    /// The tenant whose API key submitted it; `None` for the admin or an open API.
    pub tenant: Option<String>,
    /// RFC 3339 UTC; also its start.
    pub created_at: String,
}

/// An idempotency key to remember with the request it produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyClaim {
    /// Keys are per client (or per tenant): the same key from two clients is two keys.
    pub scope: String,
    pub key: String,
    /// SHA-256 of the request body: the same key with another body is refused.
    pub body_hash: String,
    /// Records created before this are expired and may be replaced.
    pub not_before: String,
}

/// A remembered key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredKey {
    pub body_hash: String,
    pub request_id: String,
}

/// What became of a submission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accepted {
    /// Committed: the job is on disk.
    Stored,
    /// `backlog_limit` jobs were waiting; nothing was stored.
    BacklogFull,
    /// A live record of the key exists; nothing was stored.
    KeyTaken,
}

/// How a run ended, to store.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    pub status: Status,
    pub result: Option<Value>,
    pub error: Option<String>,
    /// RFC 3339 UTC.
    pub completed_at: String,
    pub execution_time_ms: Option<f64>,
}

/// A job or delivery held under a lease: its id and the attempt that holds it (the fencing
/// token).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Lease {
    pub id: String,
    pub attempt: i64,
}

/// A claimed job, ready to run.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimedJob {
    pub lease: Lease,
    /// When the job was accepted (its `created_at`): the start of its completion time.
    pub accepted_at: DateTime<Utc>,
    pub payload: Value,
    pub callback_url: Option<String>,
}

/// How a claimed job ended.
#[derive(Debug, Clone, PartialEq)]
pub struct JobFinish {
    pub lease: Lease,
    /// When its worker took it up (RFC 3339 UTC), stored as the job's `started_at`: a job
    /// claimed ahead waits in the hand-over channel, so its claim is not its start.
    pub started_at: String,
    pub completion: Completion,
    /// Whether the job has a callback (its claimed `callback_url` is set), so that its stored
    /// outcome writes a delivery. On PostgreSQL a batch in which no finish has one leaves the
    /// delivery insert out of its statement (see `postgres::queue::finished_ctes`).
    pub has_callback: bool,
}

/// Every lease a replica holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Held {
    pub jobs: Vec<Lease>,
    pub sync: Vec<Lease>,
    pub deliveries: Vec<Lease>,
}

impl Held {
    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty() && self.sync.is_empty() && self.deliveries.is_empty()
    }
}

/// What a replica reports of itself at each heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaBeat {
    pub workers: u32,
    pub workers_busy: u32,
    pub sync_in_flight: u32,
    pub sync_max: u32,
}

/// A replica as the database last heard of it.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicaRow {
    pub id: String,
    /// RFC 3339 UTC.
    pub started_at: String,
    pub last_seen_at: String,
    pub workers: u32,
    pub workers_busy: u32,
    pub sync_in_flight: u32,
    pub sync_max: u32,
}

/// What a rescue did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rescued {
    pub jobs_requeued: u64,
    pub jobs_failed: u64,
    pub sync_failed: u64,
    pub deliveries_requeued: u64,
    pub deliveries_failed: u64,
}

impl Rescued {
    pub fn total(&self) -> u64 {
        self.jobs_requeued + self.jobs_failed + self.sync_failed + self.deliveries_requeued + self.deliveries_failed
    }
}

/// A claimed delivery, with everything its attempt needs.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimedDelivery {
    pub lease: Lease,
    pub callback_url: String,
    /// Attempts made so far, over every round.
    pub attempts: i64,
    /// `attempts` when the current round began.
    pub round_start: i64,
    /// The job's outcome, the callback's body.
    pub status: Status,
    pub result: Option<Value>,
    pub error: Option<String>,
    pub execution_time_ms: Option<f64>,
    pub completed_at: Option<String>,
}

/// One delivery attempt, as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptRow {
    /// 1, 2, 3... across every round.
    pub number: i64,
    /// RFC 3339 UTC.
    pub attempted_at: String,
    pub duration_ms: f64,
    /// `None` when no HTTP answer came back.
    pub status_code: Option<i64>,
    /// `None` on success; otherwise `timeout`, `connect`, `http_status`, `redirect` or `refused`.
    pub error_class: Option<String>,
    pub error: Option<String>,
}

/// Where a delivery goes after an attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct AfterAttempt {
    /// `pending` (another attempt at `due_in`), `delivered` or `failed`.
    pub status: DeliveryStatus,
    /// How long until the next attempt, from the database's clock; with `pending` only.
    pub due_in: Option<Duration>,
}

/// One attempt's outcome to store: the attempt, and where its delivery goes next. Stored only
/// while the claim `delivery` still holds.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptRecord {
    pub delivery: Lease,
    pub attempt: AttemptRow,
    pub next: AfterAttempt,
}

/// Why a redelivery was not started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedeliverRefusal {
    NotFound,
    /// The request has no callback (false), or its delivery is not `failed` (its status).
    NotFailed(Option<DeliveryStatus>, bool),
}

/// A stored request, with its delivery when it has one.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestRow {
    pub id: String,
    pub mode: Mode,
    pub status: Status,
    pub payload: Value,
    pub result: Option<Value>,
    pub error: Option<String>,
    pub callback_url: Option<String>,
    /// RFC 3339 UTC, as every timestamp here.
    pub created_at: String,
    pub started_at: Option<String>,
    pub completed_at: Option<String>,
    pub execution_time_ms: Option<f64>,
    pub delivery: Option<DeliveryRow>,
    /// The tenant it belongs to; only that tenant (and the admin) may see it.
    pub tenant: Option<String>,
}

/// A request's callback delivery.
#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryRow {
    pub status: DeliveryStatus,
    /// Attempts made, over every round.
    pub attempts: i64,
    pub last_status_code: Option<i64>,
    pub last_error: Option<String>,
    /// When the next attempt is due, while `pending`.
    pub next_attempt_at: Option<String>,
}

impl DeliveryRow {
    /// A request with a callback has no delivery row until its job finishes: it is pending.
    pub fn or_waiting(delivery: Option<Self>, has_callback: bool) -> Option<Self> {
        match (has_callback, delivery) {
            (false, _) => None,
            (true, Some(delivery)) => Some(delivery),
            (true, None) => Some(DeliveryRow {
                status: DeliveryStatus::Pending,
                attempts: 0,
                last_status_code: None,
                last_error: None,
                next_attempt_at: None,
            }),
        }
    }
}

/// Which requests `list` returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListQuery {
    /// Only this tenant's requests; `None` lists every request (the admin, or an open API).
    pub tenant: Option<String>,
    pub mode: Option<Mode>,
    pub status: Option<Status>,
    /// Only requests whose delivery is in this state, one of `DELIVERY_STATES` (`pending` also
    /// covers a callback whose job has not finished). The total counts it too.
    pub delivery: Option<&'static str>,
    /// Keyset paging: only requests older than this one in the newest-first order (by
    /// `created_at`, then id); an unknown id matches nothing. The total ignores it.
    pub before_id: Option<String>,
    pub limit: u32,
    pub offset: u32,
}

/// Counts for `/metrics`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    /// Every (mode, status) pair with its count, zeros included.
    pub requests: Vec<(Mode, Status, i64)>,
    /// Deliveries by state: `pending` (first attempt not made), `retrying` (waiting for a
    /// retry), `delivering`, `delivered`, `failed`.
    pub deliveries: Vec<(&'static str, i64)>,
    /// Mean engine time over `done` requests; `None` before the first one.
    pub avg_execution_time_ms: Option<f64>,
}

impl Summary {
    /// Builds the summary from stored totals: (mode, status, count, engine ms sum, timed count)
    /// rows and (delivery state, count) rows; missing pairs count zero.
    pub fn from_totals(requests: &[(String, String, i64, f64, i64)], deliveries: &[(String, i64)]) -> Self {
        use strum::VariantArray;
        let mut summary = Summary::default();
        for &mode in Mode::VARIANTS {
            for &status in Status::VARIANTS {
                let count = requests
                    .iter()
                    .filter(|r| r.0 == mode.as_str() && r.1 == status.as_str())
                    .map(|r| r.2)
                    .sum();
                summary.requests.push((mode, status, count));
            }
        }
        for state in DELIVERY_STATES {
            let count = deliveries.iter().filter(|(s, _)| s == state).map(|(_, n)| *n).sum();
            summary.deliveries.push((state, count));
        }
        let (time_sum, timed) = requests
            .iter()
            .filter(|r| r.1 == Status::Done.as_str())
            .fold((0.0, 0i64), |(sum, n), r| (sum + r.3, n + r.4));
        summary.avg_execution_time_ms = (timed > 0).then(|| time_sum / timed as f64);
        summary
    }

    pub fn count(&self, mode: Option<Mode>, status: Option<Status>) -> i64 {
        self.requests
            .iter()
            .filter(|(m, s, _)| mode.is_none_or(|want| *m == want) && status.is_none_or(|want| *s == want))
            .map(|(_, _, n)| n)
            .sum()
    }

    pub fn deliveries(&self, state: &str) -> i64 {
        self.deliveries
            .iter()
            .filter(|(s, _)| *s == state)
            .map(|(_, n)| n)
            .sum()
    }
}

/// The delivery states `Summary::deliveries` counts.
pub const DELIVERY_STATES: [&str; 5] = ["pending", "retrying", "delivering", "delivered", "failed"];

/// One purge batch.
#[derive(Debug, Clone, Copy)]
pub struct PurgeRound<'a> {
    /// Requests completed before this (RFC 3339 UTC) go.
    pub before: &'a str,
    /// Idempotency keys created before this go.
    pub keys_before: &'a str,
    pub batch: u32,
    /// On the first batch of a round: start the round only if no replica started one within this
    /// (PostgreSQL; SQLite has one server and ignores it).
    pub starts_round_unless_within: Option<Duration>,
}

/// What a purge did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Purged {
    pub requests: u64,
    pub keys: u64,
    /// Another replica holds the purge (PostgreSQL); nothing was done here.
    pub skipped: bool,
}

/// Sizes on disk, and SQLite's writer.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StorageFigures {
    pub database_bytes: u64,
    /// SQLite only.
    pub wal: Option<super::sqlite::WalFigures>,
    /// SQLite's one writer connection; SQLite only.
    pub writer: Option<super::sqlite::WriterFigures>,
}
