//! Callback deliveries on SQLite: claimed when due, an attempt recorded (fenced) with where the
//! delivery goes next, redelivery of a failed one, and the attempt log.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;
use sqlx::sqlite::SqliteRow;
use sqlx::types::Json;
use sqlx::{Row, SqlitePool};

use super::writer::Writer;
use super::{now, plus};
use crate::db::{AttemptRecord, AttemptRow, ClaimedDelivery, Lease, RedeliverRefusal};
use crate::model::{DeliveryStatus, Status};

/// The `pending` deliveries that are due, soonest first, at most `?3` (`LIMIT +?3`: see
/// `queue::claim_jobs`).
macro_rules! due {
    () => {
        concat!(
            "SELECT request_id FROM deliveries WHERE status = 'pending' AND due_at <= ",
            now!(),
            " ORDER BY due_at LIMIT +?3"
        )
    };
}

/// Claims up to `?3` due deliveries for `?1`, with a lease of `?2`.
pub(super) const CLAIM_DELIVERIES: &str = concat!(
    "UPDATE deliveries SET status = 'delivering', claim = claim + 1, lease_owner = ?1, \
     lease_expires_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now', ?2), \
     attempted_by = json_insert(attempted_by, '$[#]', ?1) \
     WHERE request_id IN (",
    due!(),
    ") RETURNING request_id, claim, attempts, round_start, true AS claimed"
);

/// The attempts of `?2` as rows of `RECORD_ATTEMPTS` and `RECORD_AND_CLAIM` (`next` 0), read as
/// JSONB for the reason `finishes!` (queue.rs) gives.
macro_rules! recorded {
    () => {
        "SELECT value ->> '$.id' AS id, value ->> '$.claim' AS claim, value ->> '$.status' AS status, \
           value ->> '$.due' AS due, value ->> '$.number' AS number, \
           value ->> '$.status_code' AS status_code, value ->> '$.error' AS error, \
           value ->> '$.error_class' AS error_class, value ->> '$.attempted_at' AS attempted_at, \
           value ->> '$.duration_ms' AS duration_ms, 0 AS next \
         FROM jsonb_each(jsonb(?2))"
    };
}

/// Records every attempt of `?2` whose claim `?1` still holds, and where its delivery goes
/// next, in one statement: the `callback_attempts_log` trigger (migration 0007) logs each
/// attempt the fence let through, from the `last_*` columns this update writes.
pub(super) const RECORD_ATTEMPTS: &str = concat!(
    "UPDATE deliveries SET status = a.status, \
       due_at = COALESCE(strftime('%Y-%m-%dT%H:%M:%fZ', 'now', a.due), deliveries.due_at), \
       attempts = a.number, last_status_code = a.status_code, last_error = a.error, \
       last_attempted_at = a.attempted_at, last_duration_ms = a.duration_ms, \
       last_error_class = a.error_class, lease_owner = NULL, lease_expires_at = NULL \
     FROM (",
    recorded!(),
    ") AS a \
     WHERE deliveries.request_id = a.id AND deliveries.status = 'delivering' \
       AND deliveries.lease_owner = ?1 AND deliveries.claim = a.claim \
     RETURNING deliveries.request_id, deliveries.claim, deliveries.attempts, deliveries.round_start, \
       false AS claimed"
);

/// `RECORD_ATTEMPTS` and `CLAIM_DELIVERIES` as one statement, as `queue::FINISH_AND_CLAIM` is
/// for jobs: the attempts of `?2` and up to `?3` due deliveries, claimed for `?1` with a lease
/// of `?4`, are the rows of one `UPDATE ... FROM`. The claim sees the table as it was: its rows
/// are `pending`, the recorded ones `delivering`, and no row is both. A claimed row comes back
/// `delivering`; a recorded one never does.
pub(super) const RECORD_AND_CLAIM: &str = concat!(
    "UPDATE deliveries SET status = a.status, \
       due_at = CASE a.next WHEN 1 THEN deliveries.due_at \
                ELSE COALESCE(strftime('%Y-%m-%dT%H:%M:%fZ', 'now', a.due), deliveries.due_at) END, \
       attempts = CASE a.next WHEN 1 THEN deliveries.attempts ELSE a.number END, \
       last_status_code = CASE a.next WHEN 1 THEN deliveries.last_status_code ELSE a.status_code END, \
       last_error = CASE a.next WHEN 1 THEN deliveries.last_error ELSE a.error END, \
       last_attempted_at = CASE a.next WHEN 1 THEN deliveries.last_attempted_at ELSE a.attempted_at END, \
       last_duration_ms = CASE a.next WHEN 1 THEN deliveries.last_duration_ms ELSE a.duration_ms END, \
       last_error_class = CASE a.next WHEN 1 THEN deliveries.last_error_class ELSE a.error_class END, \
       claim = deliveries.claim + a.next, \
       lease_owner = CASE a.next WHEN 1 THEN ?1 END, \
       lease_expires_at = CASE a.next WHEN 1 THEN strftime('%Y-%m-%dT%H:%M:%fZ', 'now', ?4) END, \
       attempted_by = CASE a.next WHEN 1 THEN json_insert(deliveries.attempted_by, '$[#]', ?1) \
                      ELSE deliveries.attempted_by END \
     FROM (",
    recorded!(),
    " UNION ALL SELECT request_id, NULL, 'delivering', NULL, NULL, NULL, NULL, NULL, NULL, NULL, 1 FROM (",
    due!(),
    ")) AS a \
     WHERE deliveries.request_id = a.id AND CASE a.next WHEN 1 THEN deliveries.status = 'pending' \
       ELSE deliveries.status = 'delivering' AND deliveries.lease_owner = ?1 AND deliveries.claim = a.claim END \
     RETURNING deliveries.request_id, deliveries.claim, deliveries.attempts, deliveries.round_start, \
       deliveries.status = 'delivering' AS claimed"
);

