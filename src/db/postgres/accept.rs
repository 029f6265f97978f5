//! Writing new requests on PostgreSQL: many rows in one statement (the group commit's), a job with
//! its idempotency key in one transaction, and the end of a sync run.
//!
//! The backlog limit holds for the whole cluster: each insert reads the waiting jobs' running
//! total in the same statement and stores only the async rows that still fit.
//! Two replicas committing at the same moment do not see each other's rows, so the backlog can
//! pass the limit by at most one batch per other replica: (N − 1) × `MAX_BATCH`. A job with an
//! idempotency key is inserted alone, beside the group commit, on another of the replica's D
//! durable connections, and sees neither: with keys, (N − 1) × `MAX_BATCH` + N × (D − 1), and
//! with keys alone (no batch in flight, all D connections carrying keyed inserts) N × D − 1.

use std::time::Duration;

use sqlx::PgPool;

use super::secs;
use crate::db::{Accepted, Completion, KeyClaim, NewJob, NewSync, StoredKey};
use crate::model::{Mode, Status};

/// A `requests` row to insert, owning its fields so it can wait in the group commit.
#[derive(Debug, Clone)]
pub(super) struct InsertRow {
    pub(super) id: String,
    mode: Mode,
    /// The payload, serialised.
    payload: String,
    status: Status,
    callback_url: Option<String>,
    created_at: String,
    client_ip: String,
    tenant: Option<String>,
    /// Sync rows start leased to the replica running them.
    lease: Option<(String, Duration)>,
    /// Async rows are stored only while fewer than this many jobs wait.
    backlog_limit: Option<u64>,
}

impl InsertRow {
    pub(super) fn job(job: &NewJob, backlog_limit: u64) -> Self {
        Self {
            id: job.id.clone(),
            mode: Mode::Async,
            payload: job.payload.to_string(),
            status: Status::Pending,
            callback_url: job.callback_url.clone(),
            created_at: job.created_at.clone(),
            client_ip: job.client_ip.clone(),
            tenant: job.tenant.clone(),
            lease: None,
            backlog_limit: Some(backlog_limit),
        }
    }

    /// The backlog limit this row is inserted under (jobs only).
    pub(super) fn backlog_limit(&self) -> Option<u64> {
        self.backlog_limit
    }

    pub(super) fn sync(request: &NewSync, owner: &str, lease: Duration) -> Self {
        Self {
            id: request.id.clone(),
            mode: Mode::Sync,
            payload: request.payload.to_string(),
            status: Status::Processing,
            callback_url: None,
            created_at: request.created_at.clone(),
            client_ip: request.client_ip.clone(),
            tenant: request.tenant.clone(),
            lease: Some((owner.to_owned(), lease)),
            backlog_limit: None,
        }
    }
}

/// Inserts `rows` in one statement; the async rows that do not fit in the backlog are left out.
/// Returns the ids stored.
pub(super) async fn insert_many<'e>(
    db: impl sqlx::PgExecutor<'e>,
    rows: &[&InsertRow],
    count_backlog: bool,
) -> Result<Vec<String>, sqlx::Error> {
    // Each async row's place among this statement's async rows: row k fits when the backlog
    // plus k is within its limit. Sync rows (rank 0) always go in.
    let mut rank = 0i64;
    let ranks: Vec<i64> = rows
        .iter()
        .map(|r| match r.backlog_limit {
            Some(_) => {
                rank += 1;
                rank
            }
            None => 0,
        })
        .collect();
    let limits: Vec<i64> = rows
        .iter()
        .map(|r| {
            r.backlog_limit
                .map_or(i64::MAX, |l| i64::try_from(l).unwrap_or(i64::MAX))
        })
        .collect();
    // The backlog comes from the running totals (see `super::reads::backlog`), read only when the
    // caller does not know it to be far below the limit. Whether it is read is written into the
    // statement rather than bound (see `super::limit`): two prepared statements.
    let count_backlog = count_backlog && rows.iter().any(|r| r.backlog_limit.is_some());
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "WITH backlog AS ( \
           SELECT coalesce(sum(count), 0) AS n FROM request_stats \
           WHERE mode = 'async' AND status = 'pending' AND {count_backlog}), \
         t AS (SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], \
                 $7::text[], $8::text[], $9::float8[], $10::int8[], $11::int8[], $12::text[]) \
               AS t(id, mode, payload, status, callback_url, created_at, client_ip, owner, lease_secs, rank, lim, \
                    tenant)) \
         INSERT INTO requests (id, mode, payload, status, callback_url, created_at, started_at, client_ip, tenant, \
                               attempt, lease_owner, lease_expires_at, attempted_by) \
         SELECT t.id, t.mode, t.payload::jsonb, t.status, t.callback_url, t.created_at::timestamptz, \
                CASE WHEN t.owner IS NULL THEN NULL ELSE t.created_at::timestamptz END, t.client_ip, t.tenant, \
                CASE WHEN t.owner IS NULL THEN 0 ELSE 1 END, t.owner, \
                CASE WHEN t.owner IS NULL THEN NULL ELSE now() + make_interval(secs => t.lease_secs) END, \
                CASE WHEN t.owner IS NULL THEN '{{}}'::text[] ELSE ARRAY[t.owner] END \
         FROM t, backlog WHERE t.rank = 0 OR backlog.n + t.rank <= t.lim \
         RETURNING id"
    )))
    .bind(rows.iter().map(|r| r.id.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.mode.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.payload.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.status.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.callback_url.as_deref()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.created_at.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.client_ip.as_str()).collect::<Vec<_>>())
    .bind(
        rows.iter()
            .map(|r| r.lease.as_ref().map(|(o, _)| o.as_str()))
            .collect::<Vec<_>>(),
    )
    .bind(
        rows.iter()
            .map(|r| r.lease.as_ref().map_or(0.0, |(_, l)| secs(*l)))
            .collect::<Vec<_>>(),
    )
    .bind(ranks)
    .bind(limits)
    .bind(rows.iter().map(|r| r.tenant.as_deref()).collect::<Vec<_>>())
    .fetch_all(db)
    .await
}

