//! The callback URL policy, applied twice with the same code: to the URL at submission (scheme,
//! userinfo, host, IP literals, and who is asking) and, through `PolicyResolver`, to every address
//! DNS returns at delivery time, which defeats DNS rebinding. Addresses are classified by
//! `global`: only globally routable ones pass, metadata services never, and this host's loopback
//! only as LOOPBACK_CALLBACKS says.
//!
//! The loopback rule with LOOPBACK_CALLBACKS=local: a client on this host may submit a URL whose
//! host is `localhost` or a loopback IP literal; nobody else may. The delivery only knows the
//! stored URL, and needs nothing more: such a URL names loopback by its own text, so it was
//! judged at submission. Any other name that resolves to loopback at delivery is refused.

mod global;

use std::net::IpAddr;
use std::sync::Arc;

use url::{Host, Url};

use crate::client_ip::ClientIp;
use crate::config::{Config, LoopbackCallbacks};
use global::Reach;

/// The longest callback URL accepted.
pub(crate) const MAX_URL_LEN: usize = 2_048;

/// Why a loopback target was refused.
const LOOPBACK_NEVER: &str = "LOOPBACK_CALLBACKS is never (or BLOCK_LOCALHOST is on)";
const LOOPBACK_REMOTE_CLIENT: &str = "only clients on this host may use loopback callbacks (LOOPBACK_CALLBACKS=local; a proxy in front needs TRUSTED_PROXIES)";
const LOOPBACK_BY_NAME: &str =
    "only `localhost` and loopback IP literals may name a loopback callback (LOOPBACK_CALLBACKS=local)";

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
    #[error("`{0}` is this host's loopback: {1}")]
    Loopback(String, &'static str),
    #[error("{0} is a cloud metadata address")]
    Metadata(IpAddr),
    #[error(
        "{0} is not globally routable (private, shared, link-local, documentation, multicast or reserved) and BLOCK_PRIVATE_IPS is on"
    )]
    NotGlobal(IpAddr),
    #[error("`{0}` does not resolve to any address")]
    Unresolved(String),
}

/// The policy, built once from the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UrlPolicy {
    /// ALLOWED_CALLBACK_SCHEMES, lower case.
    pub allowed_schemes: Vec<String>,
    /// BLOCK_PRIVATE_IPS: refuse every address that is not globally routable.
    pub block_private_ips: bool,
    /// LOOPBACK_CALLBACKS: who may have the server call its own loopback.
    pub loopback: LoopbackCallbacks,
}

/// Whether a check may let a loopback target through, and if not, why.
type LoopbackVerdict = Result<(), &'static str>;

impl UrlPolicy {
    pub(crate) fn from_config(config: &Config) -> Self {
        Self {
            allowed_schemes: config.allowed_callback_schemes.clone(),
            block_private_ips: config.block_private_ips,
            loopback: config.loopback_callbacks,
        }
    }

    /// Checks a callback URL as a client submits it: a loopback target only for a client on this
    /// host (or anyone, or no one, as LOOPBACK_CALLBACKS says). A domain name passes here; its
    /// addresses are checked when it is resolved for delivery.
    pub(crate) fn check_submitted(&self, raw: &str, client: ClientIp) -> Result<Url, Refusal> {
        let loopback = match self.loopback {
            LoopbackCallbacks::Never => Err(LOOPBACK_NEVER),
            LoopbackCallbacks::Any => Ok(()),
            LoopbackCallbacks::Local if client.on_this_host => Ok(()),
            LoopbackCallbacks::Local => Err(LOOPBACK_REMOTE_CLIENT),
        };
        self.check(raw, loopback)
    }

    /// Checks a stored URL before it is called. Its loopback literals and `localhost` names were
    /// judged, with the client, at submission; only LOOPBACK_CALLBACKS=never refuses them now.
    pub(crate) fn check_url(&self, raw: &str) -> Result<Url, Refusal> {
        self.check(raw, self.stored_loopback())
    }

    fn stored_loopback(&self) -> LoopbackVerdict {
        match self.loopback {
            LoopbackCallbacks::Never => Err(LOOPBACK_NEVER),
            LoopbackCallbacks::Any | LoopbackCallbacks::Local => Ok(()),
        }
    }

