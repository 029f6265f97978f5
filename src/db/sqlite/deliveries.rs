//! Callback deliveries on SQLite: claimed when due, an attempt recorded (fenced) with where the
//! delivery goes next, redelivery of a failed one, and the attempt log.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;
use sqlx::sqlite::SqliteRow;
use sqlx::types::Json;
use sqlx::{Connection, Row, SqlitePool};

use super::writer::Writer;
use super::{now, plus};
use crate::db::store::{AttemptRecord, AttemptRow, ClaimedDelivery, Lease, RedeliverRefusal};
use crate::model::{DeliveryStatus, Status};

/// Claims up to `max` due deliveries, soonest due first, with what their attempt needs: two
/// statements on the writer, the claim and one read of the jobs' outcomes, rather than a
/// transaction with a read per delivery (each statement is a hand-off to sqlx's SQLite thread
/// and back, and the writer waited for all of them). No transaction is needed: a finished job's
/// outcome does not change, and a claim that is not followed by its read is left to its lease.
/// (`LIMIT +?3`: see `queue::claim_jobs`.)
pub(super) async fn claim(
    writer: &Writer,
    owner: &str,
    max: usize,
    lease: Duration,
) -> Result<Vec<ClaimedDelivery>, sqlx::Error> {
    if max == 0 {
        return Ok(Vec::new());
    }
    let mut conn = writer.lock().await?;
    let claimed: Vec<(String, i64, i64, i64)> = sqlx::query_as(concat!(
        "UPDATE deliveries SET status = 'delivering', claim = claim + 1, lease_owner = ?1, \
         lease_expires_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now', ?2), \
         attempted_by = json_insert(attempted_by, '$[#]', ?1) \
         WHERE request_id IN (SELECT request_id FROM deliveries WHERE status = 'pending' AND due_at <= ",
        now!(),
        " ORDER BY due_at LIMIT +?3) \
         RETURNING request_id, claim, attempts, round_start"
    ))
    .bind(owner)
    .bind(plus(lease))
    .bind(i64::try_from(max).unwrap_or(i64::MAX))
    .fetch_all(&mut *conn)
    .await?;
    if claimed.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<&str> = claimed.iter().map(|(id, ..)| id.as_str()).collect();
    let outcomes = sqlx::query(
        "SELECT id, callback_url, status, result, error, execution_time_ms, completed_at FROM requests \
         WHERE id IN (SELECT value FROM json_each(?))",
    )
    .bind(serde_json::to_string(&ids).unwrap_or_else(|_| "[]".to_owned()))
    .fetch_all(&mut *conn)
    .await?;
    drop(conn);
    let outcomes: HashMap<String, SqliteRow> = outcomes
        .into_iter()
        .map(|row| Ok((row.try_get("id")?, row)))
        .collect::<Result<_, sqlx::Error>>()?;
    let mut deliveries = Vec::with_capacity(claimed.len());
    for (id, claim, attempts, round_start) in claimed {
        // Always there: a request is purged only once its delivery has ended, and this one is
        // claimed. Were it gone, the claim would be left to its lease.
        let Some(row) = outcomes.get(&id) else { continue };
        let status: String = row.try_get("status")?;
        let result: Option<Json<Value>> = row.try_get("result")?;
        deliveries.push(ClaimedDelivery {
            lease: Lease { id, attempt: claim },
            callback_url: row.try_get::<Option<String>, _>("callback_url")?.unwrap_or_default(),
            attempts,
            round_start,
            status: status.parse().unwrap_or(Status::Failed),
            result: result.map(|r| r.0),
            error: row.try_get("error")?,
            execution_time_ms: row.try_get("execution_time_ms")?,
            completed_at: row.try_get("completed_at")?,
        });
    }
    Ok(deliveries)
}

/// How long until the soonest pending delivery is due; zero when one is due now.
pub(super) async fn next_due_in(readers: &SqlitePool) -> Result<Option<Duration>, sqlx::Error> {
    let seconds: Option<f64> = sqlx::query_scalar(concat!(
        "SELECT (julianday(MIN(due_at)) - julianday(",
        now!(),
        ")) * 86400.0 FROM deliveries WHERE status = 'pending'"
    ))
    .fetch_one(readers)
    .await?;
    Ok(seconds.map(|s| Duration::try_from_secs_f64(s.max(0.0)).unwrap_or(Duration::ZERO)))
}

