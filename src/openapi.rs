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

/// What the derive macros cannot say, added to the finished document: the API keys and the
/// links from a submission to its stored request.
pub(crate) fn complete(api: utoipa::openapi::OpenApi) -> utoipa::openapi::OpenApi {
    document_links(document_api_keys(api))
}

/// OpenAPI links from the answers of `POST /async` and `POST /sync` to the request they
/// stored: a client (and schemathesis' stateful phase) learns that `request_id` is the `{id}`
/// of `/requests/{id}`, its attempts and its redelivery.
fn document_links(mut api: utoipa::openapi::OpenApi) -> utoipa::openapi::OpenApi {
    use utoipa::openapi::RefOr;
    use utoipa::openapi::link::LinkBuilder;

    let targets = [
        (
            "GetRequest",
            "get_request",
            "The stored request, its status and its result",
        ),
        (
            "ListAttempts",
            "list_attempts",
            "The callback delivery attempts of the request",
        ),
        ("Redeliver", "redeliver", "Send the stored result to the callback again"),
    ];
    for (path, status) in [("/async", "202"), ("/sync", "200")] {
        let Some(post) = api.paths.paths.get_mut(path).and_then(|item| item.post.as_mut()) else {
            continue;
        };
        let Some(RefOr::T(response)) = post.responses.responses.get_mut(status) else {
            continue;
        };
        for (name, operation_id, description) in targets {
            let link = LinkBuilder::new()
                .operation_id(operation_id)
                .parameter("id", "$response.body#/request_id")
                .description(description)
                .build();
            response.links.insert(name.to_owned(), RefOr::T(link));
        }
    }
    api
}

/// The security scheme's name in the document.
const API_KEY_SCHEME: &str = "api_key";

/// Documents the API keys on a finished document (its paths included): the bearer scheme, a
/// requirement that is either a key or nothing (keys are optional: without API_KEYS the API is
/// open), and the 401 of every operation but the health check.
fn document_api_keys(mut api: utoipa::openapi::OpenApi) -> utoipa::openapi::OpenApi {
    use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
    use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};

    let scheme = HttpBuilder::new()
        .scheme(HttpAuthScheme::Bearer)
        .description(Some(
            "An API key from API_KEYS (a tenant's: it sees only its own requests) or ADMIN_API_KEY \
             (sees every request), as `Authorization: Bearer <key>`. Needed only when the server has \
             keys; /healthz, /docs and /openapi.json never need one.",
        ))
        .build();
    api.components
        .get_or_insert_with(Default::default)
        .add_security_scheme(API_KEY_SCHEME, SecurityScheme::Http(scheme));
    api.security = Some(vec![
        SecurityRequirement::new(API_KEY_SCHEME, Vec::<String>::new()),
        SecurityRequirement::default(),
    ]);
    let unauthorized = ResponseBuilder::new()
        .description("The server has API keys and this request has none, or a wrong one")
        .header(
            "WWW-Authenticate",
            utoipa::openapi::HeaderBuilder::new()
                .schema(Some(
                    utoipa::openapi::ObjectBuilder::new().schema_type(utoipa::openapi::Type::String),
                ))
                .description(Some("`Bearer`"))
                .build(),
        )
        .content(
            crate::error::PROBLEM_JSON,
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("Problem")))
                .build(),
        )
        .build();
    for (path, item) in api.paths.paths.iter_mut() {
        if path == "/healthz" {
            continue;
        }
        let operations = [
            &mut item.get,
            &mut item.post,
            &mut item.put,
            &mut item.delete,
            &mut item.patch,
        ];
        for operation in operations.into_iter().flatten() {
            operation
                .responses
                .responses
                .entry("401".to_owned())
                .or_insert_with(|| unauthorized.clone().into());
        }
    }
    api
}
