//! Samples the server's own figures (`GET /metrics`) during a run: queue depth, busy workers
//! and sync slots in use, for the report's server chart.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How often `/metrics` is read.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(250);

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ServerSample {
    /// Seconds since the run started.
    pub t_s: f64,
    pub queue_size: u64,
    pub workers_busy: u64,
    pub sync_in_flight: u64,
    /// The server's database file, WAL file and resident memory, in bytes (absent from
    /// servers that do not report them).
    #[serde(default)]
    pub database_bytes: Option<u64>,
    #[serde(default)]
    pub wal_bytes: Option<u64>,
    #[serde(default)]
    pub rss_bytes: Option<u64>,
}

/// Reads `{base_url}/metrics` until `stop` fires. Samples that fail (the server is not a
/// sync-async server, or is rate limiting) are skipped.
pub async fn sample(
    client: reqwest::Client,
    base_url: String,
    start: Instant,
    stop: CancellationToken,
) -> Vec<ServerSample> {
    let url = format!("{base_url}/metrics");
    let mut samples = Vec::new();
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let Ok(response) = client.get(&url).send().await else {
            continue;
        };
        let Ok(m) = response.json::<Value>().await else {
            continue;
        };
        let get = |pointer: &str| m.pointer(pointer).and_then(Value::as_u64).unwrap_or(0);
        samples.push(ServerSample {
            t_s: start.elapsed().as_secs_f64(),
            queue_size: get("/queue/size"),
            workers_busy: get("/workers/busy"),
            sync_in_flight: get("/sync/in_flight"),
            database_bytes: m.pointer("/storage/database_bytes").and_then(Value::as_u64),
            wal_bytes: m.pointer("/storage/wal_bytes").and_then(Value::as_u64),
            rss_bytes: m.pointer("/process/resident_memory_bytes").and_then(Value::as_u64),
        });
    }
    samples
}
