//! The one writer, owned outright rather than pooled. SQLite runs one write transaction at a
//! time whatever the connection count, so writes take turns in a fair queue (a tokio mutex).
//! A turn runs on one of two connections to the file:
//!
//! - **the writer thread's** (`run`), through `rusqlite`: the writes that hold the writer most
//!   (new requests, alone, grouped, or with their idempotency key; the claims; the completer's
//!   finish-and-claim), and the health check's write round trip, which goes their way. The
//!   thread takes the turn, runs the statement and hands the turn on itself, back to back with
//!   the next one queued. Through sqlx, a turn ended only once the task that took it was polled
//!   again after its statement: sqlx's SQLite thread woke the task, the task waited for a
//!   runtime thread busy with HTTP, and the writer sat held and idle meanwhile. On the benchmark
//!   VM the writer was held 80% of the time under tiny-job acks; with these turns on this
//!   thread, 46 to 55% for more acks (`docs/benchmarks-issue-9.md`, *2026-12-07, 13:00*);
//! - **sqlx's** (`lock`): every other write (the rescue, heartbeats, releases, deliveries, sync
//!   finishes, the purge, checkpoints), each a hand-off to sqlx's SQLite thread per statement.
//!
//! A pool of one cost more than an owned connection: sqlx's pool hands a released connection to
//! a task it spawns, which pings the connection (one more hand-off to the SQLite thread) before
//! the next write may have it. Measured on the benchmark VM: `SELECT 1` through a pool of one
//! took 140 to 280 µs, on the connection itself 67 µs.
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
use tokio::sync::{MappedMutexGuard, Mutex, MutexGuard, oneshot};
use tokio::time::Instant;

use super::wal::WalMonitor;

/// How long a write waits for its turn before it fails (as the pool's acquire timeout did): a
/// write stuck for this long means the database is unusable, and the caller answers 503 or
/// leaves the work to its lease.
const TURN_TIMEOUT: Duration = Duration::from_secs(30);

/// The writer, shared by every write of the store.
#[derive(Debug)]
pub(super) struct Writer {
    /// `None` once the store is closed.
    conns: Arc<Mutex<Option<Connections>>>,
    /// Turns for the writer thread, which ends when the writer is dropped.
    thread: std::sync::mpsc::Sender<Turn>,
    /// Told after every write how full the log is; says when the next write must rewind it.
    wal: Arc<WalMonitor>,
    clock: Arc<TurnClock>,
    /// How long a write waits for its turn: `TURN_TIMEOUT`, shorter in tests.
    turn_timeout: Duration,
}

/// The two connections of the writer; only the turn's holder uses either.
struct Connections {
    sqlx: SqliteConnection,
    direct: rusqlite::Connection,
}

impl std::fmt::Debug for Connections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connections").finish_non_exhaustive()
    }
}

/// A turn for the writer thread: when it was asked for, and the write, which runs on the
/// thread's connection with the writer held, or is told why it cannot run.
struct Turn {
    asked: std::time::Instant,
    /// Past this, the turn has waited too long and does not run.
    deadline: std::time::Instant,
    write: Box<dyn FnOnce(ConnOrWhyNot<'_>) + Send>,
}

/// What a turn on the writer thread gets: the connection, or why it cannot run.
type ConnOrWhyNot<'a> = Result<&'a mut rusqlite::Connection, sqlx::Error>;

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
    fn add(counter: &AtomicU64, elapsed: Duration) {
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        counter.fetch_add(ns, Ordering::Relaxed);
    }
}

/// The writer, held for one write on sqlx's connection (one statement or one transaction).
/// Dropping it hands the writer to the next write in line, after a look at the WAL.
pub(super) struct WriterGuard<'a> {
    /// Always `Some` until dropped.
    conn: Option<MappedMutexGuard<'a, SqliteConnection>>,
    wal: &'a WalMonitor,
    clock: &'a TurnClock,
    /// When the turn began.
    since: Instant,
}

