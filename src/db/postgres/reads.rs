//! Reading on PostgreSQL: one request with its delivery, a page of them, the cluster's totals
//! (summed over the counter shards), the backlog and the replicas.

use std::time::Duration;

use serde_json::Value;
use sqlx::postgres::PgRow;
use sqlx::types::Json;
use sqlx::{PgPool, Postgres, QueryBuilder, Row};

use super::secs;
use crate::db::listing::{self, push_filter};
use crate::db::{DeliveryRow, ListQuery, ReplicaRow, RequestRow, Summary};
use crate::model::{DeliveryStatus, Mode, Status};

/// The columns `request_row` reads, in one place.
const COLUMNS: &str = "r.id, r.mode, r.status, r.payload, r.result, r.error, r.callback_url, \
     rfc3339(r.created_at) AS created_at, rfc3339(r.started_at) AS started_at, \
     rfc3339(r.completed_at) AS completed_at, r.execution_time_ms, r.tenant, d.status AS delivery_status, d.attempts, \
     d.last_status_code, d.last_error, rfc3339(d.due_at) AS due_at";

fn request_row(row: &PgRow) -> Result<RequestRow, sqlx::Error> {
    let decode = |e: strum::ParseError| sqlx::Error::Decode(Box::new(e));
    let mode: String = row.try_get("mode")?;
    let status: String = row.try_get("status")?;
    let Json(payload): Json<Value> = row.try_get("payload")?;
    let result: Option<Json<Value>> = row.try_get("result")?;
    let callback_url: Option<String> = row.try_get("callback_url")?;
    let delivery_status: Option<String> = row.try_get("delivery_status")?;
    let delivery = match delivery_status {
        None => None,
        Some(status) => {
            let status: DeliveryStatus = status.parse().map_err(decode)?;
            Some(DeliveryRow {
                status,
                attempts: row.try_get("attempts")?,
                last_status_code: row.try_get("last_status_code")?,
                last_error: row.try_get("last_error")?,
                next_attempt_at: match status {
                    DeliveryStatus::Pending => row.try_get("due_at")?,
                    _ => None,
                },
            })
        }
    };
    Ok(RequestRow {
        id: row.try_get("id")?,
        mode: mode.parse::<Mode>().map_err(decode)?,
        status: status.parse::<Status>().map_err(decode)?,
        payload,
        result: result.map(|r| r.0),
        delivery: DeliveryRow::or_waiting(delivery, callback_url.is_some()),
        error: row.try_get("error")?,
        callback_url,
        created_at: row.try_get("created_at")?,
        started_at: row.try_get("started_at")?,
        completed_at: row.try_get("completed_at")?,
        execution_time_ms: row.try_get("execution_time_ms")?,
        tenant: row.try_get("tenant")?,
    })
}

pub(super) async fn get(pool: &PgPool, id: &str) -> Result<Option<RequestRow>, sqlx::Error> {
    let mut q = QueryBuilder::<Postgres>::new(format!(
        "SELECT {COLUMNS} FROM requests r LEFT JOIN deliveries d ON d.request_id = r.id WHERE r.id = "
    ));
    q.push_bind(id);
    let row = q.build().fetch_optional(pool).await?;
    row.as_ref().map(request_row).transpose()
}

/// One page of requests, newest first, and the total that match, both from one snapshot.
pub(super) async fn list(pool: &PgPool, query: &ListQuery) -> Result<(i64, Vec<RequestRow>), sqlx::Error> {
    let mut snapshot = pool
        .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await?;
    let total: i64 = if query.tenant.is_none() && query.delivery.is_none() {
        // Filtered by mode and status at most: the running totals have the count (16 shards
        // of a few rows, where a count(*) reads every matching row's index entry).
        total(&mut *snapshot, query.mode, query.status).await?
    } else {
        let mut count = QueryBuilder::<Postgres>::new(
            "SELECT count(*) FROM requests r LEFT JOIN deliveries d ON d.request_id = r.id",
        );
        push_filter(&mut count, query);
        count.build_query_scalar().fetch_one(&mut *snapshot).await?
    };
    let limit = listing::page_limit(query, total);
    let rows = if limit > 0 {
        page("", query, limit).build().fetch_all(&mut *snapshot).await?
    } else {
        Vec::new()
    };
    snapshot.commit().await?;
    Ok((total, rows.iter().map(request_row).collect::<Result<_, _>>()?))
}

