//! The job queue on PostgreSQL: claims with `FOR UPDATE SKIP LOCKED`, fenced finishes in one
//! statement per batch (the deliveries written by that same statement), releases at shutdown,
//! the batched heartbeat, and the rescue of expired leases.

use std::time::Duration;

use serde_json::Value;
use sqlx::postgres::PgArguments;
use sqlx::{PgPool, Postgres, Row};

use super::secs;
use crate::db::{ClaimedJob, Held, JobFinish, Lease, ReplicaBeat, Rescued};

/// The claim, as two CTEs (`picked`, `claimed`) for `claim_jobs` and `finish_and_claim`: the
/// first picks up to `max` pending jobs, oldest first, that no other claimer has locked (so
/// concurrent claimers never block on, or get, the same job) and fences the planner from
/// updating more rows than the limit; the second takes them, checking the state again. `$1` is
/// the owner, `$lease` the lease's seconds; the limit is written in (`super::limit`, as `$limit`
/// when bound).
fn claimed_ctes(max: usize, lease: u8, limit: u8) -> String {
    format!(
        "picked AS ( \
           SELECT id FROM requests WHERE status = 'pending' AND mode = 'async' \
           ORDER BY created_at, id LIMIT {} FOR UPDATE SKIP LOCKED), \
         claimed AS ( \
           UPDATE requests r SET status = 'processing', attempt = r.attempt + 1, lease_owner = $1, \
             lease_expires_at = now() + make_interval(secs => ${lease}), started_at = now(), \
             attempted_by = array_append(r.attempted_by, $1) \
           FROM picked WHERE r.id = picked.id AND r.status = 'pending' \
           RETURNING r.id, r.attempt, r.payload, r.callback_url, r.created_at)",
        super::limit(max, limit)
    )
}

/// The finish, as the CTEs `f` and `done` for `finish_jobs` and `finish_and_claim`: every
/// finish in `$2`..`$9` that `$1` still holds is stored. With `outbox` (some finish in the batch
/// has a callback), a third, `outbox`, writes the delivery of each that has one in the same
/// statement. Without one, the insert is left out: its statement trigger (the deliveries'
/// running totals) ran on every finish even when it inserted nothing. A small saving, within
/// this VM's noise: drains of tiny jobs on one replica (`SECS=8 ROUNDS=3 POSTGRES=1 bash
/// bench/drain.sh <new> <old>`) ran at a median of 3,660 jobs a second against 3,564 before,
/// with PostgreSQL's CPU per job at 197-210 µs against 204-210.
fn finished_ctes(outbox: bool) -> String {
    let ctes = "f AS (SELECT * FROM unnest($2::text[], $3::int8[], $4::text[], $5::text[], $6::text[], \
           $7::text[], $8::float8[], $9::text[]) AS f(id, attempt, status, result, error, completed_at, ms, started_at)), \
         done AS (UPDATE requests r SET status = f.status, result = f.result::jsonb, error = f.error, \
                    started_at = f.started_at::timestamptz, completed_at = f.completed_at::timestamptz, \
                    execution_time_ms = f.ms, \
                    lease_owner = NULL, lease_expires_at = NULL \
                  FROM f WHERE r.id = f.id AND r.status = 'processing' AND r.lease_owner = $1 \
                    AND r.attempt = f.attempt \
                  RETURNING r.id, r.attempt, r.callback_url)";
    if outbox {
        format!(
            "{ctes}, \
             outbox AS (INSERT INTO deliveries (request_id, status, due_at) \
                        SELECT id, 'pending', now() FROM done WHERE callback_url IS NOT NULL \
                        ON CONFLICT (request_id) DO NOTHING)"
        )
    } else {
        ctes.to_owned()
    }
}

/// Whether a batch of finishes needs the outbox (`finished_ctes`).
fn any_callback(finishes: &[JobFinish]) -> bool {
    finishes.iter().any(|f| f.has_callback)
}

/// Claims up to `max` pending jobs, oldest first (`claimed_ctes`).
pub(super) async fn claim_jobs(
    pool: &PgPool,
    owner: &str,
    max: usize,
    lease: Duration,
) -> Result<Vec<ClaimedJob>, sqlx::Error> {
    if max == 0 {
        return Ok(Vec::new());
    }
    let query = sqlx::query(sqlx::AssertSqlSafe(format!(
        "WITH {} SELECT id, attempt, payload, callback_url, created_at FROM claimed",
        claimed_ctes(max, 2, 3)
    )))
    .bind(owner)
    .bind(secs(lease));
    let claimed = super::bind_limit(query, max)
        .fetch_all(pool)
        .await?
        .iter()
        .map(crate::db::claimed_job)
        .collect::<Result<_, _>>()?;
    Ok(crate::db::oldest_first(claimed))
}

