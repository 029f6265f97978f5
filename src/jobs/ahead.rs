//! Claiming ahead of the workers, for tiny jobs on SQLite. A worker that finishes hands its
//! outcome and its slot to the completer, and its next job comes from the write that stores the
//! outcome: with jobs that run for microseconds, the workers spent most of their time waiting
//! for that write. Places in the hand-over channel beyond the workers' own let jobs claimed
//! ahead wait there, so a worker takes its next job at once and the write runs beside the work.
//!
//! The places open only while jobs are tiny (every run of the last batch under `TINY`): a job
//! claimed ahead is `processing` before its worker starts it, and with jobs that take seconds
//! that would show jobs as running that wait, and take them out of the backlog `MAX_QUEUE_SIZE`
//! bounds. Behind tiny jobs, a job claimed ahead waits for about as many of them as there are
//! places per worker (eight by default): tens of milliseconds at most.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Jobs whose runs all took less than this are tiny: claiming ahead of them pays.
pub(super) const TINY: Duration = Duration::from_millis(5);

/// The extra places of the slot semaphore, opened and closed by the completer after each batch.
#[derive(Debug)]
pub(super) struct ClaimAhead {
    slots: Arc<Semaphore>,
    /// CLAIM_AHEAD: the places opened for tiny jobs (0 on PostgreSQL: never).
    most: usize,
    /// The extra places that exist now, free or held by a claimed job.
    open: usize,
    /// `open`, for /metrics.
    shown: Gauge,
}

impl ClaimAhead {
    pub(super) fn new(slots: Arc<Semaphore>, most: usize, shown: Gauge) -> Self {
        shown.set(0);
        Self {
            slots,
            most,
            open: 0,
            shown,
        }
    }

    /// After a batch whose longest run took `longest` (`None`: no run finished, such as a batch of
    /// failures): opens the extra places when every run was tiny, closes them when one was not.
    /// A place closes when its slot is free or in `slots`, the batch's slots, which are then
    /// fewer; one held by a job in flight closes at a later batch.
    pub(super) fn after_batch(&mut self, longest: Option<Duration>, slots: &mut Vec<OwnedSemaphorePermit>) {
        let Some(longest) = longest else { return };
        if longest < TINY {
            if self.open < self.most {
                self.slots.add_permits(self.most - self.open);
                self.open = self.most;
            }
        } else {
            while self.open > 0 {
                match slots.pop() {
                    Some(slot) => slot.forget(),
                    None => break,
                }
                self.open -= 1;
            }
            self.open -= self.slots.forget_permits(self.open);
        }
        self.shown.set(i64::try_from(self.open).unwrap_or(i64::MAX));
    }

    /// The extra places open now.
    pub(super) fn open(&self) -> usize {
        self.open
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SLOW: Option<Duration> = Some(Duration::from_millis(50));
    const QUICK: Option<Duration> = Some(Duration::from_micros(20));

    #[test]
    fn tiny_jobs_open_the_extra_places_and_a_slow_one_closes_them() {
        let slots = Arc::new(Semaphore::new(2));
        let mut ahead = ClaimAhead::new(slots.clone(), 3, Gauge::default());

        ahead.after_batch(SLOW, &mut Vec::new());
        assert_eq!(
            (ahead.open(), slots.available_permits()),
            (0, 2),
            "slow jobs: the workers' slots only"
        );
        ahead.after_batch(QUICK, &mut Vec::new());
        assert_eq!((ahead.open(), slots.available_permits()), (3, 5));
        ahead.after_batch(QUICK, &mut Vec::new());
        assert_eq!(slots.available_permits(), 5, "opened once");

        // Every slot taken, then all but the batch's one given back.
        let in_flight = slots.clone().try_acquire_many_owned(4).expect("four slots");
        let mut batch = vec![slots.clone().try_acquire_owned().expect("the last slot")];
        drop(in_flight);
        ahead.after_batch(SLOW, &mut batch);
        assert!(batch.is_empty(), "the batch's slot closed a place");
        assert_eq!((ahead.open(), slots.available_permits()), (0, 2));
    }

    #[test]
    fn a_place_held_in_flight_closes_at_a_later_batch() {
        let slots = Arc::new(Semaphore::new(1));
        let mut ahead = ClaimAhead::new(slots.clone(), 2, Gauge::default());
        ahead.after_batch(QUICK, &mut Vec::new());
        let held = slots.clone().try_acquire_many_owned(3).expect("every slot");

        ahead.after_batch(SLOW, &mut Vec::new());
        assert_eq!(ahead.open(), 2, "nothing free to close yet");
        drop(held);
        let mut batch = vec![slots.clone().try_acquire_owned().expect("a slot")];
        ahead.after_batch(SLOW, &mut batch);

        assert!(batch.is_empty());
        assert_eq!((ahead.open(), slots.available_permits()), (0, 1));
    }

    #[test]
    fn postgres_never_opens_a_place() {
        let slots = Arc::new(Semaphore::new(2));
        let mut ahead = ClaimAhead::new(slots.clone(), 0, Gauge::default());
        ahead.after_batch(QUICK, &mut Vec::new());
        assert_eq!((ahead.open(), slots.available_permits()), (0, 2));
    }

    #[test]
    fn a_batch_without_runs_changes_nothing() {
        let slots = Arc::new(Semaphore::new(2));
        let mut ahead = ClaimAhead::new(slots.clone(), 2, Gauge::default());
        ahead.after_batch(QUICK, &mut Vec::new());
        ahead.after_batch(None, &mut Vec::new());
        assert_eq!(slots.available_permits(), 4);
    }
}
