//! The async path: check the callback URL, honour an `Idempotency-Key`, reserve a queue slot (or
//! answer 429 at once, storing nothing), commit the job, put it on the queue, acknowledge. A 202
//! is only sent once the job is committed, so an acknowledged job survives any crash.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use super::{new_request_id, retry_after_secs};
use crate::auth::Caller;
use crate::client_ip::ClientIp;
use crate::db::{self, Accepted, KeyClaim, NewJob};
use crate::engine::{self, Complexity, WorkPayload};
use crate::error::ApiError;
use crate::model::Status;
use crate::ssrf::UrlPolicy;
use crate::state::AppState;

/// The longest `Idempotency-Key` accepted.
const MAX_KEY_LEN: usize = 255;

/// `POST /async` body.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "payload": {"operation": "prime", "complexity": 7},
    "callback_url": "http://localhost:9000/callback"
}))]
pub struct AsyncRequest {
    pub payload: WorkPayload,
    /// Where to POST the result (http or https, at most 2048 characters). Without it, poll
    /// `status_url`. The URL policy refuses addresses that are not globally routable (see the
    /// README), with a 400 that says why: a check no schema can state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 2048)]
    pub callback_url: Option<String>,
}

/// `POST /async` answer: the job is stored and queued.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
#[schema(example = json!({
    "request_id": "0193a1b2-7c3d-7e4f-8a9b-0c1d2e3f4a5b",
    "status": "pending",
    "message": "Accepted: the result will be POSTed to http://localhost:9000/callback",
    "status_url": "/requests/0193a1b2-7c3d-7e4f-8a9b-0c1d2e3f4a5b"
}))]
pub struct AsyncAccepted {
    pub request_id: String,
    /// Always `pending` at acceptance.
    pub status: Status,
    pub message: String,
    /// Where to poll for the result (also in `Location`).
    pub status_url: String,
}

/// What the route turns into a 202.
#[derive(Debug, Clone, PartialEq)]
pub struct Acceptance {
    pub body: AsyncAccepted,
    /// Estimated seconds until the result exists.
    pub retry_after_secs: u64,
    /// True when an `Idempotency-Key` replayed an earlier acceptance.
    pub replayed: bool,
}

/// The optional `Idempotency-Key` header: 1 to 255 visible ASCII characters.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IdempotencyKey(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let Some(value) = parts.headers.get("idempotency-key") else {
            return Ok(Self(None));
        };
        let key = value.to_str().unwrap_or("").trim();
        if key.is_empty() || key.len() > MAX_KEY_LEN || !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ApiError::BadRequest(format!(
                "Idempotency-Key must be 1 to {MAX_KEY_LEN} visible ASCII characters"
            )));
        }
        Ok(Self(Some(key.to_owned())))
    }
}

/// Accepts a job for `caller`, or replays the acceptance an `Idempotency-Key` already produced.
pub async fn accept_async(
    state: &AppState,
    request: AsyncRequest,
    client: ClientIp,
    caller: &Caller,
    key: IdempotencyKey,
) -> Result<Acceptance, ApiError> {
    if state.stopping.is_cancelled() {
        return Err(ApiError::ShuttingDown);
    }
    let complexity = request.payload.complexity;
    request
        .payload
        .plan(&state.calibration.amounts)
        .map_err(|errors| ApiError::invalid_work(errors, "/payload"))?;
    let policy = UrlPolicy::from_config(&state.config);
    let callback_url = match request.callback_url.as_deref() {
        Some(raw) => Some(
            policy
                .check_submitted(raw, client)
                .map_err(|why| ApiError::CallbackRefused(why.to_string()))?
                .to_string(),
        ),
        None => None,
    };
    let claim = key
        .0
        .map(|key| key_claim(state, key_scope(caller, client), key, &request))
        .transpose()?;
    if let Some(claim) = &claim
        && let Some(replay) = replay(state, claim, complexity).await?
    {
        return Ok(replay);
    }

    let id = new_request_id();
    tracing::Span::current().record("request_id", id.as_str());
    let payload = serde_json::to_value(&request.payload).map_err(ApiError::internal)?;
    let job = NewJob {
        id: id.clone(),
        payload,
        callback_url: callback_url.clone(),
        client_ip: client.ip.to_string(),
        tenant: caller.tenant().map(str::to_owned),
        created_at: db::timestamp(chrono::Utc::now()),
    };
    // The commit runs in its own task: a client that disconnects mid-commit cannot leave a
    // half-done acceptance behind.
    let (task_state, task_claim) = (state.clone(), claim.clone());
    let limit = state.config.max_queue_size as u64;
    let accepted = tokio::spawn(async move { task_state.db.accept_job(&job, task_claim.as_ref(), limit).await })
        .await
        .map_err(ApiError::internal)??;
    match accepted {
        Accepted::Stored => {}
        Accepted::BacklogFull => {
            state.metrics.queue_rejected.inc();
            return Err(ApiError::QueueFull {
                capacity: state.config.max_queue_size,
                retry_after_secs: retry_after_secs(complexity),
            });
        }
        Accepted::KeyTaken => {
            // Another request with this key committed first: answer as it was answered.
            let claim = claim
                .as_ref()
                .ok_or_else(|| ApiError::internal(anyhow::anyhow!("a key race without a key")))?;
            return replay(state, claim, complexity).await?.ok_or_else(|| {
                ApiError::Conflict("a request with this Idempotency-Key is being accepted; retry".to_owned())
            });
        }
    }
    state.metrics.jobs_enqueued.inc();
    state.wake.jobs.notify_one();
    tracing::debug!("job accepted");
    Ok(Acceptance {
        retry_after_secs: estimate_secs(state, complexity).await,
        body: accepted_body(id, callback_url.as_deref()),
        replayed: false,
    })
}

