//! A rolling window of one-second buckets behind the dashboard's rates and charts: answers of
//! `/sync` and `/async` by status, the latency of each answer, async completion times, and the
//! queue depth and workers busy as last sampled. Fed by the HTTP middleware (one call per
//! answer) and by the job completer (one call per async job this replica finishes); the window
//! is pure and takes its clock as a second number, so tests drive it.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::jobs::CompletionObserver;

/// Seconds of history kept: the overview's throughput chart shows them all.
pub(crate) const WINDOW_SECONDS: usize = 300;
/// Latency samples kept per series and second: enough for any burst the demo fires; under a
/// heavier load the rest of that second is left out, so memory stays bounded.
const SAMPLES_PER_SECOND: usize = 1_000;

/// Which API an answer came from, as the charts split them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    Sync,
    Async,
}

/// The shared recorder: a clock and the window behind a lock held for a few instructions.
#[derive(Debug)]
pub(crate) struct Rates {
    /// The route templates are `{BASE_PATH}/sync` and `{BASE_PATH}/async`.
    sync_route: String,
    async_route: String,
    started: Instant,
    window: Mutex<Window>,
}

impl Rates {
    pub(crate) fn new(base_path: &str) -> Self {
        Self {
            sync_route: format!("{base_path}/sync"),
            async_route: format!("{base_path}/async"),
            started: Instant::now(),
            window: Mutex::new(Window::default()),
        }
    }

    /// Seconds since this recorder started: the window's clock.
    pub(crate) fn now_second(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    /// Records one HTTP answer; routes other than `/sync` and `/async` are ignored.
    pub(crate) fn record_answer(&self, route: &str, status: u16, elapsed: Duration) {
        let route = if route == self.sync_route {
            Route::Sync
        } else if route == self.async_route {
            Route::Async
        } else {
            return;
        };
        let second = self.now_second();
        self.with_window(|w| w.record_answer(second, route, status, elapsed));
    }

    /// Records how long an async job took from acceptance to its end.
    pub(crate) fn record_completion(&self, took: Duration) {
        let second = self.now_second();
        self.with_window(|w| w.record_completion(second, took));
    }

    /// Records the queue depth and workers busy for the current second (the last sample wins).
    pub(crate) fn sample_gauges(&self, backlog: u64, workers_busy: u64) {
        let second = self.now_second();
        self.with_window(|w| w.sample_gauges(second, backlog, workers_busy));
    }

    /// The last `seconds` complete seconds, oldest first.
    pub(crate) fn series(&self, seconds: usize) -> Series {
        let second = self.now_second();
        self.with_window(|w| w.series(second, seconds))
    }

    fn with_window<T>(&self, f: impl FnOnce(&mut Window) -> T) -> T {
        // A panic while the lock was held leaves plain counters behind: still usable.
        let mut window = self.window.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut window)
    }
}

/// Every async job this replica finishes, whoever submitted it (not only the demo's bursts).
impl CompletionObserver for Rates {
    fn job_completed(&self, accepted_to_end: Duration) {
        self.record_completion(accepted_to_end);
    }
}

/// Answers of one API in one second, by status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub(crate) struct Answers {
    /// 200 for sync, 202 for async.
    pub ok: u32,
    /// 503: every sync slot was busy (or the server was stopping).
    pub busy: u32,
    /// 429: the queue was full or the client's rate limit was used.
    pub limited: u32,
    /// Anything else (422, 504...).
    pub other: u32,
}

impl Answers {
    fn add(&mut self, status: u16) {
        match status {
            200..=299 => self.ok += 1,
            503 => self.busy += 1,
            429 => self.limited += 1,
            _ => self.other += 1,
        }
    }
}

#[derive(Debug, Default)]
struct Second {
    at: u64,
    sync: Answers,
    asynchronous: Answers,
    /// Microseconds of successful answers only: a 503 or 429 takes no time and would hide what
    /// a served request costs.
    sync_us: Vec<u32>,
    ack_us: Vec<u32>,
    completion_us: Vec<u32>,
    backlog: Option<u64>,
    workers_busy: Option<u64>,
}

/// The last `WINDOW_SECONDS` seconds, newest at the back.
#[derive(Debug, Default)]
pub(crate) struct Window {
    seconds: VecDeque<Second>,
}

impl Window {
    /// The bucket of `second`, made (and the oldest dropped) when it is new. A second older
    /// than the newest bucket (a clock read before a lock) goes to the newest.
    fn bucket(&mut self, second: u64) -> &mut Second {
        let newest = self.seconds.back().map(|s| s.at);
        if newest.is_none_or(|at| second > at) {
            self.seconds.push_back(Second {
                at: second,
                ..Second::default()
            });
            while self.seconds.len() > WINDOW_SECONDS + 1 {
                self.seconds.pop_front();
            }
        }
        self.seconds.back_mut().expect("a bucket was just ensured")
    }

