//! Integration tests: the real server on port 0, a temp SQLite file, real HTTP.

mod helpers;

mod config_cli;
mod docs;
mod errors;
mod observability;
mod rate_limit;
mod requests;
mod sync;
