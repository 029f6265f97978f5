//! `GET /metrics` (JSON) and `GET /metrics/prometheus` (OpenMetrics text): the same figures.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use strum::VariantArray;

use crate::calibrate;
use crate::db::{self, DELIVERY_STATES};
use crate::error::ApiError;
use crate::metrics::CallbackOutcome;
use crate::model::{Mode, Status};
use crate::openapi::RateLimited;
use crate::state::AppState;

/// The media type Prometheus asks for when it scrapes OpenMetrics.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(metrics_json))
        .routes(routes!(metrics_prometheus))
}

/// Live figures of the service. Counts that come from the database (`total_requests`,
/// `by_mode`, `by_status`, `queue.size`, `queue.running`, `deliveries`, `cluster`) are the
/// whole cluster's; the rest are this replica's since it started.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct MetricsReport {
    /// RFC 3339 UTC.
    pub timestamp: String,
    /// This replica.
    pub replica: ReplicaFigures,
    /// Requests stored.
    pub total_requests: i64,
    #[schema(example = json!({"sync": 12, "async": 40}))]
    pub by_mode: BTreeMap<&'static str, i64>,
    #[schema(example = json!({"pending": 3, "processing": 5, "done": 43, "failed": 1}))]
    pub by_status: BTreeMap<&'static str, i64>,
    /// Mean engine time of `done` requests; null before the first.
    pub avg_execution_time_ms: Option<f64>,
    pub queue: QueueFigures,
    pub workers: WorkerFigures,
    pub sync: SyncFigures,
    pub callbacks: CallbackFigures,
    /// Deliveries by state, cluster-wide: `pending` (not attempted yet), `retrying` (waiting
    /// for a retry), `delivering`, `delivered`, `failed`.
    #[schema(example = json!({"pending": 0, "retrying": 2, "delivering": 1, "delivered": 40, "failed": 1}))]
    pub deliveries: BTreeMap<&'static str, i64>,
    /// The replicas that beat within the last lease, and their workers and sync slots.
    pub cluster: ClusterFigures,
    /// Requests refused by the per-client rate limit since start.
    pub rate_limited: u64,
    pub storage: StorageFigures,
    pub process: ProcessFigures,
    pub calibration: CalibrationFigures,
}

/// The engine calibration this replica runs with (ENGINE_CALIBRATION), fixed at its start.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct CalibrationFigures {
    /// ENGINE_CALIBRATION: `auto`, `remeasure` or `fixed`.
    pub mode: &'static str,
    /// Where the factors come from: `fixed` (the reference amounts), `file` (measured at an
    /// earlier start on this machine), `measured` (at this start), or `refused` (a measurement
    /// out of bounds; the reference amounts are used).
    pub source: &'static str,
    /// When the factors were measured, RFC 3339 UTC; null for the reference amounts.
    pub measured_at: Option<String>,
    /// Per operation, how much faster this machine runs it than the reference machine (1: the
    /// reference amounts). The amounts chosen from a complexity are the reference ones times
    /// this; for `prime`, its n grows so that its time does.
    #[schema(example = json!({"hash": 1.21, "prime": 1.18, "matrix": 1.52, "transform": 1.3}))]
    pub factors: BTreeMap<&'static str, f64>,
}

/// This replica.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ReplicaFigures {
    /// Its owner id: the name (REPLICA_NAME), the process id and a random suffix.
    pub id: String,
    /// `sqlite` or `postgres`.
    pub backend: &'static str,
    /// Outcomes and attempts dropped because their lease had passed to a newer attempt.
    pub stale_writes: u64,
    /// Leases the heartbeat found taken by another attempt.
    pub leases_lost: u64,
    /// Finished requests deleted after RETENTION_HOURS by this replica.
    pub purged: u64,
}

/// The database on disk.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct StorageFigures {
    /// The database's size in bytes (the SQLite file, or the PostgreSQL database).
    pub database_bytes: u64,
    /// SQLite's write-ahead log, in bytes: kept under `wal_limit_bytes`, and emptied a few
    /// seconds after writes stop. Null on PostgreSQL.
    pub wal_bytes: Option<u64>,
    /// SQLITE_WAL_LIMIT_MB in bytes; null on PostgreSQL.
    pub wal_limit_bytes: Option<u64>,
    /// The largest the WAL has been after a write since start; null on PostgreSQL.
    pub wal_peak_bytes: Option<u64>,
    /// Turns of SQLite's one writer connection since start: each write (a statement, a
    /// transaction, or a group of new rows committed together) takes one. Null on PostgreSQL.
    pub writer_turns: Option<u64>,
    /// Seconds those turns held the writer. Its increase over an interval, divided by the
    /// interval, is the share of the time the writer was busy: near 1, the writer is what limits
    /// the writes. Null on PostgreSQL.
    pub writer_held_seconds: Option<f64>,
    /// Seconds writes waited for their turn, summed over the writes (several wait at once).
    /// Null on PostgreSQL.
    pub writer_waited_seconds: Option<f64>,
}

