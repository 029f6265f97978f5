//! The completer stores the outcomes the workers hand it, every outcome waiting at that moment
//! in one transaction (River's batch completer, on a smaller scale). Each write is fenced by the
//! job's owner and attempt; one that finds the lease gone is dropped and counted as stale. A
//! job with a callback gets its delivery in the same transaction, and the delivery claimer is
//! woken after the commit. Each stored outcome's time from acceptance to its end goes to the
//! completion observer (the dashboard's percentiles).
//!
//! Each outcome comes with its worker's slot, and the same write claims as many new jobs as
//! there are slots (`Store::finish_and_claim`), which go straight to the workers: with tiny jobs
//! a worker's cycle was a finish and a claim, two writes and two waits for the database; now it
//! is one. Slots the claim could not fill go back to the claimer, which waits for new work.
//! Without places ahead of the workers (PostgreSQL), the completer waits briefly for the
//! outcomes of the jobs its last write handed over (`gather`), so that the workers stay one
//! cohort and each write carries all of their outcomes.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio_util::task::TaskTracker;

use super::ahead::ClaimAhead;
use super::claimer::{Handoff, hand_over};
use super::{JobsContext, Kind};
use crate::db::{self, ClaimedJob, JobFinish};
use crate::liveness::Beat;

/// The most outcomes one transaction stores.
const MAX_BATCH: usize = 256;

/// The longest the completer waits for the rest of the jobs its last write handed over
/// (`gather`).
const GATHER: Duration = Duration::from_millis(1);
/// The completer gathers only behind jobs whose runs all took less than this: jobs that run for
/// microseconds. Behind jobs of a few milliseconds the wait would idle the workers whose
/// outcomes wait with it.
const GATHER_BELOW: Duration = Duration::from_micros(200);

/// One outcome on its way to the store.
#[derive(Debug)]
struct Finished {
    finish: JobFinish,
    /// When the job was accepted: its completion time runs from here to `completed_at`.
    accepted_at: DateTime<Utc>,
    /// The worker slot the job held, for the next job (taken when the batch is stored).
    slot: Option<OwnedSemaphorePermit>,
}

/// Where workers hand outcomes. Cheap to clone; the completer ends once every clone is gone and
/// what they sent is stored. At most `MAX_BATCH` outcomes wait: when the store falls behind, a
/// worker waits to hand its outcome over and claims nothing meanwhile. Unbounded, the outcomes
/// piled up in memory while the workers went on claiming: short runs on PostgreSQL showed up to
/// 2,189 jobs `processing` with 5 workers, and a 5-minute soak's RSS rose by 45 MiB in its last
/// 40 s. Bounded, the same soak stayed between 20 and 25 MiB.
#[derive(Clone, Debug)]
pub(crate) struct Completer {
    sender: mpsc::Sender<Finished>,
}

impl Completer {
    /// Starts the completer; the jobs it claims go to the workers through `handoff`.
    /// `ahead` opens and closes the places for jobs claimed ahead of the workers.
    pub(super) fn start(
        ctx: &JobsContext,
        handoff: mpsc::Sender<Handoff>,
        ahead: ClaimAhead,
        beat: Beat,
        tasks: &TaskTracker,
    ) -> Self {
        let (sender, finished) = mpsc::channel(MAX_BATCH);
        tasks.spawn(complete_loop(ctx.clone(), finished, handoff, ahead, beat));
        Self { sender }
    }

    /// Queues an outcome to store with the worker slot its job held, waiting while `MAX_BATCH`
    /// are already waiting; a finish that has a callback wakes the delivery claimer once it is
    /// stored.
    pub(super) async fn submit(&self, finish: JobFinish, accepted_at: DateTime<Utc>, slot: OwnedSemaphorePermit) {
        let finished = Finished {
            finish,
            accepted_at,
            slot: Some(slot),
        };
        if let Err(mpsc::error::SendError(finished)) = self.sender.send(finished).await {
            // Only at the very end of a shutdown; the lease expires and the job runs again.
            tracing::warn!(request_id = %finished.finish.lease.id, "outcome dropped: the completer has stopped");
        }
    }
}

