//! NUM_WORKERS tasks that take claimed jobs from the claimer's channel and run them on the
//! engine, off the async threads, with the work timeout. A worker never stores or delivers: the
//! outcome goes to the completer, and the worker takes the next job.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{Mutex, OwnedSemaphorePermit, mpsc};
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::claimer::{Handoff, release};
use super::{Completer, JobsContext, Kind};
use crate::db::{self, ClaimedJob, Completion, JobFinish};
use crate::engine::{CancelToken, WorkPayload};
use crate::execution::Outcome;
use crate::model::{Mode, Status};

/// The running workers, as /healthz and /metrics see them.
#[derive(Clone, Debug)]
pub(crate) struct WorkerPool {
    size: usize,
    /// Workers whose task is still running; a panic or an early exit lowers it.
    alive: Arc<AtomicUsize>,
}

impl WorkerPool {
    /// Starts `size` workers on `tracker`. They stop taking jobs once `ctx.stop` fires and exit
    /// after the job in hand has finished or been released.
    pub(super) fn spawn(
        size: usize,
        claimed: mpsc::Receiver<Handoff>,
        ctx: JobsContext,
        completer: Completer,
        tracker: &TaskTracker,
    ) -> Self {
        let claimed = Arc::new(Mutex::new(claimed));
        let alive = Arc::new(AtomicUsize::new(0));
        for n in 0..size {
            alive.fetch_add(1, Ordering::SeqCst);
            let guard = AliveGuard(alive.clone());
            let (claimed, ctx, completer) = (claimed.clone(), ctx.clone(), completer.clone());
            tracker.spawn(
                async move {
                    let _alive = guard;
                    drain(&claimed, &ctx, &completer).await;
                }
                .instrument(tracing::info_span!("worker", n)),
            );
        }
        Self { size, alive }
    }

    pub(crate) fn size(&self) -> usize {
        self.size
    }

    pub(crate) fn alive(&self) -> usize {
        self.alive.load(Ordering::SeqCst)
    }
}

/// Lowers the alive count when a worker task ends for any reason, panics included.
struct AliveGuard(Arc<AtomicUsize>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn drain(claimed: &Mutex<mpsc::Receiver<Handoff>>, ctx: &JobsContext, completer: &Completer) {
    loop {
        let next = tokio::select! {
            biased;
            () = ctx.stop.cancelled() => None,
            next = async { claimed.lock().await.recv().await } => next,
        };
        let Some((job, slot)) = next else { break };
        let id = job.lease.id.clone();
        run_job(ctx, completer, job, slot)
            .instrument(tracing::info_span!("job", request_id = %id))
            .await;
    }
    // Jobs claimed but not started when shutdown came go back to the queue.
    let mut left = Vec::new();
    while let Ok((job, _slot)) = claimed.lock().await.try_recv() {
        left.push(job.lease);
    }
    release(ctx, left).await;
}

/// Runs one job and hands its outcome to the completer, with the worker slot the job held: the
/// completer's write of the outcome claims the slot's next job. A job that ends with no outcome
/// (released, or its lease lost) frees its slot for the claimer.
async fn run_job(ctx: &JobsContext, completer: &Completer, job: ClaimedJob, slot: OwnedSemaphorePermit) {
    let started_at = db::timestamp(chrono::Utc::now());
    let cancel = CancelToken::new();
    ctx.leases.hold(Kind::Job, job.lease.clone(), Some(cancel.clone()));
    ctx.metrics.workers_busy.inc();
    let _busy = BusyGuard(ctx.metrics.clone());
    let has_callback = job.callback_url.is_some();
    let accepted_at = job.accepted_at;
    let plan = serde_json::from_value::<WorkPayload>(job.payload)
        .map_err(|e| e.to_string())
        .and_then(|p| {
            p.plan(&ctx.amounts)
                .map(|w| (p.operation, w))
                .map_err(|errs| format!("{errs:?}"))
        });
    let completion = match plan {
        Ok((operation, work)) => {
            let outcome = {
                let run = ctx
                    .executor
                    .execute(&job.lease.id, Mode::Async, operation, work, cancel.clone(), None);
                tokio::pin!(run);
                tokio::select! {
                    biased;
                    outcome = &mut run => outcome,
                    // The engine stops within a millisecond of the cancel; its outcome says so.
                    () = cancel_after_grace(ctx, &cancel) => run.await,
                }
            };
            if outcome == Outcome::Cancelled {
                if ctx.stop.is_cancelled() {
                    tracing::info!("job released at shutdown; it will run again");
                    release(ctx, vec![job.lease]).await;
                } else {
                    // The heartbeat found the lease lost: another attempt runs it.
                    tracing::warn!("job abandoned: its lease passed to another attempt");
                }
                return;
            }
            ctx.executor.completion(&outcome)
        }
        // Accepted under older rules (a bound that has since changed): fail it for good rather
        // than retry it.
        Err(why) => Completion {
            status: Status::Failed,
            result: None,
            error: Some(format!("the stored payload is no longer valid: {why}")),
            completed_at: db::timestamp(chrono::Utc::now()),
            execution_time_ms: None,
        },
    };
    tracing::debug!(status = completion.status.as_str(), "job finished");
    completer
        .submit(
            JobFinish {
                lease: job.lease,
                started_at,
                completion,
                has_callback,
            },
            accepted_at,
            slot,
        )
        .await;
}

/// Once shutdown starts, gives the running job `shutdown_grace`, then cancels it. Polled beside
/// the run rather than spawned: a task spawned and aborted per job cost more than tiny jobs did.
async fn cancel_after_grace(ctx: &JobsContext, cancel: &CancelToken) {
    ctx.stop.cancelled().await;
    tokio::time::sleep(ctx.settings.shutdown_grace).await;
    cancel.cancel();
}

/// Keeps `workers_busy` exact even if the job errors out.
struct BusyGuard(Arc<crate::metrics::Metrics>);

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.0.workers_busy.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_worker_task_that_dies_lowers_the_alive_count() {
        let alive = Arc::new(AtomicUsize::new(2));
        let (healthy, dying) = (AliveGuard(alive.clone()), AliveGuard(alive.clone()));
        let crash = tokio::spawn(async move {
            let _alive = dying;
            panic!("a bug in a worker");
        });
        assert!(crash.await.is_err(), "the task panicked");
        assert_eq!(alive.load(Ordering::SeqCst), 1, "/healthz now sees 1 of 2 workers");
        drop(healthy);
        assert_eq!(alive.load(Ordering::SeqCst), 0);
    }
}
