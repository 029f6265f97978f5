//! Callback deliveries on PostgreSQL: claimed when due with `FOR UPDATE SKIP LOCKED`, an attempt
//! recorded (fenced) with where the delivery goes next, redelivery, and the attempt log.

use std::time::Duration;

use serde_json::Value;
use sqlx::postgres::{PgArguments, PgRow};
use sqlx::types::Json;
use sqlx::{PgPool, Postgres, Row};

use super::secs;
use crate::db::{AttemptRecord, AttemptRow, ClaimedDelivery, Lease, RedeliverRefusal};
use crate::model::{DeliveryStatus, Status};

/// The claim, as two CTEs (`picked`, `claimed`) for `claim` and `record_and_claim`: up to the
/// limit of due deliveries, soonest due first, that no other claimer has locked, taken for `$1`
/// with the state checked again and a lease of `$lease` seconds. The limit is written in
/// (`super::limit`, as `$limit` when bound).
fn claimed_ctes(max: usize, lease: u8, limit: u8) -> String {
    format!(
        "picked AS ( \
           SELECT request_id FROM deliveries WHERE status = 'pending' AND due_at <= now() \
           ORDER BY due_at LIMIT {} FOR UPDATE SKIP LOCKED), \
         claimed AS ( \
           UPDATE deliveries d SET status = 'delivering', claim = d.claim + 1, lease_owner = $1, \
             lease_expires_at = now() + make_interval(secs => ${lease}), \
             attempted_by = array_append(d.attempted_by, $1) \
           FROM picked WHERE d.request_id = picked.request_id AND d.status = 'pending' \
           RETURNING d.request_id, d.claim, d.attempts, d.round_start)",
        super::limit(max, limit)
    )
}

/// What the attempt of each `claimed` delivery needs, with its job's outcome.
const CLAIMED_WITH_OUTCOMES: &str = "SELECT true AS claimed, c.request_id, c.claim, c.attempts, c.round_start, \
       r.callback_url, r.status, r.result, r.error, r.execution_time_ms, rfc3339(r.completed_at) AS completed_at \
     FROM claimed c JOIN requests r ON r.id = c.request_id";

/// The records of `$2`..`$11`, as three CTEs (`a`, `moved`, `logged`) for `record_attempts` and
/// `record_and_claim`: each delivery that `$1` still holds moves on, and its attempt is logged,
/// both or neither.
const RECORDED_CTES: &str = "a AS (SELECT * FROM unnest($2::text[], $3::int8[], $4::text[], $5::float8[], $6::int8[], \
              $7::int8[], $8::text[], $9::text[], $10::text[], $11::float8[]) \
            AS a(id, claim, status, due_in, number, status_code, error, error_class, attempted_at, duration_ms)), \
     moved AS (UPDATE deliveries d SET status = a.status, \
             due_at = CASE WHEN a.due_in IS NULL THEN d.due_at ELSE now() + make_interval(secs => a.due_in) END, \
             attempts = a.number, last_status_code = a.status_code, last_error = a.error, \
             lease_owner = NULL, lease_expires_at = NULL \
           FROM a WHERE d.request_id = a.id AND d.status = 'delivering' AND d.lease_owner = $1 \
             AND d.claim = a.claim \
           RETURNING d.request_id, d.claim), \
     logged AS (INSERT INTO callback_attempts \
              (request_id, number, attempted_at, duration_ms, status_code, error_class, error) \
            SELECT a.id, a.number, a.attempted_at::timestamptz, a.duration_ms, a.status_code, \
              a.error_class, a.error \
            FROM a JOIN moved m ON m.request_id = a.id AND m.claim = a.claim \
            ON CONFLICT (request_id, number) DO NOTHING)";

/// The rows of `moved`, shaped as those of `CLAIMED_WITH_OUTCOMES` (`claimed` false).
const MOVED: &str = "SELECT false AS claimed, request_id, claim, NULL::int8 AS attempts, NULL::int8 AS round_start, \
       NULL::text AS callback_url, NULL::text AS status, NULL::jsonb AS result, NULL::text AS error, \
       NULL::float8 AS execution_time_ms, NULL::text AS completed_at \
     FROM moved";

