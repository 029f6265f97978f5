//! What a client asks the engine for (`WorkPayload`, as JSON) and the validated, bounded plan the
//! engine runs (`Work`). Every client-controlled amount is capped at the complexity-10 cost, so no
//! request can ask for more CPU than the slowest documented case.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::ToSchema;

use super::calibration::{Amounts, MAX_PRIME_N};
use super::integral::{integral, integral_opt};
use super::{matrix, transform};

/// Largest `data.size` for `matrix`: four 1024 x 1024 u32 buffers are 16 MiB.
pub const MAX_MATRIX_SIZE: u32 = 1_024;
/// The side `matrix` uses when `data.size` is absent.
const DEFAULT_MATRIX_SIZE: u32 = 256;
/// Longest `data.input` for `hash`, in characters (Unicode code points, as JSON Schema's
/// `maxLength` counts them, so the schema and the server agree on every string).
pub(super) const MAX_INPUT_CHARS: usize = 1_024;
/// Most items `data.items` may hold for `transform`.
pub(super) const MAX_ITEMS: usize = 1_000;
/// Most entries of an array or object inside `data.items`. With containers holding only
/// scalars, the whole input is at most `MAX_ITEMS x (1 + MAX_CONTAINER_ENTRIES)` = 10 000 JSON
/// values: a bound the OpenAPI schema can state exactly, unlike a total node count.
pub(super) const MAX_CONTAINER_ENTRIES: usize = 9;
/// Longest string inside `data.items`, in characters.
pub(super) const MAX_ITEM_STRING_CHARS: usize = 1_024;
/// Largest magnitude of a number inside `data.items`.
pub(super) const MAX_ITEM_NUMBER: f64 = 1e15;

/// The seed `hash` uses when `data.input` is absent.
const DEFAULT_HASH_INPUT: &str = "sync-async";
/// How many records the default `transform` input holds.
const DEFAULT_ITEM_COUNT: usize = 64;

/// One of the four kinds of CPU work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Operation {
    /// Chained SHA-256 over `data.input`.
    Hash,
    /// The n-th prime (`data.n`).
    Prime,
    /// Square integer matrix multiplication, `A x B^rounds` (`data.size`).
    Matrix,
    /// A JSON transformation of `data.items`, in rounds.
    Transform,
}

impl Operation {
    pub const ALL: [Operation; 4] = [Self::Hash, Self::Prime, Self::Matrix, Self::Transform];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hash => "hash",
            Self::Prime => "prime",
            Self::Matrix => "matrix",
            Self::Transform => "transform",
        }
    }
}

impl std::fmt::Display for Operation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Operation {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|op| op.as_str() == s)
            .ok_or_else(|| format!("unknown operation `{s}` (expected hash, prime, matrix or transform)"))
    }
}

/// A complexity level from 1 (about 100 ms) to 10 (about 5 s).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Complexity(u8);

impl Complexity {
    pub const MIN: u8 = 1;
    pub const MAX: u8 = 10;

    pub fn new(level: u8) -> Option<Self> {
        (Self::MIN..=Self::MAX).contains(&level).then_some(Self(level))
    }

    pub fn get(self) -> u8 {
        self.0
    }

    pub fn all() -> impl Iterator<Item = Complexity> {
        (Self::MIN..=Self::MAX).map(Self)
    }
}

/// The work a client asks for. Its OpenAPI schema (a union discriminated by `operation`, each
/// variant with its own `data`) is written by hand in `schema.rs`, beside these rules.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkPayload {
    pub operation: Operation,
    /// 1 (about 100 ms) to 10 (about 5 s); each step costs about 1.55x the one before.
    #[serde(deserialize_with = "integral")]
    pub complexity: u8,
    /// Optional input for the operation, a JSON object (or null, the same as absent). Only the
    /// field that belongs to `operation` may be set.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "data_object")]
    pub data: Option<WorkData>,
}

