//! Encoding: each tensor's encoding from its projections, and a unit's encodings collected.
//!
//! It owns the tensor plan of a model (which tensors get an encoding, in the order
//! [`crate::quantizer::encode_model`] computes them), [`tensor_encoding`] (looked up in the
//! store under a key of exactly what the encoding math reads, computed by the quantizer's
//! per-tensor functions on a miss), and [`unit_encodings`], the unit's encodings as the
//! encodings file lists them.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::adarounded::model_graph;
use super::adarounded::{adaround_plan, adaround_warnings, frozen_encoding};
use super::cache::{ENCODINGS, lookup};
use super::calibrate::{merged_statistics, tensor_statistics, unit_calibration};
use super::db::Db;
use super::error::{BuildError, display_path};
use super::keys::{TensorKey, Unit};
use super::log::TensorRun;
use super::model::{model_key, unit_model_key};
use super::overrides::{tensor_override, unit_overrides};
use super::plan::unit_plan;
use super::stored::{StoredEncoding, StoredTensorEntry, stable_digest};
use crate::encoding::tensor::FloatBitwidth as TensorFloatBitwidth;
use crate::encoding::{Bitwidth, TensorEncoding};
use crate::export::aimet::QuantizerArgs;
use crate::graph::{EncodingRule, Role};
use crate::manifest::{Precision, Quantization};
use crate::overrides::{FixedEncoding, Override};
use crate::placement::Placement;
use crate::quantizer::{self, EncodeError, ModelEncodings, Warning};
use crate::stats::TensorStatistics;
use crate::store::{Digest, KeyBuilder};

// ---------------------------------------------------------------------------------------------
// Tensors.

/// How a tensor gets its encoding (the order of [`quantizer::encode_model`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TensorJob {
    /// An activation with its own encoding, from statistics.
    Activation,
    /// A parameter other than a bias, from its values.
    Parameter,
    /// A bias, from its values and its op's input and weight encodings.
    Bias,
    /// A data-movement output sharing its source's encoding.
    Shared,
}

/// Which section of the encodings file a tensor is listed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Section {
    /// `activation_encodings` (constant operands included, as AIMET lists them).
    Activations,
    /// `param_encodings`.
    Parameters,
}

/// The tensors of a model that get encodings, in the order the encodings are computed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TensorPlan {
    /// Names in computing order: own activations, parameters, biases, shared activations.
    pub order: Vec<String>,
    /// Each name's job.
    pub jobs: BTreeMap<String, TensorJob>,
}

/// The unit's model with its target's quantsim config applied ([`crate::placement`]);
/// `None` when the target has none (the graph's own rules stand).
#[salsa::tracked(returns(ref), no_eq)]
pub fn unit_placement<'db>(
    db: &'db dyn Db,
    unit: Unit<'db>,
) -> Result<Option<Arc<Placement>>, BuildError> {
    let plan = unit_plan(db, unit).as_ref().map_err(Clone::clone)?;
    let Some(settings) = plan.settings() else {
        return Ok(None);
    };
    if settings.quantsim_config.0.is_none() {
        return Ok(None);
    }
    let model_key = unit_model_key(db, unit).unwrap_or_else(|| model_key(db, unit, plan));
    let model = model_graph(db, model_key).as_ref().map_err(Clone::clone)?;
    Ok(crate::placement::placed(&model.graph, settings).map(Arc::new))
}