/// This server process.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ProcessFigures {
    /// Resident memory (RSS), in bytes; 0 where the platform does not tell.
    pub resident_memory_bytes: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct QueueFigures {
    /// Jobs waiting to be claimed, cluster-wide.
    pub size: u64,
    /// Jobs running now, cluster-wide.
    pub running: i64,
    /// MAX_QUEUE_SIZE: the cluster's backlog limit.
    pub max_size: usize,
    /// Jobs this replica accepted since start.
    pub enqueued: u64,
    /// Jobs this replica's workers finished since start.
    pub processed: u64,
    /// Submissions this replica refused with 429 because the backlog was full.
    pub rejected: u64,
    /// Jobs this replica's rescuer put back in the queue (expired leases, and at start).
    pub recovered: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct WorkerFigures {
    /// NUM_WORKERS.
    pub total: usize,
    /// Worker tasks running (less than `total` means one died).
    pub alive: usize,
    /// Workers running a job now.
    pub busy: i64,
    /// Places open now for jobs claimed ahead of the workers, waiting for one: CLAIM_AHEAD
    /// while jobs run under 5 ms on SQLite, 0 otherwise. `processing` counts those jobs too.
    pub claimed_ahead: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct SyncFigures {
    /// Sync requests holding a slot now.
    pub in_flight: usize,
    /// MAX_SYNC_CONCURRENCY.
    pub max: usize,
    /// Sync requests refused with 503 since start.
    pub rejected: u64,
}

/// Callback outcomes since start, on this replica.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct CallbackFigures {
    /// Deliveries that got a 2xx.
    pub delivered: u64,
    /// Failed attempts followed by a scheduled retry.
    pub retried: u64,
    /// Deliveries given up (retries used, 410, redirect, other 4xx, refused address).
    pub failed: u64,
    /// Attempts in flight now.
    pub in_flight: usize,
}

/// The replicas working on this database.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ClusterFigures {
    /// Workers busy over every live replica: this replica's now, the others' as of their last
    /// heartbeat.
    pub workers_busy: u64,
    pub workers_total: u64,
    pub replicas: Vec<ReplicaRowFigures>,
}

/// One replica as the database last heard of it; this replica's own busy workers and sync
/// requests are its figures of now, so that they agree with `workers` and `sync` above rather
/// than lag them by up to a heartbeat (a third of the lease).
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ReplicaRowFigures {
    pub id: String,
    /// RFC 3339 UTC.
    pub last_seen_at: String,
    pub workers: u32,
    pub workers_busy: u32,
    pub sync_in_flight: u32,
    pub sync_max: u32,
}

