//! Group commit for new `requests` rows. Under load many handlers insert at once; SQLite would
//! commit them one by one through the single writer (each commit writing the WAL). Instead a
//! task takes every insert waiting at that moment and commits them with one multi-row INSERT,
//! then answers each caller, which still gets its answer only after its row is committed.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::accept::{InsertRow, insert_many};
use super::writer::Writer;
use crate::liveness::Beat;

/// The most rows one transaction takes.
const MAX_BATCH: usize = 128;
/// Inserts that may wait for the task before callers wait to hand theirs over.
const BACKLOG: usize = 4096;

/// The sending side, cloned into every `Db`.
#[derive(Clone, Debug)]
pub(super) struct GroupCommit {
    sender: mpsc::Sender<Pending>,
}

#[derive(Debug)]
struct Pending {
    row: InsertRow,
    done: oneshot::Sender<Result<(), sqlx::Error>>,
}

impl GroupCommit {
    /// Starts the committing task; it ends when the last `GroupCommit` is dropped.
    pub(super) fn start(writer: Arc<Writer>, beat: Beat) -> Self {
        let (sender, receiver) = mpsc::channel(BACKLOG);
        tokio::spawn(commit_loop(writer, receiver, beat));
        Self { sender }
    }

    /// Inserts `row`; returns once it is committed (or has failed).
    pub(super) async fn insert(&self, row: InsertRow) -> Result<(), sqlx::Error> {
        let (done, committed) = oneshot::channel();
        let pending = Pending { row, done };
        self.sender.send(pending).await.map_err(|_| sqlx::Error::PoolClosed)?;
        committed.await.map_err(|_| sqlx::Error::PoolClosed)?
    }
}

async fn commit_loop(writer: Arc<Writer>, mut receiver: mpsc::Receiver<Pending>, beat: Beat) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while receiver.recv_many(&mut batch, MAX_BATCH).await > 0 {
        beat.tick();
        if commit_together(&writer, &batch).await.is_ok() {
            for pending in batch.drain(..) {
                let _ = pending.done.send(Ok(()));
            }
        } else {
            // Something in the batch failed: nothing was committed; go row by row so that only
            // the failing row fails.
            for pending in batch.drain(..) {
                let result = insert_one(&writer, &pending.row).await;
                let _ = pending.done.send(result);
            }
        }
    }
}

async fn commit_together(writer: &Writer, batch: &[Pending]) -> Result<(), sqlx::Error> {
    insert_many(writer, batch.iter().map(|p| &p.row)).await
}

async fn insert_one(writer: &Writer, row: &InsertRow) -> Result<(), sqlx::Error> {
    insert_many(writer, [row]).await
}
