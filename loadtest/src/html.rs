//! The self-contained HTML report: the comparison table, each run's figures, and SVG charts drawn
//! by plotters (no scripts, no CDN, nothing fetched when the file is opened).

use std::fmt::Write;

use plotters::prelude::*;

use super::report::{LoadtestReport, RunReport};
use super::text::{self, ms};

const WIDTH: u32 = 900;
const HEIGHT: u32 = 380;
const SYNC: RGBColor = RGBColor(214, 39, 40);
const ACK: RGBColor = RGBColor(31, 119, 180);
const COMPLETION: RGBColor = RGBColor(44, 160, 44);
const UNCORRECTED: RGBColor = RGBColor(148, 103, 189);

/// One line on a chart.
struct Series {
    name: String,
    color: RGBColor,
    dashed: bool,
    points: Vec<(f64, f64)>,
}

/// How a chart's axes read.
struct Axes {
    title: &'static str,
    x_desc: &'static str,
    y_desc: &'static str,
    /// Plot log10 of y and label ticks in milliseconds.
    log_ms: bool,
    /// Label x ticks as percentiles ("nines" scale).
    nines: bool,
}

/// The whole page.
pub fn render(report: &LoadtestReport) -> String {
    let mut body = String::new();
    let _ = write!(
        body,
        "<h1>sync-async load test</h1><p class=meta>{} · target <code>{}</code>{} · started {}</p>",
        escape(&report.tool),
        escape(&report.target),
        if report.spawned_server {
            " (spawned in-process, temporary database)"
        } else {
            ""
        },
        escape(&report.started_at)
    );
    if let [sync, asynchronous] = report.runs.as_slice()
        && sync.mode == "sync"
        && asynchronous.mode == "async"
    {
        body.push_str("<h2>Sync against async</h2>");
        body.push_str(&markdown_table_to_html(&text::render_comparison(sync, asynchronous)));
    }
    body.push_str("<h2>Latency distribution</h2>");
    body.push_str(&chart(
        &percentile_series(&report.runs),
        &Axes {
            title: "Latency by percentile",
            x_desc: "percentile",
            y_desc: "latency",
            log_ms: true,
            nines: true,
        },
    ));
    body.push_str("<h2>Latency over time</h2>");
    body.push_str(&chart(
        &over_time_series(&report.runs),
        &Axes {
            title: "p50 (dashed) and p99 per second",
            x_desc: "seconds since the run started",
            y_desc: "latency",
            log_ms: true,
            nines: false,
        },
    ));
    body.push_str("<h2>Throughput over time</h2>");
    body.push_str(&chart(
        &throughput_series(&report.runs),
        &Axes {
            title: "Answers and callbacks per second",
            x_desc: "seconds since the run started",
            y_desc: "per second",
            log_ms: false,
            nines: false,
        },
    ));
    for run in &report.runs {
        let series = server_series(run);
        if series.iter().any(|s| !s.points.is_empty()) {
            let _ = write!(body, "<h2>Server during the {} run</h2>", escape(&run.mode));
            body.push_str(&chart(
                &series,
                &Axes {
                    title: "Sampled from GET /metrics every 250 ms",
                    x_desc: "seconds since the run started",
                    y_desc: "count",
                    log_ms: false,
                    nines: false,
                },
            ));
        }
    }
    body.push_str("<h2>Figures</h2>");
    for run in &report.runs {
        let _ = write!(body, "<pre>{}</pre>", escape(&text::render_run(run)));
    }
    format!(
        "<!doctype html><html lang=en><head><meta charset=utf-8><title>sync-async load test</title>\
         <style>{STYLE}</style></head><body>{body}</body></html>\n"
    )
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:960px;margin:2em auto;padding:0 1em;color:#222}\
    h1{margin-bottom:.2em}.meta{color:#666}table{border-collapse:collapse;margin:1em 0}\
    td,th{border:1px solid #ccc;padding:.35em .7em;text-align:left}th{background:#f4f4f4}\
    pre{background:#f8f8f8;padding:1em;overflow-x:auto;font-size:12px}svg{max-width:100%;height:auto}";

fn percentile_series(runs: &[RunReport]) -> Vec<Series> {
    let mut series = Vec::new();
    for run in runs {
        let (name, color) = primary(run);
        series.push(Series {
            name: name.to_owned(),
            color,
            dashed: false,
            points: to_nines(&run.latency_curve),
        });
        if !run.uncorrected_curve.is_empty() {
            let name = format!("{name}, uncorrected");
            series.push(Series {
                name,
                color: UNCORRECTED,
                dashed: true,
                points: to_nines(&run.uncorrected_curve),
            });
        }
        if !run.completion_curve.is_empty() {
            let points = to_nines(&run.completion_curve);
            series.push(Series {
                name: "async completion".into(),
                color: COMPLETION,
                dashed: false,
                points,
            });
        }
    }
    series
}

fn over_time_series(runs: &[RunReport]) -> Vec<Series> {
    let mut series = Vec::new();
    for run in runs {
        let (name, color) = primary(run);
        push_percentiles(&mut series, name, color, &run.timeline);
        push_percentiles(&mut series, "async completion", COMPLETION, &run.completion_timeline);
    }
    series
}

fn push_percentiles(series: &mut Vec<Series>, name: &str, color: RGBColor, timeline: &[super::stats::TimelinePoint]) {
    let busy: Vec<_> = timeline.iter().filter(|p| p.count > 0).collect();
    if busy.is_empty() {
        return;
    }
    let at = |p: &super::stats::TimelinePoint| p.second as f64 + 0.5;
    series.push(Series {
        name: format!("{name} p99"),
        color,
        dashed: false,
        points: busy.iter().map(|p| (at(p), p.p99_ms.max(0.001).log10())).collect(),
    });
    series.push(Series {
        name: format!("{name} p50"),
        color,
        dashed: true,
        points: busy.iter().map(|p| (at(p), p.p50_ms.max(0.001).log10())).collect(),
    });
}

fn throughput_series(runs: &[RunReport]) -> Vec<Series> {
    let mut series = Vec::new();
    for run in runs {
        let (name, color) = primary(run);
        let per_second =
            |t: &[super::stats::TimelinePoint]| t.iter().map(|p| (p.second as f64 + 0.5, p.count as f64)).collect();
        series.push(Series {
            name: format!("{name}s"),
            color,
            dashed: false,
            points: per_second(&run.timeline),
        });
        if !run.completion_timeline.is_empty() {
            let points = per_second(&run.completion_timeline);
            series.push(Series {
                name: "callbacks".into(),
                color: COMPLETION,
                dashed: false,
                points,
            });
        }
    }
    series
}

fn server_series(run: &RunReport) -> Vec<Series> {
    let pick =
        |f: fn(&super::sampler::ServerSample) -> u64| run.server_samples.iter().map(|s| (s.t_s, f(s) as f64)).collect();
    vec![
        Series {
            name: "queue size".into(),
            color: ACK,
            dashed: false,
            points: pick(|s| s.queue_size),
        },
        Series {
            name: "workers busy".into(),
            color: COMPLETION,
            dashed: false,
            points: pick(|s| s.workers_busy),
        },
        Series {
            name: "sync in flight".into(),
            color: SYNC,
            dashed: false,
            points: pick(|s| s.sync_in_flight),
        },
    ]
}

fn primary(run: &RunReport) -> (&'static str, RGBColor) {
    if run.mode == "sync" {
        ("sync response", SYNC)
    } else {
        ("async ack", ACK)
    }
}

/// Percentiles on a "nines" axis (90 -> 1, 99 -> 2, 99.9 -> 3), latency as log10(ms).
fn to_nines(curve: &[(f64, f64)]) -> Vec<(f64, f64)> {
    curve
        .iter()
        .map(|&(p, latency)| (nines(p), latency.max(0.001).log10()))
        .collect()
}

fn nines(percentile: f64) -> f64 {
    -(1.0 - (percentile / 100.0).min(0.99999)).log10()
}

/// Draws one chart as an inline SVG; a chart that cannot be drawn becomes a short note.
fn chart(series: &[Series], axes: &Axes) -> String {
    match draw(series, axes) {
        Ok(svg) => svg,
        Err(e) => format!("<p>(chart not drawn: {})</p>", escape(&e)),
    }
}

fn draw(series: &[Series], axes: &Axes) -> Result<String, String> {
    let all: Vec<(f64, f64)> = series.iter().flat_map(|s| s.points.iter().copied()).collect();
    if all.is_empty() {
        return Ok("<p>(no data)</p>".to_owned());
    }
    let x_max = all.iter().map(|p| p.0).fold(0.0, f64::max);
    let x_max = if axes.nines {
        x_max.max(3.0).ceil()
    } else {
        x_max.max(1.0)
    };
    let (y_lo, y_hi) = all.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| {
        (lo.min(p.1), hi.max(p.1))
    });
    // Headroom above the data keeps the legend (top left) clear of the lines.
    let (y_min, y_max) = if axes.log_ms {
        (y_lo.floor(), y_hi.ceil().max(y_lo.floor() + 1.0) + 2.0)
    } else {
        (0.0, (y_hi * 1.5).max(1.0))
    };
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let mut chart = ChartBuilder::on(&root)
            .caption(axes.title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(0.0..x_max, y_min..y_max)
            .map_err(|e| e.to_string())?;
        let x_label = |x: &f64| match (axes.nines, x_max < 10.0) {
            (true, _) => nines_label(*x),
            (false, true) => format!("{x:.1}"),
            (false, false) => format!("{x:.0}"),
        };
        let y_label = |y: &f64| {
            if axes.log_ms {
                ms(10f64.powf(*y))
            } else {
                format!("{y:.0}")
            }
        };
        chart
            .configure_mesh()
            .x_desc(axes.x_desc)
            .y_desc(axes.y_desc)
            .x_labels(if axes.nines { 6 } else { 10 })
            .x_label_formatter(&x_label)
            .y_label_formatter(&y_label)
            .draw()
            .map_err(|e| e.to_string())?;
        for s in series.iter().filter(|s| !s.points.is_empty()) {
            let style = s.color.stroke_width(2);
            let color = s.color;
            let drawn = if s.dashed {
                chart.draw_series(DashedLineSeries::new(s.points.clone(), 6, 4, style))
            } else {
                chart.draw_series(LineSeries::new(s.points.clone(), style))
            };
            drawn
                .map_err(|e| e.to_string())?
                .label(s.name.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
            // Short series get markers too: a single point draws no line.
            if s.points.len() < 40 && !s.dashed {
                chart
                    .draw_series(s.points.iter().map(|&p| Circle::new(p, 3, color.filled())))
                    .map_err(|e| e.to_string())?;
            }
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.3))
            .draw()
            .map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

fn nines_label(x: f64) -> String {
    let percentile = 100.0 * (1.0 - 10f64.powf(-x));
    let text = format!("{percentile:.3}");
    format!("{}%", text.trim_end_matches('0').trim_end_matches('.'))
}

/// The comparison table, from the Markdown the terminal prints, as HTML.
fn markdown_table_to_html(markdown: &str) -> String {
    let mut html = String::from("<table>");
    for (i, line) in markdown
        .lines()
        .filter(|l| l.starts_with('|') && !l.starts_with("|---"))
        .enumerate()
    {
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        let tag = if i == 0 { "th" } else { "td" };
        html.push_str("<tr>");
        for cell in cells {
            let _ = write!(html, "<{tag}>{}</{tag}>", escape(cell));
        }
        html.push_str("</tr>");
    }
    html.push_str("</table>");
    html
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nines_axis_labels_percentiles() {
        assert_eq!(nines_label(0.0), "0%");
        assert_eq!(nines_label(1.0), "90%");
        assert_eq!(nines_label(2.0), "99%");
        assert_eq!(nines_label(3.0), "99.9%");
        assert!((nines(99.0) - 2.0).abs() < 1e-9);
    }

    #[test]
    fn the_comparison_table_becomes_an_html_table_with_escaped_cells() {
        let html = markdown_table_to_html("| A | B |\n|---|---|\n| x<y | 1 |\n");
        assert_eq!(
            html,
            "<table><tr><th>A</th><th>B</th></tr><tr><td>x&lt;y</td><td>1</td></tr></table>"
        );
    }
}
