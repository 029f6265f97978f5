//! NUM_WORKERS tasks that take job ids off the queue and run them: `pending` -> `processing` ->
//! engine (with the work timeout) -> `done` or `failed`, stored before any callback is tried.
//! A worker never waits for a callback: it hands the finished job to the delivery scheduler.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::db::Db;
use tokio::sync::{Mutex, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::callback::Deliveries;
use crate::db;
use crate::db::requests::Completion;
use crate::engine::{CancelToken, WorkPayload};
use crate::execution::{Executor, Outcome};
use crate::metrics::Metrics;
use crate::model::{Mode, Status};

/// What a worker needs to run a job and hand it on.
#[derive(Clone)]
pub struct WorkerContext {
    /// Runs the engine off the async threads and stores the outcome.
    pub executor: Executor,
    /// Where jobs are read and moved to `processing`.
    pub db: Db,
    pub metrics: Arc<Metrics>,
    /// Where finished jobs with a `callback_url` go; the worker never waits for them.
    pub deliveries: Deliveries,
    /// Fires on shutdown: stop taking jobs, and give the job in hand `shutdown_grace` to finish.
    pub stop: CancellationToken,
    /// After this, a job still running at shutdown is cancelled and left for the next start.
    pub shutdown_grace: Duration,
}

/// The running workers, as /healthz and /metrics see them.
#[derive(Clone, Debug)]
pub struct WorkerPool {
    size: usize,
    /// Workers whose task is still running; a panic or an early exit lowers it.
    alive: Arc<AtomicUsize>,
}

impl WorkerPool {
    /// Starts `size` workers on `tracker`. They stop taking jobs once `ctx.stop` fires and exit
    /// after the job in hand has finished or been released.
    pub fn spawn(size: usize, receiver: mpsc::Receiver<String>, ctx: WorkerContext, tracker: &TaskTracker) -> Self {
        let receiver = Arc::new(Mutex::new(receiver));
        let alive = Arc::new(AtomicUsize::new(0));
        for n in 0..size {
            alive.fetch_add(1, Ordering::SeqCst);
            let guard = AliveGuard(alive.clone());
            let (receiver, ctx) = (receiver.clone(), ctx.clone());
            tracker.spawn(
                async move {
                    let _alive = guard;
                    drain(&receiver, &ctx).await;
                }
                .instrument(tracing::info_span!("worker", n)),
            );
        }
        Self { size, alive }
    }

    pub fn size(&self) -> usize {
        self.size
    }

    pub fn alive(&self) -> usize {
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

async fn drain(receiver: &Mutex<mpsc::Receiver<String>>, ctx: &WorkerContext) {
    loop {
        let next = tokio::select! {
            biased;
            () = ctx.stop.cancelled() => None,
            id = async { receiver.lock().await.recv().await } => id,
        };
        let Some(id) = next else { break };
        run_job(ctx, &id)
            .instrument(tracing::info_span!("job", request_id = %id))
            .await;
    }
}

/// Runs one job end to end. Errors are logged here, once; the row then stays where it was and
/// the next start's recovery picks it up.
async fn run_job(ctx: &WorkerContext, id: &str) {
    if let Err(e) = try_run_job(ctx, id).await {
        tracing::error!(
            error = format!("{e:#}"),
            "job could not be processed; it will be retried at the next start"
        );
    }
}

async fn try_run_job(ctx: &WorkerContext, id: &str) -> anyhow::Result<()> {
    let Some(job) = db::retry_transient("loading a job", || db::requests::job(&ctx.db, id)).await? else {
        tracing::warn!("job vanished from the database; skipped");
        return Ok(());
    };
    let now = db::timestamp(chrono::Utc::now());
    if !db::retry_transient("starting a job", || db::requests::mark_processing(&ctx.db, id, &now)).await? {
        tracing::debug!("job already finished; skipped");
        return Ok(());
    }
    ctx.metrics.workers_busy.inc();
    let busy = BusyGuard(ctx.metrics.clone());
    let plan = serde_json::from_value::<WorkPayload>(job.payload)
        .map_err(|e| e.to_string())
        .and_then(|p| p.plan().map(|w| (p.operation, w)).map_err(|errs| format!("{errs:?}")));
    let status = match plan {
        Ok((operation, work)) => {
            let cancel = CancelToken::new();
            let grace = release_after_grace(ctx, cancel.clone());
            let outcome = ctx
                .executor
                .execute(id, Mode::Async, operation, work, cancel, None)
                .await;
            grace.abort();
            let outcome = outcome?;
            if outcome == Outcome::Cancelled {
                // Released at shutdown: it stays `processing`, and the next start runs it again.
                tracing::info!("job released at shutdown; it will run again at the next start");
                return Ok(());
            }
            outcome.status()
        }
        Err(why) => {
            // Accepted under older rules (a bound that has since changed): fail it for good
            // rather than retry it at every start.
            let error = format!("the stored payload is no longer valid: {why}");
            let completion = Completion {
                status: Status::Failed,
                result: None,
                error: Some(&error),
                completed_at: &db::timestamp(chrono::Utc::now()),
                execution_time_ms: None,
            };
            db::retry_transient("storing a job's outcome", || {
                db::requests::complete(&ctx.db, id, &completion)
            })
            .await?;
            Status::Failed
        }
    };
    drop(busy);
    ctx.metrics.jobs_processed.inc();
    tracing::info!(status = status.as_str(), "job finished");
    if job.callback_url.is_some() {
        ctx.deliveries.schedule(id);
    }
    Ok(())
}

/// Once shutdown starts, gives the running job `shutdown_grace`, then cancels it.
fn release_after_grace(ctx: &WorkerContext, cancel: CancelToken) -> tokio::task::JoinHandle<()> {
    let (stop, grace) = (ctx.stop.clone(), ctx.shutdown_grace);
    tokio::spawn(async move {
        stop.cancelled().await;
        tokio::time::sleep(grace).await;
        cancel.cancel();
    })
}

/// Keeps `workers_busy` exact even if the job errors out.
struct BusyGuard(Arc<Metrics>);

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
