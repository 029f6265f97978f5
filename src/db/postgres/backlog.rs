//! The cluster's backlog (async jobs waiting to be claimed) for the `Retry-After` estimate of
//! every 202, read at most once per `FRESH_FOR` per replica. (It was a `count(*)`, an index scan
//! as long as the backlog that cost more than the insert itself once the backlog held a few
//! thousand jobs; it now sums the running totals, but a read per 202 would still be a round trip
//! per request.) The figure also lets inserts skip reading the backlog while it is far below the
//! limit. `/metrics` and `/healthz` read it fresh; the backlog *limit* is checked by the insert
//! statement itself.

use std::sync::{Mutex as SyncMutex, PoisonError};
use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio::sync::Mutex;

/// How stale the figure may be.
const FRESH_FOR: Duration = Duration::from_millis(200);
/// How far below the limit a figure must be for an insert to skip its own count. In
/// `SKIP_COUNT_FOR` the whole cluster adds far fewer jobs than this, so the limit still holds.
const SKIP_COUNT_MARGIN: u64 = 65_536;
/// How old a figure may be for an insert to skip its count: twice `FRESH_FOR`, so that the
/// figure stays usable while the next count runs.
const SKIP_COUNT_FOR: Duration = Duration::from_millis(400);

#[derive(Debug, Default)]
pub(super) struct BacklogCount {
    /// The last count and when it was taken: read without waiting, also while a count runs.
    /// (Read through the counting lock, as before, every insert committed during a count
    /// counted the whole backlog itself.)
    last: SyncMutex<Option<(Instant, u64)>>,
    /// Held while counting, so that one caller counts at a time.
    counting: Mutex<()>,
}

impl BacklogCount {
    fn last(&self) -> Option<(Instant, u64)> {
        *self.last.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The last figure if it is younger than `age`.
    fn younger_than(&self, age: Duration) -> Option<u64> {
        self.last().and_then(|(at, n)| (at.elapsed() < age).then_some(n))
    }

    /// Whether a recent figure puts the backlog so far below `limit` that an insert need not
    /// read it again in its statement.
    pub(super) fn far_below(&self, limit: u64) -> bool {
        self.younger_than(SKIP_COUNT_FOR)
            .is_some_and(|n| n.saturating_add(SKIP_COUNT_MARGIN) < limit)
    }

    /// The backlog as of at most `FRESH_FOR` ago. While one caller counts, the others take the
    /// previous figure rather than queue behind it.
    pub(super) async fn get(&self, pool: &PgPool) -> Result<u64, sqlx::Error> {
        if let Some(n) = self.younger_than(FRESH_FOR) {
            return Ok(n);
        }
        let _counting = match self.counting.try_lock() {
            Ok(guard) => guard,
            Err(_) => {
                // Someone is counting: wait for that count only when there is no figure yet.
                if let Some((_, n)) = self.last() {
                    return Ok(n);
                }
                let guard = self.counting.lock().await;
                if let Some((_, n)) = self.last() {
                    return Ok(n);
                }
                guard
            }
        };
        // A count that ended while this caller took the lock is fresh enough.
        if let Some(n) = self.younger_than(FRESH_FOR) {
            return Ok(n);
        }
        let n = super::reads::backlog(pool).await?;
        self.record(n);
        Ok(n)
    }

    fn record(&self, n: u64) {
        *self.last.lock().unwrap_or_else(PoisonError::into_inner) = Some((Instant::now(), n));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_count_in_progress_does_not_make_inserts_count_for_themselves() {
        let backlog = BacklogCount::default();
        assert!(!backlog.far_below(1_000_000), "no figure yet: the insert counts");
        backlog.record(10);
        assert!(backlog.far_below(1_000_000));
        assert!(
            !backlog.far_below(10 + SKIP_COUNT_MARGIN),
            "too close to the limit to skip"
        );
        // The next count takes the lock; the figure stays readable meanwhile.
        let _counting = backlog.counting.lock().await;
        assert!(backlog.far_below(1_000_000));
    }

    #[test]
    fn a_figure_older_than_the_skip_window_makes_inserts_count() {
        let backlog = BacklogCount::default();
        let Some(old) = Instant::now().checked_sub(SKIP_COUNT_FOR) else {
            return; // a clock this close to its start cannot hold an old figure
        };
        *backlog.last.lock().expect("lock") = Some((old, 10));
        assert!(!backlog.far_below(1_000_000));
        assert_eq!(backlog.younger_than(FRESH_FOR), None);
    }
}
