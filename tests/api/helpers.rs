//! Shared test fixtures: `spawn_app()` starts the real server on port 0 with a temp database,
//! `wait_until()` polls a condition instead of sleeping.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use sync_async::state::AppState;
use sync_async::{App, Config};
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The longest any `wait_until` may take before the test fails: generous, because it only
/// matters when something is broken.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// A running app and a client for it.
pub struct TestApp {
    pub base_url: String,
    pub client: reqwest::Client,
    pub state: AppState,
    pub db_path: PathBuf,
    pub dir: Arc<TempDir>,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<anyhow::Result<()>>>,
}

/// Settings for tests: loopback, port 0, a temp database, a rate limit no test trips by
/// accident, and small work units.
pub fn test_config(dir: &TempDir) -> Config {
    Config {
        host: [127, 0, 0, 1].into(),
        port: 0,
        database_path: dir.path().join("data").join("requests.db"),
        rate_limit_requests: 100_000,
        ..Config::default()
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

pub async fn spawn_app_with(customise: impl FnOnce(&mut Config)) -> TestApp {
    let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
    let mut config = test_config(&dir);
    customise(&mut config);
    spawn_app_in(dir, config).await
}

/// Starts an app on an existing directory (restart tests reuse the database).
pub async fn spawn_app_in(dir: Arc<TempDir>, config: Config) -> TestApp {
    let db_path = config.database_path.clone();
    let app = App::build(config).await.expect("app builds");
    let base_url = format!("http://{}", app.local_addr());
    let state = app.state().clone();
    let (tx, rx) = oneshot::channel::<()>();
    let server = tokio::spawn(app.run(async move {
        let _ = rx.await;
    }));
    TestApp {
        base_url,
        client: reqwest::Client::new(),
        state,
        db_path,
        dir,
        shutdown: Some(tx),
        server: Some(server),
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base_url, path)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("request sent")
    }

    pub async fn get_json(&self, path: &str) -> Value {
        self.get(path).await.json().await.expect("JSON body")
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .expect("request sent")
    }

    pub async fn metrics(&self) -> Value {
        self.get_json("/metrics").await
    }

    /// Graceful stop: stop accepting, drain, and wait for the app to finish.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            server
                .await
                .expect("server task")
                .expect("server stops cleanly");
        }
    }
}

/// Polls `condition` every few milliseconds until it holds; fails the test after `PATIENCE`.
pub async fn wait_until<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    while !condition().await {
        assert!(started.elapsed() < PATIENCE, "gave up waiting until {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A body whose problem+json shape is checked: content type, and `status` matching the code.
pub async fn problem(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap_or("").to_owned());
    assert_eq!(
        content_type.as_deref(),
        Some("application/problem+json"),
        "status {status}"
    );
    let body: Value = response.json().await.expect("problem body");
    assert_eq!(body["status"], status, "{body}");
    assert!(
        body["type"]
            .as_str()
            .is_some_and(|t| t.starts_with("urn:sync-async:problem:")),
        "{body}"
    );
    assert!(
        body["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "{body}"
    );
    (status, body)
}

/// Fast work for tests that only need a request to exist.
pub fn quick_payload() -> Value {
    serde_json::json!({"operation": "prime", "complexity": 1, "data": {"n": 10}})
}

/// Work that takes seconds even in a release build: for tests that need a busy slot.
pub fn slow_payload() -> Value {
    serde_json::json!({"operation": "hash", "complexity": 10})
}