/// The tensor plan of a unit's model.
#[salsa::tracked(returns(ref))]
pub fn unit_tensors<'db>(db: &'db dyn Db, unit: Unit<'db>) -> Result<Arc<TensorPlan>, BuildError> {
    let plan = unit_plan(db, unit).as_ref().map_err(Clone::clone)?;
    let model = model_graph(db, model_key(db, unit, plan))
        .as_ref()
        .map_err(Clone::clone)?;
    let placement = unit_placement(db, unit).as_ref().map_err(Clone::clone)?;
    let graph = placement.as_ref().map_or(&model.graph, |p| &p.graph);
    let mut out = TensorPlan::default();
    let mut add = |name: &str, job| {
        out.order.push(name.to_string());
        out.jobs.insert(name.to_string(), job);
    };
    for tensor in graph.float_activations() {
        if tensor.rule == EncodingRule::Own {
            add(tensor.name.as_str(), TensorJob::Activation);
        }
    }
    let mut biases = Vec::new();
    for tensor in graph.float_parameters() {
        if tensor.rule != EncodingRule::Own {
            continue;
        }
        if tensor.role == Role::Bias {
            biases.push(tensor.name.as_str());
        } else {
            add(tensor.name.as_str(), TensorJob::Parameter);
        }
    }
    for name in biases {
        add(name, TensorJob::Bias);
    }
    for tensor in graph.float_activations() {
        if let EncodingRule::SharesInput(_) = tensor.rule {
            add(tensor.name.as_str(), TensorJob::Shared);
        }
    }
    Ok(Arc::new(out))
}

/// One tensor's encoding: where it is listed, the encoding (with its channel axis) when it
/// gets one, and the warnings its computation raised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedTensor {
    /// The encodings file section.
    pub section: Section,
    /// The encoding and its channel axis; `None` for an activation without statistics.
    pub encoding: Option<(FixedEncoding, usize)>,
    /// Warnings, worded.
    pub warnings: Vec<String>,
}

impl EncodedTensor {
    /// The engine's form of the encoding.
    pub fn tensor_encoding(&self) -> Option<TensorEncoding> {
        self.encoding
            .as_ref()
            .map(|(fixed, axis)| fixed.clone().with_axis(*axis))
    }
}

/// A float-fallback unit's encodings (`enable_float_fallback`), for the whole model at once:
/// an override reaches the data-movement outputs that share it and decides which ops are
/// integer (and so whose weights are encoded), so one tensor's result depends on the whole
/// graph. Nothing runs, so the whole pass costs less than reading one sample.
#[salsa::tracked(returns(ref))]
pub fn fallback_encodings<'db>(
    db: &'db dyn Db,
    unit: Unit<'db>,
) -> Result<Arc<ModelEncodings>, BuildError> {
    let plan = unit_plan(db, unit).as_ref().map_err(Clone::clone)?;
    let Some(settings) = plan.settings() else {
        return Ok(Arc::default());
    };
    let key = unit_model_key(db, unit).unwrap_or_else(|| model_key(db, unit, plan));
    let model = model_graph(db, key).as_ref().map_err(Clone::clone)?;
    let overrides = super::overrides::unit_overrides(db, unit)
        .as_ref()
        .map_err(Clone::clone)?;
    quantizer::encode_model_fallback(&model.graph, &overrides.overrides, settings)
        .map(Arc::new)
        .map_err(BuildError::Encode)
}

/// The encodings file section of a tensor's job: a parameter is listed as an activation when
/// it is one's stand-in (AIMET lists such constants as activations).
fn section_of(job: TensorJob, role: Role) -> Section {
    match job {
        TensorJob::Activation | TensorJob::Shared => Section::Activations,
        TensorJob::Bias => Section::Parameters,
        TensorJob::Parameter if quantizer::is_activation_like(role) => Section::Activations,
        TensorJob::Parameter => Section::Parameters,
    }
}

/// What of a tensor's statistics its encoding can depend on. Without a histogram that is the
/// range and the non-finite counts (for the warning), not how many finite values were seen:
/// so a new sample inside every tensor's range re-encodes nothing.
fn statistics_digest(statistics: Option<&TensorStatistics>) -> Digest {
    match statistics {
        Some(s) if s.histogram.is_none() => {
            let m = &s.min_max;
            stable_digest(&(
                "min-max",
                m.min().map(f32::to_bits),
                m.max().map(f32::to_bits),
                m.nan_count(),
                m.positive_infinity_count(),
                m.negative_infinity_count(),
            ))
        }
        other => stable_digest(&other),
    }
}

