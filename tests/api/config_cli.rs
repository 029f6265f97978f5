//! The real binary: a fresh start creates the database, a bad or out-of-bounds setting or a
//! database it cannot use stops it with one clear line and exit code 2 (a secret never in it),
//! SIGTERM stops it cleanly.

use std::process::Command;

use crate::helpers::{BIN, start_server, terminate};

#[test]
fn a_bad_setting_stops_the_start_with_one_line_naming_the_key() {
    let output = Command::new(BIN)
        // Away from the project root: a developer's .env must not change what is tested.
        .current_dir(std::env::temp_dir())
        .env_clear()
        .env("MAX_QUEUE_SIZE", "lots")
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).expect("utf-8");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("MAX_QUEUE_SIZE=\"lots\"") && stderr.contains("expected a whole number"),
        "{stderr}"
    );
}

/// Runs the binary with one setting and returns its exit code and standard error.
fn start_with(key: &str, value: &str) -> (Option<i32>, String) {
    start_with_all(&[(key, value)])
}

/// Runs the binary with these settings only and returns its exit code and standard error.
fn start_with_all(vars: &[(&str, &str)]) -> (Option<i32>, String) {
    let output = Command::new(BIN)
        .current_dir(std::env::temp_dir())
        .env_clear()
        .envs(vars.iter().copied())
        .output()
        .expect("runs");
    (output.status.code(), String::from_utf8(output.stderr).expect("utf-8"))
}

/// Starts the binary on the database `url` (on a port of its own) and returns its exit code
/// and standard error: for a database it cannot use, 2 and one line.
fn start_on_database_url(url: &str) -> (Option<i32>, String) {
    start_with_all(&[("DATABASE_URL", url), ("PORT", "0"), ("HOST", "127.0.0.1")])
}

#[test]
fn a_database_url_with_an_unknown_scheme_stops_the_start_with_one_line() {
    let (code, stderr) = start_on_database_url("mysql://app@db.internal/sync");
    assert_eq!(code, Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("sync-async: invalid DATABASE_URL=") && stderr.contains("postgres://"),
        "{stderr}"
    );
}

#[test]
fn a_postgresql_that_does_not_answer_stops_the_start_with_one_line_naming_it_and_why() {
    // A port nothing listens on: taken from the system, then let go.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let (code, stderr) = start_on_database_url(&format!("postgres://postgres@127.0.0.1:{port}/sync"));
    assert_eq!(code, Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("sync-async: the database cannot be used: ")
            && stderr.contains(&format!("PostgreSQL at 127.0.0.1:{port}"))
            && stderr.contains("Connection refused"),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_role_postgresql_refuses_stops_the_start_with_its_message_once() {
    let Some(database) = crate::pg::TestDatabase::create("a_role_postgresql_refuses").await else {
        return;
    };
    let mut url = url::Url::parse(&database.url).expect("a URL");
    url.set_username("sync_async_no_such_role").expect("a username");
    let (code, stderr) = tokio::task::spawn_blocking(move || start_on_database_url(url.as_str()))
        .await
        .expect("joined");
    assert_eq!(code, Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert_eq!(
        stderr
            .matches(r#"role "sync_async_no_such_role" does not exist"#)
            .count(),
        1,
        "{stderr}"
    );
    // PostgreSQL's source line is of no use to whoever set the URL.
    assert!(!stderr.contains(" at line "), "{stderr}");
}

#[test]
fn an_sqlite_path_that_cannot_be_made_stops_the_start_with_one_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"not a directory").expect("written");
    let path = file.join("data").join("requests.db");
    let path = path.to_str().expect("utf-8");
    let (code, stderr) = start_with_all(&[("DATABASE_PATH", path), ("PORT", "0"), ("HOST", "127.0.0.1")]);
    assert_eq!(code, Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("sync-async: the database cannot be used: creating the data directory"),
        "{stderr}"
    );
}

#[test]
fn a_setting_out_of_bounds_stops_the_start_with_one_line_not_a_panic() {
    for (key, value) in [
        ("IDEMPOTENCY_TTL_SECONDS", "1e15"),
        ("MAX_PAYLOAD_SIZE_KB", "18014398509481984"),
        ("WORK_TIMEOUT_SECONDS", "1e300"),
        ("NUM_WORKERS", "0"),
    ] {
        let (code, stderr) = start_with(key, value);
        assert_eq!(code, Some(2), "{key}={value}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.starts_with(&format!("sync-async: invalid {key}=")), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[test]
fn a_malformed_secret_is_not_echoed_in_the_startup_error() {
    let (code, stderr) = start_with("CALLBACK_SIGNING_SECRET", "whsec_***my-real-secret***");
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("CALLBACK_SIGNING_SECRET"), "{stderr}");
    assert!(!stderr.contains("my-real-secret"), "{stderr}");
}

#[test]
fn a_short_api_key_stops_the_start_with_one_line_that_does_not_show_it() {
    let output = Command::new(BIN)
        .current_dir(std::env::temp_dir())
        .env_clear()
        .env("API_KEYS", "tenant-a:a-long-enough-key-0001,tenant-b:short-key-9")
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).expect("utf-8");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("API_KEYS") && stderr.contains("entry 2"), "{stderr}");
    assert!(
        !stderr.contains("short-key-9") && !stderr.contains("a-long-enough-key-0001"),
        "a key leaked: {stderr}"
    );
}

#[tokio::test]
async fn a_fresh_start_creates_the_database_and_sigterm_stops_cleanly() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("nested").join("data").join("requests.db");
    let (mut child, addr) = start_server(&[("DATABASE_PATH", db.display().to_string())]);

    let health: serde_json::Value = reqwest::get(format!("http://{addr}/healthz"))
        .await
        .expect("up")
        .json()
        .await
        .expect("json");
    assert_eq!(health["status"], "ok");
    assert!(db.exists(), "the database file was created");

    terminate(&child);
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .expect("joined")
        .expect("waited");
    assert!(status.success(), "{status:?}");
}
