//! The store seam: one trait of domain verbs that both backends implement (`sqlite/`,
//! `postgres/`); the plain rows and commands they take and return are in `rows`. Nothing
//! here knows SQL or HTTP.
//!
//! The queue lives in the database. A job is a `requests` row with `mode = async`; `pending`
//! means claimable. A replica claims it under its owner id with a lease whose expiry comes from
//! the database's clock, which bumps the row's `attempt`; every later write of the job checks
//! `(owner, attempt)`, so a holder whose lease expired cannot overwrite a newer attempt (the
//! write is "stale" and is dropped). A callback delivery is a `deliveries` row, written in the
//! same transaction as the job's result, due at `due_at` and claimed the same way. Sync requests
//! carry a lease too, so that a replica that dies mid-request leaves no row `processing`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;

use super::rows::*;
use crate::liveness::Liveness;

/// The domain verbs. Every method is one round trip or one transaction, and every write of a
/// leased job or delivery is fenced by its owner and attempt.
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    /// `sqlite` or `postgres`.
    fn backend(&self) -> Backend;

    // --- accepting ---

    /// Stores an async job (`pending`) and, given one, its idempotency key, in one commit. The
    /// job is refused (nothing stored) when `backlog_limit` jobs already wait, and not stored
    /// when a live record of the key exists (the caller replays it).
    async fn accept_job(
        &self,
        job: &NewJob,
        key: Option<&KeyClaim>,
        backlog_limit: u64,
    ) -> Result<Accepted, sqlx::Error>;

    /// The live record of an idempotency key.
    async fn find_key(&self, scope: &str, key: &str, not_before: &str) -> Result<Option<StoredKey>, sqlx::Error>;

    /// Stores a sync request, already `processing`, leased to `owner` while it runs.
    async fn start_sync(&self, request: &NewSync, owner: &str, lease: Duration) -> Result<(), sqlx::Error>;

    /// Stores how a sync run ended; false when the lease was lost (a stale write).
    async fn finish_sync(&self, id: &str, owner: &str, completion: &Completion) -> Result<bool, sqlx::Error>;

    // --- the job queue ---

    /// Claims up to `max` pending jobs, oldest first, for `owner` until now + `lease` (the
    /// database's clock). Never returns the same (job, attempt) twice, to any caller.
    async fn claim_jobs(&self, owner: &str, max: usize, lease: Duration) -> Result<Vec<ClaimedJob>, sqlx::Error>;

    /// Stores the outcomes of claimed jobs in one transaction, and for each job with a callback
    /// writes its delivery, due now, in that same transaction. Returns, per finish, whether it
    /// was applied (false: stale, the lease had passed to another attempt).
    async fn finish_jobs(&self, owner: &str, finishes: &[JobFinish]) -> Result<Vec<bool>, sqlx::Error>;

    /// `finish_jobs`, then `claim_jobs` of up to `max` jobs, in one write: the workers whose
    /// outcomes these are take the next jobs without a round trip of their own. Returns, per
    /// finish, whether it was applied, and the jobs claimed. An error means nothing was stored,
    /// so that a retry cannot find its own finishes gone stale: a backend that needs two
    /// statements returns no jobs when the claim fails after the finishes were stored.
    async fn finish_and_claim(
        &self,
        owner: &str,
        finishes: &[JobFinish],
        max: usize,
        lease: Duration,
    ) -> Result<(Vec<bool>, Vec<ClaimedJob>), sqlx::Error>;

    /// Puts claimed jobs back (at shutdown), without using up an attempt.
    async fn release_jobs(&self, owner: &str, jobs: &[Lease]) -> Result<(), sqlx::Error>;

    /// Renews every lease `owner` holds in one statement per kind, and records the replica as
    /// alive. Returns the leases that were not renewed (lost: another attempt owns them now).
    async fn heartbeat(
        &self,
        owner: &str,
        held: &Held,
        lease: Duration,
        replica: &ReplicaBeat,
    ) -> Result<Held, sqlx::Error>;

    /// Puts work whose lease expired back in the queue, or fails it once `max_attempts` are
    /// used; fails sync requests whose lease expired. `everything` treats every lease as
    /// expired: for SQLite's start, where the lock file proves no other process holds any.
    async fn rescue(&self, max_attempts: u32, everything: bool) -> Result<Rescued, sqlx::Error>;

    // --- deliveries ---

    /// Claims up to `max` deliveries that are due, for `owner` until now + `lease`.
    async fn claim_deliveries(
        &self,
        owner: &str,
        max: usize,
        lease: Duration,
    ) -> Result<Vec<ClaimedDelivery>, sqlx::Error>;

    /// How long until the next pending delivery is due (`None` when none is pending).
    async fn next_delivery_due_in(&self) -> Result<Option<Duration>, sqlx::Error>;

    /// Records attempts and where each delivery goes next, each fenced by its claim, and claims
    /// up to `max` due deliveries (`claim_deliveries`), all in one write, as `finish_and_claim`
    /// is for jobs: the attempt slots whose outcomes these are take the next due deliveries
    /// without a write of their own. Returns, per record in order, whether it was stored (false
    /// when it was stale: nothing stored for it), and the deliveries claimed; `max` 0 records
    /// only. An error means nothing was stored; a backend that needs a second statement after
    /// the write returns no deliveries when that statement fails.
    async fn record_and_claim_deliveries(
        &self,
        owner: &str,
        records: &[AttemptRecord],
        max: usize,
        lease: Duration,
    ) -> Result<(Vec<bool>, Vec<ClaimedDelivery>), sqlx::Error>;

    /// Starts a new delivery round for a failed delivery: due now, with a fresh retry budget.
    async fn redeliver(&self, id: &str) -> Result<Result<(), RedeliverRefusal>, sqlx::Error>;

    // --- reading ---

    async fn get(&self, id: &str) -> Result<Option<RequestRow>, sqlx::Error>;

    /// One page, newest first, and the total that match.
    async fn list(&self, query: &ListQuery) -> Result<(i64, Vec<RequestRow>), sqlx::Error>;

    /// Every attempt for a request, oldest first.
    async fn attempts(&self, id: &str) -> Result<Vec<AttemptRow>, sqlx::Error>;

    /// Cluster-wide counts: requests by mode and status, deliveries by state, mean engine time.
    async fn summary(&self) -> Result<Summary, sqlx::Error>;

    /// Jobs waiting to be claimed, cluster-wide.
    async fn backlog(&self) -> Result<u64, sqlx::Error>;

    /// The same figure where a slightly stale one will do (a 202's `Retry-After` estimate, on
    /// every acceptance): PostgreSQL counts at most a few times a second.
    async fn backlog_estimate(&self) -> Result<u64, sqlx::Error> {
        self.backlog().await
    }

    /// The replicas that beat within `within`, with their figures.
    async fn replicas(&self, within: Duration) -> Result<Vec<ReplicaRow>, sqlx::Error>;

    // --- upkeep ---

    /// Deletes up to `round.batch` finished requests (and their attempts and keys) completed
    /// before `round.before`, and expired idempotency keys. On PostgreSQL one replica at a time
    /// does this (an advisory lock), and one round per interval for the cluster; the others get
    /// `Purged::skipped`.
    async fn purge(&self, round: PurgeRound<'_>) -> Result<Purged, sqlx::Error>;

    /// A real write round trip, for the health check.
    async fn ping_write(&self, owner: &str) -> Result<(), sqlx::Error>;

    /// The database's size on disk, and for SQLite the WAL's.
    async fn storage(&self) -> Result<StorageFigures, sqlx::Error>;

    /// Takes `tokens` requests (all or none) from `key`'s budget in the cluster-wide rate limit
    /// (GCRA: a burst of `burst`, refilled evenly over `window`), or `None` when the backend
    /// keeps no shared state: on SQLite one server owns the database and its in-process limiter
    /// is the whole truth.
    async fn take_rate_tokens(
        &self,
        key: &str,
        tokens: u32,
        burst: u32,
        window: Duration,
    ) -> Result<Option<RateVerdict>, sqlx::Error>;

    /// Starts what tells this replica of work another replica made (PostgreSQL's LISTEN); the
    /// SQLite store has no other replica to hear from.
    fn listen(&self, wake: &Wakeups, liveness: &Liveness);

    /// Stops the backend's own tasks and closes every connection (SQLite empties its WAL).
    async fn close(&self);
}

/// What the shared rate limit decided for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateVerdict {
    Allowed { remaining: u32 },
    Refused { retry_after: Duration },
}

/// How a replica learns that there is work: new jobs, and deliveries that became due.
#[derive(Debug, Clone, Default)]
pub struct Wakeups {
    pub jobs: Arc<Notify>,
    pub deliveries: Arc<Notify>,
}

/// Which backend a store is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
        }
    }
}
