//! Integration tests: the real server on port 0, a temp SQLite file, real HTTP.

mod helpers;
mod pg;

mod cluster;
mod config_cli;
mod docs;
mod on_postgres;
mod on_sqlite;
mod recovery;
mod storage;
