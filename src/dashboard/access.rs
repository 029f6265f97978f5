//! Who may read the dashboard and who may act on it (redeliver, bursts): one decision, in
//! `decide`, from the `Caller` that `auth` identified.
//!
//! With API keys set, a key (sent as a Bearer header, or signed in through the form) decides:
//! the admin sees everything and may act on anything; a tenant sees its own requests only and
//! may act on them, from wherever it is. Without keys: every client may read; only a loopback
//! client (the server's own machine, or an SSH tunnel to it) may act, like Hangfire's default.
//! Either way, actions must come from the dashboard's own pages: a request another site makes a
//! browser send is refused, since the browser would otherwise carry any page's forged POST.

use axum::extract::{FromRef, FromRequestParts};
use axum::http::HeaderMap;
use axum::http::request::Parts;

use crate::auth::Caller;
use crate::client_ip::{ClientIp, ClientIpSource};
use crate::error::ApiError;

/// What one visitor may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Access {
    /// Redeliver and fire bursts.
    pub may_act: bool,
    /// Why not, in words the page shows next to the disabled buttons.
    pub read_only_because: Option<String>,
}

/// The one rule. `caller` is who `auth` says is calling: `Open` without keys, else the admin or
/// a tenant (what each may *see* is `Caller::may_see`). `client` is the address the request is
/// attributed to and whether it is on this host (see `client_ip`: a loopback peer that forwards
/// for someone through an untrusted proxy header is not); it matters only without keys.
pub(crate) fn decide(caller: &Caller, client: ClientIp, headers: &HeaderMap) -> Access {
    if *caller == Caller::Open && !client.on_this_host {
        return Access {
            may_act: false,
            read_only_because: Some(format!(
                "read-only: actions are allowed from the server's own machine only (loopback, not through \
                 an untrusted proxy), and this request comes from {}",
                client.ip
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
pub(crate) fn cross_site(headers: &HeaderMap) -> Option<String> {
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

/// The visitor of a dashboard request: who it is and what it may do.
#[derive(Debug, Clone)]
pub(crate) struct Visitor {
    /// Whose requests it sees (`Caller::may_see`, `Caller::tenant`).
    pub caller: Caller,
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
        let caller = Caller::from_request_parts(parts, state).await?;
        let client = ClientIpSource::from_ref(state).of(parts);
        Ok(Self {
            access: decide(&caller, client, &parts.headers),
            caller,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().expect("header value"));
        }
        h
    }

    fn client(ip: [u8; 4], on_this_host: bool) -> ClientIp {
        ClientIp {
            ip: IpAddr::from(ip),
            on_this_host,
        }
    }

    #[test]
    fn without_keys_a_client_on_this_host_may_act_and_a_remote_client_may_only_read() {
        let open = Caller::Open;
        assert!(decide(&open, client([127, 0, 0, 1], true), &headers(&[])).may_act);
        let denied = decide(&open, client([203, 0, 113, 5], false), &headers(&[]));
        assert!(!denied.may_act);
        assert!(denied.read_only_because.expect("why").contains("203.0.113.5"));
        // A loopback peer that forwarded for someone else through an untrusted proxy header.
        assert!(!decide(&open, client([127, 0, 0, 1], false), &headers(&[])).may_act);
    }

    #[test]
    fn with_keys_the_admin_and_a_tenant_may_act_from_anywhere_but_not_for_another_site() {
        let remote = client([203, 0, 113, 5], false);
        for caller in [Caller::Admin, Caller::Tenant("a".into())] {
            assert!(decide(&caller, remote, &headers(&[])).may_act, "{caller:?}");
            assert!(
                !decide(&caller, remote, &headers(&[("sec-fetch-site", "cross-site")])).may_act,
                "{caller:?}"
            );
        }
    }

    #[test]
    fn a_request_another_site_made_a_local_browser_send_may_not_act() {
        let (open, local) = (Caller::Open, client([127, 0, 0, 1], true));
        assert!(!decide(&open, local, &headers(&[("sec-fetch-site", "cross-site")])).may_act);
        assert!(
            !decide(
                &open,
                local,
                &headers(&[("origin", "https://evil.example"), ("host", "127.0.0.1:8000")])
            )
            .may_act
        );
        assert!(
            decide(
                &open,
                local,
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