/// Binds the records as the arrays `$2`..`$11` of `RECORDED_CTES` (`$1`, the owner, is bound).
fn bind_records<'q>(
    query: sqlx::query::Query<'q, Postgres, PgArguments>,
    records: &'q [AttemptRecord],
) -> sqlx::query::Query<'q, Postgres, PgArguments> {
    let column = |f: fn(&AttemptRecord) -> Option<String>| records.iter().map(f).collect::<Vec<_>>();
    query
        .bind(records.iter().map(|r| r.delivery.id.as_str()).collect::<Vec<_>>())
        .bind(records.iter().map(|r| r.delivery.attempt).collect::<Vec<_>>())
        .bind(records.iter().map(|r| r.next.status.as_str()).collect::<Vec<_>>())
        .bind(records.iter().map(|r| r.next.due_in.map(secs)).collect::<Vec<_>>())
        .bind(records.iter().map(|r| r.attempt.number).collect::<Vec<_>>())
        .bind(records.iter().map(|r| r.attempt.status_code).collect::<Vec<_>>())
        .bind(column(|r| r.attempt.error.clone()))
        .bind(column(|r| r.attempt.error_class.clone()))
        .bind(
            records
                .iter()
                .map(|r| r.attempt.attempted_at.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(records.iter().map(|r| r.attempt.duration_ms).collect::<Vec<_>>())
}

/// Splits rows of `MOVED` and `CLAIMED_WITH_OUTCOMES`: per record, whether it was stored (by id
/// and claim), and the deliveries claimed.
fn split(records: &[AttemptRecord], rows: &[PgRow]) -> Result<(Vec<bool>, Vec<ClaimedDelivery>), sqlx::Error> {
    let (mut moved, mut claimed) = (Vec::new(), Vec::new());
    for row in rows {
        if row.try_get("claimed")? {
            claimed.push(claimed_delivery(row)?);
        } else {
            moved.push(Lease {
                id: row.try_get("request_id")?,
                attempt: row.try_get("claim")?,
            });
        }
    }
    let stored = records.iter().map(|r| moved.contains(&r.delivery)).collect();
    Ok((stored, claimed))
}

/// A row of `CLAIMED_WITH_OUTCOMES`.
fn claimed_delivery(row: &PgRow) -> Result<ClaimedDelivery, sqlx::Error> {
    let status: String = row.try_get("status")?;
    let result: Option<Json<Value>> = row.try_get("result")?;
    Ok(ClaimedDelivery {
        lease: Lease {
            id: row.try_get("request_id")?,
            attempt: row.try_get("claim")?,
        },
        callback_url: row.try_get::<Option<String>, _>("callback_url")?.unwrap_or_default(),
        attempts: row.try_get("attempts")?,
        round_start: row.try_get("round_start")?,
        status: status.parse().unwrap_or(Status::Failed),
        result: result.map(|r| r.0),
        error: row.try_get("error")?,
        execution_time_ms: row.try_get("execution_time_ms")?,
        completed_at: row.try_get("completed_at")?,
    })
}

/// Claims up to `max` due deliveries, soonest due first, with what their attempt needs, in one
/// statement (`claimed_ctes`).
pub(super) async fn claim(
    pool: &PgPool,
    owner: &str,
    max: usize,
    lease: Duration,
) -> Result<Vec<ClaimedDelivery>, sqlx::Error> {
    if max == 0 {
        return Ok(Vec::new());
    }
    let query = sqlx::query(sqlx::AssertSqlSafe(format!(
        "WITH {} {CLAIMED_WITH_OUTCOMES}",
        claimed_ctes(max, 2, 3)
    )))
    .bind(owner)
    .bind(secs(lease));
    let rows = super::bind_limit(query, max).fetch_all(pool).await?;
    rows.iter().map(claimed_delivery).collect()
}

/// How long until the soonest pending delivery is due; zero when one is due now.
pub(super) async fn next_due_in(pool: &PgPool) -> Result<Option<Duration>, sqlx::Error> {
    let seconds: Option<f64> = sqlx::query_scalar(
        "SELECT extract(epoch FROM min(due_at) - now())::float8 FROM deliveries WHERE status = 'pending'",
    )
    .fetch_one(pool)
    .await?;
    Ok(seconds.map(|s| Duration::try_from_secs_f64(s.max(0.0)).unwrap_or(Duration::ZERO)))
}

/// Records attempts, and where each delivery goes next, if `owner` still holds the claim: one
/// statement for the whole batch (`RECORDED_CTES`), so each attempt and its move are stored
/// together or not at all. Returns, per record, whether it was stored.
async fn record_attempts(pool: &PgPool, owner: &str, records: &[AttemptRecord]) -> Result<Vec<bool>, sqlx::Error> {
    if records.is_empty() {
        return Ok(Vec::new());
    }
    let query = sqlx::query(sqlx::AssertSqlSafe(format!("WITH {RECORDED_CTES} {MOVED}"))).bind(owner);
    let rows = bind_records(query, records).fetch_all(pool).await?;
    Ok(split(records, &rows)?.0)
}

/// `record_attempts` and `claim` in one statement, as `queue::finish_and_claim` is for jobs: one
/// round trip, one commit, and one run of the statistics trigger instead of two of each. The two
/// updates touch different rows (the recorded ones are `delivering`, the claimed ones `pending`
/// in the statement's snapshot). Returns which records were stored, and the deliveries claimed.
pub(super) async fn record_and_claim(
    pool: &PgPool,
    owner: &str,
    records: &[AttemptRecord],
    max: usize,
    lease: Duration,
) -> Result<(Vec<bool>, Vec<ClaimedDelivery>), sqlx::Error> {
    if max == 0 {
        return Ok((record_attempts(pool, owner, records).await?, Vec::new()));
    }
    if records.is_empty() {
        return Ok((Vec::new(), claim(pool, owner, max, lease).await?));
    }
    let query = sqlx::query(sqlx::AssertSqlSafe(format!(
        "WITH {RECORDED_CTES}, {} {MOVED} UNION ALL {CLAIMED_WITH_OUTCOMES}",
        claimed_ctes(max, 12, 13)
    )))
    .bind(owner);
    let query = bind_records(query, records).bind(secs(lease));
    let rows = super::bind_limit(query, max).fetch_all(pool).await?;
    split(records, &rows)
}

/// Starts a new round for a failed delivery: due now, with a fresh retry budget.
/// The client is told the redelivery started: the update goes through the durable pool and waits
/// for the WAL flush.
pub(super) async fn redeliver(
    durable: &PgPool,
    pool: &PgPool,
    id: &str,
) -> Result<Result<(), RedeliverRefusal>, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE deliveries SET status = 'pending', due_at = now(), round_start = attempts \
         WHERE request_id = $1 AND status = 'failed'",
    )
    .bind(id)
    .execute(durable)
    .await?;
    if done.rows_affected() == 1 {
        return Ok(Ok(()));
    }
    let state: Option<(Option<String>, bool)> = sqlx::query_as(
        "SELECT d.status, r.callback_url IS NOT NULL FROM requests r \
         LEFT JOIN deliveries d ON d.request_id = r.id WHERE r.id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?;
    Ok(Err(match state {
        None => RedeliverRefusal::NotFound,
        Some((status, has_callback)) => {
            RedeliverRefusal::NotFailed(status.and_then(|s| s.parse::<DeliveryStatus>().ok()), has_callback)
        }
    }))
}

/// Every attempt for a request, oldest first.
pub(super) async fn attempts(pool: &PgPool, id: &str) -> Result<Vec<AttemptRow>, sqlx::Error> {
    type Row = (i64, String, f64, Option<i64>, Option<String>, Option<String>);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT number, rfc3339(attempted_at), duration_ms, status_code, error_class, error FROM callback_attempts \
         WHERE request_id = $1 ORDER BY number",
    )
    .bind(id)
    .fetch_all(pool)
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
