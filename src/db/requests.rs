//! The `requests` table: one row per /sync or /async request, from arrival to result.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::types::Json;
use sqlx::{QueryBuilder, Sqlite, SqliteExecutor};

use super::Db;
use utoipa::{IntoParams, ToSchema};

/// Which API a request came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema, sqlx::Type)]
#[serde(rename_all = "lowercase")]
#[sqlx(type_name = "TEXT", rename_all = "lowercase")]
pub enum Mode {
    Sync,
    Async,
}

/// Where a request's work stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema, sqlx::Type)]
#[serde(rename_all = "lowercase")]
#[sqlx(type_name = "TEXT", rename_all = "lowercase")]
pub enum Status {
    /// Stored and queued; no worker has started it.
    Pending,
    /// The engine is running it.
    Processing,
    /// Finished with a result.
    Done,
    /// Finished without a result (timeout, cancellation, engine failure).
    Failed,
}

impl Mode {
    pub const ALL: [Mode; 2] = [Mode::Sync, Mode::Async];
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sync => "sync",
            Self::Async => "async",
        }
    }
}

impl Status {
    pub const ALL: [Status; 4] = [Status::Pending, Status::Processing, Status::Done, Status::Failed];
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Processing => "processing",
            Self::Done => "done",
            Self::Failed => "failed",
        }
    }
}

/// Where a callback delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema, sqlx::Type)]
#[serde(rename_all = "lowercase")]
#[sqlx(type_name = "TEXT", rename_all = "lowercase")]
pub enum DeliveryStatus {
    /// Waiting for the job to finish, or for `next_attempt_at`.
    Pending,
    /// An attempt is in flight.
    Delivering,
    /// The receiver answered 2xx.
    Delivered,
    /// Given up: retries used, 410, a redirect, another 4xx, or a refused address.
    Failed,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivering => "delivering",
            Self::Delivered => "delivered",
            Self::Failed => "failed",
        }
    }
}

/// The callback side of a request, present when it has a `callback_url`.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Delivery {
    pub status: DeliveryStatus,
    /// Attempts made, over every round.
    pub attempts: i64,
    /// HTTP status of the last attempt, if it got an answer.
    pub last_status_code: Option<i64>,
    pub last_error: Option<String>,
    /// When the next attempt is due (RFC 3339 UTC), while `pending`.
    pub next_attempt_at: Option<String>,
}

/// A stored request as the API shows it (the client IP is kept out on purpose).
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct RequestRecord {
    #[schema(example = "0193a1b2-7c3d-7e4f-8a9b-0c1d2e3f4a5b")]
    pub request_id: String,
    pub mode: Mode,
    pub status: Status,
    /// The work payload as submitted.
    #[schema(value_type = Object, example = json!({"operation": "hash", "complexity": 5}))]
    pub payload: Value,
    /// The engine's result, once `done`.
    #[schema(value_type = Option<Object>)]
    pub result: Option<Value>,
    /// Why the work failed, once `failed`.
    pub error: Option<String>,
    pub callback_url: Option<String>,
    /// RFC 3339 UTC.
    #[schema(example = "2026-11-27T10:11:54.123Z")]
    pub created_at: String,
    pub started_at: Option<String>,
    pub completed_at: Option<String>,
    /// Engine time only, without time spent queued.
    pub execution_time_ms: Option<f64>,
    /// Callback delivery attempts made so far (also in `delivery`).
    pub attempts: i64,
    /// The last callback delivery error (also in `delivery`).
    pub last_error: Option<String>,
    /// The callback delivery; null when the request has no `callback_url`.
    pub delivery: Option<Delivery>,
}

/// The row behind a `RequestRecord`.
#[derive(sqlx::FromRow)]
struct RequestRow {
    id: String,
    mode: Mode,
    status: Status,
    payload: Json<Value>,
    result: Option<Json<Value>>,
    error: Option<String>,
    callback_url: Option<String>,
    created_at: String,
    started_at: Option<String>,
    completed_at: Option<String>,
    execution_time_ms: Option<f64>,
    attempts: i64,
    last_error: Option<String>,
    delivery_status: Option<DeliveryStatus>,
    next_attempt_at: Option<String>,
    last_status_code: Option<i64>,
}

