//! The SQLite store: opened once at start (WAL, busy timeout, embedded migrations) as one
//! writer connection and a pool of read-only connections, and one module per table. All SQL in
//! the project lives under this module.

pub mod callbacks;
mod group_commit;
pub mod idempotency;
pub mod requests;

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, SecondsFormat, Utc};
use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

/// How long a statement waits for SQLite's write lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Read-only connections; WAL lets them all read beside the writer.
const READERS: u32 = 6;
/// How often the WAL is checkpointed into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// The database handles.
///
/// SQLite runs one write transaction at a time whatever the connection count, and a writer that
/// finds the lock taken sleeps in SQLite's busy handler (milliseconds at a time). With a single
/// writer connection, writes instead wait their turn in the pool's queue, which costs
/// microseconds: that is what keeps `/async` acknowledgements in single-digit milliseconds while
/// workers are storing results. New rows are also committed in groups (`group_commit`).
#[derive(Clone, Debug)]
pub struct Db {
    writer: SqlitePool,
    readers: SqlitePool,
    /// Concurrent inserts of new requests share one commit.
    group_commit: group_commit::GroupCommit,
}

impl Db {
    /// The one connection every write goes through.
    pub fn writer(&self) -> &SqlitePool {
        &self.writer
    }

    /// Read-only connections for queries.
    pub fn readers(&self) -> &SqlitePool {
        &self.readers
    }

    pub async fn close(&self) {
        self.writer.close().await;
        self.readers.close().await;
    }
}

/// Opens (creating if needed) the database at `path` and brings its schema up to date.
///
/// `synchronous = NORMAL` makes each commit durable against a crash or `kill -9` of this process
/// (the WAL is written before the commit returns); only an OS crash or power cut can lose the
/// last commits, which is the usual WAL trade-off.
pub async fn connect(path: &Path) -> anyhow::Result<Db> {
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
    let opening = || format!("opening the database {}", path.display());
    let writer = SqlitePoolOptions::new()
        .test_before_acquire(false)
        .max_connections(1)
        .min_connections(1)
        // The writer never checkpoints (which would stall the writes queued behind it while it
        // copies pages and syncs the file); a separate connection does, in the background.
        .connect_with(options.clone().pragma("wal_autocheckpoint", "0"))
        .await
        .with_context(opening)?;
    sqlx::migrate!("./migrations")
        .run(&writer)
        .await
        .context("running database migrations")?;
    let readers = SqlitePoolOptions::new()
        .test_before_acquire(false)
        .max_connections(READERS)
        .connect_with(options.clone().read_only(true))
        .await
        .with_context(opening)?;
    let checkpointer = SqlitePoolOptions::new()
        .test_before_acquire(false)
        .max_connections(1)
        .connect_with(options.clone())
        .await
        .with_context(opening)?;
    tokio::spawn(checkpoint_loop(checkpointer, writer.clone()));
    let group_commit = group_commit::GroupCommit::start(writer.clone());
    Ok(Db {
        writer,
        readers,
        group_commit,
    })
}

/// Copies committed WAL frames into the database file every second, without waiting for
/// readers or blocking the writer (a PASSIVE checkpoint). Stops when the writer is closed.
async fn checkpoint_loop(checkpointer: SqlitePool, writer: SqlitePool) {
    let mut tick = tokio::time::interval(CHECKPOINT_EVERY);
    while !writer.is_closed() {
        tick.tick().await;
        if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .execute(&checkpointer)
            .await
        {
            tracing::debug!(error = %e, "WAL checkpoint skipped");
        }
    }
    checkpointer.close().await;
}

/// Answers when the database can run a query: the health check.
pub async fn ping(db: &Db) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT 1").execute(db.readers()).await.map(|_| ())
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
