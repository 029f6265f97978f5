//! `App::build(Config)` wires everything (database, engine pool, queue, workers, recovery,
//! rate limiter) and binds the listener; `App::run(shutdown)` serves until `shutdown` resolves,
//! then drains: no new connections, in-flight requests finish, workers finish their current
//! job, and queued jobs stay on disk for the next start.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRef, MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue, Method, header};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnRequest, DefaultOnResponse, TraceLayer};
use tracing::Level;

use crate::callback::Deliveries;
use crate::client_ip::ClientIpSource;
use crate::config::{Config, CorsOrigins};
use crate::db;
use crate::execution::{EnginePool, Executor};
use crate::jobs::{self, JobQueue, WorkerContext, WorkerPool};
use crate::metrics::{Metrics, RouteLabels};
use crate::rate_limit::{self, ClientRateLimiter, RateLimit};
use crate::routes;
use crate::state::AppState;

/// How often idle rate-limit entries and expired idempotency keys are forgotten.
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(60);

/// A built, bound, not yet serving application.
pub struct App {
    listener: TcpListener,
    state: AppState,
    /// Every background task (workers, recovery, housekeeping), awaited on shutdown.
    tasks: TaskTracker,
    /// Tells background tasks to stop taking new work.
    stop: CancellationToken,
    /// An exclusive lock on `<DATABASE_PATH>.lock`, held until the app stops: recovery assumes
    /// that no other live process works on the same database.
    _instance_lock: std::fs::File,
}

impl App {
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let config = Arc::new(config);
        // Bind and lock before touching any job: a second instance started by mistake must fail
        // here, not after it has reset the first one's jobs.
        let addr = SocketAddr::new(config.host, config.port);
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        let instance_lock = lock_instance(&config.database_path)?;
        let db = db::connect_with_wal_limit(&config.database_path, config.sqlite_wal_limit_bytes()).await?;
        let metrics = Arc::new(Metrics::new());
        let engine_threads = config.max_sync_concurrency + config.num_workers;
        let pool = EnginePool::new(engine_threads, config.engine_priority, metrics.clone())
            .context("starting the engine pool")?;
        let executor = Executor {
            pool: Arc::new(pool),
            db: db.clone(),
            metrics: metrics.clone(),
            deadline: config.work_timeout,
        };
        let (queue, receiver) = JobQueue::new(config.max_queue_size);
        let tasks = TaskTracker::new();
        let stop = CancellationToken::new();

