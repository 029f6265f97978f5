//! The client address a request is attributed to (rate limits, idempotency scope, the loopback
//! rule of the callback policy): the TCP peer, or, when the peer is one of `TRUSTED_PROXIES`, the
//! nearest `X-Forwarded-For` entry that is not a trusted proxy. The extractor takes its settings
//! through `FromRef`, so this module knows nothing of the app state.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use axum::extract::{ConnectInfo, FromRef, FromRequestParts};
use axum::http::HeaderMap;
use axum::http::request::Parts;

use crate::error::ApiError;
use crate::trusted_proxies::{TrustedProxies, parse_entry};

/// Headers a proxy uses to say whom it forwards for. From a peer that is not trusted they are
/// never read, but their presence still tells that a proxy stands between the client and us.
const FORWARDING_HEADERS: [&str; 3] = ["x-forwarded-for", "forwarded", "x-real-ip"];

/// Where the client address comes from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClientIpSource {
    /// The peers whose `X-Forwarded-For` is read. Empty: the header is never read.
    pub trusted_proxies: TrustedProxies,
}

/// The client a request is attributed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp {
    /// Its address: the peer's, or the one a trusted proxy forwarded for.
    pub ip: IpAddr,
    /// True when the client runs on this host: a loopback address that reached us directly or
    /// through proxies on this host, and no untrusted proxy forwarded the request. Only such a
    /// client may have the server call its loopback (LOOPBACK_CALLBACKS=local).
    pub on_this_host: bool,
}