/// The statement of one page of at most `limit` rows, after `prefix` (`EXPLAIN ` in `plans`).
pub(super) fn page(prefix: &str, query: &ListQuery, limit: i64) -> QueryBuilder<Postgres> {
    let mut page = QueryBuilder::<Postgres>::new(format!(
        "{prefix}SELECT {COLUMNS} FROM requests r LEFT JOIN deliveries d ON d.request_id = r.id"
    ));
    let sep = push_filter(&mut page, query);
    if let Some(before) = &query.before_id {
        page.push(sep)
            .push("(r.created_at, r.id) < (SELECT created_at, id FROM requests WHERE id = ")
            .push_bind(before.clone())
            .push(")");
    }
    // `requests_by_created` is ascending: read backwards, it gives this order with no sort.
    page.push(" ORDER BY r.created_at DESC, r.id DESC LIMIT ")
        .push_bind(limit);
    page.push(" OFFSET ").push_bind(i64::from(query.offset));
    page
}

/// The cluster's totals: the counter shards summed (a few dozen rows, however many requests).
pub(super) async fn summary(pool: &PgPool) -> Result<Summary, sqlx::Error> {
    let stored: Vec<(String, String, i64, f64, i64)> = sqlx::query_as(
        "SELECT mode, status, sum(count)::int8, sum(execution_ms_sum)::float8, sum(execution_ms_count)::int8 \
         FROM request_stats GROUP BY mode, status",
    )
    .fetch_all(pool)
    .await?;
    let states: Vec<(String, i64)> =
        sqlx::query_as("SELECT state, sum(count)::int8 FROM delivery_stats GROUP BY state")
            .fetch_all(pool)
            .await?;
    Ok(Summary::from_totals(&stored, &states))
}

/// The requests in `mode` and `status` (either or both `None`: any), from the running totals:
/// as exact as a `count(*)` of the committed rows (the triggers keep them in the writing
/// transaction), at the price of a few dozen rows, however many requests match.
async fn total(
    conn: impl sqlx::PgExecutor<'_>,
    mode: Option<Mode>,
    status: Option<Status>,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT COALESCE(sum(count), 0)::int8 FROM request_stats \
         WHERE ($1::text IS NULL OR mode = $1) AND ($2::text IS NULL OR status = $2)",
    )
    .bind(mode.map(Mode::as_str))
    .bind(status.map(Status::as_str))
    .fetch_one(conn)
    .await
}

/// Async jobs waiting to be claimed, from the running totals (`total`): the `count(*)` it
/// replaced was an index scan as long as the backlog (14 ms at 50,000 jobs).
pub(super) async fn backlog(pool: &PgPool) -> Result<u64, sqlx::Error> {
    let n = total(pool, Some(Mode::Async), Some(Status::Pending)).await?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// The replicas seen within `within`.
pub(super) async fn replicas(pool: &PgPool, within: Duration) -> Result<Vec<ReplicaRow>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT id, rfc3339(started_at) AS started_at, rfc3339(last_seen_at) AS last_seen_at, workers, \
                workers_busy, sync_in_flight, sync_max \
         FROM replicas WHERE last_seen_at >= now() - make_interval(secs => $1) ORDER BY id",
    )
    .bind(secs(within))
    .fetch_all(pool)
    .await?;
    let count = |row: &PgRow, name: &str| -> Result<u32, sqlx::Error> {
        Ok(u32::try_from(row.try_get::<i32, _>(name)?).unwrap_or(0))
    };
    rows.iter()
        .map(|row| {
            Ok(ReplicaRow {
                id: row.try_get("id")?,
                started_at: row.try_get("started_at")?,
                last_seen_at: row.try_get("last_seen_at")?,
                workers: count(row, "workers")?,
                workers_busy: count(row, "workers_busy")?,
                sync_in_flight: count(row, "sync_in_flight")?,
                sync_max: count(row, "sync_max")?,
            })
        })
        .collect()
}
