//! Async jobs: a bounded queue of job ids (the rows themselves are on disk), a pool of workers
//! that drain it, and the startup recovery that re-queues what a previous run left unfinished.

mod queue;
mod recovery;
mod worker;

pub(crate) use queue::{JobQueue, QueueSlot};
pub(crate) use recovery::recover_unfinished;
pub(crate) use worker::{WorkerContext, WorkerPool};
