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

use crate::db;
use crate::error::ApiError;
use crate::metrics::CallbackOutcome;
use crate::openapi::RateLimited;
use crate::state::AppState;

/// The media type Prometheus asks for when it scrapes OpenMetrics.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(metrics_json))
        .routes(routes!(metrics_prometheus))
}

/// Live figures of the service.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct MetricsReport {
    /// RFC 3339 UTC.
    pub timestamp: String,
    /// Requests stored, all time.
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
    /// Requests refused by the per-IP rate limit since start.
    pub rate_limited: u64,
    pub storage: StorageFigures,
    pub process: ProcessFigures,
}

/// The database on disk.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct StorageFigures {
    /// The SQLite database file, in bytes.
    pub database_bytes: u64,
    /// The SQLite write-ahead log, in bytes: kept under `wal_limit_bytes`, and emptied a few
    /// seconds after writes stop.
    pub wal_bytes: u64,
    /// SQLITE_WAL_LIMIT_MB in bytes.
    pub wal_limit_bytes: u64,
    /// The largest the WAL has been after a write since start.
    pub wal_peak_bytes: u64,
}

/// This server process.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct ProcessFigures {
    /// Resident memory (RSS), in bytes; 0 where the platform does not tell.
    pub resident_memory_bytes: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub(super) struct QueueFigures {
    /// Jobs waiting for a worker now.
    pub size: usize,
    /// MAX_QUEUE_SIZE.
    pub max_size: usize,
    /// Jobs accepted since start.
    pub enqueued: u64,
    /// Jobs finished by a worker since start.
    pub processed: u64,
    /// Submissions refused with 429 because the queue was full.
    pub rejected: u64,
    /// Jobs re-queued at startup.
    pub recovered: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub(super) struct WorkerFigures {
    /// NUM_WORKERS.
    pub total: usize,
    /// Worker tasks running (less than `total` means one died).
    pub alive: usize,
    /// Workers running a job now.
    pub busy: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub(super) struct SyncFigures {
    /// Sync requests holding a slot now.
    pub in_flight: usize,
    /// MAX_SYNC_CONCURRENCY.
    pub max: usize,
    /// Sync requests refused with 503 since start.
    pub rejected: u64,
}

/// Callback outcomes since start.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct CallbackFigures {
    /// Deliveries that got a 2xx.
    pub delivered: u64,
    /// Failed attempts followed by a scheduled retry.
    pub retried: u64,
    /// Deliveries given up (retries used, 410, redirect, other 4xx, refused address).
    pub failed: u64,
}

async fn report(state: &AppState) -> Result<MetricsReport, ApiError> {
    let summary = db::requests::summary(&state.db).await?;
    let m = &state.metrics;
    m.set_stored(&summary);
    let wal = state.db.wal().figures();
    let resident_memory_bytes = memory_stats::memory_stats().map_or(0, |s| s.physical_mem as u64);
    m.set_storage(&wal, resident_memory_bytes);
    m.queue_depth.set(state.queue.depth() as i64);
    m.sync_in_flight.set(state.sync_in_flight() as i64);
    Ok(MetricsReport {
        timestamp: db::timestamp(chrono::Utc::now()),
        total_requests: summary.total,
        by_mode: summary.by_mode,
        by_status: summary.by_status,
        avg_execution_time_ms: summary.avg_execution_time_ms,
        queue: QueueFigures {
            size: state.queue.depth(),
            max_size: state.queue.capacity(),
            enqueued: m.jobs_enqueued.get(),
            processed: m.jobs_processed.get(),
            rejected: m.queue_rejected.get(),
            recovered: m.jobs_recovered.get(),
        },
        workers: WorkerFigures {
            total: state.workers.size(),
            alive: state.workers.alive(),
            busy: m.workers_busy.get(),
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
        },
        rate_limited: m.rate_limited.get(),
        storage: StorageFigures {
            database_bytes: wal.database_bytes,
            wal_bytes: wal.wal_bytes,
            wal_limit_bytes: wal.wal_limit_bytes,
            wal_peak_bytes: wal.wal_peak_bytes,
        },
        process: ProcessFigures { resident_memory_bytes },
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
