//! Rate limiting with governor (GCRA): a burst of RATE_LIMIT_REQUESTS that refills evenly over
//! RATE_LIMIT_WINDOW_SECONDS, per tenant when the caller has a tenant's API key, else per client
//! IP. Every answer carries `X-RateLimit-Limit` and
//! `X-RateLimit-Remaining`; a refusal is a problem+json 429 with `Retry-After`. `/healthz` is
//! exempt so that a busy client cannot make a load balancer think the service is down.
//!
//! On PostgreSQL the limit holds for the whole cluster: the same GCRA runs in the database (one
//! upsert per request, or per small batch of requests with a large limit: see `reserve`), so N
//! replicas together admit the configured rate, not N times it. If that write fails, the
//! replica's own governor decides (fail open to the local limit rather than refuse everyone while
//! the database is away).

mod reserve;

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};

use prometheus_client::metrics::counter::Counter;

use crate::auth::Caller;
use crate::client_ip::ClientIpSource;
use crate::db::{Backend, Db, RateVerdict};
use crate::error::ApiError;

/// Paths that never count against the limit.
const EXEMPT_PATHS: [&str; 1] = ["/healthz"];

type KeyedLimiter = RateLimiter<LimitKey, DefaultKeyedStateStore<LimitKey>, DefaultClock, StateInformationMiddleware>;

/// Whose budget a request takes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum LimitKey {
    /// A tenant's: all its clients share it, wherever they are, and no other tenant touches it.
    Tenant(Arc<str>),
    /// A client address's (see `limit_key`): the admin, or any caller of an open API.
    Ip(IpAddr),
}

impl LimitKey {
    /// The caller's budget: its tenant's, or its address's.
    pub(crate) fn of(caller: Option<&Caller>, ip: IpAddr) -> Self {
        match caller {
            Some(Caller::Tenant(name)) => Self::Tenant(name.clone()),
            _ => Self::Ip(limit_key(ip)),
        }
    }
}

impl std::fmt::Display for LimitKey {
    /// The key of the shared (PostgreSQL) limit: `tenant:<name>`, or the address. Tenant names
    /// have no `:` and start no address with `tenant:`, so the two never collide.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tenant(name) => write!(f, "tenant:{name}"),
            Self::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

impl From<IpAddr> for LimitKey {
    fn from(ip: IpAddr) -> Self {
        Self::Ip(limit_key(ip))
    }
}

/// The limiter and the figures its headers report.
pub(crate) struct ClientRateLimiter {
    limiter: KeyedLimiter,
    /// The burst size, reported as `X-RateLimit-Limit`.
    limit: u32,
    /// The time the whole burst takes to refill.
    window: Duration,
    clock: DefaultClock,
    /// Tokens taken from the shared limit in a batch and not spent yet (PostgreSQL only).
    reserved: reserve::Reservations,
}

/// What the limiter decided for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    Allowed { remaining: u32 },
    Refused { retry_after_secs: u64 },
}

impl ClientRateLimiter {
    pub(crate) fn new(requests: u32, window: Duration) -> Self {
        let burst = NonZeroU32::new(requests).unwrap_or(NonZeroU32::MIN);
        let period = (window / burst.get()).max(Duration::from_nanos(1));
        let quota = Quota::with_period(period)
            .unwrap_or_else(|| Quota::per_second(burst))
            .allow_burst(burst);
        let clock = DefaultClock::default();
        let limiter =
            RateLimiter::dashmap_with_clock(quota, clock.clone()).with_middleware::<StateInformationMiddleware>();
        Self {
            limiter,
            limit: burst.get(),
            window,
            clock,
            reserved: reserve::Reservations::default(),
        }
    }

    pub(crate) fn check(&self, key: impl Into<LimitKey>) -> Decision {
        match self.limiter.check_key(&key.into()) {
            Ok(snapshot) => Decision::Allowed {
                remaining: snapshot.remaining_burst_capacity(),
            },
            Err(not_until) => {
                let wait = not_until.wait_time_from(self.clock.now());
                Decision::Refused {
                    retry_after_secs: wait.as_secs_f64().ceil().max(1.0) as u64,
                }
            }
        }
    }

    /// Decides with the cluster-wide state in `db` when the backend keeps one, else locally.
    pub(crate) async fn check_shared(&self, db: &Db, key: LimitKey) -> Decision {
        let now = Instant::now();
        if let Some(left) = self.reserved.spend(&key, now) {
            return Decision::Allowed { remaining: left };
        }
        let batch = reserve::batch_for(self.limit);
        // With batches, one request per key asks the database; the others wait (at most `HOLD`)
        // and spend. (SQLite keeps no shared budget: its answer comes at once, and governor
        // decides.)
        let _taking = if batch > 1 && db.backend() == Backend::Postgres {
            let guard = self.reserved.taking(&key).await;
            if let Some(left) = self.reserved.spend(&key, Instant::now()) {
                return Decision::Allowed { remaining: left };
            }
            guard
        } else {
            None
        };
        let taken_at = Instant::now();
        let mut verdict = self.take_shared(db, &key, batch).await;
        if batch > 1 && matches!(verdict, Ok(Some(RateVerdict::Refused { .. }))) {
            // A whole batch does not fit any more, but one request may.
            verdict = self.take_shared(db, &key, 1).await;
        } else if batch > 1 && matches!(verdict, Ok(Some(RateVerdict::Allowed { .. }))) {
            self.reserved.keep(key.clone(), batch - 1, taken_at);
        }
        match verdict {
            Ok(Some(RateVerdict::Allowed { remaining })) => Decision::Allowed { remaining },
            Ok(Some(RateVerdict::Refused { retry_after })) => Decision::Refused {
                retry_after_secs: retry_after.as_secs_f64().ceil().max(1.0) as u64,
            },
            Ok(None) => self.check(key),
            Err(e) => {
                tracing::debug!(error = %e, "the shared rate limit is out of reach; this replica's own limit decides");
                self.check(key)
            }
        }
    }

