//! The `sync-async` binary: `sync-async` (or `sync-async serve`) runs the server until SIGINT or
//! SIGTERM; `sync-async calibrate` measures the work engine on this machine with the amounts a
//! start would use, and `sync-async calibrate --save` re-measures and stores this machine's factors.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sync_async::app::StartError;
use sync_async::engine::{Complexity, Operation};
use sync_async::{App, Config, calibrate, telemetry};

/// mimalloc rather than glibc's malloc: under load the server allocates and frees on every
/// thread for every request, and glibc's arenas spent about a tenth of its CPU doing so.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Time every operation at every complexity with default data and the amounts a start would
    /// use (ENGINE_CALIBRATION), and print a Markdown table.
    Calibrate {
        /// Runs per cell; the fastest counts.
        #[arg(long, default_value_t = 1)]
        repeats: u32,
        /// Only these operations (repeatable).
        #[arg(long = "operation", value_parser = clap::value_parser!(String))]
        operations: Vec<String>,
        /// Only these complexities (repeatable), such as `--level 1 --level 4 --level 7`.
        #[arg(long = "level", value_parser = clap::value_parser!(u8).range(1..=10))]
        levels: Vec<u8>,
        /// Also print the work amounts that would put each cell on the target curve.
        #[arg(long)]
        suggest: bool,
        /// Re-measure this machine (at most 2 s), rewrite the calibration file, print the
        /// factors, and stop: the next start in `auto` uses them.
        #[arg(long)]
        save: bool,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        None | Some(Command::Serve) => serve(),
        Some(Command::Calibrate {
            repeats,
            operations,
            levels,
            suggest,
            save,
        }) => run_calibration(repeats, &operations, &levels, suggest, save),
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

fn run_calibration(repeats: u32, names: &[String], levels: &[u8], suggest: bool, save: bool) -> ExitCode {
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("sync-async calibrate: {e}");
            return ExitCode::from(2);
        }
    };
    // Log lines (a file that cannot be written, a refused measurement) go to stderr, away from
    // the table.
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .compact()
        .try_init();
    if save {
        let calibration = calibrate::remeasure(&config);
        println!("{}", calibration.describe());
        if let Some(file) = &calibration.file {
            println!("file: {}", file.display());
        }
        return match calibration.source {
            calibrate::Source::Measured { .. } => ExitCode::SUCCESS,
            _ => ExitCode::FAILURE,
        };
    }
    let operations: Result<Vec<Operation>, String> = names.iter().map(|n| n.parse()).collect();
    let operations = match operations {
        Ok(ops) if ops.is_empty() => Operation::ALL.to_vec(),
        Ok(ops) => ops,
        Err(e) => {
            eprintln!("sync-async calibrate: {e}");
            return ExitCode::from(2);
        }
    };
    // clap has checked the range, so every level is a complexity.
    let levels: Vec<Complexity> = match levels {
        [] => Complexity::all().collect(),
        some => some.iter().filter_map(|&level| Complexity::new(level)).collect(),
    };
    let calibration = calibrate::resolve(&config);
    eprintln!("{}", calibration.describe());
    let measurements = calibrate::measure(&operations, &levels, repeats, &calibration.amounts, |m| {
        eprintln!(
            "{:>9} c{:<2} {:>8.1} ms",
            m.operation.as_str(),
            m.complexity.get(),
            m.best_ms
        );
    });
    println!("{}", calibrate::render_table(&measurements));
    if suggest {
        println!("{}", calibrate::render_suggestions(&measurements, &calibration.amounts));
    }
    ExitCode::SUCCESS
}
