//! The load tester: its window, its open-loop correction, its callback accounting, its outputs,
//! and the callback-server binary.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use serde_json::{Value, json};
use sync_async::engine::Operation;
use sync_async_loadtest::receiver::{Receiver, ReceiverOptions};
use sync_async_loadtest::report::{LoadtestReport, SCHEMA_VERSION};
use sync_async_loadtest::run::{self, RunMode, RunSpec};
use sync_async_loadtest::runner::Plan;
use sync_async_loadtest::target;
use tokio::net::TcpListener;

/// GETs `url` and parses the JSON answer.
async fn fetch_json(client: &reqwest::Client, url: &str) -> Value {
    client
        .get(url)
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("JSON body")
}

const LOADTEST: &str = env!("CARGO_BIN_EXE_loadtest");
const CALLBACK_SERVER: &str = env!("CARGO_BIN_EXE_callback-server");

/// The load tester, with an empty environment and away from the project root, so that a
/// developer's `.env` cannot change what is tested.
fn loadtest_command() -> tokio::process::Command {
    let mut command = tokio::process::Command::new(LOADTEST);
    command.current_dir(std::env::temp_dir()).env_clear();
    command
}

/// Serves `router` on a free loopback port; returns its base URL.
async fn serve(router: Router) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let service = router.into_make_service_with_connect_info::<std::net::SocketAddr>();
    tokio::spawn(async move { axum::serve(listener, service).await });
    format!("http://{addr}")
}

/// `GET {base}/work`, the route the test servers below serve.
fn work(base: &str) -> target::Targets {
    target::Targets::new(&[base.to_owned()], "/work").expect("a URL")
}

fn spec(base_url: &str, plan: Plan) -> RunSpec {
    RunSpec {
        mode: RunMode::Sync,
        base_urls: vec![base_url.to_owned()],
        operation: Operation::Hash,
        complexity: 1,
        data: None,
        client: target::http_client(plan.concurrency, Duration::from_secs(30)).expect("client"),
        plan,
        callbacks: None,
        callback_timeout: Duration::from_secs(1),
        progress: false,
    }
}

/// Counts requests in flight; every arrival notes how many were in flight with it.
#[derive(Default)]
struct InFlight {
    now: AtomicUsize,
    seen_at_arrival: std::sync::Mutex<Vec<usize>>,
    /// The client ports requests came from: one per connection.
    peers: std::sync::Mutex<std::collections::HashSet<std::net::SocketAddr>>,
}

#[tokio::test]
async fn closed_loop_keeps_exactly_the_concurrency_in_flight_as_a_sliding_window() {
    let counter = Arc::new(InFlight::default());
    let handler_counter = counter.clone();
    let base = serve(Router::new().route(
        "/work",
        get(
            move |axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>| {
                let c = handler_counter.clone();
                async move {
                    c.peers.lock().expect("lock").insert(peer);
                    let in_flight = c.now.fetch_add(1, Ordering::SeqCst) + 1;
                    let arrivals = {
                        let mut seen = c.seen_at_arrival.lock().expect("lock");
                        seen.push(in_flight);
                        seen.len()
                    };
                    // Uneven durations, long beside scheduling hiccups: a batch sender would be caught
                    // waiting for its slowest.
                    tokio::time::sleep(Duration::from_millis(20 + (arrivals as u64 * 7) % 41)).await;
                    c.now.fetch_sub(1, Ordering::SeqCst);
                    "ok"
                }
            },
        ),
    ))
    .await;
    let concurrency = 8;
    let plan = Plan {
        requests: 200,
        duration: None,
        warmup: Duration::ZERO,
        concurrency,
        rate: None,
    };
    let spec = spec(&base, plan);

    let report = run::collect(&spec, target::get(spec.client.clone(), work(&base)), None).await;

    assert_eq!(report.requests, 200);
    assert_eq!(report.outcomes.statuses.get(&200), Some(&200));
    let seen = counter.seen_at_arrival.lock().expect("lock").clone();
    assert_eq!(seen.len(), 200);
    assert_eq!(seen.iter().max(), Some(&concurrency), "never more than the concurrency");
    // After the ramp-up, each new request replaces one that just ended: the server always has
    // the full window (a batch sender would let it drain to 1 between batches).
    let after_ramp = &seen[concurrency..seen.len() - concurrency];
    // A batch sender drains to 1 between batches: half its arrivals would be this low. A busy
    // test machine may delay a replacement now and then, hence a small allowance.
    let low = after_ramp.iter().filter(|&&n| n <= concurrency / 2).count();
    assert!(low <= 5, "the window drained {low} times: {seen:?}");
    // 200 requests over 8 kept-alive connections, not a connection per request.
    let connections = counter.peers.lock().expect("lock").len();
    assert!(
        connections <= concurrency,
        "{connections} connections for {concurrency} in flight"
    );
}

