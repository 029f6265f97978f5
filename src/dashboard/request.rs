//! One request's page: payload, result or error, a timeline of its steps, its delivery
//! attempts, and the Redeliver action behind the page's button (plus the JSON the page's script
//! refreshes after it). Callback URLs and URLs inside errors are shown redacted. Another
//! tenant's request is a 404, the same as the API's and as an id never used.

use askama::Template;
use axum::Json;
use axum::extract::{Extension, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Serialize;

use super::access::Visitor;
use super::redact::{redact_url, redact_urls_in};
use super::requests::delivery_state;
use super::{Chrome, Dashboard, render};
use crate::auth::Caller;
use crate::db::{AttemptRow, RequestRow};
use crate::error::ApiError;
use crate::extract::ApiPath;
use crate::model::{DeliveryStatus, Mode, Status};
use crate::routes::requests::{start_redelivery, visible_request};
use crate::state::AppState;

/// One step of a request's life.
pub(crate) struct Step {
    pub name: &'static str,
    /// RFC 3339, or empty when the step has not happened.
    pub at: String,
    /// Milliseconds since acceptance, as text.
    pub after: String,
    /// The job or its delivery failed here: the timeline marks it.
    pub failed: bool,
}

/// One delivery attempt, as the table shows it.
#[derive(Debug, Serialize)]
pub(crate) struct AttemptView {
    pub number: i64,
    pub attempted_at: String,
    /// The HTTP status, or the error class when no answer came.
    pub outcome: String,
    pub duration_ms: String,
    /// The error text, with any URL redacted.
    pub error: String,
    /// When the next attempt is due, on the last row of a delivery that will retry.
    pub next_retry: String,
}

fn attempt_views(attempts: &[AttemptRow], next_attempt_at: Option<&str>) -> Vec<AttemptView> {
    let last = attempts.len();
    attempts
        .iter()
        .enumerate()
        .map(|(i, a)| AttemptView {
            number: a.number,
            attempted_at: a.attempted_at.clone(),
            outcome: match (a.status_code, &a.error_class) {
                (Some(code), _) => code.to_string(),
                (None, Some(class)) => class.clone(),
                (None, None) => "no answer".to_owned(),
            },
            duration_ms: format!("{:.1}", a.duration_ms),
            error: a.error.as_deref().map(redact_urls_in).unwrap_or_default(),
            next_retry: if i + 1 == last {
                next_attempt_at.unwrap_or_default().to_owned()
            } else {
                String::new()
            },
        })
        .collect()
}

fn timeline(row: &RequestRow, attempts: &[AttemptRow]) -> Vec<Step> {
    let created = parse_time(&row.created_at);
    let step = |name: &'static str, at: Option<&str>| {
        let at = at.unwrap_or_default().to_owned();
        let after = match (created, parse_time(&at)) {
            (Some(from), Some(to)) => format!("+{:.0} ms", (to - from).num_microseconds().unwrap_or(0) as f64 / 1000.0),
            _ => String::new(),
        };
        Step {
            name,
            at,
            after,
            failed: name.ends_with("failed"),
        }
    };
    let mut steps = vec![step("accepted", Some(&row.created_at))];
    if row.mode == Mode::Async {
        steps.push(step("queued", Some(&row.created_at)));
    }
    steps.push(step("running", row.started_at.as_deref()));
    let ended = if row.status == Status::Failed { "failed" } else { "done" };
    steps.push(step(ended, row.completed_at.as_deref()));
    if let Some(delivery) = &row.delivery {
        steps.push(step("delivering", attempts.first().map(|a| a.attempted_at.as_str())));
        let last = attempts.last().map(|a| a.attempted_at.as_str());
        match delivery.status {
            DeliveryStatus::Failed => steps.push(step("delivery failed", last)),
            DeliveryStatus::Delivered => steps.push(step("delivered", last)),
            _ => steps.push(step("delivered", None)),
        }
    }
    steps
}

fn parse_time(at: &str) -> Option<chrono::DateTime<chrono::FixedOffset>> {
    chrono::DateTime::parse_from_rfc3339(at).ok()
}

