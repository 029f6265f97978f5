//! Startup recovery: every async job that a previous run accepted but did not finish goes back
//! on the queue, oldest first. A `kill -9` at any moment therefore loses no acknowledged job.

use std::sync::Arc;

use crate::db::Db;
use tokio_util::task::TaskTracker;

use super::JobQueue;
use crate::db;
use crate::metrics::Metrics;

/// Re-queues unfinished async jobs and fails orphaned sync requests. Returns how many jobs were
/// found. The queue is fed by a task that waits for room, so a backlog larger than the queue
/// drains as workers free slots (new submissions meanwhile get an honest 429).
pub(crate) async fn recover_unfinished(
    db: &Db,
    queue: &JobQueue,
    metrics: &Arc<Metrics>,
    tracker: &TaskTracker,
) -> anyhow::Result<usize> {
    let now = db::timestamp(chrono::Utc::now());
    let orphaned = db::requests::fail_orphaned_sync(db, &now).await?;
    if orphaned > 0 {
        tracing::warn!(
            orphaned,
            "sync requests interrupted by the last stop were marked failed"
        );
    }
    let ids = db::requests::requeue_unfinished_async(db).await?;
    let found = ids.len();
    if found > 0 {
        tracing::info!(jobs = found, "re-queueing async jobs left unfinished by the last stop");
        metrics.jobs_recovered.inc_by(found as u64);
        let queue = queue.clone();
        tracker.spawn(async move {
            for id in ids {
                if queue.send(id).await.is_err() {
                    break;
                }
            }
        });
    }
    Ok(found)
}
