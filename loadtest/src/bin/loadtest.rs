//! `loadtest`: measures the sync and async APIs under load. Parses flags, runs
//! `sync_async_loadtest::execute`, prints and writes the reports, and exits with a code that
//! says how it went: 0 passed, 1 could not run, 2 bad flags, 3 a threshold failed, 4 callbacks
//! missing (4 wins over 3).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use sync_async::Config;
use sync_async::engine::Operation;
use sync_async_loadtest::{self as loadtest, Mode, Settings, Thresholds};

#[derive(Parser)]
#[command(version, about = "Load-tests the sync and async APIs and compares them")]
struct Args {
    /// sync, async, compare (sync then async with the same settings), or healthz (GET /healthz
    /// only, to measure the tool itself against other load testers).
    #[arg(long, value_enum, default_value_t = ModeArg::Compare)]
    mode: ModeArg,
    /// Measured requests (ignored with --duration).
    #[arg(long, default_value_t = 100)]
    requests: u64,
    /// Requests in flight: exactly this many in closed loop, at most this many with --rate.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    concurrency: u32,
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u8).range(1..=10))]
    complexity: u8,
    /// The same operation for every mode.
    #[arg(long, value_enum, default_value_t = OperationArg::Hash)]
    operation: OperationArg,
    /// The server, such as http://localhost:8000; repeat it for the replicas of a cluster, and
    /// requests go to each in turn. Without it, one is started in-process on a free port with a
    /// temporary database.
    #[arg(long = "url", value_parser = server_url)]
    urls: Vec<String>,
    /// Start the server in-process even if --url is given (the URL is then ignored).
    #[arg(long)]
    spawn_server: bool,
    /// Port of the tool's callback receiver [default: 9000, or a free port with a spawned server].
    #[arg(long)]
    callback_port: Option<u16>,
    /// Address the callback receiver listens on and gives the server.
    #[arg(long, default_value = "127.0.0.1")]
    callback_host: String,
    /// Submit async jobs without a callback_url: measure acknowledgements only.
    #[arg(long)]
    no_callback: bool,
    /// Open loop: send at this constant rate (requests/s) and measure from the intended send time.
    #[arg(long)]
    rate: Option<f64>,
    /// Measure for this long (such as 30s or 2m) instead of --requests.
    #[arg(long, value_parser = bounded_duration)]
    duration: Option<Duration>,
    /// Send for this long first and leave it out of the figures.
    #[arg(long, value_parser = bounded_duration, default_value = "0s")]
    warmup: Duration,
    /// How long to wait for outstanding callbacks after the last acknowledgement.
    #[arg(long, value_parser = bounded_duration, default_value = "120s")]
    callback_timeout: Duration,
    /// Bound on each request.
    #[arg(long, value_parser = bounded_duration, default_value = "300s")]
    timeout: Duration,
    /// Keep this many sync requests (same operation and complexity) running during each run, to
    /// saturate the engine.
    #[arg(long, default_value_t = 0)]
    background_sync: usize,
    /// `payload.data` for every request, as a JSON object, such as '{"n": 1}' for tiny prime
    /// jobs.
    #[arg(long, value_parser = json_object)]
    data: Option<serde_json::Value>,
    /// Answer this share of callbacks (0 to 1) with a 500, so the server retries them.
    #[arg(long, default_value_t = 0.0)]
    callback_fail_rate: f64,
    /// After the report, print the server's database, WAL and memory size at this interval
    /// (such as 10s), read from its /metrics during the run: a soak test.
    #[arg(long, value_parser = bounded_duration)]
    soak_every: Option<Duration>,
    /// Write the results as JSON (versioned schema) to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the HTML report here [default with --mode compare: loadtest-report.html].
    #[arg(long)]
    report: Option<PathBuf>,
    /// Print only threshold verdicts and errors; no progress bar.
    #[arg(long)]
    quiet: bool,
    /// Fail (exit 3) if any run's p99 latency (response or acknowledgement) is above this.
    #[arg(long)]
    max_p99_ms: Option<f64>,
    /// Fail (exit 3) if any run's share of non-2xx answers and errors is above this (0 to 1).
    #[arg(long)]
    max_error_rate: Option<f64>,
}

#[derive(Clone, Copy, ValueEnum)]
enum ModeArg {
    Sync,
    Async,
    Compare,
    Healthz,
}

#[derive(Clone, Copy, ValueEnum)]
enum OperationArg {
    Hash,
    Prime,
    Matrix,
    Transform,
}

/// `--url`: an http or https URL.
fn server_url(raw: &str) -> Result<String, String> {
    match url::Url::parse(raw) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => Ok(raw.to_owned()),
        _ => Err(format!("`{raw}` is not an http(s) URL such as http://localhost:8000")),
    }
}

