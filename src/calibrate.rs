//! `sync-async calibrate`: times every operation at every complexity with default data on this
//! machine, compares it with the documented curve, and suggests amounts that would match it.
//! This is the one place that reads the clock around the engine; the engine itself never does.

use std::fmt::Write;
use std::time::Instant;

use crate::engine::{self, CancelToken, Complexity, Operation, WorkPayload};

/// How the time of `prime` grows with `n` (trial division is about n^1.4 at these sizes); the
/// other budgets are linear in their amount.
const PRIME_GROWTH_EXPONENT: f64 = 1.4;

/// One measured cell of the table.
#[derive(Debug, Clone, Copy)]
pub struct Measurement {
    pub operation: Operation,
    pub complexity: Complexity,
    /// The fastest of the repeats, in milliseconds: the least disturbed by other load.
    pub best_ms: f64,
}

/// Runs each operation at each complexity `repeats` times and keeps the fastest run.
pub fn measure(operations: &[Operation], repeats: u32, mut progress: impl FnMut(&Measurement)) -> Vec<Measurement> {
    let mut out = Vec::new();
    for &operation in operations {
        for complexity in Complexity::all() {
            let payload = WorkPayload {
                operation,
                complexity: complexity.get(),
                data: None,
            };
            let Ok(work) = payload.plan() else { continue };
            let best_ms = (0..repeats.max(1))
                .map(|_| {
                    let started = Instant::now();
                    let _ = std::hint::black_box(engine::run(&work, &CancelToken::new()));
                    started.elapsed().as_secs_f64() * 1e3
                })
                .fold(f64::INFINITY, f64::min);
            let m = Measurement {
                operation,
                complexity,
                best_ms,
            };
            progress(&m);
            out.push(m);
        }
    }
    out
}

/// A Markdown table: one row per operation, one column per complexity, and the deviation from
/// the documented curve.
pub fn render_table(measurements: &[Measurement]) -> String {
    let mut out = String::from("| operation |");
    for c in Complexity::all() {
        let _ = write!(out, " c{} |", c.get());
    }
    out.push_str(" worst deviation |\n|---|");
    out.push_str(&"---:|".repeat(11));
    out.push_str("\n| *target* |");
    for c in Complexity::all() {
        let _ = write!(out, " {} |", format_ms(engine::nominal_ms(c)));
    }
    out.push_str(" ±30% allowed |\n");
    for op in Operation::ALL {
        let row: Vec<&Measurement> = measurements.iter().filter(|m| m.operation == op).collect();
        if row.is_empty() {
            continue;
        }
        let _ = write!(out, "| {op} |");
        for m in &row {
            let _ = write!(out, " {} |", format_ms(m.best_ms));
        }
        let worst = row
            .iter()
            .map(|m| deviation(m))
            .fold(0.0, |a: f64, d| if d.abs() > a.abs() { d } else { a });
        let _ = writeln!(out, " {:+.0}% |", worst * 100.0);
    }
    out
}

/// Amounts that would bring each measured cell onto the curve, for pasting into the engine's
/// calibration table after a hardware change.
pub fn render_suggestions(measurements: &[Measurement]) -> String {
    let mut out = String::new();
    for op in Operation::ALL {
        let amounts: Vec<String> = measurements
            .iter()
            .filter(|m| m.operation == op)
            .map(|m| {
                let ratio = engine::nominal_ms(m.complexity) / m.best_ms;
                let exponent = if op == Operation::Prime {
                    1.0 / PRIME_GROWTH_EXPONENT
                } else {
                    1.0
                };
                let amount = engine::amount_for(op, m.complexity) as f64 * ratio.powf(exponent);
                format!("{:.0}", amount)
            })
            .collect();
        if !amounts.is_empty() {
            let _ = writeln!(out, "{op}: [{}]", amounts.join(", "));
        }
    }
    out
}

/// Relative deviation from the documented duration: +0.1 means 10% slower than the target.
pub fn deviation(m: &Measurement) -> f64 {
    m.best_ms / engine::nominal_ms(m.complexity) - 1.0
}

fn format_ms(ms: f64) -> String {
    if ms >= 1000.0 {
        format!("{:.2} s", ms / 1000.0)
    } else {
        format!("{ms:.0} ms")
    }
}
