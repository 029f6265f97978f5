//! The API suite (tests/api/suite) against PostgreSQL: each test on a fresh database, skipped in
//! one line when no PostgreSQL answers (failed instead when `CI` is set).

/// The suite's fixtures: the shared ones, with apps started on Postgres.
mod helpers {
    pub(crate) use crate::helpers::*;

    pub(crate) const BACKEND: Backend = Backend::Postgres;

    pub(crate) async fn spawn_app() -> Option<TestApp> {
        spawn_app_on(BACKEND, |_| {}).await
    }

    pub(crate) async fn spawn_app_with(customise: impl FnOnce(&mut sync_async::Config)) -> Option<TestApp> {
        spawn_app_on(BACKEND, customise).await
    }
}

#[path = "suite/asynchronous.rs"]
mod asynchronous;
#[path = "suite/callbacks.rs"]
mod callbacks;
#[path = "suite/errors.rs"]
mod errors;
#[path = "suite/observability.rs"]
mod observability;
#[path = "suite/rate_limit.rs"]
mod rate_limit;
#[path = "suite/requests.rs"]
mod requests;
#[path = "suite/sync.rs"]
mod sync;
#[path = "suite/tenants.rs"]
mod tenants;
