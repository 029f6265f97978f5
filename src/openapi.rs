//! The OpenAPI document's frame (title, tags, shared schemas) and the error responses that many
//! endpoints share. Paths come from each handler's `#[utoipa::path]`; a handler's doc comment is
//! its summary and description.

use utoipa::{IntoResponses, OpenApi};

use crate::callback::CallbackBody;
use crate::error::{FieldError, Problem};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "sync-async",
        description = "Measures how a synchronous API and an asynchronous (acknowledge now, deliver by \
            callback) API behave under load. Both run the same calibrated CPU work engine: `hash`, \
            `prime`, `matrix` and `transform`, complexity 1 (about 100 ms) to 10 (about 5 s).\n\n\
            Every error is an RFC 9457 `application/problem+json` document. Every response carries \
            `x-request-id`; rate-limited routes also carry `X-RateLimit-Limit` and `X-RateLimit-Remaining`.",
        license(name = "MIT"),
    ),
    tags(
        (name = "sync", description = "Run work while the client waits"),
        (name = "async", description = "Acknowledge now, deliver the result by callback"),
        (name = "requests", description = "Stored requests and their results"),
        (name = "operations", description = "Index, health and metrics"),
    ),
    components(schemas(Problem, FieldError, CallbackBody))
)]
pub(crate) struct ApiDoc;

/// The 400 of an endpoint that takes a JSON body.
#[derive(IntoResponses)]
#[expect(dead_code, reason = "only documents responses in the OpenAPI document")]
pub(crate) enum MalformedJson {
    /// The body is not well-formed JSON.
    #[response(status = 400, content_type = "application/problem+json", example = json!({
        "type": "urn:sync-async:problem:bad-request", "title": "Bad Request", "status": 400,
        "detail": "malformed JSON: EOF while parsing an object at line 1 column 12"}))]
    BadRequest(Problem),
}

/// The errors every JSON body can get besides a 400.
#[derive(IntoResponses)]
#[expect(dead_code, reason = "only documents responses in the OpenAPI document")]
pub(crate) enum PayloadErrors {
    /// The body is larger than MAX_PAYLOAD_SIZE_KB.
    #[response(status = 413, content_type = "application/problem+json")]
    TooLarge(Problem),
    /// The body is not declared as `application/json`.
    #[response(status = 415, content_type = "application/problem+json")]
    UnsupportedMediaType(Problem),
    /// The JSON does not describe valid work; `errors` points at each invalid field.
    #[response(status = 422, content_type = "application/problem+json", example = json!({
        "type": "urn:sync-async:problem:validation", "title": "Unprocessable Content", "status": 422,
        "detail": "/payload/complexity must be between 1 and 10, got 11",
        "errors": [{"pointer": "/payload/complexity", "detail": "must be between 1 and 10, got 11"}]}))]
    Invalid(Problem),
}

/// The per-client rate limit.
#[derive(IntoResponses)]
#[expect(dead_code, reason = "only documents responses in the OpenAPI document")]
pub(crate) enum RateLimited {
    /// This client used its burst of RATE_LIMIT_REQUESTS; retry after `Retry-After` seconds.
    #[response(status = 429, content_type = "application/problem+json", headers(
        ("Retry-After" = u64, description = "Seconds until a request is allowed again (at least 1)"),
        ("X-RateLimit-Limit" = u32, description = "The burst size"),
        ("X-RateLimit-Remaining" = u32, description = "Requests left in the burst (0 here)"),
    ))]
    TooManyRequests(Problem),
}
