//! Whole numbers as JSON Schema counts them: `"type": "integer"` matches `6` and `6.0` alike,
//! so the payload's integer fields accept a number with a zero fraction too. A derived `u8`
//! refuses `6.0`, which made a schema-valid request a 422.

use serde::de::{self, Deserializer, Unexpected, Visitor};

/// Reads a whole number that fits `T`.
pub(super) fn integral<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<u64>,
{
    let n = deserializer.deserialize_any(Whole)?;
    T::try_from(n).map_err(|_| de::Error::invalid_value(Unexpected::Unsigned(n), &Whole))
}

/// The same for an optional field (absent or null is `None`).
pub(super) fn integral_opt<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<u64>,
{
    struct Maybe<T>(std::marker::PhantomData<T>);
    impl<'de, T: TryFrom<u64>> Visitor<'de> for Maybe<T> {
        type Value = Option<T>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a whole number or null")
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            integral(d).map(Some)
        }
    }
    deserializer.deserialize_option(Maybe(std::marker::PhantomData))
}

struct Whole;

impl Visitor<'_> for Whole {
    type Value = u64;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a whole number in range")
    }

    fn visit_u64<E: de::Error>(self, n: u64) -> Result<u64, E> {
        Ok(n)
    }

    fn visit_i64<E: de::Error>(self, n: i64) -> Result<u64, E> {
        u64::try_from(n).map_err(|_| E::invalid_value(Unexpected::Signed(n), &self))
    }

    fn visit_f64<E: de::Error>(self, x: f64) -> Result<u64, E> {
        // Exactly representable whole numbers only; 2^53 is far above every bound here.
        if x.fract() == 0.0 && (0.0..=9_007_199_254_740_992.0).contains(&x) {
            Ok(x as u64)
        } else {
            Err(E::invalid_value(Unexpected::Float(x), &self))
        }
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;
    use serde_json::json;

    use super::*;

    #[derive(Debug, Deserialize, PartialEq)]
    struct Probe {
        #[serde(deserialize_with = "integral")]
        level: u8,
        #[serde(default, deserialize_with = "integral_opt")]
        n: Option<u32>,
    }

    fn probe(value: serde_json::Value) -> Result<Probe, String> {
        serde_json::from_value(value).map_err(|e| e.to_string())
    }

    #[test]
    fn whole_numbers_are_read_with_or_without_a_fraction() {
        assert_eq!(probe(json!({"level": 6})), Ok(Probe { level: 6, n: None }));
        assert_eq!(
            probe(json!({"level": 6.0, "n": 7.0})),
            Ok(Probe { level: 6, n: Some(7) })
        );
        assert_eq!(probe(json!({"level": 1, "n": null})), Ok(Probe { level: 1, n: None }));
    }

    #[test]
    fn fractions_negatives_overflow_and_other_types_are_refused() {
        for bad in [
            json!(6.5),
            json!(-1),
            json!(256),
            json!(-0.5),
            json!("6"),
            json!(true),
            json!(1e300),
        ] {
            assert!(probe(json!({"level": bad})).is_err(), "{bad}");
        }
        assert!(probe(json!({"level": 1, "n": 4_294_967_296u64})).is_err());
    }
}
