//! Embedding the incremental build engine: load a manifest, build it, edit an override in
//! memory, build again, and see what the edit recomputed and what it changed.
//!
//! This is what `quant watch` does around a file watcher, and what an editor plugin or a tuning
//! loop would do around its own edits: one [`Database`] lives across builds, so the second
//! build re-encodes only the tensor the edit touched (and re-evaluates only what that tensor
//! reaches), and the store makes even a fresh process skip everything unchanged.
//!
//! The bundled example pipeline is copied to a temporary folder first, so that its outputs and
//! its store land there and not in the source tree.
//!
//! Run with `cargo run --example embed_engine`.

use std::error::Error;
use std::fs;
use std::path::Path;

use quant::engine::{
    self, BuildContext, BuildOptions, BuildReport, Database, ProjectSpec, WorkLog,
};
use quant::store::Store;

/// The tensor the edit pins: the classifier's softmax output.
const TENSOR: &str = "save_infer_model/scale_0.tmp_1";

fn main() -> Result<(), Box<dyn Error>> {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/text-orientation");
    let scratch = tempfile::tempdir()?;
    let root = scratch.path().join("text-orientation");
    copy_tree(&example, &root)?;

    // One database for the whole session; the store carries results to other processes.
    let db = Database::new();
    let store = Store::open(root.join(".quant"))?;
    let context = BuildContext::new(&db, Some(store), WorkLog::default());
    let project = ProjectSpec {
        manifest: root.join("quant.toml"),
        shown_as: "quant.toml".to_string(),
        context,
    };
    // Only the 8-bit HTP target: it is calibrated and evaluated, which is what an edit affects.
    let options = BuildOptions {
        targets: vec!["htp".to_string()],
        ..BuildOptions::default()
    };

    let first = engine::build(&db, std::slice::from_ref(&project), &options, &|_| {});
    describe("first build", &first)?;

    // The edit: the output's range pinned to [0, 0.5] instead of [0, 1], given in memory (the
    // file on disk keeps its contents), as an editor's unsaved buffer would be.
    let overrides = root.join("overrides/head.json");
    let edited = format!(
        r#"{{"activation_encodings": {{"{TENSOR}": [{{"bitwidth": 8, "dtype": "int", "is_symmetric": "False", "max": 0.5, "min": 0.0}}]}}, "param_encodings": {{}}}}"#
    );
    let mut db = db;
    let (_, changed) = db.set_contents(&overrides, edited.as_bytes());
    println!("\nedited {} in memory (input changed: {changed})", TENSOR);

    let second = engine::build(&db, std::slice::from_ref(&project), &options, &|_| {});
    describe("rebuild", &second)?;

    // What the edit did to each unit's encodings and accuracy.
    for (before, after) in first.units.iter().zip(&second.units) {
        let (Ok(before), Ok(after)) = (&before.result, &after.result) else {
            continue;
        };
        let changed: Vec<&String> = after
            .encodings
            .activations
            .iter()
            .chain(&after.encodings.parameters)
            .filter(|(name, encoding)| {
                before.encodings.activations.get(*name) != Some(encoding)
                    && before.encodings.parameters.get(*name) != Some(encoding)
            })
            .map(|(name, _)| name)
            .collect();
        println!("encodings changed: {changed:?}");
        if let (Some(b), Some(a)) = (&before.evaluation, &after.evaluation) {
            let (b, a) = (b.headline(), a.headline());
            println!(
                "top-1 {} → {}, mean output SQNR {:.2} → {:.2} dB",
                b["top1_quantized"],
                a["top1_quantized"],
                b["output_sqnr_db_mean"].as_f64().unwrap_or(f64::NAN),
                a["output_sqnr_db_mean"].as_f64().unwrap_or(f64::NAN),
            );
        }
    }
    Ok(())
}

/// Prints what a build did, or its first error.
fn describe(what: &str, report: &BuildReport) -> Result<(), Box<dyn Error>> {
    if let Some(error) = report.errors().next() {
        return Err(format!("{what} failed: {error}").into());
    }
    let c = &report.counts;
    println!(
        "{what}: {} ms; samples run {}, reused {}; tensors encoded {}, reused {}; \
         eval samples run {}, reused {}; files written {}",
        report.wall_ms,
        c.samples_run,
        c.samples_reused,
        c.tensors_encoded,
        c.tensors_reused,
        c.eval_samples_run,
        c.eval_samples_reused,
        c.artifacts_written,
    );
    Ok(())
}

/// Copies the pipeline's files (not its outputs or store).
fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    for entry in walkdir::WalkDir::new(from) {
        let entry = entry?;
        let relative = entry.path().strip_prefix(from).unwrap_or(entry.path());
        if relative.starts_with("quant-out") || relative.starts_with(".quant") {
            continue;
        }
        let target = to.join(relative);
        if entry.file_type().is_dir() {
            fs::create_dir_all(&target)?;
        } else {
            // Written fresh: the shipped samples are read-only, and copies need not be.
            fs::write(&target, fs::read(entry.path())?)?;
        }
    }
    Ok(())
}
