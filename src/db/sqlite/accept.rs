//! Writing new requests: async jobs (alone, or with their idempotency key in one transaction),
//! sync requests that start leased, and the end of a sync run.

use std::time::Duration;

use sqlx::{Connection, QueryBuilder, Sqlite, SqliteExecutor, SqlitePool};

use super::plus;
use super::writer::Writer;
use crate::db::{Completion, KeyClaim, NewJob, NewSync, StoredKey};
use crate::model::{Mode, Status};

/// A `requests` row to insert, owning its fields so it can wait in the group commit.
#[derive(Debug, Clone)]
pub(super) struct InsertRow {
    id: String,
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
}

impl InsertRow {
    pub(super) fn job(job: &NewJob) -> Self {
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
        }
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
        }
    }
}

/// The columns every insert writes, in the order `push_row` binds them.
const INSERT: &str = "INSERT INTO requests (id, mode, payload, status, callback_url, created_at, started_at, \
     client_ip, tenant, attempt, lease_owner, lease_expires_at, attempted_by) ";

/// Inserts rows with one statement: one round trip to the database thread, and atomic.
pub(super) async fn insert_many<'r>(
    db: impl SqliteExecutor<'_>,
    rows: impl IntoIterator<Item = &'r InsertRow>,
) -> Result<(), sqlx::Error> {
    let mut q = QueryBuilder::<Sqlite>::new(INSERT);
    q.push_values(rows, |mut b, row| {
        let owner = row.lease.as_ref().map(|(owner, _)| owner.as_str());
        b.push_bind(&row.id)
            .push_bind(row.mode.as_str())
            .push_bind(&row.payload)
            .push_bind(row.status.as_str())
            .push_bind(&row.callback_url)
            .push_bind(&row.created_at)
            .push_bind(owner.map(|_| &row.created_at))
            .push_bind(&row.client_ip)
            .push_bind(&row.tenant)
            .push_bind(i64::from(owner.is_some()))
            .push_bind(owner)
            .push("strftime('%Y-%m-%dT%H:%M:%fZ', 'now', ")
            .push_bind_unseparated(row.lease.as_ref().map(|(_, lease)| plus(*lease)))
            .push_unseparated(")")
            .push_bind(serde_json::json!(owner.into_iter().collect::<Vec<_>>()).to_string());
    });
    q.build().execute(db).await.map(|_| ())
}

/// Inserts a job and remembers its key in one transaction. False (nothing stored) when a live
/// record of the key exists: another request with the same key won.
pub(super) async fn insert_with_key(writer: &Writer, job: &NewJob, key: &KeyClaim) -> Result<bool, sqlx::Error> {
    let mut conn = writer.lock().await?;
    let mut tx = conn.begin().await?;
    insert_many(&mut *tx, [&InsertRow::job(job)]).await?;
    // An expired record of the key is replaced; a live one stays and the insert is undone.
    let claimed = sqlx::query(
        "INSERT INTO idempotency_keys (client_ip, key, body_hash, request_id, created_at) VALUES (?, ?, ?, ?, ?) \
         ON CONFLICT (client_ip, key) DO UPDATE SET body_hash = excluded.body_hash, \
         request_id = excluded.request_id, created_at = excluded.created_at \
         WHERE idempotency_keys.created_at < ?",
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
        return Ok(false);
    }
    tx.commit().await?;
    Ok(true)
}

/// The live record of `key` in `scope` (the column is still named `client_ip`, its first scope).
pub(super) async fn find_key(
    readers: &SqlitePool,
    scope: &str,
    key: &str,
    not_before: &str,
) -> Result<Option<StoredKey>, sqlx::Error> {
    let row: Option<(String, String)> = sqlx::query_as(
        "SELECT body_hash, request_id FROM idempotency_keys WHERE client_ip = ? AND key = ? AND created_at >= ?",
    )
    .bind(scope)
    .bind(key)
    .bind(not_before)
    .fetch_optional(readers)
    .await?;
    Ok(row.map(|(body_hash, request_id)| StoredKey { body_hash, request_id }))
}

/// Stores how a sync run ended, if `owner` still holds it.
pub(super) async fn finish_sync(writer: &Writer, id: &str, owner: &str, c: &Completion) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE requests SET status = ?, result = ?, error = ?, completed_at = ?, execution_time_ms = ?, \
         lease_owner = NULL, lease_expires_at = NULL \
         WHERE id = ? AND status = 'processing' AND lease_owner = ?",
    )
    .bind(c.status.as_str())
    .bind(c.result.as_ref().map(serde_json::Value::to_string))
    .bind(&c.error)
    .bind(&c.completed_at)
    .bind(c.execution_time_ms)
    .bind(id)
    .bind(owner)
    .execute(&mut *writer.lock().await?)
    .await?;
    Ok(done.rows_affected() == 1)
}
