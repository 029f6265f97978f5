//! The queue vacuums its own tables. Every claim, heartbeat and finish leaves a dead row version
//! behind, and a claim's index scan walks past the dead entries until a vacuum removes them.
//! PostgreSQL's autovacuum may be off (it is on the server this project is benchmarked on) or
//! slow to reach a small, hot table: with 93,000 dead rows in `requests`, one replica drained
//! 146 jobs/s; after one `VACUUM` (0.4 s), 2,300 jobs/s. So every replica runs this loop, and
//! every `EVERY` one of them at a time (an advisory lock) vacuums each of the queue's tables
//! whose dead rows exceed `MIN_DEAD` plus `DEAD_SHARE` of its live rows. Where autovacuum is on
//! and keeps up, the threshold is rarely reached and the loop only reads the statistics.

use std::time::Duration;

use sqlx::PgPool;

use crate::liveness::Beat;

/// How often a replica looks.
pub(super) const EVERY: Duration = Duration::from_secs(5);
/// The advisory lock key of the vacuum: one replica at a time. `PURGE_LOCK` + 1.
const VACUUM_LOCK: i64 = 0x5379_6e63_4173_796f;
/// Dead rows a table may carry before it is vacuumed, plus `DEAD_SHARE` of its live rows.
/// Autovacuum's defaults are 50 and 20%; a queue table is scanned far more often than most.
const MIN_DEAD: i64 = 1_000;
const DEAD_SHARE: f64 = 0.05;
/// The tables the queue rewrites as it works.
const TABLES: [&str; 9] = [
    "requests",
    "deliveries",
    "callback_attempts",
    "idempotency_keys",
    "replicas",
    "request_stats",
    "delivery_stats",
    "rate_limits",
    "purge_rounds",
];

/// Starts the loop; it ends when the pool is closed.
pub(super) fn start(pool: PgPool, beat: Beat) {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = every.tick() => {}
                () = pool.close_event() => break,
            }
            beat.tick();
            match vacuum_once(&pool).await {
                Ok(vacuumed) if !vacuumed.is_empty() => tracing::debug!(?vacuumed, "vacuumed the queue's tables"),
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, "vacuum skipped; the next round tries again"),
            }
        }
    });
}

/// Vacuums (and analyzes) the queue's tables that are due, if no other replica is doing so.
/// Returns the tables vacuumed.
pub(super) async fn vacuum_once(pool: &PgPool) -> Result<Vec<String>, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    // VACUUM cannot run in a transaction, so the lock is the session's, released below (or with
    // the connection, if it is lost).
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(VACUUM_LOCK)
        .fetch_one(&mut *conn)
        .await?;
    if !locked {
        return Ok(Vec::new());
    }
    let vacuumed = async {
        let due: Vec<String> = sqlx::query_scalar(
            "SELECT relname::text FROM pg_stat_user_tables \
             WHERE schemaname = current_schema() AND relname = ANY($1) \
               AND n_dead_tup > $2 + $3 * n_live_tup \
             ORDER BY n_dead_tup DESC",
        )
        .bind(&TABLES[..])
        .bind(MIN_DEAD)
        .bind(DEAD_SHARE)
        .fetch_all(&mut *conn)
        .await?;
        // The session's statement timeout is for requests; a vacuum of a large table may take
        // longer, and holds no lock that requests wait for.
        sqlx::query("SET statement_timeout = 0").execute(&mut *conn).await?;
        for table in &due {
            // `table` is one of `TABLES`, as the statistics name it.
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("VACUUM (ANALYZE) \"{table}\"")))
                .execute(&mut *conn)
                .await?;
        }
        Ok::<_, sqlx::Error>(due)
    }
    .await;
    let _ = sqlx::query("RESET statement_timeout").execute(&mut *conn).await;
    let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(VACUUM_LOCK)
        .execute(&mut *conn)
        .await;
    vacuumed
}
