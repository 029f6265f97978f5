//! The SQLite backend, the embedded default: one file, opened as one writer connection (new rows
//! committed in groups), a pool of read-only connections, and a checkpointer that keeps the WAL
//! bounded. One server per file (the app holds a lock file), so the backlog of waiting jobs is
//! counted in memory, exactly.

mod accept;
mod deliveries;
mod group_commit;
#[cfg(test)]
mod plans;
mod queue;
mod reads;
mod upkeep;
mod wal;
mod writer;

pub use wal::{DEFAULT_LIMIT_BYTES, WalFigures};
pub use writer::WriterFigures;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Connection, SqliteConnection, SqlitePool};

use super::rows::*;
use super::store::*;
use crate::liveness::Liveness;

/// How long a statement waits for SQLite's write lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Read-only connections; WAL lets them all read beside the writer.
const READERS: u32 = 6;

/// SQLite's clock in the stored timestamp form (RFC 3339, UTC, milliseconds), as a string
/// literal so that queries built with `concat!` stay literals.
macro_rules! now {
    () => {
        "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"
    };
}
pub(crate) use now;

/// The SQLite store.
///
/// SQLite runs one write transaction at a time whatever the connection count, and a writer that
/// finds the lock taken sleeps in SQLite's busy handler (milliseconds at a time). With a single
/// writer connection, writes instead wait their turn for it (`writer`), which costs
/// microseconds: that is what keeps acknowledgements in single-digit milliseconds while workers
/// store results. New rows are also committed in groups (`group_commit`).
#[derive(Debug)]
pub struct SqliteStore {
    writer: Arc<writer::Writer>,
    readers: SqlitePool,
    /// Concurrent inserts of new requests share one commit.
    group_commit: group_commit::GroupCommit,
    /// Copies the WAL into the database file in the background; closed before the writer.
    checkpointer: SqlitePool,
    /// Keeps the WAL within its bound and reports the file sizes.
    wal: Arc<wal::WalMonitor>,
    /// Async jobs waiting to be claimed. Exact: this process is the only writer (the lock
    /// file), and every change to the number goes through this store.
    backlog: AtomicU64,
}

/// Opens (creating if needed) the database at `path` and brings its schema up to date, keeping
/// its WAL file under `wal_limit_bytes`.
///
/// `synchronous = NORMAL` makes each commit durable against a crash or `kill -9` of this process
/// (the WAL is written before the commit returns); only an OS crash or power cut can lose the
/// last commits, which is the usual WAL trade-off.
pub async fn connect(path: &Path, wal_limit_bytes: u64, liveness: &Liveness) -> anyhow::Result<SqliteStore> {
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
    // The writer never checkpoints on its own (SQLite's autocheckpoint would stall the writes
    // queued behind it while it copies pages); a separate connection copies in the background,
    // and the writer only rewinds the log (see `wal`).
    let mut conn = SqliteConnection::connect_with(&options.clone().pragma("wal_autocheckpoint", "0"))
        .await
        .with_context(opening)?;
    sqlx::migrate!("./migrations/sqlite")
        .run(&mut conn)
        .await
        .context("running database migrations")?;
    let direct = open_direct(path, wal_limit_bytes).with_context(opening)?;
    let writer = Arc::new(writer::Writer::new(conn, direct, wal.clone()));
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
    let beat = liveness.register("checkpoint", Some(wal::CHECKPOINT_EVERY * 5));
    tokio::spawn(async move { loop_wal.run(loop_checkpointer, loop_writer, beat).await });
    let backlog = reads::count_backlog(&readers).await.context("counting the backlog")?;
    let group_commit = group_commit::GroupCommit::start(writer.clone(), liveness.register("commit", None));
    Ok(SqliteStore {
        writer,
        readers,
        group_commit,
        checkpointer,
        wal,
        backlog: AtomicU64::new(backlog),
    })
}

/// The writer thread's connection (`writer`), with the settings of sqlx's writer connection:
/// WAL, `synchronous = NORMAL`, foreign keys, the busy timeout, no automatic checkpoints, and
/// room in its statement cache for every size of the group commit's insert.
fn open_direct(path: &Path, wal_limit_bytes: u64) -> rusqlite::Result<rusqlite::Connection> {
    let conn = rusqlite::Connection::open(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.execute_batch(&format!(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; \
         PRAGMA wal_autocheckpoint = 0; PRAGMA journal_size_limit = {wal_limit_bytes};"
    ))?;
    conn.set_prepared_statement_cache_capacity(256);
    Ok(conn)
}

impl SqliteStore {
    /// The WAL's bound, sizes and checkpoint counts.
    pub fn wal(&self) -> &wal::WalMonitor {
        &self.wal
    }

    /// Takes a place in the backlog, or refuses when `limit` jobs already wait.
    fn reserve_backlog(&self, limit: u64) -> bool {
        self.backlog
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < limit).then_some(n + 1))
            .is_ok()
    }

    fn backlog_sub(&self, n: u64) {
        let _ = self
            .backlog
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| Some(b.saturating_sub(n)));
    }

    fn backlog_add(&self, n: u64) {
        self.backlog.fetch_add(n, Ordering::AcqRel);
    }
}

