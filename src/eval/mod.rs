//! Evaluation: runs an eval set (an input list and optional labels) through the float model and
//! through [`QuantSim`], and measures what quantization costs.
//!
//! Per model output it reports the SQNR of quantized against float for every sample and their
//! mean; with labels, top-1 accuracy of both (argmax over the first output's last axis); and per
//! activation tensor the SQNR of the simulated tensor against the float one, pooled over all
//! samples, with the float values' range, a histogram and the fraction outside the encoding's
//! `[min, max]` — so a user sees where the error arises.
//!
//! SQNR is `10·log10(Σf² / Σ(f−q)²)`, sums in `f64` over all elements. Samples run in parallel
//! (rayon) in batches; each sample's sums are added to the totals in list order, so results are
//! bit-identical for any thread count, and memory holds one batch, not the whole set.
//!
//! It must NOT write files or print: the report module renders an [`Evaluation`], the CLI prints.

// Errors carry the list or labels text and a span so they render on their own; they are built
// once, on the way out, so their size costs nothing worth boxing for.
#![allow(clippy::result_large_err)]

mod labels;
pub mod trace;

pub use labels::{Label, Labels, LabelsError, in_range};
pub use trace::{FloatTotals, FloatTrace, SimTrace};

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use ndarray::ArrayD;
use rayon::prelude::*;

use crate::calib::{CalibError, InputList};
use crate::encoding::tensor::fake_quantize_tensor_in_place_as;
use crate::encoding::{Rounding, TensorEncoding};
use crate::graph::{Dim, Graph, GraphError};
use crate::onnx::{OnnxError, OnnxModel};
use crate::overrides::{self, OverridesError};
use crate::quantsim::{self, QuantSim, QuantSimError};
use crate::run::{FloatRunner, RunError, RunStructure};
use crate::stats::{Histogram, MinMax, TensorStatistics};
use trace::{FloatTensor, OutputValue, SimTensor, TensorKeys};

/// Why an evaluation failed.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum EvalError {
    /// Bad arguments (exit code 2).
    #[error("{0}")]
    Usage(String),
    /// The model could not be read.
    #[error(transparent)]
    Onnx(#[from] OnnxError),
    /// The model's graph is malformed.
    #[error(transparent)]
    Graph(#[from] GraphError),
    /// The encodings file is malformed.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Encodings(#[from] OverridesError),
    /// The simulation could not be prepared.
    #[error(transparent)]
    #[diagnostic(transparent)]
    QuantSim(#[from] QuantSimError),
    /// The float model could not be prepared.
    #[error("{}: {source}", model.display())]
    Load {
        /// The model.
        model: PathBuf,
        /// What the runtime said.
        source: RunError,
    },
    /// The input list or a sample is bad.
    #[error(transparent)]
    #[diagnostic(transparent)]
    List(#[from] CalibError),
    /// The labels file is bad or does not fit.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Labels(#[from] LabelsError),
    /// A trace an evaluation planned to reuse was gone or damaged when it was read, or the
    /// runners do not match the traces' structure: the evaluation is retried with every sample
    /// run.
    #[error("the evaluation's stored traces changed while it ran")]
    #[diagnostic(code(quant::eval::traces_changed))]
    TracesChanged,
    /// A sample failed to run.
    #[error("running the sample on input list line {line}: {source}")]
    Run {
        /// Line of the sample in its input list.
        line: usize,
        /// What the runtime said.
        source: RunError,
    },
    /// Top-1 was asked for a model whose first output is not one row of class scores.
    #[error(
        "top-1 needs the first output to hold one row of class scores per sample; `{output}` has shape {shape:?}"
    )]
    #[diagnostic(
        code(quant::eval::not_a_classifier),
        help("drop --labels to get SQNR metrics only")
    )]
    NotAClassifier {
        /// The output.
        output: String,
        /// Its shape.
        shape: Vec<usize>,
    },
}

impl EvalError {
    /// The error as a miette report, source snippets included where there are any.
    pub fn into_report(self) -> miette::Report {
        miette::Report::new(self)
    }
}

/// SQNR in dB of a signal power and a noise power: `+∞` when there is no noise, `-∞` when
/// there is noise but no signal, NaN for neither.
pub fn sqnr_db(signal: f64, noise: f64) -> f64 {
    if noise == 0.0 && signal == 0.0 {
        f64::NAN
    } else {
        10.0 * (signal / noise).log10()
    }
}

/// Metrics of one model output.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputMetrics {
    /// The output's name.
    pub name: String,
    /// Quantized vs float SQNR (dB) of each sample, in list order.
    pub sqnr_db: Vec<f64>,
    /// Index of the largest simulated value of each sample (the first on ties, NaN never),
    /// over the output flattened; `None` for an output without a number.
    pub argmax: Vec<Option<usize>>,
    /// The same for the float model.
    pub float_argmax: Vec<Option<usize>>,
}

impl OutputMetrics {
    /// Mean of the per-sample dB values (the reference's definition); infinite samples make it
    /// infinite.
    pub fn mean_sqnr_db(&self) -> f64 {
        if self.sqnr_db.is_empty() {
            return f64::NAN;
        }
        self.sqnr_db.iter().sum::<f64>() / self.sqnr_db.len() as f64
    }
}

