//! The leases this replica holds right now, for the heartbeat to renew: claimed jobs (with the
//! cancel token of their engine run, so that a lost lease stops the work), running sync
//! requests, and deliveries in flight. Also this replica's owner id.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::db::{Held, Lease};
use crate::engine::CancelToken;

/// The leases of one replica. Cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct Leases {
    owner: Arc<str>,
    held: Arc<Mutex<Holdings>>,
}

#[derive(Debug, Default)]
struct Holdings {
    jobs: HashMap<Lease, CancelToken>,
    sync: HashMap<Lease, CancelToken>,
    deliveries: HashMap<Lease, ()>,
}

/// Which kind of work a lease is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Job,
    Sync,
    Delivery,
}

impl Leases {
    pub(crate) fn new(owner: impl Into<Arc<str>>) -> Self {
        Self {
            owner: owner.into(),
            held: Arc::default(),
        }
    }

    /// This replica's id, the owner of every lease it takes.
    pub(crate) fn owner(&self) -> &str {
        &self.owner
    }

    fn lock(&self) -> MutexGuard<'_, Holdings> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts renewing `lease`; `cancel` stops its work if the lease is lost.
    pub(crate) fn hold(&self, kind: Kind, lease: Lease, cancel: Option<CancelToken>) {
        let mut held = self.lock();
        let cancel = cancel.unwrap_or_default();
        match kind {
            Kind::Job => {
                held.jobs.insert(lease, cancel);
            }
            Kind::Sync => {
                held.sync.insert(lease, cancel);
            }
            Kind::Delivery => {
                held.deliveries.insert(lease, ());
            }
        }
    }

    /// Stops renewing `lease`: its work is stored, released, or given up to the rescuer.
    pub(crate) fn drop_lease(&self, kind: Kind, lease: &Lease) {
        let mut held = self.lock();
        match kind {
            Kind::Job => {
                held.jobs.remove(lease);
            }
            Kind::Sync => {
                held.sync.remove(lease);
            }
            Kind::Delivery => {
                held.deliveries.remove(lease);
            }
        }
    }

    /// Everything held now.
    pub(crate) fn snapshot(&self) -> Held {
        let held = self.lock();
        Held {
            jobs: held.jobs.keys().cloned().collect(),
            sync: held.sync.keys().cloned().collect(),
            deliveries: held.deliveries.keys().cloned().collect(),
        }
    }

    /// Forgets the leases the heartbeat could not renew and cancels their work (whatever it would
    /// store would be refused anyway). Returns those that were still held: the others ended
    /// while the heartbeat ran (their outcome stored, its lease dropped), which is no loss.
    pub(crate) fn lost(&self, not_renewed: &Held) -> Held {
        let mut held = self.lock();
        let mut lost = Held::default();
        for lease in &not_renewed.jobs {
            if let Some(cancel) = held.jobs.remove(lease) {
                cancel.cancel();
                lost.jobs.push(lease.clone());
            }
        }
        for lease in &not_renewed.sync {
            if let Some(cancel) = held.sync.remove(lease) {
                cancel.cancel();
                lost.sync.push(lease.clone());
            }
        }
        for lease in &not_renewed.deliveries {
            if held.deliveries.remove(lease).is_some() {
                lost.deliveries.push(lease.clone());
            }
        }
        lost
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(id: &str, attempt: i64) -> Lease {
        Lease {
            id: id.to_owned(),
            attempt,
        }
    }

    #[test]
    fn a_lost_lease_is_forgotten_and_its_work_cancelled() {
        let leases = Leases::new("replica-a");
        let (kept, taken) = (CancelToken::new(), CancelToken::new());
        leases.hold(Kind::Job, lease("a", 1), Some(kept.clone()));
        leases.hold(Kind::Job, lease("b", 2), Some(taken.clone()));
        leases.hold(Kind::Delivery, lease("c", 1), None);
        // "z" ended while the heartbeat ran: its lease was dropped, and it is no loss.
        let lost = leases.lost(&Held {
            jobs: vec![lease("b", 2), lease("z", 1)],
            deliveries: vec![lease("y", 1)],
            ..Held::default()
        });
        assert_eq!(lost.jobs, vec![lease("b", 2)]);
        assert!(lost.deliveries.is_empty() && lost.sync.is_empty());
        let held = leases.snapshot();
        assert_eq!(held.jobs, vec![lease("a", 1)]);
        assert_eq!(held.deliveries, vec![lease("c", 1)]);
        assert!(taken.is_cancelled() && !kept.is_cancelled());
        leases.drop_lease(Kind::Job, &lease("a", 1));
        assert!(leases.snapshot().jobs.is_empty());
    }
}
