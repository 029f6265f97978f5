//! The `requests` table: one row per /sync or /async request, from arrival to result.

use std::collections::BTreeMap;

use serde_json::Value;
use sqlx::types::Json;
use sqlx::{QueryBuilder, Sqlite, SqliteExecutor};
use strum::VariantArray;

use super::Db;
use crate::model::{DeliveryStatus, Mode, Status};

/// A stored request, as `get` and `list` read it.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct RequestRow {
    pub id: String,
    #[sqlx(try_from = "String")]
    pub mode: Mode,
    #[sqlx(try_from = "String")]
    pub status: Status,
    pub payload: Json<Value>,
    pub result: Option<Json<Value>>,
    pub error: Option<String>,
    pub callback_url: Option<String>,
    pub created_at: String,
    pub started_at: Option<String>,
    pub completed_at: Option<String>,
    pub execution_time_ms: Option<f64>,
    /// Callback delivery attempts made, over every round.
    pub attempts: i64,
    /// The last callback delivery error.
    pub last_error: Option<String>,
    /// NULL when there is no callback, or before the job finished.
    pub delivery_status: Option<String>,
    pub next_attempt_at: Option<String>,
    pub last_status_code: Option<i64>,
}

impl RequestRow {
    /// Where the callback delivery stands, if there is a callback: before the job has
    /// finished, it is pending.
    pub fn delivery(&self) -> Option<DeliveryStatus> {
        self.callback_url.as_ref().map(|_| {
            self.delivery_status
                .as_deref()
                .and_then(|s| s.parse().ok())
                .unwrap_or(DeliveryStatus::Pending)
        })
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

/// Which requests `list` returns.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ListQuery {
    pub mode: Option<Mode>,
    pub status: Option<Status>,
    pub limit: u32,
    pub offset: u32,
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
            .push_bind(row.mode.as_str())
            .push_bind(row.payload.to_string())
            .push_bind(row.status.as_str())
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
    .bind(row.mode.as_str())
    .bind(row.payload.to_string())
    .bind(row.status.as_str())
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
    .bind(c.status.as_str())
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

pub async fn get(db: &Db, id: &str) -> Result<Option<RequestRow>, sqlx::Error> {
    let mut q = QueryBuilder::<Sqlite>::new(format!("SELECT {RECORD_COLUMNS} FROM requests WHERE id = "));
    q.push_bind(id);
    q.build_query_as().fetch_optional(db.readers()).await
}

/// One page of requests, newest first, and the total that match the filter.
pub async fn list(db: &Db, filter: &ListQuery) -> Result<(i64, Vec<RequestRow>), sqlx::Error> {
    let mut count = QueryBuilder::<Sqlite>::new("SELECT COUNT(*) FROM requests");
    push_filter(&mut count, filter);
    let total: i64 = count.build_query_scalar().fetch_one(db.readers()).await?;

    let mut page = QueryBuilder::<Sqlite>::new(format!("SELECT {RECORD_COLUMNS} FROM requests"));
    push_filter(&mut page, filter);
    page.push(" ORDER BY created_at DESC, id DESC LIMIT ")
        .push_bind(i64::from(filter.limit));
    page.push(" OFFSET ").push_bind(i64::from(filter.offset));
    let rows = page.build_query_as().fetch_all(db.readers()).await?;
    Ok((total, rows))
}

fn push_filter(q: &mut QueryBuilder<Sqlite>, filter: &ListQuery) {
    let mut sep = " WHERE ";
    if let Some(mode) = filter.mode {
        q.push(sep).push("mode = ").push_bind(mode.as_str());
        sep = " AND ";
    }
    if let Some(status) = filter.status {
        q.push(sep).push("status = ").push_bind(status.as_str());
    }
}

/// Counts by mode and status and the mean engine time, from the running totals that triggers
/// keep in `request_stats` (eight rows, however many requests are stored).
pub async fn summary(db: &Db) -> Result<Summary, sqlx::Error> {
    let stored: Vec<(String, String, i64, Option<f64>, i64)> =
        sqlx::query_as("SELECT mode, status, count, execution_ms_sum, execution_ms_count FROM request_stats")
            .fetch_all(db.readers())
            .await?;
    let rows: Vec<(Mode, Status, i64, Option<f64>, i64)> = stored
        .into_iter()
        .filter_map(|(m, s, count, sum, timed)| Some((m.parse().ok()?, s.parse().ok()?, count, sum, timed)))
        .collect();
    let mut summary = Summary::default();
    for &m in Mode::VARIANTS {
        summary.by_mode.insert(m.as_str(), 0);
    }
    for &s in Status::VARIANTS {
        summary.by_status.insert(s.as_str(), 0);
        for &m in Mode::VARIANTS {
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