async fn complete_loop(
    ctx: JobsContext,
    mut finished: mpsc::Receiver<Finished>,
    handoff: mpsc::Sender<Handoff>,
    mut ahead: ClaimAhead,
    beat: Beat,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut handing_over = true;
    // The jobs the last write handed to the workers.
    let mut handed: Vec<String> = Vec::new();
    while finished.recv_many(&mut batch, MAX_BATCH).await > 0 {
        beat.tick();
        // Workers that finish together hand their outcomes over one poll apart: one yield lets
        // them, so that one write stores more of them and claims more for them.
        tokio::task::yield_now().await;
        while batch.len() < MAX_BATCH {
            match finished.try_recv() {
                Ok(f) => batch.push(f),
                Err(_) => break,
            }
        }
        if ahead.open() == 0 && longest_run(batch.iter().map(|f| &f.finish)).is_some_and(|run| run < GATHER_BELOW) {
            gather(&mut finished, &mut batch, &mut handed).await;
        }
        let finishes: Vec<JobFinish> = batch.iter().map(|f| f.finish.clone()).collect();
        let mut slots: Vec<OwnedSemaphorePermit> = batch.iter_mut().filter_map(|f| f.slot.take()).collect();
        ahead.after_batch(longest_run(&finishes), &mut slots);
        let stored = store(&ctx, &finishes, handing_over && !ctx.stop.is_cancelled(), slots.len()).await;
        // Stored or left to expire, these leases are no longer renewed: dropped at once, before
        // the hand-over (which may wait for the workers), so that a heartbeat never takes a
        // stored outcome's lease for a lost one.
        for done in &batch {
            ctx.leases.drop_lease(Kind::Job, &done.finish.lease);
        }
        match stored {
            Ok((applied, claimed)) => {
                handed = claimed.iter().map(|job| job.lease.id.clone()).collect();
                handing_over &= hand_over(&ctx, &handoff, claimed, slots).await;
                let mut deliveries = false;
                for (done, stored) in batch.iter().zip(applied) {
                    let finish = &done.finish;
                    if stored {
                        ctx.metrics.jobs_processed.inc();
                        deliveries |= finish.has_callback;
                        if let Some(took) = accepted_to_end(done.accepted_at, &finish.completion.completed_at) {
                            ctx.completions.job_completed(took);
                        }
                    } else {
                        ctx.metrics.stale_writes.inc();
                        tracing::warn!(request_id = %finish.lease.id, attempt = finish.lease.attempt,
                            "outcome dropped: the lease had passed to another attempt");
                    }
                }
                if deliveries {
                    ctx.wake.deliveries.notify_one();
                }
            }
            Err(e) => {
                // Left to the leases: they are no longer renewed, expire, and the rescuer puts
                // the jobs back in the queue. Nothing is stranded until a restart.
                tracing::error!(
                    error = format!("{e:#}"),
                    jobs = batch.len(),
                    "could not store job outcomes; the jobs run again once their leases expire"
                );
            }
        }
        batch.clear();
    }
}

/// Waits, at most `GATHER`, for the outcomes of the jobs in `handed` that `batch` lacks, so that
/// the jobs one write handed over are stored, and their next ones claimed, by one write. Without
/// places open ahead of the workers (PostgreSQL), tiny jobs otherwise split the workers into
/// cohorts: the outcomes that waited while a write ran went alone into the next write, and the
/// jobs that write had just handed over, finished microseconds later, into the one after.
/// With 5 workers a write stored about 3 outcomes where it could store 5, and each write has
/// a fixed cost. `handed` is empty afterwards. A long job costs one wait, once: the next
/// write's jobs replace `handed`.
async fn gather(finished: &mut mpsc::Receiver<Finished>, batch: &mut Vec<Finished>, handed: &mut Vec<String>) {
    // The outcome of a handed job is no longer waited for.
    let arrived = |handed: &mut Vec<String>, f: &Finished| handed.retain(|id| *id != f.finish.lease.id);
    for f in batch.iter() {
        arrived(handed, f);
    }
    let deadline = tokio::time::Instant::now() + GATHER;
    while !handed.is_empty() && batch.len() < MAX_BATCH {
        match tokio::time::timeout_at(deadline, finished.recv()).await {
            Ok(Some(f)) => {
                arrived(handed, &f);
                batch.push(f);
            }
            Ok(None) | Err(_) => break,
        }
    }
    handed.clear();
}

