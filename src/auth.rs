//! API keys: who is calling. With API_KEYS or ADMIN_API_KEY set, every route but the health check
//! and the API's own documentation needs `Authorization: Bearer <key>`; under the dashboard, the
//! session cookie of its sign-in form does too (see `session`). The middleware puts the `Caller`
//! it identified in the request's extensions, where handlers and the rate limiter read it: this
//! file is the one place that maps a credential to a `Caller`.

mod session;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{FromRequestParts, Request, State};
use axum::http::header;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub(crate) use self::session::{Refused, clear_cookie, set_cookie};
use self::session::{Sessions, token_in};
use crate::config::{ApiKeys, Secret};
use crate::error::ApiError;

/// Paths anyone may read, keys or not: a load balancer's health check, the documentation a
/// client needs to learn how to authenticate, and the dashboard's sign-in and sign-out (which
/// take a key or forget a session, and show nothing).
const OPEN_PATHS: [&str; 5] = [
    "/healthz",
    "/docs",
    "/openapi.json",
    "/dashboard/sign-in",
    "/dashboard/sign-out",
];
/// Prefixes of open paths: the Swagger UI's assets, and the dashboard's CSS and JS (compiled-in
/// files that the sign-in form itself needs).
const OPEN_PREFIXES: [&str; 2] = ["/docs/", "/dashboard/assets/"];

/// Who made a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// No key was needed: the API is open (no keys set), or the path is one of `OPEN_PATHS`.
    Open,
    /// A tenant's key: it sees only its own requests.
    Tenant(Arc<str>),
    /// ADMIN_API_KEY: sees every request.
    Admin,
}

impl Caller {
    /// The tenant whose requests this caller may see, or `None` when it may see all of them.
    pub fn tenant(&self) -> Option<&str> {
        match self {
            Self::Tenant(name) => Some(name),
            Self::Open | Self::Admin => None,
        }
    }

    /// The visibility rule, in one place: a tenant sees its own requests only; the admin and an
    /// open API see everything. Anything else behaves as if it did not exist.
    pub fn may_see(&self, owner: Option<&str>) -> bool {
        match self.tenant() {
            Some(tenant) => owner == Some(tenant),
            None => true,
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    /// Reads what `authenticate` stored. A request that did not pass through it is refused
    /// rather than treated as the admin: missing wiring must fail closed.
    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| ApiError::internal(anyhow::anyhow!("no Caller: the authenticate layer is missing")))
    }
}

/// One accepted key: the SHA-256 of the key, so every comparison is over 32 bytes whatever the
/// key's length, and who it belongs to.
struct Entry {
    digest: [u8; 32],
    caller: Caller,
}

/// Every accepted key. Keys are kept only as digests; nothing here can print one.
struct Keyring {
    entries: Vec<Entry>,
}

impl Keyring {
    fn new(keys: &ApiKeys) -> Self {
        let tenants = keys
            .tenants
            .iter()
            .map(|(tenant, key)| (key, Caller::Tenant(Arc::from(tenant.as_str()))));
        let admin = keys.admin.iter().map(|key| (key, Caller::Admin));
        let entries = tenants
            .chain(admin)
            .map(|(key, caller)| Entry {
                digest: Sha256::digest(key.expose().as_bytes()).into(),
                caller,
            })
            .collect();
        Self { entries }
    }

    /// No key is set: every caller is `Open`.
    fn is_open(&self) -> bool {
        self.entries.is_empty()
    }

    /// Who `presented` belongs to. It is compared with every key, in constant time and without
    /// stopping at a match, so the answer's timing says nothing about which key is close.
    fn identify(&self, presented: &str) -> Option<Caller> {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let mut found = None;
        for entry in &self.entries {
            if bool::from(entry.digest.ct_eq(&digest)) {
                found = Some(entry.caller.clone());
            }
        }
        found
    }
}

/// Everything that tells who a caller is: the keys, and the dashboard's sign-in sessions.
pub(crate) struct Authenticator {
    keyring: Keyring,
    sessions: Sessions,
}

/// A 401 from `authenticate` on a dashboard path, for a visitor who sent no key: the dashboard
/// answers its pages with the sign-in form instead of the bare problem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SignInWanted {
    /// A session cookie came, but its time was up or this process did not sign it (a restart).
    pub session_ended: bool,
}

/// Why a request was not let in.
enum Refusal {
    /// A Bearer key that is no key of ours.
    WrongKey,
    /// No Bearer key, and on the dashboard no session either (or one that is not valid).
    NoKey { session: Option<Refused> },
}