impl Writer {
    /// The writer over `sqlx` and `direct`, two connections to one file, and its thread.
    pub(super) fn new(sqlx: SqliteConnection, direct: rusqlite::Connection, wal: Arc<WalMonitor>) -> Self {
        let conns = Arc::new(Mutex::new(Some(Connections { sqlx, direct })));
        let clock = Arc::new(TurnClock::default());
        let (thread, turns) = std::sync::mpsc::channel();
        let (loop_conns, loop_wal, loop_clock) = (conns.clone(), wal.clone(), clock.clone());
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || thread_loop(&loop_conns, &loop_wal, &loop_clock, turns))
            .expect("starting the SQLite writer thread");
        Self {
            conns,
            thread,
            wal,
            clock,
            turn_timeout: TURN_TIMEOUT,
        }
    }

    /// The same writer with another turn timeout.
    #[cfg(test)]
    fn with_turn_timeout(self, turn_timeout: Duration) -> Self {
        Self { turn_timeout, ..self }
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

    /// Runs `write` on the writer thread's connection in its turn, and returns what it returned.
    /// `PoolTimedOut`, with nothing written, when the turn did not come within the turn timeout;
    /// `PoolClosed` once the store is closed. Once a write has started, its caller waits for its
    /// outcome (SQLite's busy timeout bounds it), so a write never lands after its caller gave up.
    pub(super) async fn run<T: Send + 'static>(
        &self,
        write: impl FnOnce(&mut rusqlite::Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, sqlx::Error> {
        let (done, outcome) = oneshot::channel();
        let asked = std::time::Instant::now();
        let turn = Turn {
            asked,
            deadline: asked + self.turn_timeout,
            write: Box::new(move |conn| {
                let _ = done.send(conn.and_then(|conn| write(conn).map_err(direct_error)));
            }),
        };
        self.thread.send(turn).map_err(|_| sqlx::Error::PoolClosed)?;
        // No answer: the write panicked (the thread goes on with the next turn).
        outcome.await.unwrap_or(Err(sqlx::Error::WorkerCrashed))
    }

    /// Waits for a turn on sqlx's connection. Rewinds the WAL first when the last write found it
    /// past three quarters of its bound (the bound's last guard: the background copier fell
    /// behind).
    pub(super) async fn lock(&self) -> Result<WriterGuard<'_>, sqlx::Error> {
        let asked = Instant::now();
        let turn = tokio::time::timeout(self.turn_timeout, self.conns.lock())
            .await
            .map_err(|_| sqlx::Error::PoolTimedOut)?;
        TurnClock::add(&self.clock.waited_ns, asked.elapsed());
        self.clock.turns.fetch_add(1, Ordering::Relaxed);
        let since = Instant::now();
        let mut conn =
            MutexGuard::try_map(turn, |c| c.as_mut().map(|c| &mut c.sqlx)).map_err(|_| sqlx::Error::PoolClosed)?;
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

    /// Closes both connections once the writes in line have had their turn; later writes fail
    /// with `PoolClosed`.
    pub(super) async fn close(&self) {
        if let Some(Connections { sqlx, direct }) = self.conns.lock().await.take() {
            use sqlx::Connection;
            if let Err(e) = sqlx.close().await {
                tracing::warn!(error = %e, "closing the SQLite writer failed");
            }
            if let Err((_, e)) = direct.close() {
                tracing::warn!(error = %e, "closing the SQLite writer thread's connection failed");
            }
        }
    }
}

/// The writer thread: each turn in the order sent, each with the writer held for exactly its
/// statements (and the WAL's last guard, when due), as `lock` and `WriterGuard` do for sqlx's.
/// A turn that waited past its deadline (the turn timeout) does not run; one that panics loses
/// its answer, and the thread goes on.
fn thread_loop(
    conns: &Mutex<Option<Connections>>,
    wal: &WalMonitor,
    clock: &TurnClock,
    turns: std::sync::mpsc::Receiver<Turn>,
) {
    for Turn { asked, deadline, write } in turns {
        let mut held = conns.blocking_lock();
        let since = std::time::Instant::now();
        TurnClock::add(&clock.waited_ns, since - asked);
        clock.turns.fetch_add(1, Ordering::Relaxed);
        let Some(c) = held.as_mut() else {
            write(Err(sqlx::Error::PoolClosed));
            continue;
        };
        if since > deadline {
            drop(held);
            write(Err(sqlx::Error::PoolTimedOut));
            continue;
        }
        if wal.take_rewind_due()
            && let Err(e) = wal.rewind_now_direct(&c.direct)
        {
            tracing::warn!(error = %e, "rewinding the WAL failed");
        }
        let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| write(Ok(&mut c.direct))));
        if ran.is_err() {
            tracing::error!("a write on the SQLite writer thread panicked");
        }
        TurnClock::add(&clock.held_ns, since.elapsed());
        drop(held);
        wal.look_after_write();
    }
}