/// Binds the finishes as the arrays `$2`..`$9` of `finished_ctes` (`$1`, the owner, is bound).
fn bind_finishes<'q>(
    query: sqlx::query::Query<'q, Postgres, PgArguments>,
    finishes: &'q [JobFinish],
) -> sqlx::query::Query<'q, Postgres, PgArguments> {
    let ids: Vec<&str> = finishes.iter().map(|f| f.lease.id.as_str()).collect();
    let attempts: Vec<i64> = finishes.iter().map(|f| f.lease.attempt).collect();
    let statuses: Vec<&str> = finishes.iter().map(|f| f.completion.status.as_str()).collect();
    let results: Vec<Option<String>> = finishes
        .iter()
        .map(|f| f.completion.result.as_ref().map(Value::to_string))
        .collect();
    let errors: Vec<Option<&str>> = finishes.iter().map(|f| f.completion.error.as_deref()).collect();
    let completed: Vec<&str> = finishes.iter().map(|f| f.completion.completed_at.as_str()).collect();
    let ms: Vec<Option<f64>> = finishes.iter().map(|f| f.completion.execution_time_ms).collect();
    let started: Vec<&str> = finishes.iter().map(|f| f.started_at.as_str()).collect();
    query
        .bind(ids)
        .bind(attempts)
        .bind(statuses)
        .bind(results)
        .bind(errors)
        .bind(completed)
        .bind(ms)
        .bind(started)
}

/// What a finish stored: per finish, whether it was applied (by id and attempt: a batch may hold
/// a stale and a fresh outcome of one job), and whether any delivery was written.
fn applied(finishes: &[JobFinish], done: &[(String, i64, bool)]) -> (Vec<bool>, bool) {
    let was_applied = finishes
        .iter()
        .map(|f| {
            done.iter()
                .any(|(id, attempt, _)| *id == f.lease.id && *attempt == f.lease.attempt)
        })
        .collect();
    (was_applied, done.iter().any(|(_, _, callback)| *callback))
}

/// Stores every finish that still holds its lease, and the delivery of each that has a callback,
/// in one statement (one transaction). Returns which were applied, and whether any delivery was
/// written.
pub(super) async fn finish_jobs(
    pool: &PgPool,
    owner: &str,
    finishes: &[JobFinish],
) -> Result<(Vec<bool>, bool), sqlx::Error> {
    if finishes.is_empty() {
        return Ok((Vec::new(), false));
    }
    let query = sqlx::query(sqlx::AssertSqlSafe(format!(
        "WITH {} SELECT id, attempt, callback_url IS NOT NULL AS delivered FROM done",
        finished_ctes(any_callback(finishes))
    )))
    .bind(owner);
    let rows = bind_finishes(query, finishes).fetch_all(pool).await?;
    let done: Vec<(String, i64, bool)> = rows
        .iter()
        .map(|row| Ok((row.try_get("id")?, row.try_get("attempt")?, row.try_get("delivered")?)))
        .collect::<Result<_, sqlx::Error>>()?;
    Ok(applied(finishes, &done))
}

/// `finish_jobs` and `claim_jobs` in one statement: one round trip, one commit, and one run of
/// the statistics trigger instead of two of each. The two updates touch different rows (the
/// finished ones are `processing`, the claimed ones `pending`). Returns which finishes were
/// applied, whether any delivery was written, and the jobs claimed.
pub(super) async fn finish_and_claim(
    pool: &PgPool,
    owner: &str,
    finishes: &[JobFinish],
    max: usize,
    lease: Duration,
) -> Result<(Vec<bool>, bool, Vec<ClaimedJob>), sqlx::Error> {
    if max == 0 {
        let (applied, delivered) = finish_jobs(pool, owner, finishes).await?;
        return Ok((applied, delivered, Vec::new()));
    }
    if finishes.is_empty() {
        return Ok((Vec::new(), false, claim_jobs(pool, owner, max, lease).await?));
    }
    let query = sqlx::query(sqlx::AssertSqlSafe(format!(
        "WITH {}, {} \
         SELECT true AS finished, id, attempt, callback_url IS NOT NULL AS delivered, \
                NULL::jsonb AS payload, NULL::text AS callback_url, NULL::timestamptz AS created_at FROM done \
         UNION ALL \
         SELECT false, id, attempt, false, payload, callback_url, created_at FROM claimed",
        finished_ctes(any_callback(finishes)),
        claimed_ctes(max, 10, 11)
    )))
    .bind(owner);
    let query = bind_finishes(query, finishes).bind(secs(lease));
    let rows = super::bind_limit(query, max).fetch_all(pool).await?;
    let (mut done, mut claimed) = (Vec::new(), Vec::new());
    for row in &rows {
        if row.try_get("finished")? {
            done.push((row.try_get("id")?, row.try_get("attempt")?, row.try_get("delivered")?));
        } else {
            claimed.push(crate::db::claimed_job(row)?);
        }
    }
    let (applied, delivered) = applied(finishes, &done);
    Ok((applied, delivered, crate::db::oldest_first(claimed)))
}