fn values_digest(values: &[f32]) -> Digest {
    // The same bytes as hashing each value's little-endian bytes in turn, fed in blocks: one
    // `update` per value costs more than the hashing itself on a model's worth of weights.
    let mut hasher = blake3::Hasher::new();
    let mut block = [0u8; 4096];
    for chunk in values.chunks(block.len() / 4) {
        for (bytes, value) in block.chunks_exact_mut(4).zip(chunk) {
            bytes.copy_from_slice(&value.to_le_bytes());
        }
        hasher.update(&block[..chunk.len() * 4]);
    }
    Digest::from(hasher.finalize())
}

/// A tensor's override with the specification's weighted-op rule applied: an output, weight or
/// bias kept float makes the other two float too, at the overriding tensor's bitwidth. Its own
/// query, so an overrides edit re-runs it for every tensor but backdates where the result is
/// unchanged, and the encodings behind it do not run again.
#[salsa::tracked]
pub fn effective_override<'db>(db: &'db dyn Db, tensor: TensorKey<'db>) -> Option<Override> {
    if let Some(own) = tensor_override(db, tensor) {
        return Some(own.clone());
    }
    if let Some(frozen) = frozen_encoding(db, tensor) {
        return Some(Override::Fixed(frozen));
    }
    let unit = tensor.unit(db);
    let plan = unit_plan(db, unit).as_ref().ok()?;
    let settings = plan.settings()?;
    let model_key = unit_model_key(db, unit).unwrap_or_else(|| model_key(db, unit, plan));
    let model = model_graph(db, model_key).as_ref().ok()?;
    let merged = super::overrides::unit_overrides(db, unit).as_ref().ok()?;
    quantizer::precision::implied_float(
        &model.graph,
        &merged.overrides,
        tensor.name(db),
        settings.float_bias_bitwidth.0,
    )
    .map(|bits| Override::Fixed(FixedEncoding::Float(bits)))
}

