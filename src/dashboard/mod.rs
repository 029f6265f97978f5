//! The built-in dashboard under `/dashboard`: server-rendered pages (askama templates compiled
//! into the binary), a little plain JS, live figures over server-sent events, and the demo's
//! server-fired bursts. Every response carries a Content-Security-Policy without inline script.
//!
//! - [`overview`]: the live overview page.
//! - [`requests`]: the requests list; [`request`]: one request's page and its Redeliver action.
//! - [`demo`]: the sync-vs-async demo page; [`burst`] fires its bursts.
//! - [`events`]: the SSE stream and the JSON snapshot; [`snapshot`] builds what both send.
//! - [`rates`]: per-second answers and latency percentiles, fed by the HTTP middleware.
//! - [`access`]: who may read and who may act; [`redact`]: what is never shown.
//! - [`sign_in`]: the sign-in form that turns an API key into a session cookie, and sign-out.
//! - [`assets`]: the compiled-in CSS and JS.

mod access;
mod assets;
mod burst;
mod demo;
mod events;
mod overview;
mod rates;
mod redact;
mod request;
mod requests;
mod sign_in;
mod snapshot;
mod tiles;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use askama::Template;
use axum::Router;
use axum::extract::Extension;
use axum::http::{HeaderName, HeaderValue, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};

pub(crate) use rates::Rates;

pub(crate) use sign_in::offer_sign_in;

use self::access::{Access, Visitor};
use self::burst::Bursts;
use crate::auth::Caller;
use crate::config::Config;
use crate::error::ApiError;
use crate::state::AppState;

/// No script but the dashboard's own files, no inline script or handler, no framing.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// The dashboard's own handles, beside `AppState` (which it only reads).
#[derive(Debug, Clone)]
pub(crate) struct Dashboard {
    /// Per-second answers and latency, fed by the HTTP middleware.
    pub rates: Arc<Rates>,
    /// The demo's bursts and how to reach this server.
    bursts: Arc<Bursts>,
    /// BASE_PATH, for links.
    base_path: Arc<str>,
}

impl Dashboard {
    /// `bound` is the listener's address: bursts go to it over loopback.
    pub(crate) fn new(config: &Config, bound: SocketAddr) -> anyhow::Result<Self> {
        let host = match bound.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        let base_url = format!("http://{}{}", SocketAddr::new(host, bound.port()), config.base_path);
        // A sync request may run for WORK_TIMEOUT_SECONDS; the margin covers its answer.
        let request_timeout = config.work_timeout + Duration::from_secs(10);
        Ok(Self {
            rates: Arc::new(Rates::new(&config.base_path)),
            bursts: Arc::new(Bursts::new(base_url, request_timeout)?),
            base_path: Arc::from(config.base_path.as_str()),
        })
    }
}

/// Every dashboard route; `App` nests it with the API under BASE_PATH.
pub(crate) fn router(dashboard: Dashboard) -> Router<AppState> {
    Router::new()
        .route("/dashboard", get(overview::page))
        .route("/dashboard/requests", get(requests::list_page))
        .route("/dashboard/requests/{id}", get(request::page))
        .route("/dashboard/demo", get(demo::page))
        .route("/dashboard/events", get(events::stream))
        .route("/dashboard/api/snapshot", get(events::snapshot_json))
        .route("/dashboard/api/burst", post(burst::start))
        .route("/dashboard/api/requests/{id}", get(request::figures))
        .route("/dashboard/api/requests/{id}/redeliver", post(request::redeliver))
        .route("/dashboard/assets/{file}", get(assets::serve))
        .route("/dashboard/sign-in", get(sign_in::form).post(sign_in::sign_in))
        .route("/dashboard/sign-out", post(sign_in::sign_out))
        .layer(axum::middleware::map_response(security_headers))
        .layer(Extension(dashboard))
}

pub(crate) async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    headers.insert(
        HeaderName::from_static("x-robots-tag"),
        HeaderValue::from_static("noindex"),
    );
    response
}

/// What every page's frame needs: where it lives, which tab is current, what the visitor may do.
#[derive(Debug, Clone)]
pub(crate) struct Chrome {
    /// BASE_PATH; every link and URL the page and its script use starts with it.
    pub base: String,
    /// `overview`, `requests`, `demo` or `sign-in`: the current tab, and which script part runs.
    pub page: &'static str,
    pub access: Access,
    /// Who is signed in ("the admin", "tenant shop"), beside the Sign out button; `None` when
    /// the dashboard is open (no keys) or on the sign-in form.
    pub who: Option<String>,
    /// The visitor's tenant: pages with server-wide figures say that they are not its own.
    pub tenant: Option<String>,
    /// The versioned asset URLs.
    pub css: String,
    pub js: String,
}

impl Chrome {
    pub(crate) fn new(dashboard: &Dashboard, page: &'static str, visitor: &Visitor) -> Self {
        let mut chrome = Self::frame(dashboard, page, visitor.access.clone());
        chrome.who = match &visitor.caller {
            Caller::Open => None,
            Caller::Admin => Some("the admin".to_owned()),
            Caller::Tenant(name) => Some(format!("tenant {name}")),
        };
        chrome.tenant = visitor.caller.tenant().map(str::to_owned);
        chrome
    }

    /// The frame of the sign-in form: no navigation, nobody signed in.
    pub(crate) fn sign_in(dashboard: &Dashboard) -> Self {
        let access = Access {
            may_act: false,
            read_only_because: None,
        };
        Self::frame(dashboard, "sign-in", access)
    }

    fn frame(dashboard: &Dashboard, page: &'static str, access: Access) -> Self {
        let base = dashboard.base_path.to_string();
        Self {
            css: assets::url(&base, assets::Asset::Css),
            js: assets::url(&base, assets::Asset::Js),
            base,
            page,
            access,
            who: None,
            tenant: None,
        }
    }

    /// `true`/`false` for the `data-can-act` attribute the script reads.
    pub(crate) fn can_act(&self) -> &'static str {
        if self.access.may_act { "true" } else { "false" }
    }

    pub(crate) fn current(&self, tab: &str) -> &'static str {
        if self.page == tab { "page" } else { "false" }
    }
}

/// Renders a page; a template error is a bug, logged once as a 500.
pub(crate) fn render(page: &impl Template) -> Result<Response, ApiError> {
    Ok(Html(page.render().map_err(ApiError::internal)?).into_response())
}
