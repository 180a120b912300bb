//! The report of an evaluation: `report.json` for machines, a terminal summary for people in a
//! hurry, and a static `report.html` for people who would rather look than read.
//!
//! Per tensor it shows the observed range (calibration statistics when the caller has them,
//! else the eval run's float values), the encoding, the fraction of float values outside the
//! encoding's `[min, max]`, the pooled SQNR and a 64-bin histogram of the float values with the
//! encoding range drawn over it; overall, float vs quantized top-1 and per-output SQNR.
//!
//! Output is deterministic: the same [`Evaluation`] gives the same bytes. The HTML is one file
//! with inline CSS, SVG and script: no server, no network.
//!
//! It must NOT run models or compute metrics: it renders what [`crate::eval`] measured.

mod html;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::encoding::TensorEncoding;
use crate::eval::{Evaluation, TensorMetrics};

/// Bins of each tensor's histogram in the report.
pub const REPORT_BINS: usize = 64;

/// How many tensors the terminal summary lists.
pub const SUMMARY_TENSORS: usize = 10;

/// What the report is about, beyond the numbers.
#[derive(Debug, Clone, Default)]
pub struct ReportContext {
    /// The target's name, when the report belongs to a manifest target.
    pub target: Option<String>,
    /// The model, as the user named it.
    pub model: String,
    /// The encodings file, as the user named it.
    pub encodings: Option<String>,
    /// The eval input list, as the user named it.
    pub input_list: String,
    /// The labels file, as the user named it.
    pub labels: Option<String>,
}

/// `report.json`, field for field.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Format tag, bumped on incompatible change.
    pub format: &'static str,
    /// The target, when there is one.
    pub target: Option<String>,
    /// The model.
    pub model: String,
    /// The encodings file.
    pub encodings: Option<String>,
    /// The eval input list.
    pub input_list: String,
    /// The labels file.
    pub labels: Option<String>,
    /// Samples evaluated.
    pub samples: usize,
    /// Whole-model metrics.
    pub metrics: Metrics,
    /// Per float activation, in graph order.
    pub tensors: Vec<TensorReport>,
}

/// Whole-model metrics.
#[derive(Debug, Clone, Serialize)]
pub struct Metrics {
    /// Top-1 on the first output, when labels were given.
    pub top1: Option<Top1>,
    /// Per model output.
    pub outputs: Vec<OutputReport>,
}

/// Float vs quantized top-1.
#[derive(Debug, Clone, Serialize)]
pub struct Top1 {
    /// The output argmax is taken over.
    pub output: String,
    /// Classes along its last axis.
    pub classes: usize,
    /// Labelled samples.
    pub samples: usize,
    /// Float model.
    pub float: Score,
    /// Quantized (QuantSim).
    pub quantized: Score,
}

/// Correct samples and their fraction.
#[derive(Debug, Clone, Serialize)]
pub struct Score {
    /// Samples whose argmax equals the label.
    pub correct: usize,
    /// `correct / samples`.
    pub accuracy: f64,
}

/// One model output's SQNR.
#[derive(Debug, Clone, Serialize)]
pub struct OutputReport {
    /// The output.
    pub name: String,
    /// Mean of the per-sample dB values (`null` when not finite).
    pub sqnr_db_mean: f64,
    /// Per sample, in list order (`null` for a sample without quantization noise).
    pub sqnr_db: Vec<f64>,
}

/// One activation tensor.
#[derive(Debug, Clone, Serialize)]
pub struct TensorReport {
    /// The ONNX name.
    pub name: String,
    /// Producer op type (`graph_input` for inputs).
    pub producer_op: String,
    /// Range of the values the encoding should cover.
    pub observed: Option<Observed>,
    /// The encoding simulated, `null` when the tensor stays float.
    pub encoding: Option<EncodingReport>,
    /// Fraction of the eval run's float values outside `[encoding.min, encoding.max]`.
    pub clipped_fraction: f64,
    /// Pooled SQNR of simulated vs float (`null` when there is no noise at all).
    pub sqnr_db: f64,
    /// Float values seen during eval.
    pub elements: u64,
    /// Whether the simulation could rewrite this tensor.
    pub simulated: bool,
    /// Histogram of the eval run's float values.
    pub histogram: Option<HistogramReport>,
}