/// Operation input. Each field belongs to one operation and is bounded.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkData {
    /// `hash`: the string to hash (default `"sync-async"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<String>,
    /// `prime`: which prime to find; replaces the amount the complexity would pick.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "integral_opt")]
    pub n: Option<u32>,
    /// `matrix`: the side of the square matrices (default 256).
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "integral_opt")]
    pub size: Option<u32>,
    /// `transform`: the JSON values to transform.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub items: Option<Vec<Value>>,
}

/// `data` is a JSON object or null. A derived struct would also take an array and read it by
/// position (`[null, null]` ran with defaults); the visitor below takes only a map, and still
/// hands it to the derived code so errors keep their path (`/payload/data/n`).
fn data_object<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<WorkData>, D::Error> {
    struct ObjectOrNull;
    impl<'de> serde::de::Visitor<'de> for ObjectOrNull {
        type Value = Option<WorkData>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object or null")
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            WorkData::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(Some)
        }
    }
    deserializer.deserialize_any(ObjectOrNull)
}

/// A validated plan: exactly what the engine will compute.
#[derive(Debug, Clone, PartialEq)]
pub enum Work {
    Hash { input: String, iterations: u32 },
    Prime { n: u32 },
    Matrix { size: u32, rounds: u32 },
    Transform { items: Vec<Value>, rounds: u32 },
}

/// One reason a payload was refused, located by a JSON pointer relative to the payload.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{pointer}: {message}")]
pub struct InvalidWork {
    pub pointer: String,
    pub message: String,
}

impl InvalidWork {
    fn new(pointer: &str, message: impl Into<String>) -> Self {
        Self {
            pointer: pointer.to_owned(),
            message: message.into(),
        }
    }
}

impl WorkPayload {
    /// Checks every bound and turns the payload into the exact work to run, with the amounts
    /// this machine's calibration chose for each complexity.
    pub fn plan(&self, amounts: &Amounts) -> Result<Work, Vec<InvalidWork>> {
        let complexity = Complexity::new(self.complexity).ok_or_else(|| {
            vec![InvalidWork::new(
                "/complexity",
                format!("must be between 1 and 10, got {}", self.complexity),
            )]
        })?;
        let data = self.data.clone().unwrap_or_default();
        let mut errors = misplaced_fields(self.operation, &data);
        let amount = amounts.amount_for(self.operation, complexity);
        let work = match self.operation {
            Operation::Hash => {
                let input = data.input.unwrap_or_else(|| DEFAULT_HASH_INPUT.to_owned());
                let chars = input.chars().count();
                if chars > MAX_INPUT_CHARS {
                    errors.push(InvalidWork::new(
                        "/data/input",
                        format!("must be at most {MAX_INPUT_CHARS} characters, got {chars}"),
                    ));
                }
                Work::Hash {
                    input,
                    iterations: amount as u32,
                }
            }
            Operation::Prime => {
                // Only a client's n is held to the documented limit: the amount a complexity
                // picks follows the calibration, and on a fast machine lies above it.
                if let Some(n) = data.n.filter(|n| !(1..=MAX_PRIME_N).contains(n)) {
                    errors.push(InvalidWork::new(
                        "/data/n",
                        format!("must be between 1 and {MAX_PRIME_N}, got {n}"),
                    ));
                }
                Work::Prime {
                    n: data.n.unwrap_or(amount as u32),
                }
            }
            Operation::Matrix => {
                let size = data.size.unwrap_or(DEFAULT_MATRIX_SIZE);
                // The size is checked before its cost is computed: size^3 of an unchecked size
                // overflows u64 (a panic in a debug build, a silent wrap in release).
                if !(1..=MAX_MATRIX_SIZE).contains(&size) {
                    errors.push(InvalidWork::new(
                        "/data/size",
                        format!("must be between 1 and {MAX_MATRIX_SIZE}, got {size}"),
                    ));
                    return Err(errors);
                }
                Work::Matrix {
                    size,
                    rounds: rounds_within(amount, matrix::round_cost(size)),
                }
            }
            Operation::Transform => {
                // Only a client's items are checked: the defaults are the server's own.
                let items = match data.items {
                    Some(items) => {
                        errors.extend(check_items(&items));
                        items
                    }
                    None => default_items(),
                };
                let rounds = rounds_within(amount, transform::round_cost(&items));
                Work::Transform { items, rounds }
            }
        };
        if errors.is_empty() { Ok(work) } else { Err(errors) }
    }
}

