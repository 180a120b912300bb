//! Several processes on one store at once: `quant cache gc` while a build writes, `quant watch`
//! and `quant build` on the same folder, four simultaneous builds. None loses data, and every
//! output equals a clean build's, as does the next build from the shared store.

mod common;

use quant::onnx::{DType, GraphContents, NodeContents, OnnxModel, TensorContents, TensorValues};
use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn node(op: &str, inputs: &[&str], output: &str) -> NodeContents {
    NodeContents {
        name: format!("{op}_{output}"),
        op_type: op.into(),
        domain: String::new(),
        inputs: inputs.iter().map(|s| s.to_string()).collect(),
        outputs: vec![output.into()],
        attributes: Vec::new(),
    }
}

/// Three small models (MatMul then an activation), 16 samples, two targets: quick to build,
/// but with enough store entries for writers and collectors to interleave.
fn project(dir: &Path) {
    fs::create_dir_all(dir.join("models")).unwrap();
    fs::create_dir_all(dir.join("calib")).unwrap();
    let mut values = common::Values(11);
    let mut toml = String::from("[pipeline]\nname = \"many\"\n\n");
    for (i, act) in ["Relu", "Sigmoid", "Tanh"].iter().enumerate() {
        let contents = GraphContents {
            ir_version: Some(8),
            opset: Some(13),
            inputs: vec![common::info("x", Some(&[1, 8]))],
            outputs: vec![common::info("y", None)],
            value_info: Vec::new(),
            initializers: vec![TensorContents {
                name: "w".into(),
                dtype: Some(DType::Float32),
                dims: vec![8, 6],
                values: TensorValues::Float(values.take(48)),
            }],
            nodes: vec![node("MatMul", &["x", "w"], "h"), node(act, &["h"], "y")],
        };
        OnnxModel::from_contents(&contents, Path::new("m.onnx"))
            .write(&dir.join(format!("models/m{i}.onnx")))
            .unwrap();
        toml.push_str(&format!("[models.m{i}]\npath = \"models/m{i}.onnx\"\n\n"));
    }
    let mut list = String::new();
    for i in 0..16 {
        let bytes: Vec<u8> = values
            .take(8)
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        fs::write(dir.join(format!("calib/{i}.raw")), bytes).unwrap();
        list.push_str(&format!("{i}.raw\n"));
    }
    fs::write(dir.join("calib/input_list.txt"), list).unwrap();
    toml.push_str(
        "[calibration.c]\ninput_list = \"calib/input_list.txt\"\n\n\
         [targets.htp]\nbackend = \"htp\"\ncalibration = \"c\"\n\n\
         [targets.htp16]\nbackend = \"htp\"\ncalibration = \"c\"\nact_bitwidth = 16\n",
    );
    fs::write(dir.join("quant.toml"), toml).unwrap();
}

fn command(root: &Path, store: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(common::quant_bin());
    c.args(args)
        .env("QUANT_CACHE_DIR", store)
        .env("NO_COLOR", "1")
        .current_dir(root)
        .stdin(Stdio::null());
    c
}

fn succeed(output: Output, what: &str) {
    assert_eq!(
        output.status.code(),
        Some(0),
        "{what} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn outputs(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let base = root.join("quant-out");
    let mut stack = vec![base.clone()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.insert(
                    path.strip_prefix(&base).unwrap().to_path_buf(),
                    fs::read(&path).unwrap(),
                );
            }
        }
    }
    out
}

/// The outputs of a clean build in a fresh folder with a fresh store.
fn clean() -> BTreeMap<PathBuf, Vec<u8>> {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("p");
    project(&root);
    succeed(
        command(&root, &tmp.path().join("store"), &["build"])
            .output()
            .unwrap(),
        "clean build",
    );
    let out = outputs(&root);
    assert!(out.len() >= 6, "{:?}", out.keys());
    out
}

/// A build from `store` after the concurrent work: succeeds and writes the clean outputs.
fn rebuild_equals_clean(root: &Path, store: &Path, clean: &BTreeMap<PathBuf, Vec<u8>>) {
    fs::remove_dir_all(root.join("quant-out")).unwrap();
    succeed(
        command(root, store, &["build"]).output().unwrap(),
        "rebuild",
    );
    assert_eq!(
        &outputs(root),
        clean,
        "a build from the shared store differs from a clean one"
    );
}

fn wait(child: &mut Child, deadline: Duration) -> Output {
    let until = Instant::now() + deadline;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > until {
            let _ = child.kill();
            panic!("a child did not finish within {deadline:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut stderr);
    }
    Output {
        status: child.wait().unwrap(),
        stdout: Vec::new(),
        stderr: stderr.into_bytes(),
    }
}

#[test]
fn four_simultaneous_builds_on_one_store_equal_a_clean_build() {
    let clean = clean();
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let roots: Vec<PathBuf> = (0..4).map(|i| tmp.path().join(format!("p{i}"))).collect();
    for root in &roots {
        project(root);
    }
    let mut children: Vec<Child> = roots
        .iter()
        .map(|root| {
            command(root, &store, &["build"])
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in &mut children {
        succeed(wait(child, Duration::from_secs(600)), "a concurrent build");
    }
    for root in &roots {
        assert_eq!(
            &outputs(root),
            &clean,
            "{} differs from a clean build",
            root.display()
        );
    }
    rebuild_equals_clean(&roots[0], &store, &clean);
}

#[test]
fn cache_gc_while_a_build_writes_loses_nothing() {
    let clean = clean();
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let root = tmp.path().join("p");
    project(&root);
    let mut build = command(&root, &store, &["build"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Collect everything, over and over, until the build is done.
    let mut collections = 0;
    while build.try_wait().unwrap().is_none() {
        let gc = command(&root, &store, &["cache", "gc", "--max-size", "0"])
            .output()
            .unwrap();
        succeed(gc, "quant cache gc");
        collections += 1;
    }
    succeed(
        wait(&mut build, Duration::from_secs(600)),
        "the build under gc",
    );
    println!("{collections} collections ran during the build");
    assert!(collections > 0);
    assert_eq!(outputs(&root), clean);
    rebuild_equals_clean(&root, &store, &clean);
}

#[test]
fn watch_and_build_on_one_folder_equal_a_clean_build() {
    let clean = clean();
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let root = tmp.path().join("p");
    project(&root);
    let mut watch = command(&root, &store, &["watch"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let build = command(&root, &store, &["build"]).output().unwrap();
    succeed(build, "quant build beside quant watch");
    // The watcher's first build ends with it waiting for changes.
    let stderr = watch.stderr.take().unwrap();
    let (sender, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    let until = Instant::now() + Duration::from_secs(600);
    let mut transcript = Vec::new();
    loop {
        let left = until.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.contains("Watching for changes") => break,
            Ok(line) => transcript.push(line),
            Err(_) => {
                let _ = watch.kill();
                panic!("quant watch never settled:\n{}", transcript.join("\n"));
            }
        }
    }
    let _ = watch.kill();
    let _ = watch.wait();
    assert!(
        !transcript
            .iter()
            .any(|l| l.contains('×') || l.contains("panicked")),
        "{}",
        transcript.join("\n")
    );
    assert_eq!(outputs(&root), clean);
    rebuild_equals_clean(&root, &store, &clean);
}
