//! Float execution: runs the ONNX model with tract and hands every float activation, by its ONNX
//! tensor name, to the caller as soon as its producer has run.
//!
//! This module owns loading a model into a tract plan (input dims fixed, every float activation
//! kept addressable by name through optimization), running one sample at a time, and the
//! QuantSim hook that lets the caller rewrite an activation in place before its consumers read
//! it. A [`FloatRunner`] is `Send + Sync`: callers run samples side by side (rayon), each run
//! with its own tract state.
//!
//! It must NOT read input lists, keep activations after the callback returns, compute
//! statistics or know what an encoding is: what happens to an activation is the caller's business.
//! It never executes tract's QuantizeLinear/DequantizeLinear for simulation: fake quantization
//! goes through the hook.

use std::collections::HashMap;
use std::sync::Arc;

use miette::Diagnostic;
use ndarray::{ArrayD, IxDyn};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::change_axes::{AxisOp, IntoShape};
use tract_onnx::tract_core::ops::konst::Const;
use tract_onnx::tract_core::plan::{SimpleState, eval as eval_node};
use tract_onnx::tract_hir::infer::GenericFactoid;

use crate::calib::InputSpec;

/// The runtime that executes models, as store keys name it: `tract-onnx` and the exact version
/// `Cargo.lock` pins (read by `build.rs`), e.g. `tract-onnx 0.23.9`. A patch release of tract
/// can change what a model computes, so results stored under one version must not be served
/// under another; updating tract changes this string and thereby every key that names it.
pub const RUNTIME: &str = env!("QUANT_RUNTIME");

/// Why a model could not be prepared or run.
#[derive(Debug, thiserror::Error, Diagnostic)]
pub enum RunError {
    /// tract could not parse, type or optimize the model.
    #[error("cannot load the ONNX model: {0}")]
    #[diagnostic(
        code(quant::run::load),
        help(
            "the model must be valid ONNX that tract-onnx supports; check its opset and operators"
        )
    )]
    Load(String),

    /// An `--input_dim` names an input the model does not have.
    #[error("the model has no input `{name}`")]
    #[diagnostic(
        code(quant::run::unknown_input),
        help("the model's inputs are: {inputs}")
    )]
    UnknownInput {
        /// The name given.
        name: String,
        /// The model's input names, comma separated.
        inputs: String,
    },

    /// An input still has a dim that neither the model nor the caller fixes.
    #[error("input `{input}` has unknown dims ({declared}); give them with --input_dim")]
    #[diagnostic(
        code(quant::run::unknown_dim),
        help("for example `--input_dim {input} 1,3,48,192` (batch 1 for calibration)")
    )]
    UnknownDim {
        /// The input.
        input: String,
        /// The model's declared dims, `?` for unknown ones.
        declared: String,
    },

    /// Given dims contradict the ones the model declares.
    #[error("--input_dim {input} {given:?} contradicts the model's declared dims ({declared})")]
    #[diagnostic(
        code(quant::run::dim_conflict),
        help("only dims the model leaves open can be chosen; drop --input_dim or fix its value")
    )]
    DimConflict {
        /// The input.
        input: String,
        /// The dims given.
        given: Vec<usize>,
        /// The model's declared dims.
        declared: String,
    },

    /// A run was given the wrong number of input tensors or a tensor of the wrong shape.
    #[error("input `{input}` must have shape {expected:?}, got {found:?}")]
    #[diagnostic(code(quant::run::input_shape))]
    InputShape {
        /// The input.
        input: String,
        /// Its fixed shape.
        expected: Vec<usize>,
        /// The shape given (empty when the tensor is missing).
        found: Vec<usize>,
    },

    /// tract failed while running a sample.
    #[error("running the model failed: {0}")]
    #[diagnostic(code(quant::run::eval))]
    Eval(String),
}

fn load_error(e: impl std::fmt::Display) -> RunError {
    RunError::Load(format!("{e:#}"))
}

fn eval_error(e: TractError) -> RunError {
    RunError::Eval(format!("{e:#}"))
}

