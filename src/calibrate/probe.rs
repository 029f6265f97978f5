//! The start-up measurement: how fast this machine runs each operation, compared with the
//! reference machine, within a hard time budget. It blocks; callers run it on a blocking thread.
//!
//! Per operation, within its quarter of the budget: a short scout run (a tenth of the
//! complexity-1 work) gives a first factor; then the complexity-1 work at that factor, which
//! takes about 100 ms on any machine, runs up to `REFINING_RUNS` times, and the fastest run
//! corrects the factor. Measuring at the size that counts, rather than extrapolating from a tiny
//! run, keeps start-up effects and `prime`'s non-linear growth out of the factor.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use crate::engine::{
    self, Amounts, CancelToken, Complexity, Factors, MAX_FACTOR, MIN_FACTOR, Operation, PRIME_GROWTH_EXPONENT, Work,
    WorkPayload,
};

/// The whole measurement's wall time, under the 2 s promised, leaving room for the rest of the
/// start.
pub const BUDGET: Duration = Duration::from_millis(1_900);
/// The scout run's share of the complexity-1 work: 10 ms on the reference machine, and at most
/// a fifth of an operation's share of the budget on a machine at `MIN_FACTOR`.
const SCOUT_SHARE: f64 = 0.1;
/// The documented time at complexity 1, which the refining runs aim at.
const COMPLEXITY_1_MS: f64 = 100.0;
/// Complexity-1 runs after the scout; the fastest counts, being the least disturbed.
const REFINING_RUNS: usize = 3;

/// An operation could not be measured within its share of the budget: this machine is slower
/// than the calibration can scale to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0} did not finish a scout run within its share of the {BUDGET:?} budget")]
pub struct TooSlow(pub Operation);

/// What the probe found.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Probe {
    /// The measured factors. Not yet checked against `MIN_FACTOR..=MAX_FACTOR`: the caller
    /// refuses a measurement out of bounds.
    pub factors: Factors,
    /// How long the whole measurement took.
    pub took: Duration,
}

/// Measures every operation within `budget` of wall time (a run still going at its operation's
/// deadline is cancelled, which takes a millisecond).
pub(super) fn measure(budget: Duration) -> Result<Probe, TooSlow> {
    super::off_the_main_thread(|| measure_here(budget))
}

fn measure_here(budget: Duration) -> Result<Probe, TooSlow> {
    let started = Instant::now();
    let share = budget / Operation::ALL.len() as u32;
    let mut factors = Factors::REFERENCE;
    for (i, operation) in Operation::ALL.into_iter().enumerate() {
        let deadline = started + share * (i as u32 + 1);
        let factor = measure_one(operation, deadline)?;
        factors = Factors::from_fn(|op| if op == operation { factor } else { factors.get(op) });
    }
    Ok(Probe {
        factors,
        took: started.elapsed(),
    })
}

/// The factor of `operation`, measured before `deadline`.
fn measure_one(operation: Operation, deadline: Instant) -> Result<f64, TooSlow> {
    let target_ms = COMPLEXITY_1_MS;
    let reference = complexity_1_work(operation, 1.0);
    // A run of `work` in `ms` says this machine is `factor` times the reference, which would
    // take its share of `target_ms`. The share comes from the plan, not the factor asked for:
    // matrix and transform plan whole rounds, so a small amount is rounded a lot.
    let factor_from = |work: &Work, ms: f64| size(work) / size(&reference) * target_ms / ms.max(f64::MIN_POSITIVE);
    let scout = complexity_1_work(operation, SCOUT_SHARE);
    let scout_ms = timed_run(&scout, deadline).ok_or(TooSlow(operation))?;
    // Refine within the bounds: outside them the result is refused anyway, and the refining work
    // must stay a sensible size.
    let scouted = factor_from(&scout, scout_ms).clamp(MIN_FACTOR, MAX_FACTOR);
    let work = complexity_1_work(operation, scouted);
    let mut best_ms = f64::INFINITY;
    let mut runs = 0;
    for _ in 0..REFINING_RUNS {
        // About `target_ms` by construction; the best run so far is the better guess.
        let expected = Duration::from_secs_f64(best_ms.min(target_ms) / 1e3);
        if Instant::now() + expected > deadline {
            break;
        }
        match timed_run(&work, deadline) {
            Some(ms) => {
                best_ms = best_ms.min(ms);
                runs += 1;
            }
            None => break,
        }
    }
    let factor = if best_ms.is_finite() {
        factor_from(&work, best_ms)
    } else {
        scouted
    };
    tracing::debug!(%operation, scout_ms, scouted, runs, best_ms, factor, "calibration probe");
    Ok(factor)
}

