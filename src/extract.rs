//! Request extractors whose rejections are `ApiError`s, so even a malformed request gets a
//! problem+json answer: `ApiJson` (415/400/413/422 with a JSON pointer), `ApiQuery` (422) and
//! `ApiPath` (404).

use axum::body::Bytes;
use axum::extract::{FromRef, FromRequest, FromRequestParts, Request};
use axum::http::{HeaderMap, StatusCode, header};
use serde::de::DeserializeOwned;
use serde_path_to_error::Segment;

use crate::error::{ApiError, FieldError};

/// A JSON body. Unlike `axum::Json`, a body that parses but does not fit the schema gets a 422
/// that points at the offending field (`/payload/complexity`).
pub(crate) struct ApiJson<T>(pub T);

/// The body limit, for the 413's message (the `DefaultBodyLimit` layer enforces it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BodyLimitKb(pub usize);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
    BodyLimitKb: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        if !is_json(req.headers()) {
            return Err(ApiError::UnsupportedMediaType(
                "expected a body with `Content-Type: application/json`".to_owned(),
            ));
        }
        let BodyLimitKb(limit_kb) = BodyLimitKb::from_ref(state);
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge { limit_kb }
            } else {
                ApiError::BadRequest(rejection.body_text())
            }
        })?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// Parses `bytes` as `T`: syntax errors are 400, schema errors 422 with a pointer.
pub(crate) fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|err| {
        let pointer = pointer(err.path());
        json_error(pointer, err.into_inner())
    })?;
    de.end().map_err(|err| json_error(String::new(), err))?;
    Ok(value)
}

fn json_error(pointer: String, err: serde_json::Error) -> ApiError {
    match err.classify() {
        serde_json::error::Category::Data => ApiError::Validation {
            detail: if pointer.is_empty() {
                err.to_string()
            } else {
                format!("{pointer}: {err}")
            },
            errors: vec![FieldError {
                pointer,
                detail: err.to_string(),
            }],
        },
        _ => ApiError::BadRequest(format!("malformed JSON: {err}")),
    }
}

/// `payload.data.items[2]` -> `/payload/data/items/2` (RFC 6901).
fn pointer(path: &serde_path_to_error::Path) -> String {
    path.iter()
        .filter_map(|segment| match segment {
            Segment::Seq { index } => Some(index.to_string()),
            Segment::Map { key } => Some(key.replace('~', "~0").replace('/', "~1")),
            Segment::Enum { variant } => Some(variant.clone()),
            Segment::Unknown => None,
        })
        .map(|s| format!("/{s}"))
        .collect()
}

fn is_json(headers: &HeaderMap) -> bool {
    let Some(content_type) = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let mime = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
}

/// A query string; a value that does not parse (an unknown `status`) is a 422.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub(crate) struct ApiQuery<T>(pub T);

/// A path parameter; one that does not decode is a 404 like any unknown path.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub(crate) struct ApiPath<T>(pub T);

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Outer {
        payload: Inner,
    }

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Inner {
        complexity: u8,
        items: Option<Vec<u8>>,
    }

    #[test]
    fn schema_errors_point_at_the_field() {
        let err = parse_json::<Outer>(br#"{"payload": {"complexity": "high"}}"#).expect_err("422");
        let problem = err.problem();
        assert_eq!(problem.status, 422);
        assert_eq!(problem.errors[0].pointer, "/payload/complexity");
        let err = parse_json::<Outer>(br#"{"payload": {"complexity": 1, "items": [1, 300]}}"#).expect_err("422");
        assert_eq!(err.problem().errors[0].pointer, "/payload/items/1");
    }

    #[test]
    fn syntax_errors_and_trailing_garbage_are_400() {
        for body in [
            &b"{\"payload\": "[..],
            b"not json",
            b"{\"payload\": {\"complexity\": 1}} x",
        ] {
            let err = parse_json::<Outer>(body).expect_err("400");
            assert_eq!(err.problem().status, 400, "{}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn json_content_types_are_recognised() {
        let mut headers = HeaderMap::new();
        assert!(!is_json(&headers));
        for (value, ok) in [
            ("application/json", true),
            ("application/json; charset=utf-8", true),
            ("application/problem+json", true),
            ("text/plain", false),
        ] {
            headers.insert(header::CONTENT_TYPE, value.parse().expect("header"));
            assert_eq!(is_json(&headers), ok, "{value}");
        }
    }
}
