//! The figures the live pages show, each bound to a path in the snapshot's JSON: the server
//! renders the first value from that path, and the script updates it from the same path on
//! every event, so the page and its updates cannot disagree on what a tile means.

use serde_json::Value;

/// One figure.
pub(crate) struct Tile {
    pub label: &'static str,
    /// A dotted path into the snapshot, such as `metrics.sync.in_flight`.
    pub field: &'static str,
    pub value: String,
    /// Its stable `data-testid`.
    pub testid: &'static str,
}

/// A figure out of a maximum, drawn as a bar.
pub(crate) struct Meter {
    pub label: &'static str,
    pub field: &'static str,
    pub max_field: &'static str,
    pub value: String,
    pub max: String,
    pub testid: &'static str,
}

/// `(label, field, testid)` triples made into tiles with their current values.
pub(crate) fn tiles(snapshot: &Value, specs: &[(&'static str, &'static str, &'static str)]) -> Vec<Tile> {
    specs
        .iter()
        .map(|&(label, field, testid)| Tile {
            label,
            field,
            value: lookup(snapshot, field),
            testid,
        })
        .collect()
}

/// `(label, field, max_field, testid)` made into meters.
pub(crate) fn meters(
    snapshot: &Value,
    specs: &[(&'static str, &'static str, &'static str, &'static str)],
) -> Vec<Meter> {
    specs
        .iter()
        .map(|&(label, field, max_field, testid)| Meter {
            label,
            field,
            max_field,
            value: lookup(snapshot, field),
            max: lookup(snapshot, max_field),
            testid,
        })
        .collect()
}

/// The value at a dotted path, as the page shows it: numbers with at most one decimal, `–`
/// for null or missing.
pub(crate) fn lookup(snapshot: &Value, path: &str) -> String {
    let found = path.split('.').try_fold(snapshot, |v, key| v.get(key));
    match found {
        Some(Value::Number(n)) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => i.to_string(),
            (None, Some(f)) => format!("{f:.1}"),
            _ => n.to_string(),
        },
        Some(Value::String(s)) => s.clone(),
        Some(Value::Bool(b)) => b.to_string(),
        _ => "–".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_reach_nested_figures_and_missing_ones_show_a_dash() {
        let snapshot = serde_json::json!({"metrics": {"sync": {"in_flight": 3, "p": 1.26}, "none": null}});
        assert_eq!(lookup(&snapshot, "metrics.sync.in_flight"), "3");
        assert_eq!(lookup(&snapshot, "metrics.sync.p"), "1.3");
        assert_eq!(lookup(&snapshot, "metrics.none"), "–");
        assert_eq!(lookup(&snapshot, "metrics.absent.deeper"), "–");
    }
}