/// Top-1 accuracy of float and quantized model against the labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accuracy {
    /// Samples (= labels).
    pub samples: usize,
    /// Classes along the output's last axis.
    pub classes: usize,
    /// Samples whose float argmax equals the label.
    pub float_correct: usize,
    /// Samples whose quantized argmax equals the label.
    pub quantized_correct: usize,
}

impl Accuracy {
    /// Float top-1 as a fraction.
    pub fn float_top1(&self) -> f64 {
        self.float_correct as f64 / self.samples.max(1) as f64
    }

    /// Quantized top-1 as a fraction.
    pub fn quantized_top1(&self) -> f64 {
        self.quantized_correct as f64 / self.samples.max(1) as f64
    }
}

/// What evaluation measured about one activation tensor, over all samples.
#[derive(Debug, Clone)]
pub struct TensorMetrics {
    /// The ONNX name.
    pub name: String,
    /// Operator type of its producer (`graph_input` for inputs).
    pub producer_op: String,
    /// The encoding QuantSim applied, `None` when it stayed float.
    pub encoding: Option<TensorEncoding>,
    /// Σf² over all elements of all samples (float run).
    pub signal: f64,
    /// Σ(f−q)² against the simulated tensor.
    pub noise: f64,
    /// Float values seen.
    pub elements: u64,
    /// Float values outside the encoding's `[min, max]`.
    pub clipped: u64,
    /// Exact range of the float values (NaN/∞ counted aside).
    pub range: MinMax,
    /// Distribution of a strided subsample of the float values ([`HISTOGRAM_SAMPLE`] per tensor
    /// and sample at most): enough for a picture, not for statistics.
    pub histogram: Histogram,
    /// Whether the simulation produced this tensor (false for tensors tract folded to constants).
    pub simulated: bool,
}

impl TensorMetrics {
    /// Pooled SQNR in dB.
    pub fn sqnr_db(&self) -> f64 {
        sqnr_db(self.signal, self.noise)
    }

    /// Fraction of float values outside the encoding's range (0 for float tensors).
    pub fn clipped_fraction(&self) -> f64 {
        if self.elements == 0 {
            0.0
        } else {
            self.clipped as f64 / self.elements as f64
        }
    }
}

/// Everything one evaluation measured.
#[derive(Debug, Clone)]
pub struct Evaluation {
    /// Samples evaluated.
    pub samples: usize,
    /// Per model output, in model order.
    pub outputs: Vec<OutputMetrics>,
    /// Top-1 on the first output, when labels were given.
    pub accuracy: Option<Accuracy>,
    /// Per float activation, in graph order.
    pub tensors: Vec<TensorMetrics>,
}

/// Values per tensor and sample that go into the histogram: a fixed stride through the tensor,
/// so the picture costs the same for a 40-element and a 4-million-element tensor.
pub const HISTOGRAM_SAMPLE: usize = 4096;

/// Independent partial sums per pass: one running `f64` sum is bound by the latency of each
/// addition; this many let the additions (and the compiler's vector units) overlap. The lanes
/// are added in a fixed order, so results do not depend on threads or machines.
const LANES: usize = 8;

/// Σf², in [`LANES`] partial sums.
fn power(data: &[f32]) -> f64 {
    let mut power = [0.0f64; LANES];
    let chunks = data.chunks_exact(LANES);
    let tail = chunks.remainder();
    for chunk in chunks {
        for lane in 0..LANES {
            let x = f64::from(chunk[lane]);
            power[lane] += x * x;
        }
    }
    for (lane, &x) in tail.iter().enumerate() {
        let x = f64::from(x);
        power[lane] += x * x;
    }
    power.iter().sum()
}

/// The count of values outside `[min, max]` (0 without a range; NaN is never outside).
///
/// The bounds become the `f32`s that compare the same way (the least `f32` ≥ `min`, the
/// greatest ≤ `max`), so the loop compares `f32`s, which the compiler vectorizes, and counts
/// exactly what comparing in `f64` would.
fn clipped(data: &[f32], clip: Option<(f64, f64)>) -> u64 {
    let Some((min, max)) = clip else {
        return 0;
    };
    let lo = {
        let f = min as f32;
        if f64::from(f) < min { f.next_up() } else { f }
    };
    let hi = {
        let f = max as f32;
        if f64::from(f) > max { f.next_down() } else { f }
    };
    let mut counts = [0u32; LANES];
    let mut total = 0u64;
    // u32 lanes, flushed well before they could overflow.
    for block in data.chunks(LANES * (1 << 20)) {
        let chunks = block.chunks_exact(LANES);
        let tail = chunks.remainder();
        for chunk in chunks {
            for lane in 0..LANES {
                counts[lane] += u32::from(chunk[lane] < lo) + u32::from(chunk[lane] > hi);
            }
        }
        for &x in tail {
            counts[0] += u32::from(x < lo) + u32::from(x > hi);
        }
        total += counts.iter().map(|&c| u64::from(c)).sum::<u64>();
        counts = [0; LANES];
    }
    total
}

/// Every `ceil(len / HISTOGRAM_SAMPLE)`-th value, starting at the first.
fn strided(data: &[f32]) -> impl Iterator<Item = f32> + '_ {
    let stride = data.len().div_ceil(HISTOGRAM_SAMPLE).max(1);
    data.iter().step_by(stride).copied()
}

