//! The callback URL policy, applied twice with the same code: to the URL at submission (scheme,
//! userinfo, host, IP literals) and, through `PolicyResolver`, to every address DNS returns at
//! delivery time, which defeats DNS rebinding. IPv6 forms that embed an IPv4 address
//! (IPv4-mapped, IPv4-compatible, NAT64, 6to4) are judged by the IPv4 address inside.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, LazyLock};

use ipnet::{Ipv4Net, Ipv6Net};
use url::{Host, Url};

use crate::config::Config;

/// The longest callback URL accepted.
pub(crate) const MAX_URL_LEN: usize = 2_048;

/// IPv4 ranges refused when BLOCK_PRIVATE_IPS is on: "this network", private, shared (CGNAT),
/// link-local, IETF protocol assignments, benchmarking, multicast and reserved (with broadcast).
static PRIVATE_V4: LazyLock<Vec<Ipv4Net>> = LazyLock::new(|| {
    [
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.0.0.0/24",
        "192.168.0.0/16",
        "198.18.0.0/15",
        "224.0.0.0/4",
        "240.0.0.0/4",
    ]
    .iter()
    .filter_map(|n| n.parse().ok())
    .collect()
});

/// IPv6 ranges refused when BLOCK_PRIVATE_IPS is on: unique local, link-local, multicast.
static PRIVATE_V6: LazyLock<Vec<Ipv6Net>> = LazyLock::new(|| {
    ["fc00::/7", "fe80::/10", "ff00::/8"]
        .iter()
        .filter_map(|n| n.parse().ok())
        .collect()
});

static LOOPBACK_V4: LazyLock<Ipv4Net> = LazyLock::new(|| Ipv4Net::new(Ipv4Addr::new(127, 0, 0, 0), 8).expect("valid"));

/// Why a callback URL or address was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refusal {
    #[error("it is not a valid absolute URL ({0})")]
    Unparseable(String),
    #[error("it is longer than {MAX_URL_LEN} characters")]
    TooLong,
    #[error("the scheme `{0}` is not allowed (allowed: {1})")]
    Scheme(String, String),
    #[error("it carries a user name or password")]
    Userinfo,
    #[error("it has no host")]
    NoHost,
    #[error("`{0}` is a loopback host and BLOCK_LOCALHOST is on")]
    Localhost(String),
    #[error("{0} is a private, link-local, shared, multicast or reserved address and BLOCK_PRIVATE_IPS is on")]
    Private(IpAddr),
    #[error("`{0}` does not resolve to any address")]
    Unresolved(String),
}

/// The policy, built once from the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UrlPolicy {
    /// ALLOWED_CALLBACK_SCHEMES, lower case.
    pub allowed_schemes: Vec<String>,
    /// BLOCK_PRIVATE_IPS: refuse private, link-local, shared, multicast and reserved ranges.
    pub block_private_ips: bool,
    /// BLOCK_LOCALHOST: refuse loopback, unspecified and `localhost` names.
    pub block_localhost: bool,
}

impl UrlPolicy {
    pub(crate) fn from_config(config: &Config) -> Self {
        Self {
            allowed_schemes: config.allowed_callback_schemes.clone(),
            block_private_ips: config.block_private_ips,
            block_localhost: config.block_localhost,
        }
    }

    /// Checks a callback URL as submitted. A domain name passes here; its addresses are checked
    /// when it is resolved for delivery.
    pub(crate) fn check_url(&self, raw: &str) -> Result<Url, Refusal> {
        if raw.len() > MAX_URL_LEN {
            return Err(Refusal::TooLong);
        }
        let url = Url::parse(raw.trim()).map_err(|e| Refusal::Unparseable(e.to_string()))?;
        if !self.allowed_schemes.iter().any(|s| s == url.scheme()) {
            return Err(Refusal::Scheme(
                url.scheme().to_owned(),
                self.allowed_schemes.join(", "),
            ));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(Refusal::Userinfo);
        }
        match url.host() {
            None => Err(Refusal::NoHost),
            Some(Host::Domain("")) => Err(Refusal::NoHost),
            Some(Host::Domain(name)) => self.check_name(name),
            Some(Host::Ipv4(ip)) => self.check_ip(IpAddr::V4(ip)),
            Some(Host::Ipv6(ip)) => self.check_ip(IpAddr::V6(ip)),
        }?;
        Ok(url)
    }

    /// Refuses `localhost` and `*.localhost` (which resolve to loopback by definition).
    pub(crate) fn check_name(&self, name: &str) -> Result<(), Refusal> {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if self.block_localhost && (name == "localhost" || name.ends_with(".localhost")) {
            return Err(Refusal::Localhost(name));
        }
        Ok(())
    }

    /// Checks one address, judging embedded IPv4 addresses by the IPv4 address inside.
    pub(crate) fn check_ip(&self, ip: IpAddr) -> Result<(), Refusal> {
        let judged = embedded_ipv4(ip).map_or(ip, IpAddr::V4);
        if self.block_localhost && is_loopback(judged) {
            return Err(Refusal::Localhost(ip.to_string()));
        }
        if self.block_private_ips && is_private(judged) {
            return Err(Refusal::Private(ip));
        }
        Ok(())
    }
}

