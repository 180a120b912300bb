//! The incremental build through the real binary, on a copy of the bundled example pipeline:
//! after any sequence of edits an incremental build writes exactly the bytes a clean build with
//! an empty store writes; clean builds are reproducible across folders and thread counts; and a
//! killed build or a damaged store entry never changes what the next build writes.
//!
//! Every build gets its store through `QUANT_CACHE_DIR`, so "clean" always means an empty store
//! in a fresh temporary folder, never one shared with another test.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

/// The example pipeline shipped with the crate.
use common::{EXAMPLE, copy_tree};
/// The tensor `overrides/head.json` pins (the classifier's softmax output).
const HEAD_TENSOR: &str = "save_infer_model/scale_0.tmp_1";
/// The classifier's last MatMul output: the float16 edit keeps it (and so the MatMul) in float.
const FLOAT_TENSOR: &str = "linear_1.tmp_0";
/// One cls input, 1×3×48×192 little-endian f32.
const SAMPLE_BYTES: usize = 3 * 48 * 192 * 4;
/// Output folder of a build, next to the manifest.
const OUT_DIR: &str = "quant-out";
/// Keys of the `--json` summary the contract promises.
const SUMMARY_KEYS: [&str; 8] = [
    "samples_run",
    "samples_reused",
    "tensors_encoded",
    "tensors_reused",
    "artifacts_written",
    "artifacts_unchanged",
    "wall_ms",
    "targets",
];

// ---------------------------------------------------------------------------------------------
// Deterministic randomness: a fixed seed list makes every failure reproducible.

/// xorshift64*: small, fast, and good enough to pick edits and fill samples.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        // A zero state would stay zero; mixing the seed also spreads small seeds apart.
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [lo, hi), rounded to 1/1024 so the JSON text stays short and exact.
    fn range(&mut self, lo: f64, hi: f64) -> f64 {
        ((lo + (hi - lo) * self.unit()) * 1024.0).round() / 1024.0
    }
}

// ---------------------------------------------------------------------------------------------
// A pipeline folder whose manifest, overrides and input list the tests rewrite.

/// The editable parts of the example, rendered back into files after every edit.
#[derive(Debug, Clone)]
struct PipelineState {
    act_bitwidth: u8,
    act_calibration: &'static str,
    per_channel: bool,
    /// Names of the models added beside `cls`; each has `models/<name>.onnx`.
    extra_models: Vec<String>,
    head_min: f64,
    head_max: f64,
    /// Lines of `calib/input_list.txt`.
    samples: Vec<String>,
    /// Counter for new sample file names, so a removed name is never reused.
    next_sample: usize,
    /// Whether `htp` (and so `htp-a16`) evaluates quantized against float, as the example does.
    /// Evaluation doubles a cold debug build; the random-edit test keeps it for one seed only,
    /// and the reproducibility and corruption tests, which build the shipped manifest, keep it.
    evaluate: bool,
    /// `algorithms` of `htp` (and so of `htp-a16`, which extends it).
    cle: bool,
    bias_correction: bool,
    /// Whether the overrides keep the classifier's last MatMul output in float16, which makes
    /// that MatMul (weight included) a float16 op with conversions around it.
    float_matmul: bool,
    /// Whether `htp-a16` falls back to float (`enable_float_fallback`) instead of calibrating:
    /// it then drops `htp`'s calibration set, bias correction and AdaRound, which need data.
    float_fallback: bool,
    /// AdaRound on `htp` (and so `htp-a16`): 0 off, 1 on, 2 on with `adaround_ignored` in its
    /// `ignore_quant_ops_list`.
    adaround: u8,
    /// A layer of cls in the middle of the network, the one AdaRound's state 2 ignores.
    adaround_ignored: String,
    /// Whether `htp` (and so `htp-a16`) places its encodings by AIMET's built-in quantsim
    /// config.
    quantsim_config: bool,
}

