//! The files that write a unit's encodings out: `encodings.json`, assembled from per-tensor
//! fragments so an edit formats only the tensors it changed, and `model.qdq.onnx`, assembled
//! from per-tensor QDQ plans for the same reason.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::adarounded::model_graph;
use super::db::Db;
use super::encode::{
    Section, UnitEncodings, encoded_from_own_range, tensor_encoding, unit_encodings, unit_tensors,
};
use super::error::{BuildError, display_path};
use super::keys::{TensorKey, Unit};
use super::model::model_key;
use super::plan::{UnitPlan, unit_plan};
use super::precision::unit_conversions;
use crate::export::aimet::{AimetEncodings, EncodingVersion as AimetVersion};
use crate::export::qdq;
use crate::manifest::EncodingVersion;
use crate::onnx::qdq::QdqTensor;
use crate::overrides::FixedEncoding;
use crate::quantizer::precision;

/// The AIMET layout for a manifest's `encoding_version`.
pub fn aimet_version(version: EncodingVersion) -> AimetVersion {
    match version {
        EncodingVersion::V0_6_1 => AimetVersion::V0_6_1,
        EncodingVersion::V1_0_0 => AimetVersion::V1_0_0,
    }
}

/// `encodings.json` of a unit: its encodings in the manifest's AIMET layout.
pub fn encodings_json(plan: &UnitPlan, encodings: &UnitEncodings) -> String {
    let aimet = AimetEncodings {
        activations: encodings.activations.clone(),
        parameters: encodings.parameters.clone(),
        quantizer_args: encodings.quantizer_args.clone(),
    };
    aimet.to_json(aimet_version(plan.encoding_version))
}

/// The unit's `encodings.json` bytes, serialized once per revision: the file itself, the QDQ
/// model's metadata digest and the evaluation's store key all read this one value (a large
/// model's file is megabytes of JSON). A quantized unit's file is assembled from each tensor's
/// kept [`tensor_json_fragment`], so an edit formats only the tensors it changed.
#[salsa::tracked(returns(ref))]
pub fn unit_encodings_json<'db>(db: &'db dyn Db, unit: Unit<'db>) -> Result<Arc<str>, BuildError> {
    let plan = unit_plan(db, unit).as_ref().map_err(Clone::clone)?;
    // The unit's own errors (overrides, calibration) come first, as everywhere.
    let encodings = unit_encodings(db, unit).as_ref().map_err(Clone::clone)?;
    if encodings.float {
        return Ok(Arc::from(encodings_json(plan, encodings)));
    }
    let tensors = unit_tensors(db, unit).as_ref().map_err(Clone::clone)?;
    let mut activations: BTreeMap<&str, Arc<str>> = BTreeMap::new();
    let mut parameters: BTreeMap<&str, Arc<str>> = BTreeMap::new();
    for name in &tensors.order {
        let fragment = tensor_json_fragment(db, TensorKey::new(db, unit, name.clone()))
            .as_ref()
            .map_err(Clone::clone)?;
        if let Some((section, text)) = fragment {
            let map = match section {
                Section::Activations => &mut activations,
                Section::Parameters => &mut parameters,
            };
            map.insert(name.as_str(), text.clone());
        }
    }
    // Name order in each section, as the whole-file writer lists them.
    let activations: Vec<Arc<str>> = activations.into_values().collect();
    let parameters: Vec<Arc<str>> = parameters.into_values().collect();
    Ok(Arc::from(crate::export::aimet::assemble(
        &activations,
        &parameters,
        &encodings.quantizer_args,
        aimet_version(plan.encoding_version),
    )))
}

/// One tensor's entry in its unit's `encodings.json`, formatted for its place in the file
/// ([`crate::export::aimet::entry_fragment`]); `None` when the tensor is not listed.
#[salsa::tracked(returns(ref))]
pub fn tensor_json_fragment<'db>(
    db: &'db dyn Db,
    tensor: TensorKey<'db>,
) -> Result<Option<(Section, Arc<str>)>, BuildError> {
    let plan = unit_plan(db, tensor.unit(db))
        .as_ref()
        .map_err(Clone::clone)?;
    let encoded = tensor_encoding(db, tensor).as_ref().map_err(Clone::clone)?;
    let Some((fixed, _)) = &encoded.encoding else {
        return Ok(None);
    };
    let text = crate::export::aimet::entry_fragment(
        tensor.name(db),
        fixed,
        aimet_version(plan.encoding_version),
    );
    Ok(Some((encoded.section, Arc::from(text))))
}

/// A unit's output files. Pure function of the encodings, the evaluation and the plan: no

