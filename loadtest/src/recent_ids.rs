//! A map keyed by callback id that never holds more than its capacity: when a new id would pass
//! it, the oldest id (by first sight) is forgotten. The demo receiver keeps what it knows of each
//! `webhook-id` here, so that a receiver left running for days keeps bounded memory.

use std::collections::{HashMap, VecDeque};

/// Up to `capacity` ids, each with a `V`; first in, first forgotten.
#[derive(Debug)]
pub(crate) struct RecentIds<V> {
    values: HashMap<String, V>,
    /// The ids in the order they were first seen: the front is forgotten next.
    order: VecDeque<String>,
    capacity: usize,
}

impl<V: Default> RecentIds<V> {
    /// A map of at most `capacity` ids (at least one).
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            values: HashMap::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    /// The value of `id`, made with `V::default()` when the id is new (or was forgotten), in
    /// which case the oldest id is forgotten first if the map is full.
    pub(crate) fn entry(&mut self, id: &str) -> &mut V {
        if !self.values.contains_key(id) {
            while self.order.len() >= self.capacity {
                if let Some(oldest) = self.order.pop_front() {
                    self.values.remove(&oldest);
                }
            }
            self.order.push_back(id.to_owned());
        }
        self.values.entry(id.to_owned()).or_default()
    }

    /// Ids held now: never more than the capacity.
    pub(crate) fn len(&self) -> usize {
        self.values.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_id_is_forgotten_when_the_capacity_is_reached() {
        let mut ids: RecentIds<u32> = RecentIds::new(3);
        for id in ["a", "b", "c", "d", "e"] {
            *ids.entry(id) += 1;
        }
        assert_eq!(ids.len(), 3);
        // "c" is still known; touching it does not make it younger (first in, first out).
        *ids.entry("c") += 1;
        assert_eq!(*ids.entry("c"), 2);
        assert_eq!(ids.len(), 3);
        // "a" was forgotten: it comes back as new, and pushes out "c", the oldest left.
        assert_eq!(*ids.entry("a"), 0);
        assert_eq!(*ids.entry("c"), 0);
        assert_eq!(ids.len(), 3);
    }

    #[test]
    fn a_zero_capacity_still_remembers_the_last_id() {
        let mut ids: RecentIds<bool> = RecentIds::new(0);
        *ids.entry("a") = true;
        assert!(*ids.entry("a"));
        assert!(!*ids.entry("b"));
        assert_eq!(ids.len(), 1);
    }
}
