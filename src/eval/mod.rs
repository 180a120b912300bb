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

pub use labels::{Label, Labels, LabelsError, in_range};

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use ndarray::ArrayD;
use rayon::prelude::*;

use crate::calib::{CalibError, InputList, Sample};
use crate::encoding::TensorEncoding;
use crate::graph::{Dim, Graph, GraphError};
use crate::onnx::{OnnxError, OnnxModel};
use crate::overrides::{self, OverridesError};
use crate::quantsim::{self, QuantSim, QuantSimError};
use crate::run::{FloatRunner, RunError};
use crate::stats::{Histogram, MinMax};

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

/// One tensor's measurements over one sample.
struct TensorSample {
    signal: f64,
    noise: f64,
    elements: u64,
    clipped: u64,
    range: MinMax,
    histogram: Histogram,
}

/// One sample's contribution, before it is added to the totals in list order.
struct SampleResult {
    outputs: Vec<(f64, f64)>,
    float_correct: bool,
    quantized_correct: bool,
    classes: usize,
    tensors: Vec<TensorSample>,
}

/// Independent partial sums per pass: one running `f64` sum is bound by the latency of each
/// addition; this many let the additions (and the compiler's vector units) overlap. The lanes
/// are added in a fixed order, so results do not depend on threads or machines.
const LANES: usize = 8;

