//! The bounded channel between `/async` and the workers. It carries job ids only: the job is
//! committed to SQLite before its id is sent, so a crash loses nothing that was acknowledged.

use tokio::sync::mpsc;

/// The sending side, cloned into every request handler.
#[derive(Clone, Debug)]
pub struct JobQueue {
    sender: mpsc::Sender<String>,
}

/// Every slot is taken: MAX_QUEUE_SIZE jobs are already waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the job queue is full")]
pub struct QueueFull;

/// A reserved slot: taking it before writing the row means a full queue never leaves a row
/// behind, and sending on it can never fail for lack of room.
pub(crate) type QueueSlot = mpsc::OwnedPermit<String>;

impl JobQueue {
    pub fn new(capacity: usize) -> (Self, mpsc::Receiver<String>) {
        let (sender, receiver) = mpsc::channel(capacity.max(1));
        (Self { sender }, receiver)
    }

    /// Takes a slot now, or fails at once if the queue is full.
    pub fn try_reserve(&self) -> Result<QueueSlot, QueueFull> {
        self.sender.clone().try_reserve_owned().map_err(|_| QueueFull)
    }

    /// Waits for room, then queues `id` (startup recovery and redelivery of work use this).
    pub async fn send(&self, id: String) -> Result<(), QueueFull> {
        self.sender.send(id).await.map_err(|_| QueueFull)
    }

    /// Jobs waiting, counting slots reserved by requests that are still writing their row.
    pub fn depth(&self) -> usize {
        self.sender.max_capacity() - self.sender.capacity()
    }

    pub fn capacity(&self) -> usize {
        self.sender.max_capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_queue_refuses_a_reservation_until_a_job_is_taken() {
        let (queue, mut receiver) = JobQueue::new(2);
        let first = queue.try_reserve().expect("room");
        let second = queue.try_reserve().expect("room");
        assert_eq!(queue.depth(), 2);
        assert_eq!(queue.try_reserve().err(), Some(QueueFull));
        first.send("a".into());
        drop(second); // an abandoned reservation frees its slot
        assert_eq!(queue.depth(), 1);
        assert_eq!(receiver.recv().await.as_deref(), Some("a"));
        assert_eq!(queue.depth(), 0);
        assert!(queue.try_reserve().is_ok());
    }
}