/// Where tract reads a model from.
enum Source<'a> {
    /// ONNX bytes in memory.
    Bytes(&'a [u8]),
    /// An ONNX file, whose external data lies beside it.
    File(&'a std::path::Path),
}

/// How the tract model is prepared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PlanKind {
    /// `into_optimized`: fastest; what calibration uses.
    #[default]
    Optimized,
    /// `into_decluttered` only: slower (3–10× per RUST-NOTES), kept as the fallback for
    /// hooks that must see exactly the ONNX graph's dataflow.
    Decluttered,
}

/// A float model ready to run, with every float activation addressable by ONNX name.
///
/// Activations are numbered `0..activation_names().len()` in graph order: graph inputs first,
/// then node outputs in the order of the ONNX nodes. Only `f32` tensors are activations here
/// (shape tensors and other integer tensors are skipped); ONNX `Constant` outputs and
/// initializers are parameters, not activations.
#[derive(Debug, Clone)]
pub struct FloatRunner {
    plan: Arc<TypedSimplePlan>,
    inputs: Vec<InputSpec>,
    activations: Vec<String>,
    /// Per node id of the plan's model: (output slot, activation index) captured there.
    captures: Vec<Vec<(usize, usize)>>,
    /// Per node id: (output slot, activation index) rewritten there by `run_with_hook`; differs
    /// from `captures` where tract's optimizer lets consumers read the value before a reshape.
    hook_points: Vec<Vec<(usize, usize)>>,
    /// Activations whose rewrite reaches no consumer (fused away by the optimizer).
    unpropagated: Vec<usize>,
    /// Each activation's ONNX shape, handed to hooks whatever the shape at the hook point.
    shapes: Vec<Vec<usize>>,
    /// Activations whose value tract folded into a constant: reported at the start of each run.
    constants: Vec<(usize, Arc<Tensor>)>,
    /// Names of the model's own outputs; the plan's first outputs are these, in order.
    output_names: Vec<String>,
}

impl FloatRunner {
    /// Loads `model_bytes` (ONNX) with input dims fixed by `input_dims` (name, dims) — needed for
    /// every input dim the model leaves open — and prepares an optimized plan.
    pub fn new(
        model_bytes: &[u8],
        input_dims: &[(String, Vec<usize>)],
    ) -> Result<FloatRunner, RunError> {
        FloatRunner::with_plan_kind(model_bytes, input_dims, PlanKind::Optimized)
    }

    /// As [`FloatRunner::new`], loading the ONNX file at `path`, whose weights may be external
    /// data beside it ([`crate::onnx::SetAside`]): tract then reads them one tensor at a time,
    /// and a model's bytes are never in memory whole next to the weights tract builds from them.
    pub fn from_file(
        path: &std::path::Path,
        input_dims: &[(String, Vec<usize>)],
    ) -> Result<FloatRunner, RunError> {
        guarded(
            || FloatRunner::load(Source::File(path), input_dims, PlanKind::Optimized),
            |message| RunError::Load(format!("tract panicked: {message}")),
        )
    }

    /// As [`FloatRunner::new`], for a decoded model, which tract reads from a scratch copy on
    /// disk ([`crate::onnx::SetAside`], in the system's temporary folder) one tensor at a time:
    /// no serialized copy of the whole model is made for tract to parse, nor the copy tract
    /// would make of that, next to the weights `model` holds and the ones tract builds.
    pub fn for_model(
        model: &crate::onnx::OnnxModel,
        input_dims: &[(String, Vec<usize>)],
    ) -> Result<FloatRunner, RunError> {
        let scratch = tempfile::Builder::new()
            .prefix("quant-runner-")
            .tempdir()
            .map_err(|e| {
                let folder = std::env::temp_dir();
                RunError::Load(format!(
                    "cannot make a scratch folder in {}: {e}",
                    folder.display()
                ))
            })?;
        // A clone shares the payloads: setting it aside copies no weights in memory.
        let aside = model
            .clone()
            .set_aside(scratch.path())
            .map_err(|e| RunError::Load(e.to_string()))?;
        FloatRunner::from_file(&aside.runtime_model(), input_dims)
    }

