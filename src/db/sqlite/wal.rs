//! Keeps SQLite's write-ahead log bounded under sustained load and truncated at rest.
//!
//! A PASSIVE checkpoint copies committed pages into the database file but never makes the log
//! start over: SQLite rewinds the log only when every frame is copied *and* no reader still reads
//! from it, which under steady reads and writes never happens, so the file grew without limit
//! (2.2 GB after 10 s of acknowledgements). Now:
//!
//! - after every write the writer reads how full the log is from the wal-index header (the
//!   `-shm` file, whose layout SQLite documents), which costs one small read;
//! - past half the limit it wakes a background task. That task copies the log into the
//!   database with a PASSIVE checkpoint on its own connection while the writer goes on, then
//!   rewinds the log with a RESTART checkpoint sent through the writer connection, queued with
//!   the writes rather than fighting them for SQLite's lock. Right after the PASSIVE one it has
//!   little left to copy; it waits only for reads already in progress (new readers read the
//!   database file), and the next write starts the log from its beginning;
//! - a rewind that meets a read in progress is tried again a moment later rather than waiting
//!   with the writer held; only past five eighths of the limit does it wait;
//! - as a last guard, once a write leaves the log past three quarters of the limit, the writer
//!   rewinds it itself, waiting for readers, before the next write.
//!
//! The file keeps its length when the log starts over (it is overwritten from the start), so
//! its length is the fullest the log has been, at most three quarters of the limit plus one
//! transaction. Cutting it back at every rewind (`journal_size_limit = 0`) was measured: it
//! raised the acknowledgement p99 from about 10 ms to about 14 ms, so it is not done.
//! Checkpoints run by volume, not by a clock: each one costs file syncs on the same disk.
//!
//! Copying starts at half the limit, not a quarter, so that rewinds come half as often at the
//! same bound. Each one holds the writer while SQLite syncs what the copy passes left (4 to 51
//! ms on the benchmark VM's disk), and that sync cannot move off the writer: SQLite starts the
//! log over only once every frame in it is in the database file, synced, so the frames committed
//! after the last pass are copied and synced with writes paused. Under a saturated CPU (15
//! alternating runs of `MODE=saturated bash bench/versus-sqlite.sh`), the median ack p99 went
//! from 27.9 to 24.5 ms corrected and from 14.7 to 10.2 ms uncorrected; tiny-job acks unchanged.
//!
//! When writes stop for [`IDLE_AFTER`], and at a clean shutdown, a TRUNCATE checkpoint empties
//! the file.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sqlx::{SqliteConnection, SqlitePool};
use tokio::sync::{Mutex, Notify};

use super::writer::Writer;
use crate::liveness::Beat;

/// How often the background task looks at the log when no write asks it to sooner.
pub(super) const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);
/// Writes must have stopped this long before the WAL is truncated.
pub(super) const IDLE_AFTER: Duration = Duration::from_secs(2);
/// The default bound on the WAL file (`SQLITE_WAL_LIMIT_MB`).
pub const DEFAULT_LIMIT_BYTES: u64 = 64 * 1024 * 1024;
/// At most this many PASSIVE passes before a rewind.
const MAX_COPY_PASSES: usize = 3;
/// A pass that found fewer new frames than this (about 1 MiB) leaves little for the rewind.
const SMALL_REMAINDER_FRAMES: u64 = 256;
/// Rewinds tried without waiting for readers, this far apart, before one that waits.
const REWIND_TRIES: usize = 5;
const REWIND_RETRY_AFTER: Duration = Duration::from_millis(2);
/// Restores the writer's busy timeout (`db::BUSY_TIMEOUT`) after a checkpoint that must not wait.
const RESTORE_BUSY_TIMEOUT: &str = "PRAGMA busy_timeout = 5000";
/// A WAL frame's header, before the page it carries.
const FRAME_HEADER_BYTES: u64 = 24;

/// Which kind of checkpoint ran, for the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CheckpointKind {
    Passive,
    Restart,
    Truncate,
}

