//! How replicas wake each other: the application sends NOTIFY (no per-row trigger) at most once
//! per `NOTIFY_INTERVAL` per replica and kind, and every replica LISTENs on one channel and
//! wakes its claimers. A poll of at most a second stays the safety net for a lost notification.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::Notify;

use crate::db::Wakeups;
use crate::liveness::Beat;

/// The channel every replica listens on; the payload says what there is: `jobs` or `deliveries`.
const CHANNEL: &str = "sync_async_work";
/// How often the listener ticks its beat while its connection is open.
pub(super) const LISTEN_TICK: Duration = Duration::from_secs(1);

/// Debounced NOTIFY: `jobs()` and `deliveries()` only mark that there is news; a task sends one
/// notification per kind, then waits out the interval before it sends another.
#[derive(Debug, Default)]
pub(super) struct Announcer {
    jobs: Notify,
    deliveries: Notify,
}

impl Announcer {
    pub(super) fn start(pool: PgPool, interval: Duration) -> Arc<Self> {
        let announcer = Arc::new(Self::default());
        for kind in ["jobs", "deliveries"] {
            let (announcer, pool) = (Arc::downgrade(&announcer), pool.clone());
            tokio::spawn(async move {
                while let Some(news) = announcer.upgrade() {
                    let waiting = async {
                        match kind {
                            "jobs" => news.jobs.notified().await,
                            _ => news.deliveries.notified().await,
                        }
                    };
                    tokio::select! {
                        () = waiting => {}
                        () = pool.close_event() => break,
                    }
                    drop(news);
                    if let Err(e) = sqlx::query("SELECT pg_notify($1, $2)")
                        .bind(CHANNEL)
                        .bind(kind)
                        .execute(&pool)
                        .await
                    {
                        tracing::debug!(error = %e, kind, "NOTIFY failed; the other replicas' polls will find the work");
                    }
                    tokio::time::sleep(interval).await;
                }
            });
        }
        announcer
    }

    /// There are new jobs to claim.
    pub(super) fn jobs(&self) {
        self.jobs.notify_one();
    }

    /// There are deliveries due.
    pub(super) fn deliveries(&self) {
        self.deliveries.notify_one();
    }
}

/// Starts the listener: it wakes this replica's claimers on each notification, reconnects when
/// its connection is lost (waking them once, for what it may have missed), and ticks `beat` only
/// while its connection answers, so that `/healthz` shows a lost listener.
pub(super) fn listen(pool: PgPool, wake: Wakeups, beat: Beat) {
    tokio::spawn(async move {
        let mut retry_in = Duration::from_millis(100);
        loop {
            match listen_until_lost(&pool, &wake, &beat).await {
                Ok(()) => break,
                Err(e) => tracing::warn!(error = %e, "LISTEN connection lost; reconnecting"),
            }
            wake.jobs.notify_one();
            wake.deliveries.notify_one();
            tokio::select! {
                () = tokio::time::sleep(retry_in) => {}
                () = pool.close_event() => break,
            }
            retry_in = (retry_in * 2).min(Duration::from_secs(2));
        }
    });
}

/// Listens until the pool closes (`Ok`) or the connection fails (`Err`). The beat ticks while
/// the connection is open: a lost connection ends `try_recv` at once (PostgreSQL closes it, or
/// the socket reports it), and reconnecting does not tick until it succeeds.
async fn listen_until_lost(pool: &PgPool, wake: &Wakeups, beat: &Beat) -> Result<(), sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(CHANNEL).await?;
    let mut ticker = tokio::time::interval(LISTEN_TICK);
    loop {
        // The receive is never cancelled midway (that could cut a message in half): it is
        // polled to its end while the ticker ticks beside it.
        let received = {
            let recv = listener.try_recv();
            tokio::pin!(recv);
            loop {
                tokio::select! {
                    received = &mut recv => break received,
                    _ = ticker.tick() => beat.tick(),
                }
            }
        };
        match received {
            Ok(Some(notification)) => match notification.payload() {
                "deliveries" => wake.deliveries.notify_one(),
                _ => wake.jobs.notify_one(),
            },
            Ok(None) => return Err(sqlx::Error::Protocol("the LISTEN connection closed".into())),
            Err(sqlx::Error::PoolClosed) => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}