        let deliveries = Deliveries::new(&config, db.clone(), metrics.clone(), tasks.clone(), stop.clone())?;
        jobs::recover_unfinished(&db, &queue, &metrics, &tasks)
            .await
            .context("recovering unfinished jobs")?;
        deliveries
            .resume_unfinished()
            .await
            .context("resuming unfinished callback deliveries")?;
        let worker_ctx = WorkerContext {
            executor: executor.clone(),
            db: db.clone(),
            metrics: metrics.clone(),
            deliveries: deliveries.clone(),
            stop: stop.clone(),
            shutdown_grace: config.shutdown_grace,
        };
        let workers = WorkerPool::spawn(config.num_workers, receiver, worker_ctx, &tasks);
        let rate_limiter = Arc::new(ClientRateLimiter::new(
            config.rate_limit_requests,
            config.rate_limit_window,
        ));
        tasks.spawn(housekeeping(
            rate_limiter.clone(),
            db.clone(),
            config.idempotency_ttl,
            stop.clone(),
        ));
        let state = AppState {
            sync_slots: Arc::new(Semaphore::new(config.max_sync_concurrency)),
            config,
            db,
            executor,
            queue,
            deliveries,
            workers,
            metrics,
            rate_limiter,
        };
        Ok(Self {
            listener,
            state,
            tasks,
            stop,
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

    /// Serves until `shutdown` resolves, then drains as described at the top of this module.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let Self {
            listener,
            state,
            tasks,
            stop,
            _instance_lock,
        } = self;
        let addr = listener.local_addr()?;
        tracing::info!(%addr, app = %state.config.app_name, "listening");
        let db = state.db.clone();
        let service = router(state).into_make_service_with_connect_info::<SocketAddr>();
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
        tasks.close();
        tasks.wait().await;
        db.close().await;
        tracing::info!("stopped");
        Ok(())
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

/// The routes with every cross-cutting layer: request id, tracing, CORS, HTTP metrics, rate
/// limit and body limit.
pub fn router(state: AppState) -> Router {
    let x_request_id = HeaderName::from_static("x-request-id");
    routes::router()
        .layer(DefaultBodyLimit::max(state.config.max_payload_bytes()))
        .layer(middleware::from_fn_with_state(
            RateLimit {
                limiter: state.rate_limiter.clone(),
                client_ip: ClientIpSource::from_ref(&state),
                refused: state.metrics.rate_limited.clone(),
            },
            rate_limit::enforce,
        ))
        .layer(middleware::from_fn_with_state(state.metrics.clone(), track_http))
        .layer(cors(&state.config))
        .layer(PropagateRequestIdLayer::new(x_request_id.clone()))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|req: &Request| {
                    let x_request_id = req
                        .headers()
                        .get("x-request-id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("");
                    tracing::info_span!(
                        "http",
                        method = %req.method(),
                        path = %req.uri().path(),
                        x_request_id,
                        request_id = tracing::field::Empty,
                    )
                })
                .on_request(DefaultOnRequest::new().level(Level::DEBUG))
                .on_response(DefaultOnResponse::new().level(Level::DEBUG))
                // Failures are logged once where they happen (ApiError), not again here.
                .on_failure(()),
        )
        .layer(SetRequestIdLayer::new(x_request_id, MakeRequestUuid))
        .with_state(state)
}

fn cors(config: &Config) -> CorsLayer {
    let origins = match &config.cors_origins {
        CorsOrigins::Any => AllowOrigin::any(),
        CorsOrigins::List(list) => AllowOrigin::list(list.iter().filter_map(|o| HeaderValue::from_str(o).ok())),
    };
    CorsLayer::new()
        .allow_origin(origins)
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([header::CONTENT_TYPE, HeaderName::from_static("idempotency-key")])
        .expose_headers([
            header::LOCATION,
            header::RETRY_AFTER,
            HeaderName::from_static("x-request-id"),
            HeaderName::from_static("x-ratelimit-limit"),
            HeaderName::from_static("x-ratelimit-remaining"),
        ])
        .allow_credentials(config.cors_allow_credentials)
}

/// Counts every answer and its latency by route template.
async fn track_http(
    State(metrics): State<Arc<Metrics>>,
    matched: Option<MatchedPath>,
    req: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    // Only known methods become label values: anything else would let clients grow the
    // metric families without bound.
    let method = match *req.method() {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        _ => "OTHER",
    }
    .to_owned();
    let route = matched.map_or_else(|| "unmatched".to_owned(), |m| m.as_str().to_owned());
    let response = next.run(req).await;
    let labels = RouteLabels {
        method,
        route,
        status: response.status().as_u16(),
    };
    metrics.http_requests.get_or_create(&labels).inc();
    metrics
        .http_latency
        .get_or_create(&labels)
        .observe(started.elapsed().as_secs_f64());
    response
}

/// Periodic upkeep: forget idle rate-limit entries and expired idempotency keys.
async fn housekeeping(
    rate_limiter: Arc<ClientRateLimiter>,
    db: crate::db::Db,
    idempotency_ttl: Duration,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(HOUSEKEEPING_EVERY);
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = tick.tick() => {
                rate_limiter.forget_idle_clients();
                let ttl = chrono::Duration::from_std(idempotency_ttl).unwrap_or(chrono::Duration::days(1));
                let cutoff = db::timestamp(chrono::Utc::now() - ttl);
                if let Err(e) = db::idempotency::purge_expired(&db, &cutoff).await {
                    tracing::warn!(error = %e, "could not purge expired idempotency keys");
                }
            }
        }
    }
}
