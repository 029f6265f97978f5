//! The job queue on SQLite: claims, fenced finishes (with the delivery written in the same
//! transaction), releases at shutdown, the batched heartbeat, and the rescue of expired leases.

use std::time::Duration;

use chrono::DateTime;
use rusqlite::params;
use serde_json::Value;
use sqlx::Connection;

use super::writer::Writer;
use super::{now, plus};
use crate::db::{ClaimedJob, Held, JobFinish, Lease, ReplicaBeat, Rescued};

/// The claim of up to `?3` pending jobs, oldest first. SQLite runs one write at a time, so a
/// claim can never overlap another: the subquery and the update are one statement.
///
/// `LIMIT +?3`, not `LIMIT ?3`: SQLite plans a bare bound LIMIT with the value bound at the time,
/// so every claim made it compile the statement again (a fifth of the writer thread's time in a
/// drain of tiny jobs). The unary plus keeps the limit out of the planner, and the cached
/// statement is reused. `INDEXED BY`: the oldest pending async jobs straight from their own
/// index, in order; left to choose, SQLite searched the `pending` range of the status index
/// that migration 0008 dropped, and read each row for its mode (`plans` checks this).
pub(super) const CLAIM_JOBS: &str = "UPDATE requests SET status = 'processing', attempt = attempt + 1, lease_owner = ?1, \
     lease_expires_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now', ?2), \
     started_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), \
     attempted_by = json_insert(attempted_by, '$[#]', ?1) \
     WHERE id IN (SELECT id FROM requests INDEXED BY requests_claimable \
                  WHERE status = 'pending' AND mode = 'async' ORDER BY created_at, id LIMIT +?3) \
     RETURNING id, attempt, payload, callback_url, created_at";

/// The finishes of `?2`, as rows of `FINISH_JOBS` and `FINISH_AND_CLAIM` (`claim` 0). `jsonb(?2)`
/// parses the array once, and each `->>` reads its element's binary form; over `json_each(?2)`
/// each of the eight `->>` parsed the element's text again, a quarter of a 20-job finish's time
/// in SQLite (`bench/sqlite-statements.py`).
macro_rules! finishes {
    () => {
        "SELECT value ->> '$.id' AS id, value ->> '$.attempt' AS attempt, \
       value ->> '$.status' AS status, value ->> '$.result' AS result, value ->> '$.error' AS error, \
       value ->> '$.started_at' AS started_at, value ->> '$.completed_at' AS completed_at, \
       value ->> '$.ms' AS ms, 0 AS claim \
         FROM jsonb_each(jsonb(?2))"
    };
}

/// Stores every finish of `?2` that `?1` still holds, whatever the batch's size, in one
/// statement: each statement is a hand-off to sqlx's SQLite thread and back, and one per row
/// cost more than the rows did. The delivery of each job with a callback is written by the
/// outbox trigger (migration 0006) within that same statement.
const FINISH_JOBS: &str = concat!(
    "UPDATE requests SET status = f.status, result = f.result, error = f.error, \
       started_at = f.started_at, completed_at = f.completed_at, execution_time_ms = f.ms, \
       lease_owner = NULL, lease_expires_at = NULL \
     FROM (",
    finishes!(),
    ") AS f \
     WHERE requests.id = f.id AND requests.status = 'processing' \
       AND requests.lease_owner = ?1 AND requests.attempt = f.attempt \
     RETURNING requests.id, requests.attempt, requests.status, NULL AS payload, \
       requests.callback_url, requests.created_at"
);