/// A row of `CLAIM_DELIVERIES`, `RECORD_ATTEMPTS` or `RECORD_AND_CLAIM`: the delivery, its
/// claim (the fencing token), its attempts and round, and whether this write claimed it.
type Moved = (String, i64, i64, i64, bool);

/// Claims up to `max` due deliveries, soonest due first, with what their attempt needs
/// (`CLAIM_DELIVERIES`, then `with_outcomes`).
pub(super) async fn claim(
    writer: &Writer,
    readers: &SqlitePool,
    owner: &str,
    max: usize,
    lease: Duration,
) -> Result<Vec<ClaimedDelivery>, sqlx::Error> {
    if max == 0 {
        return Ok(Vec::new());
    }
    let claimed: Vec<Moved> = sqlx::query_as(CLAIM_DELIVERIES)
        .bind(owner)
        .bind(plus(lease))
        .bind(i64::try_from(max).unwrap_or(i64::MAX))
        .fetch_all(&mut *writer.lock().await?)
        .await?;
    with_outcomes(readers, claimed).await
}

/// What the attempts of `claimed` deliveries need: their jobs' outcomes, read after the claim,
/// with one statement through the readers, so that the writer is not held for it. No
/// transaction is needed: a finished job's outcome does not change, and a claim that is not
/// followed by its read is left to its lease.
async fn with_outcomes(readers: &SqlitePool, claimed: Vec<Moved>) -> Result<Vec<ClaimedDelivery>, sqlx::Error> {
    if claimed.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<&str> = claimed.iter().map(|(id, ..)| id.as_str()).collect();
    let outcomes = sqlx::query(
        "SELECT id, callback_url, status, result, error, execution_time_ms, completed_at FROM requests \
         WHERE id IN (SELECT value FROM json_each(?))",
    )
    .bind(serde_json::to_string(&ids).unwrap_or_else(|_| "[]".to_owned()))
    .fetch_all(readers)
    .await?;
    let outcomes: HashMap<String, SqliteRow> = outcomes
        .into_iter()
        .map(|row| Ok((row.try_get("id")?, row)))
        .collect::<Result<_, sqlx::Error>>()?;
    let mut deliveries = Vec::with_capacity(claimed.len());
    for (id, claim, attempts, round_start, _) in claimed {
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

/// The attempts as a JSON array, for `recorded!`.
fn attempt_rows(records: &[AttemptRecord]) -> String {
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
    Value::Array(rows).to_string()
}

/// Per record, whether `moved` holds it (by id and claim): whether it was stored.
fn stored(records: &[AttemptRecord], moved: &[Moved]) -> Vec<bool> {
    let stored: Vec<Lease> = moved
        .iter()
        .filter(|(.., claimed)| !claimed)
        .map(|(id, claim, ..)| Lease {
            id: id.clone(),
            attempt: *claim,
        })
        .collect();
    records.iter().map(|r| stored.contains(&r.delivery)).collect()
}

/// Records attempts, and where each delivery goes next, each only if `owner` still holds its
/// claim (`RECORD_ATTEMPTS`). Returns, per record, whether it was stored.
async fn record_attempts(writer: &Writer, owner: &str, records: &[AttemptRecord]) -> Result<Vec<bool>, sqlx::Error> {
    if records.is_empty() {
        return Ok(Vec::new());
    }
    let moved: Vec<Moved> = sqlx::query_as(RECORD_ATTEMPTS)
        .bind(owner)
        .bind(attempt_rows(records))
        .fetch_all(&mut *writer.lock().await?)
        .await?;
    Ok(stored(records, &moved))
}

/// `record_attempts` and `claim` in one write (`RECORD_AND_CLAIM`), then the claimed
/// deliveries' outcomes through the readers. Returns which records were stored, and the
/// deliveries claimed: none when that read fails, for the records are stored by then (the claims
/// are left to their lease).
pub(super) async fn record_and_claim(
    writer: &Writer,
    readers: &SqlitePool,
    owner: &str,
    records: &[AttemptRecord],
    max: usize,
    lease: Duration,
) -> Result<(Vec<bool>, Vec<ClaimedDelivery>), sqlx::Error> {
    if max == 0 {
        return Ok((record_attempts(writer, owner, records).await?, Vec::new()));
    }
    let moved: Vec<Moved> = sqlx::query_as(RECORD_AND_CLAIM)
        .bind(owner)
        .bind(attempt_rows(records))
        .bind(i64::try_from(max).unwrap_or(i64::MAX))
        .bind(plus(lease))
        .fetch_all(&mut *writer.lock().await?)
        .await?;
    let stored = stored(records, &moved);
    let claimed: Vec<Moved> = moved.into_iter().filter(|(.., claimed)| *claimed).collect();
    match with_outcomes(readers, claimed).await {
        Ok(claimed) => Ok((stored, claimed)),
        Err(e) => {
            tracing::warn!(error = %e, "reading claimed deliveries failed; their leases will expire");
            Ok((stored, Vec::new()))
        }
    }
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
