//! Writes a large synthetic model and its calibration samples with quant's own ONNX writer, for
//! `benches/scale.sh`: `x [1, D]` through `L` layers of MatMul by a `D × D` weight and Relu, so
//! the weights take `L · D² · 4` bytes while each activation is only `D` floats. Memory spent
//! beyond the weights is then the build's own.
//!
//! `cargo run --example scale_model -- DIR D L SAMPLES` writes `DIR/model.onnx`, `SAMPLES` raw
//! samples and `DIR/input_list.txt`; without arguments it writes a small one (D = 64, L = 2,
//! 4 samples) to a temporary folder and prints its sizes.

use std::path::{Path, PathBuf};

use quant::onnx::{
    DType, Dim, GraphContents, NodeContents, OnnxModel, TensorContents, TensorValues, ValueInfo,
};

fn main() -> miette::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let number = |i: usize, default: usize| {
        args.get(i)
            .map_or(Ok(default), |a| a.parse::<usize>())
            .map_err(|e| miette::miette!("argument {}: {e}", i + 1))
    };
    let (dir, _tmp) = match args.first() {
        Some(dir) => (PathBuf::from(dir), None),
        None => {
            let tmp = std::env::temp_dir().join(format!("quant-scale-{}", std::process::id()));
            (tmp.clone(), Some(tmp))
        }
    };
    let (d, layers, samples) = (number(1, 64)?, number(2, 2)?, number(3, 4)?);
    std::fs::create_dir_all(&dir).map_err(|e| miette::miette!("{}: {e}", dir.display()))?;
    let bytes = write_model(&dir.join("model.onnx"), d, layers)?;
    write_samples(&dir, d, samples)?;
    println!(
        "model.onnx: {layers} layers of {d}×{d}, {bytes} bytes; {samples} samples in {}",
        dir.display()
    );
    if args.is_empty() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}

/// A deterministic pseudo-random value in [-1, 1) (xorshift), so runs are comparable.
struct Values(u64);

impl Values {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

fn write_model(path: &Path, d: usize, layers: usize) -> miette::Result<u64> {
    let info = |name: &str, dims: Option<&[u64]>| ValueInfo {
        name: name.into(),
        dtype: Some(DType::Float32),
        shape: dims.map(|d| d.iter().map(|&n| Dim::Fixed(n)).collect()),
    };
    let mut values = Values(0x9e37_79b9_7f4a_7c15);
    // Scaled so activations neither vanish nor explode through the layers.
    let scale = 1.0 / (d as f32).sqrt();
    let mut initializers = Vec::new();
    let mut nodes = Vec::new();
    let mut input = "x".to_string();
    for l in 0..layers {
        let w = format!("w{l}");
        initializers.push(TensorContents {
            name: w.clone(),
            dtype: Some(DType::Float32),
            dims: vec![d as u64, d as u64],
            values: TensorValues::Float((0..d * d).map(|_| values.next() * scale).collect()),
        });
        let (m, r) = (format!("m{l}"), format!("r{l}"));
        let node = |op: &str, inputs: Vec<String>, output: &str| NodeContents {
            name: format!("{op}_{output}"),
            op_type: op.into(),
            domain: String::new(),
            inputs,
            outputs: vec![output.into()],
            attributes: Vec::new(),
        };
        nodes.push(node("MatMul", vec![input.clone(), w], &m));
        let out = if l + 1 == layers { "y".to_string() } else { r };
        nodes.push(node("Relu", vec![m], &out));
        input = out;
    }
    let contents = GraphContents {
        ir_version: Some(8),
        opset: Some(13),
        inputs: vec![info("x", Some(&[1, d as u64]))],
        outputs: vec![info("y", None)],
        value_info: Vec::new(),
        initializers,
        nodes,
    };
    let model = OnnxModel::from_contents(&contents, path);
    drop(contents);
    model.write(path).map_err(|e| miette::miette!("{e}"))?;
    Ok(std::fs::metadata(path).map(|m| m.len()).unwrap_or(0))
}

fn write_samples(dir: &Path, d: usize, samples: usize) -> miette::Result<()> {
    let folder = dir.join("samples");
    std::fs::create_dir_all(&folder).map_err(|e| miette::miette!("{}: {e}", folder.display()))?;
    let mut values = Values(7);
    let mut list = String::new();
    for i in 0..samples {
        let bytes: Vec<u8> = (0..d).flat_map(|_| values.next().to_le_bytes()).collect();
        let name = format!("samples/{i:05}.raw");
        std::fs::write(dir.join(&name), bytes).map_err(|e| miette::miette!("{name}: {e}"))?;
        list.push_str(&name);
        list.push('\n');
    }
    std::fs::write(dir.join("input_list.txt"), list).map_err(|e| miette::miette!("list: {e}"))
}
