//! API keys: who is calling. With API_KEYS or ADMIN_API_KEY set, every route but the health check
//! and the API's own documentation needs `Authorization: Bearer <key>`; the middleware puts the
//! `Caller` it identified in the request's extensions, where handlers and the rate limiter read it.

use std::sync::Arc;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::header;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::ApiKeys;
use crate::error::ApiError;

/// Paths anyone may read, keys or not: a load balancer's health check, and the documentation a
/// client needs to learn how to authenticate.
const OPEN_PATHS: [&str; 3] = ["/healthz", "/docs", "/openapi.json"];

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
pub(crate) struct Keyring {
    entries: Vec<Entry>,
}

impl Keyring {
    pub(crate) fn new(keys: &ApiKeys) -> Self {
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
    pub(crate) fn is_open(&self) -> bool {
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

/// The middleware: identifies the caller, or answers 401 with `WWW-Authenticate: Bearer`.
pub(crate) async fn authenticate(State(keyring): State<Arc<Keyring>>, mut req: Request, next: Next) -> Response {
    let caller = if keyring.is_open() || is_open_path(req.uri().path()) {
        Caller::Open
    } else {
        match bearer_token(&req).map(|token| keyring.identify(token)) {
            Some(Some(caller)) => caller,
            Some(None) => return ApiError::Unauthorized("the API key is not valid".to_owned()).into_response(),
            None => {
                return ApiError::Unauthorized("this API needs a key: send `Authorization: Bearer <key>`".to_owned())
                    .into_response();
            }
        }
    };
    // The dashboard shows every tenant's requests: with keys set it is the admin's alone (a
    // tenant view of it is not built yet).
    if matches!(caller, Caller::Tenant(_)) && req.uri().path().starts_with("/dashboard") {
        return ApiError::Forbidden("with API keys set, the dashboard needs the admin key".to_owned()).into_response();
    }
    req.extensions_mut().insert(caller);
    next.run(req).await
}

/// `/healthz`, `/openapi.json`, `/docs` and what is under `/docs/` (the Swagger UI's assets).
fn is_open_path(path: &str) -> bool {
    OPEN_PATHS.contains(&path) || path.starts_with("/docs/")
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
    fn only_health_and_documentation_are_open() {
        for open in ["/healthz", "/docs", "/docs/", "/docs/swagger-ui.css", "/openapi.json"] {
            assert!(is_open_path(open), "{open}");
        }
        for closed in ["/", "/requests", "/metrics", "/docsx", "/openapi.json/x", "/healthz/x"] {
            assert!(!is_open_path(closed), "{closed}");
        }
    }
}
