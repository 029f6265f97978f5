//! A replica's reservations from the cluster-wide rate limit. Asking PostgreSQL once per request
//! makes one row per client the hottest row in the database: every request of that client waits
//! for the one before it to commit (about 450 requests a second on the benchmark machine). With a
//! large limit, a replica instead takes a small batch of tokens in one upsert and spends them
//! locally, for a short while.
//!
//! The tokens are taken from the shared budget before they are spent, so the cluster never
//! admits more than the budget allows at the moment of reservation; a token spent up to `HOLD`
//! after it was taken can move an admission that much later, so over any window the cluster
//! admits at most the limit plus `rate × HOLD` (1/600 of the burst for a 60 s window). Tokens not
//! spent within `HOLD` are dropped, which can only admit less. With a limit of under 200 requests
//! per window the batch is one token: every request asks the database, exactly as before.
//!
//! One request per key takes the next batch; the others of that key that find no token wait for
//! it (`taking`, at most `HOLD`) and then spend from it. Without that, every request that arrived
//! while a batch was on its way took a batch of its own, and each batch kept replaced the one
//! before: at 6,000 tiny-job acks a second from 30 connections, a replica sent about 410 upserts
//! a second, each taking 64 tokens, four times the tokens it spent.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::LimitKey;

/// How long reserved tokens stay spendable.
pub(super) const HOLD: Duration = Duration::from_millis(100);
/// The largest batch: enough to take the row off the hot path at thousands of requests a second.
const MAX_BATCH: u32 = 64;
/// A batch is at most this share of the burst, so one replica cannot hold much of a small limit.
const BURST_SHARE: u32 = 100;
/// Past this many keys, spent and expired reservations are swept before another is stored.
const SWEEP_AT: usize = 4_096;
/// The locks that let one request per key take a batch, one lock per stripe of keys: a fixed
/// number, so that no lock needs to be forgotten.
const STRIPES: usize = 64;

/// How many tokens to take at once for a burst of `burst`.
pub(super) fn batch_for(burst: u32) -> u32 {
    (burst / BURST_SHARE).clamp(1, MAX_BATCH)
}

#[derive(Debug, Clone, Copy)]
struct Reservation {
    left: u32,
    until: Instant,
}

/// The tokens this replica holds, per key.
#[derive(Debug)]
pub(super) struct Reservations {
    held: Mutex<HashMap<LimitKey, Reservation>>,
    /// Held by the request taking a key's next batch (`STRIPES` of them).
    taking: Box<[tokio::sync::Mutex<()>]>,
}

impl Default for Reservations {
    fn default() -> Self {
        Self {
            held: Mutex::default(),
            taking: (0..STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
        }
    }
}

impl Reservations {
    /// Waits until no other request of this replica is taking a batch for `key` (or for another
    /// key of its stripe), and holds that place until the guard drops. A request that finds no
    /// token takes it, spends again (the batch it waited for may have arrived), and only then
    /// asks the database. `None` after `HOLD`: when the database is slow or out of reach, the
    /// requests of one client ask it side by side, as before, rather than one after another.
    pub(super) async fn taking(&self, key: &LimitKey) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        let mut hasher = std::hash::DefaultHasher::new();
        key.hash(&mut hasher);
        let stripe = usize::try_from(hasher.finish() % STRIPES as u64).unwrap_or(0);
        tokio::time::timeout(HOLD, self.taking[stripe].lock()).await.ok()
    }

    /// Spends one held token of `key`, if one is left and still fresh at `now`; returns how
    /// many are left after it.
    pub(super) fn spend(&self, key: &LimitKey, now: Instant) -> Option<u32> {
        let mut held = self.held.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let reservation = held.get_mut(key)?;
        if reservation.left == 0 || reservation.until <= now {
            held.remove(key);
            return None;
        }
        reservation.left -= 1;
        Some(reservation.left)
    }

    /// Keeps `tokens` more for `key` (the rest of a batch just taken), spendable until
    /// `now + HOLD`.
    pub(super) fn keep(&self, key: LimitKey, tokens: u32, now: Instant) {
        if tokens == 0 {
            return;
        }
        let mut held = self.held.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if held.len() >= SWEEP_AT {
            held.retain(|_, r| r.left > 0 && r.until > now);
        }
        held.insert(
            key,
            Reservation {
                left: tokens,
                until: now + HOLD,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;

    fn key() -> LimitKey {
        LimitKey::from(IpAddr::from([192, 0, 2, 7]))
    }

    #[test]
    fn small_limits_ask_the_database_for_every_request() {
        assert_eq!(batch_for(1), 1);
        assert_eq!(batch_for(100), 1);
        assert_eq!(batch_for(199), 1);
        assert_eq!(batch_for(1_000), 10);
        assert_eq!(batch_for(1_000_000_000), MAX_BATCH);
    }

    #[test]
    fn kept_tokens_are_spent_one_by_one_then_gone() {
        let held = Reservations::default();
        let now = Instant::now();
        assert_eq!(held.spend(&key(), now), None, "nothing held yet");
        held.keep(key(), 2, now);
        assert_eq!(held.spend(&key(), now), Some(1));
        assert_eq!(held.spend(&key(), now), Some(0));
        assert_eq!(held.spend(&key(), now), None);
    }

    #[test]
    fn tokens_held_longer_than_the_hold_are_dropped() {
        let held = Reservations::default();
        let now = Instant::now();
        held.keep(key(), 5, now);
        assert_eq!(held.spend(&key(), now + HOLD), None);
        assert_eq!(held.spend(&key(), now), None, "the stale reservation was removed");
    }

    #[tokio::test]
    async fn one_request_per_key_takes_a_batch_while_the_others_wait() {
        use futures_util::FutureExt;
        let held = Reservations::default();
        let first = held.taking(&key()).await.expect("free");
        assert!(
            held.taking(&key()).now_or_never().is_none(),
            "a second request for the same key waits"
        );
        held.keep(key(), 3, Instant::now());
        drop(first);
        let _second = held
            .taking(&key())
            .now_or_never()
            .flatten()
            .expect("free once the first is done");
        assert_eq!(
            held.spend(&key(), Instant::now()),
            Some(2),
            "the waiter spends the batch"
        );
    }

    /// A request whose batch is slow in coming (a slow or unreachable database) stops waiting
    /// after `HOLD` and asks the database itself.
    #[tokio::test]
    async fn a_request_waits_for_another_s_batch_at_most_the_hold() {
        let held = Reservations::default();
        let _first = held.taking(&key()).await.expect("free");
        let started = Instant::now();
        // Bounded here too, so that a wait without its own bound fails rather than hangs.
        let waited = tokio::time::timeout(HOLD * 100, held.taking(&key()))
            .await
            .expect("the wait ends by itself");
        assert!(waited.is_none(), "gave up waiting");
        assert!(started.elapsed() >= HOLD);
    }

    #[test]
    fn keys_are_held_separately() {
        let held = Reservations::default();
        let now = Instant::now();
        held.keep(key(), 1, now);
        let other = LimitKey::from(IpAddr::from([192, 0, 2, 8]));
        assert_eq!(held.spend(&other, now), None);
        assert_eq!(held.spend(&key(), now), Some(0));
    }
}
