//! Writing new requests: async jobs (alone, or with their idempotency key in one transaction),
//! sync requests that start leased, and the end of a sync run.

use std::time::Duration;

use rusqlite::params_from_iter;
use rusqlite::types::Value;
use sqlx::SqlitePool;

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

/// The columns every insert writes, in the order `insert_statement` binds them.
const INSERT: &str = "INSERT INTO requests (id, mode, payload, status, callback_url, created_at, started_at, \
     client_ip, tenant, attempt, lease_owner, lease_expires_at, attempted_by) ";

/// The statement inserting `rows` and its values, 13 a row in `INSERT`'s order.
fn insert_statement<'r>(rows: impl IntoIterator<Item = &'r InsertRow>) -> (String, Vec<Value>) {
    let (mut sql, mut values) = (String::from(INSERT), Vec::new());
    for (i, row) in rows.into_iter().enumerate() {
        sql.push_str(if i == 0 { "VALUES " } else { ", " });
        sql.push_str("(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, strftime('%Y-%m-%dT%H:%M:%fZ', 'now', ?), ?)");
        let (owner, lease) = row.lease.clone().unzip();
        let attempted_by = serde_json::json!(owner.iter().collect::<Vec<_>>()).to_string();
        let text = |s: &str| Value::Text(s.to_owned());
        let optional = |s: Option<String>| s.map_or(Value::Null, Value::Text);
        values.extend([
            text(&row.id),
            text(row.mode.as_str()),
            text(&row.payload),
            text(row.status.as_str()),
            optional(row.callback_url.clone()),
            text(&row.created_at),
            optional(owner.as_ref().map(|_| row.created_at.clone())),
            text(&row.client_ip),
            optional(row.tenant.clone()),
            Value::Integer(i64::from(owner.is_some())),
            optional(owner),
            optional(lease.map(plus)),
            Value::Text(attempted_by),
        ]);
    }
    (sql, values)
}

/// Inserts rows with one statement on the writer thread: one turn, and atomic.
pub(super) async fn insert_many<'r>(
    writer: &Writer,
    rows: impl IntoIterator<Item = &'r InsertRow>,
) -> Result<(), sqlx::Error> {
    let (sql, values) = insert_statement(rows);
    writer
        .run(move |conn| conn.prepare_cached(&sql)?.execute(params_from_iter(values)).map(drop))
        .await
}

/// Remembers an idempotency key: an expired record of the key is replaced; a live one stays
/// (nothing changed).
const CLAIM_KEY: &str = "INSERT INTO idempotency_keys (client_ip, key, body_hash, request_id, created_at) \
     VALUES (?, ?, ?, ?, ?) \
     ON CONFLICT (client_ip, key) DO UPDATE SET body_hash = excluded.body_hash, \
     request_id = excluded.request_id, created_at = excluded.created_at \
     WHERE idempotency_keys.created_at < ?";

/// Inserts a job and remembers its key in one transaction. False (nothing stored) when a live
/// record of the key exists: another request with the same key won.
pub(super) async fn insert_with_key(writer: &Writer, job: &NewJob, key: &KeyClaim) -> Result<bool, sqlx::Error> {
    let (sql, values) = insert_statement([&InsertRow::job(job)]);
    let key_values = [
        key.scope.clone(),
        key.key.clone(),
        key.body_hash.clone(),
        job.id.clone(),
        job.created_at.clone(),
        key.not_before.clone(),
    ];
    writer
        .run(move |conn| {
            let tx = conn.transaction()?;
            tx.prepare_cached(&sql)?.execute(params_from_iter(values))?;
            let claimed = tx.prepare_cached(CLAIM_KEY)?.execute(params_from_iter(key_values))? == 1;
            if claimed {
                tx.commit()?;
            } // else dropping the transaction undoes the insert
            Ok(claimed)
        })
        .await
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