/// Puts claimed jobs back as pending, giving back the attempt their claim took. Returns how many
/// went back.
pub(super) async fn release_jobs(pool: &PgPool, owner: &str, jobs: &[Lease]) -> Result<u64, sqlx::Error> {
    if jobs.is_empty() {
        return Ok(0);
    }
    let (ids, attempts) = columns(jobs);
    let released = sqlx::query(
        "UPDATE requests r SET status = 'pending', attempt = r.attempt - 1, lease_owner = NULL, \
           lease_expires_at = NULL, started_at = NULL \
         FROM unnest($2::text[], $3::int8[]) AS j(id, attempt) \
         WHERE r.id = j.id AND r.status = 'processing' AND r.lease_owner = $1 AND r.attempt = j.attempt",
    )
    .bind(owner)
    .bind(ids)
    .bind(attempts)
    .execute(pool)
    .await?
    .rows_affected();
    Ok(released)
}

/// Ids and attempts as two arrays, for `unnest`.
fn columns(leases: &[Lease]) -> (Vec<&str>, Vec<i64>) {
    leases.iter().map(|l| (l.id.as_str(), l.attempt)).unzip()
}

/// Renews every lease `owner` holds (one statement for requests, one for deliveries) and the
/// replica's row, in one transaction. Returns the leases that were not renewed.
pub(super) async fn heartbeat(
    pool: &PgPool,
    owner: &str,
    held: &Held,
    lease: Duration,
    replica: &ReplicaBeat,
) -> Result<Held, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let requests: Vec<Lease> = held.jobs.iter().chain(&held.sync).cloned().collect();
    let renewed: Vec<(String, i64)> = if requests.is_empty() {
        Vec::new()
    } else {
        let (ids, attempts) = columns(&requests);
        sqlx::query_as(
            "UPDATE requests r SET lease_expires_at = now() + make_interval(secs => $2) \
             FROM unnest($3::text[], $4::int8[]) AS h(id, attempt) \
             WHERE r.id = h.id AND r.attempt = h.attempt AND r.lease_owner = $1 AND r.status = 'processing' \
             RETURNING r.id, r.attempt",
        )
        .bind(owner)
        .bind(secs(lease))
        .bind(ids)
        .bind(attempts)
        .fetch_all(&mut *tx)
        .await?
    };
    let delivered: Vec<(String, i64)> = if held.deliveries.is_empty() {
        Vec::new()
    } else {
        let (ids, claims) = columns(&held.deliveries);
        sqlx::query_as(
            "UPDATE deliveries d SET lease_expires_at = now() + make_interval(secs => $2) \
             FROM unnest($3::text[], $4::int8[]) AS h(id, claim) \
             WHERE d.request_id = h.id AND d.claim = h.claim AND d.lease_owner = $1 AND d.status = 'delivering' \
             RETURNING d.request_id, d.claim",
        )
        .bind(owner)
        .bind(secs(lease))
        .bind(ids)
        .bind(claims)
        .fetch_all(&mut *tx)
        .await?
    };
    upsert_replica(&mut *tx, owner, replica).await?;
    tx.commit().await?;
    let lost = |leases: &[Lease], renewed: &[(String, i64)]| -> Vec<Lease> {
        leases
            .iter()
            .filter(|l| !renewed.iter().any(|(id, attempt)| *id == l.id && *attempt == l.attempt))
            .cloned()
            .collect()
    };
    Ok(Held {
        jobs: lost(&held.jobs, &renewed),
        sync: lost(&held.sync, &renewed),
        deliveries: lost(&held.deliveries, &delivered),
    })
}

/// Records the replica as alive, with its figures.
pub(super) async fn upsert_replica(
    db: impl sqlx::PgExecutor<'_>,
    owner: &str,
    replica: &ReplicaBeat,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO replicas (id, started_at, last_seen_at, workers, workers_busy, sync_in_flight, sync_max) \
         VALUES ($1, now(), now(), $2, $3, $4, $5) ON CONFLICT (id) DO UPDATE SET last_seen_at = now(), \
         workers = $2, workers_busy = $3, sync_in_flight = $4, sync_max = $5",
    )
    .bind(owner)
    .bind(i32::try_from(replica.workers).unwrap_or(i32::MAX))
    .bind(i32::try_from(replica.workers_busy).unwrap_or(i32::MAX))
    .bind(i32::try_from(replica.sync_in_flight).unwrap_or(i32::MAX))
    .bind(i32::try_from(replica.sync_max).unwrap_or(i32::MAX))
    .execute(db)
    .await
    .map(|_| ())
}

