//! Reading on SQLite: one request with its delivery, a page of them, the running totals behind
//! `/metrics`, the backlog and the replicas.

use std::time::Duration;

use serde_json::Value;
use sqlx::sqlite::SqliteRow;
use sqlx::types::Json;
use sqlx::{QueryBuilder, Row, Sqlite, SqlitePool};

use super::plus;
use crate::db::listing::{self, push_filter};
use crate::db::{DeliveryRow, ListQuery, ReplicaRow, RequestRow, Summary};
use crate::model::{DeliveryStatus, Mode, Status};

/// The columns `request_row` reads, in one place.
const COLUMNS: &str = "r.id, r.mode, r.status, r.payload, r.result, r.error, r.callback_url, r.created_at, \
     r.started_at, r.completed_at, r.execution_time_ms, r.tenant, d.status AS delivery_status, d.attempts, \
     d.last_status_code, d.last_error, d.due_at";

fn request_row(row: &SqliteRow) -> Result<RequestRow, sqlx::Error> {
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

pub(super) async fn get(readers: &SqlitePool, id: &str) -> Result<Option<RequestRow>, sqlx::Error> {
    let mut q = QueryBuilder::<Sqlite>::new(format!(
        "SELECT {COLUMNS} FROM requests r LEFT JOIN deliveries d ON d.request_id = r.id WHERE r.id = "
    ));
    q.push_bind(id);
    let row = q.build().fetch_optional(readers).await?;
    row.as_ref().map(request_row).transpose()
}

/// One page of requests, newest first, and the total that match, both from one snapshot.
pub(super) async fn list(readers: &SqlitePool, query: &ListQuery) -> Result<(i64, Vec<RequestRow>), sqlx::Error> {
    let mut snapshot = readers.begin().await?;
    let total: i64 = if query.tenant.is_none() && query.delivery.is_none() {
        // Filtered by mode and status at most: the running totals have the count (a few rows,
        // where a COUNT would read every request of a status that has no index of its own).
        sqlx::query_scalar(
            "SELECT COALESCE(SUM(count), 0) FROM request_stats \
             WHERE (?1 IS NULL OR mode = ?1) AND (?2 IS NULL OR status = ?2)",
        )
        .bind(query.mode.map(Mode::as_str))
        .bind(query.status.map(Status::as_str))
        .fetch_one(&mut *snapshot)
        .await?
    } else {
        let mut count = QueryBuilder::<Sqlite>::new(
            "SELECT COUNT(*) FROM requests r LEFT JOIN deliveries d ON d.request_id = r.id",
        );
        push_filter(&mut count, query);
        count.build_query_scalar().fetch_one(&mut *snapshot).await?
    };
    let limit = listing::page_limit(query, total);
    let rows = if limit > 0 {
        page(query, limit).build().fetch_all(&mut *snapshot).await?
    } else {
        Vec::new()
    };
    snapshot.commit().await?;
    Ok((total, rows.iter().map(request_row).collect::<Result<_, _>>()?))
}

/// The statement of one page of at most `limit` rows.
pub(super) fn page(query: &ListQuery, limit: i64) -> QueryBuilder<Sqlite> {
    // The requests in flight are few, but they sit behind the backlog in the newest-first order,
    // and a page after a cursor would read on through every older request: they are read from
    // the rescuer's `requests_leased` and sorted instead. A tenant's own index stays better.
    let in_flight = query.status == Some(Status::Processing) && query.tenant.is_none();
    let mut page = QueryBuilder::<Sqlite>::new(format!(
        "SELECT {COLUMNS} FROM requests r {} LEFT JOIN deliveries d ON d.request_id = r.id",
        if in_flight { "INDEXED BY requests_leased" } else { "" }
    ));
    let sep = push_filter(&mut page, query);
    if let Some(before) = &query.before_id {
        // Row values compare column by column: the same order as ORDER BY, so a page never
        // repeats or skips a row that was there when the first page was read.
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

/// Counts by mode and status, deliveries by state and the mean engine time, from the running
/// totals that triggers keep (a few rows, however many requests are stored).
pub(super) async fn summary(readers: &SqlitePool) -> Result<Summary, sqlx::Error> {
    let stored: Vec<(String, String, i64, f64, i64)> =
        sqlx::query_as("SELECT mode, status, count, execution_ms_sum, execution_ms_count FROM request_stats")
            .fetch_all(readers)
            .await?;
    let states: Vec<(String, i64)> = sqlx::query_as("SELECT state, count FROM delivery_stats")
        .fetch_all(readers)
        .await?;
    Ok(Summary::from_totals(&stored, &states))
}

/// The backlog's count, from the claim's own index alone (left to choose, SQLite read every
/// pending row of the table to check its mode).
pub(super) const COUNT_BACKLOG: &str =
    "SELECT COUNT(*) FROM requests INDEXED BY requests_claimable WHERE status = 'pending' AND mode = 'async'";

/// Async jobs waiting to be claimed, counted once at start.
pub(super) async fn count_backlog(readers: &SqlitePool) -> Result<u64, sqlx::Error> {
    let n: i64 = sqlx::query_scalar(COUNT_BACKLOG).fetch_one(readers).await?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// The replicas seen within `within`.
pub(super) async fn replicas(readers: &SqlitePool, within: Duration) -> Result<Vec<ReplicaRow>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT id, started_at, last_seen_at, workers, workers_busy, sync_in_flight, sync_max FROM replicas \
         WHERE last_seen_at >= strftime('%Y-%m-%dT%H:%M:%fZ', 'now', ?) ORDER BY id",
    )
    .bind(format!("-{}", plus(within).trim_start_matches('+')))
    .fetch_all(readers)
    .await?;
    rows.iter()
        .map(|row| {
            Ok(ReplicaRow {
                id: row.try_get("id")?,
                started_at: row.try_get("started_at")?,
                last_seen_at: row.try_get("last_seen_at")?,
                workers: row.try_get("workers")?,
                workers_busy: row.try_get("workers_busy")?,
                sync_in_flight: row.try_get("sync_in_flight")?,
                sync_max: row.try_get("sync_max")?,
            })
        })
        .collect()
}