    /// As [`FloatRunner::new`], choosing how far tract transforms the graph.
    ///
    /// A panic inside tract while loading is this model's [`RunError::Load`], not the end of
    /// the process: models come from any exporter, and one tract cannot handle must not stop
    /// the others of a build.
    pub fn with_plan_kind(
        model_bytes: &[u8],
        input_dims: &[(String, Vec<usize>)],
        kind: PlanKind,
    ) -> Result<FloatRunner, RunError> {
        guarded(
            || FloatRunner::load(Source::Bytes(model_bytes), input_dims, kind),
            |message| RunError::Load(format!("tract panicked: {message}")),
        )
    }

    fn load(
        source: Source<'_>,
        input_dims: &[(String, Vec<usize>)],
        kind: PlanKind,
    ) -> Result<FloatRunner, RunError> {
        let mut model = match source {
            Source::Bytes(mut bytes) => tract_onnx::onnx().model_for_read(&mut bytes),
            Source::File(path) => {
                let mut onnx = tract_onnx::onnx();
                // Plain reads, not the default memory map of the whole data file: the mapped
                // pages a tensor is copied from would count against the process until the
                // map is dropped.
                onnx.provider = Arc::new(tract_onnx::data_resolver::FopenDataResolver);
                onnx.model_for_path(path)
            }
        }
        .map_err(load_error)?;
        let inputs = fix_input_facts(&mut model, input_dims)?;

        let output_names: Vec<String> = model
            .output_outlets()
            .map_err(load_error)?
            .iter()
            .map(|o| outlet_name(&model, *o))
            .collect();
        // Activation names in ONNX graph order: inputs, then outputs of non-constant nodes.
        // Initializers and `Constant` nodes are parameters; both are `Const` ops here.
        let mut onnx_activations: Vec<String> = Vec::new();
        for &outlet in model.input_outlets().map_err(load_error)? {
            onnx_activations.push(outlet_name(&model, outlet));
        }
        for node in model.nodes() {
            if node.inputs.is_empty() || node.op_is::<Const>() {
                continue;
            }
            for slot in 0..node.outputs.len() {
                if let Some(label) = model.outlet_label(OutletId::new(node.id, slot)) {
                    onnx_activations.push(label.to_string());
                }
            }
        }
        // ONNX tensors something reads: a rewrite of one of these must reach a consumer.
        let mut consumed: std::collections::HashSet<String> =
            output_names.iter().cloned().collect();
        for node in model.nodes() {
            for input in &node.inputs {
                consumed.insert(outlet_name(&model, *input));
            }
        }
        let input_names: Vec<String> = inputs.iter().map(|spec| spec.name.clone()).collect();
        let mut typed = model.into_typed().map_err(load_error)?;
        let mut by_label = labelled_outlets(&typed);
        // sources carry their name as node name, not always as a label
        for (name, outlet) in input_names
            .iter()
            .zip(typed.input_outlets().map_err(load_error)?)
        {
            by_label.entry(name.as_str()).or_insert(*outlet);
        }
        let by_label: HashMap<String, OutletId> = by_label
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();

        // Select every float activation as a model output before optimizing: tract keeps model
        // outputs as distinct outlets, which is what keeps each ONNX name addressable. Typing
        // already folds input-independent activations (a Reshape of a constant) into `Const`
        // nodes; they stay selected and are reported as constants.
        let mut selected: Vec<OutletId> = Vec::new();
        let mut activations: Vec<String> = Vec::new();
        for name in onnx_activations {
            let Some(&outlet) = by_label.get(name.as_str()) else {
                continue;
            };
            if typed.outlet_fact(outlet).map_err(load_error)?.datum_type == f32::datum_type()
                && !activations.contains(&name)
            {
                selected.push(outlet);
                activations.push(name);
            }
        }
        let mut model_outputs = Vec::new();
        for name in &output_names {
            let outlet = typed
                .find_outlet_label(name)
                .or_else(|| {
                    typed
                        .node_by_name(name)
                        .ok()
                        .map(|n| OutletId::new(n.id, 0))
                })
                .ok_or_else(|| RunError::Load(format!("model output `{name}` not found")))?;
            model_outputs.push(outlet);
        }
        let mut all = model_outputs.clone();
        all.extend(&selected);
        typed.select_output_outlets(&all).map_err(load_error)?;

        let mut prepared = match kind {
            PlanKind::Optimized => typed.into_optimized(),
            PlanKind::Decluttered => typed.into_decluttered(),
        }
        .map_err(load_error)?;

        // Output positions survive optimization; outlets (node ids) do not.
        let outlets = prepared.output_outlets().map_err(load_error)?.to_vec();
        let (output_outlets, activation_outlets) = outlets.split_at(output_names.len());
        let mut captures = vec![Vec::new(); prepared.nodes().len()];
        let mut hook_points = vec![Vec::new(); prepared.nodes().len()];
        let mut constants = Vec::new();
        let mut shapes = Vec::new();
        let mut unpropagated = Vec::new();
        for (index, outlet) in activation_outlets.iter().enumerate() {
            let fact = prepared.outlet_fact(*outlet).map_err(load_error)?;
            let shape = fact
                .shape
                .as_concrete()
                .map(|s| s.to_vec())
                .ok_or_else(|| {
                    RunError::Load(format!(
                        "activation `{}` has no fixed shape",
                        activations[index]
                    ))
                })?;
            shapes.push(shape);
            let node = prepared.node(outlet.node);
            if let Some(k) = node.op_as::<Const>() {
                constants.push((index, k.val().clone()));
            } else {
                captures[outlet.node].push((outlet.slot, index));
                let point = hook_point(&prepared, *outlet, activation_outlets);
                hook_points[point.node].push((point.slot, index));
                if !reaches_consumer(&prepared, *outlet, point)
                    && consumed.contains(&activations[index])
                    && !output_names.contains(&activations[index])
                {
                    unpropagated.push(index);
                }
            }
        }

        // Run only what the model's outputs and the dead-end activations need, and keep only
        // those till the end of a run: intermediate activations are freed after their last
        // consumer, so one run holds about what the plain model would.
        let mut plan_outputs = output_outlets.to_vec();
        for outlet in activation_outlets {
            let dead_end = prepared.outlet_successors(*outlet).is_empty();
            if dead_end && !plan_outputs.contains(outlet) {
                plan_outputs.push(*outlet);
            }
        }
        prepared
            .select_output_outlets(&plan_outputs)
            .map_err(load_error)?;
        let plan = prepared.into_runnable().map_err(load_error)?;

        Ok(FloatRunner {
            plan,
            inputs,
            activations,
            captures,
            hook_points,
            unpropagated,
            shapes,
            constants,
            output_names,
        })
    }