/// Inserts a job and remembers its key in one transaction. Two replicas that get the same key at
/// once both insert; the key's primary key makes the second wait for the first and then find the
/// key taken, so it rolls back: one job.
pub(super) async fn insert_with_key(
    durable: &PgPool,
    job: &NewJob,
    key: &KeyClaim,
    backlog_limit: u64,
) -> Result<Accepted, sqlx::Error> {
    let mut tx = durable.begin().await?;
    let row = InsertRow::job(job, backlog_limit);
    if insert_many(&mut *tx, &[&row], true).await?.is_empty() {
        tx.rollback().await?;
        return Ok(Accepted::BacklogFull);
    }
    // An expired record of the key is replaced; a live one stays and the insert is undone.
    let claimed = sqlx::query(
        "INSERT INTO idempotency_keys AS k (scope, key, body_hash, request_id, created_at) \
         VALUES ($1, $2, $3, $4, $5::timestamptz) \
         ON CONFLICT (scope, key) DO UPDATE SET body_hash = excluded.body_hash, \
           request_id = excluded.request_id, created_at = excluded.created_at \
         WHERE k.created_at < $6::timestamptz",
    )
    .bind(&key.scope)
    .bind(&key.key)
    .bind(&key.body_hash)
    .bind(&job.id)
    .bind(&job.created_at)
    .bind(&key.not_before)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if !claimed {
        tx.rollback().await?;
        return Ok(Accepted::KeyTaken);
    }
    tx.commit().await?;
    Ok(Accepted::Stored)
}

/// The live record of `key` in `scope`.
pub(super) async fn find_key(
    pool: &PgPool,
    scope: &str,
    key: &str,
    not_before: &str,
) -> Result<Option<StoredKey>, sqlx::Error> {
    let row: Option<(String, String)> = sqlx::query_as(
        "SELECT body_hash, request_id FROM idempotency_keys \
         WHERE scope = $1 AND key = $2 AND created_at >= $3::timestamptz",
    )
    .bind(scope)
    .bind(key)
    .bind(not_before)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|(body_hash, request_id)| StoredKey { body_hash, request_id }))
}

/// Stores how a sync run ended, if `owner` still holds it. The client is about to get this
/// result: its record goes through the durable pool and waits for the WAL flush.
pub(super) async fn finish_sync(durable: &PgPool, id: &str, owner: &str, c: &Completion) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE requests SET status = $1, result = $2::jsonb, error = $3, completed_at = $4::timestamptz, \
         execution_time_ms = $5, lease_owner = NULL, lease_expires_at = NULL \
         WHERE id = $6 AND status = 'processing' AND lease_owner = $7",
    )
    .bind(c.status.as_str())
    .bind(c.result.as_ref().map(serde_json::Value::to_string))
    .bind(&c.error)
    .bind(&c.completed_at)
    .bind(c.execution_time_ms)
    .bind(id)
    .bind(owner)
    .execute(durable)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Whether `id` is among the `stored` ids.
pub(super) fn outcome(stored: &[String], id: &str) -> Accepted {
    if stored.iter().any(|s| s == id) {
        Accepted::Stored
    } else {
        Accepted::BacklogFull
    }
}

/// The most rows one statement takes; also the overshoot bound per other replica.
pub(super) const MAX_BATCH: usize = 128;
