//! Shared test fixtures: `spawn_app()` starts the real server on port 0 with a temp database,
//! `wait_until()` polls a condition instead of sleeping.

use std::future::Future;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use sync_async::config::{DatabaseUrl, EngineCalibration, Secret, TrustedProxies};
use sync_async::db::Db;
use sync_async::liveness::Liveness;
use sync_async::state::AppState;
use sync_async::{App, Config};
use sync_async_loadtest::receiver::{Received, Receiver, ReceiverOptions, ReceiverTotals, RunningReceiver};
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::pg::TestDatabase;

/// The longest any `wait_until` may take before the test fails: generous, because it only
/// matters when something is broken.
pub(crate) const PATIENCE: Duration = Duration::from_secs(20);

/// A running app and a client for it.
pub(crate) struct TestApp {
    pub base_url: String,
    pub client: reqwest::Client,
    pub state: AppState,
    pub db_path: PathBuf,
    pub dir: Arc<TempDir>,
    /// The settings it runs with (open a store on them to read what it wrote).
    pub config: Config,
    /// The PostgreSQL database, when it runs on one: dropped (and the database with it) last.
    pub database: Option<Arc<TestDatabase>>,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<anyhow::Result<()>>>,
}

/// Settings for tests: loopback, port 0, a temp database, a rate limit no test trips by
/// accident, a callback backoff unit of a millisecond so retries take no real time, and the
/// reference engine amounts, so that no test start spends 2 s measuring the machine.
pub(crate) fn test_config(dir: &TempDir) -> Config {
    Config {
        engine_calibration: EngineCalibration::Fixed,
        host: [127, 0, 0, 1].into(),
        port: 0,
        database_path: dir.path().join("data").join("requests.db"),
        rate_limit_requests: 100_000,
        callback_retry_unit: Duration::from_millis(1),
        callback_timeout: Duration::from_secs(5),
        ..Config::default()
    }
}

/// TRUSTED_PROXIES=127.0.0.1/32: the tests' own requests come through a "proxy", so that an
/// `X-Forwarded-For` header simulates a client on another machine.
pub(crate) fn trust_loopback_proxy(config: &mut Config) {
    config.trusted_proxies = TrustedProxies::parse(&["127.0.0.1/32"]).expect("a valid CIDR");
}

pub(crate) async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

pub(crate) async fn spawn_app_with(customise: impl FnOnce(&mut Config)) -> TestApp {
    let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
    let mut config = test_config(&dir);
    customise(&mut config);
    spawn_app_in(dir, config).await
}

/// Which store a test app runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backend {
    Sqlite,
    Postgres,
}

/// What a test app needs before it starts: a temp directory, settings, and on PostgreSQL a fresh
/// database.
pub(crate) struct TestSetup {
    pub dir: Arc<TempDir>,
    pub config: Config,
    pub database: Option<Arc<TestDatabase>>,
}

impl TestSetup {
    /// `None` when the backend is PostgreSQL and none answers (the test is skipped, in one line).
    pub(crate) async fn new(backend: Backend) -> Option<Self> {
        let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
        let mut config = test_config(&dir);
        let database = match backend {
            Backend::Sqlite => None,
            Backend::Postgres => {
                let test = std::thread::current().name().unwrap_or("a test").to_owned();
                let database = TestDatabase::create(&test).await?;
                config.database_url = Some(DatabaseUrl::Postgres(Secret::new(database.url.clone())));
                Some(Arc::new(database))
            }
        };
        Some(Self { dir, config, database })
    }

    pub(crate) async fn spawn(self) -> TestApp {
        let mut app = spawn_app_in(self.dir, self.config).await;
        app.database = self.database;
        app
    }
}

/// Starts an app on `backend` with `customise`d settings; `None` when it is PostgreSQL and none
/// answers.
pub(crate) async fn spawn_app_on(backend: Backend, customise: impl FnOnce(&mut Config)) -> Option<TestApp> {
    let mut setup = TestSetup::new(backend).await?;
    customise(&mut setup.config);
    Some(setup.spawn().await)
}