impl ClientIpSource {
    /// The client of a request with these headers from this peer. A trusted peer's
    /// `X-Forwarded-For` is walked from the right: trusted proxies are skipped, and the first
    /// entry that is not one is the client. An entry that does not parse stops the walk, and
    /// the peer is the client (a proxy we trust wrote something we cannot read).
    pub fn resolve(&self, headers: &HeaderMap, peer: Option<SocketAddr>) -> ClientIp {
        let peer = peer.map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |addr| addr.ip().to_canonical());
        let forwarded = FORWARDING_HEADERS.iter().any(|name| headers.contains_key(*name));
        if !self.trusted_proxies.contains(peer) {
            // A loopback peer that forwards for someone else is a proxy on this host that is not
            // in TRUSTED_PROXIES: its clients are not on this host, whatever the peer address.
            return ClientIp {
                ip: peer,
                on_this_host: peer.is_loopback() && !forwarded,
            };
        }
        let mut client = None;
        for entry in forwarded_for(headers).rev() {
            let Some(ip) = parse_entry(entry) else {
                tracing::debug!(entry, "an X-Forwarded-For entry does not parse; the peer is the client");
                return ClientIp {
                    ip: peer,
                    on_this_host: false,
                };
            };
            client = Some(ip);
            if !self.trusted_proxies.contains(ip) {
                break;
            }
        }
        // With every entry a trusted proxy, the leftmost is the client, as far as we can know.
        let ip = client.unwrap_or(peer);
        ClientIp {
            ip,
            // A loopback address that a proxy on another host names is that host's loopback.
            on_this_host: ip.is_loopback() && peer.is_loopback(),
        }
    }

    /// Whether the browser reached us over HTTPS. This server speaks plain HTTP, so only a
    /// trusted proxy can say so, with `X-Forwarded-Proto` (its first entry: the scheme the
    /// client used); the same header from anyone else is not believed.
    pub fn came_over_https(&self, parts: &Parts) -> bool {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip().to_canonical());
        let proto = parts
            .headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .map(str::trim);
        peer.is_some_and(|ip| self.trusted_proxies.contains(ip))
            && proto.is_some_and(|p| p.eq_ignore_ascii_case("https"))
    }

    /// The client of a request, resolved once: the rate limiter stores it in the request's
    /// extensions and handlers read it from there.
    pub fn of(&self, parts: &Parts) -> ClientIp {
        if let Some(client) = parts.extensions.get::<ClientIp>() {
            return *client;
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

/// Every `X-Forwarded-For` entry, left to right, over every header line in order.
fn forwarded_for(headers: &HeaderMap) -> impl DoubleEndedIterator<Item = &str> {
    let lines: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        // A line that is not visible ASCII is one entry that does not parse.
        .map(|value| value.to_str().unwrap_or("\u{fffd}"))
        .collect();
    lines.into_iter().flat_map(|line| line.split(',')).map(str::trim)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(proxies: &[&str]) -> ClientIpSource {
        ClientIpSource {
            trusted_proxies: TrustedProxies::parse(proxies).expect("valid proxies"),
        }
    }

    fn headers(forwarded_for: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for line in forwarded_for {
            headers.append("x-forwarded-for", line.parse().expect("header"));
        }
        headers
    }

    fn peer(addr: &str) -> Option<SocketAddr> {
        Some(addr.parse().expect("socket address"))
    }

    fn client(source: &ClientIpSource, xff: &[&str], from: &str) -> (String, bool) {
        let c = source.resolve(&headers(xff), peer(from));
        (c.ip.to_string(), c.on_this_host)
    }

    #[test]
    fn forwarded_for_is_ignored_unless_the_peer_is_a_trusted_proxy() {
        let nobody = ClientIpSource::default();
        assert_eq!(
            client(&nobody, &["203.0.113.7"], "198.51.100.1:4000"),
            ("198.51.100.1".into(), false)
        );
        let other = source(&["10.0.0.1"]);
        assert_eq!(
            client(&other, &["203.0.113.7"], "198.51.100.1:4000"),
            ("198.51.100.1".into(), false)
        );
    }

    #[test]
    fn the_walk_from_the_right_skips_trusted_proxies_and_stops_at_the_first_other() {
        let proxies = source(&["127.0.0.1/32", "10.0.0.0/8"]);
        // A client-chosen entry on the left is never believed: the nearest untrusted hop wins.
        let xff = ["1.2.3.4, 203.0.113.5, 10.1.1.1", "10.2.2.2"];
        assert_eq!(client(&proxies, &xff, "127.0.0.1:80"), ("203.0.113.5".into(), false));
        // Every entry a trusted proxy: the leftmost.
        assert_eq!(
            client(&proxies, &["10.9.9.9, 10.1.1.1"], "127.0.0.1:80"),
            ("10.9.9.9".into(), false)
        );
        // No header: the peer.
        assert_eq!(client(&proxies, &[], "127.0.0.1:80"), ("127.0.0.1".into(), true));
    }

    #[test]
    fn an_entry_that_does_not_parse_means_the_peer_is_the_client() {
        let proxies = source(&["127.0.0.1"]);
        for bad in ["unknown", "", "1.2.3.4:99999", "[2001:db8::1", "not an ip, 10.0.0.1x"] {
            assert_eq!(
                client(&proxies, &[bad], "127.0.0.1:80"),
                ("127.0.0.1".into(), false),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn entries_with_ports_and_brackets_parse() {
        let proxies = source(&["127.0.0.1"]);
        for (entry, ip) in [
            ("203.0.113.5:4711", "203.0.113.5"),
            ("[2001:db8::7]:4711", "2001:db8::7"),
            ("[2001:db8::7]", "2001:db8::7"),
            ("2001:db8::7", "2001:db8::7"),
            ("::ffff:203.0.113.5", "203.0.113.5"),
        ] {
            assert_eq!(client(&proxies, &[entry], "127.0.0.1:80").0, ip, "{entry}");
        }
    }

    #[test]
    fn a_loopback_client_is_on_this_host_only_when_no_untrusted_proxy_forwarded_it() {
        let nobody = ClientIpSource::default();
        assert_eq!(client(&nobody, &[], "127.0.0.1:80"), ("127.0.0.1".into(), true));
        assert_eq!(client(&nobody, &[], "[::1]:80"), ("::1".into(), true));
        assert_eq!(
            client(&nobody, &[], "[::ffff:127.0.0.1]:80"),
            ("127.0.0.1".into(), true)
        );
        // A proxy on this host that is not in TRUSTED_PROXIES.
        assert_eq!(
            client(&nobody, &["203.0.113.5"], "127.0.0.1:80"),
            ("127.0.0.1".into(), false)
        );
        let mut real_ip = HeaderMap::new();
        real_ip.insert("x-real-ip", "203.0.113.5".parse().expect("header"));
        assert!(!nobody.resolve(&real_ip, peer("127.0.0.1:80")).on_this_host);
        // A trusted proxy on another host forwarding for its own loopback.
        let remote_proxy = source(&["10.0.0.1"]);
        assert_eq!(
            client(&remote_proxy, &["127.0.0.1"], "10.0.0.1:80"),
            ("127.0.0.1".into(), false)
        );
        // A trusted proxy on this host forwarding for a client on this host.
        let local_proxy = source(&["127.0.0.1"]);
        assert_eq!(client(&local_proxy, &["::1"], "127.0.0.1:80"), ("::1".into(), true));
    }
}
