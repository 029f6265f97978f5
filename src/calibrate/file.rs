//! The calibration file: this machine's factors, when they were measured, on what CPU and against
//! which reference tables, as JSON. Written whole and renamed into place, so a reader never sees
//! half a file; a file that cannot be used is measured anew, never trusted.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::engine::{self, Amounts, FactorOutOfBounds, Factors};

/// The layout of the file, and what its factors were measured under; a file of another version
/// is measured anew. 2: the server allocates with mimalloc, which changes the speed of the
/// operations that allocate as they go (transform), so factors measured under glibc's malloc
/// no longer hold.
const FORMAT: u32 = 2;

/// What identifies the machine a calibration holds for. Another CPU model or core count (a VM
/// moved or resized) means other speeds, so the factors are measured again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Machine {
    /// `model name` from /proc/cpuinfo; `unknown` where it cannot be read.
    pub cpu_model: String,
    /// The CPUs this process may use.
    pub cores: usize,
}

#[cfg(test)]
impl Machine {
    /// The machine the calibration tests pretend to run on.
    pub(super) fn for_tests() -> Self {
        Self {
            cpu_model: "AMD EPYC 7B13".to_owned(),
            cores: 2,
        }
    }
}

impl Machine {
    /// The machine this process runs on.
    pub fn this_one() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        Self::from_cpuinfo(&cpuinfo, cores)
    }

    /// The first `model name` of a /proc/cpuinfo text (ARM kernels may print none).
    fn from_cpuinfo(cpuinfo: &str, cores: usize) -> Self {
        let cpu_model = cpuinfo
            .lines()
            .filter_map(|line| line.split_once(':'))
            .find(|(key, _)| key.trim() == "model name")
            .map(|(_, value)| value.trim().to_owned())
            .filter(|model| !model.is_empty())
            .unwrap_or_else(|| "unknown".to_owned());
        Self { cpu_model, cores }
    }
}

/// The file's content.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredCalibration {
    /// `FORMAT` when written.
    pub format: u32,
    /// RFC 3339 UTC.
    pub measured_at: String,
    pub machine: Machine,
    /// `engine::reference_fingerprint()` of the tables the factors scale.
    pub reference: String,
    pub factors: Factors,
}

impl StoredCalibration {
    /// A calibration measured now on `machine`, against this build's reference tables.
    pub fn new(machine: Machine, factors: Factors, measured_at: String) -> Self {
        Self {
            format: FORMAT,
            measured_at,
            machine,
            reference: engine::reference_fingerprint(),
            factors,
        }
    }

    /// The amounts these factors give on `here`, or why they do not hold for it.
    pub fn amounts_on(&self, here: &Machine) -> Result<Amounts, Unusable> {
        if self.format != FORMAT {
            return Err(Unusable::Format(self.format));
        }
        if &self.machine != here {
            return Err(Unusable::OtherMachine(self.machine.clone()));
        }
        if self.reference != engine::reference_fingerprint() {
            return Err(Unusable::OtherTables);
        }
        Amounts::scaled(self.factors).map_err(Unusable::OutOfBounds)
    }
}

/// Why a calibration file is not used: each is a reason to measure anew.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Unusable {
    #[error("there is no calibration file yet")]
    Missing,
    #[error("the calibration file cannot be read: {0}")]
    Unreadable(String),
    #[error("the calibration file has format {0}, not {FORMAT}")]
    Format(u32),
    #[error("the calibration file was measured on another machine ({} with {} cores)", .0.cpu_model, .0.cores)]
    OtherMachine(Machine),
    #[error("the calibration file scales other reference amounts (an earlier build)")]
    OtherTables,
    #[error("the calibration file holds a factor out of bounds: {0}")]
    OutOfBounds(FactorOutOfBounds),
}

/// Reads the file at `path`.
pub(super) fn load(path: &Path) -> Result<StoredCalibration, Unusable> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == ErrorKind::NotFound => return Err(Unusable::Missing),
        Err(e) => return Err(Unusable::Unreadable(e.to_string())),
    };
    serde_json::from_str(&text).map_err(|e| Unusable::Unreadable(e.to_string()))
}

/// Writes `calibration` to `path`: to a temporary file beside it first, then renamed over it, so
/// that a crash or a concurrent start never leaves half a file. Creates the directory.
pub(super) fn save(path: &Path, calibration: &StoredCalibration) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let json = serde_json::to_vec_pretty(calibration).map_err(std::io::Error::other)?;
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(format!(".{}.tmp", std::process::id()));
    let temporary = PathBuf::from(temporary);
    std::fs::write(&temporary, json)?;
    std::fs::rename(&temporary, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&temporary);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine() -> Machine {
        Machine::for_tests()
    }

    fn measured(factors: Factors) -> StoredCalibration {
        StoredCalibration::new(machine(), factors, "2025-01-01T00:00:00.000Z".to_owned())
    }

    #[test]
    fn the_cpu_model_is_the_first_model_name_of_cpuinfo() {
        let cpuinfo = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\n\
                       processor\t: 1\nmodel name\t: AMD EPYC 7B13\n";
        assert_eq!(Machine::from_cpuinfo(cpuinfo, 2), machine());
        assert_eq!(Machine::from_cpuinfo("", 4).cpu_model, "unknown");
    }

    #[test]
    fn a_saved_file_loads_back_the_same() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("nested").join("requests.db.calibration.json");
        let stored = measured(Factors {
            hash: 1.25,
            prime: 0.8,
            matrix: 1.5,
            transform: 1.0,
        });

        save(&path, &stored).expect("saved");

        assert_eq!(load(&path), Ok(stored.clone()));
        let amounts = stored.amounts_on(&machine()).expect("usable here");
        assert_eq!(amounts.factors(), stored.factors);
        let leftovers = std::fs::read_dir(path.parent().expect("dir")).expect("listed").count();
        assert_eq!(leftovers, 1, "no temporary file is left behind");
    }

    #[test]
    fn a_file_from_another_cpu_is_not_used() {
        let stored = measured(Factors::uniform(1.5));
        let other = Machine {
            cpu_model: "Intel(R) Xeon(R) CPU E5-2680 v4".to_owned(),
            ..machine()
        };
        assert_eq!(stored.amounts_on(&other), Err(Unusable::OtherMachine(machine())));
        let resized = Machine { cores: 8, ..machine() };
        assert!(matches!(stored.amounts_on(&resized), Err(Unusable::OtherMachine(_))));
    }

    #[test]
    fn a_file_for_other_tables_or_with_wild_factors_is_not_used() {
        let mut stale = measured(Factors::uniform(1.5));
        stale.reference = "0000000000000000".to_owned();
        assert_eq!(stale.amounts_on(&machine()), Err(Unusable::OtherTables));
        let wild = measured(Factors::uniform(100.0));
        assert!(matches!(wild.amounts_on(&machine()), Err(Unusable::OutOfBounds(_))));
    }

    #[test]
    fn a_missing_or_garbled_file_says_so() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("calibration.json");
        assert_eq!(load(&path), Err(Unusable::Missing));
        std::fs::write(&path, "{\"format\": 1, \"factors\": ").expect("written");
        assert!(matches!(load(&path), Err(Unusable::Unreadable(_))));
    }
}