/// One tensor's encoding, computed exactly as [`quantizer::encode_model`] would, from the
/// per-tensor projections only; looked up in the store first.
#[salsa::tracked(returns(ref))]
pub fn tensor_encoding<'db>(
    db: &'db dyn Db,
    tensor: TensorKey<'db>,
) -> Result<Arc<EncodedTensor>, BuildError> {
    let unit = tensor.unit(db);
    let name = tensor.name(db);
    let plan = unit_plan(db, unit).as_ref().map_err(Clone::clone)?;
    let Some(settings) = plan.settings() else {
        return Err(BuildError::Model {
            path: display_path(&plan.model.path),
            message: format!("target `{}` is not quantized", plan.target.name),
        });
    };
    let tensors = unit_tensors(db, unit).as_ref().map_err(Clone::clone)?;
    let model_key = unit_model_key(db, unit).unwrap_or_else(|| model_key(db, unit, plan));
    let model = model_graph(db, model_key).as_ref().map_err(Clone::clone)?;
    let placement = unit_placement(db, unit).as_ref().map_err(Clone::clone)?;
    let graph = placement.as_ref().map_or(&model.graph, |p| &p.graph);
    let Some(job) = tensors.jobs.get(name).copied() else {
        return Err(BuildError::Encode(EncodeError::ParameterData {
            tensor: name.clone(),
        }));
    };
    let Some(info) = graph.tensor(name) else {
        return Err(BuildError::Encode(EncodeError::ParameterData {
            tensor: name.clone(),
        }));
    };
    // A schema the quantsim config fixes acts as a bitwidth-only override where the user gave
    // none, exactly as the whole-model encoder applies it.
    let ov = effective_override(db, tensor).clone().or_else(|| {
        let symmetric = *placement.as_ref()?.symmetric.get(name.as_str())?;
        Some(Override::Calibrated {
            bitwidth: settings.act_bitwidth,
            symmetric: Some(symmetric),
        })
    });
    let partner = |partner: &str,
                   section: Section|
     -> Result<Option<Arc<EncodedTensor>>, BuildError> {
        let wanted = match section {
            Section::Activations => {
                matches!(
                    tensors.jobs.get(partner),
                    Some(TensorJob::Activation | TensorJob::Parameter)
                )
            }
            Section::Parameters => matches!(tensors.jobs.get(partner), Some(TensorJob::Parameter)),
        };
        if !wanted {
            return Ok(None);
        }
        let encoded = tensor_encoding(db, TensorKey::new(db, unit, partner.to_string()))
            .as_ref()
            .map_err(Clone::clone)?;
        Ok((encoded.section == section && encoded.encoding.is_some()).then(|| encoded.clone()))
    };

    let key = KeyBuilder::new(ENCODINGS)
        .str("tensor", name)
        .digest("settings", &stable_digest(settings))
        .digest("override", &stable_digest(&ov));
    let fallback = plan
        .target
        .quantization()
        .is_some_and(Quantization::float_fallback);
    let (key, compute): (
        KeyBuilder,
        Box<dyn FnOnce() -> Result<EncodedTensor, BuildError> + '_>,
    ) = if fallback {
        // What the whole-model pass reads: the model and every override (one override can
        // reach this tensor through a data-movement chain, or make its op integer).
        let merged = unit_overrides(db, unit).as_ref().map_err(Clone::clone)?;
        let key = key
            .str("role", "float fallback")
            .digest("model", &model.content)
            .digest("input_dims", &stable_digest(&plan.model.input_dims))
            .digest("overrides", &stable_digest(&merged.overrides));
        (
            key,
            Box::new(move || {
                let all = fallback_encodings(db, unit)
                    .as_ref()
                    .map_err(Clone::clone)?;
                let encoding = all
                    .activations
                    .get(name)
                    .or_else(|| all.parameters.get(name));
                let warnings = all
                    .warnings
                    .iter()
                    .filter(|w| w.tensor() == Some(name.as_str()))
                    .cloned()
                    .collect();
                Ok(encoded(section_of(job, info.role), encoding, warnings))
            }),
        )
    } else {
        match job {
            TensorJob::Activation => {
                let statistics = tensor_statistics(db, tensor);
                let key = key
                    .str("role", "activation")
                    .digest("statistics", &statistics_digest(statistics.as_ref()));
                (
                    key,
                    Box::new(move || {
                        let (encoding, warnings) = quantizer::encode_activation(
                            name,
                            statistics.as_ref(),
                            ov.as_ref(),
                            settings,
                        )
                        .map_err(BuildError::Encode)?;
                        Ok(encoded(Section::Activations, encoding.as_ref(), warnings))
                    }),
                )
            }
            TensorJob::Parameter => {
                let (values, shape) =
                    quantizer::parameter_values(graph, name).map_err(BuildError::Encode)?;
                let consumers: Vec<&str> =
                    info.consumers.iter().map(|u| u.op_type.as_str()).collect();
                let key = key
                    .str("role", "parameter")
                    .digest("values", &values_digest(&values))
                    .digest("layout", &stable_digest(&(shape, info.role, &consumers)));
                (
                    key,
                    Box::new(move || {
                        let (encoding, warnings) = quantizer::encode_parameter(
                            info,
                            &values,
                            shape,
                            ov.as_ref(),
                            settings,
                        )
                        .map_err(BuildError::Encode)?;
                        let section = if quantizer::is_activation_like(info.role) {
                            Section::Activations
                        } else {
                            Section::Parameters
                        };
                        Ok(encoded(section, Some(&encoding), warnings))
                    }),
                )
            }
            TensorJob::Bias => {
                let (values, shape) =
                    quantizer::parameter_values(graph, name).map_err(BuildError::Encode)?;
                let (input, weight) = match quantizer::bias_partners(graph, info) {
                    Some((input, weight)) => (
                        partner(input, Section::Activations)?,
                        partner(weight, Section::Parameters)?,
                    ),
                    None => (None, None),
                };
                let input_encoding = input.as_ref().and_then(|e| e.encoding.clone());
                let weight_encoding = weight.as_ref().and_then(|e| e.encoding.clone());
                let key = key
                    .str("role", "bias")
                    .digest("values", &values_digest(&values))
                    .digest("layout", &stable_digest(&(shape, info.role)))
                    .digest("input", &stable_digest(&input_encoding))
                    .digest("weight", &stable_digest(&weight_encoding));
                (
                    key,
                    Box::new(move || {
                        let input = input_encoding.map(|(f, axis)| f.with_axis(axis));
                        let weight = weight_encoding.map(|(f, axis)| f.with_axis(axis));
                        let (encoding, warnings) = quantizer::bias_encoding(
                            info,
                            &values,
                            ov.as_ref(),
                            input.as_ref(),
                            weight.as_ref(),
                            settings,
                        )
                        .map_err(BuildError::Encode)?;
                        Ok(encoded(Section::Parameters, Some(&encoding), warnings))
                    }),
                )
            }
            TensorJob::Shared => {
                let source = match &ov {
                    Some(Override::Fixed(_)) => None,
                    _ => match graph.encoding_source(name) {
                        Some(source) => partner(source.as_str(), Section::Activations)?
                            .and_then(|e| e.encoding.clone()),
                        None => None,
                    },
                };
                let key = key
                    .str("role", "shared")
                    .digest("source", &stable_digest(&source));
                (
                    key,
                    Box::new(move || {
                        let encoding = match ov {
                            Some(Override::Fixed(fixed)) => Some((fixed.clone(), 0)),
                            _ => source,
                        };
                        Ok(EncodedTensor {
                            section: Section::Activations,
                            encoding,
                            warnings: Vec::new(),
                        })
                    }),
                )
            }
        }
    };
    let key = key.finish();
    let context = unit.project(db).context(db);
    let store = context.store(db);
    let log = context.log(db);
    if let Some(store) = store
        && let Some(hit) = lookup::<StoredTensorEntry>(store, log, ENCODINGS, &key)
    {
        let restored = match &hit.encoding {
            Some(stored) => stored.restore().map(Some),
            None => Some(None),
        };
        if let Some(encoding) = restored {
            return Ok(Arc::new(EncodedTensor {
                section: section_of(job, info.role),
                encoding,
                warnings: hit.warnings,
            }));
        }
    }
    db.unwind_if_revision_cancelled();
    let result = compute()?;
    if let Some(store) = store {
        let entry = StoredTensorEntry {
            encoding: result
                .encoding
                .as_ref()
                .map(|(fixed, axis)| StoredEncoding::new(fixed, *axis)),
            warnings: result.warnings.clone(),
        };
        if let Err(e) = store.put_json(ENCODINGS, &key, &entry) {
            log.with(|r| r.store_errors.push(format!("{e:#}")));
        }
    }
    log.with(|r| {
        r.tensors_encoded.push(TensorRun {
            pipeline: plan.pipeline.clone(),
            target: plan.target.name.clone(),
            model: plan.model.name.clone(),
            tensor: name.clone(),
        })
    });
    Ok(Arc::new(result))
}

