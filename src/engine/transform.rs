//! A JSON transformation applied in rounds to a list of items: numbers go through an affine map
//! modulo a prime (so they stay bounded forever, unlike the original's repeated squaring),
//! strings rotate by one character, booleans flip, arrays reverse, objects map their values.

use serde_json::{Map, Number, Value, json};
use sha2::{Digest, Sha256};

use super::{CancelToken, Cancelled};

/// Every number is reduced modulo this prime, so no value can grow without bound.
const MODULUS: i64 = 1_000_003;
/// How many transformed items the result shows.
const SAMPLE_LEN: usize = 3;

pub(super) fn run(items: &[Value], rounds: u32, cancel: &CancelToken) -> Result<Value, Cancelled> {
    let transformed = transform_rounds(items, rounds, cancel)?;
    let serialized = serde_json::to_vec(&transformed).unwrap_or_default();
    let checksum = Sha256::digest(&serialized);
    let checksum = hex::encode(&checksum[..8]);
    Ok(json!({
        "rounds": rounds,
        "count": transformed.len(),
        "checksum": checksum,
        "sample": &transformed[..transformed.len().min(SAMPLE_LEN)],
    }))
}

fn transform_rounds(items: &[Value], rounds: u32, cancel: &CancelToken) -> Result<Vec<Value>, Cancelled> {
    let mut current = items.to_vec();
    for _ in 0..rounds {
        cancel.check()?;
        current = current.iter().map(transform_value).collect();
    }
    Ok(current)
}

/// What one round costs in node-visit units: one per node, plus one per 16 bytes of every string
/// and object key, which are copied each round. The planner divides a budget by this.
pub(super) fn round_cost(items: &[Value]) -> u64 {
    fn cost(v: &Value) -> u64 {
        1 + match v {
            Value::String(s) => s.len() as u64 / 16,
            Value::Array(a) => a.iter().map(cost).sum(),
            Value::Object(o) => o.iter().map(|(k, v)| k.len() as u64 / 16 + cost(v)).sum(),
            _ => 0,
        }
    }
    items.iter().map(cost).sum::<u64>().max(1)
}

fn transform_value(value: &Value) -> Value {
    match value {
        Value::Null => Value::Null,
        Value::Bool(b) => Value::Bool(!b),
        Value::Number(n) => Value::Number(transform_number(n)),
        Value::String(s) => Value::String(rotate_left(s)),
        Value::Array(a) => Value::Array(a.iter().rev().map(transform_value).collect()),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, v)| (k.clone(), transform_value(v)))
                .collect::<Map<String, Value>>(),
        ),
    }
}

/// `(31 x + 7) mod 1_000_003`; floats use the same map in f64 (inputs are validated finite and
/// bounded, so the result is always finite).
fn transform_number(n: &Number) -> Number {
    if let Some(i) = n.as_i64() {
        Number::from((i.rem_euclid(MODULUS) * 31 + 7) % MODULUS)
    } else if let Some(u) = n.as_u64() {
        let m = MODULUS as u64;
        Number::from(((u % m) * 31 + 7) % m)
    } else {
        let x = n.as_f64().unwrap_or(0.0);
        Number::from_f64((x * 31.0 + 7.0) % MODULUS as f64).unwrap_or_else(|| Number::from(0))
    }
}

fn rotate_left(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(first) => chars.chain(std::iter::once(first)).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rounds(items: Value, n: u32) -> Vec<Value> {
        let items = items.as_array().expect("array").clone();
        transform_rounds(&items, n, &CancelToken::new()).expect("not cancelled")
    }

    #[test]
    fn one_round_maps_each_kind_of_value() {
        let out = rounds(json!([1, -1, "abc", true, null, [1, 2], {"k": 10}, 0.5]), 1);
        assert_eq!(
            out,
            vec![
                json!(38),
                json!(999_979), // -1 = 1_000_002 mod p; (31 * 1_000_002 + 7) mod p
                json!("bca"),
                json!(false),
                json!(null),
                json!([69, 38]),
                json!({"k": 317}),
                json!(22.5),
            ]
        );
    }

    #[test]
    fn numbers_stay_bounded_over_many_rounds() {
        let out = rounds(json!([999_999_999_999i64, 7]), 1_000);
        for v in out {
            let n = v.as_i64().expect("integer");
            assert!((0..MODULUS).contains(&n), "{n} escaped the modulus");
        }
    }

    #[test]
    fn three_rotations_of_a_three_letter_string_return_it() {
        assert_eq!(rounds(json!(["abc"]), 3), vec![json!("abc")]);
    }

    #[test]
    fn result_is_deterministic_and_summarised() {
        let items = vec![json!(1), json!("xy"), json!([true]), json!({"a": 2})];
        let a = run(&items, 5, &CancelToken::new()).expect("not cancelled");
        let b = run(&items, 5, &CancelToken::new()).expect("not cancelled");
        assert_eq!(a, b);
        assert_eq!(a["count"], 4);
        assert_eq!(a["rounds"], 5);
        assert_eq!(a["sample"].as_array().map(Vec::len), Some(SAMPLE_LEN));
        assert_eq!(a["checksum"].as_str().map(str::len), Some(16));
    }

    #[test]
    fn long_strings_cost_more_per_round() {
        assert_eq!(round_cost(&[json!("short")]), 1);
        assert_eq!(round_cost(&[json!("x".repeat(64))]), 5);
        assert_eq!(round_cost(&[json!({"a_rather_long_key_name": 1})]), 3);
        assert_eq!(round_cost(&[]), 1);
    }

    #[test]
    fn a_set_cancel_flag_stops_the_rounds() {
        let cancel = CancelToken::new();
        cancel.cancel();
        assert_eq!(transform_rounds(&[json!(1)], 10, &cancel), Err(Cancelled));
    }
}
