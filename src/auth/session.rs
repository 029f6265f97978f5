//! The dashboard's sign-in sessions: a browser cannot send a Bearer key, so a key typed into the
//! sign-in form becomes a cookie holding a signed session token, never the key itself.
//!
//! The token is `base64url(payload) "." base64url(HMAC-SHA256(payload))`, the payload being the
//! expiry (Unix seconds) and who signed in (the admin, or a tenant by name). The HMAC key is 32
//! random bytes drawn at start: a restart (or another replica) signs everyone out, and a token
//! cannot outlive the keys it was made from, since keys only change with a restart.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use super::Caller;

/// The cookie's name.
pub(crate) const COOKIE: &str = "sync_async_session";
/// How long a sign-in lasts: a working day.
pub(crate) const LIFETIME: Duration = Duration::from_secs(8 * 60 * 60);

/// Makes and checks session tokens with this process's secret.
pub(crate) struct Sessions {
    /// Drawn at start, never stored or shown: what makes a token unforgeable.
    secret: [u8; 32],
}

/// Why a presented token is refused. Both make the dashboard show its sign-in form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Not a token of this process: malformed, tampered with, or signed before a restart.
    Invalid,
    /// A genuine token whose time is up.
    Expired,
}

impl Sessions {
    pub(crate) fn new() -> Self {
        Self { secret: rand::random() }
    }

    /// A token for `caller` that expires `LIFETIME` after `now_unix`. `None` for `Caller::Open`,
    /// which needs no session.
    pub(crate) fn issue(&self, caller: &Caller, now_unix: u64) -> Option<String> {
        let who = match caller {
            Caller::Admin => "admin".to_owned(),
            Caller::Tenant(name) => format!("tenant:{name}"),
            Caller::Open => return None,
        };
        let payload = format!("{}:{who}", now_unix.saturating_add(LIFETIME.as_secs()));
        let mac = self.mac(payload.as_bytes()).finalize().into_bytes();
        Some(format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(payload),
            URL_SAFE_NO_PAD.encode(mac)
        ))
    }

    /// The caller a token stands for, if this process signed it and it has not expired. The
    /// signature is checked (in constant time) before anything in the payload is believed.
    pub(crate) fn verify(&self, token: &str, now_unix: u64) -> Result<Caller, Refused> {
        let (payload, mac) = token.split_once('.').ok_or(Refused::Invalid)?;
        let payload = URL_SAFE_NO_PAD.decode(payload).map_err(|_| Refused::Invalid)?;
        let mac = URL_SAFE_NO_PAD.decode(mac).map_err(|_| Refused::Invalid)?;
        self.mac(&payload).verify_slice(&mac).map_err(|_| Refused::Invalid)?;
        let payload = std::str::from_utf8(&payload).map_err(|_| Refused::Invalid)?;
        let (expiry, who) = payload.split_once(':').ok_or(Refused::Invalid)?;
        let expiry: u64 = expiry.parse().map_err(|_| Refused::Invalid)?;
        if now_unix >= expiry {
            return Err(Refused::Expired);
        }
        match who {
            "admin" => Ok(Caller::Admin),
            _ => who
                .strip_prefix("tenant:")
                .map(|name| Caller::Tenant(Arc::from(name)))
                .ok_or(Refused::Invalid),
        }
    }

    fn mac(&self, payload: &[u8]) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.secret).expect("HMAC takes any key length");
        mac.update(payload);
        mac
    }
}

/// The `Set-Cookie` value that stores `token` for the dashboard under `path`
/// (`{BASE_PATH}/dashboard`). `HttpOnly`: no script reads it; `SameSite=Strict`: no other site
/// makes a browser send it; `Secure` when the browser reached us over HTTPS.
pub(crate) fn set_cookie(token: &str, path: &str, secure: bool) -> String {
    format!(
        "{COOKIE}={token}; Path={path}; Max-Age={}; HttpOnly; SameSite=Strict{}",
        LIFETIME.as_secs(),
        if secure { "; Secure" } else { "" }
    )
}

/// The `Set-Cookie` value that makes a browser forget the session.
pub(crate) fn clear_cookie(path: &str, secure: bool) -> String {
    format!(
        "{COOKIE}=; Path={path}; Max-Age=0; HttpOnly; SameSite=Strict{}",
        if secure { "; Secure" } else { "" }
    )
}

/// The session token among a request's `Cookie` header lines, if there is one.
pub(crate) fn token_in<'a>(cookie_lines: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    cookie_lines
        .flat_map(|line| line.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, value)| *name == COOKIE && !value.is_empty())
        .map(|(_, value)| value)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    #[test]
    fn a_token_stands_for_whoever_signed_in_until_it_expires() {
        let sessions = Sessions::new();
        let shop = Caller::Tenant(Arc::from("shop:eu"));
        for caller in [Caller::Admin, shop] {
            let token = sessions.issue(&caller, NOW).expect("a token");
            assert_eq!(sessions.verify(&token, NOW + 60), Ok(caller.clone()));
            assert_eq!(sessions.verify(&token, NOW + LIFETIME.as_secs()), Err(Refused::Expired));
        }
        assert_eq!(sessions.issue(&Caller::Open, NOW), None, "an open API has no sessions");
    }

    #[test]
    fn a_token_from_another_process_or_with_a_changed_payload_is_refused() {
        let (ours, theirs) = (Sessions::new(), Sessions::new());
        let token = theirs.issue(&Caller::Admin, NOW).expect("a token");
        assert_eq!(ours.verify(&token, NOW), Err(Refused::Invalid));

        let token = ours.issue(&Caller::Tenant(Arc::from("a")), NOW).expect("a token");
        let (_, mac) = token.split_once('.').expect("two parts");
        let forged = format!("{}.{mac}", URL_SAFE_NO_PAD.encode(format!("{}:admin", NOW + 60)));
        assert_eq!(ours.verify(&forged, NOW), Err(Refused::Invalid));
        for garbage in ["", ".", "x.y", "no-dot", "a.b.c"] {
            assert_eq!(ours.verify(garbage, NOW), Err(Refused::Invalid), "{garbage:?}");
        }
    }

    #[test]
    fn the_cookie_is_http_only_strict_scoped_to_the_dashboard_and_secure_only_over_https() {
        let plain = set_cookie("t0k", "/ops/dashboard", false);
        assert_eq!(
            plain,
            "sync_async_session=t0k; Path=/ops/dashboard; Max-Age=28800; HttpOnly; SameSite=Strict"
        );
        assert!(set_cookie("t0k", "/dashboard", true).ends_with("; Secure"));
        assert!(clear_cookie("/dashboard", false).contains("Max-Age=0"));
    }

    #[test]
    fn the_token_is_found_among_other_cookies_on_any_header_line() {
        let lines = ["theme=dark", "a=1; sync_async_session=abc.def ; b=2"];
        assert_eq!(token_in(lines.into_iter()), Some("abc.def"));
        assert_eq!(token_in(["sync_async_session="].into_iter()), None);
        assert_eq!(token_in(std::iter::empty()), None);
    }
}
