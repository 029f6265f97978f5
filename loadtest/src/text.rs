//! The terminal report: a block per run, and the original README's comparison table with
//! measured values.

use std::fmt::Write;

use super::report::{LoadtestReport, RunReport};
use super::stats::{Outcomes, Summary};

/// Milliseconds, readable at any scale.
pub fn ms(value: f64) -> String {
    if value >= 10_000.0 {
        format!("{:.1} s", value / 1000.0)
    } else if value >= 100.0 {
        format!("{value:.0} ms")
    } else if value >= 10.0 {
        format!("{value:.1} ms")
    } else {
        format!("{value:.2} ms")
    }
}

fn summary_row(out: &mut String, name: &str, s: &Summary) {
    let _ = writeln!(
        out,
        "  {name:<22} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        s.count,
        ms(s.min_ms),
        ms(s.mean_ms),
        ms(s.p50_ms),
        ms(s.p90_ms),
        ms(s.p95_ms),
        ms(s.p99_ms),
        ms(s.p999_ms),
        ms(s.max_ms)
    );
}

/// `200 x 95, 503 x 5` and transport errors.
pub fn outcomes_line(o: &Outcomes) -> String {
    let mut parts: Vec<String> = o.statuses.iter().map(|(s, n)| format!("{s} x {n}")).collect();
    parts.extend(o.transport_errors.iter().map(|(k, n)| format!("{k} error x {n}")));
    if parts.is_empty() {
        "none".to_owned()
    } else {
        parts.join(", ")
    }
}

/// The block for one run.
pub fn render_run(run: &RunReport) -> String {
    let mut out = String::new();
    let shape = match run.offered_rps {
        Some(rate) => format!("open loop at {rate} req/s, at most {} in flight", run.concurrency),
        None => format!("closed loop, {} in flight", run.concurrency),
    };
    let _ = writeln!(
        out,
        "{} · {} c{} · {shape} · {} requests in {:.2} s",
        run.mode, run.operation, run.complexity, run.requests, run.duration_s
    );
    let _ = write!(out, "  throughput             {:.1} req/s (2xx)", run.throughput_rps);
    if let Some(offered) = run.offered_rps {
        let _ = write!(out, "; achieved {:.1} of {offered:.1} req/s offered", run.achieved_rps);
    }
    out.push('\n');
    let _ = writeln!(
        out,
        "  {:<22} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "latency", "count", "min", "mean", "p50", "p90", "p95", "p99", "p99.9", "max"
    );
    let primary = if run.mode == "sync" {
        "response time"
    } else {
        "acknowledgement (202)"
    };
    summary_row(&mut out, primary, &run.latency);
    if let Some(u) = &run.latency_uncorrected {
        summary_row(&mut out, "  uncorrected", u);
    }
    if let Some(s) = &run.server_execution {
        summary_row(&mut out, "server execution", s);
    }
    if let Some(c) = &run.completion {
        summary_row(&mut out, "completion (callback)", c);
    }
    let _ = writeln!(out, "  answers                {}", outcomes_line(&run.outcomes));
    if let Some(bg) = &run.background_sync {
        let _ = writeln!(
            out,
            "  background sync load   {} in flight: {}",
            bg.concurrency,
            outcomes_line(&bg.outcomes)
        );
    }
    if let Some(cb) = &run.callbacks {
        let _ = writeln!(
            out,
            "  callbacks              expected {}, received {}, missing {}, duplicated {}, unknown {}{}",
            cb.expected,
            cb.received,
            cb.missing,
            cb.duplicated,
            cb.unknown,
            run.completion_throughput_rps
                .map(|r| format!("; {r:.1}/s"))
                .unwrap_or_default()
        );
    }
    out
}

