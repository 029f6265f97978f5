//! One mode run: drive the load, collect every answer into histograms, match callbacks, sample
//! the server, and turn it all into a `RunReport`.

use std::io::IsTerminal;
use std::time::Duration;

use axum::body::Bytes;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::callbacks::CallbackMatcher;
use super::report::RunReport;
use super::runner::{self, Finished, Plan, Shoot};
use super::sampler;
use super::stats::{Latency, Outcomes, Timeline};
use super::target;
use crate::receiver::Receiver;
use sync_async::engine::Operation;

/// Which API a run exercises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunMode {
    Sync,
    Async,
    /// `GET /healthz`: the cheapest request, for measuring the tool itself (against oha).
    Health,
}

impl RunMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sync => "sync",
            Self::Async => "async",
            Self::Health => "healthz",
        }
    }
}

/// Everything a run needs.
#[derive(Clone)]
pub struct RunSpec {
    pub mode: RunMode,
    /// The server, or the replicas of a cluster; requests go to each in turn, and `/metrics`
    /// is read from the first.
    pub base_urls: Vec<String>,
    pub operation: Operation,
    pub complexity: u8,
    /// `payload.data`, when the run asks for specific data.
    pub data: Option<serde_json::Value>,
    pub plan: Plan,
    /// The client all requests share (its pool is sized to the concurrency).
    pub client: reqwest::Client,
    /// Async: where callbacks arrive, and the URL to give the server. `None` submits without a
    /// callback (acknowledgements only).
    pub callbacks: Option<(Receiver, String)>,
    /// How long to wait for outstanding callbacks after the last acknowledgement.
    pub callback_timeout: Duration,
    /// Draw a progress bar on stderr (only when stderr is a terminal).
    pub progress: bool,
}

/// Runs one mode and reports it. Fails only when a server URL does not parse.
pub async fn run(spec: &RunSpec) -> Result<RunReport, url::ParseError> {
    let path = match spec.mode {
        RunMode::Sync => "/sync",
        RunMode::Async => "/async",
        RunMode::Health => "/healthz",
    };
    let targets = target::Targets::new(&spec.base_urls, path)?;
    let reads = target::Reads {
        request_id: spec.mode == RunMode::Async && spec.callbacks.is_some(),
        execution_time: spec.mode == RunMode::Sync,
    };
    let shoot = match spec.mode {
        RunMode::Sync | RunMode::Async => target::post_json(spec.client.clone(), targets, request_body(spec), reads),
        RunMode::Health => target::get(spec.client.clone(), targets),
    };
    let mut callbacks = spec.callbacks.as_ref().map(|(receiver, _)| receiver.subscribe());
    Ok(collect(spec, shoot, callbacks.as_mut()).await)
}

/// The work payload every request of a run carries.
pub fn payload(operation: Operation, complexity: u8, data: Option<&serde_json::Value>) -> serde_json::Value {
    match data {
        Some(data) => json!({"operation": operation.as_str(), "complexity": complexity, "data": data}),
        None => json!({"operation": operation.as_str(), "complexity": complexity}),
    }
}

fn request_body(spec: &RunSpec) -> Bytes {
    let payload = payload(spec.operation, spec.complexity, spec.data.as_ref());
    let body = match (&spec.mode, &spec.callbacks) {
        (RunMode::Async, Some((_, url))) => json!({"payload": payload, "callback_url": url}),
        _ => json!({"payload": payload}),
    };
    Bytes::from(body.to_string())
}

/// The per-run accumulators.
struct Collected {
    latency: Latency,
    uncorrected: Latency,
    server_ms: Latency,
    outcomes: Outcomes,
    timeline: Timeline,
    measured: u64,
    last_done: Option<Instant>,
    /// Non-2xx answers and transport errors per second, for the throughput chart.
    refused_per_second: Vec<u64>,
}