/// Where an observed range comes from.
#[derive(Debug, Clone, Serialize)]
pub struct Observed {
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
    /// `calibration` or `eval`.
    pub source: &'static str,
}

/// An encoding as the report shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum EncodingReport {
    /// An integer grid.
    Integer {
        /// Bits.
        bitwidth: u32,
        /// Schema name.
        schema: &'static str,
        /// Step.
        scale: f64,
        /// AIMET offset.
        offset: i64,
        /// Smallest representable value.
        min: f64,
        /// Largest representable value.
        max: f64,
    },
    /// Kept float.
    Float {
        /// `"float"`.
        dtype: &'static str,
        /// 16 or 32.
        bitwidth: u32,
    },
}

/// [`REPORT_BINS`] equal bins over `[min, max]` (the exact float range), counting a strided
/// subsample of the values ([`crate::eval::HISTOGRAM_SAMPLE`] per tensor and sample at most).
#[derive(Debug, Clone, Serialize)]
pub struct HistogramReport {
    /// Left edge of the first bin.
    pub min: f64,
    /// Right edge of the last bin.
    pub max: f64,
    /// Values per bin.
    pub counts: Vec<u64>,
}

fn encoding_report(encoding: &TensorEncoding) -> Option<EncodingReport> {
    match encoding {
        TensorEncoding::PerTensor(e) => Some(EncodingReport::Integer {
            bitwidth: e.bitwidth.bits(),
            schema: e.schema.as_str(),
            scale: e.scale,
            offset: e.offset,
            min: e.min,
            max: e.max,
        }),
        TensorEncoding::Float { bitwidth } => Some(EncodingReport::Float {
            dtype: "float",
            bitwidth: bitwidth.bits(),
        }),
        TensorEncoding::PerChannel { .. } => None,
    }
}

/// Rebins the exact histogram into [`REPORT_BINS`] equal bins over its own range; each source
/// bin goes whole to the report bin holding its midpoint.
fn histogram_report(metrics: &TensorMetrics) -> Option<HistogramReport> {
    let h = &metrics.histogram;
    h.range()?;
    let (lo, hi) = metrics.range.range()?;
    let (lo, hi) = (f64::from(lo), f64::from(hi));
    let mut counts = vec![0u64; REPORT_BINS];
    let width = hi - lo;
    for (k, &count) in h.counts().iter().enumerate() {
        if count == 0 {
            continue;
        }
        let bin = if width > 0.0 {
            let (left, right) = h.bin_edges(k);
            let mid = ((left + right) / 2.0).clamp(lo, hi);
            (((mid - lo) / width) * REPORT_BINS as f64) as usize
        } else {
            0
        };
        counts[bin.min(REPORT_BINS - 1)] += count;
    }
    Some(HistogramReport {
        min: lo,
        max: hi,
        counts,
    })
}

