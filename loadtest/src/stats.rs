//! Latency recording in HDR histograms (microsecond resolution, 3 significant digits), so
//! memory stays flat however many requests are sent, and the summaries the reports print.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// The longest latency recorded exactly: one hour. Longer ones are clamped to it.
const MAX_MICROS: u64 = 3_600_000_000;

/// A latency histogram, with the exact extremes beside it (the histogram's own are rounded to
/// its precision).
#[derive(Clone, Debug)]
pub struct Latency {
    histogram: Histogram<u64>,
    min_micros: u64,
    max_micros: u64,
}

impl Default for Latency {
    fn default() -> Self {
        Self::new()
    }
}

impl Latency {
    pub fn new() -> Self {
        Self {
            histogram: Histogram::new_with_bounds(1, MAX_MICROS, 3).expect("static bounds are valid"),
            min_micros: u64::MAX,
            max_micros: 0,
        }
    }

    /// A small histogram for one second of a timeline: 2 significant digits, growing only as
    /// far as the values it sees, so a long run's timeline stays a few KB a second.
    fn compact() -> Self {
        let mut histogram = Histogram::new(2).expect("2 significant digits are valid");
        histogram.auto(true);
        Self {
            histogram,
            min_micros: u64::MAX,
            max_micros: 0,
        }
    }

    pub fn record(&mut self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros())
            .unwrap_or(MAX_MICROS)
            .clamp(1, MAX_MICROS);
        // `record` grows an auto-resizing histogram; a fixed one that is full saturates instead.
        if self.histogram.record(micros).is_err() {
            self.histogram.saturating_record(micros);
        }
        self.min_micros = self.min_micros.min(micros);
        self.max_micros = self.max_micros.max(micros);
    }

    pub fn merge(&mut self, other: &Latency) {
        // Both histograms have the same bounds, so adding cannot fail.
        let _ = self.histogram.add(&other.histogram);
        self.min_micros = self.min_micros.min(other.min_micros);
        self.max_micros = self.max_micros.max(other.max_micros);
    }

    pub fn count(&self) -> u64 {
        self.histogram.len()
    }

    /// The latency at `quantile` (0 to 1), in milliseconds; 0 when empty. Clamped to the exact
    /// extremes: a histogram bucket's upper edge can lie above the largest value recorded.
    pub fn quantile_ms(&self, quantile: f64) -> f64 {
        if self.histogram.is_empty() {
            return 0.0;
        }
        let micros = self
            .histogram
            .value_at_quantile(quantile)
            .clamp(self.min_micros, self.max_micros);
        micros as f64 / 1e3
    }

    pub fn summary(&self) -> Summary {
        if self.histogram.is_empty() {
            return Summary::default();
        }
        let ms = |micros: u64| micros as f64 / 1e3;
        Summary {
            count: self.histogram.len(),
            min_ms: ms(self.min_micros),
            mean_ms: self.histogram.mean() / 1e3,
            p50_ms: self.quantile_ms(0.50),
            p90_ms: self.quantile_ms(0.90),
            p95_ms: self.quantile_ms(0.95),
            p99_ms: self.quantile_ms(0.99),
            p999_ms: self.quantile_ms(0.999),
            max_ms: ms(self.max_micros),
        }
    }

    /// `(percentile, latency ms)` points for a percentile curve, dense in the tail.
    pub fn percentile_curve(&self) -> Vec<(f64, f64)> {
        if self.histogram.is_empty() {
            return Vec::new();
        }
        CURVE_PERCENTILES
            .iter()
            .map(|&p| (p, self.quantile_ms(p / 100.0)))
            .collect()
    }
}

/// The percentiles a curve is drawn through.
const CURVE_PERCENTILES: [f64; 16] = [
    0.0, 10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 97.5, 99.0, 99.5, 99.75, 99.9, 99.95, 99.99, 99.999, 100.0,
];

/// count, min, mean, p50, p90, p95, p99, p99.9 and max, in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub count: u64,
    pub min_ms: f64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

/// Answers by HTTP status, and transport errors by kind.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcomes {
    pub statuses: BTreeMap<u16, u64>,
    pub transport_errors: BTreeMap<String, u64>,
    /// Error answers by problem `type`, such as a 429 for a full queue against one for the rate
    /// limit.
    #[serde(default)]
    pub problems: BTreeMap<String, u64>,
}

impl Outcomes {
    pub fn record_status(&mut self, status: u16) {
        *self.statuses.entry(status).or_default() += 1;
    }

    pub fn record_problem(&mut self, problem_type: &str) {
        *self.problems.entry(problem_type.to_owned()).or_default() += 1;
    }

    /// Error answers of this problem kind (`queue-full`, `rate-limited`, `sync-saturated`).
    pub fn problem_count(&self, kind: &str) -> u64 {
        self.problems
            .get(&format!("urn:sync-async:problem:{kind}"))
            .copied()
            .unwrap_or(0)
    }

