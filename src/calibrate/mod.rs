//! Engine calibration: which work amounts the server plans with (ENGINE_CALIBRATION), decided
//! once at start: the reference amounts (`fixed`), the factors stored for this machine, or a new
//! measurement of at most 2 s (`probe`), stored for the next start (`file`). `table` is the
//! `sync-async calibrate` report that checks the result against the documented curve.

mod file;
mod probe;
mod table;

pub use file::{Machine, StoredCalibration, Unusable};
pub use probe::{BUDGET as PROBE_BUDGET, Probe, TooSlow};
pub use table::{CHECKED_LEVELS, Measurement, TOLERANCE, deviation, measure, render_suggestions, render_table};

use std::path::{Path, PathBuf};

use chrono::{SecondsFormat, Utc};

use crate::config::{Config, EngineCalibration};
use crate::engine::{Amounts, Factors, Operation};

/// Where the amounts in use came from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// ENGINE_CALIBRATION=fixed: the reference amounts.
    Fixed,
    /// The calibration file, measured at an earlier start on this machine.
    File { measured_at: String },
    /// Measured at this start (and stored, if the file could be written).
    Measured { measured_at: String },
    /// A measurement out of bounds (or one that did not fit its budget): the reference amounts,
    /// and the next start measures again.
    Refused { reason: String },
}

impl Source {
    /// The name `/metrics` shows.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Fixed => "fixed",
            Self::File { .. } => "file",
            Self::Measured { .. } => "measured",
            Self::Refused { .. } => "refused",
        }
    }

    /// When the factors in use were measured (RFC 3339 UTC); `None` for the reference amounts.
    pub fn measured_at(&self) -> Option<&str> {
        match self {
            Self::File { measured_at } | Self::Measured { measured_at } => Some(measured_at),
            Self::Fixed | Self::Refused { .. } => None,
        }
    }
}

/// The calibration a server runs with.
#[derive(Debug, Clone, PartialEq)]
pub struct Calibration {
    pub mode: EngineCalibration,
    pub source: Source,
    /// What every plan uses.
    pub amounts: Amounts,
    /// The calibration file read or written; `None` with `fixed`, which touches none.
    pub file: Option<PathBuf>,
}

impl Calibration {
    /// The reference amounts, as ENGINE_CALIBRATION=fixed gives them.
    pub fn fixed() -> Self {
        Self {
            mode: EngineCalibration::Fixed,
            source: Source::Fixed,
            amounts: Amounts::reference(),
            file: None,
        }
    }

    /// One line for people: the mode, the source and the factors.
    pub fn describe(&self) -> String {
        let factors = self.amounts.factors();
        let factors: Vec<String> = Operation::ALL
            .iter()
            .map(|&op| format!("{op} {:.3}", factors.get(op)))
            .collect();
        let source = match &self.source {
            Source::Refused { reason } => format!("refused ({reason}); the reference amounts"),
            other => match other.measured_at() {
                Some(at) => format!("{} (measured {at})", other.as_str()),
                None => other.as_str().to_owned(),
            },
        };
        format!(
            "ENGINE_CALIBRATION={}, {source}; factors: {}",
            self.mode.as_str(),
            factors.join(", ")
        )
    }

    /// The start-up log line.
    pub fn log(&self) {
        let factors = self.amounts.factors();
        tracing::info!(
            mode = self.mode.as_str(),
            source = self.source.as_str(),
            measured_at = self.source.measured_at(),
            hash = factors.hash,
            prime = factors.prime,
            matrix = factors.matrix,
            transform = factors.transform,
            file = %self.file.as_deref().map_or_else(String::new, |f| f.display().to_string()),
            "engine calibration in use: {}",
            self.describe()
        );
    }
}

/// The calibration to run with, as a start decides it from `config`. Blocking: it reads (and may
/// write) the calibration file, and may measure this machine for up to `PROBE_BUDGET`, so the
/// caller runs it on a blocking thread.
pub fn resolve(config: &Config) -> Calibration {
    resolve_with(
        config.engine_calibration,
        &config.calibration_file(),
        &Machine::this_one(),
        || probe::measure(PROBE_BUDGET),
    )
}

