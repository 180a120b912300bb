//! The manifest at its boundary: broken manifests and their rendered diagnostics (snapshots),
//! good manifests and the typed values they resolve to, and monorepo discovery.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use quant::encoding::{Bitwidth, Schema};
use quant::manifest::{
    self, Backend, CalibrationMethod, EncodingVersion, FileCheck, FloatBitwidth, ManifestError,
    Percentile, Precision, Quantization, QuantizerSettings, ResolvedTarget,
};

fn render(error: &ManifestError) -> String {
    let mut out = String::new();
    miette::GraphicalReportHandler::new_themed(miette::GraphicalTheme::unicode_nocolor())
        .render_report(&mut out, error)
        .unwrap();
    out
}

/// Every `tests/manifests/broken/NN-name.toml` fails with the diagnostic in its snapshot.
#[test]
fn broken_manifests_render_their_diagnostics() {
    let dir = Path::new("tests/manifests/broken");
    let mut cases: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    cases.sort();
    assert!(
        cases.len() >= 15,
        "the catalogue has {} manifests",
        cases.len()
    );
    for case in cases {
        let error = match manifest::load(&case) {
            Ok(pipeline) => panic!("{} resolved: {pipeline:?}", case.display()),
            Err(error) => error,
        };
        assert!(!error.problems().is_empty(), "{}: {error}", case.display());
        for problem in error.problems() {
            assert!(
                problem.help().is_some(),
                "{}: `{problem}` has no help line",
                case.display()
            );
        }
        let name = case.file_stem().unwrap().to_string_lossy().into_owned();
        insta::assert_snapshot!(name, render(&error));
    }
}

fn good_root() -> PathBuf {
    std::path::absolute("tests/manifests/good").unwrap()
}

fn htp_settings() -> QuantizerSettings {
    QuantizerSettings {
        act_bitwidth: Bitwidth::B8,
        weights_bitwidth: Bitwidth::B8,
        bias_bitwidth: Bitwidth::B32,
        float_bitwidth: None,
        act_calibration: CalibrationMethod::Sqnr,
        param_calibration: CalibrationMethod::MinMax,
        act_schema: Schema::Asymmetric,
        param_schema: Schema::Symmetric,
        percentile: Percentile::default(),
        per_channel: true,
        per_row: false,
        calibrate_with_quantized_weights: false,
        float_bias_bitwidth: Default::default(),
        quantsim_config: Default::default(),
    }
}

fn htp_quantization(settings: QuantizerSettings) -> Quantization {
    Quantization {
        calibration: Some("textlines".into()),
        overrides: vec!["head".into()],
        ignore_quantization_overrides: false,
        algorithms: Default::default(),
        adaround: Default::default(),
        settings,
    }
}

#[test]
fn good_manifest_resolves_paths_and_sets() {
    let pipeline = manifest::load(Path::new("tests/manifests/good")).unwrap();
    let root = good_root();
    assert_eq!(pipeline.manifest_path, root.join("quant.toml"));
    assert_eq!(pipeline.root, root);
    assert_eq!(pipeline.name, "text-orientation");
    assert_eq!(pipeline.out_dir, root.join("build/quant"));
    assert_eq!(pipeline.encoding_version, EncodingVersion::V1_0_0);
    assert_eq!(pipeline.models.keys().collect::<Vec<_>>(), ["cls", "det"]);
    let cls = &pipeline.models["cls"];
    assert_eq!(cls.path, root.join("models/cls.onnx"));
    assert_eq!(
        cls.input_dims,
        BTreeMap::from([("x".to_string(), vec![1, 3, 48, 192])])
    );
    assert!(pipeline.models["det"].input_dims.is_empty());
    assert_eq!(
        pipeline.calibration["textlines"].input_list,
        root.join("calib/input_list.txt")
    );
    assert_eq!(
        pipeline.overrides["head"].path,
        root.join("overrides/head.json")
    );
    assert_eq!(
        pipeline.eval["textlines"].labels,
        Some(root.join("eval/labels.txt"))
    );
    assert_eq!(
        pipeline.targets.keys().collect::<Vec<_>>(),
        ["cpu", "dsp", "gpu", "htp", "htp-a16", "htp-a16-enhanced"]
    );
}

