//! The load tester behind `cargo run --release --bin loadtest`: closed-loop (a sliding window)
//! or open-loop (constant rate, latency from the intended send time) load against `/sync` or
//! `/async`, HDR histograms, callback matching through the demo receiver, `/metrics` sampling,
//! and text, JSON and HTML reports. The binary only parses flags and calls [`execute`].
//!
//! Module map:
//! - [`runner`]: sending load, closed or open loop; [`target`]: the requests themselves.
//! - [`run`]: one mode run, collected into a report; [`stats`]: HDR histograms and timelines.
//! - [`callbacks`]: matching callbacks to acknowledgements; [`receiver`]: the demo callback
//!   receiver, shared with the `callback-server` binary and the server's integration tests;
//!   `recent_ids`: the capped map of ids that keeps the receiver's memory bounded.
//! - [`sampler`]: the server's `/metrics` during a run; [`background`]: sync load beside a run.
//! - [`report`], [`text`], [`html`]: the results as data, as text, and as an HTML page.
//! - [`server`]: the server started in-process when no `--url` is given.

pub mod background;
pub mod callbacks;
pub mod html;
pub mod receiver;
mod recent_ids;
pub mod report;
pub mod run;
pub mod runner;
pub mod sampler;
pub mod server;
pub mod stats;
pub mod target;
pub mod text;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;

use crate::receiver::{Receiver, ReceiverOptions};
use report::{LoadtestReport, RunReport, SCHEMA_VERSION};
use run::{RunMode, RunSpec};
use runner::Plan;
use sync_async::Config;
use sync_async::engine::Operation;

/// Which runs to make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Sync,
    Async,
    /// Sync, then async, with the same settings.
    Compare,
    /// `GET /healthz` only: measures the tool itself, for comparing it with other load testers.
    Health,
}

/// The tool's settings, as the flags give them.
#[derive(Debug, Clone)]
pub struct Settings {
    pub mode: Mode,
    /// The server, or the replicas of a cluster, sent to in turn; none starts one in-process.
    pub urls: Vec<String>,
    pub requests: u64,
    pub concurrency: usize,
    pub complexity: u8,
    pub operation: Operation,
    /// Where the tool's callback receiver listens and what URL it gives the server.
    pub callback_host: String,
    /// `None`: 9000 against an external server, a free port against a spawned one.
    pub callback_port: Option<u16>,
    /// Submit async jobs without a callback: measure acknowledgements only.
    pub no_callback: bool,
    /// Open loop at this many requests per second.
    pub rate: Option<f64>,
    pub duration: Option<Duration>,
    pub warmup: Duration,
    pub callback_timeout: Duration,
    /// Bound on each request.
    pub request_timeout: Duration,
    /// Keep this many sync requests running beside every measured run (0 for none).
    pub background_sync: usize,
    pub progress: bool,
    /// `payload.data` for every request (`--data`), such as `{"n": 1}` for tiny prime jobs.
    pub data: Option<serde_json::Value>,
    /// The share of callbacks the tool's receiver answers with a 500 (`--callback-fail-rate`).
    pub callback_fail_rate: f64,
}

/// The callback port used against an external server when none is given.
pub const DEFAULT_CALLBACK_PORT: u16 = 9000;

/// A pass/fail threshold on every run.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Thresholds {
    pub max_p99_ms: Option<f64>,
    pub max_error_rate: Option<f64>,
}

/// One threshold's verdict on one run.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub passed: bool,
    pub line: String,
}

