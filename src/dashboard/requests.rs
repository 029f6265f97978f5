//! The requests pages: a filtered list, newest first with keyset paging and a "go to id" box;
//! one request's page with its payload, outcome, timeline and delivery attempts; and the
//! Redeliver action behind the page's button. Callback URLs are shown redacted.

use askama::Template;
use axum::Json;
use axum::extract::{Extension, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::access::Visitor;
use super::redact::{redact_url, redact_urls_in};
use super::{Chrome, Dashboard, render};
use crate::db::{AttemptRow, DELIVERY_STATES, ListQuery, RequestRow};
use crate::error::ApiError;
use crate::extract::{ApiPath, ApiQuery};
use crate::model::{DeliveryStatus, Mode, Status};
use crate::state::AppState;

/// Rows per page.
const PAGE_SIZE: u32 = 50;

/// The list's filters, as the form sends them: an empty select means "any".
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListParams {
    #[serde(default)]
    mode: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    delivery: String,
    /// Keyset paging: rows older than this request id.
    #[serde(default)]
    before: String,
    /// "Go to id": a known id redirects to its page.
    #[serde(default)]
    id: String,
}

/// The filters, checked.
struct Filters {
    mode: Option<Mode>,
    status: Option<Status>,
    delivery: Option<&'static str>,
}

impl Filters {
    fn parse(params: &ListParams) -> Result<Self, ApiError> {
        fn pick<T: std::str::FromStr>(name: &str, value: &str, allowed: &str) -> Result<Option<T>, ApiError> {
            if value.is_empty() {
                return Ok(None);
            }
            value
                .parse()
                .map(Some)
                .map_err(|_| ApiError::unprocessable(format!("{name} must be one of {allowed}, got {value:?}")))
        }
        let delivery = match params.delivery.as_str() {
            "" => None,
            other => Some(DELIVERY_STATES.into_iter().find(|s| *s == other).ok_or_else(|| {
                ApiError::unprocessable(format!(
                    "delivery must be one of {}, got {other:?}",
                    DELIVERY_STATES.join(", ")
                ))
            })?),
        };
        Ok(Self {
            mode: pick("mode", &params.mode, "sync, async")?,
            status: pick("status", &params.status, "pending, processing, done, failed")?,
            delivery,
        })
    }

    /// The query string of these filters, for paging links.
    fn query(&self) -> String {
        let mut parts = Vec::new();
        if let Some(mode) = self.mode {
            parts.push(format!("mode={}", mode.as_str()));
        }
        if let Some(status) = self.status {
            parts.push(format!("status={}", status.as_str()));
        }
        if let Some(delivery) = self.delivery {
            parts.push(format!("delivery={delivery}"));
        }
        parts.join("&")
    }
}

/// One option of a filter select.
pub(crate) struct Choice {
    pub value: &'static str,
    pub selected: bool,
}

fn choices(values: &[&'static str], current: Option<&str>) -> Vec<Choice> {
    values
        .iter()
        .map(|&value| Choice {
            value,
            selected: current == Some(value),
        })
        .collect()
}

/// One row of the list.
pub(crate) struct Row {
    pub id: String,
    pub mode: &'static str,
    pub status: &'static str,
    pub created_at: String,
    pub execution_ms: String,
    pub delivery: String,
    pub callback: String,
}

impl From<&RequestRow> for Row {
    fn from(row: &RequestRow) -> Self {
        Self {
            id: row.id.clone(),
            mode: row.mode.as_str(),
            status: row.status.as_str(),
            created_at: row.created_at.clone(),
            execution_ms: row.execution_time_ms.map(|ms| format!("{ms:.1}")).unwrap_or_default(),
            delivery: row
                .delivery
                .as_ref()
                .map(|d| format!("{} ({} attempts)", delivery_state(d.status, d.attempts), d.attempts))
                .unwrap_or_default(),
            callback: row.callback_url.as_deref().map(redact_url).unwrap_or_default(),
        }
    }
}

/// `retrying` is a pending delivery that has been attempted: the overview's name for it.
fn delivery_state(status: DeliveryStatus, attempts: i64) -> &'static str {
    match status {
        DeliveryStatus::Pending if attempts > 0 => "retrying",
        other => other.as_str(),
    }
}

#[derive(Template)]
#[template(path = "dashboard/requests.html")]
pub(crate) struct ListPage {
    chrome: Chrome,
    modes: Vec<Choice>,
    statuses: Vec<Choice>,
    deliveries: Vec<Choice>,
    rows: Vec<Row>,
    total: i64,
    /// The link to the next (older) page, when there is one.
    older: Option<String>,
    /// The link back to the newest page, when this is not it.
    newest: Option<String>,
    /// "No request has id ..." after an unknown "go to id".
    notice: Option<String>,
    go_to: String,
}

pub(crate) async fn list_page(
    State(state): State<AppState>,
    Extension(dashboard): Extension<Dashboard>,
    visitor: Visitor,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Response, ApiError> {
    let go_to = params.id.trim().to_owned();
    let mut notice = None;
    if !go_to.is_empty() {
        if state.db.get(&go_to).await?.is_some() {
            let to = format!("{}/dashboard/requests/{}", dashboard.base_path, urlencode(&go_to));
            return Ok((StatusCode::SEE_OTHER, [(header::LOCATION, to)]).into_response());
        }
        notice = Some(format!("No request has id {go_to}."));
    }
    let filters = Filters::parse(&params)?;
    let before = (!params.before.is_empty()).then(|| params.before.clone());
    let query = ListQuery {
        mode: filters.mode,
        status: filters.status,
        delivery: filters.delivery,
        before_id: before.clone(),
        limit: PAGE_SIZE + 1,
        offset: 0,
    };
    let (total, mut rows) = state.db.list(&query).await?;
    let list_url = format!("{}/dashboard/requests?{}", dashboard.base_path, filters.query());
    let has_older = rows.len() > PAGE_SIZE as usize;
    rows.truncate(PAGE_SIZE as usize);
    let older = has_older
        .then(|| rows.last().map(|r| format!("{list_url}&before={}", urlencode(&r.id))))
        .flatten();
    let page = ListPage {
        chrome: Chrome::new(&dashboard, "requests", visitor.access),
        modes: choices(&["sync", "async"], filters.mode.map(Mode::as_str)),
        statuses: choices(
            &["pending", "processing", "done", "failed"],
            filters.status.map(Status::as_str),
        ),
        deliveries: choices(&DELIVERY_STATES, filters.delivery),
        rows: rows.iter().map(Row::from).collect(),
        total,
        older,
        newest: before.map(|_| list_url),
        notice: notice.clone(),
        go_to,
    };
    let mut response = render(&page)?;
    if notice.is_some() {
        *response.status_mut() = StatusCode::NOT_FOUND;
    }
    Ok(response)
}

/// Percent-encodes what is not safe in a path segment or query value.
fn urlencode(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

/// One step of a request's life.
pub(crate) struct Step {
    pub name: &'static str,
    /// RFC 3339, or empty when the step has not happened.
    pub at: String,
    /// Milliseconds since acceptance, as text.
    pub after: String,
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
        Step { name, at, after }
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

pub(crate) async fn detail_page(
    State(state): State<AppState>,
    Extension(dashboard): Extension<Dashboard>,
    visitor: Visitor,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let row = state
        .db
        .get(&id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no request with id {id}")))?;
    let attempts = state.db.attempts(&id).await?;
    let pretty = |v: &serde_json::Value| serde_json::to_string_pretty(v).unwrap_or_default();
    let page = DetailPage {
        chrome: Chrome::new(&dashboard, "requests", visitor.access),
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

pub(crate) async fn detail_json(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<DetailFigures>, ApiError> {
    let row = state
        .db
        .get(&id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no request with id {id}")))?;
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
/// 404, 409 as the API's redeliver.
pub(crate) async fn redeliver(
    State(state): State<AppState>,
    visitor: Visitor,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    visitor.require_act()?;
    crate::routes::requests::start_redelivery(&state, &id).await?;
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

    #[test]
    fn bad_filters_are_a_422_and_empty_ones_mean_any() {
        let any = Filters::parse(&ListParams::default()).expect("empty is any");
        assert!(any.mode.is_none() && any.status.is_none() && any.delivery.is_none());
        for params in [
            ListParams {
                mode: "batch".into(),
                ..ListParams::default()
            },
            ListParams {
                status: "queued".into(),
                ..ListParams::default()
            },
            ListParams {
                delivery: "lost".into(),
                ..ListParams::default()
            },
        ] {
            assert_eq!(Filters::parse(&params).err().map(|e| e.status().as_u16()), Some(422));
        }
        let some = Filters::parse(&ListParams {
            mode: "async".into(),
            delivery: "retrying".into(),
            ..ListParams::default()
        })
        .expect("valid");
        assert_eq!(some.query(), "mode=async&delivery=retrying");
    }
}
