//! `GET /healthz`: can this replica do its job? It writes to the database (a real round trip),
//! looks at its background loops (group commit, heartbeat, rescuer, claimers, completer, and on
//! PostgreSQL the listener) and its workers, and answers 503 naming what failed. Exempt from the
//! rate limit.

use std::collections::BTreeMap;

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
use crate::liveness::LoopHealth;
use crate::state::AppState;

/// How long the database has to answer the health check.
const PING_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(health))
}

/// The health of this replica.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"status": "ok", "timestamp": "2026-11-27T10:11:54.123Z", "replica": "host:4242:1a2b",
    "backend": "sqlite", "database": "ok", "loops": {"claimer": "ok", "commit": "ok", "heartbeat": "ok", "rescuer": "ok"},
    "workers": {"alive": 5, "total": 5}, "queue_size": 0}))]
pub(crate) struct Health {
    /// `ok`.
    pub(crate) status: &'static str,
    #[serde(flatten)]
    pub(crate) parts: HealthParts,
}

/// What the health check looked at.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct HealthParts {
    pub(crate) timestamp: String,
    /// This replica's owner id.
    pub(crate) replica: String,
    /// `sqlite` or `postgres`.
    pub(crate) backend: &'static str,
    /// `ok` when a write went to the database and back in time, `unavailable` otherwise.
    pub(crate) database: &'static str,
    /// Each background loop: `ok`, `stuck` (it stopped ticking) or `stopped` (its task ended).
    #[schema(example = json!({"heartbeat": "ok"}))]
    pub(crate) loops: BTreeMap<&'static str, &'static str>,
    pub(crate) workers: WorkerHealth,
    /// Jobs waiting to be claimed, cluster-wide; null when the database does not answer.
    pub(crate) queue_size: Option<u64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct WorkerHealth {
    pub(crate) alive: usize,
    pub(crate) total: usize,
}

/// The 503 form: an RFC 9457 problem that carries the same health fields as extension members.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Unhealthy {
    #[serde(rename = "type")]
    pub(crate) kind: &'static str,
    pub(crate) title: &'static str,
    pub(crate) status: u16,
    /// What failed, in words.
    pub(crate) detail: String,
    #[serde(flatten)]
    pub(crate) parts: HealthParts,
}

/// What an unhealthy answer says went wrong.
fn problem_detail(database_ok: bool, loops: &BTreeMap<&'static str, &'static str>, workers: &WorkerHealth) -> String {
    let mut failed = Vec::new();
    if !database_ok {
        failed.push("the database does not answer".to_owned());
    }
    for (name, state) in loops.iter().filter(|(_, state)| **state != LoopHealth::Ok.as_str()) {
        failed.push(format!("the {name} loop is {state}"));
    }
    if workers.alive < workers.total {
        failed.push(format!("{} of {} workers are running", workers.alive, workers.total));
    }
    failed.join("; ")
}

/// Health check
///
/// 200 when a write reaches the database and comes back, every background loop is alive and
/// every worker is running; otherwise a 503 problem that says which part failed. Not rate
/// limited.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    responses(
        (status = 200, description = "Healthy", body = Health),
        (status = 503, description = "The database does not answer, a background loop stopped, or a worker has died",
            body = Unhealthy, content_type = "application/problem+json"),
    )
)]
pub(super) async fn health(State(state): State<AppState>) -> Response {
    let owner = state.leases.owner();
    // A locked or exhausted pool must not hang the health check: no answer in time is unhealthy.
    let database_ok = matches!(
        tokio::time::timeout(PING_TIMEOUT, state.db.ping_write(owner)).await,
        Ok(Ok(()))
    );
    let queue_size = match database_ok {
        true => tokio::time::timeout(PING_TIMEOUT, state.db.backlog())
            .await
            .ok()
            .and_then(Result::ok),
        false => None,
    };
    let loops: BTreeMap<&'static str, &'static str> = state
        .liveness
        .report()
        .into_iter()
        .map(|(name, health)| (name, health.as_str()))
        .collect();
    let workers = WorkerHealth {
        alive: state.workers.alive(),
        total: state.workers.size(),
    };
    let detail = problem_detail(database_ok, &loops, &workers);
    let parts = HealthParts {
        timestamp: db::timestamp(chrono::Utc::now()),
        replica: owner.to_owned(),
        backend: state.db.backend().as_str(),
        database: if database_ok { "ok" } else { "unavailable" },
        loops,
        workers,
        queue_size,
    };
    if detail.is_empty() {
        return Json(Health { status: "ok", parts }).into_response();
    }
    let body = Unhealthy {
        kind: "urn:sync-async:problem:unhealthy",
        title: "Service Unavailable",
        status: 503,
        detail,
        parts,
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
        let fine = BTreeMap::from([("heartbeat", "ok")]);
        let stuck = BTreeMap::from([("heartbeat", "ok"), ("rescuer", "stuck")]);
        assert_eq!(problem_detail(true, &fine, &all), "");
        assert_eq!(problem_detail(false, &fine, &all), "the database does not answer");
        assert_eq!(problem_detail(true, &fine, &one_dead), "4 of 5 workers are running");
        assert_eq!(
            problem_detail(false, &stuck, &one_dead),
            "the database does not answer; the rescuer loop is stuck; 4 of 5 workers are running"
        );
    }
}