fn encoded(
    section: Section,
    encoding: Option<&TensorEncoding>,
    warnings: Vec<quantizer::Warning>,
) -> EncodedTensor {
    EncodedTensor {
        section,
        encoding: encoding.map(|e| {
            let axis = match e {
                TensorEncoding::PerChannel { axis, .. } => *axis,
                _ => 0,
            };
            (FixedEncoding::from(e), axis)
        }),
        // Non-finite values are worded once per unit, grouped (see `unit_encodings`).
        warnings: warnings
            .iter()
            .filter(|w| !matches!(w, Warning::NonFinite { .. }))
            .map(ToString::to_string)
            .collect(),
    }
}

// ---------------------------------------------------------------------------------------------
// Unit results.

/// Every encoding of one unit, as the encodings file lists them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitEncodings {
    /// `activation_encodings`, by name.
    pub activations: BTreeMap<String, FixedEncoding>,
    /// `param_encodings`, by name.
    pub parameters: BTreeMap<String, FixedEncoding>,
    /// The file's `quantizer_args`.
    pub quantizer_args: QuantizerArgs,
    /// Warnings from overrides and encoding, deduplicated, in computing order.
    pub warnings: Vec<String>,
    /// Whether the target is float (no calibration).
    pub float: bool,
    /// Samples merged into the statistics (0 for float targets).
    pub samples: usize,
    /// Tensors whose encoding was asked for (each one a computation or a reuse).
    pub computed_tensors: usize,
    /// Layers AdaRound rounds (each one optimized or reused); 0 without AdaRound.
    pub adaround_layers: usize,
}

