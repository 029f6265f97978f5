//! `AppState`: the cheap, cloneable handles every handler and task shares, and the `FromRef`
//! views that let extractors and middleware take only what they need.

use std::sync::Arc;

use axum::extract::FromRef;
use tokio::sync::Semaphore;

use crate::client_ip::ClientIpSource;
use crate::db::Db;
use crate::extract::BodyLimitKb;

use tokio_util::sync::CancellationToken;

use crate::auth::Authenticator;
use crate::calibrate::Calibration;
use crate::callback::Deliveries;
use crate::config::Config;
use crate::db::Wakeups;
use crate::execution::Executor;
use crate::jobs::{Leases, WorkerPool};
use crate::liveness::Liveness;
use crate::metrics::Metrics;
use crate::rate_limit::ClientRateLimiter;

/// The shared handles behind one `Arc`: extractors and middleware clone the state several times
/// per request, and one reference count is cheaper than one per field. Cloning and dropping the
/// fields one by one took about 3% of all CPU in a profile of acknowledgements at saturation
/// (the counts' cache lines bounce between the cores).
#[derive(Clone)]
pub struct AppState(Arc<Handles>);

impl AppState {
    pub(crate) fn new(handles: Handles) -> Self {
        Self(Arc::new(handles))
    }
}

impl std::ops::Deref for AppState {
    type Target = Handles;

    fn deref(&self) -> &Handles {
        &self.0
    }
}

/// What `AppState` holds.
pub struct Handles {
    /// Settings, validated once at start.
    pub config: Arc<Config>,
    /// The store: SQLite or PostgreSQL behind one trait of domain verbs.
    pub db: Db,
    /// MAX_SYNC_CONCURRENCY slots: a sync request that cannot take one at once gets 503 instead
    /// of queueing invisibly inside the server.
    pub(crate) sync_slots: Arc<Semaphore>,
    /// The work amounts in use (ENGINE_CALIBRATION) and where they came from, for planning and
    /// for /metrics.
    pub calibration: Arc<Calibration>,
    /// Runs engine work at low priority; shared by /sync and the workers.
    pub(crate) executor: Executor,
    /// This replica's leases (sync requests hold one while they run) and its owner id.
    pub(crate) leases: Leases,
    /// Wakes this replica's claimers when a job is accepted or a delivery is restarted.
    pub(crate) wake: Wakeups,
    /// Callback deliveries: redeliver starts a new round here.
    pub(crate) deliveries: Deliveries,
    /// The workers, for health and metrics.
    pub(crate) workers: WorkerPool,
    /// Whether the background loops are alive, for health.
    pub liveness: Liveness,
    /// Counters and histograms behind /metrics.
    pub(crate) metrics: Arc<Metrics>,
    /// Who a caller is: the API keys and the dashboard's sign-in sessions. The middleware
    /// identifies every request with it; the dashboard's sign-in form turns a key into a session.
    pub(crate) auth: Arc<Authenticator>,
    /// The per-client-IP limiter.
    pub(crate) rate_limiter: Arc<ClientRateLimiter>,
    /// Set when shutdown begins: new work is refused with 503 from then on.
    pub(crate) stopping: CancellationToken,
}

impl FromRef<AppState> for ClientIpSource {
    fn from_ref(state: &AppState) -> Self {
        ClientIpSource {
            trusted_proxies: state.config.trusted_proxies.clone(),
        }
    }
}

impl FromRef<AppState> for BodyLimitKb {
    fn from_ref(state: &AppState) -> Self {
        BodyLimitKb(state.config.max_payload_size_kb)
    }
}

impl AppState {
    /// True once shutdown has begun: from then on new work gets 503.
    pub fn is_stopping(&self) -> bool {
        self.stopping.is_cancelled()
    }

    /// Sync requests holding a slot right now.
    pub fn sync_in_flight(&self) -> usize {
        self.config.max_sync_concurrency - self.sync_slots.available_permits()
    }
}