/// Index of the largest value (the first one on ties); NaN never wins.
fn argmax(values: &[f32]) -> Option<usize> {
    let mut best: Option<(usize, f32)> = None;
    for (i, &v) in values.iter().enumerate() {
        if v.is_nan() {
            continue;
        }
        if best.is_none_or(|(_, b)| v > b) {
            best = Some((i, v));
        }
    }
    best.map(|(i, _)| i)
}

/// Σ(f − q)², over the common length, in [`LANES`] partial sums.
fn noise_power(f: &[f32], q: &[f32]) -> f64 {
    let n = f.len().min(q.len());
    let (f, q) = (&f[..n], &q[..n]);
    let mut noise = [0.0f64; LANES];
    let mut pairs = f.chunks_exact(LANES).zip(q.chunks_exact(LANES));
    for (a, b) in &mut pairs {
        for lane in 0..LANES {
            let d = f64::from(a[lane]) - f64::from(b[lane]);
            noise[lane] += d * d;
        }
    }
    let done = n - n % LANES;
    for (lane, (&a, &b)) in f[done..].iter().zip(&q[done..]).enumerate() {
        let d = f64::from(a) - f64::from(b);
        noise[lane] += d * d;
    }
    noise.iter().sum()
}

/// Where an evaluation finds the traces earlier evaluations of the same model, simulation and
/// samples left, and leaves its own ([`trace`]). Sample indices are positions in the input
/// list. Implementations decide the keys; a trace handed back must be one this evaluation's
/// model, parameters and sample produced.
pub trait TraceStore: Sync {
    /// The float trace of sample `index`, if one is kept.
    fn float(&self, index: usize) -> Option<FloatTrace>;
    /// Whether a float trace of sample `index` is kept (without reading it).
    fn has_float(&self, index: usize) -> bool;
    /// The simulation trace of sample `index`, if one is kept.
    fn sim(&self, index: usize) -> Option<SimTrace>;
    /// Keeps the traces of sample `index` that this evaluation computed (`None`: reused).
    fn keep(&self, index: usize, float: Option<&FloatTrace>, sim: Option<&SimTrace>);
    /// The float totals of the whole list, if kept.
    fn float_totals(&self) -> Option<FloatTotals>;
    /// Keeps the float totals of the whole list.
    fn keep_totals(&self, totals: &FloatTotals);
}

/// No traces kept: every sample runs ([`run_job`]).
pub struct NoTraces;

impl TraceStore for NoTraces {
    fn float(&self, _: usize) -> Option<FloatTrace> {
        None
    }
    fn has_float(&self, _: usize) -> bool {
        false
    }
    fn sim(&self, _: usize) -> Option<SimTrace> {
        None
    }
    fn keep(&self, _: usize, _: Option<&FloatTrace>, _: Option<&SimTrace>) {}
    fn float_totals(&self) -> Option<FloatTotals> {
        None
    }
    fn keep_totals(&self, _: &FloatTotals) {}
}

/// The most bytes of terminal values and outputs an evaluation collects to keep as
/// [`FloatTotals`]; an eval set with more keeps only its per-sample traces.
const TOTALS_BUDGET: usize = 64 << 20;

/// The float model and its simulation, ready to run when a sample needs it.
#[derive(Clone, Copy)]
pub struct Runners<'a> {
    /// The float model; its structure is the evaluator's float structure.
    pub float: &'a FloatRunner,
    /// The simulation; its runner's structure is the evaluator's simulation structure.
    pub sim: &'a QuantSim,
}

/// How one sample of an evaluation is served.
enum Serve {
    /// Both traces hold: nothing is measured.
    Reuse(SimTrace),
    /// Only terminal tensors' encodings changed: they are re-quantized from their traced
    /// values, nothing runs.
    Requantize(SimTrace, Vec<usize>),
    /// The sample runs; `Some` keeps the measurements of the tensors whose key held.
    Run(Option<SimTrace>),
}

/// Which samples of an evaluation must run; made by [`Evaluator::plan`].
pub struct EvalPlan {
    serve: Vec<Serve>,
}

impl EvalPlan {
    /// Whether some sample must run, so the runners are needed.
    pub fn needs_run(&self) -> bool {
        self.serve.iter().any(|s| matches!(s, Serve::Run(_)))
    }

    /// Samples that will run, and samples whose measurements are reused or re-quantized.
    pub fn counts(&self) -> (usize, usize) {
        let run = self
            .serve
            .iter()
            .filter(|s| matches!(s, Serve::Run(_)))
            .count();
        (run, self.serve.len() - run)
    }
}

/// The float model and its simulation, paired by activation name, with the encodings the
/// simulation applies; measures an input list against them.
pub struct Evaluator {
    float: RunStructure,
    sim: RunStructure,
    /// Float activation index → simulated activation index.
    to_sim: Vec<Option<usize>>,
    /// Simulated activation index → float activation index.
    from_sim: Vec<Option<usize>>,
    /// Per float activation: producer op type.
    producers: Vec<String>,
    /// Per simulated activation: the encoding the hook applies.
    hooked: Vec<Option<TensorEncoding>>,
    /// Per simulated activation: the range outside which float values count as clipped.
    clip_ranges: Vec<Option<(f64, f64)>>,
    /// Per simulated activation: what its measurements depend on.
    keys: Vec<TensorKeys>,
    /// Whose arithmetic the simulation rounds with.
    rounding: Rounding,
}