/// How many rounds of `round_cost` fit in `budget`; always at least one.
fn rounds_within(budget: u64, round_cost: u64) -> u32 {
    (budget / round_cost.max(1)).clamp(1, u64::from(u32::MAX)) as u32
}

/// A `data` field that belongs to another operation is refused rather than silently ignored.
fn misplaced_fields(operation: Operation, data: &WorkData) -> Vec<InvalidWork> {
    let fields = [
        ("input", Operation::Hash, data.input.is_some()),
        ("n", Operation::Prime, data.n.is_some()),
        ("size", Operation::Matrix, data.size.is_some()),
        ("items", Operation::Transform, data.items.is_some()),
    ];
    fields
        .into_iter()
        .filter(|&(_, owner, present)| present && owner != operation)
        .map(|(name, owner, _)| {
            InvalidWork::new(
                &format!("/data/{name}"),
                format!("belongs to operation `{owner}`, not `{operation}`"),
            )
        })
        .collect()
}

fn check_items(items: &[Value]) -> Vec<InvalidWork> {
    let mut errors = Vec::new();
    if items.is_empty() || items.len() > MAX_ITEMS {
        errors.push(InvalidWork::new(
            "/data/items",
            format!("must hold 1 to {MAX_ITEMS} items, got {}", items.len()),
        ));
    }
    for (i, item) in items.iter().enumerate() {
        if let Err(message) = check_item(item) {
            errors.push(InvalidWork::new(&format!("/data/items/{i}"), message));
        }
    }
    errors
}

/// An item is a scalar, or an array or object of at most `MAX_CONTAINER_ENTRIES` scalars.
fn check_item(item: &Value) -> Result<(), String> {
    let entries: Vec<&Value> = match item {
        Value::Array(a) => a.iter().collect(),
        Value::Object(o) => o.values().collect(),
        scalar => return check_scalar(scalar),
    };
    if entries.len() > MAX_CONTAINER_ENTRIES {
        return Err(format!(
            "holds {} entries; an array or object holds at most {MAX_CONTAINER_ENTRIES}",
            entries.len()
        ));
    }
    entries.into_iter().try_for_each(|entry| match entry {
        Value::Array(_) | Value::Object(_) => {
            Err("nests a container in a container; entries of an array or object must be scalars".to_owned())
        }
        scalar => check_scalar(scalar),
    })
}

fn check_scalar(value: &Value) -> Result<(), String> {
    match value {
        Value::String(s) if s.chars().count() > MAX_ITEM_STRING_CHARS => {
            Err(format!("holds a string longer than {MAX_ITEM_STRING_CHARS} characters"))
        }
        Value::Number(n) if n.as_f64().is_none_or(|x| x.abs() > MAX_ITEM_NUMBER) => {
            Err(format!("holds a number larger than {MAX_ITEM_NUMBER:e} in magnitude"))
        }
        _ => Ok(()),
    }
}

