//! The async jobs of this replica. The database is the queue; in the process, the shape of the
//! design stays visible:
//!
//! ```text
//! claimer ──(claims ≤ free slots, leased)──> bounded channel ──> NUM_WORKERS workers ──> engine
//!                                                  ▲                   │ outcome + its slot
//!                                                  └── completer (batched, fenced finishes +
//!                                                      delivery outbox + the slots' next claims,
//!                                                      in one write)
//! heartbeat: renews every lease held, in one batch    rescuer: expired leases back to the queue
//! ```
//!
//! A slot is a place for a claimed job: NUM_WORKERS of them in the workers, and on SQLite, while
//! jobs are tiny, CLAIM_AHEAD more (eight per worker) waiting in the channel, so that a worker does not
//! wait for the write that stores its outcome (`ahead`). A PostgreSQL replica claims only for
//! free workers, so that no job waits in one replica while another's worker is idle.
//!
//! New work wakes the claimer at once (an in-process notify, and on PostgreSQL a LISTEN for
//! other replicas' work); a poll of at most `POLL_INTERVAL` is the safety net.

mod ahead;
mod claimer;
mod completer;
mod leases;
mod upkeep;
mod worker;

pub(crate) use completer::Completer;
pub(crate) use leases::{Kind, Leases};
pub(crate) use upkeep::{purge_loop, replica_figures, rescue_once, upkeep_loops};
pub(crate) use worker::WorkerPool;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::db::{Db, Wakeups};
use crate::engine::Amounts;
use crate::execution::Executor;
use crate::liveness::Liveness;
use crate::metrics::Metrics;

/// The queue's timings and limits, from the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct QueueSettings {
    /// How long a claim lasts without a heartbeat.
    pub(crate) lease: Duration,
    /// How often the leases held are renewed (a third of the lease).
    pub(crate) heartbeat_every: Duration,
    /// How often expired leases are looked for.
    pub(crate) rescue_every: Duration,
    /// The longest a claimer waits without being woken.
    pub(crate) poll_every: Duration,
    /// Claims of one job before the rescuer gives up on it.
    pub(crate) max_attempts: u32,
    pub(crate) num_workers: usize,
    /// Jobs claimed beyond the free workers, waiting in the hand-over channel (CLAIM_AHEAD; 0 on
    /// PostgreSQL).
    pub(crate) claim_ahead: usize,
    /// At shutdown, how long the job in hand may run on before it is released.
    pub(crate) shutdown_grace: Duration,
}

/// What the job machinery of a replica shares.
#[derive(Clone)]
pub(crate) struct JobsContext {
    pub(crate) db: Db,
    pub(crate) leases: Leases,
    pub(crate) executor: Executor,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) wake: Wakeups,
    pub(crate) settings: QueueSettings,
    /// The work amounts this machine's calibration chose, for planning each job.
    pub(crate) amounts: Amounts,
    /// Fires on shutdown: stop claiming; the job in hand gets `shutdown_grace`.
    pub(crate) stop: CancellationToken,
    /// Told how long each job this replica finished took: the dashboard's completion
    /// percentiles, for all traffic and not only the dashboard's own bursts.
    pub(crate) completions: Arc<dyn CompletionObserver>,
}

/// Hears of every job whose outcome this replica stored, with its time from acceptance to its
/// end (queue wait plus work). Called on the completer's task, once per job: it must be quick
/// and must not block.
pub(crate) trait CompletionObserver: Send + Sync {
    fn job_completed(&self, accepted_to_end: Duration);
}

/// Starts the claimer, the workers and the completer on `tasks`. Returns the workers (for
/// health and metrics) and the completer (sync requests do not use it; it is returned so that
/// the caller holds the last sender and the completer drains before shutdown ends).
pub(crate) fn start(ctx: &JobsContext, liveness: &Liveness, tasks: &TaskTracker) -> WorkerPool {
    let n = ctx.settings.num_workers.max(1);
    // A slot is a place for a claimed job: in a worker, or waiting in the channel for one. The
    // places beyond the workers' are opened by the completer while jobs are tiny (`ahead`).
    let slots = Arc::new(Semaphore::new(n));
    let (handoff, claimed) = mpsc::channel(n + ctx.settings.claim_ahead);
    let ahead = ahead::ClaimAhead::new(
        slots.clone(),
        ctx.settings.claim_ahead,
        ctx.metrics.claimed_ahead_places.clone(),
    );
    let completer = Completer::start(ctx, handoff.clone(), ahead, liveness.register("completer", None), tasks);
    tasks.spawn(claimer::claim_loop(
        ctx.clone(),
        slots,
        handoff,
        liveness.register("claimer", Some(ctx.settings.poll_every)),
    ));
    WorkerPool::spawn(n, claimed, ctx.clone(), completer, tasks)
}