#[tokio::test]
async fn open_loop_measures_from_the_intended_send_time_so_a_stall_shows() {
    let calls = Arc::new(AtomicUsize::new(0));
    let handler_calls = calls.clone();
    let base = serve(Router::new().route(
        "/work",
        get(move || {
            let calls = handler_calls.clone();
            async move {
                // One stall, early on; every other answer is immediate.
                if calls.fetch_add(1, Ordering::SeqCst) == 20 {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                "ok"
            }
        }),
    ))
    .await;
    let plan = Plan {
        requests: 300,
        duration: None,
        warmup: Duration::ZERO,
        concurrency: 1,
        rate: Some(300.0),
    };
    let spec = spec(&base, plan);

    let report = run::collect(&spec, target::get(spec.client.clone(), work(&base)), None).await;

    let corrected = report.latency.p99_ms;
    let uncorrected = report.latency_uncorrected.expect("open loop reports both").p99_ms;
    assert_eq!(report.loop_kind, "open");
    assert_eq!(report.offered_rps, Some(300.0));
    assert!(
        corrected >= 200.0,
        "requests queued behind the stall were due long before they went: {corrected} ms"
    );
    assert!(
        corrected > 10.0 * uncorrected,
        "corrected {corrected} ms against uncorrected {uncorrected} ms"
    );
}

/// A stand-in service that acknowledges every job but calls back for all but the second.
async fn forgetful_async_service() -> String {
    let seq = Arc::new(AtomicUsize::new(0));
    let client = reqwest::Client::new();
    serve(Router::new().route(
        "/async",
        post(move |axum::Json(body): axum::Json<Value>| {
            let (seq, client) = (seq.clone(), client.clone());
            async move {
                let n = seq.fetch_add(1, Ordering::SeqCst);
                let id = format!("job-{n}");
                let callback_url = body["callback_url"].as_str().expect("callback_url").to_owned();
                if n != 1 {
                    let cb_id = id.clone();
                    tokio::spawn(async move {
                        let body = json!({"request_id": cb_id, "status": "done", "result": {}});
                        let _ = client
                            .post(callback_url)
                            .header("webhook-id", &cb_id)
                            .json(&body)
                            .send()
                            .await;
                    });
                }
                (
                    axum::http::StatusCode::ACCEPTED,
                    axum::Json(json!({"request_id": id, "status": "pending"})),
                )
            }
        }),
    ))
    .await
}

#[tokio::test]
async fn a_dropped_callback_is_reported_missing_with_a_nonzero_exit() {
    let base = forgetful_async_service().await;

    let output = loadtest_command()
        .args([
            "--mode",
            "async",
            "--requests",
            "5",
            "--concurrency",
            "2",
            "--url",
            &base,
        ])
        .args(["--callback-port", "0", "--callback-timeout", "500ms", "--quiet"])
        .output()
        .await
        .expect("runs");

    assert_eq!(
        output.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stderr).contains("1 callbacks never arrived"));
}

#[tokio::test]
async fn json_output_parses_into_its_versioned_schema() {
    let dir = tempfile::tempdir().expect("temp dir");
    let json_path = dir.path().join("out.json");

    let output = loadtest_command()
        .args([
            "--mode",
            "sync",
            "--requests",
            "6",
            "--concurrency",
            "3",
            "--complexity",
            "1",
            "--operation",
            "prime",
        ])
        .args(["--quiet", "--max-error-rate", "0", "--json"])
        .arg(&json_path)
        .output()
        .await
        .expect("runs");

    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(String::from_utf8_lossy(&output.stdout).contains("PASS sync error rate"));
    let raw = std::fs::read_to_string(&json_path).expect("written");
    let report: LoadtestReport = serde_json::from_str(&raw).expect("matches the schema");
    // The fields of schema version 1, pinned: a change here must bump SCHEMA_VERSION or be a
    // pure addition.
    let mut fields = std::collections::BTreeSet::new();
    field_paths(&serde_json::from_str(&raw).expect("json"), "", &mut fields);
    insta::assert_snapshot!(
        "loadtest_json_schema_v1",
        fields.into_iter().collect::<Vec<_>>().join("\n")
    );
    assert_eq!(report.schema_version, SCHEMA_VERSION);
    assert!(report.spawned_server);
    let run = &report.runs[0];
    assert_eq!(
        (run.mode.as_str(), run.operation.as_str(), run.requests),
        ("sync", "prime", 6)
    );
    assert!(run.throughput_rps > 0.0 && run.latency.p50_ms > 0.0, "{run:?}");
    assert_eq!(run.outcomes.statuses.get(&200), Some(&6));
}