/// The `algorithms` list's items.
fn algorithms(cle: bool, bias_correction: bool, adaround: bool) -> String {
    [
        (cle, "\"cle\""),
        (bias_correction, "\"bias_correction\""),
        (adaround, "\"adaround\""),
    ]
    .iter()
    .filter_map(|(on, name)| on.then_some(*name))
    .collect::<Vec<_>>()
    .join(", ")
}

impl PipelineState {
    fn example() -> PipelineState {
        let list = fs::read_to_string(Path::new(EXAMPLE).join("calib/input_list.txt")).unwrap();
        PipelineState {
            act_bitwidth: 8,
            act_calibration: "min-max",
            per_channel: true,
            extra_models: Vec::new(),
            head_min: 0.0,
            head_max: 1.0,
            samples: list.lines().map(str::to_owned).collect(),
            next_sample: 0,
            evaluate: true,
            cle: false,
            bias_correction: false,
            float_matmul: false,
            float_fallback: false,
            adaround: 0,
            quantsim_config: false,
            adaround_ignored: {
                let model =
                    quant::onnx::OnnxModel::read(&Path::new(EXAMPLE).join("models/cls.onnx"))
                        .unwrap();
                let layers = quant::adaround::ada_layers(&model).unwrap();
                layers[layers.len() / 2].name().to_string()
            },
        }
    }

    /// `htp`'s AdaRound table (few samples and steps: a debug build runs every layer), when on.
    fn adaround_table(&self) -> String {
        if self.adaround == 0 {
            return String::new();
        }
        let ignored = if self.adaround == 2 {
            format!("\"{}\"", self.adaround_ignored)
        } else {
            String::new()
        };
        format!(
            "\n[targets.htp.adaround]\nnum_batches = 2\nnum_iterations = 10\n\
             [targets.htp.adaround.optional_adaround_args]\nignore_quant_ops_list = [{ignored}]\n"
        )
    }

    fn manifest(&self) -> String {
        let mut text = String::from(
            "[pipeline]\nname = \"text-orientation\"\n\n\
             [models.cls]\npath = \"models/cls.onnx\"\ninput_dims = { x = [1, 3, 48, 192] }\n\n",
        );
        for name in &self.extra_models {
            writeln!(
                text,
                "[models.{name}]\npath = \"models/{name}.onnx\"\ninput_dims = {{ x = [1, 3, 48, 192] }}\n"
            )
            .unwrap();
        }
        write!(
            text,
            "[calibration.textlines]\ninput_list = \"calib/input_list.txt\"\n\n\
             [overrides.head]\npath = \"overrides/head.json\"\n\n\
             [eval.textlines]\ninput_list = \"eval/input_list.txt\"\nlabels = \"eval/labels.txt\"\n\n\
             [targets.htp]\nbackend = \"htp\"\ncalibration = \"textlines\"\noverrides = [\"head\"]\n\
             act_bitwidth = {}\nweights_bitwidth = 8\nbias_bitwidth = 32\n\
             act_quantizer_calibration = \"{}\"\nparam_quantizer_schema = \"symmetric\"\n\
             use_per_channel_quantization = {}\nalgorithms = [{}]\n{}{}{}\n\
             [targets.htp-a16]\nextends = \"htp\"\nact_bitwidth = 16\n{}\n\
             [targets.gpu]\nbackend = \"gpu\"\nfloat_bitwidth = 16\n",
            self.act_bitwidth,
            self.act_calibration,
            self.per_channel,
            algorithms(self.cle, self.bias_correction, self.adaround > 0),
            if self.evaluate { "evaluate = \"textlines\"\n" } else { "" },
            if self.quantsim_config {
                "quantsim_config = \"aimet-default\"\n"
            } else {
                ""
            },
            self.adaround_table(),
            if self.float_fallback {
                format!(
                    "enable_float_fallback = true\nalgorithms = [{}]\n",
                    algorithms(self.cle, false, false)
                )
            } else {
                String::new()
            },
        )
        .unwrap();
        text
    }

