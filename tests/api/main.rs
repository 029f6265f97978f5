//! Integration tests: the real server on port 0, a temp SQLite file or a fresh PostgreSQL
//! database, real HTTP. The API suite (`suite/`) is compiled twice, once per backend
//! (`on_sqlite`, `on_postgres`): loading its files twice is the point.
#![allow(clippy::duplicate_mod)]

mod helpers;
mod pg;

mod calibration;
mod cluster;
mod config_cli;
mod dashboard;
mod dashboard_browser;
mod docs;
mod loopback;
mod on_postgres;
mod on_sqlite;
mod recovery;
mod shutdown;
mod storage;
