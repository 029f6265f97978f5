//! `sync-async calibrate`: times every operation at every complexity with default data and the
//! amounts in use, compares it with the documented curve, and suggests amounts that would match
//! it. Like the start-up probe, it reads the clock around the engine; the engine never does.

use std::fmt::Write;
use std::time::Instant;

use crate::engine::{self, Amounts, CancelToken, Complexity, Operation, PRIME_GROWTH_EXPONENT, WorkPayload};

/// The complexities the calibration promises to put within `TOLERANCE` of the curve.
pub const CHECKED_LEVELS: [u8; 3] = [1, 4, 7];
/// The promise at `CHECKED_LEVELS` on an idle machine: within 15% of the documented time.
pub const TOLERANCE: f64 = 0.15;

/// One measured cell of the table.
#[derive(Debug, Clone, Copy)]
pub struct Measurement {
    pub operation: Operation,
    pub complexity: Complexity,
    /// The fastest of the repeats, in milliseconds: the least disturbed by other load.
    pub best_ms: f64,
}

/// Runs each operation at each of `levels` `repeats` times with `amounts` and keeps the fastest
/// run. Like the server's engine, it runs off the main thread.
pub fn measure(
    operations: &[Operation],
    levels: &[Complexity],
    repeats: u32,
    amounts: &Amounts,
    progress: impl FnMut(&Measurement) + Send,
) -> Vec<Measurement> {
    super::off_the_main_thread(|| measure_here(operations, levels, repeats, amounts, progress))
}

fn measure_here(
    operations: &[Operation],
    levels: &[Complexity],
    repeats: u32,
    amounts: &Amounts,
    mut progress: impl FnMut(&Measurement),
) -> Vec<Measurement> {
    let mut out = Vec::new();
    for &operation in operations {
        for &complexity in levels {
            let payload = WorkPayload {
                operation,
                complexity: complexity.get(),
                data: None,
            };
            let Ok(work) = payload.plan(amounts) else { continue };
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

/// A Markdown table: one row per operation, one column per complexity measured, and the worst
/// deviation from the documented curve at the checked levels (1, 4 and 7) among them.
pub fn render_table(measurements: &[Measurement]) -> String {
    let mut levels: Vec<Complexity> = measurements.iter().map(|m| m.complexity).collect();
    levels.sort();
    levels.dedup();
    let mut out = String::from("| operation |");
    for c in &levels {
        let _ = write!(out, " c{} |", c.get());
    }
    out.push_str(" worst deviation at c1, c4, c7 |\n|---|");
    out.push_str(&"---:|".repeat(levels.len() + 1));
    out.push_str("\n| *target* |");
    for &c in &levels {
        let _ = write!(out, " {} |", format_ms(engine::nominal_ms(c)));
    }
    let _ = writeln!(out, " ±{:.0}% allowed |", TOLERANCE * 100.0);
    for op in Operation::ALL {
        let row: Vec<&Measurement> = measurements.iter().filter(|m| m.operation == op).collect();
        if row.is_empty() {
            continue;
        }
        let _ = write!(out, "| {op} |");
        for &c in &levels {
            let cell = row.iter().find(|m| m.complexity == c).map(|m| format_ms(m.best_ms));
            let _ = write!(out, " {} |", cell.unwrap_or_default());
        }
        let worst = row
            .iter()
            .filter(|m| CHECKED_LEVELS.contains(&m.complexity.get()))
            .map(|m| deviation(m))
            .fold(0.0, |a: f64, d| if d.abs() > a.abs() { d } else { a });
        let _ = writeln!(out, " {:+.0}% |", worst * 100.0);
    }
    out
}

/// Amounts that would bring each measured cell onto the curve (from the `amounts` it was measured
/// with), for refitting the engine's reference tables.
pub fn render_suggestions(measurements: &[Measurement], amounts: &Amounts) -> String {
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
                let amount = amounts.amount_for(op, m.complexity) as f64 * ratio.powf(exponent);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(operation: Operation, level: u8, best_ms: f64) -> Measurement {
        Measurement {
            operation,
            complexity: Complexity::new(level).expect("valid level"),
            best_ms,
        }
    }

    #[test]
    fn the_table_judges_only_the_checked_levels() {
        let cells = [
            cell(Operation::Hash, 1, 110.0),
            cell(Operation::Hash, 2, 300.0),
            cell(Operation::Hash, 4, 368.0),
        ];
        let table = render_table(&cells);
        assert!(table.contains("| c1 | c2 | c4 |"), "{table}");
        assert!(table.contains("| hash | 110 ms | 300 ms | 368 ms | +10% |"), "{table}");
    }
}
