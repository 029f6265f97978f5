//! Callback delivery. Deliveries are rows, claimed when due: a claimer takes as many as there
//! are free attempt slots (MAX_CONCURRENT_DELIVERIES per replica), each attempt runs in its own
//! task holding a slot, and its outcome is stored fenced by the claim. A delivery waiting for a
//! retry holds nothing in memory: its next due time is in the database.

mod attempt;
mod recorder;
mod retry;

pub(crate) use attempt::{CallbackBody, build_client};
pub(crate) use retry::{Decision, RetryPolicy};

use recorder::{Recorder, RecorderSetup};

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::config::Config;
use crate::db::{self, AfterAttempt, AttemptRecord, AttemptRow, ClaimedDelivery, Db, RedeliverRefusal, Wakeups};
use crate::jobs::{Kind, Leases};
use crate::liveness::{Beat, Liveness};
use crate::metrics::{CallbackOutcome, Metrics};
use crate::model::DeliveryStatus;
use crate::signing::SigningKey;
use crate::ssrf::UrlPolicy;

/// The longest the claimer backs off after a database error.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// The delivery side of a replica, shared by the claimer, the attempts and the redeliver route.
#[derive(Clone)]
pub(crate) struct Deliveries {
    inner: Arc<Inner>,
}

struct Inner {
    db: Db,
    /// Redirects off, proxies off, the URL policy applied to every resolved address.
    client: reqwest::Client,
    /// Checked again before each attempt: IP-literal URLs bypass the resolver.
    policy: Arc<UrlPolicy>,
    signing_key: Option<SigningKey>,
    retry: RetryPolicy,
    /// Attempts in flight at once; waiting for a retry holds no slot.
    slots: Arc<Semaphore>,
    max_slots: usize,
    metrics: Arc<Metrics>,
    leases: Leases,
    lease: Duration,
    poll_every: Duration,
    wake: Wakeups,
}

impl Deliveries {
    pub(crate) fn new(
        config: &Config,
        db: Db,
        metrics: Arc<Metrics>,
        leases: Leases,
        wake: Wakeups,
        lease: Duration,
    ) -> anyhow::Result<Self> {
        let policy = Arc::new(UrlPolicy::from_config(config));
        let client = build_client(policy.clone(), config.callback_timeout).context("building the callback client")?;
        let retry = RetryPolicy {
            max_retries: config.max_callback_retries,
            backoff_base: config.retry_backoff_base,
            unit: config.callback_retry_unit,
            max_retry_after: config.callback_max_retry_after,
        };
        let inner = Inner {
            db,
            client,
            policy,
            signing_key: config.callback_signing_key.clone(),
            retry,
            slots: Arc::new(Semaphore::new(config.max_concurrent_deliveries)),
            max_slots: config.max_concurrent_deliveries,
            metrics,
            leases,
            lease,
            poll_every: config.poll_interval,
            wake,
        };
        Ok(Self { inner: Arc::new(inner) })
    }

    /// Starts the claimer on `tasks`; it stops taking deliveries once `stop` fires, and the
    /// attempts in flight finish (each is bounded by CALLBACK_TIMEOUT_SECONDS).
    pub(crate) fn start(&self, liveness: &Liveness, stop: CancellationToken, tasks: &TaskTracker) {
        let beat = liveness.register("deliveries", Some(self.inner.poll_every));
        let recorder = Recorder::start(
            RecorderSetup {
                db: self.inner.db.clone(),
                leases: self.inner.leases.clone(),
                lease: self.inner.lease,
                stop: stop.clone(),
                beat: liveness.register("attempt recorder", None),
            },
            tasks,
        );
        tasks.spawn(claim_loop(self.inner.clone(), recorder, stop, tasks.clone(), beat));
    }

    /// Starts a new round for a failed delivery, with a fresh retry budget.
    pub(crate) async fn redeliver(&self, id: &str) -> Result<Result<(), RedeliverRefusal>, sqlx::Error> {
        let restarted = self.inner.db.redeliver(id).await?;
        if restarted.is_ok() {
            self.inner.wake.deliveries.notify_one();
        }
        Ok(restarted)
    }

    /// Attempts in flight now.
    pub(crate) fn in_flight(&self) -> usize {
        self.inner.max_slots - self.inner.slots.available_permits()
    }
}