impl Evaluator {
    /// Pairs a float model's structure with its simulation's (built from the same model), the
    /// simulation applying `hooked` ([`quantsim::hooked_encodings`] of its activations) in
    /// `rounding`'s arithmetic; `graph` names each producer.
    pub fn new(
        float: RunStructure,
        sim: RunStructure,
        hooked: Vec<Option<TensorEncoding>>,
        rounding: Rounding,
        graph: &Graph,
    ) -> Evaluator {
        let position = |names: &[String], name: &String| names.iter().position(|n| n == name);
        let to_sim: Vec<Option<usize>> = float
            .names
            .iter()
            .map(|name| position(&sim.names, name))
            .collect();
        let from_sim: Vec<Option<usize>> = sim
            .names
            .iter()
            .map(|name| position(&float.names, name))
            .collect();
        let producers = float
            .names
            .iter()
            .map(|name| {
                graph
                    .tensor(name)
                    .and_then(|t| t.producer.as_ref())
                    .map_or_else(|| "graph_input".to_string(), |p| p.op_type.clone())
            })
            .collect();
        let clip_ranges = hooked
            .iter()
            .map(|e| match e {
                Some(TensorEncoding::PerTensor(e)) => Some((e.min, e.max)),
                _ => None,
            })
            .collect();
        let keys = trace::tensor_keys(&sim, &hooked, rounding);
        Evaluator {
            float,
            sim,
            to_sim,
            from_sim,
            producers,
            hooked,
            clip_ranges,
            keys,
            rounding,
        }
    }

    /// As [`Evaluator::new`], from the runners themselves.
    pub fn from_runners(runners: Runners<'_>, graph: &Graph) -> Evaluator {
        let sim = runners.sim.runner().structure();
        let hooked = (0..sim.names.len())
            .map(|s| runners.sim.activation_encoding(s).cloned())
            .collect();
        Evaluator::new(
            runners.float.structure(),
            sim,
            hooked,
            runners.sim.rounding(),
            graph,
        )
    }

    fn float_fits(&self, trace: &FloatTrace) -> bool {
        trace.tensors.len() == self.float.names.len()
            && trace.terminal.len() == self.float.names.len()
            && trace.outputs.len() == self.float.output_names.len()
    }

    fn totals_fit(&self, totals: &FloatTotals, samples: usize) -> bool {
        totals.tensors.len() == self.float.names.len()
            && totals.samples.len() == samples
            && totals.samples.iter().all(|s| {
                s.terminal.len() == self.float.names.len()
                    && s.outputs.len() == self.float.output_names.len()
            })
    }

    fn sim_fits(&self, trace: &SimTrace) -> bool {
        trace.tensors.len() == self.sim.names.len()
            && trace.before.len() == self.sim.names.len()
            && trace.outputs.len() == self.sim.output_names.len()
    }

    /// Decides for each of `samples` samples whether its traces serve it.
    pub fn plan(&self, traces: &dyn TraceStore, samples: usize) -> EvalPlan {
        let serve = (0..samples)
            .into_par_iter()
            .map(|index| {
                let Some(sim) = traces.sim(index).filter(|t| self.sim_fits(t)) else {
                    return Serve::Run(None);
                };
                if !traces.has_float(index) {
                    return Serve::Run(Some(sim));
                }
                let dirty: Vec<usize> = (0..self.sim.names.len())
                    .filter(|&s| sim.tensors[s].key != self.keys[s].after)
                    .collect();
                if dirty.is_empty() {
                    return Serve::Reuse(sim);
                }
                let requantizable = |s: usize| {
                    self.sim.terminal[s]
                        && !self.sim.constant[s]
                        && sim.tensors[s].before_key == self.keys[s].before
                        && sim.before[s].is_some()
                        && self.from_sim[s].is_some_and(|f| self.float.terminal[f])
                };
                if dirty.iter().all(|&s| requantizable(s)) {
                    Serve::Requantize(sim, dirty)
                } else {
                    Serve::Run(Some(sim))
                }
            })
            .collect();
        EvalPlan { serve }
    }

