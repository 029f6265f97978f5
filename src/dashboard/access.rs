//! Who may read the dashboard and who may act on it (redeliver, bursts): one decision, in
//! `decide`, so that API keys (issue 10) plug in here and nowhere else.
//!
//! Without keys: every client may read; only a loopback client (the server's own machine, or
//! an SSH tunnel to it) may act, like Hangfire's default. Actions must also come from the
//! dashboard's own pages: a request another site makes a browser send is refused, since a
//! loopback browser would otherwise carry any page's forged POST.

use std::net::IpAddr;

use axum::extract::{FromRef, FromRequestParts};
use axum::http::HeaderMap;
use axum::http::request::Parts;

use crate::client_ip::ClientIpSource;
use crate::error::ApiError;

/// What one visitor may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Access {
    /// Redeliver and fire bursts.
    pub may_act: bool,
    /// Why not, in words the page shows next to the disabled buttons.
    pub read_only_because: Option<String>,
}

/// The one rule. `client` is the address the request is attributed to (see `client_ip`);
/// `headers` will carry the API key once keys exist (an admin key sees and does everything, a
/// tenant key sees its tenant and acts on it).
pub(crate) fn decide(client: IpAddr, forwarded_for_trusted: bool, headers: &HeaderMap) -> Access {
    // A reverse proxy on the same machine connects from loopback for every client it forwards:
    // unless its X-Forwarded-For is trusted (and so `client` is the real one), such a request is
    // a remote one.
    let proxied = ["x-forwarded-for", "forwarded", "x-real-ip"]
        .iter()
        .any(|h| headers.contains_key(*h));
    if proxied && !forwarded_for_trusted {
        return Access {
            may_act: false,
            read_only_because: Some(
                "read-only: this request came through a proxy and TRUST_FORWARDED_FOR is off, so its \
                 client is not known to be local"
                    .to_owned(),
            ),
        };
    }
    if !client.is_loopback() {
        return Access {
            may_act: false,
            read_only_because: Some(format!(
                "read-only: actions are allowed from the server's own machine (loopback) only, and this \
                 request comes from {client}"
            )),
        };
    }
    if let Some(why) = cross_site(headers) {
        return Access {
            may_act: false,
            read_only_because: Some(why),
        };
    }
    Access {
        may_act: true,
        read_only_because: None,
    }
}

/// Why a request looks sent by another site: a browser's `Sec-Fetch-Site`, or an `Origin` whose
/// host is not the `Host` the request was sent to. Clients that send neither (curl) pass.
fn cross_site(headers: &HeaderMap) -> Option<String> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    // Browsers send Sec-Fetch-Site, and it survives a proxy that rewrites Host; Origin against
    // Host is the fallback for older ones.
    if let Some(site) = header("sec-fetch-site") {
        return (!matches!(site, "same-origin" | "none"))
            .then(|| format!("refused: the request was sent by another site (Sec-Fetch-Site: {site})"));
    }
    let origin = header("origin")?;
    let origin_host = url::Url::parse(origin).ok().map(|u| match u.port() {
        Some(port) => format!("{}:{port}", u.host_str().unwrap_or_default()),
        None => u.host_str().unwrap_or_default().to_owned(),
    });
    (origin_host.as_deref() != header("host"))
        .then(|| format!("refused: the request comes from another origin ({origin})"))
}

/// The visitor of a dashboard request: its address and what it may do.
#[derive(Debug, Clone)]
pub(crate) struct Visitor {
    pub access: Access,
}

impl Visitor {
    /// A 403 unless this visitor may act.
    pub(crate) fn require_act(&self) -> Result<(), ApiError> {
        match &self.access.read_only_because {
            None if self.access.may_act => Ok(()),
            why => Err(ApiError::Forbidden(
                why.clone().unwrap_or_else(|| "this visitor may not act".to_owned()),
            )),
        }
    }
}

impl<S> FromRequestParts<S> for Visitor
where
    S: Send + Sync,
    ClientIpSource: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let source = ClientIpSource::from_ref(state);
        let client = source.of(parts).0;
        Ok(Self {
            access: decide(client, source.trust_forwarded_for, &parts.headers),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().expect("header value"));
        }
        h
    }

    #[test]
    fn loopback_may_act_and_a_remote_client_may_only_read() {
        let local: IpAddr = [127, 0, 0, 1].into();
        let remote: IpAddr = [203, 0, 113, 5].into();
        assert!(decide(local, false, &headers(&[])).may_act);
        assert!(decide("::1".parse().expect("ip"), false, &headers(&[])).may_act);
        let denied = decide(remote, false, &headers(&[]));
        assert!(!denied.may_act);
        assert!(denied.read_only_because.expect("why").contains("203.0.113.5"));
    }

    #[test]
    fn a_local_proxy_does_not_make_its_clients_local_unless_forwarded_for_is_trusted() {
        let proxy: IpAddr = [127, 0, 0, 1].into();
        let forwarded = headers(&[("x-forwarded-for", "203.0.113.5")]);
        assert!(!decide(proxy, false, &forwarded).may_act);
        // Trusted: `client` is already the forwarded address, and a local one may act.
        assert!(decide(proxy, true, &headers(&[("x-forwarded-for", "127.0.0.1")])).may_act);
    }

    #[test]
    fn a_request_another_site_made_a_local_browser_send_may_not_act() {
        let local: IpAddr = [127, 0, 0, 1].into();
        assert!(!decide(local, false, &headers(&[("sec-fetch-site", "cross-site")])).may_act);
        assert!(
            !decide(
                local,
                false,
                &headers(&[("origin", "https://evil.example"), ("host", "127.0.0.1:8000")])
            )
            .may_act
        );
        assert!(
            decide(
                local,
                false,
                &headers(&[
                    ("origin", "http://127.0.0.1:8000"),
                    ("host", "127.0.0.1:8000"),
                    ("sec-fetch-site", "same-origin")
                ])
            )
            .may_act
        );
    }
}
