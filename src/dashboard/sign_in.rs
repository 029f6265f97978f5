//! Signing in to the dashboard with an API key, for browsers (which cannot send a Bearer
//! header). With keys set, a page visited without a key shows a small form instead of a bare
//! 401; a valid key becomes a session cookie (`auth` signs it; the key itself is never stored),
//! and the browser goes back to the page it asked for. A wrong key shows the form again, with a
//! 401. Sign out makes the browser forget the cookie.

use askama::Template;
use axum::Form;
use axum::extract::rejection::FormRejection;
use axum::extract::{Extension, FromRef, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::access::cross_site;
use super::{Chrome, Dashboard, render, security_headers};
use crate::auth::{self, SignInWanted};
use crate::client_ip::ClientIpSource;
use crate::error::ApiError;
use crate::extract::ApiQuery;
use crate::state::AppState;

#[derive(Template)]
#[template(path = "dashboard/sign_in.html")]
pub(crate) struct SignInPage {
    chrome: Chrome,
    /// Where to go once signed in: the page that asked for a key.
    next: String,
    /// Why the form is shown again.
    error: Option<&'static str>,
}

/// What the form posts.
#[derive(Debug, Deserialize)]
pub(crate) struct SignInForm {
    #[serde(default)]
    key: String,
    #[serde(default)]
    next: String,
}

/// `GET /dashboard/sign-in?next=...`: the form on its own.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FormQuery {
    #[serde(default)]
    next: String,
}

pub(crate) async fn form(
    State(state): State<AppState>,
    Extension(dashboard): Extension<Dashboard>,
    ApiQuery(query): ApiQuery<FormQuery>,
) -> Result<Response, ApiError> {
    let next = safe_next(&dashboard.base_path, &query.next);
    if state.auth.is_open() {
        return Ok(see_other(&next, None));
    }
    form_page(&dashboard, next, None, StatusCode::OK)
}

/// `POST /dashboard/sign-in`: a valid key sets the session cookie and goes back (303) to the
/// page that asked; a wrong one shows the form again with a 401. Like every dashboard action it
/// must come from the dashboard's own pages (a forged sign-in would sign a victim in as the
/// forger).
pub(crate) async fn sign_in(
    State(state): State<AppState>,
    Extension(dashboard): Extension<Dashboard>,
    parts: Parts,
    form: Result<Form<SignInForm>, FormRejection>,
) -> Result<Response, ApiError> {
    refuse_cross_site(&parts.headers)?;
    let Form(form) = form.map_err(|e| ApiError::BadRequest(format!("the sign-in form did not parse: {e}")))?;
    let next = safe_next(&dashboard.base_path, &form.next);
    if state.auth.is_open() {
        return Ok(see_other(&next, None));
    }
    let Some(token) = state.auth.sign_in(&form.key) else {
        let error = if form.key.trim().is_empty() {
            "Type an API key to sign in."
        } else {
            "That key is not valid. Check it and try again."
        };
        return form_page(&dashboard, next, Some(error), StatusCode::UNAUTHORIZED);
    };
    let secure = ClientIpSource::from_ref(&state).came_over_https(&parts);
    let cookie = auth::set_cookie(&token, &cookie_path(&dashboard), secure);
    Ok(see_other(&next, Some(cookie)))
}

/// `POST /dashboard/sign-out`: the browser forgets the session and lands on the sign-in form.
pub(crate) async fn sign_out(
    State(state): State<AppState>,
    Extension(dashboard): Extension<Dashboard>,
    parts: Parts,
) -> Result<Response, ApiError> {
    refuse_cross_site(&parts.headers)?;
    let secure = ClientIpSource::from_ref(&state).came_over_https(&parts);
    let cookie = auth::clear_cookie(&cookie_path(&dashboard), secure);
    Ok(see_other(&format!("{}/dashboard", dashboard.base_path), Some(cookie)))
}

/// The layer outside `auth::authenticate`: a dashboard *page* refused for want of a key (the
/// 401 carries `SignInWanted`) is answered with the sign-in form, still a 401. Everything else,
/// the dashboard's JSON and event stream included, keeps its problem+json.
pub(crate) async fn offer_sign_in(
    State(dashboard): State<Dashboard>,
    method: Method,
    uri: Uri,
    response: Response,
) -> Response {
    let Some(wanted) = response.extensions().get::<SignInWanted>().copied() else {
        return response;
    };
    if method != Method::GET || !is_page(uri.path()) {
        return response;
    }
    let here = uri.path_and_query().map_or(uri.path(), |pq| pq.as_str());
    let next = safe_next(&dashboard.base_path, &format!("{}{here}", dashboard.base_path));
    let error = wanted
        .session_ended
        .then_some("Your session has ended (it expired, or the server restarted). Sign in again.");
    let page = form_page(&dashboard, next, error, StatusCode::UNAUTHORIZED).unwrap_or_else(IntoResponse::into_response);
    security_headers(page).await
}

