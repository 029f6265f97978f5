//! The retry policy as a pure function: given what an attempt got back and how many attempts
//! this delivery has made, decide to stop (delivered or given up) or to retry after a delay.
//! No clock, no randomness: the caller passes the jitter in.

use std::time::Duration;

/// The longest wait between two attempts.
pub(super) const MAX_BACKOFF: Duration = Duration::from_secs(24 * 3600);

/// What one delivery attempt got back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AttemptResult {
    /// The receiver answered with this status (redirects included: they are never followed).
    Status { code: u16, retry_after: Option<Duration> },
    /// No answer within CALLBACK_TIMEOUT_SECONDS.
    Timeout,
    /// The connection could not be made or broke.
    Connection,
    /// The URL or an address it resolved to is refused by the SSRF policy.
    Refused,
}

/// What to do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
    Delivered,
    RetryAfter(Duration),
    GiveUp(GiveUpReason),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GiveUpReason {
    /// 410: the receiver says this callback is gone for good.
    Gone,
    /// 3xx: redirects are not followed (they could point anywhere, the policy included).
    Redirect,
    /// Another 4xx: retrying the same request will not help.
    Rejected,
    /// The SSRF policy refused the destination.
    Refused,
    /// 1 + MAX_CALLBACK_RETRIES attempts failed.
    RetriesExhausted,
}

impl GiveUpReason {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Gone => "the receiver answered 410 Gone",
            Self::Redirect => "the receiver answered with a redirect, which is not followed",
            Self::Rejected => "the receiver rejected the callback with a 4xx status",
            Self::Refused => "the callback destination is refused by the URL policy",
            Self::RetriesExhausted => "every allowed attempt failed",
        }
    }
}

/// The knobs, from the config.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RetryPolicy {
    /// Retries after the first attempt: a delivery makes at most `1 + max_retries` attempts.
    pub max_retries: u32,
    /// Retry n waits `base^n` units.
    pub backoff_base: f64,
    pub unit: Duration,
    /// A receiver's `Retry-After` is honoured up to this.
    pub max_retry_after: Duration,
}

impl RetryPolicy {
    /// `attempts` counts the attempts of this delivery so far, the one just made included.
    /// `jitter` is a number in [0, 1): the delay is scaled by 0.75 to 1.25 so that many
    /// deliveries failing together do not retry together.
    pub(crate) fn decide(&self, result: &AttemptResult, attempts: u32, jitter: f64) -> Decision {
        let retry_after = match result {
            AttemptResult::Status { code: 200..=299, .. } => return Decision::Delivered,
            AttemptResult::Status { code: 410, .. } => return Decision::GiveUp(GiveUpReason::Gone),
            AttemptResult::Status { code: 300..=399, .. } => return Decision::GiveUp(GiveUpReason::Redirect),
            AttemptResult::Refused => return Decision::GiveUp(GiveUpReason::Refused),
            AttemptResult::Status {
                code: 408 | 429 | 500..=599,
                retry_after,
            } => *retry_after,
            AttemptResult::Status { .. } => return Decision::GiveUp(GiveUpReason::Rejected),
            AttemptResult::Timeout | AttemptResult::Connection => None,
        };
        if attempts > self.max_retries {
            return Decision::GiveUp(GiveUpReason::RetriesExhausted);
        }
        let backoff = self.backoff(attempts, jitter);
        let delay = retry_after.map_or(backoff, |asked| backoff.max(asked.min(self.max_retry_after)));
        Decision::RetryAfter(delay)
    }

