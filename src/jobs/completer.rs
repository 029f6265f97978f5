//! The completer stores the outcomes the workers hand it, every outcome waiting at that moment
//! in one transaction (River's batch completer, on a smaller scale). Each write is fenced by the
//! job's owner and attempt; one that finds the lease gone is dropped and counted as stale. A
//! job with a callback gets its delivery in the same transaction, and the delivery claimer is
//! woken after the commit.

use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

use super::{JobsContext, Kind};
use crate::db::{self, JobFinish};
use crate::liveness::Beat;

/// The most outcomes one transaction stores.
const MAX_BATCH: usize = 256;

/// Where workers hand outcomes. Cheap to clone; the completer ends once every clone is gone and
/// what they sent is stored.
#[derive(Clone, Debug)]
pub(crate) struct Completer {
    sender: mpsc::UnboundedSender<(JobFinish, bool)>,
}

impl Completer {
    pub(super) fn start(ctx: &JobsContext, beat: Beat, tasks: &TaskTracker) -> Self {
        let (sender, finished) = mpsc::unbounded_channel();
        tasks.spawn(complete_loop(ctx.clone(), finished, beat));
        Self { sender }
    }

    /// Queues an outcome to store; `has_callback` wakes the delivery claimer once it is stored.
    pub(super) fn submit(&self, finish: JobFinish, has_callback: bool) {
        if let Err(mpsc::error::SendError((finish, _))) = self.sender.send((finish, has_callback)) {
            // Only at the very end of a shutdown; the lease expires and the job runs again.
            tracing::warn!(request_id = %finish.lease.id, "outcome dropped: the completer has stopped");
        }
    }
}

async fn complete_loop(ctx: JobsContext, mut finished: mpsc::UnboundedReceiver<(JobFinish, bool)>, beat: Beat) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while finished.recv_many(&mut batch, MAX_BATCH).await > 0 {
        beat.tick();
        let finishes: Vec<JobFinish> = batch.iter().map(|(f, _)| f.clone()).collect();
        let owner = ctx.leases.owner();
        match db::retry_transient("storing job outcomes", || ctx.db.finish_jobs(owner, &finishes)).await {
            Ok(applied) => {
                let mut deliveries = false;
                for ((finish, has_callback), stored) in batch.iter().zip(applied) {
                    if stored {
                        ctx.metrics.jobs_processed.inc();
                        deliveries |= *has_callback;
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
        for (finish, _) in batch.drain(..) {
            ctx.leases.drop_lease(Kind::Job, &finish.lease);
        }
    }
}
