//! `AppState`: the cheap, cloneable handles every handler and task shares.

use std::sync::Arc;

use axum::extract::FromRef;
use tokio::sync::Semaphore;

use crate::client_ip::ClientIpSource;
use crate::db::Db;
use crate::extract::BodyLimitKb;

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

impl FromRef<AppState> for ClientIpSource {
    fn from_ref(state: &AppState) -> Self {
        ClientIpSource {
            trust_forwarded_for: state.config.trust_forwarded_for,
        }
    }
}

impl FromRef<AppState> for BodyLimitKb {
    fn from_ref(state: &AppState) -> Self {
        BodyLimitKb(state.config.max_payload_size_kb)
    }
}

impl AppState {
    /// Sync requests holding a slot right now.
    pub fn sync_in_flight(&self) -> usize {
        self.config.max_sync_concurrency - self.sync_slots.available_permits()
    }
}