    /// The model's inputs with their fixed shapes, in graph order.
    pub fn input_specs(&self) -> &[InputSpec] {
        &self.inputs
    }

    /// ONNX names of the captured float activations; the callback's index points in here.
    pub fn activation_names(&self) -> &[String] {
        &self.activations
    }

    /// Each captured activation's ONNX shape, in [`FloatRunner::activation_names`] order.
    pub fn activation_shapes(&self) -> &[Vec<usize>] {
        &self.shapes
    }

    /// ONNX names of the model's outputs, in the order [`FloatRunner::run`] returns them.
    pub fn output_names(&self) -> &[String] {
        &self.output_names
    }

    /// Runs one sample (`inputs` in [`FloatRunner::input_specs`] order) and calls
    /// `activation(index, data, shape)` once per float activation, right after its producer
    /// ran; the data is not kept after the call. Returns the model's outputs.
    pub fn run<F>(
        &self,
        inputs: &[ArrayD<f32>],
        mut activation: F,
    ) -> Result<Vec<ArrayD<f32>>, RunError>
    where
        F: FnMut(usize, &[f32], &[usize]),
    {
        for (index, value) in &self.constants {
            let data = plain_f32(value).map_err(eval_error)?;
            activation(*index, data, value.shape());
        }
        self.execute(inputs, |node, values| {
            for &(slot, index) in &self.captures[node] {
                let value = &values[slot];
                activation(index, plain_f32(value)?, value.shape());
            }
            Ok(())
        })
    }

