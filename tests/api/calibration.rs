//! ENGINE_CALIBRATION on the real binary: a start in `auto` that finds this machine's calibration
//! file uses its factors, and the startup log and `/metrics` show them. The factors are a fake
//! measurement written by the test, so nothing here depends on timing.

use serde_json::{Value, json};
use sync_async::calibrate::{Machine, StoredCalibration};
use sync_async::engine::{Amounts, Complexity, Factors, Operation};

use crate::helpers::{fetch_json, start_server_logging, terminate};

/// Factors no real measurement would give all at once, so that using them cannot be an accident.
const FAKE: Factors = Factors {
    hash: 1.5,
    prime: 0.1,
    matrix: 2.0,
    transform: 1.25,
};

#[tokio::test]
async fn a_start_in_auto_uses_the_stored_calibration_and_shows_it_in_the_log_and_metrics() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("requests.db");
    let stored = StoredCalibration::new(Machine::this_one(), FAKE, "2025-01-02T03:04:05.000Z".to_owned());
    let file = dir.path().join("requests.db.calibration.json");
    std::fs::write(&file, serde_json::to_vec(&stored).expect("JSON")).expect("written");

    let (child, addr, log) = start_server_logging(&[
        ("DATABASE_PATH", db.display().to_string()),
        ("ENGINE_CALIBRATION", "auto".to_owned()),
    ]);

    let line = log
        .iter()
        .find(|event| {
            event["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("engine calibration in use"))
        })
        .unwrap_or_else(|| panic!("no calibration line in {log:?}"));
    assert_eq!(
        (&line["mode"], &line["source"]),
        (&json!("auto"), &json!("file")),
        "{line}"
    );
    assert_eq!(line["prime"], 0.1, "{line}");
    let client = reqwest::Client::new();
    let metrics = fetch_json(&client, &format!("http://{addr}/metrics")).await;
    assert_eq!(
        metrics["calibration"],
        json!({
            "mode": "auto",
            "source": "file",
            "measured_at": "2025-01-02T03:04:05.000Z",
            "factors": {"hash": 1.5, "prime": 0.1, "matrix": 2.0, "transform": 1.25},
        })
    );
    let text = client
        .get(format!("http://{addr}/metrics/prometheus"))
        .send()
        .await
        .expect("sent")
        .text()
        .await
        .expect("text");
    assert_eq!(
        sample(&text, "sync_async_engine_calibration_factor{operation=\"matrix\"}"),
        2.0
    );
    assert_eq!(
        sample(&text, "sync_async_engine_calibration{mode=\"auto\",source=\"file\"}"),
        1.0
    );

    // The work itself follows the factors: prime's n at complexity 1 is the calibrated one.
    let answer: Value = client
        .post(format!("http://{addr}/sync"))
        .json(&json!({"payload": {"operation": "prime", "complexity": 1}}))
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("JSON");
    let first = Complexity::new(1).expect("valid");
    let expected = Amounts::scaled(FAKE)
        .expect("in bounds")
        .amount_for(Operation::Prime, first);
    assert_eq!(answer["result"]["n"], expected, "{answer}");
    assert!(
        expected < Amounts::reference().amount_for(Operation::Prime, first) / 4,
        "a factor of 0.1 shrinks the prime's n"
    );

    terminate(&child);
    let status = tokio::task::spawn_blocking(move || {
        let mut child = child;
        child.wait()
    })
    .await
    .expect("joined")
    .expect("waited");
    assert!(status.success(), "{status:?}");
}

/// The value of one OpenMetrics sample.
fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}