/// The WAL's bound, its size on disk, and counts of what was done to keep it there.
#[derive(Debug)]
pub struct WalMonitor {
    database_path: PathBuf,
    wal_path: PathBuf,
    /// The wal-index, whose header says how many frames the log holds.
    shm_path: PathBuf,
    limit_bytes: u64,
    /// Checkpoints that completed, by kind.
    passive: AtomicU64,
    restart: AtomicU64,
    truncate: AtomicU64,
    /// RESTART attempts that found readers in the way and will be tried again.
    restart_busy: AtomicU64,
    /// The largest WAL file seen after a write since start: the figure the bound is about.
    peak: AtomicU64,
    /// Wakes the background task when a write has filled half the limit.
    copy_now: Notify,
    /// Set when a write left the log past three quarters of the limit: the next write rewinds it.
    rewind_due: AtomicBool,
    /// Held by the background task's PASSIVE passes and by the writer's own guard: SQLite refuses
    /// a checkpoint at once (without its busy handler) while another runs, which would make the
    /// guard give up. Never held while waiting for the writer, which would deadlock with a guard
    /// that holds the writer and waits for this.
    copying: Mutex<()>,
}

/// Sizes and counts for `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WalFigures {
    pub database_bytes: u64,
    pub wal_bytes: u64,
    pub wal_limit_bytes: u64,
    pub passive_checkpoints: u64,
    pub restart_checkpoints: u64,
    pub truncate_checkpoints: u64,
    pub restart_busy: u64,
    /// The largest the WAL file has been after a write since start.
    pub wal_peak_bytes: u64,
}

impl WalMonitor {
    pub fn new(database_path: &Path, limit_bytes: u64) -> Self {
        let sibling = |suffix: &str| {
            let mut path = database_path.as_os_str().to_owned();
            path.push(suffix);
            PathBuf::from(path)
        };
        Self {
            database_path: database_path.to_owned(),
            wal_path: sibling("-wal"),
            shm_path: sibling("-shm"),
            limit_bytes,
            passive: AtomicU64::new(0),
            restart: AtomicU64::new(0),
            truncate: AtomicU64::new(0),
            restart_busy: AtomicU64::new(0),
            peak: AtomicU64::new(0),
            copy_now: Notify::new(),
            rewind_due: AtomicBool::new(false),
            copying: Mutex::new(()),
        }
    }

    pub fn limit_bytes(&self) -> u64 {
        self.limit_bytes
    }

    /// Past this the background task copies and rewinds the log: half the limit.
    fn copy_from(&self) -> u64 {
        self.limit_bytes / 2
    }

    /// Past this a rewind that kept meeting reads waits for them: five eighths of the limit.
    fn wait_from(&self) -> u64 {
        self.limit_bytes / 8 * 5
    }

    /// Past this the next write rewinds the log itself: three quarters of the limit.
    fn guard_from(&self) -> u64 {
        self.limit_bytes / 4 * 3
    }

    /// The WAL file's size now (0 when it does not exist).
    pub fn wal_bytes(&self) -> u64 {
        file_len(&self.wal_path)
    }

    /// How much of the log is in use: the frames the wal-index header counts, or, if that
    /// cannot be read, the file's length (never less than the log).
    fn log_bytes(&self) -> u64 {
        read_log_bytes(&self.shm_path).unwrap_or_else(|| self.wal_bytes())
    }

    pub fn figures(&self) -> WalFigures {
        WalFigures {
            database_bytes: file_len(&self.database_path),
            wal_bytes: self.wal_bytes(),
            wal_limit_bytes: self.limit_bytes,
            passive_checkpoints: self.passive.load(Ordering::Relaxed),
            restart_checkpoints: self.restart.load(Ordering::Relaxed),
            truncate_checkpoints: self.truncate.load(Ordering::Relaxed),
            restart_busy: self.restart_busy.load(Ordering::Relaxed),
            wal_peak_bytes: self.peak.load(Ordering::Relaxed),
        }
    }

    /// Run after every write, once the writer is free again: a look at the log, a nudge to the
    /// background task past half the limit, and past three quarters (the background
    /// task has fallen behind) the bound's last guard: the next write rewinds the log first.
    pub(super) fn look_after_write(&self) {
        self.peak.fetch_max(self.wal_bytes(), Ordering::Relaxed);
        let log = self.log_bytes();
        if log >= self.guard_from() {
            self.rewind_due.store(true, Ordering::Release);
        } else if log >= self.copy_from() {
            self.copy_now.notify_one();
        }
    }

    /// Whether the last look found the log past three quarters of its bound (and forgets it).
    pub(super) fn take_rewind_due(&self) -> bool {
        self.rewind_due.swap(false, Ordering::AcqRel)
    }

    /// The last guard of the bound, on the writer before its next write: a RESTART checkpoint
    /// that waits for the reads in progress.
    pub(super) async fn rewind_now(&self, conn: &mut SqliteConnection) -> Result<(), sqlx::Error> {
        let _copying = self.copying.lock().await;
        self.rewind(conn, true).await.map(|_| ())
    }

