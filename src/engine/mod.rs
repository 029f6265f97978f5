//! The CPU work engine: four deterministic operations whose cost is calibrated by complexity.
//! Pure and synchronous: no I/O, no clock, no async. Callers run it on a blocking thread and stop
//! it through a [`CancelToken`].

mod calibration;
mod cancel;
mod hash;
mod integral;
mod matrix;
mod prime;
mod schema;
mod spec;
mod transform;

pub use calibration::{
    Amounts, FactorOutOfBounds, Factors, MAX_FACTOR, MIN_FACTOR, PRIME_GROWTH_EXPONENT, nominal_ms,
    reference_fingerprint,
};
pub use cancel::{CancelOnDrop, CancelToken, Cancelled};
pub use spec::{Complexity, InvalidWork, MAX_MATRIX_SIZE, Operation, Work, WorkData, WorkPayload};

use serde_json::Value;

/// Runs one planned piece of work to completion, or until `cancel` is set.
///
/// The result is a JSON object that depends only on `work`: the same payload always gives the
/// same result.
pub fn run(work: &Work, cancel: &CancelToken) -> Result<Value, Cancelled> {
    match work {
        Work::Hash { input, iterations } => hash::run(input, *iterations, cancel),
        Work::Prime { n } => prime::run(*n, cancel),
        Work::Matrix { size, rounds } => matrix::run(*size, *rounds, cancel),
        Work::Transform { items, rounds } => transform::run(items, *rounds, cancel),
    }
}
