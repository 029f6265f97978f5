//! NUM_WORKERS tasks that take job ids off the queue and run them: `pending` -> `processing` ->
//! engine (with the work timeout) -> `done` or `failed`, stored before any callback is tried.
//! A worker never waits for a callback: it hands the finished job to the delivery scheduler.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use sqlx::SqlitePool;
use tokio::sync::{Mutex, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::callback::Deliveries;
use crate::db;
use crate::db::requests::{Completion, Mode, Status};
use crate::engine::{CancelToken, WorkPayload};
use crate::execution::{Executor, Outcome};
use crate::metrics::Metrics;

/// What a worker needs to run a job and hand it on.
#[derive(Clone)]
pub struct WorkerContext {
    pub executor: Executor,
    pub db: SqlitePool,
    pub metrics: Arc<Metrics>,
    /// Where finished jobs with a `callback_url` go; the worker never waits for them.
    pub deliveries: Deliveries,
}

/// The running workers, as /healthz and /metrics see them.
#[derive(Clone, Debug)]
pub struct WorkerPool {
    size: usize,
    /// Workers whose task is still running; a panic or an early exit lowers it.
    alive: Arc<AtomicUsize>,
}

impl WorkerPool {
    /// Starts `size` workers on `tracker`. They stop taking jobs once `shutdown` fires and exit
    /// after finishing the job in hand.
    pub fn spawn(
        size: usize,
        receiver: mpsc::Receiver<String>,
        ctx: WorkerContext,
        shutdown: CancellationToken,
        tracker: &TaskTracker,
    ) -> Self {
        let receiver = Arc::new(Mutex::new(receiver));
        let alive = Arc::new(AtomicUsize::new(0));
        for n in 0..size {
            alive.fetch_add(1, Ordering::SeqCst);
            let guard = AliveGuard(alive.clone());
            let (receiver, ctx, shutdown) = (receiver.clone(), ctx.clone(), shutdown.clone());
            tracker.spawn(
                async move {
                    let _alive = guard;
                    drain(&receiver, &ctx, &shutdown).await;
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

async fn drain(receiver: &Mutex<mpsc::Receiver<String>>, ctx: &WorkerContext, shutdown: &CancellationToken) {
    loop {
        let next = tokio::select! {
            biased;
            () = shutdown.cancelled() => None,
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
    let Some(job) = db::requests::job(&ctx.db, id).await? else {
        tracing::warn!("job vanished from the database; skipped");
        return Ok(());
    };
    let now = db::timestamp(chrono::Utc::now());
    if !db::requests::mark_processing(&ctx.db, id, &now).await? {
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
            let outcome = ctx
                .executor
                .execute(id, Mode::Async, operation, work, CancelToken::new(), None)
                .await?;
            if outcome == Outcome::Cancelled {
                // Stopped by a shutdown and left `processing`: the next start runs it again.
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
            db::requests::complete(&ctx.db, id, &completion).await?;
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

/// Keeps `workers_busy` exact even if the job errors out.
struct BusyGuard(Arc<Metrics>);

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.0.workers_busy.dec();
    }
}
