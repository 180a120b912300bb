//! The one-shot pipeline behind `quant quantize`: read the model, the input list and the
//! overrides, calibrate every sample in parallel, encode every tensor, and hand back the AIMET
//! encodings. No cache and no incremental state: the manifest build reuses the same quantizer
//! functions through salsa queries instead.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use rayon::prelude::*;

use crate::calib::{CalibError, InputList};
use crate::export::aimet::{AimetEncodings, QuantizerArgs};
use crate::graph::{Graph, GraphError};
use crate::onnx::{OnnxError, OnnxModel};
use crate::overrides::{
    self, FixedEncoding, ModelTensors, Overrides, OverridesError, OverridesInvalid,
};
use crate::quantizer::{
    self, CalibrationError, EncodeError, ModelEncodings, QuantizerSettings, SampleStatistics,
    statistics_settings,
};
use crate::run::{FloatRunner, RunError};
use crate::transform::{Algorithms, CleOptions, TransformError, TransformReport};

/// What to quantize, and how.
#[derive(Debug, Clone)]
pub struct OneShot {
    /// The float ONNX model.
    pub model: PathBuf,
    /// The calibration input list; `None` for float fallback (`--enable_float_fallback`): no
    /// calibration, encodings from the overrides, float elsewhere.
    pub input_list: Option<PathBuf>,
    /// An AIMET encodings file whose entries win over calibration.
    pub overrides: Option<PathBuf>,
    /// Dims for inputs the model leaves dynamic.
    pub input_dims: Vec<(String, Vec<u64>)>,
    /// The quantizer settings.
    pub settings: QuantizerSettings,
    /// The model transforms run before calibration.
    pub algorithms: Algorithms,
    /// AdaRound's settings, used when `algorithms.adaround` is on.
    pub adaround: crate::adaround::AdaroundConfig,
    /// Where the AdaRound config names layers and parameters, checked against the model.
    pub adaround_names: crate::adaround::ConfigNames,
    /// Threads for running samples; `None` for all cores.
    pub jobs: Option<usize>,
}

/// The result of a one-shot quantization.
#[derive(Debug, Clone)]
pub struct OneShotOutput {
    /// The encodings, ready to write.
    pub encodings: AimetEncodings,
    /// Warnings for the user, already worded.
    pub warnings: Vec<String>,
    /// How many samples were calibrated.
    pub samples: usize,
    /// The float model as calibrated (input dims fixed, transforms applied), for writing a QDQ
    /// model and, when a transform ran, the transformed model itself.
    pub model: OnnxModel,
    /// What the transforms did (empty when none ran).
    pub transforms: TransformReport,
    /// The encodings before conversion to the AIMET layout, for writing a QDQ model.
    pub model_encodings: ModelEncodings,
    /// What AdaRound did to each layer (empty when it did not run).
    pub adaround: Vec<super::LayerSummary>,
    /// Wall time of the AdaRound step (measuring and optimizing), zero when it did not run.
    pub adaround_time: std::time::Duration,
}