/// Measures this machine now, whatever ENGINE_CALIBRATION says, and rewrites the calibration
/// file: `sync-async calibrate --save`. Blocking, like `resolve`.
pub fn remeasure(config: &Config) -> Calibration {
    resolve_with(
        EngineCalibration::Remeasure,
        &config.calibration_file(),
        &Machine::this_one(),
        || probe::measure(PROBE_BUDGET),
    )
}

/// Runs `measure` on a thread of its own and waits for it. The engine runs on pool threads, never
/// on a process's main thread, and the allocator treats the two differently: glibc's main thread
/// allocates from the heap's own arena, the others from arenas of their own. `transform`, which
/// allocates as it goes, ran 27% faster on the main thread than on the server's engine threads,
/// so a measurement taken there would plan too much work. Every timing runs here instead.
fn off_the_main_thread<T: Send>(measure: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| match scope.spawn(measure).join() {
        Ok(measured) => measured,
        // The engine does not panic on default data; if it ever does, the panic goes on here.
        Err(panic) => std::panic::resume_unwind(panic),
    })
}

/// `resolve` with the machine and the measurement given, so that tests can feed it a fake one.
pub fn resolve_with(
    mode: EngineCalibration,
    path: &Path,
    here: &Machine,
    measure: impl FnOnce() -> Result<Probe, TooSlow>,
) -> Calibration {
    let in_use = |source, amounts| Calibration {
        mode,
        source,
        amounts,
        file: Some(path.to_owned()),
    };
    match mode {
        EngineCalibration::Fixed => return Calibration::fixed(),
        EngineCalibration::Remeasure => {
            tracing::info!("ENGINE_CALIBRATION=remeasure: measuring this machine (at most 2 s)");
        }
        EngineCalibration::Auto => match file::load(path).and_then(|stored| {
            let amounts = stored.amounts_on(here)?;
            Ok((stored, amounts))
        }) {
            Ok((stored, amounts)) => {
                let measured_at = stored.measured_at;
                return in_use(Source::File { measured_at }, amounts);
            }
            Err(why) => tracing::info!(
                file = %path.display(),
                "{why}: measuring this machine (at most 2 s)"
            ),
        },
    }
    let probe = match measure() {
        Ok(probe) => probe,
        Err(e) => return refused(in_use, e.to_string()),
    };
    let amounts = match Amounts::scaled(probe.factors) {
        Ok(amounts) => amounts,
        Err(e) => return refused(in_use, e.to_string()),
    };
    let measured_at = Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true);
    let stored = StoredCalibration::new(here.clone(), probe.factors, measured_at.clone());
    match file::save(path, &stored) {
        Ok(()) => tracing::debug!(file = %path.display(), took_ms = probe.took.as_millis(), "calibration stored"),
        // The factors still hold for this run; the next start measures again.
        Err(e) => tracing::warn!(
            file = %path.display(),
            error = %e,
            "the engine calibration cannot be stored; the next start measures again"
        ),
    }
    in_use(Source::Measured { measured_at }, amounts)
}

/// The reference amounts after a measurement that cannot be trusted; nothing is stored, so the
/// next start measures again.
fn refused(in_use: impl Fn(Source, Amounts) -> Calibration, reason: String) -> Calibration {
    tracing::warn!(
        reason = %reason,
        "the engine calibration measurement was refused; using the reference amounts"
    );
    in_use(Source::Refused { reason }, Amounts::reference())
}