    /// Evaluates every sample of `list` (with `labels` when given, already count-checked) as
    /// `plan` decided, running the samples that must run on `runners`; calls
    /// `progress(done, total)` after each sample and hands new traces to `traces`.
    ///
    /// The result is the same to the bit whichever samples were served from traces.
    pub fn evaluate(
        &self,
        plan: EvalPlan,
        runners: Option<Runners<'_>>,
        list: &InputList,
        labels: Option<&Labels>,
        traces: &dyn TraceStore,
        progress: impl Fn(usize, usize) + Sync,
    ) -> Result<Evaluation, EvalError> {
        if let Some(labels) = labels {
            labels.check_count(&list.path, list.samples.len())?;
        }
        if let Some(runners) = runners
            && (runners.float.activation_names() != self.float.names.as_slice()
                || runners.sim.runner().activation_names() != self.sim.names.as_slice()
                || runners.sim.rounding() != self.rounding)
        {
            return Err(EvalError::TracesChanged);
        }
        let total = list.samples.len();
        if plan.serve.len() != total {
            return Err(EvalError::TracesChanged);
        }
        let mut tensors: Vec<TensorMetrics> = self
            .float
            .names
            .iter()
            .enumerate()
            .map(|(index, name)| TensorMetrics {
                name: name.clone(),
                producer_op: self.producers[index].clone(),
                encoding: self.to_sim[index].and_then(|s| self.hooked[s].clone()),
                signal: 0.0,
                noise: 0.0,
                elements: 0,
                clipped: 0,
                range: MinMax::new(),
                histogram: Histogram::new(),
                simulated: !self.to_sim[index].is_some_and(|s| self.sim.constant[s]),
            })
            .collect();
        let mut outputs: Vec<OutputMetrics> = self
            .float
            .output_names
            .iter()
            .map(|name| OutputMetrics {
                name: name.clone(),
                sqnr_db: Vec::with_capacity(total),
                argmax: Vec::with_capacity(total),
                float_argmax: Vec::with_capacity(total),
            })
            .collect();
        let mut accuracy = labels.map(|_| Accuracy {
            samples: total,
            classes: 0,
            float_correct: 0,
            quantized_correct: 0,
        });
        // With no sample to run, the float side of every sample is in one entry.
        let totals = match plan.needs_run() {
            true => None,
            false => traces.float_totals().filter(|t| self.totals_fit(t, total)),
        };
        // Otherwise the samples' terminal values and outputs are collected to keep it.
        let mut collected: Option<(Vec<FloatTrace>, usize)> =
            totals.is_none().then(|| (Vec::with_capacity(total), 0));
        let done = AtomicUsize::new(0);
        let batch = (2 * rayon::current_num_threads()).max(4);
        let mut serve = plan.serve.into_iter().enumerate().collect::<Vec<_>>();
        while !serve.is_empty() {
            let rest = serve.split_off(batch.min(serve.len()));
            let chunk = std::mem::replace(&mut serve, rest);
            let results: Vec<(usize, FloatTrace, SimTrace)> = chunk
                .into_par_iter()
                .map(|(index, serve)| {
                    let kept = totals.as_ref().map(|t| &t.samples[index]);
                    let (float, sim) = self.sample(list, index, serve, kept, runners, traces)?;
                    progress(done.fetch_add(1, Ordering::Relaxed) + 1, total);
                    Ok((index, float, sim))
                })
                .collect::<Result<_, EvalError>>()?;
            // List order: the f64 sums come out the same whatever the thread count.
            for (index, float, sim) in results {
                for (k, metrics) in outputs.iter_mut().enumerate() {
                    let (f, q) = (&float.outputs[k].data, &sim.outputs[k].data);
                    metrics.sqnr_db.push(sqnr_db(power(f), noise_power(f, q)));
                    metrics.argmax.push(argmax(q));
                    metrics.float_argmax.push(argmax(f));
                }
                if let (Some(acc), Some(labels)) = (&mut accuracy, labels) {
                    let name = &self.float.output_names[0];
                    let classes = check_classifier(name, &float.outputs[0].shape)?;
                    let label = &labels.labels[index];
                    if !in_range(label.class, classes) {
                        return Err(labels.out_of_range(label, classes, name).into());
                    }
                    let class = label.class as usize;
                    acc.classes = classes;
                    acc.float_correct += usize::from(argmax(&float.outputs[0].data) == Some(class));
                    acc.quantized_correct +=
                        usize::from(argmax(&sim.outputs[0].data) == Some(class));
                }
                for (i, t) in tensors.iter_mut().enumerate() {
                    if let Some(sample) = float.tensors.get(i) {
                        t.signal += sample.signal;
                        t.elements += sample.elements;
                        t.range.merge(&sample.statistics.min_max);
                        if let Some(h) = &sample.statistics.histogram {
                            t.histogram.merge(h);
                        }
                    }
                    if let Some(s) = self.to_sim[i] {
                        t.noise += sim.tensors[s].noise;
                        t.clipped += sim.tensors[s].clipped;
                    }
                }
                if let Some((samples, bytes)) = &mut collected {
                    *bytes += float
                        .terminal
                        .iter()
                        .flatten()
                        .map(Vec::len)
                        .chain(float.outputs.iter().map(|o| o.data.len()))
                        .sum::<usize>()
                        * 4;
                    samples.push(FloatTrace {
                        tensors: Vec::new(),
                        terminal: float.terminal,
                        outputs: float.outputs,
                    });
                    if *bytes > TOTALS_BUDGET {
                        collected = None;
                    }
                }
            }
        }
        match totals {
            // The sums as this loop would have made them: taken whole from the entry.
            Some(totals) => {
                for (t, sum) in tensors.iter_mut().zip(totals.tensors) {
                    t.signal = sum.signal;
                    t.elements = sum.elements;
                    t.range = sum.statistics.min_max;
                    t.histogram = sum.statistics.histogram.unwrap_or_default();
                }
            }
            None => {
                if let Some((samples, _)) = collected {
                    let totals = FloatTotals {
                        tensors: tensors
                            .iter()
                            .map(|t| FloatTensor {
                                signal: t.signal,
                                elements: t.elements,
                                statistics: TensorStatistics {
                                    min_max: t.range,
                                    histogram: Some(t.histogram.clone()),
                                },
                            })
                            .collect(),
                        samples,
                    };
                    traces.keep_totals(&totals);
                }
            }
        }
        Ok(Evaluation {
            samples: total,
            outputs,
            accuracy,
            tensors,
        })
    }