    pub(crate) fn record_answer(&mut self, second: u64, route: Route, status: u16, elapsed: Duration) {
        let bucket = self.bucket(second);
        let ok = (200..300).contains(&status);
        let (answers, samples) = match route {
            Route::Sync => (&mut bucket.sync, &mut bucket.sync_us),
            Route::Async => (&mut bucket.asynchronous, &mut bucket.ack_us),
        };
        answers.add(status);
        if ok {
            push_sample(samples, elapsed);
        }
    }

    pub(crate) fn record_completion(&mut self, second: u64, took: Duration) {
        push_sample(&mut self.bucket(second).completion_us, took);
    }

    pub(crate) fn sample_gauges(&mut self, second: u64, backlog: u64, workers_busy: u64) {
        let bucket = self.bucket(second);
        bucket.backlog = Some(backlog);
        bucket.workers_busy = Some(workers_busy);
    }

    /// The `count` complete seconds before `now`, oldest first; a second with nothing recorded
    /// is zero answers and no latency (null).
    pub(crate) fn series(&self, now: u64, count: usize) -> Series {
        let count = count.min(WINDOW_SECONDS);
        let first = now.saturating_sub(count as u64);
        let mut series = Series {
            seconds: count,
            ..Series::default()
        };
        let mut pooled = [Vec::new(), Vec::new(), Vec::new()];
        for at in first..now {
            let second = self.seconds.iter().find(|s| s.at == at);
            let sync = second.map(|s| s.sync).unwrap_or_default();
            let asynchronous = second.map(|s| s.asynchronous).unwrap_or_default();
            series.sync.push(sync);
            series.asynchronous.push(asynchronous);
            series.backlog.push(second.and_then(|s| s.backlog));
            series.workers_busy.push(second.and_then(|s| s.workers_busy));
            let samples = [
                second.map_or(&[][..], |s| &s.sync_us),
                second.map_or(&[][..], |s| &s.ack_us),
                second.map_or(&[][..], |s| &s.completion_us),
            ];
            for ((line, samples), pool) in [&mut series.sync_ms, &mut series.ack_ms, &mut series.completion_ms]
                .into_iter()
                .zip(samples)
                .zip(pooled.iter_mut())
            {
                line.push(Percentiles::of(samples));
                pool.extend_from_slice(samples);
            }
        }
        // Shorter, steadier figures for the tiles: the last minute pooled.
        let recent = now.saturating_sub(60);
        let mut minute = [Vec::new(), Vec::new(), Vec::new()];
        for second in self.seconds.iter().filter(|s| s.at >= recent && s.at < now) {
            minute[0].extend_from_slice(&second.sync_us);
            minute[1].extend_from_slice(&second.ack_us);
            minute[2].extend_from_slice(&second.completion_us);
        }
        let [sync, ack, completion] = minute.map(|samples| Percentiles::of(&samples));
        series.last_minute = LastMinute { sync, ack, completion };
        series.last_second = LastSecond::of(
            series.sync.last().copied().unwrap_or_default(),
            series.asynchronous.last().copied().unwrap_or_default(),
        );
        series
    }
}

fn push_sample(samples: &mut Vec<u32>, took: Duration) {
    if samples.len() < SAMPLES_PER_SECOND {
        samples.push(u32::try_from(took.as_micros()).unwrap_or(u32::MAX));
    }
}

/// p50, p95 and p99 in milliseconds, by nearest rank; `None` without samples.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub(crate) struct Percentiles {
    pub count: usize,
    pub p50: Option<f64>,
    pub p95: Option<f64>,
    pub p99: Option<f64>,
}

impl Percentiles {
    pub(crate) fn of(samples_us: &[u32]) -> Self {
        if samples_us.is_empty() {
            return Self::default();
        }
        let mut sorted = samples_us.to_vec();
        sorted.sort_unstable();
        let rank = |p: f64| {
            let index = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
            Some(f64::from(sorted[index]) / 1000.0)
        };
        Self {
            count: sorted.len(),
            p50: rank(0.50),
            p95: rank(0.95),
            p99: rank(0.99),
        }
    }
}

/// What the charts draw: one entry per second, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub(crate) struct Series {
    pub seconds: usize,
    pub sync: Vec<Answers>,
    #[serde(rename = "async")]
    pub asynchronous: Vec<Answers>,
    pub backlog: Vec<Option<u64>>,
    pub workers_busy: Vec<Option<u64>>,
    /// Sync response time (200s only).
    pub sync_ms: Vec<Percentiles>,
    /// Async acknowledgement time (202s only).
    pub ack_ms: Vec<Percentiles>,
    /// Async completion: from acceptance to the job's end, for every async job this replica
    /// finished.
    pub completion_ms: Vec<Percentiles>,
    pub last_minute: LastMinute,
    pub last_second: LastSecond,
}

