//! `AppState`: the cheap, cloneable handles every handler and task shares.

use std::sync::Arc;

use crate::db::Db;
use tokio::sync::Semaphore;

use crate::callback::Deliveries;
use crate::config::Config;
use crate::execution::Executor;
use crate::jobs::{JobQueue, WorkerPool};
use crate::metrics::Metrics;
use crate::rate_limit::ClientRateLimiter;

#[derive(Clone)]
pub struct AppState {
    /// Settings, validated once at start.
    pub config: Arc<Config>,
    /// The one connection pool; SQLite serialises writers itself.
    pub db: Db,
    /// MAX_SYNC_CONCURRENCY slots: a sync request that cannot take one at once gets 503 instead
    /// of queueing invisibly inside the server.
    pub sync_slots: Arc<Semaphore>,
    /// Runs engine work at low priority and records the outcome; shared by /sync and workers.
    pub executor: Executor,
    /// Where accepted async jobs wait for a worker.
    pub queue: JobQueue,
    /// Callback deliveries: redeliver starts a new round here.
    pub deliveries: Deliveries,
    /// The workers, for health and metrics.
    pub workers: WorkerPool,
    /// Counters and histograms behind /metrics.
    pub metrics: Arc<Metrics>,
    /// The per-client-IP limiter.
    pub rate_limiter: Arc<ClientRateLimiter>,
}

impl AppState {
    /// Sync requests holding a slot right now.
    pub fn sync_in_flight(&self) -> usize {
        self.config.max_sync_concurrency - self.sync_slots.available_permits()
    }
}