impl Authenticator {
    pub(crate) fn new(keys: &ApiKeys) -> Self {
        Self {
            keyring: Keyring::new(keys),
            sessions: Sessions::new(),
        }
    }

    /// No key is set: every caller is `Open`, and there is nothing to sign in to.
    pub(crate) fn is_open(&self) -> bool {
        self.keyring.is_open()
    }

    /// The dashboard's sign-in form: a session token for a valid key (for the cookie), `None`
    /// for a key that is not one of ours.
    pub(crate) fn sign_in(&self, key: &str) -> Option<String> {
        let caller = self.keyring.identify(key.trim())?;
        self.sessions.issue(&caller, now_unix())
    }

    /// The caller of a request on a path that is not open: a Bearer key wherever it is sent;
    /// on the dashboard, failing that, its session cookie. A cookie never opens the API itself,
    /// so a browser's ambient credential cannot make API calls for another page.
    fn identify(&self, req: &Request) -> Result<Caller, Refusal> {
        if let Some(token) = bearer_token(req) {
            return self.keyring.identify(token).ok_or(Refusal::WrongKey);
        }
        if !is_dashboard_path(req.uri().path()) {
            return Err(Refusal::NoKey { session: None });
        }
        let lines = req
            .headers()
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok());
        match token_in(lines) {
            Some(token) => self
                .sessions
                .verify(token, now_unix())
                .map_err(|why| Refusal::NoKey { session: Some(why) }),
            None => Err(Refusal::NoKey { session: None }),
        }
    }
}

/// The key a request made on `caller`'s behalf carries: the dashboard's bursts go through the
/// real API as whoever fired them (a tenant's burst is that tenant's requests). `None` when the
/// API is open.
pub(crate) fn key_of<'a>(keys: &'a ApiKeys, caller: &Caller) -> Option<&'a Secret> {
    match caller {
        Caller::Open => None,
        Caller::Admin => keys.admin.as_ref(),
        Caller::Tenant(name) => keys
            .tenants
            .iter()
            .find(|(tenant, _)| tenant.as_str() == &**name)
            .map(|(_, key)| key),
    }
}

fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The middleware: identifies the caller, or answers 401 with `WWW-Authenticate: Bearer`.
pub(crate) async fn authenticate(State(auth): State<Arc<Authenticator>>, mut req: Request, next: Next) -> Response {
    let caller = if auth.is_open() || is_open_path(req.uri().path()) {
        Caller::Open
    } else {
        match auth.identify(&req) {
            Ok(caller) => caller,
            Err(Refusal::WrongKey) => {
                return ApiError::Unauthorized("the API key is not valid".to_owned()).into_response();
            }
            Err(Refusal::NoKey { session }) if is_dashboard_path(req.uri().path()) => {
                let detail = match session {
                    Some(Refused::Expired) => "the dashboard session has expired: sign in again",
                    Some(Refused::Invalid) => {
                        "the dashboard session is not valid (the server restarted?): sign in again"
                    }
                    None => "the dashboard needs a key: sign in, or send `Authorization: Bearer <key>`",
                };
                let mut response = ApiError::Unauthorized(detail.to_owned()).into_response();
                response.extensions_mut().insert(SignInWanted {
                    session_ended: session.is_some(),
                });
                return response;
            }
            Err(Refusal::NoKey { .. }) => {
                return ApiError::Unauthorized("this API needs a key: send `Authorization: Bearer <key>`".to_owned())
                    .into_response();
            }
        }
    };
    req.extensions_mut().insert(caller);
    next.run(req).await
}

/// `/healthz`, `/openapi.json`, `/docs` and what is under `/docs/` (the Swagger UI's assets),
/// and the dashboard's sign-in, sign-out and assets.
fn is_open_path(path: &str) -> bool {
    OPEN_PATHS.contains(&path) || OPEN_PREFIXES.iter().any(|prefix| path.starts_with(prefix))
}

/// `/dashboard` and everything under it (BASE_PATH is already stripped here).
fn is_dashboard_path(path: &str) -> bool {
    path == "/dashboard" || path.starts_with("/dashboard/")
}