/// The factors of a calibration, by operation name, as `/metrics` shows them.
pub fn factors_by_name(factors: &Factors) -> Vec<(&'static str, f64)> {
    Operation::ALL
        .iter()
        .map(|&op| (op.as_str(), factors.get(op)))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::engine::MAX_FACTOR;

    fn machine() -> Machine {
        Machine::for_tests()
    }

    fn fake(factors: Factors) -> impl FnOnce() -> Result<Probe, TooSlow> {
        move || {
            Ok(Probe {
                factors,
                took: Duration::from_millis(1),
            })
        }
    }

    fn never() -> Result<Probe, TooSlow> {
        panic!("nothing should be measured")
    }

    const MEASURED: Factors = Factors {
        hash: 1.25,
        prime: 0.8,
        matrix: 1.5,
        transform: 1.1,
    };

    #[test]
    fn measurements_run_on_a_thread_of_their_own() {
        let caller = std::thread::current().id();
        let measured_on = off_the_main_thread(|| std::thread::current().id());
        assert_ne!(measured_on, caller);
    }

    #[test]
    fn a_first_start_measures_uses_and_stores_the_factors() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("requests.db.calibration.json");

        let calibration = resolve_with(EngineCalibration::Auto, &path, &machine(), fake(MEASURED));

        assert_eq!(calibration.source.as_str(), "measured");
        assert_eq!(calibration.amounts, Amounts::scaled(MEASURED).expect("in bounds"));
        let stored = file::load(&path).expect("stored");
        assert_eq!((stored.factors, stored.machine), (MEASURED, machine()));
        assert_eq!(Some(stored.measured_at.as_str()), calibration.source.measured_at());
    }

    #[test]
    fn the_next_start_uses_the_stored_factors_without_measuring() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("calibration.json");
        resolve_with(EngineCalibration::Auto, &path, &machine(), fake(MEASURED));

        let calibration = resolve_with(EngineCalibration::Auto, &path, &machine(), never);

        assert_eq!(calibration.source.as_str(), "file");
        assert_eq!(calibration.amounts.factors(), MEASURED);
        assert_eq!(calibration.file.as_deref(), Some(path.as_path()));
    }

    #[test]
    fn a_file_from_another_cpu_is_measured_anew_and_rewritten() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("calibration.json");
        let elsewhere = Machine {
            cpu_model: "Intel(R) Xeon(R) CPU E5-2680 v4".to_owned(),
            cores: 2,
        };
        resolve_with(EngineCalibration::Auto, &path, &elsewhere, fake(Factors::uniform(0.5)));

        let calibration = resolve_with(EngineCalibration::Auto, &path, &machine(), fake(MEASURED));

        assert_eq!(calibration.source.as_str(), "measured");
        assert_eq!(calibration.amounts.factors(), MEASURED);
        assert_eq!(file::load(&path).expect("rewritten").machine, machine());
    }

    #[test]
    fn remeasure_measures_even_with_a_usable_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("calibration.json");
        resolve_with(EngineCalibration::Auto, &path, &machine(), fake(Factors::uniform(0.5)));

        let calibration = resolve_with(EngineCalibration::Remeasure, &path, &machine(), fake(MEASURED));

        assert_eq!(calibration.source.as_str(), "measured");
        assert_eq!(file::load(&path).expect("rewritten").factors, MEASURED);
    }

    #[test]
    fn fixed_uses_the_reference_amounts_and_touches_no_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("calibration.json");

        let calibration = resolve_with(EngineCalibration::Fixed, &path, &machine(), never);

        assert_eq!(calibration, Calibration::fixed());
        assert!(!path.exists());
    }

    #[test]
    fn a_measurement_out_of_bounds_is_refused_and_not_stored() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("calibration.json");
        let wild = Factors {
            matrix: MAX_FACTOR * 3.0,
            ..MEASURED
        };

        let calibration = resolve_with(EngineCalibration::Auto, &path, &machine(), fake(wild));

        assert_eq!(calibration.source.as_str(), "refused");
        assert_eq!(calibration.amounts, Amounts::reference());
        assert!(
            calibration.describe().contains("matrix factor 60"),
            "{}",
            calibration.describe()
        );
        assert!(!path.exists(), "a refused measurement is not stored");
        let too_slow = resolve_with(EngineCalibration::Auto, &path, &machine(), || {
            Err(TooSlow(Operation::Prime))
        });
        assert_eq!(too_slow.source.as_str(), "refused");
        assert_eq!(too_slow.amounts, Amounts::reference());
    }

    #[test]
    fn a_file_that_cannot_be_written_still_leaves_the_measured_factors_in_use() {
        let dir = tempfile::tempdir().expect("temp dir");
        // A directory where the file should be: the write fails.
        let path = dir.path().join("calibration.json");
        std::fs::create_dir(&path).expect("created");

        let calibration = resolve_with(EngineCalibration::Auto, &path, &machine(), fake(MEASURED));

        assert_eq!(calibration.source.as_str(), "measured");
        assert_eq!(calibration.amounts.factors(), MEASURED);
    }
}
