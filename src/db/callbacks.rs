//! Callback delivery state (the delivery columns of `requests`) and the `callback_attempts` log.

use serde_json::Value;
use sqlx::Transaction;
use sqlx::types::Json;

use super::Db;
use crate::model::{DeliveryStatus, Status};

/// Everything one delivery attempt needs, read fresh before each attempt.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct DueDelivery {
    pub id: String,
    pub callback_url: String,
    #[sqlx(try_from = "String")]
    pub delivery_status: DeliveryStatus,
    /// RFC 3339 UTC; `None` means now.
    pub next_attempt_at: Option<String>,
    /// Attempts made so far, all rounds.
    pub attempts: i64,
    /// `attempts` when the current round began.
    pub delivery_round_start: i64,
    #[sqlx(try_from = "String")]
    pub status: Status,
    pub result: Option<Json<Value>>,
    pub error: Option<String>,
    pub execution_time_ms: Option<f64>,
    pub completed_at: Option<String>,
}

/// One delivery attempt, as stored.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct AttemptRow {
    /// 1, 2, 3... across every round.
    pub number: i64,
    /// RFC 3339 UTC.
    pub attempted_at: String,
    pub duration_ms: f64,
    /// NULL when no HTTP answer came back.
    pub status_code: Option<i64>,
    /// NULL on success; otherwise `timeout`, `connect`, `http_status`, `redirect` or `refused`.
    pub error_class: Option<String>,
    pub error: Option<String>,
}

/// Where the delivery goes after an attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct AfterAttempt<'a> {
    pub delivery_status: DeliveryStatus,
    pub next_attempt_at: Option<&'a str>,
}

/// A delivery that is due or waiting, if the request has one in progress.
pub async fn due(db: &Db, id: &str) -> Result<Option<DueDelivery>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, callback_url, delivery_status, next_attempt_at, attempts, delivery_round_start, status, \
         result, error, execution_time_ms, completed_at FROM requests \
         WHERE id = ? AND callback_url IS NOT NULL AND delivery_status IN ('pending', 'delivering')",
    )
    .bind(id)
    .fetch_optional(db.readers())
    .await
}

pub async fn mark_delivering(db: &Db, id: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE requests SET delivery_status = 'delivering' WHERE id = ?")
        .bind(id)
        .execute(db.writer())
        .await
        .map(|_| ())
}

/// Stores an attempt and the delivery's next state in one transaction.
pub async fn record_attempt(
    db: &Db,
    id: &str,
    attempt: &AttemptRow,
    next: &AfterAttempt<'_>,
) -> Result<(), sqlx::Error> {
    let mut tx: Transaction<'_, sqlx::Sqlite> = db.writer().begin().await?;
    sqlx::query(
        "INSERT INTO callback_attempts (request_id, number, attempted_at, duration_ms, status_code, error_class, error) \
         VALUES (?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(id)
    .bind(attempt.number)
    .bind(&attempt.attempted_at)
    .bind(attempt.duration_ms)
    .bind(attempt.status_code)
    .bind(&attempt.error_class)
    .bind(&attempt.error)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE requests SET attempts = ?, last_status_code = ?, last_error = ?, delivery_status = ?, \
         next_attempt_at = ? WHERE id = ?",
    )
    .bind(attempt.number)
    .bind(attempt.status_code)
    .bind(&attempt.error)
    .bind(next.delivery_status.as_str())
    .bind(next.next_attempt_at)
    .bind(id)
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

/// Every attempt for a request, oldest first.
pub async fn attempts(db: &Db, id: &str) -> Result<Vec<AttemptRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT number, attempted_at, duration_ms, status_code, error_class, error FROM callback_attempts \
         WHERE request_id = ? ORDER BY number",
    )
    .bind(id)
    .fetch_all(db.readers())
    .await
}

/// Deliveries a previous run left pending or in flight: startup recovery resumes them.
pub async fn unfinished(db: &Db) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT id FROM requests WHERE delivery_status IN ('pending', 'delivering') ORDER BY next_attempt_at, id",
    )
    .fetch_all(db.readers())
    .await
}

/// Why a redelivery was not started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedeliverRefusal {
    NotFound,
    /// The request has no callback, or its delivery is not `failed`.
    NotFailed(Option<DeliveryStatus>, bool),
}

/// Starts a new delivery round for a failed delivery: due now, with a fresh retry budget.
pub async fn restart_failed(db: &Db, id: &str, now: &str) -> Result<Result<(), RedeliverRefusal>, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE requests SET delivery_status = 'pending', next_attempt_at = ?, delivery_round_start = attempts \
         WHERE id = ? AND delivery_status = 'failed'",
    )
    .bind(now)
    .bind(id)
    .execute(db.writer())
    .await?;
    if done.rows_affected() == 1 {
        return Ok(Ok(()));
    }
    let state: Option<(Option<String>, bool)> =
        sqlx::query_as("SELECT delivery_status, callback_url IS NOT NULL FROM requests WHERE id = ?")
            .bind(id)
            .fetch_optional(db.readers())
            .await?;
    Ok(Err(match state {
        None => RedeliverRefusal::NotFound,
        Some((status, has_callback)) => RedeliverRefusal::NotFailed(status.and_then(|s| s.parse().ok()), has_callback),
    }))
}
