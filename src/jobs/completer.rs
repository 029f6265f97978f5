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
fn longest_run(finishes: &[JobFinish]) -> Option<Duration> {
    finishes
        .iter()
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
}
