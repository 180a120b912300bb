//! Model transforms: functions from a float model to an equivalent (or, for high-bias absorption
//! and bias correction, nearly equivalent) float model that quantizes better, each with a
//! [`TransformReport`] of what it did and did not do.
//!
//! - [`fold_batch_norms`]: every BatchNormalization whose input is the only use of a Conv,
//!   ConvTranspose or Gemm output is folded into that layer's weight and bias.
//! - [`equalize`]: cross-layer equalization as the QNN specification defines it (`--algorithms
//!   cle`): BatchNorm folding, Relu6 replaced by Relu inside the matched patterns, cross-layer
//!   scaling (Nagel et al. 2019) and high-bias absorption.
//! - [`correct_biases`]: empirical bias correction from per-channel output means measured by the
//!   caller.
//! - [`bias_layers`], [`BiasLayer::accumulate`] and [`channel_means`]: those means, from a
//!   per-sample mean input patch of each layer that prices the float and the quantized weights
//!   alike (the derivation is in `input_means.rs`).
//!
//! Naming rule: a tensor that survives a transform keeps its name, and a folded BatchNorm's output
//! name survives as the output of the layer it was folded into, so overrides written against the
//! original model keep applying. Only tensors that did not exist before (a bias added to a layer
//! that had none) get new names, and the report lists them.
//!
//! The transforms are pure: no IO, no printing, no threads, and the same input model gives the
//! same output bytes. They read the model through the graph IR (`crate::graph`) and change it
//! only through `crate::onnx`'s edit primitives: **no protobuf type appears here**. They must
//! not run the model or know about calibration; the measurements bias correction needs are the
//! caller's (the engine's) to make: this module only reduces the activations it is handed.

mod bias_correction;
mod cle;
mod edits;
mod fold;
mod input_means;
mod layer;
mod report;

pub use bias_correction::{ChannelMeans, correct_biases};
pub use cle::{CleOptions, equalize};
pub use fold::fold_batch_norms;
pub use input_means::{BiasLayer, Geometry, Padding, Window, bias_layers, channel_means};
pub use report::{
    BiasCorrection, Fold, HighBias, KeptReason, LayerRef, PairSkip, ScaledSet, SkipReason,
    TransformEvent, TransformReport,
};

use std::fmt;

use crate::graph::GraphError;
use crate::onnx::OnnxError;

/// Why a transform could not produce a model. Unsupported patterns are not errors: they are
/// reported and left as they are.
#[derive(Debug, thiserror::Error)]
pub enum TransformError {
    /// The model's graph could not be built.
    #[error(transparent)]
    Graph(#[from] GraphError),
    /// An edit of the model failed.
    #[error(transparent)]
    Onnx(#[from] OnnxError),
    /// A bias correction names a layer the model does not have, or has the wrong channel count.
    #[error("bias correction for `{layer}`: {problem}")]
    BiasCorrection {
        /// The layer's output tensor, as given.
        layer: String,
        /// What does not fit.
        problem: String,
    },
    /// A layer's input means cannot be described or priced: its window attributes are
    /// malformed, or the mean patch or weights handed in do not fit it.
    #[error("input means of `{layer}`: {problem}")]
    BiasMeans {
        /// The layer's output tensor.
        layer: String,
        /// What does not fit.
        problem: String,
    },
}

/// The model transforms a quantized target asks for: qairt-quantizer's `--algorithms cle`, and
/// bias correction. They run in a fixed order (CLE, then bias correction), whatever order they
/// are named in, because bias correction measures the model it corrects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Algorithms {
    /// `cle`: cross-layer equalization with its BatchNorm folding and high-bias absorption.
    pub cle: bool,
    /// `bias_correction`: empirical bias correction from the calibration data.
    pub bias_correction: bool,
    /// `adaround`: each weight rounded up or down to reconstruct its layer's output (the
    /// `adaround` module; it runs last, on the model the others made).
    pub adaround: bool,
}

impl Algorithms {
    /// The names `algorithms = [...]` and `--algorithms` accept.
    pub const NAMES: [&'static str; 3] = ["cle", "bias_correction", "adaround"];

    /// Turns on the algorithm `name` spells; `false` for a name that is not one of [`Self::NAMES`].
    pub fn enable(&mut self, name: &str) -> bool {
        match name {
            "cle" => self.cle = true,
            "bias_correction" => self.bias_correction = true,
            "adaround" => self.adaround = true,
            _ => return false,
        }
        true
    }

    /// Whether any transform runs.
    pub fn any(self) -> bool {
        self.cle || self.bias_correction || self.adaround
    }

    /// The infix of the transformed model's file name, `model.{infix}.onnx`: `cle`, `bc`,
    /// `adaround`, or those that run joined by dots (`cle.bc`); `None` when nothing runs.
    pub fn file_infix(self) -> Option<&'static str> {
        match (self.cle, self.bias_correction, self.adaround) {
            (false, false, false) => None,
            (true, false, false) => Some("cle"),
            (false, true, false) => Some("bc"),
            (true, true, false) => Some("cle.bc"),
            (false, false, true) => Some("adaround"),
            (true, false, true) => Some("cle.adaround"),
            (false, true, true) => Some("bc.adaround"),
            (true, true, true) => Some("cle.bc.adaround"),
        }
    }
}

impl fmt::Display for Algorithms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = [
            (self.cle, "cle"),
            (self.bias_correction, "bias_correction"),
            (self.adaround, "adaround"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect();
        if names.is_empty() {
            f.write_str("none")
        } else {
            f.write_str(&names.join(", "))
        }
    }
}
