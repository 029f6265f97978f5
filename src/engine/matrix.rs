//! Square matrix multiplication in wrapping u32 arithmetic (exact modulo 2^32, so portable):
//! `C = A x B^rounds` with `A[i][j] = (i + j) mod 10` and `B[i][j] = (i * j) mod 10`.
//! Memory stays at four `size x size` buffers however many rounds run.

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

/// How many multiply-adds one round costs; the planner divides a budget by this.
pub(super) fn round_cost(size: u32) -> u64 {
    u64::from(size).pow(3)
}

/// `A x B^rounds`, row-major. At least one product is computed.
fn power_chain(n: usize, rounds: u32, cancel: &CancelToken) -> Result<Vec<u32>, Cancelled> {
    let a: Vec<u32> = (0..n * n).map(|x| ((x / n + x % n) % 10) as u32).collect();
    let b: Vec<u32> = (0..n * n)
        .map(|x| ((x / n) * (x % n) % 10) as u32)
        .collect();
    let mut current = a;
    let mut next = vec![0u32; n * n];
    for _ in 0..rounds.max(1) {
        multiply_into(&current, &b, &mut next, n, cancel)?;
        std::mem::swap(&mut current, &mut next);
    }
    Ok(current)
}

/// `out = left x right`; checks for cancellation once per output row.
fn multiply_into(
    left: &[u32],
    right: &[u32],
    out: &mut [u32],
    n: usize,
    cancel: &CancelToken,
) -> Result<(), Cancelled> {
    out.fill(0);
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
    fn two_by_two_product_matches_hand_computation() {
        // A = [[0,1],[1,2]], B = [[0,0],[0,1]]  =>  A x B = [[0,1],[0,2]]
        assert_eq!(
            power_chain(2, 1, &CancelToken::new()).expect("not cancelled"),
            vec![0, 1, 0, 2]
        );
        assert_eq!(
            result(2, 1),
            json!({ "size": 2, "rounds": 1, "checksum": 3, "trace": 2 })
        );
    }

    #[test]
    fn three_by_three_checksum_matches_hand_computation() {
        // A = [[0,1,2],[1,2,3],[2,3,4]], B = [[0,0,0],[0,1,2],[0,2,4]]
        // A x B = [[0,5,10],[0,8,16],[0,11,22]]: sum 72, trace 0 + 8 + 22 = 30
        assert_eq!(
            result(3, 1),
            json!({ "size": 3, "rounds": 1, "checksum": 72, "trace": 30 })
        );
    }

    #[test]
    fn a_second_round_multiplies_by_b_again() {
        // [[0,1],[0,2]] x [[0,0],[0,1]] = [[0,1],[0,2]]: B is idempotent at size 2.
        assert_eq!(result(2, 2)["checksum"], 3);
        // At size 3: [[0,5,10],[0,8,16],[0,11,22]] x B = [[0,25,50],[0,40,80],[0,55,110]]
        assert_eq!(result(3, 2)["checksum"], 360);
    }

    #[test]
    fn zero_rounds_still_computes_one_product() {
        assert_eq!(result(3, 0)["checksum"], 72);
    }

    #[test]
    fn a_set_cancel_flag_stops_the_product() {
        let cancel = CancelToken::new();
        cancel.cancel();
        assert_eq!(power_chain(64, 1_000, &cancel), Err(Cancelled));
    }
}
