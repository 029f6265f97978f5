//! Whether the background loops are alive, for `/healthz`. Each loop holds a `Beat`: a loop that
//! ends (a panic, an early return) marks itself dead when its `Beat` drops, and a periodic loop
//! that stops ticking for three of its periods counts as stuck.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Every loop registered, by name.
#[derive(Debug, Clone, Default)]
pub struct Liveness {
    loops: Arc<Mutex<BTreeMap<&'static str, LoopState>>>,
}

#[derive(Debug, Clone, Copy)]
struct LoopState {
    /// `None` for a loop that waits on events and has no rhythm to keep.
    period: Option<Duration>,
    last_tick: Instant,
    running: bool,
}

/// What `/healthz` shows of one loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoopHealth {
    Ok,
    /// It has not ticked for three of its periods.
    Stuck,
    /// Its task ended.
    Stopped,
}

impl LoopHealth {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Stuck => "stuck",
            Self::Stopped => "stopped",
        }
    }
}

/// A loop's handle: tick it once per round; dropping it marks the loop stopped.
#[derive(Debug)]
pub struct Beat {
    name: &'static str,
    loops: Arc<Mutex<BTreeMap<&'static str, LoopState>>>,
}

impl Liveness {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a running loop. `period`: how often it ticks when healthy, if it has a rhythm.
    pub fn register(&self, name: &'static str, period: Option<Duration>) -> Beat {
        let state = LoopState {
            period,
            last_tick: Instant::now(),
            running: true,
        };
        self.lock().insert(name, state);
        Beat {
            name,
            loops: self.loops.clone(),
        }
    }

    /// Every loop and how it is, in name order.
    pub fn report(&self) -> Vec<(&'static str, LoopHealth)> {
        self.lock()
            .iter()
            .map(|(name, state)| {
                let health = if !state.running {
                    LoopHealth::Stopped
                } else if state.period.is_some_and(|p| state.last_tick.elapsed() > p * 3) {
                    LoopHealth::Stuck
                } else {
                    LoopHealth::Ok
                };
                (*name, health)
            })
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Loops> {
        lock(&self.loops)
    }
}

impl Beat {
    pub fn tick(&self) {
        if let Some(state) = lock(&self.loops).get_mut(self.name) {
            state.last_tick = Instant::now();
        }
    }
}

impl Drop for Beat {
    fn drop(&mut self) {
        if let Some(state) = lock(&self.loops).get_mut(self.name) {
            state.running = false;
        }
    }
}

type Loops = BTreeMap<&'static str, LoopState>;

/// The map, poisoned or not: a poisoned map still holds the last states, which is what health
/// wants.
fn lock(loops: &Mutex<Loops>) -> std::sync::MutexGuard<'_, Loops> {
    loops.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_loop_that_ends_or_stops_ticking_is_reported() {
        let liveness = Liveness::new();
        let healthy = liveness.register("healthy", None);
        let crashing = liveness.register("crashing", None);
        let stuck = liveness.register("stuck", Some(Duration::from_millis(1)));
        let task = tokio::spawn(async move {
            let _beat = crashing;
            panic!("a bug in a loop");
        });
        assert!(task.await.is_err());
        std::thread::sleep(Duration::from_millis(5));
        healthy.tick();
        let report: BTreeMap<_, _> = liveness.report().into_iter().collect();
        assert_eq!(report["healthy"], LoopHealth::Ok);
        assert_eq!(report["crashing"], LoopHealth::Stopped);
        assert_eq!(report["stuck"], LoopHealth::Stuck);
        stuck.tick();
        assert_eq!(
            liveness
                .report()
                .into_iter()
                .find(|(n, _)| *n == "stuck")
                .map(|(_, h)| h),
            Some(LoopHealth::Ok)
        );
    }
}
