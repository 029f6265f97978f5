//! The real binary: a fresh start creates the database, a bad setting stops it with one clear
//! line, SIGTERM stops it cleanly.

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