/// Loopback, and the unspecified addresses, which a connect on Linux also sends to this host.
fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => LOOPBACK_V4.contains(&v4) || v4.is_unspecified(),
        IpAddr::V6(v6) => v6 == Ipv6Addr::LOCALHOST || v6.is_unspecified(),
    }
}

fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => PRIVATE_V4.iter().any(|net| net.contains(&v4)),
        IpAddr::V6(v6) => v6.is_unspecified() || PRIVATE_V6.iter().any(|net| net.contains(&v6)),
    }
}

/// The IPv4 address inside an IPv4-mapped (`::ffff:a.b.c.d`), IPv4-translated
/// (`::ffff:0:a.b.c.d`), IPv4-compatible (`::a.b.c.d`), NAT64 (`64:ff9b::a.b.c.d`, and the
/// local-use `64:ff9b:1::/48` in its RFC 6052 layout) or 6to4 (`2002:AABB:CCDD::`) address.
fn embedded_ipv4(ip: IpAddr) -> Option<Ipv4Addr> {
    let IpAddr::V6(v6) = ip else { return None };
    let s = v6.segments();
    let low32 = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    match s {
        [0, 0, 0, 0, 0, 0xffff, _, _] | [0, 0, 0, 0, 0xffff, 0, _, _] => Some(low32),
        // A /48 prefix: the address sits in bits 48-63 and 72-87, around the zero "u" octet.
        [0x64, 0xff9b, 0x0001, a, b, c, _, _] => Some(Ipv4Addr::new((a >> 8) as u8, a as u8, b as u8, (c >> 8) as u8)),
        // `::` and `::1` are IPv6's own unspecified and loopback addresses, not embeddings.
        [0, 0, 0, 0, 0, 0, _, _] if v6 != Ipv6Addr::UNSPECIFIED && v6 != Ipv6Addr::LOCALHOST => Some(low32),
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some(low32),
        [0x2002, hi, lo, ..] => Some(Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8)),
        _ => None,
    }
}

/// A reqwest DNS resolver that resolves with the system resolver, then refuses the name if any
/// address it returns breaks the policy. Checking at connect time, not only at submission,
/// defends against a name that resolved to a public address then and to 127.0.0.1 now.
#[derive(Debug, Clone)]
pub(crate) struct PolicyResolver {
    policy: Arc<UrlPolicy>,
}

impl PolicyResolver {
    pub(crate) fn new(policy: Arc<UrlPolicy>) -> Self {
        Self { policy }
    }
}