    /// `rewind_now` on the writer thread's connection, from that thread.
    pub(super) fn rewind_now_direct(&self, conn: &rusqlite::Connection) -> rusqlite::Result<()> {
        let _copying = self.copying.blocking_lock();
        let busy: i64 = conn.query_row("PRAGMA wal_checkpoint(RESTART)", [], |row| row.get(0))?;
        self.count(CheckpointKind::Restart, busy == 0);
        Ok(())
    }

    /// A RESTART checkpoint on the writer connection; `wait_for_readers` false makes it give up
    /// at once when a read is in progress. True when the log will start over at the next write.
    async fn rewind(&self, conn: &mut SqliteConnection, wait_for_readers: bool) -> Result<bool, sqlx::Error> {
        if !wait_for_readers {
            sqlx::query("PRAGMA busy_timeout = 0").execute(&mut *conn).await?;
        }
        let done = checkpoint(&mut *conn, CheckpointKind::Restart).await;
        if !wait_for_readers {
            sqlx::query(RESTORE_BUSY_TIMEOUT).execute(&mut *conn).await?;
        }
        let completed = done?.completed;
        self.count(CheckpointKind::Restart, completed);
        Ok(completed)
    }

    fn count(&self, kind: CheckpointKind, completed: bool) {
        let counter = match (kind, completed) {
            (CheckpointKind::Restart, false) => &self.restart_busy,
            (_, false) => return,
            (CheckpointKind::Passive, true) => &self.passive,
            (CheckpointKind::Restart, true) => &self.restart,
            (CheckpointKind::Truncate, true) => &self.truncate,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The background task (see the module comment). Ends when either pool is closed.
    pub(super) async fn run(&self, checkpointer: SqlitePool, writer: Arc<Writer>, beat: Beat) {
        let mut tick = tokio::time::interval(CHECKPOINT_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Idle means the log has not changed: claims that find nothing go through the writer
        // all the time, but write no frames.
        let (mut last_log, mut last_change) = (u64::MAX, Instant::now());
        // The store closes the checkpointer before the writer.
        while !checkpointer.is_closed() {
            tokio::select! {
                _ = tick.tick() => {}
                () = self.copy_now.notified() => {}
            }
            beat.tick();
            if self.log_bytes() != last_log {
                last_change = Instant::now();
            }
            let result = if self.log_bytes() >= self.copy_from() {
                self.copy_and_rewind(&checkpointer, &writer).await
            } else {
                self.passive(&checkpointer).await.map(|_| ())
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "WAL checkpoint failed; tried again shortly");
            }
            if last_change.elapsed() >= IDLE_AFTER && self.wal_bytes() > 0 {
                match self.truncate_through(&writer).await {
                    Ok(done) => self.count(CheckpointKind::Truncate, done.completed),
                    Err(e) => tracing::debug!(error = %e, "truncating the idle WAL failed"),
                }
            }
            // This task's own checkpoints change the log too; they are not new work.
            last_log = self.log_bytes();
        }
    }

    /// Copies the log with PASSIVE passes, each taking what the writes added during the one
    /// before, until a pass finds little new; then rewinds it through the writer, which by then
    /// holds up the writes only for that little.
    async fn copy_and_rewind(&self, checkpointer: &SqlitePool, writer: &Writer) -> Result<(), sqlx::Error> {
        let mut log_frames = 0;
        for _ in 0..MAX_COPY_PASSES {
            let before = log_frames;
            log_frames = self.passive(checkpointer).await?;
            if log_frames.saturating_sub(before) < SMALL_REMAINDER_FRAMES {
                break;
            }
        }
        for _ in 0..REWIND_TRIES {
            if self.rewind_through(writer, false).await? {
                return Ok(());
            }
            tokio::time::sleep(REWIND_RETRY_AFTER).await;
        }
        if self.log_bytes() >= self.wait_from() {
            self.rewind_through(writer, true).await?;
        }
        Ok(())
    }

    /// A PASSIVE checkpoint on the checkpointer's connection; returns the frames in the log.
    async fn passive(&self, checkpointer: &SqlitePool) -> Result<u64, sqlx::Error> {
        let _copying = self.copying.lock().await;
        let done = checkpoint_on(checkpointer, CheckpointKind::Passive).await?;
        self.count(CheckpointKind::Passive, done.completed);
        Ok(done.log_frames)
    }

    async fn rewind_through(&self, writer: &Writer, wait_for_readers: bool) -> Result<bool, sqlx::Error> {
        let mut conn = writer.lock().await?;
        self.rewind(&mut conn, wait_for_readers).await
    }

    async fn truncate_through(&self, writer: &Writer) -> Result<Checkpointed, sqlx::Error> {
        checkpoint(&mut *writer.lock().await?, CheckpointKind::Truncate).await
    }

    /// Empties the WAL through the writer: at shutdown, after every other connection closed.
    pub(super) async fn truncate(&self, writer: &Writer) {
        match self.truncate_through(writer).await {
            Ok(done) => self.count(CheckpointKind::Truncate, done.completed),
            Err(e) => tracing::warn!(error = %e, "could not truncate the WAL at shutdown"),
        }
    }
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// The log's size from the wal-index header (https://www.sqlite.org/walformat.html): the page
/// size as a u16 at byte 14 (1 meaning 65536) and `mxFrame`, the frames in use, as a u32 at
/// byte 16, both in the machine's byte order. A torn read only misjudges one look.
#[cfg(unix)]
fn read_log_bytes(shm_path: &Path) -> Option<u64> {
    use std::os::unix::fs::FileExt;
    let mut header = [0u8; 20];
    std::fs::File::open(shm_path).ok()?.read_exact_at(&mut header, 0).ok()?;
    let page = match u16::from_ne_bytes([header[14], header[15]]) {
        0 => return None,
        1 => 65_536,
        size => u64::from(size),
    };
    let frames = u64::from(u32::from_ne_bytes([header[16], header[17], header[18], header[19]]));
    Some(frames * (page + FRAME_HEADER_BYTES))
}

#[cfg(not(unix))]
fn read_log_bytes(_shm_path: &Path) -> Option<u64> {
    None
}

/// What a checkpoint reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Checkpointed {
    /// False when a read in progress or another checkpoint kept it from finishing.
    completed: bool,
    /// Frames in the log when it ran.
    log_frames: u64,
}

async fn checkpoint(conn: &mut SqliteConnection, kind: CheckpointKind) -> Result<Checkpointed, sqlx::Error> {
    let sql = match kind {
        CheckpointKind::Passive => "PRAGMA wal_checkpoint(PASSIVE)",
        CheckpointKind::Restart => "PRAGMA wal_checkpoint(RESTART)",
        CheckpointKind::Truncate => "PRAGMA wal_checkpoint(TRUNCATE)",
    };
    let (busy, log, _copied): (i64, i64, i64) = sqlx::query_as(sql).fetch_one(conn).await?;
    Ok(Checkpointed {
        completed: busy == 0,
        log_frames: u64::try_from(log).unwrap_or(0),
    })
}

async fn checkpoint_on(pool: &SqlitePool, kind: CheckpointKind) -> Result<Checkpointed, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    checkpoint(&mut conn, kind).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_restored_busy_timeout_is_the_writers() {
        assert_eq!(
            RESTORE_BUSY_TIMEOUT,
            format!("PRAGMA busy_timeout = {}", crate::db::sqlite::BUSY_TIMEOUT.as_millis())
        );
    }

    #[tokio::test]
    async fn the_wal_index_header_says_how_full_the_log_is() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("t.db");
        let db = crate::db::sqlite::connect(&path, DEFAULT_LIMIT_BYTES, &crate::liveness::Liveness::new())
            .await
            .expect("db");
        let monitor = db.wal();
        let shm = monitor.shm_path.clone();
        sqlx::query("CREATE TABLE t (x BLOB)")
            .execute(&mut *db.writer.lock().await.expect("writer"))
            .await
            .expect("create");
        sqlx::query("INSERT INTO t VALUES (zeroblob(100000))")
            .execute(&mut *db.writer.lock().await.expect("writer"))
            .await
            .expect("insert");
        let bytes = read_log_bytes(&shm).expect("header");
        // A PASSIVE checkpoint copies the log but does not empty it, and reports its frames.
        let frames = u64::try_from(frames(&db).await).expect("frames");
        assert!(bytes > 100_000, "{bytes}");
        assert_eq!(bytes, frames * (4096 + FRAME_HEADER_BYTES));
        crate::db::Store::close(&db).await;
    }

    /// The frames in the log, as SQLite itself reports them (once no other checkpoint runs).
    async fn frames(db: &crate::db::sqlite::SqliteStore) -> i64 {
        loop {
            let (busy, log, _): (i64, i64, i64) = sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)")
                .fetch_one(&mut *db.writer.lock().await.expect("writer"))
                .await
                .expect("checkpoint");
            if busy == 0 {
                return log;
            }
            tokio::task::yield_now().await;
        }
    }
}
