//! Callback delivery: one task per delivery, independent of the workers. Each attempt holds one
//! of MAX_CONCURRENT_DELIVERIES slots; waiting between attempts holds nothing. The state lives
//! in SQLite before and after every attempt, so a restart resumes every unfinished delivery
//! (at least once: an attempt cut short by a crash is made again).

mod attempt;
mod retry;

pub(crate) use attempt::{CallbackBody, build_client};
pub(crate) use retry::{Decision, RetryPolicy};

use std::sync::Arc;
use std::time::Duration;

use crate::db::Db;
use anyhow::Context;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::config::Config;
use crate::db;
use crate::db::callbacks::{AfterAttempt, AttemptRow, DueDelivery, RedeliverRefusal};
use crate::metrics::{CallbackOutcome, Metrics};
use crate::model::DeliveryStatus;
use crate::signing::SigningKey;
use crate::ssrf::UrlPolicy;

/// The delivery scheduler, shared by the workers, the redeliver route and startup recovery.
#[derive(Clone)]
pub struct Deliveries {
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
    slots: Semaphore,
    metrics: Arc<Metrics>,
    tasks: TaskTracker,
    /// Set on shutdown: waiting deliveries stop and resume at the next start.
    stop: CancellationToken,
}

impl Deliveries {
    pub fn new(
        config: &Config,
        db: Db,
        metrics: Arc<Metrics>,
        tasks: TaskTracker,
        stop: CancellationToken,
    ) -> anyhow::Result<Self> {
        let policy = Arc::new(UrlPolicy::from_config(config));
        let client = build_client(policy.clone(), config.callback_timeout).context("building the callback client")?;
        let signing_key = config.callback_signing_key.clone();
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
            signing_key,
            retry,
            slots: Semaphore::new(config.max_concurrent_deliveries),
            metrics,
            tasks,
            stop,
        };
        Ok(Self { inner: Arc::new(inner) })
    }

    /// Starts delivering a finished job's result, if it has a callback. Never waits.
    pub fn schedule(&self, id: &str) {
        let inner = self.inner.clone();
        let id = id.to_owned();
        let span = tracing::info_span!("delivery", request_id = %id);
        self.inner
            .tasks
            .spawn(async move { deliver(&inner, &id).await }.instrument(span));
    }

    /// Resumes every delivery a previous run left unfinished. Returns how many.
    pub async fn resume_unfinished(&self) -> Result<usize, sqlx::Error> {
        let ids = db::callbacks::unfinished(&self.inner.db).await?;
        if !ids.is_empty() {
            tracing::info!(
                deliveries = ids.len(),
                "resuming callback deliveries left unfinished by the last stop"
            );
        }
        for id in &ids {
            self.schedule(id);
        }
        Ok(ids.len())
    }

    /// Starts a new round for a failed delivery, with a fresh retry budget.
    pub async fn redeliver(&self, id: &str) -> Result<Result<(), RedeliverRefusal>, sqlx::Error> {
        let now = db::timestamp(chrono::Utc::now());
        let restarted = db::callbacks::restart_failed(&self.inner.db, id, &now).await?;
        if restarted.is_ok() {
            self.schedule(id);
        }
        Ok(restarted)
    }
}

/// The delivery loop: wait until due, attempt, record, decide; until delivered or given up.
async fn deliver(inner: &Inner, id: &str) {
    loop {
        match attempt_once(inner, id).await {
            Ok(true) => continue,
            Ok(false) => return,
            Err(e) => {
                // The state on disk is unchanged; the next start resumes this delivery.
                tracing::error!(
                    error = format!("{e:#}"),
                    "callback delivery stopped on a database error"
                );
                return;
            }
        }
    }
}

/// One turn of the loop. `Ok(true)` means another attempt is scheduled.
async fn attempt_once(inner: &Inner, id: &str) -> anyhow::Result<bool> {
    let Some(due) = db::retry_transient("loading a delivery", || db::callbacks::due(&inner.db, id)).await? else {
        return Ok(false);
    };
    if !wait_until_due(inner, &due).await {
        return Ok(false);
    }
    let permit = tokio::select! {
        () = inner.stop.cancelled() => return Ok(false),
        permit = inner.slots.acquire() => permit?,
    };
    db::retry_transient("starting an attempt", || db::callbacks::mark_delivering(&inner.db, id)).await?;
    let body = serde_json::to_vec(&callback_body(&due))?;
    let attempted_at = db::timestamp(chrono::Utc::now());
    let report = attempt::attempt(
        &inner.client,
        &inner.policy,
        inner.signing_key.as_ref(),
        &due.callback_url,
        id,
        &body,
    )
    .await;
    drop(permit);

    let number = due.attempts + 1;
    let attempts_in_round = u32::try_from(number - due.delivery_round_start).unwrap_or(u32::MAX);
    let decision = inner
        .retry
        .decide(&report.result, attempts_in_round, rand::random::<f64>());
    let next_at = match &decision {
        Decision::RetryAfter(delay) => {
            let delay = chrono::Duration::from_std(*delay).unwrap_or(chrono::Duration::days(1));
            Some(db::timestamp(
                chrono::Utc::now()
                    .checked_add_signed(delay)
                    .unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC),
            ))
        }
        _ => None,
    };
    let (delivery_status, outcome) = match &decision {
        Decision::Delivered => (DeliveryStatus::Delivered, CallbackOutcome::Delivered),
        Decision::RetryAfter(_) => (DeliveryStatus::Pending, CallbackOutcome::Retried),
        Decision::GiveUp(_) => (DeliveryStatus::Failed, CallbackOutcome::Failed),
    };
    let attempt = AttemptRow {
        number,
        attempted_at,
        duration_ms: report.duration.as_secs_f64() * 1e3,
        status_code: report.status_code.map(i64::from),
        error_class: report.error_class.map(str::to_owned),
        error: report.error.clone(),
    };
    let next = AfterAttempt {
        delivery_status,
        next_attempt_at: next_at.as_deref(),
    };
    db::retry_transient("recording an attempt", || {
        db::callbacks::record_attempt(&inner.db, id, &attempt, &next)
    })
    .await?;
    inner.metrics.record_callback(outcome);
    match decision {
        Decision::Delivered => tracing::info!(attempt = number, "callback delivered"),
        Decision::RetryAfter(delay) => {
            tracing::info!(
                attempt = number,
                error = report.error.as_deref(),
                delay_ms = delay.as_millis() as u64,
                "callback attempt failed; retrying"
            )
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
    Ok(matches!(decision, Decision::RetryAfter(_)))
}

/// Sleeps until the delivery is due. False when shutdown came first.
async fn wait_until_due(inner: &Inner, due: &DueDelivery) -> bool {
    let wait = due
        .next_attempt_at
        .as_deref()
        .and_then(|at| chrono::DateTime::parse_from_rfc3339(at).ok())
        .and_then(|at| (at.with_timezone(&chrono::Utc) - chrono::Utc::now()).to_std().ok())
        .unwrap_or(Duration::ZERO);
    tokio::select! {
        () = inner.stop.cancelled() => false,
        () = tokio::time::sleep(wait) => true,
    }
}

fn callback_body(due: &DueDelivery) -> CallbackBody {
    CallbackBody {
        request_id: due.id.clone(),
        status: due.status,
        result: due.result.as_ref().map(|r| r.0.clone()),
        error: due.error.clone(),
        execution_time_ms: due.execution_time_ms,
        completed_at: due.completed_at.clone(),
    }
}