impl From<RequestRow> for RequestRecord {
    fn from(row: RequestRow) -> Self {
        let delivery = row.callback_url.as_ref().map(|_| Delivery {
            status: row.delivery_status.unwrap_or(DeliveryStatus::Pending),
            attempts: row.attempts,
            last_status_code: row.last_status_code,
            last_error: row.last_error.clone(),
            next_attempt_at: row.next_attempt_at.clone(),
        });
        Self {
            request_id: row.id,
            mode: row.mode,
            status: row.status,
            payload: row.payload.0,
            result: row.result.map(|r| r.0),
            error: row.error,
            callback_url: row.callback_url,
            created_at: row.created_at,
            started_at: row.started_at,
            completed_at: row.completed_at,
            execution_time_ms: row.execution_time_ms,
            attempts: row.attempts,
            last_error: row.last_error,
            delivery,
        }
    }
}

/// The columns `RequestRow` reads, in one place.
const RECORD_COLUMNS: &str = "id, mode, status, payload, result, error, callback_url, created_at, \
     started_at, completed_at, execution_time_ms, attempts, last_error, delivery_status, \
     next_attempt_at, last_status_code";

/// What a worker needs to run a job.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredJob {
    pub payload: Value,
    pub callback_url: Option<String>,
}

/// A row to insert.
#[derive(Debug, Clone)]
pub struct NewRequest<'a> {
    pub id: &'a str,
    pub mode: Mode,
    pub payload: &'a Value,
    pub status: Status,
    pub callback_url: Option<&'a str>,
    pub created_at: &'a str,
    /// Set when the work starts at once (sync).
    pub started_at: Option<&'a str>,
    pub client_ip: &'a str,
}

/// A `NewRequest` that owns its fields, to hand to another task.
#[derive(Debug, Clone)]
pub(super) struct OwnedRequest {
    id: String,
    mode: Mode,
    payload: Value,
    status: Status,
    callback_url: Option<String>,
    created_at: String,
    started_at: Option<String>,
    client_ip: String,
}

impl From<&NewRequest<'_>> for OwnedRequest {
    fn from(row: &NewRequest<'_>) -> Self {
        Self {
            id: row.id.to_owned(),
            mode: row.mode,
            payload: row.payload.clone(),
            status: row.status,
            callback_url: row.callback_url.map(str::to_owned),
            created_at: row.created_at.to_owned(),
            started_at: row.started_at.map(str::to_owned),
            client_ip: row.client_ip.to_owned(),
        }
    }
}

impl OwnedRequest {
    pub(super) fn borrowed(&self) -> NewRequest<'_> {
        NewRequest {
            id: &self.id,
            mode: self.mode,
            payload: &self.payload,
            status: self.status,
            callback_url: self.callback_url.as_deref(),
            created_at: &self.created_at,
            started_at: self.started_at.as_deref(),
            client_ip: &self.client_ip,
        }
    }
}

/// How a run ended, to store.
#[derive(Debug, Clone)]
pub struct Completion<'a> {
    pub status: Status,
    pub result: Option<&'a Value>,
    pub error: Option<&'a str>,
    pub completed_at: &'a str,
    pub execution_time_ms: Option<f64>,
}

/// `GET /requests` filters.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListFilter {
    /// Only requests of this mode.
    pub mode: Option<Mode>,
    /// Only requests in this status.
    pub status: Option<Status>,
    /// Page size, 1 to 100 (default 50).
    #[param(minimum = 1, maximum = 100, default = 50)]
    pub limit: Option<u32>,
    /// Rows to skip (default 0).
    #[param(minimum = 0, default = 0)]
    pub offset: Option<u32>,
}

