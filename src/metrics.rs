//! In-process counters, gauges and latency histograms, kept in a prometheus-client registry.
//! `/metrics` reads them as JSON; `/metrics/prometheus` encodes the registry as OpenMetrics text.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use std::sync::atomic::AtomicU64;

use crate::db::{StorageFigures, Summary};
use crate::engine::{Factors, Operation};

/// HTTP latency buckets: 0.5 ms to about 33 s, doubling.
fn http_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 17))
}

/// Engine time buckets: 10 ms to about 41 s, doubling.
fn engine_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.01, 2.0, 13))
}

/// Cancellation latency buckets: 0.1 ms to about 0.4 s.
fn cancel_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 13))
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RouteLabels {
    pub method: String,
    /// The matched route template (`/requests/{id}`), never the raw path, to bound cardinality.
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct WorkLabels {
    pub mode: &'static str,
    pub operation: &'static str,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub(crate) enum RunOutcome {
    Done,
    Timeout,
    Cancelled,
    Panicked,
}

impl RunOutcome {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Done => "done",
            Self::Timeout => "timeout",
            Self::Cancelled => "cancelled",
            Self::Panicked => "panicked",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct OutcomeLabels {
    pub mode: &'static str,
    pub outcome: &'static str,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub(crate) enum CallbackOutcome {
    /// A 2xx arrived.
    Delivered,
    /// An attempt failed and another is scheduled.
    Retried,
    /// The delivery gave up (retries used, 410, redirect, or a refused address).
    Failed,
}

impl CallbackOutcome {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::Retried => "retried",
            Self::Failed => "failed",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct CallbackLabels {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct OperationLabels {
    pub operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct CalibrationLabels {
    /// ENGINE_CALIBRATION.
    pub mode: &'static str,
    /// `fixed`, `file`, `measured` or `refused`.
    pub source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct StoredLabels {
    pub mode: &'static str,
    pub status: &'static str,
}

/// Every live figure of the service. Cheap to share behind an `Arc`; all updates are atomic.
pub(crate) struct Metrics {
    registry: Registry,
    /// Requests answered, by route and status.
    pub http_requests: Family<RouteLabels, Counter>,
    /// Time to answer, by route and status: `/async` here is the acknowledgement latency.
    pub http_latency: HistogramFamily<RouteLabels>,
    /// Engine wall time, by mode and operation.
    pub engine_seconds: HistogramFamily<WorkLabels>,
    /// How engine runs ended.
    pub engine_runs: Family<OutcomeLabels, Counter>,
    /// Engine runs occupying a CPU right now (includes cancelled runs until they stop).
    pub engine_running: Gauge,
    /// From setting the cancel flag to the engine returning.
    pub engine_cancel_latency: Histogram,
    /// Sync requests holding a slot.
    pub sync_in_flight: Gauge,
    /// Sync requests refused with 503 because every slot was taken.
    pub sync_rejected: Counter,
    /// Async jobs accepted (202) and put on the queue.
    pub jobs_enqueued: Counter,
    /// Async jobs a worker finished (done or failed).
    pub jobs_processed: Counter,
    /// Async submissions refused with 429 because the queue was full.
    pub queue_rejected: Counter,
    /// Jobs the rescuer put back in the queue (expired leases, and at start).
    pub jobs_recovered: Counter,
    /// Jobs this replica claimed.
    pub jobs_claimed: Counter,
    /// Outcomes and attempts dropped because their lease had passed to a newer attempt.
    pub stale_writes: Counter,
    /// Leases the heartbeat found taken by another attempt.
    pub leases_lost: Counter,
    /// Finished requests deleted after RETENTION_HOURS.
    pub requests_purged: Counter,
    /// Workers running a job right now.
    pub workers_busy: Gauge,
    /// Places open for jobs claimed ahead of the workers (tiny jobs on SQLite).
    pub claimed_ahead_places: Gauge,
    /// Waiting jobs (set when read).
    pub queue_depth: Gauge,
    /// Callback attempts and deliveries, by outcome.
    pub callbacks: Family<CallbackLabels, Counter>,
    /// Requests refused by the per-IP rate limit.
    pub rate_limited: Counter,
    /// Stored requests by mode and status (set from the database when read).
    pub stored_requests: Family<StoredLabels, Gauge>,
    /// The database file's size in bytes (set when read).
    pub database_bytes: Gauge,
    /// The WAL file's size in bytes (set when read).
    pub wal_bytes: Gauge,
    /// The bound the WAL is kept under.
    pub wal_limit_bytes: Gauge,
    /// Completed WAL checkpoints by kind (set when read, from the store's counts).
    pub wal_checkpoints: Family<CheckpointLabels, Gauge>,
    /// SQLite's writer: turns since start, and the seconds they held it and writes waited for
    /// it (set when read, from the store's counts).
    pub sqlite_writer_turns: Gauge,
    pub sqlite_writer_held_seconds: Gauge<f64, AtomicU64>,
    pub sqlite_writer_waited_seconds: Gauge<f64, AtomicU64>,
    /// This process's resident memory in bytes (set when read).
    pub resident_memory_bytes: Gauge,
    /// The calibration factor of each operation (1 is the reference machine), set at start.
    pub calibration_factor: Family<OperationLabels, Gauge<f64, AtomicU64>>,
    /// 1, labelled with the calibration's mode and source: an info metric, set at start.
    pub calibration_info: Family<CalibrationLabels, Gauge>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct CheckpointLabels {
    /// `passive`, `restart`, `truncate`, or `restart_busy` (a RESTART that found readers).
    pub kind: &'static str,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let mut registry = Registry::with_prefix("sync_async");
        let m = Self {
            http_requests: Family::default(),
            http_latency: Family::new_with_constructor(http_buckets),
            engine_seconds: Family::new_with_constructor(engine_buckets),
            engine_runs: Family::default(),
            engine_running: Gauge::default(),
            engine_cancel_latency: cancel_buckets(),
            sync_in_flight: Gauge::default(),
            sync_rejected: Counter::default(),
            jobs_enqueued: Counter::default(),
            jobs_processed: Counter::default(),
            queue_rejected: Counter::default(),
            jobs_recovered: Counter::default(),
            jobs_claimed: Counter::default(),
            stale_writes: Counter::default(),
            leases_lost: Counter::default(),
            requests_purged: Counter::default(),
            workers_busy: Gauge::default(),
            claimed_ahead_places: Gauge::default(),
            queue_depth: Gauge::default(),
            callbacks: Family::default(),
            rate_limited: Counter::default(),
            stored_requests: Family::default(),
            database_bytes: Gauge::default(),
            wal_bytes: Gauge::default(),
            wal_limit_bytes: Gauge::default(),
            wal_checkpoints: Family::default(),
            sqlite_writer_turns: Gauge::default(),
            sqlite_writer_held_seconds: Gauge::default(),
            sqlite_writer_waited_seconds: Gauge::default(),
            resident_memory_bytes: Gauge::default(),
            calibration_factor: Family::default(),
            calibration_info: Family::default(),
            registry: Registry::default(),
        };
        registry.register("http_requests", "HTTP requests answered", m.http_requests.clone());
        registry.register(
            "http_request_duration_seconds",
            "Time to answer an HTTP request",
            m.http_latency.clone(),
        );
        registry.register(
            "engine_duration_seconds",
            "Engine time per run",
            m.engine_seconds.clone(),
        );
        registry.register("engine_runs", "Engine runs by outcome", m.engine_runs.clone());
        registry.register("engine_running", "Engine runs on a CPU now", m.engine_running.clone());
        registry.register(
            "engine_cancel_latency_seconds",
            "Time from cancelling a run to its CPU being free",
            m.engine_cancel_latency.clone(),
        );
        registry.register(
            "sync_in_flight",
            "Sync requests holding a slot",
            m.sync_in_flight.clone(),
        );
        registry.register(
            "sync_rejected",
            "Sync requests refused with 503",
            m.sync_rejected.clone(),
        );
        registry.register("jobs_enqueued", "Async jobs accepted", m.jobs_enqueued.clone());
        registry.register(
            "jobs_processed",
            "Async jobs finished by a worker",
            m.jobs_processed.clone(),
        );
        registry.register(
            "queue_rejected",
            "Async submissions refused with 429",
            m.queue_rejected.clone(),
        );
        registry.register(
            "jobs_recovered",
            "Jobs the rescuer put back in the queue",
            m.jobs_recovered.clone(),
        );
        registry.register("jobs_claimed", "Jobs this replica claimed", m.jobs_claimed.clone());
        registry.register(
            "stale_writes",
            "Outcomes and attempts dropped because their lease had passed to a newer attempt",
            m.stale_writes.clone(),
        );
        registry.register(
            "leases_lost",
            "Leases the heartbeat found taken by another attempt",
            m.leases_lost.clone(),
        );
        registry.register(
            "requests_purged",
            "Finished requests deleted after the retention period",
            m.requests_purged.clone(),
        );
        registry.register("workers_busy", "Workers running a job", m.workers_busy.clone());
        registry.register(
            "claimed_ahead_places",
            "Places open for jobs claimed ahead of the workers (CLAIM_AHEAD, while jobs are tiny)",
            m.claimed_ahead_places.clone(),
        );
        registry.register("queue_depth", "Async jobs waiting", m.queue_depth.clone());
        registry.register("callbacks", "Callback outcomes", m.callbacks.clone());
        registry.register(
            "rate_limited",
            "Requests refused by the rate limit",
            m.rate_limited.clone(),
        );
        registry.register(
            "stored_requests",
            "Stored requests by mode and status",
            m.stored_requests.clone(),
        );
        registry.register("database_bytes", "Size of the database file", m.database_bytes.clone());
        registry.register("wal_bytes", "Size of the SQLite WAL file", m.wal_bytes.clone());
        registry.register(
            "wal_limit_bytes",
            "The bound the SQLite WAL is kept under",
            m.wal_limit_bytes.clone(),
        );
        registry.register(
            "wal_checkpoints",
            "SQLite WAL checkpoints by kind",
            m.wal_checkpoints.clone(),
        );
        registry.register(
            "sqlite_writer_turns",
            "Turns of the SQLite writer connection since start",
            m.sqlite_writer_turns.clone(),
        );
        registry.register(
            "sqlite_writer_held_seconds",
            "Seconds the SQLite writer's turns held it since start",
            m.sqlite_writer_held_seconds.clone(),
        );
        registry.register(
            "sqlite_writer_waited_seconds",
            "Seconds writes waited for the SQLite writer since start, summed over the writes",
            m.sqlite_writer_waited_seconds.clone(),
        );
        registry.register(
            "process_resident_memory_bytes",
            "Resident memory of this process",
            m.resident_memory_bytes.clone(),
        );
        registry.register(
            "engine_calibration_factor",
            "How much faster than the reference machine each operation runs here; its amounts scale by it",
            m.calibration_factor.clone(),
        );
        registry.register(
            "engine_calibration",
            "The engine calibration in use: its mode and where its factors came from",
            m.calibration_info.clone(),
        );
        Self { registry, ..m }
    }

    /// Records the calibration in use; called once, at start.
    pub(crate) fn set_calibration(&self, mode: &'static str, source: &'static str, factors: &Factors) {
        self.calibration_info
            .get_or_create(&CalibrationLabels { mode, source })
            .set(1);
        for operation in Operation::ALL {
            self.calibration_factor
                .get_or_create(&OperationLabels {
                    operation: operation.as_str(),
                })
                .set(factors.get(operation));
        }
    }

    pub(crate) fn record_run(&self, mode: &'static str, operation: Operation, outcome: RunOutcome, seconds: f64) {
        self.engine_runs
            .get_or_create(&OutcomeLabels {
                mode,
                outcome: outcome.as_str(),
            })
            .inc();
        if outcome == RunOutcome::Done {
            self.engine_seconds
                .get_or_create(&WorkLabels {
                    mode,
                    operation: operation.as_str(),
                })
                .observe(seconds);
        }
    }

    pub(crate) fn record_callback(&self, outcome: CallbackOutcome) {
        self.callbacks
            .get_or_create(&CallbackLabels {
                outcome: outcome.as_str(),
            })
            .inc();
    }

    pub(crate) fn callbacks(&self, outcome: CallbackOutcome) -> u64 {
        self.callbacks
            .get_or_create(&CallbackLabels {
                outcome: outcome.as_str(),
            })
            .get()
    }

    /// Copies database aggregates into gauges so the text output carries them too.
    pub(crate) fn set_stored(&self, summary: &Summary) {
        for &(mode, status, count) in &summary.requests {
            let labels = StoredLabels {
                mode: mode.as_str(),
                status: status.as_str(),
            };
            self.stored_requests.get_or_create(&labels).set(count);
        }
    }

    /// Copies the storage sizes and this process's memory into gauges.
    pub(crate) fn set_storage(&self, storage: &StorageFigures, resident_memory_bytes: u64) {
        let gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.database_bytes.set(gauge(storage.database_bytes));
        self.resident_memory_bytes.set(gauge(resident_memory_bytes));
        if let Some(writer) = &storage.writer {
            self.sqlite_writer_turns.set(gauge(writer.turns));
            self.sqlite_writer_held_seconds.set(writer.held_seconds);
            self.sqlite_writer_waited_seconds.set(writer.waited_seconds);
        }
        let Some(wal) = &storage.wal else { return };
        self.wal_bytes.set(gauge(wal.wal_bytes));
        self.wal_limit_bytes.set(gauge(wal.wal_limit_bytes));
        for (kind, count) in [
            ("passive", wal.passive_checkpoints),
            ("restart", wal.restart_checkpoints),
            ("truncate", wal.truncate_checkpoints),
            ("restart_busy", wal.restart_busy),
        ] {
            self.wal_checkpoints
                .get_or_create(&CheckpointLabels { kind })
                .set(gauge(count));
        }
    }

    /// The registry in OpenMetrics text form.
    pub(crate) fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