#[tokio::test]
async fn a_failed_threshold_exits_with_3() {
    let output = loadtest_command()
        .args([
            "--mode",
            "sync",
            "--requests",
            "3",
            "--concurrency",
            "1",
            "--complexity",
            "1",
            "--quiet",
        ])
        .args(["--max-p99-ms", "0.001"])
        .output()
        .await
        .expect("runs");
    assert_eq!(output.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&output.stdout).contains("FAIL sync p99"));
}

#[tokio::test]
async fn compare_mode_runs_end_to_end_and_writes_an_html_report_with_svg() {
    let dir = tempfile::tempdir().expect("temp dir");
    let html_path = dir.path().join("report.html");

    let output = loadtest_command()
        .args([
            "--mode",
            "compare",
            "--requests",
            "8",
            "--concurrency",
            "4",
            "--complexity",
            "1",
        ])
        .arg("--report")
        .arg(&html_path)
        .output()
        .await
        .expect("runs");

    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("| Metric | Sync API | Async API |"), "{stdout}");
    assert!(stdout.contains("expected 8, received 8, missing 0"), "{stdout}");
    let html = std::fs::read_to_string(&html_path).expect("written");
    assert!(html.contains("<svg") && html.contains("</svg>"), "no chart");
    for section in [
        "Latency distribution",
        "Latency over time",
        "Throughput over time",
        "Server during the async run",
    ] {
        assert!(html.contains(section), "the report has no {section} chart");
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stderr.contains('█') && !stderr.contains('░'),
        "a progress bar was drawn on a pipe: {stderr}"
    );
    assert!(html.contains("Sync against async"));
    assert!(
        !html.contains("<script") && !html.contains("https://"),
        "self-contained"
    );
}

#[tokio::test]
async fn the_callback_server_counts_callbacks_and_rejects_bad_signatures() {
    use std::process::Stdio;
    use tokio::io::{AsyncBufReadExt, BufReader};

    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let mut child = tokio::process::Command::new(CALLBACK_SERVER)
        // Away from the project root: a developer's .env must not change what is tested.
        .current_dir(std::env::temp_dir())
        .args(["--port", "0", "--secret", secret])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("starts");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let first = lines.next_line().await.expect("reads").expect("a line");
    let url = first
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .expect("a URL")
        .to_owned();
    let base = url.trim_end_matches("/callback").to_owned();
    let key = sync_async::signing::SigningKey::parse(secret).expect("secret");
    let client = reqwest::Client::new();
    let send = |signature: String, timestamp: i64, body: &'static str| {
        client
            .post(&url)
            .header("webhook-id", "req-1")
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body)
            .send()
    };
    let now = chrono::Utc::now().timestamp();
    let body = r#"{"request_id":"req-1","status":"done","result":{"n":10,"prime":29}}"#;

    let good = send(key.sign("req-1", now, body.as_bytes()), now, body)
        .await
        .expect("sent");
    let tampered = send(
        key.sign("req-1", now, body.as_bytes()),
        now,
        r#"{"request_id":"req-1","status":"failed"}"#,
    )
    .await
    .expect("sent");
    let stale = send(key.sign("req-1", now - 3600, body.as_bytes()), now - 3600, body)
        .await
        .expect("sent");

    assert_eq!(
        (
            good.status().as_u16(),
            tampered.status().as_u16(),
            stale.status().as_u16()
        ),
        (200, 401, 401)
    );
    let printed = lines.next_line().await.expect("reads").expect("a line");
    assert!(printed.starts_with("req-1 done") && printed.contains("29"), "{printed}");
    let stats: Value = fetch_json(&client, &format!("{base}/stats")).await;
    assert_eq!(
        (stats["accepted"].clone(), stats["rejected_signature"].clone()),
        (json!(1), json!(2))
    );
    assert_eq!(stats["recent"][0]["request_id"], "req-1");
    assert_eq!(
        client
            .get(format!("{base}/healthz"))
            .send()
            .await
            .expect("sent")
            .status(),
        200
    );
}

