//! The SQLite store: opened once at start (WAL, busy timeout, embedded migrations) as one
//! writer connection and a pool of read-only connections, and one module per table. All SQL in
//! the project lives under this module.

pub mod callbacks;
mod group_commit;
pub mod idempotency;
pub mod requests;
pub mod wal;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, SecondsFormat, Utc};
use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

/// How long a statement waits for SQLite's write lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Read-only connections; WAL lets them all read beside the writer.
const READERS: u32 = 6;

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
    /// Copies the WAL into the database file in the background; closed before the writer.
    checkpointer: SqlitePool,
    /// Keeps the WAL within its bound and reports the file sizes.
    wal: Arc<wal::WalMonitor>,
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

    /// The WAL's bound, sizes and checkpoint counts.
    pub fn wal(&self) -> &wal::WalMonitor {
        &self.wal
    }

    /// Closes every connection, emptying the WAL on the way out: readers and the checkpointer
    /// first, so that the writer's TRUNCATE checkpoint has nobody to wait for.
    pub async fn close(&self) {
        self.readers.close().await;
        self.checkpointer.close().await;
        self.wal.truncate(&self.writer).await;
        self.writer.close().await;
    }
}

/// Opens (creating if needed) the database at `path` and brings its schema up to date, with the
/// default WAL bound.
pub async fn connect(path: &Path) -> anyhow::Result<Db> {
    connect_with_wal_limit(path, wal::DEFAULT_LIMIT_BYTES).await
}

/// Opens the database at `path`, keeping its WAL file under `wal_limit_bytes` (see `wal`).
///
/// `synchronous = NORMAL` makes each commit durable against a crash or `kill -9` of this process
/// (the WAL is written before the commit returns); only an OS crash or power cut can lose the
/// last commits, which is the usual WAL trade-off.
pub async fn connect_with_wal_limit(path: &Path, wal_limit_bytes: u64) -> anyhow::Result<Db> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating the data directory {}", dir.display()))?;
    }
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(BUSY_TIMEOUT)
        .foreign_keys(true)
        // A file that ever grew past the bound is cut back to it when the log starts over.
        .pragma("journal_size_limit", wal_limit_bytes.to_string());
    let opening = || format!("opening the database {}", path.display());
    let wal = Arc::new(wal::WalMonitor::new(path, wal_limit_bytes));
    let hook = wal.clone();
    let writer = SqlitePoolOptions::new()
        .test_before_acquire(false)
        .max_connections(1)
        .min_connections(1)
        .after_release(move |conn, _| {
            let wal = hook.clone();
            Box::pin(async move {
                if let Err(e) = wal.after_write(conn).await {
                    tracing::debug!(error = %e, "WAL restart checkpoint failed; tried again after the next write");
                }
                Ok(true)
            })
        })
        // The writer never checkpoints on its own (SQLite's autocheckpoint would stall the writes
        // queued behind it while it copies pages); a separate connection copies in the
        // background, and the writer only rewinds the log (see `wal`).
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
    let loop_wal = wal.clone();
    let (loop_checkpointer, loop_writer) = (checkpointer.clone(), writer.clone());
    tokio::spawn(async move { loop_wal.run(loop_checkpointer, loop_writer).await });
    let group_commit = group_commit::GroupCommit::start(writer.clone());
    Ok(Db {
        writer,
        readers,
        group_commit,
        checkpointer,
        wal,
    })
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