/// `FINISH_JOBS` and `CLAIM_JOBS` as one statement: the finishes of `?2` and up to `?3` pending
/// jobs, claimed for `?1` with a lease of `?4`, are the rows of one `UPDATE ... FROM`. One
/// hand-off to the SQLite thread and one commit per cycle of the workers rather than two of
/// each. SQLite gathers the rows an `UPDATE ... FROM` changes before it changes any, so the
/// claim sees the queue as it was: its rows are `pending`, the finished ones `processing`, and
/// no row is both. A claimed row comes back `processing` with its payload, a finished one
/// `done` or `failed`.
pub(super) const FINISH_AND_CLAIM: &str = concat!(
    "UPDATE requests SET status = f.status, \
       result = CASE f.claim WHEN 1 THEN requests.result ELSE f.result END, \
       error = CASE f.claim WHEN 1 THEN requests.error ELSE f.error END, \
       completed_at = CASE f.claim WHEN 1 THEN requests.completed_at ELSE f.completed_at END, \
       execution_time_ms = CASE f.claim WHEN 1 THEN requests.execution_time_ms ELSE f.ms END, \
       started_at = coalesce(f.started_at, strftime('%Y-%m-%dT%H:%M:%fZ', 'now')), \
       attempt = requests.attempt + f.claim, \
       lease_owner = CASE f.claim WHEN 1 THEN ?1 END, \
       lease_expires_at = CASE f.claim WHEN 1 THEN strftime('%Y-%m-%dT%H:%M:%fZ', 'now', ?4) END, \
       attempted_by = CASE f.claim WHEN 1 THEN json_insert(requests.attempted_by, '$[#]', ?1) \
                      ELSE requests.attempted_by END \
     FROM (",
    finishes!(),
    " UNION ALL \
       SELECT id, NULL, 'processing', NULL, NULL, NULL, NULL, NULL, 1 FROM \
         (SELECT id FROM requests INDEXED BY requests_claimable \
          WHERE status = 'pending' AND mode = 'async' ORDER BY created_at, id LIMIT +?3)) AS f \
     WHERE requests.id = f.id AND CASE f.claim WHEN 1 THEN requests.status = 'pending' \
       ELSE requests.status = 'processing' AND requests.lease_owner = ?1 AND requests.attempt = f.attempt END \
     RETURNING requests.id, requests.attempt, requests.status, \
       CASE WHEN requests.status = 'processing' THEN requests.payload END AS payload, \
       requests.callback_url, requests.created_at"
);

/// Claims up to `max` pending jobs, oldest first (`CLAIM_JOBS`), on the writer thread.
pub(super) async fn claim_jobs(
    writer: &Writer,
    owner: &str,
    max: usize,
    lease: Duration,
) -> Result<Vec<ClaimedJob>, sqlx::Error> {
    if max == 0 {
        return Ok(Vec::new());
    }
    let (owner, lease, max) = (owner.to_owned(), plus(lease), limit(max));
    let rows = writer
        .run(move |conn| job_rows(conn, CLAIM_JOBS, params![owner, lease, max]))
        .await?;
    let claimed = rows.into_iter().map(JobRow::claimed).collect::<Result<_, _>>()?;
    Ok(crate::db::oldest_first(claimed))
}

/// A claim's limit, bound.
fn limit(max: usize) -> i64 {
    i64::try_from(max).unwrap_or(i64::MAX)
}

/// Stores every finish that still holds its lease (`FINISH_JOBS`), on the writer thread.
pub(super) async fn finish_jobs(
    writer: &Writer,
    owner: &str,
    finishes: &[JobFinish],
) -> Result<Vec<bool>, sqlx::Error> {
    if finishes.is_empty() {
        return Ok(Vec::new());
    }
    let (owner, json) = (owner.to_owned(), finish_rows(finishes));
    let rows = writer
        .run(move |conn| job_rows(conn, FINISH_JOBS, params![owner, json]))
        .await?;
    Ok(finished_and_claimed(finishes, rows)?.0)
}

