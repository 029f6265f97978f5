//! Sending load. Closed loop: exactly `concurrency` requests in flight, a new one starting as
//! soon as one ends (a sliding window, never batches). Open loop: requests are due at a constant
//! rate whatever the server does; at most `concurrency` are in flight, and a request that had to
//! wait for a slot is measured from when it was due, as wrk2 does, so a stalled server cannot
//! hide its stall (coordinated omission). Each finished request goes to one collector task.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;

/// What one request got back.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Shot {
    /// The HTTP status, when an answer came.
    pub status: Option<u16>,
    /// `connect`, `timeout` or `other` when no answer came.
    pub error_kind: Option<&'static str>,
    /// The `request_id` from the answer, when it had one.
    pub request_id: Option<String>,
    /// The server-reported `execution_time_ms`, when it had one.
    pub server_ms: Option<f64>,
    /// The problem `type` of an error answer (`urn:sync-async:problem:queue-full`).
    pub problem_type: Option<String>,
}

/// A request maker: called once per request.
pub type Shoot = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Shot> + Send>> + Send + Sync>;

/// How much load, how.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Requests to measure; ignored when `duration` is set.
    pub requests: u64,
    /// Measure for this long instead of a request count.
    pub duration: Option<Duration>,
    /// Sent first and left out of every figure.
    pub warmup: Duration,
    /// In flight at once (closed loop), or at most in flight (open loop).
    pub concurrency: usize,
    /// Requests per second, open loop; `None` is closed loop.
    pub rate: Option<f64>,
}

/// One finished request, as the collector sees it.
#[derive(Debug, Clone)]
pub struct Finished {
    /// When it was due (open loop) or sent (closed loop): what latency is measured from.
    pub due: Instant,
    /// When it was actually sent.
    pub sent: Instant,
    pub done: Instant,
    /// False for warm-up requests.
    pub measured: bool,
    pub shot: Shot,
}

impl Plan {
    fn warmup_end(&self, start: Instant) -> Instant {
        start.checked_add(self.warmup).unwrap_or(start)
    }

    /// When a `--duration` run stops sending; `None` for a request-count run.
    fn measure_end(&self, start: Instant) -> Option<Instant> {
        self.duration
            .and_then(|d| start.checked_add(self.warmup.saturating_add(d)))
    }
}

/// Sends the planned load through `shoot`, passing every finished request to `finished`. The
/// returned instant is when measurement began (the end of the warm-up).
pub async fn drive(plan: &Plan, shoot: Shoot, finished: mpsc::UnboundedSender<Finished>) -> Instant {
    let start = Instant::now();
    match plan.rate {
        None => closed_loop(plan, shoot, finished, start).await,
        Some(rate) => open_loop(plan, rate, shoot, finished, start).await,
    }
    plan.warmup_end(start)
}

async fn closed_loop(plan: &Plan, shoot: Shoot, finished: mpsc::UnboundedSender<Finished>, start: Instant) {
    let measured_sent = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(plan.concurrency);
    for _ in 0..plan.concurrency.max(1) {
        let (shoot, finished, measured_sent, plan) =
            (shoot.clone(), finished.clone(), measured_sent.clone(), plan.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let sent = Instant::now();
                let measured = sent >= plan.warmup_end(start);
                if measured {
                    let over = match plan.measure_end(start) {
                        Some(end) => sent >= end,
                        None => measured_sent.fetch_add(1, Ordering::Relaxed) >= plan.requests,
                    };
                    if over {
                        break;
                    }
                }
                let shot = shoot().await;
                let report = Finished {
                    due: sent,
                    sent,
                    done: Instant::now(),
                    measured,
                    shot,
                };
                if finished.send(report).is_err() {
                    break;
                }
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
}

async fn open_loop(plan: &Plan, rate: f64, shoot: Shoot, finished: mpsc::UnboundedSender<Finished>, start: Instant) {
    // Send times come from a dedicated thread with a precise sleep: the async timer wheel has a
    // 1 ms resolution, which would make every request up to 1 ms late and inflate the corrected
    // latencies by the tool's own error. The channel holds one send time, so when every slot is
    // busy the clock waits too: memory stays flat, and each request keeps its intended time.
    let (due_tx, mut due_rx) = mpsc::channel::<(Instant, bool)>(1);
    let schedule = (plan.clone(), start.into_std());
    std::thread::Builder::new()
        .name("loadtest-clock".into())
        .spawn(move || send_times(&schedule.0, rate, schedule.1, &due_tx))
        .ok();
    let end = plan.measure_end(start);
    let concurrency = plan.concurrency.max(1);
    let slots = Arc::new(Semaphore::new(concurrency));
    while let Some((due, measured)) = due_rx.recv().await {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            break;
        };
        if end.is_some_and(|end| Instant::now() >= end) {
            // Requests still due at the end of the measurement are not sent: the shortfall
            // shows as achieved against offered rate.
            break;
        }
        let (shoot, finished) = (shoot.clone(), finished.clone());
        tokio::spawn(async move {
            let sent = Instant::now();
            let shot = shoot().await;
            let _ = finished.send(Finished {
                due,
                sent,
                done: Instant::now(),
                measured,
                shot,
            });
            drop(permit);
        });
    }
    drop(due_rx);
    // Every request holds a slot until it has reported: taking them all means all are done.
    let _ = slots.acquire_many(u32::try_from(concurrency).unwrap_or(u32::MAX)).await;
}

/// Emits `(due, measured)` for every request of an open-loop plan, each at its due time.
fn send_times(plan: &Plan, rate: f64, start: std::time::Instant, due_tx: &mpsc::Sender<(Instant, bool)>) {
    let rate = rate.max(f64::MIN_POSITIVE);
    let warmup_requests = (plan.warmup.as_secs_f64() * rate).ceil() as u64;
    let end = plan
        .duration
        .and_then(|d| start.checked_add(plan.warmup.saturating_add(d)));
    for i in 0u64.. {
        // From the index, not by adding an interval: no drift, and no interval that rounds to 0.
        let Some(due) = Duration::try_from_secs_f64(i as f64 / rate)
            .ok()
            .and_then(|o| start.checked_add(o))
        else {
            break;
        };
        let over = match (plan.duration, end) {
            (Some(_), Some(end)) => due >= end,
            (Some(_), None) => false,
            (None, _) => i >= warmup_requests + plan.requests,
        };
        if over {
            break;
        }
        let now = std::time::Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        if due_tx
            .blocking_send((Instant::from_std(due), i >= warmup_requests))
            .is_err()
        {
            break;
        }
    }
}