/// Drives `shoot` per the plan and collects: exported for tests that aim the tool at their own
/// server.
pub async fn collect(
    spec: &RunSpec,
    shoot: Shoot,
    mut callbacks: Option<&mut mpsc::UnboundedReceiver<crate::receiver::Received>>,
) -> RunReport {
    let start = Instant::now();
    let stop_sampling = CancellationToken::new();
    let measure_start = start + spec.plan.warmup;
    let sampler = tokio::spawn(sampler::sample(
        spec.client.clone(),
        spec.base_urls[0].clone(),
        measure_start,
        stop_sampling.clone(),
    ));
    let (tx, mut rx) = mpsc::unbounded_channel::<Finished>();
    let plan = spec.plan.clone();
    let driver = tokio::spawn(async move { runner::drive(&plan, shoot, tx).await });
    let progress = Progress::new(spec);
    let mut matcher = CallbackMatcher::new(measure_start);
    let mut c = Collected {
        latency: Latency::new(),
        uncorrected: Latency::new(),
        server_ms: Latency::new(),
        outcomes: Outcomes::default(),
        timeline: Timeline::default(),
        measured: 0,
        last_done: None,
        refused_per_second: Vec::new(),
    };
    loop {
        tokio::select! {
            finished = rx.recv() => match finished {
                Some(f) => record(spec, &mut c, &mut matcher, &progress, measure_start, f),
                None => break,
            },
            Some(received) = next_callback(&mut callbacks) => matcher.arrived(callback_id(&received), received.arrived.into()),
        }
    }
    let _ = driver.await;
    progress.finish();
    if spec.mode == RunMode::Async && callbacks.is_some() {
        let deadline = Instant::now() + spec.callback_timeout;
        while matcher.outstanding() > 0 {
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => break,
                Some(received) = next_callback(&mut callbacks) => matcher.arrived(callback_id(&received), received.arrived.into()),
            }
        }
    }
    stop_sampling.cancel();
    let server_samples = sampler.await.unwrap_or_default();
    build_report(spec, c, matcher, measure_start, server_samples)
}

/// The id a callback answers: its `webhook-id` header, or the `request_id` in its body.
fn callback_id(received: &crate::receiver::Received) -> String {
    if received.webhook_id.is_empty() {
        received
            .body
            .get("request_id")
            .and_then(serde_json::Value::as_str)
            .unwrap_or("")
            .to_owned()
    } else {
        received.webhook_id.clone()
    }
}