/// The token of `Authorization: Bearer <token>` (the scheme in any case), if there is one.
fn bearer_token(req: &Request) -> Option<&str> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn keyring() -> Keyring {
        Keyring::new(&ApiKeys {
            tenants: vec![
                ("a".to_owned(), Secret::new("key-of-tenant-a-0001")),
                ("a".to_owned(), Secret::new("key-of-tenant-a-0002")),
                ("b".to_owned(), Secret::new("key-of-tenant-b-0001")),
            ],
            admin: Some(Secret::new("key-of-the-admin-001")),
        })
    }

    #[test]
    fn each_key_identifies_its_owner_and_nothing_else_does() {
        let keys = keyring();
        let a = Some(Caller::Tenant(Arc::from("a")));
        assert_eq!(keys.identify("key-of-tenant-a-0001"), a);
        assert_eq!(keys.identify("key-of-tenant-a-0002"), a, "a tenant may have two keys");
        assert_eq!(
            keys.identify("key-of-tenant-b-0001"),
            Some(Caller::Tenant(Arc::from("b")))
        );
        assert_eq!(keys.identify("key-of-the-admin-001"), Some(Caller::Admin));
        for wrong in [
            "",
            "key-of-tenant-a-000",
            "key-of-tenant-a-00011",
            "KEY-OF-TENANT-A-0001",
        ] {
            assert_eq!(keys.identify(wrong), None, "{wrong:?}");
        }
    }

    #[test]
    fn a_tenant_sees_only_its_own_requests_and_the_admin_sees_all() {
        let a = Caller::Tenant(Arc::from("a"));
        assert!(a.may_see(Some("a")));
        assert!(!a.may_see(Some("b")));
        assert!(!a.may_see(None), "requests from before keys were set are the admin's");
        for all_seeing in [Caller::Admin, Caller::Open] {
            assert!(all_seeing.may_see(Some("a")) && all_seeing.may_see(None));
        }
    }

    #[test]
    fn only_health_documentation_and_the_dashboards_sign_in_are_open() {
        for open in [
            "/healthz",
            "/docs",
            "/docs/",
            "/docs/swagger-ui.css",
            "/openapi.json",
            "/dashboard/sign-in",
            "/dashboard/sign-out",
            "/dashboard/assets/app-0123.css",
        ] {
            assert!(is_open_path(open), "{open}");
        }
        for closed in [
            "/",
            "/requests",
            "/metrics",
            "/docsx",
            "/openapi.json/x",
            "/healthz/x",
            "/dashboard",
            "/dashboard/requests",
            "/dashboard/api/snapshot",
            "/dashboard/sign-in/x",
            "/dashboard/assetsx",
        ] {
            assert!(!is_open_path(closed), "{closed}");
        }
    }

    #[test]
    fn a_session_cookie_counts_on_the_dashboard_only_and_a_bearer_key_comes_first() {
        let auth = Authenticator::new(&ApiKeys {
            tenants: vec![("a".to_owned(), Secret::new("key-of-tenant-a-0001"))],
            admin: Some(Secret::new("key-of-the-admin-001")),
        });
        let token = auth.sign_in("key-of-tenant-a-0001").expect("a valid key");
        assert!(!token.contains("key-of-tenant-a"), "the key is not in the token");
        assert_eq!(auth.sign_in("not-a-key-of-ours-0001"), None);
        let request = |path: &str, bearer: Option<&str>| {
            let mut builder = Request::builder()
                .uri(path)
                .header(header::COOKIE, format!("x=1; {}={token}", session::COOKIE));
            if let Some(key) = bearer {
                builder = builder.header(header::AUTHORIZATION, format!("Bearer {key}"));
            }
            builder.body(axum::body::Body::empty()).expect("request")
        };
        let a = Caller::Tenant(Arc::from("a"));
        assert_eq!(auth.identify(&request("/dashboard/requests", None)).ok(), Some(a));
        assert!(auth.identify(&request("/requests", None)).is_err(), "not for the API");
        assert_eq!(
            auth.identify(&request("/dashboard", Some("key-of-the-admin-001"))).ok(),
            Some(Caller::Admin)
        );
        assert!(matches!(
            auth.identify(&request("/dashboard", Some("wrong-key-0000000001"))),
            Err(Refusal::WrongKey)
        ));
    }

    #[test]
    fn a_request_on_a_callers_behalf_carries_that_callers_key() {
        let keys = ApiKeys {
            tenants: vec![
                ("a".to_owned(), Secret::new("key-of-tenant-a-0001")),
                ("a".to_owned(), Secret::new("key-of-tenant-a-0002")),
            ],
            admin: Some(Secret::new("key-of-the-admin-001")),
        };
        let key = |caller: &Caller| key_of(&keys, caller).map(Secret::expose);
        assert_eq!(key(&Caller::Tenant(Arc::from("a"))), Some("key-of-tenant-a-0001"));
        assert_eq!(key(&Caller::Admin), Some("key-of-the-admin-001"));
        assert_eq!(key(&Caller::Tenant(Arc::from("b"))), None);
        assert_eq!(key(&Caller::Open), None);
    }
}