/// `finish_jobs` and `claim_jobs` in one statement (`FINISH_AND_CLAIM`), on the writer thread.
/// Returns which finishes were applied, and the jobs claimed, oldest first.
pub(super) async fn finish_and_claim(
    writer: &Writer,
    owner: &str,
    finishes: &[JobFinish],
    max: usize,
    lease: Duration,
) -> Result<(Vec<bool>, Vec<ClaimedJob>), sqlx::Error> {
    if max == 0 {
        return Ok((finish_jobs(writer, owner, finishes).await?, Vec::new()));
    }
    let (owner, json, lease, max) = (owner.to_owned(), finish_rows(finishes), plus(lease), limit(max));
    let rows = writer
        .run(move |conn| job_rows(conn, FINISH_AND_CLAIM, params![owner, json, max, lease]))
        .await?;
    finished_and_claimed(finishes, rows)
}

/// The finishes as a JSON array, for `FINISHES`.
fn finish_rows(finishes: &[JobFinish]) -> String {
    let rows: Vec<Value> = finishes
        .iter()
        .map(|f| {
            let c = &f.completion;
            serde_json::json!({
                "id": f.lease.id,
                "attempt": f.lease.attempt,
                "status": c.status.as_str(),
                // Stored as JSON text, as a single row's finish stores it.
                "result": c.result.as_ref().map(Value::to_string),
                "error": c.error,
                "started_at": f.started_at,
                "completed_at": c.completed_at,
                "ms": c.execution_time_ms,
            })
        })
        .collect();
    Value::Array(rows).to_string()
}

/// A row returned by a claim, a finish, or both: `CLAIM_JOBS`' rows have no `status` (all
/// claimed); a finish's rows have no payload.
struct JobRow {
    id: String,
    attempt: i64,
    status: Option<String>,
    payload: Option<String>,
    callback_url: Option<String>,
    created_at: String,
}

impl JobRow {
    fn claimed(self) -> Result<ClaimedJob, sqlx::Error> {
        let decode = |e: Box<dyn std::error::Error + Send + Sync>| sqlx::Error::Decode(e);
        Ok(ClaimedJob {
            lease: Lease {
                id: self.id,
                attempt: self.attempt,
            },
            accepted_at: DateTime::parse_from_rfc3339(&self.created_at)
                .map_err(|e| decode(e.into()))?
                .to_utc(),
            payload: serde_json::from_str(self.payload.as_deref().unwrap_or_default()).map_err(|e| decode(e.into()))?,
            callback_url: self.callback_url,
        })
    }
}

/// The rows of `sql`, a claim or a finish, run on the writer thread's connection.
fn job_rows(conn: &rusqlite::Connection, sql: &str, params: impl rusqlite::Params) -> rusqlite::Result<Vec<JobRow>> {
    let mut statement = conn.prepare_cached(sql)?;
    let with_status = statement.column_index("status").is_ok();
    statement
        .query_map(params, |row| {
            Ok(JobRow {
                id: row.get("id")?,
                attempt: row.get("attempt")?,
                status: if with_status { row.get("status")? } else { None },
                payload: row.get("payload")?,
                callback_url: row.get("callback_url")?,
                created_at: row.get("created_at")?,
            })
        })?
        .collect()
}

/// Splits the rows of `FINISH_JOBS` or `FINISH_AND_CLAIM`: which of `finishes` were applied (by
/// id and attempt: a batch may hold a stale and a fresh outcome of one job), and the jobs
/// claimed (the rows still `processing`), oldest first.
fn finished_and_claimed(
    finishes: &[JobFinish],
    rows: Vec<JobRow>,
) -> Result<(Vec<bool>, Vec<ClaimedJob>), sqlx::Error> {
    let (mut finished, mut claimed) = (Vec::new(), Vec::new());
    for row in rows {
        if row.status.as_deref() == Some("processing") {
            claimed.push(row.claimed()?);
        } else {
            finished.push(Lease {
                id: row.id,
                attempt: row.attempt,
            });
        }
    }
    let applied = finishes.iter().map(|f| finished.contains(&f.lease)).collect();
    Ok((applied, crate::db::oldest_first(claimed)))
}