/// Aggregates for `/metrics`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    pub total: i64,
    pub by_mode: BTreeMap<&'static str, i64>,
    pub by_status: BTreeMap<&'static str, i64>,
    /// Mean engine time over `done` requests; `None` before the first one.
    pub avg_execution_time_ms: Option<f64>,
    /// Every (mode, status) pair with its count, zeros included.
    pub cells: Vec<(Mode, Status, i64)>,
}

/// Inserts a row; concurrent inserts are committed together (see `group_commit`).
pub async fn insert(db: &Db, row: &NewRequest<'_>) -> Result<(), sqlx::Error> {
    db.group_commit.insert(row).await
}

/// Inserts many rows with one statement: one round trip to the database thread, and atomic.
pub(super) async fn insert_many(db: impl SqliteExecutor<'_>, rows: &[NewRequest<'_>]) -> Result<(), sqlx::Error> {
    let mut q = QueryBuilder::<Sqlite>::new(
        "INSERT INTO requests (id, mode, payload, status, callback_url, created_at, started_at, client_ip) ",
    );
    q.push_values(rows, |mut b, row| {
        b.push_bind(row.id)
            .push_bind(row.mode)
            .push_bind(row.payload.to_string())
            .push_bind(row.status)
            .push_bind(row.callback_url)
            .push_bind(row.created_at)
            .push_bind(row.started_at)
            .push_bind(row.client_ip);
    });
    q.build().execute(db).await.map(|_| ())
}

/// `insert` inside a caller's transaction.
pub(super) async fn insert_in(db: impl SqliteExecutor<'_>, row: &NewRequest<'_>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO requests (id, mode, payload, status, callback_url, created_at, started_at, client_ip) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(row.id)
    .bind(row.mode)
    .bind(row.payload.to_string())
    .bind(row.status)
    .bind(row.callback_url)
    .bind(row.created_at)
    .bind(row.started_at)
    .bind(row.client_ip)
    .execute(db)
    .await
    .map(|_| ())
}

/// Moves a queued job to `processing`. Returns false when the job is missing or already finished
/// (a duplicate delivery from the queue), so the caller skips it.
pub async fn mark_processing(db: &Db, id: &str, started_at: &str) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE requests SET status = 'processing', started_at = ? \
         WHERE id = ? AND status IN ('pending', 'processing')",
    )
    .bind(started_at)
    .bind(id)
    .execute(db.writer())
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Stores how a run ended. For a request with a `callback_url`, the same statement makes its
/// delivery due now: a crash between the two can never lose the callback. Only a `processing`
/// row is finished, so an outcome can never be stored twice.
pub async fn complete(db: &Db, id: &str, c: &Completion<'_>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE requests SET status = ?, result = ?, error = ?, completed_at = ?, execution_time_ms = ?, \
         delivery_status = CASE WHEN callback_url IS NULL THEN NULL ELSE 'pending' END, \
         next_attempt_at = CASE WHEN callback_url IS NULL THEN NULL ELSE ? END \
         WHERE id = ? AND status = 'processing'",
    )
    .bind(c.status)
    .bind(c.result.map(Value::to_string))
    .bind(c.error)
    .bind(c.completed_at)
    .bind(c.execution_time_ms)
    .bind(c.completed_at)
    .bind(id)
    .execute(db.writer())
    .await
    .map(|_| ())
}

/// The stored payload and callback of a job, for a worker to run.
pub async fn job(db: &Db, id: &str) -> Result<Option<StoredJob>, sqlx::Error> {
    let row: Option<(Json<Value>, Option<String>)> =
        sqlx::query_as("SELECT payload, callback_url FROM requests WHERE id = ?")
            .bind(id)
            .fetch_optional(db.readers())
            .await?;
    Ok(row.map(|(Json(payload), callback_url)| StoredJob { payload, callback_url }))
}

pub async fn get(db: &Db, id: &str) -> Result<Option<RequestRecord>, sqlx::Error> {
    let mut q = QueryBuilder::<Sqlite>::new(format!("SELECT {RECORD_COLUMNS} FROM requests WHERE id = "));
    q.push_bind(id);
    let row: Option<RequestRow> = q.build_query_as().fetch_optional(db.readers()).await?;
    Ok(row.map(RequestRecord::from))
}