    fn overrides(&self) -> String {
        let float = if self.float_matmul {
            format!("        \"{FLOAT_TENSOR}\": [{{\"bitwidth\": 16, \"dtype\": \"float\"}}],\n")
        } else {
            String::new()
        };
        format!(
            "{{\n    \"activation_encodings\": {{\n{float}        \"{HEAD_TENSOR}\": [\n            {{\n                \
             \"bitwidth\": 8,\n                \"dtype\": \"int\",\n                \
             \"is_symmetric\": \"False\",\n                \"max\": {:?},\n                \
             \"min\": {:?}\n            }}\n        ]\n    }},\n    \"param_encodings\": {{}}\n}}\n",
            self.head_max, self.head_min
        )
    }

    /// Writes the manifest, the overrides and the input list into `root`.
    fn write(&self, root: &Path) {
        fs::write(root.join("quant.toml"), self.manifest()).unwrap();
        fs::write(root.join("overrides/head.json"), self.overrides()).unwrap();
        let mut list = self.samples.join("\n");
        list.push('\n');
        fs::write(root.join("calib/input_list.txt"), list).unwrap();
    }
}

/// Copies the example (without outputs or a store) to `to`.
fn copy_example(to: &Path) {
    copy_tree(Path::new(EXAMPLE), to);
}

// ---------------------------------------------------------------------------------------------
// Running the binary.