/// Puts claimed jobs back as pending, giving back the attempt their claim took. Returns how
/// many went back.
pub(super) async fn release_jobs(writer: &Writer, owner: &str, jobs: &[Lease]) -> Result<u64, sqlx::Error> {
    let mut released = 0;
    let mut conn = writer.lock().await?;
    let mut tx = conn.begin().await?;
    for job in jobs {
        released += sqlx::query(
            "UPDATE requests SET status = 'pending', attempt = attempt - 1, lease_owner = NULL, \
             lease_expires_at = NULL, started_at = NULL \
             WHERE id = ? AND status = 'processing' AND lease_owner = ? AND attempt = ?",
        )
        .bind(&job.id)
        .bind(owner)
        .bind(job.attempt)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    }
    tx.commit().await?;
    Ok(released)
}

/// `[[id, attempt], ...]`, for `json_each`.
fn pairs(leases: &[Lease]) -> String {
    let pairs: Vec<(&str, i64)> = leases.iter().map(|l| (l.id.as_str(), l.attempt)).collect();
    serde_json::to_string(&pairs).unwrap_or_else(|_| "[]".to_owned())
}

/// Renews every lease `owner` holds: one statement for requests (jobs and sync), one for
/// deliveries, and the replica's row. Returns the leases that were not renewed.
pub(super) async fn heartbeat(
    writer: &Writer,
    owner: &str,
    held: &Held,
    lease: Duration,
    replica: &ReplicaBeat,
) -> Result<Held, sqlx::Error> {
    let mut conn = writer.lock().await?;
    let mut tx = conn.begin().await?;
    let requests: Vec<Lease> = held.jobs.iter().chain(&held.sync).cloned().collect();
    let renewed: Vec<(String, i64)> = if requests.is_empty() {
        Vec::new()
    } else {
        sqlx::query_as(
            "UPDATE requests SET lease_expires_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now', ?2) \
             WHERE lease_owner = ?1 AND status = 'processing' AND (id, attempt) IN \
             (SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]') FROM json_each(?3)) \
             RETURNING id, attempt",
        )
        .bind(owner)
        .bind(plus(lease))
        .bind(pairs(&requests))
        .fetch_all(&mut *tx)
        .await?
    };
    let delivered: Vec<(String, i64)> = if held.deliveries.is_empty() {
        Vec::new()
    } else {
        sqlx::query_as(
            "UPDATE deliveries SET lease_expires_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now', ?2) \
             WHERE lease_owner = ?1 AND status = 'delivering' AND (request_id, claim) IN \
             (SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]') FROM json_each(?3)) \
             RETURNING request_id, claim",
        )
        .bind(owner)
        .bind(plus(lease))
        .bind(pairs(&held.deliveries))
        .fetch_all(&mut *tx)
        .await?
    };
    upsert_replica(&mut tx, owner, replica).await?;
    tx.commit().await?;
    let kept = |leases: &[Lease], renewed: &[(String, i64)]| -> Vec<Lease> {
        leases
            .iter()
            .filter(|l| !renewed.iter().any(|(id, attempt)| *id == l.id && *attempt == l.attempt))
            .cloned()
            .collect()
    };
    Ok(Held {
        jobs: kept(&held.jobs, &renewed),
        sync: kept(&held.sync, &renewed),
        deliveries: kept(&held.deliveries, &delivered),
    })
}

