//! The salsa ids of a build, at the bottom of the engine: the build's context (store and work
//! log), the manifest being built ([`Project`]), one model of one target ([`Unit`]), a model
//! with its input dims ([`ModelKey`]), a calibration ([`CalibrationKey`]) and its samples
//! ([`SampleKey`]), and one tensor of a unit ([`TensorKey`]). Every query is keyed by one of
//! these. It holds no logic.

use super::log::WorkLog;
use super::source::SourceFile;
use crate::store::Store;

pub use ids::{BuildContext, CalibrationKey, ModelKey, Project, SampleKey, TensorKey, Unit};

// Salsa generates constructors and getters without docs; the fields are documented.
#[allow(missing_docs)]
mod ids {
    use super::{SourceFile, Store, WorkLog};

    /// What every query of one build can reach besides the files: the persistent store (none
    /// in tests that want every query to compute) and the log of work actually done.
    #[salsa::input(debug)]
    pub struct BuildContext {
        /// The store consulted before computing statistics and encodings.
        #[returns(ref)]
        pub store: Option<Store>,
        /// Where computations report themselves (shared by clones; drained by the driver).
        #[returns(ref)]
        pub log: WorkLog,
    }

    /// One manifest being built.
    #[salsa::interned(debug)]
    pub struct Project<'db> {
        /// The manifest file.
        #[returns(copy)]
        pub manifest: SourceFile,
        /// The manifest's path as diagnostics show it.
        #[returns(ref)]
        pub shown_as: String,
        /// The store and work log of this build.
        #[returns(copy)]
        pub context: BuildContext,
    }

    /// One model of one target of a manifest: the unit that gets an output folder.
    #[salsa::interned(debug)]
    pub struct Unit<'db> {
        /// The manifest.
        #[returns(copy)]
        pub project: Project<'db>,
        /// The target's name.
        #[returns(ref)]
        pub target: String,
        /// The model's name.
        #[returns(ref)]
        pub model: String,
    }

    /// A model file with its input dims fixed, and the transforms applied to it.
    #[salsa::interned(debug)]
    pub struct ModelKey<'db> {
        /// The ONNX file.
        #[returns(copy)]
        pub file: SourceFile,
        /// `input_dims`, sorted by input name.
        #[returns(ref)]
        pub input_dims: Vec<(String, Vec<u64>)>,
        /// Whether cross-layer equalization runs (it reads only the model, so every target
        /// asking for it shares the result).
        #[returns(copy)]
        pub cle: bool,
        /// The unit whose weight encodings and calibration data bias correction measures, when
        /// the model is bias-corrected (then the model is that target's own).
        #[returns(copy)]
        pub corrected_for: Option<super::Unit<'db>>,
        /// The unit whose AdaRound settings, weight encodings and calibration data round the
        /// weights, when the model is AdaRounded (last, after the other transforms).
        #[returns(copy)]
        pub adaround_for: Option<super::Unit<'db>>,
        /// The store transformed models are looked up in (and the log they report to).
        #[returns(copy)]
        pub context: BuildContext,
    }

    /// Everything calibration statistics depend on: shared by every target that needs the same
    /// statistics (e.g. `htp` and `htp-a16`), so they are gathered once.
    #[salsa::interned(debug)]
    pub struct CalibrationKey<'db> {
        /// The float model.
        #[returns(copy)]
        pub model: ModelKey<'db>,
        /// The input list.
        #[returns(copy)]
        pub list: SourceFile,
        /// Whether histograms are collected.
        #[returns(copy)]
        pub histogram: bool,
        /// The unit whose weight encodings fake-quantize the model first, when the target
        /// calibrates with quantized weights (then statistics are that target's own).
        #[returns(copy)]
        pub quantized_weights: Option<super::Unit<'db>>,
        /// The store statistics are looked up in (and the log they report to).
        #[returns(copy)]
        pub context: BuildContext,
    }

    /// One sample (by list position) of a calibration.
    #[salsa::interned(debug)]
    pub struct SampleKey<'db> {
        /// The calibration.
        #[returns(copy)]
        pub calibration: CalibrationKey<'db>,
        /// 0-based position in the input list.
        #[returns(copy)]
        pub index: usize,
    }

    /// One tensor of one unit: the key of the per-tensor queries.
    #[salsa::interned(debug)]
    pub struct TensorKey<'db> {
        /// The unit.
        #[returns(copy)]
        pub unit: super::Unit<'db>,
        /// The tensor's ONNX name.
        #[returns(ref)]
        pub name: String,
    }
}