/// One page of requests, newest first, and the total that match the filter.
pub async fn list(
    db: &Db,
    filter: &ListFilter,
    limit: u32,
    offset: u32,
) -> Result<(i64, Vec<RequestRecord>), sqlx::Error> {
    let mut count = QueryBuilder::<Sqlite>::new("SELECT COUNT(*) FROM requests");
    push_filter(&mut count, filter);
    let total: i64 = count.build_query_scalar().fetch_one(db.readers()).await?;

    let mut page = QueryBuilder::<Sqlite>::new(format!("SELECT {RECORD_COLUMNS} FROM requests"));
    push_filter(&mut page, filter);
    page.push(" ORDER BY created_at DESC, id DESC LIMIT ")
        .push_bind(i64::from(limit));
    page.push(" OFFSET ").push_bind(i64::from(offset));
    let rows: Vec<RequestRow> = page.build_query_as().fetch_all(db.readers()).await?;
    Ok((total, rows.into_iter().map(RequestRecord::from).collect()))
}

fn push_filter(q: &mut QueryBuilder<Sqlite>, filter: &ListFilter) {
    let mut sep = " WHERE ";
    if let Some(mode) = filter.mode {
        q.push(sep).push("mode = ").push_bind(mode);
        sep = " AND ";
    }
    if let Some(status) = filter.status {
        q.push(sep).push("status = ").push_bind(status);
    }
}

/// Counts by mode and status and the mean engine time, from the running totals that triggers
/// keep in `request_stats` (eight rows, however many requests are stored).
pub async fn summary(db: &Db) -> Result<Summary, sqlx::Error> {
    let rows: Vec<(Mode, Status, i64, Option<f64>, i64)> =
        sqlx::query_as("SELECT mode, status, count, execution_ms_sum, execution_ms_count FROM request_stats")
            .fetch_all(db.readers())
            .await?;
    let mut summary = Summary::default();
    for m in Mode::ALL {
        summary.by_mode.insert(m.as_str(), 0);
    }
    for s in Status::ALL {
        summary.by_status.insert(s.as_str(), 0);
        for m in Mode::ALL {
            let count = rows.iter().find(|r| r.0 == m && r.1 == s).map_or(0, |r| r.2);
            summary.cells.push((m, s, count));
        }
    }
    let (mut time_sum, mut timed) = (0.0, 0i64);
    for (mode, status, count, sum_ms, timed_count) in rows {
        summary.total += count;
        *summary.by_mode.entry(mode.as_str()).or_default() += count;
        *summary.by_status.entry(status.as_str()).or_default() += count;
        if status == Status::Done {
            time_sum += sum_ms.unwrap_or(0.0);
            timed += timed_count;
        }
    }
    summary.avg_execution_time_ms = (timed > 0).then(|| time_sum / timed as f64);
    Ok(summary)
}

/// Async jobs a previous run accepted but did not finish, oldest first, all put back to
/// `pending` in the same transaction: startup recovery re-queues them.
pub async fn requeue_unfinished_async(db: &Db) -> Result<Vec<String>, sqlx::Error> {
    let mut tx = db.writer().begin().await?;
    sqlx::query(
        "UPDATE requests SET status = 'pending', started_at = NULL WHERE mode = 'async' AND status = 'processing'",
    )
    .execute(&mut *tx)
    .await?;
    let ids = sqlx::query_scalar(
        "SELECT id FROM requests WHERE mode = 'async' AND status = 'pending' ORDER BY created_at, id",
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(ids)
}

/// Sync requests a previous run left `processing` (it was killed mid-request): nobody is
/// waiting for them any more, so they are marked failed at startup.
pub async fn fail_orphaned_sync(db: &Db, completed_at: &str) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE requests SET status = 'failed', error = 'the server stopped before this request finished', \
         completed_at = ? WHERE mode = 'sync' AND status IN ('pending', 'processing')",
    )
    .bind(completed_at)
    .execute(db.writer())
    .await?;
    Ok(done.rows_affected())
}