/// Records the replica as alive, with its figures.
pub(super) async fn upsert_replica(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    owner: &str,
    replica: &ReplicaBeat,
) -> Result<(), sqlx::Error> {
    sqlx::query(concat!(
        "INSERT INTO replicas (id, started_at, last_seen_at, workers, workers_busy, sync_in_flight, sync_max) VALUES (?1, ",
        now!(),
        ", ",
        now!(),
        ", ?2, ?3, ?4, ?5) ON CONFLICT (id) DO UPDATE SET last_seen_at = ",
        now!(),
        ", workers = ?2, workers_busy = ?3, sync_in_flight = ?4, sync_max = ?5"
    ))
    .bind(owner)
    .bind(replica.workers)
    .bind(replica.workers_busy)
    .bind(replica.sync_in_flight)
    .bind(replica.sync_max)
    .execute(&mut **tx)
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

// The rescue runs every few seconds with the writer held, so each of its statements reaches its
// rows through an index bounded by the work in flight: `status` drives the search (through the
// partial `requests_leased`), and the unary plus keeps `mode` out of the planner's choice. With
// `mode = 'sync'` free to drive it, SQLite searched a mode index and read every sync request
// ever stored: 112 ms with the writer held for 300,000 finished sync rows, every rescue. `plans`
// holds them to this.

/// Async jobs whose lease expired: back to the queue, or failed once their attempts are used.
pub(super) const RESCUE_JOBS: &str = concat!(
    "UPDATE requests SET \
       status = CASE WHEN attempt >= ?2 THEN 'failed' ELSE 'pending' END, \
       error = CASE WHEN attempt >= ?2 THEN ?3 ELSE error END, \
       completed_at = CASE WHEN attempt >= ?2 THEN ",
    now!(),
    " ELSE completed_at END, \
       started_at = CASE WHEN attempt >= ?2 THEN started_at ELSE NULL END, \
       lease_owner = NULL, lease_expires_at = NULL \
     WHERE status = 'processing' AND +mode = 'async' \
       AND (?1 OR lease_expires_at IS NULL OR lease_expires_at < ",
    now!(),
    ") RETURNING status"
);

/// Fails the sync requests that also match the condition (string literals and `now!()`, as
/// `concat!` takes them): `?2` is the error.
macro_rules! fail_sync_where {
    ($($condition:tt)+) => {
        concat!(
            "UPDATE requests SET status = 'failed', error = ?2, completed_at = ",
            now!(),
            ", lease_owner = NULL, lease_expires_at = NULL WHERE +mode = 'sync' AND ",
            $($condition)+
        )
    };
}

/// Sync requests whose lease expired (`?1`: every one, at start).
pub(super) const RESCUE_SYNC: &str = fail_sync_where!(
    "status = 'processing' AND (?1 OR lease_expires_at IS NULL OR lease_expires_at < ",
    now!(),
    ")"
);

/// Sync requests left `pending` by builds before the leases (which stored a sync request before
/// running it): failed, at start only (`?1` is unused). The search runs through
/// `requests_unleased_sync`, which SQLite takes only when the WHERE names both of its terms, the
/// bare `mode` among them.
pub(super) const RESCUE_UNLEASED_SYNC: &str = fail_sync_where!("mode = 'sync' AND status = 'pending'");

/// Deliveries whose lease expired: made again, or failed once their replicas kept dying.
pub(super) const RESCUE_DELIVERIES: &str = concat!(
    "UPDATE deliveries SET \
       status = CASE WHEN claim - attempts >= ?2 THEN 'failed' ELSE 'pending' END, \
       last_error = CASE WHEN claim - attempts >= ?2 THEN ?3 ELSE last_error END, \
       due_at = ",
    now!(),
    ", lease_owner = NULL, lease_expires_at = NULL \
     WHERE status = 'delivering' AND (?1 OR lease_expires_at IS NULL OR lease_expires_at < ",
    now!(),
    ") RETURNING status"
);

/// Puts expired work back in the queue, or fails it once its attempts are used. `everything`
/// (SQLite's start, when no other process can hold a lease) treats every lease as expired.
pub(super) async fn rescue(writer: &Writer, max_attempts: u32, everything: bool) -> Result<Rescued, sqlx::Error> {
    let mut conn = writer.lock().await?;
    let mut tx = conn.begin().await?;
    let jobs: Vec<String> = sqlx::query_scalar(RESCUE_JOBS)
        .bind(everything)
        .bind(i64::from(max_attempts))
        .bind(GAVE_UP)
        .fetch_all(&mut *tx)
        .await?;
    // A job failed here with a callback gets its delivery from the outbox trigger.
    let mut rescued = Rescued::default();
    for status in &jobs {
        if status == "failed" {
            rescued.jobs_failed += 1;
        } else {
            rescued.jobs_requeued += 1;
        }
    }
    rescued.sync_failed = sqlx::query(RESCUE_SYNC)
        .bind(everything)
        .bind(SYNC_ORPHANED)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    if everything {
        rescued.sync_failed += sqlx::query(RESCUE_UNLEASED_SYNC)
            .bind(everything)
            .bind(SYNC_ORPHANED)
            .execute(&mut *tx)
            .await?
            .rows_affected();
    }
    // A delivery whose lease expired may or may not have reached its receiver: it is made
    // again (at least once), unless its replicas kept dying while holding it.
    let deliveries: Vec<String> = sqlx::query_scalar(RESCUE_DELIVERIES)
        .bind(everything)
        .bind(i64::from(max_attempts))
        .bind(DELIVERY_GAVE_UP)
        .fetch_all(&mut *tx)
        .await?;
    for status in deliveries {
        if status == "failed" {
            rescued.deliveries_failed += 1;
        } else {
            rescued.deliveries_requeued += 1;
        }
    }
    tx.commit().await?;
    Ok(rescued)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use crate::db::NewSync;
    use crate::db::{Store, timestamp};
    use crate::liveness::Liveness;
    use crate::model::Status;

    fn sync_request(id: &str) -> NewSync {
        NewSync {
            id: id.to_owned(),
            payload: json!({"operation": "prime", "complexity": 1}),
            client_ip: "127.0.0.1".to_owned(),
            tenant: None,
            created_at: timestamp(chrono::Utc::now()),
        }
    }

    #[tokio::test]
    async fn the_rescue_fails_sync_requests_whose_replica_is_gone_and_at_start_the_unleased_ones() {
        let dir = tempfile::tempdir().expect("dir");
        let store = crate::db::sqlite::connect(&dir.path().join("rescue.db"), 64 << 20, &Liveness::new())
            .await
            .expect("store");
        store
            .start_sync(&sync_request("gone"), "replica-a", Duration::ZERO)
            .await
            .expect("gone");
        store
            .start_sync(&sync_request("unleased"), "replica-a", Duration::from_secs(600))
            .await
            .expect("unleased");
        // Stored before the leases: `pending`, with no lease.
        sqlx::query(
            "UPDATE requests SET status = 'pending', lease_owner = NULL, lease_expires_at = NULL WHERE id = 'unleased'",
        )
        .execute(&mut *store.writer.lock().await.expect("writer"))
        .await
        .expect("an unleased row");
        store
            .start_sync(&sync_request("live"), "replica-b", Duration::from_secs(600))
            .await
            .expect("live");
        let status = |id: &'static str| {
            let store = &store;
            async move { store.get(id).await.expect("get").expect("row").status }
        };

        // The lease of "gone" ends within a millisecond of its start (the stored clock's step).
        let mut failed = 0;
        for _ in 0..1000 {
            failed += store.rescue(3, false).await.expect("rescue").sync_failed;
            if failed > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(failed, 1, "only the expired lease");
        assert_eq!(status("gone").await, Status::Failed);
        assert_eq!(
            status("unleased").await,
            Status::Pending,
            "left alone while replicas run"
        );
        assert_eq!(status("live").await, Status::Processing);

        // At start no other process holds a lease: everything unfinished is failed.
        assert_eq!(store.rescue(3, true).await.expect("rescue").sync_failed, 2);
        for id in ["unleased", "live"] {
            let row = store.get(id).await.expect("get").expect("row");
            assert_eq!(row.status, Status::Failed, "{id}");
            assert_eq!(row.error.as_deref(), Some(super::SYNC_ORPHANED), "{id}");
        }
        store.close().await;
    }
}