/// Why a job that kept losing its replica is failed for good.
const GAVE_UP: &str = "gave up: the replicas running this job stopped before it finished, attempt after attempt";
/// Why a sync request is failed when its replica is gone.
const SYNC_ORPHANED: &str = "the server stopped before this request finished";
/// Why a delivery that kept losing its replica is failed for good.
const DELIVERY_GAVE_UP: &str =
    "gave up: the replicas delivering this callback stopped before recording an attempt, time after time";

/// Sync requests whose replica is gone (their lease expired): failed. Through `requests_leased`,
/// the requests in flight; written `mode = 'sync' AND status IN ('pending', 'processing')`, the
/// planner took an index by status (dropped since, migration 0003) and read the whole backlog (17 ms at 100,000 waiting jobs,
/// in every replica's every rescue). Sync requests are stored `processing` with a lease, so none
/// is ever `pending` here.
pub(super) const RESCUE_SYNC: &str = "UPDATE requests SET status = 'failed', error = $2, completed_at = now(), \
       lease_owner = NULL, lease_expires_at = NULL \
     WHERE status = 'processing' AND mode = 'sync' \
       AND ($1 OR lease_expires_at IS NULL OR lease_expires_at < now())";

/// Puts expired work back in the queue, or fails it once its attempts are used. Every replica
/// runs this; two at once are harmless (each row is updated by one of them, and the other finds
/// it no longer expired).
pub(super) async fn rescue(pool: &PgPool, max_attempts: u32, everything: bool) -> Result<Rescued, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let (jobs_failed, jobs_requeued): (i64, i64) = sqlx::query_as(
        "WITH expired AS ( \
           UPDATE requests SET \
             status = CASE WHEN attempt >= $2 THEN 'failed' ELSE 'pending' END, \
             error = CASE WHEN attempt >= $2 THEN $3 ELSE error END, \
             completed_at = CASE WHEN attempt >= $2 THEN now() ELSE completed_at END, \
             started_at = CASE WHEN attempt >= $2 THEN started_at ELSE NULL END, \
             lease_owner = NULL, lease_expires_at = NULL \
           WHERE mode = 'async' AND status = 'processing' \
             AND ($1 OR lease_expires_at IS NULL OR lease_expires_at < now()) \
           RETURNING id, status, callback_url), \
         outbox AS (INSERT INTO deliveries (request_id, status, due_at) \
                    SELECT id, 'pending', now() FROM expired WHERE status = 'failed' AND callback_url IS NOT NULL \
                    ON CONFLICT (request_id) DO NOTHING) \
         SELECT count(*) FILTER (WHERE status = 'failed'), count(*) FILTER (WHERE status = 'pending') FROM expired",
    )
    .bind(everything)
    .bind(i64::from(max_attempts))
    .bind(GAVE_UP)
    .fetch_one(&mut *tx)
    .await?;
    let sync_failed = sqlx::query(RESCUE_SYNC)
        .bind(everything)
        .bind(SYNC_ORPHANED)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    // A delivery whose lease expired may or may not have reached its receiver: it is made again
    // (at least once), unless its replicas kept dying while holding it.
    let (deliveries_failed, deliveries_requeued): (i64, i64) = sqlx::query_as(
        "WITH expired AS ( \
           UPDATE deliveries SET \
             status = CASE WHEN claim - attempts >= $2 THEN 'failed' ELSE 'pending' END, \
             last_error = CASE WHEN claim - attempts >= $2 THEN $3 ELSE last_error END, \
             due_at = now(), lease_owner = NULL, lease_expires_at = NULL \
           WHERE status = 'delivering' AND ($1 OR lease_expires_at IS NULL OR lease_expires_at < now()) \
           RETURNING status) \
         SELECT count(*) FILTER (WHERE status = 'failed'), count(*) FILTER (WHERE status = 'pending') FROM expired",
    )
    .bind(everything)
    .bind(i64::from(max_attempts))
    .bind(DELIVERY_GAVE_UP)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    let n = |v: i64| u64::try_from(v).unwrap_or(0);
    Ok(Rescued {
        jobs_requeued: n(jobs_requeued),
        jobs_failed: n(jobs_failed),
        sync_failed,
        deliveries_requeued: n(deliveries_requeued),
        deliveries_failed: n(deliveries_failed),
    })
}
