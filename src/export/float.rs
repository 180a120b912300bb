//! The non-quantized model of a float target (the specification's *Non-quantized Mode*): every
//! activation, weight and bias in FP16 or FP32.

use crate::graph::{Graph, GraphError};
use crate::onnx::{OnnxError, OnnxModel};
use crate::transform::TransformError;

/// Why a float model could not be made.
#[derive(Debug, thiserror::Error)]
pub enum FloatModelError {
    /// Folding the BatchNorms failed.
    #[error(transparent)]
    Fold(#[from] TransformError),
    /// The folded model's graph is malformed.
    #[error(transparent)]
    Graph(#[from] GraphError),
    /// The rewrite failed.
    #[error(transparent)]
    Onnx(#[from] OnnxError),
}

/// `model` with every op in float16 (graph inputs and outputs float32 when `keep_io_types`).
///
/// BatchNorms are folded into the layer before them first, as qairt-converter does before it
/// chooses precisions: unfolded, a BatchNorm's variance can exceed float16's range (1e7 in the
/// det model) where the folded weights do not.
pub fn float16(model: &OnnxModel, keep_io_types: bool) -> Result<OnnxModel, FloatModelError> {
    let (folded, _) = crate::transform::fold_batch_norms(model)?;
    let graph = Graph::from_model(&folded)?;
    let plan = crate::quantizer::precision::float16_model(&graph, keep_io_types);
    Ok(folded.with_precisions(&plan)?)
}
