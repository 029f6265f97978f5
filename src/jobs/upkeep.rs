//! The loops that keep the queue honest: the heartbeat renews every lease this replica holds in
//! one batch; the rescuer, in every replica, puts work whose lease expired back in the queue (it
//! is also startup recovery); the purge deletes finished requests after the retention period.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::JobsContext;
use crate::db::{self, Db, ReplicaBeat, Wakeups};
use crate::liveness::{Beat, Liveness};
use crate::metrics::Metrics;

/// Starts the heartbeat and the rescuer. They run until `halt`, which comes after the workers
/// have finished: leases must be renewed while the last jobs run.
pub(crate) fn upkeep_loops(
    ctx: &JobsContext,
    figures: impl Fn() -> ReplicaBeat + Send + 'static,
    liveness: &Liveness,
    halt: CancellationToken,
    tasks: &TaskTracker,
) {
    let beat = liveness.register("heartbeat", Some(ctx.settings.heartbeat_every));
    tasks.spawn(heartbeat_loop(ctx.clone(), figures, halt.clone(), beat));
    let beat = liveness.register("rescuer", Some(ctx.settings.rescue_every));
    tasks.spawn(rescue_loop(ctx.clone(), halt, beat));
}

async fn heartbeat_loop(ctx: JobsContext, figures: impl Fn() -> ReplicaBeat, halt: CancellationToken, beat: Beat) {
    let mut tick = tokio::time::interval(ctx.settings.heartbeat_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = halt.cancelled() => break,
            _ = tick.tick() => {}
        }
        beat.tick();
        let held = ctx.leases.snapshot();
        match ctx
            .db
            .heartbeat(ctx.leases.owner(), &held, ctx.settings.lease, &figures())
            .await
        {
            Ok(not_renewed) if not_renewed.is_empty() => {}
            Ok(not_renewed) => {
                // Work that ended while the heartbeat ran is not renewed either; only leases
                // still held are lost. (An outcome stored in the instant between its commit and
                // the drop of its lease can still be counted: that window is a task's wake-up,
                // where the heartbeat's own write takes a round trip to the database.)
                let lost = ctx.leases.lost(&not_renewed);
                if !lost.is_empty() {
                    let n = lost.jobs.len() + lost.sync.len() + lost.deliveries.len();
                    ctx.metrics.leases_lost.inc_by(n as u64);
                    tracing::warn!(
                        jobs = lost.jobs.len(),
                        sync = lost.sync.len(),
                        deliveries = lost.deliveries.len(),
                        "leases lost (they expired and another attempt took them); their work is abandoned"
                    );
                }
            }
            Err(e) => tracing::warn!(error = %e, "heartbeat failed; leases expire unless the next one succeeds"),
        }
    }
}

async fn rescue_loop(ctx: JobsContext, halt: CancellationToken, beat: Beat) {
    let mut tick = tokio::time::interval(ctx.settings.rescue_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = halt.cancelled() => break,
            _ = tick.tick() => {}
        }
        beat.tick();
        if let Err(e) = rescue_once(&ctx.db, ctx.settings.max_attempts, false, &ctx.metrics, &ctx.wake).await {
            tracing::warn!(error = %e, "looking for expired leases failed; trying again");
        }
    }
}

/// One rescue. `everything` treats every lease as expired (SQLite's start).
pub(crate) async fn rescue_once(
    db: &Db,
    max_attempts: u32,
    everything: bool,
    metrics: &Metrics,
    wake: &Wakeups,
) -> Result<(), sqlx::Error> {
    let rescued = db.rescue(max_attempts, everything).await?;
    if rescued.total() == 0 {
        return Ok(());
    }
    tracing::info!(
        jobs_requeued = rescued.jobs_requeued,
        jobs_failed = rescued.jobs_failed,
        sync_failed = rescued.sync_failed,
        deliveries_requeued = rescued.deliveries_requeued,
        deliveries_failed = rescued.deliveries_failed,
        "work whose lease expired was put back in the queue, or failed after its last attempt"
    );
    metrics.jobs_recovered.inc_by(rescued.jobs_requeued);
    if rescued.jobs_requeued > 0 {
        wake.jobs.notify_one();
    }
    if rescued.deliveries_requeued + rescued.jobs_failed > 0 {
        wake.deliveries.notify_one();
    }
    Ok(())
}

/// How many finished requests one purge statement deletes.
const PURGE_BATCH: u32 = 1_000;

/// Deletes finished requests older than `retention` (and idempotency keys older than
/// `key_ttl`), in batches, every `every`, until `halt`.
pub(crate) async fn purge_loop(
    db: Db,
    retention: Duration,
    key_ttl: Duration,
    every: Duration,
    halt: CancellationToken,
    beat: Beat,
    metrics: Arc<Metrics>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = halt.cancelled() => break,
            _ = tick.tick() => {}
        }
        beat.tick();
        let mut first = true;
        loop {
            let before = db::timestamp_ago(retention);
            let keys_before = db::timestamp_ago(key_ttl);
            let round = db::PurgeRound {
                before: &before,
                keys_before: &keys_before,
                batch: PURGE_BATCH,
                // Replicas' rounds drift apart; a round is skipped when another replica's began
                // less than most of an interval ago.
                starts_round_unless_within: first.then(|| every.mul_f64(0.9)),
            };
            first = false;
            match db.purge(round).await {
                Ok(purged) => {
                    metrics.requests_purged.inc_by(purged.requests);
                    if purged.skipped || purged.requests < u64::from(PURGE_BATCH) || halt.is_cancelled() {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "purging finished requests failed; trying again later");
                    break;
                }
            }
        }
    }
}

/// What a replica reports at each heartbeat.
pub(crate) fn replica_figures(
    metrics: &Arc<Metrics>,
    workers: usize,
    sync_slots: &Arc<tokio::sync::Semaphore>,
    sync_max: usize,
) -> impl Fn() -> ReplicaBeat + Send + 'static {
    let (metrics, sync_slots) = (metrics.clone(), sync_slots.clone());
    move || ReplicaBeat {
        workers: u32::try_from(workers).unwrap_or(u32::MAX),
        workers_busy: u32::try_from(metrics.workers_busy.get()).unwrap_or(0),
        sync_in_flight: u32::try_from(sync_max - sync_slots.available_permits()).unwrap_or(0),
        sync_max: u32::try_from(sync_max).unwrap_or(u32::MAX),
    }
}
