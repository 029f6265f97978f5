//! The one connection that writes, owned outright rather than pooled. SQLite runs one write
//! transaction at a time whatever the connection count, so writes take turns for this
//! connection in a fair queue (a tokio mutex), and each write costs one hand-off to sqlx's SQLite
//! thread per statement and nothing else.
//!
//! A pool of one cost more: sqlx's pool hands a released connection to a task it spawns, which
//! pings the connection (one more hand-off to the SQLite thread) before the next write may have
//! it. Measured on the benchmark VM: `SELECT 1` through a pool of one took 140 to 280 µs, on the
//! connection itself 67 µs. Every claim, finish and group commit paid that toll, and the claims
//! of tiny jobs waited for the finishes that paid it.
//!
//! The writer counts its turns, the time they held it and the time writes waited for it
//! (`WriterFigures`, in `/metrics`): held for most of the wall time means the writer is what
//! limits the writes, whatever the CPU shows.
//!
//! After each write the WAL's fill is looked at (`WalMonitor::look_after_write`, a small read of
//! the wal-index); a rewind that look found due runs at the start of the next write, before that
//! write's statements, as the pool's release hook used to run it.

use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sqlx::SqliteConnection;
use tokio::sync::{MappedMutexGuard, Mutex, MutexGuard};
use tokio::time::Instant;

use super::wal::WalMonitor;

/// How long a write waits for its turn before it fails (as the pool's acquire timeout did): a
/// write stuck for this long means the database is unusable, and the caller answers 503 or
/// leaves the work to its lease.
const TURN_TIMEOUT: Duration = Duration::from_secs(30);

/// The writer connection, shared by every write of the store.
#[derive(Debug)]
pub(super) struct Writer {
    /// `None` once the store is closed.
    conn: Mutex<Option<SqliteConnection>>,
    /// Told after every write how full the log is; says when the next write must rewind it.
    wal: Arc<WalMonitor>,
    clock: TurnClock,
}

/// The writer's turns since start, and how long they held it and waited for it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct WriterFigures {
    pub turns: u64,
    pub held_seconds: f64,
    pub waited_seconds: f64,
}

/// `WriterFigures`' counts, in nanoseconds.
#[derive(Debug, Default)]
struct TurnClock {
    turns: AtomicU64,
    held_ns: AtomicU64,
    waited_ns: AtomicU64,
}

impl TurnClock {
    fn add(counter: &AtomicU64, since: Instant) {
        let ns = u64::try_from(since.elapsed().as_nanos()).unwrap_or(u64::MAX);
        counter.fetch_add(ns, Ordering::Relaxed);
    }
}

/// The writer, held for one write (one statement or one transaction). Dropping it hands the
/// connection to the next write in line, after a look at the WAL.
pub(super) struct WriterGuard<'a> {
    /// Always `Some` until dropped.
    conn: Option<MappedMutexGuard<'a, SqliteConnection>>,
    wal: &'a WalMonitor,
    clock: &'a TurnClock,
    /// When the turn began.
    since: Instant,
}

impl Writer {
    pub(super) fn new(conn: SqliteConnection, wal: Arc<WalMonitor>) -> Self {
        Self {
            conn: Mutex::new(Some(conn)),
            wal,
            clock: TurnClock::default(),
        }
    }

    /// The turns since start, and the time they held the writer and waited for it.
    pub(super) fn figures(&self) -> WriterFigures {
        let seconds = |ns: &AtomicU64| Duration::from_nanos(ns.load(Ordering::Relaxed)).as_secs_f64();
        WriterFigures {
            turns: self.clock.turns.load(Ordering::Relaxed),
            held_seconds: seconds(&self.clock.held_ns),
            waited_seconds: seconds(&self.clock.waited_ns),
        }
    }

    /// Waits for this write's turn. Rewinds the WAL first when the last write found it past
    /// three quarters of its bound (the bound's last guard: the background copier fell behind).
    pub(super) async fn lock(&self) -> Result<WriterGuard<'_>, sqlx::Error> {
        let asked = Instant::now();
        let turn = tokio::time::timeout(TURN_TIMEOUT, self.conn.lock())
            .await
            .map_err(|_| sqlx::Error::PoolTimedOut)?;
        TurnClock::add(&self.clock.waited_ns, asked);
        self.clock.turns.fetch_add(1, Ordering::Relaxed);
        let since = Instant::now();
        let mut conn = MutexGuard::try_map(turn, Option::as_mut).map_err(|_| sqlx::Error::PoolClosed)?;
        if self.wal.take_rewind_due() {
            self.wal.rewind_now(&mut conn).await?;
        }
        Ok(WriterGuard {
            conn: Some(conn),
            wal: &self.wal,
            clock: &self.clock,
            since,
        })
    }

    /// Closes the connection once the writes in line have had their turn; later writes fail
    /// with `PoolClosed`.
    pub(super) async fn close(&self) {
        if let Some(conn) = self.conn.lock().await.take() {
            use sqlx::Connection;
            if let Err(e) = conn.close().await {
                tracing::warn!(error = %e, "closing the SQLite writer failed");
            }
        }
    }
}

impl Deref for WriterGuard<'_> {
    type Target = SqliteConnection;

    fn deref(&self) -> &SqliteConnection {
        self.conn
            .as_deref()
            .expect("a guard holds the connection until it is dropped")
    }
}

impl DerefMut for WriterGuard<'_> {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        self.conn
            .as_deref_mut()
            .expect("a guard holds the connection until it is dropped")
    }
}

impl Drop for WriterGuard<'_> {
    fn drop(&mut self) {
        // The next write may start while this one's look at the log runs.
        TurnClock::add(&self.clock.held_ns, self.since);
        drop(self.conn.take());
        self.wal.look_after_write();
    }
}

#[cfg(test)]
mod tests {
    use sqlx::Connection;
    use sqlx::sqlite::SqliteConnectOptions;

    use super::*;

    #[tokio::test]
    async fn the_writer_counts_its_turns_and_the_time_they_held_it_and_waited() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("writer.db");
        let conn = SqliteConnection::connect_with(&SqliteConnectOptions::new().filename(&path).create_if_missing(true))
            .await
            .expect("connect");
        let writer = Arc::new(Writer::new(conn, Arc::new(WalMonitor::new(&path, 64 << 20))));
        assert_eq!(writer.figures(), WriterFigures::default());

        // Paused time: the turn below holds the writer for exactly 40 ms of the test's clock.
        tokio::time::pause();
        let first = writer.lock().await.expect("first turn");
        let second = tokio::spawn({
            let writer = writer.clone();
            async move { drop(writer.lock().await.expect("second turn")) }
        });
        tokio::task::yield_now().await; // the second write now waits for its turn
        tokio::time::advance(Duration::from_millis(40)).await;
        drop(first);
        second.await.expect("second write");

        let figures = writer.figures();
        assert_eq!(figures.turns, 2);
        assert!(figures.held_seconds >= 0.040, "{figures:?}");
        assert!(
            figures.waited_seconds >= 0.040,
            "the second write waited the first out: {figures:?}"
        );
        assert!(figures.waited_seconds < 0.080, "{figures:?}");
    }
}
