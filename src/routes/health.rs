//! `GET /healthz`: can this instance do its job? 503 when the database does not answer or a
//! worker has died. Exempt from the rate limit.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::db;
use crate::error::PROBLEM_JSON;
use crate::state::AppState;

/// How long the database has to answer the health check.
const PING_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(health))
}

/// The health of this instance.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"status": "ok", "timestamp": "2026-11-27T10:11:54.123Z", "database": "ok",
    "workers": {"alive": 5, "total": 5}, "queue_size": 0}))]
pub(super) struct Health {
    /// `ok`, or `unhealthy` (then the answer is a 503).
    pub status: &'static str,
    pub timestamp: String,
    /// `ok`, or `unavailable` when a query fails.
    pub database: &'static str,
    pub workers: WorkerHealth,
    /// Jobs waiting for a worker.
    pub queue_size: usize,
}

#[derive(Debug, Serialize, ToSchema)]
pub(super) struct WorkerHealth {
    pub alive: usize,
    pub total: usize,
}

/// The 503 form: an RFC 9457 problem that carries the same health fields as extension members.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Unhealthy {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub title: &'static str,
    pub status: u16,
    pub detail: String,
    pub timestamp: String,
    pub database: &'static str,
    pub workers: WorkerHealth,
    pub queue_size: usize,
}

/// What an unhealthy answer says went wrong.
fn problem_detail(database_ok: bool, workers: &WorkerHealth) -> String {
    let dead_worker = workers.alive < workers.total;
    match (database_ok, dead_worker) {
        (false, true) => "the database does not answer and a worker has stopped".to_owned(),
        (false, false) => "the database does not answer".to_owned(),
        _ => format!("{} of {} workers are running", workers.alive, workers.total),
    }
}

/// Health check
///
/// 200 when the database answers and every worker is running; otherwise a 503 problem that
/// says which part failed. Not rate limited.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    responses(
        (status = 200, description = "Healthy", body = Health),
        (status = 503, description = "The database does not answer or a worker has died", body = Unhealthy,
            content_type = "application/problem+json"),
    )
)]
pub(super) async fn health(State(state): State<AppState>) -> Response {
    // A locked or exhausted pool must not hang the health check: no answer in time is unhealthy.
    let database_ok = matches!(
        tokio::time::timeout(PING_TIMEOUT, db::ping(&state.db)).await,
        Ok(Ok(()))
    );
    let workers = WorkerHealth {
        alive: state.workers.alive(),
        total: state.workers.size(),
    };
    let workers_ok = workers.alive == workers.total;
    let timestamp = db::timestamp(chrono::Utc::now());
    let database = if database_ok { "ok" } else { "unavailable" };
    let queue_size = state.queue.depth();
    if database_ok && workers_ok {
        return Json(Health {
            status: "ok",
            timestamp,
            database,
            workers,
            queue_size,
        })
        .into_response();
    }
    let body = Unhealthy {
        kind: "urn:sync-async:problem:unhealthy",
        title: "Service Unavailable",
        status: 503,
        detail: problem_detail(database_ok, &workers),
        timestamp,
        database,
        workers,
        queue_size,
    };
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::CONTENT_TYPE, PROBLEM_JSON)],
        Json(body),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unhealthy_answer_names_what_failed() {
        let all = WorkerHealth { alive: 5, total: 5 };
        let one_dead = WorkerHealth { alive: 4, total: 5 };
        assert_eq!(problem_detail(false, &all), "the database does not answer");
        assert_eq!(problem_detail(true, &one_dead), "4 of 5 workers are running");
        assert_eq!(
            problem_detail(false, &one_dead),
            "the database does not answer and a worker has stopped"
        );
    }
}