impl reqwest::dns::Resolve for PolicyResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            policy.check_name(&host)?;
            let addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if addrs.is_empty() {
                return Err(Box::new(Refusal::Unresolved(host)) as Box<dyn std::error::Error + Send + Sync>);
            }
            for addr in &addrs {
                policy.check_ip(addr.ip())?;
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strict() -> UrlPolicy {
        UrlPolicy {
            allowed_schemes: vec!["http".into(), "https".into()],
            block_private_ips: true,
            block_localhost: true,
        }
    }

    #[test]
    fn refused_urls_are_refused_for_the_right_reason() {
        let refused: &[(&str, &str)] = &[
            ("ftp://example.com/cb", "scheme"),
            ("file:///etc/passwd", "scheme"),
            ("gopher://example.com", "scheme"),
            ("javascript:alert(1)", "scheme"),
            ("not a url", "unparseable"),
            ("/relative/path", "unparseable"),
            ("http://user:pass@example.com/cb", "userinfo"),
            ("http://user@example.com/cb", "userinfo"),
            ("http://localhost/cb", "localhost"),
            ("http://LOCALHOST:9000/cb", "localhost"),
            ("http://localhost./cb", "localhost"),
            ("http://api.localhost/cb", "localhost"),
            ("http://127.0.0.1/cb", "localhost"),
            ("http://127.1.2.3/cb", "localhost"),
            ("http://2130706433/cb", "localhost"),
            ("http://0x7f.1/cb", "localhost"),
            ("http://0177.0.0.1/cb", "localhost"),
            ("http://[::1]/cb", "localhost"),
            ("http://[::ffff:127.0.0.1]/cb", "localhost"),
            ("http://[::127.0.0.1]/cb", "localhost"),
            ("http://[64:ff9b::127.0.0.1]/cb", "localhost"),
            ("http://[2002:7f00:1::]/cb", "localhost"),
            ("http://[::ffff:0:127.0.0.1]/cb", "localhost"),
            ("http://[64:ff9b:1:7f00:0:100::]/cb", "localhost"),
            ("http://0.0.0.0:8000/cb", "localhost"),
            ("http://[::]:6379/cb", "localhost"),
            ("http://0/cb", "localhost"),
            ("http://0.1.2.3/cb", "private"),
            ("http://10.0.0.1/cb", "private"),
            ("http://100.64.0.1/cb", "private"),
            ("http://169.254.169.254/latest/meta-data", "private"),
            ("http://172.16.0.1/cb", "private"),
            ("http://172.31.255.255/cb", "private"),
            ("http://192.0.0.8/cb", "private"),
            ("http://192.168.1.1/cb", "private"),
            ("http://198.18.0.1/cb", "private"),
            ("http://224.0.0.1/cb", "private"),
            ("http://239.255.255.250/cb", "private"),
            ("http://240.0.0.1/cb", "private"),
            ("http://255.255.255.255/cb", "private"),
            ("http://[64:ff9b:1:a00:0:100::]/cb", "private"),
            ("http://[::ffff:0:10.0.0.1]/cb", "private"),
            ("http://[fc00::1]/cb", "private"),
            ("http://[fd12:3456::1]/cb", "private"),
            ("http://[fe80::1]/cb", "private"),
            ("http://[ff02::1]/cb", "private"),
            ("http://[::ffff:10.0.0.1]/cb", "private"),
            ("http://[::ffff:169.254.169.254]/cb", "private"),
            ("http://[64:ff9b::c0a8:101]/cb", "private"),
            ("http://[2002:c0a8:101::1]/cb", "private"),
            ("http://[::a00:1]/cb", "private"),
            ("http://0xa9fea9fe/cb", "private"),
        ];
        assert!(refused.len() >= 30);
        for (url, why) in refused {
            let err = strict().check_url(url).expect_err(url);
            let got = match err {
                Refusal::Scheme(..) => "scheme",
                Refusal::Unparseable(_) => "unparseable",
                Refusal::Userinfo => "userinfo",
                Refusal::Localhost(_) => "localhost",
                Refusal::Private(_) => "private",
                other => panic!("{url}: unexpected {other:?}"),
            };
            assert_eq!(got, *why, "{url}: {err}");
        }
        assert_eq!(
            strict().check_url(&format!("http://example.com/{}", "a".repeat(MAX_URL_LEN))),
            Err(Refusal::TooLong)
        );
    }

    #[test]
    fn the_local_use_nat64_prefix_is_read_in_its_rfc_6052_layout() {
        let ip: IpAddr = "64:ff9b:1:c0a8:1:100::".parse().expect("ipv6");
        assert_eq!(embedded_ipv4(ip), Some(Ipv4Addr::new(192, 168, 1, 1)));
    }

    #[test]
    fn public_urls_pass() {
        let allowed = [
            "http://example.com/cb",
            "https://example.com:8443/hooks/cb?x=1",
            "HTTPS://Example.COM/cb",
            "http://93.184.216.34/cb",
            "http://8.8.8.8:9000/cb",
            "http://172.32.0.1/cb",
            "http://100.128.0.1/cb",
            "http://[2606:4700:4700::1111]/cb",
            "http://[::ffff:8.8.8.8]/cb",
            "http://[2002:808:808::]/cb",
            "http://localhost.example.com/cb",
        ];
        for url in allowed {
            assert!(strict().check_url(url).is_ok(), "{url}: {:?}", strict().check_url(url));
        }
    }

    #[test]
    fn each_flag_only_blocks_its_own_ranges() {
        let localhost_ok = UrlPolicy {
            block_localhost: false,
            ..strict()
        };
        assert!(localhost_ok.check_url("http://localhost:9000/cb").is_ok());
        assert!(localhost_ok.check_url("http://127.0.0.1:9000/cb").is_ok());
        assert!(localhost_ok.check_url("http://[::1]:9000/cb").is_ok());
        assert!(localhost_ok.check_url("http://10.0.0.1/cb").is_err());
        let private_ok = UrlPolicy {
            block_private_ips: false,
            ..strict()
        };
        assert!(private_ok.check_url("http://10.0.0.1/cb").is_ok());
        assert!(private_ok.check_url("http://127.0.0.1/cb").is_err());
    }

    #[test]
    fn an_https_only_policy_refuses_http() {
        let https_only = UrlPolicy {
            allowed_schemes: vec!["https".into()],
            ..strict()
        };
        assert!(matches!(
            https_only.check_url("http://example.com"),
            Err(Refusal::Scheme(..))
        ));
        assert!(https_only.check_url("https://example.com").is_ok());
    }

    #[tokio::test]
    async fn the_resolver_refuses_names_that_resolve_to_blocked_addresses() {
        use reqwest::dns::Resolve;
        let resolver = PolicyResolver::new(Arc::new(strict()));
        let name: reqwest::dns::Name = "localhost".parse().expect("name");
        assert!(resolver.resolve(name).await.is_err());
        // An address-shaped name goes through the resolver too (getaddrinfo parses it).
        let name: reqwest::dns::Name = "127.0.0.1".parse().expect("name");
        let err = resolver.resolve(name).await.err().expect("refused");
        assert!(err.downcast_ref::<Refusal>().is_some(), "{err}");
        let lenient = PolicyResolver::new(Arc::new(UrlPolicy {
            block_localhost: false,
            ..strict()
        }));
        let name: reqwest::dns::Name = "127.0.0.1".parse().expect("name");
        let addrs: Vec<_> = lenient.resolve(name).await.expect("allowed").collect();
        assert_eq!(addrs[0].ip(), IpAddr::from([127, 0, 0, 1]));
    }
}