    /// Runs one sample and lets `hook(index, data, shape)` rewrite each float activation in place
    /// right after its producer ran and before any consumer reads it — the QuantSim entry point.
    /// `shape` is the activation's ONNX shape; the data is in its C order. Activations listed by
    /// [`FloatRunner::constant_activations`] are not passed to the hook. Returns the model's
    /// outputs as computed from the rewritten activations.
    ///
    /// tract's optimizer sometimes lets consumers read a value before the reshape that gives it
    /// its ONNX shape (a Conv lowered to a matrix product, then reshaped); the hook then runs on
    /// that earlier value, which holds the same elements in the same order, so every consumer
    /// sees the rewritten data.
    pub fn run_with_hook<H>(
        &self,
        inputs: &[ArrayD<f32>],
        mut hook: H,
    ) -> Result<Vec<ArrayD<f32>>, RunError>
    where
        H: FnMut(usize, &mut [f32], &[usize]),
    {
        self.execute_mut(inputs, &self.hook_points, |node, values| {
            for &(slot, index) in &self.hook_points[node] {
                let mut tensor =
                    std::mem::replace(&mut values[slot], Tensor::default().into_tvalue())
                        .into_tensor();
                {
                    let mut view = tensor.try_as_plain_ram_mut()?;
                    hook(index, view.as_slice_mut::<f32>()?, &self.shapes[index]);
                }
                values[slot] = tensor.into_tvalue();
            }
            Ok(())
        })
    }

    /// How this runner's values depend on [`FloatRunner::run_with_hook`]'s rewrites, read off
    /// the optimized plan: what an incremental simulation needs to know which activations an
    /// encoding edit reaches, and which activations it can re-quantize without running.
    ///
    /// It follows the plan tract executes rather than the ONNX graph, so a value the optimizer
    /// shares between tensors, or a hook placed before a reshape, is accounted as it runs.
    pub fn structure(&self) -> RunStructure {
        let model = self.plan.model();
        let count = self.activations.len();
        let words = count.div_ceil(64);
        // Per node: the hooks its outputs (as consumers read them) depend on. All output slots
        // of a node share one set: coarser than needed for multi-output nodes, never wrong.
        let mut after: Vec<Option<Vec<u64>>> = vec![None; model.nodes().len()];
        let mut upstream: Vec<Vec<u32>> = vec![Vec::new(); count];
        let mut siblings: Vec<Vec<u32>> = (0..count).map(|a| vec![a as u32]).collect();
        let order = model
            .eval_order()
            .unwrap_or_else(|_| (0..model.nodes().len()).collect());
        for node_id in order {
            let node = model.node(node_id);
            let mut set = vec![0u64; words];
            for input in &node.inputs {
                if let Some(Some(input_set)) = after.get(input.node) {
                    for (w, i) in set.iter_mut().zip(input_set) {
                        *w |= i;
                    }
                }
            }
            let hooked = &self.hook_points[node_id];
            let at_node: Vec<u32> = hooked.iter().map(|&(_, a)| a as u32).collect();
            for &(_, a) in hooked {
                upstream[a] = bits(&set);
                siblings[a] = at_node.clone();
            }
            for &a in &at_node {
                set[a as usize / 64] |= 1 << (a % 64);
            }
            after[node_id] = Some(set);
        }
        let mut terminal = vec![false; count];
        let mut hooked_at: HashMap<OutletId, usize> = HashMap::new();
        for (node_id, points) in self.hook_points.iter().enumerate() {
            for &(slot, a) in points {
                let outlet = OutletId::new(node_id, slot);
                hooked_at.insert(outlet, a);
                terminal[a] = model.outlet_successors(outlet).is_empty();
            }
        }
        let outputs = model
            .output_outlets()
            .map(|outlets| {
                outlets
                    .iter()
                    .take(self.output_names.len())
                    .map(|o| {
                        hooked_at
                            .get(o)
                            .filter(|&&a| terminal[a])
                            .map(|&a| a as u32)
                    })
                    .collect()
            })
            .unwrap_or_else(|_| vec![None; self.output_names.len()]);
        let mut constant = vec![false; count];
        for (a, _) in &self.constants {
            constant[*a] = true;
            upstream[*a].clear();
        }
        RunStructure {
            names: self.activations.clone(),
            shapes: self.shapes.clone(),
            upstream,
            siblings,
            terminal,
            constant,
            outputs,
            output_names: self.output_names.clone(),
        }
    }