impl Report {
    /// The report of `evaluation`. `calibration` gives each tensor's calibration range when the
    /// caller has it; tensors without one show the eval run's float range.
    pub fn new(
        evaluation: &Evaluation,
        context: &ReportContext,
        calibration: Option<&BTreeMap<String, (f64, f64)>>,
    ) -> Report {
        let top1 = evaluation.accuracy.map(|acc| Top1 {
            output: evaluation
                .outputs
                .first()
                .map(|o| o.name.clone())
                .unwrap_or_default(),
            classes: acc.classes,
            samples: acc.samples,
            float: Score {
                correct: acc.float_correct,
                accuracy: acc.float_top1(),
            },
            quantized: Score {
                correct: acc.quantized_correct,
                accuracy: acc.quantized_top1(),
            },
        });
        let outputs = evaluation
            .outputs
            .iter()
            .map(|o| OutputReport {
                name: o.name.clone(),
                sqnr_db_mean: o.mean_sqnr_db(),
                sqnr_db: o.sqnr_db.clone(),
            })
            .collect();
        let tensors = evaluation
            .tensors
            .iter()
            .map(|t| {
                let observed = match calibration.and_then(|c| c.get(&t.name)) {
                    Some(&(min, max)) => Some(Observed {
                        min,
                        max,
                        source: "calibration",
                    }),
                    None => t.range.range().map(|(min, max)| Observed {
                        min: f64::from(min),
                        max: f64::from(max),
                        source: "eval",
                    }),
                };
                TensorReport {
                    name: t.name.clone(),
                    producer_op: t.producer_op.clone(),
                    observed,
                    encoding: t.encoding.as_ref().and_then(encoding_report),
                    clipped_fraction: t.clipped_fraction(),
                    sqnr_db: t.sqnr_db(),
                    elements: t.elements,
                    simulated: t.simulated,
                    histogram: histogram_report(t),
                }
            })
            .collect();
        Report {
            format: "quant-report/1",
            target: context.target.clone(),
            model: context.model.clone(),
            encodings: context.encodings.clone(),
            input_list: context.input_list.clone(),
            labels: context.labels.clone(),
            samples: evaluation.samples,
            metrics: Metrics { top1, outputs },
            tensors,
        }
    }

    /// `report.json` text (non-finite numbers become `null`).
    pub fn to_json(&self) -> String {
        let mut text = serde_json::to_string_pretty(self).unwrap_or_default();
        text.push('\n');
        text
    }

    /// Tensor indices, worst SQNR first; tensors without a finite SQNR (no noise) go last, and
    /// ties keep graph order.
    pub fn worst_tensors(&self) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.tensors.len()).collect();
        let key = |i: &usize| {
            let s = self.tensors[*i].sqnr_db;
            if s.is_nan() { f64::INFINITY } else { s }
        };
        order.sort_by(|a, b| key(a).total_cmp(&key(b)));
        order
    }

    /// The terminal summary: overall metrics, then the [`SUMMARY_TENSORS`] worst tensors.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "{} on {} samples", self.model, self.samples);
        if let Some(top1) = &self.metrics.top1 {
            let _ = writeln!(
                out,
                "  top-1 ({}, {} classes): float {:.2}% ({}/{}), quantized {:.2}% ({}/{}), {:+.2} points",
                top1.output,
                top1.classes,
                100.0 * top1.float.accuracy,
                top1.float.correct,
                top1.samples,
                100.0 * top1.quantized.accuracy,
                top1.quantized.correct,
                top1.samples,
                100.0 * (top1.quantized.accuracy - top1.float.accuracy)
            );
        }
        for output in &self.metrics.outputs {
            let (low, high) = output
                .sqnr_db
                .iter()
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), &v| {
                    (l.min(v), h.max(v))
                });
            let _ = writeln!(
                out,
                "  output SQNR {}: mean {} over samples (min {}, max {})",
                output.name,
                db(output.sqnr_db_mean),
                db(low),
                db(high)
            );
        }
        let _ = writeln!(
            out,
            "Worst {} of {} tensors by SQNR:",
            SUMMARY_TENSORS.min(self.tensors.len()),
            self.tensors.len()
        );
        let _ = writeln!(
            out,
            "  {:>9}  {:>8}  {:<26}  tensor (op)",
            "SQNR", "clipped", "encoding [min, max] bits"
        );
        for &i in self.worst_tensors().iter().take(SUMMARY_TENSORS) {
            let t = &self.tensors[i];
            let encoding = match &t.encoding {
                Some(EncodingReport::Integer {
                    bitwidth, min, max, ..
                }) => format!("[{}, {}] {bitwidth}", short(*min), short(*max)),
                Some(EncodingReport::Float { bitwidth, .. }) => format!("float{bitwidth}"),
                None => "float (none)".to_string(),
            };
            let _ = writeln!(
                out,
                "  {:>9}  {:>7.3}%  {:<26}  {} ({})",
                db(t.sqnr_db),
                100.0 * t.clipped_fraction,
                encoding,
                t.name,
                t.producer_op
            );
        }
        out
    }

    /// The self-contained `report.html`.
    pub fn to_html(&self) -> String {
        html::render(self)
    }

    /// Writes `report.json` and `report.html` into `dir` (created if missing), each atomically
    /// ([`crate::atomic::write`]), so a reader never sees half a report.
    pub fn write(&self, dir: &Path) -> std::io::Result<(PathBuf, PathBuf)> {
        std::fs::create_dir_all(dir)?;
        let json = dir.join("report.json");
        let html = dir.join("report.html");
        crate::atomic::write(&json, self.to_json().as_bytes())?;
        crate::atomic::write(&html, self.to_html().as_bytes())?;
        Ok((json, html))
    }
}

