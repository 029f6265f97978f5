//! The cluster's backlog (async jobs waiting to be claimed) for the `Retry-After` estimate of
//! every 202, counted at most once per `FRESH_FOR` per replica: a count is an index scan as long
//! as the backlog, and counted per request it cost more than the insert itself once the backlog
//! held a few thousand jobs. `/metrics` and `/healthz` count exactly; the backlog *limit* is
//! checked by the insert statement itself.

use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio::sync::Mutex;

/// How stale the figure may be.
const FRESH_FOR: Duration = Duration::from_millis(200);
/// How far below the limit a fresh figure must be for an insert to skip its own count. In
/// `FRESH_FOR` the whole cluster adds far fewer jobs than this, so the limit still holds.
const SKIP_COUNT_MARGIN: u64 = 65_536;

#[derive(Debug, Default)]
pub(super) struct BacklogCount {
    /// The last count and when it was taken; the lock is held while counting.
    last: Mutex<Option<(Instant, u64)>>,
}

impl BacklogCount {
    /// Whether a fresh figure puts the backlog so far below `limit` that an insert need not
    /// count it again (with a large MAX_QUEUE_SIZE, that count reads the whole backlog).
    pub(super) fn far_below(&self, limit: u64) -> bool {
        let Ok(last) = self.last.try_lock() else {
            return false;
        };
        last.is_some_and(|(at, n)| at.elapsed() < FRESH_FOR && n.saturating_add(SKIP_COUNT_MARGIN) < limit)
    }

    /// The backlog as of at most `FRESH_FOR` ago. While one caller counts, the others take the
    /// previous figure rather than queue behind it.
    pub(super) async fn get(&self, pool: &PgPool) -> Result<u64, sqlx::Error> {
        let mut last = match self.last.try_lock() {
            Ok(guard) => guard,
            Err(_) => {
                // Someone is counting: wait for that count only when there is no figure yet.
                let guard = self.last.lock().await;
                if let Some((_, n)) = *guard {
                    return Ok(n);
                }
                guard
            }
        };
        if let Some((at, n)) = *last
            && at.elapsed() < FRESH_FOR
        {
            return Ok(n);
        }
        let n = super::reads::backlog(pool).await?;
        *last = Some((Instant::now(), n));
        Ok(n)
    }
}