/// The original README's "Performance Comparison" table, with the values this run measured.
pub fn render_comparison(sync: &RunReport, asynchronous: &RunReport) -> String {
    let refused = |o: &Outcomes, kind: &str, what: &str| format!("{} x {what}", o.problem_count(kind));
    let rate_limited = |o: &Outcomes| match o.problem_count("rate-limited") {
        0 => String::new(),
        n => format!(" (and {n} x 429 rate limit)"),
    };
    let delivery = match (&asynchronous.completion, &asynchronous.callbacks) {
        (Some(c), Some(cb)) => format!(
            "via callback: p50 {}, p99 {} after sending; {}/{} received",
            ms(c.p50_ms),
            ms(c.p99_ms),
            cb.received,
            cb.expected
        ),
        _ => "by polling (no callbacks in this run)".to_owned(),
    };
    let rows = [
        (
            "Ack/Response time p50 / p99",
            format!("{} / {}", ms(sync.latency.p50_ms), ms(sync.latency.p99_ms)),
            format!(
                "{} / {}",
                ms(asynchronous.latency.p50_ms),
                ms(asynchronous.latency.p99_ms)
            ),
        ),
        (
            "Ack/Response time max",
            ms(sync.latency.max_ms),
            ms(asynchronous.latency.max_ms),
        ),
        (
            "Throughput (answers)",
            format!("{:.1} req/s", sync.throughput_rps),
            format!("{:.1} acks/s", asynchronous.throughput_rps),
        ),
        (
            "Throughput (results)",
            format!("{:.1} results/s", sync.throughput_rps),
            asynchronous
                .completion_throughput_rps
                .map_or_else(|| "n/a".to_owned(), |r| format!("{r:.1} results/s")),
        ),
        (
            "Result delivery",
            format!("in the response (p50 {})", ms(sync.latency.p50_ms)),
            delivery,
        ),
        (
            "Backpressure",
            format!(
                "{}{}",
                refused(&sync.outcomes, "sync-saturated", "503 busy"),
                rate_limited(&sync.outcomes)
            ),
            format!(
                "{}{}",
                refused(&asynchronous.outcomes, "queue-full", "429 queue full"),
                rate_limited(&asynchronous.outcomes)
            ),
        ),
        (
            "Errors (non-2xx or transport)",
            format!("{:.1}%", sync.error_rate() * 100.0),
            format!("{:.1}%", asynchronous.error_rate() * 100.0),
        ),
    ];
    let mut out = String::from("| Metric | Sync API | Async API |\n|---|---|---|\n");
    for (metric, s, a) in rows {
        let _ = writeln!(out, "| {metric} | {s} | {a} |");
    }
    out
}

/// The server's storage and memory at every `every` of a run (`--soak-every`): one row per
/// interval, from the first `/metrics` sample at or after each mark.
pub fn render_soak(run: &RunReport, every: std::time::Duration) -> String {
    let mb = |bytes: Option<u64>| bytes.map_or_else(|| "-".to_owned(), |b| format!("{:.1}", b as f64 / 1_048_576.0));
    let mut out = format!(
        "Server during the {} run, every {} s\n| t (s) | database (MiB) | WAL (MiB) | RSS (MiB) | queue |\n|---:|---:|---:|---:|---:|\n",
        run.mode,
        every.as_secs_f64()
    );
    let step = every.as_secs_f64().max(0.001);
    let mut next_mark = 0.0;
    for sample in &run.server_samples {
        if sample.t_s + 1e-9 < next_mark {
            continue;
        }
        let _ = writeln!(
            out,
            "| {:.0} | {} | {} | {} | {} |",
            sample.t_s,
            mb(sample.database_bytes),
            mb(sample.wal_bytes),
            mb(sample.rss_bytes),
            sample.queue_size
        );
        next_mark = (sample.t_s / step).floor() * step + step;
    }
    out
}