fn form_page(
    dashboard: &Dashboard,
    next: String,
    error: Option<&'static str>,
    status: StatusCode,
) -> Result<Response, ApiError> {
    let mut response = render(&SignInPage {
        chrome: Chrome::sign_in(dashboard),
        next,
        error,
    })?;
    *response.status_mut() = status;
    if status == StatusCode::UNAUTHORIZED {
        // RFC 9110: every 401 names a scheme; scripts and curl still use Bearer keys.
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    Ok(response)
}

fn refuse_cross_site(headers: &HeaderMap) -> Result<(), ApiError> {
    match cross_site(headers) {
        Some(why) => Err(ApiError::Forbidden(why)),
        None => Ok(()),
    }
}

/// The cookie's path: the dashboard only, so the browser never sends it to the API.
fn cookie_path(dashboard: &Dashboard) -> String {
    format!("{}/dashboard", dashboard.base_path)
}

/// A 303 to `to` (a path on this server), setting `cookie` if given.
fn see_other(to: &str, cookie: Option<String>) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    let headers = response.headers_mut();
    // `to` comes from `safe_next`, but a header value is checked anyway rather than unwrapped.
    if let Ok(location) = HeaderValue::from_str(to) {
        headers.insert(header::LOCATION, location);
    }
    if let Some(cookie) = cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
        headers.insert(header::SET_COOKIE, cookie);
    }
    response
}

/// `next` when it is a page of this dashboard, else the overview: the form never sends a
/// browser anywhere else (no open redirect).
fn safe_next(base: &str, next: &str) -> String {
    let home = format!("{base}/dashboard");
    let inside = next
        .strip_prefix(&home)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/') || rest.starts_with('?'));
    let plain = !next.chars().any(|c| c.is_control() || c == '\\') && !next.starts_with("//");
    let page = next
        .strip_prefix(base)
        .is_some_and(|path| is_page(path.split('?').next().unwrap_or(path)));
    if inside && plain && page { next.to_owned() } else { home }
}

/// The dashboard's HTML pages (BASE_PATH stripped): not its JSON, event stream, assets or the
/// sign-in routes themselves.
fn is_page(path: &str) -> bool {
    let Some(rest) = path.strip_prefix("/dashboard") else {
        return false;
    };
    rest.is_empty()
        || (rest.starts_with('/')
            && !["/api/", "/events", "/assets/", "/sign-in", "/sign-out"]
                .iter()
                .any(|p| rest.starts_with(p)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn after_signing_in_the_browser_goes_back_to_a_dashboard_page_and_nowhere_else() {
        assert_eq!(
            safe_next("", "/dashboard/requests?mode=sync"),
            "/dashboard/requests?mode=sync"
        );
        assert_eq!(safe_next("/ops", "/ops/dashboard/demo"), "/ops/dashboard/demo");
        assert_eq!(safe_next("/ops", "/ops/dashboard"), "/ops/dashboard");
        for elsewhere in [
            "",
            "https://evil.example/dashboard",
            "//evil.example/dashboard",
            "/dashboardx",
            "/requests",
            "/dashboard/api/snapshot",
            "/dashboard/sign-out",
            "/dashboard/\r\nSet-Cookie: x=1",
            "/dashboard/\\evil",
        ] {
            assert_eq!(safe_next("", elsewhere), "/dashboard", "{elsewhere:?}");
        }
        assert_eq!(safe_next("/ops", "/dashboard"), "/ops/dashboard", "outside the prefix");
    }

    #[test]
    fn pages_get_the_form_and_json_streams_and_assets_do_not() {
        for page in [
            "/dashboard",
            "/dashboard/",
            "/dashboard/requests",
            "/dashboard/requests/x",
            "/dashboard/demo",
        ] {
            assert!(is_page(page), "{page}");
        }
        for other in [
            "/dashboard/api/snapshot",
            "/dashboard/events",
            "/dashboard/assets/app.js",
            "/dashboard/sign-in",
            "/requests",
            "/dashboardx",
        ] {
            assert!(!is_page(other), "{other}");
        }
    }
}
