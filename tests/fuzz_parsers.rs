//! Generated-input testing of every parser quant runs on files other people write: `quant.toml`,
//! input lists, overrides JSON (every version), ONNX models and the graph built from them, `.raw`
//! and `.npy` samples, and the store's public payload codecs (the engine's own payloads are
//! fuzzed by the unit tests in `src/engine/payload_fuzz.rs`).
//!
//! Every case starts from a real file (the crate's `tests/` data, and `../shared/fixtures` when
//! present), applies a few mutations (bit flips, byte overwrites, truncations, splices from
//! another seed, inserted tokens such as huge numbers, NaN, Inf and deeply nested brackets) and
//! asserts that the parser ends in a value or an error, never a panic, and that no single
//! allocation it makes is larger than the input justifies (a counting allocator records the
//! largest request made on the test's thread while the parser runs).
//!
//! The case count per parser is [`DEFAULT_CASES`] scaled for CI; `QUANT_FUZZ_CASES=N` runs N per
//! parser instead (`benches/fuzz.sh` runs the long campaign and prints the counts).

mod common;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use quant::calib::{InputList, InputSpec};
use quant::cli::shell::render_diagnostic;
use quant::graph::Graph;
use quant::manifest::{FileCheck, resolve_text};
use quant::onnx::{DType, GraphContents, NodeContents, OnnxModel, TensorContents, TensorValues};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::fs;
use std::path::{Path, PathBuf};

// ---------------------------------------------------------------------------------------------
// The largest allocation a parser makes, per thread (tests run on parallel threads).

struct Tracking;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    // try_with: the allocator runs during thread teardown too, when the slot may be gone.
    let _ = LARGEST.try_with(|l| {
        if size > l.get() {
            l.set(size);
        }
    });
}

// SAFETY: every call is forwarded unchanged to the system allocator; only sizes are recorded.
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: same contract as ours.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Tracking = Tracking;

/// What an input of `len` bytes may justify as one allocation: decoded values take at most 16
/// bytes per input byte (a one-byte varint decoded to an `i64`, a 4-byte float widened to a
/// `f64` twice over), plus room for fixed-size tables (histograms, hash maps, diagnostics).
fn justified(len: usize) -> usize {
    len.saturating_mul(16).saturating_add(4 << 20)
}