async fn next_callback(
    callbacks: &mut Option<&mut mpsc::UnboundedReceiver<crate::receiver::Received>>,
) -> Option<crate::receiver::Received> {
    match callbacks {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

fn record(
    spec: &RunSpec,
    c: &mut Collected,
    matcher: &mut CallbackMatcher,
    progress: &Progress,
    measure_start: Instant,
    f: Finished,
) {
    let ok = f.shot.status.is_some_and(|s| (200..300).contains(&s));
    if spec.mode == RunMode::Async
        && f.shot.status == Some(202)
        && spec.callbacks.is_some()
        && let Some(id) = f.shot.request_id.clone()
    {
        matcher.expect(id, f.due, f.measured);
    }
    if !f.measured {
        return;
    }
    c.measured += 1;
    c.last_done = Some(c.last_done.map_or(f.done, |d| d.max(f.done)));
    match (f.shot.status, f.shot.error_kind) {
        (Some(status), _) => c.outcomes.record_status(status),
        (None, kind) => c.outcomes.record_error(kind.unwrap_or("other")),
    }
    if let Some(problem) = &f.shot.problem_type {
        c.outcomes.record_problem(problem);
    }
    let latency = f.done.saturating_duration_since(f.due);
    progress.tick(ok.then_some(latency));
    if !ok {
        let second = f.done.saturating_duration_since(measure_start).as_secs() as usize;
        if c.refused_per_second.len() <= second {
            c.refused_per_second.resize(second + 1, 0);
        }
        c.refused_per_second[second] += 1;
        return;
    }
    c.latency.record(latency);
    c.timeline
        .record(f.done.saturating_duration_since(measure_start), latency);
    if spec.plan.rate.is_some() {
        c.uncorrected.record(f.done.saturating_duration_since(f.sent));
    }
    if let Some(server) = f
        .shot
        .server_ms
        .and_then(|ms| Duration::try_from_secs_f64(ms / 1e3).ok())
    {
        c.server_ms.record(server);
    }
}

fn build_report(
    spec: &RunSpec,
    c: Collected,
    matcher: CallbackMatcher,
    measure_start: Instant,
    server_samples: Vec<sampler::ServerSample>,
) -> RunReport {
    let window = c
        .last_done
        .map_or(0.0, |d| d.saturating_duration_since(measure_start).as_secs_f64());
    let per_second = |n: u64, secs: f64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
    let with_callbacks = spec.mode == RunMode::Async && spec.callbacks.is_some();
    let completion_window = matcher
        .last_arrival()
        .map_or(0.0, |at| at.saturating_duration_since(measure_start).as_secs_f64());
    let open = spec.plan.rate.is_some();
    RunReport {
        mode: spec.mode.as_str().to_owned(),
        operation: spec.operation.as_str().to_owned(),
        complexity: spec.complexity,
        concurrency: spec.plan.concurrency,
        loop_kind: if open { "open" } else { "closed" }.to_owned(),
        requests: c.measured,
        warmup_s: spec.plan.warmup.as_secs_f64(),
        duration_s: window,
        throughput_rps: per_second(c.outcomes.count_in(200..=299), window),
        achieved_rps: per_second(c.measured, window),
        offered_rps: spec.plan.rate,
        latency: c.latency.summary(),
        latency_uncorrected: open.then(|| c.uncorrected.summary()),
        server_execution: (spec.mode == RunMode::Sync).then(|| c.server_ms.summary()),
        completion: with_callbacks.then(|| matcher.completion.summary()),
        completion_throughput_rps: with_callbacks.then(|| per_second(matcher.completion.count(), completion_window)),
        outcomes: c.outcomes,
        callbacks: with_callbacks.then(|| matcher.counts()),
        timeline: c.timeline.points(),
        completion_timeline: matcher.timeline.points(),
        latency_curve: c.latency.percentile_curve(),
        uncorrected_curve: c.uncorrected.percentile_curve(),
        completion_curve: matcher.completion.percentile_curve(),
        server_samples,
        background_sync: None,
        refused_per_second: c.refused_per_second,
    }
}

/// The progress bar: done/total, live req/s and a rolling p99, on stderr, only when stderr is
/// a terminal.
struct Progress {
    bar: ProgressBar,
    window: std::sync::Mutex<(Latency, Instant)>,
}

impl Progress {
    fn new(spec: &RunSpec) -> Self {
        let visible = spec.progress && std::io::stderr().is_terminal();
        let bar = match spec.plan.duration {
            Some(_) => ProgressBar::new_spinner(),
            None => ProgressBar::new(spec.plan.requests),
        };
        bar.set_draw_target(if visible {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        });
        let template = match spec.plan.duration {
            Some(_) => "{prefix} {spinner} {pos} done {per_sec} {msg} [{elapsed}]",
            None => "{prefix} {bar:30} {pos}/{len} {per_sec} {msg} [{elapsed}]",
        };
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style);
        }
        bar.set_prefix(spec.mode.as_str());
        Self {
            bar,
            window: std::sync::Mutex::new((Latency::new(), Instant::now())),
        }
    }

    fn tick(&self, latency: Option<Duration>) {
        self.bar.inc(1);
        let Some(latency) = latency else { return };
        let mut window = self.window.lock().unwrap_or_else(|p| p.into_inner());
        window.0.record(latency);
        if window.1.elapsed() >= Duration::from_secs(1) {
            self.bar
                .set_message(format!("p99 {:.1} ms", window.0.quantile_ms(0.99)));
            *window = (Latency::new(), Instant::now());
        }
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn received(webhook_id: &str, body: serde_json::Value) -> crate::receiver::Received {
        crate::receiver::Received {
            webhook_id: webhook_id.to_owned(),
            status: None,
            body,
            raw_body: Bytes::new(),
            headers: Default::default(),
            verified: false,
            duplicate: false,
            received_at: String::new(),
            arrived: std::time::Instant::now(),
        }
    }

    #[test]
    fn callbacks_are_matched_by_webhook_id_or_else_by_request_id() {
        assert_eq!(
            callback_id(&received("from-header", json!({"request_id": "from-body"}))),
            "from-header"
        );
        assert_eq!(
            callback_id(&received("", json!({"request_id": "from-body"}))),
            "from-body"
        );
    }
}
