//! The work log: what a build's queries actually computed (store misses), and the store
//! problems they met. A side channel outside salsa's dependency tracking on purpose: what it
//! records is *that* something ran, which is exactly what memoization hides.

use std::sync::{Arc, Mutex, PoisonError};

use crate::store::Corruption;

/// One sample that was run through the float model (a store miss).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SampleRun {
    /// The sample's files, as diagnostics show them.
    pub files: Vec<String>,
}

/// One tensor whose encoding was computed (a store miss).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorRun {
    /// `[pipeline] name` of the manifest.
    pub pipeline: String,
    /// The target.
    pub target: String,
    /// The model.
    pub model: String,
    /// The tensor.
    pub tensor: String,
}

/// What the queries of a build actually computed, and the store problems they met.
#[derive(Debug, Clone, Default)]
pub struct WorkRecord {
    /// Samples run, in completion order.
    pub samples_run: Vec<SampleRun>,
    /// Tensors encoded, in completion order.
    pub tensors_encoded: Vec<TensorRun>,
    /// Store entries that failed verification (they were recomputed).
    pub corruptions: Vec<Corruption>,
    /// Store reads or writes that failed for another reason (the build went on without them).
    pub store_errors: Vec<String>,
    /// Units evaluated (a store miss), as `pipeline/target/model`.
    pub evaluations_run: Vec<String>,
    /// Eval samples those evaluations ran through the float model and the simulation.
    pub eval_samples_run: usize,
    /// Eval samples served from their traces (reused, or terminal tensors re-quantized).
    pub eval_samples_reused: usize,
    /// Model transforms computed (a store miss), as `transform model-path`.
    pub transforms_run: Vec<String>,
    /// Layers AdaRound optimized (a store miss), as `pipeline/target/model layer`.
    pub layers_optimized: Vec<String>,
}

/// A shared, append-only [`WorkRecord`]: the side channel through which queries report work.
///
/// It sits outside salsa's dependency tracking on purpose: what it records is *that* something
/// ran, which is exactly what memoization hides.
#[derive(Debug, Clone, Default)]
pub struct WorkLog(Arc<Mutex<WorkRecord>>);

impl WorkLog {
    pub(super) fn with<R>(&self, f: impl FnOnce(&mut WorkRecord) -> R) -> R {
        f(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Removes and returns everything recorded so far.
    pub fn take(&self) -> WorkRecord {
        self.with(std::mem::take)
    }

    /// Adds another record's entries.
    pub fn append(&self, other: WorkRecord) {
        self.with(|r| {
            r.samples_run.extend(other.samples_run);
            r.tensors_encoded.extend(other.tensors_encoded);
            r.corruptions.extend(other.corruptions);
            r.store_errors.extend(other.store_errors);
            r.transforms_run.extend(other.transforms_run);
            r.layers_optimized.extend(other.layers_optimized);
            r.evaluations_run.extend(other.evaluations_run);
            r.eval_samples_run += other.eval_samples_run;
            r.eval_samples_reused += other.eval_samples_reused;
        });
    }

    /// Whether two handles share one record.
    pub fn same_as(&self, other: &WorkLog) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}
