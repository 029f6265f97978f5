//! sync-async: a web service that shows, with real measurements, how a synchronous API and an
//! asynchronous (acknowledge now, deliver by callback) API behave under load.
//!
//! Module map:
//! - [`app`]: `App::build(Config)` wires everything and binds; `App::run(shutdown)` serves and drains.
//! - [`config`]: every setting, its default and environment name, validated once.
//! - [`error`]: `ApiError` and its `application/problem+json` form.
//! - [`extract`]: request extractors whose rejections are `ApiError`s; the client IP.
//! - [`engine`]: the pure, deterministic, cancellable CPU work (hash, prime, matrix, transform).
//! - [`calibrate`]: measures the engine against its documented durations.
//! - [`execution`]: runs engine work on low-priority blocking threads with a deadline, and records it.
//! - [`submission`]: accepting work: the sync path and the async path (idempotency, queue slot, commit).
//! - [`callback`]: callback delivery: scheduler, one attempt, retry policy (pure), signing.
//! - [`ssrf`]: the callback URL policy, applied at submission and to every resolved address.
//! - [`loadtest`]: the load tester: runner, statistics, callback matching, reports.
//! - [`receiver`]: the demo callback receiver shared by `callback-server`, `loadtest` and the tests.
//! - [`jobs`]: the async job queue, its workers and startup recovery.
//! - [`db`]: the SQLite pool, migrations, and one module per table (all SQL lives here).
//! - [`routes`]: the HTTP handlers, one module per resource.
//! - [`openapi`]: the OpenAPI frame and shared error responses.
//! - [`rate_limit`]: the per-client-IP limiter.
//! - [`metrics`]: counters, gauges and histograms behind `/metrics`.
//! - [`state`]: `AppState`, the handles every handler shares.
//! - [`telemetry`]: log setup.

pub mod app;
pub mod calibrate;
pub mod callback;
pub mod config;
pub mod db;
pub mod engine;
pub mod error;
pub mod execution;
pub mod extract;
pub mod jobs;
pub mod loadtest;
pub mod metrics;
pub mod openapi;
pub mod rate_limit;
pub mod receiver;
pub mod routes;
pub mod ssrf;
pub mod state;
pub mod submission;
pub mod telemetry;

pub use app::App;
pub use config::Config;
