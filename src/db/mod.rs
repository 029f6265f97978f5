//! Storage: the `Store` trait of domain verbs (`store`), the commands and rows it speaks in
//! (`rows`), and its two backends, SQLite (`sqlite/`, the embedded default) and PostgreSQL
//! (`postgres/`, for several replicas on one database).
//! All SQL in the project lives under this module, and what comes out of it are plain rows.

mod listing;
pub mod postgres;
mod rows;
pub mod sqlite;
mod store;

pub use rows::*;
pub use store::*;

use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};

use crate::config::DatabaseTarget;
use crate::liveness::Liveness;

/// The store every part of the app shares: cheap to clone.
#[derive(Clone, Debug)]
pub struct Db(Arc<dyn Store>);

impl Deref for Db {
    type Target = dyn Store;

    fn deref(&self) -> &Self::Target {
        &*self.0
    }
}

impl Db {
    pub fn new(store: impl Store + 'static) -> Self {
        Self(Arc::new(store))
    }
}

/// Why the store could not be opened at start.
#[derive(Debug, thiserror::Error)]
#[error("{0:#}")]
pub struct ConnectError(#[from] anyhow::Error);

/// Opens the store `target` names and brings its schema up to date. Its own loops (SQLite's
/// group commit and checkpoints) report to `liveness`.
pub async fn connect(target: &DatabaseTarget, liveness: &Liveness) -> Result<Db, ConnectError> {
    match target {
        DatabaseTarget::Sqlite { path, wal_limit_bytes } => {
            Ok(Db::new(sqlite::connect(path, *wal_limit_bytes, liveness).await?))
        }
        DatabaseTarget::Postgres {
            url,
            max_connections,
            notify_interval,
        } => Ok(Db::new(
            postgres::connect(url.expose(), *max_connections, *notify_interval, liveness).await?,
        )),
    }
}

/// Runs a statement again when it fails for a reason that passes (the database is busy past the
/// busy timeout, the pool is exhausted, an I/O hiccup): up to five more times over about three
/// seconds. Workers and deliveries use this for the writes that move a job or a delivery
/// forward; what still fails is left to its lease, which expires and gives it to the rescuer.
pub async fn retry_transient<T, F, Fut>(what: &'static str, op: F) -> Result<T, sqlx::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, sqlx::Error>>,
{
    use backon::{ExponentialBuilder, Retryable};
    let backoff = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(1))
        .with_max_times(5)
        .with_jitter();
    op.retry(backoff)
        .sleep(tokio::time::sleep)
        .when(is_transient)
        .notify(|e, delay| tracing::warn!(error = %e, what, retry_in_ms = delay.as_millis() as u64, "database write failed; retrying"))
        .await
}

/// Errors worth retrying: the database is busy, locked or out of reach for a moment.
pub fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed => true,
        sqlx::Error::Database(db) => {
            let code = db.code();
            let code = code.as_deref().unwrap_or("");
            // SQLite: SQLITE_BUSY (5) and SQLITE_LOCKED (6), any extended code.
            let sqlite_busy = code.parse::<i32>().is_ok_and(|c| matches!(c & 0xff, 5 | 6));
            // PostgreSQL: connection exceptions (08xxx), shutdown and "cannot connect now"
            // (57P01 to 57P03), too many connections and other resource limits (53xxx), a
            // database closed to connections (55000 at connect), serialization failures and
            // deadlocks (40001, 40P01).
            let postgres = code.starts_with("08")
                || code.starts_with("57P")
                || code.starts_with("53")
                || code == "55000"
                || code == "40001"
                || code == "40P01";
            sqlite_busy || postgres
        }
        _ => false,
    }
}

/// A claimed job from a row of either backend's claim (`id`, `attempt`, `payload`,
/// `callback_url`, `created_at`).
fn claimed_job<R>(row: &R) -> Result<ClaimedJob, sqlx::Error>
where
    R: sqlx::Row,
    for<'r> &'r str: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> DateTime<Utc>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> sqlx::types::Json<serde_json::Value>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let sqlx::types::Json(payload) = row.try_get("payload")?;
    Ok(ClaimedJob {
        lease: Lease {
            id: row.try_get("id")?,
            attempt: row.try_get("attempt")?,
        },
        accepted_at: row.try_get("created_at")?,
        payload,
        callback_url: row.try_get("callback_url")?,
    })
}

/// Puts claimed jobs in the queue's order, oldest first (by acceptance, then id), as the store
/// promises: neither backend's `UPDATE ... RETURNING` gives its rows in the order it picked them.
fn oldest_first(mut claimed: Vec<ClaimedJob>) -> Vec<ClaimedJob> {
    claimed.sort_by(|a, b| (a.accepted_at, &a.lease.id).cmp(&(b.accepted_at, &b.lease.id)));
    claimed
}

/// The stored form of a timestamp: RFC 3339, UTC, milliseconds, fixed width.
pub fn timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// `timestamp(now - ago)`, or the earliest time when `ago` reaches before it.
pub fn timestamp_ago(ago: Duration) -> String {
    let ago = chrono::Duration::from_std(ago).unwrap_or(chrono::Duration::MAX);
    timestamp(Utc::now().checked_sub_signed(ago).unwrap_or(DateTime::<Utc>::MIN_UTC))
}