/// Starts an app on an existing directory (restart tests reuse the database).
pub(crate) async fn spawn_app_in(dir: Arc<TempDir>, config: Config) -> TestApp {
    let db_path = config.database_path.clone();
    let app = App::build(config.clone()).await.expect("app builds");
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
        config,
        database: None,
        shutdown: Some(tx),
        server: Some(server),
    }
}

impl TestApp {
    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{}", self.base_url, path)
    }

    pub(crate) async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.expect("request sent")
    }

    pub(crate) async fn get_json(&self, path: &str) -> Value {
        self.get(path).await.json().await.expect("JSON body")
    }

    pub(crate) async fn post_json(&self, path: &str, body: &Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .expect("request sent")
    }

    /// One sample's value from `/metrics/prometheus`, such as `sync_async_engine_running`.
    pub(crate) async fn prometheus(&self, sample: &str) -> f64 {
        let text = self.get("/metrics/prometheus").await.text().await.expect("text");
        text.lines()
            .find_map(|line| line.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {sample} in\n{text}"))
    }

    pub(crate) async fn metrics(&self) -> Value {
        self.get_json("/metrics").await
    }

    /// POSTs to `/async` and returns the status and the body.
    pub(crate) async fn submit_async(&self, body: &Value) -> (u16, Value) {
        let response = self.post_json("/async", body).await;
        let status = response.status().as_u16();
        (status, response.json().await.expect("JSON body"))
    }

    /// Submits quick async work with `callback_url`; returns the request id.
    pub(crate) async fn submit_with_callback(&self, callback_url: &str) -> String {
        let (status, accepted) = self
            .submit_async(&serde_json::json!({"payload": quick_payload(), "callback_url": callback_url}))
            .await;
        assert_eq!(status, 202, "{accepted}");
        accepted["request_id"].as_str().expect("request_id").to_owned()
    }

    /// Polls `/requests/{id}` until `field` (a JSON pointer) equals `expected`; returns the record.
    pub(crate) async fn wait_for(&self, id: &str, field: &str, expected: &str) -> Value {
        let path = format!("/requests/{id}");
        let started = Instant::now();
        loop {
            let record = self.get_json(&path).await;
            if record.pointer(field).and_then(Value::as_str) == Some(expected) {
                return record;
            }
            assert!(
                started.elapsed() < PATIENCE,
                "gave up waiting until {path} has {field} = {expected}: {record}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Sends the shutdown signal and returns at once: the app drains on its own.
    pub(crate) fn begin_stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Graceful stop: stop accepting, drain, and wait for the app to finish.
    pub(crate) async fn stop(mut self) {
        self.begin_stop();
        if let Some(server) = self.server.take() {
            server.await.expect("server task").expect("server stops cleanly");
        }
    }
}

/// The store of `config`, opened directly (no server): to arrange what a server finds at start,
/// or to read what it left.
pub(crate) async fn open_store(config: &Config) -> Db {
    sync_async::db::connect(&config.database(), &Liveness::new())
        .await
        .expect("the database opens")
}

/// Polls `condition` every few milliseconds until it holds; fails the test after `PATIENCE`.
pub(crate) async fn wait_until<F, Fut>(what: &str, mut condition: F)
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
pub(crate) async fn problem(response: reqwest::Response) -> (u16, Value) {
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
    assert!(body["detail"].as_str().is_some_and(|d| !d.is_empty()), "{body}");
    (status, body)
}

/// GETs `url` and parses the JSON answer.
pub(crate) async fn fetch_json(client: &reqwest::Client, url: &str) -> Value {
    client
        .get(url)
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("JSON body")
}

/// This replica's row in `/metrics`' `cluster.replicas`.
pub(crate) fn own_replica_row(metrics: &Value) -> &Value {
    metrics["cluster"]["replicas"]
        .as_array()
        .expect("replicas")
        .iter()
        .find(|r| r["id"] == metrics["replica"]["id"])
        .expect("this replica's row")
}

/// Fast work for tests that only need a request to exist.
pub(crate) fn quick_payload() -> Value {
    serde_json::json!({"operation": "prime", "complexity": 1, "data": {"n": 10}})
}

/// Work that takes seconds even in a release build: for tests that need a busy slot.
pub(crate) fn slow_payload() -> Value {
    serde_json::json!({"operation": "hash", "complexity": 10})
}

/// The library's own receiver on a free port, with every accepted callback sent to `callbacks`.
pub(crate) struct TestReceiver {
    pub running: RunningReceiver,
    pub callbacks: tokio::sync::mpsc::UnboundedReceiver<Received>,
}

impl TestReceiver {
    pub(crate) async fn start(options: ReceiverOptions) -> Self {
        let receiver = Receiver::new(options);
        let callbacks = receiver.subscribe();
        let running = receiver
            .spawn(([127, 0, 0, 1], 0).into())
            .await
            .expect("receiver binds");
        Self { running, callbacks }
    }

    pub(crate) async fn reliable() -> Self {
        Self::start(ReceiverOptions::default()).await
    }

    pub(crate) fn url(&self) -> String {
        self.running.callback_url()
    }

    pub(crate) fn totals(&self) -> ReceiverTotals {
        self.running.receiver.totals()
    }

    /// The next accepted callback; fails the test after `PATIENCE`.
    pub(crate) async fn next(&mut self) -> Received {
        tokio::time::timeout(PATIENCE, self.callbacks.recv())
            .await
            .expect("a callback arrived in time")
            .expect("the receiver is running")
    }
}

/// The server binary, for tests that need a real process (signals, crashes).
pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_sync-async");

/// A server process that is killed when its test ends, however it ends: a failed assertion must
/// not leave it running, where it would hold the test run's output open and the run would hang.
/// It derefs to its `Child`, for `terminate`, `kill_hard` and `wait`.
pub(crate) struct Server(Child);

impl std::ops::Deref for Server {
    type Target = Child;

    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Server {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // A server the test waited for (stopped, or killed) is gone: nothing to do.
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Starts the server binary with `env` on port 0 and returns it with its bound address, read from
/// its first JSON log line that says "listening". With the reference engine amounts, unless `env`
/// says otherwise: a measurement would cost every start 2 s.
pub(crate) fn start_server(env: &[(&str, String)]) -> (Server, String) {
    let (child, addr, _) = start_server_logging(env);
    (child, addr)
}

/// `start_server`, also returning the JSON log lines the server printed before "listening".
pub(crate) fn start_server_logging(env: &[(&str, String)]) -> (Server, String, Vec<serde_json::Value>) {
    let mut child = Command::new(BIN)
        // Away from the project root: a developer's .env must not change what is tested.
        .current_dir(std::env::temp_dir())
        .env_clear()
        .env("PORT", "0")
        .env("HOST", "127.0.0.1")
        .env("LOG_FORMAT", "json")
        .env("LOG_LEVEL", "info")
        .env("ENGINE_CALIBRATION", "fixed")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map(Server)
        .expect("server starts");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut log = Vec::new();
    let addr = loop {
        let line = lines.next().expect("server printed a line").expect("utf-8");
        let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if event["message"] == "listening" {
            break event["addr"].as_str().expect("addr").to_owned();
        }
        log.push(event);
    };
    // Keep draining stdout so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (child, addr, log)
}

/// Sends SIGTERM: a graceful stop.
pub(crate) fn terminate(child: &Child) {
    signal(child, rustix::process::Signal::TERM);
}

/// Sends SIGKILL: the process dies at once, mid-whatever, like a crash or an OOM kill.
pub(crate) fn kill_hard(child: &mut Child) {
    signal(child, rustix::process::Signal::KILL);
    let _ = child.wait();
}

fn signal(child: &Child, signal: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(child.id() as i32).expect("pid");
    rustix::process::kill_process(pid, signal).expect("signal sent");
}