/// How much work a plan is, in units its time is proportional to: iterations, rounds, or for
/// `prime` n^1.4.
fn size(work: &Work) -> f64 {
    match work {
        Work::Hash { iterations, .. } => f64::from(*iterations),
        Work::Prime { n } => f64::from(*n).powf(PRIME_GROWTH_EXPONENT),
        Work::Matrix { rounds, .. } | Work::Transform { rounds, .. } => f64::from(*rounds),
    }
}

/// The complexity-1 work of `operation` with default data, scaled by `factor` for it alone.
fn complexity_1_work(operation: Operation, factor: f64) -> Work {
    let factors = Factors::from_fn(|op| if op == operation { factor } else { 1.0 });
    let amounts = Amounts::scaled(factors).unwrap_or_default();
    let payload = WorkPayload {
        operation,
        complexity: Complexity::MIN,
        data: None,
    };
    // Default data at complexity 1 always plans; the fallback is never taken.
    payload.plan(&amounts).unwrap_or(Work::Prime { n: 1 })
}

/// Runs `work` once and returns its wall time in milliseconds, or `None` if `deadline` came
/// first (the run is then cancelled by a watchdog thread).
fn timed_run(work: &Work, deadline: Instant) -> Option<f64> {
    if Instant::now() >= deadline {
        return None;
    }
    let cancel = CancelToken::new();
    let (finished, watched) = mpsc::channel::<()>();
    std::thread::scope(|scope| {
        let watchdog = cancel.clone();
        scope.spawn(move || {
            // Wakes when the run ends (its sender is dropped) or at the deadline.
            let left = deadline.saturating_duration_since(Instant::now());
            if watched.recv_timeout(left) == Err(RecvTimeoutError::Timeout) {
                watchdog.cancel();
            }
        });
        let started = Instant::now();
        let outcome = std::hint::black_box(engine::run(work, &cancel));
        let ms = started.elapsed().as_secs_f64() * 1e3;
        drop(finished);
        outcome.ok().map(|_| ms)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_budget_measures_nothing_and_says_which_operation_did_not_fit() {
        assert_eq!(measure(Duration::ZERO), Err(TooSlow(Operation::Hash)));
    }

    #[test]
    fn the_target_is_the_documented_complexity_1_time() {
        let first = Complexity::all().next().expect("complexity 1");
        assert!((engine::nominal_ms(first) - COMPLEXITY_1_MS).abs() < 1e-9);
    }

    #[test]
    fn the_scout_is_a_tenth_of_the_complexity_1_work() {
        let Work::Hash { iterations, .. } = complexity_1_work(Operation::Hash, SCOUT_SHARE) else {
            panic!("a hash plan")
        };
        assert_eq!(iterations, 151_000);
        let Work::Matrix { rounds, .. } = complexity_1_work(Operation::Matrix, 1.0) else {
            panic!("a matrix plan")
        };
        assert!(rounds > 1, "{rounds}");
    }

    #[test]
    fn a_plan_is_sized_by_what_its_time_grows_with() {
        let scout = complexity_1_work(Operation::Matrix, SCOUT_SHARE);
        let full = complexity_1_work(Operation::Matrix, 1.0);
        // 27 rounds at complexity 1; a tenth of the budget is 2 whole rounds, not 2.77.
        assert_eq!((size(&scout), size(&full)), (2.0, 27.0));
        let prime = size(&Work::Prime { n: 1_000 });
        assert!((prime - 1_000f64.powf(PRIME_GROWTH_EXPONENT)).abs() < 1e-6);
    }
}