    pub fn record_error(&mut self, kind: &str) {
        *self.transport_errors.entry(kind.to_owned()).or_default() += 1;
    }

    pub fn merge(&mut self, other: &Outcomes) {
        for (status, n) in &other.statuses {
            *self.statuses.entry(*status).or_default() += n;
        }
        for (kind, n) in &other.transport_errors {
            *self.transport_errors.entry(kind.clone()).or_default() += n;
        }
        for (kind, n) in &other.problems {
            *self.problems.entry(kind.clone()).or_default() += n;
        }
    }

    pub fn total(&self) -> u64 {
        self.statuses.values().sum::<u64>() + self.transport_errors.values().sum::<u64>()
    }

    /// Answers in `range`.
    pub fn count_in(&self, range: std::ops::RangeInclusive<u16>) -> u64 {
        self.statuses.range(range).map(|(_, n)| n).sum()
    }

    /// The share of requests that did not get a 2xx.
    pub fn error_rate(&self) -> f64 {
        let total = self.total();
        if total == 0 {
            0.0
        } else {
            (total - self.count_in(200..=299)) as f64 / total as f64
        }
    }
}

/// Per-second figures for the time charts: count and a histogram of the latencies that ended
/// in that second. Memory grows with the run's length, not with its request count.
#[derive(Clone, Debug, Default)]
pub struct Timeline {
    seconds: Vec<Latency>,
}

impl Timeline {
    pub fn record(&mut self, at: Duration, latency: Duration) {
        let second = at.as_secs() as usize;
        if self.seconds.len() <= second {
            self.seconds.resize_with(second + 1, Latency::compact);
        }
        self.seconds[second].record(latency);
    }

    pub fn merge(&mut self, other: &Timeline) {
        if self.seconds.len() < other.seconds.len() {
            self.seconds.resize_with(other.seconds.len(), Latency::compact);
        }
        for (mine, theirs) in self.seconds.iter_mut().zip(&other.seconds) {
            mine.merge(theirs);
        }
    }

    /// `(second, count, p50 ms, p99 ms)` for every second of the run.
    pub fn points(&self) -> Vec<TimelinePoint> {
        self.seconds
            .iter()
            .enumerate()
            .map(|(second, h)| TimelinePoint {
                second: second as u64,
                count: h.count(),
                p50_ms: h.quantile_ms(0.5),
                p99_ms: h.quantile_ms(0.99),
            })
            .collect()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct TimelinePoint {
    pub second: u64,
    pub count: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_report_exact_percentiles_within_three_digits() {
        let mut h = Latency::new();
        for ms in 1..=100 {
            h.record(Duration::from_millis(ms));
        }
        let s = h.summary();
        assert_eq!(s.count, 100);
        assert_eq!((s.min_ms, s.max_ms), (1.0, 100.0));
        assert!((s.mean_ms - 50.5).abs() < 0.1, "{s:?}");
        assert!((s.p50_ms - 50.0).abs() < 0.1 && (s.p99_ms - 99.0).abs() < 0.1, "{s:?}");
        assert!((s.p999_ms - 100.0).abs() < 0.1, "{s:?}");
        assert!(
            s.p999_ms <= s.max_ms && s.p99_ms <= s.max_ms,
            "no percentile above the max: {s:?}"
        );
    }

    #[test]
    fn an_empty_histogram_summarises_to_zeros() {
        assert_eq!(Latency::new().summary(), Summary::default());
        assert!(Latency::new().percentile_curve().is_empty());
    }

    #[test]
    fn merging_adds_counts() {
        let (mut a, mut b) = (Latency::new(), Latency::new());
        a.record(Duration::from_millis(1));
        b.record(Duration::from_millis(3));
        a.merge(&b);
        assert_eq!(a.count(), 2);
        assert_eq!(a.summary().max_ms, 3.0);
    }

    #[test]
    fn outcomes_count_errors_beside_statuses() {
        let mut o = Outcomes::default();
        o.record_status(200);
        o.record_status(202);
        o.record_status(503);
        o.record_error("connect");
        assert_eq!(o.total(), 4);
        assert_eq!(o.count_in(200..=299), 2);
        assert_eq!(o.error_rate(), 0.5);
    }

    #[test]
    fn the_timeline_buckets_by_second() {
        let mut t = Timeline::default();
        t.record(Duration::from_millis(100), Duration::from_millis(5));
        t.record(Duration::from_millis(2_500), Duration::from_millis(7));
        let points = t.points();
        assert_eq!(points.len(), 3);
        assert_eq!((points[0].count, points[1].count, points[2].count), (1, 0, 1));
        assert!((points[2].p50_ms - 7.0).abs() < 0.1, "{points:?}");
    }
}