/// Runs what `settings` asks for, starting a server first if there is no URL.
/// Returns the report, and the spawned server (if any), which the caller drops once the report
/// is out: stopping the server waits for its workers, and the reader should not.
pub async fn execute(
    settings: &Settings,
    server_config: impl FnOnce() -> anyhow::Result<Config>,
) -> anyhow::Result<(LoadtestReport, Option<server::SpawnedServer>)> {
    let spawned = match settings.urls.is_empty() {
        false => None,
        true => Some(server::SpawnedServer::start(server_config()?).context("starting the in-process server")?),
    };
    let base_urls: Vec<String> = match &spawned {
        Some(server) => vec![server.base_url.clone()],
        None => settings
            .urls
            .iter()
            .map(|u| u.trim_end_matches('/').to_owned())
            .collect(),
    };
    // `/metrics` and the background sync load go to the first server: on a cluster, its
    // figures are the cluster's where they come from the database, and its own otherwise.
    let base_url = base_urls[0].clone();
    let client = target::http_client(settings.concurrency, settings.request_timeout)?;
    let needs_receiver = matches!(settings.mode, Mode::Async | Mode::Compare) && !settings.no_callback;
    let receiver = match needs_receiver {
        true => Some(start_receiver(settings, spawned.is_some())?),
        false => None,
    };
    let started_at = sync_async::db::timestamp(chrono::Utc::now());
    let modes: &[RunMode] = match settings.mode {
        Mode::Sync => &[RunMode::Sync],
        Mode::Async => &[RunMode::Async],
        Mode::Compare => &[RunMode::Sync, RunMode::Async],
        Mode::Health => &[RunMode::Health],
    };
    let mut runs = Vec::new();
    for &mode in modes {
        let spec = RunSpec {
            mode,
            base_urls: base_urls.clone(),
            operation: settings.operation,
            complexity: settings.complexity,
            data: settings.data.clone(),
            plan: plan(settings),
            client: client.clone(),
            callbacks: receiver
                .as_ref()
                .filter(|_| mode == RunMode::Async)
                .map(|(r, url, _)| (r.clone(), url.clone())),
            callback_timeout: settings.callback_timeout,
            progress: settings.progress,
        };
        let background = match settings.background_sync {
            0 => None,
            n => {
                let payload = run::payload(settings.operation, settings.complexity, settings.data.as_ref());
                let body = axum::body::Bytes::from(serde_json::json!({ "payload": payload }).to_string());
                let targets = target::Targets::new(&base_urls, "/sync").context("a --url is not a URL")?;
                let shoot = target::post_json(client.clone(), targets, body, target::Reads::default());
                Some(background::Background::start(n, shoot, &client, &base_url).await)
            }
        };
        let mut report = run::run(&spec).await.context("a --url is not a URL")?;
        if let Some(background) = background {
            report.background_sync = Some(background.stop().await);
        }
        runs.push(report);
    }
    drop(receiver);
    let report = LoadtestReport {
        schema_version: SCHEMA_VERSION,
        tool: concat!("sync-async loadtest ", env!("CARGO_PKG_VERSION")).to_owned(),
        started_at,
        target: base_urls.join(","),
        spawned_server: spawned.is_some(),
        runs,
    };
    Ok((report, spawned))
}

fn plan(settings: &Settings) -> Plan {
    Plan {
        requests: settings.requests,
        duration: settings.duration,
        warmup: settings.warmup,
        concurrency: settings.concurrency,
        rate: settings.rate,
    }
}

/// The tool's own callback receiver, quiet, with its URL.
fn start_receiver(
    settings: &Settings,
    spawned: bool,
) -> anyhow::Result<(Receiver, String, crate::receiver::RunningReceiver)> {
    let port = settings
        .callback_port
        .unwrap_or(if spawned { 0 } else { DEFAULT_CALLBACK_PORT });
    let ip = settings
        .callback_host
        .parse()
        .with_context(|| format!("--callback-host {} is not an IP address", settings.callback_host))?;
    let receiver = Receiver::new(ReceiverOptions {
        quiet: true,
        fail_rate: settings.callback_fail_rate,
        ..ReceiverOptions::default()
    });
    let running = receiver
        .clone()
        .spawn_on_own_thread(SocketAddr::new(ip, port))
        .with_context(|| {
            format!(
                "listening for callbacks on {}:{port} (is a callback-server already running there?)",
                settings.callback_host
            )
        })?;
    let url = format!("http://{}/callback", running.addr);
    Ok((receiver, url, running))
}

