//! Matching callbacks to the requests that caused them, by `webhook-id` (the request id). A
//! callback can beat its own 202 to the tool, so early arrivals wait for their ack.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::stats::{Latency, Timeline};

/// expected, received, missing, duplicated and unknown callbacks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallbackCounts {
    /// Measured requests acknowledged with 202.
    pub expected: u64,
    /// Of those, how many callbacks arrived (first arrival only).
    pub received: u64,
    /// Expected but never arrived before the callback timeout.
    pub missing: u64,
    /// Arrivals for an id that had already arrived (at-least-once redelivery).
    pub duplicated: u64,
    /// Arrivals for an id this run never sent.
    pub unknown: u64,
}

/// The matcher's state during a run.
#[derive(Debug)]
pub struct CallbackMatcher {
    /// Acknowledged ids waiting for their callback: when they were due, and whether measured.
    waiting: HashMap<String, (Instant, bool)>,
    /// Callbacks that arrived before their ack was seen.
    early: HashMap<String, Instant>,
    seen: HashSet<String>,
    /// Send to callback, for measured requests.
    pub completion: Latency,
    /// Completions by the second they arrived in, from `start`.
    pub timeline: Timeline,
    counts: CallbackCounts,
    start: Instant,
    /// When the latest measured callback arrived: the end of the completion window.
    last_arrival: Option<Instant>,
}

impl CallbackMatcher {
    pub fn new(start: Instant) -> Self {
        Self {
            waiting: HashMap::new(),
            early: HashMap::new(),
            seen: HashSet::new(),
            completion: Latency::new(),
            timeline: Timeline::default(),
            counts: CallbackCounts::default(),
            start,
            last_arrival: None,
        }
    }

    /// A 202 for `id`, due at `due`.
    pub fn expect(&mut self, id: String, due: Instant, measured: bool) {
        if measured {
            self.counts.expected += 1;
        }
        match self.early.remove(&id) {
            Some(at) => self.matched(due, at, measured),
            None => {
                self.waiting.insert(id, (due, measured));
            }
        }
    }

    /// A callback for `id` arrived at `at`.
    pub fn arrived(&mut self, id: String, at: Instant) {
        if !self.seen.insert(id.clone()) {
            self.counts.duplicated += 1;
            return;
        }
        match self.waiting.remove(&id) {
            Some((due, measured)) => self.matched(due, at, measured),
            None => {
                self.early.insert(id, at);
            }
        }
    }

    fn matched(&mut self, due: Instant, at: Instant, measured: bool) {
        if measured {
            self.counts.received += 1;
            self.last_arrival = Some(self.last_arrival.map_or(at, |last| last.max(at)));
            let latency = at.saturating_duration_since(due);
            self.completion.record(latency);
            self.timeline.record(at.saturating_duration_since(self.start), latency);
        }
    }

    pub fn last_arrival(&self) -> Option<Instant> {
        self.last_arrival
    }

    /// Measured callbacks still expected.
    pub fn outstanding(&self) -> usize {
        self.waiting.values().filter(|(_, measured)| *measured).count()
    }

    /// The final counts: whatever is still waiting is missing, whatever arrived unmatched is
    /// unknown.
    pub fn counts(&self) -> CallbackCounts {
        CallbackCounts {
            missing: self.outstanding() as u64,
            unknown: self.early.len() as u64,
            ..self.counts
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn callbacks_are_matched_whichever_arrives_first() {
        let t0 = Instant::now();
        let mut m = CallbackMatcher::new(t0);
        m.expect("a".into(), t0, true);
        m.arrived("a".into(), t0 + Duration::from_millis(30));
        m.arrived("b".into(), t0 + Duration::from_millis(10)); // before its ack
        m.expect("b".into(), t0, true);
        m.expect("c".into(), t0, true); // never arrives
        m.arrived("a".into(), t0 + Duration::from_millis(40)); // redelivered
        m.arrived("zzz".into(), t0); // not ours
        m.expect("warm".into(), t0, false);
        m.arrived("warm".into(), t0);

        assert_eq!(
            m.counts(),
            CallbackCounts {
                expected: 3,
                received: 2,
                missing: 1,
                duplicated: 1,
                unknown: 1
            }
        );
        assert_eq!(m.completion.count(), 2);
        assert_eq!(m.completion.summary().max_ms, 30.0);
    }
}