#[test]
fn good_manifest_applies_aliases_defaults_and_extends_chains() {
    let pipeline = manifest::load(Path::new("tests/manifests/good")).unwrap();
    let t = &pipeline.targets;
    assert_eq!(
        t["htp"],
        ResolvedTarget {
            name: "htp".into(),
            backend: Backend::Htp,
            models: vec!["cls".into()],
            evaluate: Some("textlines".into()),
            extends: vec![],
            precision: Precision::Quantized(htp_quantization(htp_settings())),
        }
    );
    let a16 = QuantizerSettings {
        act_bitwidth: Bitwidth::B16,
        float_bitwidth: Some(FloatBitwidth::F16),
        ..htp_settings()
    };
    assert_eq!(
        t["htp-a16"],
        ResolvedTarget {
            name: "htp-a16".into(),
            extends: vec!["htp".into()],
            precision: Precision::Quantized(htp_quantization(a16.clone())),
            ..t["htp"].clone()
        }
    );
    // A legacy quantizer on the child replaces both the inherited calibration and schema.
    assert_eq!(
        t["htp-a16-enhanced"],
        ResolvedTarget {
            name: "htp-a16-enhanced".into(),
            extends: vec!["htp-a16".into(), "htp".into()],
            precision: Precision::Quantized(htp_quantization(QuantizerSettings {
                param_calibration: CalibrationMethod::Sqnr,
                param_schema: Schema::Asymmetric,
                ..a16
            })),
            ..t["htp"].clone()
        }
    );
    assert_eq!(
        t["dsp"],
        ResolvedTarget {
            name: "dsp".into(),
            backend: Backend::Dsp,
            models: vec!["cls".into(), "det".into()],
            evaluate: None,
            extends: vec![],
            precision: Precision::Quantized(Quantization {
                calibration: Some("textlines".into()),
                overrides: vec![],
                ignore_quantization_overrides: false,
                algorithms: Default::default(),
                adaround: Default::default(),
                settings: QuantizerSettings {
                    act_bitwidth: Bitwidth::B8,
                    weights_bitwidth: Bitwidth::B8,
                    bias_bitwidth: Bitwidth::B8,
                    float_bitwidth: None,
                    act_calibration: CalibrationMethod::Percentile,
                    param_calibration: CalibrationMethod::MinMax,
                    act_schema: Schema::Asymmetric,
                    param_schema: Schema::Asymmetric,
                    percentile: Percentile::new(99.9).unwrap(),
                    per_channel: false,
                    per_row: false,
                    calibrate_with_quantized_weights: false,
                    float_bias_bitwidth: Default::default(),
                    quantsim_config: Default::default(),
                },
            }),
        }
    );
    assert_eq!(
        t["gpu"].precision,
        Precision::Float {
            float_bitwidth: FloatBitwidth::F16,
            keep_io_types: true,
        }
    );
    assert_eq!(t["gpu"].evaluate.as_deref(), Some("textlines"));
    assert_eq!(
        t["cpu"].precision,
        Precision::Float {
            float_bitwidth: FloatBitwidth::F32,
            keep_io_types: true,
        }
    );
    assert_eq!(t["cpu"].models, ["cls", "det"]);
}

#[test]
fn minimal_manifest_takes_every_default() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("orientation");
    let text = "[models.cls]\npath = \"cls.onnx\"\n\n[calibration.c]\ninput_list = \"list.txt\"\n\n\
                [targets.htp]\nbackend = \"htp\"\ncalibration = \"c\"\n";
    let pipeline =
        manifest::resolve_text(text, &folder.join("quant.toml"), FileCheck::Skip).unwrap();
    assert_eq!(pipeline.name, "orientation");
    assert_eq!(pipeline.out_dir, folder.join("quant-out"));
    assert_eq!(pipeline.encoding_version, EncodingVersion::V0_6_1);
    let settings = pipeline.targets["htp"].quantizer().unwrap();
    assert_eq!(
        (
            settings.act_bitwidth,
            settings.weights_bitwidth,
            settings.bias_bitwidth
        ),
        (Bitwidth::B8, Bitwidth::B8, Bitwidth::B8)
    );
    assert_eq!(settings.act_calibration, CalibrationMethod::MinMax);
    assert_eq!(settings.param_schema, Schema::Asymmetric);
    assert_eq!(settings.percentile.value(), 99.99);
    assert!(!settings.calibrate_with_quantized_weights);
    // FileCheck::Skip resolved the paths without requiring the files.
    assert_eq!(pipeline.models["cls"].path, folder.join("cls.onnx"));
    // ... and FileCheck::Exists reports each of them.
    let error =
        manifest::resolve_text(text, &folder.join("quant.toml"), FileCheck::Exists).unwrap_err();
    let codes: Vec<_> = error.problems().iter().map(|p| p.code()).collect();
    assert_eq!(codes, ["quant::manifest::missing_file"; 2]);
}

