//! `App::build(Config)` wires everything (store, engine pool, the job machinery, deliveries,
//! the upkeep loops, rate limiter) and binds the listener; `App::run(shutdown)` serves until
//! `shutdown` resolves, then drains: no new connections, in-flight requests finish, workers
//! finish or release the job in hand, and queued jobs stay in the database.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Authenticator;
use crate::calibrate;
use crate::callback::Deliveries;
use crate::config::{Config, DatabaseTarget};
use crate::dashboard::Dashboard;
use crate::db::{self, Backend, Wakeups};
use crate::execution::{EnginePool, Executor};
use crate::jobs::{self, JobsContext, Leases, QueueSettings};
use crate::layers;
use crate::liveness::Liveness;
use crate::metrics::Metrics;
use crate::rate_limit::ClientRateLimiter;
use crate::state::{AppState, Handles};

/// How often idle rate-limit entries are forgotten.
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(60);

/// Why the app could not start. The binary exits with 2 for a database it cannot use, as for a
/// bad setting.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The database is unreachable, refuses the credentials, or its schema cannot be migrated; or
    /// the SQLite file cannot be created, or another server is using it.
    #[error("the database cannot be used: {0}")]
    Database(#[from] db::ConnectError),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// A built, bound, not yet serving application.
pub struct App {
    listener: TcpListener,
    state: AppState,
    /// The work: claimer, workers, completer, delivery claimer and attempts. Awaited first on
    /// shutdown.
    work: TaskTracker,
    /// The upkeep: heartbeat, rescuer, purge, housekeeping. Stopped after the work, so that
    /// leases are renewed while the last jobs finish.
    upkeep: TaskTracker,
    /// Tells the work to stop taking jobs.
    stop: CancellationToken,
    /// Tells the upkeep loops to stop.
    halt: CancellationToken,
    /// The dashboard's handles: its rates (fed by `track_http`) and bursts.
    dashboard: Dashboard,
    /// For SQLite, an exclusive lock on `<DATABASE_PATH>.lock`, held until the app stops: one
    /// server per file, which is what lets its start treat every lease as expired.
    _instance_lock: Option<std::fs::File>,
}

impl App {
    pub async fn build(config: Config) -> Result<Self, StartError> {
        let config = Arc::new(config);
        // Bind and lock before touching any job: a second instance started by mistake must fail
        // here, not after it has reset the first one's jobs.
        let addr = SocketAddr::new(config.host, config.port);
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        let bound = listener.local_addr().context("reading the bound address")?;
        let dashboard = Dashboard::new(&config, bound).context("setting up the dashboard")?;
        let target = config.database();
        let instance_lock = match &target {
            DatabaseTarget::Sqlite { path, .. } => Some(lock_instance(path).map_err(db::ConnectError::from)?),
            DatabaseTarget::Postgres { .. } => None,
        };
        let liveness = Liveness::new();
        let db = db::connect(&target, &liveness).await?;
        let metrics = Arc::new(Metrics::new());
        // Before any engine work starts, so that the measurement has the CPUs to itself; on a
        // blocking thread, since it reads a file and may compute for up to 2 s.
        let calibration = {
            let config = config.clone();
            tokio::task::spawn_blocking(move || calibrate::resolve(&config))
                .await
                .context("calibrating the engine")?
        };
        calibration.log();
        metrics.set_calibration(
            calibration.mode.as_str(),
            calibration.source.as_str(),
            &calibration.amounts.factors(),
        );
        let calibration = Arc::new(calibration);
        let engine_threads = config.max_sync_concurrency + config.num_workers;
        let pool = EnginePool::new(engine_threads, config.engine_priority, metrics.clone())
            .context("starting the engine pool")?;
        let executor = Executor {
            pool: Arc::new(pool),
            metrics: metrics.clone(),
            deadline: config.work_timeout,
        };
        let (work, upkeep) = (TaskTracker::new(), TaskTracker::new());
        let (stop, halt) = (CancellationToken::new(), CancellationToken::new());
        let leases = Leases::new(owner_id(&config.replica_name));
        let wake = Wakeups::default();
        let settings = queue_settings(&config);
        tracing::info!(
            replica = leases.owner(),
            backend = db.backend().as_str(),
            "replica starting"
        );
        if config.api_keys.is_empty() {
            tracing::warn!("no API_KEYS or ADMIN_API_KEY: the API is open, and every client sees every request");
        } else {
            tracing::info!(
                tenant_keys = config.api_keys.tenants.len(),
                admin = config.api_keys.admin.is_some(),
                "API keys required"
            );
        }

        // Startup recovery is the rescuer. On SQLite the lock file proves that no other process
        // holds a lease, so every lease counts as expired; on PostgreSQL only expired ones do,
        // and work that live replicas hold stays theirs.
        let everything = db.backend() == Backend::Sqlite;
        jobs::rescue_once(&db, settings.max_attempts, everything, &metrics, &wake)
            .await
            .context("recovering unfinished work")?;
        db.listen(&wake, &liveness);

        let ctx = JobsContext {
            db: db.clone(),
            leases: leases.clone(),
            executor: executor.clone(),
            metrics: metrics.clone(),
            wake: wake.clone(),
            settings,
            amounts: calibration.amounts,
            stop: stop.clone(),
            completions: dashboard.rates.clone(),
        };
        let workers = jobs::start(&ctx, &liveness, &work);
        let deliveries = Deliveries::new(
            &config,
            db.clone(),
            metrics.clone(),
            leases.clone(),
            wake.clone(),
            settings.lease,
        )?;
        deliveries.start(&liveness, stop.clone(), &work);
        let sync_slots = Arc::new(Semaphore::new(config.max_sync_concurrency));
        let figures = jobs::replica_figures(&metrics, config.num_workers, &sync_slots, config.max_sync_concurrency);
        jobs::upkeep_loops(&ctx, figures, &liveness, halt.clone(), &upkeep);
        if let Some(retention) = config.retention {
            let every = (retention / 4).clamp(Duration::from_secs(1), Duration::from_secs(60));
            upkeep.spawn(jobs::purge_loop(
                db.clone(),
                retention,
                config.idempotency_ttl,
                every,
                halt.clone(),
                liveness.register("purge", Some(every)),
                metrics.clone(),
            ));
        }
        let rate_limiter = Arc::new(ClientRateLimiter::new(
            config.rate_limit_requests,
            config.rate_limit_window,
        ));
        upkeep.spawn(housekeeping(rate_limiter.clone(), halt.clone()));
        let auth = Arc::new(Authenticator::new(&config.api_keys));
        let state = AppState::new(Handles {
            sync_slots,
            calibration,
            config,
            db,
            executor,
            leases,
            wake,
            deliveries,
            workers,
            liveness,
            metrics,
            rate_limiter,
            auth,
            stopping: stop.clone(),
        });
        Ok(Self {
            listener,
            state,
            work,
            upkeep,
            stop,
            halt,
            dashboard,
            _instance_lock: instance_lock,
        })
    }

    /// The bound address (with the real port when PORT was 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::new(self.state.config.host, self.state.config.port))
    }

    pub fn port(&self) -> u16 {
        self.local_addr().port()
    }

    /// The shared handles, for tests and tools that inspect a running app.
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` resolves, then drains: no new connections; in-flight requests
    /// finish; workers stop taking jobs and the job in hand gets SHUTDOWN_GRACE_SECONDS before
    /// it is released; deliveries in flight finish; then the upkeep stops and the store closes.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let Self {
            listener,
            state,
            work,
            upkeep,
            stop,
            halt,
            dashboard,
            _instance_lock,
        } = self;
        let addr = listener.local_addr()?;
        tracing::info!(%addr, app = %state.config.app_name, "listening");
        let db = state.db.clone();
        let service = layers::router(state, dashboard).into_make_service_with_connect_info::<SocketAddr>();
        // Workers stop taking jobs the moment the signal arrives, while HTTP drains.
        let stop_on_signal = stop.clone();
        let signal = async move {
            shutdown.await;
            tracing::info!("shutting down: no new connections or jobs; finishing the work in hand");
            stop_on_signal.cancel();
        };
        // Small answers go out at once rather than waiting on Nagle's algorithm.
        let listener = listener.tap_io(|tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "could not set TCP_NODELAY");
            }
        });
        axum::serve(listener, service)
            .with_graceful_shutdown(signal)
            .await
            .context("serving HTTP")?;
        stop.cancel();
        work.close();
        work.wait().await;
        halt.cancel();
        upkeep.close();
        upkeep.wait().await;
        db.close().await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// This replica's owner id: the name, the process id and a random suffix, so that a replica that
/// restarts is a new owner and never mistakes a lease of its earlier life for its own.
fn owner_id(name: &str) -> String {
    format!("{name}:{}:{:04x}", std::process::id(), rand::random::<u16>())
}

fn queue_settings(config: &Config) -> QueueSettings {
    QueueSettings {
        lease: config.lease,
        heartbeat_every: config.lease / 3,
        rescue_every: config.rescue_interval,
        poll_every: config.poll_interval,
        max_attempts: config.job_max_attempts,
        num_workers: config.num_workers,
        claim_ahead: config.claim_ahead(),
        shutdown_grace: config.shutdown_grace,
    }
}

/// Takes an exclusive, non-blocking lock on `<database>.lock` (released by the OS when the
/// process dies, so a `kill -9` never leaves it stuck).
fn lock_instance(database_path: &std::path::Path) -> anyhow::Result<std::fs::File> {
    if let Some(dir) = database_path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating the data directory {}", dir.display()))?;
    }
    let mut lock_path = database_path.as_os_str().to_owned();
    lock_path.push(".lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("opening {}", std::path::Path::new(&lock_path).display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
            "another sync-async server is already using {}; stop it or set another DATABASE_PATH",
            database_path.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => Err(e).context("locking the database for this instance"),
    }
}

/// Periodic upkeep: forget idle rate-limit entries.
async fn housekeeping(rate_limiter: Arc<ClientRateLimiter>, halt: CancellationToken) {
    let mut tick = tokio::time::interval(HOUSEKEEPING_EVERY);
    loop {
        tokio::select! {
            () = halt.cancelled() => break,
            _ = tick.tick() => rate_limiter.forget_idle_clients(),
        }
    }
}