    fn sample(
        &self,
        list: &InputList,
        index: usize,
        serve: Serve,
        kept: Option<&FloatTrace>,
        runners: Option<Runners<'_>>,
        traces: &dyn TraceStore,
    ) -> Result<(FloatTrace, SimTrace), EvalError> {
        // The sample's float trace, or only its terminal values and outputs when the
        // measurements come summed from the totals.
        let kept_float = || match kept {
            Some(kept) => Ok(kept.clone()),
            None => traces
                .float(index)
                .filter(|t| self.float_fits(t))
                .ok_or(EvalError::TracesChanged),
        };
        match serve {
            Serve::Reuse(sim) => Ok((kept_float()?, sim)),
            Serve::Requantize(mut sim, dirty) => {
                let float = kept_float()?;
                for s in dirty {
                    let (Some(before), Some(f)) = (
                        sim.before[s].as_ref(),
                        self.from_sim[s].and_then(|f| float.terminal[f].as_ref()),
                    ) else {
                        return Err(EvalError::TracesChanged);
                    };
                    let mut q = before.clone();
                    if let Some(encoding) = &self.hooked[s] {
                        // Per-tensor and float encodings cannot fail (as in the hook).
                        let _ = fake_quantize_tensor_in_place_as(
                            &mut q,
                            &self.sim.shapes[s],
                            encoding,
                            self.rounding.activations(),
                        );
                    }
                    sim.tensors[s] = SimTensor {
                        key: self.keys[s].after,
                        before_key: self.keys[s].before,
                        noise: noise_power(f, &q),
                        clipped: clipped(f, self.clip_ranges[s]),
                    };
                    for (k, output) in self.sim.outputs.iter().enumerate() {
                        if *output == Some(s as u32) {
                            sim.outputs[k].data.clone_from(&q);
                        }
                    }
                }
                traces.keep(index, None, Some(&sim));
                Ok((float, sim))
            }
            Serve::Run(kept_sim) => {
                let runners = runners.ok_or(EvalError::TracesChanged)?;
                // A kept float trace spares measuring the float run again, whatever became
                // of the simulation's.
                let float = traces.float(index).filter(|t| self.float_fits(t));
                let (float_new, sim) = self.run(list, index, runners, float.is_none(), kept_sim)?;
                let float = match (float, float_new) {
                    (Some(kept), _) => kept,
                    (None, Some(new)) => {
                        traces.keep(index, Some(&new), None);
                        new
                    }
                    (None, None) => return Err(EvalError::TracesChanged),
                };
                traces.keep(index, None, Some(&sim));
                Ok((float, sim))
            }
        }
    }

    /// Runs sample `index`: the float model (measuring it when `measure_float`), then the
    /// simulation, measuring every tensor whose key differs from `kept`'s.
    fn run(
        &self,
        list: &InputList,
        index: usize,
        runners: Runners<'_>,
        measure_float: bool,
        kept: Option<SimTrace>,
    ) -> Result<(Option<FloatTrace>, SimTrace), EvalError> {
        let sample = &list.samples[index];
        let loaded = list.load(sample, runners.float.input_specs())?;
        let float_count = self.float.names.len();
        let sim_count = self.sim.names.len();
        let dirty: Vec<bool> = match &kept {
            Some(kept) => (0..sim_count)
                .map(|s| kept.tensors[s].key != self.keys[s].after)
                .collect(),
            None => vec![true; sim_count],
        };
        let mut float = measure_float.then(|| FloatTrace {
            tensors: (0..float_count)
                .map(|_| trace::empty_float_tensor())
                .collect(),
            terminal: vec![None; float_count],
            outputs: Vec::new(),
        });
        let mut picked = Vec::with_capacity(HISTOGRAM_SAMPLE);
        // The float values of each re-measured activation, kept until the simulation
        // produced its own.
        let mut held: Vec<Option<Vec<f32>>> = vec![None; sim_count];
        let run_error = |source| EvalError::Run {
            line: sample.line,
            source,
        };
        let float_outputs = runners
            .float
            .run(&loaded.tensors, |i, data, _shape| {
                if let Some(trace) = float.as_mut() {
                    let entry = &mut trace.tensors[i];
                    entry.signal += power(data);
                    entry.elements += data.len() as u64;
                    entry.statistics.min_max.observe(data);
                    picked.clear();
                    picked.extend(strided(data));
                    if let Some(h) = entry.statistics.histogram.as_mut() {
                        h.observe(&picked);
                    }
                    if self.float.terminal[i] {
                        trace.terminal[i] = Some(data.to_vec());
                    }
                }
                if let Some(s) = self.to_sim[i]
                    && dirty[s]
                {
                    held[s] = Some(data.to_vec());
                }
            })
            .map_err(run_error)?;
        if let Some(trace) = float.as_mut() {
            trace.outputs = float_outputs.iter().map(output_value).collect();
        }
        let zero = SimTensor {
            key: [0; 16],
            before_key: [0; 16],
            noise: 0.0,
            clipped: 0,
        };
        let mut tensors = kept.map_or_else(|| vec![zero; sim_count], |k| k.tensors);
        let mut before: Vec<Option<Vec<f32>>> = vec![None; sim_count];
        let sim_outputs = runners
            .sim
            .run_observed(
                &loaded.tensors,
                |s, data| {
                    if self.sim.terminal[s] {
                        before[s] = Some(data.to_vec());
                    }
                },
                |s, data, _shape| {
                    if !dirty[s] {
                        return;
                    }
                    let entry = &mut tensors[s];
                    (entry.noise, entry.clipped) = match held[s].take() {
                        Some(f) => (noise_power(&f, data), clipped(&f, self.clip_ranges[s])),
                        None => (0.0, 0),
                    };
                    (entry.key, entry.before_key) = (self.keys[s].after, self.keys[s].before);
                },
            )
            .map_err(run_error)?;
        // Tensors the simulation never produced (folded to constants): no noise, and the
        // float values still say what the encoding would clip.
        let unproduced: Vec<usize> = (0..sim_count)
            .filter(|&s| dirty[s] && tensors[s].key != self.keys[s].after)
            .collect();
        for s in unproduced {
            let clipped = held[s]
                .take()
                .map_or(0, |f| clipped(&f, self.clip_ranges[s]));
            tensors[s] = SimTensor {
                key: self.keys[s].after,
                before_key: self.keys[s].before,
                noise: 0.0,
                clipped,
            };
        }
        let sim = SimTrace {
            tensors,
            before,
            outputs: sim_outputs.iter().map(output_value).collect(),
        };
        Ok((float, sim))
    }
}

