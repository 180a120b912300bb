//! Precision: which ops of a unit run in float16, float32 or int32, the integer encodings of
//! the tensors converted between them ([`unit_conversions`]), and a float target's model
//! ([`unit_float_model`]).
//!
//! A converted tensor's integer side is calibrated as any activation's, from the unit's merged
//! statistics with the target's activation settings, ignoring the override that made the
//! tensor float or INT32: those statistics are already stored per sample, so the encodings are
//! recomputed here rather than stored again.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::adarounded::model_graph;
use super::calibrate::tensor_statistics;
use super::db::Db;
use super::encode::{
    Section, encoded_from_own_range, tensor_encoding, unit_encodings, unit_tensors,
};
use super::error::{BuildError, display_path};
use super::keys::{TensorKey, Unit};
use super::model::model_key;
use super::plan::unit_plan;
use crate::encoding::TensorEncoding;
use crate::manifest::Precision;
use crate::quantizer::{self, ModelEncodings, Warning, precision};

/// The ops of a unit that do not run in integer, and the conversions around them.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct UnitConversions {
    /// Ops and converted tensors.
    pub conversions: precision::Conversions,
    /// The integer encoding of each converted tensor.
    pub encodings: BTreeMap<String, TensorEncoding>,
}

/// The conversions of a quantized unit (empty for float targets and all-integer graphs).
#[salsa::tracked(returns(ref), no_eq)]
pub fn unit_conversions<'db>(
    db: &'db dyn Db,
    unit: Unit<'db>,
) -> Result<Arc<UnitConversions>, BuildError> {
    let plan = unit_plan(db, unit).as_ref().map_err(Clone::clone)?;
    let Some(settings) = plan.settings() else {
        return Ok(Arc::default());
    };
    let encodings = unit_encodings(db, unit).as_ref().map_err(Clone::clone)?;
    let model = model_graph(db, model_key(db, unit, plan))
        .as_ref()
        .map_err(Clone::clone)?;
    let activations: BTreeMap<String, TensorEncoding> = encodings
        .activations
        .iter()
        .map(|(name, fixed)| (name.clone(), fixed.clone().with_axis(0)))
        .collect();
    let overrides = super::overrides::unit_overrides(db, unit)
        .as_ref()
        .map_err(Clone::clone)?;
    let int32 = overrides.overrides.int32_tensors();
    let conversions = precision::conversions(&model.graph, &activations, &int32).map_err(|e| {
        BuildError::Precision {
            path: display_path(&plan.model.path),
            message: e.to_string(),
        }
    })?;
    let mut out = UnitConversions {
        conversions,
        encodings: BTreeMap::new(),
    };
    for name in &out.conversions.converted {
        let statistics = tensor_statistics(db, TensorKey::new(db, unit, name.clone()));
        let (encoding, _) = quantizer::encode_activation(name, statistics.as_ref(), None, settings)
            .map_err(BuildError::Encode)?;
        if let Some(encoding) = encoding {
            out.encodings.insert(name.clone(), encoding);
        }
    }
    Ok(Arc::new(out))
}

/// The unit's encodings as the library's [`ModelEncodings`]: channel axes from the per-tensor
/// queries, and the one warning the QDQ export acts on (a bias encoded from its own range).
pub fn model_encodings(db: &dyn Db, unit: Unit<'_>) -> Result<ModelEncodings, BuildError> {
    let tensors = unit_tensors(db, unit).as_ref().map_err(Clone::clone)?;
    let mut out = ModelEncodings::default();
    for name in &tensors.order {
        db.unwind_if_revision_cancelled();
        let encoded = tensor_encoding(db, TensorKey::new(db, unit, name.clone()))
            .as_ref()
            .map_err(Clone::clone)?;
        let Some(encoding) = encoded.tensor_encoding() else {
            continue;
        };
        match encoded.section {
            Section::Activations => out.activations.insert(name.clone(), encoding),
            Section::Parameters => out.parameters.insert(name.clone(), encoding),
        };
        if encoded_from_own_range(tensors, name, encoded) {
            out.warnings.push(Warning::BiasOwnRange {
                tensor: name.clone(),
            });
        }
    }
    let conversions = unit_conversions(db, unit).as_ref().map_err(Clone::clone)?;
    out.ops = conversions.conversions.ops.clone();
    out.converted = conversions.encodings.clone();
    Ok(out)
}

/// A float target's model, `model.fp16.onnx` or `model.fp32.onnx`: the model with its input
/// dims fixed, every op in the target's float bitwidth. `None` for quantized targets.
#[salsa::tracked(returns(ref))]
pub fn unit_float_model<'db>(
    db: &'db dyn Db,
    unit: Unit<'db>,
) -> Result<Option<NamedModel>, BuildError> {
    let plan = unit_plan(db, unit).as_ref().map_err(Clone::clone)?;
    let Precision::Float {
        float_bitwidth,
        keep_io_types,
    } = &plan.target.precision
    else {
        return Ok(None);
    };
    let model = model_graph(db, model_key(db, unit, plan))
        .as_ref()
        .map_err(Clone::clone)?;
    let name = format!("model.fp{}.onnx", float_bitwidth.bits());
    let export_error = |message: String| BuildError::Export {
        path: display_path(&plan.out_dir.join(&name)),
        message,
    };
    let converted = match float_bitwidth.bits() {
        16 => crate::export::float::float16(&model.onnx, *keep_io_types)
            .map_err(|e| export_error(e.to_string()))?,
        _ => model.onnx.clone(),
    };
    Ok(Some((name, converted.to_bytes().into())))
}

/// A model file's name and bytes.
pub type NamedModel = (String, Arc<[u8]>);

/// The files [`unit_float_model`] may write, so a target that changes bitwidth (or becomes
/// quantized) loses the other.
pub const FLOAT_MODEL_FILES: [&str; 2] = ["model.fp16.onnx", "model.fp32.onnx"];
