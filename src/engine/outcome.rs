//! What the driver takes and returns: the projects and options of a build, its progress
//! events, and the [`BuildReport`] the CLI renders. Plain values, no logic.

use std::path::PathBuf;
use std::sync::Arc;

use super::encode::UnitEncodings;
use super::error::BuildError;
use super::evaluate::UnitEvaluation;
use super::explain::Explanation;
use super::keys::BuildContext;
use crate::store::Corruption;

/// One manifest to build.
#[derive(Debug, Clone)]
pub struct ProjectSpec {
    /// The `quant.toml` file.
    pub manifest: PathBuf,
    /// How diagnostics name it (as the user typed it, or relative to the working directory).
    pub shown_as: String,
    /// Its store and work log (see [`BuildContext`]).
    pub context: BuildContext,
}

/// What to build.
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// Only these targets (all when empty).
    pub targets: Vec<String>,
    /// Only these models (all when empty).
    pub models: Vec<String>,
    /// Threads for calibration samples (`None`: all cores).
    pub jobs: Option<usize>,
    /// Compute only this shard's calibration samples and write no outputs (`--shard K/N`).
    pub shard: Option<Shard>,
}

/// One of `count` parts of every calibration's samples: sample `s` belongs to shard
/// `u64(first 8 bytes of s's content digest) mod count`, so a sample keeps its shard when
/// others are added or removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// This shard, `0..count`.
    pub index: u32,
    /// How many shards there are (at least 1).
    pub count: u32,
}

impl std::str::FromStr for Shard {
    type Err = String;

    /// Parses `K/N` with `0 <= K < N`.
    fn from_str(text: &str) -> Result<Shard, String> {
        let usage = || format!("`{text}` is not a shard: write K/N with 0 <= K < N, e.g. 0/4");
        let (k, n) = text.split_once('/').ok_or_else(usage)?;
        let index: u32 = k.trim().parse().map_err(|_| usage())?;
        let count: u32 = n.trim().parse().map_err(|_| usage())?;
        if count == 0 || index >= count {
            return Err(usage());
        }
        Ok(Shard { index, count })
    }
}

/// What the driver is doing, for progress display.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// A calibration starts: `samples` samples of `model`, shared by `targets`.
    Calibrating {
        /// `[pipeline] name`.
        pipeline: String,
        /// The model.
        model: String,
        /// The targets that use these statistics.
        targets: Vec<String>,
        /// How many samples (run or read back from the store).
        samples: usize,
    },
    /// One more sample of the current calibration is done.
    SampleDone,
    /// A unit's AdaRound starts: `layers` layers, optimized or read back from the store.
    Adarounding {
        /// `[pipeline] name`.
        pipeline: String,
        /// The target.
        target: String,
        /// The model.
        model: String,
        /// How many layers.
        layers: usize,
    },
    /// One more layer of the current AdaRound is done.
    LayerDone {
        /// The layer's output tensor.
        layer: String,
    },
    /// A unit's encodings are being collected.
    Encoding {
        /// `[pipeline] name`.
        pipeline: String,
        /// The target.
        target: String,
        /// The model.
        model: String,
    },
    /// An output file was written (its bytes changed).
    Wrote {
        /// The file.
        path: PathBuf,
    },
}

/// Work done versus reused in one build: the `--json` counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct BuildCounts {
    /// Samples run through the float model.
    pub samples_run: usize,
    /// Samples whose statistics were reused (memoized or from the store).
    pub samples_reused: usize,
    /// Tensors whose encoding was computed.
    pub tensors_encoded: usize,
    /// Tensors whose encoding was reused.
    pub tensors_reused: usize,
    /// Output files written because their bytes changed.
    pub artifacts_written: usize,
    /// Output files left alone because they already held the right bytes.
    pub artifacts_unchanged: usize,
    /// Evaluations run (the others were reused from the store or the database).
    pub evaluations_run: usize,
    /// Eval samples those evaluations ran (float model and simulation).
    pub eval_samples_run: usize,
    /// Eval samples those evaluations served from stored traces without running.
    pub eval_samples_reused: usize,
    /// Model transforms computed (CLE, bias correction), each once however many targets use
    /// the transformed model; the others were read from the store.
    pub transforms_run: usize,
    /// Layers AdaRound optimized.
    pub layers_optimized: usize,
    /// Layers whose AdaRound result was reused (memoized or from the store).
    pub layers_reused: usize,
}

/// A unit built successfully.
#[derive(Debug, Clone)]
pub struct UnitDone {
    /// Its encodings (for reporting what changed between builds).
    pub encodings: Arc<UnitEncodings>,
    /// `encodings.json`.
    pub encodings_path: PathBuf,
    /// Files written.
    pub written: Vec<PathBuf>,
    /// Files already up to date.
    pub unchanged: Vec<PathBuf>,
    /// Why it rebuilt, compared with the last build's record.
    pub explanation: Explanation,
    /// Its evaluation, when the target has `evaluate`.
    pub evaluation: Option<Arc<UnitEvaluation>>,
    /// Whether this build computed the evaluation (rather than reusing a stored or memoized one).
    pub evaluated: bool,
}

impl UnitDone {
    /// Whether the build did nothing for this unit: no sample run, no tensor encoded, no
    /// evaluation run and no file written (cargo's "Fresh").
    pub fn is_fresh(&self) -> bool {
        self.written.is_empty()
            && !self.evaluated
            && self.explanation.samples_run.is_empty()
            && self.explanation.tensors_encoded.is_empty()
            && self.explanation.layers_optimized.is_empty()
    }
}

/// One unit's outcome.
#[derive(Debug, Clone)]
pub struct UnitOutcome {
    /// `[pipeline] name`.
    pub pipeline: String,
    /// The target.
    pub target: String,
    /// The model.
    pub model: String,
    /// Its output folder.
    pub out_dir: PathBuf,
    /// The result.
    pub result: Result<UnitDone, BuildError>,
}

/// The result of a build.
#[derive(Debug, Clone, Default)]
pub struct BuildReport {
    /// Every unit built (or attempted), in manifest, target, model order.
    pub units: Vec<UnitOutcome>,
    /// Manifests that could not be resolved.
    pub manifest_errors: Vec<BuildError>,
    /// Requested target or model names no manifest declares (bad usage; nothing was built).
    pub unknown: Vec<String>,
    /// Work counts.
    pub counts: BuildCounts,
    /// Store entries that failed verification and were recomputed.
    pub corruptions: Vec<Corruption>,
    /// Other store failures (the build went on without the store for those entries).
    pub store_errors: Vec<String>,
    /// Wall time of the build, in milliseconds.
    pub wall_ms: u128,
}

impl BuildReport {
    /// Whether every manifest resolved and every unit built.
    pub fn succeeded(&self) -> bool {
        self.unknown.is_empty()
            && self.manifest_errors.is_empty()
            && self.units.iter().all(|u| u.result.is_ok())
    }

    /// Every error, manifests first.
    pub fn errors(&self) -> impl Iterator<Item = &BuildError> {
        self.manifest_errors
            .iter()
            .chain(self.units.iter().filter_map(|u| u.result.as_ref().err()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_parse_as_k_of_n() {
        assert_eq!("0/4".parse(), Ok(Shard { index: 0, count: 4 }));
        assert_eq!("3/4".parse(), Ok(Shard { index: 3, count: 4 }));
        for bad in ["4/4", "0/0", "1", "a/2", "-1/2", "1/2/3"] {
            let err = bad.parse::<Shard>().unwrap_err();
            assert!(err.contains("not a shard"), "{bad}: {err}");
        }
    }
}
