//! One delivery attempt: POST the result with Standard Webhooks headers, never follow a
//! redirect, read at most a little of the answer, and classify what happened.

use std::error::Error as _;
use std::time::{Duration, Instant};

use reqwest::header::{CONTENT_TYPE, RETRY_AFTER, USER_AGENT};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::retry::AttemptResult;
use crate::model::Status;
use crate::signing::SigningKey;
use crate::ssrf::{Refusal, UrlPolicy};

/// How much of a receiver's answer is read (for the error message); the rest is dropped.
const MAX_ANSWER_BYTES: usize = 1_024;
/// The longest error text stored per attempt.
const MAX_ERROR_CHARS: usize = 300;

/// The JSON body POSTed to `callback_url`.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub(crate) struct CallbackBody {
    pub request_id: String,
    /// `done` or `failed`.
    pub status: Status,
    /// The engine's result when `done`.
    #[schema(value_type = Option<Object>)]
    pub result: Option<Value>,
    /// Why the work failed when `failed`.
    pub error: Option<String>,
    pub execution_time_ms: Option<f64>,
    /// RFC 3339 UTC.
    pub completed_at: Option<String>,
}

/// What an attempt did, ready to store and to feed the retry policy.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct AttemptReport {
    pub result: AttemptResult,
    pub status_code: Option<u16>,
    /// `None` on success.
    pub error_class: Option<&'static str>,
    pub error: Option<String>,
    pub duration: Duration,
}

/// Builds the HTTP client used for every callback: redirects off, proxies off, the policy
/// enforced on every resolved address, and CALLBACK_TIMEOUT_SECONDS over the whole exchange.
pub(crate) fn build_client(policy: std::sync::Arc<UrlPolicy>, timeout: Duration) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .dns_resolver(crate::ssrf::PolicyResolver::new(policy))
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .pool_idle_timeout(Duration::from_secs(30))
        .build()
}

/// Makes one attempt. `id` is the request id, sent as `webhook-id` on every attempt.
pub(super) async fn attempt(
    client: &reqwest::Client,
    policy: &UrlPolicy,
    signing_key: Option<&SigningKey>,
    url: &str,
    id: &str,
    body: &[u8],
) -> AttemptReport {
    let started = Instant::now();
    // IP-literal URLs never reach the resolver, so the policy is applied to the URL again here.
    if let Err(refusal) = policy.check_url(url) {
        return failure(AttemptResult::Refused, None, "refused", refusal.to_string(), started);
    }
    let timestamp = chrono::Utc::now().timestamp();
    let mut request = client
        .post(url)
        .header(CONTENT_TYPE, "application/json")
        .header(USER_AGENT, concat!("sync-async/", env!("CARGO_PKG_VERSION")))
        .header("webhook-id", id)
        .header("webhook-timestamp", timestamp.to_string())
        .body(body.to_vec());
    if let Some(key) = signing_key {
        request = request.header("webhook-signature", key.sign(id, timestamp, body));
    }
    match request.send().await {
        Ok(response) => {
            let code = response.status().as_u16();
            let retry_after = response
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_retry_after);
            let location = response
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let answer = read_capped(response).await;
            let result = AttemptResult::Status { code, retry_after };
            match code {
                200..=299 => AttemptReport {
                    result,
                    status_code: Some(code),
                    error_class: None,
                    error: None,
                    duration: started.elapsed(),
                },
                300..=399 => {
                    let to = location.unwrap_or_else(|| "nowhere".to_owned());
                    failure(
                        result,
                        Some(code),
                        "redirect",
                        format!("HTTP {code}: redirect to {to} not followed"),
                        started,
                    )
                }
                _ => failure(
                    result,
                    Some(code),
                    "http_status",
                    format!("HTTP {code}: {answer}"),
                    started,
                ),
            }
        }
        Err(err) => {
            let text = error_chain(&err);
            if refused(&err) {
                failure(AttemptResult::Refused, None, "refused", text, started)
            } else if err.is_timeout() {
                failure(AttemptResult::Timeout, None, "timeout", text, started)
            } else {
                failure(AttemptResult::Connection, None, "connect", text, started)
            }
        }
    }
}

fn failure(
    result: AttemptResult,
    code: Option<u16>,
    class: &'static str,
    error: String,
    started: Instant,
) -> AttemptReport {
    AttemptReport {
        result,
        status_code: code,
        error_class: Some(class),
        error: Some(error.chars().take(MAX_ERROR_CHARS).collect()),
        duration: started.elapsed(),
    }
}

/// True when the SSRF resolver refused the destination somewhere in the error's cause chain.
fn refused(err: &reqwest::Error) -> bool {
    let mut cause = err.source();
    while let Some(e) = cause {
        if e.downcast_ref::<Refusal>().is_some() {
            return true;
        }
        cause = e.source();
    }
    false
}

fn error_chain(err: &reqwest::Error) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(e) = cause {
        text.push_str(": ");
        text.push_str(&e.to_string());
        cause = e.source();
    }
    text
}

/// The first `MAX_ANSWER_BYTES` of the answer, as text; the rest is never read.
async fn read_capped(mut response: reqwest::Response) -> String {
    let mut buf = Vec::new();
    while buf.len() < MAX_ANSWER_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => buf.extend_from_slice(&chunk),
            _ => break,
        }
    }
    buf.truncate(MAX_ANSWER_BYTES);
    String::from_utf8_lossy(&buf).trim().to_owned()
}

/// `Retry-After` as delay-seconds or an HTTP date (IMF-fixdate, RFC 850 or asctime).
fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let date = httpdate::parse_http_date(value).ok()?;
    Some(
        date.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_the_first_kilobyte_of_an_answer_is_read() {
        let huge = "x".repeat(1_000_000);
        let response = reqwest::Response::from(axum::http::Response::new(huge));
        assert_eq!(read_capped(response).await.len(), MAX_ANSWER_BYTES);
    }

    #[test]
    fn retry_after_takes_seconds_or_an_http_date() {
        assert_eq!(parse_retry_after("120"), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after(" 0 "), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO),
            "a past date means now"
        );
        let future = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(90));
        let parsed = parse_retry_after(&future).expect("date");
        assert!((85..=90).contains(&parsed.as_secs()), "{parsed:?}");
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn retry_after_reads_the_obsolete_http_date_forms_too() {
        for past in ["Sunday, 06-Nov-94 08:49:37 GMT", "Sun Nov  6 08:49:37 1994"] {
            assert_eq!(parse_retry_after(past), Some(Duration::ZERO), "{past}");
        }
    }
}
