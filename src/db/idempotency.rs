//! The `idempotency_keys` table: which request a client's `Idempotency-Key` produced.

use sqlx::SqliteExecutor;

use super::Db;

/// A remembered key.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct StoredKey {
    pub body_hash: String,
    pub request_id: String,
}

/// The live (not expired) record of `key` for `client_ip`.
pub async fn find(db: &Db, client_ip: &str, key: &str, not_before: &str) -> Result<Option<StoredKey>, sqlx::Error> {
    sqlx::query_as(
        "SELECT body_hash, request_id FROM idempotency_keys WHERE client_ip = ? AND key = ? AND created_at >= ?",
    )
    .bind(client_ip)
    .bind(key)
    .bind(not_before)
    .fetch_optional(db.readers())
    .await
}

/// A key to remember together with the request it produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyClaim {
    pub client_ip: String,
    pub key: String,
    pub body_hash: String,
    /// Records created before this are expired and may be replaced.
    pub not_before: String,
}

/// Inserts a request and, when given, its idempotency key, in one transaction. Returns false
/// (and stores nothing) when a live record for the key already exists: another request with the
/// same key won the race.
pub async fn insert_request_with_key(
    db: &Db,
    row: &super::requests::NewRequest<'_>,
    key: Option<&KeyClaim>,
) -> Result<bool, sqlx::Error> {
    let Some(k) = key else {
        // Without a key, the row joins the group commit.
        super::requests::insert(db, row).await?;
        return Ok(true);
    };
    let mut tx = db.writer().begin().await?;
    super::requests::insert_in(&mut *tx, row).await?;
    if !claim(
        &mut *tx,
        &k.client_ip,
        &k.key,
        &k.body_hash,
        row.id,
        row.created_at,
        &k.not_before,
    )
    .await?
    {
        tx.rollback().await?;
        return Ok(false);
    }
    tx.commit().await?;
    Ok(true)
}

/// Remembers `key` for `request_id`, replacing an expired record. Returns false when a live
/// record already exists.
async fn claim(
    db: impl SqliteExecutor<'_>,
    client_ip: &str,
    key: &str,
    body_hash: &str,
    request_id: &str,
    now: &str,
    not_before: &str,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "INSERT INTO idempotency_keys (client_ip, key, body_hash, request_id, created_at) VALUES (?, ?, ?, ?, ?) \
         ON CONFLICT (client_ip, key) DO UPDATE SET body_hash = excluded.body_hash, \
         request_id = excluded.request_id, created_at = excluded.created_at \
         WHERE idempotency_keys.created_at < ?",
    )
    .bind(client_ip)
    .bind(key)
    .bind(body_hash)
    .bind(request_id)
    .bind(now)
    .bind(not_before)
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Forgets keys older than `not_before`.
pub async fn purge_expired(db: &Db, not_before: &str) -> Result<u64, sqlx::Error> {
    let done = sqlx::query("DELETE FROM idempotency_keys WHERE created_at < ?")
        .bind(not_before)
        .execute(db.writer())
        .await?;
    Ok(done.rows_affected())
}
