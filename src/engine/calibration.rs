//! The fixed work amounts behind each complexity level. They were fitted once, on the reference
//! machine named in the README, so that every operation takes about
//! `100 ms x 50^((c - 1) / 9)`; `sync-async calibrate` re-measures them. Amounts never depend on
//! the clock at run time, so the same payload always does the same work.

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

/// The largest `data.n` a client may ask for: the complexity-10 amount.
pub(super) const MAX_PRIME_N: u32 = PRIME_N[9] as u32;

/// The documented duration of one operation at `complexity` on the reference machine:
/// 100 ms at 1, 5 s at 10, growing geometrically in between.
pub fn nominal_ms(complexity: Complexity) -> f64 {
    let steps = f64::from(complexity.get() - Complexity::MIN) / 9.0;
    100.0 * 50f64.powf(steps)
}

/// The work amount the engine uses for `operation` at `complexity` with default data.
pub fn amount_for(operation: Operation, complexity: Complexity) -> u64 {
    let table = match operation {
        Operation::Hash => &HASH_ITERATIONS,
        Operation::Prime => &PRIME_N,
        Operation::Matrix => &MATRIX_MULTIPLY_ADDS,
        Operation::Transform => &TRANSFORM_NODE_VISITS,
    };
    table[usize::from(complexity.get() - Complexity::MIN)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nominal_durations_run_from_100_ms_to_5_s() {
        let ms: Vec<u64> = Complexity::all().map(|c| nominal_ms(c).round() as u64).collect();
        assert_eq!(ms, vec![100, 154, 239, 368, 569, 879, 1357, 2096, 3237, 5000]);
    }

    #[test]
    fn every_table_grows_with_complexity() {
        for op in Operation::ALL {
            let amounts: Vec<u64> = Complexity::all().map(|c| amount_for(op, c)).collect();
            assert!(amounts.windows(2).all(|w| w[0] < w[1]), "{op}: {amounts:?}");
        }
    }
}
