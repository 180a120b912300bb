//! Why a unit rebuilt: a small record of what each unit's last build read and produced, kept in
//! the store, and the comparison of the current build against it (cargo's `DirtyReason`, for
//! `quant build --explain`).
//!
//! The record is keyed by the unit's names (pipeline, target, model), holds only content
//! digests, and is never used to decide what to compute — salsa and the content-keyed store
//! do that — only to tell the user which edit caused the work they saw. A missing or stale
//! record makes an explanation vaguer, never a build wrong. This module must not print.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::cache::BUILD_RECORD;
use crate::store::KeyBuilder;

/// What one unit's build read (input label → content digest, `missing` when unreadable) and
/// produced (tensor → encoding digest). Labels are paths relative to the manifest's folder.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildRecord {
    /// Input files.
    pub inputs: BTreeMap<String, String>,
    /// Encodings by tensor.
    pub encodings: BTreeMap<String, String>,
}

/// The store key of a unit's record.
pub fn record_key(pipeline: &str, target: &str, model: &str) -> crate::store::Digest {
    KeyBuilder::new(BUILD_RECORD)
        .str("pipeline", pipeline)
        .str("target", target)
        .str("model", model)
        .finish()
}

/// How one input differs from the last build.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum InputChange {
    /// Read now, not last time.
    Added(String),
    /// Read last time, not now.
    Removed(String),
    /// Read both times, different contents.
    Changed(String),
}

impl std::fmt::Display for InputChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InputChange::Added(label) => write!(f, "{label} added"),
            InputChange::Removed(label) => write!(f, "{label} removed"),
            InputChange::Changed(label) => write!(f, "{label} changed"),
        }
    }
}

/// Why a unit's build did what it did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Explanation {
    /// No record of an earlier build was found (first build, another store, or gc).
    pub first_build: bool,
    /// Inputs that differ from the last build, sorted.
    pub changes: Vec<InputChange>,
    /// Tensors whose encoding was computed (not reused) in this build, in computing order.
    pub tensors_encoded: Vec<String>,
    /// Samples run (not reused) by the calibration this unit uses, each as its files.
    pub samples_run: Vec<Vec<String>>,
    /// AdaRound layers (named by their output tensor) this unit optimized rather than took
    /// from the store, sorted: which they are follows from what changed upstream of them.
    pub layers_optimized: Vec<String>,
    /// Tensors whose encoding differs from the last build's, sorted.
    pub encodings_changed: Vec<String>,
}

/// Compares this build's record with the previous one.
pub fn compare(previous: Option<&BuildRecord>, current: &BuildRecord) -> Explanation {
    let Some(previous) = previous else {
        return Explanation {
            first_build: true,
            ..Explanation::default()
        };
    };
    let mut changes = Vec::new();
    for (label, digest) in &current.inputs {
        match previous.inputs.get(label) {
            None => changes.push(InputChange::Added(label.clone())),
            Some(old) if old != digest => changes.push(InputChange::Changed(label.clone())),
            Some(_) => {}
        }
    }
    for label in previous.inputs.keys() {
        if !current.inputs.contains_key(label) {
            changes.push(InputChange::Removed(label.clone()));
        }
    }
    changes.sort();
    let encodings_changed = current
        .encodings
        .iter()
        .filter(|(name, digest)| previous.encodings.get(*name) != Some(*digest))
        .map(|(name, _)| name.clone())
        .chain(
            previous
                .encodings
                .keys()
                .filter(|name| !current.encodings.contains_key(*name))
                .cloned(),
        )
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    Explanation {
        first_build: false,
        changes,
        tensors_encoded: Vec::new(),
        samples_run: Vec::new(),
        layers_optimized: Vec::new(),
        encodings_changed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(inputs: &[(&str, &str)], encodings: &[(&str, &str)]) -> BuildRecord {
        BuildRecord {
            inputs: inputs
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
            encodings: encodings
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
        }
    }

    #[test]
    fn changes_are_classified_and_sorted() {
        let old = record(
            &[
                ("quant.toml", "1"),
                ("overrides/head.json", "2"),
                ("calib/0.raw", "3"),
            ],
            &[("a", "x"), ("b", "y")],
        );
        let new = record(
            &[
                ("quant.toml", "1"),
                ("overrides/head.json", "9"),
                ("calib/1.raw", "4"),
            ],
            &[("a", "x"), ("b", "z"), ("c", "w")],
        );
        let explanation = compare(Some(&old), &new);
        assert!(!explanation.first_build);
        assert_eq!(
            explanation.changes,
            vec![
                InputChange::Added("calib/1.raw".into()),
                InputChange::Removed("calib/0.raw".into()),
                InputChange::Changed("overrides/head.json".into()),
            ]
        );
        assert_eq!(explanation.encodings_changed, vec!["b", "c"]);
    }

    #[test]
    fn no_record_means_first_build() {
        let explanation = compare(None, &BuildRecord::default());
        assert!(explanation.first_build);
        assert!(explanation.changes.is_empty());
    }
}