/// A unit's encodings: its per-tensor encodings collected (quantized targets), or every tensor
/// kept in float (cpu, gpu).
#[salsa::tracked(returns(ref))]
pub fn unit_encodings<'db>(
    db: &'db dyn Db,
    unit: Unit<'db>,
) -> Result<Arc<UnitEncodings>, BuildError> {
    let plan = unit_plan(db, unit).as_ref().map_err(Clone::clone)?;
    let tensors = unit_tensors(db, unit).as_ref().map_err(Clone::clone)?;
    let mut out = UnitEncodings {
        activations: BTreeMap::new(),
        parameters: BTreeMap::new(),
        quantizer_args: QuantizerArgs::default(),
        warnings: Vec::new(),
        float: false,
        samples: 0,
        computed_tensors: 0,
        adaround_layers: 0,
    };
    match &plan.target.precision {
        Precision::Float { float_bitwidth, .. } => {
            let model = model_graph(db, model_key(db, unit, plan))
                .as_ref()
                .map_err(Clone::clone)?;
            let bits =
                TensorFloatBitwidth::new(float_bitwidth.bits()).unwrap_or(TensorFloatBitwidth::F32);
            let float = FixedEncoding::Float(bits);
            for name in &tensors.order {
                let parameter_section = match tensors.jobs[name] {
                    TensorJob::Bias => true,
                    TensorJob::Parameter => model
                        .graph
                        .tensor(name)
                        .is_some_and(|t| !quantizer::is_activation_like(t.role)),
                    TensorJob::Activation | TensorJob::Shared => false,
                };
                let section = if parameter_section {
                    &mut out.parameters
                } else {
                    &mut out.activations
                };
                section.insert(name.clone(), float.clone());
            }
            let bitwidth = Bitwidth::new(float_bitwidth.bits()).unwrap_or(Bitwidth::B32);
            out.quantizer_args = QuantizerArgs {
                activation_bitwidth: bitwidth,
                param_bitwidth: bitwidth,
                ..QuantizerArgs::default()
            };
            out.float = true;
        }
        Precision::Quantized(Quantization { settings, .. }) => {
            // The coarse results first: their errors are the ones to report, and the
            // projections below read them as plain values.
            let overrides = unit_overrides(db, unit).as_ref().map_err(Clone::clone)?;
            let model = model_graph(db, model_key(db, unit, plan))
                .as_ref()
                .map_err(Clone::clone)?;
            if let Some(transformed) = &model.transformed {
                out.warnings.extend(transform_warnings(&transformed.lines));
            }
            out.warnings.extend(overrides.warnings.iter().cloned());
            let mut data_warnings = Vec::new();
            if let Some(calibration) = unit_calibration(db, unit)? {
                let merged = merged_statistics(db, calibration)
                    .as_ref()
                    .map_err(Clone::clone)?;
                out.samples = merged.samples;
                data_warnings.extend(merged.non_finite_inputs.iter().cloned());
                data_warnings.extend(tensors.order.iter().filter_map(|name| {
                    let count = match tensors.jobs[name] {
                        TensorJob::Activation => {
                            merged.by_name.get(name)?.min_max.non_finite_count()
                        }
                        _ => 0,
                    };
                    (count > 0).then(|| Warning::NonFinite {
                        tensor: name.clone(),
                        count,
                    })
                }));
            }
            // What the data did first: one line per sample and input, then one for every
            // activation it reached.
            out.warnings
                .extend(quantizer::word_warnings(&data_warnings));
            for name in &tensors.order {
                db.unwind_if_revision_cancelled();
                let encoded = tensor_encoding(db, TensorKey::new(db, unit, name.clone()))
                    .as_ref()
                    .map_err(Clone::clone)?;
                out.computed_tensors += 1;
                for warning in &encoded.warnings {
                    if !out.warnings.contains(warning) {
                        out.warnings.push(warning.clone());
                    }
                }
                if let Some((fixed, _)) = &encoded.encoding {
                    let section = match encoded.section {
                        Section::Activations => &mut out.activations,
                        Section::Parameters => &mut out.parameters,
                    };
                    section.insert(name.clone(), fixed.clone());
                }
            }
            if plan
                .target
                .quantization()
                .is_some_and(Quantization::float_fallback)
            {
                // The fallback pass's warnings about no one tensor (a forced schema) are the
                // unit's; the others came with their tensors above.
                let fallback = fallback_encodings(db, unit)
                    .as_ref()
                    .map_err(Clone::clone)?;
                let general = fallback.warnings.iter().filter(|w| w.tensor().is_none());
                for warning in quantizer::word_warnings(general) {
                    if !out.warnings.contains(&warning) {
                        out.warnings.push(warning);
                    }
                }
            }
            out.quantizer_args = QuantizerArgs::for_settings(settings);
            if plan.algorithms().adaround {
                let ada = adaround_plan(db, unit).as_ref().map_err(Clone::clone)?;
                out.adaround_layers = ada.layers.len();
                out.warnings.extend(adaround_warnings(db, unit)?);
            }
        }
    }
    Ok(Arc::new(out))
}

