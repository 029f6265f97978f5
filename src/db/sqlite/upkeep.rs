//! Upkeep on SQLite: deleting finished requests after the retention period, and the health
//! check's write.

use super::now;
use super::writer::Writer;
use crate::db::{PurgeRound, Purged};

/// Up to `?2` finished requests completed before `?1` whose delivery has ended, oldest first
/// through `requests_finished`. Left to choose, SQLite searched a status index instead,
/// newest first, and read every finished request inside the retention period before it reached
/// one to delete: 177 ms a batch with the writer held for 290,000 recent rows, against 57 ms.
pub(super) const PURGE_REQUESTS: &str = "DELETE FROM requests WHERE id IN ( \
       SELECT r.id FROM requests r INDEXED BY requests_finished \
         LEFT JOIN deliveries d ON d.request_id = r.id \
       WHERE r.status IN ('done', 'failed') AND r.completed_at < ?1 \
         AND (d.request_id IS NULL OR d.status IN ('delivered', 'failed')) \
       LIMIT ?2)";

/// Deletes up to `batch` finished requests completed before `before` whose delivery, if any, has
/// ended (their attempts, delivery and idempotency key go with them), then expired keys.
pub(super) async fn purge(writer: &Writer, round: PurgeRound<'_>) -> Result<Purged, sqlx::Error> {
    let mut conn = writer.lock().await?;
    let requests = sqlx::query(PURGE_REQUESTS)
        .bind(round.before)
        .bind(i64::from(round.batch))
        .execute(&mut *conn)
        .await?
        .rows_affected();
    let keys = sqlx::query("DELETE FROM idempotency_keys WHERE created_at < ?")
        .bind(round.keys_before)
        .execute(&mut *conn)
        .await?
        .rows_affected();
    Ok(Purged {
        requests,
        keys,
        skipped: false,
    })
}

/// A write that goes all the way through the writer and the WAL: the health check's. It takes
/// the writer thread's path, the one acknowledgements take.
pub(super) async fn ping_write(writer: &Writer, owner: &str) -> Result<(), sqlx::Error> {
    const PING: &str = concat!(
        "INSERT INTO replicas (id, started_at, last_seen_at, workers, workers_busy, sync_in_flight, sync_max) \
         VALUES (?1, ",
        now!(),
        ", ",
        now!(),
        ", 0, 0, 0, 0) ON CONFLICT (id) DO UPDATE SET last_seen_at = ",
        now!()
    );
    let owner = owner.to_owned();
    writer
        .run(move |conn| conn.prepare_cached(PING)?.execute([owner]).map(drop))
        .await
}