/// `+30.000 seconds`: a `strftime` modifier for a lease or a delay.
pub(super) fn plus(duration: Duration) -> String {
    format!("+{:.3} seconds", duration.as_secs_f64())
}

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> Backend {
        Backend::Sqlite
    }

    async fn accept_job(
        &self,
        job: &NewJob,
        key: Option<&KeyClaim>,
        backlog_limit: u64,
    ) -> Result<Accepted, sqlx::Error> {
        if !self.reserve_backlog(backlog_limit) {
            return Ok(Accepted::BacklogFull);
        }
        let stored = match key {
            None => self
                .group_commit
                .insert(accept::InsertRow::job(job))
                .await
                .map(|()| true),
            Some(key) => accept::insert_with_key(&self.writer, job, key).await,
        };
        if !matches!(stored, Ok(true)) {
            self.backlog_sub(1);
        }
        Ok(if stored? { Accepted::Stored } else { Accepted::KeyTaken })
    }

    async fn find_key(&self, scope: &str, key: &str, not_before: &str) -> Result<Option<StoredKey>, sqlx::Error> {
        accept::find_key(&self.readers, scope, key, not_before).await
    }

    async fn start_sync(&self, request: &NewSync, owner: &str, lease: Duration) -> Result<(), sqlx::Error> {
        self.group_commit
            .insert(accept::InsertRow::sync(request, owner, lease))
            .await
    }

    async fn finish_sync(&self, id: &str, owner: &str, completion: &Completion) -> Result<bool, sqlx::Error> {
        accept::finish_sync(&self.writer, id, owner, completion).await
    }

    async fn claim_jobs(&self, owner: &str, max: usize, lease: Duration) -> Result<Vec<ClaimedJob>, sqlx::Error> {
        let claimed = queue::claim_jobs(&self.writer, owner, max, lease).await?;
        self.backlog_sub(claimed.len() as u64);
        Ok(claimed)
    }

    async fn finish_jobs(&self, owner: &str, finishes: &[JobFinish]) -> Result<Vec<bool>, sqlx::Error> {
        queue::finish_jobs(&self.writer, owner, finishes).await
    }

    async fn finish_and_claim(
        &self,
        owner: &str,
        finishes: &[JobFinish],
        max: usize,
        lease: Duration,
    ) -> Result<(Vec<bool>, Vec<ClaimedJob>), sqlx::Error> {
        let (applied, claimed) = queue::finish_and_claim(&self.writer, owner, finishes, max, lease).await?;
        self.backlog_sub(claimed.len() as u64);
        Ok((applied, claimed))
    }

    async fn release_jobs(&self, owner: &str, jobs: &[Lease]) -> Result<(), sqlx::Error> {
        let released = queue::release_jobs(&self.writer, owner, jobs).await?;
        self.backlog_add(released);
        Ok(())
    }

    async fn heartbeat(
        &self,
        owner: &str,
        held: &Held,
        lease: Duration,
        replica: &ReplicaBeat,
    ) -> Result<Held, sqlx::Error> {
        queue::heartbeat(&self.writer, owner, held, lease, replica).await
    }

    async fn rescue(&self, max_attempts: u32, everything: bool) -> Result<Rescued, sqlx::Error> {
        let rescued = queue::rescue(&self.writer, max_attempts, everything).await?;
        self.backlog_add(rescued.jobs_requeued);
        Ok(rescued)
    }

    async fn claim_deliveries(
        &self,
        owner: &str,
        max: usize,
        lease: Duration,
    ) -> Result<Vec<ClaimedDelivery>, sqlx::Error> {
        deliveries::claim(&self.writer, &self.readers, owner, max, lease).await
    }

    async fn next_delivery_due_in(&self) -> Result<Option<Duration>, sqlx::Error> {
        deliveries::next_due_in(&self.readers).await
    }

    async fn record_and_claim_deliveries(
        &self,
        owner: &str,
        records: &[AttemptRecord],
        max: usize,
        lease: Duration,
    ) -> Result<(Vec<bool>, Vec<ClaimedDelivery>), sqlx::Error> {
        deliveries::record_and_claim(&self.writer, &self.readers, owner, records, max, lease).await
    }

    async fn redeliver(&self, id: &str) -> Result<Result<(), RedeliverRefusal>, sqlx::Error> {
        deliveries::redeliver(&self.writer, &self.readers, id).await
    }

    async fn get(&self, id: &str) -> Result<Option<RequestRow>, sqlx::Error> {
        reads::get(&self.readers, id).await
    }

    async fn list(&self, query: &ListQuery) -> Result<(i64, Vec<RequestRow>), sqlx::Error> {
        reads::list(&self.readers, query).await
    }

    async fn attempts(&self, id: &str) -> Result<Vec<AttemptRow>, sqlx::Error> {
        deliveries::attempts(&self.readers, id).await
    }

    async fn summary(&self) -> Result<Summary, sqlx::Error> {
        reads::summary(&self.readers).await
    }

    async fn backlog(&self) -> Result<u64, sqlx::Error> {
        Ok(self.backlog.load(Ordering::Acquire))
    }

    async fn replicas(&self, within: Duration) -> Result<Vec<ReplicaRow>, sqlx::Error> {
        reads::replicas(&self.readers, within).await
    }

    async fn purge(&self, round: PurgeRound<'_>) -> Result<Purged, sqlx::Error> {
        upkeep::purge(&self.writer, round).await
    }

    async fn ping_write(&self, owner: &str) -> Result<(), sqlx::Error> {
        upkeep::ping_write(&self.writer, owner).await
    }

    async fn storage(&self) -> Result<StorageFigures, sqlx::Error> {
        let wal = self.wal.figures();
        Ok(StorageFigures {
            database_bytes: wal.database_bytes,
            wal: Some(wal),
            writer: Some(self.writer.figures()),
        })
    }

    async fn take_rate_tokens(
        &self,
        _key: &str,
        _tokens: u32,
        _burst: u32,
        _window: Duration,
    ) -> Result<Option<RateVerdict>, sqlx::Error> {
        Ok(None)
    }

    fn listen(&self, _wake: &Wakeups, _liveness: &Liveness) {}

    async fn close(&self) {
        self.readers.close().await;
        self.checkpointer.close().await;
        self.wal.truncate(&self.writer).await;
        self.writer.close().await;
    }
}
