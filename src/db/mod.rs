//! The SQLite store: one pool opened at start (WAL, busy timeout, embedded migrations), and one
//! module per table. All SQL in the project lives under this module.

pub mod callbacks;
pub mod idempotency;
pub mod requests;

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, SecondsFormat, Utc};
use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

/// How long a statement waits for another connection's write lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// SQLite serialises writers, so a handful of connections is plenty; readers share them.
const MAX_CONNECTIONS: u32 = 8;

/// Opens (creating if needed) the database at `path` and brings its schema up to date.
///
/// WAL lets readers run beside the one writer. `synchronous = NORMAL` makes each commit durable
/// against a crash or `kill -9` of this process (the WAL is written before the commit returns);
/// only an OS crash or power cut can lose the last commits, which is the usual WAL trade-off.
pub async fn connect(path: &Path) -> anyhow::Result<SqlitePool> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating the data directory {}", dir.display()))?;
    }
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(BUSY_TIMEOUT)
        .foreign_keys(true);
    let pool = SqlitePoolOptions::new()
        .max_connections(MAX_CONNECTIONS)
        .connect_with(options)
        .await
        .with_context(|| format!("opening the database {}", path.display()))?;
    sqlx::migrate!("./migrations")
        .run(&pool)
        .await
        .context("running database migrations")?;
    Ok(pool)
}

/// Answers when the database can run a query: the health check.
pub async fn ping(pool: &SqlitePool) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT 1").execute(pool).await.map(|_| ())
}

/// Runs a statement again when it fails for a reason that passes (the database is busy past the
/// busy timeout, the pool is exhausted, an I/O hiccup): up to five more times over about three
/// seconds. Workers and deliveries use this for the writes that move a job or a delivery
/// forward, so one busy moment cannot strand them until the next restart.
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

/// Errors worth retrying: SQLITE_BUSY and SQLITE_LOCKED (any extended code), pool timeouts, I/O.
fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) => true,
        sqlx::Error::Database(db) => db
            .code()
            .and_then(|code| code.parse::<i32>().ok())
            .is_some_and(|code| matches!(code & 0xff, 5 | 6)),
        _ => false,
    }
}

/// The stored form of a timestamp: RFC 3339, UTC, milliseconds, fixed width.
pub fn timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}