/// Whose keys an `Idempotency-Key` is one of: the tenant's (`tenant:<name>`, which no address
/// looks like), or, without a tenant, the client address's.
fn key_scope(caller: &Caller, client: ClientIp) -> String {
    match caller.tenant() {
        Some(tenant) => format!("tenant:{tenant}"),
        None => client.ip.to_string(),
    }
}

/// The record an `Idempotency-Key` is checked against and stored as.
fn key_claim(state: &AppState, scope: String, key: String, request: &AsyncRequest) -> Result<KeyClaim, ApiError> {
    Ok(KeyClaim {
        scope,
        key,
        body_hash: hash_body(request)?,
        not_before: db::timestamp_ago(state.config.idempotency_ttl),
    })
}

/// The earlier acceptance for this key, or a 422 if the key came with a different body.
async fn replay(state: &AppState, claim: &KeyClaim, complexity: u8) -> Result<Option<Acceptance>, ApiError> {
    let Some(stored) = state.db.find_key(&claim.scope, &claim.key, &claim.not_before).await? else {
        return Ok(None);
    };
    if stored.body_hash != claim.body_hash {
        return Err(ApiError::unprocessable(
            "this Idempotency-Key was already used with a different request body",
        ));
    }
    let callback_url = state.db.get(&stored.request_id).await?.and_then(|r| r.callback_url);
    Ok(Some(Acceptance {
        retry_after_secs: estimate_secs(state, complexity).await,
        body: accepted_body(stored.request_id, callback_url.as_deref()),
        replayed: true,
    }))
}

fn accepted_body(id: String, callback_url: Option<&str>) -> AsyncAccepted {
    let status_url = format!("/requests/{id}");
    let message = match callback_url {
        Some(url) => format!("Accepted: the result will be POSTed to {url}"),
        None => format!("Accepted: poll {status_url} for the result"),
    };
    AsyncAccepted {
        request_id: id,
        status: Status::Pending,
        message,
        status_url,
    }
}

/// The SHA-256 of the request as parsed, so that formatting differences do not count.
fn hash_body(request: &AsyncRequest) -> Result<String, ApiError> {
    let canonical = serde_json::to_vec(request).map_err(ApiError::internal)?;
    Ok(hex::encode(Sha256::digest(&canonical)))
}

/// Seconds until a job of `complexity` accepted now is likely done: the jobs ahead of it spread
/// over the workers, plus its own run, at the documented durations.
async fn estimate_secs(state: &AppState, complexity: u8) -> u64 {
    let run_ms = Complexity::new(complexity).map_or(1000.0, engine::nominal_ms);
    let backlog = state.db.backlog_estimate().await.unwrap_or(0);
    let waves = 1.0 + backlog as f64 / state.workers.size().max(1) as f64;
    ((run_ms * waves) / 1000.0).ceil().max(1.0) as u64
}