/// `quant build ROOT --json EXTRA...` with its store in `store`.
fn run_build(root: &Path, store: &Path, extra: &[&str]) -> Output {
    Command::new(common::quant_bin())
        .arg("build")
        .arg(root)
        .arg("--json")
        .args(extra)
        .env("QUANT_CACHE_DIR", store)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// Runs a build that must succeed and returns its summary.
fn build(root: &Path, store: &Path, extra: &[&str]) -> Summary {
    let output = run_build(root, store, extra);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(
        output.status.code(),
        Some(0),
        "quant build {} {extra:?} failed\nstdout:\n{}\nstderr:\n{stderr}",
        root.display(),
        String::from_utf8_lossy(&output.stdout),
    );
    Summary::parse(&output.stdout, stderr)
}

/// The `--json` summary of one build, plus its stderr for messages.
struct Summary {
    json: Value,
    stderr: String,
}

impl Summary {
    fn parse(stdout: &[u8], stderr: String) -> Summary {
        let json: Value = serde_json::from_slice(stdout).unwrap_or_else(|err| {
            panic!(
                "stdout of `quant build --json` is not one JSON object ({err}):\n{}",
                String::from_utf8_lossy(stdout)
            )
        });
        for key in SUMMARY_KEYS {
            assert!(json.get(key).is_some(), "summary lacks `{key}`: {json}");
        }
        Summary { json, stderr }
    }

    fn count(&self, key: &str) -> u64 {
        self.json[key]
            .as_u64()
            .unwrap_or_else(|| panic!("summary `{key}` is not a count: {}", self.json))
    }
}

/// Every file under `<root>/quant-out`, by path relative to it.
fn outputs(root: &Path) -> BTreeMap<String, Vec<u8>> {
    files_under(&root.join(OUT_DIR))
}

fn files_under(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    if !dir.exists() {
        return files;
    }
    for entry in walkdir::WalkDir::new(dir).sort_by_file_name() {
        let entry = entry.unwrap();
        if entry.file_type().is_file() {
            let relative = entry.path().strip_prefix(dir).unwrap();
            let key = relative.to_string_lossy().replace('\\', "/");
            files.insert(key, fs::read(entry.path()).unwrap());
        }
    }
    files
}

/// Builds the current state of `root` from scratch: its outputs are moved aside, a build runs
/// with an empty store, and the incremental outputs are put back. Returns the clean outputs.
fn clean_outputs_of(root: &Path) -> BTreeMap<String, Vec<u8>> {
    let out = root.join(OUT_DIR);
    let aside = root.join("quant-out.incremental");
    let had_outputs = out.exists();
    if had_outputs {
        fs::rename(&out, &aside).unwrap();
    }
    let store = TempDir::new().unwrap();
    build(root, store.path(), &[]);
    let clean = outputs(root);
    fs::remove_dir_all(&out).unwrap();
    if had_outputs {
        fs::rename(&aside, &out).unwrap();
    }
    clean
}

/// Asserts two output trees are byte-identical, naming the first difference in each file.
fn assert_same_outputs(
    actual: &BTreeMap<String, Vec<u8>>,
    expected: &BTreeMap<String, Vec<u8>>,
    context: &str,
) {
    assert!(
        !expected.is_empty(),
        "{context}: the reference build wrote no outputs"
    );
    let actual_names: BTreeSet<_> = actual.keys().collect();
    let expected_names: BTreeSet<_> = expected.keys().collect();
    assert_eq!(
        actual_names, expected_names,
        "{context}: different output files"
    );
    let mut problems = String::new();
    for (name, bytes) in actual {
        let reference = &expected[name];
        if bytes != reference {
            let (a, b) = (
                String::from_utf8_lossy(bytes),
                String::from_utf8_lossy(reference),
            );
            let line = a.lines().zip(b.lines()).position(|(x, y)| x != y);
            match line {
                Some(i) => writeln!(
                    problems,
                    "{name}: line {} differs\n  got:      {}\n  expected: {}",
                    i + 1,
                    a.lines().nth(i).unwrap_or_default(),
                    b.lines().nth(i).unwrap_or_default()
                ),
                None => writeln!(
                    problems,
                    "{name}: {} bytes, expected {}",
                    bytes.len(),
                    reference.len()
                ),
            }
            .unwrap();
        }
    }
    assert!(problems.is_empty(), "{context}: outputs differ\n{problems}");
}

// ---------------------------------------------------------------------------------------------
// Differential test.

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Edit {
    OverrideRange,
    AddSample,
    RemoveSample,
    ActBitwidth,
    ActCalibration,
    PerChannel,
    AddModel,
    ToggleCle,
    ToggleBiasCorrection,
    ToggleFloatMatMul,
    ToggleFloatFallback,
    /// AdaRound off → on → on with one more layer ignored → off.
    CycleAdaround,
    /// AIMET's quantsim config on `htp` on or off: placement, schemas and calibration change.
    ToggleQuantsimConfig,
}

const EDITS: [Edit; 13] = [
    Edit::OverrideRange,
    Edit::AddSample,
    Edit::RemoveSample,
    Edit::ActBitwidth,
    Edit::ActCalibration,
    Edit::PerChannel,
    Edit::AddModel,
    Edit::ToggleCle,
    Edit::ToggleBiasCorrection,
    Edit::ToggleFloatMatMul,
    Edit::ToggleFloatFallback,
    Edit::CycleAdaround,
    Edit::ToggleQuantsimConfig,
];
const SEEDS: [u64; 3] = [1, 2, 47];
const EDITS_PER_SEED: usize = 5;

/// Applies `edit` to `state` (and to the files that are not rendered from it) in `root`.
fn apply(edit: Edit, state: &mut PipelineState, root: &Path, rng: &mut Rng) {
    match edit {
        Edit::OverrideRange => {
            state.head_min = rng.range(-0.5, 0.25);
            state.head_max = rng.range(0.5, 2.0);
        }
        Edit::AddSample => {
            let name = format!("extra_{:02}.raw", state.next_sample);
            state.next_sample += 1;
            let mut bytes = Vec::with_capacity(SAMPLE_BYTES);
            for _ in 0..SAMPLE_BYTES / 4 {
                let value = (rng.unit() * 2.0 - 1.0) as f32;
                bytes.extend_from_slice(&value.to_le_bytes());
            }
            fs::write(root.join("calib").join(&name), bytes).unwrap();
            // Anywhere in the list: statistics must not depend on the sample order.
            let at = rng.below(state.samples.len() + 1);
            state.samples.insert(at, name);
        }
        Edit::RemoveSample => {
            let name = state.samples.remove(rng.below(state.samples.len()));
            fs::remove_file(root.join("calib").join(name)).unwrap();
        }
        Edit::ActBitwidth => state.act_bitwidth = if state.act_bitwidth == 8 { 16 } else { 8 },
        Edit::ActCalibration => {
            state.act_calibration = if state.act_calibration == "min-max" {
                "sqnr"
            } else {
                "min-max"
            }
        }
        Edit::PerChannel => state.per_channel = !state.per_channel,
        Edit::ToggleCle => state.cle = !state.cle,
        Edit::ToggleBiasCorrection => state.bias_correction = !state.bias_correction,
        Edit::ToggleFloatMatMul => state.float_matmul = !state.float_matmul,
        Edit::ToggleFloatFallback => state.float_fallback = !state.float_fallback,
        Edit::CycleAdaround => state.adaround = (state.adaround + 1) % 3,
        Edit::ToggleQuantsimConfig => state.quantsim_config = !state.quantsim_config,
        Edit::AddModel => {
            let name = format!("cls{}", state.extra_models.len() + 2);
            fs::copy(
                root.join("models/cls.onnx"),
                root.join(format!("models/{name}.onnx")),
            )
            .unwrap();
            state.extra_models.push(name);
        }
    }
    state.write(root);
}

/// The edits of one sequence: distinct kinds in a random order. Distinct, because each kind
/// exercises a different path through the engine and the whole test must stay affordable in a
/// debug build; a second model would also double every later build's work.
fn edit_sequence(seed: u64) -> Vec<Edit> {
    let mut rng = Rng::new(seed);
    let mut edits = EDITS;
    for i in (1..edits.len()).rev() {
        edits.swap(i, rng.below(i + 1));
    }
    edits[..EDITS_PER_SEED].to_vec()
}

#[test]
fn the_seed_list_exercises_every_kind_of_edit() {
    let exercised: BTreeSet<Edit> = SEEDS.into_iter().flat_map(edit_sequence).collect();
    assert_eq!(
        exercised.len(),
        EDITS.len(),
        "{exercised:?}; pick other seeds"
    );
}

// One test per seed: each is minutes of builds, and as separate tests they run side by side.
#[test]
fn incremental_builds_after_random_edits_equal_clean_builds_seed_0() {
    random_edits_equal_clean_builds(SEEDS[0]);
}

#[test]
fn incremental_builds_after_random_edits_equal_clean_builds_seed_1() {
    random_edits_equal_clean_builds(SEEDS[1]);
}

#[test]
fn incremental_builds_after_random_edits_equal_clean_builds_seed_2() {
    random_edits_equal_clean_builds(SEEDS[2]);
}

/// After each edit of `seed`'s sequence: the incremental build does only the work the edit
/// calls for, a second build does none, and the outputs equal a clean build's.
fn random_edits_equal_clean_builds(seed: u64) {
    // Values (override ranges, sample contents and positions) from a stream of their own.
    let mut rng = Rng::new(seed ^ 0xED17);
    let dir = TempDir::new().unwrap();
    let root = dir.path().join("text-orientation");
    copy_example(&root);
    let store = TempDir::new().unwrap();
    // The first seed keeps the evaluation: its reports must follow every edit too, served
    // from the traces of earlier builds where it can be.
    let mut state = PipelineState {
        evaluate: seed == SEEDS[0],
        ..PipelineState::example()
    };
    state.write(&root);
    build(&root, store.path(), &[]);

    let mut history = Vec::new();
    for (step, edit) in edit_sequence(seed).into_iter().enumerate() {
        apply(edit, &mut state, &root, &mut rng);
        history.push(edit);
        let context = format!("seed {seed}, edits {history:?}");

        let summary = build(&root, store.path(), &[]);
        let count = |key| summary.count(key);
        match edit {
            // None touches what statistics are gathered from or how.
            // Bias correction corrects for the quantized weights: an edit to how weights are
            // quantized changes the corrected model, which is calibrated again.
            Edit::PerChannel | Edit::ToggleFloatMatMul if state.bias_correction => {}
            Edit::OverrideRange
            | Edit::ActBitwidth
            | Edit::PerChannel
            | Edit::ToggleFloatMatMul
            | Edit::ToggleFloatFallback => {
                assert_eq!(count("samples_run"), 0, "{context}: {}", summary.json);
            }
            // Bias correction measures every sample: a new one changes the corrected model,
            // which is calibrated again from scratch.
            Edit::AddSample if state.bias_correction => {}
            // The new sample runs once per model (once for identical model files); every
            // other sample is reused.
            Edit::AddSample => {
                let models = 1 + state.extra_models.len() as u64;
                assert!(
                    (1..=models).contains(&count("samples_run")),
                    "{context}: {}",
                    summary.json
                );
                assert!(count("samples_reused") >= 1, "{context}: {}", summary.json);
            }
            // The model changed for `htp` and `htp-a16` alike: one transform, and (unless
            // the store has the statistics of that model already) one calibration for both.
            Edit::ToggleCle if state.cle && !state.bias_correction => {
                assert!(count("transforms_run") <= 1, "{context}: {}", summary.json);
                assert!(
                    count("samples_run") <= state.samples.len() as u64,
                    "{context}: the equalized model was calibrated more than once: {}",
                    summary.json
                );
            }
            Edit::RemoveSample
            | Edit::ActCalibration
            | Edit::AddModel
            | Edit::ToggleCle
            | Edit::ToggleBiasCorrection => {}
            // The config changes which tensors are encoded and calibrates with quantized
            // weights: encodings are computed again, whatever the store holds.
            Edit::ToggleQuantsimConfig => {
                assert!(count("tensors_encoded") >= 1, "{context}: {}", summary.json);
            }
            // Turned on: every layer optimized once (`htp-a16` shares `htp`'s frozen
            // encodings, so its layers come from the store); one more layer ignored: only
            // layers downstream of it; turned off: none.
            Edit::CycleAdaround => {
                let optimized = count("layers_optimized");
                match state.adaround {
                    0 => assert_eq!(optimized, 0, "{context}: {}", summary.json),
                    1 => assert!(optimized > 0, "{context}: {}", summary.json),
                    _ => assert!(
                        optimized > 0 && count("layers_reused") > 0,
                        "{context}: {}",
                        summary.json
                    ),
                }
            }
        }
        if edit == Edit::OverrideRange {
            assert!(count("tensors_encoded") >= 1, "{context}: {}", summary.json);
        }

        let again = build(&root, store.path(), &[]);
        for key in ["samples_run", "tensors_encoded", "artifacts_written"] {
            assert_eq!(
                again.count(key),
                0,
                "{context}: a no-op build ran work: {}",
                again.json
            );
        }

        let incremental = outputs(&root);
        let clean = clean_outputs_of(&root);
        assert_same_outputs(&incremental, &clean, &format!("{context} (step {step})"));
    }
    eprintln!("seed {seed}: {history:?} — each incremental build equal to a clean one");
}

/// Statistics with a histogram (sqnr, percentile, mse, entropy) survive the process too.
#[test]
fn histogram_statistics_are_reused_by_a_new_process() {
    let dir = TempDir::new().unwrap();
    let root = dir.path().join("text-orientation");
    copy_example(&root);
    let mut state = PipelineState::example();
    state.act_calibration = "sqnr";
    state.write(&root);
    let store = TempDir::new().unwrap();
    let cold = build(&root, store.path(), &[]);
    assert_eq!(
        cold.count("samples_run"),
        state.samples.len() as u64,
        "{}",
        cold.json
    );
    let again = build(&root, store.path(), &[]);
    assert_eq!(
        again.count("samples_run"),
        0,
        "a no-op sqnr build ran samples: {}",
        again.json
    );
}

// ---------------------------------------------------------------------------------------------
// Reproducibility.

/// Paths of the entries under the store's `objects/` folder (the keys), without temp files.
fn store_keys(store: &Path) -> BTreeSet<String> {
    files_under(&store.join("objects"))
        .into_keys()
        .filter(|name| {
            !name
                .rsplit('/')
                .next()
                .unwrap_or_default()
                .starts_with(".tmp-")
        })
        .collect()
}

#[test]
fn clean_builds_in_different_folders_are_byte_identical() {
    let dir = TempDir::new().unwrap();
    let first = dir.path().join("a/text-orientation");
    let second = dir.path().join("b/a deeper folder/renamed copy");
    copy_example(&first);
    copy_example(&second);
    let (store_a, store_b) = (TempDir::new().unwrap(), TempDir::new().unwrap());
    build(&first, store_a.path(), &[]);
    build(&second, store_b.path(), &[]);

    let (a, b) = (outputs(&first), outputs(&second));
    assert_same_outputs(&b, &a, "a copy in another folder");
    for (name, bytes) in &a {
        let text = String::from_utf8_lossy(bytes);
        assert!(
            !text.contains(&*dir.path().to_string_lossy()),
            "{name} contains the folder it was built in"
        );
    }
    // Keys hold no paths: both stores have the same entries.
    let keys = store_keys(store_a.path());
    assert!(!keys.is_empty(), "the build stored nothing");
    assert_eq!(
        keys,
        store_keys(store_b.path()),
        "store keys depend on the folder"
    );
}

#[test]
fn thread_count_does_not_change_outputs() {
    let dir = TempDir::new().unwrap();
    let root = dir.path().join("text-orientation");
    copy_example(&root);
    let one = TempDir::new().unwrap();
    build(&root, one.path(), &["-j", "1"]);
    let single = outputs(&root);
    fs::remove_dir_all(root.join(OUT_DIR)).unwrap();
    let two = TempDir::new().unwrap();
    build(&root, two.path(), &["-j", "2"]);
    assert_same_outputs(&outputs(&root), &single, "-j 2 against -j 1");
    assert_eq!(
        store_keys(one.path()),
        store_keys(two.path()),
        "store keys depend on -j"
    );
}

// ---------------------------------------------------------------------------------------------
// Crash safety and corruption.

/// Outputs are written whole or not at all: every file a killed build left must parse.
fn assert_outputs_whole(root: &Path, context: &str) {
    for (name, bytes) in outputs(root) {
        if name.ends_with(".json") {
            assert!(
                serde_json::from_slice::<Value>(&bytes).is_ok(),
                "{context}: {name} is not whole JSON ({} bytes)",
                bytes.len()
            );
        }
    }
}

/// Starts a build and SIGKILLs it after `delay`. Returns whether it was still running then.
fn kill_build_after(root: &Path, store: &Path, delay: Duration) -> bool {
    let mut child = Command::new(common::quant_bin())
        .arg("build")
        .arg(root)
        .arg("--json")
        .env("QUANT_CACHE_DIR", store)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(delay);
    let running = child.try_wait().unwrap().is_none();
    // `Child::kill` is SIGKILL on Unix: no destructor, no cleanup, like a crash or an OOM kill.
    let _ = child.kill();
    child.wait().unwrap();
    running
}

#[test]
fn builds_killed_at_random_moments_leave_a_usable_store() {
    let dir = TempDir::new().unwrap();
    let root = dir.path().join("text-orientation");
    copy_example(&root);
    PipelineState {
        evaluate: false,
        ..PipelineState::example()
    }
    .write(&root);

    let started = Instant::now();
    let reference = clean_outputs_of(&root);
    let cold = started.elapsed();

    // A kill at startup plus moments spread over a cold build's duration on this machine, so
    // kills land in every phase (startup, calibration, encoding, writing) whatever its speed.
    // The second kill of a round comes 1.25× later, so none is scheduled past the cold build.
    let mut rng = Rng::new(0x5EED);
    let mut delays = vec![Duration::from_millis(5), cold.mul_f64(0.7)];
    delays.extend((0..4).map(|_| cold.mul_f64(0.05 + 0.7 * rng.unit())));

    let mut killed_mid_build = 0;
    for (round, delay) in delays.iter().enumerate() {
        let store = TempDir::new().unwrap();
        let _ = fs::remove_dir_all(root.join(OUT_DIR));
        // Two kills on the same store, so the second build starts from the first's leftovers.
        for kill in 0..2 {
            let delay = delay.mul_f64(1.0 + kill as f64 * 0.25);
            if kill_build_after(&root, store.path(), delay) {
                killed_mid_build += 1;
            }
            assert_outputs_whole(&root, &format!("round {round} after a kill at {delay:?}"));
        }
        build(&root, store.path(), &[]);
        assert_same_outputs(
            &outputs(&root),
            &reference,
            &format!("round {round}: the build after kills at {delay:?}"),
        );
    }
    eprintln!(
        "{killed_mid_build} of {} kills hit a running build (cold build {cold:?}); every next build \
         equal to a clean one",
        2 * delays.len()
    );
    assert!(
        killed_mid_build >= delays.len(),
        "only {killed_mid_build} of {} kills hit a running build (cold build: {cold:?})",
        2 * delays.len()
    );
}

/// Flips one byte in the middle of a file.
fn flip_byte(path: &Path) {
    let mut bytes = fs::read(path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x5A;
    fs::write(path, bytes).unwrap();
}

#[test]
fn a_corrupt_store_entry_is_reported_and_recomputed() {
    let dir = TempDir::new().unwrap();
    let root = dir.path().join("text-orientation");
    copy_example(&root);
    let store = TempDir::new().unwrap();
    build(&root, store.path(), &[]);
    let reference = outputs(&root);

    // One entry of each kind, in turn: which kinds a fresh process reads depends on what it
    // can reuse, so the test damages each and requires that at least one was read.
    let objects = store.path().join("objects");
    let mut kinds: Vec<PathBuf> = fs::read_dir(&objects)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    kinds.sort();
    assert!(
        !kinds.is_empty(),
        "the build stored nothing in {}",
        objects.display()
    );

    let mut detected = Vec::new();
    for kind in &kinds {
        let Some(entry) = files_under(kind)
            .into_keys()
            .find(|name| !name.contains(".tmp-"))
            .map(|name| kind.join(name))
        else {
            continue;
        };
        let damaged_store = TempDir::new().unwrap();
        copy_tree(store.path(), damaged_store.path());
        let target = damaged_store
            .path()
            .join(entry.strip_prefix(store.path()).unwrap());
        flip_byte(&target);
        let damaged = fs::read(&target).unwrap();
        let _ = fs::remove_dir_all(root.join(OUT_DIR));

        let summary = build(&root, damaged_store.path(), &[]);
        let kind_name = kind.file_name().unwrap().to_string_lossy().into_owned();
        assert_same_outputs(
            &outputs(&root),
            &reference,
            &format!("the build after damaging a `{kind_name}` entry"),
        );
        let read = fs::read(&target).ok().as_ref() != Some(&damaged);
        let entry_name = target.file_name().unwrap().to_string_lossy().into_owned();
        let warned = summary.stderr.to_lowercase().contains("corrupt");
        if read {
            assert!(
                warned && summary.stderr.contains(&entry_name),
                "the damaged `{kind_name}` entry {entry_name} was replaced without a warning \
                 naming it; stderr:\n{}",
                summary.stderr
            );
            detected.push(kind_name);
        } else {
            assert!(
                !warned,
                "a warning about corruption, but the damaged entry was never read"
            );
        }
    }
    eprintln!("damaged entries detected, reported and recomputed: {detected:?} of {kinds:?}");
    assert!(
        !detected.is_empty(),
        "no damaged entry was read by the next build (kinds: {kinds:?})"
    );
}