/// A failure on the writer thread's connection, as sqlx's: busy, locked and I/O failures as
/// `Io` (transient, as `crate::db::is_transient` takes sqlx's), anything else as `Protocol`.
pub(super) fn direct_error(e: rusqlite::Error) -> sqlx::Error {
    use rusqlite::ErrorCode::{DatabaseBusy, DatabaseLocked, DiskFull, SystemIoFailure};
    match e.sqlite_error_code() {
        Some(DatabaseBusy | DatabaseLocked | DiskFull | SystemIoFailure) => sqlx::Error::Io(std::io::Error::other(e)),
        _ => sqlx::Error::Protocol(e.to_string()),
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
        TurnClock::add(&self.clock.held_ns, self.since.elapsed());
        drop(self.conn.take());
        self.wal.look_after_write();
    }
}

#[cfg(test)]
mod tests {
    use sqlx::Connection;
    use sqlx::sqlite::SqliteConnectOptions;

    use super::*;

    /// A writer on a new file in `dir`, both connections in WAL mode.
    async fn writer_in(dir: &tempfile::TempDir) -> Arc<Writer> {
        let path = dir.path().join("writer.db");
        let options = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal);
        let conn = SqliteConnection::connect_with(&options).await.expect("connect");
        let direct = rusqlite::Connection::open(&path).expect("direct");
        Arc::new(Writer::new(conn, direct, Arc::new(WalMonitor::new(&path, 64 << 20))))
    }

    #[tokio::test]
    async fn the_writer_counts_its_turns_and_the_time_they_held_it_and_waited() {
        let dir = tempfile::tempdir().expect("temp dir");
        let writer = writer_in(&dir).await;
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

    #[tokio::test]
    async fn a_turn_on_the_writer_thread_waits_for_a_turn_on_sqlx_connection_to_end() {
        let dir = tempfile::tempdir().expect("temp dir");
        let writer = writer_in(&dir).await;
        sqlx::query("CREATE TABLE t (x INTEGER)")
            .execute(&mut *writer.lock().await.expect("turn"))
            .await
            .expect("create");

        // sqlx's turn holds SQLite's write lock in an open transaction...
        let mut turn = writer.lock().await.expect("turn");
        sqlx::query("BEGIN IMMEDIATE").execute(&mut *turn).await.expect("begin");
        sqlx::query("INSERT INTO t VALUES (1)")
            .execute(&mut *turn)
            .await
            .expect("insert");
        // ...so a write on the thread's connection that ran now would fail at once (no busy
        // wait): it must wait for the turn instead.
        let thread_write = tokio::spawn({
            let writer = writer.clone();
            async move {
                writer
                    .run(|conn| {
                        conn.busy_timeout(Duration::ZERO)?;
                        conn.execute("INSERT INTO t VALUES (2)", [])
                    })
                    .await
            }
        });
        let mut thread_write = thread_write;
        let early = tokio::time::timeout(Duration::from_millis(200), &mut thread_write).await;
        assert!(early.is_err(), "the thread's write ran during sqlx's turn: {early:?}");
        sqlx::query("COMMIT").execute(&mut *turn).await.expect("commit");
        drop(turn);

        assert_eq!(thread_write.await.expect("task").expect("the thread's write"), 1);
        let rows: Vec<(i64,)> = sqlx::query_as("SELECT x FROM t ORDER BY x")
            .fetch_all(&mut *writer.lock().await.expect("turn"))
            .await
            .expect("read");
        assert_eq!(rows, [(1,), (2,)]);
        assert_eq!(
            writer.figures().turns,
            4,
            "three turns on sqlx's connection, one on the thread's"
        );
    }

    #[tokio::test]
    async fn once_closed_a_turn_on_the_writer_thread_fails_rather_than_waiting() {
        let dir = tempfile::tempdir().expect("temp dir");
        let writer = writer_in(&dir).await;
        assert_eq!(
            writer
                .run(|conn| conn.query_row("SELECT 7", [], |r| r.get::<_, i64>(0)))
                .await
                .expect("open"),
            7
        );
        writer.close().await;
        let closed = writer
            .run(|conn| conn.query_row("SELECT 7", [], |r| r.get::<_, i64>(0)))
            .await;
        assert!(matches!(closed, Err(sqlx::Error::PoolClosed)), "{closed:?}");
        assert!(matches!(writer.lock().await, Err(sqlx::Error::PoolClosed)));
    }

    #[tokio::test]
    async fn a_turn_on_the_writer_thread_that_waited_past_the_turn_timeout_writes_nothing() {
        let dir = tempfile::tempdir().expect("temp dir");
        let timeout = Duration::from_millis(50);
        let writer = Arc::new(
            Arc::into_inner(writer_in(&dir).await)
                .expect("one owner")
                .with_turn_timeout(timeout),
        );
        sqlx::query("CREATE TABLE t (x INTEGER)")
            .execute(&mut *writer.lock().await.expect("turn"))
            .await
            .expect("create");

        let turn = writer.lock().await.expect("turn");
        let late_write = tokio::spawn({
            let writer = writer.clone();
            async move { writer.run(|conn| conn.execute("INSERT INTO t VALUES (1)", [])).await }
        });
        // Held past the timeout: when the writer is free again, the queued turn is too late.
        tokio::time::sleep(timeout * 2).await;
        drop(turn);

        let late = late_write.await.expect("task");
        assert!(matches!(late, Err(sqlx::Error::PoolTimedOut)), "{late:?}");
        let rows: (i64,) = sqlx::query_as("SELECT count(*) FROM t")
            .fetch_one(&mut *writer.lock().await.expect("turn"))
            .await
            .expect("count");
        assert_eq!(rows.0, 0, "a write whose caller was told it timed out must not land");
    }

    #[tokio::test]
    async fn a_write_that_panics_on_the_writer_thread_fails_alone_and_the_thread_goes_on() {
        let dir = tempfile::tempdir().expect("temp dir");
        let writer = writer_in(&dir).await;
        let panicked = writer
            .run(|_| -> rusqlite::Result<()> { panic!("a bug in a write") })
            .await;
        assert!(matches!(panicked, Err(sqlx::Error::WorkerCrashed)), "{panicked:?}");
        let next = writer
            .run(|conn| conn.query_row("SELECT 7", [], |r| r.get::<_, i64>(0)))
            .await;
        assert_eq!(next.expect("the next turn"), 7);
        // The writer is free again for sqlx's connection too.
        drop(writer.lock().await.expect("a turn on sqlx's connection"));
    }

    #[test]
    fn the_thread_s_busy_and_i_o_failures_are_transient_and_its_other_failures_are_not() {
        let conn = rusqlite::Connection::open_in_memory().expect("memory");
        conn.execute_batch("CREATE TABLE t (x INTEGER PRIMARY KEY); INSERT INTO t VALUES (1)")
            .expect("table");
        let duplicate = conn
            .execute("INSERT INTO t VALUES (1)", [])
            .expect_err("a duplicate key");
        assert!(!crate::db::is_transient(&direct_error(duplicate)));

        let busy = rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY), None);
        assert!(crate::db::is_transient(&direct_error(busy)));
        let io = rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_IOERR_WRITE), None);
        assert!(crate::db::is_transient(&direct_error(io)));
    }
}
