//! `--spawn-server`: the service itself, started in this process on a free port with a
//! temporary database, on its own runtime so its threads are not the load generator's.

use std::sync::mpsc as std_mpsc;
use std::thread::JoinHandle;

use anyhow::Context;
use tokio::sync::oneshot;

use sync_async::config::LoopbackCallbacks;
use sync_async::{App, Config};

/// The rate limit of a spawned server: high enough that the load test never trips it.
const LOADTEST_RATE_LIMIT: u32 = 1_000_000_000;

/// A running in-process server; stopped (gracefully) when dropped.
pub struct SpawnedServer {
    pub base_url: String,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    /// Holds the temporary database until the server has stopped.
    _dir: tempfile::TempDir,
}

/// Settings for a spawned server: the user's (environment and `.env`), then loopback on a free
/// port, a temporary database, no rate limit to speak of, and loopback callbacks allowed for the
/// clients on this host even if the user's settings say `never` (the tool's receiver is here).
/// The engine calibration stays the user's file (beside their database, not the temporary one),
/// so that a run does not measure the machine again.
pub fn loadtest_config(base: Config, dir: &tempfile::TempDir) -> Config {
    Config {
        calibration_path: Some(base.calibration_file()),
        host: [127, 0, 0, 1].into(),
        port: 0,
        database_path: dir.path().join("loadtest.db"),
        rate_limit_requests: LOADTEST_RATE_LIMIT,
        // The tool's receiver is on this host, and so is every client of a spawned server.
        loopback_callbacks: LoopbackCallbacks::Local,
        ..base
    }
}

impl SpawnedServer {
    pub fn start(base: Config) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir().context("creating a temporary directory for the database")?;
        let config = loadtest_config(base, &dir);
        let (addr_tx, addr_rx) = std_mpsc::channel();
        let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new().name("server".into()).spawn(move || {
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_name("server")
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = addr_tx.send(Err(anyhow::Error::from(e)));
                    return;
                }
            };
            runtime.block_on(async move {
                let app = match App::build(config).await {
                    Ok(app) => app,
                    Err(e) => {
                        let _ = addr_tx.send(Err(e.into()));
                        return;
                    }
                };
                let _ = addr_tx.send(Ok(app.local_addr()));
                if let Err(e) = app
                    .run(async move {
                        let _ = shutdown_rx.await;
                    })
                    .await
                {
                    eprintln!("loadtest: the spawned server stopped with an error: {e:#}");
                }
            });
        })?;
        let addr = addr_rx.recv().context("the server thread ended before it started")??;
        Ok(Self {
            base_url: format!("http://{addr}"),
            shutdown: Some(shutdown_tx),
            thread: Some(thread),
            _dir: dir,
        })
    }
}

impl Drop for SpawnedServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