/// The input `transform` uses when `data.items` is absent: small records of every JSON kind.
fn default_items() -> Vec<Value> {
    (0..DEFAULT_ITEM_COUNT)
        .map(|i| {
            json!({
                "id": i,
                "name": format!("item-{i}"),
                "value": (i * 7) % 100,
                "active": i % 2 == 0,
                "tags": ["alpha", "beta"],
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const REFERENCE: Amounts = Amounts::reference();

    fn payload(operation: Operation, complexity: u8, data: Option<Value>) -> WorkPayload {
        WorkPayload {
            operation,
            complexity,
            data: data.map(|d| serde_json::from_value(d).expect("valid data")),
        }
    }

    fn pointers(result: Result<Work, Vec<InvalidWork>>) -> Vec<String> {
        result
            .expect_err("should be refused")
            .into_iter()
            .map(|e| e.pointer)
            .collect()
    }

    #[test]
    fn complexity_outside_1_to_10_is_refused() {
        for level in [0, 11, 255] {
            assert_eq!(
                pointers(payload(Operation::Hash, level, None).plan(&REFERENCE)),
                vec!["/complexity"]
            );
        }
    }

    #[test]
    fn default_data_uses_the_calibrated_amount() {
        let c = Complexity::new(4).expect("valid");
        let plan = payload(Operation::Prime, 4, None).plan(&REFERENCE).expect("valid");
        assert_eq!(
            plan,
            Work::Prime {
                n: REFERENCE.amount_for(Operation::Prime, c) as u32
            }
        );
    }

    #[test]
    fn explicit_data_replaces_the_amount() {
        let plan = payload(Operation::Prime, 9, Some(json!({"n": 1000})))
            .plan(&REFERENCE)
            .expect("valid");
        assert_eq!(plan, Work::Prime { n: 1000 });
    }

    #[test]
    fn matrix_rounds_spread_the_budget_over_the_chosen_size() {
        let c = Complexity::new(2).expect("valid");
        let budget = REFERENCE.amount_for(Operation::Matrix, c);
        let plan = payload(Operation::Matrix, 2, Some(json!({"size": 100})))
            .plan(&REFERENCE)
            .expect("valid");
        assert_eq!(
            plan,
            Work::Matrix {
                size: 100,
                rounds: (budget / 1_040_160) as u32
            }
        );
        let huge = payload(Operation::Matrix, 1, Some(json!({"size": MAX_MATRIX_SIZE}))).plan(&REFERENCE);
        assert_eq!(
            huge.expect("valid"),
            Work::Matrix {
                size: MAX_MATRIX_SIZE,
                rounds: 1
            }
        );
    }

    #[test]
    fn amounts_above_the_complexity_10_cost_are_refused() {
        let n = Some(json!({"n": MAX_PRIME_N + 1}));
        assert_eq!(
            pointers(payload(Operation::Prime, 1, n).plan(&REFERENCE)),
            vec!["/data/n"]
        );
        let size = Some(json!({"size": MAX_MATRIX_SIZE + 1}));
        assert_eq!(
            pointers(payload(Operation::Matrix, 1, size).plan(&REFERENCE)),
            vec!["/data/size"]
        );
        let zero = Some(json!({"size": 0}));
        assert_eq!(
            pointers(payload(Operation::Matrix, 1, zero).plan(&REFERENCE)),
            vec!["/data/size"]
        );
    }

    #[test]
    fn a_field_of_another_operation_is_refused() {
        let data = Some(json!({"n": 5}));
        assert_eq!(
            pointers(payload(Operation::Hash, 1, data).plan(&REFERENCE)),
            vec!["/data/n"]
        );
    }

    #[test]
    fn hash_input_is_bounded_in_characters_as_the_schema_counts_them() {
        let data = Some(json!({"input": "x".repeat(MAX_INPUT_CHARS + 1)}));
        assert_eq!(
            pointers(payload(Operation::Hash, 1, data).plan(&REFERENCE)),
            vec!["/data/input"]
        );
        // 1024 four-byte characters are 4096 bytes, and still within the limit.
        let wide = Some(json!({"input": "\u{1F600}".repeat(MAX_INPUT_CHARS)}));
        assert!(payload(Operation::Hash, 1, wide).plan(&REFERENCE).is_ok());
    }

    #[test]
    fn a_huge_matrix_size_is_refused_before_its_cost_is_computed() {
        // 4 000 000^3 overflows u64: computing the cost first panicked in a debug build.
        let data = Some(json!({"size": 4_000_000}));
        assert_eq!(
            pointers(payload(Operation::Matrix, 1, data).plan(&REFERENCE)),
            vec!["/data/size"]
        );
        let data = Some(json!({"size": u32::MAX}));
        assert_eq!(
            pointers(payload(Operation::Matrix, 10, data).plan(&REFERENCE)),
            vec!["/data/size"]
        );
    }

    #[test]
    fn data_must_be_an_object_or_null() {
        for data in [json!([null, null]), json!([]), json!("n"), json!(5), json!(true)] {
            let body = json!({"operation": "prime", "complexity": 1, "data": data});
            let err = serde_json::from_value::<WorkPayload>(body).expect_err("not an object");
            assert!(err.to_string().contains("a JSON object or null"), "{data}: {err}");
        }
        let null = json!({"operation": "prime", "complexity": 1, "data": null});
        assert_eq!(serde_json::from_value::<WorkPayload>(null).expect("null").data, None);
        let object = json!({"operation": "prime", "complexity": 1, "data": {"n": 3}});
        let parsed = serde_json::from_value::<WorkPayload>(object).expect("object");
        assert_eq!(parsed.data.and_then(|d| d.n), Some(3));
    }

    #[test]
    fn errors_inside_data_keep_their_path() {
        let body = br#"{"payload": {"operation": "prime", "complexity": 1, "data": {"n": "x"}}}"#;
        #[derive(Debug, Deserialize)]
        struct Outer {
            #[allow(dead_code)]
            payload: WorkPayload,
        }
        let mut de = serde_json::Deserializer::from_slice(body);
        let err = serde_path_to_error::deserialize::<_, Outer>(&mut de).expect_err("bad n");
        assert_eq!(err.path().to_string(), "payload.data.n");
    }

    #[test]
    fn unbounded_transform_items_are_refused() {
        let cases = [
            (json!({"items": []}), "/data/items"),
            (json!({"items": [1e300]}), "/data/items/0"),
            (json!({"items": [-1.5e15]}), "/data/items/0"),
            (
                json!({"items": [1, "y".repeat(MAX_ITEM_STRING_CHARS + 1)]}),
                "/data/items/1",
            ),
            (json!({"items": [{"a": [1]}]}), "/data/items/0"),
            (json!({"items": [[[1]]]}), "/data/items/0"),
            (json!({"items": [vec![0; MAX_CONTAINER_ENTRIES + 1]]}), "/data/items/0"),
            (json!({"items": vec![0; MAX_ITEMS + 1]}), "/data/items"),
        ];
        for (data, pointer) in cases {
            let got = pointers(payload(Operation::Transform, 1, Some(data.clone())).plan(&REFERENCE));
            assert_eq!(got, vec![pointer], "for {data}");
        }
    }

    #[test]
    fn transform_items_within_every_bound_are_accepted() {
        let full: serde_json::Map<String, Value> = (0..MAX_CONTAINER_ENTRIES)
            .map(|i| (format!("k{i}"), json!(i)))
            .collect();
        let items = json!([
            null,
            true,
            1e15,
            -1e15,
            "z".repeat(MAX_ITEM_STRING_CHARS),
            [1, "a", null, false],
            full
        ]);
        assert!(
            payload(Operation::Transform, 1, Some(json!({"items": items})))
                .plan(&REFERENCE)
                .is_ok()
        );
        assert!(
            payload(Operation::Transform, 1, None).plan(&REFERENCE).is_ok(),
            "the default items"
        );
    }

    #[test]
    fn transform_rounds_spread_the_node_budget_over_the_input() {
        let c = Complexity::new(3).expect("valid");
        let budget = REFERENCE.amount_for(Operation::Transform, c);
        let plan = payload(Operation::Transform, 3, Some(json!({"items": [1, 2]}))).plan(&REFERENCE);
        assert_eq!(
            plan.expect("valid"),
            Work::Transform {
                items: vec![json!(1), json!(2)],
                rounds: (budget / 2) as u32
            }
        );
    }

    #[test]
    fn unknown_fields_are_refused_by_the_parser() {
        let typo = serde_json::from_value::<WorkPayload>(json!({"operation": "hash", "complexty": 5}));
        assert!(
            typo.expect_err("typo")
                .to_string()
                .contains("unknown field `complexty`")
        );
    }

    #[test]
    fn operations_round_trip_through_their_names() {
        for op in Operation::ALL {
            assert_eq!(op.as_str().parse::<Operation>(), Ok(op));
        }
        assert!("sort".parse::<Operation>().is_err());
    }
}
