//! The real binary: a fresh start creates the database, a bad setting stops it with one clear
//! line, SIGTERM stops it cleanly.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_sync-async");

/// Starts the server binary with `env` on port 0 and returns it with its bound address, read from
/// its first JSON log line that says "listening".
pub fn start_server(env: &[(&str, String)]) -> (Child, String) {
    let mut child = Command::new(BIN)
        .env_clear()
        .env("PORT", "0")
        .env("HOST", "127.0.0.1")
        .env("LOG_FORMAT", "json")
        .env("LOG_LEVEL", "info")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("server starts");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let addr = loop {
        let line = lines.next().expect("server printed a line").expect("utf-8");
        let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if event["message"] == "listening" {
            break event["addr"].as_str().expect("addr").to_owned();
        }
    };
    // Keep draining stdout so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (child, addr)
}

fn terminate(child: &Child) {
    let pid = rustix::process::Pid::from_raw(child.id() as i32).expect("pid");
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("signal");
}

#[test]
fn a_bad_setting_stops_the_start_with_one_line_naming_the_key() {
    let output = Command::new(BIN)
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
    let _ = Duration::ZERO;
}
