//! The work amounts behind each complexity level. The reference tables were fitted once, on the
//! reference machine named in the README, so that every operation takes about
//! `100 ms x 50^((c - 1) / 9)` there. [`Amounts`] scales them by one factor per operation, measured
//! on the machine the server runs on (outside the engine: the engine never reads the clock, so
//! the same payload with the same amounts always does the same work).

use serde::{Deserialize, Serialize};

use super::{Complexity, Operation};

/// `hash`: SHA-256 iterations per level.
const HASH_ITERATIONS: [u64; 10] = [
    1_510_000, 2_332_000, 3_602_000, 5_563_000, 8_592_000, 13_271_000, 20_496_000, 31_655_000, 48_889_000, 75_507_000,
];
/// `prime`: which prime to find per level.
const PRIME_N: [u64; 10] = [
    185_089, 252_465, 344_367, 469_723, 640_712, 873_943, 1_192_075, 1_626_012, 2_217_912, 3_025_274,
];
/// `matrix`: multiply-adds per level, spread over as many rounds as the matrix size needs.
const MATRIX_MULTIPLY_ADDS: [u64; 10] = [
    472_436_000,
    729_654_000,
    1_126_916_000,
    1_740_468_000,
    2_688_069_000,
    4_151_594_000,
    6_411_937_000,
    9_902_930_000,
    15_294_601_000,
    23_621_779_000,
];
/// `transform`: node-visit units per level (see `transform::round_cost`), spread over rounds.
const TRANSFORM_NODE_VISITS: [u64; 10] = [
    1_312_000, 2_027_000, 3_131_000, 4_835_000, 7_468_000, 11_534_000, 17_813_000, 27_512_000, 42_491_000, 65_625_000,
];

/// The largest `data.n` a client may ask for: the complexity-10 amount of the reference table.
/// It stays fixed whatever the calibration, because the OpenAPI schema states it exactly.
pub(super) const MAX_PRIME_N: u32 = PRIME_N[9] as u32;

/// How the time of `prime` grows with `n` (trial division is about n^1.4 at these sizes); the
/// other budgets are linear in their amount.
pub const PRIME_GROWTH_EXPONENT: f64 = 1.4;

/// The smallest factor accepted: a machine 20 times slower than the reference.
pub const MIN_FACTOR: f64 = 0.05;
/// The largest factor accepted: a machine 20 times faster than the reference. With it, the
/// largest amount (hash at complexity 10) stays far below `u32::MAX`.
pub const MAX_FACTOR: f64 = 20.0;

/// The documented duration of one operation at `complexity`: 100 ms at 1, 5 s at 10, growing
/// geometrically in between.
pub fn nominal_ms(complexity: Complexity) -> f64 {
    let steps = f64::from(complexity.get() - Complexity::MIN) / 9.0;
    100.0 * 50f64.powf(steps)
}

/// How much faster this machine runs each operation than the reference machine: 2.0 means it
/// does the reference amount in half the time, so its amounts double (for `prime`, its `n` grows
/// so that the *time* doubles).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Factors {
    pub hash: f64,
    pub prime: f64,
    pub matrix: f64,
    pub transform: f64,
}

impl Factors {
    /// The reference machine itself.
    pub const REFERENCE: Self = Self::uniform(1.0);

    /// The same factor for every operation.
    pub const fn uniform(factor: f64) -> Self {
        Self {
            hash: factor,
            prime: factor,
            matrix: factor,
            transform: factor,
        }
    }

    /// One factor per operation, from `factor`.
    pub fn from_fn(mut factor: impl FnMut(Operation) -> f64) -> Self {
        Self {
            hash: factor(Operation::Hash),
            prime: factor(Operation::Prime),
            matrix: factor(Operation::Matrix),
            transform: factor(Operation::Transform),
        }
    }

    pub fn get(&self, operation: Operation) -> f64 {
        match operation {
            Operation::Hash => self.hash,
            Operation::Prime => self.prime,
            Operation::Matrix => self.matrix,
            Operation::Transform => self.transform,
        }
    }
}