/// Σf² and the count of values outside `[min, max]`, in one pass.
fn power_and_clipped(data: &[f32], clip: Option<(f64, f64)>) -> (f64, u64) {
    let (min, max) = clip.unwrap_or((f64::NEG_INFINITY, f64::INFINITY));
    let mut power = [0.0f64; LANES];
    let mut clipped = [0u64; LANES];
    let chunks = data.chunks_exact(LANES);
    let tail = chunks.remainder();
    for chunk in chunks {
        for lane in 0..LANES {
            let x = f64::from(chunk[lane]);
            power[lane] += x * x;
            clipped[lane] += u64::from(x < min || x > max);
        }
    }
    for (lane, &x) in tail.iter().enumerate() {
        let x = f64::from(x);
        power[lane] += x * x;
        clipped[lane] += u64::from(x < min || x > max);
    }
    (power.iter().sum(), clipped.iter().sum())
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

fn power(f: &[f32]) -> f64 {
    power_and_clipped(f, None).0
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

/// The float model and its simulation, paired by activation name.
pub struct Evaluator<'a> {
    float: &'a FloatRunner,
    sim: &'a QuantSim,
    /// Float activation index → simulated activation index.
    to_sim: Vec<Option<usize>>,
    /// Per float activation: producer op type.
    producers: Vec<String>,
    /// Per float activation: the range outside which values count as clipped.
    clip_ranges: Vec<Option<(f64, f64)>>,
}

impl<'a> Evaluator<'a> {
    /// Pairs `float` and `sim` (built from the same model); `graph` names each producer.
    pub fn new(float: &'a FloatRunner, sim: &'a QuantSim, graph: &Graph) -> Evaluator<'a> {
        let sim_names = sim.runner().activation_names();
        let to_sim: Vec<Option<usize>> = float
            .activation_names()
            .iter()
            .map(|name| sim_names.iter().position(|n| n == name))
            .collect();
        let producers = float
            .activation_names()
            .iter()
            .map(|name| {
                graph
                    .tensor(name)
                    .and_then(|t| t.producer.as_ref())
                    .map_or_else(|| "graph_input".to_string(), |p| p.op_type.clone())
            })
            .collect();
        let clip_ranges = to_sim
            .iter()
            .map(|s| {
                s.and_then(|s| sim.activation_encoding(s))
                    .and_then(|e| match e {
                        TensorEncoding::PerTensor(e) => Some((e.min, e.max)),
                        _ => None,
                    })
            })
            .collect();
        Evaluator {
            float,
            sim,
            to_sim,
            producers,
            clip_ranges,
        }
    }

    fn sample(
        &self,
        list: &InputList,
        sample: &Sample,
        label: Option<&Label>,
        labels: Option<&Labels>,
    ) -> Result<SampleResult, EvalError> {
        let loaded = list.load(sample, self.float.input_specs())?;
        let count = self.float.activation_names().len();
        let sim_count = self.sim.runner().activation_names().len();
        let mut tensors: Vec<TensorSample> = (0..count)
            .map(|_| TensorSample {
                signal: 0.0,
                noise: 0.0,
                elements: 0,
                clipped: 0,
                range: MinMax::new(),
                histogram: Histogram::new(),
            })
            .collect();
        let mut picked = Vec::with_capacity(HISTOGRAM_SAMPLE);
        // The float values of each activation, kept until the simulation produced its own.
        let mut held: Vec<Option<Vec<f32>>> = vec![None; sim_count];
        let run_error = |source| EvalError::Run {
            line: sample.line,
            source,
        };
        let float_outputs = self
            .float
            .run(&loaded.tensors, |index, data, _shape| {
                let entry = &mut tensors[index];
                let (signal, clipped) = power_and_clipped(data, self.clip_ranges[index]);
                entry.signal += signal;
                entry.clipped += clipped;
                entry.elements += data.len() as u64;
                entry.range.observe(data);
                picked.clear();
                picked.extend(strided(data));
                entry.histogram.observe(&picked);
                if let Some(s) = self.to_sim[index] {
                    held[s] = Some(data.to_vec());
                }
            })
            .map_err(run_error)?;
        let mut noise = vec![0.0f64; sim_count];
        let mut seen = vec![false; sim_count];
        let sim_outputs = self
            .sim
            .run(&loaded.tensors, |index, data, _shape| {
                if let Some(f) = held[index].take() {
                    noise[index] += noise_power(&f, data);
                    seen[index] = true;
                }
            })
            .map_err(run_error)?;
        for (index, entry) in tensors.iter_mut().enumerate() {
            match self.to_sim[index] {
                Some(s) if seen[s] => entry.noise = noise[s],
                // Not simulated: the float value stands, no noise is attributed to it.
                _ => {}
            }
        }
        let outputs = float_outputs
            .iter()
            .zip(&sim_outputs)
            .map(|(f, q)| {
                let (f, q) = (contiguous(f), contiguous(q));
                (power(&f), noise_power(&f, &q))
            })
            .collect();
        let (mut float_correct, mut quantized_correct, mut classes) = (false, false, 0);
        if let (Some(label), Some(labels)) = (label, labels) {
            let (f, q) = (&float_outputs[0], &sim_outputs[0]);
            classes = check_classifier(&self.float.output_names()[0], f.shape())?;
            if !in_range(label.class, classes) {
                return Err(labels
                    .out_of_range(label, classes, &self.float.output_names()[0])
                    .into());
            }
            let class = label.class as usize;
            float_correct = argmax(&contiguous(f)) == Some(class);
            quantized_correct = argmax(&contiguous(q)) == Some(class);
        }
        Ok(SampleResult {
            outputs,
            float_correct,
            quantized_correct,
            classes,
            tensors,
        })
    }

    /// Evaluates every sample of `list` (with `labels` when given, already count-checked) and
    /// calls `progress(done, total)` after each sample.
    pub fn evaluate(
        &self,
        list: &InputList,
        labels: Option<&Labels>,
        progress: impl Fn(usize, usize) + Sync,
    ) -> Result<Evaluation, EvalError> {
        if let Some(labels) = labels {
            labels.check_count(&list.path, list.samples.len())?;
        }
        let count = self.float.activation_names().len();
        let output_names = self.float.output_names();
        let mut tensors: Vec<TensorMetrics> = self
            .float
            .activation_names()
            .iter()
            .enumerate()
            .map(|(index, name)| TensorMetrics {
                name: name.clone(),
                producer_op: self.producers[index].clone(),
                encoding: self.to_sim[index]
                    .and_then(|s| self.sim.activation_encoding(s))
                    .cloned(),
                signal: 0.0,
                noise: 0.0,
                elements: 0,
                clipped: 0,
                range: MinMax::new(),
                histogram: Histogram::new(),
                simulated: false,
            })
            .collect();
        let constants: Vec<&str> = self.sim.runner().constant_activations().collect();
        for t in &mut tensors {
            t.simulated = !constants.contains(&t.name.as_str());
        }
        let mut outputs: Vec<OutputMetrics> = output_names
            .iter()
            .map(|name| OutputMetrics {
                name: name.clone(),
                sqnr_db: Vec::with_capacity(list.samples.len()),
            })
            .collect();
        let mut accuracy = labels.map(|_| Accuracy {
            samples: list.samples.len(),
            classes: 0,
            float_correct: 0,
            quantized_correct: 0,
        });
        let total = list.samples.len();
        let done = AtomicUsize::new(0);
        let batch = (2 * rayon::current_num_threads()).max(4);
        let indices: Vec<usize> = (0..total).collect();
        for chunk in indices.chunks(batch) {
            let results: Vec<SampleResult> = chunk
                .par_iter()
                .map(|&i| {
                    let label = labels.and_then(|l| l.labels.get(i));
                    let result = self.sample(list, &list.samples[i], label, labels);
                    progress(done.fetch_add(1, Ordering::Relaxed) + 1, total);
                    result
                })
                .collect::<Result<_, _>>()?;
            // List order: the f64 sums come out the same whatever the thread count.
            for result in results {
                for (metrics, (signal, noise)) in outputs.iter_mut().zip(&result.outputs) {
                    metrics.sqnr_db.push(sqnr_db(*signal, *noise));
                }
                if let Some(acc) = &mut accuracy {
                    acc.float_correct += usize::from(result.float_correct);
                    acc.quantized_correct += usize::from(result.quantized_correct);
                    acc.classes = result.classes;
                }
                for (t, sample) in tensors.iter_mut().zip(result.tensors) {
                    t.signal += sample.signal;
                    t.noise += sample.noise;
                    t.elements += sample.elements;
                    t.clipped += sample.clipped;
                    t.range.merge(&sample.range);
                    t.histogram.merge(&sample.histogram);
                }
            }
        }
        debug_assert_eq!(tensors.len(), count);
        Ok(Evaluation {
            samples: total,
            outputs,
            accuracy,
            tensors,
        })
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
    let mut warnings: Vec<String> = parsed.warnings.iter().map(|w| w.to_string()).collect();
    let (encodings, sim_warnings) = quantsim::encodings_from_overrides(&graph, &parsed.overrides);
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
    let float =
        FloatRunner::new(&model.to_bytes(), &runner_dims).map_err(|source| EvalError::Load {
            model: job.model.clone(),
            source,
        })?;
    list.check(float.input_specs())?;
    let sim = QuantSim::new(&model, &graph, &encodings, &runner_dims)?;
    warnings.extend(sim.warnings().iter().map(|w| w.to_string()));
    let evaluator = Evaluator::new(&float, &sim, &graph);
    let evaluate = || evaluator.evaluate(&list, labels.as_ref(), &progress);
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
            let (power, clipped) = power_and_clipped(&f, Some((-10.0, 10.0)));
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
