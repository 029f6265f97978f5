//! `callback-server`: the demo's callback receiver. Prints one line per callback, serves totals
//! at `/stats`, verifies signatures with `--secret`, and can play an unreliable receiver.

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use sync_async::signing::SigningKey;
use sync_async_loadtest::receiver::{DEFAULT_TIMESTAMP_TOLERANCE, Receiver, ReceiverOptions};

#[derive(Parser)]
#[command(
    version,
    about = "Receives sync-async callbacks: POST /callback, GET /stats, GET /healthz"
)]
struct Args {
    #[arg(long, default_value_t = 9000)]
    port: u16,
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// Verify Standard Webhooks signatures with this secret (`whsec_...`); refuse bad ones with 401.
    #[arg(long, env = "CALLBACK_SIGNING_SECRET")]
    secret: Option<String>,
    /// Answer this fraction of callbacks (0 to 1) with `--status`.
    #[arg(long, default_value_t = 0.0)]
    fail_rate: f64,
    /// Answer the first N deliveries of each callback with `--status`.
    #[arg(long, default_value_t = 0)]
    fail_first: u32,
    /// The status of a simulated failure.
    #[arg(long, default_value_t = 503)]
    status: u16,
    /// Send `Retry-After: S` with simulated failures.
    #[arg(long)]
    retry_after: Option<u64>,
    /// Wait this long before answering each callback.
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// Print nothing per callback.
    #[arg(long)]
    quiet: bool,
    /// How many recent callbacks `/stats` shows.
    #[arg(long, default_value_t = 20)]
    keep_recent: usize,
    /// How many callback ids are remembered for de-duplication and `--fail-first`; past that
    /// the oldest is forgotten, so memory stays bounded however long the receiver runs.
    #[arg(long, default_value_t = 100_000)]
    remember_ids: usize,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let secret = match args.secret.as_deref().map(SigningKey::parse).transpose() {
        Ok(secret) => secret,
        Err(e) => {
            eprintln!("callback-server: --secret: {e}");
            return ExitCode::from(2);
        }
    };
    if !(0.0..=1.0).contains(&args.fail_rate)
        || !(100..=599).contains(&args.status)
        || !(1..=10_000_000).contains(&args.remember_ids)
        || args.keep_recent > 10_000
    {
        eprintln!(
            "callback-server: --fail-rate takes 0 to 1, --status 100 to 599, --remember-ids 1 to 10000000 and --keep-recent 0 to 10000"
        );
        return ExitCode::from(2);
    }
    let options = ReceiverOptions {
        secret,
        timestamp_tolerance: DEFAULT_TIMESTAMP_TOLERANCE,
        fail_rate: args.fail_rate,
        fail_first: args.fail_first,
        fail_status: args.status,
        retry_after_secs: args.retry_after,
        delay: Duration::from_millis(args.delay_ms),
        quiet: args.quiet,
        keep_recent: args.keep_recent,
        remember_ids: args.remember_ids,
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("callback-server: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let receiver = Receiver::new(options);
        let running = match receiver.clone().spawn(SocketAddr::new(args.host, args.port)).await {
            Ok(running) => running,
            Err(e) => {
                eprintln!("callback-server: cannot listen on {}:{}: {e}", args.host, args.port);
                return ExitCode::FAILURE;
            }
        };
        println!("callback-server listening on http://{}/callback (stats at /stats)", running.addr);
        let _ = tokio::signal::ctrl_c().await;
        let totals = receiver.totals();
        println!(
            "callback-server: {} requests, {} accepted ({} unique, {} duplicates), {} rejected signatures, {} simulated failures",
            totals.requests, totals.accepted, totals.unique, totals.duplicates, totals.rejected_signature, totals.simulated_failures
        );
        ExitCode::SUCCESS
    })
}