/// Records attempts, and where each delivery goes next, each only if `owner` still holds its
/// claim, in one transaction. Returns, per record, whether it was stored.
pub(super) async fn record_attempts(
    writer: &Writer,
    owner: &str,
    records: &[AttemptRecord],
) -> Result<Vec<bool>, sqlx::Error> {
    if records.is_empty() {
        return Ok(Vec::new());
    }
    // Two statements whatever the batch's size, as for job outcomes: each statement is a
    // hand-off to sqlx's SQLite thread and back.
    let rows: Vec<Value> = records
        .iter()
        .map(|r| {
            serde_json::json!({
                "id": r.delivery.id,
                "claim": r.delivery.attempt,
                "status": r.next.status.as_str(),
                "due": r.next.due_in.map(plus),
                "number": r.attempt.number,
                "status_code": r.attempt.status_code,
                "error": r.attempt.error,
                "error_class": r.attempt.error_class,
                "attempted_at": r.attempt.attempted_at,
                "duration_ms": r.attempt.duration_ms,
            })
        })
        .collect();
    let mut conn = writer.lock().await?;
    let mut tx = conn.begin().await?;
    let moved: Vec<(String, i64)> = sqlx::query_as(
        "UPDATE deliveries SET status = a.status, \
           due_at = COALESCE(strftime('%Y-%m-%dT%H:%M:%fZ', 'now', a.due), deliveries.due_at), \
           attempts = a.number, last_status_code = a.status_code, last_error = a.error, \
           lease_owner = NULL, lease_expires_at = NULL \
         FROM (SELECT value ->> '$.id' AS id, value ->> '$.claim' AS claim, value ->> '$.status' AS status, \
                 value ->> '$.due' AS due, value ->> '$.number' AS number, \
                 value ->> '$.status_code' AS status_code, value ->> '$.error' AS error \
               FROM json_each(?2)) AS a \
         WHERE deliveries.request_id = a.id AND deliveries.status = 'delivering' \
           AND deliveries.lease_owner = ?1 AND deliveries.claim = a.claim \
         RETURNING deliveries.request_id, deliveries.claim",
    )
    .bind(owner)
    .bind(serde_json::to_string(&rows).unwrap_or_else(|_| "[]".to_owned()))
    .fetch_all(&mut *tx)
    .await?;
    let stored: Vec<bool> = records
        .iter()
        .map(|r| {
            moved
                .iter()
                .any(|(id, claim)| *id == r.delivery.id && *claim == r.delivery.attempt)
        })
        .collect();
    if !moved.is_empty() {
        let kept: Vec<&Value> = rows
            .iter()
            .zip(&stored)
            .filter(|(_, stored)| **stored)
            .map(|(row, _)| row)
            .collect();
        // `WHERE true` tells SQLite's parser that ON CONFLICT is not part of the SELECT's join.
        sqlx::query(
            "INSERT INTO callback_attempts (request_id, number, attempted_at, duration_ms, status_code, error_class, error) \
             SELECT value ->> '$.id', value ->> '$.number', value ->> '$.attempted_at', value ->> '$.duration_ms', \
               value ->> '$.status_code', value ->> '$.error_class', value ->> '$.error' \
             FROM json_each(?) WHERE true ON CONFLICT (request_id, number) DO NOTHING",
        )
        .bind(serde_json::to_string(&kept).unwrap_or_else(|_| "[]".to_owned()))
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(stored)
}

/// Starts a new round for a failed delivery: due now, with a fresh retry budget.
pub(super) async fn redeliver(
    writer: &Writer,
    readers: &SqlitePool,
    id: &str,
) -> Result<Result<(), RedeliverRefusal>, sqlx::Error> {
    let done = sqlx::query(concat!(
        "UPDATE deliveries SET status = 'pending', due_at = ",
        now!(),
        ", round_start = attempts WHERE request_id = ? AND status = 'failed'"
    ))
    .bind(id)
    .execute(&mut *writer.lock().await?)
    .await?;
    if done.rows_affected() == 1 {
        return Ok(Ok(()));
    }
    let state: Option<(Option<String>, bool)> = sqlx::query_as(
        "SELECT d.status, r.callback_url IS NOT NULL FROM requests r \
         LEFT JOIN deliveries d ON d.request_id = r.id WHERE r.id = ?",
    )
    .bind(id)
    .fetch_optional(readers)
    .await?;
    Ok(Err(match state {
        None => RedeliverRefusal::NotFound,
        Some((status, has_callback)) => {
            RedeliverRefusal::NotFailed(status.and_then(|s| s.parse::<DeliveryStatus>().ok()), has_callback)
        }
    }))
}

/// Every attempt for a request, oldest first.
pub(super) async fn attempts(readers: &SqlitePool, id: &str) -> Result<Vec<AttemptRow>, sqlx::Error> {
    type Row = (i64, String, f64, Option<i64>, Option<String>, Option<String>);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT number, attempted_at, duration_ms, status_code, error_class, error FROM callback_attempts \
         WHERE request_id = ? ORDER BY number",
    )
    .bind(id)
    .fetch_all(readers)
    .await?;
    Ok(rows
        .into_iter()
        .map(
            |(number, attempted_at, duration_ms, status_code, error_class, error)| AttemptRow {
                number,
                attempted_at,
                duration_ms,
                status_code,
                error_class,
                error,
            },
        )
        .collect())
}