/// Runs `parse` on an input of `len` bytes and fails the case when one allocation exceeded what
/// the input justifies.
fn bounded<T>(what: &str, len: usize, parse: impl FnOnce() -> T) -> Result<T, TestCaseError> {
    LARGEST.with(|l| l.set(0));
    let out = parse();
    let largest = LARGEST.with(Cell::get);
    if largest > justified(len) {
        return Err(TestCaseError::fail(format!(
            "{what}: one allocation of {largest} bytes for an input of {len} bytes"
        )));
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Case counts.

/// Cases per parser in the normal test run (CI): sized so the whole file stays well under a
/// minute in a debug build on two cores.
const DEFAULT_CASES: u32 = 1500;

/// Cases for a parser whose one case costs `weight` text-parser cases (ONNX decoding is slower).
fn cases(weight: u32) -> u32 {
    let n = std::env::var("QUANT_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or(DEFAULT_CASES);
    (n / weight).max(1)
}

fn runner(cases: u32) -> TestRunner {
    TestRunner::new(Config {
        cases,
        // A failure is reported with its input; shrinking a 500 kB model would take minutes.
        max_shrink_iters: 64,
        failure_persistence: None,
        ..Config::default()
    })
}

/// Prints the count so `benches/fuzz.sh` can sum what ran.
fn report(parser: &str, cases: u32, seeds: usize) {
    println!("fuzz: {parser}: {cases} cases from {seeds} seeds, 0 failures");
}

// ---------------------------------------------------------------------------------------------
// Seeds and mutations.

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Files under `dir` (recursively) whose name ends with one of `suffixes`, at most `max_len`
/// bytes each, in a stable order.
fn files_under(dir: &Path, suffixes: &[&str], max_len: u64) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = fs::symlink_metadata(&path) else {
                continue;
            };
            if meta.is_dir() {
                stack.push(path);
            } else if meta.is_file()
                && meta.len() <= max_len
                && suffixes.iter().any(|s| path.to_string_lossy().ends_with(s))
            {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// The fixtures' files of a kind, or nothing (printing why) when the fixtures are absent.
fn fixture_seeds(relative: &str, suffixes: &[&str], max_len: u64) -> Vec<PathBuf> {
    match common::fixtures() {
        Some(f) => files_under(&f.join(relative), suffixes, max_len),
        None => Vec::new(),
    }
}

fn read_all(paths: &[PathBuf]) -> Vec<Vec<u8>> {
    paths.iter().map(|p| fs::read(p).unwrap()).collect()
}

/// Tokens that parsers tend to get wrong: out-of-range numbers, non-finite floats, deep nesting,
/// unbalanced brackets, odd whitespace and encodings.
fn text_tokens() -> Vec<Vec<u8>> {
    let mut t: Vec<Vec<u8>> = [
        "1e999",
        "-1e999",
        "NaN",
        "nan",
        "inf",
        "-inf",
        "Infinity",
        "18446744073709551616",
        "-9223372036854775809",
        "4294967297",
        "340282366920938463463374607431768211456",
        "3.4028236e38",
        "1e-46",
        "-0",
        "0x7fffffff",
        "\"\"",
        "\"",
        "'",
        ",",
        "[",
        "]",
        "{",
        "}",
        "=",
        ":",
        ":=",
        "#",
        "\\",
        "\0",
        "\u{feff}",
        "\r\n",
        "\n\n",
        "\t",
        "é",
        "\n[pipeline]\n",
        "\n[target.x]\n",
        "\n[[model]]\n",
        "\"encodings\": ",
        "\"version\": \"1.0.0\"",
        "\"version\": \"0.6.1\"",
        "\"bitwidth\": ",
        "\"dtype\": \"float\"",
        "\"is_symmetric\": \"True\"",
        "../../../../etc/passwd",
        "/dev/zero",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    for (open, close, n) in [
        ("[", "]", 20_000),
        ("{\"a\":", "}", 5_000),
        ("a = [", "]", 2_000),
        ("x = {y = ", "}", 2_000),
        ("(", ")", 5_000),
    ] {
        t.push(open.repeat(n).into_bytes());
        t.push(format!("{}1{}", open.repeat(n), close.repeat(n)).into_bytes());
    }
    t.push("9".repeat(5_000).into_bytes());
    t.push("a".repeat(100_000).into_bytes());
    t
}

/// Byte tokens for binary formats: maximal varints, length prefixes claiming far more than is
/// there, the extreme integers and floats.
fn binary_tokens() -> Vec<Vec<u8>> {
    let mut t = vec![
        vec![0xff; 10],
        vec![0x80; 10],
        vec![0xff, 0xff, 0xff, 0xff, 0x0f],
        u32::MAX.to_le_bytes().to_vec(),
        u64::MAX.to_le_bytes().to_vec(),
        (i64::MIN).to_le_bytes().to_vec(),
        f32::NAN.to_le_bytes().to_vec(),
        f32::INFINITY.to_le_bytes().to_vec(),
        f32::NEG_INFINITY.to_le_bytes().to_vec(),
        f64::NAN.to_le_bytes().to_vec(),
        f64::MAX.to_le_bytes().to_vec(),
        vec![0; 16],
        // protobuf: field 1..15, wire type 2, length 2^35
        vec![0x0a, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01],
        vec![0x3a, 0xff, 0xff, 0xff, 0xff, 0x0f],
        vec![0x42, 0xff, 0xff, 0xff, 0xff, 0x0f],
    ];
    // deep protobuf nesting: field 7 (graph) inside itself
    let mut nested = Vec::new();
    for _ in 0..200 {
        nested.extend([0x3a, 0x7f]);
    }
    t.push(nested);
    t.extend(text_tokens().into_iter().take(20));
    t
}

/// One edit of an input.
#[derive(Debug, Clone)]
enum Mutation {
    Flip {
        at: usize,
        bit: u8,
    },
    Byte {
        at: usize,
        value: u8,
    },
    Truncate {
        at: usize,
    },
    Remove {
        at: usize,
        len: usize,
    },
    Splice {
        seed: usize,
        from: usize,
        len: usize,
        at: usize,
    },
    Insert {
        token: usize,
        at: usize,
    },
    Replace {
        token: usize,
        at: usize,
        len: usize,
    },
    Duplicate {
        from: usize,
        len: usize,
        at: usize,
    },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let pos = any::<usize>();
    prop_oneof![
        4 => (pos, 0u8..8).prop_map(|(at, bit)| Mutation::Flip { at, bit }),
        2 => (pos, any::<u8>()).prop_map(|(at, value)| Mutation::Byte { at, value }),
        1 => pos.prop_map(|at| Mutation::Truncate { at }),
        1 => (pos, 1usize..64).prop_map(|(at, len)| Mutation::Remove { at, len }),
        1 => (pos, pos, 1usize..256, pos)
            .prop_map(|(seed, from, len, at)| Mutation::Splice { seed, from, len, at }),
        3 => (pos, pos).prop_map(|(token, at)| Mutation::Insert { token, at }),
        2 => (pos, pos, 1usize..16)
            .prop_map(|(token, at, len)| Mutation::Replace { token, at, len }),
        1 => (pos, 1usize..128, pos)
            .prop_map(|(from, len, at)| Mutation::Duplicate { from, len, at }),
    ]
}

/// A seed index and up to `max` mutations (none: the seed itself, which must parse or fail
/// cleanly too).
fn mutations(max: usize) -> impl Strategy<Value = (usize, Vec<Mutation>)> {
    (any::<usize>(), prop::collection::vec(mutation(), 0..=max))
}

fn apply(seeds: &[Vec<u8>], tokens: &[Vec<u8>], seed: usize, edits: &[Mutation]) -> Vec<u8> {
    let mut b = seeds[seed % seeds.len()].clone();
    for m in edits {
        let n = b.len();
        match *m {
            Mutation::Flip { at, bit } if n > 0 => b[at % n] ^= 1 << bit,
            Mutation::Byte { at, value } if n > 0 => b[at % n] = value,
            Mutation::Truncate { at } => b.truncate(at % (n + 1)),
            Mutation::Remove { at, len } if n > 0 => {
                let at = at % n;
                b.drain(at..(at + len).min(n));
            }
            Mutation::Splice {
                seed,
                from,
                len,
                at,
            } => {
                let other = &seeds[seed % seeds.len()];
                if !other.is_empty() {
                    let from = from % other.len();
                    let piece = other[from..(from + len).min(other.len())].to_vec();
                    let at = at % (n + 1);
                    b.splice(at..at, piece);
                }
            }
            Mutation::Insert { token, at } => {
                let at = at % (n + 1);
                b.splice(at..at, tokens[token % tokens.len()].iter().copied());
            }
            Mutation::Replace { token, at, len } => {
                let at = at % (n + 1);
                let end = (at + len).min(n);
                b.splice(at..end, tokens[token % tokens.len()].iter().copied());
            }
            Mutation::Duplicate { from, len, at } if n > 0 => {
                let from = from % n;
                let piece = b[from..(from + len).min(n)].to_vec();
                let at = at % (n + 1);
                b.splice(at..at, piece);
            }
            _ => {}
        }
    }
    b
}

/// Runs `check` on `cases` mutated inputs; a panic inside `check` fails the test with the
/// input that caused it (proptest catches it).
fn campaign(
    parser: &str,
    seeds: &[Vec<u8>],
    tokens: &[Vec<u8>],
    cases: u32,
    max_mutations: usize,
    check: impl Fn(&[u8]) -> Result<(), TestCaseError>,
) {
    assert!(!seeds.is_empty(), "{parser}: no seed files found");
    let mut runner = runner(cases);
    let result = runner.run(&mutations(max_mutations), |(seed, edits)| {
        let input = apply(seeds, tokens, seed, &edits);
        check(&input)
    });
    if let Err(e) = result {
        panic!("{parser}: {e}");
    }
    report(parser, cases, seeds.len());
}

// ---------------------------------------------------------------------------------------------
// quant.toml

#[test]
fn manifests_end_in_a_pipeline_or_diagnostics() {
    let dir = crate_dir();
    let mut paths = files_under(&dir.join("tests/manifests"), &[".toml"], 1 << 20);
    paths.extend(files_under(&dir.join("examples"), &[".toml"], 1 << 20));
    let seeds = read_all(&paths);
    let tokens = text_tokens();
    campaign("quant.toml", &seeds, &tokens, cases(1), 6, |input| {
        let text = String::from_utf8_lossy(input);
        let path = Path::new("fuzz/quant.toml");
        bounded("quant.toml", input.len(), || {
            if let Err(e) = resolve_text(&text, path, FileCheck::Skip) {
                // Rendering is part of the path to the user: it must not panic either.
                let _ = render_diagnostic(&miette::Report::new(e));
            }
        })
    });
}

// ---------------------------------------------------------------------------------------------
// Input lists

#[test]
fn input_lists_end_in_samples_or_diagnostics() {
    let dir = crate_dir();
    let mut paths = files_under(&dir.join("tests/manifests"), &["input_list.txt"], 1 << 20);
    paths.extend(fixture_seeds(".", &["input_list.txt"], 1 << 20));
    let mut seeds = read_all(&paths);
    // The list forms the fixtures may lack: named inputs, output selection, comments.
    seeds.push(b"#out_a out_b\n%x:=a.raw y:=b.raw\nx:=a.raw y:=b.raw # c\n".to_vec());
    seeds.push(b"a.raw\n\n  b.npy  \n".to_vec());
    let tokens = text_tokens();
    let data = dir.join("tests/data/calib");
    let specs = [
        InputSpec {
            name: "x".into(),
            shape: vec![1, 4],
        },
        InputSpec {
            name: "y".into(),
            shape: vec![2, 2],
        },
    ];
    campaign("input list", &seeds, &tokens, cases(1), 6, |input| {
        let text = String::from_utf8_lossy(input);
        bounded("input list", input.len(), || {
            if let Ok(list) = InputList::parse(&data.join("input_list.txt"), &text) {
                // Checking against a model reads only metadata and headers of files that exist.
                let _ = list.check(&specs[..1]);
                let _ = list.check(&specs);
            }
        })
    });
}

// ---------------------------------------------------------------------------------------------
// Overrides JSON

#[test]
fn overrides_end_in_encodings_or_diagnostics() {
    let dir = crate_dir();
    let mut paths = files_under(&dir.join("tests/data/overrides"), &[".json"], 1 << 20);
    paths.extend(files_under(
        &dir.join("tests/manifests"),
        &[".json", ".encodings"],
        1 << 20,
    ));
    // The real AIMET files of every version, the smaller ones (each case copies its seed).
    paths.extend(fixture_seeds("reference/aimet", &[".encodings"], 100_000));
    let seeds = read_all(&paths);
    let tokens = text_tokens();
    let tensors = tiny_graph().map(|g| quant::overrides::ModelTensors::of(&g));
    // Large seeds make a case slower: fewer of them, same wall time.
    campaign("overrides JSON", &seeds, &tokens, cases(2), 6, |input| {
        let text = String::from_utf8_lossy(input).into_owned();
        bounded(
            "overrides JSON",
            input.len(),
            || match quant::overrides::parse("fuzz.encodings", text) {
                Ok(parsed) => {
                    if let Some(t) = &tensors {
                        let _ = parsed.validate(t).map_err(|e| format!("{e:?}"));
                    }
                }
                Err(e) => {
                    let _ = render_diagnostic(&miette::Report::new(e));
                }
            },
        )
    });
}

// ---------------------------------------------------------------------------------------------
// ONNX decoding and the graph builder

/// The fixtures' tiny model as a graph, when present.
fn tiny_graph() -> Option<Graph> {
    let f = common::fixtures()?;
    Some(Graph::read(&f.join("reference/tiny/tiny.onnx")).unwrap())
}

/// A small conv net written by quant's own ONNX writer: a seed that exists without fixtures, and
/// one whose every field is one quant itself writes.
fn written_model() -> Vec<u8> {
    let info = |name: &str, dims: &[u64]| quant::onnx::ValueInfo {
        name: name.into(),
        dtype: Some(DType::Float32),
        shape: Some(dims.iter().map(|&d| quant::onnx::Dim::Fixed(d)).collect()),
    };
    let tensor = |name: &str, dims: &[u64], n: usize| TensorContents {
        name: name.into(),
        dtype: Some(DType::Float32),
        dims: dims.to_vec(),
        values: TensorValues::Float((0..n).map(|i| i as f32 * 0.25 - 1.0).collect()),
    };
    let node = |op: &str, inputs: &[&str], output: &str| NodeContents {
        name: format!("{op}_{output}"),
        op_type: op.into(),
        domain: String::new(),
        inputs: inputs.iter().map(|s| s.to_string()).collect(),
        outputs: vec![output.into()],
        attributes: Vec::new(),
    };
    let contents = GraphContents {
        ir_version: Some(8),
        opset: Some(13),
        inputs: vec![info("x", &[1, 2, 4, 4])],
        outputs: vec![info("y", &[1, 3, 4, 4])],
        value_info: vec![info("c", &[1, 3, 4, 4])],
        initializers: vec![tensor("w", &[3, 2, 1, 1], 6), tensor("b", &[3], 3)],
        nodes: vec![
            node("Conv", &["x", "w", "b"], "c"),
            node("Relu", &["c"], "r"),
            node("Sigmoid", &["r"], "y"),
        ],
    };
    OnnxModel::from_contents(&contents, Path::new("written.onnx")).to_bytes()
}

fn onnx_seeds() -> Vec<Vec<u8>> {
    let mut seeds = vec![written_model()];
    let paths = fixture_seeds(".", &[".onnx"], 600_000);
    seeds.extend(read_all(&paths));
    seeds
}

/// Decodes `bytes`, transcribes the graph, builds the IR and walks what a build reads of it.
fn decode_and_build(bytes: &[u8]) {
    let Ok(model) = OnnxModel::from_bytes(bytes, Path::new("fuzz.onnx")) else {
        return;
    };
    let _ = model.contents();
    if let Ok(graph) = Graph::from_model(&model) {
        let _ = graph.counts();
        for t in graph.tensors() {
            let _ = graph.encoding_source(t.name.as_str());
            let _ = graph.parameter(t.name.as_str()).map(|p| p.as_array());
        }
        let _ = quant::overrides::ModelTensors::of(&graph);
    }
    // Re-encoding is what an exported model goes through.
    let _ = model.to_bytes();
}

#[test]
fn onnx_bytes_end_in_a_graph_or_an_error() {
    let seeds = onnx_seeds();
    let tokens = binary_tokens();
    campaign("ONNX bytes", &seeds, &tokens, cases(4), 4, |input| {
        bounded("ONNX bytes", input.len(), || decode_and_build(input))
    });
}

/// Edits at the protobuf level: byte flips mostly break the encoding, these keep it valid and
/// reach the graph builder with the contradictions exporters actually write.
#[derive(Debug, Clone)]
enum ModelEdit {
    /// An initializer's dims set to a huge count its data cannot hold.
    HugeDims { tensor: usize, dims: Vec<i64> },
    /// An initializer's element type changed.
    DataType { tensor: usize, dtype: i32 },
    /// An initializer's raw data cut short.
    CutData { tensor: usize, keep: usize },
    /// A node reads another node's output (cycles, self-loops) or a name nobody defines.
    Rewire {
        node: usize,
        input: usize,
        to: usize,
        dangling: bool,
    },
    /// A node's output renamed to an existing name (duplicate definitions).
    Duplicate { node: usize, as_of: usize },
    /// A node removed (its consumers now read nothing).
    RemoveNode { node: usize },
    /// A graph input's shape made huge, negative or symbolic.
    InputDim { input: usize, dim: i64 },
    /// An op type replaced by one no runtime knows.
    OpType { node: usize, op: usize },
}

fn model_edit() -> impl Strategy<Value = ModelEdit> {
    let i = any::<usize>();
    let huge = prop_oneof![
        Just(i64::MAX),
        Just(-1i64),
        Just(0i64),
        Just(1i64 << 40),
        Just(10_000_000_000i64),
        Just(i64::MIN),
        1i64..8,
    ];
    prop_oneof![
        (i, prop::collection::vec(huge.clone(), 0..5))
            .prop_map(|(tensor, dims)| ModelEdit::HugeDims { tensor, dims }),
        (i, -2i32..30).prop_map(|(tensor, dtype)| ModelEdit::DataType { tensor, dtype }),
        (i, 0usize..64).prop_map(|(tensor, keep)| ModelEdit::CutData { tensor, keep }),
        (i, i, i, any::<bool>()).prop_map(|(node, input, to, dangling)| {
            ModelEdit::Rewire {
                node,
                input,
                to,
                dangling,
            }
        }),
        (i, i).prop_map(|(node, as_of)| ModelEdit::Duplicate { node, as_of }),
        i.prop_map(|node| ModelEdit::RemoveNode { node }),
        (i, huge).prop_map(|(input, dim)| ModelEdit::InputDim { input, dim }),
        (i, i).prop_map(|(node, op)| ModelEdit::OpType { node, op }),
    ]
}

fn edit_model(model: &mut OnnxModel, edit: &ModelEdit) {
    use quant::onnx::proto::tensor_shape_proto::dimension::Value;
    let Some(graph) = model.proto_mut().graph.as_mut() else {
        return;
    };
    let pick = |n: usize, i: usize| (n > 0).then(|| i % n);
    match edit {
        ModelEdit::HugeDims { tensor, dims } => {
            if let Some(t) = pick(graph.initializer.len(), *tensor) {
                graph.initializer[t].dims = dims.clone();
            }
        }
        ModelEdit::DataType { tensor, dtype } => {
            if let Some(t) = pick(graph.initializer.len(), *tensor) {
                graph.initializer[t].data_type = Some(*dtype);
            }
        }
        ModelEdit::CutData { tensor, keep } => {
            if let Some(t) = pick(graph.initializer.len(), *tensor)
                && let Some(raw) = graph.initializer[t].raw_data.as_mut()
            {
                raw.truncate(*keep);
            }
        }
        ModelEdit::Rewire {
            node,
            input,
            to,
            dangling,
        } => {
            let n = graph.node.len();
            if let Some(a) = pick(n, *node) {
                let source = if *dangling {
                    "nobody_defines_this".to_string()
                } else {
                    let b = to % n;
                    graph.node[b].output.first().cloned().unwrap_or_default()
                };
                let inputs = &mut graph.node[a].input;
                match pick(inputs.len(), *input) {
                    Some(k) => inputs[k] = source,
                    None => inputs.push(source),
                }
            }
        }
        ModelEdit::Duplicate { node, as_of } => {
            let n = graph.node.len();
            if let Some(a) = pick(n, *node) {
                let name = graph.node[as_of % n].output.first().cloned();
                if let (Some(name), Some(out)) = (name, graph.node[a].output.first_mut()) {
                    *out = name;
                }
            }
        }
        ModelEdit::RemoveNode { node } => {
            if let Some(a) = pick(graph.node.len(), *node) {
                graph.node.remove(a);
            }
        }
        ModelEdit::InputDim { input, dim } => {
            if let Some(k) = pick(graph.input.len(), *input)
                && let Some(quant::onnx::proto::type_proto::Value::TensorType(t)) = graph.input[k]
                    .r#type
                    .as_mut()
                    .and_then(|t| t.value.as_mut())
                && let Some(shape) = t.shape.as_mut()
                && let Some(d) = shape.dim.first_mut()
            {
                d.value = Some(if *dim == 0 {
                    Value::DimParam("n".into())
                } else {
                    Value::DimValue(*dim)
                });
            }
        }
        ModelEdit::OpType { node, op } => {
            const OPS: [&str; 6] = ["NoSuchOp", "", "Loop", "If", "Constant", "Conv"];
            if let Some(a) = pick(graph.node.len(), *node) {
                graph.node[a].op_type = Some(OPS[op % OPS.len()].to_string());
            }
        }
    }
}

#[test]
fn onnx_structural_edits_end_in_a_graph_or_an_error() {
    let seeds = onnx_seeds();
    let cases = cases(4);
    let mut runner = runner(cases);
    let strategy = (any::<usize>(), prop::collection::vec(model_edit(), 1..6));
    let result = runner.run(&strategy, |(seed, edits)| {
        let mut model = OnnxModel::from_bytes(&seeds[seed % seeds.len()], Path::new("seed.onnx"))
            .expect("seeds decode");
        for e in &edits {
            edit_model(&mut model, e);
        }
        let bytes = model.to_bytes();
        bounded("ONNX edits", bytes.len(), || decode_and_build(&bytes))
    });
    if let Err(e) = result {
        panic!("ONNX structural edits: {e}");
    }
    report("ONNX structural edits", cases, seeds.len());
}

// ---------------------------------------------------------------------------------------------
// .raw and .npy samples

#[test]
fn samples_end_in_tensors_or_diagnostics() {
    let dir = crate_dir();
    let mut paths = files_under(&dir.join("tests/data/calib"), &[".raw", ".npy"], 1 << 20);
    paths.extend(
        fixture_seeds("cls/calib_npy", &[".npy"], 1 << 20)
            .into_iter()
            .take(1),
    );
    let seeds = read_all(&paths);
    let tokens = binary_tokens();
    let tmp = tempfile::tempdir().unwrap();
    let list = InputList::parse(&tmp.path().join("list.txt"), "x:=s.raw\nx:=s.npy\n").unwrap();
    // The model's input: what the seed holds, a shape it does not, and dims whose product
    // overflows.
    let shapes: Vec<Vec<usize>> = vec![
        vec![1, 4],
        vec![1, 2, 2],
        vec![1, 3, 48, 192],
        vec![4, 1],
        vec![usize::MAX, 2],
        vec![1 << 40, 1 << 40],
        vec![],
        vec![0],
    ];
    let cases = cases(2);
    let mut runner = runner(cases);
    let strategy = (mutations(4), any::<usize>(), any::<bool>());
    let result = runner.run(&strategy, |((seed, edits), shape, npy)| {
        let bytes = apply(&seeds, &tokens, seed, &edits);
        let name = if npy { "s.npy" } else { "s.raw" };
        fs::write(tmp.path().join(name), &bytes).unwrap();
        let spec = [InputSpec {
            name: "x".into(),
            shape: shapes[shape % shapes.len()].clone(),
        }];
        bounded("sample", bytes.len(), || {
            let _ = list.check(&spec);
            match list.load_sample(usize::from(npy), &spec) {
                // A sample is accepted only when the file holds exactly its values.
                Ok(sample) => assert!(sample.tensors[0].len() * 4 <= bytes.len()),
                Err(e) => {
                    let _ = render_diagnostic(&miette::Report::new(e));
                }
            }
        })
    });
    if let Err(e) = result {
        panic!(".raw/.npy: {e}");
    }
    report(".raw/.npy samples", cases, seeds.len());
}

// ---------------------------------------------------------------------------------------------
// Public store payload codecs

#[test]
fn statistics_payloads_end_in_a_value_or_a_miss() {
    use quant::stats::{StatisticsSettings, TensorStatistics};
    let mut seeds = Vec::new();
    for histogram in [false, true] {
        let settings = StatisticsSettings { histogram };
        let mut list = Vec::new();
        for k in 0..3 {
            let mut s = TensorStatistics::new(settings);
            let values: Vec<f32> = (0..50).map(|i| (i * (k + 1)) as f32 * 0.37 - 4.0).collect();
            s.observe(&values);
            list.push(s);
        }
        seeds.push(quant::stats::encode_all(&list));
    }
    let tokens = binary_tokens();
    campaign("statistics codec", &seeds, &tokens, cases(1), 4, |input| {
        bounded("statistics codec", input.len(), || {
            if let Some(decoded) = TensorStatistics::decode_all(input) {
                // What decodes must re-encode to a form that decodes to itself (the histogram
                // codec accepts some non-canonical forms; the store's digest guards entries).
                let again = quant::stats::encode_all(&decoded);
                let normal = TensorStatistics::decode_all(&again).expect("re-encoded decodes");
                assert_eq!(quant::stats::encode_all(&normal), again);
            }
        })
    });
}

// ---------------------------------------------------------------------------------------------
// Inputs the campaign found or that its mutations reach too rarely to leave to chance.

/// A model with one initializer whose declared dims are `dims` and whose data is `raw`.
fn model_with_initializer(dims: &[i64], raw: Vec<u8>) -> Vec<u8> {
    let mut model = OnnxModel::from_bytes(&written_model(), Path::new("seed.onnx")).unwrap();
    let graph = model.proto_mut().graph.as_mut().unwrap();
    let w = graph
        .initializer
        .iter_mut()
        .find(|t| t.name.as_deref() == Some("w"))
        .unwrap();
    w.dims = dims.to_vec();
    w.raw_data = Some(raw.into());
    model.to_bytes()
}

#[test]
fn an_initializer_declaring_ten_billion_elements_over_16_bytes_is_an_error() {
    let bytes = model_with_initializer(&[10_000_000_000], vec![0; 16]);
    let err = bounded("huge initializer", bytes.len(), || {
        Graph::from_model(&OnnxModel::from_bytes(&bytes, Path::new("huge.onnx")).unwrap())
            .map(|_| ())
            .unwrap_err()
    })
    .unwrap();
    let text = err.to_string();
    assert!(text.contains("huge.onnx"), "{text}");
    assert!(text.contains("10000000000"), "{text}");
}

#[test]
fn dims_whose_product_overflows_are_an_error_even_before_a_zero() {
    for dims in [
        vec![1i64 << 40, 1 << 40, 0],
        vec![i64::MAX, 4, 0],
        vec![1 << 62, 1 << 62],
    ] {
        let bytes = model_with_initializer(&dims, Vec::new());
        let built = bounded("overflowing dims", bytes.len(), || {
            Graph::from_model(&OnnxModel::from_bytes(&bytes, Path::new("dims.onnx")).unwrap())
                .map(|g| g.counts())
                .map_err(|e| e.to_string())
        })
        .unwrap();
        let e = built.expect_err(&format!("{dims:?}"));
        assert!(
            e.contains("dims.onnx") && e.contains("more elements"),
            "{e}"
        );
    }
}

#[test]
fn an_input_whose_dims_overflow_is_a_size_diagnostic() {
    let tmp = tempfile::tempdir().unwrap();
    fs::write(tmp.path().join("s.raw"), [0u8; 16]).unwrap();
    let list = InputList::parse(&tmp.path().join("list.txt"), "x:=s.raw\n").unwrap();
    let spec = [InputSpec {
        name: "x".into(),
        shape: vec![1 << 40, 1 << 40],
    }];
    let err = list.check(&spec).unwrap_err();
    let text = render_diagnostic(&miette::Report::new(err));
    assert!(text.contains("s.raw"), "{text}");
    assert!(list.load_sample(0, &spec).is_err());
}

#[test]
fn a_diagnostic_past_column_65535_renders() {
    // miette draws underlines with format! widths, which Rust caps at u16::MAX.
    let text = format!("[pipeline]\nname = \"{}\" = 1\n", "a".repeat(70_000));
    let err = resolve_text(&text, Path::new("long/quant.toml"), FileCheck::Skip).unwrap_err();
    let rendered = render_diagnostic(&miette::Report::new(err));
    assert!(rendered.contains("long/quant.toml"), "{rendered}");
}

#[test]
fn overrides_cut_inside_a_multibyte_character_are_a_diagnostic() {
    // serde_json reports the end of input one byte back, inside the last character.
    for text in [
        "{\"activation_encodings\": {\"é",
        "{\"a\u{FFFD}",
        "{\"é\"\n: ¤",
    ] {
        let err = quant::overrides::parse("cut.encodings", text.to_string()).unwrap_err();
        let rendered = render_diagnostic(&miette::Report::new(err));
        assert!(rendered.contains("cut.encodings"), "{rendered}");
    }
}

// ---------------------------------------------------------------------------------------------
// tract on edited models: loading and one run end in a runner or an error, whatever tract does
// (a panic inside tract is caught at the run boundary and becomes the model's error).

#[test]
fn tract_loads_and_runs_edited_models_to_a_result() {
    use quant::run::FloatRunner;
    let seeds = onnx_seeds();
    let cases = cases(30);
    let mut runner = runner(cases);
    let strategy = (any::<usize>(), prop::collection::vec(model_edit(), 1..4));
    let caught = Cell::new(0usize);
    let result = runner.run(&strategy, |(seed, edits)| {
        let mut model = OnnxModel::from_bytes(&seeds[seed % seeds.len()], Path::new("seed.onnx"))
            .expect("seeds decode");
        for e in &edits {
            edit_model(&mut model, e);
        }
        let bytes = model.to_bytes();
        let note = |e: &dyn std::fmt::Display| {
            if e.to_string().contains("tract panicked") {
                caught.set(caught.get() + 1);
            }
        };
        match FloatRunner::new(&bytes, &[]) {
            Ok(run) => {
                let inputs: Vec<_> = run
                    .input_specs()
                    .iter()
                    .filter(|s| s.element_count() <= 1 << 20)
                    .map(|s| ndarray::ArrayD::<f32>::zeros(ndarray::IxDyn(&s.shape)))
                    .collect();
                if let Err(e) = run.run(&inputs, |_, _, _| {}) {
                    note(&e);
                }
            }
            Err(e) => note(&e),
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("tract on edited models: {e}");
    }
    println!(
        "fuzz: tract load+run: {cases} cases from {} seeds, 0 failures, {} tract panics caught",
        seeds.len(),
        caught.get()
    );
}