fn output_value(a: &ArrayD<f32>) -> OutputValue {
    OutputValue {
        shape: a.shape().to_vec(),
        data: contiguous(a).into_owned(),
    }
}

fn contiguous(a: &ArrayD<f32>) -> std::borrow::Cow<'_, [f32]> {
    match a.as_slice() {
        Some(s) => std::borrow::Cow::Borrowed(s),
        None => std::borrow::Cow::Owned(a.iter().copied().collect()),
    }
}

/// The class count of an output that holds one row of scores, or the error saying it does not.
fn check_classifier(output: &str, shape: &[usize]) -> Result<usize, EvalError> {
    let classes = shape.last().copied().unwrap_or(0);
    let elements: usize = shape.iter().product();
    if classes == 0 || elements != classes {
        return Err(EvalError::NotAClassifier {
            output: output.to_string(),
            shape: shape.to_vec(),
        });
    }
    Ok(classes)
}

/// The class count the graph declares for `output` (its last dim), when it is fixed.
pub fn declared_classes(graph: &Graph, output: &str) -> Option<usize> {
    match graph.tensor(output)?.shape.as_ref()?.last()? {
        Dim::Fixed(n) => usize::try_from(*n).ok(),
        _ => None,
    }
}

/// What `quant eval` evaluates.
#[derive(Debug, Clone)]
pub struct EvalJob {
    /// The float ONNX model.
    pub model: PathBuf,
    /// The AIMET encodings file.
    pub encodings: PathBuf,
    /// The eval input list.
    pub input_list: PathBuf,
    /// One class per sample, optional.
    pub labels: Option<PathBuf>,
    /// Dims for inputs the model leaves dynamic.
    pub input_dims: Vec<(String, Vec<u64>)>,
    /// Threads for running samples; `None` for all cores.
    pub jobs: Option<usize>,
    /// Whose arithmetic the simulation rounds with.
    pub rounding: Rounding,
}

/// The result of an eval job.
#[derive(Debug, Clone)]
pub struct EvalOutput {
    /// The measurements.
    pub evaluation: Evaluation,
    /// Warnings, already worded.
    pub warnings: Vec<String>,
}

