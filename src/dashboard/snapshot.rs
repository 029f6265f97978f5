//! One snapshot of everything the live pages show: the `/metrics` figures as the JSON API
//! computes them, the per-second rates and latency series, and the current burst. The SSE
//! stream sends it, the JSON endpoint returns it, and the pages render their first figures
//! from it.

use serde::Serialize;

use super::Dashboard;
use super::burst::BurstReport;
use super::rates::{Series, WINDOW_SECONDS};
use crate::error::ApiError;
use crate::routes::metrics::{MetricsReport, report};
use crate::state::AppState;

#[derive(Debug, Serialize)]
pub(crate) struct Snapshot {
    /// Milliseconds since the Unix epoch, for the charts' time axis.
    pub at_unix_ms: i64,
    pub metrics: MetricsReport,
    /// The last `WINDOW_SECONDS` complete seconds.
    pub rates: Series,
    /// The burst that runs, or the last one.
    pub burst: Option<BurstReport>,
}

pub(crate) async fn take(state: &AppState, dashboard: &Dashboard) -> Result<Snapshot, ApiError> {
    let metrics = report(state).await?;
    let busy = u64::try_from(metrics.workers.busy).unwrap_or(0);
    dashboard.rates.sample_gauges(metrics.queue.size, busy);
    Ok(Snapshot {
        at_unix_ms: chrono::Utc::now().timestamp_millis(),
        metrics,
        rates: dashboard.rates.series(WINDOW_SECONDS),
        burst: dashboard.bursts.last(),
    })
}