/// A factor outside `MIN_FACTOR..=MAX_FACTOR` (or not a number): a measurement this far from the
/// reference is more likely broken than true, so it is refused.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
#[error("the {operation} factor {factor} is outside {MIN_FACTOR} to {MAX_FACTOR}")]
pub struct FactorOutOfBounds {
    pub operation: Operation,
    pub factor: f64,
}

/// The work amounts the engine plans with: the reference tables, scaled per operation. Only the
/// amounts chosen from the complexity scale; the limits on client data never do.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Amounts {
    /// Each within `MIN_FACTOR..=MAX_FACTOR`, checked when built.
    factors: Factors,
}

impl Default for Amounts {
    fn default() -> Self {
        Self::reference()
    }
}

impl Amounts {
    /// The reference tables, unscaled: the same work on every machine.
    pub const fn reference() -> Self {
        Self {
            factors: Factors::REFERENCE,
        }
    }

    /// The reference tables scaled by `factors`; refused if any is out of bounds.
    pub fn scaled(factors: Factors) -> Result<Self, FactorOutOfBounds> {
        for operation in Operation::ALL {
            let factor = factors.get(operation);
            if !(MIN_FACTOR..=MAX_FACTOR).contains(&factor) {
                return Err(FactorOutOfBounds { operation, factor });
            }
        }
        Ok(Self { factors })
    }

    pub fn factors(&self) -> Factors {
        self.factors
    }

    /// The work amount for `operation` at `complexity` with default data. Never 0, and for the
    /// operations that plan with a `u32` (hash iterations, the prime's n) never above `u32::MAX`.
    pub fn amount_for(&self, operation: Operation, complexity: Complexity) -> u64 {
        let (table, ceiling) = match operation {
            Operation::Hash => (&HASH_ITERATIONS, u64::from(u32::MAX)),
            Operation::Prime => (&PRIME_N, u64::from(u32::MAX)),
            Operation::Matrix => (&MATRIX_MULTIPLY_ADDS, u64::MAX),
            Operation::Transform => (&TRANSFORM_NODE_VISITS, u64::MAX),
        };
        let reference = table[usize::from(complexity.get() - Complexity::MIN)];
        let factor = self.factors.get(operation);
        if factor == 1.0 {
            // Exactly the table, without a round trip through floating point.
            return reference;
        }
        let scale = match operation {
            Operation::Prime => factor.powf(1.0 / PRIME_GROWTH_EXPONENT),
            _ => factor,
        };
        // `as` saturates at the integer's bounds, and the clamp keeps the plan's casts exact.
        ((reference as f64 * scale).round() as u64).clamp(1, ceiling)
    }
}

