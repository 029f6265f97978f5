//! GET /requests' filters and page size, written the same way on both backends.

use sqlx::{Database, Encode, QueryBuilder, Type};

use super::ListQuery;
use crate::model::Status;

/// Pushes the filters; returns the separator the next condition needs. Mode and status are
/// written as literals, not bound: SQLite uses a partial index (`requests_failed`,
/// `requests_sync`, `requests_claimable`) only when the query's WHERE names its condition's
/// value, and PostgreSQL only when the plan knows it (a generic plan of a bound value does not).
pub(super) fn push_filter<DB>(q: &mut QueryBuilder<DB>, query: &ListQuery) -> &'static str
where
    DB: Database,
    for<'t> String: Encode<'t, DB> + Type<DB>,
    for<'t> &'static str: Encode<'t, DB> + Type<DB>,
{
    let mut sep = " WHERE ";
    if let Some(tenant) = &query.tenant {
        q.push(sep).push("r.tenant = ").push_bind(tenant.clone());
        sep = " AND ";
    }
    if let Some(mode) = query.mode {
        q.push(sep).push("r.mode = '").push(mode.as_str()).push("'");
        sep = " AND ";
    }
    if let Some(status) = query.status {
        q.push(sep).push("r.status = '").push(status.as_str()).push("'");
        sep = " AND ";
        if status == Status::Pending && query.mode.is_none() {
            // Every pending request is async (sync requests are stored `processing` with a
            // lease, and SQLite's rescue at start fails those that older builds left pending):
            // said outright, the page reads the claim's own index, `requests_claimable`.
            q.push(sep).push("r.mode = 'async'");
        }
    }
    if let Some(state) = query.delivery {
        // The same states as the deliveries' running totals; a callback whose job is unfinished
        // has no delivery row yet and counts as pending, as `get` shows it.
        let condition = match state {
            "pending" => {
                "r.callback_url IS NOT NULL AND (d.status IS NULL OR (d.status = 'pending' AND d.attempts = 0))"
            }
            "retrying" => "d.status = 'pending' AND d.attempts > 0",
            _ => "d.status = ",
        };
        q.push(sep).push(condition);
        if !matches!(state, "pending" | "retrying") {
            q.push_bind(state);
        }
        sep = " AND ";
    }
    sep
}

/// How many rows the page may hold. Without a cursor, at most `total - offset` rows can be on
/// it, and saying so stops the scan at the last of them: a filter with no index of its own
/// (`done`, `async`) is read from `requests_by_created` newest first, and a LIMIT larger than
/// the rows that match would read on to the oldest request.
pub(super) fn page_limit(query: &ListQuery, total: i64) -> i64 {
    let limit = i64::from(query.limit);
    if query.before_id.is_some() {
        limit
    } else {
        limit.min(total - i64::from(query.offset))
    }
}
