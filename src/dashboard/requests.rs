//! The requests list: filters for mode, status and delivery state, newest first with keyset
//! paging, and a "go to id" box. A tenant lists (and goes to) only its own requests; the admin
//! and an open dashboard list every one. Callback URLs are shown redacted.

use askama::Template;
use axum::extract::{Extension, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::access::Visitor;
use super::redact::redact_url;
use super::{Chrome, Dashboard, render};
use crate::db::{DELIVERY_STATES, ListQuery, RequestRow};
use crate::error::ApiError;
use crate::extract::ApiQuery;
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
                .map(|d| {
                    let noun = if d.attempts == 1 { "attempt" } else { "attempts" };
                    format!("{} ({} {noun})", delivery_state(d.status, d.attempts), d.attempts)
                })
                .unwrap_or_default(),
            callback: row.callback_url.as_deref().map(redact_url).unwrap_or_default(),
        }
    }
}

/// `retrying` is a pending delivery that has been attempted: the overview's name for it.
pub(super) fn delivery_state(status: DeliveryStatus, attempts: i64) -> &'static str {
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
        // Another tenant's request is "no request", as in the API.
        let visible = state
            .db
            .get(&go_to)
            .await?
            .filter(|row| visitor.caller.may_see(row.tenant.as_deref()));
        if visible.is_some() {
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
        tenant: visitor.caller.tenant().map(str::to_owned),
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
        chrome: Chrome::new(&dashboard, "requests", &visitor),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::DeliveryRow;

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

    #[test]
    fn a_row_counts_its_delivery_attempts_in_words() {
        let row = |attempts| {
            Row::from(&RequestRow {
                id: "01a24f09-4f2f-7319-992a-09d7db27ca5a".into(),
                mode: Mode::Async,
                status: Status::Done,
                payload: serde_json::json!({}),
                result: None,
                error: None,
                callback_url: Some("http://127.0.0.1:9/x".into()),
                created_at: "2026-12-07T05:45:39.887Z".into(),
                started_at: None,
                completed_at: None,
                execution_time_ms: Some(1.25),
                delivery: Some(DeliveryRow {
                    status: DeliveryStatus::Pending,
                    attempts,
                    last_status_code: None,
                    last_error: None,
                    next_attempt_at: None,
                }),
                tenant: None,
            })
            .delivery
        };
        assert_eq!(row(0), "pending (0 attempts)");
        assert_eq!(row(1), "retrying (1 attempt)");
        assert_eq!(row(2), "retrying (2 attempts)");
    }
}
