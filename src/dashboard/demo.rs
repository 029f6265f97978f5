//! `GET /dashboard/demo`: sync and async side by side. Buttons fire server-side bursts (see
//! `burst`); tiles and rolling charts show answers per second for each API, the queue and the
//! workers, and the p50/p95/p99 of the sync response, the async acknowledgement and the async
//! completion. Each chart has a one-line caption saying what the visitor sees.

use askama::Template;
use axum::extract::{Extension, State};
use axum::response::Response;

use super::access::Visitor;
use super::burst::MAX_BURST;
use super::snapshot;
use super::tiles::{Meter, Tile, meters, tiles};
use super::{Chrome, Dashboard, render};
use crate::engine::Operation;
use crate::error::ApiError;
use crate::state::AppState;

/// One line of the latency table: p50, p95 and p99 over the last minute.
pub(crate) struct LatencyRow {
    pub label: &'static str,
    pub cells: Vec<Tile>,
    pub testid: &'static str,
}

/// The paths of the latency table's cells, by series.
const LATENCY_FIELDS: [[(&str, &str, &str); 3]; 3] = [
    [
        ("p50", "rates.last_minute.sync.p50", "lat-sync-p50"),
        ("p95", "rates.last_minute.sync.p95", "lat-sync-p95"),
        ("p99", "rates.last_minute.sync.p99", "lat-sync-p99"),
    ],
    [
        ("p50", "rates.last_minute.ack.p50", "lat-ack-p50"),
        ("p95", "rates.last_minute.ack.p95", "lat-ack-p95"),
        ("p99", "rates.last_minute.ack.p99", "lat-ack-p99"),
    ],
    [
        ("p50", "rates.last_minute.completion.p50", "lat-done-p50"),
        ("p95", "rates.last_minute.completion.p95", "lat-done-p95"),
        ("p99", "rates.last_minute.completion.p99", "lat-done-p99"),
    ],
];

#[derive(Template)]
#[template(path = "dashboard/demo.html")]
pub(crate) struct DemoPage {
    chrome: Chrome,
    capacity: Vec<Meter>,
    sync_rates: Vec<Tile>,
    async_rates: Vec<Tile>,
    deliveries: Vec<Tile>,
    latency: Vec<LatencyRow>,
    sizes: [u32; 3],
    operations: Vec<&'static str>,
    complexities: Vec<u8>,
}

pub(crate) async fn page(
    State(state): State<AppState>,
    Extension(dashboard): Extension<Dashboard>,
    visitor: Visitor,
) -> Result<Response, ApiError> {
    let snap = snapshot::take(&state, &dashboard).await?;
    let json = serde_json::to_value(&snap).map_err(ApiError::internal)?;
    let page = DemoPage {
        chrome: Chrome::new(&dashboard, "demo", &visitor),
        capacity: meters(
            &json,
            &[
                (
                    "Sync slots in flight",
                    "metrics.sync.in_flight",
                    "metrics.sync.max",
                    "demo-sync-in-flight",
                ),
                (
                    "Queue depth",
                    "metrics.queue.size",
                    "metrics.queue.max_size",
                    "demo-queue-depth",
                ),
                (
                    "Workers busy",
                    "metrics.workers.busy",
                    "metrics.workers.total",
                    "demo-workers-busy",
                ),
            ],
        ),
        sync_rates: tiles(
            &json,
            &[
                ("200/s", "rates.last_second.sync.ok", "demo-sync-200"),
                ("503/s", "rates.last_second.sync.busy", "demo-sync-503"),
                ("429/s", "rates.last_second.sync.limited", "demo-sync-429"),
            ],
        ),
        async_rates: tiles(
            &json,
            &[
                ("202/s", "rates.last_second.async.ok", "demo-async-202"),
                ("429/s", "rates.last_second.async.limited", "demo-async-429"),
            ],
        ),
        deliveries: tiles(
            &json,
            &[
                (
                    "Deliveries pending",
                    "metrics.deliveries.pending",
                    "demo-deliveries-pending",
                ),
                (
                    "Deliveries retrying",
                    "metrics.deliveries.retrying",
                    "demo-deliveries-retrying",
                ),
            ],
        ),
        latency: [
            ("Sync response", "lat-sync"),
            ("Async acknowledgement", "lat-ack"),
            ("Async completion", "lat-done"),
        ]
        .into_iter()
        .zip(&LATENCY_FIELDS)
        .map(|((label, testid), fields)| LatencyRow {
            label,
            cells: tiles(&json, fields),
            testid,
        })
        .collect(),
        sizes: [10, 50, MAX_BURST],
        operations: Operation::ALL.iter().map(|o| o.as_str()).collect(),
        complexities: (1..=10).collect(),
    };
    render(&page)
}
