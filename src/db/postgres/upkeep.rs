//! Upkeep on PostgreSQL: the retention purge (one replica per round, under an advisory lock),
//! the health check's write, the database's size, and the cluster-wide rate limit.

use std::time::Duration;

use sqlx::PgPool;

use super::secs;
use crate::db::{PurgeRound, Purged, RateVerdict};

/// The advisory lock key of the purge: any fixed number that no other lock in this database uses.
const PURGE_LOCK: i64 = 0x5379_6e63_4173_796e; // "SyncAsyn"

/// Deletes up to `batch` finished requests completed before `before` whose delivery, if any, has
/// ended, then expired keys. One replica at a time holds the purge lock; the first batch of a
/// round also starts the round only when no replica started one within `round.every`, so the
/// cluster purges once per interval however many replicas it has.
pub(super) async fn purge(pool: &PgPool, round: PurgeRound<'_>) -> Result<Purged, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
        .bind(PURGE_LOCK)
        .fetch_one(&mut *tx)
        .await?;
    if !locked {
        return Ok(Purged {
            skipped: true,
            ..Purged::default()
        });
    }
    if let Some(every) = round.starts_round_unless_within {
        // The round marker lives in the replicas table's sibling: one row, taken under the lock.
        let started: Option<i32> = sqlx::query_scalar(
            "INSERT INTO purge_rounds (id, started_at) VALUES (1, now()) \
             ON CONFLICT (id) DO UPDATE SET started_at = now() \
             WHERE purge_rounds.started_at <= now() - make_interval(secs => $1) RETURNING id",
        )
        .bind(secs(every))
        .fetch_optional(&mut *tx)
        .await?;
        if started.is_none() {
            return Ok(Purged {
                skipped: true,
                ..Purged::default()
            });
        }
    }
    let requests = sqlx::query(
        "DELETE FROM requests WHERE id IN ( \
           SELECT r.id FROM requests r LEFT JOIN deliveries d ON d.request_id = r.id \
           WHERE r.status IN ('done', 'failed') AND r.completed_at < $1::timestamptz \
             AND (d.request_id IS NULL OR d.status IN ('delivered', 'failed')) \
           LIMIT $2)",
    )
    .bind(round.before)
    .bind(i64::from(round.batch))
    .execute(&mut *tx)
    .await?
    .rows_affected();
    let keys = sqlx::query("DELETE FROM idempotency_keys WHERE created_at < $1::timestamptz")
        .bind(round.keys_before)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    tx.commit().await?;
    Ok(Purged {
        requests,
        keys,
        skipped: false,
    })
}

/// A write round trip: the replica's row is touched.
pub(super) async fn ping_write(pool: &PgPool, owner: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO replicas (id, started_at, last_seen_at, workers, workers_busy, sync_in_flight, sync_max) \
         VALUES ($1, now(), now(), 0, 0, 0, 0) ON CONFLICT (id) DO UPDATE SET last_seen_at = now()",
    )
    .bind(owner)
    .execute(pool)
    .await
    .map(|_| ())
}

/// The database's size on disk.
pub(super) async fn database_bytes(pool: &PgPool) -> Result<u64, sqlx::Error> {
    let bytes: i64 = sqlx::query_scalar("SELECT pg_database_size(current_database())")
        .fetch_one(pool)
        .await?;
    Ok(u64::try_from(bytes).unwrap_or(0))
}

/// GCRA in one upsert: each request moves the key's theoretical arrival time (TAT) on by the
/// emission interval T = window / burst, and is allowed while the TAT stays within the burst
/// tolerance τ = T × (burst − 1) of now. A refused request changes nothing. `tokens` > 1 takes
/// that many at once, all or none (a replica's reservation, see `rate_limit::reserve`).
pub(super) async fn take_rate_tokens(
    pool: &PgPool,
    key: &str,
    tokens: u32,
    burst: u32,
    window: Duration,
) -> Result<RateVerdict, sqlx::Error> {
    let burst = burst.max(1);
    let tokens = tokens.clamp(1, burst);
    let t = window.as_secs_f64() / f64::from(burst);
    // GCRA for a weight of `tokens`: the theoretical arrival time moves `tokens × T` on from
    // itself (or from now, when it lies in the past), which is allowed while it stays within
    // `burst × T` of now. With one token this is the classic test `tat <= now + tau`.
    let ahead: Option<f64> = sqlx::query_scalar(
        "INSERT INTO rate_limits AS r (key, tat) VALUES ($1, now() + make_interval(secs => $2)) \
         ON CONFLICT (key) DO UPDATE SET tat = greatest(r.tat, now()) + make_interval(secs => $2) \
           WHERE greatest(r.tat, now()) + make_interval(secs => $2) <= now() + make_interval(secs => $3) \
         RETURNING extract(epoch FROM tat - now())::float8",
    )
    .bind(key)
    .bind(t * f64::from(tokens))
    .bind(t * f64::from(burst))
    .fetch_optional(pool)
    .await?;
    if let Some(ahead) = ahead {
        // The TAT is `ahead` past now: (burst × T − ahead) / T more requests fit right now.
        let remaining = ((f64::from(burst) * t - ahead) / t).floor().max(0.0);
        return Ok(RateVerdict::Allowed {
            remaining: remaining as u32,
        });
    }
    let ahead: f64 =
        sqlx::query_scalar("SELECT extract(epoch FROM tat - now())::float8 FROM rate_limits WHERE key = $1")
            .bind(key)
            .fetch_optional(pool)
            .await?
            .unwrap_or(0.0);
    // `tokens` fit once the TAT is back within (burst − tokens) × T of now.
    let wait = (ahead - t * f64::from(burst - tokens)).max(0.0);
    Ok(RateVerdict::Refused {
        retry_after: Duration::try_from_secs_f64(wait).unwrap_or(Duration::ZERO),
    })
}
