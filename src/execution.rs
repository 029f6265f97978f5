//! Runs engine work off the async threads and records how it ended. `EnginePool` is a dedicated
//! runtime whose blocking threads run at a lower OS priority, so the threads that answer HTTP
//! keep winning the CPU while every engine thread is busy. `execute` is shared by `/sync` and the
//! async workers: one deadline, one cancellation path, one form of the outcome to store.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::runtime::{Builder, Handle, Runtime};
use tokio::sync::OwnedSemaphorePermit;

use crate::config::EnginePriority;
use crate::db::{self, Completion};
use crate::engine::{self, CancelToken, Operation, Work};
use crate::metrics::{Metrics, RunOutcome};
use crate::model::{Mode, Status};

/// How one engine run ended.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Outcome {
    Done {
        result: Value,
        elapsed: Duration,
    },
    /// The deadline passed; the engine was cancelled and has stopped.
    TimedOut {
        elapsed: Duration,
    },
    /// Someone else cancelled the run (shutdown, a client that went away).
    Cancelled,
    /// The engine panicked: a bug, reported as a failure of this request only.
    Panicked(String),
}

impl Outcome {
    pub(crate) fn status(&self) -> Status {
        match self {
            Self::Done { .. } => Status::Done,
            _ => Status::Failed,
        }
    }
}

/// Blocking threads for the engine, at a lower priority than the rest of the process.
pub(crate) struct EnginePool {
    /// Where `spawn_blocking` sends engine work: the low-priority runtime's blocking pool.
    handle: Handle,
    /// Kept only to shut the runtime down without blocking when the pool is dropped.
    runtime: Option<Runtime>,
    metrics: Arc<Metrics>,
}

impl EnginePool {
    /// `max_threads` bounds the engine runs on a CPU at once (sync slots + workers).
    pub(crate) fn new(max_threads: usize, priority: EnginePriority, metrics: Arc<Metrics>) -> std::io::Result<Self> {
        let runtime = Builder::new_multi_thread()
            .worker_threads(1)
            .max_blocking_threads(max_threads.max(1))
            .thread_name("engine")
            .on_thread_start(move || lower_thread_priority(priority))
            .build()?;
        Ok(Self {
            handle: runtime.handle().clone(),
            runtime: Some(runtime),
            metrics,
        })
    }

    /// Runs `work` until it finishes, `deadline` passes, or `cancel` is set. When the deadline
    /// passes, this cancels the engine and waits for it to stop before returning, so the CPU is
    /// free by the time the caller reports the timeout. `permit` is held until the engine stops.
    /// If the returned future is dropped (the client went away), the engine is cancelled too.
    pub(crate) async fn run(
        &self,
        work: Work,
        deadline: Duration,
        cancel: CancelToken,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Outcome {
        let engine_cancel = cancel.clone();
        let metrics = self.metrics.clone();
        metrics.engine_running.inc();
        let mut task = self.handle.spawn_blocking(move || {
            let _running = RunningGuard(metrics);
            let _permit = permit;
            let started = Instant::now();
            let outcome = engine::run(&work, &engine_cancel);
            (outcome, started.elapsed())
        });
        let _stop_if_abandoned = cancel.cancel_on_drop();
        let joined = match tokio::time::timeout(deadline, &mut task).await {
            Ok(joined) => joined,
            Err(_) => {
                let cancelled_at = Instant::now();
                cancel.cancel();
                let joined = task.await;
                self.metrics
                    .engine_cancel_latency
                    .observe(cancelled_at.elapsed().as_secs_f64());
                return match joined {
                    Ok((Ok(result), elapsed)) => Outcome::Done { result, elapsed },
                    Ok((Err(_), elapsed)) => Outcome::TimedOut { elapsed },
                    Err(e) => Outcome::Panicked(e.to_string()),
                };
            }
        };
        match joined {
            Ok((Ok(result), elapsed)) => Outcome::Done { result, elapsed },
            Ok((Err(_), _)) => Outcome::Cancelled,
            Err(e) => Outcome::Panicked(e.to_string()),
        }
    }
}

impl Drop for EnginePool {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            // Dropping a runtime inside async code would block; this never does.
            runtime.shutdown_background();
        }
    }
}

