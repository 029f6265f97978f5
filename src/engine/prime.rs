//! The n-th prime by trial division over the odd primes found so far.
//! Memory stays tiny: only primes up to the square root of an upper bound are kept as divisors.

use serde_json::{Value, json};

use super::{CancelToken, Cancelled};

/// Candidates tested between two cancellation checks (a few microseconds of work).
const CHECK_EVERY: u64 = 1_024;

pub(super) fn run(n: u32, cancel: &CancelToken) -> Result<Value, Cancelled> {
    let prime = nth_prime(n, cancel)?;
    Ok(json!({ "n": n, "prime": prime }))
}

/// The `n`-th prime, 1-based: `nth_prime(1) == 2`. `n == 0` is treated as 1.
fn nth_prime(n: u32, cancel: &CancelToken) -> Result<u64, Cancelled> {
    if n <= 1 {
        return Ok(2);
    }
    let divisor_limit = upper_bound(n).isqrt() + 1;
    let mut divisors: Vec<u64> = Vec::new();
    let mut found = 1; // 2 is the first prime; only odd candidates follow.
    let mut candidate = 1u64;
    loop {
        candidate += 2;
        if candidate % CHECK_EVERY == 1 {
            cancel.check()?;
        }
        if is_odd_prime(candidate, &divisors) {
            found += 1;
            if found == n {
                return Ok(candidate);
            }
            if candidate <= divisor_limit {
                divisors.push(candidate);
            }
        }
    }
}

/// Tests an odd `candidate > 1` against the odd primes below it, in order.
fn is_odd_prime(candidate: u64, odd_primes: &[u64]) -> bool {
    for &d in odd_primes {
        if d * d > candidate {
            return true;
        }
        if candidate.is_multiple_of(d) {
            return false;
        }
    }
    true
}

/// Rosser's bound: for n >= 6 the n-th prime is below n (ln n + ln ln n).
fn upper_bound(n: u32) -> u64 {
    if n < 6 {
        return 13;
    }
    let n = f64::from(n);
    (n * (n.ln() + n.ln().ln())).ceil() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nth(n: u32) -> u64 {
        nth_prime(n, &CancelToken::new()).expect("not cancelled")
    }

    #[test]
    fn first_primes_are_the_known_ones() {
        let first: Vec<u64> = (1..=10).map(nth).collect();
        assert_eq!(first, vec![2, 3, 5, 7, 11, 13, 17, 19, 23, 29]);
    }

    #[test]
    fn the_1000th_prime_is_7919() {
        assert_eq!(nth(1_000), 7_919);
    }

    #[test]
    fn the_10000th_prime_is_104729() {
        assert_eq!(nth(10_000), 104_729);
    }

    #[test]
    fn the_100000th_prime_is_1299709() {
        assert_eq!(nth(100_000), 1_299_709);
    }

    #[test]
    fn a_set_cancel_flag_stops_the_search() {
        let cancel = CancelToken::new();
        cancel.cancel();
        assert_eq!(nth_prime(1_000_000, &cancel), Err(Cancelled));
    }
}
