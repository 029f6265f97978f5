//! Request extractors whose rejections are `ApiError`s, so even a malformed request gets a
//! problem+json answer: `ApiJson` (415/400/413/422 with a JSON pointer), `ApiQuery` (422) and
//! `ClientIp` (the address the rate limiter keyed the request by).

use std::net::{IpAddr, SocketAddr};

use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::{HeaderMap, StatusCode, header, request::Parts};
use serde::de::DeserializeOwned;
use serde_path_to_error::Segment;

use crate::error::{ApiError, FieldError};
use crate::state::AppState;

/// A JSON body. Unlike `axum::Json`, a body that parses but does not fit the schema gets a 422
/// that points at the offending field (`/payload/complexity`).
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        if !is_json(req.headers()) {
            return Err(ApiError::UnsupportedMediaType(
                "expected a body with `Content-Type: application/json`".to_owned(),
            ));
        }
        let limit_kb = state.config.max_payload_size_kb;
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
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
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
pub struct ApiQuery<T>(pub T);

/// A path parameter; one that does not decode is a 404 like any unknown path.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct ApiPath<T>(pub T);

/// The client address requests are attributed to: the TCP peer, or, when TRUST_FORWARDED_FOR
/// is on, the last `X-Forwarded-For` entry. The last entry is the one the trusted proxy added;
/// earlier entries are whatever the client chose to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

impl ClientIp {
    /// Resolves the client address of a request.
    pub fn resolve(headers: &HeaderMap, peer: Option<SocketAddr>, trust_forwarded_for: bool) -> Self {
        let forwarded = trust_forwarded_for
            .then(|| headers.get_all("x-forwarded-for").iter().next_back())
            .flatten()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .and_then(|last| last.trim().parse::<IpAddr>().ok());
        let peer = peer.map(|addr| addr.ip().to_canonical());
        Self(forwarded.or(peer).unwrap_or(IpAddr::from([0, 0, 0, 0])))
    }
}

impl FromRequestParts<AppState> for ClientIp {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if let Some(ip) = parts.extensions.get::<ClientIp>() {
            return Ok(*ip);
        }
        let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0);
        Ok(Self::resolve(&parts.headers, peer, state.config.trust_forwarded_for))
    }
}

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

    #[test]
    fn forwarded_for_is_used_only_when_trusted_and_only_its_last_entry() {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", "1.2.3.4, 203.0.113.7".parse().expect("header"));
        let peer: SocketAddr = "[::ffff:127.0.0.1]:4000".parse().expect("addr");
        assert_eq!(
            ClientIp::resolve(&headers, Some(peer), false).0.to_string(),
            "127.0.0.1"
        );
        assert_eq!(
            ClientIp::resolve(&headers, Some(peer), true).0.to_string(),
            "203.0.113.7"
        );
    }
}
