//! The queue vacuums its own tables. Every claim, heartbeat and finish leaves a dead row version
//! behind, and a claim's index scan walks past the dead entries until a vacuum removes them.
//! PostgreSQL's autovacuum may be off (it is off on the server this project is benchmarked on) or
//! slow to reach a small, hot table: with 93,000 dead rows in `requests`, one replica drained
//! 146 jobs/s; after one `VACUUM` (0.4 s), 2,300 jobs/s. So every replica runs this loop, and
//! every `VACUUM_EVERY` one of them at a time (an advisory lock) vacuums each of the queue's tables
//! whose dead rows exceed `MIN_DEAD` plus `DEAD_SHARE` of its live rows. Where autovacuum is on
//! and keeps up, the threshold is rarely reached and the loop only reads the statistics.
//!
//! It also analyzes, every `ANALYZE_EVERY`, each of the `ANALYZED` tables whose rows changed by
//! more than `MIN_CHANGED` plus `CHANGED_SHARE` of its live rows since its last analysis.
//! Without autovacuum nothing else does, and the planner keeps the statistics of the empty
//! tables the migrations made. The queue pool's generic plans are made from them: on a fresh
//! database each claim read every pending row through the status index and sorted them (9 ms
//! for a claim of one job at 3,500 waiting), until the first vacuum. The share makes these
//! analyses geometric as a table grows (1,000 rows, 2,500, 6,000, ...) and rare once it is
//! large.

use std::time::{Duration, Instant};

use sqlx::PgPool;

use crate::liveness::Beat;

/// How often a replica looks for tables to analyze.
const ANALYZE_EVERY: Duration = Duration::from_secs(1);
/// How often a replica looks for tables to vacuum: a vacuum reads every index of its table,
/// whatever the number of dead rows, so it is not worth doing more often. Also the period
/// `/healthz` judges the loop by: a vacuum of a large table may hold a round up for seconds.
pub(super) const VACUUM_EVERY: Duration = Duration::from_secs(5);
/// The advisory lock key of the vacuum: one replica at a time. `PURGE_LOCK` + 1.
const VACUUM_LOCK: i64 = 0x5379_6e63_4173_796f;
/// Dead rows a table may carry before it is vacuumed, plus `DEAD_SHARE` of its live rows.
/// Autovacuum's defaults are 50 and 20%; a queue table is scanned far more often than most.
const MIN_DEAD: i64 = 1_000;
const DEAD_SHARE: f64 = 0.05;
/// The tables analyzed between vacuums: those whose rows the queue's statements search by more
/// than their primary key. The small ones (the counter shards, the replicas, the rate limits)
/// change by thousands of rows a second in place, and analyzing them every second would only
/// make every session plan their statements again.
const ANALYZED: [&str; 4] = ["requests", "deliveries", "callback_attempts", "idempotency_keys"];
/// Rows changed (inserted, updated or deleted) since the last analysis that make a table due
/// for another one, plus `CHANGED_SHARE` of its live rows.
const MIN_CHANGED: i64 = 1_000;
const CHANGED_SHARE: f64 = 0.5;
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
        let mut every = tokio::time::interval(ANALYZE_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_vacuum: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = every.tick() => {}
                () = pool.close_event() => break,
            }
            beat.tick();
            let vacuum = last_vacuum.is_none_or(|at| at.elapsed() >= VACUUM_EVERY);
            if vacuum {
                last_vacuum = Some(Instant::now());
            }
            match vacuum_once(&pool, vacuum).await {
                Ok(done) if !done.is_empty() => tracing::debug!(?done, "vacuumed or analyzed the queue's tables"),
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, "vacuum skipped; the next round tries again"),
            }
        }
    });
}

/// Vacuums (and analyzes) the queue's tables that are due for it if `vacuum` is set, and
/// analyzes those that changed enough since their last analysis, if no other replica is doing
/// so. Returns the tables vacuumed or analyzed.
pub(super) async fn vacuum_once(pool: &PgPool, vacuum: bool) -> Result<Vec<String>, sqlx::Error> {
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
    let done = async {
        let due: Vec<(String, bool)> = sqlx::query_as(
            "SELECT relname::text, $2 AND n_dead_tup > $3 + $4 * n_live_tup AS vacuum FROM pg_stat_user_tables \
             WHERE schemaname = current_schema() AND relname = ANY($1) \
               AND (($2 AND n_dead_tup > $3 + $4 * n_live_tup) \
                    OR (relname = ANY($7) AND n_mod_since_analyze > $5 + $6 * n_live_tup)) \
             ORDER BY n_dead_tup DESC",
        )
        .bind(&TABLES[..])
        .bind(vacuum)
        .bind(MIN_DEAD)
        .bind(DEAD_SHARE)
        .bind(MIN_CHANGED)
        .bind(CHANGED_SHARE)
        .bind(&ANALYZED[..])
        .fetch_all(&mut *conn)
        .await?;
        if due.is_empty() {
            return Ok(Vec::new());
        }
        // The session's statement timeout is for requests; a vacuum of a large table may take
        // longer, and holds no lock that requests wait for.
        sqlx::query("SET statement_timeout = 0").execute(&mut *conn).await?;
        for (table, vacuum) in &due {
            // `table` is one of `TABLES`, as the statistics name it.
            let command = if *vacuum { "VACUUM (ANALYZE)" } else { "ANALYZE" };
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("{command} \"{table}\"")))
                .execute(&mut *conn)
                .await?;
        }
        sqlx::query("RESET statement_timeout").execute(&mut *conn).await?;
        Ok::<_, sqlx::Error>(due.into_iter().map(|(table, _)| table).collect())
    }
    .await;
    if done.is_err() {
        let _ = sqlx::query("RESET statement_timeout").execute(&mut *conn).await;
    }
    let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(VACUUM_LOCK)
        .execute(&mut *conn)
        .await;
    done
}