    /// Activations that tract's optimizer fused away: their consumers read a value computed
    /// without them (cls.onnx: the Conv output before a BatchNormalization, now folded into the
    /// Conv). [`FloatRunner::run_with_hook`] still passes them to the hook, but a rewrite does
    /// not reach the model's outputs — as on a target that folds the same ops. Empty for models
    /// already folded (the `.prep` fixtures).
    pub fn unpropagated_activations(&self) -> impl Iterator<Item = &str> {
        self.unpropagated
            .iter()
            .map(|i| self.activations[*i].as_str())
    }

    /// Activations that [`FloatRunner::run_with_hook`] cannot rewrite because tract folded them
    /// into constants (their value does not depend on the input).
    pub fn constant_activations(&self) -> impl Iterator<Item = &str> {
        self.constants
            .iter()
            .map(|(i, _)| self.activations[*i].as_str())
    }

    fn input_values(&self, inputs: &[ArrayD<f32>]) -> Result<TVec<TValue>, RunError> {
        let mut values = TVec::new();
        for (i, spec) in self.inputs.iter().enumerate() {
            let found = inputs
                .get(i)
                .map(|a| a.shape().to_vec())
                .unwrap_or_default();
            if found != spec.shape {
                return Err(RunError::InputShape {
                    input: spec.name.clone(),
                    expected: spec.shape.clone(),
                    found,
                });
            }
            values.push(Tensor::from(inputs[i].clone()).into_tvalue());
        }
        Ok(values)
    }

    fn execute<C>(
        &self,
        inputs: &[ArrayD<f32>],
        mut capture: C,
    ) -> Result<Vec<ArrayD<f32>>, RunError>
    where
        C: FnMut(usize, &TVec<TValue>) -> TractResult<()>,
    {
        self.execute_mut(inputs, &self.captures, |node, values| capture(node, values))
    }

    fn execute_mut<C>(
        &self,
        inputs: &[ArrayD<f32>],
        points: &[Vec<(usize, usize)>],
        mut capture: C,
    ) -> Result<Vec<ArrayD<f32>>, RunError>
    where
        C: FnMut(usize, &mut TVec<TValue>) -> TractResult<()>,
    {
        let values = self.input_values(inputs)?;
        // The node running when tract panics, to name it in the error.
        let current = std::cell::Cell::new(None);
        let run = || {
            let mut state = SimpleState::new(&self.plan)?;
            state.run_plan_with_eval(
                values,
                |ctx, op_state, node, node_inputs| -> TractResult<_> {
                    current.set(Some(node.id));
                    let mut produced = eval_node(ctx, op_state, node, node_inputs)?;
                    if !points[node.id].is_empty() {
                        capture(node.id, &mut produced)?;
                    }
                    Ok(produced)
                },
            )
        };
        let outputs = guarded(
            || run().map_err(eval_error),
            |message| {
                let at = current.get().map_or(String::new(), |id| {
                    let node = self.plan.model().node(id);
                    format!(" in node `{}` ({})", node.name, node.op.name())
                });
                RunError::Eval(format!("tract panicked{at}: {message}"))
            },
        )?;
        outputs
            .iter()
            .take(self.output_names.len())
            .map(|v| {
                let data = plain_f32(v)?.to_vec();
                Ok(ArrayD::from_shape_vec(IxDyn(v.shape()), data)?)
            })
            .collect::<TractResult<Vec<_>>>()
            .map_err(eval_error)
    }
}

