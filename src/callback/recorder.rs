//! The recorder stores the outcomes of callback attempts, every outcome waiting at that moment in
//! one transaction, as the job completer does for job outcomes. Under load each attempt would
//! otherwise be its own transaction through SQLite's one writer. Each record is still fenced by
//! its claim, and each attempt learns whether its own record was stored.

use tokio::sync::{mpsc, oneshot};
use tokio_util::task::TaskTracker;

use crate::db::{self, AttemptRecord, Db};
use crate::jobs::Leases;
use crate::liveness::Beat;

/// The most records one transaction stores.
const MAX_BATCH: usize = 256;

/// Whether a record was stored (false: stale, its claim had passed on), or why nothing was.
type Stored = Result<bool, String>;

/// Where attempts hand their outcomes. The recording task ends once every clone is gone and what
/// they sent is stored: the claimer holds one, each attempt in flight another.
#[derive(Clone, Debug)]
pub(super) struct Recorder {
    sender: mpsc::UnboundedSender<(AttemptRecord, oneshot::Sender<Stored>)>,
}

impl Recorder {
    pub(super) fn start(db: Db, leases: Leases, beat: Beat, tasks: &TaskTracker) -> Self {
        let (sender, records) = mpsc::unbounded_channel();
        tasks.spawn(record_loop(db, leases, records, beat));
        Self { sender }
    }

    /// Stores `record` with whatever else is waiting; returns once it is committed.
    pub(super) async fn record(&self, record: AttemptRecord) -> anyhow::Result<bool> {
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
    db: Db,
    leases: Leases,
    mut waiting: mpsc::UnboundedReceiver<(AttemptRecord, oneshot::Sender<Stored>)>,
    beat: Beat,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while waiting.recv_many(&mut batch, MAX_BATCH).await > 0 {
        beat.tick();
        let records: Vec<AttemptRecord> = batch.iter().map(|(record, _)| record.clone()).collect();
        let owner = leases.owner();
        match db::retry_transient("recording attempts", || db.record_attempts(owner, &records)).await {
            Ok(stored) => {
                for ((_, answer), stored) in batch.drain(..).zip(stored) {
                    let _ = answer.send(Ok(stored));
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
