//! The OpenAPI schema of `WorkPayload`, written by hand so it says exactly what `spec.rs`
//! enforces: a union discriminated by `operation`, each variant with its own `data` and its own
//! bounds, taken from the same constants. A schema-valid payload is accepted and a schema-invalid
//! one refused (schemathesis checks both ways in `.ci/schemathesis`).

use std::borrow::Cow;

use serde_json::{Value, json};
use utoipa::openapi::{RefOr, Schema};
use utoipa::{PartialSchema, ToSchema};

use super::calibration::MAX_PRIME_N;
use super::spec::{
    MAX_CONTAINER_ENTRIES, MAX_INPUT_CHARS, MAX_ITEM_NUMBER, MAX_ITEM_STRING_CHARS, MAX_ITEMS, MAX_MATRIX_SIZE,
};
use super::{Complexity, Operation, WorkPayload};

impl PartialSchema for WorkPayload {
    fn schema() -> RefOr<Schema> {
        let variants: Vec<Value> = Operation::ALL
            .iter()
            .map(|op| json!({"$ref": format!("#/components/schemas/{}", variant_name(*op))}))
            .collect();
        let mapping: serde_json::Map<String, Value> = Operation::ALL
            .iter()
            .map(|op| {
                (
                    op.as_str().to_owned(),
                    json!(format!("#/components/schemas/{}", variant_name(*op))),
                )
            })
            .collect();
        parse(json!({
            "description": "The work to run: an `operation`, a `complexity` and, optionally, the \
                operation's own `data`. Each operation accepts only its own `data` field.",
            "oneOf": variants,
            "discriminator": {"propertyName": "operation", "mapping": mapping},
            "example": {"operation": "hash", "complexity": 5},
        }))
    }
}

impl ToSchema for WorkPayload {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("WorkPayload")
    }

    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        for op in Operation::ALL {
            schemas.push((variant_name(op).to_owned(), variant(op)));
        }
    }
}

/// The component name of one operation's variant.
fn variant_name(op: Operation) -> &'static str {
    match op {
        Operation::Hash => "HashWork",
        Operation::Prime => "PrimeWork",
        Operation::Matrix => "MatrixWork",
        Operation::Transform => "TransformWork",
    }
}

/// One variant: the operation's name as a one-value enum, the complexity, and its `data`. A
/// null `data`, or a null field in it, is the same as an absent one, as the server reads it.
fn variant(op: Operation) -> RefOr<Schema> {
    let (summary, field, field_schema) = match op {
        Operation::Hash => (
            "Chained SHA-256 over `data.input`; the complexity sets the number of iterations.",
            "input",
            json!({"type": ["string", "null"], "maxLength": MAX_INPUT_CHARS,
                "description": "The string to hash (default `\"sync-async\"`).", "example": "hello"}),
        ),
        Operation::Prime => (
            "The n-th prime; the complexity picks n unless `data.n` sets it.",
            "n",
            json!({"type": ["integer", "null"], "minimum": 1, "maximum": MAX_PRIME_N,
                "description": "Which prime to find; replaces the amount the complexity would pick.",
                "example": 1000}),
        ),
        Operation::Matrix => (
            "Square integer matrix multiplication, `A x B^rounds`; the complexity sets how many \
             multiply-adds the rounds add up to (at least one round).",
            "size",
            json!({"type": ["integer", "null"], "minimum": 1, "maximum": MAX_MATRIX_SIZE,
                "description": "The side of the square matrices (default 256).", "example": 64}),
        ),
        Operation::Transform => (
            "A JSON transformation of `data.items`, in rounds; the complexity sets how many node \
             visits the rounds add up to.",
            "items",
            json!({"type": ["array", "null"], "minItems": 1, "maxItems": MAX_ITEMS, "items": transform_item(),
                "description": "The values to transform (default: 64 small records). Each item is a \
                    scalar, or an array or object of scalars.",
                "example": [1, "two", {"three": 3}]}),
        ),
    };
    parse(json!({
        "type": "object",
        "title": op.as_str(),
        "description": summary,
        "required": ["operation", "complexity"],
        "additionalProperties": false,
        "properties": {
            "operation": {"type": "string", "enum": [op.as_str()]},
            "complexity": {"type": "integer", "minimum": Complexity::MIN, "maximum": Complexity::MAX,
                "description": "1 (about 100 ms) to 10 (about 5 s); each step costs about 1.55x the one before.",
                "example": 5},
            "data": {
                "type": ["object", "null"],
                "description": "The operation's input; null is the same as absent.",
                "additionalProperties": false,
                "properties": {field: field_schema},
            },
        },
    }))
}

/// What `spec::check_item` accepts.
fn transform_item() -> Value {
    let scalar = json!({"anyOf": [
        {"type": "null"},
        {"type": "boolean"},
        {"type": "number", "minimum": -MAX_ITEM_NUMBER, "maximum": MAX_ITEM_NUMBER},
        {"type": "string", "maxLength": MAX_ITEM_STRING_CHARS},
    ]});
    json!({"anyOf": [
        scalar,
        {"type": "array", "maxItems": MAX_CONTAINER_ENTRIES, "items": scalar},
        {"type": "object", "maxProperties": MAX_CONTAINER_ENTRIES, "additionalProperties": scalar},
    ]})
}

/// The schemas above are constants of this file; one that does not read as a schema is a bug the
/// OpenAPI snapshot test shows at once.
fn parse(schema: Value) -> RefOr<Schema> {
    serde_json::from_value(schema).expect("a hand-written schema is a valid OpenAPI schema")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_lists_only_its_own_data_field_and_its_bounds() {
        for op in Operation::ALL {
            let schema = serde_json::to_value(variant(op)).expect("json");
            let data = &schema["properties"]["data"]["properties"];
            assert_eq!(data.as_object().map(|o| o.len()), Some(1), "{op}: {data}");
            assert_eq!(schema["properties"]["operation"]["enum"], json!([op.as_str()]));
            assert_eq!(schema["properties"]["complexity"]["maximum"], json!(10));
        }
        let prime = serde_json::to_value(variant(Operation::Prime)).expect("json");
        assert_eq!(
            prime["properties"]["data"]["properties"]["n"]["maximum"],
            json!(MAX_PRIME_N)
        );
    }

    #[test]
    fn the_union_is_discriminated_by_operation() {
        let schema = serde_json::to_value(WorkPayload::schema()).expect("json");
        assert_eq!(schema["discriminator"]["propertyName"], "operation");
        assert_eq!(schema["oneOf"].as_array().map(Vec::len), Some(4));
        assert_eq!(
            schema["discriminator"]["mapping"]["matrix"],
            "#/components/schemas/MatrixWork"
        );
    }
}
