//! Chained SHA-256: `h1 = sha256(input)`, `h(k+1) = sha256(h(k))` over the raw 32-byte digests.

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::{CancelToken, Cancelled};

/// How many hashes run between two cancellation checks (well under a millisecond).
const CHECK_EVERY: u32 = 4_096;

pub(super) fn run(input: &str, iterations: u32, cancel: &CancelToken) -> Result<Value, Cancelled> {
    let digest = chained_sha256(input.as_bytes(), iterations, cancel)?;
    Ok(json!({
        "digest": hex::encode(digest),
        "iterations": iterations,
    }))
}

/// Hashes `input` once, then re-hashes the digest `iterations - 1` more times.
fn chained_sha256(input: &[u8], iterations: u32, cancel: &CancelToken) -> Result<[u8; 32], Cancelled> {
    let mut digest: [u8; 32] = Sha256::digest(input).into();
    for i in 1..iterations {
        if i % CHECK_EVERY == 0 {
            cancel.check()?;
        }
        digest = Sha256::digest(digest).into();
    }
    Ok(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest_hex(input: &str, iterations: u32) -> String {
        hex::encode(chained_sha256(input.as_bytes(), iterations, &CancelToken::new()).expect("not cancelled"))
    }

    #[test]
    fn one_iteration_is_plain_sha256_of_the_input() {
        // FIPS 180-2 test vector for "abc".
        assert_eq!(
            digest_hex("abc", 1),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn chained_digest_matches_an_independent_implementation() {
        // Computed with Python's hashlib: d = sha256(b"abc").digest(); then 999 x d = sha256(d).digest()
        assert_eq!(
            digest_hex("abc", 1_000),
            "fc8a6b86a13f71cd9a67f558ab6fd82a3dd89186163a017ed8051acf6d3f8f99"
        );
    }

    #[test]
    fn a_set_cancel_flag_stops_the_chain() {
        let cancel = CancelToken::new();
        cancel.cancel();
        assert_eq!(chained_sha256(b"abc", 1_000_000, &cancel), Err(Cancelled));
    }
}