    /// The wait before retry `n` (1 for the first retry): `base^n` units, times 0.75 to 1.25,
    /// never more than `MAX_BACKOFF` (large bases and retry counts would overflow otherwise).
    pub(crate) fn backoff(&self, n: u32, jitter: f64) -> Duration {
        let factor = 0.75 + 0.5 * jitter.clamp(0.0, 1.0);
        let secs = self.unit.as_secs_f64() * self.backoff_base.powi(n.min(64) as i32) * factor;
        Duration::try_from_secs_f64(secs)
            .unwrap_or(MAX_BACKOFF)
            .min(MAX_BACKOFF)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_retries: 3,
            backoff_base: 2.0,
            unit: Duration::from_secs(1),
            max_retry_after: Duration::from_secs(60),
        }
    }

    fn status(code: u16) -> AttemptResult {
        AttemptResult::Status {
            code,
            retry_after: None,
        }
    }

    #[test]
    fn any_2xx_is_delivered() {
        for code in [200, 201, 202, 204, 299] {
            assert_eq!(policy().decide(&status(code), 1, 0.5), Decision::Delivered);
        }
    }

    #[test]
    fn gone_redirects_other_4xx_and_refusals_stop_at_once() {
        let p = policy();
        assert_eq!(p.decide(&status(410), 1, 0.5), Decision::GiveUp(GiveUpReason::Gone));
        for code in [301, 302, 303, 307, 308] {
            assert_eq!(
                p.decide(&status(code), 1, 0.5),
                Decision::GiveUp(GiveUpReason::Redirect)
            );
        }
        for code in [400, 401, 403, 404, 422] {
            assert_eq!(
                p.decide(&status(code), 1, 0.5),
                Decision::GiveUp(GiveUpReason::Rejected)
            );
        }
        assert_eq!(
            p.decide(&AttemptResult::Refused, 1, 0.5),
            Decision::GiveUp(GiveUpReason::Refused)
        );
    }

    #[test]
    fn timeouts_connection_errors_408_429_and_5xx_are_retried_with_growing_delays() {
        let p = policy();
        for result in [
            AttemptResult::Timeout,
            AttemptResult::Connection,
            status(408),
            status(429),
            status(500),
            status(503),
        ] {
            assert_eq!(
                p.decide(&result, 1, 0.5),
                Decision::RetryAfter(Duration::from_secs(2)),
                "{result:?}"
            );
            assert_eq!(
                p.decide(&result, 2, 0.5),
                Decision::RetryAfter(Duration::from_secs(4)),
                "{result:?}"
            );
            assert_eq!(
                p.decide(&result, 3, 0.5),
                Decision::RetryAfter(Duration::from_secs(8)),
                "{result:?}"
            );
        }
    }

    #[test]
    fn an_unbroken_delivery_makes_at_most_one_plus_max_retries_attempts() {
        let p = policy();
        let attempts_made = (1..)
            .take_while(|&n| matches!(p.decide(&status(500), n, 0.5), Decision::RetryAfter(_)))
            .count()
            + 1;
        assert_eq!(attempts_made, 4);
        assert_eq!(
            p.decide(&status(500), 4, 0.5),
            Decision::GiveUp(GiveUpReason::RetriesExhausted)
        );
        let no_retries = RetryPolicy {
            max_retries: 0,
            ..policy()
        };
        assert_eq!(
            no_retries.decide(&status(500), 1, 0.5),
            Decision::GiveUp(GiveUpReason::RetriesExhausted)
        );
    }

    #[test]
    fn jitter_spreads_the_delay_by_a_quarter_either_way() {
        let p = policy();
        assert_eq!(p.backoff(1, 0.0), Duration::from_millis(1500));
        assert_eq!(p.backoff(1, 1.0), Duration::from_millis(2500));
        assert_eq!(p.backoff(3, 0.5), Duration::from_secs(8));
    }

    #[test]
    fn huge_bases_and_retry_counts_are_capped_instead_of_overflowing() {
        let extreme = RetryPolicy {
            backoff_base: 10.0,
            max_retries: 20,
            ..policy()
        };
        assert_eq!(extreme.backoff(20, 1.0), MAX_BACKOFF);
        assert_eq!(extreme.decide(&status(500), 20, 1.0), Decision::RetryAfter(MAX_BACKOFF));
    }

    #[test]
    fn the_unit_scales_every_delay() {
        let fast = RetryPolicy {
            unit: Duration::from_millis(1),
            ..policy()
        };
        assert_eq!(fast.backoff(2, 0.5), Duration::from_millis(4));
    }

    #[test]
    fn retry_after_is_honoured_within_the_cap() {
        let p = policy();
        let asked = |secs| AttemptResult::Status {
            code: 503,
            retry_after: Some(Duration::from_secs(secs)),
        };
        assert_eq!(
            p.decide(&asked(30), 1, 0.5),
            Decision::RetryAfter(Duration::from_secs(30))
        );
        assert_eq!(
            p.decide(&asked(3600), 1, 0.5),
            Decision::RetryAfter(Duration::from_secs(60)),
            "capped"
        );
        assert_eq!(
            p.decide(&asked(0), 1, 0.5),
            Decision::RetryAfter(Duration::from_secs(2)),
            "never below backoff"
        );
    }
}