#[derive(Template)]
#[template(path = "dashboard/request.html")]
pub(crate) struct DetailPage {
    chrome: Chrome,
    id: String,
    mode: &'static str,
    status: &'static str,
    execution_ms: String,
    callback: String,
    payload: String,
    result: String,
    error: String,
    steps: Vec<Step>,
    /// `None` without a callback.
    delivery: Option<String>,
    attempts: Vec<AttemptView>,
    /// Only a failed delivery can be delivered again.
    can_redeliver: bool,
}

pub(crate) async fn page(
    State(state): State<AppState>,
    Extension(dashboard): Extension<Dashboard>,
    visitor: Visitor,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let row = visible_request(&state, &visitor.caller, &id).await?;
    let attempts = state.db.attempts(&id).await?;
    let pretty = |v: &serde_json::Value| serde_json::to_string_pretty(v).unwrap_or_default();
    let page = DetailPage {
        chrome: Chrome::new(&dashboard, "requests", &visitor),
        steps: timeline(&row, &attempts),
        attempts: attempt_views(
            &attempts,
            row.delivery.as_ref().and_then(|d| d.next_attempt_at.as_deref()),
        ),
        delivery: row
            .delivery
            .as_ref()
            .map(|d| delivery_state(d.status, d.attempts).to_owned()),
        can_redeliver: row
            .delivery
            .as_ref()
            .is_some_and(|d| d.status == DeliveryStatus::Failed),
        mode: row.mode.as_str(),
        status: row.status.as_str(),
        execution_ms: row
            .execution_time_ms
            .map(|ms| format!("{ms:.1} ms"))
            .unwrap_or_default(),
        callback: row.callback_url.as_deref().map(redact_url).unwrap_or_default(),
        payload: pretty(&row.payload),
        result: row.result.as_ref().map(pretty).unwrap_or_default(),
        error: row.error.clone().unwrap_or_default(),
        id: row.id,
    };
    render(&page)
}

/// What the request page's script refreshes after a Redeliver.
#[derive(Debug, Serialize)]
pub(crate) struct DetailFigures {
    pub status: &'static str,
    /// `None` without a callback.
    pub delivery: Option<&'static str>,
    pub attempts: Vec<AttemptView>,
}

pub(crate) async fn figures(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<DetailFigures>, ApiError> {
    let row = visible_request(&state, &caller, &id).await?;
    let attempts = state.db.attempts(&id).await?;
    Ok(Json(DetailFigures {
        status: row.status.as_str(),
        delivery: row.delivery.as_ref().map(|d| delivery_state(d.status, d.attempts)),
        attempts: attempt_views(
            &attempts,
            row.delivery.as_ref().and_then(|d| d.next_attempt_at.as_deref()),
        ),
    }))
}

/// Starts a new delivery round for a failed delivery: 202, or 403 for a read-only visitor,
/// 404 (another tenant's request too), 409 as the API's redeliver.
pub(crate) async fn redeliver(
    State(state): State<AppState>,
    visitor: Visitor,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    visitor.require_act()?;
    // A request's tenant never changes, so checking before the redelivery is not a race.
    visible_request(&state, &visitor.caller, &id).await?;
    start_redelivery(&state, &id).await?;
    Ok(StatusCode::ACCEPTED)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(number: i64, status_code: Option<i64>, class: Option<&str>, error: Option<&str>) -> AttemptRow {
        AttemptRow {
            number,
            attempted_at: "2026-01-01T00:00:01.000Z".into(),
            duration_ms: 12.34,
            status_code,
            error_class: class.map(str::to_owned),
            error: error.map(str::to_owned),
        }
    }

    #[test]
    fn attempts_show_the_status_or_the_error_class_and_the_next_retry_on_the_last_row() {
        let rows = [
            attempt(
                1,
                None,
                Some("connect"),
                Some("error sending request for url (http://h/cb?t=1)"),
            ),
            attempt(2, Some(500), Some("http_status"), None),
        ];
        let views = attempt_views(&rows, Some("2026-01-01T00:00:05.000Z"));
        assert_eq!(views[0].outcome, "connect");
        assert_eq!(views[0].error, "error sending request for url (http://h/cb?…)");
        assert_eq!(views[0].next_retry, "");
        assert_eq!(views[1].outcome, "500");
        assert_eq!(views[1].next_retry, "2026-01-01T00:00:05.000Z");
        assert_eq!(views[1].duration_ms, "12.3");
    }
}
