//! `GET /dashboard`: the live overview. Requests and deliveries by state, capacity (sync slots,
//! workers per replica and for the cluster, the backlog), answers per second, and a throughput
//! chart over the last five minutes.

use askama::Template;
use axum::extract::{Extension, State};
use axum::response::Response;

use super::access::Visitor;
use super::snapshot;
use super::tiles::{Meter, Tile, meters, tiles};
use super::{Chrome, Dashboard, render};
use crate::error::ApiError;
use crate::state::AppState;

/// One replica row of the cluster table.
pub(crate) struct ReplicaLine {
    pub id: String,
    pub workers_busy: u32,
    pub workers: u32,
    pub sync_in_flight: u32,
    pub sync_max: u32,
    pub last_seen_at: String,
}

#[derive(Template)]
#[template(path = "dashboard/overview.html")]
pub(crate) struct OverviewPage {
    chrome: Chrome,
    requests: Vec<Tile>,
    deliveries: Vec<Tile>,
    capacity: Vec<Meter>,
    rates: Vec<Tile>,
    totals: Vec<Tile>,
    backend: &'static str,
    replicas: Vec<ReplicaLine>,
}

pub(crate) async fn page(
    State(state): State<AppState>,
    Extension(dashboard): Extension<Dashboard>,
    visitor: Visitor,
) -> Result<Response, ApiError> {
    let snap = snapshot::take(&state, &dashboard).await?;
    let backend = snap.metrics.replica.backend;
    let replicas = snap
        .metrics
        .cluster
        .replicas
        .iter()
        .map(|r| ReplicaLine {
            id: r.id.clone(),
            workers_busy: r.workers_busy,
            workers: r.workers,
            sync_in_flight: r.sync_in_flight,
            sync_max: r.sync_max,
            last_seen_at: r.last_seen_at.clone(),
        })
        .collect();
    let json = serde_json::to_value(&snap).map_err(ApiError::internal)?;
    let page = OverviewPage {
        chrome: Chrome::new(&dashboard, "overview", &visitor),
        requests: tiles(
            &json,
            &[
                ("Pending", "metrics.by_status.pending", "requests-pending"),
                ("Processing", "metrics.by_status.processing", "requests-processing"),
                ("Done", "metrics.by_status.done", "requests-done"),
                ("Failed", "metrics.by_status.failed", "requests-failed"),
            ],
        ),
        deliveries: tiles(
            &json,
            &[
                ("Pending", "metrics.deliveries.pending", "deliveries-pending"),
                ("Retrying", "metrics.deliveries.retrying", "deliveries-retrying"),
                ("Delivering", "metrics.deliveries.delivering", "deliveries-delivering"),
                ("Delivered", "metrics.deliveries.delivered", "deliveries-delivered"),
                ("Failed", "metrics.deliveries.failed", "deliveries-failed"),
            ],
        ),
        capacity: meters(
            &json,
            &[
                (
                    "Sync slots in flight",
                    "metrics.sync.in_flight",
                    "metrics.sync.max",
                    "capacity-sync",
                ),
                (
                    "Workers busy (this replica)",
                    "metrics.workers.busy",
                    "metrics.workers.total",
                    "capacity-workers",
                ),
                (
                    "Workers busy (cluster)",
                    "metrics.cluster.workers_busy",
                    "metrics.cluster.workers_total",
                    "capacity-cluster-workers",
                ),
                (
                    "Backlog",
                    "metrics.queue.size",
                    "metrics.queue.max_size",
                    "capacity-backlog",
                ),
            ],
        ),
        rates: tiles(
            &json,
            &[
                ("200 per second", "rates.last_second.status_200", "rate-200"),
                ("202 per second", "rates.last_second.status_202", "rate-202"),
                ("503 per second", "rates.last_second.status_503", "rate-503"),
                ("429 per second", "rates.last_second.status_429", "rate-429"),
            ],
        ),
        totals: tiles(
            &json,
            &[
                ("503 since start", "metrics.sync.rejected", "total-503"),
                (
                    "429 queue full since start",
                    "metrics.queue.rejected",
                    "total-429-queue",
                ),
                ("429 rate limited since start", "metrics.rate_limited", "total-429-rate"),
            ],
        ),
        backend,
        replicas,
    };
    render(&page)
}
