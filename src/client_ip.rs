//! The client address a request is attributed to (rate limits, idempotency scope, auditing):
//! the TCP peer, or, when `TRUST_FORWARDED_FOR` is on, the last `X-Forwarded-For` entry. The
//! extractor takes its settings through `FromRef`, so this module knows nothing of the app state.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRef, FromRequestParts};
use axum::http::HeaderMap;
use axum::http::request::Parts;

use crate::error::ApiError;

/// Where the client address comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ClientIpSource {
    /// Take the last `X-Forwarded-For` entry: the one the proxy in front added. Earlier entries
    /// are whatever the client chose to send.
    pub trust_forwarded_for: bool,
}

/// The client's address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

impl ClientIpSource {
    /// The client address of a request with these headers from this peer.
    pub fn resolve(&self, headers: &HeaderMap, peer: Option<SocketAddr>) -> ClientIp {
        let forwarded = self
            .trust_forwarded_for
            .then(|| headers.get_all("x-forwarded-for").iter().next_back())
            .flatten()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .and_then(|last| last.trim().parse::<IpAddr>().ok());
        let peer = peer.map(|addr| addr.ip().to_canonical());
        ClientIp(forwarded.or(peer).unwrap_or(IpAddr::from([0, 0, 0, 0])))
    }

    /// The client address of a request, resolved once: the rate limiter stores it in the
    /// request's extensions and handlers read it from there.
    pub fn of(&self, parts: &Parts) -> ClientIp {
        if let Some(ip) = parts.extensions.get::<ClientIp>() {
            return *ip;
        }
        let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0);
        self.resolve(&parts.headers, peer)
    }
}

impl<S> FromRequestParts<S> for ClientIp
where
    S: Send + Sync,
    ClientIpSource: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Ok(ClientIpSource::from_ref(state).of(parts))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_for_is_used_only_when_trusted_and_only_its_last_entry() {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", "1.2.3.4, 203.0.113.7".parse().expect("header"));
        let peer: SocketAddr = "[::ffff:127.0.0.1]:4000".parse().expect("addr");
        let untrusted = ClientIpSource::default();
        let trusted = ClientIpSource {
            trust_forwarded_for: true,
        };
        assert_eq!(untrusted.resolve(&headers, Some(peer)).0.to_string(), "127.0.0.1");
        assert_eq!(trusted.resolve(&headers, Some(peer)).0.to_string(), "203.0.113.7");
    }
}