/// The figures `/metrics` serves; the dashboard shows the same ones.
pub(crate) async fn report(state: &AppState) -> Result<MetricsReport, ApiError> {
    let summary = state.db.summary().await?;
    let backlog = state.db.backlog().await?;
    let storage = state.db.storage().await?;
    let m = &state.metrics;
    let mut replicas = state.db.replicas(state.config.lease).await?;
    if let Some(own) = replicas.iter_mut().find(|r| r.id == state.leases.owner()) {
        own.workers_busy = u32::try_from(m.workers_busy.get()).unwrap_or(0);
        own.sync_in_flight = u32::try_from(state.sync_in_flight()).unwrap_or(u32::MAX);
    }
    m.set_stored(&summary);
    let resident_memory_bytes = memory_stats::memory_stats().map_or(0, |s| s.physical_mem as u64);
    m.set_storage(&storage, resident_memory_bytes);
    m.queue_depth.set(i64::try_from(backlog).unwrap_or(i64::MAX));
    m.sync_in_flight.set(state.sync_in_flight() as i64);
    let by_mode = Mode::VARIANTS
        .iter()
        .map(|&mode| (mode.as_str(), summary.count(Some(mode), None)))
        .collect();
    let by_status = Status::VARIANTS
        .iter()
        .map(|&status| (status.as_str(), summary.count(None, Some(status))))
        .collect();
    let (wal, writer) = (storage.wal, storage.writer);
    Ok(MetricsReport {
        timestamp: db::timestamp(chrono::Utc::now()),
        replica: ReplicaFigures {
            id: state.leases.owner().to_owned(),
            backend: state.db.backend().as_str(),
            stale_writes: m.stale_writes.get(),
            leases_lost: m.leases_lost.get(),
            purged: m.requests_purged.get(),
        },
        total_requests: summary.count(None, None),
        by_mode,
        by_status,
        avg_execution_time_ms: summary.avg_execution_time_ms,
        queue: QueueFigures {
            size: backlog,
            running: summary.count(Some(Mode::Async), Some(Status::Processing)),
            max_size: state.config.max_queue_size,
            enqueued: m.jobs_enqueued.get(),
            processed: m.jobs_processed.get(),
            rejected: m.queue_rejected.get(),
            recovered: m.jobs_recovered.get(),
        },
        workers: WorkerFigures {
            total: state.workers.size(),
            alive: state.workers.alive(),
            busy: m.workers_busy.get(),
            claimed_ahead: m.claimed_ahead_places.get(),
        },
        sync: SyncFigures {
            in_flight: state.sync_in_flight(),
            max: state.config.max_sync_concurrency,
            rejected: m.sync_rejected.get(),
        },
        callbacks: CallbackFigures {
            delivered: m.callbacks(CallbackOutcome::Delivered),
            retried: m.callbacks(CallbackOutcome::Retried),
            failed: m.callbacks(CallbackOutcome::Failed),
            in_flight: state.deliveries.in_flight(),
        },
        deliveries: DELIVERY_STATES.iter().map(|&s| (s, summary.deliveries(s))).collect(),
        cluster: ClusterFigures {
            workers_busy: replicas.iter().map(|r| u64::from(r.workers_busy)).sum(),
            workers_total: replicas.iter().map(|r| u64::from(r.workers)).sum(),
            replicas: replicas
                .into_iter()
                .map(|r| ReplicaRowFigures {
                    id: r.id,
                    last_seen_at: r.last_seen_at,
                    workers: r.workers,
                    workers_busy: r.workers_busy,
                    sync_in_flight: r.sync_in_flight,
                    sync_max: r.sync_max,
                })
                .collect(),
        },
        rate_limited: m.rate_limited.get(),
        storage: StorageFigures {
            database_bytes: storage.database_bytes,
            wal_bytes: wal.map(|w| w.wal_bytes),
            wal_limit_bytes: wal.map(|w| w.wal_limit_bytes),
            wal_peak_bytes: wal.map(|w| w.wal_peak_bytes),
            writer_turns: writer.map(|w| w.turns),
            writer_held_seconds: writer.map(|w| w.held_seconds),
            writer_waited_seconds: writer.map(|w| w.waited_seconds),
        },
        process: ProcessFigures { resident_memory_bytes },
        calibration: CalibrationFigures {
            mode: state.calibration.mode.as_str(),
            source: state.calibration.source.as_str(),
            measured_at: state.calibration.source.measured_at().map(str::to_owned),
            factors: calibrate::factors_by_name(&state.calibration.amounts.factors())
                .into_iter()
                .collect(),
        },
    })
}

/// Service metrics as JSON
///
/// Request counts by mode and status, mean engine time, queue depth and totals, worker and
/// sync slot usage, callback outcomes: every figure is live (none is hard-coded).
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses((status = 200, description = "Current figures", body = MetricsReport), RateLimited)
)]
pub(super) async fn metrics_json(State(state): State<AppState>) -> Result<Json<MetricsReport>, ApiError> {
    report(&state).await.map(Json)
}

/// Service metrics for Prometheus
///
/// The same figures in OpenMetrics text, plus latency histograms per route
/// (`sync_async_http_request_duration_seconds`) and engine time per mode and operation.
#[utoipa::path(
    get,
    path = "/metrics/prometheus",
    tag = "operations",
    responses(
        (status = 200, description = "OpenMetrics text", body = String, content_type = "application/openmetrics-text"),
        RateLimited,
    )
)]
pub(super) async fn metrics_prometheus(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    report(&state).await?;
    Ok(([(header::CONTENT_TYPE, OPENMETRICS)], state.metrics.encode()))
}