/// The warnings among a transform report's lines, the same ones grouped into one line: a model
/// without BatchNorm data warns for every equalized pair, and one line says it as well as ten.
fn transform_warnings(lines: &[String]) -> Vec<String> {
    let mut groups: Vec<(String, usize)> = Vec::new();
    for line in lines {
        let Some(warning) = line.strip_prefix("warning: ") else {
            continue;
        };
        // Group by what the warning says, not by the layers it names.
        let kind = warning.split(':').next().unwrap_or(warning);
        match groups
            .iter_mut()
            .find(|(first, _)| first.split(':').next() == Some(kind))
        {
            Some((_, count)) => *count += 1,
            None => groups.push((warning.to_string(), 1)),
        }
    }
    groups
        .into_iter()
        .map(|(first, count)| match count {
            1 => first,
            n => format!(
                "{first} (and {} more pairs like it; `report.json` lists them under `transforms`)",
                n - 1
            ),
        })
        .collect()
}

/// Whether `name` is a bias the quantizer had to encode from its own range (its input or
/// weight had no integer encoding): the one warning the QDQ export acts on.
pub(super) fn encoded_from_own_range(
    tensors: &TensorPlan,
    name: &str,
    encoded: &EncodedTensor,
) -> bool {
    tensors.jobs.get(name) == Some(&TensorJob::Bias)
        && encoded.warnings.contains(
            &Warning::BiasOwnRange {
                tensor: name.to_string(),
            }
            .to_string(),
        )
}
