//! `--background-sync N`: keeps N sync requests running for the whole measured run, so the
//! engine is saturated the way the async acknowledgement benchmark asks for.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::runner::Shoot;
use super::stats::Outcomes;

/// How long a loop waits after a refused or failed request before it tries again.
const REFUSED_PAUSE: Duration = Duration::from_millis(100);

/// The background load that ran beside a measured run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackgroundLoad {
    /// Sync requests kept in flight.
    pub concurrency: usize,
    pub outcomes: Outcomes,
}

/// A running background load.
pub struct Background {
    stop: CancellationToken,
    tasks: JoinSet<()>,
    outcomes: Arc<Mutex<Outcomes>>,
    concurrency: usize,
}

impl Background {
    /// Starts `concurrency` loops of `shoot`, then waits (up to 10 s) until the server reports
    /// that many sync requests in flight, so the measured run starts on a saturated engine.
    pub async fn start(concurrency: usize, shoot: Shoot, client: &reqwest::Client, base_url: &str) -> Self {
        let stop = CancellationToken::new();
        let outcomes = Arc::new(Mutex::new(Outcomes::default()));
        let mut tasks = JoinSet::new();
        for _ in 0..concurrency {
            let (stop, shoot, outcomes) = (stop.clone(), shoot.clone(), outcomes.clone());
            tasks.spawn(async move {
                loop {
                    let shot = tokio::select! {
                        () = stop.cancelled() => break,
                        shot = shoot() => shot,
                    };
                    let ok = shot.status.is_some_and(|s| (200..300).contains(&s));
                    {
                        let mut o = outcomes.lock().unwrap_or_else(|p| p.into_inner());
                        match shot.status {
                            Some(status) => o.record_status(status),
                            None => o.record_error(shot.error_kind.unwrap_or("other")),
                        }
                    }
                    if !ok {
                        // A refused or failed request would be retried in a tight loop that
                        // steals the CPU this option is meant to leave to the engine.
                        tokio::select! {
                            () = stop.cancelled() => break,
                            () = tokio::time::sleep(REFUSED_PAUSE) => {}
                        }
                    }
                }
            });
        }
        wait_for_saturation(client, base_url, concurrency).await;
        Self {
            stop,
            tasks,
            outcomes,
            concurrency,
        }
    }

    pub async fn stop(mut self) -> BackgroundLoad {
        self.stop.cancel();
        while self.tasks.join_next().await.is_some() {}
        let outcomes = self.outcomes.lock().unwrap_or_else(|p| p.into_inner()).clone();
        BackgroundLoad {
            concurrency: self.concurrency,
            outcomes,
        }
    }
}

async fn wait_for_saturation(client: &reqwest::Client, base_url: &str, concurrency: usize) {
    let url = format!("{base_url}/metrics");
    for _ in 0..200 {
        let in_flight = match client.get(&url).send().await {
            Ok(r) => r
                .json::<serde_json::Value>()
                .await
                .ok()
                .and_then(|m| m.pointer("/sync/in_flight")?.as_u64()),
            Err(_) => None,
        };
        if in_flight.is_some_and(|n| n as usize >= concurrency) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "loadtest: the server never reported {concurrency} sync requests in flight; \
         is --background-sync above its MAX_SYNC_CONCURRENCY? Measuring anyway."
    );
}