/// A dB value for people: one decimal, `inf` when there is no noise.
pub fn db(value: f64) -> String {
    if value.is_nan() {
        "n/a".to_string()
    } else if value.is_infinite() {
        if value > 0.0 { "inf dB" } else { "-inf dB" }.to_string()
    } else {
        format!("{value:.2} dB")
    }
}

/// A range bound in four significant digits.
fn short(value: f64) -> String {
    if value == 0.0 {
        "0".to_string()
    } else if value.abs() >= 1e4 || value.abs() < 1e-3 {
        format!("{value:.3e}")
    } else {
        let digits = (3 - value.abs().log10().floor() as i32).max(0) as usize;
        format!("{value:.digits$}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{Histogram, MinMax};

    fn metrics(name: &str, values: &[f32], noise: f64) -> TensorMetrics {
        let mut histogram = Histogram::new();
        histogram.observe(values);
        let mut range = MinMax::new();
        range.observe(values);
        TensorMetrics {
            name: name.to_string(),
            producer_op: "Conv".to_string(),
            encoding: None,
            signal: values.iter().map(|&x| f64::from(x * x)).sum(),
            noise,
            elements: values.len() as u64,
            clipped: 0,
            range,
            histogram,
            simulated: true,
        }
    }

    #[test]
    fn rebinned_histogram_keeps_every_value_and_the_range() {
        let values: Vec<f32> = (0..1000).map(|i| i as f32 / 10.0 - 20.0).collect();
        let h = histogram_report(&metrics("t", &values, 1.0)).unwrap();
        assert_eq!(h.counts.iter().sum::<u64>(), 1000);
        assert_eq!((h.min, h.max), (-20.0, f64::from(79.9f32)));
        // Uniform data: every bin gets about 1000/64 values.
        assert!(
            h.counts.iter().all(|&c| (10..=22).contains(&c)),
            "{:?}",
            h.counts
        );
    }

    #[test]
    fn worst_tensors_put_noiseless_ones_last() {
        let evaluation = Evaluation {
            samples: 1,
            outputs: Vec::new(),
            accuracy: None,
            tensors: vec![
                metrics("exact", &[1.0, 2.0], 0.0),
                metrics("bad", &[1.0, 2.0], 1.0),
                metrics("good", &[1.0, 2.0], 0.001),
            ],
        };
        let report = Report::new(&evaluation, &ReportContext::default(), None);
        let names: Vec<&str> = report
            .worst_tensors()
            .iter()
            .map(|&i| report.tensors[i].name.as_str())
            .collect();
        assert_eq!(names, ["bad", "good", "exact"]);
        assert!(report.to_json().contains("\"sqnr_db\": null"));
    }

    #[test]
    fn short_numbers() {
        assert_eq!(short(0.0), "0");
        assert_eq!(short(1.5), "1.500");
        assert_eq!(short(-123.456), "-123.5");
        assert_eq!(short(0.0001234), "1.234e-4");
    }
}