/// Runs `f`, turning a panic with a message (what tract's `panic!`, `assert!`, `unwrap` and
/// out-of-bounds indexing raise) into `error(message)`. Any other unwind (a cancellation the
/// caller raised through a callback) continues.
fn guarded<T>(
    f: impl FnOnce() -> Result<T, RunError>,
    error: impl FnOnce(String) -> RunError,
) -> Result<T, RunError> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(result) => result,
        Err(payload) => {
            let message = match payload.downcast::<String>() {
                Ok(message) => *message,
                Err(payload) => match payload.downcast::<&'static str>() {
                    Ok(message) => (*message).to_string(),
                    Err(payload) => std::panic::resume_unwind(payload),
                },
            };
            Err(error(message))
        }
    }
}

/// The indices of the bits set in `set`, ascending.
fn bits(set: &[u64]) -> Vec<u32> {
    let mut out = Vec::new();
    for (w, &word) in set.iter().enumerate() {
        let mut word = word;
        while word != 0 {
            out.push((w * 64) as u32 + word.trailing_zeros());
            word &= word - 1;
        }
    }
    out
}

/// How a [`FloatRunner`]'s activations depend on the hook's rewrites ([`FloatRunner::structure`]).
/// It is a function of the model, its input dims and tract, so it can be kept with them and
/// used without loading the model again.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RunStructure {
    /// [`FloatRunner::activation_names`].
    pub names: Vec<String>,
    /// Each activation's ONNX shape.
    pub shapes: Vec<Vec<usize>>,
    /// Per activation: the activations whose rewrite reaches its value as the hook receives
    /// it (ascending).
    pub upstream: Vec<Vec<u32>>,
    /// Per activation: the activations rewritten at the same plan node, itself included; its
    /// value as consumers read it also depends on theirs.
    pub siblings: Vec<Vec<u32>>,
    /// Per activation: no plan node reads its rewritten value (a model output or a dead end),
    /// so a new encoding of it changes nothing else.
    pub terminal: Vec<bool>,
    /// Per activation: tract folded it into a constant; the hook never sees it.
    pub constant: Vec<bool>,
    /// Per model output: the terminal activation whose rewritten value the run returns there,
    /// `None` when the output is not one activation's value as hooked.
    pub outputs: Vec<Option<u32>>,
    /// [`FloatRunner::output_names`].
    pub output_names: Vec<String>,
}

/// Where a hook must rewrite `outlet`'s value so that every consumer sees it: walk up through
/// order-preserving reshapes (`IntoShape` with contiguous strides, `AxisOp` add/remove/reshape)
/// as long as the value there is no other activation's.
fn hook_point(model: &TypedModel, outlet: OutletId, activations: &[OutletId]) -> OutletId {
    let mut point = outlet;
    loop {
        let node = model.node(point.node);
        let reshape_only = match node.op_as::<IntoShape>() {
            Some(op) => op.strides.as_slice() == contiguous_strides(&op.dims).as_slice(),
            None => node
                .op_as::<AxisOp>()
                .is_some_and(|op| !matches!(op, AxisOp::Move(..))),
        };
        let Some(&input) = node.inputs.first() else {
            return point;
        };
        if !reshape_only || node.inputs.len() != 1 || activations.contains(&input) {
            return point;
        }
        if model.node(input.node).op_is::<Const>() {
            return point;
        }
        point = input;
    }
}

/// Whether a value rewritten at `point` is read by some node besides the reshapes leading down
/// to `outlet` (the chain [`hook_point`] walked up).
fn reaches_consumer(model: &TypedModel, outlet: OutletId, point: OutletId) -> bool {
    let mut chain = vec![outlet];
    let mut at = outlet;
    while at != point {
        match model.node(at.node).inputs.first() {
            Some(&input) => {
                at = input;
                chain.push(at);
            }
            None => break,
        }
    }
    chain.iter().any(|o| {
        model
            .outlet_successors(*o)
            .iter()
            .any(|s| !chain.iter().any(|c| c.node == s.node))
    })
}

fn contiguous_strides(dims: &[usize]) -> Vec<isize> {
    let mut strides = vec![1isize; dims.len()];
    for i in (0..dims.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * dims[i + 1] as isize;
    }
    strides
}

