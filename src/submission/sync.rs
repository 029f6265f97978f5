//! The sync path: take a slot (or 503 at once), store the request, run it, answer with the
//! result.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::{new_request_id, retry_after_secs};
use crate::auth::Caller;
use crate::client_ip::ClientIp;
use crate::db::{self, Lease, NewSync};
use crate::engine::{CancelToken, WorkPayload};
use crate::error::ApiError;
use crate::execution::Outcome;
use crate::jobs::Kind;
use crate::model::{Mode, Status};
use crate::state::AppState;

/// `POST /sync` body.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"payload": {"operation": "hash", "complexity": 5}}))]
pub struct SyncRequest {
    pub payload: WorkPayload,
}

/// `POST /sync` answer: the result itself.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[schema(example = json!({
    "request_id": "0193a1b2-7c3d-7e4f-8a9b-0c1d2e3f4a5b",
    "status": "done",
    "result": {"digest": "5d41402abc4b2a76b9719d911017c592ae3e4bd6f1c0e5c3f3a3a8f0e5a1c2d3", "iterations": 8592000},
    "error": null,
    "execution_time_ms": 571.4
}))]
pub struct SyncResponse {
    pub request_id: String,
    /// Always `done`: any other outcome is an error response.
    pub status: Status,
    #[schema(value_type = Object)]
    pub result: Value,
    /// Always null; kept for parity with the original API.
    pub error: Option<String>,
    /// Engine time for this request.
    pub execution_time_ms: f64,
}

/// The sync path. A client that disconnects mid-run cancels the engine, and the row is still
/// finished (as `failed`): no row is ever left `processing`.
pub async fn run_sync(
    state: &AppState,
    request: SyncRequest,
    client: ClientIp,
    caller: &Caller,
) -> Result<SyncResponse, ApiError> {
    let payload = request.payload;
    let work = payload
        .plan(&state.calibration.amounts)
        .map_err(|errors| ApiError::invalid_work(errors, "/payload"))?;
    if state.stopping.is_cancelled() {
        return Err(ApiError::ShuttingDown);
    }
    let Ok(slot) = state.sync_slots.clone().try_acquire_owned() else {
        state.metrics.sync_rejected.inc();
        return Err(ApiError::SyncSaturated {
            max: state.config.max_sync_concurrency,
            retry_after_secs: retry_after_secs(payload.complexity),
        });
    };

    let id = new_request_id();
    tracing::Span::current().record("request_id", id.as_str());
    let payload_json = serde_json::to_value(&payload).map_err(ApiError::internal)?;
    let client_ip = client.ip.to_string();
    let tenant = caller.tenant().map(str::to_owned);

    // Storing and running live in their own task, so the request is recorded and finished even
    // if this handler is dropped (the client went away); the guard then cancels the engine,
    // which frees the slot within milliseconds, and the row ends `failed`.
    let cancel = CancelToken::new();
    let _cancel_if_client_leaves = cancel.cancel_on_drop();
    let (task_state, task_id) = (state.clone(), id.clone());
    let run = tokio::spawn(async move {
        let row = NewSync {
            id: task_id.clone(),
            payload: payload_json,
            client_ip,
            tenant,
            created_at: db::timestamp(chrono::Utc::now()),
        };
        let (db, leases) = (&task_state.db, &task_state.leases);
        let lease = Lease {
            id: task_id.clone(),
            attempt: 1,
        };
        db.start_sync(&row, leases.owner(), task_state.config.lease).await?;
        // Renewed by the heartbeat while it runs: a run longer than the lease keeps it.
        leases.hold(Kind::Sync, lease.clone(), Some(cancel.clone()));
        let outcome = task_state
            .executor
            .execute(&task_id, Mode::Sync, payload.operation, work, cancel, Some(slot))
            .await;
        let completion = task_state.executor.completion(&outcome);
        let stored = db::retry_transient("storing a sync outcome", || {
            db.finish_sync(&task_id, leases.owner(), &completion)
        })
        .await;
        leases.drop_lease(Kind::Sync, &lease);
        if !stored? {
            task_state.metrics.stale_writes.inc();
        }
        Ok::<_, sqlx::Error>(outcome)
    });
    let outcome = run.await.map_err(ApiError::internal)??;
    match outcome {
        Outcome::Done { result, elapsed } => Ok(SyncResponse {
            request_id: id,
            status: Status::Done,
            result,
            error: None,
            execution_time_ms: crate::execution::as_millis(elapsed),
        }),
        Outcome::TimedOut { .. } => Err(ApiError::Timeout {
            request_id: id,
            timeout_secs: state.config.work_timeout.as_secs_f64(),
        }),
        // Only a client that went away cancels a sync run, and it does not read this answer.
        Outcome::Cancelled => Err(ApiError::Unavailable("the request was cancelled".to_owned())),
        Outcome::Panicked(why) => Err(ApiError::internal(anyhow::anyhow!("engine panicked: {why}"))),
    }
}