    fn check(&self, raw: &str, loopback: LoopbackVerdict) -> Result<Url, Refusal> {
        if raw.chars().count() > MAX_URL_LEN {
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
            Some(Host::Domain(name)) if is_localhost(name) => {
                loopback.map_err(|why| Refusal::Loopback(name.to_ascii_lowercase(), why))
            }
            Some(Host::Domain(_)) => Ok(()),
            Some(Host::Ipv4(ip)) => self.check_ip(IpAddr::V4(ip), loopback),
            Some(Host::Ipv6(ip)) => self.check_ip(IpAddr::V6(ip), loopback),
        }?;
        Ok(url)
    }

    /// Checks one address.
    fn check_ip(&self, ip: IpAddr, loopback: LoopbackVerdict) -> Result<(), Refusal> {
        match global::reach(ip) {
            Reach::Metadata => Err(Refusal::Metadata(ip)),
            Reach::Loopback => loopback.map_err(|why| Refusal::Loopback(ip.to_string(), why)),
            Reach::NotGlobal if self.block_private_ips => Err(Refusal::NotGlobal(ip)),
            Reach::NotGlobal | Reach::Global => Ok(()),
        }
    }

    /// Checks what DNS returned for `name` at delivery: a name refused if any of its addresses
    /// is. Loopback is allowed only for `localhost` names and address-shaped names (both fixed by
    /// the URL's text, so judged at submission), or for everyone with LOOPBACK_CALLBACKS=any.
    pub(crate) fn check_resolved(&self, name: &str, addrs: &[IpAddr]) -> Result<(), Refusal> {
        if addrs.is_empty() {
            return Err(Refusal::Unresolved(name.to_owned()));
        }
        let literal = is_localhost(name) || name.trim_matches(['[', ']']).parse::<IpAddr>().is_ok();
        let loopback = match self.loopback {
            LoopbackCallbacks::Local if !literal => Err(LOOPBACK_BY_NAME),
            _ => self.stored_loopback(),
        };
        addrs.iter().try_for_each(|ip| self.check_ip(*ip, loopback))
    }
}