    async fn take_shared(&self, db: &Db, key: &LimitKey, tokens: u32) -> Result<Option<RateVerdict>, sqlx::Error> {
        db.take_rate_tokens(&key.to_string(), tokens, self.limit, self.window)
            .await
    }

    pub(crate) fn limit(&self) -> u32 {
        self.limit
    }

    /// Forgets clients whose bucket is full again, so memory follows active clients only.
    pub(crate) fn forget_idle_clients(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }
}

/// The key a client is limited by: its IPv4 address, or its IPv6 /64, since one host usually
/// has a whole /64 and could otherwise rotate addresses for a fresh burst each time.
fn limit_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::from([s[0], s[1], s[2], s[3], 0, 0, 0, 0])
        }
        v4 => v4,
    }
}

/// What the middleware needs, and nothing else.
#[derive(Clone)]
pub(crate) struct RateLimit {
    pub limiter: Arc<ClientRateLimiter>,
    /// How to tell the client's address.
    pub client_ip: ClientIpSource,
    /// Counts refusals (`sync_async_rate_limited` in the metrics).
    pub refused: Counter,
    /// The store, whose shared limit applies on PostgreSQL.
    pub db: Db,
}

/// The middleware: resolves the client IP once (handlers read it from the extensions), then
/// lets the request through or answers 429. It runs after `auth::authenticate`, whose `Caller`
/// chooses the budget.
pub(crate) async fn enforce(State(rate_limit): State<RateLimit>, mut req: Request, next: Next) -> Response {
    let peer = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0);
    let client = rate_limit.client_ip.resolve(req.headers(), peer);
    req.extensions_mut().insert(client);
    if EXEMPT_PATHS.contains(&req.uri().path()) {
        return next.run(req).await;
    }
    let limiter = &rate_limit.limiter;
    let key = LimitKey::of(req.extensions().get::<Caller>(), client.ip);
    match limiter.check_shared(&rate_limit.db, key).await {
        Decision::Allowed { remaining } => {
            let mut response = next.run(req).await;
            let headers = response.headers_mut();
            headers.insert(
                HeaderName::from_static("x-ratelimit-limit"),
                HeaderValue::from(limiter.limit()),
            );
            headers.insert(
                HeaderName::from_static("x-ratelimit-remaining"),
                HeaderValue::from(remaining),
            );
            response
        }
        Decision::Refused { retry_after_secs } => {
            rate_limit.refused.inc();
            ApiError::RateLimited {
                retry_after_secs,
                limit: limiter.limit(),
            }
            .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_burst_is_allowed_then_one_more_is_refused() {
        let limiter = ClientRateLimiter::new(3, Duration::from_secs(60));
        let ip = IpAddr::from([127, 0, 0, 1]);
        let remaining: Vec<Decision> = (0..3).map(|_| limiter.check(ip)).collect();
        assert_eq!(
            remaining,
            vec![
                Decision::Allowed { remaining: 2 },
                Decision::Allowed { remaining: 1 },
                Decision::Allowed { remaining: 0 }
            ]
        );
        // One cell refills every 60 s / 3 = 20 s.
        match limiter.check(ip) {
            Decision::Refused { retry_after_secs } => {
                assert!((19..=20).contains(&retry_after_secs), "{retry_after_secs}")
            }
            allowed => panic!("expected a refusal, got {allowed:?}"),
        }
    }

    #[test]
    fn clients_are_limited_separately() {
        let limiter = ClientRateLimiter::new(1, Duration::from_secs(60));
        assert!(matches!(
            limiter.check(IpAddr::from([10, 0, 0, 1])),
            Decision::Allowed { .. }
        ));
        assert!(matches!(
            limiter.check(IpAddr::from([10, 0, 0, 2])),
            Decision::Allowed { .. }
        ));
        assert!(matches!(
            limiter.check(IpAddr::from([10, 0, 0, 1])),
            Decision::Refused { .. }
        ));
    }

    #[test]
    fn ipv6_clients_are_limited_by_their_64() {
        let limiter = ClientRateLimiter::new(1, Duration::from_secs(60));
        let first: IpAddr = "2001:db8:1:2::1".parse().expect("ip");
        let same_64: IpAddr = "2001:db8:1:2:ffff::9".parse().expect("ip");
        let other_64: IpAddr = "2001:db8:1:3::1".parse().expect("ip");
        assert!(matches!(limiter.check(first), Decision::Allowed { .. }));
        assert!(matches!(limiter.check(same_64), Decision::Refused { .. }));
        assert!(matches!(limiter.check(other_64), Decision::Allowed { .. }));
    }

    #[test]
    fn retry_after_is_never_below_one_second() {
        let limiter = ClientRateLimiter::new(1000, Duration::from_millis(10));
        let ip = IpAddr::from([127, 0, 0, 1]);
        let refusal = (0..2000)
            .map(|_| limiter.check(ip))
            .find(|d| matches!(d, Decision::Refused { .. }));
        if let Some(Decision::Refused { retry_after_secs }) = refusal {
            assert_eq!(retry_after_secs, 1);
        }
    }
}