/// Everything, as printed at the end of a run.
pub fn render(report: &LoadtestReport) -> String {
    let mut out = String::new();
    for run in &report.runs {
        out.push_str(&render_run(run));
        out.push('\n');
    }
    if let [sync, asynchronous] = report.runs.as_slice()
        && sync.mode == "sync"
        && asynchronous.mode == "async"
    {
        out.push_str(&render_comparison(sync, asynchronous));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Summary;

    #[test]
    fn milliseconds_read_well_at_every_scale() {
        assert_eq!(ms(0.4567), "0.46 ms");
        assert_eq!(ms(12.34), "12.3 ms");
        assert_eq!(ms(567.8), "568 ms");
        assert_eq!(ms(12_345.0), "12.3 s");
    }

    #[test]
    fn backpressure_tells_a_full_queue_from_a_rate_limit() {
        let mut run: RunReport = serde_json::from_value(serde_json::json!({
            "mode": "async", "operation": "hash", "complexity": 1, "concurrency": 1, "loop_kind": "closed",
            "requests": 3, "warmup_s": 0.0, "duration_s": 1.0, "throughput_rps": 1.0, "achieved_rps": 3.0,
            "offered_rps": null, "latency": Summary::default(), "latency_uncorrected": null,
            "server_execution": null, "completion": null, "completion_throughput_rps": null,
            "outcomes": Outcomes::default(), "callbacks": null, "timeline": [], "completion_timeline": [],
            "latency_curve": [], "uncorrected_curve": [], "completion_curve": [], "server_samples": []
        }))
        .expect("a run report");
        for problem in ["queue-full", "queue-full", "rate-limited"] {
            run.outcomes.record_status(429);
            run.outcomes
                .record_problem(&format!("urn:sync-async:problem:{problem}"));
        }
        let sync = RunReport {
            mode: "sync".into(),
            outcomes: Outcomes::default(),
            ..run.clone()
        };
        let table = render_comparison(&sync, &run);
        assert!(
            table.contains("| Backpressure | 0 x 503 busy | 2 x 429 queue full (and 1 x 429 rate limit) |"),
            "{table}"
        );
    }

    #[test]
    fn the_soak_table_has_one_row_per_interval() {
        let sample = |t_s: f64, wal: u64| crate::sampler::ServerSample {
            t_s,
            queue_size: 0,
            workers_busy: 0,
            sync_in_flight: 0,
            database_bytes: Some(10 * 1_048_576),
            wal_bytes: Some(wal),
            rss_bytes: None,
        };
        let run: RunReport = serde_json::from_value(serde_json::json!({
            "mode": "async", "operation": "hash", "complexity": 1, "concurrency": 1, "loop_kind": "closed",
            "requests": 0, "warmup_s": 0.0, "duration_s": 30.0, "throughput_rps": 0.0, "achieved_rps": 0.0,
            "offered_rps": null, "latency": Summary::default(), "latency_uncorrected": null,
            "server_execution": null, "completion": null, "completion_throughput_rps": null,
            "outcomes": Outcomes::default(), "callbacks": null, "timeline": [], "completion_timeline": [],
            "latency_curve": [], "uncorrected_curve": [], "completion_curve": [],
            "server_samples": [sample(0.1, 0), sample(4.0, 1), sample(10.2, 3 * 1_048_576), sample(19.9, 0), sample(20.1, 0)]
        }))
        .expect("a run report");
        let table = render_soak(&run, std::time::Duration::from_secs(10));
        let rows: Vec<&str> = table
            .lines()
            .filter(|l| l.starts_with("| ") && !l.starts_with("| t"))
            .collect();
        assert_eq!(
            rows,
            vec![
                "| 0 | 10.0 | 0.0 | - | 0 |",
                "| 10 | 10.0 | 3.0 | - | 0 |",
                "| 20 | 10.0 | 0.0 | - | 0 |"
            ],
            "{table}"
        );
    }

    #[test]
    fn outcomes_list_statuses_then_errors() {
        let mut o = Outcomes::default();
        o.record_status(503);
        o.record_status(200);
        o.record_error("connect");
        assert_eq!(outcomes_line(&o), "200 x 1, 503 x 1, connect error x 1");
        assert_eq!(outcomes_line(&Outcomes::default()), "none");
    }
}