/// A short fingerprint of the reference tables. A stored calibration records it: factors
/// measured against other tables would scale the wrong amounts, so such a file is measured anew.
pub fn reference_fingerprint() -> String {
    // FNV-1a over every amount: stable across builds and platforms, unlike `DefaultHasher`.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for table in [
        &HASH_ITERATIONS,
        &PRIME_N,
        &MATRIX_MULTIPLY_ADDS,
        &TRANSFORM_NODE_VISITS,
    ] {
        for amount in table {
            for byte in amount.to_le_bytes() {
                hash ^= u64::from(byte);
                hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
            }
        }
    }
    format!("{hash:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Work, WorkPayload};

    fn level(c: u8) -> Complexity {
        Complexity::new(c).expect("valid level")
    }

    fn plan(operation: Operation, complexity: u8, amounts: &Amounts) -> Work {
        WorkPayload {
            operation,
            complexity,
            data: None,
        }
        .plan(amounts)
        .expect("valid payload")
    }

    #[test]
    fn nominal_durations_run_from_100_ms_to_5_s() {
        let ms: Vec<u64> = Complexity::all().map(|c| nominal_ms(c).round() as u64).collect();
        assert_eq!(ms, vec![100, 154, 239, 368, 569, 879, 1357, 2096, 3237, 5000]);
    }

    #[test]
    fn every_table_grows_with_complexity() {
        for op in Operation::ALL {
            let amounts: Vec<u64> = Complexity::all()
                .map(|c| Amounts::reference().amount_for(op, c))
                .collect();
            assert!(amounts.windows(2).all(|w| w[0] < w[1]), "{op}: {amounts:?}");
        }
    }

    #[test]
    fn the_reference_amounts_are_the_tables_exactly() {
        let reference = Amounts::reference();
        assert_eq!(reference.amount_for(Operation::Hash, level(4)), 5_563_000);
        assert_eq!(
            reference.amount_for(Operation::Prime, level(10)),
            u64::from(MAX_PRIME_N)
        );
        assert_eq!(Amounts::scaled(Factors::REFERENCE), Ok(reference));
    }

    #[test]
    fn a_factor_of_two_doubles_the_linear_amounts() {
        let twice = Amounts::scaled(Factors::uniform(2.0)).expect("in bounds");
        assert_eq!(
            plan(Operation::Hash, 4, &twice),
            Work::Hash {
                input: "sync-async".to_owned(),
                iterations: 2 * 5_563_000
            }
        );
        for op in [Operation::Matrix, Operation::Transform] {
            let reference = Amounts::reference().amount_for(op, level(7));
            assert_eq!(twice.amount_for(op, level(7)), 2 * reference, "{op}");
        }
    }

    #[test]
    fn the_prime_n_scales_so_that_its_time_scales_by_the_factor() {
        let faster = Amounts::scaled(Factors {
            prime: 2.0,
            ..Factors::REFERENCE
        })
        .expect("in bounds");
        let n = faster.amount_for(Operation::Prime, level(4)) as f64;
        let expected = 469_723.0 * 2f64.powf(1.0 / PRIME_GROWTH_EXPONENT);
        assert!((n - expected).abs() <= 1.0, "{n} vs {expected}");
        // Time grows as n^1.4, so the run takes twice as long as the reference amount would.
        assert!(((n / 469_723.0).powf(PRIME_GROWTH_EXPONENT) - 2.0).abs() < 1e-5);
        // The other operations keep their reference amounts.
        assert_eq!(faster.amount_for(Operation::Hash, level(4)), 5_563_000);
    }

    #[test]
    fn a_fast_machine_plans_a_default_prime_above_the_client_limit_but_a_client_still_may_not() {
        let fast = Amounts::scaled(Factors::uniform(MAX_FACTOR)).expect("in bounds");
        let Work::Prime { n } = plan(Operation::Prime, 10, &fast) else {
            panic!("a prime plan")
        };
        assert!(n > MAX_PRIME_N, "{n}");
        let client = WorkPayload {
            operation: Operation::Prime,
            complexity: 1,
            data: Some(crate::engine::WorkData {
                n: Some(MAX_PRIME_N + 1),
                ..Default::default()
            }),
        };
        assert!(client.plan(&fast).is_err(), "the client limit does not scale");
    }

    #[test]
    fn factors_outside_the_bounds_are_refused() {
        for bad in [0.0, MIN_FACTOR / 2.0, MAX_FACTOR * 1.01, f64::NAN, f64::INFINITY, -1.0] {
            let factors = Factors {
                matrix: bad,
                ..Factors::REFERENCE
            };
            let err = Amounts::scaled(factors).expect_err("out of bounds");
            assert_eq!(err.operation, Operation::Matrix);
        }
        assert!(Amounts::scaled(Factors::uniform(MIN_FACTOR)).is_ok());
        assert!(Amounts::scaled(Factors::uniform(MAX_FACTOR)).is_ok());
    }

    #[test]
    fn the_largest_factor_keeps_every_amount_within_its_plan() {
        let fastest = Amounts::scaled(Factors::uniform(MAX_FACTOR)).expect("in bounds");
        let slowest = Amounts::scaled(Factors::uniform(MIN_FACTOR)).expect("in bounds");
        for op in Operation::ALL {
            for c in Complexity::all() {
                let high = fastest.amount_for(op, c);
                assert!(
                    high < u64::from(u32::MAX) || matches!(op, Operation::Matrix),
                    "{op} {c:?}"
                );
                assert!(slowest.amount_for(op, c) >= 1);
            }
        }
    }

    #[test]
    fn the_fingerprint_is_stable() {
        assert_eq!(reference_fingerprint(), reference_fingerprint());
        assert_eq!(reference_fingerprint().len(), 16);
    }
}