/// Latency over the last minute, pooled.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub(crate) struct LastMinute {
    pub sync: Percentiles,
    pub ack: Percentiles,
    pub completion: Percentiles,
}

/// Answers in the last complete second: the "per second" tiles.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub(crate) struct LastSecond {
    pub sync: Answers,
    #[serde(rename = "async")]
    pub asynchronous: Answers,
    /// Both APIs together, by the status the overview shows.
    pub status_200: u32,
    pub status_202: u32,
    pub status_503: u32,
    pub status_429: u32,
}

impl LastSecond {
    fn of(sync: Answers, asynchronous: Answers) -> Self {
        Self {
            sync,
            asynchronous,
            status_200: sync.ok,
            status_202: asynchronous.ok,
            status_503: sync.busy + asynchronous.busy,
            status_429: sync.limited + asynchronous.limited,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn answers_are_counted_by_second_and_status_and_only_successes_are_timed() {
        let mut w = Window::default();
        w.record_answer(3, Route::Sync, 200, ms(100));
        w.record_answer(3, Route::Sync, 503, ms(1));
        w.record_answer(3, Route::Sync, 503, ms(1));
        w.record_answer(4, Route::Async, 202, ms(2));
        w.record_answer(4, Route::Async, 429, ms(1));

        let s = w.series(5, 3);

        assert_eq!(s.seconds, 3);
        assert_eq!(
            s.sync[1],
            Answers {
                ok: 1,
                busy: 2,
                limited: 0,
                other: 0
            }
        );
        assert_eq!(
            s.asynchronous[2],
            Answers {
                ok: 1,
                busy: 0,
                limited: 1,
                other: 0
            }
        );
        assert_eq!(s.sync_ms[1].count, 1, "503s are not timed");
        assert_eq!(s.sync_ms[1].p99, Some(100.0));
        assert_eq!(s.ack_ms[2].p50, Some(2.0));
        assert_eq!(s.sync_ms[0], Percentiles::default(), "an empty second has no latency");
        assert_eq!((s.last_second.status_202, s.last_second.status_429), (1, 1));
    }

    #[test]
    fn the_current_second_is_left_out_until_it_is_complete() {
        let mut w = Window::default();
        w.record_answer(7, Route::Sync, 200, ms(5));
        assert_eq!(w.series(7, 5).sync.iter().map(|a| a.ok).sum::<u32>(), 0);
        assert_eq!(w.series(8, 5).sync[4].ok, 1);
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let samples: Vec<u32> = (1..=100).map(|ms| ms * 1000).collect();
        let p = Percentiles::of(&samples);
        assert_eq!((p.p50, p.p95, p.p99), (Some(50.0), Some(95.0), Some(99.0)));
        assert_eq!(Percentiles::of(&[7000]).p50, Some(7.0));
    }

    #[test]
    fn the_window_forgets_what_is_older_than_its_length() {
        let mut w = Window::default();
        w.record_answer(0, Route::Sync, 200, ms(1));
        for second in 1..=(WINDOW_SECONDS as u64 + 10) {
            w.sample_gauges(second, second, 1);
        }
        assert!(w.seconds.len() <= WINDOW_SECONDS + 1);
        assert!(w.seconds.iter().all(|s| s.at > 0));
    }

    #[test]
    fn gauges_keep_the_last_sample_of_a_second_and_gaps_are_null() {
        let mut w = Window::default();
        w.sample_gauges(1, 10, 2);
        w.sample_gauges(1, 12, 3);
        let s = w.series(3, 2);
        assert_eq!(s.backlog, vec![Some(12), None]);
        assert_eq!(s.workers_busy, vec![Some(3), None]);
    }

    #[test]
    fn latency_samples_per_second_are_bounded() {
        let mut w = Window::default();
        for _ in 0..(SAMPLES_PER_SECOND + 50) {
            w.record_completion(1, ms(3));
        }
        assert_eq!(w.series(2, 1).completion_ms[0].count, SAMPLES_PER_SECOND);
    }

    #[test]
    fn the_recorder_knows_its_routes_under_a_base_path() {
        let rates = Rates::new("/ops");
        rates.record_answer("/ops/sync", 200, ms(1));
        rates.record_answer("/sync", 200, ms(1));
        rates.record_answer("/ops/requests", 200, ms(1));
        let w = rates.window.lock().expect("lock");
        let total: u32 = w.seconds.iter().map(|s| s.sync.ok + s.asynchronous.ok).sum();
        assert_eq!(total, 1);
    }
}
