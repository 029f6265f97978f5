//! Integration tests: the real server on port 0, a temp SQLite file, real HTTP.

mod helpers;
mod pg;

mod asynchronous;
mod callbacks;
mod config_cli;
mod dashboard;
mod dashboard_browser;
mod docs;
mod errors;
mod observability;
mod rate_limit;
mod recovery;
mod requests;
mod storage;
mod sync;
