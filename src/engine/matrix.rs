//! Square matrix multiplication in wrapping u32 arithmetic (exact modulo 2^32, so portable):
//! starting from `C = A`, each round computes `C = A + C x B`, with `A[i][j] = (i + j) mod 10`
//! and `B[i][j] = (i * j) mod 10`. Adding `A` back keeps the entries from collapsing to zero
//! modulo 2^32 over many rounds. Memory stays at four `size x size` buffers.

use serde_json::{Value, json};

use super::{CancelToken, Cancelled};

pub(super) fn run(size: u32, rounds: u32, cancel: &CancelToken) -> Result<Value, Cancelled> {
    let rounds = rounds.max(1);
    let product = power_chain(size as usize, rounds, cancel)?;
    let n = size as usize;
    let checksum: u64 = product.iter().map(|&x| u64::from(x)).sum();
    let trace: u64 = (0..n).map(|i| u64::from(product[i * n + i])).sum();
    Ok(json!({ "size": size, "rounds": rounds, "checksum": checksum, "trace": trace }))
}

/// What one round costs in multiply-add units: the product, plus the per-element and per-round
/// overheads that dominate for tiny matrices (measured: a 3 x 3 round costs as much as ~220
/// multiply-adds of a large one). The planner divides a budget by this.
pub(super) fn round_cost(size: u32) -> u64 {
    let n = u64::from(size);
    n * n * n + 4 * n * n + 160
}

/// The chain of `rounds` rounds, row-major. At least one round is computed.
fn power_chain(n: usize, rounds: u32, cancel: &CancelToken) -> Result<Vec<u32>, Cancelled> {
    let a: Vec<u32> = (0..n * n).map(|x| ((x / n + x % n) % 10) as u32).collect();
    let b: Vec<u32> = (0..n * n).map(|x| ((x / n) * (x % n) % 10) as u32).collect();
    let mut current = a.clone();
    let mut next = vec![0u32; n * n];
    for _ in 0..rounds.max(1) {
        multiply_into(&a, &current, &b, &mut next, n, cancel)?;
        std::mem::swap(&mut current, &mut next);
    }
    Ok(current)
}

/// `out = a + left x right`; checks for cancellation once per output row.
fn multiply_into(
    a: &[u32],
    left: &[u32],
    right: &[u32],
    out: &mut [u32],
    n: usize,
    cancel: &CancelToken,
) -> Result<(), Cancelled> {
    out.copy_from_slice(a);
    // i-k-j order streams rows of `right` and `out`, which the compiler vectorises.
    for (i, out_row) in out.chunks_exact_mut(n.max(1)).enumerate().take(n) {
        cancel.check()?;
        for k in 0..n {
            let l_ik = left[i * n + k];
            let right_row = &right[k * n..(k + 1) * n];
            for (o, &r) in out_row.iter_mut().zip(right_row) {
                *o = o.wrapping_add(l_ik.wrapping_mul(r));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(size: u32, rounds: u32) -> Value {
        run(size, rounds, &CancelToken::new()).expect("not cancelled")
    }

    #[test]
    fn two_by_two_round_matches_hand_computation() {
        // A = [[0,1],[1,2]], B = [[0,0],[0,1]]: A x B = [[0,1],[0,2]], plus A = [[0,2],[1,4]]
        let chain = power_chain(2, 1, &CancelToken::new()).expect("not cancelled");
        assert_eq!(chain, vec![0, 2, 1, 4]);
        assert_eq!(
            result(2, 1),
            json!({ "size": 2, "rounds": 1, "checksum": 7, "trace": 4 })
        );
    }

    #[test]
    fn three_by_three_checksum_matches_hand_computation() {
        // A = [[0,1,2],[1,2,3],[2,3,4]], B = [[0,0,0],[0,1,2],[0,2,4]]
        // A x B = [[0,5,10],[0,8,16],[0,11,22]], plus A = [[0,6,12],[1,10,19],[2,14,26]]
        // sum 90, trace 0 + 10 + 26 = 36
        assert_eq!(
            result(3, 1),
            json!({ "size": 3, "rounds": 1, "checksum": 90, "trace": 36 })
        );
    }

    #[test]
    fn a_second_round_multiplies_by_b_again_and_adds_a() {
        // [[0,2],[1,4]] x B = [[0,2],[0,4]], plus A = [[0,3],[1,6]]
        assert_eq!(result(2, 2)["checksum"], 10);
    }

    #[test]
    fn entries_do_not_collapse_to_zero_over_many_rounds() {
        assert_ne!(result(16, 10_000)["checksum"], 0);
    }

    #[test]
    fn zero_rounds_still_computes_one_round() {
        assert_eq!(result(3, 0)["checksum"], 90);
    }

    #[test]
    fn tiny_matrices_pay_for_their_per_round_overhead() {
        assert_eq!(round_cost(1), 165);
        assert_eq!(round_cost(100), 1_040_160);
    }

    #[test]
    fn a_set_cancel_flag_stops_the_product() {
        let cancel = CancelToken::new();
        cancel.cancel();
        assert_eq!(power_chain(64, 1_000, &cancel), Err(Cancelled));
    }
}
