//! The SQLite WAL stays within its bound under sustained writes and reads, is emptied once the
//! writes stop, and is not left behind by a clean shutdown.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{quick_payload, spawn_app_with, wait_until};

const LIMIT_MB: u64 = 2;
const LIMIT_BYTES: u64 = LIMIT_MB * 1024 * 1024;

fn wal_len(db_path: &std::path::Path) -> u64 {
    let mut wal = db_path.as_os_str().to_owned();
    wal.push("-wal");
    std::fs::metadata(&wal).map_or(0, |m| m.len())
}

async fn wal_figures(app: &crate::helpers::TestApp) -> sync_async::db::sqlite::WalFigures {
    let storage = app.state.db.storage().await.expect("storage");
    storage.wal.expect("SQLite reports its WAL")
}

#[tokio::test]
async fn the_wal_stays_within_its_bound_under_sustained_writes_and_reads_and_is_emptied_after() {
    let app = Arc::new(
        spawn_app_with(|c| {
            c.sqlite_wal_limit_mb = LIMIT_MB;
            c.max_queue_size = 1_000_000;
        })
        .await,
    );
    let stop = Arc::new(AtomicBool::new(false));
    let accepted = Arc::new(AtomicU64::new(0));
    let mut load = Vec::new();
    // Writers: acknowledgements, and the workers' updates behind them.
    for _ in 0..12 {
        let (app, stop, accepted) = (app.clone(), stop.clone(), accepted.clone());
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let (status, _) = app.submit_async(&json!({"payload": quick_payload()})).await;
                assert_eq!(status, 202);
                accepted.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    // Readers that never pause: they are what kept the old checkpoints from ever finishing.
    for _ in 0..4 {
        let (app, stop) = (app.clone(), stop.clone());
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let page = app.get_json("/requests?limit=20").await;
                if let Some(id) = page["requests"][0]["request_id"].as_str() {
                    let _ = app.get_json(&format!("/requests/{id}")).await;
                }
            }
        }));
    }
    // The test's own look at the file, beside the server's after every write.
    let watched_peak = Arc::new(AtomicU64::new(0));
    let watcher = {
        let (path, stop, peak) = (app.db_path.clone(), stop.clone(), watched_peak.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(wal_len(&path), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };

    // Enough writing to fill the bound many times over (each job writes tens of KiB of WAL).
    wait_until("1500 jobs were accepted", || async {
        accepted.load(Ordering::Relaxed) >= 1_500
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.expect("load task");
    }
    watcher.await.expect("watcher");

    let figures = wal_figures(&app).await;
    assert!(
        figures.wal_peak_bytes > LIMIT_BYTES / 4 && figures.restart_checkpoints >= 3,
        "the load never filled the log enough for the bound to act: {figures:?}"
    );
    assert!(
        figures.wal_peak_bytes <= LIMIT_BYTES,
        "the WAL reached {} bytes after a write, over the {LIMIT_BYTES} bound: {figures:?}",
        figures.wal_peak_bytes
    );
    let watched = watched_peak.load(Ordering::Relaxed);
    assert!(watched <= LIMIT_BYTES, "the test saw a {watched}-byte WAL");

    // At rest (the workers done too) the log is emptied within a few seconds, while a
    // dashboard keeps reading.
    wait_until("the workers have drained the queue", || async {
        let m = app.get_json("/metrics").await;
        m["queue"]["size"] == 0 && m["workers"]["busy"] == 0
    })
    .await;
    wait_until("the idle WAL is truncated", || async {
        let _ = app.get_json("/metrics").await;
        wal_figures(&app).await.truncate_checkpoints > 0 && wal_len(&app.db_path) == 0
    })
    .await;
    let metrics: Value = app.get_json("/metrics").await;
    assert_eq!(metrics["storage"]["wal_bytes"], 0, "{metrics}");
    assert_eq!(metrics["storage"]["wal_limit_bytes"], LIMIT_BYTES, "{metrics}");
    assert!(
        metrics["storage"]["database_bytes"].as_u64().is_some_and(|b| b > 0),
        "{metrics}"
    );
    assert!(
        metrics["process"]["resident_memory_bytes"]
            .as_u64()
            .is_some_and(|b| b > 0),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_clean_shutdown_leaves_no_wal_behind() {
    let app = spawn_app_with(|c| c.max_queue_size = 10_000).await;
    for _ in 0..200 {
        let (status, _) = app.submit_async(&json!({"payload": quick_payload()})).await;
        assert_eq!(status, 202);
    }
    assert!(wal_len(&app.db_path) > 0, "the writes went to the WAL");
    let db_path = app.db_path.clone();
    app.stop().await;
    assert_eq!(wal_len(&db_path), 0, "the WAL was emptied at shutdown");
}

#[tokio::test]
async fn storage_sizes_are_in_the_prometheus_text() {
    let app = spawn_app_with(|_| {}).await;
    let text = app.get("/metrics/prometheus").await.text().await.expect("text");
    for family in [
        "sync_async_database_bytes ",
        "sync_async_wal_bytes ",
        "sync_async_wal_limit_bytes 67108864",
        "sync_async_wal_checkpoints{kind=\"restart\"}",
        "sync_async_process_resident_memory_bytes ",
    ] {
        assert!(text.contains(family), "no {family} in\n{text}");
    }
}
