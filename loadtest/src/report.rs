//! The results of a load test as data: what `--json` writes (versioned by `SCHEMA_VERSION`) and
//! what the text and HTML reports are rendered from.

use serde::{Deserialize, Serialize};

use super::background::BackgroundLoad;
use super::callbacks::CallbackCounts;
use super::sampler::ServerSample;
use super::stats::{Outcomes, Summary, TimelinePoint};

/// Bumped whenever a field changes meaning or disappears; additions keep it (readers ignore
/// fields they do not know, and `tests/api/snapshots` pins the fields of this version).
pub const SCHEMA_VERSION: u32 = 1;

/// A whole invocation: one run, or two for `--mode compare`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoadtestReport {
    pub schema_version: u32,
    /// `sync-async loadtest <version>`.
    pub tool: String,
    /// RFC 3339 UTC.
    pub started_at: String,
    /// The server's base URL.
    pub target: String,
    /// True when the tool started the server itself (in-process, temp database).
    pub spawned_server: bool,
    pub runs: Vec<RunReport>,
}

/// One mode run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunReport {
    /// `sync` or `async`.
    pub mode: String,
    pub operation: String,
    pub complexity: u8,
    pub concurrency: usize,
    /// `closed` (a sliding window of `concurrency` requests) or `open` (a constant rate).
    pub loop_kind: String,
    /// Requests measured (warm-up excluded).
    pub requests: u64,
    pub warmup_s: f64,
    /// From the end of the warm-up to the last answer.
    pub duration_s: f64,
    /// 2xx answers per second.
    pub throughput_rps: f64,
    /// Answers of any kind per second.
    pub achieved_rps: f64,
    /// The requested rate (open loop only).
    pub offered_rps: Option<f64>,
    /// Response time (sync) or acknowledgement time (async) of 2xx answers; in open loop,
    /// measured from when each request was due.
    pub latency: Summary,
    /// Open loop only: the same, measured from when each request was actually sent.
    pub latency_uncorrected: Option<Summary>,
    /// Sync only: the server-reported engine time.
    pub server_execution: Option<Summary>,
    /// Async with callbacks only: from the send to the callback's arrival.
    pub completion: Option<Summary>,
    /// Async with callbacks only: callbacks per second.
    pub completion_throughput_rps: Option<f64>,
    pub outcomes: Outcomes,
    pub callbacks: Option<CallbackCounts>,
    /// Per-second answers and latencies.
    pub timeline: Vec<TimelinePoint>,
    /// Per-second callbacks and completion latencies.
    pub completion_timeline: Vec<TimelinePoint>,
    /// `(percentile, ms)` points of the latency distribution.
    pub latency_curve: Vec<(f64, f64)>,
    pub uncorrected_curve: Vec<(f64, f64)>,
    pub completion_curve: Vec<(f64, f64)>,
    /// The server's queue, workers and sync slots during the run.
    pub server_samples: Vec<ServerSample>,
    /// `--background-sync`: the sync load kept running beside this run.
    #[serde(default)]
    pub background_sync: Option<BackgroundLoad>,
    /// Answers that were not 2xx (and transport errors), per second: what the latency timeline
    /// leaves out.
    #[serde(default)]
    pub refused_per_second: Vec<u64>,
}

impl RunReport {
    /// How many non-2xx answers and transport errors, as a share of all requests.
    pub fn error_rate(&self) -> f64 {
        self.outcomes.error_rate()
    }
}