/// `model.qdq.onnx` of a quantized unit: the model (input dims fixed) with its encodings as
/// QuantizeLinear/DequantizeLinear, the digest of `encodings.json` in its metadata. `None` for
/// float targets.
#[salsa::tracked(returns(ref))]
pub fn unit_qdq_model<'db>(
    db: &'db dyn Db,
    unit: Unit<'db>,
) -> Result<Option<Arc<[u8]>>, BuildError> {
    let plan = unit_plan(db, unit).as_ref().map_err(Clone::clone)?;
    if plan.settings().is_none() {
        return Ok(None);
    }
    let json = unit_encodings_json(db, unit)
        .as_ref()
        .map_err(Clone::clone)?;
    let digest = qdq::encodings_digest(json.as_bytes());
    let model = model_graph(db, model_key(db, unit, plan))
        .as_ref()
        .map_err(Clone::clone)?;
    let export_error = |message: String| BuildError::Export {
        path: display_path(&plan.out_dir.join("model.qdq.onnx")),
        message,
    };
    // The order of `qdq::plan`: activations, then parameters, each by name (the unit's
    // memoized encodings list exactly the tensors that have one, in that order).
    let encodings = unit_encodings(db, unit).as_ref().map_err(Clone::clone)?;
    let conversions = unit_conversions(db, unit).as_ref().map_err(Clone::clone)?;
    let mut tensors = Vec::new();
    for name in encodings
        .activations
        .keys()
        .chain(encodings.parameters.keys())
    {
        // A converted tensor is quantized with its integer side's encoding; an INT32 one
        // between int32 ops is only cast.
        if let Some(converted) = conversions.encodings.get(name) {
            let planned = qdq::plan_tensor_with(name, converted, false, None)
                .map_err(|e| export_error(e.to_string()))?;
            tensors.extend(planned);
            continue;
        }
        if is_int32_activation(encodings, name) {
            continue;
        }
        let planned = qdq_tensor(db, TensorKey::new(db, unit, name.clone()))
            .as_ref()
            .map_err(Clone::clone)?;
        tensors.extend(planned.iter().cloned());
    }
    let plan = qdq::assemble(tensors, &digest);
    let exported = if conversions.conversions.ops.is_empty() {
        model
            .onnx
            .with_qdq(&plan)
            .map_err(|e| export_error(qdq::QdqExportError::from(e).to_string()))?
    } else {
        qdq::with_precisions_and_qdq(
            &model.onnx,
            precision::float32_tensors(&model.graph),
            &conversions.conversions.ops,
            &plan,
        )
        .map_err(|e| export_error(e.to_string()))?
    };
    Ok(Some(exported.to_bytes().into()))
}

/// Whether `name` is an INT32 activation: written as int32 by the precision rewrite, never as a
/// QuantizeLinear (which has no 32-bit output).
fn is_int32_activation(encodings: &UnitEncodings, name: &str) -> bool {
    matches!(
        encodings.activations.get(name),
        Some(FixedEncoding::PerTensor(e)) if e.bitwidth == crate::encoding::Bitwidth::B32
    )
}

/// One tensor's part of its unit's QDQ model ([`qdq::plan_tensor`]), kept per tensor: after an
/// edit of one encoding, only that tensor is planned again (a weight's integers are most of an
/// export's work).
#[salsa::tracked(returns(ref), no_eq)]
pub fn qdq_tensor<'db>(
    db: &'db dyn Db,
    tensor: TensorKey<'db>,
) -> Result<Option<QdqTensor>, BuildError> {
    let unit = tensor.unit(db);
    let plan = unit_plan(db, unit).as_ref().map_err(Clone::clone)?;
    let name = tensor.name(db);
    let encoded = tensor_encoding(db, tensor).as_ref().map_err(Clone::clone)?;
    let Some(encoding) = encoded.tensor_encoding() else {
        return Ok(None);
    };
    let tensors = unit_tensors(db, unit).as_ref().map_err(Clone::clone)?;
    let own_range = encoded_from_own_range(tensors, name, encoded);
    let model = model_graph(db, model_key(db, unit, plan))
        .as_ref()
        .map_err(Clone::clone)?;
    // The graph holds every float parameter decoded already; anything else (an activation, a
    // parameter of another type) goes through the model as `quant quantize` does.
    let decoded = model.graph.parameter(name).and_then(|data| {
        let dims: Vec<u64> = data.shape.iter().map(|&d| d as u64).collect();
        data.as_f32().map(|values| (values, dims))
    });
    match &decoded {
        Some((values, dims)) => {
            qdq::plan_tensor_with(name, &encoding, own_range, Some((values, dims)))
        }
        None => qdq::plan_tensor(&model.onnx, name, &encoding, own_range),
    }
    .map_err(|e| BuildError::Export {
        path: display_path(&plan.out_dir.join("model.qdq.onnx")),
        message: e.to_string(),
    })
}
