//! The real binary: a fresh start creates the database, a bad or out-of-bounds setting stops it
//! with one clear line (a secret never in it), SIGTERM stops it cleanly.

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
    let output = Command::new(BIN)
        .current_dir(std::env::temp_dir())
        .env_clear()
        .env(key, value)
        .output()
        .expect("runs");
    (output.status.code(), String::from_utf8(output.stderr).expect("utf-8"))
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