/// Checks every run against the thresholds.
pub fn judge(report: &LoadtestReport, thresholds: &Thresholds) -> Vec<Verdict> {
    let mut verdicts = Vec::new();
    for run in &report.runs {
        if let Some(max) = thresholds.max_p99_ms {
            let p99 = run.latency.p99_ms;
            verdicts.push(match run.latency.count {
                // With no successful request there is no latency to pass.
                0 => verdict(
                    false,
                    format!("{} p99 <= {}: no request succeeded", run.mode, text::ms(max)),
                ),
                _ => verdict(
                    p99 <= max,
                    format!("{} p99 {} <= {}", run.mode, text::ms(p99), text::ms(max)),
                ),
            });
        }
        if let Some(max) = thresholds.max_error_rate {
            let rate = run.error_rate();
            verdicts.push(verdict(
                rate <= max,
                format!("{} error rate {:.4} <= {max}", run.mode, rate),
            ));
        }
    }
    verdicts
}

fn verdict(passed: bool, what: String) -> Verdict {
    Verdict {
        passed,
        line: format!("{} {what}", if passed { "PASS" } else { "FAIL" }),
    }
}

/// Callbacks that never arrived, over all runs.
pub fn missing_callbacks(report: &LoadtestReport) -> u64 {
    report
        .runs
        .iter()
        .filter_map(|r: &RunReport| r.callbacks)
        .map(|c| c.missing)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use report::RunReport;

    fn run_with(latency_count: u64, p99_ms: f64, errors: u64) -> RunReport {
        let json = serde_json::json!({
            "mode": "sync", "operation": "hash", "complexity": 1, "concurrency": 1, "loop_kind": "closed",
            "requests": latency_count + errors, "warmup_s": 0.0, "duration_s": 1.0, "throughput_rps": 1.0,
            "achieved_rps": 1.0, "offered_rps": null,
            "latency": {"count": latency_count, "min_ms": 0.0, "mean_ms": 0.0, "p50_ms": 0.0, "p90_ms": 0.0,
                "p95_ms": 0.0, "p99_ms": p99_ms, "p999_ms": 0.0, "max_ms": 0.0},
            "latency_uncorrected": null, "server_execution": null, "completion": null,
            "completion_throughput_rps": null,
            "outcomes": {"statuses": {"200": latency_count, "503": errors}, "transport_errors": {}},
            "callbacks": null, "timeline": [], "completion_timeline": [], "latency_curve": [],
            "uncorrected_curve": [], "completion_curve": [], "server_samples": []
        });
        serde_json::from_value(json).expect("a run report")
    }

    fn report(run: RunReport) -> LoadtestReport {
        LoadtestReport {
            schema_version: SCHEMA_VERSION,
            tool: "test".into(),
            started_at: "now".into(),
            target: "http://x".into(),
            spawned_server: false,
            runs: vec![run],
        }
    }

    #[test]
    fn thresholds_pass_and_fail_on_the_measured_figures() {
        let t = Thresholds {
            max_p99_ms: Some(50.0),
            max_error_rate: Some(0.1),
        };
        let good = judge(&report(run_with(100, 20.0, 0)), &t);
        assert!(good.iter().all(|v| v.passed), "{good:?}");
        let slow_and_failing = judge(&report(run_with(100, 80.0, 50)), &t);
        assert!(slow_and_failing.iter().all(|v| !v.passed), "{slow_and_failing:?}");
    }

    #[test]
    fn a_p99_threshold_fails_when_nothing_succeeded() {
        let verdicts = judge(
            &report(run_with(0, 0.0, 10)),
            &Thresholds {
                max_p99_ms: Some(50.0),
                max_error_rate: None,
            },
        );
        assert!(!verdicts[0].passed);
        assert!(
            verdicts[0].line.contains("no request succeeded"),
            "{}",
            verdicts[0].line
        );
    }
}
