//! `GET /dashboard/events?every_ms=1000`: a server-sent event stream of `snapshot` events, the
//! first at once and then one per interval, until the client goes away or the server stops.
//! `GET /dashboard/api/snapshot` returns one snapshot as JSON.

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::{Extension, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use serde::Deserialize;

use super::Dashboard;
use super::snapshot::{self, Snapshot};
use crate::error::ApiError;
use crate::extract::ApiQuery;
use crate::state::AppState;

/// The intervals the page offers ("off" closes the stream instead).
pub(crate) const INTERVALS_MS: [u64; 3] = [1_000, 2_000, 5_000];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StreamQuery {
    /// 1000, 2000 or 5000 (default 1000).
    every_ms: Option<u64>,
}

pub(crate) async fn stream(
    State(state): State<AppState>,
    Extension(dashboard): Extension<Dashboard>,
    ApiQuery(query): ApiQuery<StreamQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let every_ms = query.every_ms.unwrap_or(INTERVALS_MS[0]);
    if !INTERVALS_MS.contains(&every_ms) {
        return Err(ApiError::unprocessable(format!(
            "every_ms must be one of 1000, 2000 or 5000, got {every_ms}"
        )));
    }
    let every = Duration::from_millis(every_ms);
    let events = futures_util::stream::unfold((state, dashboard, true), move |(state, dashboard, first)| async move {
        if !first {
            // The stream ends at shutdown: an open stream would otherwise hold the graceful
            // drain forever.
            tokio::select! {
                () = state.stopping.cancelled() => return None,
                () = tokio::time::sleep(every) => {}
            }
        } else if state.stopping.is_cancelled() {
            return None;
        }
        let event = match snapshot::take(&state, &dashboard).await {
            Ok(snapshot) => Event::default().event("snapshot").json_data(&snapshot),
            Err(err) => {
                tracing::warn!(error = %err, "a dashboard snapshot could not be taken");
                Event::default().event("problem").json_data(err.problem())
            }
        }
        .unwrap_or_else(|_| {
            Event::default()
                .event("problem")
                .data("the snapshot could not be encoded")
        });
        Some((Ok(event), (state, dashboard, false)))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

pub(crate) async fn snapshot_json(
    State(state): State<AppState>,
    Extension(dashboard): Extension<Dashboard>,
) -> Result<Json<Snapshot>, ApiError> {
    snapshot::take(&state, &dashboard).await.map(Json)
}