#[test]
fn every_problem_of_a_manifest_is_reported_in_file_order() {
    // A bad key in a table (`pth`) is reported once, not again as a missing `path`.
    let text = "[targets.a]\nbackend = \"gpu\"\nact_bw = 8\n\n[targets.b]\nbackend = \"htp\"\n\n\
                [models.m]\npth = \"m.onnx\"\n";
    let error = manifest::resolve_text(text, Path::new("quant.toml"), FileCheck::Skip).unwrap_err();
    let messages: Vec<_> = error
        .problems()
        .iter()
        .map(|p| p.message().to_string())
        .collect();
    assert_eq!(
        messages,
        [
            "target `a` runs on gpu, which runs float models, but sets quantization options",
            "target `b` runs on htp, which needs a quantized model, but has no `calibration`",
            "unknown key `pth` in [models.m]",
        ]
    );
}

fn touch(path: &Path, text: &str) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
}

fn relative(root: &Path, found: Vec<PathBuf>) -> Vec<String> {
    found
        .iter()
        .map(|p| {
            p.strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/")
        })
        .collect()
}

#[test]
fn discovery_walks_below_root_skipping_outputs_caches_and_ignored_folders() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    for kept in ["a", "b/c", "d", "notes"] {
        touch(&root.join(kept).join("quant.toml"), "");
    }
    touch(
        &root.join("d/quant.toml"),
        "[pipeline]\nout_dir = \"build\"\n",
    );
    for skipped in [
        ".git/x",
        "target/debug",
        "a/quant-out/htp",
        "b/.quant/objects",
        "d/build/e",
        "scratch/tmp",
        "b/c/old-v1",
        "notes/draft",
    ] {
        touch(&root.join(skipped).join("quant.toml"), "");
    }
    touch(
        &root.join(".gitignore"),
        "# local\nscratch/\n/notes/draft\n",
    );
    touch(&root.join("b/.gitignore"), "old-*\n");
    let found = relative(root, manifest::discover(root).unwrap());
    assert_eq!(
        found,
        [
            "a/quant.toml",
            "b/c/quant.toml",
            "d/quant.toml",
            "notes/quant.toml"
        ]
    );
    // A manifest path is its own discovery.
    assert_eq!(
        manifest::discover(&root.join("a/quant.toml")).unwrap(),
        [root.join("a/quant.toml")]
    );
}

#[test]
fn discovery_follows_workspace_members() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    touch(
        &root.join("quant.toml"),
        "[workspace]\nmembers = [\"models/*\", \"tools/one\"]\n",
    );
    for member in ["models/m1", "models/m2", "tools/one", "other"] {
        touch(&root.join(member).join("quant.toml"), "");
    }
    fs::create_dir_all(root.join("models/no-manifest")).unwrap();
    let found = relative(root, manifest::discover(root).unwrap());
    assert_eq!(
        found,
        [
            "models/m1/quant.toml",
            "models/m2/quant.toml",
            "tools/one/quant.toml"
        ]
    );

    // A root that declares targets itself is built along with its members.
    touch(
        &root.join("quant.toml"),
        "[workspace]\nmembers = [\"tools/*\"]\n\n[targets.cpu]\nbackend = \"cpu\"\n",
    );
    let found = relative(root, manifest::discover(root).unwrap());
    assert_eq!(found, ["quant.toml", "tools/one/quant.toml"]);

    touch(
        &root.join("quant.toml"),
        "[workspace]\nmembers = [\"model/*\"]\n",
    );
    let error = manifest::discover(root).unwrap_err();
    assert_eq!(error.problems()[0].code(), "quant::manifest::workspace");
    assert_eq!(
        error.to_string(),
        "workspace member `model/*` matches no folder with a quant.toml"
    );
}