/// Every field path of a JSON document (`runs[].latency.p99_ms`); the keys of maps keyed by
/// data (status codes, error kinds) collapse to `*`.
#[tokio::test]
async fn the_receiver_keeps_bounded_memory_however_many_callbacks_arrive() {
    let receiver = Receiver::new(ReceiverOptions {
        keep_recent: 5,
        remember_ids: 10,
        ..ReceiverOptions::default()
    });
    let running = receiver.clone().spawn(([127, 0, 0, 1], 0).into()).await.expect("binds");
    let client = reqwest::Client::new();
    let deliver = |id: String| {
        client
            .post(running.callback_url())
            .header("webhook-id", id)
            .json(&json!({"status": "done", "result": {}}))
            .send()
    };

    for n in 0..50 {
        assert_eq!(deliver(format!("req-{n}")).await.expect("sent").status(), 200);
    }
    // Still remembered: a duplicate. Long forgotten: counted as new.
    let again: Value = deliver("req-49".into())
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    let forgotten: Value = deliver("req-0".into()).await.expect("sent").json().await.expect("json");

    assert_eq!(
        (again["duplicate"].clone(), forgotten["duplicate"].clone()),
        (json!(true), json!(false))
    );
    let stats = receiver.stats();
    assert_eq!(
        (stats.totals.accepted, stats.totals.unique, stats.totals.duplicates),
        (52, 51, 1)
    );
    assert_eq!(stats.remembered_ids, 10);
    assert_eq!(stats.recent.len(), 5);
    assert_eq!(stats.recent[0]["request_id"], "req-0", "newest first");
}

fn field_paths(value: &Value, prefix: &str, out: &mut std::collections::BTreeSet<String>) {
    match value {
        Value::Object(map) => {
            let keyed_by_data = ["statuses", "transport_errors", "problems"]
                .iter()
                .any(|k| prefix.ends_with(k));
            for (key, child) in map {
                let name = if keyed_by_data { "*" } else { key.as_str() };
                let path = if prefix.is_empty() {
                    name.to_owned()
                } else {
                    format!("{prefix}.{name}")
                };
                out.insert(path.clone());
                field_paths(child, &path, out);
            }
        }
        Value::Array(items) => {
            for item in items {
                field_paths(item, &format!("{prefix}[]"), out);
            }
        }
        _ => {}
    }
}

#[tokio::test]
async fn an_overloaded_open_loop_run_stops_at_its_duration() {
    let base = serve(Router::new().route(
        "/work",
        get(|| async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            "slow"
        }),
    ))
    .await;
    // 1000 requests/s offered, 2 connections, 200 ms per answer: at most ~10 answers a second.
    let plan = Plan {
        requests: 0,
        duration: Some(Duration::from_millis(300)),
        warmup: Duration::ZERO,
        concurrency: 2,
        rate: Some(1000.0),
    };
    let spec = spec(&base, plan);

    let report = run::collect(&spec, target::get(spec.client.clone(), work(&base)), None).await;

    assert!(
        report.requests <= 6,
        "{} requests: the backlog was sent after the end",
        report.requests
    );
    assert!(
        report.duration_s < 1.0,
        "the run ended {} s after it began measuring",
        report.duration_s
    );
    assert!(
        report.achieved_rps < 100.0,
        "achieved {} of 1000 offered",
        report.achieved_rps
    );
}

#[tokio::test]
async fn repeated_urls_share_the_load_in_turn() {
    let counter = |hits: Arc<AtomicUsize>| {
        Router::new().route(
            "/work",
            get(move || {
                let hits = hits.clone();
                async move {
                    hits.fetch_add(1, Ordering::SeqCst);
                    "ok"
                }
            }),
        )
    };
    let (first_hits, second_hits) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let first = serve(counter(first_hits.clone())).await;
    let second = serve(counter(second_hits.clone())).await;
    let plan = Plan {
        requests: 100,
        duration: None,
        warmup: Duration::ZERO,
        concurrency: 4,
        rate: None,
    };
    let mut spec = spec(&first, plan);
    spec.base_urls.push(second.clone());
    let targets = target::Targets::new(&spec.base_urls, "/work").expect("URLs");
    let report = run::collect(&spec, target::get(spec.client.clone(), targets), None).await;

    assert_eq!(report.outcomes.count_in(200..=299), 100);
    let (a, b) = (first_hits.load(Ordering::SeqCst), second_hits.load(Ordering::SeqCst));
    assert_eq!(a + b, 100);
    assert!(a.abs_diff(b) <= 4, "{a} and {b} requests: not in turn");
}
