//! sync-async: a web service that shows, with real measurements, how a synchronous API and an
//! asynchronous (acknowledge now, deliver by callback) API behave under load.
//!
//! Module map (the public modules are what the binaries, the load tester and the tests use):
//! - [`app`]: `App::build(Config)` wires everything and binds; `App::run(shutdown)` serves and drains.
//! - [`auth`]: API keys: who is calling (a tenant, the admin, or anyone when the API is open);
//!   `auth::session`: the dashboard's signed session tokens and their cookie.
//! - [`config`]: every setting, its default and environment name, validated once.
//! - [`error`]: `ApiError` and its `application/problem+json` form.
//! - [`extract`]: request extractors whose rejections are `ApiError`s.
//! - [`client_ip`]: the client address a request is attributed to, and whether it is on this host.
//! - [`trusted_proxies`]: TRUSTED_PROXIES and the address forms proxies write.
//! - [`engine`]: the pure, deterministic, cancellable CPU work (hash, prime, matrix, transform).
//! - [`calibrate`]: the engine amounts for this machine (ENGINE_CALIBRATION: measure, store, load) and the `calibrate` table.
//! - [`execution`]: runs engine work on low-priority blocking threads with a deadline, and records it.
//! - [`submission`]: accepting work: the sync path and the async path (idempotency, queue slot, commit).
//! - [`callback`]: callback delivery: scheduler, one attempt, retry policy (pure).
//! - [`signing`]: Standard Webhooks signing keys: parse, sign, verify.
//! - [`ssrf`]: the callback URL policy, applied at submission and to every resolved address.
//! - [`jobs`]: the async job queue, its workers and startup recovery.
//! - [`db`]: the store seam (the `Store` trait, its commands and rows) and its SQLite and PostgreSQL backends (all SQL lives here).
//! - [`routes`]: the HTTP handlers, one module per resource.
//! - [`layers`]: the layer stack around the routes: request ids, tracing, CORS, HTTP metrics, keys, rate limit, panic guard.
//! - [`dashboard`]: the built-in web dashboard: live overview, requests, the sync-vs-async demo, sign-in.
//! - [`openapi`]: the OpenAPI frame and shared error responses.
//! - [`rate_limit`]: the limiter, per tenant or per client IP.
//! - [`model`]: the vocabulary storage and API share: mode, status, delivery status.
//! - [`liveness`]: whether the background loops are alive, for `/healthz`.
//! - [`metrics`]: counters, gauges and histograms behind `/metrics`.
//! - [`state`]: `AppState`, the handles every handler shares.
//! - [`telemetry`]: log setup.

// Public: what the binaries, the load tester and the integration tests use.
pub mod app;
pub mod auth;
pub mod calibrate;
pub mod config;
pub mod db;
pub mod engine;
pub mod error;
pub mod liveness;
pub mod model;
pub mod routes;
pub mod signing;
pub mod state;
pub mod submission;
pub mod telemetry;

// Private: the server's own parts.
mod callback;
mod client_ip;
mod dashboard;
mod execution;
mod extract;
mod jobs;
mod layers;
mod metrics;
mod openapi;
mod rate_limit;
mod ssrf;
mod trusted_proxies;

pub use app::App;
pub use config::Config;