/// Reads the model, the encodings, the list and the labels, checks them against each other
/// before running anything, and evaluates.
pub fn run_job(
    job: &EvalJob,
    progress: impl Fn(usize, usize) + Sync,
) -> Result<EvalOutput, EvalError> {
    let mut model = OnnxModel::read(&job.model)?;
    // A misspelt input is a usage error, reported before the model is touched.
    let inputs: Vec<String> = model
        .contents()?
        .inputs
        .iter()
        .map(|i| i.name.clone())
        .collect();
    for (name, _) in &job.input_dims {
        if !inputs.contains(name) {
            return Err(EvalError::Usage(format!(
                "--input_dim names `{name}`, which is not an input of {} (inputs: {})",
                job.model.display(),
                inputs.join(", ")
            )));
        }
    }
    for (name, dims) in &job.input_dims {
        model.fix_input_dims(name, dims)?;
    }
    let graph = Graph::from_model(&model)?;
    let parsed = overrides::read(&job.encodings)?;
    let mut warnings: Vec<String> = parsed
        .warnings
        .iter()
        .map(|w| w.evaluation_text())
        .collect();
    // The file's own scale and offset, not ones recomputed from its min/max: an evaluation
    // measures the encodings the file states (the disagreement warning still says when they
    // differ).
    let (encodings, sim_warnings) =
        quantsim::encodings_from_overrides(&graph, &parsed.as_written());
    warnings.extend(sim_warnings.iter().map(|w| w.to_string()));

    let runner_dims: Vec<(String, Vec<usize>)> = job
        .input_dims
        .iter()
        .map(|(name, dims)| (name.clone(), dims.iter().map(|&d| d as usize).collect()))
        .collect();
    let list = InputList::read(&job.input_list)?;
    let labels = match &job.labels {
        Some(path) => {
            let labels = Labels::read(path)?;
            labels.check_count(&list.path, list.samples.len())?;
            if let Some(output) = graph.outputs().first()
                && let Some(classes) = declared_classes(&graph, output.as_str())
            {
                labels.check_range(classes, output.as_str())?;
            }
            Some(labels)
        }
        None => None,
    };
    let float = FloatRunner::for_model(&model, &runner_dims).map_err(|source| EvalError::Load {
        model: job.model.clone(),
        source,
    })?;
    list.check(float.input_specs())?;
    let sim = QuantSim::with_rounding(&model, &graph, &encodings, &runner_dims, job.rounding)?;
    warnings.extend(sim.warnings().iter().map(|w| w.to_string()));
    let runners = Runners {
        float: &float,
        sim: &sim,
    };
    let evaluator = Evaluator::from_runners(runners, &graph);
    let evaluate = || {
        let plan = evaluator.plan(&NoTraces, list.samples.len());
        evaluator.evaluate(
            plan,
            Some(runners),
            &list,
            labels.as_ref(),
            &NoTraces,
            &progress,
        )
    };
    let evaluation = match job.jobs {
        Some(jobs) => rayon::ThreadPoolBuilder::new()
            .num_threads(jobs)
            .build()
            .map_err(|e| EvalError::Usage(format!("cannot start {jobs} threads: {e}")))?
            .install(evaluate)?,
        None => evaluate()?,
    };
    Ok(EvalOutput {
        evaluation,
        warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_takes_the_first_maximum_and_skips_nan() {
        assert_eq!(argmax(&[0.1, 0.7, 0.7]), Some(1));
        assert_eq!(argmax(&[f32::NAN, 0.2, 0.1]), Some(1));
        assert_eq!(argmax(&[]), None);
    }

    #[test]
    fn sqnr_of_known_signals() {
        // f = [3, 4] (Σf² = 25), q = [3, 3.5] (Σ(f-q)² = 0.25): 10·log10(100) = 20 dB.
        let f = [3.0f32, 4.0];
        let q = [3.0f32, 3.5];
        assert!((sqnr_db(power(&f), noise_power(&f, &q)) - 20.0).abs() < 1e-12);
        assert_eq!(sqnr_db(1.0, 0.0), f64::INFINITY);
        assert!(sqnr_db(0.0, 0.0).is_nan());
    }

    proptest::proptest! {
        #[test]
        fn clipped_counts_what_comparing_in_f64_counts(
            f in proptest::collection::vec(proptest::num::f32::ANY, 0..70),
            near in -10.0f32..10.0,
            nudge in -1e-6f64..1e-6,
            width in 0.0f64..20.0,
        ) {
            // Bounds a hair off an f32, and values on both sides of them.
            let min = f64::from(near) + nudge;
            let max = min + width;
            let mut values = f;
            values.extend([near, near.next_up(), near.next_down(), max as f32, f32::NAN]);
            let plain = values
                .iter()
                .filter(|&&x| f64::from(x) < min || f64::from(x) > max)
                .count() as u64;
            proptest::prop_assert_eq!(clipped(&values, Some((min, max))), plain);
            proptest::prop_assert_eq!(clipped(&values, None), 0);
        }

        #[test]
        fn lane_sums_match_the_plain_sums(
            f in proptest::collection::vec(-1e3f32..1e3, 0..70),
            shift in -1.0f32..1.0,
        ) {
            let q: Vec<f32> = f.iter().map(|x| x + shift).collect();
            let plain_power: f64 = f.iter().map(|&x| f64::from(x) * f64::from(x)).sum();
            let plain_noise: f64 = f
                .iter()
                .zip(&q)
                .map(|(&a, &b)| (f64::from(a) - f64::from(b)).powi(2))
                .sum();
            let plain_clipped = f.iter().filter(|&&x| !(-10.0..=10.0).contains(&x)).count() as u64;
            let (power, clipped) = (power(&f), clipped(&f, Some((-10.0, 10.0))));
            proptest::prop_assert!((power - plain_power).abs() <= 1e-12 * plain_power.max(1.0));
            proptest::prop_assert_eq!(clipped, plain_clipped);
            let noise = noise_power(&f, &q);
            proptest::prop_assert!((noise - plain_noise).abs() <= 1e-12 * plain_noise.max(1.0));
        }
    }

    #[test]
    fn classifier_output_must_be_one_row() {
        assert_eq!(check_classifier("p", &[1, 2]).unwrap(), 2);
        assert!(check_classifier("p", &[2, 2]).is_err());
        assert!(check_classifier("p", &[1, 0]).is_err());
    }
}
