//! The claimer: as workers free up, it claims that many jobs from the database (never more, so
//! no job waits in this process while another replica's worker sits idle) and hands them over.
//! While the queue has work, a worker's slot passes with its outcome to the completer, whose
//! write claims the slot's next job; the claimer gets the slots that write could not fill, and
//! new work wakes it.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use super::{JobsContext, Kind};
use crate::db::ClaimedJob;
use crate::liveness::Beat;

/// A claimed job on its way to a worker, with the worker slot it holds.
pub(super) type Handoff = (ClaimedJob, OwnedSemaphorePermit);

/// The longest the claimer backs off after a database error.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

pub(super) async fn claim_loop(ctx: JobsContext, slots: Arc<Semaphore>, handoff: mpsc::Sender<Handoff>, beat: Beat) {
    let mut backoff = Duration::from_millis(50);
    'claiming: loop {
        // A free slot first: claiming without one would leave a leased job waiting here.
        let first = loop {
            beat.tick();
            tokio::select! {
                () = ctx.stop.cancelled() => break 'claiming,
                permit = slots.clone().acquire_owned() => match permit {
                    Ok(permit) => break permit,
                    Err(_) => break 'claiming,
                },
                () = tokio::time::sleep(ctx.settings.poll_every) => {}
            }
        };
        let mut permits = vec![first];
        while let Ok(permit) = slots.clone().try_acquire_owned() {
            permits.push(permit);
        }
        // Workers that finish together (tiny jobs end within microseconds of each other) free
        // their slots one poll apart: one yield lets them, so that one claim takes more of them
        // (measured on SQLite with tiny jobs: 2.3 slots per claim without it, 3.0 with it).
        tokio::task::yield_now().await;
        while let Ok(permit) = slots.clone().try_acquire_owned() {
            permits.push(permit);
        }
        let wanted = permits.len();
        let claimed = match ctx.db.claim_jobs(ctx.leases.owner(), wanted, ctx.settings.lease).await {
            Ok(claimed) => {
                backoff = Duration::from_millis(50);
                claimed
            }
            Err(e) => {
                tracing::warn!(error = %e, "claiming jobs failed; trying again");
                drop(permits);
                tokio::select! {
                    () = ctx.stop.cancelled() => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        let got = claimed.len();
        if !hand_over(&ctx, &handoff, claimed, permits).await {
            break;
        }
        if got < wanted {
            // The queue is empty for now: wait to be woken, or poll.
            tokio::select! {
                () = ctx.stop.cancelled() => break,
                () = ctx.wake.jobs.notified() => {}
                () = tokio::time::sleep(ctx.settings.poll_every) => {}
            }
        }
    }
}

/// Holds the leases of jobs just claimed and hands each to a worker with one of `slots` (as
/// many as were asked for: the slots left over go back). False once the workers are gone (at
/// shutdown): the leases of jobs not handed over are released by nobody and expire, and the
/// next rescue takes them.
pub(super) async fn hand_over(
    ctx: &JobsContext,
    handoff: &mpsc::Sender<Handoff>,
    claimed: Vec<ClaimedJob>,
    slots: Vec<OwnedSemaphorePermit>,
) -> bool {
    ctx.metrics.jobs_claimed.inc_by(claimed.len() as u64);
    for (job, slot) in claimed.into_iter().zip(slots) {
        ctx.leases.hold(Kind::Job, job.lease.clone(), None);
        if handoff.send((job, slot)).await.is_err() {
            return false;
        }
    }
    true
}