/// `--data`: a JSON object.
fn json_object(raw: &str) -> Result<serde_json::Value, String> {
    match serde_json::from_str::<serde_json::Value>(raw) {
        Ok(value) if value.is_object() => Ok(value),
        Ok(_) => Err("expected a JSON object such as '{\"n\": 1}'".to_owned()),
        Err(e) => Err(format!("not JSON: {e}")),
    }
}

/// The longest duration any flag takes: a week.
const MAX_FLAG_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);
/// The highest open-loop rate: beyond this the clock, not the server, would be measured.
const MAX_RATE: f64 = 1_000_000.0;

fn bounded_duration(raw: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(raw).map_err(|e| e.to_string())?;
    if d > MAX_FLAG_DURATION {
        return Err("at most a week (7d)".to_owned());
    }
    Ok(d)
}

/// Flag combinations clap cannot check alone; a message means exit code 2.
fn check_flags(args: &Args) -> Result<(), String> {
    if args.rate.is_some_and(|r| !(r > 0.0 && r <= MAX_RATE)) {
        return Err(format!(
            "--rate must be above 0 and at most {MAX_RATE} requests per second"
        ));
    }
    if !(0.0..=1.0).contains(&args.callback_fail_rate) {
        return Err(format!(
            "--callback-fail-rate must be from 0 to 1, got {}",
            args.callback_fail_rate
        ));
    }
    if args.max_error_rate.is_some_and(|r| !(0.0..=1.0).contains(&r)) {
        return Err("--max-error-rate takes a share from 0 to 1".to_owned());
    }
    if args.max_p99_ms.is_some_and(|ms| !(ms >= 0.0 && ms.is_finite())) {
        return Err("--max-p99-ms takes a number of milliseconds".to_owned());
    }
    if args.callback_host.parse::<std::net::IpAddr>().is_err() {
        return Err(format!(
            "--callback-host must be an IP address such as 127.0.0.1, not {}",
            args.callback_host
        ));
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(why) = check_flags(&args) {
        eprintln!("loadtest: {why}");
        return ExitCode::from(2);
    }
    let settings = Settings {
        mode: match args.mode {
            ModeArg::Sync => Mode::Sync,
            ModeArg::Async => Mode::Async,
            ModeArg::Compare => Mode::Compare,
            ModeArg::Healthz => Mode::Health,
        },
        urls: if args.spawn_server {
            Vec::new()
        } else {
            args.urls.clone()
        },
        requests: args.requests,
        concurrency: args.concurrency as usize,
        complexity: args.complexity,
        operation: match args.operation {
            OperationArg::Hash => Operation::Hash,
            OperationArg::Prime => Operation::Prime,
            OperationArg::Matrix => Operation::Matrix,
            OperationArg::Transform => Operation::Transform,
        },
        callback_host: args.callback_host.clone(),
        callback_port: args.callback_port,
        no_callback: args.no_callback,
        rate: args.rate,
        duration: args.duration,
        warmup: args.warmup,
        callback_timeout: args.callback_timeout,
        request_timeout: args.timeout,
        background_sync: args.background_sync,
        progress: !args.quiet,
        data: args.data.clone(),
        callback_fail_rate: args.callback_fail_rate,
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loadtest: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (report, spawned_server) = match runtime.block_on(loadtest::execute(&settings, || Ok(Config::from_env()?))) {
        Ok(done) => done,
        Err(e) => {
            eprintln!("loadtest: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    if !args.quiet {
        print!("{}", loadtest::text::render(&report));
    }
    if let Some(every) = args.soak_every {
        for run in &report.runs {
            print!("\n{}", loadtest::text::render_soak(run, every));
        }
    }
    if let Err(e) = write_files(&args, &report) {
        eprintln!("loadtest: {e:#}");
        return ExitCode::FAILURE;
    }
    let verdicts = loadtest::judge(
        &report,
        &Thresholds {
            max_p99_ms: args.max_p99_ms,
            max_error_rate: args.max_error_rate,
        },
    );
    for v in &verdicts {
        println!("{}", v.line);
    }
    // The report is out: now the spawned server may take its time to stop.
    drop(spawned_server);
    let missing = loadtest::missing_callbacks(&report);
    if missing > 0 {
        eprintln!("loadtest: {missing} callbacks never arrived");
        return ExitCode::from(4);
    }
    if verdicts.iter().any(|v| !v.passed) {
        return ExitCode::from(3);
    }
    ExitCode::SUCCESS
}

fn write_files(args: &Args, report: &loadtest::report::LoadtestReport) -> anyhow::Result<()> {
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(report)?)?;
        if !args.quiet {
            println!("JSON written to {}", path.display());
        }
    }
    let html = args
        .report
        .clone()
        .or_else(|| matches!(args.mode, ModeArg::Compare).then(|| "loadtest-report.html".into()));
    if let Some(path) = html {
        std::fs::write(&path, loadtest::html::render(report))?;
        if !args.quiet {
            println!("HTML report written to {}", path.display());
        }
    }
    Ok(())
}
