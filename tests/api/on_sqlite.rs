//! The API suite (tests/api/suite) against SQLite, the embedded default.

/// The suite's fixtures: the shared ones, with apps started on Sqlite.
mod helpers {
    pub(crate) use crate::helpers::*;

    pub(crate) const BACKEND: Backend = Backend::Sqlite;

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
