//! The `sync-async` binary: `sync-async` (or `sync-async serve`) runs the server until SIGINT or
//! SIGTERM; `sync-async calibrate` measures the work engine on this machine.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sync_async::app::StartError;
use sync_async::engine::Operation;
use sync_async::{App, Config, calibrate, telemetry};

#[derive(Parser)]
#[command(
    version,
    about = "Sync vs async API demo: the server, and an engine calibration tool"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (the default). Settings come from the environment and `.env`.
    Serve,
    /// Time every operation at every complexity with default data and print a Markdown table.
    Calibrate {
        /// Runs per cell; the fastest counts.
        #[arg(long, default_value_t = 1)]
        repeats: u32,
        /// Only these operations (repeatable).
        #[arg(long = "operation", value_parser = clap::value_parser!(String))]
        operations: Vec<String>,
        /// Also print the work amounts that would put each cell on the target curve.
        #[arg(long)]
        suggest: bool,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        None | Some(Command::Serve) => serve(),
        Some(Command::Calibrate {
            repeats,
            operations,
            suggest,
        }) => run_calibration(repeats, &operations, suggest),
    }
}

fn serve() -> ExitCode {
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("sync-async: {e}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(&config);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sync-async: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let shutdown = shutdown_signal().map_err(|e| StartError::Other(e.into()))?;
        let app = App::build(config).await?;
        app.run(shutdown).await.map_err(StartError::Other)
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // Like a bad setting: one line, exit code 2.
        Err(e @ StartError::Database(_)) => {
            eprintln!("sync-async: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "the server stopped with an error");
            eprintln!("sync-async: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Installs the SIGINT (Ctrl-C) and SIGTERM handlers now, before anything else starts, and
/// returns a future that resolves on the first of them. Installed lazily (when first polled), a
/// signal that came early in the start would kill the process instead of stopping it cleanly.
#[cfg(unix)]
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => tracing::info!("SIGINT received; shutting down"),
            _ = terminate.recv() => tracing::info!("SIGTERM received; shutting down"),
        }
    })
}

#[cfg(not(unix))]
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("Ctrl-C received; shutting down");
    })
}

fn run_calibration(repeats: u32, names: &[String], suggest: bool) -> ExitCode {
    let operations: Result<Vec<Operation>, String> = names.iter().map(|n| n.parse()).collect();
    let operations = match operations {
        Ok(ops) if ops.is_empty() => Operation::ALL.to_vec(),
        Ok(ops) => ops,
        Err(e) => {
            eprintln!("sync-async calibrate: {e}");
            return ExitCode::from(2);
        }
    };
    let measurements = calibrate::measure(&operations, repeats, |m| {
        eprintln!(
            "{:>9} c{:<2} {:>8.1} ms",
            m.operation.as_str(),
            m.complexity.get(),
            m.best_ms
        );
    });
    println!("{}", calibrate::render_table(&measurements));
    if suggest {
        println!("{}", calibrate::render_suggestions(&measurements));
    }
    ExitCode::SUCCESS
}