/// Keeps `engine_running` true to what holds a CPU, even if the engine panics.
struct RunningGuard(Arc<Metrics>);

impl Drop for RunningGuard {
    fn drop(&mut self) {
        self.0.engine_running.dec();
    }
}

/// Applies `priority` to the calling thread (an engine thread, at its start). Lowering a
/// thread's priority needs no privilege.
fn lower_thread_priority(priority: EnginePriority) {
    use thread_priority::{NormalThreadSchedulePolicy, ThreadPriority, ThreadSchedulePolicy};
    let (policy, level) = match priority {
        EnginePriority::Normal => return,
        EnginePriority::Idle => (NormalThreadSchedulePolicy::Idle, ThreadPriority::Min),
        EnginePriority::Low => (NormalThreadSchedulePolicy::Other, ThreadPriority::Min),
    };
    let id = thread_priority::thread_native_id();
    if let Err(e) = thread_priority::set_thread_priority_and_policy(id, level, ThreadSchedulePolicy::Normal(policy)) {
        tracing::warn!(error = ?e, ?priority, "could not lower the engine thread priority");
    }
}

/// What `execute` needs: the pool to run on, where to count, and the deadline.
#[derive(Clone)]
pub(crate) struct Executor {
    /// The low-priority threads the engine runs on.
    pub(crate) pool: Arc<EnginePool>,
    /// Engine time and outcome counts.
    pub(crate) metrics: Arc<Metrics>,
    /// WORK_TIMEOUT_SECONDS: past this the engine is cancelled.
    pub(crate) deadline: Duration,
}

impl Executor {
    /// Runs engine work and counts how it ended. Storing the outcome is the caller's: a sync
    /// request stores it under its lease, a worker hands it to the completer.
    pub(crate) async fn execute(
        &self,
        id: &str,
        mode: Mode,
        operation: Operation,
        work: Work,
        cancel: CancelToken,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Outcome {
        let outcome = self.pool.run(work, self.deadline, cancel, permit).await;
        let (run_outcome, seconds) = match &outcome {
            Outcome::Done { elapsed, .. } => (RunOutcome::Done, elapsed.as_secs_f64()),
            Outcome::TimedOut { elapsed } => (RunOutcome::Timeout, elapsed.as_secs_f64()),
            Outcome::Cancelled => (RunOutcome::Cancelled, 0.0),
            Outcome::Panicked(_) => (RunOutcome::Panicked, 0.0),
        };
        self.metrics.record_run(mode.as_str(), operation, run_outcome, seconds);
        if let Outcome::Panicked(why) = &outcome {
            tracing::error!(request_id = id, panic = why, "the engine panicked");
        }
        outcome
    }

    /// What to store for a run that ended this way.
    pub(crate) fn completion(&self, outcome: &Outcome) -> Completion {
        let (result, elapsed) = match outcome {
            Outcome::Done { result, elapsed } => (Some(result.clone()), Some(elapsed)),
            Outcome::TimedOut { elapsed } => (None, Some(elapsed)),
            Outcome::Cancelled | Outcome::Panicked(_) => (None, None),
        };
        Completion {
            status: outcome.status(),
            result,
            error: failure_message(outcome, self.deadline),
            completed_at: db::timestamp(chrono::Utc::now()),
            execution_time_ms: elapsed.map(|d| as_millis(*d)),
        }
    }
}

/// Milliseconds with microsecond precision (no float noise such as 1390.9897369999999).
pub(crate) fn as_millis(d: Duration) -> f64 {
    d.as_micros() as f64 / 1e3
}

/// The `error` stored for a run that did not finish.
fn failure_message(outcome: &Outcome, deadline: Duration) -> Option<String> {
    match outcome {
        Outcome::Done { .. } => None,
        Outcome::TimedOut { .. } => Some(format!(
            "timed out: the work did not finish within {} s and was cancelled",
            deadline.as_secs_f64()
        )),
        Outcome::Cancelled => Some("cancelled: the client went away before the work finished".to_owned()),
        Outcome::Panicked(_) => Some("internal error in the work engine".to_owned()),
    }
}
