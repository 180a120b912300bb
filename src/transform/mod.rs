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