/// Claims due deliveries as attempt slots free up, and sleeps until the next one is due (or it
/// is woken, or `poll_every` passes).
async fn claim_loop(inner: Arc<Inner>, recorder: Recorder, stop: CancellationToken, tasks: TaskTracker, beat: Beat) {
    let mut backoff = Duration::from_millis(50);
    'claiming: loop {
        let first = loop {
            beat.tick();
            tokio::select! {
                () = stop.cancelled() => break 'claiming,
                permit = inner.slots.clone().acquire_owned() => match permit {
                    Ok(permit) => break permit,
                    Err(_) => break 'claiming,
                },
                () = tokio::time::sleep(inner.poll_every) => {}
            }
        };
        let mut permits = vec![first];
        while let Ok(permit) = inner.slots.clone().try_acquire_owned() {
            permits.push(permit);
        }
        let wanted = permits.len();
        let claimed = match inner
            .db
            .claim_deliveries(inner.leases.owner(), wanted, inner.lease)
            .await
        {
            Ok(claimed) => {
                backoff = Duration::from_millis(50);
                claimed
            }
            Err(e) => {
                tracing::warn!(error = %e, "claiming deliveries failed; trying again");
                drop(permits);
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        let got = claimed.len();
        for (delivery, permit) in claimed.into_iter().zip(permits.drain(..)) {
            tasks.spawn(deliver(inner.clone(), recorder.clone(), delivery, permit));
        }
        drop(permits);
        if got < wanted {
            let wait = match inner.db.next_delivery_due_in().await {
                Ok(Some(due_in)) => due_in.min(inner.poll_every),
                Ok(None) | Err(_) => inner.poll_every,
            };
            tokio::select! {
                () = stop.cancelled() => break,
                () = inner.wake.deliveries.notified() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
    }
}

/// Attempts of claimed deliveries, one after the other in one slot: the first from the claimer,
/// each next one claimed with the record of the one before (see `recorder`). The slot is held
/// until the last attempt is recorded: attempts waiting for the recorder hold their delivery in
/// memory, and without the slot the claimer would keep claiming more of them than the recorder
/// can store (a soak with every callback failing grew by 3 MiB/s).
async fn deliver(inner: Arc<Inner>, recorder: Recorder, first: ClaimedDelivery, slot: OwnedSemaphorePermit) {
    let mut next = Some(first);
    while let Some(delivery) = next.take() {
        inner.leases.hold(Kind::Delivery, delivery.lease.clone(), None);
        let span = tracing::info_span!("delivery", request_id = %delivery.lease.id);
        match attempt_once(&inner, &recorder, &delivery).instrument(span).await {
            Ok(following) => next = following,
            // The lease is no longer renewed: it expires and the rescuer makes the delivery due
            // again, with no restart.
            Err(e) => tracing::error!(
                request_id = %delivery.lease.id,
                error = format!("{e:#}"),
                "callback attempt not recorded; it is made again once its lease expires"
            ),
        }
        inner.leases.drop_lease(Kind::Delivery, &delivery.lease);
    }
    drop(slot);
}

/// One attempt, and its outcome recorded. Returns the delivery claimed with the record, which
/// the caller's slot goes on to.
async fn attempt_once(
    inner: &Inner,
    recorder: &Recorder,
    due: &ClaimedDelivery,
) -> anyhow::Result<Option<ClaimedDelivery>> {
    let body = serde_json::to_vec(&callback_body(due))?;
    let attempted_at = db::timestamp(chrono::Utc::now());
    let id = &due.lease.id;
    let report = attempt::attempt(
        &inner.client,
        &inner.policy,
        inner.signing_key.as_ref(),
        &due.callback_url,
        id,
        &body,
    )
    .await;

    let number = due.attempts + 1;
    let attempts_in_round = u32::try_from(number - due.round_start).unwrap_or(u32::MAX);
    let decision = inner
        .retry
        .decide(&report.result, attempts_in_round, rand::random::<f64>());
    let (next, outcome) = match &decision {
        Decision::Delivered => (
            AfterAttempt {
                status: DeliveryStatus::Delivered,
                due_in: None,
            },
            CallbackOutcome::Delivered,
        ),
        Decision::RetryAfter(delay) => (
            AfterAttempt {
                status: DeliveryStatus::Pending,
                due_in: Some(*delay),
            },
            CallbackOutcome::Retried,
        ),
        Decision::GiveUp(_) => (
            AfterAttempt {
                status: DeliveryStatus::Failed,
                due_in: None,
            },
            CallbackOutcome::Failed,
        ),
    };
    let attempt = AttemptRow {
        number,
        attempted_at,
        duration_ms: report.duration.as_secs_f64() * 1e3,
        status_code: report.status_code.map(i64::from),
        error_class: report.error_class.map(str::to_owned),
        error: report.error.clone(),
    };
    let (stored, following) = recorder
        .record(AttemptRecord {
            delivery: due.lease.clone(),
            attempt,
            next,
        })
        .await?;
    if !stored {
        inner.metrics.stale_writes.inc();
        tracing::warn!(
            attempt = number,
            "attempt dropped: the delivery's lease had passed to another claim"
        );
        return Ok(following);
    }
    inner.metrics.record_callback(outcome);
    match decision {
        Decision::Delivered => tracing::info!(attempt = number, "callback delivered"),
        Decision::RetryAfter(delay) => {
            tracing::info!(
                attempt = number,
                error = report.error.as_deref(),
                delay_ms = delay.as_millis() as u64,
                "callback attempt failed; retrying"
            );
            // The claimer may be asleep until a later due time: let it look again.
            inner.wake.deliveries.notify_one();
        }
        Decision::GiveUp(reason) => {
            tracing::warn!(
                attempt = number,
                error = report.error.as_deref(),
                reason = reason.as_str(),
                "callback delivery failed"
            )
        }
    }
    Ok(following)
}

fn callback_body(due: &ClaimedDelivery) -> CallbackBody {
    CallbackBody {
        request_id: due.lease.id.clone(),
        status: due.status,
        result: due.result.clone(),
        error: due.error.clone(),
        execution_time_ms: due.execution_time_ms,
        completed_at: due.completed_at.clone(),
    }
}