/// Label → outlet. When translation leaves a label on several outlets, the one of the latest
/// node wins: tract wires a translated op's final value last.
fn labelled_outlets(model: &TypedModel) -> HashMap<&str, OutletId> {
    let mut map: HashMap<&str, OutletId> = HashMap::new();
    for (outlet, label) in &model.outlet_labels {
        let slot = map.entry(label.as_str()).or_insert(*outlet);
        if (outlet.node, outlet.slot) > (slot.node, slot.slot) {
            *slot = *outlet;
        }
    }
    map
}

fn plain_f32(t: &Tensor) -> TractResult<&[f32]> {
    t.try_as_plain_ram()?.as_slice::<f32>()
}

fn outlet_name<F, O>(model: &Graph<F, O>, outlet: OutletId) -> String
where
    F: Fact + Clone + 'static,
    O: std::fmt::Debug + std::fmt::Display + AsRef<dyn Op> + AsMut<dyn Op> + Clone + 'static,
{
    model
        .outlet_label(outlet)
        .map(str::to_string)
        .unwrap_or_else(|| model.node(outlet.node).name.clone())
}

/// Sets every input's fact to `f32` with fully known dims, from the caller's dims or the model's
/// declared ones.
fn fix_input_facts(
    model: &mut InferenceModel,
    input_dims: &[(String, Vec<usize>)],
) -> Result<Vec<InputSpec>, RunError> {
    let outlets = model.input_outlets().map_err(load_error)?.to_vec();
    let names: Vec<String> = outlets.iter().map(|o| outlet_name(model, *o)).collect();
    let given: HashMap<&str, &Vec<usize>> =
        input_dims.iter().map(|(n, d)| (n.as_str(), d)).collect();
    if let Some((name, _)) = input_dims.iter().find(|(n, _)| !names.contains(n)) {
        return Err(RunError::UnknownInput {
            name: name.clone(),
            inputs: names
                .iter()
                .map(|n| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    let mut specs = Vec::new();
    for (ix, name) in names.iter().enumerate() {
        let fact = model.input_fact(ix).map_err(load_error)?;
        let declared: Option<Vec<Option<usize>>> = if fact.shape.is_open() {
            None
        } else {
            Some(
                fact.shape
                    .dims()
                    .map(|d| match d {
                        GenericFactoid::Only(dim) => {
                            dim.to_i64().ok().and_then(|v| usize::try_from(v).ok())
                        }
                        GenericFactoid::Any => None,
                    })
                    .collect(),
            )
        };
        let declared_text = match &declared {
            None => "rank unknown".to_string(),
            Some(dims) => dims
                .iter()
                .map(|d| d.map_or("?".to_string(), |v| v.to_string()))
                .collect::<Vec<_>>()
                .join(","),
        };
        let shape = match (given.get(name.as_str()), &declared) {
            (Some(dims), Some(decl)) => {
                let fits = dims.len() == decl.len()
                    && dims
                        .iter()
                        .zip(decl)
                        .all(|(g, d)| d.is_none_or(|d| d == *g));
                if !fits {
                    return Err(RunError::DimConflict {
                        input: name.clone(),
                        given: (*dims).clone(),
                        declared: declared_text,
                    });
                }
                (*dims).clone()
            }
            (Some(dims), None) => (*dims).clone(),
            (None, Some(decl)) if decl.iter().all(Option::is_some) => {
                decl.iter().flatten().copied().collect()
            }
            (None, _) => {
                return Err(RunError::UnknownDim {
                    input: name.clone(),
                    declared: declared_text,
                });
            }
        };
        model
            .set_input_fact(ix, f32::fact(&shape).into())
            .map_err(load_error)?;
        specs.push(InputSpec {
            name: name.clone(),
            shape,
        });
    }
    Ok(specs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn runner_is_shareable_across_threads() {
        assert_send_sync::<FloatRunner>();
    }

    #[test]
    fn runtime_names_the_exact_locked_version() {
        let version = RUNTIME.strip_prefix("tract-onnx ").unwrap();
        let parts: Vec<&str> = version.split('.').collect();
        assert_eq!(parts.len(), 3, "{RUNTIME}");
        assert!(parts.iter().all(|p| p.parse::<u64>().is_ok()), "{RUNTIME}");
    }
}
