//! The recorder stores the outcomes of callback attempts, every outcome waiting at that moment in
//! one write, as the job completer does for job outcomes. Under load each attempt would
//! otherwise be its own transaction through SQLite's one writer. Each record is still fenced by
//! its claim, and each attempt learns whether its own record was stored.
//!
//! The same write claims the next due deliveries, one per record, as the completer claims the
//! next jobs: each attempt's slot passes straight to a new delivery, with no write of its own
//! for the claim. Once the replica stops taking work, it claims none.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::db::{self, AttemptRecord, ClaimedDelivery, Db};
use crate::jobs::Leases;
use crate::liveness::Beat;

/// The most records one write stores.
const MAX_BATCH: usize = 256;

/// What an attempt learns of its record: whether it was stored (false: stale, its claim had
/// passed on) and the delivery its slot goes on to, if one was due; or why nothing was stored.
pub(super) type Recorded = Result<(bool, Option<ClaimedDelivery>), String>;

/// Where attempts hand their outcomes. The recording task ends once every clone is gone and what
/// they sent is stored: the claimer holds one, each attempt in flight another.
#[derive(Clone, Debug)]
pub(super) struct Recorder {
    sender: mpsc::UnboundedSender<(AttemptRecord, oneshot::Sender<Recorded>)>,
}

/// What the recording task needs besides its records.
pub(super) struct RecorderSetup {
    pub(super) db: Db,
    pub(super) leases: Leases,
    /// The lease of a delivery claimed with the records.
    pub(super) lease: Duration,
    /// Once cancelled, nothing more is claimed.
    pub(super) stop: CancellationToken,
    pub(super) beat: Beat,
}

impl Recorder {
    pub(super) fn start(setup: RecorderSetup, tasks: &TaskTracker) -> Self {
        let (sender, records) = mpsc::unbounded_channel();
        tasks.spawn(record_loop(setup, records));
        Self { sender }
    }

    /// Stores `record` with whatever else is waiting; returns once it is committed, with
    /// whether it was stored and the next delivery for the caller's slot.
    pub(super) async fn record(&self, record: AttemptRecord) -> anyhow::Result<(bool, Option<ClaimedDelivery>)> {
        let (stored, answer) = oneshot::channel();
        self.sender
            .send((record, stored))
            .map_err(|_| anyhow::anyhow!("the attempt recorder has stopped"))?;
        answer
            .await
            .map_err(|_| anyhow::anyhow!("the attempt recorder has stopped"))?
            .map_err(anyhow::Error::msg)
    }
}

async fn record_loop(
    setup: RecorderSetup,
    mut waiting: mpsc::UnboundedReceiver<(AttemptRecord, oneshot::Sender<Recorded>)>,
) {
    let RecorderSetup {
        db,
        leases,
        lease,
        stop,
        beat,
    } = setup;
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while waiting.recv_many(&mut batch, MAX_BATCH).await > 0 {
        beat.tick();
        let records: Vec<AttemptRecord> = batch.iter().map(|(record, _)| record.clone()).collect();
        let owner = leases.owner();
        let next = if stop.is_cancelled() { 0 } else { records.len() };
        let written = db::retry_transient("recording attempts", || {
            db.record_and_claim_deliveries(owner, &records, next, lease)
        })
        .await;
        match written {
            Ok((stored, claimed)) => {
                let mut claimed = claimed.into_iter();
                for ((_, answer), stored) in batch.drain(..).zip(stored) {
                    let next = claimed.next();
                    if let Err(Ok((_, Some(unwanted)))) = answer.send(Ok((stored, next))) {
                        // The attempt is gone (its task was cancelled): the claim is left to
                        // its lease.
                        tracing::warn!(request_id = %unwanted.lease.id, "a delivery claimed for a finished attempt waits for its lease");
                    }
                }
            }
            Err(e) => {
                let why = format!("{e:#}");
                for (_, answer) in batch.drain(..) {
                    let _ = answer.send(Err(why.clone()));
                }
            }
        }
    }
}