/// Stores `finishes` and, when `claim` holds, claims up to `slots` jobs in the same write.
async fn store(
    ctx: &JobsContext,
    finishes: &[JobFinish],
    claim: bool,
    slots: usize,
) -> Result<(Vec<bool>, Vec<ClaimedJob>), sqlx::Error> {
    let owner = ctx.leases.owner();
    if claim {
        let lease = ctx.settings.lease;
        db::retry_transient("storing job outcomes", || {
            ctx.db.finish_and_claim(owner, finishes, slots, lease)
        })
        .await
    } else {
        let applied = db::retry_transient("storing job outcomes", || ctx.db.finish_jobs(owner, finishes)).await?;
        Ok((applied, Vec::new()))
    }
}

/// The longest engine run among `finishes`; `None` when none ran.
fn longest_run<'a>(finishes: impl IntoIterator<Item = &'a JobFinish>) -> Option<Duration> {
    finishes
        .into_iter()
        .filter_map(|f| Duration::try_from_secs_f64(f.completion.execution_time_ms? / 1e3).ok())
        .max()
}

/// From acceptance to the stored end of a job; `None` for a timestamp that does not parse or
/// an end before the start (clocks of two replicas that disagree).
fn accepted_to_end(accepted_at: DateTime<Utc>, completed_at: &str) -> Option<Duration> {
    let completed_at = DateTime::parse_from_rfc3339(completed_at).ok()?;
    (completed_at.with_timezone(&Utc) - accepted_at).to_std().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completion_time_runs_from_acceptance_to_the_stored_end() {
        let accepted_at = DateTime::parse_from_rfc3339("2026-01-01T00:00:00.000Z")
            .expect("a timestamp")
            .with_timezone(&Utc);
        assert_eq!(
            accepted_to_end(accepted_at, "2026-01-01T00:00:01.250Z"),
            Some(Duration::from_millis(1250))
        );
        assert_eq!(accepted_to_end(accepted_at, "2025-12-31T23:59:59.000Z"), None);
        assert_eq!(accepted_to_end(accepted_at, "not a time"), None);
    }

    /// The outcome of job `id`, whose run took `ms`.
    fn outcome(id: &str, ms: f64) -> Finished {
        Finished {
            finish: JobFinish {
                lease: db::Lease {
                    id: id.to_owned(),
                    attempt: 1,
                },
                started_at: "2026-01-01T00:00:00.000Z".to_owned(),
                completion: db::Completion {
                    status: crate::model::Status::Done,
                    result: None,
                    error: None,
                    completed_at: "2026-01-01T00:00:00.001Z".to_owned(),
                    execution_time_ms: Some(ms),
                },
                has_callback: false,
            },
            accepted_at: Utc::now(),
            slot: None,
        }
    }

    fn ids(batch: &[Finished]) -> Vec<&str> {
        batch.iter().map(|f| f.finish.lease.id.as_str()).collect()
    }

    #[tokio::test]
    async fn the_outcomes_of_the_jobs_the_last_write_handed_over_join_the_batch() {
        let (sender, mut finished) = mpsc::channel(8);
        // `x` waited while the last write ran; that write handed over `a`, `b` and `c`, whose
        // outcomes come in after the batch was taken, with `y`, a later job's, behind them.
        let mut batch = vec![outcome("x", 0.01), outcome("a", 0.01)];
        let mut handed: Vec<String> = ["a", "b", "c"].map(str::to_owned).to_vec();
        for id in ["b", "c", "y"] {
            sender.send(outcome(id, 0.01)).await.expect("sent");
        }

        gather(&mut finished, &mut batch, &mut handed).await;

        assert_eq!(ids(&batch), ["x", "a", "b", "c"]);
        assert!(handed.is_empty());
        let next = finished.try_recv().expect("y stays for the next batch");
        assert_eq!(next.finish.lease.id, "y");
    }

    #[tokio::test]
    async fn a_handed_job_that_does_not_finish_holds_the_batch_at_most_the_gather_time() {
        let (sender, mut finished) = mpsc::channel(8);
        let mut batch = vec![outcome("x", 0.01)];
        let mut handed: Vec<String> = ["a", "long"].map(str::to_owned).to_vec();
        sender.send(outcome("a", 0.01)).await.expect("sent");

        // `long` never reports here (its worker is still running it): the wait ends at GATHER,
        // bounded by the test's own timeout rather than hanging it.
        tokio::time::timeout(GATHER * 1000, gather(&mut finished, &mut batch, &mut handed))
            .await
            .expect("the gather gives up on a job that runs on");

        assert_eq!(ids(&batch), ["x", "a"]);
        assert!(handed.is_empty(), "the next batch does not wait for it again");
        drop(sender);
    }
}
