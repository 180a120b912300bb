//! Generates the ONNX protobuf types from the official `onnx.proto` (onnx 1.23.2, IR v14).
//! protox compiles the schema in pure Rust, so no `protoc` is needed on the build machine.
//!
//! Also reads the float runtime's exact version off `Cargo.lock` into `QUANT_RUNTIME`
//! (`run::RUNTIME`): store keys name the runtime that computed a result, and a patch release of
//! tract may change results, so the key must follow the version actually built, not the
//! requirement in `Cargo.toml`.

use std::path::Path;

/// The crate whose version names the runtime.
const RUNTIME_CRATE: &str = "tract-onnx";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/onnx.proto");
    let descriptors = protox::compile(["proto/onnx.proto"], ["proto"])?;
    prost_build::Config::new()
        // Tensor payloads share the buffer a model is decoded from instead of each being copied
        // out of it, so a model's weights are held once.
        .bytes([".onnx.TensorProto.raw_data"])
        .compile_fds(descriptors)?;

    println!("cargo:rerun-if-changed=Cargo.lock");
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR")?;
    let lock_path = Path::new(&manifest_dir).join("Cargo.lock");
    let lock = std::fs::read_to_string(&lock_path).map_err(|err| {
        format!(
            "cannot read {} to find the {RUNTIME_CRATE} version store keys name: {err}",
            lock_path.display()
        )
    })?;
    let version = locked_version(&lock, RUNTIME_CRATE).map_err(|problem| {
        format!(
            "{}: {problem}; store keys name the {RUNTIME_CRATE} version, so the build needs it \
             (run `cargo generate-lockfile` or `cargo update -p {RUNTIME_CRATE}`)",
            lock_path.display()
        )
    })?;
    println!("cargo:rustc-env=QUANT_RUNTIME={RUNTIME_CRATE} {version}");
    Ok(())
}

/// The version of the one package named `name` in a `Cargo.lock`: a line scan of its
/// `[[package]]` tables, whose `name` and `version` lines cargo always writes first, one per
/// line, with basic strings.
fn locked_version(lock: &str, name: &str) -> Result<String, String> {
    let mut versions = Vec::new();
    let mut current_name: Option<&str> = None;
    for line in lock.lines().map(str::trim) {
        if line.starts_with('[') {
            current_name = None;
        } else if let Some(value) = string_value(line, "name") {
            current_name = Some(value);
        } else if let Some(value) = string_value(line, "version")
            && current_name == Some(name)
        {
            versions.push(value.to_string());
        }
    }
    versions.dedup();
    match versions.as_slice() {
        [version] => Ok(version.clone()),
        [] => Err(format!("no package `{name}` is locked")),
        several => Err(format!(
            "several versions of `{name}` are locked ({}), so which one runs models is ambiguous",
            several.join(", ")
        )),
    }
}

/// The value of `key = "value"`, if `line` is that.
fn string_value<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let rest = line.strip_prefix(key)?.trim_start().strip_prefix('=')?;
    rest.trim().strip_prefix('"')?.strip_suffix('"')
}