/// `localhost` and `*.localhost`, which resolve to loopback by definition (RFC 6761).
fn is_localhost(name: &str) -> bool {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost" || name.ends_with(".localhost")
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
            let addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let ips: Vec<IpAddr> = addrs.iter().map(|a| a.ip()).collect();
            policy.check_resolved(&host, &ips)?;
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCAL: ClientIp = ClientIp {
        ip: IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        on_this_host: true,
    };
    const REMOTE: ClientIp = ClientIp {
        ip: IpAddr::V4(std::net::Ipv4Addr::new(203, 0, 113, 5)),
        on_this_host: false,
    };

    fn policy(loopback: LoopbackCallbacks) -> UrlPolicy {
        UrlPolicy {
            allowed_schemes: vec!["http".into(), "https".into()],
            block_private_ips: true,
            loopback,
        }
    }

    fn strict() -> UrlPolicy {
        policy(LoopbackCallbacks::Never)
    }

    fn kind(refusal: &Refusal) -> &'static str {
        match refusal {
            Refusal::Scheme(..) => "scheme",
            Refusal::Unparseable(_) => "unparseable",
            Refusal::Userinfo => "userinfo",
            Refusal::Loopback(..) => "loopback",
            Refusal::NotGlobal(_) => "not-global",
            Refusal::Metadata(_) => "metadata",
            Refusal::NoHost => "no-host",
            Refusal::TooLong => "too-long",
            Refusal::Unresolved(_) => "unresolved",
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
            ("http://localhost/cb", "loopback"),
            ("http://LOCALHOST:9000/cb", "loopback"),
            ("http://localhost./cb", "loopback"),
            ("http://api.localhost/cb", "loopback"),
            ("http://127.0.0.1/cb", "loopback"),
            ("http://127.1.2.3/cb", "loopback"),
            ("http://2130706433/cb", "loopback"),
            ("http://0x7f.1/cb", "loopback"),
            ("http://0177.0.0.1/cb", "loopback"),
            ("http://[::1]/cb", "loopback"),
            ("http://[::ffff:127.0.0.1]/cb", "loopback"),
            ("http://0.0.0.0:8000/cb", "loopback"),
            ("http://[::]:6379/cb", "loopback"),
            ("http://0/cb", "loopback"),
            // Translated, compatible, NAT64 and 6to4 forms of loopback do not reach this host.
            ("http://[::127.0.0.1]/cb", "not-global"),
            ("http://[64:ff9b::127.0.0.1]/cb", "not-global"),
            ("http://[2002:7f00:1::]/cb", "not-global"),
            ("http://[::ffff:0:127.0.0.1]/cb", "not-global"),
            ("http://[64:ff9b:1:7f00:0:100::]/cb", "not-global"),
            ("http://0.1.2.3/cb", "not-global"),
            ("http://10.0.0.1/cb", "not-global"),
            ("http://100.64.0.1/cb", "not-global"),
            ("http://169.254.1.1/cb", "not-global"),
            ("http://172.16.0.1/cb", "not-global"),
            ("http://172.31.255.255/cb", "not-global"),
            ("http://192.0.0.8/cb", "not-global"),
            ("http://192.0.2.10/cb", "not-global"),
            ("http://192.88.99.1/cb", "not-global"),
            ("http://192.168.1.1/cb", "not-global"),
            ("http://198.18.0.1/cb", "not-global"),
            ("http://198.51.100.20/cb", "not-global"),
            ("http://203.0.113.9/cb", "not-global"),
            ("http://224.0.0.1/cb", "not-global"),
            ("http://239.255.255.250/cb", "not-global"),
            ("http://240.0.0.1/cb", "not-global"),
            ("http://255.255.255.255/cb", "not-global"),
            ("http://[64:ff9b:1:a00:0:100::]/cb", "not-global"),
            ("http://[::ffff:0:10.0.0.1]/cb", "not-global"),
            ("http://[100::1]/cb", "not-global"),
            ("http://[2001:db8::1]/cb", "not-global"),
            ("http://[fc00::1]/cb", "not-global"),
            ("http://[fd12:3456::1]/cb", "not-global"),
            ("http://[fe80::1]/cb", "not-global"),
            ("http://[fec0::1]/cb", "not-global"),
            ("http://[ff02::1]/cb", "not-global"),
            ("http://[::ffff:10.0.0.1]/cb", "not-global"),
            ("http://[64:ff9b::c0a8:101]/cb", "not-global"),
            ("http://[2002:c0a8:101::1]/cb", "not-global"),
            ("http://[2002:c000:201::1]/cb", "not-global"),
            ("http://[::a00:1]/cb", "not-global"),
            ("http://[2001:0:4136:e378:8000:63bf:f5ff:fffe]/cb", "not-global"),
            ("http://[2606:4700::5efe:a00:1]/cb", "not-global"),
            ("http://[2606:4700::200:5efe:c0a8:101]/cb", "not-global"),
            ("http://[fe80::5efe:808:808]/cb", "not-global"),
            ("http://169.254.169.254/latest/meta-data", "metadata"),
            ("http://0xa9fea9fe/cb", "metadata"),
            ("http://[::ffff:169.254.169.254]/cb", "metadata"),
            ("http://168.63.129.16/machine?comp=goalstate", "metadata"),
            ("http://100.100.100.200/latest/meta-data", "metadata"),
            ("http://[fd00:ec2::254]/latest/meta-data", "metadata"),
            ("http://[2606:4700::200:5efe:a83f:8110]/cb", "metadata"),
            ("http://[::]/cb", "loopback"),
        ];
        assert!(refused.len() >= 60);
        for (url, why) in refused {
            let err = strict().check_url(url).expect_err(url);
            assert_eq!(kind(&err), *why, "{url}: {err}");
        }
        assert_eq!(
            strict().check_url(&format!("http://example.com/{}", "a".repeat(MAX_URL_LEN))),
            Err(Refusal::TooLong)
        );
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
            "http://192.0.0.9/cb",
            "http://168.63.129.17/cb",
            "http://[2606:4700:4700::1111]/cb",
            "http://[::ffff:8.8.8.8]/cb",
            "http://[2002:808:808::]/cb",
            "http://[64:ff9b::808:808]/cb",
            "http://[2001:0:4136:e378:8000:63bf:f7f7:f7f7]/cb",
            "http://[2606:4700::200:5efe:808:808]/cb",
            "http://localhost.example.com/cb",
        ];
        for url in allowed {
            assert!(strict().check_url(url).is_ok(), "{url}: {:?}", strict().check_url(url));
        }
    }

    #[test]
    fn loopback_targets_are_for_clients_on_this_host_by_default() {
        let local = policy(LoopbackCallbacks::Local);
        for url in [
            "http://localhost:9000/cb",
            "http://127.0.0.1:9000/cb",
            "http://[::1]:9000/cb",
            "http://0.0.0.0:9000/cb",
        ] {
            assert!(local.check_submitted(url, LOCAL).is_ok(), "{url}");
            let err = local.check_submitted(url, REMOTE).expect_err(url);
            assert!(
                matches!(err, Refusal::Loopback(_, LOOPBACK_REMOTE_CLIENT)),
                "{url}: {err}"
            );
            // Stored, it was judged at submission: the delivery lets it through.
            assert!(local.check_url(url).is_ok(), "{url}");
        }
        // Everything else is judged alike for both.
        assert!(local.check_submitted("http://10.0.0.1/cb", LOCAL).is_err());
        assert!(local.check_submitted("http://example.com/cb", REMOTE).is_ok());

        let any = policy(LoopbackCallbacks::Any);
        assert!(any.check_submitted("http://127.0.0.1:9000/cb", REMOTE).is_ok());
        let never = policy(LoopbackCallbacks::Never);
        let err = never
            .check_submitted("http://localhost:9000/cb", LOCAL)
            .expect_err("never");
        assert!(matches!(err, Refusal::Loopback(_, LOOPBACK_NEVER)), "{err}");
    }

    #[test]
    fn a_name_that_resolves_to_loopback_is_refused_unless_it_is_localhost() {
        let loopback: [IpAddr; 2] = [[127, 0, 0, 1].into(), "::1".parse().expect("ip")];
        let local = policy(LoopbackCallbacks::Local);
        assert_eq!(local.check_resolved("localhost", &loopback), Ok(()));
        assert_eq!(local.check_resolved("api.localhost.", &loopback), Ok(()));
        assert_eq!(local.check_resolved("127.0.0.1", &loopback[..1]), Ok(()));
        let err = local
            .check_resolved("rebind.example.com", &loopback[..1])
            .expect_err("rebound");
        assert!(matches!(err, Refusal::Loopback(_, LOOPBACK_BY_NAME)), "{err}");
        // One bad address among good ones refuses the name.
        let mixed: [IpAddr; 2] = [[8, 8, 8, 8].into(), [10, 0, 0, 1].into()];
        assert!(matches!(
            local.check_resolved("mixed.example.com", &mixed),
            Err(Refusal::NotGlobal(_))
        ));
        assert!(matches!(
            local.check_resolved("nothing.example.com", &[]),
            Err(Refusal::Unresolved(_))
        ));
        let any = policy(LoopbackCallbacks::Any);
        assert_eq!(any.check_resolved("rebind.example.com", &loopback), Ok(()));
        let never = policy(LoopbackCallbacks::Never);
        assert!(never.check_resolved("localhost", &loopback).is_err());
    }

    #[test]
    fn metadata_addresses_are_refused_even_when_private_addresses_are_allowed() {
        let lenient = UrlPolicy {
            block_private_ips: false,
            ..policy(LoopbackCallbacks::Any)
        };
        assert!(lenient.check_url("http://10.0.0.1/cb").is_ok());
        assert!(lenient.check_url("http://[2001:db8::1]/cb").is_ok());
        for url in [
            "http://169.254.169.254/latest",
            "http://168.63.129.16/",
            "http://[::ffff:a9fe:a9fe]/",
        ] {
            assert!(matches!(lenient.check_url(url), Err(Refusal::Metadata(_))), "{url}");
        }
        assert!(matches!(
            lenient.check_resolved("metadata.google.internal", &[[169, 254, 169, 254].into()]),
            Err(Refusal::Metadata(_))
        ));
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
        let lenient = PolicyResolver::new(Arc::new(policy(LoopbackCallbacks::Local)));
        let name: reqwest::dns::Name = "127.0.0.1".parse().expect("name");
        let addrs: Vec<_> = lenient.resolve(name).await.expect("allowed").collect();
        assert_eq!(addrs[0].ip(), IpAddr::from([127, 0, 0, 1]));
    }
}