/// Why a one-shot quantization failed.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum OneShotError {
    /// Bad arguments (exit code 2).
    #[error("{0}")]
    Usage(String),
    /// The model could not be read.
    #[error(transparent)]
    Onnx(#[from] OnnxError),
    /// The model's graph is malformed.
    #[error(transparent)]
    Graph(#[from] GraphError),
    /// The input list or a sample is bad.
    #[error(transparent)]
    #[diagnostic(transparent)]
    List(Box<CalibError>),
    /// The overrides file is malformed.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Overrides(#[from] OverridesError),
    /// The overrides do not fit the model.
    #[error(transparent)]
    #[diagnostic(transparent)]
    OverridesInvalid(Box<OverridesInvalid>),
    /// The model could not be prepared for running.
    #[error("{}: {source}", model.display())]
    Run {
        /// The model.
        model: PathBuf,
        /// What the runtime said.
        source: RunError,
    },
    /// A sample failed to run.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Calibration(Box<CalibrationError>),
    /// A tensor could not be encoded.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// The non-quantized model could not be made.
    #[error("{}: {message}", model.display())]
    FloatModel {
        /// The model.
        model: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The AdaRound config names something the model does not have.
    #[error(transparent)]
    #[diagnostic(transparent)]
    AdaroundConfig(Box<crate::adaround::ConfigError>),
    /// AdaRound could not run.
    #[error("{}: adaround: {message}", model.display())]
    Adaround {
        /// The model.
        model: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// No folder to set the model aside in while it is calibrated.
    #[error("cannot make a scratch folder in {}: {source}", folder.display())]
    #[diagnostic(help(
        "calibration sets the model's weights aside there; point TMPDIR at a writable folder \
         with room for them"
    ))]
    Scratch {
        /// The folder it was made in.
        folder: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// A model transform failed.
    #[error("{}: {source}", model.display())]
    Transform {
        /// The model.
        model: PathBuf,
        /// What went wrong (boxed: it would make every `Result` of this module large).
        source: Box<TransformError>,
    },
}

// Boxed variants keep `Result<_, OneShotError>` small: these diagnostics carry source text.
impl From<CalibError> for OneShotError {
    fn from(error: CalibError) -> Self {
        OneShotError::List(Box::new(error))
    }
}

impl From<CalibrationError> for OneShotError {
    fn from(error: CalibrationError) -> Self {
        OneShotError::Calibration(Box::new(error))
    }
}

impl From<OverridesInvalid> for OneShotError {
    fn from(error: OverridesInvalid) -> Self {
        OneShotError::OverridesInvalid(Box::new(error))
    }
}

impl OneShotError {
    /// The error as a miette report, source snippets included where there are any.
    pub fn into_report(self) -> miette::Report {
        miette::Report::new(self)
    }
}

/// The AIMET file for a model's encodings.
pub fn aimet_encodings(encodings: &ModelEncodings, settings: &QuantizerSettings) -> AimetEncodings {
    let convert = |map: &std::collections::BTreeMap<String, crate::encoding::TensorEncoding>| {
        map.iter()
            .map(|(name, e)| (name.clone(), FixedEncoding::from(e)))
            .collect()
    };
    AimetEncodings {
        activations: convert(&encodings.activations),
        parameters: convert(&encodings.parameters),
        quantizer_args: QuantizerArgs::for_settings(settings),
    }
}

/// A fresh folder for the models set aside during calibration, removed when dropped: in the
/// system's temporary folder (`TMPDIR`), which then needs room for a copy of the weights.
fn scratch_folder() -> Result<tempfile::TempDir, OneShotError> {
    tempfile::Builder::new()
        .prefix("quant-calibration-")
        .tempdir()
        .map_err(|source| OneShotError::Scratch {
            folder: std::env::temp_dir(),
            source,
        })
}

/// Runs `work` on `jobs` threads (all cores when `None`).
fn in_pool<R: Send>(
    jobs: Option<usize>,
    work: impl FnOnce() -> R + Send,
) -> Result<R, OneShotError> {
    match jobs {
        Some(jobs) => Ok(rayon::ThreadPoolBuilder::new()
            .num_threads(jobs)
            .build()
            .map_err(|e| OneShotError::Usage(format!("cannot start {jobs} threads: {e}")))?
            .install(work)),
        None => Ok(work()),
    }
}

/// Bias correction: every layer's mean input patch measured over the calibration samples on
/// `model`, then each layer's bias corrected for the shift its own quantized weights cause.
fn correct_biases(
    job: &OneShot,
    model: &OnnxModel,
    graph: &Graph,
    overrides: &Overrides,
    list: &InputList,
    runner_dims: &[(String, Vec<usize>)],
) -> Result<(OnnxModel, TransformReport), OneShotError> {
    let failed = |source| OneShotError::Transform {
        model: job.model.clone(),
        source: Box::new(source),
    };
    let layers = crate::transform::bias_layers(model).map_err(failed)?;
    let runner =
        FloatRunner::for_model(model, runner_dims).map_err(|source| OneShotError::Run {
            model: job.model.clone(),
            source,
        })?;
    list.check(runner.input_specs())?;
    let names = runner.activation_names();
    let measure = |sample: &crate::calib::Sample| -> Result<Vec<Vec<f64>>, OneShotError> {
        let loaded = list.load(sample, runner.input_specs())?;
        let mut sums: Vec<Vec<f64>> = layers.iter().map(|l| vec![0.0; l.patch_len()]).collect();
        let mut problem = None;
        runner
            .run(&loaded.tensors, |index, data, shape| {
                for (layer, sums) in layers.iter().zip(&mut sums) {
                    if layer.input.as_str() == names[index]
                        && let Err(e) = layer.accumulate(data, shape, sums)
                    {
                        problem.get_or_insert((layer.output.to_string(), e));
                    }
                }
            })
            .map_err(|source| CalibrationError::Run {
                line: sample.line,
                source,
            })?;
        match problem {
            Some((layer, problem)) => Err(failed(TransformError::BiasMeans { layer, problem })),
            None => Ok(sums),
        }
    };
    // Summed in list order, a batch at a time: float addition in a fixed order gives the same
    // bits for any thread count, and a batch bounds the memory a long list takes.
    let mut totals: Vec<Vec<f64>> = layers.iter().map(|l| vec![0.0; l.patch_len()]).collect();
    for batch in list.samples.chunks(64) {
        let measured: Vec<Vec<Vec<f64>>> =
            batch.par_iter().map(measure).collect::<Result<_, _>>()?;
        for sample in measured {
            for (total, sums) in totals.iter_mut().zip(sample) {
                for (t, s) in total.iter_mut().zip(sums) {
                    *t += s;
                }
            }
        }
    }
    let samples = list.samples.len().max(1) as f64;
    let means: Vec<(crate::graph::TensorName, Vec<f64>)> = layers
        .iter()
        .zip(totals)
        .map(|(layer, mut total)| {
            total.iter_mut().for_each(|t| *t /= samples);
            (layer.output.clone(), total)
        })
        .collect();
    let quantized = quantizer::fake_quantized_weights(model, graph, overrides, &job.settings)?;
    let channel_means =
        crate::transform::channel_means(model, &quantized, &means).map_err(failed)?;
    crate::transform::correct_biases(model, &channel_means).map_err(failed)
}

/// The non-quantized model of `path` (input dims fixed as given): FP32 as it is, FP16 with every
/// op converted ([`crate::export::float::float16`]).
pub fn float_model(
    path: &std::path::Path,
    input_dims: &[(String, Vec<u64>)],
    bits: crate::encoding::FloatBitwidth,
    keep_io_types: bool,
) -> Result<OnnxModel, OneShotError> {
    let mut model = OnnxModel::read(path)?;
    for (name, dims) in input_dims {
        model.fix_input_dims(name, dims)?;
    }
    match bits {
        crate::encoding::FloatBitwidth::F32 => Ok(model),
        crate::encoding::FloatBitwidth::F16 => crate::export::float::float16(&model, keep_io_types)
            .map_err(|e| OneShotError::FloatModel {
                model: path.to_path_buf(),
                message: e.to_string(),
            }),
    }
}

/// Reads, calibrates and encodes. `progress(done, total)` is called after each sample.
pub fn quantize(
    job: &OneShot,
    progress: impl Fn(usize, usize) + Sync,
) -> Result<OneShotOutput, OneShotError> {
    let mut model = OnnxModel::read(&job.model)?;
    // Names first: a misspelt `--input_dim` is a usage error, not a problem with the model.
    let inputs: Vec<String> = Graph::from_model(&model)?
        .inputs()
        .iter()
        .map(|i| i.as_str().to_string())
        .collect();
    for (name, _) in &job.input_dims {
        if !inputs.iter().any(|i| i == name) {
            return Err(OneShotError::Usage(format!(
                "--input_dim names `{name}`, which is not an input of {} (inputs: {})",
                job.model.display(),
                inputs.join(", ")
            )));
        }
    }
    for (name, dims) in &job.input_dims {
        model.fix_input_dims(name, dims)?;
    }
    let transform_failed = |source| OneShotError::Transform {
        model: job.model.clone(),
        source: Box::new(source),
    };
    let mut transforms = TransformReport::default();
    // What overrides could name before CLE, so one naming a folded-away tensor is told so.
    let mut source_tensors = ModelTensors::default();
    if job.algorithms.cle {
        source_tensors = ModelTensors::of(&Graph::from_model(&model)?);
        let (equalized, report) =
            crate::transform::equalize(&model, &CleOptions::default()).map_err(transform_failed)?;
        model = equalized;
        transforms.events.extend(report.events);
    }
    let mut graph = Graph::from_model(&model)?;
    let mut warnings = Vec::new();
    let overrides = match &job.overrides {
        Some(path) => {
            let parsed = overrides::read(path)?;
            parsed.validate(&ModelTensors::of(&graph).removed_from(&source_tensors))?;
            parsed.validate_precision(&graph)?;
            warnings.extend(parsed.warnings.iter().map(|w| w.to_string()));
            parsed.overrides
        }
        None => Overrides::default(),
    };
    let settings = &job.settings;
    let runner_dims: Vec<(String, Vec<usize>)> = job
        .input_dims
        .iter()
        .map(|(name, dims)| (name.clone(), dims.iter().map(|&d| d as usize).collect()))
        .collect();
    let Some(input_list) = &job.input_list else {
        if job.algorithms.bias_correction || job.algorithms.adaround {
            return Err(OneShotError::Usage(
                "bias correction and AdaRound measure the model on calibration data: give \
                 --input_list, or drop them"
                    .into(),
            ));
        }
        let encodings = quantizer::encode_model_fallback(&graph, &overrides, settings)?;
        warnings.extend(quantizer::word_warnings(&encodings.warnings));
        return Ok(OneShotOutput {
            encodings: aimet_encodings(&encodings, settings),
            warnings,
            samples: 0,
            model,
            transforms,
            model_encodings: encodings,
            adaround: Vec::new(),
            adaround_time: std::time::Duration::ZERO,
        });
    };
    let list = InputList::read(input_list)?;
    if job.algorithms.bias_correction {
        let corrected = in_pool(job.jobs, || {
            correct_biases(job, &model, &graph, &overrides, &list, &runner_dims)
        })??;
        model = corrected.0;
        graph = Graph::from_model(&model)?;
        transforms.events.extend(corrected.1.events);
    }
    let mut adaround = Vec::new();
    let adaround_started = std::time::Instant::now();
    let mut adaround_time = std::time::Duration::ZERO;
    let overrides = if job.algorithms.adaround {
        job.adaround_names
            .check(&graph)
            .map_err(OneShotError::AdaroundConfig)?;
        warnings.extend(
            crate::adaround::ineffective_ignores(&job.adaround, &model, &graph)
                .map_err(transform_failed)?,
        );
        let done = AtomicUsize::new(0);
        let output = in_pool(job.jobs, || {
            super::adaround::adaround_model(
                &model,
                &overrides,
                settings,
                &job.adaround,
                &list,
                &runner_dims,
                &|_, total, _| progress(done.fetch_add(1, Ordering::Relaxed) + 1, total),
            )
        })?
        .map_err(|message| OneShotError::Adaround {
            model: job.model.clone(),
            message,
        })?;
        model = output.model;
        graph = Graph::from_model(&model)?;
        adaround = output.layers;
        adaround_time = adaround_started.elapsed();
        super::adaround::with_frozen(&overrides, &output.frozen)
    } else {
        overrides
    };
    let calibration_model = quantizer::calibration_model(&model, &graph, &overrides, settings)?;
    // While tract holds the weights, ours wait on disk: the graph (which shares the model's
    // buffer) goes, the model is set aside, and tract reads the weights one tensor at a time,
    // so the peak is about one copy of the weights, tract's, rather than one per form.
    drop(graph);
    let scratch = scratch_folder()?;
    let calibration_aside = calibration_model
        .map(|calibration| calibration.set_aside(&scratch.path().join("calibration")))
        .transpose()?;
    let aside = model.set_aside(&scratch.path().join("model"))?;
    let runtime_model = calibration_aside.as_ref().unwrap_or(&aside).runtime_model();
    let runner = FloatRunner::from_file(&runtime_model, &runner_dims).map_err(|source| {
        OneShotError::Run {
            model: job.model.clone(),
            source,
        }
    })?;
    list.check(runner.input_specs())?;

    let stats_settings = statistics_settings(settings);
    let total = list.samples.len();
    let done = AtomicUsize::new(0);
    let calibrate = || {
        list.samples
            .par_iter()
            .map(|sample| {
                let loaded = list.load(sample, runner.input_specs())?;
                let statistics = quantizer::sample_statistics(&runner, &loaded, stats_settings)?;
                progress(done.fetch_add(1, Ordering::Relaxed) + 1, total);
                let files: Vec<String> = sample
                    .files
                    .iter()
                    .map(|f| f.path.display().to_string())
                    .collect();
                let sample_warnings = quantizer::non_finite_inputs(
                    &format!("on line {} ({})", sample.line, files.join(" ")),
                    runner.input_specs().iter().map(|spec| spec.name.as_str()),
                    &loaded.non_finite,
                );
                Ok::<_, OneShotError>((statistics, sample_warnings))
            })
            // rayon's reduce combines neighbours only, so with an associative merge (and
            // concatenation) the result is the same for any thread count.
            .try_reduce(
                || {
                    (
                        SampleStatistics {
                            tensors: Vec::new(),
                        },
                        Vec::new(),
                    )
                },
                |(mut a, mut a_warnings), (b, b_warnings)| {
                    quantizer::merge_statistics(&mut a, &b);
                    a_warnings.extend(b_warnings);
                    Ok((a, a_warnings))
                },
            )
    };
    let (merged, sample_warnings) = in_pool(job.jobs, calibrate)??;
    let statistics: HashMap<String, _> = runner
        .activation_names()
        .iter()
        .cloned()
        .zip(merged.tensors)
        .collect();
    drop(runner);
    let model = aside.restore()?;
    let graph = Graph::from_model(&model)?;
    if let Some(placement) = crate::placement::placed(&graph, settings) {
        warnings.extend(placement.warnings);
    }
    let encodings = quantizer::encode_model(&graph, &statistics, &overrides, settings)?;
    warnings.extend(quantizer::word_warnings(
        sample_warnings.iter().chain(&encodings.warnings),
    ));
    Ok(OneShotOutput {
        encodings: aimet_encodings(&encodings, settings),
        warnings,
        samples: total,
        model,
        transforms,
        model_encodings: encodings,
        adaround,
        adaround_time,
    })
}
